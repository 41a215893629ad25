//! What makes a container an attempt's: its name, Gofer's labels and the environment a task sees, and
//! finding this executor's containers by those labels. The Engine calls themselves are `gofer-docker`'s;
//! this module only says what to ask it for.

use std::collections::HashMap;

use gofer_docker::{Container, ContainerSpec, Engine};
use gofer_proto::v1;

/// Label keys on every container Gofer makes.
pub(crate) const LABEL_CLUSTER: &str = "dev.gofer.cluster";
pub(crate) const LABEL_EXECUTOR: &str = "dev.gofer.executor";
pub(crate) const LABEL_ATTEMPT: &str = "dev.gofer.attempt-key";

/// The container of an attempt, if there is one.
pub(crate) async fn find(docker: &Engine, cluster: &str, key: &str) -> Result<Option<Container>, gofer_docker::Error> {
    let found = docker
        .containers_labelled(&[(LABEL_CLUSTER, cluster), (LABEL_ATTEMPT, key)])
        .await?;
    Ok(found.into_iter().next())
}

/// Every container of this cluster and executor, as (id, attempt key).
pub(crate) async fn ours(
    docker: &Engine,
    cluster: &str,
    executor: &str,
) -> Result<Vec<(String, String)>, gofer_docker::Error> {
    let found = docker
        .containers_labelled(&[(LABEL_CLUSTER, cluster), (LABEL_EXECUTOR, executor)])
        .await?;
    Ok(found
        .into_iter()
        .filter_map(|c| {
            let key = c.labels.get(LABEL_ATTEMPT)?.clone();
            Some((c.id, key))
        })
        .collect())
}

/// The container of attempt `attempt` (whose key text is `key`) that `start` asks for.
pub(crate) fn spec(
    cluster: &str,
    executor: &str,
    key: &str,
    attempt: &v1::AttemptKey,
    start: &v1::StartAttempt,
) -> ContainerSpec {
    let labels = HashMap::from([
        (LABEL_CLUSTER.to_string(), cluster.to_string()),
        (LABEL_EXECUTOR.to_string(), executor.to_string()),
        (LABEL_ATTEMPT.to_string(), key.to_string()),
        ("dev.gofer.namespace".to_string(), attempt.namespace_id.clone()),
        ("dev.gofer.pipeline".to_string(), attempt.pipeline_id.clone()),
        ("dev.gofer.run".to_string(), attempt.run_id.to_string()),
        ("dev.gofer.task".to_string(), attempt.task_id.clone()),
        ("dev.gofer.attempt".to_string(), attempt.attempt.to_string()),
    ]);
    let mut env: Vec<String> = start.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.sort();
    env.extend([
        format!("GOFER_NAMESPACE={}", attempt.namespace_id),
        format!("GOFER_PIPELINE_ID={}", attempt.pipeline_id),
        format!("GOFER_PIPELINE_VERSION={}", start.pipeline_version),
        format!("GOFER_RUN_ID={}", attempt.run_id),
        format!("GOFER_TASK_ID={}", attempt.task_id),
        format!("GOFER_ATTEMPT={}", attempt.attempt),
        // The shorter names of earlier releases, kept for the tasks that use them.
        format!("GOFER_PIPELINE={}", attempt.pipeline_id),
        format!("GOFER_RUN={}", attempt.run_id),
        format!("GOFER_TASK={}", attempt.task_id),
    ]);
    ContainerSpec {
        name: container_name(cluster, attempt),
        image: start.image.clone(),
        command: start.command.clone(),
        env,
        labels,
        workdir: start.workdir.clone(),
        nano_cpus: start.nano_cpus,
        memory_bytes: start.memory_bytes,
    }
}

/// A readable, unique container name: `gofer-<pipeline>-<run>-<task>-<attempt>-<cluster prefix>`.
fn container_name(cluster: &str, key: &v1::AttemptKey) -> String {
    let cluster: String = cluster.chars().take(12).collect();
    format!(
        "gofer-{}-{}-{}-{}-{}-{}",
        key.namespace_id, key.pipeline_id, key.run_id, key.task_id, key.attempt, cluster
    )
}
