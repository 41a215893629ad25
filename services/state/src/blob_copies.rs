//! Blobs across the state nodes: a write counts once a majority of the voters fsynced the bytes; a read
//! goes to any holder and is checked against the digest; and every state node keeps a copy of every blob,
//! copying what it lacks from another holder in the background ([`keep_blobs`]) and deleting what no key
//! names any more.
//!
//! The bytes are files ([`crate::BlobStore`]); what the cluster knows of them (keys, digests, holders) is
//! in the replicated state (`gofer_domain::blobs`), changed by `PutBlob` once a write has its majority
//! and by `BlobCopies` as a node copies or loses blobs. `cluster status` counts from there.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use gofer_clock::Clock;
use gofer_domain::{AttemptRef, Command};
use gofer_proto::v1;
use tokio_util::sync::CancellationToken;

use gofer_domain::blobs::SHARED_STORE;

use crate::{BlobError, Call, Error, LogStore, NodeId, SharedStore, StateHandle, StateNode, Unavailable, digest_of};

/// The bytes of one message carrying a blob.
pub(crate) const BLOB_CHUNK: usize = 1024 * 1024;
/// How long one node gets to take a blob.
const WRITE_PATIENCE: Duration = Duration::from_secs(10);
/// The most digests one `BlobCopies` command names.
const COPIES_PER_COMMAND: usize = 1000;
/// The most blobs one repair pass copies.
const REPAIRS_PER_PASS: usize = 16;

/// A blob that a majority of the state nodes fsynced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenBlob {
    pub digest: String,
    pub size: u64,
    /// The state nodes that hold it.
    pub holders: Vec<NodeId>,
}

impl StateHandle {
    /// Writes `data` on the state nodes and returns once a majority of the voters have fsynced it (each
    /// checks it against its digest). The nodes still writing then get as long again as the majority
    /// took (at most a quarter second); a node that misses the blob copies it later.
    pub async fn write_blob(&self, data: Arc<Vec<u8>>) -> Result<WrittenBlob, Error> {
        let started = tokio::time::Instant::now();
        let hashed = data.clone();
        let digest = tokio::task::spawn_blocking(move || digest_of(&hashed))
            .await
            .map_err(BlobError::Task)?;
        if let Some(shared) = self.shared_store() {
            // The S3 tier: one PUT, durable when S3 answers; no node keeps a copy.
            let size = data.len() as u64;
            shared.put(&digest, data).await?;
            return Ok(WrittenBlob {
                digest,
                size,
                holders: vec![SHARED_STORE],
            });
        }
        let status = self.cluster_status().await?;
        let voters: BTreeSet<NodeId> = status
            .members
            .iter()
            .filter(|m| m.role != "LEARNER")
            .map(|m| m.id)
            .collect();
        let needed = voters.len() / 2 + 1;
        let mut writes: FuturesUnordered<_> = status
            .members
            .iter()
            .map(|m| {
                let (data, digest) = (data.clone(), digest.clone());
                async move { (m.id, self.write_blob_on((m.id, &m.address), &digest, data).await) }
            })
            .collect();
        let mut holders = Vec::new();
        let mut stored = 0;
        let mut last = None;
        while stored < needed {
            match writes.next().await {
                Some((node, Ok(()))) => {
                    holders.push(node);
                    stored += usize::from(voters.contains(&node));
                }
                Some((node, Err(err))) => {
                    tracing::warn!(node, %digest, %err, "a state node did not take a blob");
                    last = Some(Box::new(err));
                }
                None => {
                    return Err(Unavailable::NoBlobMajority {
                        digest,
                        stored,
                        needed,
                        voters: voters.len(),
                        last,
                    }
                    .into());
                }
            }
        }
        let grace = started
            .elapsed()
            .clamp(Duration::from_millis(20), Duration::from_millis(250));
        let rest = async {
            while let Some((node, result)) = writes.next().await {
                if result.is_ok() {
                    holders.push(node);
                }
            }
        };
        let _ = tokio::time::timeout(grace, rest).await;
        holders.sort_unstable();
        Ok(WrittenBlob {
            digest,
            size: data.len() as u64,
            holders,
        })
    }

