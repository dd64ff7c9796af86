//! A read-only view of the WAL directory for serving stored WAL, shared by every downstream.
//!
//! It mirrors walsender's `WALRead` and `WalSndSegmentOpen`: a position maps to
//! `(timeline, segment, offset)` and is read with `pread` from the segment's file, complete
//! or `.partial`; a missing file is PostgreSQL's 58P01 "requested WAL segment %s has already
//! been removed". Like walsender, which keeps its current segment open between reads, the
//! reader keeps the few most recently used files open, shared by all clones.
//!
//! Why cached handles stay correct while the writer works:
//! - the writer renames `NAME.partial` to `NAME` when the segment is complete (and recovery may
//!   rename back). A rename keeps the inode, so an open handle keeps reading the same bytes,
//!   including those appended after the rename;
//! - an open trying the complete name, then `.partial`, then the complete name again cannot
//!   miss a segment that is being renamed between the first two opens;
//! - retention unlinks whole files, or renames them away for the writer to reuse, and reuses
//!   only a file no reader holds: the reader pins a segment's name before it opens the file
//!   and until the last handle and [`FileSpan`] of it is gone ([`SegmentPins`], `reuse.rs`).
//!   An unlinked file stays readable through its handle, but serving it would keep its disk
//!   space pinned and hide the removal, so after every read from a cached handle its link
//!   count is checked (`fstat`, no path lookup), like walsender's `CheckXLogRemoved` after a
//!   read; a handle whose file is gone is closed and the name looked up again.
//!   [`SegmentReader::close_removed`] closes such handles without waiting for a read.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::types::{Lsn, SegmentName, TimelineId, WalSegmentSize};

use super::error::{StoreError, io_err};
use super::layout;
use super::reuse::{Pin, SegmentPins};

/// How many segment files stay open: enough for readers at a few different positions.
const OPEN_FILES: usize = 4;

/// Reads stored segment files; cheap to clone, clones share the open files.
#[derive(Clone, Debug)]
pub struct SegmentReader {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    size: WalSegmentSize,
    /// Most recently used first.
    open: Mutex<VecDeque<OpenSegment>>,
    pins: SegmentPins,
}

/// An open segment file; the `Arc` lets a read run without holding the cache's lock.
#[derive(Clone, Debug)]
struct OpenSegment {
    name: SegmentName,
    path: PathBuf,
    file: Arc<PinnedFile>,
}

/// A segment file with its segment's name pinned for as long as it is open.
#[derive(Debug)]
struct PinnedFile {
    file: File,
    _pin: Pin,
}

impl SegmentReader {
    /// A reader of the segment files in `wal_dir` (the store's `wal/` directory).
    pub fn new(wal_dir: PathBuf, size: WalSegmentSize) -> SegmentReader {
        SegmentReader::with_pins(wal_dir, size, SegmentPins::default())
    }

    /// A reader that pins the segments it holds open in `pins`, which a removal of the store
    /// that writes `wal_dir` is given ([`SegmentRemoval::reusing`](super::SegmentRemoval::reusing))
    /// so that it never reuses a file this reader holds.
    pub fn with_pins(wal_dir: PathBuf, size: WalSegmentSize, pins: SegmentPins) -> SegmentReader {
        SegmentReader {
            inner: Arc::new(Inner {
                dir: wal_dir,
                size,
                open: Mutex::new(VecDeque::with_capacity(OPEN_FILES + 1)),
                pins,
            }),
        }
    }

    /// The directory read from.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The segment size the files are named and cut by.
    pub fn segment_size(&self) -> WalSegmentSize {
        self.inner.size
    }

