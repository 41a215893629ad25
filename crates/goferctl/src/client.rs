//! Finding and talking to the server: the config file, flags and env, the TLS channel with the bearer
//! token, turning a Status into one readable line, and reading a pipeline from a file, stdin or a
//! Cargo project.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gofer_domain::PipelineConfig;
use gofer_proto::v1::{self, gofer_service_client::GoferServiceClient};
use serde::Deserialize;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use crate::Failure;

/// The client config `goferd dev` writes.
#[derive(Deserialize, Default)]
struct ConfigFile {
    host: Option<String>,
    token: Option<String>,
    ca_cert: Option<PathBuf>,
    namespace: Option<String>,
}

/// Where and how to reach the server, from flags, env and the config file, in that order.
pub struct Settings {
    pub host: String,
    pub token: String,
    pub ca_cert: Option<PathBuf>,
    pub namespace: String,
}

fn default_config_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GOFER_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("gofer").join("config.toml"))
}

impl Settings {
    pub fn resolve(
        config: Option<PathBuf>,
        host: Option<String>,
        token: Option<String>,
        ca_cert: Option<PathBuf>,
        namespace: Option<String>,
    ) -> Result<Self, Failure> {
        let explicit = config.is_some();
        let path = config.or_else(default_config_path);
        let file = match &path {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => toml::from_str::<ConfigFile>(&text)
                    .map_err(|e| Failure(format!("config file {}: {}", path.display(), e.message())))?,
                Err(err) if explicit || err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Failure(format!("config file {}: {err}", path.display())));
                }
                Err(_) => ConfigFile::default(),
            },
            None => ConfigFile::default(),
        };
        let host = host.or(file.host).ok_or_else(|| {
            Failure(
                "no Gofer server configured: start `goferd dev` (it writes the config) or pass --host and --token"
                    .into(),
            )
        })?;
        let token = token
            .or(file.token)
            .ok_or_else(|| Failure("no API token: pass --token or set GOFER_TOKEN".into()))?;
        let namespace = namespace.or(file.namespace).unwrap_or_else(|| "default".to_string());
        if namespace.trim().is_empty() {
            return Err(Failure("--namespace must not be empty".into()));
        }
        Ok(Settings {
            host,
            token,
            ca_cert: ca_cert.or(file.ca_cert),
            namespace,
        })
    }
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

pub type Api = GoferServiceClient<InterceptedService<Channel, Bearer>>;

/// Connects to the server over TLS.
pub async fn connect(settings: &Settings) -> Result<Api, Failure> {
    let header: MetadataValue<Ascii> = format!("Bearer {}", settings.token)
        .parse()
        .map_err(|_| Failure("the token has characters a header cannot carry".into()))?;
    let mut endpoint = Endpoint::from_shared(settings.host.clone())
        .map_err(|e| Failure(format!("--host {:?} is not a valid address: {e}", settings.host)))?
        .connect_timeout(Duration::from_secs(5));
    if settings.host.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_enabled_roots();
        if let Some(ca) = &settings.ca_cert {
            let pem = std::fs::read(ca).map_err(|e| Failure(format!("CA certificate {}: {e}", ca.display())))?;
            tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        }
        let host = endpoint.uri().host().unwrap_or("localhost");
        // The dev certificate names localhost and 127.0.0.1; tonic verifies IP addresses by name.
        let domain = if host.parse::<std::net::IpAddr>().is_ok() {
            "localhost".to_string()
        } else {
            host.to_string()
        };
        endpoint = endpoint
            .tls_config(tls.domain_name(domain))
            .map_err(|e| Failure(format!("TLS setup: {e}")))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        let detail = source_chain(&e);
        let hint = if detail.contains("refused") {
            " (is goferd running?)"
        } else {
            ""
        };
        Failure(format!("cannot reach Gofer at {}: {detail}{hint}", settings.host))
    })?;
    Ok(GoferServiceClient::with_interceptor(channel, Bearer(header))
        .max_decoding_message_size(16 * 1024 * 1024)
        .max_encoding_message_size(16 * 1024 * 1024))
}

fn source_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        // Layers often repeat their cause's message; say each part once.
        let part = inner.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        source = inner.source();
    }
    text
}

