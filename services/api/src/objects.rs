//! Objects, the product's cache: a pipeline's objects last across its runs, a run's as long as the run.
//! An object is a blob ([`gofer_state::StateHandle::write_blob`]) named by a `PutObject` once a majority
//! of the state nodes fsynced it, so a reader never sees part of one; it is read back from any holder and
//! checked against its digest. Bytes travel in messages of at most 1 MiB each way, so a 16 MiB object is
//! never one message.

use std::pin::Pin;
use std::sync::Arc;

use gofer_domain::access::Method;
use gofer_domain::blobs::{BlobRef, check_object_key, object_prefix};
use gofer_domain::{Applied, Command, Error};
use gofer_proto::{into_status, v1};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Status, Streaming};

use crate::api::{ApiService, scope, state_status};
use crate::paging::Page;

/// The bytes of one message carrying an object.
const CHUNK: usize = 1024 * 1024;

pub(crate) type ObjectStream = Pin<Box<dyn Stream<Item = Result<v1::GetObjectResponse, Status>> + Send>>;

fn object(key: &str, run: u64, blob: &BlobRef) -> v1::Object {
    v1::Object {
        key: key.to_string(),
        run_id: run,
        size: blob.size,
        digest: blob.digest.clone(),
        created_unix_millis: blob.at,
    }
}

impl ApiService {
    /// `PutObject`: the first message names the object and is checked before any more bytes are read.
    pub(crate) async fn put_object(
        &self,
        request: Request<Streaming<v1::PutObjectRequest>>,
    ) -> Result<v1::PutObjectResponse, Status> {
        let (metadata, extensions, mut inbound) = request.into_parts();
        let first = inbound
            .next()
            .await
            .transpose()?
            .ok_or_else(|| into_status(Error::invalid("key", "the first message must name the object")))?;
        let named = Request::from_parts(metadata, extensions, first);
        let namespace = scope(&named, Method::PutObject)?;
        let first = named.into_inner();
        let (pipeline, run, key) = (first.pipeline_id, first.run_id, first.key);
        check_object_key(&key).map_err(into_status)?;
        self.linearize().await?;
        self.read(|s| owner_exists(s, &namespace, &pipeline, run))?;
        let max = self.state.read(|s| s.object_limits.max_bytes());
        let mut data = first.data;
        loop {
            if data.len() as u64 > max {
                return Err(into_status(Error::invalid(
                    "data",
                    format!("an object is at most {max} bytes (the cluster's object limit)"),
                )));
            }
            match inbound.next().await.transpose()? {
                Some(message) => data.extend_from_slice(&message.data),
                None => break,
            }
        }
        let written = self.state.write_blob(Arc::new(data)).await.map_err(state_status)?;
        let at = self.clock.now_millis();
        let command = Command::PutObject {
            namespace,
            pipeline,
            run,
            key: key.clone(),
            digest: written.digest.clone(),
            size: written.size,
            holders: written.holders,
            at,
        };
        let evicted_keys = match self.propose(command).await? {
            Applied::Evicted(keys) => keys,
            _ => Vec::new(),
        };
        self.state.blob_named(&written.digest);
        let blob = BlobRef {
            digest: written.digest,
            size: written.size,
            at,
        };
        Ok(v1::PutObjectResponse {
            object: Some(object(&key, run, &blob)),
            evicted_keys,
        })
    }

    /// `GetObject`: the whole object, read from any holder and checked, then sent in chunks.
    pub(crate) async fn get_object(&self, request: Request<v1::GetObjectRequest>) -> Result<ObjectStream, Status> {
        let namespace = scope(&request, Method::GetObject)?;
        let request = request.into_inner();
        check_object_key(&request.key).map_err(into_status)?;
        self.linearize().await?;
        let full = format!(
            "{}{}",
            object_prefix(&namespace, &request.pipeline_id, request.run_id),
            request.key
        );
        let (blob, holders) = self.read(|s| {
            owner_exists(s, &namespace, &request.pipeline_id, request.run_id)?;
            let (blob, copies) = s
                .blobs
                .get(&full)
                .ok_or_else(|| Error::NotFound(format!("object {:?}", request.key)))?;
            Ok((blob.clone(), copies.holders.clone()))
        })?;
        let data = self
            .state
            .read_blob(&blob.digest, &holders)
            .await
            .map_err(state_status)?;
        let described = object(&request.key, request.run_id, &blob);
        let mut messages: Vec<Result<v1::GetObjectResponse, Status>> = data
            .chunks(CHUNK)
            .map(|chunk| {
                Ok(v1::GetObjectResponse {
                    data: chunk.to_vec(),
                    object: None,
                })
            })
            .collect();
        match messages.first_mut() {
            Some(Ok(first)) => first.object = Some(described),
            _ => messages.push(Ok(v1::GetObjectResponse {
                data: Vec::new(),
                object: Some(described),
            })),
        }
        Ok(Box::pin(tokio_stream::iter(messages)))
    }

    /// `ListObjects`: by key, a page at a time.
    pub(crate) async fn list_objects(
        &self,
        request: Request<v1::ListObjectsRequest>,
    ) -> Result<v1::ListObjectsResponse, Status> {
        let namespace = scope(&request, Method::ListObjects)?;
        self.linearize().await?;
        let request = request.into_inner();
        let (pipeline, run) = (request.pipeline_id, request.run_id);
        let listing = format!("objects {namespace}/{pipeline}/{run}");
        let page = Page::new(listing, request.page_size, &request.page_token)?;
        let after: Option<String> = page.after()?;
        let prefix = object_prefix(&namespace, &pipeline, run);
        let (objects, next_page_token) = self.read(|s| {
            owner_exists(s, &namespace, &pipeline, run)?;
            let after = after.map(|key| format!("{prefix}{key}")).unwrap_or_default();
            let items = s.blobs.under(&prefix, &after).map(|(full, blob)| {
                let key = &full[prefix.len()..];
                (key.to_string(), object(key, run, blob))
            });
            Ok(page.take(items))
        })?;
        Ok(v1::ListObjectsResponse {
            objects,
            next_page_token,
        })
    }

    /// `DeleteObject`.
    pub(crate) async fn delete_object(&self, request: Request<v1::DeleteObjectRequest>) -> Result<(), Status> {
        let namespace = scope(&request, Method::DeleteObject)?;
        let request = request.into_inner();
        self.propose(Command::DeleteObject {
            namespace,
            pipeline: request.pipeline_id,
            run: request.run_id,
            key: request.key,
            at: self.clock.now_millis(),
        })
        .await?;
        Ok(())
    }
}

/// The pipeline (run 0) or run that owns the objects asked for must exist.
fn owner_exists(state: &gofer_domain::State, namespace: &str, pipeline: &str, run: u64) -> Result<(), Error> {
    match run {
        0 => state.pipeline(namespace, pipeline).map(|_| ()),
        run => state.run(namespace, pipeline, run).map(|_| ()),
    }
}
