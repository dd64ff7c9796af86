//! Finding the true end of stored WAL after a crash or power loss.
//!
//! Like the startup process (`xlogreader.c`), the store trusts nothing it cannot verify: the end
//! is the last record whose CRC checks, read from the newest timeline's segments. Like
//! `pg_receivewal` (`FindStreamingStart`), it works from file names: complete segments were
//! fdatasync'd before their rename and are trusted to be whole; the `.partial` segments are read
//! until the first invalid byte and cut there.
//!
//! Rules, in order:
//! - stray `*.tmp` files are removed;
//! - a `.partial` whose segment also exists complete is removed (the complete one wins);
//! - a complete segment of the wrong size is an error, unless it is the newest file of the
//!   timeline: then it is renamed to `.partial` and treated as one;
//! - the newest timeline's `.partial` segments must follow one another, all but the newest
//!   full (the writer sets a full segment aside for its next flush to complete, and goes on
//!   with the next), and none may lie below a complete segment; anything else is an error;
//! - validation starts at the first partial's segment, or one segment earlier when that one
//!   exists and the partial begins with (or may begin with) the continuation of an earlier
//!   record, and further back while a segment is continuation from end to end, at most ~1 GiB
//!   (the largest record), so that the CRC of a record straddling into the partial is checked;
//! - the partials are read in order and cut at the last valid record: those before it are
//!   made durable and completed, the one it ends in is cut (and completed if it is then
//!   full), later ones are removed; if no record ends inside the first, it is emptied and the
//!   validator resumes at its segment start with the straddling record still open.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::types::{Lsn, SegmentName, SegmentNo, TimelineId, WAL_PAGE_SIZE, WalSegmentSize};
use crate::wal::{
    PageHeader, SIZE_OF_LONG_PAGE_HEADER, SIZE_OF_SHORT_PAGE_HEADER, WalCheckConfig, WalValidator,
    XLP_FIRST_IS_CONTRECORD,
};

use super::StoreIdentity;
use super::error::{StoreError, io_err};
use super::fsutil;
use super::layout::{self, SegmentFile};

/// How far back a record straddling into the partial is followed (`XLogRecordMaxSize` < 1 GiB).
const MAX_RECORD_SPAN: u64 = 1 << 30;
/// Read size for complete segments.
const CHUNK: usize = 128 * 1024;

/// What recovery found: the end of valid WAL and the validator positioned there.
pub(crate) struct Recovered {
    /// The newest timeline that has segment files.
    pub timeline: TimelineId,
    /// The recovered end; everything below it is on disk.
    pub end: Lsn,
    /// The validator state at `end`.
    pub validator: WalValidator,
    /// The start of the oldest segment file of any timeline.
    pub oldest: Lsn,
}

/// The validator configuration for a store's identity.
pub(crate) fn check_config(id: StoreIdentity) -> WalCheckConfig {
    WalCheckConfig {
        system_id: id.system_id,
        segment_size: id.segment_size,
    }
}

/// Recovers the WAL directory `dir`; `None` when it holds no segment files.
pub(crate) fn recover(dir: &Path, id: StoreIdentity) -> Result<Option<Recovered>, StoreError> {
    for path in fsutil::remove_tmp_files(dir)? {
        warn!(file = %path.display(), "removed leftover temporary file");
    }
    let size = id.segment_size;
    let files = layout::list_segments(dir, size)?;
    let (Some(timeline), Some(oldest)) = (
        files.iter().map(|f| f.name.timeline).max(),
        files.iter().map(|f| f.name.segno).min(),
    ) else {
        return Ok(None);
    };
    let oldest = size
        .start_of(oldest)
        .ok_or(StoreError::LsnOverflow(Lsn::MAX))?;
    let scan = Scan {
        dir,
        size,
        cfg: check_config(id),
        timeline,
    };
    let tail = scan.tail_files(&files)?;
    let (end, validator) = scan.run(&tail)?;
    fsutil::fsync_dir(dir)?;
    Ok(Some(Recovered {
        timeline,
        end,
        validator,
        oldest,
    }))
}

