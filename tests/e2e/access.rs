//! The authorization matrix through the real server: every RPC of `gofer.v1.GoferService`, enumerated
//! from the compiled-in descriptors (so an RPC added later without a policy entry fails here), called as
//! an admin, an operator and a viewer (both on `team-a-*`), once in a namespace of their scope and once
//! outside it. Each answer must be what `access::authorize` decides: PermissionDenied, naming who, what
//! and where, exactly when the policy denies, and otherwise anything but a refusal. Calls without a
//! token, or with a disabled, deleted or unknown one, are Unauthenticated; lists and the event stream
//! show a scoped token only what is in its scope.
//!
//! Requests are dynamic messages built from the descriptors: the namespace goes into `namespace_id`
//! when the request has one, and the fields that name a pipeline, a run, a task or a subscription name
//! the fixtures, which exist in both namespaces, so a handler that forgot its namespace check would
//! answer out of scope instead of refusing.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use gofer_domain::access::{Caller, Method, TokenRole, authorize};
use gofer_proto::v1;
use gofer_testkit::{GoferDev, TASK_IMAGE};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, MethodDescriptor, Value as Field};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::start;

/// A namespace the scoped tokens' pattern matches.
const IN_SCOPE: &str = "team-a-x";
/// A namespace it does not.
const OUT_OF_SCOPE: &str = "team-b";
/// The scoped tokens' pattern.
const SCOPE: &str = "team-a-*";
/// The fixtures' names, the same in both namespaces.
const PIPELINE: &str = "p";
const TASK: &str = "t";
const LABEL: &str = "hook";
/// A webhook secret long enough to be accepted.
const WEBHOOK_SECRET: &str = "matrix-secret-0123456789";
/// How long one call may take before the test gives up on it.
const CALL_PATIENCE: Duration = Duration::from_secs(30);

/// A token the test made, with the caller the policy should see for it.
struct Token {
    secret: String,
    caller: Caller,
}

/// Makes a token with goferctl as the bootstrap admin and returns it.
fn create_token(dev: &GoferDev, name: &str, role: TokenRole, pattern: &str) -> Result<Token> {
    let created = dev.ctl_json(&["token", "create", name, "--role", role.as_str(), "--namespace", pattern])?;
    let secret = created["secret"].as_str().context("a secret")?.to_string();
    let namespaces = match role {
        TokenRole::Admin => vec!["*".to_string()],
        _ => vec![pattern.to_string()],
    };
    Ok(Token {
        secret,
        caller: Caller {
            name: name.to_string(),
            role,
            namespaces,
            run: None,
        },
    })
}

/// A gRPC channel to the server, and the runtime its calls run on (the test itself is synchronous, as
/// the rest of the end-to-end suite).
struct Api {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
    pool: DescriptorPool,
}

