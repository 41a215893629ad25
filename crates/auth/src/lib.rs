//! Bearer-token authentication: every RPC carries `authorization: Bearer <token>`, looked up by its
//! SHA-256 (tokens are never kept in the clear) to find who is calling, and each service admits only the
//! callers it serves. The caller's [`Principal`] rides on the request for handlers that scope by it.
//!
//! A crate of its own so that the api and the extension host (which grants each extension container a
//! token) share one token table without one service depending on another. It stores no token on disk and
//! knows nothing of what a principal may do beyond the `allowed` check each caller passes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tonic::{Request, Status};

/// Hashes a token the way [`TokenAuth`] stores it.
pub fn hash_token(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Who a token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Everything.
    Admin,
    /// The dispatch stream of an executor.
    Executor,
    /// One extension: its own registration and subscriptions, nothing else.
    Extension(String),
}

/// The tokens a node knows, by hash. Clone it freely; clones share the table.
#[derive(Clone, Default)]
pub struct TokenAuth {
    tokens: Arc<RwLock<HashMap<[u8; 32], Principal>>>,
}

impl TokenAuth {
    /// A table with the given tokens.
    pub fn new(tokens: Vec<([u8; 32], Principal)>) -> Self {
        TokenAuth {
            tokens: Arc::new(RwLock::new(tokens.into_iter().collect())),
        }
    }

    /// Admits a token (by hash) from now on.
    pub fn grant(&self, hash: [u8; 32], principal: Principal) {
        self.tokens.write().expect("token table lock").insert(hash, principal);
    }

    /// Stops admitting a token.
    pub fn revoke(&self, hash: &[u8; 32]) {
        self.tokens.write().expect("token table lock").remove(hash);
    }

    /// Checks one request's token and that `allowed` admits its principal, which is then attached to the
    /// request's extensions.
    #[allow(clippy::result_large_err)]
    pub fn check<T>(&self, mut request: Request<T>, allowed: fn(&Principal) -> bool) -> Result<Request<T>, Status> {
        let Some(value) = request.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "missing bearer token: send `authorization: Bearer <token>` (goferctl: --token or GOFER_TOKEN)",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .ok_or_else(|| Status::unauthenticated("authorization must be \"Bearer <token>\""))?;
        let principal = self
            .tokens
            .read()
            .expect("token table lock")
            .get(&hash_token(token.trim()))
            .cloned();
        let principal = principal.ok_or_else(|| Status::unauthenticated("invalid token"))?;
        if !allowed(&principal) {
            return Err(Status::permission_denied("this token may not call this service"));
        }
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(value: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(v) = value {
            request.metadata_mut().insert("authorization", v.parse().unwrap());
        }
        request
    }

    fn admin_only(p: &Principal) -> bool {
        *p == Principal::Admin
    }

    #[test]
    fn admits_the_right_token_only() {
        let auth = TokenAuth::new(vec![(hash_token("s3cret"), Principal::Admin)]);
        let admitted = auth.check(with_header(Some("Bearer s3cret")), admin_only).unwrap();
        assert_eq!(admitted.extensions().get::<Principal>(), Some(&Principal::Admin));
        for bad in [None, Some("Bearer nope"), Some("s3cret"), Some("Basic s3cret")] {
            let status = auth.check(with_header(bad), admin_only).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
    }

    #[test]
    fn a_scoped_token_reaches_only_its_services_and_can_be_revoked() {
        let auth = TokenAuth::default();
        auth.grant(hash_token("ext"), Principal::Extension("ticker".into()));
        let denied = auth.check(with_header(Some("Bearer ext")), admin_only).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let extensions = |p: &Principal| matches!(p, Principal::Extension(_));
        let admitted = auth.check(with_header(Some("Bearer ext")), extensions).unwrap();
        assert_eq!(
            admitted.extensions().get::<Principal>(),
            Some(&Principal::Extension("ticker".into()))
        );
        auth.revoke(&hash_token("ext"));
        let revoked = auth.check(with_header(Some("Bearer ext")), extensions).unwrap_err();
        assert_eq!(revoked.code(), tonic::Code::Unauthenticated);
    }
}
