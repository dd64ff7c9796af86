//! The segment store: WAL on local disk in PostgreSQL's own format, with crash recovery.
//!
//! Layout of a data directory:
//! - `walrelay.state`: the store's identity (system identifier, segment size), see `state.rs`;
//! - `wal/`: segment files named as in `pg_wal` (`XLogFileName`), exactly one segment long once
//!   complete; the segment being written is `NAME.partial` and is as long as what was written,
//!   or a whole segment with zeros past it when it was written into a removed segment's file
//!   that was kept for reuse (`NAME.reuse`, see `reuse.rs`); segments that filled since the
//!   last flush stay `.partial` until it completes them. Timeline history files
//!   `%08X.history` sit beside them.
//!
//! This is the layout `pg_receivewal` produces (PROTOCOL.md §5.5–5.6), so `pg_waldump` and
//! `restore_command = 'cp …/%f %p'` work on `wal/`. Directories are created 0700 and files
//! 0600, like `pg_dir_create_mode`/`pg_file_create_mode`.
//!
//! Durability is explicit: bytes are written by [`WalStore::append`], and only [`WalStore::flush`]
//! (fdatasync, plus an fsync of the directory after a file was created or renamed) makes them
//! durable and returns the new durable end. A flush may also be split in three
//! ([`WalStore::begin_flush`], [`PendingFlush::run`] on another thread while appends go on,
//! [`WalStore::finish_flush`]): it then makes durable what was written when it began. Every WAL
//! byte is checked by a [`WalValidator`] before it is written, and on open the store finds the end
//! of valid WAL again (see `recovery.rs`), so it survives `kill -9` and power loss at any moment.

mod error;
mod files;
#[cfg(test)]
pub(crate) mod fixture;
mod fsutil;
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
mod layout;
mod lock;
mod reader;
mod recovery;
mod reuse;
mod state;
mod upstream_state;
mod writer;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::types::{Lsn, SystemId, TimelineId, WalSegmentSize};
use crate::wal::WalValidator;

pub use error::StoreError;
pub use files::SegmentRemoval;
pub use lock::{DataDirLock, LOCK_FILE};
pub use reader::{FileSpan, SegmentReader};
pub use reuse::SegmentPins;
pub use upstream_state::{UPSTREAM_STATE_FILE, load_upstream_info, save_upstream_info};

use error::io_err;
use reuse::ReusePool;
pub use writer::PendingFlush;
use writer::{Mark, Tail};

/// The directory inside the data directory that holds segment and history files.
const WAL_DIR: &str = "wal";

/// The cluster a store belongs to: WAL of any other system or segment size is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreIdentity {
    /// The system identifier (`IDENTIFY_SYSTEM`'s `systemid`, `xlp_sysid`).
    pub system_id: SystemId,
    /// The WAL segment size (`SHOW wal_segment_size`, `xlp_seg_size`).
    pub segment_size: WalSegmentSize,
}

/// Where the stored WAL ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreEnd {
    /// The timeline being written.
    pub timeline: TimelineId,
    /// The durable end: every byte below it is on disk.
    pub durable: Lsn,
    /// The end of the last complete, CRC-verified record at or below `durable`. It is below
    /// `durable` while a record is still incomplete; only this much is known to survive a crash
    /// as valid WAL.
    pub valid: Lsn,
}

/// A directory of WAL segments being appended to; see the module documentation.
pub struct WalStore {
    data_dir: PathBuf,
    wal_dir: PathBuf,
    identity: Option<StoreIdentity>,
    tail: Option<Tail>,
    oldest: Option<Lsn>,
    /// Removed segment files kept for reuse.
    pool: ReusePool,
}

