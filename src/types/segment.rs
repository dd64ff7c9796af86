//! WAL segment sizes, segment numbers and segment file names (`xlog_internal.h`).
//!
//! A segment file is named `%08X%08X%08X` from its timeline, `segno / segments_per_xlogid` and
//! `segno % segments_per_xlogid`, where `segments_per_xlogid = 2^32 / segment size`
//! (`XLogFileName`, `XLogFromFileName`). The size is a power of two from 1 MiB to 1 GiB
//! (`IsValidWalSegSize`) and is learnt from the server, never assumed.

use std::fmt;

use super::{Lsn, TimelineId};

/// The WAL page size, `XLOG_BLCKSZ`.
pub const WAL_PAGE_SIZE: u32 = 8192;

/// walsender's `MAX_SEND_SIZE`: the most WAL one XLogData carries, 16 pages (128 KiB).
pub const MAX_SEND_SIZE: u64 = 16 * WAL_PAGE_SIZE as u64;

/// A WAL segment size: a power of two from 1 MiB to 1 GiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WalSegmentSize(u32);

/// Why a value is not a valid WAL segment size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid WAL segment size \"{0}\": it must be a power of two between 1 MB and 1 GB")]
pub struct InvalidSegmentSize(pub String);

impl WalSegmentSize {
    /// PostgreSQL's default, 16 MiB.
    pub const DEFAULT: WalSegmentSize = WalSegmentSize(16 * 1024 * 1024);
    const MIN: u32 = 1024 * 1024;
    const MAX: u32 = 1024 * 1024 * 1024;

    /// A segment size from a byte count.
    ///
    /// # Errors
    /// When `bytes` is not a power of two between 1 MiB and 1 GiB.
    pub fn new(bytes: u32) -> Result<WalSegmentSize, InvalidSegmentSize> {
        if bytes.is_power_of_two() && (Self::MIN..=Self::MAX).contains(&bytes) {
            Ok(WalSegmentSize(bytes))
        } else {
            Err(InvalidSegmentSize(bytes.to_string()))
        }
    }

    /// Parses `SHOW wal_segment_size` output such as `16MB` or `1GB`, the way
    /// `streamutil.c:RetrieveWalSegSize` reads it (`%d%2s`, unit `MB` or `GB`).
    ///
    /// # Errors
    /// When the text is not a number followed by `MB` or `GB`, or the size is invalid.
    pub fn parse_show(text: &str) -> Result<WalSegmentSize, InvalidSegmentSize> {
        let err = || InvalidSegmentSize(text.chars().take(32).collect());
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        let (num, unit) = text.split_at(digits);
        let n: u32 = num.parse().map_err(|_| err())?;
        let mult = match unit {
            "MB" => 1024 * 1024,
            "GB" => 1024 * 1024 * 1024,
            _ => return Err(err()),
        };
        let bytes = n.checked_mul(mult).ok_or_else(err)?;
        WalSegmentSize::new(bytes).map_err(|_| err())
    }

    /// The size in bytes.
    pub fn bytes(self) -> u32 {
        self.0
    }

    /// The size in bytes as a `u64`.
    pub fn bytes_u64(self) -> u64 {
        u64::from(self.0)
    }

    /// The text `SHOW wal_segment_size` prints for this size (`16MB`, `1GB`).
    pub fn show_text(self) -> String {
        if self.0 >= Self::MAX {
            format!("{}GB", self.0 / Self::MAX)
        } else {
            format!("{}MB", self.0 / Self::MIN)
        }
    }

    /// Segments per 4 GiB "xlogid", `XLogSegmentsPerXLogId`.
    pub fn segments_per_xlogid(self) -> u64 {
        0x1_0000_0000 / u64::from(self.0)
    }

    /// The segment holding `lsn`.
    pub fn segment_of(self, lsn: Lsn) -> SegmentNo {
        SegmentNo(lsn.0 / u64::from(self.0))
    }

    /// The offset of `lsn` inside its segment.
    pub fn offset_in_segment(self, lsn: Lsn) -> u32 {
        // The mask is below 2^30, so the value fits in u32.
        (lsn.0 & u64::from(self.0 - 1)) as u32
    }

    /// The first LSN of the segment holding `lsn`.
    pub fn segment_start(self, lsn: Lsn) -> Lsn {
        lsn.align_down(u64::from(self.0))
    }

    /// The first LSN of segment `seg`, or `None` past the end of the LSN space.
    pub fn start_of(self, seg: SegmentNo) -> Option<Lsn> {
        seg.0.checked_mul(u64::from(self.0)).map(Lsn)
    }
}

impl fmt::Display for WalSegmentSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.show_text())
    }
}

/// A segment number (`XLogSegNo`): `lsn / segment size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentNo(pub u64);

impl SegmentNo {
    /// The next segment, or `None` at the end of the LSN space.
    pub fn next(self) -> Option<SegmentNo> {
        self.0.checked_add(1).map(SegmentNo)
    }

    /// The previous segment, or `None` for segment 0.
    pub fn prev(self) -> Option<SegmentNo> {
        self.0.checked_sub(1).map(SegmentNo)
    }
}

