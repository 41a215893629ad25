//! The webhook port: signatures, the same refusal whether or not a subscription exists, and the bounds on
//! what one sender can hold (header and body deadlines, deliveries at once), over real loopback sockets.

use std::net::SocketAddr;

use gofer_clock::Clock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::testing::{state_with_pipeline, subscribe};

const SECRET: &str = "0123456789abcdef-webhook";

/// The keyring every test port opens sealed settings with.
fn keyring() -> Arc<gofer_secrets::Keyring> {
    Arc::new(gofer_secrets::Keyring::new(
        gofer_secrets::Key::from_bytes(&[7; 32]),
        vec![],
    ))
}

fn hex_signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    format!(
        "sha256={}",
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn signed(secret: &str, body: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("x-hub-signature-256", hex_signature(secret, body).parse().unwrap());
    headers
}

#[test]
fn a_good_signature_passes_and_any_change_fails() {
    let body = br#"{"ref": "main"}"#;
    let check = |secret: &str, headers: &HeaderMap, body: &[u8]| {
        signature_of(headers).and_then(|signature| verify_signature(secret.as_bytes(), body, &signature))
    };
    assert!(check("k", &signed("k", body), body).is_ok());
    assert!(check("other", &signed("k", body), body).is_err());
    assert!(check("k", &signed("k", body), br#"{"ref": "evil"}"#).is_err());
    assert!(matches!(
        check("k", &HeaderMap::new(), body),
        Err(Error::SignatureMissing)
    ));
    let mut bad = HeaderMap::new();
    bad.insert("x-hub-signature-256", "sha1=abcd".parse().unwrap());
    assert!(matches!(check("k", &bad, body), Err(Error::SignatureNotSha256)));
    bad.insert("x-hub-signature-256", "sha256=zz".parse().unwrap());
    assert!(matches!(check("k", &bad, body), Err(Error::SignatureNotHex)));
}

#[test]
fn fields_are_picked_by_dotted_path() {
    let body = br#"{"ref": "refs/heads/main", "repository": {"full_name": "o/r", "id": 7}, "n": null}"#;
    let picked = pick_fields("ref, repository.full_name,repository.id,missing.path", body).unwrap();
    assert_eq!(picked["ref"], "refs/heads/main");
    assert_eq!(picked["repository.full_name"], "o/r");
    assert_eq!(picked["repository.id"], "7");
    assert!(!picked.contains_key("missing.path"));
    assert!(pick_fields("ref", b"not json").is_err());
}

/// A webhook port on loopback over `state`, with its own tasks.
struct Port {
    addr: SocketAddr,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Port {
    async fn start(state: &StateHandle, limits: Limits) -> Port {
        let (tracker, shutdown) = (TaskTracker::new(), CancellationToken::new());
        let (clock, _hand) = Clock::manual(1_700_000_000_000);
        let fires = FireQueue::start(state.clone(), clock, &tracker, shutdown.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connections, stop, state) = (tracker.clone(), shutdown.clone(), state.clone());
        tracker.spawn(async move { serve(state, fires, keyring(), listener, limits, &connections, stop).await });
        Port {
            addr,
            tracker,
            shutdown,
        }
    }

    /// POSTs `body` to `path` with `headers` on a new connection; returns the status and the body.
    async fn post(&self, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut stream = self.open(request.as_bytes()).await;
        stream.write_all(body).await.unwrap();
        parse(&read_until_closed(&mut stream).await)
    }

    /// A connection that sent `bytes`, the start of a request, and waits.
    async fn open(&self, bytes: &[u8]) -> TcpStream {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        stream
    }

    /// Stops the port and waits, for at most 10 s, until its tasks ended.
    async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        let drained = tokio::time::timeout(Duration::from_secs(10), self.tracker.wait()).await;
        assert!(drained.is_ok(), "{} webhook tasks still run", self.tracker.len());
    }
}

/// Reads until the server closes the connection, for at most 10 s; returns what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    // A server that closes with unread bytes resets the connection: what arrived before still counts.
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received)).await;
    let received = String::from_utf8_lossy(&received).to_string();
    assert!(
        read.is_ok(),
        "the server neither answered nor closed within 10 s; got {received:?}"
    );
    received
}