/// One readable line for a Status: its message and its code.
pub fn status(status: Status) -> Failure {
    let message = if status.message().is_empty() {
        "the server gave no detail"
    } else {
        status.message()
    };
    // A stream cut by the server going away surfaces as a transport error, not as a Status from Gofer.
    if message.contains("h2 protocol error") || message.contains("error reading a body") {
        return Failure(
            "lost the connection to goferd; what was under way goes on (check it with goferctl run get)".into(),
        );
    }
    let hint = match status.code() {
        Code::Unauthenticated => " (check --token, GOFER_TOKEN or the config file)",
        Code::Unavailable => " (is goferd running?)",
        _ => "",
    };
    Failure(format!("{message} ({:?}){hint}", status.code()))
}

/// Reads a pipeline: a JSON file, `-` for stdin, or a Cargo project directory whose `cargo run --quiet`
/// prints the JSON. The DAG rules are left to the server.
pub fn load_pipeline(path: &str) -> Result<PipelineConfig, Failure> {
    let json = if path == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| Failure(format!("reading stdin: {e}")))?
    } else if Path::new(path).is_dir() {
        run_cargo_project(Path::new(path))?
    } else {
        std::fs::read_to_string(path).map_err(|e| Failure(format!("reading {path}: {e}")))?
    };
    PipelineConfig::parse_json(&json).map_err(|e| Failure(format!("invalid pipeline: {e}")))
}

fn run_cargo_project(dir: &Path) -> Result<String, Failure> {
    if !dir.join("Cargo.toml").is_file() {
        return Err(Failure(format!(
            "{} is a directory without a Cargo.toml",
            dir.display()
        )));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = std::process::Command::new(cargo)
        .args(["run", "--quiet"])
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| Failure(format!("running `cargo run --quiet` in {}: {e}", dir.display())))?;
    if !output.status.success() {
        // Cargo's own messages (the compiler's errors) went to stderr above this line.
        return Err(Failure(format!(
            "`cargo run --quiet` in {} failed (its errors are above)",
            dir.display()
        )));
    }
    String::from_utf8(output.stdout).map_err(|_| Failure("the pipeline program printed invalid UTF-8".into()))
}

/// Follows a run until it ends, printing each state change on stderr; returns the final run.
/// A request id no other call will use: 128 random bits, in hex.
pub fn new_request_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        // No /dev/urandom: the time, the process and a hash seeded by the OS are unique enough.
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        hasher.write_u32(std::process::id());
        bytes[..8].copy_from_slice(&hasher.finish().to_le_bytes());
        bytes[8..].copy_from_slice(&std::process::id().to_le_bytes().repeat(2));
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new run: of the newest version, or again of an earlier run.
pub enum NewRun {
    Start(v1::StartRunRequest),
    Retry(v1::RetryRunRequest),
}

/// Starts a run, retrying for up to about 6 s while the cluster is unreachable or between leaders: the
/// request id makes a repeat return the run the first call may have started. Returns the run and whether
/// this call made it.
pub async fn start_run(api: &mut Api, request: NewRun) -> Result<(v1::Run, bool), Failure> {
    let mut delay = std::time::Duration::from_millis(200);
    let mut tries = 0;
    loop {
        tries += 1;
        let answer = match &request {
            NewRun::Start(start) => api
                .start_run(start.clone())
                .await
                .map(|r| r.into_inner())
                .map(|r| (r.run, r.created)),
            NewRun::Retry(retry) => api
                .retry_run(retry.clone())
                .await
                .map(|r| r.into_inner())
                .map(|r| (r.run, r.created)),
        };
        match answer {
            Ok((run, created)) => return Ok((run.unwrap_or_default(), created)),
            Err(e) if e.code() == Code::Unavailable && tries < 6 => {
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(status(e)),
        }
    }
}

pub async fn wait_for_run(api: &mut Api, namespace: &str, pipeline: &str, run: u64) -> Result<v1::Run, Failure> {
    let request = v1::WatchRunRequest {
        namespace_id: namespace.to_string(),
        pipeline_id: pipeline.to_string(),
        run_id: run,
    };
    let mut stream = api.watch_run(request).await.map_err(status)?.into_inner();
    let mut last: Option<v1::Run> = None;
    while let Some(update) = stream.message().await.map_err(status)? {
        let Some(current) = update.run else { continue };
        if last.as_ref().map(|l| l.state) != Some(current.state) {
            eprintln!("run {run} {}", gofer_proto::run_state_name(current.state));
        }
        last = Some(current);
    }
    let last = last.ok_or_else(|| Failure("the server ended the watch without a run".into()))?;
    if !matches!(
        gofer_proto::run_state_name(last.state),
        "SUCCEEDED" | "FAILED" | "CANCELLED"
    ) {
        return Err(Failure(format!(
            "the watch ended while run {run} was {}",
            gofer_proto::run_state_name(last.state)
        )));
    }
    Ok(last)
}
