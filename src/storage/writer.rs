//! The write side of the store: appending WAL to the `.partial` segment, completing segments
//! and making them durable.
//!
//! It follows `pg_receivewal` (`receivelog.c`, `walmethods.c`): segments are written strictly in
//! order, a full segment is fdatasync'd and only then renamed from `NAME.partial` to `NAME`, so a
//! short file never carries a complete name. Unlike `pg_receivewal` a new partial is not
//! pre-padded with zeros: its length is the written length. One written into a removed file
//! the store kept for reuse (`reuse.rs`) is a whole segment long, zeros past what was written,
//! which recovery reads as the end of the WAL, as it reads a torn tail. A
//! segment that fills is set aside and completed (fdatasync'd, renamed, the directory fsync'd)
//! by the next flush, which may run on another thread, while the writer goes on with the next
//! segment; so full `.partial` segments may sit below the one being written until then, and
//! recovery completes them if their WAL checks out.
//!
//! Three positions are tracked, each with the validator state there: the *write* end (bytes
//! handed to the kernel), the *synced* end (bytes known to be on disk: after a segment's
//! fdatasync or a flush) and the *durable* end (what the last finished flush returned). After a
//! failed fdatasync the kernel may have dropped the dirty pages, so a retry proves nothing
//! (PostgreSQL PANICs there); the store instead cuts the file back to the synced end and lets
//! the caller resend from there.
//!
//! Once WAL is durable and every reader has it, its pages need not stay in the page cache:
//! [`Tail::release_cache_below`] tells the kernel so (`POSIX_FADV_DONTNEED`), as PostgreSQL's
//! `XLogFileClose` does when nothing reads WAL back. The next writes then reuse those pages
//! instead of taking more memory, and the relay's WAL does not push other files out of the
//! cache.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::types::{Lsn, SegmentName, SegmentNo, TimelineId, WalSegmentSize};
use crate::wal::WalValidator;

use super::error::{StoreError, io_err};
use super::fsutil;
use super::layout;
use super::reuse::ReusePool;

/// A position in the stored WAL with the validator state there.
#[derive(Clone)]
pub(crate) struct Mark {
    /// The position.
    pub end: Lsn,
    /// The validator, `position() == end`.
    pub validator: WalValidator,
}

/// The `.partial` segment file currently open for writing.
struct OpenSegment {
    segno: SegmentNo,
    path: PathBuf,
    file: File,
}

/// The end of the stored WAL on the current timeline, and the file being written.
pub(crate) struct Tail {
    dir: PathBuf,
    /// Removed segment files a new segment may be written into.
    pool: ReusePool,
    size: WalSegmentSize,
    timeline: TimelineId,
    written: Mark,
    synced: Mark,
    durable: Mark,
    open: Option<OpenSegment>,
    /// Full segments set aside, oldest first: still `.partial` until a flush completes them,
    /// and kept here until a flush that did has finished, so that each flush begun meanwhile
    /// completes them too.
    completing: Vec<SegmentNo>,
    /// Files created or renamed in `dir`, counted; the directory needs an fsync while this
    /// is ahead of `dir_synced`.
    dir_changes: u64,
    /// `dir_changes` as last made durable: counted when a directory fsync that succeeded
    /// began, or when a flush that fsync'd the directory and succeeded was begun.
    dir_synced: u64,
    /// Where the WAL whose cache was not yet released starts.
    cached_from: Lsn,
    /// Names this tail and what it wrote: a new one after a roll back, so that a flush begun
    /// before it does not count.
    epoch: u64,
}

/// Where [`Tail::epoch`]s come from; never reused within the process.
static EPOCHS: AtomicU64 = AtomicU64::new(0);

fn next_epoch() -> u64 {
    EPOCHS.fetch_add(1, Ordering::Relaxed)
}

/// A full segment to complete: fdatasync it, then rename it from `partial` to `complete`.
struct Completion {
    file: File,
    partial: PathBuf,
    complete: PathBuf,
}

/// A flush begun by [`WalStore::begin_flush`](super::WalStore::begin_flush): the completion of
/// the full segments set aside that no finished flush completed, the fdatasync of the segment
/// being written and the fsync of the directory, which [`PendingFlush::run`] does on any thread
/// while appends go on, and the position that is durable once all succeeded.
pub struct PendingFlush {
    /// Full segments to complete, oldest first, each opened for the flush alone, as `file`.
    complete: Vec<Completion>,
    /// The segment file to fdatasync, opened read-only for the flush alone (not a duplicate of
    /// the writer's handle), and its path for errors.
    file: Option<(File, PathBuf)>,
    /// The directory to fsync, as a file was created or renamed in it, and the tail's count of
    /// such changes when the flush began.
    dir: Option<(PathBuf, u64)>,
    /// The write end when the flush began.
    mark: Mark,
    /// The [`Tail::epoch`] it was begun in.
    epoch: u64,
}