/// The newest timeline's segments after the cleanup rules.
struct TailFiles {
    /// Complete segments of the right size.
    complete: BTreeMap<SegmentNo, PathBuf>,
    /// The `.partial` segments and their lengths, consecutive and oldest first: all but the
    /// newest full, set aside by the writer for a flush to complete.
    partials: Vec<(SegmentNo, u64)>,
}

/// One recovery pass over the newest timeline.
struct Scan<'a> {
    dir: &'a Path,
    size: WalSegmentSize,
    cfg: WalCheckConfig,
    timeline: TimelineId,
}

impl Scan<'_> {
    fn name(&self, segno: SegmentNo) -> SegmentName {
        SegmentName {
            timeline: self.timeline,
            segno,
        }
    }

    fn path(&self, segno: SegmentNo, partial: bool) -> PathBuf {
        layout::segment_path(self.dir, self.name(segno), self.size, partial)
    }

    fn start_of(&self, segno: SegmentNo) -> Result<Lsn, StoreError> {
        self.size
            .start_of(segno)
            .ok_or(StoreError::LsnOverflow(Lsn::MAX))
    }

    /// Applies the duplicate, wrong-size and ordering rules to the newest timeline's files.
    fn tail_files(&self, files: &[SegmentFile]) -> Result<TailFiles, StoreError> {
        let mine = files.iter().filter(|f| f.name.timeline == self.timeline);
        let mut complete = BTreeMap::new();
        let mut partials = BTreeMap::new();
        for f in mine {
            let map = if f.partial {
                &mut partials
            } else {
                &mut complete
            };
            map.insert(f.name.segno, f.len);
        }
        for segno in partials.keys().copied().collect::<Vec<_>>() {
            if complete.contains_key(&segno) {
                let path = self.path(segno, true);
                warn!(file = %path.display(), "removing partial segment that also exists complete");
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                partials.remove(&segno);
            }
        }
        let mut partials: Vec<(SegmentNo, u64)> = partials.into_iter().collect();
        for pair in partials.windows(2) {
            if let [(older, len), (newer, _)] = pair
                && (older.next() != Some(*newer) || *len != self.size.bytes_u64())
            {
                let path = self.path(*older, true);
                let reason = "partial segment below another that is not full or not next to it";
                return Err(StoreError::Layout { path, reason });
            }
        }
        let newest = complete.last_key_value().map(|(&s, &len)| (s, len));
        let wrong_size = newest.filter(|&(_, len)| len != self.size.bytes_u64());
        if let (Some((segno, len)), true) = (wrong_size, partials.is_empty()) {
            partials.push((segno, len));
            complete.remove(&segno);
            self.demote(segno)?;
        }
        let mut checked = BTreeMap::new();
        for (segno, len) in complete {
            let path = self.path(segno, false);
            if len != self.size.bytes_u64() {
                let reason = "complete segment of the wrong size";
                return Err(StoreError::Layout { path, reason });
            }
            checked.insert(segno, path);
        }
        if let Some(&(p, _)) = partials
            .first()
            .filter(|(p, _)| checked.keys().any(|s| s > p))
        {
            let path = self.path(p, true);
            let reason = "partial segment older than a complete segment of its timeline";
            return Err(StoreError::Layout { path, reason });
        }
        Ok(TailFiles {
            complete: checked,
            partials,
        })
    }

    /// Renames the newest complete segment, which has the wrong size, to `.partial`.
    fn demote(&self, segno: SegmentNo) -> Result<(), StoreError> {
        let from = self.path(segno, false);
        warn!(file = %from.display(), "newest segment has the wrong size; treating it as partial");
        fs::rename(&from, self.path(segno, true)).map_err(io_err("rename", &from))
    }

    /// Validates the tail and cuts the partials; returns the end and the validator there.
    fn run(&self, tail: &TailFiles) -> Result<(Lsn, WalValidator), StoreError> {
        let k = match tail.partials.first() {
            Some(&(segno, _)) => segno,
            None => {
                let last = tail.complete.last_key_value().map(|(s, _)| *s);
                let next = last.and_then(SegmentNo::next);
                next.ok_or(StoreError::LsnOverflow(Lsn::MAX))?
            }
        };
        let first = self.scan_start(tail, k, !tail.partials.is_empty())?;
        let start = self.start_of(first)?;
        let mut v = WalValidator::new(start, self.cfg)
            .map_err(|source| StoreError::InvalidWal { lsn: start, source })?;
        v.set_max_timeline(self.timeline);
        let mut buf = vec![0u8; CHUNK];
        for path in tail.complete.range(first..k).map(|(_, p)| p) {
            feed_complete(&mut v, path, &mut buf)?;
        }
        if tail.partials.is_empty() {
            return Ok((self.start_of(k)?, v));
        }
        self.cut_partials(self.start_of(k)?, &tail.partials, v)
    }

    /// The segment validation starts at: `k`, or earlier while a record straddles into it.
    fn scan_start(
        &self,
        tail: &TailFiles,
        k: SegmentNo,
        has_partial: bool,
    ) -> Result<SegmentNo, StoreError> {
        // Without a partial, or with one too short to tell, a record may straddle into `k`.
        let continues =
            !has_partial || first_page(&self.path(k, true))?.is_none_or(|p| continued(&p));
        if !continues {
            return Ok(k);
        }
        let max_back = (MAX_RECORD_SPAN / self.size.bytes_u64()).max(1);
        let mut first = k;
        while let Some(prev) = first.prev() {
            let Some(path) = tail.complete.get(&prev) else {
                break;
            };
            if k.0 - prev.0 > max_back {
                break;
            }
            first = prev;
            if !first_page(path)?.is_some_and(|p| spans(&p, self.size)) {
                break;
            }
        }
        Ok(first)
    }

    /// Feeds the partial segments, oldest first (the first starts at `first_start`), until the
    /// first invalid byte, then cuts them
    /// at the last valid record and makes the result durable: the ones before it are
    /// fdatasync'd and completed, the one it ends in is cut (and completed if it is then full),
    /// the ones after it are removed.
    fn cut_partials(
        &self,
        first_start: Lsn,
        partials: &[(SegmentNo, u64)],
        mut v: WalValidator,
    ) -> Result<(Lsn, WalValidator), StoreError> {
        let at_start = v.clone();
        let mut files = Vec::with_capacity(partials.len());
        let mut whole = true;
        for &(segno, len) in partials {
            let path = self.path(segno, true);
            let file = fsutil::open_rw(&path)?;
            if whole {
                let want = len.min(self.size.bytes_u64());
                whole = feed_partial(&mut v, &file, &path, want)? && want == self.size.bytes_u64();
            }
            files.push((segno, len, path, file));
        }
        let valid = v.valid_end();
        // The validator keeps its last boundary when it finds an error (the boundary moves only
        // when a record is verified), so it is the end of the last valid record.
        let (end, resumed) = if valid >= first_start {
            (valid, WalValidator::resume(v.boundary(), self.cfg))
        } else {
            (first_start, at_start)
        };
        for (segno, len, path, file) in files {
            let seg_start = self.start_of(segno)?;
            if seg_start > end {
                warn!(file = %path.display(), bytes = len, "removing partial segment past the last valid record");
                drop(file);
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                continue;
            }
            let keep = end
                .saturating_distance(seg_start)
                .min(self.size.bytes_u64());
            if keep < len {
                warn!(file = %path.display(), from = %end, bytes = len - keep,
                    "discarding WAL past the last valid record");
                file.set_len(keep).map_err(io_err("truncate", &path))?;
            }
            file.sync_all().map_err(io_err("fsync", &path))?;
            if keep == self.size.bytes_u64() {
                let complete = self.path(segno, false);
                fs::rename(&path, &complete).map_err(io_err("rename", &path))?;
                info!(file = %complete.display(), "completed a full partial segment");
            }
        }
        Ok((end, resumed))
    }
}

