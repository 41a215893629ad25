//! Conversions between `gofer.v1` messages and `gofer-domain` types. Incoming configs are checked here
//! with the domain's rules, so a bad field becomes an `InvalidArgument` that names it.

use gofer_domain::access::{TokenRecord, TokenRole};
use gofer_domain::events::{Event, EventKind, FireDecision};
use gofer_domain::triggers::{ExtensionRecord, SettingSpec, Subscription};
use gofer_domain::{
    AttemptId, AttemptRef, Condition, Error, PipelineConfig, Run, RunState, State, TaskConfig, TaskExecution, TaskState,
};

use crate::v1;

/// Converts and validates a pipeline config from the wire.
pub fn config_from_proto(config: v1::PipelineConfig) -> Result<PipelineConfig, Error> {
    let mut tasks = Vec::with_capacity(config.tasks.len());
    for (i, task) in config.tasks.into_iter().enumerate() {
        let mut depends_on = std::collections::BTreeMap::new();
        for (parent, condition) in task.depends_on {
            let condition = match v1::DependencyCondition::try_from(condition) {
                Ok(v1::DependencyCondition::Any) => Condition::Any,
                Ok(v1::DependencyCondition::Success) => Condition::Success,
                Ok(v1::DependencyCondition::Failure) => Condition::Failure,
                _ => {
                    return Err(Error::invalid(
                        format!("tasks[{i}].depends_on.{parent}"),
                        "must be any, success or failure",
                    ));
                }
            };
            depends_on.insert(parent, condition);
        }
        tasks.push(TaskConfig {
            id: task.id,
            image: task.image,
            command: task.command,
            env: task.env.into_iter().collect(),
            depends_on,
            retries: task.retries,
            backoff: task.backoff,
            timeout: task.timeout,
            cpu: task.cpu.map(gofer_domain::limits::Cpus::from_cpus),
            memory: task.memory,
            workdir: task.workdir,
            user: task.user,
            inject_api_token: task.inject_api_token,
            executor_labels: task.executor_labels.into_iter().collect(),
        });
    }
    let config = PipelineConfig {
        id: config.id,
        name: config.name,
        description: config.description,
        parallelism: config.parallelism,
        keep_runs: config.keep_runs,
        tasks,
    };
    config.validate()?;
    Ok(config)
}

/// Converts a pipeline config to the wire.
pub fn config_to_proto(config: &PipelineConfig) -> v1::PipelineConfig {
    v1::PipelineConfig {
        id: config.id.clone(),
        name: config.name.clone(),
        description: config.description.clone(),
        parallelism: config.parallelism,
        keep_runs: config.keep_runs,
        tasks: config
            .tasks
            .iter()
            .map(|t| v1::Task {
                id: t.id.clone(),
                image: t.image.clone(),
                command: t.command.clone(),
                env: t.env.clone().into_iter().collect(),
                depends_on: t
                    .depends_on
                    .iter()
                    .map(|(parent, condition)| {
                        let c = match condition {
                            Condition::Any => v1::DependencyCondition::Any,
                            Condition::Success => v1::DependencyCondition::Success,
                            Condition::Failure => v1::DependencyCondition::Failure,
                        };
                        (parent.clone(), c as i32)
                    })
                    .collect(),
                retries: t.retries,
                backoff: t.backoff.clone(),
                timeout: t.timeout.clone(),
                cpu: t.cpu.map(|c| c.0 as f64 / 1000.0),
                memory: t.memory.clone(),
                workdir: t.workdir.clone(),
                user: t.user.clone(),
                inject_api_token: t.inject_api_token,
                executor_labels: t.executor_labels.clone().into_iter().collect(),
            })
            .collect(),
    }
}

/// Converts a run to the wire.
pub fn run_to_proto(namespace: &str, pipeline: &str, run: &Run) -> v1::Run {
    let state = run_state_to_proto(run.state);
    v1::Run {
        namespace_id: namespace.to_string(),
        pipeline_id: pipeline.to_string(),
        id: run.id,
        version: run.version,
        state: state as i32,
        state_reason: run.reason.clone(),
        created_unix_millis: run.created_at,
        started_unix_millis: run.started_at,
        ended_unix_millis: run.ended_at,
        trigger: run.trigger.as_ref().map(|t| v1::RunTrigger {
            extension: t.extension.clone(),
            subscription: t.subscription.clone(),
            idempotency_key: t.idempotency_key.clone(),
            scheduled_unix_millis: t.scheduled_at,
            delivery_id: t.delivery.clone(),
            parameters: t.parameters.clone().into_iter().collect(),
        }),
        request_id: run.request_id.clone(),
        parameters: run.parameters.clone().into_iter().collect(),
        retry_of: run.retry_of,
    }
}