/// A WAL segment file name: timeline and segment number, as `XLogFileName` writes them.
///
/// ```
/// use walrelay::types::{Lsn, SegmentName, TimelineId, WalSegmentSize};
///
/// let size = WalSegmentSize::parse_show("16MB").unwrap();
/// let name = SegmentName { timeline: TimelineId::new(2).unwrap(), segno: size.segment_of(Lsn(0x362_FB00)) };
/// assert_eq!(name.file_name(size), "000000020000000000000003");
/// assert_eq!(SegmentName::parse("000000020000000000000003", size), Some(name));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    /// The timeline of the file.
    pub timeline: TimelineId,
    /// The segment number.
    pub segno: SegmentNo,
}

impl SegmentName {
    /// The 24-character file name for `size`.
    pub fn file_name(self, size: WalSegmentSize) -> String {
        let per = size.segments_per_xlogid();
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline.get(),
            self.segno.0 / per,
            self.segno.0 % per
        )
    }

    /// Parses a 24-character segment file name (`IsXLogFileName` and `XLogFromFileName`).
    /// Returns `None` for anything else, including a low part out of range for `size`.
    pub fn parse(name: &str, size: WalSegmentSize) -> Option<SegmentName> {
        if name.len() != 24 || !name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')) {
            return None;
        }
        let field =
            |r: std::ops::Range<usize>| name.get(r).and_then(|s| u32::from_str_radix(s, 16).ok());
        let timeline = TimelineId::new(field(0..8)?)?;
        let hi = u64::from(field(8..16)?);
        let lo = u64::from(field(16..24)?);
        let per = size.segments_per_xlogid();
        if lo >= per {
            return None;
        }
        let segno = hi.checked_mul(per)?.checked_add(lo)?;
        Some(SegmentName {
            timeline,
            segno: SegmentNo(segno),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tli(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    #[test]
    fn sizes() {
        assert!(WalSegmentSize::new(1 << 20).is_ok());
        assert!(WalSegmentSize::new(1 << 30).is_ok());
        assert!(WalSegmentSize::new(1 << 19).is_err());
        assert!(WalSegmentSize::new(1 << 31).is_err());
        assert!(WalSegmentSize::new(17 << 20).is_err());
        assert_eq!(
            WalSegmentSize::parse_show("16MB"),
            WalSegmentSize::new(16 << 20)
        );
        assert_eq!(
            WalSegmentSize::parse_show("1GB"),
            WalSegmentSize::new(1 << 30)
        );
        assert_eq!(
            WalSegmentSize::parse_show("1MB"),
            WalSegmentSize::new(1 << 20)
        );
        for bad in [
            "17MB",
            "0",
            "banana",
            "",
            "16",
            "16kB",
            "2GB",
            "4096MB",
            "99999999999MB",
            "-16MB",
        ] {
            assert!(WalSegmentSize::parse_show(bad).is_err(), "{bad}");
        }
        assert_eq!(WalSegmentSize::DEFAULT.show_text(), "16MB");
        assert_eq!(WalSegmentSize::new(1 << 30).unwrap().show_text(), "1GB");
    }

    #[test]
    fn names_match_postgres() {
        // pg_walfile_name-style examples: TLI 2, LSN 0/362FB00, 16 MiB -> segment 3.
        let s16 = WalSegmentSize::DEFAULT;
        let seg = s16.segment_of(Lsn(0x362_FB00));
        let name = SegmentName {
            timeline: tli(2),
            segno: seg,
        };
        assert_eq!(name.file_name(s16), "000000020000000000000003");
        // 1 MiB segments: 4096 per xlogid.
        let s1 = WalSegmentSize::new(1 << 20).unwrap();
        let n = SegmentName {
            timeline: tli(1),
            segno: s1.segment_of(Lsn(0x1_0230_0000)),
        };
        assert_eq!(n.file_name(s1), "000000010000000100000023");
        assert_eq!(SegmentName::parse("000000010000000100000023", s1), Some(n));
        // The low field must stay below segments_per_xlogid.
        assert_eq!(SegmentName::parse("000000010000000000000100", s16), None);
        assert_eq!(SegmentName::parse("00000000000000000000000A", s16), None);
        assert_eq!(SegmentName::parse("00000001000000000000000a", s16), None);
        assert_eq!(
            SegmentName::parse("000000010000000000000001.partial", s16),
            None
        );
    }

    #[test]
    fn names_round_trip_near_the_end() {
        for size in [1u32 << 20, 16 << 20, 1 << 30] {
            let size = WalSegmentSize::new(size).unwrap();
            let last = size.segment_of(Lsn::MAX);
            for segno in [SegmentNo(0), SegmentNo(1), last] {
                let n = SegmentName {
                    timeline: tli(0xFFFF_FFFF),
                    segno,
                };
                assert_eq!(SegmentName::parse(&n.file_name(size), size), Some(n));
            }
            assert_eq!(size.start_of(last).map(|l| size.segment_of(l)), Some(last));
            assert_eq!(last.next().and_then(|s| size.start_of(s)), None);
        }
    }

    #[test]
    fn offsets() {
        let s = WalSegmentSize::DEFAULT;
        assert_eq!(s.offset_in_segment(Lsn(0x300_0100)), 0x100);
        assert_eq!(s.segment_start(Lsn(0x300_0100)), Lsn(0x300_0000));
    }
}