impl WalStore {
    /// Opens (creating if missing) `data_dir` and `data_dir/wal`, reads the state file, and
    /// when an identity is recorded recovers the end of valid WAL.
    ///
    /// # Errors
    /// An unreadable or foreign state file, an I/O error, or a WAL directory recovery cannot
    /// make sense of (a corrupt complete segment, contradictory files); see `recovery.rs`.
    pub fn open(data_dir: &Path) -> Result<WalStore, StoreError> {
        let wal_dir = data_dir.join(WAL_DIR);
        fsutil::create_dir(&wal_dir)?;
        reuse::remove_leftovers(&wal_dir)?;
        let stale = data_dir.join(format!("{}.tmp", state::STATE_FILE));
        match fs::remove_file(&stale) {
            Ok(()) => warn!(file = %stale.display(), "removed leftover temporary file"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &stale)(e)),
        }
        let identity = state::read(data_dir)?;
        let mut store = WalStore {
            data_dir: data_dir.to_path_buf(),
            pool: ReusePool::new(wal_dir.clone()),
            wal_dir,
            identity,
            tail: None,
            oldest: None,
        };
        if let Some(id) = identity {
            store.recover(id)?;
        }
        Ok(store)
    }

    fn recover(&mut self, id: StoreIdentity) -> Result<(), StoreError> {
        if let Some(r) = recovery::recover(&self.wal_dir, id)? {
            let at = Mark {
                end: r.end,
                validator: r.validator,
            };
            let (dir, pool) = (self.wal_dir.clone(), self.pool.clone());
            self.tail = Some(Tail::new(dir, pool, id.segment_size, r.timeline, at));
            self.oldest = Some(r.oldest);
        }
        Ok(())
    }

    /// The recorded identity, or `None` before [`WalStore::initialize`].
    pub fn identity(&self) -> Option<StoreIdentity> {
        self.identity
    }

    /// Records the identity durably on first use; a store that already has this identity is
    /// left as it is.
    ///
    /// # Errors
    /// [`StoreError::IdentityMismatch`] (nothing written) if another identity is recorded; I/O
    /// and recovery errors as for [`WalStore::open`].
    pub fn initialize(&mut self, id: StoreIdentity) -> Result<(), StoreError> {
        match self.identity {
            Some(stored) if stored == id => Ok(()),
            Some(stored) => Err(StoreError::IdentityMismatch {
                stored,
                requested: id,
            }),
            None => {
                state::write(&self.data_dir, id)?;
                let parent = self.data_dir.parent().filter(|p| !p.as_os_str().is_empty());
                fsutil::fsync_dir(parent.unwrap_or(Path::new(".")))?;
                self.identity = Some(id);
                self.recover(id)
            }
        }
    }

    /// Where the stored WAL ends: `None` while the store holds no WAL.
    pub fn end(&self) -> Option<StoreEnd> {
        self.tail.as_ref().map(|t| StoreEnd {
            timeline: t.timeline(),
            durable: t.durable().end,
            valid: t.durable().validator.valid_end(),
        })
    }

    /// The validator state at the durable end; clone it to continue validating the stream.
    pub fn validator(&self) -> Option<&WalValidator> {
        self.tail.as_ref().map(|t| &t.durable().validator)
    }

    /// The end of what was appended, durable or not.
    pub fn write_end(&self) -> Option<Lsn> {
        self.tail.as_ref().map(|t| t.written().end)
    }

    /// The end of what the last [`WalStore::flush`] (or recovery) made durable.
    pub fn durable_end(&self) -> Option<Lsn> {
        self.tail.as_ref().map(|t| t.durable().end)
    }

    /// The timeline being written.
    pub fn timeline(&self) -> Option<TimelineId> {
        self.tail.as_ref().map(Tail::timeline)
    }

    /// Starts an empty store at `start`, a segment start, on `timeline`. No file is created
    /// before the first append.
    ///
    /// # Errors
    /// [`StoreError::NotInitialized`], [`StoreError::AlreadyStarted`] if the store holds WAL,
    /// [`StoreError::NotSegmentStart`].
    pub fn start_at(&mut self, timeline: TimelineId, start: Lsn) -> Result<(), StoreError> {
        if let Some(t) = &self.tail {
            return Err(StoreError::AlreadyStarted {
                timeline: t.timeline(),
                end: t.written().end,
            });
        }
        self.tail = Some(self.new_tail(timeline, start)?);
        self.oldest = Some(start);
        Ok(())
    }

    /// Continues on a newer timeline from `start`, a segment start at or below the write end:
    /// what was written is flushed, later appends go to files of `timeline` (the first one
    /// starting at offset 0, as `pg_receivewal` does, and created at once, durably), and the
    /// old timeline's files stay as they are, also where they hold WAL past `start` that the
    /// new timeline does not share.
    ///
    /// # Errors
    /// [`StoreError::NotStarted`], [`StoreError::BadTimeline`] unless `timeline` is newer,
    /// [`StoreError::Discontinuous`] if `start` is past the write end,
    /// [`StoreError::NotSegmentStart`], and the errors of [`WalStore::flush`].
    pub fn switch_timeline(&mut self, timeline: TimelineId, start: Lsn) -> Result<(), StoreError> {
        let tail = self.tail.as_mut().ok_or(StoreError::NotStarted)?;
        if timeline <= tail.timeline() {
            let reason = "not newer than the current timeline";
            return Err(StoreError::BadTimeline { timeline, reason });
        }
        let end = tail.written().end;
        if start > end {
            return Err(StoreError::Discontinuous {
                expected: end,
                got: start,
            });
        }
        let next = self.new_tail(timeline, start)?;
        let tail = self.tail.as_mut().ok_or(StoreError::NotStarted)?;
        tail.flush()?;
        *tail = next;
        // The new timeline's first file says on disk that the old timeline ends here: after a
        // crash, recovery resumes on the new timeline, never on the old one's abandoned tail.
        tail.create_file()?;
        self.oldest = Some(self.oldest.map_or(start, |o| o.min(start)));
        Ok(())
    }

    /// A tail with nothing written yet at `start` on `timeline`.
    fn new_tail(&self, timeline: TimelineId, start: Lsn) -> Result<Tail, StoreError> {
        let id = self.identity.ok_or(StoreError::NotInitialized)?;
        let size = id.segment_size;
        if size.segment_start(start) != start {
            return Err(StoreError::NotSegmentStart { lsn: start, size });
        }
        let mut validator = WalValidator::new(start, recovery::check_config(id))
            .map_err(|source| StoreError::InvalidWal { lsn: start, source })?;
        validator.set_max_timeline(timeline);
        let at = Mark {
            end: start,
            validator,
        };
        let (dir, pool) = (self.wal_dir.clone(), self.pool.clone());
        Ok(Tail::new(dir, pool, size, timeline, at))
    }

    /// Appends WAL that starts exactly at the write end, splitting it across segments. When a
    /// segment fills it is set aside, still `.partial`, for the next flush to complete
    /// (fdatasync it, rename it to its complete name, fsync the directory); the next segment's
    /// `.partial` is created by the first byte for it.
    ///
    /// The bytes are validated first: invalid WAL, a gap or an overlap writes nothing. An I/O
    /// error (such as a full disk, see [`StoreError::is_disk_full`]) may leave the share of
    /// earlier segments written; [`WalStore::write_end`] says where to resend from.
    ///
    /// # Errors
    /// [`StoreError::NotStarted`], [`StoreError::Discontinuous`], [`StoreError::InvalidWal`],
    /// [`StoreError::LsnOverflow`], [`StoreError::Io`].
    pub fn append(&mut self, start: Lsn, data: &[u8]) -> Result<(), StoreError> {
        self.tail
            .as_mut()
            .ok_or(StoreError::NotStarted)?
            .append(start, data)
    }

    /// fdatasyncs what was appended (and the directory, if a file was created or renamed since
    /// the last flush) and returns the new durable end. Nothing is durable before this returns.
    ///
    /// # Errors
    /// [`StoreError::NotStarted`] or [`StoreError::Io`]. After a failed fdatasync (or directory
    /// fsync) the kernel may have dropped the unsynced bytes, so the store forgets them: the
    /// write end falls back to the last position known to be on disk and the caller resends
    /// from there.
    pub fn flush(&mut self) -> Result<Lsn, StoreError> {
        self.tail.as_mut().ok_or(StoreError::NotStarted)?.flush()
    }

    /// Begins a [`WalStore::flush`] whose fdatasync [`PendingFlush::run`] does on any thread,
    /// while appends go on, and which also completes the segments that filled since the last
    /// flush; [`WalStore::finish_flush`] then takes its outcome.
    ///
    /// # Errors
    /// [`StoreError::NotStarted`] or [`StoreError::Io`], as [`WalStore::flush`].
    pub fn begin_flush(&mut self) -> Result<PendingFlush, StoreError> {
        self.tail
            .as_mut()
            .ok_or(StoreError::NotStarted)?
            .begin_flush()
    }

    /// Takes the outcome of a flush begun by [`WalStore::begin_flush`] and returns the durable
    /// end: on success, the write end when it began. A failure is handled as by
    /// [`WalStore::flush`]; a flush begun before a failed flush or fdatasync rolled the store
    /// back, or before the timeline changed, changes nothing. Flushes pending side by side
    /// must be finished in the order they were begun.
    ///
    /// # Errors
    /// `outcome`'s error, or [`StoreError::NotStarted`].
    pub fn finish_flush(
        &mut self,
        pending: PendingFlush,
        outcome: Result<(), StoreError>,
    ) -> Result<Lsn, StoreError> {
        self.tail
            .as_mut()
            .ok_or(StoreError::NotStarted)?
            .finish_flush(pending, outcome)
    }

    /// Cuts the segment being written back to the last position an fdatasync covered,
    /// dropping whatever lies past it. To be called after a failure, before the directory is
    /// opened again: recovery reads through the page cache, which may still show bytes the
    /// kernel failed to write.
    ///
    /// # Errors
    /// [`StoreError::Io`] if the file cannot be cut; the store must not be opened again then.
    pub fn discard_unsynced(&mut self) -> Result<(), StoreError> {
        match self.tail.as_mut() {
            Some(tail) => tail.discard_unsynced(),
            None => Ok(()),
        }
    }

    /// Advises the kernel that the durable WAL of the current timeline below `lsn` will not be
    /// read again soon, so the page cache may let go of it (`POSIX_FADV_DONTNEED`, whole pages
    /// only); the next call goes on from where this one stopped. Readers that still want it
    /// read it from disk. Nothing past the durable end is touched.
    pub fn release_cache_below(&mut self, lsn: Lsn) {
        if let Some(tail) = self.tail.as_mut() {
            tail.release_cache_below(lsn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{self, bytes, name, start, tli};
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn identity_is_recorded_once() {
        let t = tempfile::TempDir::new().unwrap();
        let dir = t.path().join("data");
        let mut store = WalStore::open(&dir).unwrap();
        assert_eq!(store.identity(), None);
        assert_eq!(store.end(), None);
        store.initialize(fixture::id()).unwrap();
        store.initialize(fixture::id()).unwrap();
        let state = fs::read(dir.join(state::STATE_FILE)).unwrap();
        let other = StoreIdentity {
            system_id: SystemId(fixture::id().system_id.0 + 1),
            ..fixture::id()
        };
        let err = store.initialize(other).unwrap_err();
        assert!(matches!(err, StoreError::IdentityMismatch { .. }), "{err}");
        assert!(
            err.to_string().contains(&other.system_id.to_string()),
            "{err}"
        );
        let bigger = StoreIdentity {
            segment_size: WalSegmentSize::DEFAULT,
            ..fixture::id()
        };
        assert!(store.initialize(bigger).is_err());
        assert_eq!(fs::read(dir.join(state::STATE_FILE)).unwrap(), state);
        drop(store);
        let store = WalStore::open(&dir).unwrap();
        assert_eq!(store.identity(), Some(fixture::id()));
    }

    #[test]
    fn a_damaged_state_file_is_an_error() {
        let t = tempfile::TempDir::new().unwrap();
        drop(fixture::empty_store(t.path()));
        let path = t.path().join(state::STATE_FILE);
        let mut b = fs::read(&path).unwrap();
        b[30] ^= 1;
        fs::write(&path, b).unwrap();
        let err = WalStore::open(t.path()).err().unwrap();
        assert!(matches!(err, StoreError::BadStateFile { .. }), "{err}");
    }

    #[test]
    fn everything_is_private() {
        let t = tempfile::TempDir::new().unwrap();
        let dir = t.path().join("data");
        let mut store = fixture::store_upto(&dir, Lsn(0x80_2000), 1 << 20);
        store
            .write_history(tli(2), b"1\t0/800000\tno recovery target specified\n")
            .unwrap();
        let wal = dir.join(WAL_DIR);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&wal), 0o700);
        for f in [
            dir.join(state::STATE_FILE),
            wal.join(name(1, 7)),
            wal.join(format!("{}.partial", name(1, 8))),
            wal.join("00000002.history"),
        ] {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
    }

    #[test]
    fn switches_timeline_keeping_the_old_files() {
        let t = tempfile::TempDir::new().unwrap();
        let at = Lsn(0x90_4000);
        let mut store = fixture::store_upto(t.path(), at, 1 << 20);
        store.append(at, bytes(at, Lsn(0x90_6000))).unwrap();
        let seg9 = Lsn(0x90_0000);
        for (tl, from, want) in [
            (1, seg9, "not newer"),
            (2, Lsn(0x90_8000), "does not continue"),
            (2, Lsn(0x90_2000), "not the start"),
        ] {
            let err = store.switch_timeline(tli(tl), from).unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
        }
        store.switch_timeline(tli(2), seg9).unwrap();
        assert_eq!(store.timeline(), Some(tli(2)));
        assert_eq!(store.end().unwrap().durable, seg9);
        // The old timeline's partial stays, flushed, with everything written to it.
        let old = t.path().join("wal").join(format!("{}.partial", name(1, 9)));
        assert_eq!(fs::read(&old).unwrap(), bytes(seg9, Lsn(0x90_6000)));
        fixture::append_range(&mut store, seg9, Lsn(0xA0_1000), 100_000);
        let new = t
            .path()
            .join("wal")
            .join(format!("{}.partial", name(2, 10)));
        assert_eq!(
            fs::read(&new).unwrap(),
            bytes(Lsn(0xA0_0000), Lsn(0xA0_1000))
        );
        assert_eq!(
            fs::read(t.path().join("wal").join(name(2, 9))).unwrap(),
            bytes(seg9, Lsn(0xA0_0000))
        );
        assert_eq!(store.oldest(), Some(start()));
        drop(store);
        let store = WalStore::open(t.path()).unwrap();
        assert_eq!(store.timeline(), Some(tli(2)));
        // All of A's first 4 KiB continues the record that started on timeline 1, which is
        // not stored on timeline 2: nothing there can be verified.
        assert_eq!(store.end().unwrap().durable, Lsn(0xA0_0000));
    }

    #[test]
    fn a_fork_below_the_end_survives_a_crash_before_any_new_wal() {
        let t = tempfile::TempDir::new().unwrap();
        let end = Lsn(0xB0_6000);
        let mut store = fixture::store_upto(t.path(), end, 1 << 20);
        let seg9 = Lsn(0x90_0000);
        store.switch_timeline(tli(2), seg9).unwrap();
        let wal = t.path().join("wal");
        let first = wal.join(format!("{}.partial", name(2, 9)));
        assert_eq!(fs::read(&first).unwrap(), b"");
        // The old timeline keeps its files, the abandoned tail included.
        assert_eq!(fs::read(wal.join(name(1, 10))).unwrap().len(), 1 << 20);
        drop(store);
        let store = WalStore::open(t.path()).unwrap();
        assert_eq!(store.timeline(), Some(tli(2)));
        assert_eq!(store.end().unwrap().durable, seg9);
        assert!(wal.join(format!("{}.partial", name(1, 11))).exists());
    }
}
