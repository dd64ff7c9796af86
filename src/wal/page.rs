//! WAL page headers (`XLogPageHeaderData`, `XLogLongPageHeaderData` in `xlog_internal.h`) and
//! the stateless part of `xlogreader.c:XLogReaderValidatePageHeader`.
//!
//! Every 8 KiB page starts with a 24-byte short header; the first page of each segment starts
//! with a 40-byte long header that also carries the system identifier, the segment size and
//! the page size. Fields are little-endian (the primary's byte order on x86-64 and aarch64).

use crate::types::{Lsn, SystemId, TimelineId, WAL_PAGE_SIZE, WalSegmentSize};

use super::WalErrorKind;

/// `XLP_FIRST_IS_CONTRECORD`: the page starts with the continuation of a record.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `XLP_LONG_HEADER`: the page has a long header (first page of a segment).
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// `XLP_BKP_REMOVABLE`: no backup forced full-page writes when the page was started.
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// `XLP_FIRST_IS_OVERWRITE_CONTRECORD`: the record left incomplete on the previous page was
/// abandoned, and an `XLOG_OVERWRITE_CONTRECORD` record starts this page instead.
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// `XLP_ALL_FLAGS`: every defined `xlp_info` bit.
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// `SizeOfXLogShortPHD`.
pub const SIZE_OF_SHORT_PAGE_HEADER: usize = 24;
/// `SizeOfXLogLongPHD`.
pub const SIZE_OF_LONG_PAGE_HEADER: usize = 40;

/// `XLOG_PAGE_MAGIC` of each supported major version, as `(magic, major)`.
pub const WAL_PAGE_MAGICS: [(u16, u32); 7] = [
    (0xD101, 12),
    (0xD106, 13),
    (0xD10D, 14),
    (0xD110, 15),
    (0xD113, 16),
    (0xD116, 17),
    (0xD118, 18),
];

/// The PostgreSQL major version that writes WAL pages with `magic`, if supported.
pub fn major_version_of_magic(magic: u16) -> Option<u32> {
    WAL_PAGE_MAGICS
        .iter()
        .find(|(m, _)| *m == magic)
        .map(|(_, major)| *major)
}

/// The page magic written by PostgreSQL major version `major`, if supported.
pub fn page_magic_of_major(major: u32) -> Option<u16> {
    WAL_PAGE_MAGICS
        .iter()
        .find(|(_, v)| *v == major)
        .map(|(m, _)| *m)
}

/// The size of the header of the page holding `lsn`: long on the first page of a segment,
/// short elsewhere (`XLogPageHeaderSize`).
pub fn page_header_size(lsn: Lsn, segment_size: WalSegmentSize) -> usize {
    if segment_size.offset_in_segment(lsn) < WAL_PAGE_SIZE {
        SIZE_OF_LONG_PAGE_HEADER
    } else {
        SIZE_OF_SHORT_PAGE_HEADER
    }
}

/// What WAL is checked against: the upstream's identity and segment size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalCheckConfig {
    /// The system identifier every long page header must carry. `SystemId(0)` skips the
    /// check, as `xlogreader.c` does when it does not know the identifier.
    pub system_id: SystemId,
    /// The segment size every long page header must carry, and where long headers are.
    pub segment_size: WalSegmentSize,
}

/// The extra fields of a long page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongPageHeader {
    /// `xlp_sysid`.
    pub system_id: SystemId,
    /// `xlp_seg_size`.
    pub segment_size: u32,
    /// `xlp_xlog_blcksz`.
    pub block_size: u32,
}

/// A parsed page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    /// `xlp_magic`.
    pub magic: u16,
    /// `xlp_info` flags.
    pub info: u16,
    /// `xlp_tli`, the timeline in effect when the page was started.
    pub tli: u32,
    /// `xlp_pageaddr`, the LSN of the page's first byte.
    pub pageaddr: Lsn,
    /// `xlp_rem_len`, the bytes of a continued record still to come at the page start.
    pub rem_len: u32,
    /// The long-header fields, present when `XLP_LONG_HEADER` is set and the bytes hold them.
    pub long: Option<LongPageHeader>,
}

