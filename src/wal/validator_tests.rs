//! Tests of the streaming validator against WAL captured from PostgreSQL 15
//! (`tests/data/wal`): acceptance in every split, record boundaries against pg_waldump,
//! resumption, and detection of each kind of corruption.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.

use std::collections::BTreeSet;

use crate::types::{Lsn, SystemId, TimelineId, WalSegmentSize};

use super::fuzzing::{Outcome, run_validator};
use super::testdata::{self, FIRST, SEG, WINDOW_START, all, cfg, from, records, segment};
use super::{
    RecordHeader, WalError, WalErrorKind, WalValidator, XLP_FIRST_IS_CONTRECORD,
    XLP_FIRST_IS_OVERWRITE_CONTRECORD, record_crc,
};

const PAGE: u64 = 8192;
const END: u64 = 0xC0_0000;

fn validator(start: u64) -> WalValidator {
    WalValidator::new(Lsn(start), cfg()).unwrap()
}

/// Feeds `bytes` from `start` in one go.
fn check(start: u64, bytes: &[u8]) -> Result<WalValidator, WalError> {
    let mut v = validator(start);
    v.feed(bytes)?;
    Ok(v)
}

fn kind_at(start: u64, bytes: &[u8]) -> (WalErrorKind, Lsn) {
    let e = check(start, bytes).unwrap_err();
    (e.kind, e.lsn)
}