    /// The S3 tier of the blob layer, if this process was given one.
    pub fn shared_store(&self) -> Option<&SharedStore> {
        match self {
            StateHandle::Local(node) => node.shared_store(),
            StateHandle::Remote(remote) => remote.shared_store(),
        }
    }

    /// Says that a key naming the blob `digest`, written through this handle, is committed: this
    /// process's state node may now collect it as soon as no key names it.
    pub fn blob_named(&self, digest: &str) {
        // Only a state node's repair pass reads the notes; a process away from the state nodes keeps none.
        if let StateHandle::Local(local) = self {
            match local.shared_store() {
                Some(shared) => shared.note_named(digest),
                None => local.blobs().unstamp(digest),
            }
        }
    }

    /// Writes the blob on state node `node` at `address` (this process's own store when it is that node).
    async fn write_blob_on(
        &self,
        (node, address): (NodeId, &str),
        digest: &str,
        data: Arc<Vec<u8>>,
    ) -> Result<(), Error> {
        if let StateHandle::Local(local) = self
            && local.id() == node
        {
            local.blobs().write_as(digest.to_string(), data).await?;
            return Ok(());
        }
        let mut client = self.client_at(address)?;
        let size = data.len() as u64;
        let count = data.len().div_ceil(BLOB_CHUNK).max(1);
        let digest = digest.to_string();
        let messages = futures_util::stream::iter((0..count).map(move |i| {
            let chunk = &data[i * BLOB_CHUNK..((i + 1) * BLOB_CHUNK).min(data.len())];
            v1::WriteBlobRequest {
                digest: if i == 0 { digest.clone() } else { String::new() },
                size: if i == 0 { size } else { 0 },
                data: chunk.to_vec(),
            }
        }));
        match tokio::time::timeout(WRITE_PATIENCE, client.write_blob(messages)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(Unavailable::call(Call::WriteBlob(node), status).into()),
            Err(_) => Err(Unavailable::call(
                Call::WriteBlob(node),
                tonic::Status::deadline_exceeded("the node did not answer in time"),
            )
            .into()),
        }
    }

    /// Reads the blob `digest`: from this process's state node if it holds it, else from the nodes in
    /// `holders`, then any other member, until one answers with bytes that match the digest.
    pub async fn read_blob(&self, digest: &str, holders: &BTreeSet<NodeId>) -> Result<Vec<u8>, Error> {
        if holders.contains(&SHARED_STORE) {
            let shared = self
                .shared_store()
                .ok_or_else(|| BlobError::NotShared(digest.to_string()))?;
            return match shared.get(digest).await? {
                Some(data) => Ok(data),
                None => Err(Unavailable::BlobUnreadable {
                    digest: digest.to_string(),
                    asked: vec![SHARED_STORE],
                    last: None,
                }
                .into()),
            };
        }
        let mut last = None;
        if let StateHandle::Local(local) = self {
            match local.blobs().read(digest).await {
                Ok(Some(data)) => return Ok(data),
                Ok(None) => {}
                Err(err) => last = Some(Box::new(Error::from(err))),
            }
        }
        let me = self.local_node();
        // The membership is read once, for every node's address.
        let members = match self.cluster_status().await {
            Ok(status) => status.members,
            Err(err) => {
                last = Some(Box::new(err));
                Vec::new()
            }
        };
        let mut order: Vec<NodeId> = holders.iter().copied().filter(|n| *n != me).collect();
        for member in &members {
            if member.id != me && !order.contains(&member.id) {
                order.push(member.id);
            }
        }
        for node in &order {
            let read = match members.iter().find(|m| m.id == *node) {
                Some(member) => self.read_blob_from(*node, &member.address, digest).await,
                None => Err(Unavailable::NotAMember(*node).into()),
            };
            match read {
                Ok(data) => return Ok(data),
                Err(err) => {
                    tracing::debug!(node, %digest, %err, "a state node could not serve a blob");
                    last = Some(Box::new(err));
                }
            }
        }
        Err(Unavailable::BlobUnreadable {
            digest: digest.to_string(),
            asked: order,
            last,
        }
        .into())
    }

