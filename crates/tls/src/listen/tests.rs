//! A port's handshakes with real rustls clients on loopback: TLS 1.3 only, client certificates verified
//! against the CA, and the peer's name and roles handed on with the connection.

use std::time::{SystemTime, UNIX_EPOCH};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpListener;
use tonic::transport::server::Connected;

use super::*;
use crate::{CA_LIFETIME, CLUSTER_CA_NAME, Ca, CertifiedKey, Subject, Validity};

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn issue(ca: &Ca, name: &str, names: &[&str], roles: Roles) -> CertifiedKey {
    ca.issue(
        &Subject::new(name, names, roles),
        Validity::starting(now(), roles.lifetime()),
    )
    .unwrap()
}

struct Port {
    address: SocketAddr,
    connections: std::pin::Pin<Box<dyn Stream<Item = io::Result<PeerStream>> + Send>>,
    ca: CertifiedKey,
    shutdown: CancellationToken,
}

async fn port(ca: &Ca, clients: ClientCertificates) -> Port {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = issue(ca, "node1", &["127.0.0.1"], Roles::ALL);
    let config = server_config(&ca.certified().cert_pem, &server.cert_pem, &server.key_pem, clients).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let tcp = tokio_stream::wrappers::TcpListenerStream::new(listener);
    Port {
        address,
        connections: Box::pin(incoming(tcp, config, &tracker, &shutdown)),
        ca: ca.certified().clone(),
        shutdown,
    }
}

/// Connects to `port` as a client of `versions` with `identity`, and says whether the handshake held.
async fn connect(
    port: &Port,
    versions: &[&'static rustls::SupportedProtocolVersion],
    identity: Option<&CertifiedKey>,
) -> bool {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(port.ca.cert_der.clone())).unwrap();
    let builder = ClientConfig::builder_with_protocol_versions(versions).with_root_certificates(roots);
    let config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(identity.cert_der.clone())],
                PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(port.address).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    match connector.connect(name, tcp).await {
        // TLS 1.3 clients finish before the server has checked their certificate: a refusal shows on read.
        Ok(mut stream) => {
            use tokio::io::AsyncReadExt;
            let mut byte = [0u8; 1];
            !matches!(
                tokio::time::timeout(Duration::from_millis(500), stream.read(&mut byte)).await,
                Ok(Err(_))
            )
        }
        Err(_) => false,
    }
}

async fn next_peer(port: &mut Port) -> Peer {
    let stream = tokio::time::timeout(Duration::from_secs(10), port.connections.next())
        .await
        .expect("a connection within 10 s")
        .expect("the stream goes on")
        .expect("a connection");
    stream.connect_info()
}

#[tokio::test]
async fn a_port_speaks_only_tls_1_3_and_says_who_called() {
    let ca = Ca::generate(CLUSTER_CA_NAME, Validity::starting(now(), CA_LIFETIME)).unwrap();
    let mut port = port(&ca, ClientCertificates::Optional).await;
    let executor = issue(&ca, "exec1", &["exec1"], Roles::of(Role::Executor));
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

    assert!(connect(&port, tls13, Some(&executor)).await);
    let peer = next_peer(&mut port).await;
    assert_eq!((peer.name.as_str(), peer.roles), ("exec1", Roles::of(Role::Executor)));
    assert!(peer.has(Role::Executor) && !peer.has(Role::State) && !peer.roleless());
    assert!(peer.remote_addr.is_some_and(|a| a.ip().is_loopback()));

    assert!(
        !connect(&port, &[&rustls::version::TLS12], Some(&executor)).await,
        "a TLS 1.2 client is refused"
    );
    assert!(
        connect(&port, tls13, None).await,
        "the API port takes clients without a certificate"
    );
    let anonymous = next_peer(&mut port).await;
    assert!(anonymous.certificate.is_none() && anonymous.roles.is_empty() && !anonymous.has(Role::Executor));

    let roleless = issue(&ca, "old", &["old"], Roles::NONE);
    assert!(connect(&port, tls13, Some(&roleless)).await);
    let old = next_peer(&mut port).await;
    assert!(old.roleless(), "{old:?}");
    assert!(old.roleless_message().contains("goferd certs issue NAME --role"));
    port.shutdown.cancel();
}

#[tokio::test]
async fn a_port_that_requires_certificates_refuses_strangers_and_the_expired() {
    let ca = Ca::generate(CLUSTER_CA_NAME, Validity::starting(now(), CA_LIFETIME)).unwrap();
    let mut port = port(&ca, ClientCertificates::Required).await;
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    assert!(!connect(&port, tls13, None).await, "no certificate");
    let other_ca = Ca::generate(CLUSTER_CA_NAME, Validity::starting(now(), CA_LIFETIME)).unwrap();
    let stranger = issue(&other_ca, "node9", &["node9"], Roles::ALL);
    assert!(
        !connect(&port, tls13, Some(&stranger)).await,
        "another CA's certificate"
    );
    let day = 24 * 60 * 60;
    let expired = ca
        .issue(
            &Subject::new("node2", &["node2"], Roles::ALL),
            Validity {
                not_before: now() - 2 * day,
                not_after: now() - day,
            },
        )
        .unwrap();
    assert!(!connect(&port, tls13, Some(&expired)).await, "an expired certificate");
    // None of those reached the server: the next connection it hands on is this one.
    let state = issue(&ca, "node2", &["node2"], Roles::of(Role::State));
    assert!(connect(&port, tls13, Some(&state)).await);
    assert_eq!(next_peer(&mut port).await.name, "node2");
    port.shutdown.cancel();
}

#[test]
fn a_certificate_and_a_key_that_are_not_a_pair_are_refused() {
    let ca = Ca::generate(CLUSTER_CA_NAME, Validity::starting(now(), CA_LIFETIME)).unwrap();
    let one = issue(&ca, "node1", &["127.0.0.1"], Roles::ALL);
    let two = issue(&ca, "node2", &["127.0.0.1"], Roles::ALL);
    assert!(check_key_pair(&one.cert_pem, &one.key_pem).is_ok());
    assert!(matches!(
        check_key_pair(&one.cert_pem, &two.key_pem),
        Err(ConfigError::Identity(rustls::Error::InconsistentKeys(_)))
    ));
    assert!(matches!(
        check_key_pair(&one.cert_pem, "not a key"),
        Err(ConfigError::Pem { .. })
    ));
}
