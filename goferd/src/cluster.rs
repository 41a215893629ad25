//! `goferd server`: one node of a cluster, from a TOML config file and flags (flags win). The node serves
//! the API (TLS, bearer tokens) and Raft (mutual TLS with the cluster CA) on their own ports, and runs the
//! scheduler, the extension host and an executor; the scheduler, the trigger timers and extension
//! containers act only while the node leads.
//!
//! Bootstrapping a new cluster is one step: start every node with the same `bootstrap` members; the first
//! to start initializes the cluster and the others join it. Later nodes join with `goferctl cluster add`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use gofer_auth::{Principal, TokenAuth, hash_token};
use gofer_state::{Faults, LogStore, MemberOptions, PeerNetwork, Placement, RaftPort, StateNode};

use crate::node::Roles;
use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Flags of `goferd server`; each overrides the config file's value.
#[derive(clap::Args)]
pub struct ServerArgs {
    /// A TOML config file with the keys below (node_id, data_dir, api_listen, raft_listen,
    /// webhook_listen, webhook_url, extension_network, ca, cert, key, admin_token_file, secret_key_file, secret_old_key_files, name, event_retention, task_log_cap, the
    /// task_default_/task_max_ cpu, memory and timeout (strings, as the flags take them), object_max_size,
    /// object_max_count, blob_store (with blob_store_endpoint, blob_store_region, blob_store_access_key_id and
    /// blob_store_secret_access_key), and the lists
    /// bootstrap (a table of id = "https://host:port"), roles, state_nodes and schedulers); see README
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's id in the cluster (1, 2, 3 …)
    #[arg(long)]
    node_id: Option<u64>,
    /// Where this node keeps its state and logs
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The API address [default: 127.0.0.1:7443]
    #[arg(long)]
    api_listen: Option<String>,
    /// The Raft address [default: 127.0.0.1:7444]
    #[arg(long)]
    raft_listen: Option<String>,
    /// The webhook trigger's address [default: 127.0.0.1:7080]
    #[arg(long)]
    webhook_listen: Option<String>,
    /// The cluster CA certificate (from `goferd certs init`)
    #[arg(long)]
    ca: Option<PathBuf>,
    /// This node's certificate (from `goferd certs issue NAME`)
    #[arg(long)]
    cert: Option<PathBuf>,
    /// This node's private key
    #[arg(long)]
    key: Option<PathBuf>,
    /// A file holding the admin token clients present (from `goferd certs init`)
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// The key that seals secrets, the same on every node: a file of 64 hex digits (32 bytes), such as
    /// `goferd certs init` makes (secret.key) [default: secret.key beside admin_token_file]
    #[arg(long)]
    secret_key_file: Option<PathBuf>,
    /// An older secret key, still accepted to open what it sealed until `goferctl secret rotate-key`
    /// sealed everything again; repeat it for more
    #[arg(long = "secret-old-key-file", value_name = "FILE")]
    secret_old_key_files: Vec<PathBuf>,
    /// The members of a new cluster, as ID=https://HOST:PORT pairs separated by commas
    #[arg(long, value_delimiter = ',')]
    bootstrap: Vec<String>,
    /// The roles this process plays, separated by commas: state, api, scheduler, extension-host,
    /// executor [default: all of them]
    #[arg(long, value_delimiter = ',')]
    roles: Vec<String>,
    /// Names this process (its executor id and lease holder) [default: node<NODE_ID>]
    #[arg(long)]
    name: Option<String>,
    /// Without the state role: the state nodes' raft addresses (https://HOST:PORT), separated by commas
    #[arg(long, value_delimiter = ',')]
    state_nodes: Vec<String>,
    /// For an executor without a scheduler beside it: the schedulers' API addresses (https://HOST:PORT),
    /// separated by commas
    #[arg(long, value_delimiter = ',')]
    schedulers: Vec<String>,
    /// How many attempts this process's executor runs at once [default: 0, no limit]
    #[arg(long)]
    executor_capacity: Option<u32>,
    /// A label this process's executor registers with, as KEY=VALUE; repeat it for more
    #[arg(long = "executor-label", value_name = "KEY=VALUE")]
    executor_labels: Vec<String>,
    /// The API address others reach this process at, https://HOST:PORT; the scheduler lease records it so
    /// that every node points executors there [default: https://NAME:PORT when the API listens on every
    /// address, else https://API_LISTEN]
    #[arg(long)]
    advertise_api: Option<String>,
    /// The webhook listener's base URL as callers reach it, http(s)://HOST:PORT, when that is not the
    /// address it listens on (behind a published port or a proxy); every node's API shows webhook URLs
    /// from it [default: http://WEBHOOK_LISTEN]
    #[arg(long)]
    webhook_url: Option<String>,
    /// An existing Docker network for the extension containers, which this process's container is on
    /// too: it serves them there, on its own address in it (for an extension host that runs in a
    /// container) [default: a network of the node's own, served on its gateway]
    #[arg(long)]
    extension_network: Option<String>,
    /// What runs this process's attempts: docker, or benchmark-noop, which runs nothing and reports every
    /// attempt exited 0 at once (for control-plane benchmarks only) [default: docker]
    #[arg(long)]
    executor_backend: Option<String>,
    /// How long the cluster's event stream keeps events, such as 2h or 7d; set by this process once the
    /// cluster is initialized [default: the cluster's setting, 24h unless set before]
    #[arg(long, value_parser = crate::flags::parse_retention)]
    event_retention: Option<u64>,
    /// How much of each task attempt's output a state node's log archive keeps, such as 1MiB: beyond it,
    /// the first and last halves with a marker between them [default: 10MiB]
    #[arg(long, value_parser = crate::flags::parse_log_cap)]
    task_log_cap: Option<u64>,
    #[command(flatten)]
    task_limits: crate::flags::TaskLimitArgs,
    #[command(flatten)]
    object_limits: crate::flags::ObjectLimitArgs,
    #[command(flatten)]
    blob_store: crate::flags::BlobStoreArgs,
}

