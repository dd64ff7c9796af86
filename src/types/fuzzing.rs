//! Fuzz entry point for the core newtypes; `fuzz/fuzz_targets/*.rs` only call it.
//!
//! Checks the text forms PostgreSQL defines (`%X/%X` for an LSN as `pg_lsn` prints it, the
//! decimal timeline and system identifier, `SHOW wal_segment_size`, and `XLogFileName` /
//! `XLogFromFileName` for segment names) and the segment arithmetic of `xlog_internal.h`
//! (`XLByteToSeg`, `XLogSegmentOffset`, `XLogSegNoOffsetToRecPtr`).
//!
//! Properties: no panic and no overflow on any input, including LSNs near `u64::MAX`;
//! whatever parses prints back to text that parses to the same value; a parsed segment name
//! prints back to exactly the same name; an LSN's segment, segment start and offset agree.

use super::{Lsn, SegmentName, SegmentNo, SystemId, TimelineId, WAL_PAGE_SIZE, WalSegmentSize};

/// The most input lines one run parses, to keep every run short.
const MAX_LINES: usize = 16;
/// The most 8-byte words one run uses as LSNs (each for every segment size).
const MAX_WORDS: usize = 4;

/// Reads `data` two ways: as text, one candidate per line, parsed as every type with a text
/// form; and as little-endian 8-byte words, each used (and its complement, so that small
/// inputs reach the top of the LSN space) as an LSN for the arithmetic of every segment size.
pub fn fuzz_lsn_and_segment_names(data: &[u8]) {
    let sizes = segment_sizes();
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n').take(MAX_LINES) {
        check_text(line, &sizes);
    }
    let mut previous = Lsn::INVALID;
    for word in data.chunks(8).take(MAX_WORDS) {
        let mut bytes = [0u8; 8];
        for (to, from) in bytes.iter_mut().zip(word) {
            *to = *from;
        }
        let v = u64::from_le_bytes(bytes);
        for lsn in [Lsn(v), Lsn(!v)] {
            check_lsn(lsn, previous);
            for &size in &sizes {
                check_segment_arithmetic(lsn, size);
            }
            previous = lsn;
        }
    }
}

/// Every valid segment size, 1 MiB to 1 GiB (`IsValidWalSegSize`).
fn segment_sizes() -> Vec<WalSegmentSize> {
    (20..=30)
        .filter_map(|shift| WalSegmentSize::new(1 << shift).ok())
        .collect()
}

/// Parses `s` as each type and checks that what parses round-trips through its text form.
fn check_text(s: &str, sizes: &[WalSegmentSize]) {
    if let Ok(lsn) = s.parse::<Lsn>() {
        let printed = lsn.to_string();
        assert_eq!(printed.parse::<Lsn>(), Ok(lsn));
        assert!(printed.eq_ignore_ascii_case(s) || s.len() > printed.len());
    }
    if let Ok(tli) = s.parse::<TimelineId>() {
        assert_eq!(TimelineId::new(tli.get()), Some(tli));
        assert_eq!(tli.to_string().parse::<TimelineId>(), Ok(tli));
        assert_eq!(tli.history_file_name().len(), "00000001.history".len());
    }
    if let Ok(id) = s.parse::<SystemId>() {
        assert_eq!(id.to_string().parse::<SystemId>(), Ok(id));
    }
    if let Ok(size) = WalSegmentSize::parse_show(s) {
        assert_eq!(WalSegmentSize::parse_show(&size.show_text()), Ok(size));
        assert_eq!(WalSegmentSize::new(size.bytes()), Ok(size));
    }
    for &size in sizes {
        if let Some(name) = SegmentName::parse(s, size) {
            assert_eq!(name.file_name(size), s);
            let start = size.start_of(name.segno);
            assert!(start.is_some(), "{s} has no start LSN for {size}");
            assert_eq!(start.map(|lsn| size.segment_of(lsn)), Some(name.segno));
        }
    }
}

/// Checks an LSN's text form and its checked arithmetic against `other`.
fn check_lsn(lsn: Lsn, other: Lsn) {
    assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
    assert_eq!(
        lsn.checked_add(other.0),
        lsn.0.checked_add(other.0).map(Lsn)
    );
    assert_eq!(
        lsn.checked_sub(other.0),
        lsn.0.checked_sub(other.0).map(Lsn)
    );
    assert_eq!(
        lsn.saturating_distance(other),
        lsn.0.saturating_sub(other.0)
    );
    let page = lsn.align_down(u64::from(WAL_PAGE_SIZE));
    assert!(page <= lsn && lsn.0 - page.0 < u64::from(WAL_PAGE_SIZE));
}

/// Checks that segment, segment start, offset and file name of `lsn` agree for `size`, and
/// that stepping to the neighbouring segments fails only at the ends of the LSN space.
fn check_segment_arithmetic(lsn: Lsn, size: WalSegmentSize) {
    let segno = size.segment_of(lsn);
    let start = size.segment_start(lsn);
    let offset = size.offset_in_segment(lsn);
    assert_eq!(size.start_of(segno), Some(start));
    assert!(offset < size.bytes());
    assert_eq!(start.checked_add(u64::from(offset)), Some(lsn));

    let timeline = TimelineId::new(lsn.0 as u32).unwrap_or(TimelineId::ONE);
    let name = SegmentName { timeline, segno };
    let file_name = name.file_name(size);
    assert_eq!(file_name.len(), 24);
    assert_eq!(SegmentName::parse(&file_name, size), Some(name));

    let next_start = segno.next().and_then(|next| size.start_of(next));
    assert_eq!(next_start, start.checked_add(size.bytes_u64()));
    let last = size.segment_of(Lsn::MAX);
    assert_eq!(next_start.is_none(), segno == last);
    assert_eq!(segno.prev().is_none(), segno == SegmentNo(0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_seeds() {
        fuzz_lsn_and_segment_names(b"");
        fuzz_lsn_and_segment_names(b"16/B374D848\n0/0000000A\nffffffff/ffffffff\n0/");
        fuzz_lsn_and_segment_names(b"1\n4294967295\n4294967296\n0\n7712484032370382654");
        fuzz_lsn_and_segment_names(b"16MB\n1GB\n1MB\n2GB\n17MB");
        fuzz_lsn_and_segment_names(b"000000010000000000000007\nFFFFFFFFFFFFFFFF000000FF");
        fuzz_lsn_and_segment_names(b"FFFFFFFFFFFFFFFF00000FFF\n000000010000000100000023");
        fuzz_lsn_and_segment_names(&[0xFF; 24]);
        fuzz_lsn_and_segment_names(&[0x00; 17]);
    }

    #[test]
    fn reaches_the_end_of_the_lsn_space() {
        // A zero word is also tried as its complement, u64::MAX.
        let size = WalSegmentSize::new(1 << 20).unwrap();
        check_segment_arithmetic(Lsn::MAX, size);
        check_segment_arithmetic(Lsn(u64::MAX - (1 << 20)), size);
        check_lsn(Lsn::MAX, Lsn::MAX);
        check_lsn(Lsn::INVALID, Lsn::MAX);
    }
}
