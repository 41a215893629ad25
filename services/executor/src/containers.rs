//! What makes a container an attempt's: its name, Gofer's labels and the environment a task sees, and
//! finding this executor's containers by those labels. The Engine calls themselves are `gofer-docker`'s;
//! this module only says what to ask it for.

use std::collections::HashMap;

use gofer_docker::{Container, ContainerSpec, Engine};
use gofer_domain::AttemptId;
use gofer_proto::v1;

/// The API address a task that asked for the API gets, as its env entry starts.
const API_HOST_ENV_PREFIX: &str = "GOFER_HOST=";

/// Label keys on every container Gofer makes.
pub(crate) const LABEL_CLUSTER: &str = "dev.gofer.cluster";
pub(crate) const LABEL_EXECUTOR: &str = "dev.gofer.executor";
pub(crate) const LABEL_ATTEMPT: &str = "dev.gofer.attempt-key";

/// The container of an attempt, if there is one.
pub(crate) async fn find(
    docker: &Engine,
    cluster: &str,
    attempt: &AttemptId,
) -> Result<Option<Container>, gofer_docker::Error> {
    let found = docker
        .containers_labelled(&[(LABEL_CLUSTER, cluster), (LABEL_ATTEMPT, &attempt.to_string())])
        .await?;
    Ok(found.into_iter().next())
}

/// Every container of this cluster and executor, as (container id, the attempt its label names, if it
/// names one).
pub(crate) async fn ours(
    docker: &Engine,
    cluster: &str,
    executor: &str,
) -> Result<Vec<(String, Option<AttemptId>)>, gofer_docker::Error> {
    let found = docker
        .containers_labelled(&[(LABEL_CLUSTER, cluster), (LABEL_EXECUTOR, executor)])
        .await?;
    Ok(found
        .into_iter()
        .filter_map(|c| {
            let attempt = c.labels.get(LABEL_ATTEMPT)?.parse().ok();
            Some((c.id, attempt))
        })
        .collect())
}

