//! [`never_sent`] against real failures, through the client the node dials its peers with: a connection
//! refused (the request never left), and connections that break or fall silent after the server received
//! the request (it may have been appended, so it must not be sent again elsewhere).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Calls `RaftService.Propose` on `addr` through a node's peer client and returns the failure.
async fn propose_to(addr: std::net::SocketAddr) -> tonic::Status {
    let network = PeerNetwork::new(1, None, Faults::default());
    let mut client = network
        .client(&format!("http://{addr}"))
        .expect("a loopback address is a peer address");
    let request = v1::ProposeRequest {
        command: b"{}".to_vec(),
    };
    tokio::time::timeout(Duration::from_secs(10), client.propose(request))
        .await
        .expect("the call ends")
        .expect_err("the call fails")
}

#[tokio::test]
async fn a_refused_connection_never_sent_the_request() {
    // A port that was free a moment ago, with nothing listening on it now.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .unwrap();
    let status = propose_to(addr).await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(never_sent(&status), "{status:?}");
}

/// The HTTP/2 SETTINGS frame with no settings: what a server sends first.
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
const DATA_FRAME: u8 = 0;

/// A server that speaks just enough HTTP/2 to take one request: it accepts a connection on `listener`,
/// reads frames until the request's body arrives, and returns the connection and the body's length
/// without answering.
async fn take_request(listener: tokio::net::TcpListener) -> std::io::Result<(tokio::net::TcpStream, usize)> {
    let (mut socket, _) = listener.accept().await?;
    let mut preface = [0u8; 24];
    socket.read_exact(&mut preface).await?;
    socket.write_all(&EMPTY_SETTINGS).await?;
    loop {
        let mut header = [0u8; 9];
        socket.read_exact(&mut header).await?;
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; length];
        socket.read_exact(&mut payload).await?;
        if header[3] == DATA_FRAME && stream != 0 {
            return Ok((socket, payload.len()));
        }
    }
}

#[tokio::test]
async fn a_connection_that_breaks_after_the_request_arrived_may_have_sent_it() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The server hangs up as soon as it has the request.
    let server = tokio::spawn(async move { take_request(listener).await.map(|(_, body)| body) });
    let status = propose_to(addr).await;
    let body = server.await.unwrap().expect("the server read the request");
    assert!(body > 0, "the request's body reached the server");
    assert!(!never_sent(&status), "{status:?}");
}

#[tokio::test]
async fn a_server_that_falls_silent_after_the_request_arrived_may_have_sent_it() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The server keeps the connection open and says nothing more, not even to pings, as a paused leader
    // would: the client's keep-alive gives up on it within a few seconds.
    let server = tokio::spawn(take_request(listener));
    let status = propose_to(addr).await;
    let (connection, body) = server.await.unwrap().expect("the server read the request");
    assert!(body > 0, "the request's body reached the server");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(!never_sent(&status), "{status:?}");
    drop(connection);
}

#[test]
fn append_entries_too_large_for_the_peer_are_sent_fewer_at_a_time() {
    let limit = 1000 + FRAMING_BYTES;
    assert_eq!(entries_that_fit(300, 1000, limit), None, "it fits");
    assert_eq!(entries_that_fit(1, 5000, limit), None, "one entry cannot be cut");
    assert_eq!(entries_that_fit(300, 3000, limit), Some(100));
    assert_eq!(entries_that_fit(2, 1_000_000, limit), Some(1));
    assert_eq!(
        entries_that_fit(300, 1001, limit),
        Some(299),
        "at least one fewer than before"
    );
}

/// Serves TLS on `bind` (port 0) with a certificate, from a fresh CA, that names `names`, and answers no
/// call (every call is Unimplemented once the handshake passed). Returns the address, the CA's PEM and the
/// server's task.
async fn tls_peer(bind: &str, names: &[&str]) -> (String, String, tokio::task::JoinHandle<()>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let validity = gofer_tls::Validity::starting(now, gofer_tls::Roles::ALL.lifetime());
    let ca = gofer_tls::Ca::generate("test CA", validity).unwrap();
    let cert = ca
        .issue(&gofer_tls::Subject::new("peer", names, gofer_tls::Roles::ALL), validity)
        .unwrap();
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let address = format!("https://{}", listener.local_addr().unwrap());
    let tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(&cert.cert_pem, &cert.key_pem));
    let router = tonic::transport::Server::builder()
        .tls_config(tls)
        .unwrap()
        .add_routes(tonic::service::Routes::default());
    let server = tokio::spawn(async move {
        let _ = router
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
    });
    (address, ca.certified().cert_pem.clone(), server)
}

/// What a peer client trusting `ca_pem` gets from `address`: Unimplemented once the handshake passed.
async fn read_index_at(address: &str, ca_pem: &str) -> tonic::Code {
    let tls = ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca_pem));
    let network = PeerNetwork::new(1, Some(tls), Faults::default());
    let mut client = network.client(address).expect("a peer address");
    tokio::time::timeout(Duration::from_secs(10), client.read_index(v1::ReadIndexRequest {}))
        .await
        .expect("the call ends")
        .expect_err("the test server answers no call")
        .code()
}

#[tokio::test]
async fn a_peer_is_verified_against_its_address_not_any_name_the_ca_signed() {
    let (address, ca, server) = tls_peer("127.0.0.1:0", &["localhost"]).await;
    assert_eq!(
        read_index_at(&address, &ca).await,
        tonic::Code::Unavailable,
        "a certificate naming only localhost is refused at 127.0.0.1"
    );
    server.abort();
    let (address, ca, server) = tls_peer("127.0.0.1:0", &["127.0.0.1"]).await;
    assert_eq!(read_index_at(&address, &ca).await, tonic::Code::Unimplemented);
    server.abort();
    // An IPv6 peer's address is verified without its brackets.
    let (address, ca, server) = tls_peer("[::1]:0", &["::1"]).await;
    assert_eq!(read_index_at(&address, &ca).await, tonic::Code::Unimplemented);
    server.abort();
}
