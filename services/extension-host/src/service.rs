//! The `ExtensionService` stream: an extension registers (name, version, the settings it accepts), gets
//! all its subscriptions (again after every reconnect, and as they are made or deleted), and fires them.
//! An extension's token lets it speak only as itself: it cannot register another name or fire another
//! extension's subscriptions.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures_util::StreamExt;
use gofer_auth::Principal;
use gofer_domain::Command;
use gofer_domain::triggers::{Fire, FireOutcome, Registration};
use gofer_proto::v1::{self, extension_service_server::ExtensionService, session_request, session_response};
use gofer_proto::{into_status, setting_from_proto, unavailable};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::ExtensionHost;

/// Serves extensions for an [`ExtensionHost`].
#[derive(Clone)]
pub struct ExtensionHandler {
    host: ExtensionHost,
}

impl ExtensionHandler {
    pub(crate) fn new(host: ExtensionHost) -> Self {
        ExtensionHandler { host }
    }
}

type Outbound = mpsc::UnboundedSender<Result<v1::SessionResponse, Status>>;
type SubKey = (String, String, String);

fn send(tx: &Outbound, kind: session_response::Kind) -> bool {
    tx.send(Ok(v1::SessionResponse { kind: Some(kind) })).is_ok()
}

fn sub_ref((namespace, pipeline, label): &SubKey) -> v1::SubscriptionRef {
    v1::SubscriptionRef {
        namespace_id: namespace.clone(),
        pipeline_id: pipeline.clone(),
        label: label.clone(),
    }
}

#[tonic::async_trait]
impl ExtensionService for ExtensionHandler {
    type SessionStream = Pin<Box<dyn Stream<Item = Result<v1::SessionResponse, Status>> + Send + 'static>>;

    async fn session(
        &self,
        request: Request<Streaming<v1::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        // The node's interceptor attaches the caller; a request without one never passed it.
        let principal = request
            .extensions()
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no authenticated caller"))?;
        let mut inbound = request.into_inner();
        let register = match inbound.next().await {
            Some(Ok(v1::SessionRequest {
                kind: Some(session_request::Kind::Register(register)),
            })) => register,
            Some(Err(status)) => return Err(status),
            _ => {
                return Err(into_status(gofer_domain::Error::invalid(
                    "register",
                    "the first message must register",
                )));
            }
        };
        let name = register.name.clone();
        if let Principal::Extension(own) = &principal
            && own != &name
        {
            return Err(Status::permission_denied(format!(
                "this token is for extension {own:?}, not {name:?}"
            )));
        }
        let registration = Registration {
            version: register.version,
            documentation: register.documentation,
            settings: register.settings.into_iter().map(setting_from_proto).collect(),
            registered_at: self.host.clock.now_millis(),
        };
        gofer_domain::inputs::check_registration(&registration).map_err(into_status)?;
        let command = Command::RegisterExtension {
            name: name.clone(),
            builtin: false,
            registration,
            at: self.host.clock.now_millis(),
        };
        match self.host.state.propose(command).await {
            Ok(_) => {}
            Err(gofer_state::Error::Rejected(err)) => return Err(into_status(err)),
            Err(err) => return Err(unavailable("registering an extension", &err)),
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let cluster_id = self.host.state.read(|s| s.cluster_id.clone());
        send(
            &tx,
            session_response::Kind::Registered(v1::ExtensionRegistered { cluster_id }),
        );
        let connection = self.host.connect(&name);
        tracing::info!(extension = %name, "extension registered");
        let host = self.host.clone();
        self.host.tracker.spawn(async move {
            serve_session(&host, &name, inbound, &tx).await;
            host.disconnect(&name, connection);
            tracing::info!(extension = %name, "extension disconnected");
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        )))
    }
}

/// The extension's subscriptions, with their settings.
fn subscriptions_of(host: &ExtensionHost, name: &str) -> BTreeMap<SubKey, BTreeMap<String, String>> {
    host.state.read(|s| {
        s.subscriptions()
            .filter(|(_, _, _, sub)| sub.extension == name)
            .map(|(ns, p, label, sub)| {
                let settings = crate::sealed::open_settings(&host.keyring, (ns, p, label), &sub.settings);
                ((ns.to_string(), p.to_string(), label.to_string()), settings)
            })
            .collect()
    })
}

