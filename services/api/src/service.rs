//! The `GoferService` handlers: thin, each converts the request, reads or proposes through
//! [`ApiService`] and converts back; the long-lived answers are streams from `logs.rs` and `events.rs`.

use std::pin::Pin;

use gofer_domain::{Applied, Command, Error, Run, State};
use gofer_proto::v1::{self, gofer_service_server::GoferService};
use gofer_proto::{
    config_from_proto, config_to_proto, extension_to_proto, internal, into_status, run_to_proto, subscription_to_proto,
    task_to_proto,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use gofer_domain::access::Method;

use crate::api::{ApiService, caller, scope, shutting_down, state_status};
use crate::paging::{Page, past};

type ApiResult<T> = Result<Response<T>, Status>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The extension host's lease, while it is live at `now`.
fn extension_host_lease(state: &gofer_domain::State, now: i64) -> Option<&gofer_domain::lease::Lease> {
    state
        .leases
        .roles
        .get(&gofer_domain::lease::Role::ExtensionHost)
        .filter(|lease| lease.expires_at > now)
}

/// What the handlers build from the state, beyond what every call shares.
impl ApiService {
    fn subscription_proto(&self, namespace: &str, pipeline: &str, label: &str) -> Result<v1::Subscription, Status> {
        let now = self.clock.now_millis();
        let local = self.triggers.webhook_base();
        self.read(|s| {
            // Away from the extension host, the webhook base is the one its live lease advertises.
            let base = local.clone().or_else(|| {
                extension_host_lease(s, now)
                    .map(|lease| lease.address.clone())
                    .filter(|address| !address.is_empty())
            });
            let record = s.pipeline(namespace, pipeline)?;
            let sub = record
                .subscriptions
                .get(label)
                .ok_or_else(|| Error::NotFound(format!("subscription {label:?} of pipeline {pipeline:?}")))?;
            let url = match (&base, sub.extension.as_str()) {
                (Some(base), "webhook") => format!("{base}/webhooks/{namespace}/{pipeline}/{label}"),
                _ => String::new(),
            };
            Ok(subscription_to_proto(s, namespace, pipeline, label, sub, url))
        })
    }

    fn extension_proto(&self, name: &str) -> Result<v1::Extension, Status> {
        let connected = self.triggers.is_connected(name);
        let last_error = self.triggers.last_error(name).unwrap_or_default();
        let now = self.clock.now_millis();
        self.read(|s| {
            let record = s
                .extensions
                .get(name)
                .ok_or_else(|| Error::NotFound(format!("extension {name:?}")))?;
            // Away from the extension host, a built-in trigger counts as connected while some extension
            // host holds its lease (that host runs the built-ins), and another while that host reports it
            // connected as it renews its lease.
            let reported = extension_host_lease(s, now)
                .is_some_and(|lease| record.builtin || lease.connected.iter().any(|n| n == name));
            let connected = connected || reported;
            Ok(v1::Extension {
                last_error,
                ..extension_to_proto(name, record, connected)
            })
        })
    }

    /// Starts a run (or retries `retry_of`); returns it and whether this call made it.
    async fn start(
        &self,
        namespace: String,
        pipeline: String,
        request_id: String,
        parameters: std::collections::BTreeMap<String, String>,
        retry_of: u64,
    ) -> Result<(v1::Run, bool), Status> {
        let applied = self
            .propose(Command::StartRun {
                namespace: namespace.clone(),
                pipeline: pipeline.clone(),
                request_id,
                parameters,
                retry_of,
                at: self.clock.now_millis(),
            })
            .await?;
        let (Applied::Run(id) | Applied::ExistingRun(id)) = applied else {
            return Err(internal("starting a run", &format!("unexpected result {applied:?}")));
        };
        Ok((
            self.run_proto(&namespace, &pipeline, id)?,
            matches!(applied, Applied::Run(_)),
        ))
    }

    fn run_proto(&self, namespace: &str, pipeline: &str, run: u64) -> Result<v1::Run, Status> {
        self.read(|s| {
            s.run(namespace, pipeline, run)
                .map(|(r, _)| run_to_proto(namespace, pipeline, r))
        })
    }
}

fn pipeline_proto(namespace: &str, id: &str, record: &gofer_domain::PipelineRecord) -> v1::Pipeline {
    let latest = record.latest();
    v1::Pipeline {
        namespace_id: namespace.to_string(),
        id: id.to_string(),
        name: latest.name.clone(),
        description: latest.description.clone(),
        latest_version: record.versions.len() as u64,
        created_unix_millis: record.created_at,
        updated_unix_millis: record.updated_at,
    }
}

/// One `page` of a pipeline's runs, newest first: those older than run `after`, if given.
fn runs_newest_first(
    namespace: &str,
    pipeline: &str,
    runs: &std::collections::BTreeMap<u64, Run>,
    after: Option<u64>,
    page: &Page,
) -> (Vec<v1::Run>, String) {
    let older = match after {
        Some(after) => runs.range(..after),
        None => runs.range(..),
    };
    page.take(older.rev().map(|(id, r)| (id, run_to_proto(namespace, pipeline, r))))
}

#[tonic::async_trait]
impl GoferService for ApiService {
    async fn create_namespace(
        &self,
        request: Request<v1::CreateNamespaceRequest>,
    ) -> ApiResult<v1::CreateNamespaceResponse> {
        let id = request.into_inner().id;
        self.propose(Command::CreateNamespace {
            namespace: id.clone(),
            at: self.clock.now_millis(),
        })
        .await?;
        let namespace = self.read(|s| {
            s.namespace(&id).map(|ns| v1::Namespace {
                id: id.clone(),
                created_unix_millis: ns.created_at,
            })
        })?;
        Ok(Response::new(v1::CreateNamespaceResponse {
            namespace: Some(namespace),
        }))
    }

    async fn list_namespaces(
        &self,
        request: Request<v1::ListNamespacesRequest>,
    ) -> ApiResult<v1::ListNamespacesResponse> {
        let caller = caller(&request, Method::ListNamespaces)?;
        let request = request.into_inner();
        let page = Page::new("namespaces".into(), request.page_size, &request.page_token)?;
        let after = page.after::<String>()?;
        self.linearize().await?;
        let (namespaces, next_page_token) = self.read(|s| {
            // The page is cut from the namespaces the caller sees, so it is as full as any other.
            let visible = past(&s.namespaces, after.as_deref())
                .filter(|(id, _)| caller.sees(id))
                .map(|(id, ns)| {
                    let namespace = v1::Namespace {
                        id: id.clone(),
                        created_unix_millis: ns.created_at,
                    };
                    (id, namespace)
                });
            Ok(page.take(visible))
        })?;
        Ok(Response::new(v1::ListNamespacesResponse {
            namespaces,
            next_page_token,
        }))
    }

    async fn register_pipeline(
        &self,
        request: Request<v1::RegisterPipelineRequest>,
    ) -> ApiResult<v1::RegisterPipelineResponse> {
        let namespace = scope(&request, Method::RegisterPipeline)?;
        let request = request.into_inner();
        let config = request
            .config
            .ok_or_else(|| into_status(Error::invalid("config", "is required")))?;
        let config = config_from_proto(config).map_err(into_status)?;
        gofer_domain::secrets::check_placeholders(&config).map_err(into_status)?;
        let id = config.id.clone();
        let applied = self
            .propose(Command::RegisterPipeline {
                namespace: namespace.clone(),
                config,
                at: self.clock.now_millis(),
            })
            .await?;
        let Applied::Version(version) = applied else {
            return Err(internal(
                "registering a pipeline",
                &format!("unexpected result {applied:?}"),
            ));
        };
        let pipeline = self.read(|s| s.pipeline(&namespace, &id).map(|p| pipeline_proto(&namespace, &id, p)))?;
        Ok(Response::new(v1::RegisterPipelineResponse {
            pipeline: Some(pipeline),
            version,
        }))
    }

    async fn list_pipelines(&self, request: Request<v1::ListPipelinesRequest>) -> ApiResult<v1::ListPipelinesResponse> {
        let namespace = scope(&request, Method::ListPipelines)?;
        let request = request.into_inner();
        let page = Page::new(format!("pipelines {namespace}"), request.page_size, &request.page_token)?;
        let after = page.after::<String>()?;
        self.linearize().await?;
        let (pipelines, next_page_token) = self.read(|s| {
            let pipelines = past(&s.namespace(&namespace)?.pipelines, after.as_deref())
                .map(|(id, p)| (id, pipeline_proto(&namespace, id, p)));
            Ok(page.take(pipelines))
        })?;
        Ok(Response::new(v1::ListPipelinesResponse {
            pipelines,
            next_page_token,
        }))
    }

    async fn get_pipeline(&self, request: Request<v1::GetPipelineRequest>) -> ApiResult<v1::GetPipelineResponse> {
        let namespace = scope(&request, Method::GetPipeline)?;
        self.linearize().await?;
        let request = request.into_inner();
        let (pipeline, config) = self.read(|s| {
            let p = s.pipeline(&namespace, &request.id)?;
            Ok((pipeline_proto(&namespace, &request.id, p), config_to_proto(p.latest())))
        })?;
        Ok(Response::new(v1::GetPipelineResponse {
            pipeline: Some(pipeline),
            config: Some(config),
        }))
    }

    async fn start_run(&self, request: Request<v1::StartRunRequest>) -> ApiResult<v1::StartRunResponse> {
        let namespace = scope(&request, Method::StartRun)?;
        let request = request.into_inner();
        let (run, created) = self
            .start(
                namespace,
                request.pipeline_id,
                request.request_id,
                request.parameters.into_iter().collect(),
                0,
            )
            .await?;
        Ok(Response::new(v1::StartRunResponse {
            run: Some(run),
            created,
        }))
    }

    async fn retry_run(&self, request: Request<v1::RetryRunRequest>) -> ApiResult<v1::RetryRunResponse> {
        let namespace = scope(&request, Method::RetryRun)?;
        let request = request.into_inner();
        if request.run_id == 0 {
            return Err(into_status(gofer_domain::Error::invalid("run_id", "is required")));
        }
        let (run, created) = self
            .start(
                namespace,
                request.pipeline_id,
                request.request_id,
                Default::default(),
                request.run_id,
            )
            .await?;
        Ok(Response::new(v1::RetryRunResponse {
            run: Some(run),
            created,
        }))
    }

    async fn get_run(&self, request: Request<v1::GetRunRequest>) -> ApiResult<v1::GetRunResponse> {
        let namespace = scope(&request, Method::GetRun)?;
        self.linearize().await?;
        let request = request.into_inner();
        let run = self.run_proto(&namespace, &request.pipeline_id, request.run_id)?;
        Ok(Response::new(v1::GetRunResponse { run: Some(run) }))
    }

    async fn list_runs(&self, request: Request<v1::ListRunsRequest>) -> ApiResult<v1::ListRunsResponse> {
        let namespace = scope(&request, Method::ListRuns)?;
        let request = request.into_inner();
        let pipeline = request.pipeline_id;
        let page = Page::new(
            format!("runs {namespace}/{pipeline}"),
            request.page_size,
            &request.page_token,
        )?;
        self.linearize().await?;
        let after = page.after::<u64>()?;
        let (runs, next_page_token) = self.read(|s| {
            let runs = &s.pipeline(&namespace, &pipeline)?.runs;
            Ok(runs_newest_first(&namespace, &pipeline, runs, after, &page))
        })?;
        Ok(Response::new(v1::ListRunsResponse { runs, next_page_token }))
    }

    async fn cancel_run(&self, request: Request<v1::CancelRunRequest>) -> ApiResult<v1::CancelRunResponse> {
        let namespace = scope(&request, Method::CancelRun)?;
        let request = request.into_inner();
        self.propose(Command::CancelRun {
            namespace: namespace.clone(),
            pipeline: request.pipeline_id.clone(),
            run: request.run_id,
            reason: "cancelled by user".to_string(),
            grace_millis: u64::try_from(request.grace_millis)
                .map_err(|_| into_status(gofer_domain::Error::invalid("grace_millis", "must not be negative")))?,
            at: self.clock.now_millis(),
        })
        .await?;
        let run = self.run_proto(&namespace, &request.pipeline_id, request.run_id)?;
        Ok(Response::new(v1::CancelRunResponse { run: Some(run) }))
    }

    type WatchRunStream = BoxStream<v1::WatchRunResponse>;

    async fn watch_run(&self, request: Request<v1::WatchRunRequest>) -> ApiResult<Self::WatchRunStream> {
        let namespace = scope(&request, Method::WatchRun)?;
        self.linearize().await?;
        let request = request.into_inner();
        let (pipeline, id) = (request.pipeline_id, request.run_id);
        // Subscribe before the first read so that no change between the two is missed.
        let mut changes = self.state.subscribe();
        let first = self.run_proto(&namespace, &pipeline, id)?;
        let this = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        self.tracker.spawn(async move {
            let mut last = None;
            let mut current = first;
            loop {
                if last.as_ref() != Some(&current) {
                    let done = current.state().is_terminal();
                    if tx
                        .send(Ok(v1::WatchRunResponse {
                            run: Some(current.clone()),
                        }))
                        .await
                        .is_err()
                        || done
                    {
                        return;
                    }
                    last = Some(current.clone());
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() {
                        let _ = tx.send(Err(Status::unavailable("the node is shutting down"))).await;
                        return;
                    },
                    () = this.shutdown.cancelled() => return shutting_down(&tx),
                    () = tx.closed() => return,
                }
                match this.run_proto(&namespace, &pipeline, id) {
                    Ok(run) => current = run,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn list_task_executions(
        &self,
        request: Request<v1::ListTaskExecutionsRequest>,
    ) -> ApiResult<v1::ListTaskExecutionsResponse> {
        let namespace = scope(&request, Method::ListTaskExecutions)?;
        let request = request.into_inner();
        let pipeline = request.pipeline_id;
        let page = Page::new(
            format!("task-executions {namespace}/{pipeline}/{}", request.run_id),
            request.page_size,
            &request.page_token,
        )?;
        // A run's task executions are made with it and never reordered, so a position keeps its place.
        let first = page.after::<usize>()?.map_or(0, |after| after.saturating_add(1));
        self.linearize().await?;
        let now = self.clock.now_millis();
        let (task_executions, next_page_token) = self.read(|s| {
            let (run, config) = s.run(&namespace, &pipeline, request.run_id)?;
            let tasks = run.tasks.iter().enumerate().skip(first);
            Ok(page.take(tasks.map(|(at, t)| {
                let mut task = task_to_proto(&namespace, &pipeline, run.id, t);
                // A task that no live executor could take (its labels, its cpu or memory) says so, not a silent wait.
                if t.state == gofer_domain::TaskState::Pending
                    && t.assignment.is_none()
                    && let Some(reason) = s.executors.none_with(
                        &config.tasks[at].executor_labels,
                        gofer_domain::executors::Need::of(&config.tasks[at], &s.task_limits),
                        now,
                    )
                {
                    task.state_reason = reason;
                }
                (at, task)
            })))
        })?;
        Ok(Response::new(v1::ListTaskExecutionsResponse {
            task_executions,
            next_page_token,
        }))
    }

    async fn install_extension(
        &self,
        request: Request<v1::InstallExtensionRequest>,
    ) -> ApiResult<v1::InstallExtensionResponse> {
        let request = request.into_inner();
        let settings = request.settings.into_iter().collect();
        let command = Command::InstallExtension {
            name: request.name.clone(),
            image: request.image,
            settings: self.seal_install_settings(&request.name, settings)?,
            at: self.clock.now_millis(),
        };
        self.propose(command).await?;
        let extension = self.extension_proto(&request.name)?;
        Ok(Response::new(v1::InstallExtensionResponse {
            extension: Some(extension),
        }))
    }

    async fn uninstall_extension(
        &self,
        request: Request<v1::UninstallExtensionRequest>,
    ) -> ApiResult<v1::UninstallExtensionResponse> {
        let name = request.into_inner().name;
        self.propose(Command::UninstallExtension {
            name,
            at: self.clock.now_millis(),
        })
        .await?;
        Ok(Response::new(v1::UninstallExtensionResponse {}))
    }

    async fn list_extensions(
        &self,
        request: Request<v1::ListExtensionsRequest>,
    ) -> ApiResult<v1::ListExtensionsResponse> {
        let request = request.into_inner();
        let page = Page::new("extensions".into(), request.page_size, &request.page_token)?;
        let after = page.after::<String>()?;
        self.linearize().await?;
        let (names, next_page_token) = self.state.read(|s| {
            let names = past(&s.extensions, after.as_deref()).map(|(name, _)| (name, name.clone()));
            page.take(names)
        });
        let extensions = names
            .iter()
            .map(|n| self.extension_proto(n))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(v1::ListExtensionsResponse {
            extensions,
            next_page_token,
        }))
    }

    async fn get_extension(&self, request: Request<v1::GetExtensionRequest>) -> ApiResult<v1::GetExtensionResponse> {
        self.linearize().await?;
        let extension = self.extension_proto(&request.into_inner().name)?;
        Ok(Response::new(v1::GetExtensionResponse {
            extension: Some(extension),
        }))
    }

    async fn create_subscription(
        &self,
        request: Request<v1::CreateSubscriptionRequest>,
    ) -> ApiResult<v1::CreateSubscriptionResponse> {
        let namespace = scope(&request, Method::CreateSubscription)?;
        let request = request.into_inner();
        let settings = request.settings.into_iter().collect();
        gofer_domain::triggers::check_new_subscription(&request.extension, &settings).map_err(into_status)?;
        let settings = self.seal_settings(
            (&namespace, &request.pipeline_id, &request.label),
            &request.extension,
            settings,
        )?;
        let command = Command::CreateSubscription {
            namespace: namespace.clone(),
            pipeline: request.pipeline_id.clone(),
            label: request.label.clone(),
            extension: request.extension,
            settings,
            at: self.clock.now_millis(),
        };
        self.propose(command).await?;
        let subscription = self.subscription_proto(&namespace, &request.pipeline_id, &request.label)?;
        Ok(Response::new(v1::CreateSubscriptionResponse {
            subscription: Some(subscription),
        }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<v1::ListSubscriptionsRequest>,
    ) -> ApiResult<v1::ListSubscriptionsResponse> {
        let namespace = scope(&request, Method::ListSubscriptions)?;
        let request = request.into_inner();
        let page = Page::new(
            format!("subscriptions {namespace}/{}", request.pipeline_id),
            request.page_size,
            &request.page_token,
        )?;
        let after = page.after::<String>()?;
        self.linearize().await?;
        let (labels, next_page_token) = self.read(|s| {
            let subscriptions = &s.pipeline(&namespace, &request.pipeline_id)?.subscriptions;
            Ok(page.take(past(subscriptions, after.as_deref()).map(|(label, _)| (label, label.clone()))))
        })?;
        let subscriptions = labels
            .iter()
            .map(|label| self.subscription_proto(&namespace, &request.pipeline_id, label))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(v1::ListSubscriptionsResponse {
            subscriptions,
            next_page_token,
        }))
    }

    async fn get_subscription(
        &self,
        request: Request<v1::GetSubscriptionRequest>,
    ) -> ApiResult<v1::GetSubscriptionResponse> {
        let namespace = scope(&request, Method::GetSubscription)?;
        self.linearize().await?;
        let request = request.into_inner();
        let subscription = self.subscription_proto(&namespace, &request.pipeline_id, &request.label)?;
        Ok(Response::new(v1::GetSubscriptionResponse {
            subscription: Some(subscription),
        }))
    }

    async fn delete_subscription(
        &self,
        request: Request<v1::DeleteSubscriptionRequest>,
    ) -> ApiResult<v1::DeleteSubscriptionResponse> {
        let namespace = scope(&request, Method::DeleteSubscription)?;
        let request = request.into_inner();
        let command = Command::DeleteSubscription {
            namespace,
            pipeline: request.pipeline_id,
            label: request.label,
            at: self.clock.now_millis(),
        };
        self.propose(command).await?;
        Ok(Response::new(v1::DeleteSubscriptionResponse {}))
    }

    async fn get_cluster_status(
        &self,
        _request: Request<v1::GetClusterStatusRequest>,
    ) -> ApiResult<v1::GetClusterStatusResponse> {
        let status = self.state.cluster_status().await.map_err(state_status)?;
        // Cloned under the lock (cheap: events are shared chunks), encoded on the blocking pool, so neither
        // applies nor this runtime's other tasks wait for the encoding.
        let mut state = self.state.read(State::clone);
        let state_digest = tokio::task::spawn_blocking(move || {
            // Leases and executor lease times change every second; the digest leaves them out so that
            // nodes that applied the same work compare equal.
            state.leases = Default::default();
            for record in state.executors.executors.values_mut() {
                record.renewed_at = 0;
                record.expires_at = 0;
            }
            let json = serde_json::to_vec(&state).expect("the state always serializes");
            gofer_state::digest_of(&json)
        })
        .await
        .map_err(|e| internal("computing the state digest", &e))?;
        let leases = self.state.read(|s| {
            s.leases
                .roles
                .iter()
                .map(|(role, lease)| v1::RoleLease {
                    role: role.as_str().to_string(),
                    holder: lease.holder.clone(),
                    epoch: lease.epoch,
                    expires_unix_millis: lease.expires_at,
                    commands: lease.commands,
                    address: lease.address.clone(),
                })
                .collect()
        });
        let executors = self.state.read(|s| {
            let mut live: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
            for (_, _, _, run) in s.active_runs() {
                for assignment in run.tasks.iter().filter_map(|t| t.assignment.as_ref()) {
                    *live.entry(assignment.executor.as_str()).or_default() += 1;
                }
            }
            s.executors
                .executors
                .iter()
                .map(|(id, e)| v1::ExecutorStatus {
                    id: id.clone(),
                    capacity: e.capacity,
                    labels: e.labels.clone().into_iter().collect(),
                    expires_unix_millis: e.expires_at,
                    lost_unix_millis: e.lost_at,
                    live_attempts: live.get(id.as_str()).copied().unwrap_or(0),
                })
                .collect()
        });
        let shared = self
            .state
            .read(|s| s.blobs.node_blobs(gofer_domain::blobs::SHARED_STORE));
        Ok(Response::new(v1::GetClusterStatusResponse {
            shared_blob_count: shared.count,
            shared_blob_bytes: shared.bytes,
            leases,
            executors,
            state_digest,
            node_id: status.node_id,
            leader_id: status.leader_id.unwrap_or(0),
            term: status.term,
            last_log_index: status.last_log_index,
            applied_index: status.applied_index,
            cluster_id: self.state.read(|s| s.cluster_id.clone()),
            nodes: self.state.read(|s| {
                status
                    .members
                    .into_iter()
                    .map(|m| {
                        let blobs = s.blobs.node_blobs(m.id);
                        v1::ClusterNode {
                            id: m.id,
                            address: m.address,
                            role: m.role.to_string(),
                            matched_index: m.matched_index,
                            blob_count: blobs.count,
                            blob_bytes: blobs.bytes,
                            blob_backlog: blobs.backlog,
                        }
                    })
                    .collect()
            }),
        }))
    }

    async fn add_cluster_node(
        &self,
        request: Request<v1::AddClusterNodeRequest>,
    ) -> ApiResult<v1::AddClusterNodeResponse> {
        let request = request.into_inner();
        let change = gofer_state::MembershipChange::Add {
            id: request.node_id,
            address: request.address,
        };
        self.state.change_membership(change).await.map_err(state_status)?;
        Ok(Response::new(v1::AddClusterNodeResponse {}))
    }

    async fn remove_cluster_node(
        &self,
        request: Request<v1::RemoveClusterNodeRequest>,
    ) -> ApiResult<v1::RemoveClusterNodeResponse> {
        let change = gofer_state::MembershipChange::Remove {
            id: request.into_inner().node_id,
        };
        self.state.change_membership(change).await.map_err(state_status)?;
        Ok(Response::new(v1::RemoveClusterNodeResponse {}))
    }

    type GetTaskLogsStream = BoxStream<v1::GetTaskLogsResponse>;

    async fn get_task_logs(&self, request: Request<v1::GetTaskLogsRequest>) -> ApiResult<Self::GetTaskLogsStream> {
        scope(&request, Method::GetTaskLogs)?;
        self.linearize().await?;
        let request = request.into_inner();
        let stream = crate::logs::stream_task_logs(self.clone(), request)?;
        Ok(Response::new(stream))
    }

    type ListEventsStream = BoxStream<v1::ListEventsResponse>;

    async fn put_object(
        &self,
        request: Request<tonic::Streaming<v1::PutObjectRequest>>,
    ) -> ApiResult<v1::PutObjectResponse> {
        Ok(Response::new(ApiService::put_object(self, request).await?))
    }

    type GetObjectStream = crate::objects::ObjectStream;

    async fn get_object(&self, request: Request<v1::GetObjectRequest>) -> ApiResult<Self::GetObjectStream> {
        Ok(Response::new(ApiService::get_object(self, request).await?))
    }

    async fn list_objects(&self, request: Request<v1::ListObjectsRequest>) -> ApiResult<v1::ListObjectsResponse> {
        Ok(Response::new(ApiService::list_objects(self, request).await?))
    }

    async fn delete_object(&self, request: Request<v1::DeleteObjectRequest>) -> ApiResult<v1::DeleteObjectResponse> {
        ApiService::delete_object(self, request).await?;
        Ok(Response::new(v1::DeleteObjectResponse {}))
    }

    async fn list_events(&self, request: Request<v1::ListEventsRequest>) -> ApiResult<Self::ListEventsStream> {
        let caller = caller(&request, Method::ListEvents)?;
        self.linearize().await?;
        let stream = crate::events::stream_events(self.clone(), request.into_inner(), caller)?;
        Ok(Response::new(stream))
    }

    async fn create_token(&self, request: Request<v1::CreateTokenRequest>) -> ApiResult<v1::CreateTokenResponse> {
        caller(&request, Method::CreateToken)?;
        Ok(Response::new(self.issue_token(request.into_inner()).await?))
    }

    async fn list_tokens(&self, request: Request<v1::ListTokensRequest>) -> ApiResult<v1::ListTokensResponse> {
        caller(&request, Method::ListTokens)?;
        let request = request.into_inner();
        let page = Page::new("tokens".into(), request.page_size, &request.page_token)?;
        self.linearize().await?;
        Ok(Response::new(self.tokens_proto(&page)?))
    }

    async fn get_token(&self, request: Request<v1::GetTokenRequest>) -> ApiResult<v1::GetTokenResponse> {
        caller(&request, Method::GetToken)?;
        self.linearize().await?;
        let token = self.token_proto(&request.into_inner().name)?;
        Ok(Response::new(v1::GetTokenResponse { token: Some(token) }))
    }

    async fn disable_token(&self, request: Request<v1::DisableTokenRequest>) -> ApiResult<v1::DisableTokenResponse> {
        caller(&request, Method::DisableToken)?;
        let token = self.disable_named_token(request.into_inner().name).await?;
        Ok(Response::new(v1::DisableTokenResponse { token: Some(token) }))
    }

    async fn delete_token(&self, request: Request<v1::DeleteTokenRequest>) -> ApiResult<v1::DeleteTokenResponse> {
        caller(&request, Method::DeleteToken)?;
        self.delete_named_token(request.into_inner().name).await?;
        Ok(Response::new(v1::DeleteTokenResponse {}))
    }

    async fn who_am_i(&self, request: Request<v1::WhoAmIRequest>) -> ApiResult<v1::WhoAmIResponse> {
        let caller = caller(&request, Method::WhoAmI)?;
        Ok(Response::new(self.caller_proto(caller)))
    }

    async fn put_secret(&self, request: Request<v1::PutSecretRequest>) -> ApiResult<v1::PutSecretResponse> {
        let namespace = scope(&request, Method::PutSecret)?;
        let secret = self.put_pipeline_secret(namespace, request.into_inner()).await?;
        Ok(Response::new(v1::PutSecretResponse { secret: Some(secret) }))
    }

    async fn list_secrets(&self, request: Request<v1::ListSecretsRequest>) -> ApiResult<v1::ListSecretsResponse> {
        let namespace = scope(&request, Method::ListSecrets)?;
        self.linearize().await?;
        let request = request.into_inner();
        let listing = format!("secrets {namespace}/{}", request.pipeline_id);
        let page = Page::new(listing, request.page_size, &request.page_token)?;
        let (secrets, next_page_token) = self.pipeline_secrets(&namespace, &request.pipeline_id, &page)?;
        Ok(Response::new(v1::ListSecretsResponse {
            secrets,
            next_page_token,
        }))
    }

    async fn delete_secret(&self, request: Request<v1::DeleteSecretRequest>) -> ApiResult<v1::DeleteSecretResponse> {
        let namespace = scope(&request, Method::DeleteSecret)?;
        let request = request.into_inner();
        let scope = gofer_domain::secrets::SecretScope::Pipeline {
            namespace,
            pipeline: request.pipeline_id,
        };
        self.remove_secret(scope, request.key).await?;
        Ok(Response::new(v1::DeleteSecretResponse {}))
    }

    async fn put_global_secret(
        &self,
        request: Request<v1::PutGlobalSecretRequest>,
    ) -> ApiResult<v1::PutGlobalSecretResponse> {
        caller(&request, Method::PutGlobalSecret)?;
        let secret = self.put_global(request.into_inner()).await?;
        Ok(Response::new(v1::PutGlobalSecretResponse { secret: Some(secret) }))
    }

    async fn list_global_secrets(
        &self,
        request: Request<v1::ListGlobalSecretsRequest>,
    ) -> ApiResult<v1::ListGlobalSecretsResponse> {
        caller(&request, Method::ListGlobalSecrets)?;
        self.linearize().await?;
        let request = request.into_inner();
        let page = Page::new("global secrets".to_string(), request.page_size, &request.page_token)?;
        let (secrets, next_page_token) = self.global_secrets(&page)?;
        Ok(Response::new(v1::ListGlobalSecretsResponse {
            secrets,
            next_page_token,
        }))
    }

    async fn delete_global_secret(
        &self,
        request: Request<v1::DeleteGlobalSecretRequest>,
    ) -> ApiResult<v1::DeleteGlobalSecretResponse> {
        caller(&request, Method::DeleteGlobalSecret)?;
        let key = request.into_inner().key;
        self.remove_secret(gofer_domain::secrets::SecretScope::Global, key)
            .await?;
        Ok(Response::new(v1::DeleteGlobalSecretResponse {}))
    }

    async fn rotate_secret_key(
        &self,
        request: Request<v1::RotateSecretKeyRequest>,
    ) -> ApiResult<v1::RotateSecretKeyResponse> {
        caller(&request, Method::RotateSecretKey)?;
        Ok(Response::new(self.reseal_all().await?))
    }
}
