//! Fuzz entry points for the WAL module, called by the cargo-fuzz targets (and by the unit
//! tests below). They never panic on any input; they panic only when a property the relay
//! relies on is broken.
//!
//! [`WalWriter`] lays WAL out the way PostgreSQL's `xlog.c` does (page headers, continuation
//! flags and `xlp_rem_len`, CRCs, MAXALIGN padding, the zero fill after `XLOG_SWITCH`, an
//! abandoned record followed by `XLP_FIRST_IS_OVERWRITE_CONTRECORD`), so that the fuzzer
//! reaches the record checks instead of stopping at the first page header, and so that a
//! validator's verdict on generated WAL can be compared with what was written.

use crate::types::{Lsn, SystemId, TimelineId, WAL_PAGE_SIZE, WalSegmentSize};

use super::{
    LongPageHeader, PageHeader, RM_XLOG_ID, RecordHeader, TimelineHistory, WalCheckConfig,
    WalError, WalValidator, XLOG_OVERWRITE_CONTRECORD, XLOG_SWITCH, XLP_BKP_REMOVABLE,
    XLP_FIRST_IS_CONTRECORD, XLP_FIRST_IS_OVERWRITE_CONTRECORD, XLP_LONG_HEADER,
    history_file_name_parse, maxalign, page_header_size, record_crc,
};

const PAGE: u64 = WAL_PAGE_SIZE as u64;
/// The system identifier of generated WAL (that of the captured test segments).
pub const FUZZ_SYSTEM_ID: SystemId = SystemId(7_712_515_731_830_208_278);
/// Generated WAL stops growing past this size.
const GENERATED_LIMIT: usize = 512 * 1024;
/// How many bytes the validator target feeds in chunks of 1 to 7 bytes, at most.
const TINY_CHUNKS_UP_TO: usize = 64 * 1024;

/// Writes valid WAL in memory, PostgreSQL's layout, timeline 1, page magic 0xD110.
#[derive(Clone, Debug)]
pub struct WalWriter {
    cfg: WalCheckConfig,
    start: Lsn,
    out: Vec<u8>,
    pos: u64,
    prev: Lsn,
    next_page_info: u16,
    valid_end: Lsn,
}

impl WalWriter {
    /// A writer starting at page boundary `start`; the first record's `xl_prev` is `start`.
    pub fn new(start: Lsn, cfg: WalCheckConfig) -> WalWriter {
        WalWriter {
            cfg,
            start,
            out: Vec::new(),
            pos: start.0,
            prev: start,
            next_page_info: 0,
            valid_end: start,
        }
    }

    /// The bytes written so far, from `start`.
    pub fn bytes(&self) -> &[u8] {
        &self.out
    }

    /// Where the bytes start.
    pub fn start(&self) -> Lsn {
        self.start
    }

    /// Where the bytes written so far end.
    pub fn position(&self) -> Lsn {
        Lsn(self.pos)
    }

    /// Where a validator started at `start` must put its `valid_end` after all the bytes.
    pub fn valid_end(&self) -> Lsn {
        self.valid_end
    }

    /// Appends a complete record and its padding; returns its start.
    pub fn record(&mut self, rmid: u8, info: u8, body: &[u8]) -> Lsn {
        let (start, bytes) = self.assemble(rmid, info, body);
        self.write(&bytes, false);
        self.pad();
        self.prev = start;
        self.valid_end = Lsn(self.pos);
        start
    }

    /// Appends the start of a record up to the next page boundary, then abandons it the way
    /// crash recovery does: the next page is flagged `XLP_FIRST_IS_OVERWRITE_CONTRECORD` and
    /// starts with an `XLOG_OVERWRITE_CONTRECORD` record. A record that fits in the page is
    /// written whole instead.
    pub fn abandoned_record(&mut self, rmid: u8, body: &[u8]) {
        let (start, bytes) = self.assemble(rmid, 0, body);
        if !self.write(&bytes, true) {
            self.pad();
            self.prev = start;
            self.valid_end = Lsn(self.pos);
            return;
        }
        self.next_page_info = XLP_FIRST_IS_OVERWRITE_CONTRECORD;
        let mut data = vec![255, 16];
        data.extend_from_slice(&start.0.to_le_bytes());
        data.extend_from_slice(&[0; 8]);
        self.record(RM_XLOG_ID, XLOG_OVERWRITE_CONTRECORD, &data);
    }

