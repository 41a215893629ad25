//! [`ApiService`], one node's public API as its handlers (`service.rs`) and its streams (`logs.rs`,
//! `events.rs`) share it: the state, the log archive, the trigger directory, the clock and the tasks, and
//! how a call reads, proposes and maps a state error. It serves no call itself and imports none of the
//! modules that do.

use std::sync::Arc;

use gofer_clock::Clock;
use gofer_domain::access::{Caller, Method};
use gofer_domain::{Applied, Command, Error, State};
use gofer_proto::v1;
use gofer_proto::{internal, into_status, unavailable};
use gofer_state::{LogStore, StateHandle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Status};

/// What the API shows about triggers that is not in the replicated log: which extensions hold a stream
/// to the extension host right now, and where the webhook listener is.
pub trait TriggerDirectory: Send + Sync + 'static {
    /// Whether the extension is connected to the host.
    fn is_connected(&self, extension: &str) -> bool;
    /// The webhook listener's base URL, such as `http://127.0.0.1:7080`, if one runs.
    fn webhook_base(&self) -> Option<String>;
    /// Why the extension's container could not run last time, if it could not.
    fn last_error(&self, extension: &str) -> Option<String>;
}

/// A directory for a node without an extension host.
pub struct NoTriggers;

impl TriggerDirectory for NoTriggers {
    fn is_connected(&self, _extension: &str) -> bool {
        false
    }

    fn webhook_base(&self) -> Option<String> {
        None
    }

    fn last_error(&self, _extension: &str) -> Option<String> {
        None
    }
}

/// The public API of one node.
#[derive(Clone)]
pub struct ApiService {
    pub(crate) state: StateHandle,
    pub(crate) logs: Option<LogStore>,
    pub(crate) triggers: Arc<dyn TriggerDirectory>,
    /// What stamps the commands it proposes.
    pub(crate) clock: Clock,
    /// Runs the streams it serves.
    pub(crate) tracker: TaskTracker,
    /// Ends the streams it serves.
    pub(crate) shutdown: CancellationToken,
    /// Seals secret values (see `secrets.rs`).
    pub(crate) keyring: Arc<gofer_secrets::Keyring>,
}

impl ApiService {
    /// An API over the state in `deps`, its streams on `tracker` until `shutdown`.
    pub(crate) fn new(deps: crate::Deps, tracker: TaskTracker, shutdown: CancellationToken) -> Self {
        let crate::Deps {
            state,
            logs,
            triggers,
            clock,
            keyring,
        } = deps;
        ApiService {
            state,
            logs,
            triggers,
            clock,
            tracker,
            shutdown,
            keyring,
        }
    }

    /// Commits `command`, once this node serves: a refusal keeps its code.
    pub(crate) async fn propose(&self, command: Command) -> Result<Applied, Status> {
        // This node may not have applied the cluster's first command yet while the cluster has.
        if self.state.read(|s| s.cluster_id.is_empty()) {
            self.linearize().await?;
        }
        self.initialized()?;
        self.state.propose(command).await.map_err(state_status)
    }

    /// Runs `f` on the state this node applied, once it serves.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&State) -> Result<R, Error>) -> Result<R, Status> {
        self.initialized()?;
        self.state.read(f).map_err(into_status)
    }

    /// Waits until this node has applied everything the cluster committed before the call, so that a
    /// client that got OK for a write sees it on its next read from any node.
    pub(crate) async fn linearize(&self) -> Result<(), Status> {
        self.state.read_linearizable(|_| ()).await.map_err(state_status)
    }

    /// A new cluster serves once its first command (`Init`) is applied here; before, every answer would
    /// be a misleading NotFound.
    #[allow(clippy::result_large_err)]
    pub(crate) fn initialized(&self) -> Result<(), Status> {
        if self.state.read(|s| s.cluster_id.is_empty()) {
            return Err(Status::unavailable(
                "the cluster is starting: it has no leader or is not initialized yet; retry",
            ));
        }
        Ok(())
    }
}