/// `request` with `authorization: Bearer <token>`, or with no authorization at all.
fn bearer<T>(mut request: tonic::Request<T>, token: Option<&str>) -> tonic::Request<T> {
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("a token is header-safe");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

impl Api {
    fn connect(dev: &GoferDev) -> Result<Api> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let ca = std::fs::read(dev.data_dir().join("tls").join("ca.pem")).context("the dev CA")?;
        let endpoint = Endpoint::from_shared(dev.host.clone())?
            .connect_timeout(Duration::from_secs(5))
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?;
        let channel = runtime.block_on(endpoint.connect()).context("connecting to goferd")?;
        let pool = DescriptorPool::decode(gofer_proto::FILE_DESCRIPTOR_SET)?;
        Ok(Api { runtime, channel, pool })
    }

    /// Every method of `GoferService`, from the descriptors compiled into `gofer-proto`.
    fn methods(&self) -> Result<Vec<MethodDescriptor>> {
        let service = self
            .pool
            .get_service_by_name("gofer.v1.GoferService")
            .context("GoferService in the descriptors")?;
        Ok(service.methods().collect())
    }

    fn typed(&self) -> v1::gofer_service_client::GoferServiceClient<Channel> {
        v1::gofer_service_client::GoferServiceClient::new(self.channel.clone())
    }

    /// Runs a typed call as `token`.
    fn run<T>(&self, call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>) -> Result<T> {
        let response = self
            .runtime
            .block_on(async { tokio::time::timeout(CALL_PATIENCE, call).await })
            .context("the call timed out")??;
        Ok(response.into_inner())
    }

    /// Sends `request` to `method` as `token` (none: no authorization header) and says how it ended: for
    /// a stream, once its first message or its status came (or it stayed open: the server had accepted
    /// the call by then).
    fn call(
        &self,
        method: &MethodDescriptor,
        request: DynamicMessage,
        token: Option<&str>,
    ) -> Result<Result<(), Status>> {
        let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
        let path = tonic::codegen::http::uri::PathAndQuery::try_from(path)?;
        let streaming = method.is_server_streaming();
        let client_streaming = method.is_client_streaming();
        ensure!(
            !(streaming && client_streaming),
            "{}: bidirectional streams are not covered",
            method.name()
        );
        let channel = self.channel.clone();
        let call = async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(format!("the channel is not ready: {e}")))?;
            // The answer is decoded as `()`, which skips every field: only how the call ended matters.
            let codec = tonic_prost::ProstCodec::<DynamicMessage, ()>::default();
            if client_streaming {
                // The one message names what it acts on, as a real upload's first message does.
                let request = bearer(tonic::Request::new(tokio_stream::iter([request])), token);
                return grpc
                    .client_streaming::<_, DynamicMessage, (), _>(request, path, codec)
                    .await
                    .map(|_| ());
            }
            let request = bearer(tonic::Request::new(request), token);
            if streaming {
                let mut stream = grpc.server_streaming(request, path, codec).await?.into_inner();
                match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                    Ok(first) => first.map(|_| ()),
                    Err(_) => Ok(()),
                }
            } else {
                grpc.unary::<DynamicMessage, (), _>(request, path, codec)
                    .await
                    .map(|_| ())
            }
        };
        self.runtime
            .block_on(async { tokio::time::timeout(CALL_PATIENCE, call).await })
            .with_context(|| format!("{} did not answer within {CALL_PATIENCE:?}", method.name()))
    }
}

/// Makes names no earlier call used.
#[derive(Default)]
struct Fresh(u32);

impl Fresh {
    fn next(&mut self, prefix: &str) -> String {
        self.0 += 1;
        format!("{prefix}-{}", self.0)
    }
}