    async fn read_blob_from(&self, node: NodeId, address: &str, digest: &str) -> Result<Vec<u8>, Error> {
        let failed = |status| Error::from(Unavailable::call(Call::ReadBlob(node), status));
        let mut client = self.client_at(address)?;
        let request = v1::ReadBlobRequest {
            digest: digest.to_string(),
        };
        let mut stream = client.read_blob(request).await.map_err(failed)?.into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk.map_err(failed)?.data);
        }
        if digest_of(&data) != digest {
            return Err(BlobError::Corrupt {
                digest: digest.to_string(),
            }
            .into());
        }
        Ok(data)
    }

    /// Makes a finished attempt's log, stored in `logs` on this process's state node, a replicated blob,
    /// and names it by the attempt: once this returns, a majority of the state nodes keep it.
    pub async fn archive_task_log(
        &self,
        logs: &LogStore,
        target: &AttemptRef,
        attempt: u32,
        at: i64,
    ) -> Result<WrittenBlob, Error> {
        let path = logs.path(target, attempt).map_err(|source| BlobError::Io {
            path: std::path::PathBuf::from(&target.task),
            source,
        })?;
        let data = match tokio::fs::read(&path).await {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(BlobError::Io { path, source }.into()),
        };
        let written = self.write_blob(Arc::new(data)).await?;
        self.propose(Command::PutBlob {
            key: gofer_domain::blobs::task_log_key(target, attempt),
            digest: written.digest.clone(),
            size: written.size,
            holders: written.holders.clone(),
            at,
        })
        .await?;
        self.blob_named(&written.digest);
        Ok(written)
    }
}

/// How many repair passes a blob no key names yet is kept after it was last written here, so that a
/// blob written just before its key is committed is not taken for garbage.
const UNNAMED_GRACE_PASSES: u64 = 600;

/// What one pass found on this node, against the replicated index.
#[derive(Default)]
struct Pass {
    /// Held here, but not recorded as held.
    held: Vec<String>,
    /// Recorded as held here, but missing.
    lost: Vec<String>,
    /// Missing here: digest and the nodes recorded as holding it.
    missing: Vec<(String, BTreeSet<NodeId>)>,
    /// Held here, and named by no key.
    unnamed: Vec<String>,
    /// In the S3 tier.
    shared: HashSet<String>,
}

