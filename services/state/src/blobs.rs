//! One state node's blob files: content-addressed (the lowercase hex SHA-256 of the bytes names the file,
//! under `blobs/ab/abcd…`), written whole or not at all, and checked against their digest on every read.
//!
//! A blob is written to a temporary file while it is hashed, then fsynced, checked against the digest the
//! writer announced, renamed into place and its directory fsynced: no reader ever sees part of one, and
//! a blob that reached its place survives a crash. What the cluster knows of blobs (keys, holders) is in
//! the replicated state (`gofer_domain::blobs`); this file only keeps bytes. The replication and repair
//! that use it are in `blob_copies.rs`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// Why a blob could not be written or read here.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The bytes do not hash to the digest they were written or stored under.
    #[error("blob {digest}: the bytes do not match their SHA-256")]
    Corrupt { digest: String },
    /// The bytes are not as long as announced.
    #[error("blob {digest}: {got} bytes arrived, {expected} were announced")]
    Size { digest: String, expected: u64, got: u64 },
    #[error("blob digest {0:?}: not a lowercase hex SHA-256")]
    Digest(String),
    /// The disk holding the blobs is full.
    #[error("the disk holding {} is full", .0.display())]
    DiskFull(PathBuf),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a blob task ended badly: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The S3 tier failed (see `shared_store.rs`).
    #[error("the S3 blob store: {0}")]
    Shared(#[source] object_store::Error),
    #[error("blob_store {0}")]
    SharedUrl(String),
    /// A blob lives in the S3 tier, and this process was given none.
    #[error("blob {0} is in the S3 blob store, and this process has no blob_store configured")]
    NotShared(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BlobError + '_ {
    move |source| {
        if source.kind() == std::io::ErrorKind::StorageFull {
            BlobError::DiskFull(path.to_path_buf())
        } else {
            BlobError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// The lowercase hex SHA-256 of `data`.
pub fn digest_of(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The blob files under one directory. Clones share the directory and its in-memory list.
#[derive(Clone)]
pub struct BlobStore {
    root: PathBuf,
    /// Every blob here, by digest: its size.
    held: Arc<Mutex<HashMap<String, u64>>>,
    /// By digest, the repair pass during which each blob was last written (or found here by a write).
    written: Arc<Mutex<HashMap<String, u64>>>,
    /// The repair pass under way (see `blob_copies::keep_blobs`).
    pass: Arc<std::sync::atomic::AtomicU64>,
}

impl BlobStore {
    /// Opens (creating) the blob directory `root`, lists what it holds and removes the temporary files a
    /// crash left behind.
    pub fn open(root: &Path) -> Result<BlobStore, BlobError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        let mut held = HashMap::new();
        for shard in std::fs::read_dir(root).map_err(io(root))? {
            let shard = shard.map_err(io(root))?.path();
            if !shard.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&shard).map_err(io(&shard))? {
                let entry = entry.map_err(io(&shard))?;
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") {
                    std::fs::remove_file(&path).map_err(io(&path))?;
                } else if gofer_domain::blobs::check_digest("digest", &name).is_ok() {
                    let size = entry.metadata().map_err(io(&path))?.len();
                    held.insert(name, size);
                }
            }
        }
        Ok(BlobStore {
            root: root.to_path_buf(),
            held: Arc::new(Mutex::new(held)),
            written: Arc::default(),
            pass: Arc::default(),
        })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.root.join(&digest[..2]).join(digest)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts repair pass `pass`: writes from now on are stamped with it.
    pub(crate) fn set_pass(&self, pass: u64) {
        self.pass.store(pass, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `digest` was written here within `passes` passes of `now`.
    pub(crate) fn written_within(&self, digest: &str, now: u64, passes: u64) -> bool {
        let written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        written.get(digest).is_some_and(|at| now.saturating_sub(*at) < passes)
    }

    /// Forgets when the blobs that `named` says a key names were written: named, they are no longer
    /// at risk of being taken for garbage before their key commits.
    pub(crate) fn unstamp_named(&self, named: impl Fn(&str) -> bool) {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        written.retain(|digest, _| !named(digest));
    }

    /// Forgets when `digest` was written: its key is committed.
    pub(crate) fn unstamp(&self, digest: &str) {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(digest);
    }

    fn stamp(&self, digest: &str) {
        let pass = self.pass.load(std::sync::atomic::Ordering::Relaxed);
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        written.insert(digest.to_string(), pass);
    }

    /// Whether this node holds `digest`.
    pub fn holds(&self, digest: &str) -> bool {
        self.held().contains_key(digest)
    }

    /// The digests held here.
    pub fn digests(&self) -> Vec<String> {
        self.held().keys().cloned().collect()
    }

    /// How many blobs are held here, and their bytes.
    pub fn usage(&self) -> (u64, u64) {
        let held = self.held();
        (held.len() as u64, held.values().sum())
    }

    /// Starts writing the blob `digest` of `size` bytes.
    pub fn writer(&self, digest: &str, size: u64) -> Result<BlobWriter, BlobError> {
        gofer_domain::blobs::check_digest("digest", digest).map_err(|_| BlobError::Digest(digest.to_string()))?;
        let final_path = self.path(digest);
        let dir = final_path
            .parent()
            .expect("a blob path has a shard directory")
            .to_path_buf();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let file = tempfile::Builder::new()
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(io(&dir))?;
        Ok(BlobWriter {
            store: self.clone(),
            digest: digest.to_string(),
            size,
            written: 0,
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
            file,
            final_path,
        })
    }

    /// Writes `data` as a blob (if it is not here already) and returns its digest, once it is durable.
    pub async fn write(&self, data: Arc<Vec<u8>>) -> Result<String, BlobError> {
        let hashed = data.clone();
        let digest = tokio::task::spawn_blocking(move || digest_of(&hashed))
            .await
            .map_err(BlobError::Task)?;
        self.write_as(digest, data).await
    }

    /// Writes `data`, which the caller says hashes to `digest` (checked as it is written, once), if it
    /// is not here already; returns the digest once the blob is durable.
    pub async fn write_as(&self, digest: String, data: Arc<Vec<u8>>) -> Result<String, BlobError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            // Stamped even when it is here already: a write about to be named must not be collected.
            store.stamp(&digest);
            if !store.holds(&digest) {
                let mut writer = store.writer(&digest, data.len() as u64)?;
                writer.append(&data)?;
                writer.finish()?;
            }
            Ok(digest)
        })
        .await
        .map_err(BlobError::Task)?
    }

    /// Reads the whole blob `digest`, checked against it; `None` if it is not here. A blob whose bytes no
    /// longer match is removed (another holder's copy replaces it) and reported corrupt.
    pub async fn read(&self, digest: &str) -> Result<Option<Vec<u8>>, BlobError> {
        if !self.holds(digest) {
            return Ok(None);
        }
        let store = self.clone();
        let digest = digest.to_string();
        tokio::task::spawn_blocking(move || {
            let path = store.path(&digest);
            let data = match std::fs::read(&path) {
                Ok(data) => data,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    store.held().remove(&digest);
                    return Ok(None);
                }
                Err(e) => return Err(io(&path)(e)),
            };
            if digest_of(&data) != digest {
                tracing::warn!(%digest, path = %path.display(), "a blob's bytes do not match its digest; removing it");
                store.remove_now(&digest)?;
                return Err(BlobError::Corrupt { digest });
            }
            Ok(Some(data))
        })
        .await
        .map_err(BlobError::Task)?
    }

    /// Deletes the blob `digest` here, if it is here.
    pub async fn remove(&self, digest: &str) -> Result<(), BlobError> {
        let store = self.clone();
        let digest = digest.to_string();
        tokio::task::spawn_blocking(move || store.remove_now(&digest))
            .await
            .map_err(BlobError::Task)?
    }

    fn remove_now(&self, digest: &str) -> Result<(), BlobError> {
        self.held().remove(digest);
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(digest);
        let path = self.path(digest);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }
}

/// A blob being written: bytes go to a temporary file beside its place, hashed as they come.
pub struct BlobWriter {
    store: BlobStore,
    digest: String,
    size: u64,
    written: u64,
    hasher: ring::digest::Context,
    file: tempfile::NamedTempFile,
    final_path: PathBuf,
}

impl BlobWriter {
    /// Appends bytes; more than were announced are refused.
    pub fn append(&mut self, data: &[u8]) -> Result<(), BlobError> {
        self.written += data.len() as u64;
        if self.written > self.size {
            return Err(BlobError::Size {
                digest: self.digest.clone(),
                expected: self.size,
                got: self.written,
            });
        }
        self.hasher.update(data);
        let path = self.file.path().to_path_buf();
        self.file.as_file_mut().write_all(data).map_err(io(&path))
    }

    /// Checks the size and digest, makes the file durable and puts it in its place. Dropped unfinished,
    /// the temporary file goes.
    pub fn finish(mut self) -> Result<(), BlobError> {
        if self.written != self.size {
            return Err(BlobError::Size {
                digest: self.digest,
                expected: self.size,
                got: self.written,
            });
        }
        if hex(self.hasher.finish().as_ref()) != self.digest {
            return Err(BlobError::Corrupt { digest: self.digest });
        }
        let path = self.file.path().to_path_buf();
        self.file.as_file_mut().sync_all().map_err(io(&path))?;
        self.file.persist(&self.final_path).map_err(|e| io(&path)(e.error))?;
        let dir = self.final_path.parent().expect("a blob path has a shard directory");
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
        self.store.stamp(&self.digest);
        self.store.held().insert(self.digest, self.size);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_blob_is_written_whole_read_back_checked_and_found_again_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = store.write(Arc::new(b"hello".to_vec())).await.unwrap();
        assert_eq!(digest, digest_of(b"hello"));
        assert_eq!(store.read(&digest).await.unwrap().unwrap(), b"hello");
        assert_eq!(store.usage(), (1, 5));
        // A temporary file a crash left is removed; the blob is found again.
        std::fs::write(dir.path().join(&digest[..2]).join("x.tmp"), b"partial").unwrap();
        let reopened = BlobStore::open(dir.path()).unwrap();
        assert!(reopened.holds(&digest));
        assert!(!dir.path().join(&digest[..2]).join("x.tmp").exists());
        assert!(reopened.read(&digest_of(b"other")).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_blob_whose_bytes_changed_on_disk_is_reported_corrupt_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = store.write(Arc::new(b"hello".to_vec())).await.unwrap();
        std::fs::write(dir.path().join(&digest[..2]).join(&digest), b"hellO").unwrap();
        assert!(matches!(store.read(&digest).await, Err(BlobError::Corrupt { .. })));
        assert!(!store.holds(&digest));
        assert!(store.read(&digest).await.unwrap().is_none());
    }

    #[test]
    fn a_writer_refuses_bytes_that_do_not_match_what_was_announced() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let digest = digest_of(b"hello");
        let mut writer = store.writer(&digest, 5).unwrap();
        writer.append(b"jello").unwrap();
        assert!(matches!(writer.finish(), Err(BlobError::Corrupt { .. })));
        let mut writer = store.writer(&digest, 5).unwrap();
        assert!(matches!(writer.append(b"hello!"), Err(BlobError::Size { .. })));
        drop(writer);
        let mut writer = store.writer(&digest, 5).unwrap();
        writer.append(b"hel").unwrap();
        assert!(matches!(writer.finish(), Err(BlobError::Size { .. })));
        assert!(!store.holds(&digest));
        assert!(matches!(store.writer("nope", 1), Err(BlobError::Digest(_))));
        // Nothing was left behind: no blob, no temporary file.
        let shard = dir.path().join(&digest[..2]);
        assert_eq!(std::fs::read_dir(shard).unwrap().count(), 0);
    }
}