    /// Appends an `XLOG_SWITCH` record and zeros up to the end of its segment.
    pub fn switch(&mut self) {
        self.record(RM_XLOG_ID, XLOG_SWITCH, &[]);
        let size = self.cfg.segment_size;
        if size.offset_in_segment(Lsn(self.pos)) != 0 {
            let end = size.segment_start(Lsn(self.pos)).0 + size.bytes_u64();
            self.out
                .resize(self.out.len() + (end - self.pos) as usize, 0);
            self.pos = end;
        }
        self.valid_end = Lsn(self.pos);
    }

    /// The record's start and bytes (header with CRC, then body).
    fn assemble(&self, rmid: u8, info: u8, body: &[u8]) -> (Lsn, Vec<u8>) {
        let start = if self.pos.is_multiple_of(PAGE) {
            self.pos + page_header_size(Lsn(self.pos), self.cfg.segment_size) as u64
        } else {
            self.pos
        };
        let mut header = RecordHeader {
            tot_len: u32::try_from(24 + body.len()).unwrap_or(u32::MAX),
            xid: 0,
            prev: self.prev,
            info,
            rmid,
            crc: 0,
        };
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(body);
        header.crc = record_crc(&bytes).unwrap_or(0);
        bytes.splice(..24, header.to_bytes());
        (Lsn(start), bytes)
    }

    /// Writes record bytes across pages; with `stop_at_page`, stops at the first page
    /// boundary after the start. Returns whether it stopped early.
    fn write(&mut self, bytes: &[u8], stop_at_page: bool) -> bool {
        let mut left = bytes;
        while !left.is_empty() {
            let continuing = left.len() < bytes.len();
            if self.pos.is_multiple_of(PAGE) {
                if stop_at_page && continuing {
                    return true;
                }
                let rem_len = if continuing { left.len() } else { 0 };
                self.page_header(u32::try_from(rem_len).unwrap_or(u32::MAX));
            }
            let room = (PAGE - self.pos % PAGE) as usize;
            let (now, rest) = left.split_at(room.min(left.len()));
            self.out.extend_from_slice(now);
            self.pos += now.len() as u64;
            left = rest;
        }
        false
    }

    fn page_header(&mut self, rem_len: u32) {
        let segment_start = self.cfg.segment_size.offset_in_segment(Lsn(self.pos)) == 0;
        let mut info = std::mem::take(&mut self.next_page_info) | XLP_BKP_REMOVABLE;
        if rem_len > 0 {
            info |= XLP_FIRST_IS_CONTRECORD;
        }
        if segment_start {
            info |= XLP_LONG_HEADER;
        }
        let header = PageHeader {
            magic: 0xD110,
            info,
            tli: 1,
            pageaddr: Lsn(self.pos),
            rem_len,
            long: segment_start.then_some(LongPageHeader {
                system_id: self.cfg.system_id,
                segment_size: self.cfg.segment_size.bytes(),
                block_size: WAL_PAGE_SIZE,
            }),
        };
        let bytes = header.to_bytes();
        self.pos += bytes.len() as u64;
        self.out.extend_from_slice(&bytes);
    }

    fn pad(&mut self) {
        let end = maxalign(Lsn(self.pos)).map_or(self.pos, |l| l.0);
        self.out
            .resize(self.out.len() + (end - self.pos) as usize, 0);
        self.pos = end;
    }

