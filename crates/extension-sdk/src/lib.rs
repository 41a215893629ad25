//! Write a Gofer extension in a few dozen lines. An extension is a long-running program that the
//! extension host starts (as a container) with its address, a CA certificate and a token in the
//! environment. It registers the settings it accepts, is told about every subscription that uses it, and
//! fires them; the host turns each fire into a run, at most once per idempotency key.
//!
//! ```no_run
//! use gofer_extension_sdk::{Connection, Extension, Firer, Handler, Subscription, SubscriptionRef};
//!
//! struct Hello;
//!
//! impl Handler for Hello {
//!     fn subscribed(&mut self, subscription: Subscription, firer: &Firer) {
//!         let firer = firer.clone();
//!         tokio::spawn(async move {
//!             let _ = firer.fire(&subscription.id, "hello:once", Default::default()).await;
//!         });
//!     }
//!     fn unsubscribed(&mut self, _subscription: &SubscriptionRef) {}
//! }
//!
//! # async fn run() -> Result<(), gofer_extension_sdk::Error> {
//! Extension::new("hello", "1.0.0").run(Connection::from_env()?, Hello).await
//! # }
//! ```
//!
//! The SDK reconnects with backoff when the stream breaks; the host sends every subscription again on
//! each new stream, so a handler should treat a repeated `subscribed` as an update.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gofer_proto::v1::{self, extension_service_client::ExtensionServiceClient, session_request, session_response};
use tokio::sync::{mpsc, oneshot};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Why the extension could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("missing environment variable {0}: the extension host sets it when it starts an extension")]
    MissingEnv(&'static str),
    #[error("invalid connection settings: {0}")]
    Config(String),
    #[error("the host refused the extension: {0}")]
    Refused(String),
    #[error("not connected to the host; retry the fire with the same key")]
    Disconnected,
}

/// Where the host is and how to prove who we are.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Such as `https://127.0.0.1:7443`.
    pub host: String,
    pub token: String,
    /// The PEM of the CA that signed the host's certificate.
    pub ca_pem: String,
}

impl Connection {
    /// Reads `GOFER_HOST`, `GOFER_EXTENSION_TOKEN` and `GOFER_CA_CERT_PEM`, which the host sets.
    pub fn from_env() -> Result<Self, Error> {
        let var = |name: &'static str| std::env::var(name).map_err(|_| Error::MissingEnv(name));
        Ok(Connection {
            host: var("GOFER_HOST")?,
            token: var("GOFER_EXTENSION_TOKEN")?,
            ca_pem: var("GOFER_CA_CERT_PEM")?,
        })
    }
}

/// Names one subscription.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionRef {
    pub namespace: String,
    pub pipeline: String,
    pub label: String,
}

impl SubscriptionRef {
    fn from_proto(r: v1::SubscriptionRef) -> Self {
        SubscriptionRef {
            namespace: r.namespace_id,
            pipeline: r.pipeline_id,
            label: r.label,
        }
    }

    fn to_proto(&self) -> v1::SubscriptionRef {
        v1::SubscriptionRef {
            namespace_id: self.namespace.clone(),
            pipeline_id: self.pipeline.clone(),
            label: self.label.clone(),
        }
    }
}

impl std::fmt::Display for SubscriptionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.pipeline, self.label)
    }
}

/// A subscription the extension serves, with the settings its pipeline gave.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: SubscriptionRef,
    pub settings: BTreeMap<String, String>,
}

/// What a fire did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireReport {
    /// A run was made (or, when `duplicate`, had been made for this key before).
    Started { run: u64, duplicate: bool },
    /// The fire waits for the subscription's previous run to end.
    Buffered,
    /// No run was made; the reason says why (such as the overlap policy).
    Skipped(String),
}

/// What an extension does when the host hands it subscriptions.
pub trait Handler: Send + 'static {
    /// A subscription to serve, or new settings for one already served.
    fn subscribed(&mut self, subscription: Subscription, firer: &Firer);
    /// A subscription was deleted: stop firing it.
    fn unsubscribed(&mut self, subscription: &SubscriptionRef);
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<v1::FireResult>>>>;

/// Fires subscriptions. Clone it freely and use it from any task.
#[derive(Clone)]
pub struct Firer {
    outbound: Arc<Mutex<Option<mpsc::UnboundedSender<v1::SessionRequest>>>>,
    pending: Pending,
    next_request: Arc<AtomicU64>,
}

impl Firer {
    /// Asks for a run of `subscription`'s pipeline. The same `idempotency_key` never makes a second run,
    /// so retrying after an error is safe.
    pub async fn fire(
        &self,
        subscription: &SubscriptionRef,
        idempotency_key: impl Into<String>,
        parameters: BTreeMap<String, String>,
    ) -> Result<FireReport, Error> {
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(request_id, tx);
        let fire = v1::FireSubscription {
            request_id,
            subscription: Some(subscription.to_proto()),
            idempotency_key: idempotency_key.into(),
            scheduled_unix_millis: 0,
            delivery_id: String::new(),
            parameters: parameters.into_iter().collect(),
        };
        let sent = self.outbound.lock().expect("outbound lock").as_ref().is_some_and(|tx| {
            tx.send(v1::SessionRequest {
                kind: Some(session_request::Kind::Fire(fire)),
            })
            .is_ok()
        });
        if !sent {
            self.pending.lock().expect("pending lock").remove(&request_id);
            return Err(Error::Disconnected);
        }
        let result = rx.await.map_err(|_| Error::Disconnected)?;
        match v1::FireOutcome::try_from(result.outcome) {
            Ok(v1::FireOutcome::Started) => Ok(FireReport::Started {
                run: result.run_id,
                duplicate: result.duplicate,
            }),
            Ok(v1::FireOutcome::Buffered) => Ok(FireReport::Buffered),
            Ok(v1::FireOutcome::Skipped) => Ok(FireReport::Skipped(result.reason)),
            _ => Err(Error::Refused(result.reason)),
        }
    }
}

