//! Removed segment files kept for reuse, as PostgreSQL recycles old segments under future
//! names (`RemoveXlogFile`, `InstallXLogFileSegment`) rather than free blocks and allocate
//! them again: a file system writes and syncs into blocks a file already has faster than it
//! allocates new ones, and where it discards freed blocks (`discard`) an unlink waits for the
//! device.
//!
//! Why a reused file never serves another segment's WAL:
//! - readers pin a segment's name ([`SegmentPins`]) before they open its file and hold the pin
//!   as long as they hold the file, including stretches of it handed to `sendfile`;
//! - a removal first renames the file to `NAME.reuse`, so no reader can open it by its name
//!   any more, and only then looks at the pins: a pinned file is unlinked, as before;
//! - before a file joins the pool its whole content is zeroed with `FALLOC_FL_ZERO_RANGE`,
//!   which keeps its blocks and takes its pages out of the page cache. Pages a socket still
//!   holds from an earlier `sendfile` stay as they were, no longer the file's, so what was
//!   sent is never rewritten under it; the writer's later writes go to new pages.
//!
//! The writer takes a pooled file for a new segment by renaming it to `NAME.partial` (never
//! over an existing file); such a partial is a whole segment long, zeros past what was
//! written, which recovery reads as the end of the WAL. A file system that cannot zero a range
//! (`tmpfs`) or rename without replacing reuses nothing, and the pool keeps at most
//! [`POOL_BYTES`], only while the file system has that much free besides. A store opened
//! again removes the `.reuse` files it finds: the pool starts empty.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tracing::{debug, warn};

use crate::types::{SegmentName, WalSegmentSize};

use super::error::{StoreError, io_err};
use super::fsutil;

/// The suffix of a pooled file: `NAME.reuse`, after the segment it held last.
const SUFFIX: &str = ".reuse";

/// The most the pool holds, in bytes; at most [`POOL_FILES`] files either way.
pub(crate) const POOL_BYTES: u64 = 128 << 20;

/// The most files the pool holds.
const POOL_FILES: u64 = 8;

/// The segments readers hold open, shared by a [`SegmentReader`](super::SegmentReader) and the
/// removals that may reuse its files. Cheap to clone; clones share the set.
#[derive(Clone, Debug, Default)]
pub struct SegmentPins {
    held: Arc<Mutex<HashMap<SegmentName, usize>>>,
}

impl SegmentPins {
    /// Pins `name` until the returned guard is dropped.
    pub(crate) fn pin(&self, name: SegmentName) -> Pin {
        *self.lock().entry(name).or_insert(0) += 1;
        Pin {
            pins: self.clone(),
            name,
        }
    }

    /// Whether a reader holds `name`.
    pub(crate) fn is_pinned(&self, name: SegmentName) -> bool {
        self.lock().contains_key(&name)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SegmentName, usize>> {
        // Nothing in a critical section can panic; a poisoned set is still consistent.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A reader's hold on a segment's name; see [`SegmentPins`].
#[derive(Debug)]
pub(crate) struct Pin {
    pins: SegmentPins,
    name: SegmentName,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut held = self.pins.lock();
        if let Some(count) = held.get_mut(&self.name) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.name);
            }
        }
    }
}

/// The zeroed files waiting to be reused, shared by the store's writer and its removals.
#[derive(Clone, Debug)]
pub(crate) struct ReusePool {
    dir: PathBuf,
    state: Arc<Mutex<PoolState>>,
}

#[derive(Debug, Default)]
struct PoolState {
    files: Vec<PathBuf>,
    /// Set once the file system refused to zero or to rename without replacing.
    unsupported: bool,
}

