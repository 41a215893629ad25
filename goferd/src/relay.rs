//! The executor's relay to the API for its task containers: a task that asked for the API
//! (`inject_api_token`) runs on Docker's default bridge, where the host's loopback (and so an API port
//! bound there) is out of reach. The relay listens on that network's gateway with a certificate for that
//! address from a CA made for it alone, and forwards each connection to an API port the executor itself
//! reaches (`gofer_tls::relay`). The task dials its `GOFER_HOST` and verifies it with its
//! `GOFER_CA_CERT_PEM`; its token is checked upstream like any client's.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use gofer_docker::Engine;
use gofer_tls::relay::Upstream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// An API port the relay forwards to: `https://host:port`, and the name its certificate carries.
pub(crate) struct ApiPort {
    pub(crate) address: String,
    pub(crate) certificate_host: String,
}

/// Starts the relay in front of `ports` (tried in order) on `tracker` until `shutdown`, and says where
/// tasks reach it. `None`, with a warning, when the Engine's task network has no gateway this process can
/// listen on (an executor inside a container, say): such tasks keep the scheduler's address.
pub(crate) async fn start(
    docker: &Engine,
    ports: &[ApiPort],
    cluster_ca_pem: &str,
    now_unix_seconds: i64,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> Option<gofer_executor::ApiRelay> {
    let started = async {
        let gateway = docker
            .task_network_gateway()
            .await?
            .context("the Docker Engine has no default bridge network")?;
        let upstreams = ports.iter().map(upstream).collect::<anyhow::Result<Vec<_>>>()?;
        let pki = gofer_tls::DevPki::generate(&[gateway.to_string().as_str()], now_unix_seconds)?;
        let server = gofer_tls::listen::server_config(
            &pki.ca.cert_pem,
            &pki.server.cert_pem,
            &pki.server.key_pem,
            gofer_tls::listen::ClientCertificates::Optional,
        )?;
        let client = gofer_tls::relay::client_config(cluster_ca_pem)?;
        let address = SocketAddr::new(IpAddr::V4(gateway), 0);
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("listening on the task network's gateway {address}"))?;
        let listening = listener.local_addr()?;
        gofer_tls::relay::relay(listener, server, client, upstreams.into(), tracker, shutdown);
        anyhow::Ok(gofer_executor::ApiRelay {
            host: format!("https://{listening}"),
            ca_pem: pki.ca.cert_pem,
        })
    };
    match started.await {
        Ok(relay) => {
            tracing::info!(host = %relay.host, "tasks reach the API through this executor's relay");
            Some(relay)
        }
        Err(err) => {
            tracing::warn!(
                err = format!("{err:#}"),
                "no relay to the API for task containers: a task with inject_api_token gets the scheduler's address"
            );
            None
        }
    }
}

fn upstream(port: &ApiPort) -> anyhow::Result<Upstream> {
    let uri: tonic::transport::Uri = port
        .address
        .parse()
        .with_context(|| format!("API address {:?}", port.address))?;
    let host = uri
        .host()
        .with_context(|| format!("API address {:?} has no host", port.address))?;
    let port_number = uri.port_u16().unwrap_or(443);
    let name = rustls::pki_types::ServerName::try_from(port.certificate_host.clone())
        .with_context(|| format!("certificate name {:?}", port.certificate_host))?;
    Ok(Upstream {
        address: format!("{host}:{port_number}"),
        name,
    })
}