/// Converts an extension to the wire; `connected` comes from the host, not the log.
pub fn extension_to_proto(name: &str, record: &ExtensionRecord, connected: bool) -> v1::Extension {
    let registration = record.registration.as_ref();
    v1::Extension {
        name: name.to_string(),
        image: record.image.clone(),
        builtin: record.builtin,
        installed_unix_millis: record.installed_at,
        registered: registration.is_some(),
        version: registration.map(|r| r.version.clone()).unwrap_or_default(),
        documentation: registration.map(|r| r.documentation.clone()).unwrap_or_default(),
        settings: registration
            .map(|r| r.settings.iter().map(setting_to_proto).collect())
            .unwrap_or_default(),
        connected,
        last_error: String::new(),
    }
}

/// Converts a setting spec to the wire.
pub fn setting_to_proto(spec: &SettingSpec) -> v1::ExtensionSetting {
    v1::ExtensionSetting {
        name: spec.name.clone(),
        required: spec.required,
        description: spec.description.clone(),
        secret: spec.secret,
    }
}

/// Converts a setting spec from the wire.
pub fn setting_from_proto(spec: v1::ExtensionSetting) -> SettingSpec {
    SettingSpec {
        name: spec.name,
        required: spec.required,
        description: spec.description,
        secret: spec.secret,
    }
}

/// What secret values are shown as.
pub const REDACTED: &str = "********";

/// Converts a subscription to the wire, hiding the values of settings its extension marks secret.
pub fn subscription_to_proto(
    state: &State,
    namespace: &str,
    pipeline: &str,
    label: &str,
    subscription: &Subscription,
    webhook_url: String,
) -> v1::Subscription {
    let secret = |key: &str| {
        state
            .extensions
            .get(&subscription.extension)
            .and_then(|e| e.registration.as_ref())
            .is_some_and(|r| r.settings.iter().any(|s| s.name == key && s.secret))
    };
    v1::Subscription {
        namespace_id: namespace.to_string(),
        pipeline_id: pipeline.to_string(),
        label: label.to_string(),
        extension: subscription.extension.clone(),
        settings: subscription
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), if secret(k) { REDACTED.to_string() } else { v.clone() }))
            .collect(),
        created_unix_millis: subscription.created_at,
        fired: subscription.fired,
        skipped: subscription.skipped,
        last_scheduled_unix_millis: subscription.last_scheduled_at,
        last_run_id: subscription.last_run.unwrap_or(0),
        buffered: subscription.buffered.is_some(),
        recent_skips: subscription
            .recent_skips
            .iter()
            .map(|e| v1::SkippedFire {
                at_unix_millis: e.at,
                scheduled_unix_millis: e.scheduled_at,
                reason: e.reason.clone(),
            })
            .collect(),
        webhook_url,
    }
}

/// Converts a task execution to the wire.
pub fn task_to_proto(namespace: &str, pipeline: &str, run: u64, task: &TaskExecution) -> v1::TaskExecution {
    let state = task_state_to_proto(task.state);
    v1::TaskExecution {
        namespace_id: namespace.to_string(),
        pipeline_id: pipeline.to_string(),
        run_id: run,
        task_id: task.task.clone(),
        state: state as i32,
        state_reason: task.reason.clone(),
        attempt: task.attempt,
        exit_code: task.exit_code,
        started_unix_millis: task.started_at,
        ended_unix_millis: task.ended_at,
        executor: task.executor.clone(),
        scheduler: task.scheduler.clone(),
        scheduler_epoch: task.scheduler_epoch,
        attempts: task
            .attempts
            .iter()
            .map(|a| v1::Attempt {
                attempt: a.attempt,
                executor: a.executor.clone(),
                scheduler: a.scheduler.clone(),
                scheduler_epoch: a.scheduler_epoch,
                assigned_unix_millis: a.assigned_at,
                started_unix_millis: a.started_at,
                ended_unix_millis: a.ended_at,
                state: a.state.as_str().to_string(),
                exit_code: a.exit_code,
                reason: a.reason.clone(),
                retried: a.retried,
                late_report: a.late_report.clone(),
            })
            .collect(),
        not_before_unix_millis: task.not_before,
    }
}