impl std::fmt::Debug for PendingFlush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingFlush")
            .field(
                "complete",
                &self.complete.iter().map(|c| &c.partial).collect::<Vec<_>>(),
            )
            .field("file", &self.file.as_ref().map(|(_, path)| path))
            .field("dir", &self.dir.as_ref().map(|(dir, _)| dir))
            .field("end", &self.mark.end)
            .finish()
    }
}

impl PendingFlush {
    /// Completes the full segments (each fdatasync'd before its rename), fdatasyncs the
    /// segment file and fsyncs the directory, as far as each needs it.
    ///
    /// # Errors
    /// [`StoreError::Io`]; hand it to
    /// [`WalStore::finish_flush`](super::WalStore::finish_flush).
    pub fn run(&self) -> Result<(), StoreError> {
        for c in &self.complete {
            c.file
                .sync_data()
                .map_err(io_err("fdatasync", &c.partial))?;
            match fs::rename(&c.partial, &c.complete) {
                Ok(()) => {}
                // A flush begun before this one, and not finished, renamed it.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && c.complete.exists() => {}
                Err(e) => return Err(io_err("rename", &c.partial)(e)),
            }
        }
        if let Some((file, path)) = &self.file {
            file.sync_data().map_err(io_err("fdatasync", path))?;
        }
        if let Some((dir, _)) = &self.dir {
            fsutil::fsync_dir(dir)?;
        }
        Ok(())
    }

    /// The position that is durable once the flush succeeded.
    pub fn end(&self) -> Lsn {
        self.mark.end
    }
}

impl Tail {
    /// A tail whose every byte below `at.end` is already durable.
    pub(crate) fn new(
        dir: PathBuf,
        pool: ReusePool,
        size: WalSegmentSize,
        timeline: TimelineId,
        at: Mark,
    ) -> Tail {
        Tail {
            dir,
            pool,
            size,
            timeline,
            cached_from: at.end,
            written: at.clone(),
            synced: at.clone(),
            durable: at,
            open: None,
            completing: Vec::new(),
            dir_changes: 0,
            dir_synced: 0,
            epoch: next_epoch(),
        }
    }

    /// The timeline being written.
    pub(crate) fn timeline(&self) -> TimelineId {
        self.timeline
    }

    /// The write end and the validator there.
    pub(crate) fn written(&self) -> &Mark {
        &self.written
    }

    /// The durable end and the validator there.
    pub(crate) fn durable(&self) -> &Mark {
        &self.durable
    }

    /// The segment holding the last written byte, or `None` before the first byte of segment 1.
    pub(crate) fn last_written_segment(&self) -> Option<SegmentNo> {
        self.written
            .end
            .checked_sub(1)
            .map(|l| self.size.segment_of(l))
    }

    /// Validates `data` (which must start at the write end), then writes it segment by segment.
    ///
    /// Invalid WAL or a gap writes nothing. An I/O error leaves every earlier segment's share
    /// written and the write end after it; the caller resends from [`Tail::written`].
    pub(crate) fn append(&mut self, start: Lsn, data: &[u8]) -> Result<(), StoreError> {
        if start != self.written.end {
            return Err(StoreError::Discontinuous {
                expected: self.written.end,
                got: start,
            });
        }
        start
            .checked_add(data.len() as u64)
            .ok_or(StoreError::LsnOverflow(start))?;
        let mut validator = self.written.validator.clone();
        let mut pieces = Vec::new();
        let mut rest = data;
        let mut at = start;
        while !rest.is_empty() {
            let room = self.size.bytes_u64() - u64::from(self.size.offset_in_segment(at));
            let (piece, tail) = rest.split_at(rest.len().min(room as usize));
            validator
                .feed(piece)
                .map_err(|source| StoreError::InvalidWal { lsn: start, source })?;
            at = Lsn(at.0 + piece.len() as u64);
            pieces.push((
                piece,
                Mark {
                    end: at,
                    validator: validator.clone(),
                },
            ));
            rest = tail;
        }
        pieces
            .into_iter()
            .try_for_each(|(piece, after)| self.write_piece(piece, after))
    }

    /// Writes bytes that lie within one segment, setting the segment aside if they fill it.
    fn write_piece(&mut self, data: &[u8], after: Mark) -> Result<(), StoreError> {
        self.set_aside_full_segment();
        let offset = u64::from(self.size.offset_in_segment(self.written.end));
        let seg = self.current_segment()?;
        if let Err(e) = seg.file.write_all_at(data, offset) {
            let err = io_err("write", &seg.path)(e);
            // Reopened, and cut back to the write end, by the next call.
            self.open = None;
            return Err(err);
        }
        self.written = after;
        self.set_aside_full_segment();
        Ok(())
    }

