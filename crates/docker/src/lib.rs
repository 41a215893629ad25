//! The Docker Engine calls Gofer makes, through bollard: find and list containers by label, create and
//! start one, follow its output, wait for it, stop and remove it, make and remove the bridge network
//! extensions run on, and run an extension's long-lived container on it.
//!
//! It exists so that only this crate talks to Docker: the executor (attempts) and the extension host
//! (extension containers) both go through it. It knows Docker, not Gofer: what a container is called,
//! which labels and environment it carries and what they mean are its callers' business. There is no
//! registry to pull from, so it never pulls an image.
//!
//! It refuses to make a container that is not hardened: every container it creates says in its
//! HostConfig that it is not privileged, has no host mounts or devices (so no Docker socket either),
//! runs with `no-new-privileges`, keeps only [`KEPT_CAPABILITIES`], at most [`PIDS_LIMIT`] processes, and
//! a json-file log of at most [`LOG_MAX_SIZE`] × [`LOG_MAX_FILE`]. A task container is on Docker's default
//! bridge network; an extension's container is on a bridge network of its own ([`Engine::ensure_network`])
//! where containers cannot reach each other. No container is ever on the host's network, where it would
//! reach every service the host keeps on loopback. [`ContainerSpec`] has no field to ask for anything
//! else.

use std::collections::HashMap;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions, StopContainerOptions,
    WaitContainerOptions,
};
use futures_util::{Stream, StreamExt};