/// An extension that sends nothing (not even a heartbeat, which the SDK sends every 10 s) for this long is
/// taken as gone, and its stream is closed.
const SILENCE_LIMIT: std::time::Duration = std::time::Duration::from_secs(35);

async fn serve_session(host: &ExtensionHost, name: &str, mut inbound: Streaming<v1::SessionRequest>, tx: &Outbound) {
    let mut changes = host.state.subscribe();
    let mut last_heard = tokio::time::Instant::now();
    let mut sent: BTreeMap<SubKey, BTreeMap<String, String>> = BTreeMap::new();
    loop {
        // Bring the extension's view of its subscriptions in line with the log.
        let current = subscriptions_of(host, name);
        for key in sent.keys().filter(|k| !current.contains_key(*k)) {
            send(
                tx,
                session_response::Kind::Unsubscribe(v1::UnsubscribeExtension {
                    subscription: Some(sub_ref(key)),
                }),
            );
        }
        for (key, settings) in &current {
            if sent.get(key) != Some(settings) {
                let subscribe = v1::SubscribeExtension {
                    subscription: Some(sub_ref(key)),
                    settings: settings.clone().into_iter().collect(),
                };
                send(tx, session_response::Kind::Subscribe(subscribe));
            }
        }
        sent = current;
        let message = tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            () = tx.closed() => return,
            () = host.shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("the extension host is shutting down")));
                return;
            }
            () = tokio::time::sleep_until(last_heard + SILENCE_LIMIT) => {
                tracing::warn!(extension = %name, "extension went silent; closing its stream");
                let _ = tx.send(Err(Status::deadline_exceeded("no heartbeat for 35 s")));
                return;
            }
            message = inbound.next() => message,
        };
        last_heard = tokio::time::Instant::now();
        match message {
            Some(Ok(v1::SessionRequest {
                kind: Some(session_request::Kind::Fire(fire)),
            })) => {
                let (this, tx) = (host.clone(), tx.clone());
                let name = name.to_string();
                host.tracker.spawn(async move {
                    let result = fire_one(&this, &name, fire).await;
                    send(&tx, session_response::Kind::FireResult(result));
                });
            }
            Some(Ok(_)) => {}
            Some(Err(status)) => {
                tracing::info!(extension = %name, %status, "extension stream ended");
                return;
            }
            None => return,
        }
    }
}

async fn fire_one(host: &ExtensionHost, name: &str, fire: v1::FireSubscription) -> v1::FireResult {
    let refused = |reason: String| v1::FireResult {
        request_id: fire.request_id,
        outcome: v1::FireOutcome::Refused as i32,
        run_id: 0,
        reason,
        duplicate: false,
    };
    let Some(subscription) = fire.subscription.clone() else {
        return refused("subscription: is required".to_string());
    };
    let domain_fire = Fire {
        namespace: subscription.namespace_id,
        pipeline: subscription.pipeline_id,
        subscription: subscription.label,
        extension: name.to_string(),
        idempotency_key: fire.idempotency_key.clone(),
        scheduled_at: fire.scheduled_unix_millis,
        delivery: fire.delivery_id.clone(),
        parameters: fire.parameters.clone().into_iter().collect(),
    };
    match host.fires.fire(domain_fire).await {
        Ok(Ok((outcome, duplicate))) => {
            let (kind, run_id, reason) = match outcome {
                FireOutcome::Started(run) => (v1::FireOutcome::Started, run, String::new()),
                FireOutcome::Buffered => (v1::FireOutcome::Buffered, 0, String::new()),
                FireOutcome::Skipped(reason) => (v1::FireOutcome::Skipped, 0, reason),
            };
            v1::FireResult {
                request_id: fire.request_id,
                outcome: kind as i32,
                run_id,
                reason,
                duplicate,
            }
        }
        Ok(Err(err)) => refused(err.to_string()),
        Err(err) => refused(format!(
            "the fire could not be recorded, retry it with the same key: {err}"
        )),
    }
}