impl ReusePool {
    /// An empty pool for the WAL directory `dir`.
    pub(crate) fn new(dir: PathBuf) -> ReusePool {
        ReusePool {
            dir,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // Nothing in a critical section can panic; a poisoned pool is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many files it holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().files.len()
    }

    /// Whether another file of `size` fits: under both bounds, and the file system keeps as
    /// much free as the pool may hold.
    fn has_room(&self, size: WalSegmentSize) -> bool {
        let state = self.lock();
        if state.unsupported || state.files.len() as u64 >= capacity(size) {
            return false;
        }
        drop(state);
        rustix::fs::statvfs(&self.dir)
            .is_ok_and(|s| s.f_bavail.saturating_mul(s.f_frsize) >= POOL_BYTES)
    }

    /// Zeroes `path` whole, keeping its blocks and dropping its cached pages; false if it
    /// could not (and no reuse from now where the file system cannot at all).
    fn zero(&self, path: &Path) -> bool {
        let zeroed = OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| Ok((f.metadata()?.len(), f)))
            .and_then(|(len, f)| {
                let flags = rustix::fs::FallocateFlags::ZERO_RANGE;
                rustix::fs::fallocate(&f, flags, 0, len).map_err(std::io::Error::from)
            });
        match zeroed {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                debug!(dir = %self.dir.display(), "the file system cannot zero a range; segment files are not reused");
                self.lock().unsupported = true;
                false
            }
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => {
                warn!(file = %path.display(), error = %e, "could not zero a removed segment for reuse");
                false
            }
        }
    }

    /// Removes the segment file `path` of `name`, `len` bytes long: keeps it for reuse when a
    /// whole segment, the pool has room and no reader holds it, else unlinks it. A file
    /// already gone counts as removed.
    ///
    /// # Errors
    /// [`StoreError::Io`] if it cannot be renamed or removed.
    pub(crate) fn retire(
        &self,
        path: &Path,
        name: SegmentName,
        len: u64,
        size: WalSegmentSize,
        pins: &SegmentPins,
    ) -> Result<(), StoreError> {
        if len != size.bytes_u64() || !self.has_room(size) {
            return remove(path);
        }
        let pooled = self.dir.join(format!("{}{SUFFIX}", name.file_name(size)));
        if self.lock().files.contains(&pooled) {
            return remove(path);
        }
        match fs::rename(path, &pooled) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("rename", path)(e)),
        }
        // Renamed first, so a reader that pins it from now on cannot open it any more.
        if pins.is_pinned(name) || !self.zero(&pooled) {
            return remove(&pooled);
        }
        self.lock().files.push(pooled);
        Ok(())
    }

    /// Renames a pooled file to `path`, the `.partial` of a new segment, unless a file by
    /// that name exists; whether it did. A file that cannot be installed is removed.
    pub(crate) fn install(&self, path: &Path) -> bool {
        let Some(pooled) = self.lock().files.pop() else {
            return false;
        };
        let flags = rustix::fs::RenameFlags::NOREPLACE;
        let cwd = rustix::fs::CWD;
        match rustix::fs::renameat_with(cwd, &pooled, cwd, path, flags) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) => {
                self.lock().files.push(pooled);
                false
            }
            Err(e) => {
                debug!(file = %pooled.display(), error = %e, "could not reuse a segment file");
                let mut state = self.lock();
                state.unsupported |= e == rustix::io::Errno::INVAL;
                drop(state);
                let _ = fs::remove_file(&pooled);
                false
            }
        }
    }
}

/// Removes the `.reuse` files a store opened before left in `dir`: nothing says whether a
/// removal of that store is still at work on one, and unlinking is safe either way.
///
/// # Errors
/// [`StoreError::Io`] if the directory cannot be read or a file cannot be removed.
pub(crate) fn remove_leftovers(dir: &Path) -> Result<(), StoreError> {
    fsutil::remove_files_ending(dir, SUFFIX).map(drop)
}

/// How many files of `size` the pool holds at most: [`POOL_FILES`], and no more than
/// [`POOL_BYTES`].
fn capacity(size: WalSegmentSize) -> u64 {
    POOL_FILES.min(POOL_BYTES / size.bytes_u64())
}

