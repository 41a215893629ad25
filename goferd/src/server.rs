//! Serving a node's gRPC services on one TLS listener: the public API, the executors' dispatch service,
//! the extensions' service, health and reflection, all behind one `gofer_auth::AuthLayer`. Every
//! service but health needs a bearer token, except that an executor may present a client certificate
//! from the cluster CA instead (verified in the handshake, which speaks TLS 1.3 only; the certificate must
//! record the executor role, and the dispatch handler checks that it names the executor).

use anyhow::Context;
use gofer_api::ApiService;
use gofer_auth::{AuthLayer, TokenAuth};
use gofer_extension_host::ExtensionHandler;
use gofer_proto::v1::extension_service_server::ExtensionServiceServer;
use gofer_proto::v1::{dispatch_service_server::DispatchServiceServer, gofer_service_server::GoferServiceServer};
use gofer_scheduler::{DispatchHandler, DispatchRedirect};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;

/// Largest message a node accepts: a 200-task pipeline with big envs fits with room to spare.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The services a process serves on its API port, one per role it plays.
pub struct Services {
    pub api: Option<ApiService>,
    pub dispatch: Option<DispatchHandler>,
    /// For a process without a scheduler: points executors at the active one.
    pub redirect: Option<DispatchRedirect>,
    pub extension: Option<ExtensionHandler>,
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: std::sync::Arc<rustls::ServerConfig>,
    auth: TokenAuth,
    services: Services,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    if services.api.is_some() {
        health_reporter.set_serving::<GoferServiceServer<ApiService>>().await;
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(gofer_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(gofer_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service")?;
    let api = services.api.map(|api| {
        GoferServiceServer::new(api)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    });
    let extension = services.extension.map(ExtensionServiceServer::new);
    let dispatch = services.dispatch.map(|dispatch| {
        DispatchServiceServer::new(dispatch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    });
    let redirect = services.redirect.map(DispatchServiceServer::new);
    // Clients may present a certificate (executors do); those without one still get in with a token.
    let tcp = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let incoming = gofer_tls::listen::incoming(tcp, tls, &tracker, &shutdown);
    Server::builder()
        .layer(AuthLayer::new(auth))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_optional_service(api)
        .add_optional_service(dispatch)
        .add_optional_service(redirect)
        .add_optional_service(extension)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await
        .context("serving gRPC")
}