impl ServerArgs {
    /// `goferd executor`: the executor role alone, unless `--roles` says otherwise.
    pub fn executor_only(mut self) -> Self {
        if self.roles.is_empty() {
            self.roles = vec!["executor".to_string()];
        }
        self
    }
}

/// The config file.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ServerConfig {
    node_id: Option<u64>,
    data_dir: Option<PathBuf>,
    api_listen: Option<String>,
    raft_listen: Option<String>,
    webhook_listen: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    admin_token_file: Option<PathBuf>,
    secret_key_file: Option<PathBuf>,
    secret_old_key_files: Option<Vec<PathBuf>>,
    /// Node id (as a string key) → raft address.
    bootstrap: Option<BTreeMap<String, String>>,
    roles: Option<Vec<String>>,
    name: Option<String>,
    state_nodes: Option<Vec<String>>,
    schedulers: Option<Vec<String>>,
    executor_capacity: Option<u32>,
    executor_labels: Option<BTreeMap<String, String>>,
    executor_backend: Option<String>,
    advertise_api: Option<String>,
    webhook_url: Option<String>,
    extension_network: Option<String>,
    event_retention: Option<String>,
    task_log_cap: Option<String>,
    task_default_cpu: Option<String>,
    task_max_cpu: Option<String>,
    task_default_memory: Option<String>,
    task_max_memory: Option<String>,
    task_default_timeout: Option<String>,
    task_max_timeout: Option<String>,
    object_max_size: Option<String>,
    object_max_count: Option<u32>,
    blob_store: Option<String>,
    blob_store_endpoint: Option<String>,
    blob_store_region: Option<String>,
    blob_store_access_key_id: Option<String>,
    blob_store_secret_access_key: Option<String>,
}

/// The API address to advertise when none is given: the bound address, or this process's name with the
/// port when it listens on every address (a Compose service's name is its host name).
fn advertised(bound: std::net::SocketAddr, name: &str) -> String {
    if bound.ip().is_unspecified() {
        format!("https://{name}:{}", bound.port())
    } else {
        format!("https://{bound}")
    }
}

/// The `--executor-label KEY=VALUE` flags, or else the config file's table, checked.
fn executor_labels(
    flags: &[String],
    file: Option<BTreeMap<String, String>>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let labels = match flags.is_empty() {
        true => file.unwrap_or_default(),
        false => flags
            .iter()
            .map(|flag| crate::flags::parse_label(flag))
            .collect::<Result<_, _>>()?,
    };
    gofer_domain::executors::check_labels("executor_labels", &labels)?;
    Ok(labels)
}

/// A list flag if it was given, else the config file's list, else none.
fn flag_or_file<T>(flag: Vec<T>, file: Option<Vec<T>>) -> Vec<T> {
    if flag.is_empty() {
        file.unwrap_or_default()
    } else {
        flag
    }
}