/// The container of `attempt` that `start` asks for.
/// `relay` is where this executor's containers reach the API, if they can.
pub(crate) fn spec(
    cluster: &str,
    executor: &str,
    relay: Option<&crate::ApiRelay>,
    attempt: &AttemptId,
    start: &v1::StartAttempt,
) -> ContainerSpec {
    let task = &attempt.task;
    let labels = HashMap::from([
        (LABEL_CLUSTER.to_string(), cluster.to_string()),
        (LABEL_EXECUTOR.to_string(), executor.to_string()),
        (LABEL_ATTEMPT.to_string(), attempt.to_string()),
        ("dev.gofer.namespace".to_string(), task.namespace.clone()),
        ("dev.gofer.pipeline".to_string(), task.pipeline.clone()),
        ("dev.gofer.run".to_string(), task.run.to_string()),
        ("dev.gofer.task".to_string(), task.task.clone()),
        ("dev.gofer.attempt".to_string(), attempt.attempt.to_string()),
    ]);
    // The task's own env entries that name secrets get their values here, in the container's env alone.
    let mut env: Vec<String> = start
        .env
        .iter()
        .map(|(k, v)| match start.secret_env.contains(k) {
            true => format!(
                "{k}={}",
                gofer_domain::secrets::substitute(v, |p| start.secrets.get(p.text).map(String::as_str))
            ),
            false => format!("{k}={v}"),
        })
        .collect();
    // A task that asked for the API reaches it through this executor's relay, where there is one.
    if let Some(relay) = relay.filter(|_| start.api_gateway) {
        env.retain(|entry| !entry.starts_with(API_HOST_ENV_PREFIX));
        env.push(format!("{API_HOST_ENV_PREFIX}{}", relay.host));
        env.push(format!("GOFER_CA_CERT_PEM={}", relay.ca_pem));
    }
    env.sort();
    env.extend([
        format!("GOFER_NAMESPACE={}", task.namespace),
        format!("GOFER_PIPELINE_ID={}", task.pipeline),
        format!("GOFER_PIPELINE_VERSION={}", start.pipeline_version),
        format!("GOFER_RUN_ID={}", task.run),
        format!("GOFER_TASK_ID={}", task.task),
        format!("GOFER_ATTEMPT={}", attempt.attempt),
        // The shorter names of earlier releases, kept for the tasks that use them.
        format!("GOFER_PIPELINE={}", task.pipeline),
        format!("GOFER_RUN={}", task.run),
        format!("GOFER_TASK={}", task.task),
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
        user: start.user.clone(),
    }
}

/// A readable, unique container name: `gofer-<namespace>-<pipeline>-<run>-<task>-<attempt>-<cluster prefix>`.
fn container_name(cluster: &str, attempt: &AttemptId) -> String {
    let cluster: String = cluster.chars().take(12).collect();
    let task = &attempt.task;
    format!(
        "gofer-{}-{}-{}-{}-{}-{}",
        task.namespace, task.pipeline, task.run, task.task, attempt.attempt, cluster
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_container_runs_as_the_user_with_the_limits_the_start_names() {
        let attempt: AttemptId = "default/p/7/a/2".parse().expect("an attempt id");
        let start = v1::StartAttempt {
            image: "gofer/toolbox:1".into(),
            user: "1000:1000".into(),
            nano_cpus: 500_000_000,
            memory_bytes: 64 << 20,
            workdir: "/work".into(),
            ..Default::default()
        };
        let spec = spec("c0ffee", "e1", None, &attempt, &start);
        assert_eq!(spec.user, "1000:1000");
        assert_eq!((spec.nano_cpus, spec.memory_bytes), (500_000_000, 64 << 20));
        assert_eq!(spec.workdir, "/work");
        assert_eq!(spec.name, "gofer-default-p-7-a-2-c0ffee");
        assert_eq!(
            spec.labels.get(LABEL_ATTEMPT).map(String::as_str),
            Some("default/p/7/a/2")
        );
        // Without a user in the Start, the image's own.
        let plain = v1::StartAttempt::default();
        assert_eq!(super::spec("c0ffee", "e1", None, &attempt, &plain).user, "");
    }

    #[test]
    fn secrets_reach_the_env_entries_named_for_them_and_never_a_label() {
        let attempt: AttemptId = "default/p/7/a/2".parse().expect("an attempt id");
        let start = v1::StartAttempt {
            env: [("DB", "pg://u:secret{{db}}@h"), ("PARAM", "secret{{db}}")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            secrets: [("secret{{db}}".to_string(), "hunter2-db".to_string())].into(),
            secret_env: vec!["DB".into()],
            ..Default::default()
        };
        let spec = spec("c0ffee", "e1", None, &attempt, &start);
        assert!(
            spec.env.contains(&"DB=pg://u:hunter2-db@h".to_string()),
            "{:?}",
            spec.env
        );
        assert!(
            spec.env.contains(&"PARAM=secret{{db}}".to_string()),
            "only the named entries"
        );
        assert!(spec.labels.values().all(|v| !v.contains("hunter2")));
        assert!(!spec.name.contains("hunter2"));
    }

    #[test]
    fn a_task_that_asked_for_the_api_gets_the_relay_when_there_is_one() {
        let attempt: AttemptId = "default/p/7/a/2".parse().expect("an attempt id");
        let relay = crate::ApiRelay {
            host: "https://172.17.0.1:40001".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nrelay ca\n-----END CERTIFICATE-----\n".into(),
        };
        let asking = v1::StartAttempt {
            env: [("GOFER_HOST".to_string(), "https://node1:7443".to_string())].into(),
            api_gateway: true,
            ..Default::default()
        };
        let env = spec("c0ffee", "e1", Some(&relay), &attempt, &asking).env;
        let hosts: Vec<_> = env.iter().filter(|e| e.starts_with("GOFER_HOST=")).collect();
        assert_eq!(
            hosts,
            ["GOFER_HOST=https://172.17.0.1:40001"],
            "one GOFER_HOST, the relay's"
        );
        assert!(env.contains(&format!("GOFER_CA_CERT_PEM={}", relay.ca_pem)));
        // Without a relay, the scheduler's address stays and no CA is added.
        let env = spec("c0ffee", "e1", None, &attempt, &asking).env;
        assert!(env.contains(&"GOFER_HOST=https://node1:7443".to_string()));
        assert!(!env.iter().any(|e| e.starts_with("GOFER_CA_CERT_PEM=")));
        // A task that did not ask gets neither, relay or not.
        let plain = v1::StartAttempt::default();
        let env = spec("c0ffee", "e1", Some(&relay), &attempt, &plain).env;
        assert!(
            !env.iter()
                .any(|e| e.starts_with("GOFER_HOST=") || e.starts_with("GOFER_CA_CERT_PEM="))
        );
    }
}