    /// The `.partial` file the write end lies in, opened (or created) with its length set to
    /// the write end's offset, so bytes of a failed write never linger in it; or, for a new
    /// segment, a removed file from the pool, a whole segment of zeros.
    fn current_segment(&mut self) -> Result<&mut OpenSegment, StoreError> {
        let segno = self.size.segment_of(self.written.end);
        let offset = u64::from(self.size.offset_in_segment(self.written.end));
        if self.open.as_ref().is_some_and(|s| s.segno != segno) {
            self.open = None;
        }
        if self.open.is_none() {
            let name = SegmentName {
                timeline: self.timeline,
                segno,
            };
            let path = layout::segment_path(&self.dir, name, self.size, true);
            let reused = offset == 0 && self.pool.install(&path);
            let file = fsutil::open_rw(&path)?;
            let len = file.metadata().map_err(io_err("stat", &path))?.len();
            if len < offset {
                let reason = "shorter than the WAL stored in it";
                return Err(StoreError::Layout { path, reason });
            }
            if len > offset && !reused {
                file.set_len(offset).map_err(io_err("truncate", &path))?;
            }
            // The directory entry may be new, or not yet durable after a crash.
            self.dir_changes += 1;
            self.open = Some(OpenSegment { segno, path, file });
        }
        self.open.as_mut().ok_or(StoreError::NotStarted)
    }

    /// Creates the file the next byte goes to, if it does not exist, and makes its name
    /// durable.
    pub(crate) fn create_file(&mut self) -> Result<(), StoreError> {
        self.current_segment()?;
        self.sync_dir()
    }

    /// If the open segment is full, sets it aside for the next flush to complete; its rename
    /// counts as a change of the directory from now.
    fn set_aside_full_segment(&mut self) {
        let Some(seg) = &self.open else {
            return;
        };
        let name = SegmentName {
            timeline: self.timeline,
            segno: seg.segno,
        };
        if layout::segment_end(name, self.size) != Some(self.written.end) {
            return;
        }
        if let Some(seg) = self.open.take() {
            self.completing.push(seg.segno);
            self.dir_changes += 1;
        }
    }