    /// Reads WAL of `timeline` starting at `lsn` into `buf` and returns how many bytes were
    /// read: `buf.len()`, or fewer when the segment ends first (a read never crosses into the
    /// next segment) or when the file is shorter. The caller asks only for stored WAL (below
    /// the durable end, or an older timeline's end), so nothing there is partly written.
    ///
    /// # Errors
    /// [`StoreError::SegmentRemoved`] if neither the complete nor the `.partial` file of the
    /// segment exists; [`StoreError::Io`] if a file cannot be opened or read, or holds no byte
    /// at `lsn` (`UnexpectedEof`), so a non-empty `buf` never yields 0.
    pub fn read_at(
        &self,
        timeline: TimelineId,
        lsn: Lsn,
        buf: &mut [u8],
    ) -> Result<usize, StoreError> {
        let Some((name, offset, buf)) = self.locate(timeline, lsn, buf) else {
            return Ok(0);
        };
        if let Some(seg) = self.cached(name) {
            // A file that lost its name (removed, or replaced by recovery) is looked up again,
            // whatever its handle returned.
            let read = read_full(&seg, buf, offset);
            if is_linked(&seg)? {
                return read;
            }
            self.forget(name);
        }
        let seg = self.open(name)?;
        let n = read_full(&seg, buf, offset)?;
        self.remember(seg);
        Ok(n)
    }

    /// [`SegmentReader::read_at`] without waiting for the disk: reads what the page cache
    /// holds from a file already open (`preadv2` with `RWF_NOWAIT`), so it may run on an
    /// async thread. `None` when that is nothing, or anything else stands in the way; then
    /// [`SegmentReader::read_at`], on a thread that may block, does the read and reports its
    /// errors. A short read is possible: what the cache held.
    pub fn read_cached(&self, timeline: TimelineId, lsn: Lsn, buf: &mut [u8]) -> Option<usize> {
        let (name, offset, buf) = self.locate(timeline, lsn, buf)?;
        let seg = self.cached(name)?;
        let flags = rustix::io::ReadWriteFlags::NOWAIT;
        let n = rustix::io::preadv2(
            &seg.file.file,
            &mut [io::IoSliceMut::new(buf)],
            offset,
            flags,
        )
        .ok()
        .filter(|n| *n > 0)?;
        // As in `read_at`: a file that lost its name is looked up again by the slow path.
        is_linked(&seg).ok().filter(|linked| *linked).map(|_| n)
    }

    /// Up to `len` bytes of WAL of `timeline` from `lsn`, within its segment, as a stretch of
    /// the segment's file that a sender can hand to the socket as it is (`sendfile`), with no
    /// copy through memory of its own. Like [`SegmentReader::read_cached`] it never waits for
    /// the disk to open or look: `None` unless the file is open already and still has its name,
    /// and the first and the last byte of the stretch are in the page cache (`preadv2` of one
    /// byte each, with `RWF_NOWAIT`). WAL is written in order and evicted oldest first, so the
    /// pages between are cached too, save under memory pressure, when sending them waits for
    /// the disk as a walsender's read would. The last byte read also proves that the file
    /// holds the whole stretch.
    pub fn cached_span(&self, timeline: TimelineId, lsn: Lsn, len: usize) -> Option<FileSpan> {
        let size = self.inner.size;
        let offset = u64::from(size.offset_in_segment(lsn));
        let room = usize::try_from(size.bytes_u64() - offset).unwrap_or(usize::MAX);
        let len = len.min(room);
        let last = offset.checked_add(u64::try_from(len).ok()?.checked_sub(1)?)?;
        let name = SegmentName {
            timeline,
            segno: size.segment_of(lsn),
        };
        let seg = self.cached(name)?;
        let cached = |at: u64| {
            let mut byte = [0u8];
            let flags = rustix::io::ReadWriteFlags::NOWAIT;
            let read = rustix::io::preadv2(
                &seg.file.file,
                &mut [io::IoSliceMut::new(&mut byte)],
                at,
                flags,
            );
            matches!(read, Ok(1))
        };
        if !(cached(offset) && cached(last) && is_linked(&seg).ok()?) {
            return None;
        }
        Some(FileSpan {
            file: seg.file,
            offset,
            len,
        })
    }