/// Feeds a whole complete segment; any validation error is corruption.
fn feed_complete(v: &mut WalValidator, path: &Path, buf: &mut [u8]) -> Result<(), StoreError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    loop {
        let n = file.read(buf).map_err(io_err("read", path))?;
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            return Ok(());
        };
        v.feed(chunk).map_err(|source| StoreError::CorruptSegment {
            path: path.to_path_buf(),
            source,
        })?;
    }
}

/// Feeds up to `len` bytes of the partial page by page, stopping at the first invalid one or
/// where the file ends; whether all `len` were fed.
fn feed_partial(
    v: &mut WalValidator,
    file: &File,
    path: &Path,
    len: u64,
) -> Result<bool, StoreError> {
    let mut page = vec![0u8; WAL_PAGE_SIZE as usize];
    let mut offset = 0u64;
    while offset < len {
        let want = (len - offset).min(u64::from(WAL_PAGE_SIZE)) as usize;
        let Some(buf) = page.get_mut(..want) else {
            return Ok(false);
        };
        let n = file.read_at(buf, offset).map_err(io_err("read", path))?;
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            return Ok(false);
        };
        if v.feed(chunk).is_err() {
            return Ok(false);
        }
        offset += n as u64;
    }
    Ok(true)
}

/// Whether a segment's first page starts with the continuation of an earlier record.
fn continued(first: &PageHeader) -> bool {
    first.has(XLP_FIRST_IS_CONTRECORD)
}