    /// A full segment set aside, opened for a flush alone: by its `.partial` name, or by its
    /// complete name if a flush not yet finished has renamed it.
    fn completion(&self, segno: SegmentNo) -> Result<Completion, StoreError> {
        let name = SegmentName {
            timeline: self.timeline,
            segno,
        };
        let partial = layout::segment_path(&self.dir, name, self.size, true);
        let complete = layout::segment_path(&self.dir, name, self.size, false);
        let file = match File::open(&partial) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                File::open(&complete).map_err(io_err("open", &complete))?
            }
            opened => opened.map_err(io_err("open", &partial))?,
        };
        Ok(Completion {
            file,
            partial,
            complete,
        })
    }

    /// fsyncs the directory; what was created or renamed in it before is then durable.
    fn sync_dir(&mut self) -> Result<(), StoreError> {
        let changes = self.dir_changes;
        fsutil::fsync_dir(&self.dir)?;
        self.dir_synced = self.dir_synced.max(changes);
        Ok(())
    }

    /// Makes everything written durable and returns the new durable end.
    ///
    /// After a failed fdatasync or directory fsync the write end falls back to the last synced
    /// position.
    pub(crate) fn flush(&mut self) -> Result<Lsn, StoreError> {
        let pending = self.begin_flush()?;
        let outcome = pending.run();
        self.finish_flush(pending, outcome)
    }

    /// Begins a flush of everything written so far, left to [`PendingFlush::run`]: the full
    /// segments set aside that no finished flush completed, the segment being written and the
    /// directory. Appends may go on before [`Tail::finish_flush`] takes its outcome.
    ///
    /// The flush fdatasyncs each file through a file description of its own, opened here,
    /// never a duplicate of the writer's or of another flush's: the kernel reports a failed
    /// writeback once to each open file description, so an error one flush sees is still seen
    /// by the next flush of that file, and the other way round.
    pub(crate) fn begin_flush(&mut self) -> Result<PendingFlush, StoreError> {
        self.set_aside_full_segment();
        let complete = self
            .completing
            .iter()
            .map(|&segno| self.completion(segno))
            .collect::<Result<_, _>>()?;
        // At a segment boundary, what is unsynced all lies in the segments set aside.
        let in_open_segment = self.size.offset_in_segment(self.written.end) > 0;
        let file = if self.written.end > self.synced.end && in_open_segment {
            let path = self.current_segment()?.path.clone();
            let own = File::open(&path).map_err(io_err("open", &path))?;
            Some((own, path))
        } else {
            None
        };
        let dir_changes = self.dir_changes;
        let dir = (dir_changes > self.dir_synced).then(|| self.dir.clone());
        Ok(PendingFlush {
            complete,
            file,
            dir: dir.map(|d| (d, dir_changes)),
            mark: self.written.clone(),
            epoch: self.epoch,
        })
    }

    /// Takes the outcome of a flush begun by [`Tail::begin_flush`] and returns the durable
    /// end: on success what was written when it began is durable. After a failure the kernel
    /// may have dropped the unsynced bytes, so the write end falls back to the last synced
    /// position and the file is cut back to it; the directory is fsync'd again by the next
    /// flush. A flush begun before a roll back changes nothing. Flushes may be pending side by
    /// side, each completing the segments and fsyncing the directory as far as no finished
    /// flush did; they must be finished in the order they were begun.
    pub(crate) fn finish_flush(
        &mut self,
        pending: PendingFlush,
        outcome: Result<(), StoreError>,
    ) -> Result<Lsn, StoreError> {
        if pending.epoch != self.epoch {
            return Ok(self.durable.end);
        }
        if let Err(e) = outcome {
            self.roll_back();
            return Err(e);
        }
        if let Some((_, changes)) = pending.dir {
            self.dir_synced = self.dir_synced.max(changes);
        }
        // Those wholly below the flush's end are complete now.
        let first_open = self.size.segment_of(pending.mark.end);
        self.completing.retain(|&segno| segno >= first_open);
        if pending.mark.end > self.synced.end {
            self.synced = pending.mark.clone();
        }
        if pending.mark.end > self.durable.end {
            self.durable = pending.mark;
        }
        Ok(self.durable.end)
    }

    /// Advises the kernel that the durable WAL below `lsn` will not be read again soon, so
    /// that the page cache may let go of its pages; whole pages only, and never a byte past the
    /// durable end. Advice that fails changes nothing, so it is not reported.
    pub(crate) fn release_cache_below(&mut self, lsn: Lsn) {
        let upto = lsn.min(self.durable.end);
        while self.cached_from < upto {
            let segno = self.size.segment_of(self.cached_from);
            let offset = u64::from(self.size.offset_in_segment(self.cached_from));
            let len =
                (self.size.bytes_u64() - offset).min(upto.saturating_distance(self.cached_from));
            self.advise_dont_need(segno, offset, len);
            self.cached_from = Lsn(self.cached_from.0 + len);
        }
    }

    /// `POSIX_FADV_DONTNEED` on `len` bytes of segment `segno` from `offset`: through the
    /// open file, or the file by its complete name, or else its `.partial` name.
    fn advise_dont_need(&self, segno: SegmentNo, offset: u64, len: u64) {
        let Some(len) = std::num::NonZeroU64::new(len) else {
            return;
        };
        let advise = |file: &File| {
            let _ = rustix::fs::fadvise(file, offset, Some(len), rustix::fs::Advice::DontNeed);
        };
        if let Some(seg) = self.open.as_ref().filter(|s| s.segno == segno) {
            advise(&seg.file);
            return;
        }
        let name = SegmentName {
            timeline: self.timeline,
            segno,
        };
        let opened = [false, true].into_iter().find_map(|partial| {
            File::open(layout::segment_path(&self.dir, name, self.size, partial)).ok()
        });
        if let Some(file) = opened {
            advise(&file);
        }
    }

    /// Cuts the file that holds the synced end back to it, dropping whatever lies past it
    /// (appended, or left by a write that failed halfway): what no successful fdatasync
    /// covered. The `.partial` files of later segments of this timeline (full ones set aside,
    /// and the one written after them) hold nothing a flush covered, and are removed. After a
    /// failure, before the store is opened again, so that its recovery, which reads through
    /// the page cache, cannot take such bytes for WAL on disk.
    pub(crate) fn discard_unsynced(&mut self) -> Result<(), StoreError> {
        self.open = None;
        self.completing.clear();
        self.written = self.synced.clone();
        self.epoch = next_epoch();
        let synced_in = self.size.segment_of(self.synced.end);
        let name = SegmentName {
            timeline: self.timeline,
            segno: synced_in,
        };
        let path = layout::segment_path(&self.dir, name, self.size, true);
        match fs::OpenOptions::new().write(true).open(&path) {
            Ok(file) => {
                let offset = u64::from(self.size.offset_in_segment(self.synced.end));
                file.set_len(offset).map_err(io_err("truncate", &path))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("open", &path)(e)),
        }
        let later = layout::list_segments(&self.dir, self.size)?
            .into_iter()
            .filter(|f| f.partial && f.name.timeline == self.timeline && f.name.segno > synced_in);
        for f in later {
            let path = layout::segment_path(&self.dir, f.name, self.size, true);
            match fs::remove_file(&path) {
                Ok(()) => self.dir_changes += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", &path)(e)),
            }
        }
        Ok(())
    }

    /// Forgets what was written after the synced end, and cuts the file back to it at once:
    /// after a failed fdatasync the kernel may have lost those bytes while the page cache still
    /// shows them, so whoever reads the file next (the recovery of a store opened again) must
    /// not find them ([`Tail::discard_unsynced`]). A cut that fails is made when this tail
    /// opens the file again, or by [`Tail::discard_unsynced`] before the store is opened anew.
    fn roll_back(&mut self) {
        let _ = self.discard_unsynced();
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{self, SEG, bytes, name, start};
    use super::super::{StoreError, WalStore};
    use crate::types::Lsn;
    use std::fs;
    use std::path::Path;

    /// A store durable up to `a` that holds `[a, b)` unsynced.
    fn with_unsynced(dir: &Path, a: Lsn, b: Lsn) -> WalStore {
        let mut store = fixture::store_upto(dir, a, 8192);
        store.append(a, bytes(a, b)).unwrap();
        store
    }

    /// The outcome of a flush whose `op` failed.
    fn injected(op: &'static str) -> Result<(), StoreError> {
        Err(StoreError::Io {
            op,
            path: "wal".into(),
            source: std::io::Error::other("injected"),
        })
    }

    fn wal_file(dir: &Path, file: &str) -> Vec<u8> {
        fs::read(dir.join("wal").join(file)).unwrap()
    }

    #[test]
    fn appends_across_segment_boundaries() {
        let t = tempfile::TempDir::new().unwrap();
        let mid = Lsn(start().0 + SEG + SEG / 2);
        let mut store = fixture::store_upto(t.path(), mid, 100_000);
        assert_eq!(
            wal_file(t.path(), &name(1, 7)),
            bytes(start(), Lsn(0x80_0000))
        );
        let partial = format!("{}.partial", name(1, 8));
        assert_eq!(wal_file(t.path(), &partial), bytes(Lsn(0x80_0000), mid));
        assert!(!t.path().join("wal").join(name(1, 8)).exists());
        // One append spanning two segment boundaries.
        let far = Lsn(mid.0 + 2 * SEG);
        store.append(mid, bytes(mid, far)).unwrap();
        assert_eq!(store.flush().unwrap(), far);
        fixture::assert_complete(t.path(), 7, 10);
        let partial = format!("{}.partial", name(1, 10));
        assert_eq!(wal_file(t.path(), &partial), bytes(Lsn(0xA0_0000), far));
        fixture::append_range(&mut store, far, fixture::end(), 128 * 1024);
        fixture::assert_complete(t.path(), 7, 12);
        let names = fs::read_dir(t.path().join("wal")).unwrap().count();
        assert_eq!(
            names, 5,
            "no partial is left once the last segment is complete"
        );
    }

    #[test]
    fn a_full_segment_is_set_aside_and_completed_by_the_next_flush() {
        let t = tempfile::TempDir::new().unwrap();
        let a = Lsn(0x7F_0000);
        let mut store = fixture::store_upto(t.path(), a, 8192);
        // Across two boundaries: segments 7 and 8 fill, and the append syncs neither.
        let b = Lsn(0x90_4000);
        store.append(a, bytes(a, b)).unwrap();
        assert_eq!(store.durable_end(), Some(a));
        for segno in [7, 8] {
            let partial = format!("{}.partial", name(1, segno));
            assert_eq!(wal_file(t.path(), &partial).len() as u64, SEG);
            assert!(!t.path().join("wal").join(name(1, segno)).exists());
        }
        let pending = store.begin_flush().unwrap();
        let set_aside: Vec<_> = pending.complete.iter().map(|c| c.partial.clone()).collect();
        assert_eq!(set_aside.len(), 2, "{pending:?}");
        assert!(set_aside[0].ends_with(format!("{}.partial", name(1, 7))));
        assert!(pending.file.is_some() && pending.dir.is_some());
        let outcome = pending.run();
        assert_eq!(store.finish_flush(pending, outcome).unwrap(), b);
        fixture::assert_complete(t.path(), 7, 9);
        let partials = fs::read_dir(t.path().join("wal"))
            .unwrap()
            .filter(|e| {
                let e = e.as_ref().unwrap();
                e.file_name().to_string_lossy().ends_with(".partial")
            })
            .count();
        assert_eq!(partials, 1, "only the segment being written");

        // A crash before the flush: the store opened again completes what checks out (the
        // end of the 3 MiB record is in segment A, small records follow).
        let t = tempfile::TempDir::new().unwrap();
        let (a, b) = (Lsn(0xA8_0000), Lsn(0xB0_4000));
        let mut store = fixture::store_upto(t.path(), a, 8192);
        store.append(a, bytes(a, b)).unwrap();
        drop(store);
        let store = WalStore::open(t.path()).unwrap();
        let end = fixture::valid_end_of(bytes(start(), b));
        assert!(end > Lsn(0xB0_0000));
        assert_eq!(store.end().unwrap().durable, end);
        fixture::assert_complete(t.path(), 7, 11);
    }

    #[test]
    fn only_flush_makes_wal_durable() {
        let t = tempfile::TempDir::new().unwrap();
        let mut store = fixture::store_upto(t.path(), Lsn(0x70_4000), 8192);
        let before = store.end().unwrap();
        assert_eq!(before.durable, Lsn(0x70_4000));
        let to = Lsn(0x80_2000);
        store
            .append(Lsn(0x70_4000), bytes(Lsn(0x70_4000), to))
            .unwrap();
        assert_eq!(store.write_end(), Some(to));
        assert_eq!(store.durable_end(), Some(Lsn(0x70_4000)));
        assert_eq!(store.end(), Some(before));
        assert_eq!(store.validator().unwrap().position(), Lsn(0x70_4000));
        assert_eq!(store.flush().unwrap(), to);
        let end = store.end().unwrap();
        assert_eq!(end.durable, to);
        // The 3 MiB record that started at 0/77D658 is still open.
        assert_eq!(end.valid, Lsn(0x77_D658));
        assert_eq!(store.validator().unwrap().valid_end(), end.valid);
        assert_eq!(store.flush().unwrap(), to);
    }

    #[test]
    fn a_flush_begun_makes_durable_what_was_written_when_it_began() {
        let t = tempfile::TempDir::new().unwrap();
        let (a, b) = (Lsn(0x70_4000), Lsn(0x72_0000));
        let mut store = with_unsynced(t.path(), a, b);
        let first = store.begin_flush().unwrap();
        assert_eq!(first.end(), b);
        // Appends go on while it runs, into the next segment too.
        let c = Lsn(0x81_0000);
        store.append(b, bytes(b, c)).unwrap();
        assert_eq!(
            store.durable_end(),
            Some(a),
            "nothing is durable before it is finished"
        );
        let outcome = first.run();
        assert_eq!(store.finish_flush(first, outcome).unwrap(), b);
        assert_eq!(store.durable_end(), Some(b));
        assert_eq!(store.write_end(), Some(c));
        // The segment the later appends completed was synced on its own; the rest of them
        // waits for the next flush.
        fixture::assert_complete(t.path(), 7, 7);
        let second = store.begin_flush().unwrap();
        assert_eq!(second.end(), c);
        let outcome = second.run();
        assert_eq!(store.finish_flush(second, outcome).unwrap(), c);
        assert_eq!(store.end().unwrap().durable, c);
        assert_eq!(store.flush().unwrap(), c);
        let partial = format!("{}.partial", name(1, 8));
        assert_eq!(wal_file(t.path(), &partial), bytes(Lsn(0x80_0000), c));
    }

    #[test]
    fn a_failed_flush_forgets_what_it_covered_and_voids_those_begun_before() {
        let t = tempfile::TempDir::new().unwrap();
        let (a, b) = (Lsn(0x70_4000), Lsn(0x72_0000));
        let mut store = with_unsynced(t.path(), a, b);
        let first = store.begin_flush().unwrap();
        let c = Lsn(0x74_0000);
        store.append(b, bytes(b, c)).unwrap();
        let second = store.begin_flush().unwrap();
        let failed = injected("fdatasync");
        assert!(store.finish_flush(first, failed).is_err());
        // The kernel may have dropped what was not synced: the write end falls back, and the
        // file is cut back at once, so that the recovery of a store opened on it next (as
        // after such a failure) does not find those bytes.
        assert_eq!(store.write_end(), Some(a));
        assert_eq!(store.durable_end(), Some(a));
        let partial = t.path().join("wal").join(format!("{}.partial", name(1, 7)));
        assert_eq!(fs::metadata(&partial).unwrap().len(), a.0 - start().0);
        // The flush begun before the failure counts for nothing, though it succeeds.
        let outcome = second.run();
        assert!(outcome.is_ok());
        assert_eq!(store.finish_flush(second, outcome).unwrap(), a);
        assert_eq!(store.durable_end(), Some(a));
        // Resent from the write end, the WAL is stored as it should be.
        store.append(a, bytes(a, c)).unwrap();
        assert_eq!(store.flush().unwrap(), c);
        assert_eq!(fs::read(&partial).unwrap(), bytes(start(), c));
    }

    #[test]
    fn what_no_fdatasync_covered_is_discarded_before_the_store_is_opened_again() {
        let t = tempfile::TempDir::new().unwrap();
        let (a, b) = (Lsn(0x70_4000), Lsn(0x72_0000));
        let mut store = with_unsynced(t.path(), a, b);
        // And bytes past the write end, as a write that failed halfway leaves them.
        let partial = t.path().join("wal").join(format!("{}.partial", name(1, 7)));
        let file = fs::OpenOptions::new().write(true).open(&partial).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, bytes(b, Lsn(b.0 + 8192)), b.0 - start().0)
            .unwrap();
        store.discard_unsynced().unwrap();
        assert_eq!(fs::metadata(&partial).unwrap().len(), a.0 - start().0);
        assert_eq!((store.write_end(), store.durable_end()), (Some(a), Some(a)));
        drop(store);
        let reopened = WalStore::open(t.path()).unwrap();
        assert!(reopened.write_end().unwrap() <= a);
        // Nothing to discard at a segment's end, where the next file does not exist yet.
        let t = tempfile::TempDir::new().unwrap();
        let mut store = fixture::store_upto(t.path(), Lsn(0x80_0000), 8192);
        store.discard_unsynced().unwrap();
        assert_eq!(store.write_end(), Some(Lsn(0x80_0000)));
        fixture::assert_complete(t.path(), 7, 8);
    }

    #[test]
    fn each_pending_flush_syncs_the_directory_until_a_finished_one_did() {
        let t = tempfile::TempDir::new().unwrap();
        let a = Lsn(0x7F_0000);
        let mut store = fixture::store_upto(t.path(), a, 8192);
        // Into the next segment: its file is new, its name not yet durable.
        let b = Lsn(0x81_0000);
        store.append(a, bytes(a, b)).unwrap();
        let first = store.begin_flush().unwrap();
        assert!(first.dir.is_some());
        let c = Lsn(0x82_0000);
        store.append(b, bytes(b, c)).unwrap();
        let second = store.begin_flush().unwrap();
        assert!(second.dir.is_some(), "the first has not finished yet");
        // Nor has it completed segment 7, which it set out to: the second completes it too.
        assert_eq!(first.complete.len(), 1);
        assert_eq!(second.complete.len(), 1, "{second:?}");
        let outcome = second.run();
        assert_eq!(store.finish_flush(second, outcome).unwrap(), c);
        fixture::assert_complete(t.path(), 7, 8);
        // The first, run late, finds the segment complete already; it changes nothing.
        let outcome = first.run();
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!(store.finish_flush(first, outcome).unwrap(), c);
        let third = store.begin_flush().unwrap();
        assert!(third.dir.is_none() && third.file.is_none() && third.complete.is_empty());
        // A failed directory fsync leaves the directory to the next flush.
        let d = Lsn(0x90_2000);
        store.append(c, bytes(c, d)).unwrap();
        let fourth = store.begin_flush().unwrap();
        assert!(fourth.dir.is_some());
        let failed = injected("fsync directory");
        assert!(store.finish_flush(fourth, failed).is_err());
        // Back to the end of the last flush that finished: the segment the append filled was
        // only set aside, for the flush that failed to complete.
        let synced = c;
        assert_eq!(store.write_end(), Some(synced));
        let filled = t.path().join("wal").join(format!("{}.partial", name(1, 8)));
        let len = fs::metadata(&filled).unwrap().len();
        assert_eq!(len, c.0 - 0x80_0000, "cut back at once");
        let next = t.path().join("wal").join(format!("{}.partial", name(1, 9)));
        assert!(!next.exists(), "a later segment holds nothing synced");
        let again = store.begin_flush().unwrap();
        assert!(again.dir.is_some() && again.file.is_none() && again.complete.is_empty());
        let outcome = again.run();
        assert_eq!(store.finish_flush(again, outcome).unwrap(), synced);
        store.append(synced, bytes(synced, d)).unwrap();
        assert_eq!(store.flush().unwrap(), d);
        assert!(store.begin_flush().unwrap().dir.is_none());
    }

    #[test]
    fn refuses_gaps_overlaps_and_invalid_wal() {
        let t = tempfile::TempDir::new().unwrap();
        let at = Lsn(0x80_4000);
        let mut store = fixture::store_upto(t.path(), at, 65536);
        let partial = format!("{}.partial", name(1, 8));
        let before = wal_file(t.path(), &partial);
        for start in [Lsn(at.0 + 1), Lsn(at.0 - 8), Lsn(0)] {
            let err = store
                .append(start, bytes(at, Lsn(at.0 + 8192)))
                .unwrap_err();
            assert!(matches!(err, StoreError::Discontinuous { .. }), "{err}");
        }
        // A damaged page header in the second segment of an append: nothing is written.
        let to = Lsn(0x90_8000);
        let mut damaged = bytes(at, to).to_vec();
        damaged[(0x90_6000 - at.0) as usize] ^= 0x40;
        let err = store.append(at, &damaged).unwrap_err();
        assert!(matches!(err, StoreError::InvalidWal { .. }), "{err}");
        assert_eq!(store.write_end(), Some(at));
        assert_eq!(wal_file(t.path(), &partial), before);
        store.append(at, bytes(at, to)).unwrap();
        assert_eq!(store.flush().unwrap(), to);
    }

    #[test]
    fn a_full_disk_is_a_clear_error_and_clears_without_reopening() {
        let t = tempfile::TempDir::new().unwrap();
        let at = Lsn(0xA0_0000);
        let mut store = fixture::store_upto(t.path(), at, 1 << 20);
        // The next segment's file lands on a device that is always full.
        let partial = t
            .path()
            .join("wal")
            .join(format!("{}.partial", name(1, 10)));
        std::os::unix::fs::symlink("/dev/full", &partial).unwrap();
        let err = store.append(at, bytes(at, Lsn(at.0 + 8192))).unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        assert!(err.to_string().contains(&name(1, 10)), "{err}");
        assert_eq!(store.write_end(), Some(at));
        assert!(!t.path().join("wal").join(name(1, 10)).exists());
        // Space comes back.
        fs::remove_file(&partial).unwrap();
        fixture::append_range(&mut store, at, fixture::end(), 100_000);
        fixture::assert_complete(t.path(), 7, 12);
    }

    /// Whether the byte of `file` at `offset` is in the page cache. A miss starts the kernel's
    /// readahead from there, so each place is asked once, and never just before one asked later.
    fn cached(file: &Path, offset: u64) -> bool {
        let f = fs::File::open(file).unwrap();
        let mut byte = [0u8; 1];
        let flags = rustix::io::ReadWriteFlags::NOWAIT;
        match rustix::io::preadv2(
            &f,
            &mut [std::io::IoSliceMut::new(&mut byte)],
            offset,
            flags,
        ) {
            Ok(n) => n == 1,
            Err(e) if e == rustix::io::Errno::AGAIN => false,
            Err(e) => panic!("preadv2 of {}: {e}", file.display()),
        }
    }

    #[test]
    fn releasing_the_cache_drops_durable_wal_below_and_nothing_else() {
        let t = tempfile::TempDir::new().unwrap();
        let wal = t.path().join("wal");
        let [first, second, third] = [7, 8, 9].map(|n| wal.join(name(1, n)));
        let at = Lsn(0x90_0000);
        let mut store = fixture::store_upto(t.path(), at, 65536);
        // A whole segment more is written and set aside, not yet durable.
        let to = Lsn(0xA0_0000);
        store.append(at, bytes(at, to)).unwrap();
        assert!(cached(&first, SEG / 2));
        // Below 0/880000: all of 0/7 and the first half of 0/8 (the kernel drops whole pages
        // only, and this is a boundary of any page size it uses here).
        store.release_cache_below(Lsn(0x88_0000));
        assert!(!cached(&first, 0) && !cached(&first, SEG - 1));
        assert!(!cached(&second, 0) && !cached(&second, SEG / 4));
        assert!(cached(&second, SEG / 2) && cached(&second, SEG - 1));
        // Past the durable end it stops there, and goes on from there once more is durable.
        store.release_cache_below(Lsn::MAX);
        assert!(!cached(&second, SEG / 2 + 8192) && !cached(&second, SEG - 8192));
        let set_aside = wal.join(format!("{}.partial", name(1, 9)));
        assert!(cached(&set_aside, 0) && cached(&set_aside, SEG - 1));
        assert_eq!(store.flush().unwrap(), to);
        store.release_cache_below(Lsn::MAX);
        assert!(!cached(&third, SEG / 4) && !cached(&third, SEG - 8192));
        // The bytes are all there to be read back.
        assert_eq!(wal_file(t.path(), &name(1, 8)), bytes(Lsn(0x80_0000), at));
        assert_eq!(wal_file(t.path(), &name(1, 9)), bytes(at, to));
    }

    #[test]
    fn needs_a_started_store() {
        let t = tempfile::TempDir::new().unwrap();
        let mut store = WalStore::open(t.path()).unwrap();
        let err = store.start_at(fixture::tli(1), start()).unwrap_err();
        assert!(matches!(err, StoreError::NotInitialized), "{err}");
        store.initialize(fixture::id()).unwrap();
        assert!(matches!(store.flush(), Err(StoreError::NotStarted)));
        let err = store
            .append(start(), bytes(start(), Lsn(0x70_2000)))
            .unwrap_err();
        assert!(matches!(err, StoreError::NotStarted), "{err}");
        let err = store.start_at(fixture::tli(1), Lsn(0x70_2000)).unwrap_err();
        assert!(matches!(err, StoreError::NotSegmentStart { .. }), "{err}");
        store.start_at(fixture::tli(1), start()).unwrap();
        assert_eq!(store.end().unwrap().durable, start());
        let err = store.start_at(fixture::tli(1), start()).unwrap_err();
        assert!(matches!(err, StoreError::AlreadyStarted { .. }), "{err}");
    }
}
