//! Retention and timeline history files (reading stored WAL is `reader.rs`'s).
//!
//! Retention mirrors `RemoveOldXlogFiles`: whole segments below a cut-off go, on every
//! timeline. History files are written like `timeline.c:writeTimeLineHistoryFile`, through a
//! temporary file and a rename.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::PathBuf;

use bytes::Bytes;

use crate::types::{Lsn, SegmentName, SegmentNo, TimelineId, WalSegmentSize};

use super::error::{StoreError, io_err};
use super::layout;
use super::reuse::{self, ReusePool, SegmentPins};
use super::{WalStore, fsutil};
use crate::wal::{HISTORY_FILE_MAX_SIZE, history_file_name_parse};

impl WalStore {
    fn segment_size(&self) -> Result<WalSegmentSize, StoreError> {
        self.identity
            .map(|id| id.segment_size)
            .ok_or(StoreError::NotInitialized)
    }

    /// The oldest stored position: the start of the oldest segment file of any timeline (or
    /// where the store started, before its first file). `None` while the store holds no WAL.
    pub fn oldest(&self) -> Option<Lsn> {
        self.oldest
    }

    /// Removes the segment files (complete, or `.partial` of an older timeline) of every
    /// timeline that lie wholly below `lsn`, and returns how many were removed: at once
    /// [`WalStore::let_go_before`] and [`SegmentRemoval::run`].
    ///
    /// # Errors
    /// [`StoreError::NotInitialized`], [`StoreError::Io`].
    pub fn remove_before(&mut self, lsn: Lsn) -> Result<usize, StoreError> {
        self.let_go_before(lsn)?.run()
    }

    /// Lets go of the segment files (complete, or `.partial` of an older timeline) of every
    /// timeline that lie wholly below `lsn`: [`WalStore::oldest`] moves past them at once, and
    /// the returned [`SegmentRemoval`] unlinks them, on any thread. The segment holding the
    /// last written byte is always kept, so the store never forgets its end.
    ///
    /// Unlinking is left to another thread because it can take as long as a sync: freeing a
    /// segment's blocks waits for the device where the file system discards them at once.
    /// Until the removal runs the files stay as they were, so a reader may still read them;
    /// one that outlives a crash is let go of again the next time.
    ///
    /// # Errors
    /// [`StoreError::NotInitialized`], [`StoreError::Io`] if the directory cannot be read.
    pub fn let_go_before(&mut self, lsn: Lsn) -> Result<SegmentRemoval, StoreError> {
        let size = self.segment_size()?;
        let keep_from = self.tail.as_ref().and_then(|t| t.last_written_segment());
        let mut files = Vec::new();
        let mut kept = None;
        for f in layout::list_segments(&self.wal_dir, size)? {
            let below = layout::segment_end(f.name, size).is_some_and(|end| end <= lsn);
            let tail_needs = keep_from.is_none_or(|k| f.name.segno >= k);
            if below && !tail_needs {
                let path = layout::segment_path(&self.wal_dir, f.name, size, f.partial);
                files.push((path, f.name, f.len));
            } else {
                kept = Some(kept.map_or(f.name.segno, |k: SegmentNo| k.min(f.name.segno)));
            }
        }
        let tail_start = self
            .tail
            .as_ref()
            .map(|t| size.segment_start(t.written().end));
        let files_start = kept.and_then(|s| size.start_of(s));
        self.oldest = [files_start, tail_start].into_iter().flatten().min();
        Ok(SegmentRemoval {
            dir: self.wal_dir.clone(),
            size,
            files,
            reuse: None,
            pool: self.pool.clone(),
        })
    }

    /// Durably writes the history file of `timeline` (temporary file, fsync, rename, fsync of
    /// the directory), replacing any earlier copy.
    ///
    /// # Errors
    /// [`StoreError::BadTimeline`] for timeline 1, which has no history file;
    /// [`StoreError::Io`].
    pub fn write_history(
        &mut self,
        timeline: TimelineId,
        content: &[u8],
    ) -> Result<(), StoreError> {
        if timeline == TimelineId::ONE {
            let reason = "timeline 1 has no history file";
            return Err(StoreError::BadTimeline { timeline, reason });
        }
        fsutil::write_atomic(&self.wal_dir, &timeline.history_file_name(), content)
    }

    /// Every stored history file, by timeline: what `TIMELINE_HISTORY` serves and what the
    /// end of an older timeline is read from. Files larger than [`HISTORY_FILE_MAX_SIZE`] are
    /// left out.
    ///
    /// # Errors
    /// [`StoreError::Io`] if the directory or a file cannot be read.
    pub fn histories(&self) -> Result<BTreeMap<TimelineId, Bytes>, StoreError> {
        let mut found = BTreeMap::new();
        let limit = HISTORY_FILE_MAX_SIZE as u64;
        let dir = &self.wal_dir;
        for entry in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
            let entry = entry.map_err(io_err("read directory", dir))?;
            let name = entry.file_name();
            let Some(timeline) = name.to_str().and_then(history_file_name_parse) else {
                continue;
            };
            let path = entry.path();
            let mut bytes = Vec::new();
            File::open(&path)
                .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
                .map_err(io_err("read", &path))?;
            if bytes.len() as u64 <= limit {
                found.insert(timeline, Bytes::from(bytes));
            }
        }
        Ok(found)
    }
}

