//! The Docker backend: the handful of Engine API calls an attempt needs, with Gofer's labels.

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions, StopContainerOptions,
    WaitContainerOptions,
};
use futures_util::{Stream, StreamExt};
use gofer_proto::v1;

use crate::Error;

/// Label keys on every container Gofer makes.
pub(crate) const LABEL_CLUSTER: &str = "dev.gofer.cluster";
pub(crate) const LABEL_EXECUTOR: &str = "dev.gofer.executor";
pub(crate) const LABEL_ATTEMPT: &str = "dev.gofer.attempt-key";

/// A connection to the Docker Engine.
#[derive(Clone)]
pub struct DockerBackend {
    docker: Docker,
}

/// A container that exists for an attempt.
pub(crate) struct Existing {
    pub(crate) id: String,
    /// When the Engine created it (to the second), in Unix milliseconds.
    pub(crate) created_unix_millis: i64,
}

impl DockerBackend {
    /// Connects to the local Docker Engine (`DOCKER_HOST` or the default socket) and checks it answers.
    pub async fn connect() -> Result<Self, Error> {
        let docker = Docker::connect_with_local_defaults().map_err(|e| Error::Docker(e.to_string()))?;
        docker
            .ping()
            .await
            .map_err(|e| Error::Docker(format!("{e} (is the Docker daemon running?)")))?;
        Ok(DockerBackend { docker })
    }

    /// Whether `image` exists locally. There is no registry to pull from.
    pub async fn has_image(&self, image: &str) -> Result<bool, String> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
            Err(e) => Err(format!("inspecting image {image:?}: {e}")),
        }
    }

    /// The container of an attempt, if there is one.
    pub(crate) async fn find(&self, cluster: &str, key: &str) -> Result<Option<Existing>, String> {
        let found = self
            .list_labelled(&[(LABEL_CLUSTER, cluster), (LABEL_ATTEMPT, key)])
            .await?;
        Ok(found.into_iter().find_map(|c| {
            Some(Existing {
                id: c.id?,
                created_unix_millis: c.created.unwrap_or(0).saturating_mul(1000),
            })
        }))
    }

    /// Every container of this cluster and executor, by attempt key.
    pub(crate) async fn ours(&self, cluster: &str, executor: &str) -> Result<Vec<(String, String)>, String> {
        self.labelled(&[(LABEL_CLUSTER, cluster), (LABEL_EXECUTOR, executor)])
            .await
    }

    /// Containers, running or not, that carry every one of `labels`, as (id, attempt key).
    async fn labelled(&self, labels: &[(&str, &str)]) -> Result<Vec<(String, String)>, String> {
        let found = self.containers_labelled(labels).await?;
        Ok(found
            .into_iter()
            .filter_map(|(id, labels)| Some((id, labels.get(LABEL_ATTEMPT)?.clone())))
            .collect())
    }

    /// Containers, running or not, that carry every one of `labels`, with all their labels.
    pub async fn containers_labelled(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<(String, HashMap<String, String>)>, String> {
        let found = self.list_labelled(labels).await?;
        Ok(found
            .into_iter()
            .filter_map(|c| Some((c.id?, c.labels.unwrap_or_default())))
            .collect())
    }

    async fn list_labelled(&self, labels: &[(&str, &str)]) -> Result<Vec<bollard::models::ContainerSummary>, String> {
        let filters = HashMap::from([(
            "label".to_string(),
            labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(|e| format!("listing containers: {e}"))
    }

    /// Creates and starts a long-running service container (an extension) on the host's network, so that
    /// it reaches a node listening on loopback; returns its id. A leftover container of the same name is
    /// replaced.
    pub async fn run_service(
        &self,
        name: &str,
        image: &str,
        env: Vec<String>,
        labels: HashMap<String, String>,
    ) -> Result<String, String> {
        if !self.has_image(image).await? {
            return Err(format!(
                "image {image:?} not found locally (there is no registry to pull from)"
            ));
        }
        self.remove(name).await?;
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(bollard::models::HostConfig {
                network_mode: Some("host".to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.create_started(name.to_string(), body).await
    }

    /// Creates and starts the container of an attempt; returns its id.
    pub(crate) async fn create_and_start(
        &self,
        cluster: &str,
        executor: &str,
        key: &str,
        start: &v1::StartAttempt,
    ) -> Result<String, String> {
        let attempt = start.key.as_ref().ok_or("start without a key")?;
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
        let host_config = HostConfig {
            nano_cpus: (start.nano_cpus > 0).then_some(start.nano_cpus),
            memory: (start.memory_bytes > 0).then_some(start.memory_bytes),
            // Without swap beyond the limit, so that the limit is the memory the task gets.
            memory_swap: (start.memory_bytes > 0).then_some(start.memory_bytes),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(start.image.clone()),
            cmd: if start.command.is_empty() {
                None
            } else {
                Some(start.command.clone())
            },
            env: Some(env),
            labels: Some(labels),
            working_dir: (!start.workdir.is_empty()).then(|| start.workdir.clone()),
            host_config: Some(host_config),
            ..Default::default()
        };
        self.create_started(container_name(cluster, attempt), body).await
    }

    /// Creates a container called `name` and starts it; a container that will not start is removed.
    async fn create_started(&self, name: String, body: ContainerCreateBody) -> Result<String, String> {
        let options = CreateContainerOptions {
            name: Some(name),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| format!("creating the container: {e}"))?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = self.remove(&created.id).await;
            return Err(format!("starting the container: {e}"));
        }
        Ok(created.id)
    }

    /// The container's output from its start, each piece with the time the Engine stamped it; with
    /// `follow`, going on until the container stops.
    pub(crate) fn logs(&self, id: &str, follow: bool) -> impl Stream<Item = Result<(Stamp, Vec<u8>), String>> + use<> {
        let options = LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            timestamps: true,
            ..Default::default()
        };
        self.docker.logs(id, Some(options)).map(|item| {
            let bytes = item
                .map(|output| output.into_bytes())
                .map_err(|e| format!("reading the container's output: {e}"))?;
            Stamp::split(&bytes).ok_or_else(|| "reading the container's output: a piece without its time".to_string())
        })
    }

    /// Waits until the container stops and returns its exit code.
    pub async fn wait(&self, id: &str) -> Result<i64, String> {
        let options = WaitContainerOptions {
            condition: "not-running".to_string(),
        };
        let mut stream = self.docker.wait_container(id, Some(options));
        match stream.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard reports a non-zero exit as this error, carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(format!("waiting for the container: {e}")),
            None => Err("waiting for the container: the Engine closed the stream".to_string()),
        }
    }

    /// Whether the kernel killed the container for going over its memory limit.
    pub async fn oom_killed(&self, id: &str) -> bool {
        self.docker
            .inspect_container(id, None)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.oom_killed)
            .unwrap_or(false)
    }

    /// Asks the container to stop: SIGTERM, then SIGKILL after `grace` (in whole seconds, rounded up).
    pub async fn stop(&self, id: &str, grace: std::time::Duration) -> Result<(), String> {
        let seconds = grace.as_millis().div_ceil(1000);
        let options = StopContainerOptions {
            t: Some(i32::try_from(seconds).unwrap_or(i32::MAX)),
            ..Default::default()
        };
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            // 304: already stopped; 404: already gone. Both mean it is not running.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304 | 404, ..
            }) => Ok(()),
            Err(e) => Err(format!("stopping the container: {e}")),
        }
    }

    /// Removes the container, running or not.
    pub async fn remove(&self, id: &str) -> Result<(), String> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(e) => Err(format!("removing the container: {e}")),
        }
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