/// An extension: its name and version, and the settings a subscription may give it.
#[derive(Debug, Clone)]
pub struct Extension {
    name: String,
    version: String,
    documentation: String,
    settings: Vec<v1::ExtensionSetting>,
}

impl Extension {
    /// An extension called `name` (as installed with `goferctl extension install NAME IMAGE`).
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Extension {
            name: name.into(),
            version: version.into(),
            documentation: String::new(),
            settings: Vec::new(),
        }
    }

    /// What the extension does, for `goferctl extension get`.
    pub fn documentation(mut self, text: impl Into<String>) -> Self {
        self.documentation = text.into();
        self
    }

    /// A setting subscriptions may (or, if `required`, must) give.
    pub fn setting(mut self, name: impl Into<String>, required: bool, description: impl Into<String>) -> Self {
        self.settings.push(v1::ExtensionSetting {
            name: name.into(),
            required,
            description: description.into(),
            secret: false,
        });
        self
    }

    /// Serves the host until the process ends, reconnecting with backoff. Returns only on a refusal that a
    /// reconnect cannot fix (such as a token for another extension, or an uninstalled extension).
    pub async fn run<H: Handler>(self, connection: Connection, mut handler: H) -> Result<(), Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let header: MetadataValue<Ascii> = format!("Bearer {}", connection.token)
            .parse()
            .map_err(|_| Error::Config("the token cannot be a header".into()))?;
        // The host's certificate is verified against GOFER_HOST's own host name or IP address.
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&connection.ca_pem));
        let channel = Endpoint::from_shared(connection.host.clone())
            .map_err(|e| Error::Config(format!("GOFER_HOST {:?}: {e}", connection.host)))?
            .tls_config(tls)
            .map_err(|e| Error::Config(e.to_string()))?
            .connect_lazy();
        let firer = Firer {
            outbound: Arc::default(),
            pending: Arc::default(),
            next_request: Arc::default(),
        };
        let mut backoff = Duration::from_millis(200);
        loop {
            match self
                .session(channel.clone(), header.clone(), &mut handler, &firer)
                .await
            {
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::PermissionDenied | tonic::Code::NotFound | tonic::Code::Unauthenticated
                    ) =>
                {
                    return Err(Error::Refused(status.message().to_string()));
                }
                Err(status) => tracing::warn!(%status, "extension stream ended; reconnecting"),
                Ok(()) => tracing::warn!("the host closed the stream; reconnecting"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn session<H: Handler>(
        &self,
        channel: tonic::transport::Channel,
        header: MetadataValue<Ascii>,
        handler: &mut H,
        firer: &Firer,
    ) -> Result<(), tonic::Status> {
        let (tx, rx) = mpsc::unbounded_channel();
        let register = v1::RegisterExtension {
            name: self.name.clone(),
            version: self.version.clone(),
            documentation: self.documentation.clone(),
            settings: self.settings.clone(),
        };
        let _ = tx.send(v1::SessionRequest {
            kind: Some(session_request::Kind::Register(register)),
        });
        let mut client = ExtensionServiceClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
            request.metadata_mut().insert("authorization", header.clone());
            Ok(request)
        });
        let mut inbound = client
            .session(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        *firer.outbound.lock().expect("outbound lock") = Some(tx.clone());
        let mut heartbeat = tokio::time::interval(Duration::from_secs(10));
        let result = loop {
            let message = tokio::select! {
                _ = heartbeat.tick() => {
                    let beat = v1::SessionRequest { kind: Some(session_request::Kind::Heartbeat(v1::ExtensionHeartbeat {})) };
                    let _ = tx.send(beat);
                    continue;
                }
                message = inbound.message() => message,
            };
            match message {
                Ok(Some(v1::SessionResponse { kind: Some(kind) })) => match kind {
                    session_response::Kind::Registered(_) => tracing::info!(extension = %self.name, "registered"),
                    session_response::Kind::Subscribe(subscribe) => {
                        let Some(id) = subscribe.subscription else { continue };
                        let subscription = Subscription {
                            id: SubscriptionRef::from_proto(id),
                            settings: subscribe.settings.into_iter().collect(),
                        };
                        handler.subscribed(subscription, firer);
                    }
                    session_response::Kind::Unsubscribe(unsubscribe) => {
                        if let Some(id) = unsubscribe.subscription {
                            handler.unsubscribed(&SubscriptionRef::from_proto(id));
                        }
                    }
                    session_response::Kind::FireResult(result) => {
                        if let Some(reply) = firer.pending.lock().expect("pending lock").remove(&result.request_id) {
                            let _ = reply.send(result);
                        }
                    }
                },
                Ok(Some(_)) => {}
                Ok(None) => break Ok(()),
                Err(status) => break Err(status),
            }
        };
        *firer.outbound.lock().expect("outbound lock") = None;
        // Fires waiting on this stream fail now; their callers retry with the same key.
        firer.pending.lock().expect("pending lock").clear();
        result
    }
}