fn run_state_to_proto(state: RunState) -> v1::RunState {
    match state {
        RunState::Pending => v1::RunState::Pending,
        RunState::Running => v1::RunState::Running,
        RunState::Succeeded => v1::RunState::Succeeded,
        RunState::Failed => v1::RunState::Failed,
        RunState::Cancelled => v1::RunState::Cancelled,
    }
}

fn task_state_to_proto(state: TaskState) -> v1::TaskState {
    match state {
        TaskState::Pending => v1::TaskState::Pending,
        TaskState::Running => v1::TaskState::Running,
        TaskState::Succeeded => v1::TaskState::Succeeded,
        TaskState::Failed => v1::TaskState::Failed,
        TaskState::Cancelled => v1::TaskState::Cancelled,
        TaskState::Skipped => v1::TaskState::Skipped,
    }
}

/// Converts an event to the wire.
pub fn event_to_proto(event: &Event) -> v1::Event {
    use v1::event::Kind;
    let (namespace, pipeline) = event.what.pipeline();
    let kind = match &event.what {
        EventKind::Run { run, state, reason, .. } => Kind::Run(v1::RunEvent {
            run_id: *run,
            state: run_state_to_proto(*state) as i32,
            reason: reason.clone(),
        }),
        EventKind::Task {
            run,
            task,
            attempt,
            state,
            reason,
            ..
        } => Kind::Task(v1::TaskEvent {
            run_id: *run,
            task_id: task.clone(),
            attempt: *attempt,
            state: task_state_to_proto(*state) as i32,
            reason: reason.clone(),
        }),
        EventKind::Fire {
            subscription,
            extension,
            idempotency_key,
            scheduled_at,
            decision,
            run,
            reason,
            ..
        } => Kind::Fire(v1::FireEvent {
            subscription_label: subscription.clone(),
            extension: extension.clone(),
            idempotency_key: idempotency_key.clone(),
            scheduled_unix_millis: *scheduled_at,
            decision: match decision {
                FireDecision::Started => v1::FireDecision::Started,
                FireDecision::Buffered => v1::FireDecision::Buffered,
                FireDecision::Skipped => v1::FireDecision::Skipped,
                FireDecision::Duplicate => v1::FireDecision::Duplicate,
            } as i32,
            run_id: *run,
            reason: reason.clone(),
        }),
        EventKind::FiresSkipped {
            subscription,
            count,
            last_scheduled_at,
            reason,
            ..
        } => Kind::FiresSkipped(v1::FiresSkippedEvent {
            subscription_label: subscription.clone(),
            count: *count,
            last_scheduled_unix_millis: *last_scheduled_at,
            reason: reason.clone(),
        }),
        EventKind::ObjectEvicted { run, key, reason, .. } => Kind::ObjectEvicted(v1::ObjectEvictedEvent {
            run_id: *run,
            key: key.clone(),
            reason: reason.clone(),
        }),
    };
    v1::Event {
        id: event.id,
        emitted_unix_millis: event.at,
        namespace_id: namespace.to_string(),
        pipeline_id: pipeline.to_string(),
        kind: Some(kind),
    }
}

impl v1::RunState {
    /// Whether a run in this state has ended: SUCCEEDED, FAILED or CANCELLED.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            v1::RunState::Succeeded | v1::RunState::Failed | v1::RunState::Cancelled
        )
    }
}

/// The short name of a run state, as people read it: `SUCCEEDED`.
pub fn run_state_name(state: i32) -> &'static str {
    match v1::RunState::try_from(state) {
        Ok(s) => s.as_str_name().strip_prefix("RUN_STATE_").unwrap_or("UNSPECIFIED"),
        Err(_) => "UNKNOWN",
    }
}

/// The short name of a task state, as people read it: `SKIPPED`.
pub fn task_state_name(state: i32) -> &'static str {
    match v1::TaskState::try_from(state) {
        Ok(s) => s.as_str_name().strip_prefix("TASK_STATE_").unwrap_or("UNSPECIFIED"),
        Err(_) => "UNKNOWN",
    }
}

