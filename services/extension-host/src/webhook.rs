//! The built-in webhook trigger: its own HTTP port (never the API port), `POST
//! /webhooks/{namespace}/{pipeline}/{subscription}`, an HMAC-SHA256 signature over the raw body in GitHub's
//! `X-Hub-Signature-256: sha256=<hex>` form checked in constant time, idempotency from `X-GitHub-Delivery`
//! or `Idempotency-Key` (else the SHA-256 of the body), a 1 MiB body cap, and chosen payload fields passed
//! to the run as parameters. A body is parsed as JSON when fields are chosen or its content type says JSON.
//!
//! Every refusal is a JSON body `{"error": "..."}` with a clear message: 401 bad or missing signature,
//! 413 too large, 400 malformed, 408 a body that did not arrive in time, 503 too many deliveries at once.
//! A subscription that does not exist is refused exactly as a bad signature is (401, the same body, after
//! the same HMAC), so the port does not tell which namespaces, pipelines and labels exist; 404 is only
//! for paths that are no webhook URL at all.
//!
//! The port is open to the internet, so it bounds what a sender can hold: headers must arrive within
//! [`Limits::header_read_timeout`] (idle keep-alive connections close then too), at most
//! [`Limits::deliveries_at_once`] deliveries are read and handled at once (a delivery waits
//! [`Limits::slot_wait`] for a turn, then gets 503), and a body must arrive within
//! [`Limits::body_read_timeout`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use gofer_domain::ErrorKind;
use gofer_domain::triggers::{Fire, FireOutcome};
use gofer_state::StateHandle;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Error;
use crate::fires::FireQueue;

/// The largest body a webhook accepts.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the webhook port lets one sender hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// How long a connection may take to send a request's headers, or stay idle between requests.
    pub(crate) header_read_timeout: Duration,
    /// How many deliveries are read and handled at once; with [`MAX_BODY_BYTES`] it bounds the memory
    /// bodies take.
    pub(crate) deliveries_at_once: usize,
    /// How long a delivery waits for its turn before it is refused with 503.
    pub(crate) slot_wait: Duration,
    /// How long a delivery's body may take to arrive once its turn came.
    pub(crate) body_read_timeout: Duration,
}

impl Limits {
    /// The limits the webhook port runs with.
    pub(crate) const DEFAULT: Limits = Limits {
        header_read_timeout: Duration::from_secs(10),
        deliveries_at_once: 64,
        slot_wait: Duration::from_secs(10),
        body_read_timeout: Duration::from_secs(30),
    };
}

/// The key an unknown subscription's signature is checked with, so that it costs what a known one does;
/// the check's result is never used.
const UNKNOWN_SUBSCRIPTION_KEY: &[u8] = b"gofer: no such webhook subscription";

#[derive(Clone)]
struct Context {
    state: StateHandle,
    fires: FireQueue,
    /// Opens the subscriptions' sealed secrets.
    keyring: Arc<gofer_secrets::Keyring>,
    limits: Limits,
    /// One permit per delivery being read or handled.
    slots: Arc<Semaphore>,
}

/// Serves webhooks on `listener` until `shutdown`, each connection a task on `tracker`; a connection
/// finishes the request it is handling before it closes.
pub(crate) async fn serve(
    state: StateHandle,
    fires: FireQueue,
    keyring: Arc<gofer_secrets::Keyring>,
    listener: tokio::net::TcpListener,
    limits: Limits,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
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
        .with_state(Context {
            state,
            fires,
            keyring,
            limits,
            slots: Arc::new(Semaphore::new(limits.deliveries_at_once)),
        });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, usually: wait a moment rather than spin.
                tracing::warn!(%err, "could not accept a webhook connection");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let stop = shutdown.clone();
        tracker.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    reply(status, serde_json::json!({ "error": message.into() }))
}

/// Waits for a turn to read and handle a delivery, then reads its body; or answers why not.
async fn read_body(ctx: &Context, request: Request) -> Result<(tokio::sync::OwnedSemaphorePermit, Bytes), Response> {
    let slot = tokio::time::timeout(ctx.limits.slot_wait, ctx.slots.clone().acquire_owned()).await;
    let Ok(Ok(slot)) = slot else {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many deliveries are being handled; retry it",
        ));
    };
    match tokio::time::timeout(ctx.limits.body_read_timeout, Bytes::from_request(request, &())).await {
        Ok(Ok(body)) => Ok((slot, body)),
        Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        )),
        Ok(Err(rejection)) => Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("cannot read the body: {rejection}"),
        )),
        Err(_) => Err(refuse(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the body did not arrive within {} s",
                ctx.limits.body_read_timeout.as_secs()
            ),
        )),
    }
}