/// Keeps this state node's blobs in line with the replicated index, once a second until `shutdown`:
/// records the copies it has and has lost, copies what it lacks from a holder, and deletes what no key
/// names any more (after two passes, and never one written in the last [`UNNAMED_GRACE_PASSES`]).
pub async fn keep_blobs(node: StateNode, clock: Clock, shutdown: CancellationToken) {
    let me = node.id();
    let store = node.blobs().clone();
    let handle = StateHandle::from(node.clone());
    let mut unnamed_before: HashSet<String> = HashSet::new();
    let mut shared_before: HashSet<String> = HashSet::new();
    let mut pass_number = 0u64;
    let applied = node.subscribe();
    // The survey reads the whole index: it runs when something was applied since the last one, while
    // the last one found work, and every 30 passes regardless.
    let (mut surveyed_at, mut busy) = (u64::MAX, true);
    loop {
        pass_number += 1;
        store.set_pass(pass_number);
        let index = *applied.borrow();
        let due = busy || index != surveyed_at || pass_number.is_multiple_of(30);
        if due && !node.read(|s| s.cluster_id.is_empty()) {
            surveyed_at = index;
            let local: HashSet<String> = store.digests().into_iter().collect();
            // Taken before the survey: a note is made once its key is applied here, so the survey sees it.
            let noted = handle.shared_store().map(SharedStore::take_named).unwrap_or_default();
            let pass = node.read(|s| {
                // A blob written here stays safe from collection until its key commits; then it is an
                // ordinary blob, deleted as soon as no key names it.
                store.unstamp_named(|digest| s.blobs.copies.contains_key(digest));
                survey(&s.blobs, me, &local)
            });
            busy =
                !(pass.held.is_empty() && pass.lost.is_empty() && pass.missing.is_empty() && pass.unnamed.is_empty());
            let mut held = pass.held;
            for (digest, holders) in pass.missing.into_iter().take(REPAIRS_PER_PASS) {
                match handle.read_blob(&digest, &holders).await {
                    Ok(data) => match store.write_as(digest.clone(), Arc::new(data)).await {
                        Ok(_) => held.push(digest),
                        Err(err) => tracing::warn!(%digest, %err, "could not store a repaired blob"),
                    },
                    Err(err) => tracing::warn!(%digest, %err, "could not copy a missing blob"),
                }
            }
            record_copies(&handle, me, held, pass.lost, &clock).await;
            let unnamed: HashSet<String> = pass.unnamed.into_iter().collect();
            for digest in unnamed.intersection(&unnamed_before) {
                if store.written_within(digest, pass_number, UNNAMED_GRACE_PASSES) {
                    continue;
                }
                match store.remove(digest).await {
                    Ok(()) => tracing::debug!(%digest, "deleted a blob no key names"),
                    Err(err) => tracing::warn!(%digest, %err, "could not delete a blob no key names"),
                }
            }
            unnamed_before = unnamed;
            // A blob of the S3 tier that no key names any more goes from the bucket. Every node that saw
            // it go deletes it; a delete of what is gone already is no error.
            if let Some(shared) = handle.shared_store() {
                shared_before.extend(noted);
                for digest in shared_before.difference(&pass.shared) {
                    if let Err(err) = shared.delete(digest).await {
                        tracing::warn!(%digest, %err, "could not delete a blob no key names from S3");
                    }
                }
            }
            shared_before = pass.shared;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn survey(index: &gofer_domain::blobs::Blobs, me: NodeId, local: &HashSet<String>) -> Pass {
    let mut pass = Pass::default();
    for (digest, copies) in &index.copies {
        if copies.holders.contains(&SHARED_STORE) {
            // In the S3 tier: nobody copies it.
            pass.shared.insert(digest.clone());
            continue;
        }
        let here = local.contains(digest);
        let recorded = copies.holders.contains(&me);
        if here && !recorded {
            pass.held.push(digest.clone());
        }
        if !here {
            if recorded {
                pass.lost.push(digest.clone());
            }
            pass.missing.push((digest.clone(), copies.holders.clone()));
        }
    }
    pass.unnamed = local
        .iter()
        .filter(|d| !index.copies.contains_key(*d))
        .cloned()
        .collect();
    pass
}

async fn record_copies(handle: &StateHandle, me: NodeId, held: Vec<String>, lost: Vec<String>, clock: &Clock) {
    let mut held = held.into_iter().peekable();
    let mut lost = lost.into_iter().peekable();
    while held.peek().is_some() || lost.peek().is_some() {
        let command = Command::BlobCopies {
            node: me,
            held: held.by_ref().take(COPIES_PER_COMMAND).collect(),
            lost: lost.by_ref().take(COPIES_PER_COMMAND).collect(),
            at: clock.now_millis(),
        };
        if let Err(err) = handle.propose(command).await {
            tracing::warn!(%err, "could not record this node's blob copies; trying again next pass");
            return;
        }
    }
}