    /// Opens the file of the segment that `lsn` lies in, unless it is open already, and makes
    /// it the most recently used: what [`SegmentReader::cached_span`] sends from. It may wait
    /// for the disk.
    ///
    /// # Errors
    /// As [`SegmentReader::read_at`] when it opens the file.
    pub fn keep_open(&self, timeline: TimelineId, lsn: Lsn) -> Result<(), StoreError> {
        let name = SegmentName {
            timeline,
            segno: self.inner.size.segment_of(lsn),
        };
        if self.cached(name).is_none() {
            self.remember(self.open(name)?);
        }
        Ok(())
    }

    /// The segment `lsn` lies in, its offset there, and the part of `buf` that reaches no
    /// further than the segment's end; `None` when that part is empty.
    fn locate<'b>(
        &self,
        timeline: TimelineId,
        lsn: Lsn,
        buf: &'b mut [u8],
    ) -> Option<(SegmentName, u64, &'b mut [u8])> {
        let size = self.inner.size;
        let offset = u64::from(size.offset_in_segment(lsn));
        let room = usize::try_from(size.bytes_u64() - offset).unwrap_or(usize::MAX);
        let buf = buf
            .get_mut(..room.min(buf.len()))
            .filter(|b| !b.is_empty())?;
        let name = SegmentName {
            timeline,
            segno: size.segment_of(lsn),
        };
        Some((name, offset, buf))
    }

    /// Closes the cached handles of files that were removed (or replaced), so their disk space
    /// is freed now rather than at the next read of them. Call it after retention.
    ///
    /// # Errors
    /// [`StoreError::Io`] if a handle cannot be `fstat`ed.
    pub fn close_removed(&self) -> Result<(), StoreError> {
        let mut open = self.lock();
        let mut kept = VecDeque::with_capacity(open.len());
        for seg in open.drain(..) {
            if is_linked(&seg)? {
                kept.push_back(seg);
            }
        }
        *open = kept;
        Ok(())
    }

    /// Closes the cached handles of segments that lie wholly below `lsn`, on any timeline:
    /// what a removal of the segments below `lsn` is about to take, which no reader whose
    /// cursor is past them needs. A file still held (a read under way, a [`FileSpan`]) stays
    /// pinned and is unlinked rather than reused.
    pub fn close_below(&self, lsn: Lsn) {
        let size = self.inner.size;
        self.lock()
            .retain(|s| layout::segment_end(s.name, size).is_none_or(|end| end > lsn));
    }

    /// How many files are open; for tests.
    #[cfg(test)]
    fn open_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<OpenSegment>> {
        // Nothing in a critical section can panic; a poisoned cache is still consistent.
        self.inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The open file of `name`, made most recently used.
    fn cached(&self, name: SegmentName) -> Option<OpenSegment> {
        let mut open = self.lock();
        let at = open.iter().position(|s| s.name == name)?;
        let seg = open.remove(at)?;
        open.push_front(seg.clone());
        Some(seg)
    }

    fn forget(&self, name: SegmentName) {
        self.lock().retain(|s| s.name != name);
    }

    /// Caches `seg` as the most recently used, closing the least recently used beyond
    /// [`OPEN_FILES`]. Another reader may have opened the same file meanwhile: one is kept.
    fn remember(&self, seg: OpenSegment) {
        let mut open = self.lock();
        open.retain(|s| s.name != seg.name);
        open.push_front(seg);
        open.truncate(OPEN_FILES);
    }

    /// Opens the complete file, else the `.partial`, else the complete file again: the writer
    /// may rename the partial between the first two opens. The name is pinned first, so a
    /// removal that renames the file away and then finds no pin knows no reader has it.
    fn open(&self, name: SegmentName) -> Result<OpenSegment, StoreError> {
        let (dir, size) = (&self.inner.dir, self.inner.size);
        let pin = self.inner.pins.pin(name);
        for partial in [false, true, false] {
            let path = layout::segment_path(dir, name, size, partial);
            match File::open(&path) {
                Ok(file) => {
                    let file = Arc::new(PinnedFile { file, _pin: pin });
                    return Ok(OpenSegment { name, path, file });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("open", &path)(e)),
            }
        }
        Err(StoreError::SegmentRemoved {
            file: name.file_name(size),
        })
    }
}

