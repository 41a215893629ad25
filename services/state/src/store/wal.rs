//! The raft log's file: an append-only write-ahead log in preallocated segments, synced with one
//! `fdatasync` per batch of appends.
//!
//! A redb commit of an append (several B-tree pages in scattered places, then a sync) took 0.46 ms on
//! the benchmark host, on the path of every write twice (the leader's copy, then a follower's). Here an
//! append is one write at the end of a file whose blocks are already allocated, then a data sync.
//!
//! Layout: `raft-log/{seq:020}.wal`, in order of `seq`. Each record is
//! `[len: u32 LE][crc32: u32 LE][index: u64 LE][payload: len bytes]`, the CRC taken over the index and
//! the payload; the payload is the JSON entry, which this file never looks into. A segment is
//! preallocated to [`SEGMENT_BYTES`] (zeros), so a record header of zeros marks its end.
//!
//! What may be on disk after a crash, and how opening deals with it:
//! - A torn last batch (some of its pages written, some not): the scan of the last segment stops at
//!   the first record whose CRC fails, and everything after it is cut off and zeroed before anything is
//!   appended, so a later, shorter record can never be followed by a stale one that happens to parse.
//! - An interrupted truncate or purge: both delete whole later (truncate) or earlier (purge) segments
//!   before they change any other, so what remains is always a run of whole records.
//!
//! The records kept must then run without a gap from the first index after the last purged one; a
//! gap means the file was damaged, and opening fails rather than serve a log with a hole in it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// How large a segment is made up front. A batch that does not fit starts a new segment.
pub(crate) const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// The longest payload a record may claim; anything longer is damage, not data.
const MAX_RECORD: u64 = 1 << 30;
const HEADER: u64 = 16;
const SUFFIX: &str = "wal";

/// Records as `(index, payload)`, in index order.
pub(crate) type Records = Vec<(u64, Vec<u8>)>;

/// One segment file and the records in it.
struct Segment {
    path: PathBuf,
    /// Index of each record in this segment → where its header starts.
    records: BTreeMap<u64, u64>,
    /// Where the next record goes.
    end: u64,
}

/// The open log. Not thread safe by itself: the log store serializes every call.
pub(crate) struct Wal {
    dir: PathBuf,
    /// [`SEGMENT_BYTES`], but for tests.
    segment_bytes: u64,
    segments: Vec<Segment>,
    /// The last segment, open for appends (`None` before the first append or after purging them all).
    current: Option<File>,
    next_seq: u64,
}

impl Wal {
    /// Opens (creating if need be) the log in `dir` and returns it with the records after `purged`, in
    /// index order.
    pub(crate) fn open(dir: &Path, purged: Option<u64>) -> io::Result<(Wal, Records)> {
        Wal::open_sized(dir, purged, SEGMENT_BYTES)
    }

