//! The built-in webhook trigger: its own HTTP port (never the API port), `POST
//! /webhooks/{namespace}/{pipeline}/{subscription}`, an HMAC-SHA256 signature over the raw body in GitHub's
//! `X-Hub-Signature-256: sha256=<hex>` form checked in constant time, idempotency from `X-GitHub-Delivery`
//! or `Idempotency-Key` (else the SHA-256 of the body), a 1 MiB body cap, and chosen payload fields passed
//! to the run as parameters. A body is parsed as JSON when fields are chosen or its content type says JSON.
//!
//! Every refusal is a JSON body `{"error": "..."}` with a clear message: 401 bad signature, 404 unknown
//! subscription, 413 too large, 400 malformed.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use gofer_domain::triggers::{Fire, FireOutcome};
use gofer_state::StateHandle;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::fires::FireQueue;

/// The largest body a webhook accepts.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
struct Context {
    state: StateHandle,
    fires: FireQueue,
}

pub(crate) async fn serve(
    state: StateHandle,
    fires: FireQueue,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/webhooks/{namespace}/{pipeline}/{subscription}",
            post(handle).fallback(|| async { refuse(StatusCode::METHOD_NOT_ALLOWED, "webhooks take POST") }),
        )
        .fallback(|| async {
            refuse(
                StatusCode::NOT_FOUND,
                "webhooks are POST /webhooks/{namespace}/{pipeline}/{subscription}",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Context { state, fires });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    reply(status, serde_json::json!({ "error": message.into() }))
}

async fn handle(
    State(ctx): State<Context>,
    Path((namespace, pipeline, label)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY_BYTES} bytes"),
            );
        }
        Err(rejection) => return refuse(StatusCode::BAD_REQUEST, format!("cannot read the body: {rejection}")),
    };
    let found = ctx.state.read(|s| {
        s.pipeline(&namespace, &pipeline)
            .ok()
            .and_then(|p| p.subscriptions.get(&label))
            .filter(|sub| sub.extension == "webhook")
            .map(|sub| {
                (
                    sub.settings.get("secret").cloned().unwrap_or_default(),
                    sub.settings.get("fields").cloned(),
                )
            })
    });
    let Some((secret, fields)) = found else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no webhook subscription {label:?} on pipeline {pipeline:?} in namespace {namespace:?}"),
        );
    };
    if let Err(err) = verify_signature(&secret, &headers, &body) {
        return refuse(StatusCode::UNAUTHORIZED, err.to_string());
    }
    let delivery = ["x-github-delivery", "idempotency-key"].iter().find_map(|name| {
        headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    });
    // Without a delivery id the body itself is the event: the same body delivered again makes no run.
    let body_hash;
    let delivery = match delivery {
        Some(delivery) => delivery,
        None => {
            let digest = ring::digest::digest(&ring::digest::SHA256, &body);
            body_hash = format!(
                "sha256:{}",
                digest.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
            &body_hash
        }
    };
    if delivery.len() > 128 {
        return refuse(StatusCode::BAD_REQUEST, "the delivery id is longer than 128 bytes");
    }
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    let parameters = match (fields, is_json) {
        (Some(fields), _) => match pick_fields(&fields, &body) {
            Ok(parameters) => parameters,
            Err(err) => return refuse(StatusCode::BAD_REQUEST, err.to_string()),
        },
        (None, true) => match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(_) => BTreeMap::new(),
            Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("the body is not valid JSON: {e}")),
        },
        (None, false) => BTreeMap::new(),
    };
    let fire = Fire {
        idempotency_key: format!("webhook:{namespace}/{pipeline}/{label}:{delivery}"),
        namespace,
        pipeline,
        subscription: label,
        extension: "webhook".to_string(),
        scheduled_at: 0,
        delivery: delivery.to_string(),
        parameters,
    };
    match ctx.fires.fire(fire).await {
        Ok(Ok((outcome, duplicate))) => {
            let status = if duplicate {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            let (name, run, reason) = match outcome {
                FireOutcome::Started(run) => ("started", Some(run), None),
                FireOutcome::Buffered => ("buffered", None, None),
                FireOutcome::Skipped(reason) => ("skipped", None, Some(reason)),
            };
            reply(
                status,
                serde_json::json!({ "outcome": name, "run_id": run, "reason": reason, "duplicate": duplicate }),
            )
        }
        Ok(Err(err)) => refuse(StatusCode::NOT_FOUND, err.to_string()),
        Err(err) => {
            tracing::warn!(%err, "could not commit a webhook fire");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "Gofer cannot record the delivery right now; retry it",
            )
        }
    }
}

/// Checks `X-Hub-Signature-256: sha256=<hex>` against the HMAC-SHA256 of the raw body, in constant time.
fn verify_signature(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), Error> {
    let header = headers
        .get("x-hub-signature-256")
        .ok_or(Error::SignatureMissing)?
        .to_str()
        .map_err(|_| Error::SignatureNotText)?;
    let hex = header.trim().strip_prefix("sha256=").ok_or(Error::SignatureNotSha256)?;
    let signature = decode_hex(hex).ok_or(Error::SignatureNotHex)?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::verify(&key, body, &signature).map_err(|_| Error::SignatureMismatch)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Picks `fields` (comma-separated dotted paths) out of a JSON body; strings pass as they are, other
/// values as JSON text, and absent paths are left out.
fn pick_fields(fields: &str, body: &[u8]) -> Result<BTreeMap<String, String>, Error> {
    let payload: serde_json::Value = serde_json::from_slice(body).map_err(Error::BodyNotJson)?;
    let mut out = BTreeMap::new();
    for path in fields.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut value = &payload;
        let mut found = true;
        for part in path.split('.') {
            match value.get(part) {
                Some(next) => value = next,
                None => {
                    found = false;
                    break;
                }
            }
        }
        if found {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.insert(path.to_string(), text);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(secret: &str, body: &[u8]) -> HeaderMap {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
        let tag = ring::hmac::sign(&key, body);
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let mut headers = HeaderMap::new();
        headers.insert("x-hub-signature-256", format!("sha256={hex}").parse().unwrap());
        headers
    }

    #[test]
    fn a_good_signature_passes_and_any_change_fails() {
        let body = br#"{"ref": "main"}"#;
        assert!(verify_signature("k", &signed("k", body), body).is_ok());
        assert!(verify_signature("other", &signed("k", body), body).is_err());
        assert!(verify_signature("k", &signed("k", body), br#"{"ref": "evil"}"#).is_err());
        assert!(
            verify_signature("k", &HeaderMap::new(), body)
                .unwrap_err()
                .to_string()
                .contains("missing")
        );
        let mut bad = HeaderMap::new();
        bad.insert("x-hub-signature-256", "sha1=abcd".parse().unwrap());
        assert!(verify_signature("k", &bad, body).is_err());
        bad.insert("x-hub-signature-256", "sha256=zz".parse().unwrap());
        assert!(verify_signature("k", &bad, body).is_err());
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
}