/// A stretch of an open segment file, for the kernel to send from the page cache. While it
/// exists its segment stays pinned, so the file is not reused under it.
#[derive(Clone, Debug)]
pub struct FileSpan {
    file: Arc<PinnedFile>,
    offset: u64,
    len: usize,
}

impl FileSpan {
    /// The open segment file.
    pub fn file(&self) -> &File {
        &self.file.file
    }

    /// Where the stretch begins in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// How many bytes it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Splits off and returns its first `n` bytes (all of it if `n` is larger).
    pub fn split_to(&mut self, n: usize) -> FileSpan {
        let n = n.min(self.len);
        let head = FileSpan {
            file: Arc::clone(&self.file),
            offset: self.offset,
            len: n,
        };
        self.offset += n as u64;
        self.len -= n;
        head
    }
}

/// `pread`s until `buf` is full or the file ends; a file with no byte at `offset` is an error.
fn read_full(seg: &OpenSegment, buf: &mut [u8], offset: u64) -> Result<usize, StoreError> {
    let mut done = 0;
    while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
        match seg.file.file.read_at(rest, offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("read", &seg.path)(e)),
        }
    }
    if done == 0 {
        let eof = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("file ends before offset {offset}"),
        );
        return Err(io_err("read", &seg.path)(eof));
    }
    Ok(done)
}