/// The time the Engine stamped on a piece of output, ordered as the Engine wrote the pieces: the
/// RFC 3339 date and time to the second, then nanoseconds (the Engine trims trailing zeros off the
/// fraction, so the text alone does not sort).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Stamp {
    seconds: String,
    nanos: u32,
}

impl Stamp {
    /// Splits `2026-11-26T20:10:00.12345Z data…` into its stamp and its data.
    fn split(bytes: &[u8]) -> Option<(Stamp, Vec<u8>)> {
        let space = bytes.iter().position(|&b| b == b' ')?;
        let text = std::str::from_utf8(&bytes[..space]).ok()?.strip_suffix('Z')?;
        let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
        if seconds.len() != 19 || fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let nanos = format!("{fraction:0<9}").parse().ok()?;
        let stamp = Stamp {
            seconds: seconds.to_string(),
            nanos,
        };
        Some((stamp, bytes[space + 1..].to_vec()))
    }
}

#[cfg(test)]
mod stamp_tests {
    use super::Stamp;

    #[test]
    fn stamps_split_off_their_data_and_sort_by_time_whatever_the_trimmed_fraction() {
        let (a, data) = Stamp::split(b"2026-11-26T20:10:00.5Z hello\n").unwrap();
        assert_eq!(data, b"hello\n");
        let (b, _) = Stamp::split(b"2026-11-26T20:10:00.123456789Z x").unwrap();
        let (c, empty) = Stamp::split(b"2026-11-26T20:10:01Z ").unwrap();
        assert!(b < a && a < c, "{a:?} {b:?} {c:?}");
        assert!(empty.is_empty());
        assert_eq!(Stamp::split(b"no stamp here"), None);
        assert_eq!(Stamp::split(b"2026-11-26T20:10:00.5 missing-zone"), None);
    }
}