/// Parses `--roles`: the state flag and the other roles.
fn parse_roles(names: &[String]) -> anyhow::Result<(bool, Roles)> {
    if names.is_empty() {
        return Ok((true, Roles::ALL));
    }
    let mut state = false;
    let mut roles = Roles {
        api: false,
        scheduler: false,
        extension_host: false,
        executor: false,
    };
    for name in names {
        match name.trim() {
            "state" => state = true,
            "api" => roles.api = true,
            "scheduler" => roles.scheduler = true,
            "extension-host" => roles.extension_host = true,
            "executor" => roles.executor = true,
            other => {
                bail!("roles: unknown role {other:?} (the roles are state, api, scheduler, extension-host, executor)")
            }
        }
    }
    Ok((state, roles))
}

/// The roles a process with the state role (`state`) and `roles` plays, as its certificate must record
/// them.
fn played(state: bool, roles: Roles) -> gofer_tls::Roles {
    use gofer_tls::Role;
    [
        (state, Role::State),
        (roles.api, Role::Api),
        (roles.scheduler, Role::Scheduler),
        (roles.extension_host, Role::ExtensionHost),
        (roles.executor, Role::Executor),
    ]
    .into_iter()
    .filter_map(|(plays, role)| plays.then_some(role))
    .collect()
}

/// Refuses to start with a certificate (at `path`) that does not record every role the process plays:
/// its peers would refuse it, later and less clearly.
fn check_certificate_roles(path: &Path, cert_pem: &str, state: bool, roles: Roles) -> anyhow::Result<()> {
    let issued = gofer_tls::parse_certificate(cert_pem).with_context(|| format!("reading {}", path.display()))?;
    let needed = played(state, roles);
    if issued.roles.covers(needed) {
        return Ok(());
    }
    let name = &issued.common_name;
    if issued.roles.is_empty() {
        bail!(
            "cert: {} records no role (an older goferd issued it); renew it with `goferd certs renew {name} --role \
             {needed}`",
            path.display()
        );
    }
    bail!(
        "cert: {} records the roles {} but this process plays {needed}; issue one with `goferd certs issue {name} \
         --role {needed}`",
        path.display(),
        issued.roles
    )
}

/// A webhook base URL is http(s)://host[:port], with no path, query or fragment.
fn check_webhook_url(url: &str) -> anyhow::Result<()> {
    let uri: Option<tonic::transport::Uri> = url.parse().ok();
    let valid = uri.is_some_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.host().is_some_and(|h| !h.is_empty())
            && uri.path() == "/"
            && uri.query().is_none()
    }) && !url.contains('#');
    if !valid {
        bail!("webhook_url: a base URL is http(s)://host[:port], got {url:?}");
    }
    Ok(())
}

fn check_addresses(field: &str, addresses: &[String]) -> anyhow::Result<()> {
    for address in addresses {
        let uri: Option<tonic::transport::Uri> = address.parse().ok();
        let valid = uri.is_some_and(|uri| {
            uri.scheme_str() == Some("https")
                && uri.host().is_some_and(|h| !h.is_empty())
                && uri.port_u16().is_some()
                && uri.path() == "/"
        });
        if !valid {
            bail!("{field}: addresses are https://host:port, got {address:?}");
        }
    }
    Ok(())
}

fn read(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading the {what} {}", path.display()))
}

fn parse_members(pairs: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut members = BTreeMap::new();
    for (id, address) in pairs {
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("bootstrap: {id:?} is not a node id"))?;
        if id == 0 || !address.starts_with("https://") {
            bail!("bootstrap: node ids start at 1 and addresses are https://host:port, got {id}={address}");
        }
        members.insert(id, address.trim().to_string());
    }
    Ok(members)
}

