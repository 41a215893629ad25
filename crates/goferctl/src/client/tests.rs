//! The typed checks of `client.rs` against real failures: a connection refused by a closed loopback
//! port, a stream cut by a server that drops the connection mid-call, and a Status a server sent.

use gofer_proto::v1;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::codegen::{Bytes, http};

use super::*;

fn settings(host: String) -> Settings {
    Settings {
        host,
        token: "token".into(),
        ca_cert: None,
        namespace: "default".into(),
    }
}

/// What the one-call HTTP/2 server below does with the call.
enum Answer {
    /// Sends one `WatchRunResponse`, then drops the connection without ending the stream once told to.
    OneRunThenDrop(oneshot::Receiver<()>),
    /// Ends the call at once with gRPC status NOT_FOUND.
    NotFound,
}

/// Serves one call on one connection, speaking HTTP/2 itself so it can break the connection.
async fn serve_one_call(answer: Answer) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a loopback port");
    let host = format!("http://{}", listener.local_addr().expect("a bound address"));
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("a connection");
        let mut connection = h2::server::handshake(socket).await.expect("an HTTP/2 handshake");
        let (_request, mut respond) = connection.accept().await.expect("a call").expect("a well-formed call");
        let headers = http::Response::builder().header("content-type", "application/grpc");
        match answer {
            Answer::OneRunThenDrop(drop_now) => {
                let response = headers.body(()).expect("a response head");
                let mut body = respond.send_response(response, false).expect("sending the head");
                let run = v1::Run {
                    id: 1,
                    state: v1::RunState::Running as i32,
                    ..Default::default()
                };
                let message = v1::WatchRunResponse { run: Some(run) }.encode_to_vec();
                let mut frame = vec![0];
                frame.extend((message.len() as u32).to_be_bytes());
                frame.extend(message);
                body.send_data(Bytes::from(frame), false).expect("sending a message");
                // Drive the connection (it writes the frames) until the client has read the message.
                tokio::select! {
                    _ = connection.accept() => {}
                    _ = drop_now => {}
                }
            }
            Answer::NotFound => {
                let response = headers
                    .header("grpc-status", "5")
                    .header("grpc-message", "no run 3")
                    .body(())
                    .expect("a response head");
                respond.send_response(response, true).expect("sending the status");
                while connection.accept().await.is_some() {}
            }
        }
    });
    (host, server)
}

async fn api(host: String) -> v1::gofer_service_client::GoferServiceClient<Channel> {
    let channel = Endpoint::from_shared(host)
        .expect("a valid address")
        .connect()
        .await
        .expect("connecting to the test server");
    v1::gofer_service_client::GoferServiceClient::new(channel)
}

#[tokio::test]
async fn a_closed_port_refuses_and_the_line_asks_whether_goferd_runs() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let host = format!("http://{}", listener.local_addr().expect("a bound address"));
    drop(listener);
    let Err(Failure(line)) = connect(&settings(host.clone())).await else {
        panic!("connected to a closed port");
    };
    assert!(line.starts_with(&format!("cannot reach Gofer at {host}: ")), "{line}");
    assert!(line.ends_with(" (is goferd running?)"), "{line}");
}

#[tokio::test]
async fn a_stream_cut_mid_call_is_a_lost_connection() {
    let (drop_now, dropped) = oneshot::channel();
    let (host, server) = serve_one_call(Answer::OneRunThenDrop(dropped)).await;
    let mut api = api(host).await;
    let mut stream = api
        .watch_run(v1::WatchRunRequest::default())
        .await
        .expect("the call starts")
        .into_inner();
    let first = stream.message().await.expect("the first message").expect("a message");
    assert_eq!(first.run.map(|r| r.id), Some(1));
    let _ = drop_now.send(());
    server.await.expect("the server ends");
    let cut = stream.message().await.expect_err("the stream breaks");
    assert!(is_connection_lost(&cut), "{cut:?}");
    assert_eq!(
        status(cut).0,
        "lost the connection to goferd; what was under way goes on (check it with goferctl run get)"
    );
}

