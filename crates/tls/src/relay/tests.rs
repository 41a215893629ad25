//! The relay on loopback with real rustls on both sides: bytes pass both ways to an upstream whose
//! certificate the cluster CA signed for the expected name, a dead upstream is skipped, and an upstream
//! that cannot prove that name gets nothing.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::listen::{ClientCertificates, server_config};
use crate::{CA_LIFETIME, CLUSTER_CA_NAME, Ca, DevPki, Roles, Subject, Validity};

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// An upstream "API port" that answers each connection's first line with `upstream says: <line>`.
async fn echo_upstream(ca: &Ca, names: &[&str], tracker: &TaskTracker) -> SocketAddr {
    let server = ca
        .issue(
            &Subject::new("node1", names, Roles::ALL),
            Validity::starting(now(), Roles::ALL.lifetime()),
        )
        .unwrap();
    let config = server_config(
        &ca.certified().cert_pem,
        &server.cert_pem,
        &server.key_pem,
        ClientCertificates::Optional,
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tracker.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut line = vec![0u8; 64];
            let n = tls.read(&mut line).await.unwrap_or(0);
            let mut reply = b"upstream says: ".to_vec();
            reply.extend_from_slice(&line[..n]);
            let _ = tls.write_all(&reply).await;
            let _ = tls.shutdown().await;
        }
    });
    address
}

/// A relay on loopback in front of `upstreams`, with a certificate of its own CA for 127.0.0.1; returns
/// its address and that CA.
async fn relay_in_front(
    cluster_ca: &Ca,
    upstreams: Vec<Upstream>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> (SocketAddr, DevPki) {
    let pki = DevPki::generate(&["127.0.0.1"], now()).unwrap();
    let server = server_config(
        &pki.ca.cert_pem,
        &pki.server.cert_pem,
        &pki.server.key_pem,
        ClientCertificates::Optional,
    )
    .unwrap();
    let client = client_config(&cluster_ca.certified().cert_pem).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    relay(listener, server, client, upstreams.into(), tracker, shutdown);
    (address, pki)
}

/// Says `hello` through the relay at `address`, trusting `relay_ca`; what came back, if anything.
async fn say_hello(address: SocketAddr, relay_ca: &str) -> Vec<u8> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(relay_ca.as_bytes()).unwrap())
        .unwrap();
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(address).await.unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"hello").await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut reply)).await;
    reply
}

fn upstream(address: SocketAddr, name: &str) -> Upstream {
    Upstream {
        address: address.to_string(),
        name: ServerName::try_from(name.to_string()).unwrap(),
    }
}

#[tokio::test]
async fn bytes_pass_both_ways_to_the_first_upstream_that_answers() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let ca = Ca::generate(CLUSTER_CA_NAME, Validity::starting(now(), CA_LIFETIME)).unwrap();
    let live = echo_upstream(&ca, &["127.0.0.1"], &tracker).await;
    // A port nothing listens on: bound, then closed.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let upstreams = vec![upstream(dead, "127.0.0.1"), upstream(live, "127.0.0.1")];
    let (address, pki) = relay_in_front(&ca, upstreams, &tracker, &shutdown).await;
    assert_eq!(say_hello(address, &pki.ca.cert_pem).await, b"upstream says: hello");
    shutdown.cancel();
}

#[tokio::test]
async fn an_upstream_that_cannot_prove_its_name_or_ca_gets_nothing() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let ca = Ca::generate(CLUSTER_CA_NAME, Validity::starting(now(), CA_LIFETIME)).unwrap();
    let other_ca = Ca::generate(CLUSTER_CA_NAME, Validity::starting(now(), CA_LIFETIME)).unwrap();
    let wrong_name = echo_upstream(&ca, &["node9.example"], &tracker).await;
    let wrong_ca = echo_upstream(&other_ca, &["127.0.0.1"], &tracker).await;
    for upstreams in [
        vec![upstream(wrong_name, "127.0.0.1")],
        vec![upstream(wrong_ca, "127.0.0.1")],
    ] {
        let (address, pki) = relay_in_front(&ca, upstreams, &tracker, &shutdown).await;
        assert_eq!(
            say_hello(address, &pki.ca.cert_pem).await,
            b"",
            "the client is hung up on"
        );
    }
    shutdown.cancel();
}
