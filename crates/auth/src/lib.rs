//! Who is calling, and whether they may: the one tower layer ([`AuthLayer`]) in front of every gRPC
//! service of a node.
//!
//! A call carries `authorization: Bearer <token>`, looked up by its SHA-256 (tokens are never kept in the
//! clear): first among the node's own tokens ([`TokenAuth`]: the bootstrap admin token, the in-process
//! executor's, each extension container's), then among the API tokens the cluster keeps in its replicated
//! state ([`TokenDirectory`]). An executor in another process may instead present a client certificate
//! from the cluster CA, which the TLS handshake has verified. The layer then admits the call only to the
//! services its [`Principal`] may use, and for the public API checks the method against the caller's
//! role with [`gofer_domain::access::authorize`]; the handler, which knows the namespace a request acts
//! in, checks that too with the same function. The principal rides on the request's extensions.
//!
//! A crate of its own so that the api and the extension host (which grants each extension container a
//! token) share one token table without one service depending on another. It stores nothing on disk.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use futures_util::future::Either;
use gofer_domain::access::{Caller, Method, RUN_TOKEN_PREFIX, TokenRole, authorize};
use gofer_tls::Role;
use gofer_tls::listen::Peer;
use tonic::Status;

#[cfg(test)]
mod tests;

/// Hashes a token the way [`TokenAuth`] stores it.
pub fn hash_token(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A token's hash as lowercase hex, the form the replicated state keeps.
pub fn hash_hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who a call speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The bootstrap admin token (`goferd dev`'s, or `--admin-token-file`): everything.
    Admin,
    /// An API token the cluster keeps.
    Caller(Caller),
    /// The dispatch stream of the in-process executor, by the token minted for it.
    Executor,
    /// An executor that presented a client certificate from the cluster CA; the dispatch service checks
    /// that the certificate names the executor it says it is.
    Certified,
    /// One extension: its own registration and subscriptions, nothing else.
    Extension(String),
}

impl Principal {
    /// The API caller it is, if it may call the public API at all.
    pub fn caller(&self) -> Option<Caller> {
        match self {
            Principal::Admin => Some(Caller::bootstrap_admin()),
            Principal::Caller(caller) => Some(caller.clone()),
            Principal::Executor | Principal::Certified | Principal::Extension(_) => None,
        }
    }
}

/// The API tokens the cluster keeps: the caller a token's hash (hex) speaks for, if it works now.
pub trait TokenDirectory: Send + Sync + 'static {
    fn caller(&self, hash_hex: &str) -> Option<Caller>;

    /// The caller a run's task token (`gofer_run/...`, see `gofer_secrets::Keyring::run_token`) speaks
    /// for, if its signature holds and its run is not over.
    fn run_caller(&self, _token: &str) -> Option<Caller> {
        None
    }
}

/// The tokens a node knows, by hash, and where to look up the cluster's. Clone it freely; clones share
/// the table.
#[derive(Clone, Default)]
pub struct TokenAuth {
    tokens: Arc<RwLock<HashMap<[u8; 32], Principal>>>,
    directory: Option<Arc<dyn TokenDirectory>>,
}

impl TokenAuth {
    /// A table with the given tokens.
    pub fn new(tokens: Vec<([u8; 32], Principal)>) -> Self {
        TokenAuth {
            tokens: Arc::new(RwLock::new(tokens.into_iter().collect())),
            directory: None,
        }
    }

