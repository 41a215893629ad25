//! Conversions between `gofer.v1` messages and `gofer-domain` types. Incoming configs are checked here
//! with the domain's rules, so a bad field becomes an `InvalidArgument` that names it.

use gofer_domain::{AttemptRef, Condition, Error, PipelineConfig, Run, RunState, TaskConfig, TaskExecution, TaskState};

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
        });
    }
    let config = PipelineConfig {
        id: config.id,
        name: config.name,
        description: config.description,
        parallelism: config.parallelism,
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
            })
            .collect(),
    }
}

/// Converts a run to the wire.
pub fn run_to_proto(namespace: &str, pipeline: &str, run: &Run) -> v1::Run {
    let state = match run.state {
        RunState::Pending => v1::RunState::Pending,
        RunState::Running => v1::RunState::Running,
        RunState::Succeeded => v1::RunState::Succeeded,
        RunState::Failed => v1::RunState::Failed,
        RunState::Cancelled => v1::RunState::Cancelled,
    };
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
    }
}

/// Converts a task execution to the wire.
pub fn task_to_proto(namespace: &str, pipeline: &str, run: u64, task: &TaskExecution) -> v1::TaskExecution {
    let state = match task.state {
        TaskState::Pending => v1::TaskState::Pending,
        TaskState::Running => v1::TaskState::Running,
        TaskState::Succeeded => v1::TaskState::Succeeded,
        TaskState::Failed => v1::TaskState::Failed,
        TaskState::Cancelled => v1::TaskState::Cancelled,
        TaskState::Skipped => v1::TaskState::Skipped,
    };
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

/// The wire key of an attempt.
pub fn attempt_key(target: &AttemptRef, attempt: u32) -> v1::AttemptKey {
    v1::AttemptKey {
        namespace_id: target.namespace.clone(),
        pipeline_id: target.pipeline.clone(),
        run_id: target.run,
        task_id: target.task.clone(),
        attempt,
    }
}

/// The domain reference and attempt number of a wire key.
pub fn attempt_ref(key: &v1::AttemptKey) -> (AttemptRef, u32) {
    (
        AttemptRef {
            namespace: key.namespace_id.clone(),
            pipeline: key.pipeline_id.clone(),
            run: key.run_id,
            task: key.task_id.clone(),
        },
        key.attempt,
    )
}
