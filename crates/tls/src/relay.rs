//! A relay to the API for clients that cannot reach an API port themselves (a task's container, on a
//! Docker bridge network): it finishes the client's TLS handshake with a certificate of its own, opens a
//! TLS 1.3 connection to the first of its upstream API ports that answers, verified against the cluster
//! CA under the name the upstream's certificate carries, and copies the bytes both ways. The HTTP/2 inside
//! passes through untouched, so every request is authorized upstream by its own token: the relay presents
//! no client certificate and adds no rights.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::server::ServerConfig;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::listen::ConfigError;

/// How long the relay waits for one upstream to accept a connection before it tries the next.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How many connections it relays at once; more wait to be accepted.
const CONNECTIONS_AT_ONCE: usize = 256;

/// An API port the relay forwards to.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port`, as a socket is opened to it.
    pub address: String,
    /// The name (DNS name or IP address) its certificate must carry.
    pub name: ServerName<'static>,
}

/// A client config for the relay's upstream side: TLS 1.3 only, [`cipher_suites`], HTTP/2, servers verified
/// against the cluster CA (`ca_pem`), no client certificate.
pub fn client_config(ca_pem: &str) -> Result<Arc<ClientConfig>, ConfigError> {
    let mut roots = RootCertStore::empty();
    for ca in crate::listen::certificates(ca_pem, "CA certificate")? {
        roots.add(ca).map_err(ConfigError::Ca)?;
    }
    let mut config = ClientConfig::builder_with_provider(crate::listen::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(ConfigError::Identity)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Relays every connection `listener` accepts (its handshake done under `server`) to the first of
/// `upstreams` that answers (under `client`), until `shutdown`. Every task it starts runs on `tracker`.
pub fn relay(
    listener: TcpListener,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    upstreams: Arc<[Upstream]>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let tcp = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let incoming = crate::listen::incoming(tcp, server, tracker, shutdown);
    let connector = TlsConnector::from(client);
    let at_once = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_AT_ONCE));
    let (relaying, shutdown) = (tracker.clone(), shutdown.clone());
    tracker.spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        while let Some(accepted) = incoming.next().await {
            let Ok(mut downstream) = accepted else { continue };
            let Ok(permit) = at_once.clone().acquire_owned().await else {
                return;
            };
            let (connector, upstreams, shutdown) = (connector.clone(), upstreams.clone(), shutdown.clone());
            relaying.spawn(async move {
                let _permit = permit;
                let mut upstream = match connect(&connector, &upstreams).await {
                    Ok(upstream) => upstream,
                    Err(err) => {
                        tracing::warn!(%err, "the API relay reached no upstream API port");
                        return;
                    }
                };
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    copied = tokio::io::copy_bidirectional(&mut downstream, &mut upstream) => {
                        if let Err(err) = copied {
                            tracing::debug!(%err, "a relayed connection ended with an error");
                        }
                    }
                }
            });
        }
    });
}

/// The first upstream that completes a TCP connect and a verified TLS handshake, in order.
async fn connect(
    connector: &TlsConnector,
    upstreams: &[Upstream],
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no upstream API port is configured");
    for upstream in upstreams {
        let attempt = async {
            let tcp = TcpStream::connect(&upstream.address).await?;
            let _ = tcp.set_nodelay(true);
            connector.connect(upstream.name.clone(), tcp).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(err)) => last = err,
            Err(_) => last = io::Error::new(io::ErrorKind::TimedOut, format!("{} did not answer", upstream.address)),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests;