    /// Builds WAL from a byte program: each 3-byte op appends a small, medium, page-filling,
    /// switch, abandoned or custom-rmgr record.
    pub fn generate(start: Lsn, cfg: WalCheckConfig, program: &[u8]) -> WalWriter {
        let mut w = WalWriter::new(start, cfg);
        for op in program.chunks_exact(3) {
            if w.out.len() > GENERATED_LIMIT {
                break;
            }
            let &[code, a, b] = op else { break };
            let len = usize::from(u16::from_le_bytes([a, b]));
            let body = vec![a ^ b; len];
            let small = body.get(..usize::from(a)).unwrap_or_default();
            match code % 6 {
                0 => {
                    w.record(1 + a % 21, b & 0xF0, small);
                }
                1 => {
                    w.record(10, 0, &body);
                }
                2 => w.fill_page(a),
                3 => w.switch(),
                4 => w.abandoned_record(9, &body),
                _ => {
                    w.record(128 | b, a & 0xF0, small);
                }
            }
        }
        w
    }

    /// A record ending `slack % 32` bytes before the end of the page, so that the next
    /// record's header is split at every possible offset.
    fn fill_page(&mut self, slack: u8) {
        let room = (PAGE - self.pos % PAGE) as usize;
        let body = room.saturating_sub(24 + usize::from(slack % 32));
        self.record(11, 0, &vec![slack; body]);
    }
}

/// What a validator made of a byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The first error, if any.
    pub result: Result<(), WalError>,
    /// `valid_end` at the end.
    pub valid_end: Lsn,
    /// `position` at the end.
    pub position: Lsn,
}

/// Feeds `bytes` from `start` in chunks chosen by `seed`, checking the invariants the relay
/// relies on at every step, and that resuming from a boundary taken half way reaches the
/// same verdict.
pub fn run_validator(bytes: &[u8], start: Lsn, cfg: WalCheckConfig, seed: u8) -> Outcome {
    let mut v = match WalValidator::new(start, cfg) {
        Ok(v) => v,
        Err(e) => {
            return Outcome {
                result: Err(e),
                valid_end: start,
                position: start,
            };
        }
    };
    let mut rng = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rest = bytes;
    let mut result = Ok(());
    let mut half = None;
    while !rest.is_empty() {
        let n = chunk_len(&mut rng, seed, bytes.len() - rest.len(), rest.len());
        let (chunk, tail) = rest.split_at(n);
        let before = v.clone();
        if let Err(e) = v.feed(chunk) {
            assert!(
                e.lsn >= before.valid_end(),
                "{e} before {}",
                before.valid_end()
            );
            result = Err(e);
            break;
        }
        assert!(v.valid_end() <= v.position());
        assert!(v.valid_end() >= before.valid_end());
        assert_eq!(v.position().0, before.position().0 + n as u64);
        rest = tail;
        if half.is_none() && rest.len() * 2 <= bytes.len() {
            half = Some(v.boundary());
        }
    }
    let outcome = Outcome {
        result,
        valid_end: v.valid_end(),
        position: v.position(),
    };
    if let Some(b) = half {
        let mut again = WalValidator::resume(b, cfg);
        let from = usize::try_from(b.lsn.0 - start.0).unwrap_or(usize::MAX);
        let r = again.feed(bytes.get(from..).unwrap_or_default());
        assert_eq!(r, outcome.result, "resumed at {b:?}");
        assert_eq!(again.valid_end(), outcome.valid_end, "resumed at {b:?}");
        if r.is_ok() {
            assert_eq!(again.position(), outcome.position);
        }
    }
    outcome
}

fn chunk_len(rng: &mut u64, seed: u8, fed: usize, left: usize) -> usize {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    // Byte-sized chunks only over the first bytes: past them (the zeros after a switch, say)
    // they would only slow the fuzzer down.
    let tiny = fed < TINY_CHUNKS_UP_TO;
    let pick = match seed % 4 {
        0 if tiny => 1,
        1 if tiny => 1 + (*rng % 7) as usize,
        0 | 1 => 1 + (*rng % 20_000) as usize,
        2 => 1 + (*rng % 20_000) as usize,
        _ => left,
    };
    pick.min(left)
}

