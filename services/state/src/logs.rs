//! The task log archive: each attempt's combined stdout and stderr, one file per attempt under the data
//! dir, with live notification so that any number of followers see bytes as they arrive.
//!
//! Logs stay out of the replicated log on purpose (big bytes would bloat every snapshot). A writer
//! replaces an attempt's file from its first byte, so an executor that re-streams an adopted container's
//! output from the start does not duplicate it. `finish` fsyncs before the executor is told the bytes are
//! stored; only then does it report the attempt finished, so a follower that sees the task end and reads to
//! the end of the file has every byte.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gofer_domain::{AttemptRef, validate_id};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;

/// Where attempts' logs live, and who is waiting for more of them.
#[derive(Clone)]
pub struct LogStore {
    root: PathBuf,
    live: Arc<Mutex<HashMap<PathBuf, watch::Sender<u64>>>>,
}

/// An open attempt log being written.
pub struct LogWriter {
    file: tokio::fs::File,
    path: PathBuf,
    written: u64,
    notify: watch::Sender<u64>,
}

/// By (namespace, pipeline): the next run id and the run ids the state holds.
pub type KeptRuns = std::collections::BTreeMap<(String, String), (u64, std::collections::BTreeSet<u64>)>;

impl LogStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LogStore {
            root: root.into(),
            live: Arc::default(),
        }
    }

    /// Stores one attempt's whole log from `chunks` (replacing what was stored) and returns the bytes
    /// stored, once they are fsynced.
    pub async fn store_stream<S>(
        &self,
        target: &AttemptRef,
        attempt: u32,
        first: &[u8],
        mut chunks: S,
    ) -> Result<u64, tonic::Status>
    where
        S: futures_util::Stream<Item = Result<Vec<u8>, tonic::Status>> + Unpin,
    {
        use futures_util::StreamExt;
        let failed = |e: std::io::Error| gofer_proto::internal("storing task logs", &e, true);
        let mut writer = self.writer(target, attempt).await.map_err(failed)?;
        writer.append(first).await.map_err(failed)?;
        while let Some(chunk) = chunks.next().await.transpose()? {
            writer.append(&chunk).await.map_err(failed)?;
        }
        writer.finish().await.map_err(failed)
    }

    /// What [`LogStore::prune`] keeps: by pipeline, its next run id and the runs the state holds.
    pub fn kept_runs(state: &gofer_domain::State) -> KeptRuns {
        state
            .namespaces
            .iter()
            .flat_map(|(ns, record)| {
                record.pipelines.iter().map(move |(p, pipeline)| {
                    let runs = pipeline.runs.keys().copied().collect();
                    ((ns.clone(), p.clone()), (pipeline.next_run_id, runs))
                })
            })
            .collect()
    }

    /// Removes the log directories of the runs the state pruned: for each pipeline directory, the run
    /// directories below the pipeline's next run id that `kept` does not hold. Returns how many went.
    pub async fn prune(&self, kept: KeptRuns) -> std::io::Result<usize> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<usize> {
            let mut removed = 0;
            for ((ns, pipeline), (next_run_id, runs)) in &kept {
                let dir = root.join(ns).join(pipeline);
                let Ok(entries) = std::fs::read_dir(&dir) else { continue };
                for entry in entries.flatten() {
                    let Some(run) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else {
                        continue;
                    };
                    if run < *next_run_id && !runs.contains(&run) {
                        std::fs::remove_dir_all(entry.path())?;
                        removed += 1;
                    }
                }
            }
            Ok(removed)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// The file of one attempt. The ids were validated before they were stored, and are checked again
    /// here because they become path components.
    pub fn path(&self, target: &AttemptRef, attempt: u32) -> std::io::Result<PathBuf> {
        for (field, id) in [
            ("namespace", &target.namespace),
            ("pipeline", &target.pipeline),
            ("task", &target.task),
        ] {
            validate_id(field, id).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        }
        Ok(self
            .root
            .join(&target.namespace)
            .join(&target.pipeline)
            .join(target.run.to_string())
            .join(format!("{}.{attempt}.log", target.task)))
    }

    /// A receiver that changes whenever bytes are appended to `path`. Subscribe before reading, so that
    /// no append between the read and the wait is missed.
    pub fn subscribe(&self, path: &Path) -> watch::Receiver<u64> {
        self.sender(path).subscribe()
    }

    /// Starts (or restarts, from an empty file) the log of one attempt.
    pub async fn writer(&self, target: &AttemptRef, attempt: u32) -> std::io::Result<LogWriter> {
        let path = self.path(target, attempt)?;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let file = tokio::fs::File::create(&path).await?;
        let notify = self.sender(&path);
        notify.send_modify(|generation| *generation += 1);
        Ok(LogWriter {
            file,
            path,
            written: 0,
            notify,
        })
    }

    /// Reads what `path` holds from `offset` on, up to `max` bytes; a missing file reads as empty.
    pub async fn read_at(&self, path: &Path, offset: u64, max: usize) -> std::io::Result<Vec<u8>> {
        let mut file = match tokio::fs::File::open(path).await {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        let mut buf = Vec::with_capacity(max.min(64 * 1024));
        (&mut file).take(max as u64).read_to_end(&mut buf).await?;
        Ok(buf)
    }

    fn sender(&self, path: &Path) -> watch::Sender<u64> {
        let mut live = self.live.lock().expect("log notifier lock is never poisoned");
        live.entry(path.to_path_buf())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }
}

impl LogWriter {
    /// Appends bytes and wakes followers.
    pub async fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all(data).await?;
        self.file.flush().await?;
        self.written += data.len() as u64;
        self.notify.send_modify(|generation| *generation += 1);
        Ok(())
    }

    /// Makes every appended byte durable and returns how many there were.
    pub async fn finish(mut self) -> std::io::Result<u64> {
        self.file.flush().await?;
        self.file.sync_all().await?;
        if let Some(dir) = self.path.parent() {
            // The file's directory entry must be durable too, or a crash could lose a whole new log.
            tokio::fs::File::open(dir).await?.sync_all().await?;
        }
        self.notify.send_modify(|generation| *generation += 1);
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> AttemptRef {
        AttemptRef {
            namespace: "default".into(),
            pipeline: "p".into(),
            run: 1,
            task: "a".into(),
        }
    }

    #[tokio::test]
    async fn a_follower_is_woken_by_appends_and_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::new(dir.path());
        let path = store.path(&target(), 1).unwrap();
        let mut rx = store.subscribe(&path);
        assert!(store.read_at(&path, 0, 100).await.unwrap().is_empty());
        let mut writer = store.writer(&target(), 1).await.unwrap();
        writer.append(b"one\n").await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        writer.append(b"two\n").await.unwrap();
        assert_eq!(writer.finish().await.unwrap(), 8);
        assert_eq!(store.read_at(&path, 0, 100).await.unwrap(), b"one\ntwo\n");
        assert_eq!(store.read_at(&path, 4, 100).await.unwrap(), b"two\n");
    }

    #[tokio::test]
    async fn a_new_writer_replaces_the_attempt_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::new(dir.path());
        let mut first = store.writer(&target(), 1).await.unwrap();
        first.append(b"partial").await.unwrap();
        drop(first);
        let mut again = store.writer(&target(), 1).await.unwrap();
        again.append(b"whole\n").await.unwrap();
        again.finish().await.unwrap();
        let path = store.path(&target(), 1).unwrap();
        assert_eq!(store.read_at(&path, 0, 100).await.unwrap(), b"whole\n");
    }

    #[test]
    fn ids_that_could_escape_the_root_are_refused() {
        let store = LogStore::new("/tmp/x");
        let mut bad = target();
        bad.pipeline = "../etc".into();
        assert!(store.path(&bad, 1).is_err());
    }
}