/// Unlinks `path`; one already gone counts as removed.
pub(crate) fn remove(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{self, SEG, bytes, name, tli};
    use super::super::{SegmentReader, WalStore};
    use super::*;
    use crate::types::Lsn;
    use std::io::Read;
    use std::os::unix::fs::{FileExt, MetadataExt};

    fn pooled_files(wal: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(wal)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(SUFFIX))
            .collect();
        names.sort();
        names
    }

    fn inode(path: &Path) -> u64 {
        fs::metadata(path).unwrap().ino()
    }

    fn seg_name(segno: u64) -> SegmentName {
        SegmentName {
            timeline: tli(1),
            segno: crate::types::SegmentNo(segno),
        }
    }

    #[test]
    fn the_pool_holds_eight_files_and_no_more_than_128_mib() {
        let size = |mb: u32| WalSegmentSize::new(mb << 20).unwrap();
        assert_eq!(capacity(size(1)), 8);
        assert_eq!(capacity(size(16)), 8);
        assert_eq!(capacity(size(32)), 4);
        assert_eq!(capacity(size(64)), 2);
        assert_eq!(capacity(size(1024)), 0);
    }

    #[test]
    fn a_pin_holds_until_the_last_one_is_dropped() {
        let pins = SegmentPins::default();
        let (a, b) = (pins.pin(seg_name(7)), pins.pin(seg_name(7)));
        let other = pins.clone().pin(seg_name(8));
        assert!(pins.is_pinned(seg_name(7)) && pins.is_pinned(seg_name(8)));
        drop(a);
        assert!(pins.is_pinned(seg_name(7)));
        drop(b);
        assert!(!pins.is_pinned(seg_name(7)));
        assert!(pins.is_pinned(seg_name(8)));
        drop(other);
        assert!(!pins.is_pinned(seg_name(8)));
    }

    /// Segments 7 and 8 removed, one of them reused for 10 (9 was open already), must leave the
    /// directory as a store that unlinks leaves it, save the zeros past the end of 10 and the
    /// file still kept, and recover to the same end.
    #[test]
    fn removed_segments_are_zeroed_then_written_again_as_new_ones() {
        let upto = Lsn(0xA0_0000 + 0x2_0000);
        let mut ends = Vec::new();
        for reuse in [false, true] {
            let t = tempfile::TempDir::new().unwrap();
            let wal = t.path().join("wal");
            let mut store = fixture::store_upto(t.path(), Lsn(0x90_0000 + 8192), 8192);
            let old = [inode(&wal.join(name(1, 7))), inode(&wal.join(name(1, 8)))];
            let removal = store.let_go_before(Lsn(0x90_0000)).unwrap();
            let removal = if reuse {
                removal.reusing(SegmentPins::default())
            } else {
                removal
            };
            assert_eq!(removal.run().unwrap(), 2);
            assert!(!wal.join(name(1, 7)).exists() && !wal.join(name(1, 8)).exists());
            if reuse {
                let pooled = pooled_files(&wal);
                assert_eq!(pooled, [name(1, 7) + SUFFIX, name(1, 8) + SUFFIX]);
                for file in &pooled {
                    let content = fs::read(wal.join(file)).unwrap();
                    assert_eq!(content.len() as u64, SEG);
                    assert!(content.iter().all(|b| *b == 0), "{file} is zeroed");
                }
                assert_eq!(store.pool.len(), 2);
            } else {
                assert!(pooled_files(&wal).is_empty());
            }
            fixture::append_range(&mut store, Lsn(0x90_0000 + 8192), upto, 8192);
            fixture::assert_complete(t.path(), 9, 10);
            let partial = wal.join(name(1, 10) + ".partial");
            let written = bytes(Lsn(0xA0_0000), upto);
            let content = fs::read(&partial).unwrap();
            assert!(content.starts_with(written));
            if reuse {
                assert_eq!(pooled_files(&wal).len(), 1);
                assert!(old.contains(&inode(&partial)), "{old:?}");
                assert!(!old.contains(&inode(&wal.join(name(1, 9)))));
                assert_eq!(content.len() as u64, SEG);
                assert!(content[written.len()..].iter().all(|b| *b == 0));
            } else {
                assert_eq!(content.len(), written.len());
            }
            drop(store);
            let store = WalStore::open(t.path()).unwrap();
            let end = store.end().unwrap();
            // Cut at the end of valid WAL.
            let left = fs::read(&partial).unwrap();
            assert_eq!(left, &written[..left.len()]);
            ends.push((end.durable, left.len()));
        }
        assert_eq!(ends[0], ends[1], "both recover to the same end");
    }

    #[test]
    fn a_segment_a_reader_holds_is_unlinked_not_reused() {
        let t = tempfile::TempDir::new().unwrap();
        let wal = t.path().join("wal");
        let mut store = fixture::store_upto(t.path(), Lsn(0xA0_0000), 8192);
        let pins = SegmentPins::default();
        let reader = SegmentReader::with_pins(wal.clone(), fixture::size(), pins.clone());
        let mut buf = [0u8; 16];
        reader.read_at(tli(1), Lsn(0x70_0010), &mut buf).unwrap();
        // A stretch handed out for sendfile pins its segment after its reader is gone.
        let other = SegmentReader::with_pins(wal.clone(), fixture::size(), pins.clone());
        other.keep_open(tli(1), Lsn(0x80_0000)).unwrap();
        let span = other.cached_span(tli(1), Lsn(0x80_0000), 4096).unwrap();
        drop(other);
        assert!(pins.is_pinned(seg_name(7)) && pins.is_pinned(seg_name(8)));

        let removal = store.let_go_before(Lsn(0x90_0000)).unwrap();
        assert_eq!(removal.reusing(pins.clone()).run().unwrap(), 2);
        assert!(pooled_files(&wal).is_empty(), "both were unlinked");
        assert_eq!(store.pool.len(), 0);
        let mut held = vec![0u8; 4096];
        span.file().read_exact_at(&mut held, span.offset()).unwrap();
        assert_eq!(held, bytes(Lsn(0x80_0000), Lsn(0x80_1000)));
        drop(span);
        assert!(!pins.is_pinned(seg_name(8)));
        reader.close_removed().unwrap();
        assert!(!pins.is_pinned(seg_name(7)));
    }

    /// What `sendfile` handed to a socket is sent as it was, although the file it came from is
    /// written again as another segment before the peer reads it: the pool zeroes the file
    /// first, which takes its pages out of the page cache.
    #[test]
    fn what_was_sent_from_a_file_stays_as_it_was_when_the_file_is_reused() {
        let t = tempfile::TempDir::new().unwrap();
        let wal = t.path().join("wal");
        let mut store = fixture::store_upto(t.path(), Lsn(0xA0_0000), 8192);
        let pins = SegmentPins::default();
        let reader = SegmentReader::with_pins(wal.clone(), fixture::size(), pins.clone());
        reader.keep_open(tli(1), Lsn(0x70_0000)).unwrap();
        let len = 64 << 10;
        let span = reader.cached_span(tli(1), Lsn(0x70_0000), len).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut receiver, _) = listener.accept().unwrap();
        let mut offset = span.offset();
        let mut sent = 0;
        while sent < len {
            sent +=
                rustix::fs::sendfile(&sender, span.file(), Some(&mut offset), len - sent).unwrap();
        }
        let old = inode(&wal.join(name(1, 7)));
        drop((span, reader));

        let removal = store.let_go_before(Lsn(0x80_0000)).unwrap();
        assert_eq!(removal.reusing(pins).run().unwrap(), 1);
        fixture::append_range(&mut store, Lsn(0xA0_0000), Lsn(0xB0_0000), 8192);
        assert_eq!(
            inode(&wal.join(name(1, 10))),
            old,
            "segment 7's file is segment 10's"
        );

        let mut got = vec![0u8; len];
        receiver.read_exact(&mut got).unwrap();
        assert!(got == bytes(Lsn(0x70_0000), Lsn(0x70_0000 + len as u64)));
    }

    #[test]
    fn a_file_system_that_cannot_zero_keeps_nothing() {
        let Ok(t) = tempfile::TempDir::new_in("/dev/shm") else {
            return;
        };
        let wal = t.path().join("wal");
        let mut store = fixture::store_upto(t.path(), Lsn(0xA0_0000), 8192);
        let removal = store.let_go_before(Lsn(0x90_0000)).unwrap();
        assert_eq!(removal.reusing(SegmentPins::default()).run().unwrap(), 2);
        assert!(pooled_files(&wal).is_empty());
        assert!(!wal.join(name(1, 7)).exists() && !wal.join(name(1, 8)).exists());
        fixture::append_range(&mut store, Lsn(0xA0_0000), Lsn(0xB0_0000), 8192);
        fixture::assert_complete(t.path(), 9, 11);
    }

    #[test]
    fn a_store_opened_again_removes_the_files_kept() {
        let t = tempfile::TempDir::new().unwrap();
        let wal = t.path().join("wal");
        let mut store = fixture::store_upto(t.path(), Lsn(0xA0_0000), 8192);
        let removal = store.let_go_before(Lsn(0x90_0000)).unwrap();
        assert_eq!(removal.reusing(SegmentPins::default()).run().unwrap(), 2);
        assert_eq!(pooled_files(&wal).len(), 2);
        drop(store);
        let store = WalStore::open(t.path()).unwrap();
        assert!(pooled_files(&wal).is_empty());
        assert_eq!(store.oldest(), Some(Lsn(0x90_0000)));
        assert_eq!(store.end().unwrap().durable, Lsn(0xA0_0000));
    }
}
