//! Runs installed extensions as local containers: one supervisor per extension starts its container with
//! the host's address, the CA certificate and a fresh token scoped to that extension in its environment,
//! restarts it with backoff when it exits, and stops it when the extension is uninstalled or the node
//! shuts down. Install-time settings, sealed in the state, reach the container opened, as
//! `GOFER_SETTING_<NAME>`.
//!
//! An extension's container is hardened as a task's is (`gofer-docker`: never privileged, no host mounts,
//! `no-new-privileges`, the reduced capability set, a pids limit and a capped log), and it is on a bridge
//! network of this node's own (`gofer-ext-<cluster>-<node>`), never the host's: from there the host's
//! loopback, where the node's API, raft and webhook ports may listen, cannot be reached at all, and
//! other extensions' containers neither. What it dials is the extension service alone, served for it on
//! the network's gateway address with a certificate for that address from a CA made for this listener
//! (`Attachment`). The network, the listener and the CA are made when the first extension container
//! starts, so a node that runs none takes none of Docker's address ranges, and the network is removed
//! when the launcher stops.
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use gofer_auth::{Principal, TokenAuth, hash_token};
use gofer_docker::{Engine, Network};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::{Error, ExtensionHandler, ExtensionHost};

/// Serves the extension service, and only it, with the certificate in `pki` (made for the gateway alone,
/// by a CA of its own) on a socket bound to `address` (the extension network's gateway, port 0),
/// returning where it listens. The process does this (a service binds no socket), with the same token
/// table and TLS as its API port.
pub type ServeExtensions =
    Arc<dyn Fn(ExtensionHandler, SocketAddr, &gofer_tls::DevPki) -> std::io::Result<SocketAddr> + Send + Sync>;

/// What the launcher needs to start extension containers.
#[derive(Clone)]
pub struct LaunchConfig {
    /// This process's name among its peers, which names its extension network with the cluster's id.
    pub node: String,
    /// Serves the extension service on the extension network.
    pub serve: ServeExtensions,
    /// The node's token table, where each launch grants its extension a token.
    pub auth: TokenAuth,
    pub docker: Engine,
    /// An existing network for the extension containers, which this process's own container is on
    /// (`--extension-network`): they are served on this process's address there, and the network is
    /// neither made nor removed here. `None`: a network of the node's own, served on its gateway.
    pub network: Option<String>,
}

/// Labels an extension network with the node that made it.
const LABEL_EXTENSION_NETWORK: &str = "dev.gofer.extension-network";

/// Where this node's extension containers run and what they dial.
struct Attachment {
    network: Network,
    /// `https://<gateway>:<port>`: the extension service on the network's gateway.
    host: String,
    /// The CA that signed the listener's certificate and nothing else, which the containers trust.
    ca_pem: String,
}

/// Makes the extension network (or finds the one an earlier life of this node left), and serves the
/// extension service on its gateway with a certificate for that address. With `--extension-network`, it
/// uses that network instead, and serves on this process's own address in it.
async fn attach(host: &ExtensionHost, config: &LaunchConfig, cluster: &str) -> Result<Attachment, Error> {
    let (network, address) = match &config.network {
        Some(name) => {
            let mut network = config
                .docker
                .network(name, &HashMap::new())
                .await?
                .ok_or_else(|| Error::ExtensionNetworkMissing(name.clone()))?;
            // Someone else's: never removed here.
            network.labelled = false;
            let own = own_address_towards(network.gateway).map_err(|source| Error::ExtensionListener {
                address: SocketAddr::new(IpAddr::V4(network.gateway), 0),
                source,
            })?;
            (network, own)
        }
        None => {
            let name = format!("gofer-ext-{cluster}-{}", config.node);
            let labels = HashMap::from([
                (LABEL_CLUSTER.to_string(), cluster.to_string()),
                (LABEL_EXTENSION_NETWORK.to_string(), config.node.clone()),
            ]);
            let network = config.docker.ensure_network(&name, &labels).await?;
            let gateway = IpAddr::V4(network.gateway);
            (network, gateway)
        }
    };
    let now_seconds = host.clock.now_millis() / 1000;
    let pki = gofer_tls::DevPki::generate(&[address.to_string().as_str()], now_seconds)
        .map_err(Error::ExtensionCertificate)?;
    let address = SocketAddr::new(address, 0);
    let listening =
        (config.serve)(host.handler(), address, &pki).map_err(|source| Error::ExtensionListener { address, source })?;
    tracing::info!(network = %network.name, %listening, "serving extensions on their network");
    Ok(Attachment {
        host: format!("https://{listening}"),
        ca_pem: pki.ca.cert_pem,
        network,
    })
}

/// This process's own address on the network whose gateway is `gateway`: the source address the kernel
/// picks to reach it (a UDP socket's connect sends nothing).
fn own_address_towards(gateway: std::net::Ipv4Addr) -> std::io::Result<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
    socket.connect((gateway, 9))?;
    Ok(socket.local_addr()?.ip())
}

const LABEL_CLUSTER: &str = "dev.gofer.cluster";
const LABEL_EXTENSION: &str = "dev.gofer.extension";
/// The longest wait between restarts of a crashing extension.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// An extension that ran this long before exiting restarts without delay again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

type Desired = (String, BTreeMap<String, String>);