#[tokio::test]
async fn a_status_the_server_sent_is_reported_with_its_code() {
    let (host, server) = serve_one_call(Answer::NotFound).await;
    let mut api = api(host).await;
    let not_found = api
        .get_run(v1::GetRunRequest::default())
        .await
        .expect_err("the server says NOT_FOUND");
    assert!(!is_connection_lost(&not_found), "{not_found:?}");
    assert_eq!(status(not_found).0, "no run 3 (NotFound)");
    drop(api);
    server.await.expect("the server ends");
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// A node certificate's lifetime from now.
fn current() -> gofer_tls::Validity {
    gofer_tls::Validity::starting(now(), gofer_tls::Roles::ALL.lifetime())
}

/// A TLS server on 127.0.0.1 whose certificate, from a fresh CA, names `names` and is good over
/// `validity`, and the CA's certificate in a temp dir for goferctl to trust. The server answers no call:
/// connecting is the TLS handshake.
struct TlsServer {
    host: String,
    ca_cert: std::path::PathBuf,
    _dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl TlsServer {
    async fn start(names: &[&str], validity: gofer_tls::Validity) -> TlsServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca_validity = gofer_tls::Validity::starting(now(), gofer_tls::CA_LIFETIME);
        let ca = gofer_tls::Ca::generate("test CA", ca_validity).expect("a CA");
        let subject = gofer_tls::Subject::new("goferd", names, gofer_tls::Roles::ALL);
        let cert = ca.issue(&subject, validity).expect("a server certificate");
        let dir = tempfile::tempdir().expect("a temp dir");
        let ca_cert = dir.path().join("ca.pem");
        std::fs::write(&ca_cert, &ca.certified().cert_pem).expect("writing the CA certificate");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a loopback port");
        let host = format!("https://{}", listener.local_addr().expect("a bound address"));
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&cert.cert_pem, &cert.key_pem));
        let router = tonic::transport::Server::builder()
            .tls_config(tls)
            .expect("a TLS config")
            .add_routes(tonic::service::Routes::default());
        let server = tokio::spawn(async move {
            let _ = router
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        TlsServer {
            host,
            ca_cert,
            _dir: dir,
            server,
        }
    }

    async fn connect(&self) -> Result<Api, Failure> {
        let settings = Settings {
            ca_cert: Some(CaCert::File(self.ca_cert.clone())),
            ..settings(self.host.clone())
        };
        connect(&settings).await
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[tokio::test]
async fn a_host_at_an_ip_address_is_verified_against_that_address_not_localhost() {
    let localhost_only = TlsServer::start(&["localhost"], current()).await;
    let Err(Failure(line)) = localhost_only.connect().await else {
        panic!("a certificate that names only localhost was taken for 127.0.0.1");
    };
    assert!(
        line.starts_with(&format!("cannot reach Gofer at {}: ", localhost_only.host)),
        "{line}"
    );
    assert!(line.contains("certificate"), "{line}");
    let named = TlsServer::start(&["127.0.0.1"], current()).await;
    assert!(
        named.connect().await.is_ok(),
        "a certificate naming 127.0.0.1 is good for it"
    );
}

#[tokio::test]
async fn an_expired_server_certificate_is_refused() {
    let day = 24 * 60 * 60;
    let ended = gofer_tls::Validity {
        not_before: now() - 2 * day,
        not_after: now() - day,
    };
    let expired = TlsServer::start(&["127.0.0.1"], ended).await;
    let Err(Failure(line)) = expired.connect().await else {
        panic!("an expired certificate was accepted");
    };
    assert!(line.contains("certificate"), "{line}");
}

#[tokio::test]
async fn plain_http_is_refused_but_to_loopback() {
    for host in [
        "http://10.1.2.3:7443",
        "http://gofer.example:7443",
        "ftp://127.0.0.1:7443",
    ] {
        let Err(Failure(line)) = connect(&settings(host.into())).await else {
            panic!("{host} was accepted");
        };
        assert!(line.starts_with(&format!("--host {host:?}: use https://")), "{line}");
    }
    for host in ["127.0.0.1", "localhost", "[::1]", "127.0.0.2"] {
        let uri: tonic::transport::Uri = format!("http://{host}:7443").parse().expect("a URI");
        assert_eq!(Transport::of(&uri), Some(Transport::PlainLoopback), "{host}");
    }
}

/// Flags as clap would leave them with nothing on the command line, reading `config`.
fn no_flags(config: &std::path::Path) -> Flags {
    Flags {
        namespace: None,
        host: None,
        token: None,
        ca_cert: None,
        config: Some(config.to_path_buf()),
    }
}

#[test]
fn inside_a_task_the_run_token_and_the_relays_ca_need_no_flags_and_flags_still_win() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "host = \"https://127.0.0.1:1\"\ntoken = \"file-token\"\nca_cert = \"/file/ca.pem\"\n",
    )
    .expect("writing a config");
    let task_env = |name: &str| match name {
        "GOFER_API_TOKEN" => Some("gofer_run/default/p/1/k/mac".to_string()),
        "GOFER_CA_CERT_PEM" => Some("-----BEGIN CERTIFICATE-----".to_string()),
        _ => None,
    };
    let task = no_flags(&config)
        .resolve_with(task_env)
        .unwrap_or_else(|f| panic!("{}", f.0));
    assert_eq!(task.token, "gofer_run/default/p/1/k/mac");
    assert_eq!(task.ca_cert, Some(CaCert::Pem("-----BEGIN CERTIFICATE-----".into())));

    let flagged = Flags {
        token: Some("flag-token".into()),
        ca_cert: Some("/flag/ca.pem".into()),
        ..no_flags(&config)
    }
    .resolve_with(task_env)
    .unwrap_or_else(|f| panic!("{}", f.0));
    assert_eq!(flagged.token, "flag-token");
    assert_eq!(flagged.ca_cert, Some(CaCert::File("/flag/ca.pem".into())));

    let outside = no_flags(&config)
        .resolve_with(|_| None)
        .unwrap_or_else(|f| panic!("{}", f.0));
    assert_eq!(outside.token, "file-token");
    assert_eq!(outside.ca_cert, Some(CaCert::File("/file/ca.pem".into())));
}