/// Where a record ends once MAXALIGNed, walking over the page headers it crosses.
fn record_end(lsn: Lsn, tot_len: u32) -> u64 {
    let mut pos = lsn.0;
    let mut left = u64::from(tot_len);
    loop {
        let take = left.min(PAGE - pos % PAGE);
        pos += take;
        left -= take;
        if left == 0 {
            return (pos + 7) & !7;
        }
        pos += if pos.is_multiple_of(SEG) { 40 } else { 24 };
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Feeds `bytes` in chunks from `sizes`, collecting every `(valid_end, in_switch_padding)`.
fn feed_collect(
    v: &mut WalValidator,
    bytes: &[u8],
    mut sizes: impl FnMut() -> usize,
) -> BTreeSet<(u64, bool)> {
    let mut seen = BTreeSet::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(sizes().min(rest.len()));
        v.feed(chunk).unwrap();
        assert!(v.valid_end() <= v.position());
        let b = v.boundary();
        seen.insert((b.lsn.0, b.in_switch_padding));
        rest = tail;
    }
    seen
}

#[test]
fn accepts_captured_segments_in_any_split() {
    let ok = Outcome {
        result: Ok(()),
        valid_end: Lsn(END),
        position: Lsn(END),
    };
    for seed in 1..4 {
        assert_eq!(run_validator(all(), Lsn(FIRST), cfg(), seed), ok);
    }
    let mut v = validator(FIRST);
    for page in all().chunks(PAGE as usize) {
        v.feed(page).unwrap();
    }
    assert_eq!((v.valid_end(), v.position()), (Lsn(END), Lsn(END)));
    assert_eq!(v.timeline(), Some(TimelineId::ONE));
    assert_eq!(v.page_magic(), Some(0xD110));
    // One byte at a time, over the segment with the header-split records.
    let mut v = validator(FIRST);
    for b in segment(7) {
        v.feed(std::slice::from_ref(b)).unwrap();
    }
    assert_eq!(v.position(), Lsn(0x80_0000));
}

#[test]
fn valid_end_lands_on_pg_waldump_record_boundaries() {
    let listed = records();
    assert_eq!(listed.len(), 3017);
    let mut size = 0;
    let mut v = validator(FIRST);
    let seen = feed_collect(&mut v, all(), || {
        size = size % 7 + 1;
        size
    });
    // A switch record's end is passed within the same feed as the zeros after it (see
    // `zeros_after_a_switch` for that boundary).
    let expected: BTreeSet<u64> = listed
        .iter()
        .filter(|r| !r.switch)
        .map(|r| record_end(r.lsn, r.tot_len))
        .collect();
    let observed: BTreeSet<u64> = seen.iter().map(|(lsn, _)| *lsn).collect();
    let missing: Vec<String> = expected
        .difference(&observed)
        .map(|l| format!("{l:X}"))
        .collect();
    assert!(missing.is_empty(), "never reached: {missing:?}");
    for (lsn, in_switch_padding) in &seen {
        assert!(
            expected.contains(lsn) || *in_switch_padding || *lsn == FIRST || *lsn % SEG == 0,
            "valid_end {lsn:X} is not a record boundary"
        );
    }
    // pg_waldump agrees: each record starts where the previous one ended (past a page
    // header, or at the next segment after a switch) and links back to it.
    for pair in listed.windows(2) {
        let (prev, next) = (pair[0], pair[1]);
        assert_eq!(next.prev, prev.lsn);
        let end = record_end(prev.lsn, prev.tot_len);
        let start = match end % PAGE {
            _ if prev.switch => end.div_ceil(SEG) * SEG + 40,
            0 if end.is_multiple_of(SEG) => end + 40,
            0 => end + 24,
            _ => end,
        };
        assert_eq!(next.lsn.0, start, "after {:?}", prev.lsn);
    }
    // A few by hand: the 3 MiB message, the 5 kB one before the first switch.
    for (lsn, end) in [(0x77_D658, 0xA7_FAD8), (0xA8_6C08, 0xA8_7FC8)] {
        let r = listed.iter().find(|r| r.lsn.0 == lsn).unwrap();
        assert_eq!(record_end(r.lsn, r.tot_len), end);
        assert!(observed.contains(&end));
    }
}

#[test]
fn resumes_identically_from_boundaries() {
    let mut v = validator(FIRST);
    let mut boundaries = vec![v.boundary()];
    for chunk in all().chunks(300_007) {
        v.feed(chunk).unwrap();
        boundaries.push(v.boundary());
    }
    // Inside the zero space after the first switch.
    let mut w = validator(0xA0_0000);
    w.feed(&from(0xA0_0000)[..0x9_0000]).unwrap();
    assert!(w.boundary().in_switch_padding);
    assert_eq!(w.valid_end(), Lsn(0xA9_0000));
    boundaries.push(w.boundary());
    for b in boundaries {
        let mut r = WalValidator::resume(b, cfg());
        r.feed(from(b.lsn.0)).unwrap();
        assert_eq!((r.valid_end(), r.position()), (Lsn(END), Lsn(END)), "{b:?}");
    }
}

#[test]
fn starts_inside_a_record_by_skipping_its_continuation() {
    // Segment 8 starts inside the 3 MiB message: nothing is verified until the record after it.
    let mut v = validator(0x80_0000);
    v.feed(&from(0x80_0000)[..0x27_FAE0]).unwrap();
    assert_eq!(v.valid_end(), Lsn(0x80_0000));
    assert_eq!(v.boundary().prev, None);
    v.feed(&from(0xA7_FAE0)[..0x100]).unwrap();
    let next = records()
        .into_iter()
        .find(|r| r.lsn.0 == 0xA7_FAD8)
        .unwrap();
    assert!(v.valid_end().0 >= record_end(next.lsn, next.tot_len));
    v.feed(from(0xA7_FBE0)).unwrap();
    assert_eq!(v.valid_end(), Lsn(END));
    // A page in the middle of a segment whose first bytes continue a record; segment 7 ends
    // inside the 3 MiB message, which starts at 0/77D658.
    let v = check(0x70_2000, &from(0x70_2000)[..0x10_0000 - 0x2000]).unwrap();
    assert_eq!(v.valid_end(), Lsn(0x77_D658));
    assert_eq!(v.boundary().prev, Some(Lsn(0x77_D630)));
}

#[test]
fn detects_a_flipped_byte_in_any_record_or_page_header() {
    let seg = segment(7);
    // Validators at every page boundary of the first 20 pages, fed with the real bytes.
    let mut v = validator(FIRST);
    let mut at_page = Vec::new();
    for page in seg.chunks(PAGE as usize).take(20) {
        at_page.push(v.clone());
        v.feed(page).unwrap();
    }
    // The first pages (long header, contrecords) and the pages where a record header is split.
    let pages = [0usize, 1, 2, 18];
    for p in pages {
        let window = &seg[p * PAGE as usize..(p + 3) * PAGE as usize];
        for i in 0..PAGE as usize {
            let mut bytes = window.to_vec();
            bytes[i] ^= 0xFF;
            let mut v = at_page[p].clone();
            let result = v.feed(&bytes);
            // The 4 padding bytes of a short page header are never read, by PostgreSQL or
            // here; every other byte is covered by a check or by a CRC.
            if (20..24).contains(&i) {
                assert!(result.is_ok(), "page {p} byte {i}");
            } else {
                assert!(result.is_err(), "page {p} byte {i} not detected");
            }
        }
    }
}

/// Segments 7 and 8 with `f` applied.
fn seg_7_8(f: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut bytes = from(FIRST)[..2 * SEG as usize].to_vec();
    f(&mut bytes);
    bytes
}

fn set_u16(bytes: &mut [u8], at: usize, v: u16) {
    bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn set_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn detects_each_page_header_problem() {
    use WalErrorKind as K;
    let p1 = PAGE as usize;
    let pageaddr = seg_7_8(|b| b[p1 + 9] ^= 1);
    assert_eq!(
        kind_at(FIRST, &pageaddr),
        (
            K::UnexpectedPageAddr {
                pageaddr: Lsn(0x70_2000 ^ 0x100)
            },
            Lsn(0x70_2000)
        )
    );
    let magic = seg_7_8(|b| set_u16(b, 3 * p1, 0xD111));
    assert_eq!(
        kind_at(FIRST, &magic),
        (K::InvalidMagic { magic: 0xD111 }, Lsn(0x70_6000))
    );
    let other_version = seg_7_8(|b| set_u16(b, 3 * p1, 0xD113));
    let e = check(FIRST, &other_version).unwrap_err();
    assert_eq!(
        e.kind,
        K::MagicChanged {
            magic: 0xD113,
            expected: 0xD110
        }
    );
    let info = seg_7_8(|b| b[p1 + 2] |= 0x10);
    assert_eq!(kind_at(FIRST, &info).0, K::InvalidInfoBits { info: 0x15 });
    let other = super::WalCheckConfig {
        system_id: SystemId(42),
        ..cfg()
    };
    let e = WalValidator::new(Lsn(FIRST), other)
        .unwrap()
        .feed(segment(7))
        .unwrap_err();
    assert_eq!(
        (e.kind, e.lsn),
        (
            K::SystemIdMismatch {
                found: testdata::SYSID,
                expected: SystemId(42)
            },
            Lsn(FIRST)
        )
    );
    let bigger = super::WalCheckConfig {
        segment_size: WalSegmentSize::new(2 << 20).unwrap(),
        ..cfg()
    };
    let e = WalValidator::new(Lsn(0x80_0000), bigger)
        .unwrap()
        .feed(segment(8))
        .unwrap_err();
    assert_eq!(e.kind, K::SegmentSizeMismatch { found: 1 << 20 });
}

#[test]
fn timeline_never_decreases_and_respects_the_cap() {
    let p1 = PAGE as usize;
    let t1 = TimelineId::ONE;
    let t2 = TimelineId::new(2).unwrap();
    let higher = seg_7_8(|b| set_u32(b, p1 + 4, 2));
    let e = check(FIRST, &higher).unwrap_err();
    assert_eq!(
        (e.kind, e.lsn),
        (
            WalErrorKind::OutOfSequenceTimeline { tli: t1, after: t2 },
            Lsn(0x70_4000)
        )
    );
    assert_eq!(e.timeline, t2);
    let mut capped = validator(FIRST);
    capped.set_max_timeline(t1);
    assert_eq!(capped.boundary().max_timeline, Some(t1));
    let e = capped.feed(&higher).unwrap_err();
    assert_eq!(
        (e.kind, e.lsn),
        (
            WalErrorKind::TimelineBeyondMax { tli: t2, max: t1 },
            Lsn(0x70_2000)
        )
    );
    // Every later page on the higher timeline is fine (a new timeline's first segment).
    let rising = seg_7_8(|b| {
        for page in (p1..b.len()).step_by(p1) {
            set_u32(b, page + 4, 2);
        }
    });
    let v = check(FIRST, &rising).unwrap();
    assert_eq!(v.timeline(), Some(t2));
    let zero = seg_7_8(|b| set_u32(b, p1 + 4, 0));
    assert_eq!(kind_at(FIRST, &zero).0, WalErrorKind::InvalidTimeline);
}

/// The record that continues onto page 0/702000.
fn record_across_first_page() -> Lsn {
    records()
        .into_iter()
        .take_while(|r| r.lsn.0 < 0x70_2000)
        .last()
        .unwrap()
        .lsn
}

#[test]
fn detects_continuation_problems() {
    use WalErrorKind as K;
    let p1 = PAGE as usize;
    let crossing = record_across_first_page();
    let flag_cleared = seg_7_8(|b| b[p1 + 2] &= !(XLP_FIRST_IS_CONTRECORD as u8));
    assert_eq!(
        kind_at(FIRST, &flag_cleared),
        (K::NoContrecordFlag, crossing)
    );
    let short = seg_7_8(|b| set_u32(b, p1 + 16, 5356));
    assert_eq!(
        kind_at(FIRST, &short),
        (
            K::InvalidContrecordLength {
                rem_len: 5356,
                expected: 5357
            },
            crossing
        )
    );
    // Segment B starts with a new record (the previous segment ended with a switch).
    let start = 0xA0_0000;
    let b_page = (0xB0_0000 - start) as usize;
    let mut bytes = from(start).to_vec();
    bytes[b_page + 2] |= XLP_FIRST_IS_CONTRECORD as u8;
    bytes[b_page + 16] = 8;
    assert_eq!(
        kind_at(start, &bytes),
        (K::ContrecordRequested, Lsn(0xB0_0028))
    );
    let mut bytes = from(start).to_vec();
    bytes[b_page + 2] |= XLP_FIRST_IS_OVERWRITE_CONTRECORD as u8;
    assert_eq!(
        kind_at(start, &bytes),
        (K::UnexpectedOverwriteContrecord, Lsn(0xB0_0028))
    );
    let mut bytes = from(start).to_vec();
    bytes[b_page + 16] = 8;
    assert_eq!(
        kind_at(start, &bytes).0,
        K::InvalidContrecordLength {
            rem_len: 8,
            expected: 0
        }
    );
}

#[test]
fn zeros_after_a_switch() {
    let start = 0xA0_0000;
    let v = check(start, segment(0xA)).unwrap();
    assert_eq!(v.valid_end(), Lsn(0xB0_0000));
    assert!(!v.boundary().in_switch_padding);
    let v = check(start, &segment(0xA)[..0x8_7FE0]).unwrap();
    assert_eq!(v.valid_end(), Lsn(0xA8_7FE0));
    assert_eq!(v.boundary().prev, Some(Lsn(0xA8_7FC8)));
    assert!(v.boundary().in_switch_padding);
    let v = check(start, &segment(0xA)[..0x8_7FF0]).unwrap();
    assert_eq!(v.valid_end(), Lsn(0xA8_7FF0));
    assert!(v.boundary().in_switch_padding);
    // A stray byte in the rest of the switch's page, and one where a page header would be.
    for bad in [0xA8_7FF0u64, 0xAA_0000, 0xAF_FFFF] {
        let mut bytes = segment(0xA).to_vec();
        bytes[(bad - start) as usize] = 1;
        let e = check(start, &bytes).unwrap_err();
        assert_eq!(
            (e.kind, e.lsn),
            (WalErrorKind::NonzeroAfterSwitch, Lsn(bad))
        );
        let mut v = validator(start);
        assert!(v.feed(&bytes).is_err());
        assert_eq!(v.valid_end(), Lsn(bad));
    }
    // The switch at the very start of segment B.
    let v = check(0xB0_0000, segment(0xB)).unwrap();
    assert_eq!(v.valid_end(), Lsn(END));
}

/// Segment 7 with the header of the record at `lsn` (which must not cross a page) changed by
/// `f` and its CRC recomputed.
fn rewrite_record(lsn: u64, f: impl FnOnce(&mut RecordHeader)) -> Vec<u8> {
    let mut bytes = segment(7).to_vec();
    let at = (lsn - FIRST) as usize;
    let mut h = RecordHeader::parse(bytes[at..at + 24].try_into().unwrap());
    let len = h.tot_len as usize;
    f(&mut h);
    bytes[at..at + 24].copy_from_slice(&h.to_bytes());
    h.crc = record_crc(&bytes[at..at + len]).unwrap();
    bytes[at..at + 24].copy_from_slice(&h.to_bytes());
    bytes
}

#[test]
fn detects_record_header_problems() {
    use WalErrorKind as K;
    // The third record: STORAGE CREATE at 0/700078, 42 bytes, previous record at 0/700048.
    let at = 0x70_0078;
    let rmid = rewrite_record(at, |h| h.rmid = 22);
    assert_eq!(
        kind_at(FIRST, &rmid),
        (K::InvalidRmid { rmid: 22 }, Lsn(at))
    );
    let custom = rewrite_record(at, |h| h.rmid = 200);
    assert!(check(FIRST, &custom).is_ok());
    let prev = rewrite_record(at, |h| h.prev = Lsn(0x70_0028));
    assert_eq!(
        kind_at(FIRST, &prev),
        (
            K::IncorrectPrevLink {
                prev: Lsn(0x70_0028)
            },
            Lsn(at)
        )
    );
    let mut zeroed = segment(7).to_vec();
    zeroed[(at - FIRST) as usize..PAGE as usize].fill(0);
    let e = check(FIRST, &zeroed).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid record length at 0/700078: wanted 24, got 0"
    );
    // The first record (NEXTOID, 30 bytes at 0/700028) is followed by 2 bytes of padding.
    let mut padded = segment(7).to_vec();
    padded[0x28 + 31] = 1;
    assert_eq!(
        kind_at(FIRST, &padded),
        (K::NonzeroPadding, Lsn(0x70_0028 + 31))
    );
    let mut crc = segment(7).to_vec();
    crc[0x28 + 29] ^= 1;
    let e = check(FIRST, &crc).unwrap_err();
    assert_eq!(
        e.to_string(),
        "incorrect resource manager data checksum in record at 0/700028"
    );
}

#[test]
fn overwrite_contrecord_from_real_crash_recovery() {
    let window = testdata::overwrite_window();
    let end = WINDOW_START + window.len() as u64;
    let mut v = validator(WINDOW_START);
    let mut size = 0;
    let seen = feed_collect(&mut v, &window, || {
        size = size % 7 + 1;
        size
    });
    assert_eq!(v.valid_end(), Lsn(end));
    assert!(v.boundary().in_switch_padding);
    // The commit at 0/FF9C60 is verified; the abandoned message at 0/FF9C88 never is; the
    // XLOG_OVERWRITE_CONTRECORD at 0/1000028 (42 bytes) is.
    let ends: Vec<u64> = seen.iter().map(|(l, _)| *l).collect();
    let after_commit = ends.iter().position(|&l| l == 0xFF_9C88).unwrap();
    assert_eq!(ends[after_commit + 1], 0x100_0058);
    assert_eq!(v.boundary().prev, Some(Lsn(0x100_00D0)));
    // Without the flag the abandoned record is an error.
    let page = (0x100_0000 - WINDOW_START) as usize;
    let mut bytes = window.clone();
    bytes[page + 2] &= !(XLP_FIRST_IS_OVERWRITE_CONTRECORD as u8);
    assert_eq!(
        kind_at(WINDOW_START, &bytes),
        (WalErrorKind::NoContrecordFlag, Lsn(0xFF_9C88))
    );
    // Resuming just before the abandoned record gives the same result.
    let mut head = validator(WINDOW_START);
    head.feed(&window[..0x1C90]).unwrap();
    assert_eq!(head.valid_end(), Lsn(0xFF_9C88));
    let mut r = WalValidator::resume(head.boundary(), cfg());
    r.feed(&window[0x1C88..]).unwrap();
    assert_eq!(r.valid_end(), Lsn(end));
}

#[test]
fn start_and_overflow_errors() {
    assert_eq!(
        WalValidator::new(Lsn(FIRST + 8), cfg()).unwrap_err().kind,
        WalErrorKind::NotPageAligned
    );
    let last = u64::MAX - PAGE + 1;
    let mut v = validator(last);
    let e = v.feed(&vec![0; PAGE as usize + 1]).unwrap_err();
    assert_eq!((e.kind, e.lsn), (WalErrorKind::PositionOverflow, Lsn(last)));
}

#[test]
fn random_splits_of_everything() {
    let mut state = 0x2545_F491_4F6C_DD1D;
    for _ in 0..3 {
        let mut v = validator(FIRST);
        let seen = feed_collect(&mut v, all(), || {
            1 + (xorshift(&mut state) % (1 << (xorshift(&mut state) % 18))) as usize
        });
        assert!(seen.contains(&(END, false)));
        assert_eq!(v.position(), Lsn(END));
    }
}

/// The checkpoint at 0/74D5F8 says `xid 0:726` (pg_waldump); a validator learns it when the
/// record has passed its checks, whatever the split, and keeps it after.
#[test]
fn learns_the_next_xid_of_a_checkpoint_record() {
    const CHECKPOINT: u64 = 0x74_D5F8;
    const CHECKPOINT_END: u64 = CHECKPOINT + 114;
    let bytes = all();
    let at = |lsn: u64| (lsn - FIRST) as usize;
    let mut v = validator(FIRST);
    v.feed(&bytes[..at(CHECKPOINT_END) - 1]).unwrap();
    assert_eq!(v.next_xid(), None, "before the record is complete");
    v.feed(&bytes[at(CHECKPOINT_END) - 1..at(CHECKPOINT_END)])
        .unwrap();
    assert_eq!(v.next_xid(), Some(726));
    v.feed(&bytes[at(CHECKPOINT_END)..]).unwrap();
    assert_eq!(v.next_xid(), Some(726));
    for chunk in [1, 7, 33, 8192] {
        let mut v = validator(FIRST);
        for piece in bytes.chunks(chunk) {
            v.feed(piece).unwrap();
        }
        assert_eq!(v.next_xid(), Some(726), "chunks of {chunk}");
    }
    // A damaged checkpoint record teaches nothing.
    let mut damaged = bytes[..at(CHECKPOINT_END)].to_vec();
    damaged[at(CHECKPOINT) + 24 + 2 + 24] ^= 1;
    let mut v = validator(FIRST);
    assert!(v.feed(&damaged).is_err());
    assert_eq!(v.next_xid(), None);
}
