//! `goferd dev`: every role in one process on a single-node Raft, for a laptop or a test.
//!
//! First start on a data dir: make the dev CA and server certificate and a cluster id. Every start: mint
//! the admin token unless the client config already holds the one whose hash is stored, write the
//! client config where goferctl looks, serve, and run the scheduler and an executor. The executor reaches
//! the scheduler through the same TLS port and protos a remote one would use.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use gofer_auth::{Principal, TokenAuth, hash_token};
use gofer_state::{LogStore, StateNode};
use serde::{Deserialize, Serialize};

/// Flags of `goferd dev`.
#[derive(clap::Args)]
pub struct DevArgs {
    /// Where state, logs and certificates live [default: the user's data directory, gofer/dev]
    #[arg(long, env = "GOFER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The API address; port 0 picks a free port
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: String,
    /// The webhook trigger's HTTP address (not the API port); port 0 picks a free port
    #[arg(long, default_value = "127.0.0.1:7080")]
    webhook_listen: String,
    /// Where to write the client config [default: $GOFER_CONFIG, else the user's config directory]
    #[arg(long)]
    client_config: Option<PathBuf>,
    /// The most task containers that run at once; more tasks wait for room (0: no limit)
    #[arg(long, env = "GOFER_MAX_CONTAINERS", default_value_t = 32)]
    max_containers: u32,
    /// A label of the executor, which a task may require with `executor_labels`, such as zone=a; repeat
    /// it for more
    #[arg(long = "executor-label", value_name = "KEY=VALUE", value_parser = crate::flags::parse_label)]
    executor_labels: Vec<(String, String)>,
    /// How long the event stream keeps events, such as 2h or 7d; at most the newest 100,000 are kept
    /// whatever the time [default: the cluster's setting, 24h unless set before]
    #[arg(long, env = "GOFER_EVENT_RETENTION", value_parser = crate::flags::parse_retention)]
    event_retention: Option<u64>,
    /// How much of each task attempt's output the log archive keeps, such as 1MiB: beyond it, the first
    /// and last halves with a marker between them saying how much was left out
    #[arg(long, env = "GOFER_TASK_LOG_CAP", default_value = "10MiB", value_parser = crate::flags::parse_log_cap)]
    task_log_cap: u64,
    /// The key that seals secrets: a file of 64 hex digits (32 bytes) [default: secret.key in the data
    /// dir, made on first start, readable by its owner alone]
    #[arg(long)]
    secret_key_file: Option<PathBuf>,
    /// An older secret key, still accepted to open what it sealed until `goferctl secret rotate-key`
    /// sealed everything again; repeat it for more
    #[arg(long = "secret-old-key-file", value_name = "FILE")]
    secret_old_key_files: Vec<PathBuf>,
    #[command(flatten)]
    task_limits: crate::flags::TaskLimitArgs,
    #[command(flatten)]
    object_limits: crate::flags::ObjectLimitArgs,
    #[command(flatten)]
    blob_store: crate::flags::BlobStoreArgs,
}

/// The file goferctl reads to find and trust the server.
#[derive(Serialize, Deserialize)]
pub struct ClientConfig {
    pub host: String,
    pub token: String,
    pub ca_cert: PathBuf,
    pub namespace: String,
}

fn user_dir(xdg: &str, fallback: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(xdg).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("HOME is not set; pass --data-dir")?;
    Ok(PathBuf::from(home).join(fallback))
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The names the dev server certificate is for: loopback by name and by address, and the address the API
/// listens on when it is a particular one, since clients verify the address they dial.
fn dev_names(listening: std::net::IpAddr) -> Vec<String> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).into();
    if !listening.is_unspecified() && !listening.is_loopback() {
        names.push(listening.to_string());
    }
    names
}

/// Whether the dev server certificate `cert_pem` still serves: it names every one of `names`, lasts at
/// least another month, has a lifetime (an older goferd made one for 4096) and records every role (an
/// older goferd recorded none).
fn dev_certificate_serves(cert_pem: &str, names: &[String], now_unix_seconds: i64) -> bool {
    let Ok(issued) = gofer_tls::parse_certificate(cert_pem) else {
        return false;
    };
    let longest = gofer_tls::Roles::ALL.lifetime() + gofer_tls::DEV_RENEWAL_MARGIN;
    issued.roles == gofer_tls::Roles::ALL
        && names.iter().all(|name| issued.names.contains(name))
        && issued.validity.lasts(now_unix_seconds, gofer_tls::DEV_RENEWAL_MARGIN)
        && issued.validity.not_after <= now_unix_seconds.saturating_add(longest.as_secs() as i64)
}

/// The dev PKI in `dir`, made on first use and made again when its server certificate no longer serves
/// `names` for another month; goferctl reads the CA from the same file again on its next call.
fn ensure_pki(dir: &Path, names: &[String], now_unix_seconds: i64) -> anyhow::Result<crate::node::Credentials> {
    let tls = dir.join("tls");
    let (ca, cert, key) = (tls.join("ca.pem"), tls.join("server.pem"), tls.join("server.key"));
    let read = |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let serves = ca.exists()
        && key.exists()
        && std::fs::read_to_string(&cert).is_ok_and(|pem| dev_certificate_serves(&pem, names, now_unix_seconds));
    if !serves {
        std::fs::create_dir_all(&tls).with_context(|| format!("creating {}", tls.display()))?;
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let pki = gofer_tls::DevPki::generate(&names, now_unix_seconds)?;
        write_private(&tls.join("ca.key"), &pki.ca.key_pem)?;
        write_private(&key, &pki.server.key_pem)?;
        write_private(&cert, &pki.server.cert_pem)?;
        write_private(&ca, &pki.ca.cert_pem)?;
        tracing::info!(names = %names.join(", "), "made the development CA and server certificate");
    }
    Ok(crate::node::Credentials {
        ca_pem: read(&ca)?,
        cert_pem: read(&cert)?,
        key_pem: read(&key)?,
    })
}