impl LongPageHeader {
    fn parse(bytes: &[u8]) -> Option<LongPageHeader> {
        Some(LongPageHeader {
            system_id: SystemId(le_u64(bytes, 24)?),
            segment_size: le_u32(bytes, 32)?,
            block_size: le_u32(bytes, 36)?,
        })
    }
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl PageHeader {
    /// Parses a page header from the start of `bytes`. The long fields are read when
    /// `XLP_LONG_HEADER` is set and `bytes` holds 40 bytes. `None` when fewer than 24 bytes.
    pub fn parse(bytes: &[u8]) -> Option<PageHeader> {
        bytes.get(..SIZE_OF_SHORT_PAGE_HEADER)?;
        let info = le_u16(bytes, 2)?;
        let long = if info & XLP_LONG_HEADER != 0 {
            LongPageHeader::parse(bytes)
        } else {
            None
        };
        Some(PageHeader {
            magic: le_u16(bytes, 0)?,
            info,
            tli: le_u32(bytes, 4)?,
            pageaddr: Lsn(le_u64(bytes, 8)?),
            rem_len: le_u32(bytes, 16)?,
            long,
        })
    }

    /// The header's bytes: 40 with long fields, else 24 (the 4 trailing bytes of the short
    /// header are zero, as PostgreSQL writes them).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIZE_OF_LONG_PAGE_HEADER);
        out.extend_from_slice(&self.magic.to_le_bytes());
        out.extend_from_slice(&self.info.to_le_bytes());
        out.extend_from_slice(&self.tli.to_le_bytes());
        out.extend_from_slice(&self.pageaddr.0.to_le_bytes());
        out.extend_from_slice(&self.rem_len.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        if let Some(long) = self.long {
            out.extend_from_slice(&long.system_id.0.to_le_bytes());
            out.extend_from_slice(&long.segment_size.to_le_bytes());
            out.extend_from_slice(&long.block_size.to_le_bytes());
        }
        out
    }

    /// Whether `flag` (one of the `XLP_*` constants) is set.
    pub fn has(&self, flag: u16) -> bool {
        self.info & flag != 0
    }

    /// The timeline, or `None` for the invalid 0.
    pub fn timeline(&self) -> Option<TimelineId> {
        TimelineId::new(self.tli)
    }

    /// The checks of `XLogReaderValidatePageHeader` that need no history, in its order:
    /// a supported magic, no unknown `xlp_info` bits, a long header exactly at segment starts
    /// with the expected system identifier, segment size and page size, `xlp_pageaddr` equal
    /// to `page`, and a non-zero timeline.
    ///
    /// # Errors
    /// The first check that fails.
    pub fn check(&self, page: Lsn, cfg: &WalCheckConfig) -> Result<(), WalErrorKind> {
        if major_version_of_magic(self.magic).is_none() {
            return Err(WalErrorKind::InvalidMagic { magic: self.magic });
        }
        let segment_start = cfg.segment_size.offset_in_segment(page) == 0;
        if self.info & !XLP_ALL_FLAGS != 0 || self.has(XLP_LONG_HEADER) != segment_start {
            return Err(WalErrorKind::InvalidInfoBits { info: self.info });
        }
        if let Some(long) = self.long {
            check_long(&long, cfg)?;
        }
        if self.pageaddr != page {
            return Err(WalErrorKind::UnexpectedPageAddr {
                pageaddr: self.pageaddr,
            });
        }
        if self.tli == 0 {
            return Err(WalErrorKind::InvalidTimeline);
        }
        Ok(())
    }
}

fn check_long(long: &LongPageHeader, cfg: &WalCheckConfig) -> Result<(), WalErrorKind> {
    if cfg.system_id.0 != 0 && long.system_id != cfg.system_id {
        return Err(WalErrorKind::SystemIdMismatch {
            found: long.system_id,
            expected: cfg.system_id,
        });
    }
    if long.segment_size != cfg.segment_size.bytes() {
        return Err(WalErrorKind::SegmentSizeMismatch {
            found: long.segment_size,
        });
    }
    if long.block_size != WAL_PAGE_SIZE {
        return Err(WalErrorKind::BlockSizeMismatch {
            found: long.block_size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSID: SystemId = SystemId(7_712_515_731_830_208_278);

    fn cfg() -> WalCheckConfig {
        WalCheckConfig {
            system_id: SYSID,
            segment_size: WalSegmentSize::new(1 << 20).unwrap(),
        }
    }

    fn long_header() -> PageHeader {
        PageHeader {
            magic: 0xD110,
            info: XLP_LONG_HEADER | XLP_BKP_REMOVABLE,
            tli: 1,
            pageaddr: Lsn(0x70_0000),
            rem_len: 0,
            long: Some(LongPageHeader {
                system_id: SYSID,
                segment_size: 1 << 20,
                block_size: 8192,
            }),
        }
    }

    #[test]
    fn parses_real_long_header() {
        // The first 40 bytes of segment 000000010000000000000007 in tests/data/wal.
        let bytes = [
            0x10, 0xD1, 0x06, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x70, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x16, 0xF7, 0x59, 0x08,
            0x32, 0x5C, 0x08, 0x6B, 0x00, 0x00, 0x10, 0x00, 0x00, 0x20, 0x00, 0x00,
        ];
        let h = PageHeader::parse(&bytes).unwrap();
        assert_eq!(h, long_header());
        assert_eq!(h.to_bytes(), bytes);
        assert_eq!(h.check(Lsn(0x70_0000), &cfg()), Ok(()));
        assert_eq!(major_version_of_magic(h.magic), Some(15));
        assert_eq!(h.timeline(), Some(TimelineId::ONE));
    }

    #[test]
    fn magic_table() {
        assert_eq!(major_version_of_magic(0xD101), Some(12));
        assert_eq!(major_version_of_magic(0xD118), Some(18));
        assert_eq!(major_version_of_magic(0xD111), None);
        assert_eq!(page_magic_of_major(16), Some(0xD113));
        assert_eq!(page_magic_of_major(11), None);
        for (magic, major) in WAL_PAGE_MAGICS {
            assert_eq!(page_magic_of_major(major), Some(magic));
        }
    }

    #[test]
    fn header_sizes() {
        let seg = cfg().segment_size;
        assert_eq!(page_header_size(Lsn(0x70_0000), seg), 40);
        assert_eq!(page_header_size(Lsn(0x70_1FFF), seg), 40);
        assert_eq!(page_header_size(Lsn(0x70_2000), seg), 24);
        assert_eq!(PageHeader::parse(&[0; 23]), None);
        // A long flag without the long bytes parses as a short header.
        let short = PageHeader::parse(&long_header().to_bytes()[..24]).unwrap();
        assert_eq!(short.long, None);
    }

    #[test]
    fn each_check_fires() {
        let c = cfg();
        let at = Lsn(0x70_0000);
        let with = |f: &dyn Fn(&mut PageHeader)| {
            let mut h = long_header();
            f(&mut h);
            h.check(at, &c)
        };
        assert_eq!(
            with(&|h| h.magic = 0xD111),
            Err(WalErrorKind::InvalidMagic { magic: 0xD111 })
        );
        assert_eq!(
            with(&|h| h.info |= 0x10),
            Err(WalErrorKind::InvalidInfoBits { info: 0x16 })
        );
        assert_eq!(
            with(&|h| h.info &= !XLP_LONG_HEADER),
            Err(WalErrorKind::InvalidInfoBits { info: 0x4 })
        );
        assert_eq!(
            with(&|h| h.long.as_mut().unwrap().system_id = SystemId(1)),
            Err(WalErrorKind::SystemIdMismatch {
                found: SystemId(1),
                expected: SYSID
            })
        );
        assert_eq!(
            with(&|h| h.long.as_mut().unwrap().segment_size = 16 << 20),
            Err(WalErrorKind::SegmentSizeMismatch { found: 16 << 20 })
        );
        assert_eq!(
            with(&|h| h.long.as_mut().unwrap().block_size = 4096),
            Err(WalErrorKind::BlockSizeMismatch { found: 4096 })
        );
        assert_eq!(
            with(&|h| h.pageaddr = Lsn(0x60_0000)),
            Err(WalErrorKind::UnexpectedPageAddr {
                pageaddr: Lsn(0x60_0000)
            })
        );
        assert_eq!(with(&|h| h.tli = 0), Err(WalErrorKind::InvalidTimeline));
        // A long header in the middle of a segment is as wrong as a short one at its start.
        let mut mid = long_header();
        mid.pageaddr = Lsn(0x70_2000);
        assert_eq!(
            mid.check(Lsn(0x70_2000), &c),
            Err(WalErrorKind::InvalidInfoBits { info: 0x6 })
        );
        // An unknown system identifier is not checked.
        let anyone = WalCheckConfig {
            system_id: SystemId(0),
            ..c
        };
        assert_eq!(long_header().check(at, &anyone), Ok(()));
    }
}
