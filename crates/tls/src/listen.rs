//! Serving with the cluster CA: the TLS 1.3 server config every Gofer port uses ([`server_config`]), and
//! the stream of connections it accepts ([`incoming`]), each of which tells the requests on it who is
//! calling ([`Peer`]: the client certificate's name and [`Roles`], read once per connection).
//!
//! tonic's own TLS server offers no way to refuse TLS 1.2, so Gofer's ports do the handshake here, with
//! rustls (ring), and hand tonic the finished streams.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{Role, Roles};

/// How long a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many handshakes a port runs at once; more connections wait to be accepted.
const HANDSHAKES_AT_ONCE: usize = 256;

/// Why a port's TLS config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the {what} PEM")]
    Pem {
        what: &'static str,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the {0} PEM holds no certificate")]
    Empty(&'static str),
    #[error("the CA certificate")]
    Ca(#[source] rustls::Error),
    #[error("the client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("the certificate and key")]
    Identity(#[source] rustls::Error),
}

/// Whether a port asks its clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertificates {
    /// Every client presents one from the cluster CA (the raft port).
    Required,
    /// A client may present one (an executor) or come with a token instead (the API port).
    Optional,
}

/// The cipher suites Gofer's ports offer: TLS 1.3's three, from ring.
pub fn cipher_suites() -> Vec<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite;
    vec![
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ]
}

/// The crypto provider of Gofer's TLS: ring, offering [`cipher_suites`] alone.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: cipher_suites(),
        ..rustls::crypto::ring::default_provider()
    })
}

pub(crate) fn certificates(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ConfigError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(ConfigError::Empty(what));
    }
    Ok(certs)
}

/// A server config for a Gofer port: TLS 1.3 only, [`cipher_suites`], HTTP/2, the port's certificate and
/// key, and client certificates verified against the cluster CA (`ca_pem`) as `clients` says.
pub fn server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    clients: ClientCertificates,
) -> Result<Arc<ServerConfig>, ConfigError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for ca in certificates(ca_pem, "CA certificate")? {
        roots.add(ca).map_err(ConfigError::Ca)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let verifier = match clients {
        ClientCertificates::Required => verifier,
        ClientCertificates::Optional => verifier.allow_unauthenticated(),
    }
    .build()
    .map_err(ConfigError::Verifier)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| ConfigError::Pem {
        what: "private key",
        source,
    })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(ConfigError::Identity)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates(cert_pem, "certificate")?, key)
        .map_err(ConfigError::Identity)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Checks that `key_pem` is the private key of the certificate `cert_pem` (the first one in it), as a
/// process does at start so that a mismatched pair fails there, not as handshakes that fail later.
pub fn check_key_pair(cert_pem: &str, key_pem: &str) -> Result<(), ConfigError> {
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| ConfigError::Pem {
        what: "private key",
        source,
    })?;
    rustls::sign::CertifiedKey::from_der(certificates(cert_pem, "certificate")?, key, &provider())
        .map(|_| ())
        .map_err(ConfigError::Identity)
}

/// Who is at the other end of a connection, as its handshake showed: tonic puts it in every request's
/// extensions.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub remote_addr: Option<SocketAddr>,
    /// The client certificate (DER), verified against the cluster CA; `None` for a client without one.
    pub certificate: Option<Arc<[u8]>>,
    /// Its common name, for messages; empty without a certificate.
    pub name: String,
    /// The roles it records.
    pub roles: Roles,
}

impl Peer {
    fn of(remote_addr: Option<SocketAddr>, certificate: Option<&CertificateDer<'_>>) -> Peer {
        let Some(der) = certificate else {
            return Peer {
                remote_addr,
                ..Peer::default()
            };
        };
        Peer {
            remote_addr,
            certificate: Some(Arc::from(der.as_ref())),
            name: crate::common_name_of(der).unwrap_or_default(),
            roles: crate::roles_of(der),
        }
    }

    /// Whether the client presented a certificate that records `role`.
    pub fn has(&self, role: Role) -> bool {
        self.certificate.is_some() && self.roles.contains(role)
    }

    /// Whether the client presented a certificate that records no role at all.
    pub fn roleless(&self) -> bool {
        self.certificate.is_some() && self.roles.is_empty()
    }

    /// The refusal for a certificate that records no role, saying how to get one.
    pub fn roleless_message(&self) -> String {
        format!(
            "the client certificate {:?} records no Gofer role; issue one with `goferd certs issue NAME --role \
             state|api|scheduler|extension-host|executor` (or `goferd certs renew NAME --role ...`)",
            self.name
        )
    }
}

/// A TLS connection a Gofer port accepted, with who is at the other end.
pub struct PeerStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    peer: Peer,
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The connections `tcp` brings, once each has finished its TLS handshake under `config`, for tonic's
/// `serve_with_incoming`. Handshakes run side by side (up to 256 at once, each within 10 s) on `tracker`,
/// so one slow client holds up no other; a failed one is logged and dropped. The stream ends with
/// `shutdown`.
pub fn incoming<S>(
    tcp: S,
    config: Arc<ServerConfig>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> impl Stream<Item = io::Result<PeerStream>> + Send + 'static
where
    S: Stream<Item = io::Result<TcpStream>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(HANDSHAKES_AT_ONCE);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_AT_ONCE));
    let (accepting, shutdown) = (tracker.clone(), shutdown.clone());
    tracker.spawn(async move {
        let mut tcp = std::pin::pin!(tcp);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = tcp.next() => next,
            };
            let stream = match next {
                None => return,
                Some(Ok(stream)) => stream,
                Some(Err(err)) => {
                    // Out of file descriptors or the like: give the process a moment to close some.
                    tracing::warn!(%err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            // Without nodelay, a reply split into small writes can wait 40 ms for a delayed ACK.
            let _ = stream.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            accepting.spawn(async move {
                let remote_addr = stream.peer_addr().ok();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(inner)) => {
                        let peer = Peer::of(
                            remote_addr,
                            inner.get_ref().1.peer_certificates().and_then(|c| c.first()),
                        );
                        drop(permit);
                        let _ = tx.send(Ok(PeerStream { inner, peer })).await;
                    }
                    Ok(Err(err)) => tracing::debug!(%err, ?remote_addr, "a TLS handshake failed"),
                    Err(_) => tracing::debug!(?remote_addr, "a TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests;