/// The status and body of a raw HTTP response.
fn parse(response: &str) -> (u16, String) {
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

#[tokio::test]
async fn an_unknown_subscription_is_refused_exactly_as_a_bad_signature_is() {
    let (state, _dir) = state_with_pipeline().await;
    subscribe(&state, "webhook", "gh", &[("secret", SECRET), ("fields", "ref")]).await;
    subscribe(&state, "interval", "tick", &[("every", "1m")]).await;
    let port = Port::start(&state, Limits::DEFAULT).await;
    let body = br#"{"ref": "main"}"#;
    let signature = |secret: &str| vec![("X-Hub-Signature-256", hex_signature(secret, body))];

    let bad_signature = port.post("/webhooks/default/p/gh", &signature("wrong"), body).await;
    assert_eq!(bad_signature.0, 401, "{bad_signature:?}");
    // Signed with a real secret or not, a subscription that does not exist (or is no webhook) gets the
    // same answer as a bad signature.
    for path in [
        "/webhooks/default/p/nope",
        "/webhooks/default/q/gh",
        "/webhooks/other/p/gh",
        "/webhooks/default/p/tick",
    ] {
        for secret in [SECRET, "wrong"] {
            assert_eq!(
                port.post(path, &signature(secret), body).await,
                bad_signature,
                "{path} signed with {secret:?}"
            );
        }
    }
    let unsigned = port.post("/webhooks/default/p/gh", &[], body).await;
    assert_eq!(unsigned.0, 401, "{unsigned:?}");
    assert_eq!(port.post("/webhooks/default/p/nope", &[], body).await, unsigned);

    // The real thing fires; a field the fire's checks refuse (a NUL) is the sender's to fix.
    let mut good = signature(SECRET);
    good.push(("X-GitHub-Delivery", "d-1".into()));
    let (status, reply) = port.post("/webhooks/default/p/gh", &good, body).await;
    assert_eq!(status, 202, "{reply}");
    assert!(reply.contains(r#""outcome":"started""#), "{reply}");
    let nul = br#"{"ref": "a\u0000b"}"#;
    let headers = vec![
        ("X-Hub-Signature-256", hex_signature(SECRET, nul)),
        ("X-GitHub-Delivery", "d-2".into()),
    ];
    let (status, reply) = port.post("/webhooks/default/p/gh", &headers, nul).await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains("parameters.ref"), "{reply}");
    let (status, reply) = port.post("/webhooks/default/p/gh/extra", &good, body).await;
    assert_eq!(status, 404, "{reply}");
    port.stop().await;
}

#[tokio::test]
async fn a_sealed_secret_is_opened_to_check_the_signature_and_one_sealed_for_another_subscription_is_not() {
    use gofer_domain::secrets::setting_associated_data;
    let (state, _dir) = state_with_pipeline().await;
    let sealed = |label: &str| {
        keyring()
            .seal(
                &setting_associated_data("default", "p", label, "secret"),
                SECRET.as_bytes(),
            )
            .unwrap()
            .to_text()
    };
    subscribe(&state, "webhook", "sealed", &[("secret", &sealed("sealed"))]).await;
    // A ciphertext copied from another subscription does not open here.
    subscribe(&state, "webhook", "moved", &[("secret", &sealed("sealed"))]).await;
    let port = Port::start(&state, Limits::DEFAULT).await;
    let body = br#"{"ref": "main"}"#;
    let headers = |delivery: &str| {
        vec![
            ("X-Hub-Signature-256", hex_signature(SECRET, body)),
            ("X-GitHub-Delivery", delivery.to_string()),
        ]
    };
    let (status, reply) = port.post("/webhooks/default/p/sealed", &headers("s-1"), body).await;
    assert_eq!(status, 202, "{reply}");
    let (status, reply) = port.post("/webhooks/default/p/moved", &headers("s-2"), body).await;
    assert_eq!(status, 401, "{reply}");
    // Signed with the ciphertext itself, as one who read the log would: refused.
    let forged = vec![("X-Hub-Signature-256", hex_signature(&sealed("sealed"), body))];
    assert_eq!(port.post("/webhooks/default/p/sealed", &forged, body).await.0, 401);
    port.stop().await;
}

#[tokio::test]
async fn a_sender_too_slow_with_its_headers_or_its_body_is_cut_off() {
    let (state, _dir) = state_with_pipeline().await;
    let limits = Limits {
        header_read_timeout: Duration::from_millis(200),
        body_read_timeout: Duration::from_millis(200),
        ..Limits::DEFAULT
    };
    let port = Port::start(&state, limits).await;
    let mut headers_cut = port
        .open(b"POST /webhooks/default/p/gh HTTP/1.1\r\nHost: test\r\n")
        .await;
    // The connection is closed (hyper may say 408 first) without the rest of the headers.
    let received = read_until_closed(&mut headers_cut).await;
    assert!(
        received.is_empty() || received.starts_with("HTTP/1.1 408"),
        "{received:?}"
    );
    let mut body_cut = port
        .open(b"POST /webhooks/default/p/gh HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n{\"ref\"")
        .await;
    let (status, reply) = parse(&read_until_closed(&mut body_cut).await);
    assert_eq!(status, 408, "{reply}");
    assert!(reply.contains("\"error\""), "{reply}");
    port.stop().await;
}

#[tokio::test]
async fn deliveries_beyond_the_cap_wait_their_turn_and_then_are_refused() {
    let (state, _dir) = state_with_pipeline().await;
    let limits = Limits {
        deliveries_at_once: 1,
        slot_wait: Duration::from_millis(100),
        ..Limits::DEFAULT
    };
    let port = Port::start(&state, limits).await;
    // The first delivery takes the one turn and holds it while its body trickles in.
    let mut slow = port
        .open(b"POST /webhooks/default/p/gh HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 4\r\n\r\n{}")
        .await;
    // Once it holds the turn, the next delivery waits for it, then is refused as unavailable.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, reply) = port.post("/webhooks/default/p/gh", &[], b"{}").await;
        if status == 503 {
            assert!(reply.contains("retry"), "{reply}");
            break;
        }
        assert_eq!(status, 401, "before the first delivery holds the turn: {reply}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery was refused for want of a turn within 10 s"
        );
    }
    // The first one finishes and is answered; its turn is free again.
    slow.write_all(b"  ").await.unwrap();
    let (status, reply) = parse(&read_until_closed(&mut slow).await);
    assert_eq!(status, 401, "{reply}");
    let (status, reply) = port.post("/webhooks/default/p/gh", &[], b"{}").await;
    assert_eq!(status, 401, "{reply}");
    port.stop().await;
}