    /// [`Wal::open`] with segments of `segment_bytes`.
    fn open_sized(dir: &Path, purged: Option<u64>, segment_bytes: u64) -> io::Result<(Wal, Records)> {
        std::fs::create_dir_all(dir)?;
        let mut seqs = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let name = item?.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name
                .strip_suffix(&format!(".{SUFFIX}"))
                .and_then(|stem| stem.parse::<u64>().ok())
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: Vec::new(),
            current: None,
            next_seq: seqs.last().map_or(0, |last| last + 1),
        };
        let mut kept: Records = Vec::new();
        let count = seqs.len();
        for (i, seq) in seqs.into_iter().enumerate() {
            let path = wal.path(seq);
            let mut bytes = Vec::new();
            File::open(&path)?.read_to_end(&mut bytes)?;
            let (records, end) = scan(&bytes, &mut kept, purged).map_err(|e| damaged(&path, e.to_string()))?;
            let last = i + 1 == count;
            if !last && end < bytes.len() as u64 && bytes[end as usize..].iter().any(|b| *b != 0) {
                return Err(damaged(&path, format!("a record at byte {end} does not check out")));
            }
            if last {
                // Whatever follows the last whole record is a torn write: cut it off, keep the space.
                let file = OpenOptions::new().read(true).write(true).open(&path)?;
                if end < bytes.len() as u64 {
                    file.set_len(end)?;
                }
                preallocate(&file, segment_bytes)?;
                file.sync_all()?;
                wal.current = Some(file);
            }
            wal.segments.push(Segment { path, records, end });
        }
        // Finish a purge that a crash interrupted, so that no segment holding only purged records is
        // appended to (its old records and the new ones would not follow each other).
        if let Some(purged) = purged {
            wal.purge(purged)?;
        }
        // What is kept must run without a gap from just after the purged entries.
        let mut expected = purged.map(|p| p + 1);
        for (index, _) in &kept {
            if let Some(expected) = expected
                && *index != expected
            {
                return Err(damaged(
                    dir,
                    format!("the log holds entry {index} where entry {expected} should be"),
                ));
            }
            expected = Some(index + 1);
        }
        Ok((wal, kept))
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.{SUFFIX}"))
    }

    /// Appends records (consecutive indexes, after the last one) and syncs them before returning.
    pub(crate) fn append(&mut self, rows: &[(u64, Vec<u8>)]) -> io::Result<()> {
        let mut expected = self
            .segments
            .last()
            .and_then(|s| s.records.keys().next_back())
            .map(|last| last + 1);
        for (index, _) in rows {
            if expected.is_some_and(|expected| *index != expected) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("log entry {index} does not follow the last one ({expected:?} expected)"),
                ));
            }
            expected = Some(index + 1);
        }
        let mut buf = Vec::with_capacity(rows.iter().map(|(_, p)| p.len() + HEADER as usize).sum());
        let mut starts = Vec::with_capacity(rows.len());
        for (index, payload) in rows {
            starts.push((*index, buf.len() as u64));
            let len = u32::try_from(payload.len())
                .ok()
                .filter(|len| u64::from(*len) <= MAX_RECORD)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a log entry over 1 GiB"))?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&crc(*index, payload).to_le_bytes());
            buf.extend_from_slice(&index.to_le_bytes());
            buf.extend_from_slice(payload);
        }
        let full = self
            .segments
            .last()
            .is_none_or(|s| s.end > 0 && s.end + buf.len() as u64 > self.segment_bytes);
        if self.current.is_none() || full {
            self.start_segment()?;
        }
        let (Some(file), Some(segment)) = (&self.current, self.segments.last_mut()) else {
            unreachable!("a segment was just started");
        };
        file.write_all_at(&buf, segment.end)?;
        file.sync_data()?;
        for (index, start) in starts {
            segment.records.insert(index, segment.end + start);
        }
        segment.end += buf.len() as u64;
        Ok(())
    }

    /// Removes the records with index `since` and later, durably.
    pub(crate) fn truncate(&mut self, since: u64) -> io::Result<()> {
        let Some(at) = self
            .segments
            .iter()
            .rposition(|s| s.records.keys().next().is_some_and(|first| *first <= since))
        else {
            // Every record on disk is at `since` or later (or there are none): drop every segment.
            return self.remove_segments(0..self.segments.len());
        };
        // Later segments go first: a crash in between leaves a shorter log, never one with a gap.
        self.remove_segments(at + 1..self.segments.len())?;
        let segment = &mut self.segments[at];
        let Some(&offset) = segment.records.get(&since) else {
            return Ok(());
        };
        let file = OpenOptions::new().read(true).write(true).open(&segment.path)?;
        file.set_len(offset)?;
        preallocate(&file, self.segment_bytes)?;
        file.sync_all()?;
        segment.records.retain(|index, _| *index < since);
        segment.end = offset;
        self.current = Some(file);
        Ok(())
    }

    /// Deletes the segments that hold only records up to `upto`; the records kept in memory are the
    /// caller's to drop. Records up to `upto` left in a segment that also holds later ones are skipped
    /// when the log is opened again (the caller records `upto` as purged first).
    pub(crate) fn purge(&mut self, upto: u64) -> io::Result<()> {
        let detached = self.detach_purged(upto);
        detached.remove()
    }

    /// Forgets every record up to `upto` and hands back the whole segments that held only those, for
    /// [`Detached::remove`] to delete outside the lock the writer needs. A crash before they are gone
    /// leaves them to the next open, which skips what was purged and finishes the purge.
    pub(crate) fn detach_purged(&mut self, upto: u64) -> Detached {
        let whole = self
            .segments
            .iter()
            .take_while(|s| s.records.keys().next_back().is_none_or(|last| *last <= upto))
            .count();
        if whole == self.segments.len() && whole > 0 {
            self.current = None;
        }
        let paths = self.segments.drain(0..whole).map(|s| s.path).collect();
        for segment in &mut self.segments {
            segment.records.retain(|index, _| *index > upto);
        }
        Detached {
            dir: self.dir.clone(),
            paths,
        }
    }
}

/// Purged segments, oldest first, no longer part of the log, to delete.
pub(crate) struct Detached {
    dir: PathBuf,
    paths: Vec<PathBuf>,
}

