//! The blob index: what the replicated state knows of the blobs kept outside the log (task logs, and
//! later objects). A blob's bytes are a file on the state nodes, named by its SHA-256; the log carries
//! only its metadata: the key that names it, its digest and size, and the state nodes that hold a copy.
//!
//! A blob is put once a majority of the state nodes fsynced it (`PutBlob` names them); nodes that copy it
//! later, or find they lost it, say so with `BlobCopies`. Several keys may name the same bytes: a copy is
//! counted by its references and forgotten with the last, and then every node deletes its file. A run's
//! blobs are keyed under [`run_prefix`], so they go when the run is pruned.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{AttemptRef, Error};

/// The holder that stands for the shared S3 tier (`blob_store = "s3://…"`): no state node copies a blob
/// it holds, every node reads it there.
pub const SHARED_STORE: u64 = u64::MAX;

/// The most bytes one key's blob may hold (a task log is capped well under it).
pub const MAX_BLOB_BYTES: u64 = 1 << 30;

/// The blobs the cluster keeps, by key and by digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blobs {
    /// What each key names.
    pub keys: BTreeMap<String, BlobRef>,
    /// Each distinct blob: its size, who holds a copy and how many keys name it.
    pub copies: BTreeMap<String, Copies>,
}

/// The blob a key names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// Lowercase hex SHA-256 of the bytes.
    pub digest: String,
    pub size: u64,
    /// When it was put.
    pub at: i64,
}

/// One distinct blob's copies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copies {
    pub size: u64,
    /// The state nodes that fsynced a copy (by raft node id).
    pub holders: BTreeSet<u64>,
    /// How many keys name it.
    pub refs: u64,
}

/// One state node's share of the blobs, for `cluster status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeBlobs {
    /// Distinct blobs the node holds, and their bytes.
    pub count: u64,
    pub bytes: u64,
    /// Blobs it should hold but does not yet (every state node keeps every blob).
    pub backlog: u64,
}

/// The most bytes one object holds unless the cluster says otherwise.
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 16 * 1024 * 1024;
/// The most objects one pipeline (and one run) keeps unless the cluster says otherwise.
pub const DEFAULT_MAX_OBJECTS: u32 = 50;
/// The longest object key.
pub const MAX_OBJECT_KEY_LEN: usize = 128;

/// The cluster's object limits: how large one object may be, and how many one pipeline (or one run)
/// keeps before its oldest is evicted. Zero means the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectLimits {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_bytes: u64,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub max_count: u32,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

impl ObjectLimits {
    /// Whether nothing was set (the snapshot then leaves the limits out).
    pub fn is_unset(&self) -> bool {
        *self == ObjectLimits::default()
    }

    /// How large one object may be.
    pub fn max_bytes(&self) -> u64 {
        if self.max_bytes == 0 {
            DEFAULT_MAX_OBJECT_BYTES
        } else {
            self.max_bytes
        }
    }

    /// How many objects one pipeline or run keeps.
    pub fn max_count(&self) -> u32 {
        if self.max_count == 0 {
            DEFAULT_MAX_OBJECTS
        } else {
            self.max_count
        }
    }

    /// Checks limits before they are set: an object fits one blob.
    pub fn check(&self) -> Result<(), Error> {
        if self.max_bytes > MAX_BLOB_BYTES {
            return Err(Error::invalid(
                "max_bytes",
                format!("must be at most {MAX_BLOB_BYTES} bytes"),
            ));
        }
        if self.max_count > 100_000 {
            return Err(Error::invalid("max_count", "must be at most 100000"));
        }
        Ok(())
    }
}

/// Checks an object key: 1 to 128 of `a-z A-Z 0-9 _ . / -`.
pub fn check_object_key(key: &str) -> Result<(), Error> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-');
    if key.is_empty() || key.len() > MAX_OBJECT_KEY_LEN || !key.chars().all(allowed) {
        return Err(Error::invalid(
            "key",
            format!("must be 1 to {MAX_OBJECT_KEY_LEN} of a-z A-Z 0-9 _ . / -, got {key:?}"),
        ));
    }
    Ok(())
}

/// The prefix of a pipeline's objects (`run` 0) or of one run's.
pub fn object_prefix(namespace: &str, pipeline: &str, run: u64) -> String {
    match run {
        0 => format!("pipelines/{namespace}/{pipeline}/objects/"),
        run => format!("{}objects/", run_prefix(namespace, pipeline, run)),
    }
}

/// The key of one attempt's task log.
pub fn task_log_key(target: &AttemptRef, attempt: u32) -> String {
    format!(
        "{}logs/{}/{attempt}",
        run_prefix(&target.namespace, &target.pipeline, target.run),
        target.task
    )
}

/// The attempt a task log key names, if `key` is one.
pub fn task_log_of(key: &str) -> Option<(AttemptRef, u32)> {
    let rest = key.strip_prefix("runs/")?;
    let mut parts = rest.split('/');
    let (namespace, pipeline, run, logs, task, attempt) = (
        parts.next()?,
        parts.next()?,
        parts.next()?.parse().ok()?,
        parts.next()?,
        parts.next()?,
        parts.next()?.parse().ok()?,
    );
    if logs != "logs" || parts.next().is_some() {
        return None;
    }
    let target = AttemptRef {
        namespace: namespace.to_string(),
        pipeline: pipeline.to_string(),
        run,
        task: task.to_string(),
    };
    Some((target, attempt))
}

