//! Talking to a benchmarked `goferd dev` over gRPC: its client config, the bearer token, the TLS channel.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use gofer_proto::v1;
use gofer_proto::v1::gofer_service_client::GoferServiceClient;
use serde::Deserialize;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status};

/// The client config `goferd dev` writes.
#[derive(Deserialize)]
pub struct ClientConfig {
    pub host: String,
    pub token: String,
    pub ca_cert: PathBuf,
    pub namespace: String,
}

impl ClientConfig {
    /// Reads the config file at `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).context("reading goferd's client config")?;
        toml::from_str(&text).context("parsing goferd's client config")
    }
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A connected `GoferService` client.
pub type Api = GoferServiceClient<InterceptedService<Channel, Bearer>>;

/// Connects over TLS with the config's CA and token.
pub async fn connect(config: &ClientConfig) -> Result<Api> {
    let header: MetadataValue<Ascii> = format!("Bearer {}", config.token)
        .parse()
        .context("the token cannot be a header value")?;
    let pem = std::fs::read(&config.ca_cert)
        .with_context(|| format!("reading the CA certificate {}", config.ca_cert.display()))?;
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
    let channel = Endpoint::from_shared(config.host.clone())?
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)?
        .connect()
        .await
        .with_context(|| format!("connecting to goferd at {}", config.host))?;
    Ok(GoferServiceClient::with_interceptor(channel, Bearer(header)))
}

/// Every run of a pipeline, newest first, page after page.
pub async fn all_runs(api: &mut Api, namespace: &str, pipeline: &str) -> Result<Vec<v1::Run>> {
    let mut runs = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = v1::ListRunsRequest {
            namespace_id: namespace.to_string(),
            pipeline_id: pipeline.to_string(),
            page_size: 1000,
            page_token,
        };
        let page = api.list_runs(request).await.context("listing runs")?.into_inner();
        runs.extend(page.runs);
        if page.next_page_token.is_empty() {
            return Ok(runs);
        }
        page_token = page.next_page_token;
    }
}
