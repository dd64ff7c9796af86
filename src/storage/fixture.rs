//! Test fixture: five consecutive 1 MiB segments captured from PostgreSQL 15
//! (`tests/data/wal/000000010000000000000007` … `0B`).
//!
//! A 3 MiB logical message at 0/77D658 runs from segment 7 through 8 and 9 into A; A and B end
//! with `XLOG_SWITCH` and zero padding.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.

use std::path::Path;

use crate::types::{Lsn, SegmentName, SegmentNo, SystemId, TimelineId, WalSegmentSize};
use crate::wal::WalValidator;

use super::{StoreIdentity, WalStore, recovery};

/// Segment size of the fixture.
pub(crate) const SEG: u64 = 1 << 20;
/// First segment number of the fixture.
pub(crate) const FIRST: u64 = 7;
/// Number of segments.
pub(crate) const COUNT: u64 = 5;

/// The start of the fixture WAL.
pub(crate) fn start() -> Lsn {
    Lsn(FIRST * SEG)
}

/// The end of the fixture WAL.
pub(crate) fn end() -> Lsn {
    Lsn((FIRST + COUNT) * SEG)
}

pub(crate) fn size() -> WalSegmentSize {
    WalSegmentSize::new(SEG as u32).unwrap()
}

pub(crate) fn tli(n: u32) -> TimelineId {
    TimelineId::new(n).unwrap()
}

/// The file name of fixture segment `segno` on `timeline`.
pub(crate) fn name(timeline: u32, segno: u64) -> String {
    SegmentName {
        timeline: tli(timeline),
        segno: SegmentNo(segno),
    }
    .file_name(size())
}

/// All fixture WAL, from [`start`] to [`end`].
pub(crate) fn wal() -> &'static [u8] {
    crate::wal::testdata::all()
}

/// The fixture bytes in `[from, to)`.
pub(crate) fn bytes(from: Lsn, to: Lsn) -> &'static [u8] {
    &wal()[(from.0 - start().0) as usize..(to.0 - start().0) as usize]
}

/// The identity of the cluster that wrote the fixture (read from the first long header).
pub(crate) fn id() -> StoreIdentity {
    let sysid = u64::from_le_bytes(wal()[24..32].try_into().unwrap());
    StoreIdentity {
        system_id: SystemId(sysid),
        segment_size: size(),
    }
}

/// An initialized, empty store in `dir`.
pub(crate) fn empty_store(dir: &Path) -> WalStore {
    let mut store = WalStore::open(dir).unwrap();
    store.initialize(id()).unwrap();
    store
}

/// A store holding the fixture up to `to`, appended in `chunk`-byte pieces and flushed.
pub(crate) fn store_upto(dir: &Path, to: Lsn, chunk: usize) -> WalStore {
    let mut store = empty_store(dir);
    store.start_at(tli(1), start()).unwrap();
    append_range(&mut store, start(), to, chunk);
    store
}

/// Appends the fixture bytes `[from, to)` in `chunk`-byte pieces, then flushes.
pub(crate) fn append_range(store: &mut WalStore, from: Lsn, to: Lsn, chunk: usize) {
    let mut at = from;
    for piece in bytes(from, to).chunks(chunk) {
        store.append(at, piece).unwrap();
        at = Lsn(at.0 + piece.len() as u64);
    }
    assert_eq!(store.flush().unwrap(), to);
}

/// What the validator, fed the fixture from its start and then `bytes`, accepts: the end of
/// the last valid record.
pub(crate) fn valid_end_of(bytes: &[u8]) -> Lsn {
    let mut v = WalValidator::new(start(), recovery::check_config(id())).unwrap();
    v.set_max_timeline(tli(1));
    for page in bytes.chunks(8192) {
        if v.feed(page).is_err() {
            break;
        }
    }
    v.valid_end()
}

/// Asserts that the store in `dir` holds the fixture segments `[from, to)` byte for byte under
/// their complete names.
pub(crate) fn assert_complete(dir: &Path, from: u64, to: u64) {
    for segno in from..to {
        let got = std::fs::read(dir.join("wal").join(name(1, segno))).unwrap();
        let lo = Lsn(segno * SEG);
        assert!(
            got == bytes(lo, Lsn(lo.0 + SEG)),
            "segment {segno:X} differs"
        );
    }
}