/// Runs one cluster process until SIGINT or SIGTERM.
pub async fn run(args: ServerArgs, clock: gofer_clock::Clock) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => toml::from_str::<ServerConfig>(&read(path, "config file")?)
            .with_context(|| format!("config file {}", path.display()))?,
        None => ServerConfig::default(),
    };
    let role_names = flag_or_file(args.roles, file.roles);
    let (state_role, roles) = parse_roles(&role_names)?;
    if !state_role && !roles.serves_or_executes() {
        bail!("roles: name at least one role");
    }
    let node_id = args.node_id.or(file.node_id);
    if state_role && node_id.is_none() {
        bail!("node_id is required for the state role (--node-id or the config file)");
    }
    let name = match (args.name.or(file.name), node_id) {
        (Some(name), _) => name,
        (None, Some(id)) => format!("node{id}"),
        (None, None) => bail!("name is required when the process has no node_id (--name or the config file)"),
    };
    gofer_domain::validate_id("name", &name)?;
    let api_listen = args
        .api_listen
        .or(file.api_listen)
        .unwrap_or_else(|| "127.0.0.1:7443".into());
    let webhook_listen = args
        .webhook_listen
        .or(file.webhook_listen)
        .unwrap_or_else(|| "127.0.0.1:7080".into());
    let ca = args
        .ca
        .or(file.ca)
        .context("ca is required (the cluster CA certificate)")?;
    let cert = args
        .cert
        .or(file.cert)
        .context("cert is required (this process's certificate)")?;
    let key = args
        .key
        .or(file.key)
        .context("key is required (this process's private key)")?;
    let token_file = args.admin_token_file.or(file.admin_token_file);
    // An executor alone presents its certificate to the schedulers; everything else checks tokens.
    if token_file.is_none() && (state_role || roles.serves()) {
        bail!("admin_token_file is required");
    }
    // The api seals secrets, the scheduler and the extension host open them; an executor alone never
    // sees the key.
    let keyring = if roles.serves() {
        let current = args
            .secret_key_file
            .or(file.secret_key_file)
            .or_else(|| token_file.as_ref().map(|t| t.with_file_name("secret.key")))
            .context("secret_key_file is required for the api, scheduler and extension-host roles")?;
        let old = flag_or_file(args.secret_old_key_files, file.secret_old_key_files);
        Some(std::sync::Arc::new(gofer_secrets::Keyring::read_files(&current, &old)?))
    } else {
        None
    };
    let state_nodes = flag_or_file(args.state_nodes, file.state_nodes);
    check_addresses("state_nodes", &state_nodes)?;
    let schedulers = flag_or_file(args.schedulers, file.schedulers);
    check_addresses("schedulers", &schedulers)?;
    if roles.executor && !roles.scheduler && schedulers.is_empty() {
        bail!("schedulers is required for an executor without the scheduler role beside it");
    }
    let advertise_api = args.advertise_api.or(file.advertise_api);
    if let Some(address) = &advertise_api {
        check_addresses("advertise_api", std::slice::from_ref(address))?;
    }
    let webhook_url = args.webhook_url.or(file.webhook_url);
    if let Some(url) = &webhook_url {
        check_webhook_url(url)?;
    }
    let extension_network = args.extension_network.or(file.extension_network);
    if extension_network.as_ref().is_some_and(|n| n.trim().is_empty()) {
        bail!("extension_network: must name a Docker network");
    }
    let event_retention_ms = match (args.event_retention, &file.event_retention) {
        (Some(ms), _) => Some(ms),
        (None, Some(text)) => Some(crate::flags::parse_retention(text)?),
        (None, None) => None,
    };
    let task_log_cap = match (args.task_log_cap, &file.task_log_cap) {
        (Some(bytes), _) => bytes,
        (None, Some(text)) => crate::flags::parse_log_cap(text)?,
        (None, None) => gofer_state::LOG_CAP_BYTES,
    };
    let task_limits = args.task_limits.changes(crate::flags::TaskLimitTexts {
        default_cpu: file.task_default_cpu.as_deref(),
        max_cpu: file.task_max_cpu.as_deref(),
        default_memory: file.task_default_memory.as_deref(),
        max_memory: file.task_max_memory.as_deref(),
        default_timeout: file.task_default_timeout.as_deref(),
        max_timeout: file.task_max_timeout.as_deref(),
    })?;
    let object_limits = args
        .object_limits
        .limits(file.object_max_size.as_deref(), file.object_max_count)?;
    let shared_store = args.blob_store.shared_store(crate::flags::BlobStoreTexts {
        url: file.blob_store.clone(),
        endpoint: file.blob_store_endpoint.clone(),
        region: file.blob_store_region.clone(),
        access_key_id: file.blob_store_access_key_id.clone(),
        secret_access_key: file.blob_store_secret_access_key.clone(),
    })?;
    let executor_capacity = args.executor_capacity.or(file.executor_capacity).unwrap_or(0);
    let executor_labels = executor_labels(&args.executor_labels, file.executor_labels)?;
    let benchmark_backend = match args.executor_backend.or(file.executor_backend).as_deref() {
        None | Some("docker") => false,
        Some("benchmark-noop") => true,
        Some(other) => bail!("executor_backend: {other:?} is not docker or benchmark-noop"),
    };

    let ca_pem = read(&ca, "CA certificate")?;
    let (cert_pem, key_pem) = (read(&cert, "certificate")?, read(&key, "key")?);
    gofer_tls::listen::check_key_pair(&cert_pem, &key_pem).with_context(|| {
        format!(
            "cert {} and key {} are not a certificate and its own key",
            cert.display(),
            key.display()
        )
    })?;
    check_certificate_roles(&cert, &cert_pem, state_role, roles)?;
    let token = match &token_file {
        Some(token_file) => {
            let token = read(token_file, "admin token file")?.trim().to_string();
            if token.len() < 16 {
                bail!(
                    "the admin token in {} must be at least 16 characters",
                    token_file.display()
                );
            }
            Some(token)
        }
        None => None,
    };
    let docker = if (roles.executor && !benchmark_backend) || roles.extension_host {
        Some(
            gofer_docker::Engine::connect()
                .await
                .context("the executor and the extension host run containers in Docker")?,
        )
    } else {
        None
    };
    let peer_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .identity(Identity::from_pem(&cert_pem, &key_pem));

    // Ports are bound first, so a bad or busy address is reported at once, not after the state answers.
    let api_listener = if roles.serves() {
        Some(
            tokio::net::TcpListener::bind(&api_listen)
                .await
                .with_context(|| format!("binding the API port {api_listen}"))?,
        )
    } else {
        None
    };
    let webhook_listener = if roles.extension_host {
        Some(
            tokio::net::TcpListener::bind(&webhook_listen)
                .await
                .with_context(|| format!("binding the webhook port {webhook_listen}"))?,
        )
    } else {
        None
    };
    let state = if state_role {
        if !state_nodes.is_empty() {
            bail!("state_nodes is for a process without the state role; this one is a state node");
        }
        let node_id = node_id.context("node_id is required for the state role (--node-id or the config file)")?;
        if node_id == 0 {
            bail!("node_id must be at least 1");
        }
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .context("data_dir is required for the state role")?;
        let raft_listen = args
            .raft_listen
            .or(file.raft_listen)
            .unwrap_or_else(|| "127.0.0.1:7444".into());
        let bootstrap = if !args.bootstrap.is_empty() {
            let pairs = args.bootstrap.iter().map(|pair| match pair.split_once('=') {
                Some((id, address)) => Ok((id.to_string(), address.to_string())),
                None => bail!("--bootstrap takes ID=https://HOST:PORT pairs, got {pair:?}"),
            });
            Some(parse_members(pairs.collect::<anyhow::Result<Vec<_>>>()?)?)
        } else {
            file.bootstrap.map(parse_members).transpose()?
        };
        if let Some(members) = &bootstrap
            && !members.contains_key(&node_id)
        {
            bail!("bootstrap members must include this node ({node_id})");
        }
        std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let raft_listener = tokio::net::TcpListener::bind(&raft_listen)
            .await
            .with_context(|| format!("binding the raft port {raft_listen}"))?;
        let network = PeerNetwork::new(node_id, Some(peer_tls), Faults::default());
        let node = StateNode::open_member(&data_dir.join("state"), network, bootstrap, MemberOptions::default())
            .await
            .context("opening the state")?;
        let raft_tls = gofer_tls::listen::server_config(
            &ca_pem,
            &cert_pem,
            &key_pem,
            gofer_tls::listen::ClientCertificates::Required,
        )
        .context("the raft port's TLS")?;
        println!("  raft:     https://{raft_listen}");
        Some(Placement::Local {
            node,
            logs: LogStore::with_cap(data_dir.join("logs"), task_log_cap),
            raft: Some(RaftPort {
                listener: raft_listener,
                tls: raft_tls,
            }),
        })
    } else if !roles.serves() {
        // An executor alone talks to the schedulers only; it needs no view of the state.
        None
    } else {
        if state_nodes.is_empty() {
            bail!("state_nodes is required without the state role: the raft addresses of the state nodes");
        }
        Some(Placement::Remote {
            network: PeerNetwork::new(0, Some(peer_tls), Faults::default()),
            addresses: state_nodes,
            patience: std::time::Duration::from_secs(60),
        })
    };
    let mut tokens = Vec::new();
    if let Some(token) = &token {
        tokens.push((hash_token(token), Principal::Admin));
    }
    let auth = TokenAuth::new(tokens);
    let advertise_api = match (advertise_api, &api_listener) {
        (Some(address), _) => Some(address),
        (None, Some(listener)) => Some(advertised(listener.local_addr()?, &name)),
        (None, None) => None,
    };
    let node = crate::node::start(crate::node::NodeSetup {
        state,
        roles,
        name: name.clone(),
        docker,
        auth,
        credentials: crate::node::Credentials {
            ca_pem,
            cert_pem,
            key_pem,
        },
        api_listener,
        webhook_listener,
        // The executor presents this process's certificate (mutual TLS), which names it and records the
        // executor role (checked at start), and no token: so the active scheduler admits it wherever that
        // runs, not only the scheduler beside it.
        executor_token: String::new(),
        advertise_api,
        webhook_url,
        extension_network,
        schedulers,
        executor_capacity,
        executor_labels,
        benchmark_backend,
        new_cluster_id: crate::random::hex(8)?,
        event_retention_ms,
        task_limits,
        object_limits,
        shared_store,
        clock,
        keyring,
    })
    .await?;
    println!("goferd server {name} is up");
    if let Some(api_host) = &node.api_host {
        println!("  api:      {api_host}");
    }
    if let Some(webhook_addr) = &node.webhook_addr {
        println!("  webhooks: http://{webhook_addr}");
    }
    let _ = std::io::Write::flush(&mut std::io::stdout());
    node.run_until_signalled().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_address_is_the_bound_one_or_the_name_on_every_address() {
        let on = |text: &str| text.parse::<std::net::SocketAddr>().unwrap();
        assert_eq!(advertised(on("127.0.0.1:7443"), "a"), "https://127.0.0.1:7443");
        assert_eq!(
            advertised(on("0.0.0.0:7443"), "scheduler-a"),
            "https://scheduler-a:7443"
        );
        assert_eq!(advertised(on("[::]:9"), "s"), "https://s:9");
    }

    #[test]
    fn a_process_starts_only_with_a_certificate_that_records_the_roles_it_plays() {
        use gofer_tls::{CA_LIFETIME, CLUSTER_CA_NAME, Ca, Role, Roles as CertRoles, Subject, Validity};
        let now = 1_700_000_000;
        let ca = Ca::generate(CLUSTER_CA_NAME, Validity::starting(now, CA_LIFETIME)).unwrap();
        let cert = |roles: CertRoles| {
            ca.issue(
                &Subject::new("s1", &["s1"], roles),
                Validity::starting(now, roles.lifetime()),
            )
            .unwrap()
            .cert_pem
        };
        let path = Path::new("s1.pem");
        let scheduler = Roles {
            api: false,
            scheduler: true,
            extension_host: false,
            executor: false,
        };
        assert!(check_certificate_roles(path, &cert(CertRoles::ALL), true, Roles::ALL).is_ok());
        assert!(check_certificate_roles(path, &cert(CertRoles::of(Role::Scheduler)), false, scheduler).is_ok());
        let err = check_certificate_roles(path, &cert(CertRoles::of(Role::Scheduler)), true, scheduler)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cert:")
                && err.contains("records the roles scheduler")
                && err.contains("--role state,scheduler"),
            "{err}"
        );
        let err = check_certificate_roles(path, &cert(CertRoles::NONE), false, scheduler)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("records no role") && err.contains("goferd certs renew s1 --role scheduler"),
            "{err}"
        );
    }

    #[test]
    fn roles_parse_and_unknown_ones_are_named() {
        assert_eq!(parse_roles(&[]).unwrap(), (true, Roles::ALL));
        let (state, roles) = parse_roles(&["scheduler".into(), "executor".into()]).unwrap();
        assert!(!state && roles.scheduler && roles.executor && !roles.api && !roles.extension_host);
        let err = parse_roles(&["Scheduler".into()]).unwrap_err().to_string();
        assert!(err.contains("roles") && err.contains("\"Scheduler\""), "{err}");
    }

    #[test]
    fn addresses_must_be_https_host_and_port() {
        assert!(
            check_addresses(
                "state_nodes",
                &["https://node1:7444".into(), "https://127.0.0.1:1".into()]
            )
            .is_ok()
        );
        for bad in [
            "127.0.0.1:7444",
            "http://node1:7444",
            "https://node1",
            "https://127.0.0.1:notaport",
            "https://a b:1",
            "https://node1:7444/path",
            "https://",
        ] {
            let err = check_addresses("state_nodes", &[bad.to_string()])
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("state_nodes:"), "{bad}: {err}");
        }
    }
}