    /// Also admits the API tokens `directory` knows.
    pub fn with_directory(mut self, directory: Arc<dyn TokenDirectory>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// Admits a token (by hash) from now on.
    pub fn grant(&self, hash: [u8; 32], principal: Principal) {
        self.tokens.write().expect("token table lock").insert(hash, principal);
    }

    /// Stops admitting a token.
    pub fn revoke(&self, hash: &[u8; 32]) {
        self.tokens.write().expect("token table lock").remove(hash);
    }

    /// Who the bearer token in `headers` speaks for.
    #[allow(clippy::result_large_err)]
    pub fn principal(&self, headers: &http::HeaderMap) -> Result<Principal, Status> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Status::unauthenticated(
                "missing bearer token: send `authorization: Bearer <token>` (goferctl: --token or GOFER_TOKEN)",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .ok_or_else(|| Status::unauthenticated("authorization must be \"Bearer <token>\""))?;
        let token = token.trim();
        if token.starts_with(RUN_TOKEN_PREFIX) {
            return self
                .directory
                .as_ref()
                .and_then(|directory| directory.run_caller(token))
                .map(Principal::Caller)
                .ok_or_else(|| Status::unauthenticated("invalid task token, or its run is over"));
        }
        let hash = hash_token(token);
        let own = self.tokens.read().expect("token table lock").get(&hash).cloned();
        own.or_else(|| {
            let directory = self.directory.as_ref()?;
            directory.caller(&hash_hex(&hash)).map(Principal::Caller)
        })
        .ok_or_else(|| Status::unauthenticated("invalid, expired or disabled token"))
    }

    /// Decides one call: who it speaks for, and whether that principal may call `path`. `peer` is who the
    /// TLS handshake showed: a client certificate it verified against the cluster CA admits an executor
    /// alone, and only to the dispatch service; one that records no role admits nothing.
    #[allow(clippy::result_large_err)]
    fn admit(&self, path: &str, headers: &http::HeaderMap, peer: &Peer) -> Result<Option<Principal>, Status> {
        let door = Door::of(path);
        if door == Door::Health {
            return Ok(None);
        }
        if peer.roleless() {
            return Err(Status::permission_denied(peer.roleless_message()));
        }
        if door == Door::Dispatch && peer.certificate.is_some() && !headers.contains_key(http::header::AUTHORIZATION) {
            if !peer.has(Role::Executor) {
                return Err(Status::permission_denied(format!(
                    "the client certificate {:?} (roles {}) is not an executor's: only executors dispatch with a \
                     certificate alone",
                    peer.name, peer.roles
                )));
            }
            return Ok(Some(Principal::Certified));
        }
        let principal = self.principal(headers)?;
        let admitted = match (&door, &principal) {
            (Door::Dispatch, Principal::Admin | Principal::Executor) => true,
            (Door::Extension, Principal::Admin | Principal::Extension(_)) => true,
            (Door::Api(_) | Door::Reflection, p) => p.caller().is_some(),
            (Door::Other, _) => true,
            _ => false,
        };
        if !admitted {
            return Err(Status::permission_denied("this token may not call this service"));
        }
        match (&door, principal.caller()) {
            (Door::Api(Some(method)), Some(caller)) => {
                // The namespace is in the request body: here only the role is checked, and the handler
                // checks the namespace with the same policy.
                authorize(&caller, *method, None).map_err(|denied| Status::permission_denied(denied.to_string()))?;
            }
            // A method the policy has no entry for (an RPC added to the proto but not to
            // `access::Method`) would otherwise reach its handler unchecked: only an admin, who may do
            // everything, gets past (to an Unimplemented for a method that does not exist).
            (Door::Api(None), Some(caller)) if caller.role != TokenRole::Admin => {
                return Err(Status::permission_denied(format!(
                    "{caller} cannot call {path}: the method is not in Gofer's access policy"
                )));
            }
            _ => {}
        }
        Ok(Some(principal))
    }
}

/// Which service a call goes to, by its path (`/gofer.v1.GoferService/StartRun`).
#[derive(Debug, PartialEq, Eq)]
enum Door {
    /// gRPC health checks: open to all, so load balancers need no token.
    Health,
    Reflection,
    /// The public API, and the method when it is one Gofer knows.
    Api(Option<Method>),
    Dispatch,
    Extension,
    Other,
}

impl Door {
    fn of(path: &str) -> Door {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let service = parts.next().unwrap_or_default();
        let method = parts.next().unwrap_or_default();
        match service {
            "grpc.health.v1.Health" => Door::Health,
            "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => Door::Reflection,
            "gofer.v1.GoferService" => Door::Api(Method::from_rpc(method)),
            "gofer.v1.DispatchService" => Door::Dispatch,
            "gofer.v1.ExtensionService" => Door::Extension,
            _ => Door::Other,
        }
    }
}

/// The layer that puts [`TokenAuth`]'s decision in front of a service.
#[derive(Clone)]
pub struct AuthLayer {
    auth: TokenAuth,
}

impl AuthLayer {
    pub fn new(auth: TokenAuth) -> Self {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Authorized<S> {
        Authorized {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// A service behind [`AuthLayer`]: a refused call is answered with its Status, an admitted one goes on
/// with its [`Principal`] in the request's extensions.
#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    auth: TokenAuth,
}

impl<S, B> tower::Service<http::Request<B>> for Authorized<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<std::future::Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let anonymous = Peer::default();
        let peer = request.extensions().get::<Peer>().unwrap_or(&anonymous);
        match self.auth.admit(request.uri().path(), request.headers(), peer) {
            Ok(principal) => {
                if let Some(principal) = principal {
                    request.extensions_mut().insert(principal);
                }
                Either::Right(self.inner.call(request))
            }
            Err(status) => Either::Left(std::future::ready(Ok(status.into_http()))),
        }
    }
}

/// The principal the layer attached to a request.
#[allow(clippy::result_large_err)]
pub fn principal_of<T>(request: &tonic::Request<T>) -> Result<&Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .ok_or_else(|| Status::unauthenticated("the call was not authenticated"))
}

/// Checks that the caller of `request` may call `method` in `namespace` (or, with `None`, on the
/// cluster), and returns who it is.
#[allow(clippy::result_large_err)]
pub fn authorize_request<T>(
    request: &tonic::Request<T>,
    method: Method,
    namespace: Option<&str>,
) -> Result<Caller, Status> {
    let caller = principal_of(request)?
        .caller()
        .ok_or_else(|| Status::permission_denied("this token may not call the API"))?;
    authorize(&caller, method, namespace).map_err(|denied| Status::permission_denied(denied.to_string()))?;
    Ok(caller)
}

/// Checks that the caller of `request`, admitted to `method` in `namespace`, may act on `pipeline` and
/// `run` (0 for none): a run's task token only on its own run and pipeline.
#[allow(clippy::result_large_err)]
pub fn authorize_request_target<T>(
    request: &tonic::Request<T>,
    method: Method,
    namespace: &str,
    pipeline: &str,
    run: u64,
) -> Result<(), Status> {
    let Some(caller) = principal_of(request)?.caller() else {
        return Err(Status::permission_denied("this token may not call the API"));
    };
    gofer_domain::access::authorize_target(&caller, method, namespace, pipeline, run)
        .map_err(|denied| Status::permission_denied(denied.to_string()))
}