impl Detached {
    /// Deletes the segments oldest first, syncing the directory after each, so a crash midway leaves a
    /// log that still starts after the purged records.
    pub(crate) fn remove(self) -> io::Result<()> {
        for path in &self.paths {
            std::fs::remove_file(path)?;
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

impl Wal {
    /// Deletes the segments in `range` (newest first) and syncs the directory.
    fn remove_segments(&mut self, range: std::ops::Range<usize>) -> io::Result<()> {
        if range.is_empty() {
            return Ok(());
        }
        let removes_current = range.end == self.segments.len();
        for segment in self.segments.drain(range).rev() {
            std::fs::remove_file(&segment.path)?;
            // One at a time: unsynced removals may reach the disk in any order, and a truncate that lost
            // an older segment but kept a newer one would leave a gap.
            sync_dir(&self.dir)?;
        }
        if removes_current {
            self.current = None;
        }
        Ok(())
    }

    /// Creates the next segment, preallocated and durable (with its directory entry).
    fn start_segment(&mut self) -> io::Result<()> {
        let seq = self.next_seq;
        let path = self.path(seq);
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        preallocate(&file, self.segment_bytes)?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
        self.next_seq += 1;
        self.segments.push(Segment {
            path,
            records: BTreeMap::new(),
            end: 0,
        });
        self.current = Some(file);
        Ok(())
    }
}

/// Reads the whole records at the start of `bytes`, adding those after `purged` to `kept`; returns
/// each record's index and offset, and where the whole records end.
fn scan(bytes: &[u8], kept: &mut Records, purged: Option<u64>) -> io::Result<(BTreeMap<u64, u64>, u64)> {
    let mut records: BTreeMap<u64, u64> = BTreeMap::new();
    let mut at = 0u64;
    loop {
        let start = at as usize;
        let Some(header) = bytes.get(start..start + HEADER as usize) else {
            break;
        };
        let len = u64::from(u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")));
        let sum = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        let index = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        if len == 0 || len > MAX_RECORD {
            break;
        }
        let body = start + HEADER as usize;
        let Some(payload) = bytes.get(body..body + len as usize) else {
            break;
        };
        if crc(index, payload) != sum {
            break;
        }
        // A whole record that does not follow the one before it was never written by this log (appends
        // only follow, and cuts zero what they leave): damage, not a torn write to cut off.
        if let Some((previous, _)) = records.last_key_value()
            && Some(index) != previous.checked_add(1)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("entry {index} follows entry {previous} at byte {at}"),
            ));
        }
        records.insert(index, at);
        if purged.is_none_or(|p| index > p) {
            kept.push((index, payload.to_vec()));
        }
        at += HEADER + len;
    }
    Ok((records, at))
}

fn damaged(path: &Path, what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the raft log in {} is damaged: {what}", path.display()),
    )
}

/// Allocates the segment's blocks up front, so appends change no file metadata that a data sync would
/// have to write too. The file reads as zeros past what was written.
fn preallocate(file: &File, size: u64) -> io::Result<()> {
    let len = file.metadata()?.len();
    if len < size {
        match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), len, size - len) {
            // A file system that cannot preallocate still works: the file grows with each append.
            Err(rustix::io::Errno::OPNOTSUPP) => {}
            result => result?,
        }
    }
    Ok(())
}