/// Whether the file still has a name in the directory.
fn is_linked(seg: &OpenSegment) -> Result<bool, StoreError> {
    let meta = seg
        .file
        .file
        .metadata()
        .map_err(io_err("fstat", &seg.path))?;
    Ok(meta.nlink() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::SegmentNo;
    use std::fs;

    const SEG: u64 = 1 << 20;

    fn size() -> WalSegmentSize {
        WalSegmentSize::new(SEG as u32).unwrap()
    }

    fn tli(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    fn file(dir: &Path, timeline: u32, segno: u64, partial: bool) -> PathBuf {
        let name = SegmentName {
            timeline: tli(timeline),
            segno: SegmentNo(segno),
        };
        layout::segment_path(dir, name, size(), partial)
    }

    /// Deterministic content: every byte depends on its LSN and a seed.
    fn content(from: u64, len: usize, seed: u8) -> Vec<u8> {
        (0..len as u64)
            .map(|i| ((from + i).wrapping_mul(31) >> 3) as u8 ^ seed)
            .collect()
    }

    fn read(r: &SegmentReader, timeline: u32, lsn: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        let n = r.read_at(tli(timeline), Lsn(lsn), &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn reads_within_one_segment_from_either_name() {
        let t = tempfile::TempDir::new().unwrap();
        fs::write(
            file(t.path(), 1, 3, false),
            content(3 * SEG, SEG as usize, 0),
        )
        .unwrap();
        fs::write(file(t.path(), 1, 4, true), content(4 * SEG, 5000, 0)).unwrap();
        let r = SegmentReader::new(t.path().to_path_buf(), size());
        assert_eq!(
            read(&r, 1, 3 * SEG + 10, 100),
            content(3 * SEG + 10, 100, 0)
        );
        // Stops at the segment end.
        let near_end = 4 * SEG - 300;
        assert_eq!(read(&r, 1, near_end, 1000), content(near_end, 300, 0));
        // A partial file is read as far as it goes.
        assert_eq!(
            read(&r, 1, 4 * SEG + 4000, 8192),
            content(4 * SEG + 4000, 1000, 0)
        );
        assert_eq!(r.read_at(tli(1), Lsn(3 * SEG), &mut []).unwrap(), 0);
        let err = r
            .read_at(tli(1), Lsn(4 * SEG + 5000), &mut [0; 8])
            .unwrap_err();
        assert!(
            err.to_string().contains("file ends before offset 5000"),
            "{err}"
        );
        assert_eq!(r.open_count(), 2);
    }

    #[test]
    fn a_read_that_must_not_wait_reads_only_cached_files_and_never_past_what_they_hold() {
        let t = tempfile::TempDir::new().unwrap();
        fs::write(file(t.path(), 1, 3, true), content(3 * SEG, 5000, 0)).unwrap();
        let r = SegmentReader::new(t.path().to_path_buf(), size());
        let mut buf = vec![0; 8192];
        // Not open yet: left to `read_at`, which opens it.
        assert_eq!(r.read_cached(tli(1), Lsn(3 * SEG), &mut buf), None);
        assert_eq!(read(&r, 1, 3 * SEG, 10), content(3 * SEG, 10, 0));
        // Just written, so in the page cache: read at once, as far as the file goes.
        let n = r
            .read_cached(tli(1), Lsn(3 * SEG + 1000), &mut buf)
            .unwrap();
        assert_eq!(n, 4000);
        assert_eq!(&buf[..n], &content(3 * SEG + 1000, 4000, 0)[..]);
        // Past the end, on an empty buffer, or another timeline: nothing, and no error.
        assert_eq!(r.read_cached(tli(1), Lsn(3 * SEG + 5000), &mut buf), None);
        assert_eq!(r.read_cached(tli(1), Lsn(3 * SEG), &mut []), None);
        assert_eq!(r.read_cached(tli(2), Lsn(3 * SEG), &mut buf), None);
        // A file that lost its name is left to `read_at`, which looks it up again.
        fs::remove_file(file(t.path(), 1, 3, true)).unwrap();
        assert_eq!(r.read_cached(tli(1), Lsn(3 * SEG), &mut buf), None);
        let err = r.read_at(tli(1), Lsn(3 * SEG), &mut buf).unwrap_err();
        assert!(matches!(err, StoreError::SegmentRemoved { .. }), "{err}");
    }

    #[test]
    fn a_span_to_send_is_only_of_open_cached_files_and_never_past_what_they_hold() {
        let t = tempfile::TempDir::new().unwrap();
        fs::write(file(t.path(), 1, 3, true), content(3 * SEG, 5000, 0)).unwrap();
        let r = SegmentReader::new(t.path().to_path_buf(), size());
        // Not open yet: left to the reads, which open it.
        assert!(r.cached_span(tli(1), Lsn(3 * SEG), 100).is_none());
        assert_eq!(read(&r, 1, 3 * SEG, 10), content(3 * SEG, 10, 0));
        // Just written, so in the page cache: the stretch asked for, at its offset.
        let mut span = r.cached_span(tli(1), Lsn(3 * SEG + 1000), 4000).unwrap();
        assert_eq!((span.offset(), span.len()), (1000, 4000));
        let mut got = vec![0; span.len()];
        span.file().read_exact_at(&mut got, span.offset()).unwrap();
        assert_eq!(got, content(3 * SEG + 1000, 4000, 0));
        // Split, it is two stretches that follow each other.
        let head = span.split_to(1500);
        assert_eq!((head.offset(), head.len()), (1000, 1500));
        assert_eq!((span.offset(), span.len()), (2500, 2500));
        assert_eq!(span.split_to(9999).len(), 2500);
        assert!(span.is_empty());
        // Past what the file holds, empty, or another timeline: nothing.
        assert!(r.cached_span(tli(1), Lsn(3 * SEG + 1000), 4001).is_none());
        assert!(r.cached_span(tli(1), Lsn(3 * SEG + 5000), 1).is_none());
        assert!(r.cached_span(tli(1), Lsn(3 * SEG), 0).is_none());
        assert!(r.cached_span(tli(2), Lsn(3 * SEG), 100).is_none());
        // Never across the segment's end.
        let end = 4 * SEG - 10;
        fs::write(
            file(t.path(), 1, 3, true),
            content(3 * SEG, SEG as usize, 0),
        )
        .unwrap();
        assert_eq!(r.cached_span(tli(1), Lsn(end), 100).unwrap().len(), 10);
        // Pages the page cache dropped would make the send wait for the disk: nothing.
        let f = fs::File::open(file(t.path(), 1, 3, true)).unwrap();
        f.sync_all().unwrap();
        rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        assert!(r.cached_span(tli(1), Lsn(3 * SEG), 4096).is_none());
        // A file that lost its name is left to the reads, which report it removed.
        fs::remove_file(file(t.path(), 1, 3, true)).unwrap();
        assert!(r.cached_span(tli(1), Lsn(3 * SEG), 100).is_none());
        let err = r.read_at(tli(1), Lsn(3 * SEG), &mut [0; 8]).unwrap_err();
        assert!(matches!(err, StoreError::SegmentRemoved { .. }), "{err}");
    }

    #[test]
    fn a_missing_segment_was_removed() {
        let t = tempfile::TempDir::new().unwrap();
        fs::write(file(t.path(), 1, 3, false), content(3 * SEG, 100, 0)).unwrap();
        let r = SegmentReader::new(t.path().to_path_buf(), size());
        for (timeline, lsn) in [(1, 2 * SEG), (2, 3 * SEG)] {
            let err = r.read_at(tli(timeline), Lsn(lsn), &mut [0; 8]).unwrap_err();
            assert!(matches!(err, StoreError::SegmentRemoved { .. }), "{err}");
        }
        let err = r.read_at(tli(1), Lsn(2 * SEG), &mut [0; 8]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "requested WAL segment 000000010000000000000002 has already been removed"
        );
    }

    #[test]
    fn a_cached_partial_keeps_working_after_its_rename() {
        let t = tempfile::TempDir::new().unwrap();
        let partial = file(t.path(), 1, 3, true);
        let whole = content(3 * SEG, SEG as usize, 0);
        fs::write(&partial, &whole[..4096]).unwrap();
        let r = SegmentReader::new(t.path().to_path_buf(), size());
        assert_eq!(read(&r, 1, 3 * SEG, 4096), &whole[..4096]);
        // The writer completes the segment through its own handle, then renames it.
        let w = fs::OpenOptions::new().write(true).open(&partial).unwrap();
        w.write_all_at(&whole[4096..], 4096).unwrap();
        fs::rename(&partial, file(t.path(), 1, 3, false)).unwrap();
        assert_eq!(read(&r, 1, 3 * SEG + 4096, 8192), &whole[4096..12288]);
        assert_eq!(r.open_count(), 1);
        assert_eq!(read(&r, 1, 4 * SEG - 10, 100), &whole[whole.len() - 10..]);
    }

    #[test]
    fn removal_is_noticed_through_a_cached_handle() {
        let t = tempfile::TempDir::new().unwrap();
        let path = file(t.path(), 1, 3, false);
        fs::write(&path, content(3 * SEG, 8192, 0)).unwrap();
        let r = SegmentReader::new(t.path().to_path_buf(), size());
        assert_eq!(read(&r, 1, 3 * SEG, 10), content(3 * SEG, 10, 0));
        fs::remove_file(&path).unwrap();
        let err = r.read_at(tli(1), Lsn(3 * SEG), &mut [0; 8]).unwrap_err();
        assert!(matches!(err, StoreError::SegmentRemoved { .. }), "{err}");
        assert_eq!(r.open_count(), 0);
        // A file replaced under the same name is read afresh.
        fs::write(&path, content(3 * SEG, 8192, 0)).unwrap();
        assert_eq!(read(&r, 1, 3 * SEG, 10), content(3 * SEG, 10, 0));
        fs::remove_file(&path).unwrap();
        fs::write(file(t.path(), 1, 3, true), content(3 * SEG, 8192, 7)).unwrap();
        assert_eq!(read(&r, 1, 3 * SEG, 10), content(3 * SEG, 10, 7));
        // Even where the stale handle has no bytes to give.
        let longer = content(3 * SEG, 20_000, 9);
        fs::remove_file(file(t.path(), 1, 3, true)).unwrap();
        fs::write(&path, &longer).unwrap();
        assert_eq!(read(&r, 1, 3 * SEG + 10_000, 100), &longer[10_000..10_100]);
    }

    #[test]
    fn close_removed_releases_only_unlinked_files() {
        let t = tempfile::TempDir::new().unwrap();
        for segno in 1..=3 {
            fs::write(file(t.path(), 1, segno, false), [1; 16]).unwrap();
        }
        let r = SegmentReader::new(t.path().to_path_buf(), size());
        for segno in 1..=3 {
            read(&r, 1, segno * SEG, 4);
        }
        fs::remove_file(file(t.path(), 1, 1, false)).unwrap();
        r.close_removed().unwrap();
        assert_eq!(r.open_count(), 2);
    }

    #[test]
    fn close_below_releases_the_segments_below_and_their_pins() {
        let t = tempfile::TempDir::new().unwrap();
        for (timeline, segno) in [(1, 1), (1, 2), (2, 2), (2, 3)] {
            fs::write(file(t.path(), timeline, segno, false), [1; 16]).unwrap();
        }
        let pins = SegmentPins::default();
        let r = SegmentReader::with_pins(t.path().to_path_buf(), size(), pins.clone());
        for (timeline, segno) in [(1, 1), (1, 2), (2, 2), (2, 3)] {
            read(&r, timeline, segno * SEG, 4);
        }
        let name = |timeline, segno| SegmentName {
            timeline: tli(timeline),
            segno: SegmentNo(segno),
        };
        assert!(pins.is_pinned(name(1, 1)) && pins.is_pinned(name(2, 3)));
        r.close_below(Lsn(3 * SEG));
        assert_eq!(r.open_count(), 1);
        assert!(!pins.is_pinned(name(1, 1)) && !pins.is_pinned(name(2, 2)));
        assert!(pins.is_pinned(name(2, 3)));
    }

    #[test]
    fn keeps_only_a_few_files_open() {
        let t = tempfile::TempDir::new().unwrap();
        for segno in 1..=6 {
            fs::write(file(t.path(), 1, segno, false), [segno as u8; 16]).unwrap();
        }
        let r = SegmentReader::new(t.path().to_path_buf(), size());
        let clone = r.clone();
        for segno in 1..=6 {
            assert_eq!(read(&clone, 1, segno * SEG, 4), [segno as u8; 4]);
            assert_eq!(r.open_count(), (segno as usize).min(OPEN_FILES));
        }
        read(&r, 1, 6 * SEG, 4);
        assert_eq!(r.open_count(), OPEN_FILES);
    }

    /// The writer renames the partial while readers open it: every open finds the segment.
    #[test]
    fn opens_race_the_rename() {
        use std::sync::Barrier;
        use std::sync::atomic::{AtomicBool, Ordering};
        let t = tempfile::TempDir::new().unwrap();
        let dir = t.path().to_path_buf();
        for segno in 1..=20u64 {
            let data = Arc::new(content(segno * SEG, 4096, segno as u8));
            let partial = file(&dir, 1, segno, true);
            fs::write(&partial, &*data).unwrap();
            let start = Arc::new(Barrier::new(4));
            let renamed = Arc::new(AtomicBool::new(false));
            let readers: Vec<_> = (0..3)
                .map(|_| {
                    let (dir, data) = (dir.clone(), Arc::clone(&data));
                    let (start, renamed) = (Arc::clone(&start), Arc::clone(&renamed));
                    std::thread::spawn(move || {
                        start.wait();
                        let mut after = 0;
                        while after < 20 {
                            after += usize::from(renamed.load(Ordering::Acquire));
                            // A fresh reader opens the file by name every time.
                            let r = SegmentReader::new(dir.clone(), size());
                            assert_eq!(read(&r, 1, segno * SEG, 4096), *data);
                        }
                    })
                })
                .collect();
            start.wait();
            fs::rename(&partial, file(&dir, 1, segno, false)).unwrap();
            renamed.store(true, Ordering::Release);
            for h in readers {
                h.join().unwrap();
            }
        }
    }
}
