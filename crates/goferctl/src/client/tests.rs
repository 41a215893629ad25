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
