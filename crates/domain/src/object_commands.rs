//! The object commands as apply runs them: `PutObject` (in a pipeline, or a run, that exists; within the
//! cluster's size limit; evicting the oldest past its count) and `DeleteObject`.
//!
//! The index itself and its rules are in `blobs.rs`; this file only knows where objects are keyed and
//! what a put may evict.

use crate::blobs::{check_object_key, object_prefix};
use crate::events::Journal;
use crate::state::State;
use crate::{Error, validate_id};

impl State {
    /// `PutObject`: names the blob by the object's key and returns the keys it evicted, oldest first.
    pub(crate) fn put_object(
        &mut self,
        (namespace, pipeline, run): (&str, &str, u64),
        key: &str,
        (digest, size, holders): (&str, u64, &[u64]),
        at: i64,
        journal: &mut Journal,
    ) -> Result<Vec<String>, Error> {
        let prefix = self.object_scope(namespace, pipeline, run, key)?;
        let max_bytes = self.object_limits.max_bytes();
        if size > max_bytes {
            return Err(Error::invalid(
                "size",
                format!("an object is at most {max_bytes} bytes, got {size}"),
            ));
        }
        let full = format!("{prefix}{key}");
        self.blobs.put(&full, digest, size, holders, at)?;
        let max_count = self.object_limits.max_count() as usize;
        let mut kept: Vec<(i64, String)> = self
            .blobs
            .under(&prefix, "")
            .filter(|(k, _)| *k != full)
            .map(|(k, b)| (b.at, k.to_string()))
            .collect();
        let excess = (kept.len() + 1).saturating_sub(max_count);
        kept.sort();
        let mut evicted = Vec::new();
        for (_, old) in kept.into_iter().take(excess) {
            self.blobs.remove(&old);
            let short = old[prefix.len()..].to_string();
            let reason = format!(
                "the {} kept more than {max_count} objects; this was the oldest",
                scope_name(run)
            );
            journal.object_evicted((namespace, pipeline, run), &short, &reason);
            evicted.push(short);
        }
        Ok(evicted)
    }

    /// `DeleteObject`: NotFound when there is no such object.
    pub(crate) fn delete_object(
        &mut self,
        (namespace, pipeline, run): (&str, &str, u64),
        key: &str,
    ) -> Result<(), Error> {
        let prefix = self.object_scope(namespace, pipeline, run, key)?;
        if self.blobs.remove(&format!("{prefix}{key}")) {
            Ok(())
        } else {
            Err(Error::NotFound(format!("object {key:?}")))
        }
    }

    /// The prefix of the objects of `pipeline` (run 0) or of one run, once they exist and `key` is valid.
    fn object_scope(&self, namespace: &str, pipeline: &str, run: u64, key: &str) -> Result<String, Error> {
        validate_id("namespace", namespace)?;
        validate_id("pipeline", pipeline)?;
        check_object_key(key)?;
        match run {
            0 => {
                self.pipeline(namespace, pipeline)?;
            }
            run => {
                self.run(namespace, pipeline, run)?;
            }
        }
        Ok(object_prefix(namespace, pipeline, run))
    }
}

fn scope_name(run: u64) -> String {
    match run {
        0 => "pipeline".to_string(),
        run => format!("run {run}"),
    }
}