/// The prefix of every key a run owns; they go with the run.
pub fn run_prefix(namespace: &str, pipeline: &str, run: u64) -> String {
    format!("runs/{namespace}/{pipeline}/{run}/")
}

/// Checks that `digest` is a lowercase hex SHA-256.
pub fn check_digest(field: &str, digest: &str) -> Result<(), Error> {
    if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(Error::invalid(field, "must be a lowercase hex SHA-256 (64 characters)"))
    }
}

impl Blobs {
    /// Whether no blob is known (the snapshot then leaves the index out).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.copies.is_empty()
    }

    /// The blob `key` names, with its copies.
    pub fn get(&self, key: &str) -> Option<(&BlobRef, &Copies)> {
        let blob = self.keys.get(key)?;
        Some((blob, self.copies.get(&blob.digest)?))
    }

    /// Names by `key` the blob `digest` of `size` bytes, which `holders` fsynced; replaces what the key
    /// named before.
    pub(crate) fn put(&mut self, key: &str, digest: &str, size: u64, holders: &[u64], at: i64) -> Result<(), Error> {
        check_digest("digest", digest)?;
        if key.is_empty() || key.len() > 512 {
            return Err(Error::invalid("key", "must be 1 to 512 bytes"));
        }
        if size > MAX_BLOB_BYTES {
            return Err(Error::invalid(
                "size",
                format!("must be at most {MAX_BLOB_BYTES} bytes"),
            ));
        }
        if holders.is_empty() || holders.contains(&0) {
            return Err(Error::invalid(
                "holders",
                "must name the state nodes that hold the blob",
            ));
        }
        if let Some(copies) = self.copies.get(digest)
            && copies.size != size
        {
            return Err(Error::invalid(
                "size",
                format!("blob {digest} is {} bytes, not {size}", copies.size),
            ));
        }
        if let Some(old) = self.keys.get(key)
            && old.digest == digest
        {
            // The same bytes again (an upload retried): more holders, nothing else.
            if let Some(copies) = self.copies.get_mut(digest) {
                copies.holders.extend(holders.iter().copied());
            }
            return Ok(());
        }
        let named = BlobRef {
            digest: digest.to_string(),
            size,
            at,
        };
        if let Some(old) = self.keys.insert(key.to_string(), named) {
            self.unref(&old.digest);
        }
        let copies = self.copies.entry(digest.to_string()).or_insert_with(|| Copies {
            size,
            holders: BTreeSet::new(),
            refs: 0,
        });
        copies.refs += 1;
        copies.holders.extend(holders.iter().copied());
        Ok(())
    }

    /// Forgets every key under `prefix`, and the copies no key names any more.
    pub(crate) fn remove_prefix(&mut self, prefix: &str) {
        let keys: Vec<String> = self
            .keys
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(old) = self.keys.remove(&key) {
                self.unref(&old.digest);
            }
        }
    }

    /// State node `node` no longer holds a copy of each of `lost`, and now holds one of each of `held`
    /// (a digest in both was lost and copied back). Digests no key names any more are passed over: they
    /// were deleted meanwhile.
    pub(crate) fn set_copies(&mut self, node: u64, held: &[String], lost: &[String]) -> Result<(), Error> {
        if node == 0 {
            return Err(Error::invalid("node", "must be a state node's id"));
        }
        for digest in held.iter().chain(lost) {
            check_digest("digest", digest)?;
        }
        // Lost first: a node that found a blob missing and copied it back in one pass names it in both.
        for digest in lost {
            if let Some(copies) = self.copies.get_mut(digest) {
                copies.holders.remove(&node);
            }
        }
        for digest in held {
            if let Some(copies) = self.copies.get_mut(digest) {
                copies.holders.insert(node);
            }
        }
        Ok(())
    }

    /// The keys under `prefix`, in order, after `after` (exclusive; empty for the first).
    pub fn under<'a>(&'a self, prefix: &'a str, after: &str) -> impl Iterator<Item = (&'a str, &'a BlobRef)> + 'a {
        let start = if after.is_empty() {
            prefix.to_string()
        } else {
            format!("{after}\0")
        };
        self.keys
            .range(start..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, b)| (k.as_str(), b))
    }

    /// Forgets `key`, and its copy if no other key names it; whether it was there.
    pub(crate) fn remove(&mut self, key: &str) -> bool {
        match self.keys.remove(key) {
            Some(old) => {
                self.unref(&old.digest);
                true
            }
            None => false,
        }
    }

    /// What node `node` holds and still lacks (blobs in the shared S3 tier aside: `node` [`SHARED_STORE`]
    /// counts those).
    pub fn node_blobs(&self, node: u64) -> NodeBlobs {
        let mut out = NodeBlobs::default();
        for copies in self.copies.values() {
            if node != SHARED_STORE && copies.holders.contains(&SHARED_STORE) {
                continue;
            }
            if copies.holders.contains(&node) {
                out.count += 1;
                out.bytes += copies.size;
            } else {
                out.backlog += 1;
            }
        }
        out
    }

    fn unref(&mut self, digest: &str) {
        if let Some(copies) = self.copies.get_mut(digest) {
            copies.refs = copies.refs.saturating_sub(1);
            if copies.refs == 0 {
                self.copies.remove(digest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    #[test]
    fn a_task_log_key_names_its_attempt_and_nothing_else_does() {
        let target = AttemptRef {
            namespace: "default".into(),
            pipeline: "p".into(),
            run: 12,
            task: "build".into(),
        };
        assert_eq!(task_log_of(&task_log_key(&target, 3)), Some((target, 3)));
        for other in [
            "runs/default/p/12/objects/x",
            "pipelines/default/p/objects/logs",
            "runs/default/p/x/logs/a/1",
        ] {
            assert_eq!(task_log_of(other), None, "{other}");
        }
    }

    #[test]
    fn a_copy_is_forgotten_with_the_last_key_that_names_it() {
        let mut blobs = Blobs::default();
        blobs
            .put("runs/default/p/1/logs/a/1", &digest(1), 10, &[1, 2], 5)
            .unwrap();
        blobs.put("runs/default/p/2/logs/a/1", &digest(1), 10, &[3], 6).unwrap();
        assert_eq!(blobs.copies[&digest(1)].refs, 2);
        assert_eq!(blobs.copies[&digest(1)].holders, BTreeSet::from([1, 2, 3]));
        blobs.remove_prefix(&run_prefix("default", "p", 1));
        assert_eq!(blobs.copies[&digest(1)].refs, 1);
        // The prefix of run 1 is not a prefix of run 10's keys, nor of run 2's.
        blobs.put("runs/default/p/10/logs/a/1", &digest(2), 3, &[1], 7).unwrap();
        blobs.remove_prefix(&run_prefix("default", "p", 1));
        assert!(blobs.keys.contains_key("runs/default/p/10/logs/a/1"));
        blobs.remove_prefix(&run_prefix("default", "p", 2));
        blobs.remove_prefix(&run_prefix("default", "p", 10));
        assert!(blobs.is_empty(), "{blobs:?}");
    }

    #[test]
    fn a_key_put_again_names_its_new_blob_and_drops_the_old() {
        let mut blobs = Blobs::default();
        blobs.put("k", &digest(1), 10, &[1], 5).unwrap();
        blobs.put("k", &digest(2), 4, &[1, 2], 6).unwrap();
        assert!(!blobs.copies.contains_key(&digest(1)));
        assert_eq!(blobs.get("k").unwrap().0.digest, digest(2));
        // The same bytes put again only add holders.
        blobs.put("k", &digest(2), 4, &[3], 7).unwrap();
        assert_eq!(blobs.copies[&digest(2)].refs, 1);
        assert_eq!(blobs.copies[&digest(2)].holders, BTreeSet::from([1, 2, 3]));
    }

    #[test]
    fn bad_puts_name_the_field_and_change_nothing() {
        let mut blobs = Blobs::default();
        let err = blobs.put("k", "ABC", 1, &[1], 5).unwrap_err();
        assert!(err.to_string().contains("digest"), "{err}");
        let err = blobs.put("k", &digest(1), 1, &[], 5).unwrap_err();
        assert!(err.to_string().contains("holders"), "{err}");
        blobs.put("k", &digest(1), 1, &[1], 5).unwrap();
        let before = blobs.clone();
        let err = blobs.put("j", &digest(1), 2, &[1], 5).unwrap_err();
        assert!(err.to_string().contains("size"), "{err}");
        assert_eq!(blobs, before);
    }

    #[test]
    fn nodes_count_what_they_hold_and_what_they_lack() {
        let mut blobs = Blobs::default();
        blobs.put("a", &digest(1), 10, &[1, 2], 5).unwrap();
        blobs.put("b", &digest(2), 5, &[1, 2], 5).unwrap();
        assert_eq!(
            blobs.node_blobs(3),
            NodeBlobs {
                count: 0,
                bytes: 0,
                backlog: 2
            }
        );
        blobs.set_copies(3, &[digest(1)], &[]).unwrap();
        blobs.set_copies(1, &[], &[digest(2)]).unwrap();
        assert_eq!(
            blobs.node_blobs(3),
            NodeBlobs {
                count: 1,
                bytes: 10,
                backlog: 1
            }
        );
        assert_eq!(blobs.node_blobs(1).backlog, 1);
        // Lost and copied back in one pass: held.
        blobs.set_copies(3, &[digest(2)], &[digest(2)]).unwrap();
        assert!(blobs.copies[&digest(2)].holders.contains(&3));
        // A digest no key names is passed over.
        blobs.set_copies(3, &[digest(9)], &[]).unwrap();
        assert!(!blobs.copies.contains_key(&digest(9)));
    }
}