/// Segment files a store has let go of ([`WalStore::let_go_before`]), to be unlinked, or
/// kept for the store to write again ([`SegmentRemoval::reusing`]).
#[derive(Debug)]
#[must_use = "the files stay on disk until the removal runs"]
pub struct SegmentRemoval {
    dir: PathBuf,
    size: WalSegmentSize,
    /// Each file's path, segment and length.
    files: Vec<(PathBuf, SegmentName, u64)>,
    /// The pins of the readers of these files, when they may be reused.
    reuse: Option<SegmentPins>,
    pool: ReusePool,
}

impl SegmentRemoval {
    /// How many segment files it removes.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether it removes nothing.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Lets the store write the files again for later segments, rather than unlink them, where
    /// no reader holds them: `pins` must be those of every reader of the directory (see
    /// `reuse.rs`). Without it a removal only unlinks.
    pub fn reusing(mut self, pins: SegmentPins) -> SegmentRemoval {
        self.reuse = Some(pins);
        self
    }

    /// Removes the files (unlinks them, or keeps some for reuse), then fsyncs the directory,
    /// and returns how many were removed. A file already gone counts as removed.
    ///
    /// # Errors
    /// [`StoreError::Io`] at the first file that cannot be removed (those before it are
    /// gone), or if the directory cannot be synced.
    pub fn run(self) -> Result<usize, StoreError> {
        for (path, name, len) in &self.files {
            match &self.reuse {
                Some(pins) => self.pool.retire(path, *name, *len, self.size, pins)?,
                None => reuse::remove(path)?,
            }
        }
        if !self.files.is_empty() {
            fsutil::fsync_dir(&self.dir)?;
        }
        Ok(self.files.len())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{self, name, start, tli};
    use super::*;

    #[test]
    fn removes_whole_segments_below_a_position() {
        let t = tempfile::TempDir::new().unwrap();
        let mut store = fixture::store_upto(t.path(), Lsn(0xA0_0000), 1 << 20);
        assert_eq!(store.oldest(), Some(start()));
        assert_eq!(store.remove_before(Lsn(0x7F_FFFF)).unwrap(), 0);
        assert_eq!(store.remove_before(Lsn(0x88_0000)).unwrap(), 1);
        assert_eq!(store.oldest(), Some(Lsn(0x80_0000)));
        assert!(!t.path().join("wal").join(name(1, 7)).exists());
        // Segment 9 holds the last written byte and is kept however far the cut-off is.
        assert_eq!(store.remove_before(Lsn::MAX).unwrap(), 1);
        assert_eq!(store.oldest(), Some(Lsn(0x90_0000)));
        assert!(t.path().join("wal").join(name(1, 9)).exists());
        let mut buf = [0; 16];
        let reader = super::super::SegmentReader::new(t.path().join("wal"), fixture::size());
        assert!(matches!(
            reader.read_at(tli(1), Lsn(0x80_0000), &mut buf),
            Err(StoreError::SegmentRemoved { .. })
        ));
        drop(store);
        let store = WalStore::open(t.path()).unwrap();
        assert_eq!(store.oldest(), Some(Lsn(0x90_0000)));
        assert_eq!(store.end().unwrap().durable, Lsn(0xA0_0000));
    }

    #[test]
    fn letting_go_moves_the_oldest_at_once_and_leaves_the_files_to_the_removal() {
        let t = tempfile::TempDir::new().unwrap();
        let wal = t.path().join("wal");
        let mut store = fixture::store_upto(t.path(), Lsn(0x98_0000), 1 << 20);
        let removal = store.let_go_before(Lsn(0x90_0000)).unwrap();
        assert_eq!(removal.len(), 2);
        assert_eq!(store.oldest(), Some(Lsn(0x90_0000)));
        assert!(wal.join(name(1, 7)).exists() && wal.join(name(1, 8)).exists());
        // Appends go on while the files wait; one already gone counts as removed.
        fs::remove_file(wal.join(name(1, 7))).unwrap();
        fixture::append_range(&mut store, Lsn(0x98_0000), Lsn(0xA0_0000), 8192);
        assert_eq!(removal.run().unwrap(), 2);
        assert!(!wal.join(name(1, 8)).exists());
        assert!(wal.join(name(1, 9)).exists());
        assert!(store.let_go_before(Lsn(0x90_0000)).unwrap().is_empty());
        drop(store);
        assert_eq!(
            WalStore::open(t.path()).unwrap().oldest(),
            Some(Lsn(0x90_0000))
        );
    }

    #[test]
    fn history_files_round_trip() {
        let t = tempfile::TempDir::new().unwrap();
        let mut store = fixture::empty_store(t.path());
        let content = b"1\t0/A87FE0\tno recovery target specified\n";
        assert!(store.histories().unwrap().is_empty());
        store.write_history(tli(2), content).unwrap();
        store.write_history(tli(3), b"x").unwrap();
        std::fs::write(t.path().join("wal/0000000a.history"), b"lowercase").unwrap();
        std::fs::write(t.path().join("wal/notes.history"), b"not a timeline").unwrap();
        let found = store.histories().unwrap();
        assert_eq!(found.keys().copied().collect::<Vec<_>>(), [tli(2), tli(3)]);
        assert_eq!(found[&tli(2)], &content[..]);
        assert!(t.path().join("wal/00000002.history").exists());
        let err = store.write_history(TimelineId::ONE, content).unwrap_err();
        assert!(matches!(err, StoreError::BadTimeline { .. }), "{err}");
    }
}