/// Validator fuzz target. Five header bytes: `kind` (bit 0: generated rather than raw;
/// bits 1-2: start at 0, at segment 3 (raw: at the first page's `xlp_pageaddr`), at a page
/// inside segment 3, or in the last segment of the LSN space (generated: segment 1); bit 7:
/// corrupt one byte of generated WAL), the segment size exponent above 1 MiB (raw only), the
/// split pattern, and two bytes locating the corrupted byte. The rest is the WAL (raw) or
/// the program of [`WalWriter::generate`]. Generated WAL left intact must be accepted with
/// `valid_end` exactly where the writer says.
pub fn fuzz_validator(data: &[u8]) {
    let Some((&[kind, size_exp, seed, f0, f1], rest)) = data.split_first_chunk::<5>() else {
        return;
    };
    let generated = kind & 1 != 0;
    let exp = if generated {
        20
    } else {
        20 + u32::from(size_exp % 11)
    };
    let Ok(segment_size) = WalSegmentSize::new(1 << exp) else {
        return;
    };
    let cfg = WalCheckConfig {
        system_id: FUZZ_SYSTEM_ID,
        segment_size,
    };
    let size = segment_size.bytes_u64();
    let start = match (kind >> 1) & 3 {
        0 => 0,
        1 if generated => 3 * size,
        // Raw WAL copied from a real segment: start where its first page says it is.
        1 => PageHeader::parse(rest).map_or(0, |h| h.pageaddr.0 & !(PAGE - 1)),
        2 => 3 * size + PAGE * u64::from(size_exp),
        _ if generated => size,
        _ => u64::MAX - size + 1,
    };
    if !generated {
        run_validator(rest, Lsn(start), cfg, seed);
        return;
    }
    let w = WalWriter::generate(Lsn(start), cfg, rest);
    let mut bytes = w.bytes().to_vec();
    let corrupt = kind & 0x80 != 0 && !bytes.is_empty();
    if corrupt {
        let at = usize::from(u16::from_le_bytes([f0, f1])) * 8 + usize::from(seed % 8);
        let len = bytes.len();
        if let Some(b) = bytes.get_mut(at % len) {
            *b ^= f0 | 1;
        }
    }
    let outcome = run_validator(&bytes, Lsn(start), cfg, seed);
    if !corrupt {
        let expected = Outcome {
            result: Ok(()),
            valid_end: w.valid_end(),
            position: w.position(),
        };
        assert_eq!(outcome, expected);
    }
}