/// The admin token: kept if the existing client config holds the token whose hash is stored, else new.
fn admin_token(data_dir: &Path, client_config: &Path) -> anyhow::Result<String> {
    let hash_file = data_dir.join("admin-token.sha256");
    let stored = std::fs::read_to_string(&hash_file).ok();
    let existing = std::fs::read_to_string(client_config)
        .ok()
        .and_then(|text| toml::from_str::<ClientConfig>(&text).ok())
        .map(|c| c.token);
    if let (Some(stored), Some(token)) = (&stored, existing)
        && stored.trim() == hex(&hash_token(&token))
    {
        return Ok(token);
    }
    let token = crate::random::hex(32)?;
    write_private(&hash_file, &hex(&hash_token(&token)))?;
    Ok(token)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hash(text: &str) -> anyhow::Result<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        bail!("the stored admin token hash is malformed");
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).context("the stored admin token hash is malformed")?;
    }
    Ok(out)
}

/// Runs `goferd dev` until SIGINT or SIGTERM.
pub async fn run(args: DevArgs, clock: gofer_clock::Clock) -> anyhow::Result<()> {
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => user_dir("XDG_DATA_HOME", ".local/share")?.join("gofer").join("dev"),
    };
    let client_config = match args
        .client_config
        .or_else(|| std::env::var_os("GOFER_CONFIG").map(PathBuf::from))
    {
        Some(path) => path,
        None => user_dir("XDG_CONFIG_HOME", ".config")?
            .join("gofer")
            .join("config.toml"),
    };
    let task_limits = args.task_limits.changes(Default::default())?;
    let object_limits = args.object_limits.limits(None, None)?;
    let shared_store = args.blob_store.shared_store(Default::default())?;
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;

    let docker = gofer_docker::Engine::connect()
        .await
        .context("goferd dev runs tasks in Docker")?;
    // The state's lock comes first: a second goferd on the same data dir stops here, before it touches the
    // certificates or the admin token of the one that runs.
    let state = StateNode::open_single(&data_dir.join("state")).await.with_context(|| {
        format!(
            "opening the state in {} (is another goferd using it?)",
            data_dir.display()
        )
    })?;
    let token = admin_token(&data_dir, &client_config)?;
    let admin_hash = parse_hash(&std::fs::read_to_string(data_dir.join("admin-token.sha256"))?)?;
    // The in-process executor gets its own token, minted per start and never written down.
    let executor_token = crate::random::hex(32)?;
    let auth = TokenAuth::new(vec![
        (admin_hash, Principal::Admin),
        (hash_token(&executor_token), Principal::Executor),
    ]);

    let webhook_listener = tokio::net::TcpListener::bind(&args.webhook_listen)
        .await
        .with_context(|| {
            format!(
                "binding the webhook port {} (pass --webhook-listen to choose another)",
                args.webhook_listen
            )
        })?;
    let api_listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {} (pass --listen to choose another address)", args.listen))?;
    let addr = api_listener.local_addr()?;
    let credentials = ensure_pki(&data_dir, &dev_names(addr.ip()), clock.now_millis() / 1000)?;
    let secret_key_file = match args.secret_key_file {
        Some(path) => path,
        None => {
            let path = data_dir.join("secret.key");
            if !path.exists() {
                gofer_secrets::write_new_key_file(&path)?;
                tracing::info!(path = %path.display(), "made the key that seals secrets");
            }
            path
        }
    };
    let keyring = gofer_secrets::Keyring::read_files(&secret_key_file, &args.secret_old_key_files)?;
    let node = crate::node::start(crate::node::NodeSetup {
        state: Some(gofer_state::Placement::Local {
            node: state.clone(),
            logs: LogStore::with_cap(data_dir.join("logs"), args.task_log_cap),
            raft: None,
        }),
        roles: crate::node::Roles::ALL,
        name: "local".to_string(),
        docker: Some(docker),
        auth,
        credentials,
        api_listener: Some(api_listener),
        webhook_listener: Some(webhook_listener),
        executor_token,
        advertise_api: None,
        webhook_url: None,
        extension_network: None,
        schedulers: Vec::new(),
        executor_capacity: args.max_containers,
        executor_labels: args.executor_labels.iter().cloned().collect(),
        benchmark_backend: false,
        new_cluster_id: crate::random::hex(8)?,
        event_retention_ms: args.event_retention,
        task_limits,
        object_limits,
        shared_store,
        clock,
        keyring: Some(std::sync::Arc::new(keyring)),
    })
    .await?;
    let host = node.api_host.clone().context("goferd dev serves the API")?;
    let webhook_addr = node.webhook_addr.context("goferd dev serves webhooks")?;
    if let Some(dir) = client_config.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let config = ClientConfig {
        host: host.clone(),
        token: token.clone(),
        ca_cert: data_dir.join("tls").join("ca.pem"),
        namespace: "default".to_string(),
    };
    write_private(&client_config, &toml::to_string(&config)?)?;

    let cluster_id = state.read(|s| s.cluster_id.clone());
    println!("goferd dev is ready");
    println!("  api:      {host}");
    println!("  cluster:  {cluster_id}");
    println!("  webhooks: http://{webhook_addr}");
    println!("  data dir: {}", data_dir.display());
    println!("  config:   {} (goferctl reads it on its own)", client_config.display());
    println!("  try:      goferctl pipeline register examples/hello && goferctl run start hello --wait");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    tracing::info!(%addr, data_dir = %data_dir.display(), "goferd dev started");

    node.run_until_signalled().await
}

#[cfg(test)]
mod tests;