/// Why a call to the Docker Engine failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No Engine client could be made (no socket where `DOCKER_HOST` or the default says).
    #[error("cannot reach Docker: {0}")]
    Connect(#[source] bollard::errors::Error),
    /// The Engine did not answer a ping.
    #[error("cannot reach Docker: {0} (is the Docker daemon running?)")]
    Ping(#[source] bollard::errors::Error),
    /// The image is not on this host.
    #[error("image {0:?} not found locally (there is no registry to pull from)")]
    ImageMissing(String),
    #[error("inspecting image {image:?}: {source}")]
    InspectImage {
        image: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("listing containers: {0}")]
    List(#[source] bollard::errors::Error),
    #[error("asking the Engine about its host: {0}")]
    Info(#[source] bollard::errors::Error),
    #[error("creating the container: {0}")]
    Create(#[source] bollard::errors::Error),
    #[error("starting the container: {0}")]
    Start(#[source] bollard::errors::Error),
    #[error("reading the container's output: {0}")]
    Output(#[source] bollard::errors::Error),
    /// A piece of output came without the time the Engine stamps on each.
    #[error("reading the container's output: a piece without its time")]
    Unstamped,
    #[error("waiting for the container: {0}")]
    Wait(#[source] bollard::errors::Error),
    /// The wait stream ended without saying how the container ended.
    #[error("waiting for the container: the Engine closed the stream")]
    WaitEnded,
    #[error("stopping the container: {0}")]
    Stop(#[source] bollard::errors::Error),
    #[error("removing the container: {0}")]
    Remove(#[source] bollard::errors::Error),
    #[error("inspecting network {name:?}: {source}")]
    InspectNetwork {
        name: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("creating network {name:?}: {source}")]
    CreateNetwork {
        name: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("removing network {name:?}: {source}")]
    RemoveNetwork {
        name: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// The network has no IPv4 gateway: it is not a bridge network Docker gave an address range.
    #[error("network {0:?} has no IPv4 gateway")]
    NoGateway(String),
}

/// A bridge network for extension containers, as [`Engine::ensure_network`] found or made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    /// The host's address on the network: the only address of the host its containers should dial.
    pub gateway: std::net::Ipv4Addr,
    /// Whether the network carries every label it was asked for: made by this caller, now or in an earlier
    /// life, and so the caller's to remove.
    pub labelled: bool,
}

/// A bridge network's IPv4 gateway from its IPAM config: the one it names, or else (as the Engine reports
/// its default bridge, with a subnet alone) the subnet's first host address, which Docker's default IPAM
/// gives the bridge itself.
fn gateway_of(gateway: Option<&str>, subnet: Option<&str>) -> Option<std::net::Ipv4Addr> {
    if let Some(gateway) = gateway.and_then(|g| g.parse().ok()) {
        return Some(gateway);
    }
    let (address, prefix) = subnet?.split_once('/')?;
    let (address, prefix) = (address.parse::<std::net::Ipv4Addr>().ok()?, prefix.parse::<u32>().ok()?);
    if prefix >= 31 {
        return None;
    }
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    Some(std::net::Ipv4Addr::from((u32::from(address) & mask) + 1))
}

/// The network task containers run on: Docker's default bridge.
const TASK_NETWORK: &str = "bridge";

/// The bridge driver's option that lets containers on the same network reach each other; extension
/// networks turn it off, so one extension cannot reach another's ports.
const BRIDGE_ICC: &str = "com.docker.network.bridge.enable_icc";

/// A connection to the Docker Engine. Clone it freely; clones share the connection.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
}

/// A container that exists, running or not.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub labels: HashMap<String, String>,
    /// When the Engine created it (to the second), in Unix milliseconds.
    pub created_unix_millis: i64,
}

/// A container to create and start: what it runs, with which limits and labels.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    /// Its name, unique on the host.
    pub name: String,
    pub image: String,
    /// The command and its arguments; empty for the image's own.
    pub command: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    /// The working directory; empty for the image's own.
    pub workdir: String,
    /// The CPU limit in billionths of a CPU; 0 for none.
    pub nano_cpus: i64,
    /// The memory limit in bytes, with no swap beyond it; 0 for none.
    pub memory_bytes: i64,
    /// The user the command runs as (`name`, `uid`, `name:group` or `uid:gid`); empty for the image's own.
    pub user: String,
}

/// The capabilities a container keeps: Docker's default set (as of Engine 20.10) without `NET_RAW` (raw
/// sockets: spoofed packets, ARP tricks on the bridge), `MKNOD` (device nodes), `AUDIT_WRITE` (the host's
/// audit log), `SETFCAP` and `SETPCAP` (granting file or process capabilities) and `SYS_CHROOT`, which a
/// task never needs. What is kept lets a task that runs as root in its image own, read and write its own
/// files, signal its own processes, change to another user and bind a port below 1024 in its network.
/// Every other capability is dropped, so a daemon whose default set grows gives tasks nothing more.
pub const KEPT_CAPABILITIES: [&str; 8] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "NET_BIND_SERVICE",
];

/// The most processes and threads a container may have at once (Docker's `PidsLimit`, the pids cgroup
/// controller), so that a fork bomb stops at its own container; 2048, as Podman's default.
pub const PIDS_LIMIT: i64 = 2048;

/// The size at which Docker starts a new json-file log for a container, and how many it keeps: a container
/// takes at most 300 MB of the Docker host's disk for its log however much it prints. The executor
/// follows the log as it grows and reads it again once the container stops, so this only bounds what an
/// executor that reads it late (a restarted one, or one whose upload failed) can still find. At the
/// json-file's worst (a line of a few bytes takes about 70), 100 MB still holds more than the 5 MiB head
/// and tail of the log archive's default cap.
pub const LOG_MAX_SIZE: &str = "100m";
/// See [`LOG_MAX_SIZE`].
pub const LOG_MAX_FILE: &str = "3";

/// What every container Gofer makes gets, whatever it runs: not privileged, no host mounts or devices,
/// `no-new-privileges`, [`KEPT_CAPABILITIES`] only, [`PIDS_LIMIT`] and a capped json-file log.
fn hardened(network_mode: &str) -> HostConfig {
    HostConfig {
        privileged: Some(false),
        network_mode: Some(network_mode.to_string()),
        binds: Some(Vec::new()),
        mounts: Some(Vec::new()),
        devices: Some(Vec::new()),
        security_opt: Some(vec!["no-new-privileges".to_string()]),
        cap_drop: Some(vec!["ALL".to_string()]),
        cap_add: Some(KEPT_CAPABILITIES.iter().map(|c| c.to_string()).collect()),
        pids_limit: Some(PIDS_LIMIT),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".to_string()),
            config: Some(HashMap::from([
                ("max-size".to_string(), LOG_MAX_SIZE.to_string()),
                ("max-file".to_string(), LOG_MAX_FILE.to_string()),
            ])),
        }),
        ..Default::default()
    }
}

/// The HostConfig of a task container: [`hardened`], on Docker's default bridge network, with the
/// spec's limits.
fn task_host_config(spec: &ContainerSpec) -> HostConfig {
    let limited = |value: i64| (value > 0).then_some(value);
    HostConfig {
        nano_cpus: limited(spec.nano_cpus),
        memory: limited(spec.memory_bytes),
        // Without swap beyond the limit, so that the limit is the memory the container gets.
        memory_swap: limited(spec.memory_bytes),
        ..hardened(TASK_NETWORK)
    }
}

/// The HostConfig of an extension's container: [`hardened`], on its network.
fn service_host_config(network: &Network) -> HostConfig {
    hardened(&network.name)
}

impl Engine {
    /// Connects to the local Docker Engine (`DOCKER_HOST` or the default socket) and checks it answers.
    pub async fn connect() -> Result<Self, Error> {
        let docker = Docker::connect_with_local_defaults().map_err(Error::Connect)?;
        docker.ping().await.map_err(Error::Ping)?;
        Ok(Engine { docker })
    }

    /// The CPUs (in thousandths) and memory (bytes) of the host the Engine runs containers on; 0 for what
    /// it does not say.
    pub async fn host_size(&self) -> Result<(u64, u64), Error> {
        let info = self.docker.info().await.map_err(Error::Info)?;
        let cpus = info.ncpu.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        let memory = info.mem_total.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        Ok((cpus.saturating_mul(1000), memory))
    }

    /// Whether `image` exists locally. There is no registry to pull from.
    pub async fn has_image(&self, image: &str) -> Result<bool, Error> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
            Err(source) => Err(Error::InspectImage {
                image: image.to_string(),
                source,
            }),
        }
    }

    /// Containers, running or not, that carry every one of `labels`.
    pub async fn containers_labelled(&self, labels: &[(&str, &str)]) -> Result<Vec<Container>, Error> {
        let filters = HashMap::from([(
            "label".to_string(),
            labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let found = self.docker.list_containers(Some(options)).await.map_err(Error::List)?;
        Ok(found
            .into_iter()
            .filter_map(|c| {
                Some(Container {
                    id: c.id?,
                    labels: c.labels.unwrap_or_default(),
                    created_unix_millis: c.created.unwrap_or(0).saturating_mul(1000),
                })
            })
            .collect())
    }

    /// Creates and starts a long-running service container (an extension) on `network` (one that
    /// [`Engine::ensure_network`] made), hardened as every container is; returns its id. A leftover
    /// container of the same name is replaced.
    pub async fn run_service(
        &self,
        name: &str,
        image: &str,
        env: Vec<String>,
        labels: HashMap<String, String>,
        network: &Network,
    ) -> Result<String, Error> {
        if !self.has_image(image).await? {
            return Err(Error::ImageMissing(image.to_string()));
        }
        self.remove(name).await?;
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(service_host_config(network)),
            ..Default::default()
        };
        self.create_started(name.to_string(), body).await
    }

    /// The bridge network `name`, made with `labels` if it does not exist: outbound traffic is allowed
    /// (NAT, as on Docker's default bridge), but its containers cannot reach each other, and the host
    /// only at its own addresses, never at its loopback. Docker picks its address range.
    pub async fn ensure_network(&self, name: &str, labels: &HashMap<String, String>) -> Result<Network, Error> {
        if let Some(network) = self.network(name, labels).await? {
            return Ok(network);
        }
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".to_string()),
            internal: Some(false),
            attachable: Some(false),
            options: Some(HashMap::from([(BRIDGE_ICC.to_string(), "false".to_string())])),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => {}
            // 409: another caller made it meanwhile; use that one.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => {}
            Err(source) => {
                return Err(Error::CreateNetwork {
                    name: name.to_string(),
                    source,
                });
            }
        }
        self.network(name, labels)
            .await?
            .ok_or_else(|| Error::NoGateway(name.to_string()))
    }

    /// The network `name` if it exists, with its gateway and whether it carries all of `labels`.
    pub async fn network(&self, name: &str, labels: &HashMap<String, String>) -> Result<Option<Network>, Error> {
        let inspected = match self.docker.inspect_network(name, None).await {
            Ok(inspected) => inspected,
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => return Ok(None),
            Err(source) => {
                return Err(Error::InspectNetwork {
                    name: name.to_string(),
                    source,
                });
            }
        };
        let gateway = inspected
            .ipam
            .and_then(|ipam| ipam.config)
            .unwrap_or_default()
            .into_iter()
            .find_map(|config| gateway_of(config.gateway.as_deref(), config.subnet.as_deref()))
            .ok_or_else(|| Error::NoGateway(name.to_string()))?;
        let found = inspected.labels.unwrap_or_default();
        Ok(Some(Network {
            name: name.to_string(),
            gateway,
            labelled: labels.iter().all(|(k, v)| found.get(k) == Some(v)),
        }))
    }

    /// The host's address on the network task containers run on (Docker's default bridge): where they
    /// reach a service the host offers them. `None` when the Engine has no such network.
    pub async fn task_network_gateway(&self) -> Result<Option<std::net::Ipv4Addr>, Error> {
        Ok(self.network(TASK_NETWORK, &HashMap::new()).await?.map(|n| n.gateway))
    }

    /// Removes the network `name`; one that is already gone is fine.
    pub async fn remove_network(&self, name: &str) -> Result<(), Error> {
        match self.docker.remove_network(name).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(source) => Err(Error::RemoveNetwork {
                name: name.to_string(),
                source,
            }),
        }
    }

    /// Creates and starts the container `spec` describes, hardened, on Docker's default bridge network;
    /// returns its id.
    pub async fn create_and_start(&self, spec: ContainerSpec) -> Result<String, Error> {
        let host_config = task_host_config(&spec);
        let body = ContainerCreateBody {
            image: Some(spec.image),
            cmd: (!spec.command.is_empty()).then_some(spec.command),
            env: Some(spec.env),
            labels: Some(spec.labels),
            working_dir: (!spec.workdir.is_empty()).then_some(spec.workdir),
            user: (!spec.user.is_empty()).then_some(spec.user),
            host_config: Some(host_config),
            ..Default::default()
        };
        self.create_started(spec.name, body).await
    }

    /// Creates a container called `name` and starts it; a container that will not start is removed.
    async fn create_started(&self, name: String, body: ContainerCreateBody) -> Result<String, Error> {
        let options = CreateContainerOptions {
            name: Some(name),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(Error::Create)?;
        if let Err(e) = self.docker.start_container(&created.id, None).await {
            let _ = self.remove(&created.id).await;
            return Err(Error::Start(e));
        }
        Ok(created.id)
    }

    /// The container's output from its start, each piece with the time the Engine stamped it; with
    /// `follow`, going on until the container stops.
    pub fn logs(&self, id: &str, follow: bool) -> impl Stream<Item = Result<(Stamp, Vec<u8>), Error>> + use<> {
        let options = LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            timestamps: true,
            ..Default::default()
        };
        self.docker.logs(id, Some(options)).map(|item| {
            let bytes = item.map(|output| output.into_bytes()).map_err(Error::Output)?;
            Stamp::split(&bytes).ok_or(Error::Unstamped)
        })
    }

    /// Waits until the container stops and returns its exit code.
    pub async fn wait(&self, id: &str) -> Result<i64, Error> {
        let options = WaitContainerOptions {
            condition: "not-running".to_string(),
        };
        let mut stream = self.docker.wait_container(id, Some(options));
        match stream.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            // bollard reports a non-zero exit as this error, carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(Error::Wait(e)),
            None => Err(Error::WaitEnded),
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
    pub async fn stop(&self, id: &str, grace: std::time::Duration) -> Result<(), Error> {
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
            Err(e) => Err(Error::Stop(e)),
        }
    }

    /// Removes the container, running or not.
    pub async fn remove(&self, id: &str) -> Result<(), Error> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(e) => Err(Error::Remove(e)),
        }
    }
}

