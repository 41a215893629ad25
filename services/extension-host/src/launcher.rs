//! Runs installed extensions as local containers: one supervisor per extension starts its container with
//! the host's address, the CA certificate and a fresh token scoped to that extension in its environment,
//! restarts it with backoff when it exits, and stops it when the extension is uninstalled or the node
//! shuts down. Install-time settings reach the container as `GOFER_SETTING_<NAME>`.
//!
//! An extension's container is hardened as a task's is (`gofer-docker`: never privileged, no host mounts,
//! `no-new-privileges`, the reduced capability set, a pids limit and a capped log), but it is on the host
//! network, which it needs to reach a node that listens on loopback.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use gofer_auth::{Principal, TokenAuth, hash_token};
use gofer_docker::Engine;
use tokio_util::sync::CancellationToken;

use crate::ExtensionHost;

/// What the launcher needs to start extension containers.
#[derive(Clone)]
pub struct LaunchConfig {
    /// The address extensions dial, such as `https://127.0.0.1:7443` (containers share the host network).
    pub api_host: String,
    /// The PEM of the CA that signed the node's certificate.
    pub ca_pem: String,
    /// The node's token table, where each launch grants its extension a token.
    pub auth: TokenAuth,
    pub docker: Engine,
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

async fn supervise(
    host: ExtensionHost,
    name: String,
    (image, settings): Desired,
    cluster: String,
    config: LaunchConfig,
    stop: CancellationToken,
) {
    let container = format!("gofer-ext-{name}-{cluster}");
    let mut backoff = Duration::from_secs(1);
    loop {
        let token = random_token();
        let hash = hash_token(&token);
        config.auth.grant(hash, Principal::Extension(name.clone()));
        let mut env = vec![
            format!("GOFER_HOST={}", config.api_host),
            format!("GOFER_EXTENSION_NAME={name}"),
            format!("GOFER_EXTENSION_TOKEN={token}"),
            format!("GOFER_CA_CERT_PEM={}", config.ca_pem),
        ];
        env.extend(
            settings
                .iter()
                .map(|(k, v)| format!("GOFER_SETTING_{}={v}", k.to_uppercase())),
        );
        let labels = HashMap::from([
            (LABEL_CLUSTER.to_string(), cluster.clone()),
            (LABEL_EXTENSION.to_string(), "true".to_string()),
            ("dev.gofer.extension-name".to_string(), name.clone()),
        ]);
        let started = tokio::time::Instant::now();
        match config.docker.run_service(&container, &image, env, labels).await {
            Err(err) => {
                tracing::error!(extension = %name, %err, "cannot start the extension");
                host.set_launch_error(&name, Some(err.to_string()));
            }
            Ok(id) => {
                host.set_launch_error(&name, None);
                tracing::info!(extension = %name, container = %id, "extension started");
                tokio::select! {
                    code = config.docker.wait(&id) => match code {
                        Ok(code) => {
                            tracing::warn!(extension = %name, code, "extension exited; restarting it");
                            host.set_launch_error(&name, Some(format!("its container exited with code {code}; restarting it")));
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