/// A token as the API shows it: never its secret, nor its hash.
pub fn token_to_proto(name: &str, record: &TokenRecord) -> v1::Token {
    v1::Token {
        name: name.to_string(),
        role: token_role_to_proto(record.role) as i32,
        namespaces: record.namespaces.clone(),
        created_unix_millis: record.created_at,
        expires_unix_millis: record.expires_at,
        disabled_unix_millis: record.disabled_at,
    }
}

/// A secret as the API shows it: its metadata, never its value nor its ciphertext.
pub fn secret_to_proto(
    scope: &gofer_domain::secrets::SecretScope,
    key: &str,
    record: &gofer_domain::secrets::SecretRecord,
) -> v1::Secret {
    let (namespace_id, pipeline_id, global) = match scope {
        gofer_domain::secrets::SecretScope::Pipeline { namespace, pipeline } => {
            (namespace.clone(), pipeline.clone(), false)
        }
        gofer_domain::secrets::SecretScope::Global => (String::new(), String::new(), true),
    };
    v1::Secret {
        key: key.to_string(),
        namespace_id,
        pipeline_id,
        global,
        namespaces: record.namespaces.clone(),
        size_bytes: record.size,
        created_unix_millis: record.created_at,
        updated_unix_millis: record.updated_at,
        key_id: record.value.key_id.clone(),
    }
}

pub fn token_role_to_proto(role: TokenRole) -> v1::TokenRole {
    match role {
        TokenRole::Admin => v1::TokenRole::Admin,
        TokenRole::Operator => v1::TokenRole::Operator,
        TokenRole::Viewer => v1::TokenRole::Viewer,
    }
}

/// The role a request names in `field`.
pub fn token_role_from_proto(field: &str, role: i32) -> Result<TokenRole, Error> {
    match v1::TokenRole::try_from(role) {
        Ok(v1::TokenRole::Admin) => Ok(TokenRole::Admin),
        Ok(v1::TokenRole::Operator) => Ok(TokenRole::Operator),
        Ok(v1::TokenRole::Viewer) => Ok(TokenRole::Viewer),
        _ => Err(Error::invalid(field, "is required: admin, operator or viewer")),
    }
}

impl From<&AttemptId> for v1::AttemptKey {
    fn from(id: &AttemptId) -> v1::AttemptKey {
        v1::AttemptKey {
            namespace_id: id.task.namespace.clone(),
            pipeline_id: id.task.pipeline.clone(),
            run_id: id.task.run,
            task_id: id.task.task.clone(),
            attempt: id.attempt,
        }
    }
}

/// The attempt a wire key names. Its ids are taken as they are: one naming nothing is not found where it
/// is looked up.
impl From<&v1::AttemptKey> for AttemptId {
    fn from(key: &v1::AttemptKey) -> AttemptId {
        AttemptId::new(
            AttemptRef {
                namespace: key.namespace_id.clone(),
                pipeline: key.pipeline_id.clone(),
                run: key.run_id,
                task: key.task_id.clone(),
            },
            key.attempt,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_id_travels_as_a_wire_key_and_back() {
        let key = v1::AttemptKey {
            namespace_id: "ns".into(),
            pipeline_id: "p-1".into(),
            run_id: 42,
            task_id: "build_x".into(),
            attempt: 3,
        };
        let id = AttemptId::from(&key);
        assert_eq!(id.to_string(), "ns/p-1/42/build_x/3");
        assert_eq!(v1::AttemptKey::from(&id), key);
    }

    #[test]
    fn a_task_user_travels_to_the_wire_and_back_and_is_checked_on_the_way_in() {
        let config =
            PipelineConfig::from_json(r#"{"id": "p", "tasks": [{"id": "a", "image": "i", "user": "1000:1000"}]}"#)
                .unwrap();
        let wire = config_to_proto(&config);
        assert_eq!(wire.tasks[0].user, "1000:1000");
        assert_eq!(config_from_proto(wire.clone()).unwrap(), config);
        let mut bad = wire;
        bad.tasks[0].user = "root:x:y".into();
        match config_from_proto(bad) {
            Err(Error::InvalidArgument { field, .. }) => assert_eq!(field, "tasks[0].user"),
            other => panic!("{other:?}"),
        }
    }
}