/// History fuzz target: the first two bytes pick the file's timeline, the rest is the file.
/// Whatever parses must format and parse back to the same history, and its lookups must
/// agree with its entries.
pub fn fuzz_history(data: &[u8]) {
    if let Some(t) = std::str::from_utf8(data)
        .ok()
        .and_then(history_file_name_parse)
    {
        assert_eq!(t.history_file_name().as_bytes(), data);
    }
    let Some((&[t0, t1], content)) = data.split_first_chunk::<2>() else {
        return;
    };
    let Some(timeline) = TimelineId::new(u32::from(u16::from_le_bytes([t0, t1]))) else {
        return;
    };
    let Ok(history) = TimelineHistory::parse(timeline, content) else {
        return;
    };
    let text = history.format();
    if text.len() <= super::HISTORY_FILE_MAX_SIZE {
        assert_eq!(
            TimelineHistory::parse(timeline, text.as_bytes()),
            Ok(history.clone())
        );
    }
    assert!(history.contains(timeline));
    for e in &history.entries {
        let (end, next) = history.switch_point(e.parent).unwrap_or((Lsn(0), e.parent));
        assert_eq!(end, e.switchpoint);
        assert!(next > e.parent && history.contains(next));
        assert!(history.timeline_of(e.switchpoint) > e.parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> WalCheckConfig {
        WalCheckConfig {
            system_id: FUZZ_SYSTEM_ID,
            segment_size: WalSegmentSize::new(1 << 20).unwrap(),
        }
    }

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    fn random_bytes(state: &mut u64, len: usize) -> Vec<u8> {
        (0..len).map(|_| xorshift(state) as u8).collect()
    }

    #[test]
    fn generated_wal_is_accepted_in_any_split() {
        let mut state = 0x1234_5678_9ABC_DEF1;
        for i in 0..40u32 {
            let ops = 1 + (xorshift(&mut state) % 30) as usize;
            // Small slices for short programs only: debug builds are slow.
            let seed = match ops {
                0..6 => 0,
                6..12 => 1,
                _ => 2 + i as u8 % 2,
            };
            let mut data = vec![1 | ((i as u8 % 3) << 1), 0, seed, 0, 0];
            data.extend(random_bytes(&mut state, ops * 3));
            fuzz_validator(&data);
        }
    }

    #[test]
    fn generated_wal_with_a_corrupt_byte_never_panics() {
        let mut state = 0x0F0F_1234_5678_9ABC;
        for i in 0..200u32 {
            let ops = 1 + (xorshift(&mut state) % 20) as usize;
            let mut data = vec![0x81 | ((i as u8 % 3) << 1), 0, (i % 3) as u8 + 1];
            data.extend(random_bytes(&mut state, 2 + ops * 3));
            fuzz_validator(&data);
        }
    }

    #[test]
    fn raw_bytes_never_panic() {
        let mut state = 0xDEAD_BEEF_CAFE_F00D;
        for i in 0..200u32 {
            let len = (xorshift(&mut state) % 20_000) as usize;
            let mut data = vec![(i as u8 % 4) << 1, i as u8, i as u8];
            data.extend(random_bytes(&mut state, len));
            fuzz_validator(&data);
        }
        // Real WAL, started where its first page says.
        let mut real = vec![2, 0, 2, 0, 0];
        real.extend_from_slice(&crate::wal::testdata::segment(7)[..100_000]);
        fuzz_validator(&real);
        // Near the end of the LSN space, and with a page-header-shaped prefix.
        let mut header = vec![6, 0, 1, 0, 0];
        header.extend(
            PageHeader {
                magic: 0xD110,
                info: XLP_LONG_HEADER,
                tli: 1,
                pageaddr: Lsn(u64::MAX - (1 << 20) + 1),
                rem_len: 0,
                long: Some(LongPageHeader {
                    system_id: FUZZ_SYSTEM_ID,
                    segment_size: 1 << 20,
                    block_size: WAL_PAGE_SIZE,
                }),
            }
            .to_bytes(),
        );
        header.extend([0; 64]);
        fuzz_validator(&header);
    }

    #[test]
    fn writer_layout_matches_postgres() {
        let mut w = WalWriter::new(Lsn(0x70_0000), cfg());
        let first = w.record(0, 0x30, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(first, Lsn(0x70_0028));
        assert_eq!(w.position(), Lsn(0x70_0028 + 32));
        let big = w.record(10, 0, &[7; 9000]);
        assert_eq!(big, Lsn(0x70_0048));
        // The next page continues the record: flag and remaining length.
        let page = PageHeader::parse(&w.bytes()[8192..]).unwrap();
        assert_eq!(page.info, XLP_FIRST_IS_CONTRECORD | XLP_BKP_REMOVABLE);
        assert_eq!(page.rem_len, 9024 - (8192 - 0x48));
        w.switch();
        assert_eq!(w.position(), Lsn(0x80_0000));
        assert_eq!(w.valid_end(), Lsn(0x80_0000));
        let out = run_validator(w.bytes(), w.start(), cfg(), 2);
        assert_eq!(out.result, Ok(()));
        assert_eq!(out.valid_end, Lsn(0x80_0000));
    }

    #[test]
    fn history_target() {
        let mut state = 0x5555_AAAA_1234_4321;
        fuzz_history(b"00000002.history");
        fuzz_history(b"\x03\x001\t0/3000158\tno recovery target specified\n\n2\t0/5000060\tx\n");
        fuzz_history(b"\x02\x00");
        for _ in 0..500 {
            let len = (xorshift(&mut state) % 64) as usize;
            let mut data = vec![9, 0];
            for b in random_bytes(&mut state, len) {
                let alphabet = b"0123456789ABCDEF/\t\n #x";
                data.push(alphabet[usize::from(b) % alphabet.len()]);
            }
            fuzz_history(&data);
        }
    }
}