/// Maps a state error: refusals keep their code, the rest become Unavailable or Internal.
pub(crate) fn state_status(err: gofer_state::Error) -> Status {
    match err {
        gofer_state::Error::Rejected(e) => into_status(e),
        gofer_state::Error::Unavailable(e) => unavailable("the replicated state", &e),
        gofer_state::Error::Blob(e @ gofer_state::BlobError::DiskFull(_)) => Status::resource_exhausted(e.to_string()),
        other => internal("the replicated state", &other),
    }
}

/// Ends a stream as this node shuts down, telling a client that follows it to go on elsewhere; a client
/// that reads nothing more gets no say.
pub(crate) fn shutting_down<T>(tx: &tokio::sync::mpsc::Sender<Result<T, Status>>) {
    let _ = tx.try_send(Err(Status::unavailable("the node is shutting down")));
}

/// An empty namespace in a request means `default`, as in goferctl.
pub(crate) fn namespace_or_default(namespace: String) -> String {
    if namespace.is_empty() {
        gofer_domain::DEFAULT_NAMESPACE.to_string()
    } else {
        namespace
    }
}

/// A request that acts in one namespace, which it names (empty for `default`).
pub(crate) trait InNamespace {
    fn namespace_id(&self) -> &str;

    /// The pipeline and run it acts on, for the calls a run's task token may make (empty and 0 else).
    fn target(&self) -> (&str, u64) {
        ("", 0)
    }
}

/// A request that acts on a pipeline (`StartRun`) or on one run, which a run's task token may make on its
/// own.
macro_rules! on_target {
    ($($request:ty => |$r:ident| $target:expr),* $(,)?) => {
        $(impl InNamespace for $request {
            fn namespace_id(&self) -> &str {
                &self.namespace_id
            }

            fn target(&self) -> (&str, u64) {
                let $r = self;
                $target
            }
        })*
    };
}

on_target!(
    v1::StartRunRequest => |r| (&r.pipeline_id, 0),
    v1::GetRunRequest => |r| (&r.pipeline_id, r.run_id),
    v1::WatchRunRequest => |r| (&r.pipeline_id, r.run_id),
    v1::ListTaskExecutionsRequest => |r| (&r.pipeline_id, r.run_id),
    v1::GetTaskLogsRequest => |r| (&r.pipeline_id, r.run_id),
    v1::PutObjectRequest => |r| (&r.pipeline_id, r.run_id),
    v1::GetObjectRequest => |r| (&r.pipeline_id, r.run_id),
    v1::ListObjectsRequest => |r| (&r.pipeline_id, r.run_id),
    v1::DeleteObjectRequest => |r| (&r.pipeline_id, r.run_id),
);

macro_rules! in_namespace {
    ($($request:ty),* $(,)?) => {
        $(impl InNamespace for $request {
            fn namespace_id(&self) -> &str {
                &self.namespace_id
            }
        })*
    };
}

in_namespace!(
    v1::RegisterPipelineRequest,
    v1::ListPipelinesRequest,
    v1::GetPipelineRequest,
    v1::RetryRunRequest,
    v1::ListRunsRequest,
    v1::CancelRunRequest,
    v1::CreateSubscriptionRequest,
    v1::ListSubscriptionsRequest,
    v1::GetSubscriptionRequest,
    v1::DeleteSubscriptionRequest,
    v1::PutSecretRequest,
    v1::ListSecretsRequest,
    v1::DeleteSecretRequest,
);

/// The namespace `request` acts in, once its caller may call `method` there (`gofer_auth` checked the
/// role already; this checks the namespace with the same policy).
pub(crate) fn scope<T: InNamespace>(request: &Request<T>, method: Method) -> Result<String, Status> {
    let namespace = namespace_or_default(request.get_ref().namespace_id().to_string());
    gofer_auth::authorize_request(request, method, Some(&namespace))?;
    let (pipeline, run) = request.get_ref().target();
    gofer_auth::authorize_request_target(request, method, &namespace, pipeline, run)?;
    Ok(namespace)
}

/// Who is calling, for the calls that act on the cluster and answer only with what the caller sees.
pub(crate) fn caller<T>(request: &Request<T>, method: Method) -> Result<Caller, Status> {
    gofer_auth::authorize_request(request, method, None)
}