/// Keeps one container running per installed extension until `shutdown`.
pub async fn run(host: ExtensionHost, config: LaunchConfig, shutdown: CancellationToken) {
    let cluster = host.state.read(|s| s.cluster_id.clone());
    // Containers left by an earlier process of this cluster get a fresh start with fresh tokens.
    match config
        .docker
        .containers_labelled(&[(LABEL_CLUSTER, &cluster), (LABEL_EXTENSION, "true")])
        .await
    {
        Ok(stale) => {
            for container in stale {
                let _ = config.docker.remove(&container.id).await;
            }
        }
        Err(err) => tracing::warn!(%err, "could not list old extension containers"),
    }
    let mut changes = host.state.subscribe();
    let mut running: HashMap<String, (Desired, CancellationToken)> = HashMap::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let attachment: Arc<OnceCell<Attachment>> = Arc::default();
    loop {
        // Extension containers run beside the extension-host lease holder only.
        let leading = host.lease.epoch().is_some();
        let desired: HashMap<String, Desired> = host.state.read(|s| {
            s.extensions
                .iter()
                .filter(|(_, e)| leading && !e.builtin)
                .map(|(name, e)| (name.clone(), (e.image.clone(), e.settings.clone())))
                .collect()
        });
        running.retain(|name, (spec, stop)| {
            let keep = desired.get(name) == Some(spec);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (name, spec) in desired {
            if running.contains_key(&name) {
                continue;
            }
            let stop = shutdown.child_token();
            tracker.spawn(supervise(
                host.clone(),
                name.clone(),
                spec.clone(),
                cluster.clone(),
                config.clone(),
                attachment.clone(),
                stop.clone(),
            ));
            running.insert(name, (spec, stop));
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
            // Leadership can move without a new entry being applied here; look again every second.
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    for (_, stop) in running.values() {
        stop.cancel();
    }
    tracker.close();
    tracker.wait().await;
    // Every container is gone: the network goes too, unless someone else made it.
    if let Some(attachment) = attachment.get().filter(|a| a.network.labelled)
        && let Err(err) = config.docker.remove_network(&attachment.network.name).await
    {
        tracing::warn!(%err, "could not remove the extension network");
    }
}

fn random_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    // The system random source failing is not something to carry on from.
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One installed extension, as its container is run.
struct Instance {
    name: String,
    /// Its container's name.
    container: String,
    image: String,
    settings: BTreeMap<String, String>,
    cluster: String,
}

async fn supervise(
    host: ExtensionHost,
    name: String,
    (image, settings): Desired,
    cluster: String,
    config: LaunchConfig,
    attachment: Arc<OnceCell<Attachment>>,
    stop: CancellationToken,
) {
    let instance = Instance {
        container: format!("gofer-ext-{name}-{cluster}"),
        name: name.clone(),
        image,
        settings,
        cluster: cluster.clone(),
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = tokio::time::Instant::now();
        match attachment.get_or_try_init(|| attach(&host, &config, &cluster)).await {
            Ok(attached) => run_once(&host, &instance, &config, attached, &stop).await,
            Err(err) => {
                tracing::error!(extension = %name, %err, "cannot give the extension a network");
                host.set_launch_error(&name, Some(err.to_string()));
            }
        }
        if stop.is_cancelled() {
            tracing::info!(extension = %name, "extension stopped");
            return;
        }
        if started.elapsed() >= HEALTHY_RUN {
            backoff = Duration::from_secs(1);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Runs the extension's container on its network with a fresh token until it exits or `stop`, and
/// removes it.
async fn run_once(
    host: &ExtensionHost,
    instance: &Instance,
    config: &LaunchConfig,
    attached: &Attachment,
    stop: &CancellationToken,
) {
    let Instance {
        name,
        container,
        image,
        settings,
        cluster,
    } = instance;
    let token = random_token();
    let hash = hash_token(&token);
    config.auth.grant(hash, Principal::Extension(name.clone()));
    let mut env = vec![
        format!("GOFER_HOST={}", attached.host),
        format!("GOFER_EXTENSION_NAME={name}"),
        format!("GOFER_EXTENSION_TOKEN={token}"),
        format!("GOFER_CA_CERT_PEM={}", attached.ca_pem),
    ];
    env.extend(
        crate::sealed::open_install_settings(&host.keyring, name, settings)
            .iter()
            .map(|(k, v)| format!("GOFER_SETTING_{}={v}", k.to_uppercase())),
    );
    let labels = HashMap::from([
        (LABEL_CLUSTER.to_string(), cluster.clone()),
        (LABEL_EXTENSION.to_string(), "true".to_string()),
        ("dev.gofer.extension-name".to_string(), name.clone()),
    ]);
    match config
        .docker
        .run_service(container, image, env, labels, &attached.network)
        .await
    {
        Err(err) => {
            tracing::error!(extension = %name, %err, "cannot start the extension");
            host.set_launch_error(name, Some(err.to_string()));
        }
        Ok(id) => {
            host.set_launch_error(name, None);
            tracing::info!(extension = %name, container = %id, "extension started");
            tokio::select! {
                code = config.docker.wait(&id) => match code {
                    Ok(code) => {
                        tracing::warn!(extension = %name, code, "extension exited; restarting it");
                        host.set_launch_error(name, Some(format!("its container exited with code {code}; restarting it")));
                    }
                    Err(err) => tracing::warn!(extension = %name, %err, "lost track of the extension; restarting it"),
                },
                () = stop.cancelled() => {
                    let _ = config.docker.stop(&id, std::time::Duration::from_secs(5)).await;
                }
            }
            if let Err(err) = config.docker.remove(&id).await {
                tracing::warn!(extension = %name, %err, "could not remove the extension's container");
            }
        }
    }
    config.auth.revoke(&hash);
}
