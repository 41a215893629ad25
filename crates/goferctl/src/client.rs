//! Finding and talking to the server: the config file, flags and env, the TLS channel with the bearer
//! token, and turning a Status into one readable line. It knows no command.

use std::error::Error;
use std::path::PathBuf;
use std::time::Duration;

use gofer_proto::v1::gofer_service_client::GoferServiceClient;
use serde::Deserialize;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use crate::failure::Failure;

/// The client config `goferd dev` writes.
#[derive(Deserialize, Default)]
struct ConfigFile {
    host: Option<String>,
    token: Option<String>,
    ca_cert: Option<PathBuf>,
    namespace: Option<String>,
}

/// The global flags that say where and how to reach the server; the config file fills in what they leave
/// out.
#[derive(clap::Args, Clone)]
pub struct Flags {
    /// The namespace to act in
    #[arg(long, short = 'n', global = true, env = "GOFER_NAMESPACE")]
    pub namespace: Option<String>,
    /// The server to talk to, such as https://127.0.0.1:7443; its certificate must name this host name or
    /// address (plain http:// only to loopback) [default: from the config file]
    #[arg(long, global = true, env = "GOFER_HOST")]
    host: Option<String>,
    /// The API token [default: from the config file]
    #[arg(long, global = true, env = "GOFER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The CA certificate (PEM) that signed the server's certificate [default: from the config file]
    #[arg(long, global = true, env = "GOFER_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// The config file [default: $GOFER_CONFIG, else gofer/config.toml in the user's config directory]
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

/// Where and how to reach the server, from flags, env and the config file, in that order.
pub struct Settings {
    pub host: String,
    pub token: String,
    pub ca_cert: Option<CaCert>,
    pub namespace: String,
}

/// The CA certificate the server's is verified against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaCert {
    /// A PEM file: `--ca-cert`, `GOFER_CA_CERT` or the config file's `ca_cert`.
    File(PathBuf),
    /// The PEM itself, from `GOFER_CA_CERT_PEM`, as a task with `inject_api_token` gets it.
    Pem(String),
}

/// The env a task with `inject_api_token` gets besides `GOFER_HOST`: its run's token, and the CA
/// certificate its `GOFER_HOST` is verified against. goferctl run inside such a task needs no flags.
const TASK_TOKEN_ENV: &str = "GOFER_API_TOKEN";
const TASK_CA_PEM_ENV: &str = "GOFER_CA_CERT_PEM";

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

impl Flags {
    /// Reads the config file (again: a `goferd dev` that came back may have written another address) and
    /// fills in what the flags leave out.
    pub fn resolve(&self) -> Result<Settings, Failure> {
        self.resolve_with(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// [`Flags::resolve`], with `env` for the variables clap does not read itself.
    fn resolve_with(&self, env: impl Fn(&str) -> Option<String>) -> Result<Settings, Failure> {
        let explicit = self.config.is_some();
        let path = self.config.clone().or_else(default_config_path);
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
        let host = self.host.clone().or(file.host).ok_or_else(|| {
            Failure(
                "no Gofer server configured: start `goferd dev` (it writes the config) or pass --host and --token"
                    .into(),
            )
        })?;
        let token = self
            .token
            .clone()
            .or_else(|| env(TASK_TOKEN_ENV))
            .or(file.token)
            .ok_or_else(|| Failure("no API token: pass --token or set GOFER_TOKEN".into()))?;
        let ca_cert = match (&self.ca_cert, env(TASK_CA_PEM_ENV), file.ca_cert) {
            (Some(path), _, _) => Some(CaCert::File(path.clone())),
            (None, Some(pem), _) => Some(CaCert::Pem(pem)),
            (None, None, file) => file.map(CaCert::File),
        };
        let namespace = self
            .namespace
            .clone()
            .or(file.namespace)
            .unwrap_or_else(|| "default".to_string());
        if namespace.trim().is_empty() {
            return Err(Failure("--namespace must not be empty".into()));
        }
        Ok(Settings {
            host,
            token,
            ca_cert,
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
    match Transport::of(endpoint.uri()) {
        // The server's certificate is verified against the host as written: a DNS name against its DNS
        // names, an IP address against its IP addresses, so that no other certificate from the same CA
        // can stand in for it.
        Some(Transport::Tls) => {
            let mut tls = ClientTlsConfig::new().with_enabled_roots();
            let pem = match &settings.ca_cert {
                Some(CaCert::File(path)) => {
                    Some(std::fs::read(path).map_err(|e| Failure(format!("CA certificate {}: {e}", path.display())))?)
                }
                Some(CaCert::Pem(pem)) => Some(pem.clone().into_bytes()),
                None => None,
            };
            if let Some(pem) = pem {
                tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Failure(format!("TLS setup: {e}")))?;
        }
        Some(Transport::PlainLoopback) => {}
        None => {
            return Err(Failure(format!(
                "--host {:?}: use https:// (plain http:// would send the token in the clear, so it is only for \
                 a loopback address)",
                settings.host
            )));
        }
    }
    let channel = endpoint.connect().await.map_err(|e| {
        let hint = if is_refused(&e) { " (is goferd running?)" } else { "" };
        Failure(format!(
            "cannot reach Gofer at {}: {}{hint}",
            settings.host,
            source_chain(&e)
        ))
    })?;
    Ok(GoferServiceClient::with_interceptor(channel, Bearer(header))
        .max_decoding_message_size(16 * 1024 * 1024)
        .max_encoding_message_size(16 * 1024 * 1024))
}

/// How goferctl may talk to a host.
#[derive(Debug, PartialEq, Eq)]
enum Transport {
    Tls,
    /// Plain HTTP/2, allowed only to a loopback address: the token never leaves the machine.
    PlainLoopback,
}

impl Transport {
    /// The transport for `uri`, or `None` when goferctl refuses it (plain HTTP to another machine, or
    /// another scheme).
    fn of(uri: &tonic::transport::Uri) -> Option<Transport> {
        match uri.scheme_str() {
            Some("https") => Some(Transport::Tls),
            Some("http") if uri.host().is_some_and(is_loopback) => Some(Transport::PlainLoopback),
            _ => None,
        }
    }
}

/// Whether `host` (as a URI writes it, IPv6 in brackets) is this machine's loopback.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An error and the errors under it, outermost first.
fn causes<'a>(err: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(err), |&cause| cause.source())
}

/// Whether connecting failed because nothing listens at the address.
fn is_refused(err: &(dyn Error + 'static)) -> bool {
    causes(err).any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

/// Whether a call ended because the HTTP/2 connection under it broke (the server went away mid-stream)
/// rather than with a Status the server sent: tonic keeps the transport's error as the Status's source,
/// an `h2::Error`, or a `hyper::Error` reading the body. A timeout or a cancellation is not a loss.
fn is_connection_lost(status: &Status) -> bool {
    causes(status).skip(1).any(|cause| {
        cause.is::<h2::Error>()
            || cause
                .downcast_ref::<hyper::Error>()
                .is_some_and(|e| !e.is_timeout() && !e.is_canceled())
    })
}

/// The error and its causes as one line. Layers often repeat their cause's message, so a part already
/// in the line is not added again; this only words the line, nothing decides on it.
fn source_chain(err: &dyn Error) -> String {
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
    if is_connection_lost(&status) {
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

#[cfg(test)]
mod tests;
