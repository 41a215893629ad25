//! The task log archive: each attempt's combined stdout and stderr, one file per attempt under the data
//! dir, with live notification so that any number of followers see bytes as they arrive.
//!
//! Logs stay out of the replicated log on purpose (big bytes would bloat every snapshot). A writer
//! replaces an attempt's file from its first byte, so an executor that re-streams an adopted container's
//! output from the start does not duplicate it. `finish` fsyncs before the executor is told the bytes are
//! stored; only then does it report the attempt finished, so a follower that sees the task end and reads to
//! the end of the file has every byte.
//!
//! The store does not check who writes: its callers (the scheduler's `PushTaskLogs`, a state node's
//! `StoreTaskLog`) admit an upload only from the executor a live attempt is assigned to
//! (`State::check_log_upload`), so a finished attempt's log is never replaced.

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
    /// How much of one attempt's output is kept.
    cap: u64,
}

/// An open attempt log being written.
pub struct LogWriter {
    file: tokio::fs::File,
    path: PathBuf,
    written: u64,
    notify: watch::Sender<u64>,
    /// Bytes the head may still take; past them, output goes to `tail`.
    head_left: u64,
    /// The newest bytes beyond the head, at most `tail_cap` of them, written when the log finishes.
    tail: std::collections::VecDeque<u8>,
    tail_cap: usize,
    /// Bytes dropped between the head and the tail.
    omitted: u64,
}

/// How much of one attempt's output the archive keeps: the first and the last half of this, with a marker
/// between them saying how much was left out.
pub const LOG_CAP_BYTES: u64 = 10 * 1024 * 1024;

/// By (namespace, pipeline): the next run id and the run ids the state holds.
pub type KeptRuns = std::collections::BTreeMap<(String, String), (u64, std::collections::BTreeSet<u64>)>;

impl LogStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_cap(root, LOG_CAP_BYTES)
    }

    /// A store that keeps at most about `cap` bytes of each attempt's output (see [`LOG_CAP_BYTES`]).
    pub fn with_cap(root: impl Into<PathBuf>, cap: u64) -> Self {
        LogStore {
            root: root.into(),
            live: Arc::default(),
            cap,
        }
    }

    /// Stores one attempt's whole log from `chunks` (replacing what was stored) and returns the bytes
    /// stored, once they are fsynced. The caller has checked that the attempt is live and that its
    /// assignee is the uploader.
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
        let failed = |e: std::io::Error| gofer_proto::unavailable("storing task logs", &e);
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

    /// Removes the live files of attempts whose logs are archived as blobs (readers then read the
    /// archive), returning how many went; a file already gone is no error.
    pub async fn remove_archived(&self, archived: Vec<(AttemptRef, u32)>) -> std::io::Result<usize> {
        let mut removed = 0;
        for (target, attempt) in archived {
            let Ok(path) = self.path(&target, attempt) else {
                continue;
            };
            match tokio::fs::remove_file(&path).await {
                Ok(()) => removed += 1,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        Ok(removed)
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
            head_left: self.cap - self.cap / 2,
            tail: std::collections::VecDeque::new(),
            tail_cap: usize::try_from(self.cap / 2).unwrap_or(usize::MAX),
            omitted: 0,
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
    /// Appends bytes and wakes followers. Past the head (half the cap) they are held as the tail, of
    /// which the newest half-cap is kept, and written when the log finishes.
    pub async fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        let head = usize::try_from(self.head_left).unwrap_or(usize::MAX).min(data.len());
        if head > 0 {
            self.file.write_all(&data[..head]).await?;
            self.file.flush().await?;
            self.written += head as u64;
            self.head_left -= head as u64;
            self.notify.send_modify(|generation| *generation += 1);
        }
        self.tail.extend(&data[head..]);
        if self.tail.len() > self.tail_cap {
            let excess = self.tail.len() - self.tail_cap;
            self.tail.drain(..excess);
            self.omitted += excess as u64;
        }
        Ok(())
    }

    /// Writes the tail (after a marker if bytes were left out), makes every stored byte durable and
    /// returns how many there are.
    pub async fn finish(mut self) -> std::io::Result<u64> {
        if self.omitted > 0 {
            let marker = format!(
                "\n[gofer: {} bytes of output left out here; the log keeps its first and last {} bytes]\n",
                self.omitted, self.tail_cap
            );
            self.file.write_all(marker.as_bytes()).await?;
            self.written += marker.len() as u64;
        }
        let (first, second) = self.tail.as_slices();
        self.file.write_all(first).await?;
        self.file.write_all(second).await?;
        self.written += self.tail.len() as u64;
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

    #[tokio::test]
    async fn the_live_files_of_archived_logs_are_removed_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::new(dir.path());
        for attempt in [1, 2] {
            let mut writer = store.writer(&target(), attempt).await.unwrap();
            writer.append(b"out\n").await.unwrap();
            writer.finish().await.unwrap();
        }
        let mut bad = target();
        bad.pipeline = "../x".into();
        let removed = store
            .remove_archived(vec![(target(), 1), (target(), 3), (bad, 1)])
            .await
            .unwrap();
        assert_eq!(removed, 1);
        assert!(!store.path(&target(), 1).unwrap().exists());
        assert!(store.path(&target(), 2).unwrap().exists());
    }

    #[test]
    fn ids_that_could_escape_the_root_are_refused() {
        let store = LogStore::new("/tmp/x");
        let mut bad = target();
        bad.pipeline = "../etc".into();
        assert!(store.path(&bad, 1).is_err());
    }

    #[tokio::test]
    async fn a_log_over_the_cap_keeps_its_head_and_tail_with_a_marker_between() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::with_cap(dir.path(), 100);
        let mut writer = store.writer(&target(), 1).await.unwrap();
        // 30 lines of 10 bytes: 300 bytes, three times the cap, in uneven appends.
        let lines: Vec<String> = (0..30).map(|i| format!("line {i:04}\n")).collect();
        let all = lines.concat();
        for chunk in all.as_bytes().chunks(7) {
            writer.append(chunk).await.unwrap();
        }
        let stored = writer.finish().await.unwrap();
        let text = std::fs::read_to_string(store.path(&target(), 1).unwrap()).unwrap();
        assert_eq!(stored, text.len() as u64);
        assert!(text.starts_with(&all[..50]), "the first half-cap: {text}");
        assert!(text.ends_with(&all[all.len() - 50..]), "the last half-cap: {text}");
        assert!(text.contains("[gofer: 200 bytes of output left out here"), "{text}");
        // Under the cap, nothing is left out and there is no marker.
        let mut writer = store.writer(&target(), 2).await.unwrap();
        writer.append(b"short\n").await.unwrap();
        assert_eq!(writer.finish().await.unwrap(), 6);
        assert_eq!(
            std::fs::read_to_string(store.path(&target(), 2).unwrap()).unwrap(),
            "short\n"
        );
    }
}
