//! Bearer-token authentication: every RPC carries `authorization: Bearer <token>`, checked against the
//! SHA-256 of the token that the node stores (tokens are never kept in the clear).

use std::sync::Arc;

use tonic::{Request, Status};

/// Hashes a token the way [`TokenAuth`] stores it.
pub fn hash_token(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A tonic interceptor that admits requests whose bearer token hashes to one of the known hashes.
#[derive(Clone)]
pub struct TokenAuth {
    hashes: Arc<Vec<[u8; 32]>>,
}

impl TokenAuth {
    /// Admits the tokens whose SHA-256 hashes are given.
    pub fn new(hashes: Vec<[u8; 32]>) -> Self {
        TokenAuth {
            hashes: Arc::new(hashes),
        }
    }

    /// Checks one request's metadata.
    #[allow(clippy::result_large_err)]
    pub fn check<T>(&self, request: Request<T>) -> Result<Request<T>, Status> {
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
        let presented = hash_token(token.trim());
        // Compare every hash in full so the time taken does not tell which byte differed.
        let known = self
            .hashes
            .iter()
            .fold(false, |found, h| found | ring_eq(h, &presented));
        if known {
            Ok(request)
        } else {
            Err(Status::unauthenticated("invalid token"))
        }
    }
}

fn ring_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

    #[test]
    fn admits_the_right_token_only() {
        let auth = TokenAuth::new(vec![hash_token("s3cret")]);
        assert!(auth.check(with_header(Some("Bearer s3cret"))).is_ok());
        for bad in [None, Some("Bearer nope"), Some("s3cret"), Some("Basic s3cret")] {
            let status = auth.check(with_header(bad)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
    }
}