/// Whether a segment's first page starts with a continuation that runs past the segment's end.
fn spans(first: &PageHeader, size: WalSegmentSize) -> bool {
    let pages = size.bytes_u64() / u64::from(WAL_PAGE_SIZE);
    let headers = SIZE_OF_LONG_PAGE_HEADER as u64 + (pages - 1) * SIZE_OF_SHORT_PAGE_HEADER as u64;
    continued(first) && u64::from(first.rem_len) > size.bytes_u64() - headers
}

/// The page header at the start of a segment file; `None` if the file is too short to hold one.
fn first_page(path: &Path) -> Result<Option<PageHeader>, StoreError> {
    let mut hdr = [0u8; SIZE_OF_SHORT_PAGE_HEADER];
    let file = File::open(path).map_err(io_err("open", path))?;
    let mut got = 0;
    while let Some(rest) = hdr.get_mut(got..).filter(|r| !r.is_empty()) {
        match file
            .read_at(rest, got as u64)
            .map_err(io_err("read", path))?
        {
            0 => return Ok(None),
            n => got += n,
        }
    }
    Ok(PageHeader::parse(&hdr))
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{self, SEG, bytes, name, start};
    use super::super::{StoreError, WalStore};
    use crate::types::Lsn;
    use std::fs;
    use std::path::{Path, PathBuf};

    /// Deterministic pseudo-random numbers (xorshift64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn seg_start(p: Lsn) -> Lsn {
        Lsn(p.0 & !(SEG - 1))
    }

    fn wal(dir: &Path, file: &str) -> PathBuf {
        dir.join("wal").join(file)
    }

    /// The state after a crash with the fixture written up to `p` and `tail` written after it
    /// into the same partial: complete segments below, the partial holding the rest.
    fn crash_state(dir: &Path, p: Lsn, tail: &[u8]) {
        drop(fixture::empty_store(dir));
        for segno in fixture::FIRST..p.0 / SEG {
            let lo = Lsn(segno * SEG);
            fs::write(wal(dir, &name(1, segno)), bytes(lo, Lsn(lo.0 + SEG))).unwrap();
        }
        let k = seg_start(p);
        if k < p || !tail.is_empty() {
            let mut content = bytes(k, p).to_vec();
            content.extend_from_slice(tail);
            fs::write(
                wal(dir, &format!("{}.partial", name(1, k.0 / SEG))),
                content,
            )
            .unwrap();
        }
    }

    /// The end recovery must find: the last valid record, or the partial's segment start.
    fn expected_end(p: Lsn, tail: &[u8]) -> Lsn {
        let mut all = bytes(start(), p).to_vec();
        all.extend_from_slice(tail);
        fixture::valid_end_of(&all).max(seg_start(p))
    }

    /// Opens the crashed store, checks the recovered end, re-appends the rest of the fixture
    /// and checks that the result equals the source.
    fn recover_and_finish(dir: &Path, expected: Lsn) {
        let mut store = WalStore::open(dir).unwrap();
        let end = store.end().unwrap();
        assert_eq!(end.durable, expected);
        assert!(end.valid <= end.durable);
        assert_eq!(store.write_end(), Some(expected));
        assert_eq!(store.validator().unwrap().position(), expected);
        fixture::append_range(&mut store, expected, fixture::end(), 77_777);
        drop(store);
        fixture::assert_complete(dir, fixture::FIRST, fixture::FIRST + fixture::COUNT);
        let left: Vec<_> = fs::read_dir(dir.join("wal")).unwrap().collect();
        assert_eq!(left.len() as u64, fixture::COUNT);
    }

    fn crash_and_recover(p: Lsn, tail: &[u8]) {
        let t = tempfile::TempDir::new().unwrap();
        crash_state(t.path(), p, tail);
        recover_and_finish(t.path(), expected_end(p, tail));
    }

    fn positions() -> Vec<Lsn> {
        let mut ps: Vec<Lsn> = [
            0x70_0001, 0x70_0027, 0x70_0028, 0x70_0047, 0x70_0048, 0x70_2000, 0x77_D658, 0x77_D670,
            0x80_0000, 0x80_0001, 0x80_6123, 0x90_0000, 0x97_A1F0, 0xA0_0014, 0xA8_7FC8, 0xA8_7FE0,
            0xA9_0000, 0xB0_0000, 0xB0_0050, 0xB0_00B0, 0xBF_FFFF,
        ]
        .into_iter()
        .map(Lsn)
        .collect();
        let mut rng = Rng(0x5EED_0001);
        ps.extend((0..12).map(|_| Lsn(start().0 + rng.next() % (fixture::COUNT * SEG))));
        ps
    }

    #[test]
    fn recovers_partials_cut_anywhere() {
        for p in positions() {
            crash_and_recover(p, &[]);
        }
    }

    #[test]
    fn discards_garbage_and_zeros_after_the_end() {
        let mut rng = Rng(0x5EED_0002);
        for p in positions().into_iter().step_by(3) {
            crash_and_recover(p, &rng.bytes(3000));
            crash_and_recover(p, &vec![0; 10_000]);
        }
    }

    #[test]
    fn cuts_a_torn_last_page() {
        let mut rng = Rng(0x5EED_0003);
        for p in positions().into_iter().step_by(2) {
            // The page holding `p` reached the disk only in part: one 512-byte sector of it
            // holds old garbage, the rest is what was written.
            let page_start = Lsn(p.0 & !8191);
            let mut page = bytes(page_start, Lsn(page_start.0 + 8192)).to_vec();
            let sector = (rng.next() % 16) as usize * 512;
            page[sector..sector + 512].copy_from_slice(&rng.bytes(512));
            let t = tempfile::TempDir::new().unwrap();
            crash_state(t.path(), page_start, &page);
            let expected = expected_end(page_start, &page);
            let damaged = Lsn(page_start.0 + sector as u64);
            assert!(expected <= damaged.max(seg_start(page_start)));
            recover_and_finish(t.path(), expected);
        }
    }

    #[test]
    fn removes_stray_temporary_files() {
        let t = tempfile::TempDir::new().unwrap();
        let p = Lsn(0x90_4000);
        crash_state(t.path(), p, &[]);
        for stray in [
            "00000002.history.tmp",
            "000000010000000000000009.partial.tmp",
        ] {
            fs::write(wal(t.path(), stray), b"half").unwrap();
        }
        fs::write(t.path().join("walrelay.state.tmp"), b"half").unwrap();
        recover_and_finish(t.path(), expected_end(p, &[]));
        assert!(!t.path().join("walrelay.state.tmp").exists());
    }

    #[test]
    fn empty_partial_resumes_at_its_segment_start() {
        for p in [Lsn(0x80_0000), Lsn(0xA0_0000), Lsn(0xB0_0000)] {
            let t = tempfile::TempDir::new().unwrap();
            crash_state(t.path(), p, &[]);
            fs::write(
                wal(t.path(), &format!("{}.partial", name(1, p.0 / SEG))),
                b"",
            )
            .unwrap();
            recover_and_finish(t.path(), p);
        }
    }

    #[test]
    fn complete_segment_wins_over_its_partial() {
        let t = tempfile::TempDir::new().unwrap();
        let p = Lsn(0xA0_0000);
        crash_state(t.path(), p, &[]);
        let dup = wal(t.path(), &format!("{}.partial", name(1, 9)));
        fs::write(&dup, bytes(Lsn(0x90_0000), Lsn(0x90_1234))).unwrap();
        recover_and_finish(t.path(), p);
        assert!(!dup.exists());
    }

    #[test]
    fn verifies_a_record_straddling_into_the_partial() {
        // The 3 MiB record at 0/77D658 ends in segment A; cut A before its end.
        let p = Lsn(0xA0_5000);
        let t = tempfile::TempDir::new().unwrap();
        crash_state(t.path(), p, &[]);
        let store = WalStore::open(t.path()).unwrap();
        let end = store.end().unwrap();
        assert_eq!(end.durable, Lsn(0xA0_0000));
        assert_eq!(end.valid, Lsn(0x77_D658));
        drop(store);
        assert_eq!(
            fs::metadata(wal(t.path(), &format!("{}.partial", name(1, 10))))
                .unwrap()
                .len(),
            0
        );
        recover_and_finish(t.path(), Lsn(0xA0_0000));

        // With segment 8 damaged the record's CRC fails when it completes in A: the partial is
        // cut to nothing, and the damaged record can never be appended again.
        let t = tempfile::TempDir::new().unwrap();
        crash_state(t.path(), Lsn(0xA9_0000), &[]);
        let s8 = wal(t.path(), &name(1, 8));
        let mut b = fs::read(&s8).unwrap();
        b[0x5_0100] ^= 0xFF;
        fs::write(&s8, b).unwrap();
        let mut store = WalStore::open(t.path()).unwrap();
        assert_eq!(store.end().unwrap().durable, Lsn(0xA0_0000));
        let err = store.append(Lsn(0xA0_0000), bytes(Lsn(0xA0_0000), Lsn(0xA9_0000)));
        assert!(matches!(err, Err(StoreError::InvalidWal { .. })), "{err:?}");
    }

    #[test]
    fn partial_alone_skips_the_continuation_it_starts_with() {
        let t = tempfile::TempDir::new().unwrap();
        let p = Lsn(0xA8_0000);
        crash_state(t.path(), p, &[]);
        for segno in 7..10 {
            fs::remove_file(wal(t.path(), &name(1, segno))).unwrap();
        }
        let store = WalStore::open(t.path()).unwrap();
        assert_eq!(store.oldest(), Some(Lsn(0xA0_0000)));
        let end = store.end().unwrap();
        assert!(end.durable > Lsn(0xA0_0000) && end.durable <= p, "{end:?}");
        assert_eq!(end.durable, end.valid);
    }

    #[test]
    fn wrong_sizes_and_contradictions() {
        // The newest segment with the wrong size is treated as partial.
        let t = tempfile::TempDir::new().unwrap();
        crash_state(t.path(), Lsn(0x90_0000), &[]);
        let s8 = wal(t.path(), &name(1, 8));
        fs::write(&s8, bytes(Lsn(0x80_0000), Lsn(0x80_9000))).unwrap();
        recover_and_finish(t.path(), expected_end(Lsn(0x80_9000), &[]));

        // One in the middle is an error, and so are two partials that the writer cannot
        // have left (not consecutive, or the older not full) or a partial below a complete
        // segment.
        let seg_b = bytes(Lsn(0xB0_0000), Lsn(0xC0_0000));
        let cases: [(&str, &[u8]); 4] = [
            ("000000010000000000000008", b"short"),
            ("00000001000000000000000C.partial", b""),
            ("00000001000000000000000B.partial", b""),
            ("00000001000000000000000B", seg_b),
        ];
        for (file, content) in cases {
            let t = tempfile::TempDir::new().unwrap();
            crash_state(t.path(), Lsn(0xA0_1000), &[]);
            fs::write(wal(t.path(), file), content).unwrap();
            let err = WalStore::open(t.path()).err().unwrap();
            assert!(matches!(err, StoreError::Layout { .. }), "{file}: {err}");
        }
    }

    /// The state after a crash with `set_aside` full segments below `p`'s still `.partial`,
    /// as the writer leaves them until its next flush completes them.
    fn set_aside_state(dir: &Path, p: Lsn, tail: &[u8], set_aside: u64) -> Lsn {
        crash_state(dir, p, tail);
        let first = seg_start(p).0 / SEG - set_aside;
        for segno in first..seg_start(p).0 / SEG {
            let full = wal(dir, &name(1, segno));
            fs::rename(&full, wal(dir, &format!("{}.partial", name(1, segno)))).unwrap();
        }
        Lsn(first * SEG)
    }

    #[test]
    fn completes_full_partials_the_writer_set_aside() {
        let mut rng = Rng(0x5EED_0004);
        for p in positions().into_iter().filter(|p| p.0 >= 0x90_0000) {
            for set_aside in [1, 2] {
                for tail in [Vec::new(), rng.bytes(3000)] {
                    let t = tempfile::TempDir::new().unwrap();
                    let first = set_aside_state(t.path(), p, &tail, set_aside);
                    let mut all = bytes(start(), p).to_vec();
                    all.extend_from_slice(&tail);
                    // Trusted up to the first partial only: a record that runs out of the
                    // last one is cut as in any partial.
                    let expected = fixture::valid_end_of(&all).max(first);
                    recover_and_finish(t.path(), expected);
                }
            }
        }
    }

    #[test]
    fn damage_in_a_set_aside_segment_cuts_there_and_drops_what_follows() {
        // Segment A holds small records after the 3 MiB one ends (at about 0/A7D700); damage
        // one of them.
        let p = Lsn(0xB0_5000);
        let t = tempfile::TempDir::new().unwrap();
        let first = set_aside_state(t.path(), p, &[], 2);
        assert_eq!(first, Lsn(0x90_0000));
        let a = wal(t.path(), &format!("{}.partial", name(1, 10)));
        let mut content = fs::read(&a).unwrap();
        content[0x8_0100] ^= 0xFF;
        fs::write(&a, &content).unwrap();
        let mut all = bytes(start(), Lsn(0xA0_0000)).to_vec();
        all.extend_from_slice(&content);
        let expected = fixture::valid_end_of(&all);
        assert!(
            expected > Lsn(0xA0_0000) && expected < Lsn(0xA8_0100),
            "{expected}"
        );
        let store = WalStore::open(t.path()).unwrap();
        assert_eq!(store.end().unwrap().durable, expected);
        drop(store);
        let len = fs::metadata(&a).unwrap().len();
        assert_eq!(len, expected.0 - 0xA0_0000, "cut at the last valid record");
        assert!(
            wal(t.path(), &name(1, 9)).exists(),
            "completed before the damage"
        );
        let b = wal(t.path(), &format!("{}.partial", name(1, 11)));
        assert!(!b.exists(), "what follows the damage is gone");
        recover_and_finish(t.path(), expected);

        // Damage in the first of them inside the record that straddles into it: nothing of
        // the partials is kept, and the record is still open at the first one's start.
        let t = tempfile::TempDir::new().unwrap();
        let first = set_aside_state(t.path(), Lsn(0xA0_5000), &[], 2);
        let eight = wal(t.path(), &format!("{}.partial", name(1, 8)));
        let mut content = fs::read(&eight).unwrap();
        content[0x5_0100] ^= 0xFF;
        fs::write(&eight, &content).unwrap();
        recover_and_finish(t.path(), first);
    }

    #[test]
    fn corrupt_complete_segment_is_a_hard_error() {
        let t = tempfile::TempDir::new().unwrap();
        crash_state(t.path(), Lsn(0xA0_0000), &[]);
        let s9 = wal(t.path(), &name(1, 9));
        let mut b = fs::read(&s9).unwrap();
        b[0x2000] ^= 0x01; // a page header's magic
        fs::write(&s9, b).unwrap();
        let err = WalStore::open(t.path()).err().unwrap();
        assert!(matches!(err, StoreError::CorruptSegment { .. }), "{err}");
        assert!(err.to_string().contains(&name(1, 9)), "{err}");
    }

    #[test]
    fn newest_timeline_wins() {
        let t = tempfile::TempDir::new().unwrap();
        crash_state(t.path(), Lsn(0x90_0000), &[]);
        // Timeline 2 forked in segment 7; its copy of segment 7 is partial.
        let content = bytes(start(), Lsn(0x70_3000));
        fs::write(wal(t.path(), &format!("{}.partial", name(2, 7))), content).unwrap();
        let store = WalStore::open(t.path()).unwrap();
        assert_eq!(store.timeline(), Some(fixture::tli(2)));
        assert_eq!(store.oldest(), Some(start()));
        let end = store.end().unwrap();
        assert_eq!(end.durable, expected_end(Lsn(0x70_3000), &[]));
    }
}