/// The time the Engine stamped on a piece of output, ordered as the Engine wrote the pieces: the
/// RFC 3339 date and time to the second, then nanoseconds (the Engine trims trailing zeros off the
/// fraction, so the text alone does not sort).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Stamp {
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
mod hardening_tests {
    use super::*;

    #[test]
    fn a_networks_gateway_is_the_one_it_names_or_its_subnets_first_host() {
        let ip = |text: &str| Some(text.parse::<std::net::Ipv4Addr>().unwrap());
        assert_eq!(gateway_of(Some("10.9.0.254"), Some("10.9.0.0/24")), ip("10.9.0.254"));
        // Docker's default bridge, as some Engines report it: a subnet alone.
        assert_eq!(gateway_of(None, Some("172.17.0.0/16")), ip("172.17.0.1"));
        assert_eq!(gateway_of(Some(""), Some("192.168.32.7/20")), ip("192.168.32.1"));
        for (gateway, subnet) in [
            (None, None),
            (None, Some("10.0.0.0/31")),
            (None, Some("fd00::/64")),
            (None, Some("nonsense")),
        ] {
            assert_eq!(gateway_of(gateway, subnet), None, "{subnet:?}");
        }
    }

    #[test]
    fn a_task_container_is_hardened_explicitly_and_keeps_its_limits() {
        let spec = ContainerSpec {
            nano_cpus: 500_000_000,
            memory_bytes: 64 << 20,
            ..Default::default()
        };
        let config = task_host_config(&spec);
        assert_eq!(config.privileged, Some(false));
        assert_eq!(config.network_mode.as_deref(), Some("bridge"));
        assert_eq!(config.binds, Some(Vec::new()));
        assert_eq!(config.mounts, Some(Vec::new()));
        assert_eq!(config.devices, Some(Vec::new()));
        assert_eq!(config.security_opt, Some(vec!["no-new-privileges".to_string()]));
        assert_eq!(config.cap_drop, Some(vec!["ALL".to_string()]));
        let kept = config.cap_add.clone().unwrap_or_default();
        for dropped in [
            "NET_RAW",
            "MKNOD",
            "AUDIT_WRITE",
            "SETFCAP",
            "SETPCAP",
            "SYS_CHROOT",
            "SYS_ADMIN",
        ] {
            assert!(!kept.iter().any(|c| c == dropped), "{dropped} kept: {kept:?}");
        }
        assert_eq!(kept.len(), KEPT_CAPABILITIES.len());
        assert_eq!(config.pids_limit, Some(PIDS_LIMIT));
        let log = config.log_config.clone().unwrap_or_default();
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        let options = log.config.unwrap_or_default();
        assert_eq!(options.get("max-size").map(String::as_str), Some(LOG_MAX_SIZE));
        assert_eq!(options.get("max-file").map(String::as_str), Some(LOG_MAX_FILE));
        assert_eq!(
            (config.nano_cpus, config.memory, config.memory_swap),
            (Some(500_000_000), Some(64 << 20), Some(64 << 20))
        );
        let unlimited = task_host_config(&ContainerSpec::default());
        assert_eq!(
            (unlimited.nano_cpus, unlimited.memory, unlimited.memory_swap),
            (None, None, None)
        );
    }

    #[test]
    fn an_extension_container_is_on_its_own_network_and_otherwise_hardened_alike() {
        let network = Network {
            name: "gofer-ext-test".to_string(),
            gateway: std::net::Ipv4Addr::new(172, 18, 0, 1),
            labelled: true,
        };
        let service = service_host_config(&network);
        assert_eq!(service.network_mode.as_deref(), Some("gofer-ext-test"));
        assert_eq!(
            HostConfig {
                network_mode: None,
                ..service
            },
            HostConfig {
                network_mode: None,
                ..hardened("bridge")
            }
        );
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