/// Makes the entries of `dir` (files created, renamed or removed in it) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// CRC-32 (IEEE) over a record's index and payload.
fn crc(index: u64, payload: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in index.to_le_bytes().iter().chain(payload) {
        crc = CRC_TABLE[((crc ^ u32::from(*byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Segments this small hold a few records each, so tests cross segment boundaries.
    const SMALL: u64 = 256;

    fn rows(range: std::ops::RangeInclusive<u64>, size: usize) -> Vec<(u64, Vec<u8>)> {
        range.map(|i| (i, vec![b'a' + (i % 26) as u8; size])).collect()
    }

    fn indexes(rows: &[(u64, Vec<u8>)]) -> Vec<u64> {
        rows.iter().map(|(i, _)| *i).collect()
    }

    /// A log of records 1 to 20, two per append, over several small segments.
    fn twenty_records_in_small_segments() -> (tempfile::TempDir, Wal) {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open_sized(dir.path(), None, SMALL).unwrap();
        for chunk in rows(1..=20, 50).chunks(2) {
            wal.append(chunk).unwrap();
        }
        (dir, wal)
    }

    fn segment_files(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn records_come_back_after_a_reopen_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, kept) = Wal::open_sized(dir.path(), None, SMALL).unwrap();
        assert!(kept.is_empty());
        let written = rows(1..=20, 50);
        for chunk in written.chunks(3) {
            wal.append(chunk).unwrap();
        }
        drop(wal);
        assert!(segment_files(dir.path()) > 3, "the records span several segments");
        let (_, kept) = Wal::open_sized(dir.path(), None, SMALL).unwrap();
        assert_eq!(kept, written);
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_no_stale_record_comes_back_behind_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), None).unwrap();
        wal.append(&rows(1..=1, 10)).unwrap();
        wal.append(&[(2, vec![b'x'; 100]), (3, vec![b'y'; 10])]).unwrap();
        drop(wal);
        // Record 2's payload is damaged (a torn write): 2 and 3 are gone.
        let path = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", HEADER + 10 + HEADER + 5).unwrap();
        drop(file);
        let (mut wal, kept) = Wal::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&kept), vec![1]);
        // A new record 2 of the same length takes the old one's place, so the old record 3 sits right
        // behind it, whole: it was cut off, so it must not be read back.
        wal.append(&[(2, vec![b'z'; 100])]).unwrap();
        drop(wal);
        let (_, kept) = Wal::open(dir.path(), None).unwrap();
        assert_eq!(kept, vec![(1, vec![b'b'; 10]), (2, vec![b'z'; 100])]);
    }

    #[test]
    fn truncate_drops_later_segments_and_appends_go_on_from_there() {
        let (dir, mut wal) = twenty_records_in_small_segments();
        let before = segment_files(dir.path());
        wal.truncate(7).unwrap();
        assert!(segment_files(dir.path()) < before);
        wal.append(&[(7, b"seven".to_vec()), (8, b"eight".to_vec())]).unwrap();
        drop(wal);
        let (mut wal, kept) = Wal::open_sized(dir.path(), None, SMALL).unwrap();
        assert_eq!(indexes(&kept), (1..=8).collect::<Vec<_>>());
        assert_eq!(kept[6], (7, b"seven".to_vec()));
        // Truncating everything leaves an empty log that takes new records.
        wal.truncate(1).unwrap();
        wal.append(&[(1, b"one".to_vec())]).unwrap();
        drop(wal);
        let (_, kept) = Wal::open_sized(dir.path(), None, SMALL).unwrap();
        assert_eq!(kept, vec![(1, b"one".to_vec())]);
    }

    #[test]
    fn purge_deletes_whole_segments_and_a_reopen_skips_what_was_purged() {
        let (dir, mut wal) = twenty_records_in_small_segments();
        let before = segment_files(dir.path());
        wal.purge(9).unwrap();
        assert!(segment_files(dir.path()) < before);
        drop(wal);
        let (mut wal, kept) = Wal::open_sized(dir.path(), Some(9), SMALL).unwrap();
        assert_eq!(indexes(&kept), (10..=20).collect::<Vec<_>>());
        // Purging past the end (a follower that installed a snapshot) leaves no segment; the log goes
        // on from the snapshot.
        wal.purge(100).unwrap();
        assert_eq!(segment_files(dir.path()), 0);
        wal.append(&[(101, b"after the snapshot".to_vec())]).unwrap();
        drop(wal);
        let (_, kept) = Wal::open_sized(dir.path(), Some(100), SMALL).unwrap();
        assert_eq!(kept, vec![(101, b"after the snapshot".to_vec())]);
    }

    #[test]
    fn a_purge_cut_short_by_a_crash_is_finished_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), None).unwrap();
        wal.append(&rows(1..=5, 10)).unwrap();
        drop(wal);
        // Purged up to 100 was recorded, then the crash came before any segment was deleted: the one
        // segment holds only purged records and must not be appended to.
        let (mut wal, kept) = Wal::open(dir.path(), Some(100)).unwrap();
        assert!(kept.is_empty());
        wal.append(&[(101, b"next".to_vec())]).unwrap();
        drop(wal);
        let (_, kept) = Wal::open(dir.path(), Some(100)).unwrap();
        assert_eq!(kept, vec![(101, b"next".to_vec())]);
    }

    #[test]
    fn a_missing_segment_is_damage_and_refused() {
        let (dir, wal) = twenty_records_in_small_segments();
        drop(wal);
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        std::fs::remove_file(&files[1]).unwrap();
        let err = Wal::open_sized(dir.path(), None, SMALL)
            .err()
            .expect("a log with a hole is refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("damaged"), "{err}");
    }

    #[test]
    fn an_append_that_does_not_follow_is_refused_and_a_record_out_of_order_on_disk_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), None).unwrap();
        wal.append(&rows(1..=2, 10)).unwrap();
        let err = wal.append(&rows(4..=4, 10)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        drop(wal);
        let (_, kept) = Wal::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&kept), vec![1, 2]);

        // A whole record 4 right behind record 2 (as no append writes it) is damage, not a torn tail.
        let path = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
        let payload = b"out of order";
        let mut record = Vec::new();
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc(4, payload).to_le_bytes());
        record.extend_from_slice(&4u64.to_le_bytes());
        record.extend_from_slice(payload);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&record, 2 * (HEADER + 10)).unwrap();
        drop(file);
        let err = Wal::open(dir.path(), None)
            .err()
            .expect("a record out of order is refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("entry 4 follows entry 2"), "{err}");
    }
}