/// The pipeline every namespace gets: one task that prints and ends.
fn fixture_pipeline() -> v1::PipelineConfig {
    v1::PipelineConfig {
        id: PIPELINE.to_string(),
        name: PIPELINE.to_string(),
        tasks: vec![v1::Task {
            id: TASK.to_string(),
            image: TASK_IMAGE.to_string(),
            command: vec!["sh".into(), "-c".into(), "echo hi".into()],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A plausible request for `method` in `namespace`: the namespace in `namespace_id`, the fixtures in the
/// fields that name a pipeline, run, task or subscription, fresh names where a call makes something, and
/// the rest left at their defaults (a request the server then refuses for its content, after deciding
/// who may send it, as InvalidArgument or NotFound, which is as good an answer here as OK). The few
/// calls that change the cluster get values that change nothing that matters: no node id, no image, a
/// token name that does not exist.
fn request_for(method: &MethodDescriptor, namespace: &str, fresh: &mut Fresh) -> Result<DynamicMessage> {
    let input = method.input();
    let mut message = DynamicMessage::new(input.clone());
    for field in input.fields() {
        let value = match field.name() {
            "namespace_id" => Field::String(namespace.to_string()),
            "pipeline_id" => Field::String(PIPELINE.to_string()),
            "run_id" => Field::U64(1),
            "task_id" => Field::String(TASK.to_string()),
            "label" => Field::String(LABEL.to_string()),
            "request_id" => Field::String(fresh.next("matrix-request")),
            "name" => Field::String("matrix-nobody".to_string()),
            _ => continue,
        };
        message
            .try_set_field(&field, value)
            .with_context(|| format!("{}.{}", input.name(), field.name()))?;
    }
    let mut set = |name: &str, value: Field| {
        message
            .try_set_field_by_name(name, value)
            .with_context(|| format!("{}.{name}", input.name()))
    };
    match method.name() {
        "CreateNamespace" => set("id", Field::String(fresh.next("matrix-ns")))?,
        "GetPipeline" => set("id", Field::String(PIPELINE.to_string()))?,
        "RegisterPipeline" => {
            let config = input
                .get_field_by_name("config")
                .and_then(|f| f.kind().as_message().cloned())
                .context("RegisterPipelineRequest.config")?;
            let config = DynamicMessage::decode(config, fixture_pipeline().encode_to_vec().as_slice())?;
            set("config", Field::Message(config))?;
        }
        "CreateSubscription" => {
            set("label", Field::String(fresh.next("hook")))?;
            set("extension", Field::String("webhook".to_string()))?;
            let settings = HashMap::from([(
                MapKey::String("secret".to_string()),
                Field::String(WEBHOOK_SECRET.to_string()),
            )]);
            set("settings", Field::Map(settings))?;
        }
        "CreateToken" => {
            set("name", Field::String(fresh.next("matrix-made")))?;
            set("role", Field::EnumNumber(v1::TokenRole::Viewer as i32))?;
            set("namespaces", Field::List(vec![Field::String(namespace.to_string())]))?;
        }
        _ => {}
    }
    Ok(message)
}

/// The namespace a request names, which the server asks the policy about (a request without
/// `namespace_id` acts on the cluster).
fn named_namespace<'a>(method: &MethodDescriptor, namespace: &'a str) -> Option<&'a str> {
    method.input().get_field_by_name("namespace_id").map(|_| namespace)
}

/// What the server must answer: `Err(message)` when the policy denies, with the message the refusal
/// carries (the role is checked before the namespace, and a refusal for the role names no namespace).
fn expected(caller: &Caller, method: Method, namespace: Option<&str>) -> Result<(), String> {
    authorize(caller, method, None).map_err(|denied| denied.to_string())?;
    authorize(caller, method, namespace).map_err(|denied| denied.to_string())
}

/// Sets up two namespaces with the same pipeline, a finished run and a webhook subscription in each.
fn fixtures(dev: &GoferDev) -> Result<()> {
    let pipeline = crate::pipeline(PIPELINE, &[(TASK, "echo hi", &[])]);
    for namespace in [IN_SCOPE, OUT_OF_SCOPE] {
        dev.ctl_ok(&["namespace", "create", namespace])?;
        dev.register_in(namespace, &pipeline)?;
        dev.ctl_ok(&["-n", namespace, "run", "start", PIPELINE, "--wait"])?;
        let secret = format!("secret={WEBHOOK_SECRET}");
        dev.ctl_ok(&[
            "-n",
            namespace,
            "subscription",
            "create",
            PIPELINE,
            "webhook",
            LABEL,
            "-s",
            &secret,
        ])?;
    }
    Ok(())
}

#[test]
fn every_rpc_answers_each_role_in_and_out_of_scope_as_the_policy_decides() -> Result<()> {
    let dev = start()?;
    fixtures(&dev)?;
    let admin = create_token(&dev, "matrix-admin", TokenRole::Admin, "*")?;
    let operator = create_token(&dev, "matrix-operator", TokenRole::Operator, SCOPE)?;
    let viewer = create_token(&dev, "matrix-viewer", TokenRole::Viewer, SCOPE)?;
    let api = Api::connect(&dev)?;
    let methods = api.methods()?;
    for method in Method::ALL {
        ensure!(
            methods.iter().any(|rpc| rpc.name() == method.as_str()),
            "the policy names {method}, which GoferService does not serve"
        );
    }

    // Lists first, while every fixture still exists: the matrix below deletes some.
    scoped_lists_show_only_the_scope(&api, &admin, &[&operator, &viewer])?;
    the_event_stream_of_a_scoped_token_carries_only_its_scope(&dev, &api, &viewer)?;

    // The matrix. Viewers and operators go first, so the admin's deletions come last.
    let mut fresh = Fresh::default();
    let mut wrong = Vec::new();
    for token in [&viewer, &operator, &admin] {
        for rpc in &methods {
            let Some(method) = Method::from_rpc(rpc.name()) else {
                bail!(
                    "GoferService.{} has no entry in gofer_domain::access::Method: add it to the policy (and its \
                     table test) before serving it",
                    rpc.name()
                );
            };
            ensure!(
                !method.in_namespace() || rpc.input().get_field_by_name("namespace_id").is_some(),
                "{method} acts in a namespace, but {} has no namespace_id",
                rpc.input().name()
            );
            for namespace in [IN_SCOPE, OUT_OF_SCOPE] {
                let request = request_for(rpc, namespace, &mut fresh)?;
                let want = expected(&token.caller, method, named_namespace(rpc, namespace));
                let got = api.call(rpc, request, Some(&token.secret))?;
                let verdict = match (&want, &got) {
                    (Err(message), Err(status))
                        if status.code() == Code::PermissionDenied && status.message() == message =>
                    {
                        None
                    }
                    (Err(message), _) => Some(format!("expected PermissionDenied \"{message}\"")),
                    (Ok(()), Ok(())) => None,
                    (Ok(()), Err(status)) => match status.code() {
                        Code::PermissionDenied | Code::Unauthenticated => Some("expected it to be allowed".to_string()),
                        // An allowed call may be refused for its content, never fail in the server.
                        Code::Internal | Code::Unknown | Code::Unimplemented => {
                            Some("expected an answer, not a server failure".to_string())
                        }
                        _ => None,
                    },
                };
                if let Some(verdict) = verdict {
                    let got = got.map_err(|s| format!("{:?} {:?}", s.code(), s.message()));
                    wrong.push(format!(
                        "{} {method} in {namespace}: {verdict}, got {got:?}",
                        token.caller
                    ));
                }
            }
        }
    }
    ensure!(
        wrong.is_empty(),
        "the server and the policy disagree:\n{}",
        wrong.join("\n")
    );

    // No token, an unknown one, a disabled one and a deleted one: every call is Unauthenticated.
    let disabled = create_token(&dev, "matrix-disabled", TokenRole::Operator, SCOPE)?;
    let deleted = create_token(&dev, "matrix-deleted", TokenRole::Operator, SCOPE)?;
    for token in [&disabled, &deleted] {
        let me = api.run(
            api.typed()
                .who_am_i(bearer(tonic::Request::new(v1::WhoAmIRequest {}), Some(&token.secret))),
        )?;
        ensure!(me.name == token.caller.name, "{me:?}");
    }
    dev.ctl_ok(&["token", "disable", "matrix-disabled"])?;
    dev.ctl_ok(&["token", "delete", "matrix-deleted"])?;
    let unknown = format!("gofer_{}", "0".repeat(64));
    for (what, token) in [
        ("no token", None),
        ("an unknown token", Some(unknown.as_str())),
        ("a disabled token", Some(disabled.secret.as_str())),
        ("a deleted token", Some(deleted.secret.as_str())),
    ] {
        for rpc in &methods {
            let request = request_for(rpc, IN_SCOPE, &mut fresh)?;
            let got = api.call(rpc, request, token)?;
            if !matches!(&got, Err(status) if status.code() == Code::Unauthenticated) {
                let got = got.map_err(|s| format!("{:?} {:?}", s.code(), s.message()));
                wrong.push(format!(
                    "{} with {what}: expected Unauthenticated, got {got:?}",
                    rpc.name()
                ));
            }
        }
    }
    ensure!(wrong.is_empty(), "calls were not refused:\n{}", wrong.join("\n"));
    Ok(())
}

/// The list calls of a scoped token answer with what is in its scope, and the same calls as an admin show
/// that there was more to see.
fn scoped_lists_show_only_the_scope(api: &Api, admin: &Token, scoped: &[&Token]) -> Result<()> {
    let mut client = api.typed();
    let namespaces = |token: &Token| -> Result<Vec<String>> {
        let request = bearer(
            tonic::Request::new(v1::ListNamespacesRequest::default()),
            Some(&token.secret),
        );
        let list = api.run(api.typed().list_namespaces(request))?;
        Ok(list.namespaces.into_iter().map(|n| n.id).collect())
    };
    let all = namespaces(admin)?;
    ensure!(
        all.iter().any(|n| n == OUT_OF_SCOPE) && all.iter().any(|n| n == "default"),
        "{all:?}"
    );
    for token in scoped {
        let who = &token.caller;
        let seen = namespaces(token)?;
        ensure!(seen == [IN_SCOPE], "{who} lists namespaces {seen:?}");

        let token = Some(token.secret.as_str());
        let pipelines = api.run(client.list_pipelines(bearer(
            tonic::Request::new(v1::ListPipelinesRequest {
                namespace_id: IN_SCOPE.into(),
                ..Default::default()
            }),
            token,
        )))?;
        ensure!(
            !pipelines.pipelines.is_empty() && pipelines.pipelines.iter().all(|p| p.namespace_id == IN_SCOPE),
            "{who} lists pipelines {pipelines:?}"
        );
        let runs = api.run(client.list_runs(bearer(
            tonic::Request::new(v1::ListRunsRequest {
                namespace_id: IN_SCOPE.into(),
                pipeline_id: PIPELINE.into(),
                ..Default::default()
            }),
            token,
        )))?;
        ensure!(
            !runs.runs.is_empty() && runs.runs.iter().all(|r| r.namespace_id == IN_SCOPE),
            "{who} lists runs {runs:?}"
        );
        let tasks = api.run(client.list_task_executions(bearer(
            tonic::Request::new(v1::ListTaskExecutionsRequest {
                namespace_id: IN_SCOPE.into(),
                pipeline_id: PIPELINE.into(),
                run_id: 1,
                ..Default::default()
            }),
            token,
        )))?;
        ensure!(
            !tasks.task_executions.is_empty() && tasks.task_executions.iter().all(|t| t.namespace_id == IN_SCOPE),
            "{who} lists task executions {tasks:?}"
        );
        let subscriptions = api.run(client.list_subscriptions(bearer(
            tonic::Request::new(v1::ListSubscriptionsRequest {
                namespace_id: IN_SCOPE.into(),
                pipeline_id: PIPELINE.into(),
                ..Default::default()
            }),
            token,
        )))?;
        ensure!(
            !subscriptions.subscriptions.is_empty()
                && subscriptions.subscriptions.iter().all(|s| s.namespace_id == IN_SCOPE),
            "{who} lists subscriptions {subscriptions:?}"
        );
        // Every event so far, with no namespace filter: only the scope's.
        let namespaces = event_namespaces(api, token)?;
        ensure!(
            namespaces.contains(&IN_SCOPE.to_string()) && namespaces.iter().all(|n| n == IN_SCOPE),
            "{who} lists events of {namespaces:?}"
        );
    }
    let everything = event_namespaces(api, Some(&admin.secret))?;
    ensure!(
        everything.contains(&OUT_OF_SCOPE.to_string()),
        "the admin lists events of {everything:?}"
    );
    Ok(())
}

/// The namespaces of every event kept so far, as `token` lists them.
fn event_namespaces(api: &Api, token: Option<&str>) -> Result<Vec<String>> {
    let request = bearer(tonic::Request::new(v1::ListEventsRequest::default()), token);
    let mut stream = api.run(api.typed().list_events(request))?;
    let mut namespaces = Vec::new();
    while let Some(next) = api
        .runtime
        .block_on(async { tokio::time::timeout(CALL_PATIENCE, stream.message()).await })??
    {
        namespaces.push(next.event.context("an event")?.namespace_id);
    }
    Ok(namespaces)
}

/// A scoped token follows the event stream while a run ends out of its scope and then one in it: it gets
/// the second run's events and none of the first's, which came before them.
fn the_event_stream_of_a_scoped_token_carries_only_its_scope(dev: &GoferDev, api: &Api, viewer: &Token) -> Result<()> {
    let request = bearer(
        tonic::Request::new(v1::ListEventsRequest {
            follow: true,
            ..Default::default()
        }),
        Some(&viewer.secret),
    );
    let mut stream = api.run(api.typed().list_events(request))?;
    dev.ctl_ok(&["-n", OUT_OF_SCOPE, "run", "start", PIPELINE, "--wait"])?;
    dev.ctl_ok(&["-n", IN_SCOPE, "run", "start", PIPELINE, "--wait"])?;
    let mut seen = Vec::new();
    loop {
        let next = api
            .runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(60), stream.message()).await })
            .with_context(|| format!("no end of run 2 in {IN_SCOPE} within 60 s; saw {seen:#?}"))??
            .context("the stream ended")?
            .event
            .context("an event")?;
        ensure!(
            next.namespace_id == IN_SCOPE,
            "{} was sent an event of {}: {next:?}",
            viewer.caller,
            next.namespace_id
        );
        let done = matches!(&next.kind, Some(v1::event::Kind::Run(run))
            if run.run_id == 2 && run.state() == v1::RunState::Succeeded);
        seen.push(next);
        if done {
            return Ok(());
        }
    }
}
