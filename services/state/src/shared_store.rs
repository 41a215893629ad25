//! The S3 tier of the blob layer: with `blob_store = "s3://bucket/prefix"`, blobs live in an S3 bucket
//! (or any S3-compatible server) instead of on the state nodes' disks, and only their metadata goes
//! through Raft. A blob is one object, `prefix/ab/abcd…`, named by its SHA-256 like a local file; an S3
//! PUT is all or nothing, so no reader sees part of one, and every read is checked against the digest.
//!
//! Holders record it as [`gofer_domain::blobs::SHARED_STORE`]: no node copies it, every node reads it
//! from the bucket. The client is `object_store`'s `AmazonS3`, signing with ring; credentials, region and
//! endpoint come from the usual `AWS_*` environment variables unless the config names them.

use std::sync::Arc;

use object_store::ObjectStoreExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;

use crate::{BlobError, digest_of};

/// Where the S3 tier is and how to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedStoreConfig {
    /// `s3://bucket` or `s3://bucket/prefix`.
    pub url: String,
    /// An S3-compatible server's URL, such as `http://127.0.0.1:9000`; AWS itself when empty (or
    /// `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

/// An S3 bucket holding blobs.
#[derive(Clone)]
pub struct SharedStore {
    store: Arc<AmazonS3>,
    prefix: String,
    /// What the operator configured, for messages.
    url: String,
    /// Digests a key committed through this process names, since the last repair pass took them: a
    /// blob named and forgotten between two passes still goes from the bucket.
    named: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore").field("url", &self.url).finish()
    }
}

impl SharedStore {
    /// The store `config` names; the URL must be `s3://BUCKET[/PREFIX]`.
    pub fn open(config: &SharedStoreConfig) -> Result<SharedStore, BlobError> {
        let bad = |why: &str| BlobError::SharedUrl(format!("{:?}: {why}", config.url));
        let rest = config
            .url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("must start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("names no bucket"));
        }
        // The HTTP client is built without a crypto provider of its own (no second TLS stack): it takes the
        // process's, which is ring's, as goferd installs it; installed here if the caller did not.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        }
        if let Some(id) = &config.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        let store = builder.build().map_err(BlobError::Shared)?;
        Ok(SharedStore {
            store: Arc::new(store),
            prefix: prefix.trim_matches('/').to_string(),
            url: config.url.clone(),
            named: Arc::default(),
        })
    }

    /// Notes that a key naming `digest` was committed through this process.
    pub(crate) fn note_named(&self, digest: &str) {
        let mut named = self.named.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        named.insert(digest.to_string());
    }

    /// The digests noted named since the last call.
    pub(crate) fn take_named(&self) -> std::collections::HashSet<String> {
        std::mem::take(&mut *self.named.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn path(&self, digest: &str) -> Path {
        if self.prefix.is_empty() {
            Path::from(format!("{}/{digest}", &digest[..2]))
        } else {
            Path::from(format!("{}/{}/{digest}", self.prefix, &digest[..2]))
        }
    }

    /// Stores `data` under `digest`. A blob already there is written again (the same bytes): a node
    /// deleting it as unnamed at that moment must not leave a new key naming nothing.
    pub async fn put(&self, digest: &str, data: Arc<Vec<u8>>) -> Result<(), BlobError> {
        gofer_domain::blobs::check_digest("digest", digest).map_err(|_| BlobError::Digest(digest.to_string()))?;
        let path = self.path(digest);
        let owned = Arc::try_unwrap(data).unwrap_or_else(|shared| shared.as_ref().clone());
        let payload = object_store::PutPayload::from(owned);
        self.store.put(&path, payload).await.map_err(BlobError::Shared)?;
        Ok(())
    }

    /// The blob `digest`, checked against it; `None` if the bucket does not hold it.
    pub async fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, BlobError> {
        gofer_domain::blobs::check_digest("digest", digest).map_err(|_| BlobError::Digest(digest.to_string()))?;
        let got = match self.store.get(&self.path(digest)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(BlobError::Shared(e)),
        };
        let data = got.bytes().await.map_err(BlobError::Shared)?.to_vec();
        if digest_of(&data) != digest {
            return Err(BlobError::Corrupt {
                digest: digest.to_string(),
            });
        }
        Ok(Some(data))
    }

    /// Deletes the blob `digest` from the bucket, if it is there.
    pub async fn delete(&self, digest: &str) -> Result<(), BlobError> {
        match self.store.delete(&self.path(digest)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(BlobError::Shared(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> SharedStoreConfig {
        SharedStoreConfig {
            url: url.to_string(),
            endpoint: Some("http://127.0.0.1:1".to_string()),
            region: Some("us-east-1".to_string()),
            access_key_id: Some("id".to_string()),
            secret_access_key: Some("secret".to_string()),
        }
    }

    #[test]
    fn a_blob_store_url_names_a_bucket_and_perhaps_a_prefix() {
        for bad in ["bucket/prefix", "https://bucket", "s3://", "s3:///prefix"] {
            let err = SharedStore::open(&config(bad)).unwrap_err();
            assert!(matches!(err, BlobError::SharedUrl(_)), "{bad}: {err}");
            assert!(err.to_string().starts_with("blob_store "), "{err}");
        }
        let digest = digest_of(b"x");
        let plain = SharedStore::open(&config("s3://bucket")).unwrap();
        assert_eq!(plain.path(&digest).as_ref(), format!("{}/{digest}", &digest[..2]));
        let prefixed = SharedStore::open(&config("s3://bucket/a/b/")).unwrap();
        assert_eq!(
            prefixed.path(&digest).as_ref(),
            format!("a/b/{}/{digest}", &digest[..2])
        );
    }
}
