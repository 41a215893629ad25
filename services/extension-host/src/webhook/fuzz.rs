//! The fuzz target of the webhook path (`gofer_fuzzkit` drives it: seeded cases under `cargo test`,
//! random ones for a set time under `bench/fuzz.sh`): any headers and body, signed right, wrong or not
//! at all, to a subscription that exists or not, go through [`read_delivery`], the function the port
//! answers with. It never panics; only a right signature to a subscription that exists gets past 401;
//! and what passes has a delivery id and only the parameters the subscription chose.

use axum::http::HeaderValue;
use gofer_fuzzkit::{bytes, fuzz, json_input, text};
use proptest::prelude::*;

use super::*;

/// How a delivery is signed.
#[derive(Debug, Clone)]
enum Signing {
    /// With the subscription's secret, the hex in upper or lower case, maybe with blanks around.
    Right {
        upper: bool,
        padded: bool,
    },
    /// With another secret.
    OtherSecret(Vec<u8>),
    /// Any header value at all.
    Header(Vec<u8>),
    Missing,
}

#[derive(Debug, Clone)]
struct Input {
    secret: Vec<u8>,
    exists: bool,
    fields: Option<String>,
    body: Vec<u8>,
    signing: Signing,
    content_type: Option<String>,
    delivery: Option<Vec<u8>>,
}

const WORDS: &[&str] = &[
    "ref",
    "after",
    "repository",
    "full_name",
    "head_commit",
    "id",
    "sender",
    "login",
    "action",
    ".",
    ",",
    " ",
    "main",
    "refs/heads/main",
    "a.b",
    "0",
    "",
];
const KEYS: &[&str] = &[
    "ref",
    "after",
    "repository",
    "full_name",
    "head_commit",
    "id",
    "sender",
    "login",
    "action",
];

fn seeds() -> Vec<Vec<u8>> {
    vec![
        br#"{"ref":"refs/heads/main","after":"abc123","repository":{"full_name":"o/r"},"sender":{"login":"me"}}"#
            .to_vec(),
        br#"{"action":"opened","head_commit":{"id":"f00"},"list":[1,2,{"ref":null}]}"#.to_vec(),
        b"plain text".to_vec(),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    let signing = prop_oneof![
        4 => (any::<bool>(), any::<bool>()).prop_map(|(upper, padded)| Signing::Right { upper, padded }),
        1 => bytes(40).prop_map(Signing::OtherSecret),
        1 => prop_oneof![
            bytes(80),
            text(&["sha256=", "SHA256=", "0", "f", "g", "ff", " ", "="]).prop_map(String::into_bytes),
        ]
        .prop_map(Signing::Header),
        1 => Just(Signing::Missing),
    ];
    let content_type = proptest::option::of(
        proptest::sample::select(&["application/json", "APPLICATION/JSON; charset=utf-8", "text/plain", ""][..])
            .prop_map(str::to_string),
    );
    (
        prop_oneof![4 => text(WORDS).prop_map(String::into_bytes), 1 => bytes(40)],
        proptest::bool::weighted(0.8),
        proptest::option::of(text(WORDS)),
        json_input(seeds(), KEYS, WORDS),
        signing,
        content_type,
        proptest::option::of(prop_oneof![text(WORDS).prop_map(String::into_bytes), bytes(40)]),
    )
        .prop_map(
            |(secret, exists, fields, body, signing, content_type, delivery)| Input {
                secret,
                exists,
                fields,
                body,
                signing,
                content_type,
                delivery,
            },
        )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn webhook_delivery(input: Input) -> Result<(), TestCaseError> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &input.secret);
    let right = hex(ring::hmac::sign(&key, &input.body).as_ref());
    let mut headers = HeaderMap::new();
    let signature = match &input.signing {
        Signing::Right { upper, padded } => {
            let hex = if *upper { right.to_uppercase() } else { right.clone() };
            let value = format!("sha256={hex}");
            Some(if *padded {
                format!(" {value}\t").into_bytes()
            } else {
                value.into_bytes()
            })
        }
        Signing::OtherSecret(other) => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, other);
            Some(format!("sha256={}", hex(ring::hmac::sign(&key, &input.body).as_ref())).into_bytes())
        }
        Signing::Header(value) => Some(value.clone()),
        Signing::Missing => None,
    };
    // A header value HTTP cannot carry never reaches the handler: hyper refuses it first.
    let header = |value: &[u8]| HeaderValue::from_bytes(value).ok();
    if let Some(value) = signature.as_deref().and_then(header) {
        headers.insert("x-hub-signature-256", value);
    }
    if let Some(value) = input.content_type.as_deref().map(str::as_bytes).and_then(header) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    if let Some(value) = input.delivery.as_deref().and_then(header) {
        headers.insert("x-github-delivery", value);
    }
    let subscription = input.exists.then_some(Subscription {
        secret: &input.secret,
        fields: input.fields.as_deref(),
    });
    let answer = read_delivery(&headers, &input.body, subscription);

    let signed_right = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("sha256="))
        .is_some_and(|hex| hex.eq_ignore_ascii_case(&right));
    if !(input.exists && signed_right) {
        let status = answer.as_ref().err().map(|(status, _)| *status);
        prop_assert_eq!(status, Some(StatusCode::UNAUTHORIZED), "{:?}", answer);
        return Ok(());
    }
    match answer {
        Err((status, message)) => {
            prop_assert_eq!(status, StatusCode::BAD_REQUEST, "{}", message);
        }
        Ok(delivery) => {
            gofer_fuzzkit::accepted();
            let sent = headers
                .get("x-github-delivery")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty());
            match sent {
                Some(sent) => prop_assert_eq!(delivery.delivery.as_str(), sent),
                None => prop_assert!(
                    delivery.delivery.starts_with("sha256:") && delivery.delivery.len() == 71,
                    "{}",
                    delivery.delivery
                ),
            }
            let chosen: Vec<&str> = input
                .fields
                .as_deref()
                .map_or(Vec::new(), |fields| fields.split(',').map(str::trim).collect());
            for name in delivery.parameters.keys() {
                prop_assert!(
                    chosen.contains(&name.as_str()),
                    "{} was not chosen in {:?}",
                    name,
                    input.fields
                );
            }
        }
    }
    Ok(())
}

#[test]
fn fuzz_webhook_delivery() {
    fuzz("webhook-delivery", input(), webhook_delivery);
}