async fn handle(
    State(ctx): State<Context>,
    Path((namespace, pipeline, label)): Path<(String, String, String)>,
    request: Request,
) -> Response {
    let headers = request.headers().clone();
    // Held until the delivery is answered: what waits for the log counts too.
    let (_slot, body) = match read_body(&ctx, request).await {
        Ok(read) => read,
        Err(refused) => return refused,
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
    // The secret is opened only here, to check the signature; one that does not open with this node's
    // keys is refused as an unknown subscription is.
    let found = found.and_then(|(stored, fields)| {
        let secret = crate::sealed::open_setting(&ctx.keyring, (&namespace, &pipeline, &label), "secret", &stored)?;
        Some((secret, fields))
    });
    let subscription = found.as_ref().map(|(secret, fields)| Subscription {
        secret: secret.as_bytes(),
        fields: fields.as_deref(),
    });
    let Delivery { delivery, parameters } = match read_delivery(&headers, &body, subscription) {
        Ok(delivery) => delivery,
        Err((status, message)) => return refuse(status, message),
    };
    let fire = Fire {
        idempotency_key: format!("webhook:{namespace}/{pipeline}/{label}:{delivery}"),
        namespace,
        pipeline,
        subscription: label,
        extension: "webhook".to_string(),
        scheduled_at: 0,
        delivery,
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
        // The fire's own checks (its parameters, chosen from the payload) are the sender's to fix; anything
        // else means the subscription went away since it was read.
        Ok(Err(err)) if err.kind() == ErrorKind::InvalidArgument => refuse(StatusCode::BAD_REQUEST, err.to_string()),
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

/// The webhook subscription a delivery names, as the state holds it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subscription<'a> {
    pub(crate) secret: &'a [u8],
    /// The `fields` setting: the body's dotted paths that become the run's parameters.
    pub(crate) fields: Option<&'a str>,
}

/// A delivery whose signature checked out: its id and the parameters it gives the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// The sender's delivery id, or the body's SHA-256 without one.
    pub(crate) delivery: String,
    pub(crate) parameters: BTreeMap<String, String>,
}

/// Reads a delivery to `subscription` (`None` when it does not exist): checks the signature over the raw
/// body, then takes the delivery id from the headers and the parameters from the body. A refusal is the
/// status to answer and why. Everything a sender controls passes here before it reaches the log.
pub(crate) fn read_delivery(
    headers: &HeaderMap,
    body: &[u8],
    subscription: Option<Subscription<'_>>,
) -> Result<Delivery, (StatusCode, String)> {
    let signature = signature_of(headers).map_err(|err| (StatusCode::UNAUTHORIZED, err.to_string()))?;
    // An unknown subscription is checked against a key of its own and refused as a bad signature is, so
    // that neither the answer nor the work done tells whether the subscription exists.
    let key = subscription.map_or(UNKNOWN_SUBSCRIPTION_KEY, |s| s.secret);
    let verified = verify_signature(key, body, &signature);
    let (Some(subscription), Ok(())) = (subscription, verified) else {
        return Err((StatusCode::UNAUTHORIZED, Error::SignatureMismatch.to_string()));
    };
    let delivery = ["x-github-delivery", "idempotency-key"].iter().find_map(|name| {
        headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    });
    // Without a delivery id the body itself is the event: the same body delivered again makes no run.
    let delivery = match delivery {
        Some(delivery) => delivery.to_string(),
        None => {
            let digest = ring::digest::digest(&ring::digest::SHA256, body);
            let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            format!("sha256:{hex}")
        }
    };
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    let parameters = match (subscription.fields, is_json) {
        (Some(fields), _) => pick_fields(fields, body).map_err(|err| (StatusCode::BAD_REQUEST, err.to_string()))?,
        (None, true) => match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(_) => BTreeMap::new(),
            Err(e) => {
                return Err((StatusCode::BAD_REQUEST, format!("the body is not valid JSON: {e}")));
            }
        },
        (None, false) => BTreeMap::new(),
    };
    Ok(Delivery { delivery, parameters })
}

/// The signature `X-Hub-Signature-256: sha256=<hex>` carries.
fn signature_of(headers: &HeaderMap) -> Result<Vec<u8>, Error> {
    let header = headers
        .get("x-hub-signature-256")
        .ok_or(Error::SignatureMissing)?
        .to_str()
        .map_err(|_| Error::SignatureNotText)?;
    let hex = header.trim().strip_prefix("sha256=").ok_or(Error::SignatureNotSha256)?;
    decode_hex(hex).ok_or(Error::SignatureNotHex)
}

/// Checks `signature` against the HMAC-SHA256 of the raw body under `secret`, in constant time.
fn verify_signature(secret: &[u8], body: &[u8], signature: &[u8]) -> Result<(), Error> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, body, signature).map_err(|_| Error::SignatureMismatch)
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
mod fuzz;
#[cfg(test)]
mod tests;
