//! Errors found while checking WAL, worded like PostgreSQL's `xlogreader.c`
//! (`XLogReaderValidatePageHeader`, `ValidXLogRecordHeader`, `ValidXLogRecord`,
//! `XLogDecodeNextRecord`), so that a log line from the relay reads like the one a standby
//! would print for the same bytes.

use std::fmt;

use crate::types::{Lsn, SegmentName, SystemId, TimelineId, WalSegmentSize};

/// A problem in WAL bytes: where it is and what it is.
///
/// The display form follows PostgreSQL's messages, e.g. `invalid record length at 0/B00070:
/// wanted 24, got 0` or `unexpected pageaddr 0/362E000 in log segment
/// 000000010000000000000003, offset 6496256`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub struct WalError {
    /// Where the problem is: the page start for page-header problems, the record start for
    /// record problems (as PostgreSQL reports them), the offending byte for padding problems.
    pub lsn: Lsn,
    /// What is wrong.
    pub kind: WalErrorKind,
    /// The timeline in effect, used to name the segment file in messages.
    pub timeline: TimelineId,
    /// The segment size, used to name the segment file in messages.
    pub segment_size: WalSegmentSize,
}

/// What is wrong with WAL bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalErrorKind {
    /// A validator was asked to start somewhere other than a page boundary.
    NotPageAligned,
    /// The bytes would run past the end of the LSN space.
    PositionOverflow,
    /// `xlp_magic` is not the magic of a supported major version (12 to 18).
    InvalidMagic {
        /// The magic found.
        magic: u16,
    },
    /// `xlp_magic` differs from the magic of the earlier pages.
    MagicChanged {
        /// The magic found.
        magic: u16,
        /// The magic of the earlier pages.
        expected: u16,
    },
    /// `xlp_info` has unknown bits, or the long-header flag is set where it must not be, or
    /// missing at a segment start.
    InvalidInfoBits {
        /// The flags found.
        info: u16,
    },
    /// `xlp_pageaddr` is not the page's own LSN (typically a recycled segment).
    UnexpectedPageAddr {
        /// The address found.
        pageaddr: Lsn,
    },
    /// `xlp_tli` is 0.
    InvalidTimeline,
    /// `xlp_tli` is lower than on an earlier page.
    OutOfSequenceTimeline {
        /// The timeline found.
        tli: TimelineId,
        /// The highest timeline seen before.
        after: TimelineId,
    },
    /// `xlp_tli` is above the timeline being received.
    TimelineBeyondMax {
        /// The timeline found.
        tli: TimelineId,
        /// The highest timeline allowed.
        max: TimelineId,
    },
    /// The long header's `xlp_sysid` is not the expected system identifier.
    SystemIdMismatch {
        /// The identifier found.
        found: SystemId,
        /// The identifier expected.
        expected: SystemId,
    },
    /// The long header's `xlp_seg_size` is not the segment size.
    SegmentSizeMismatch {
        /// The size found.
        found: u32,
    },
    /// The long header's `xlp_xlog_blcksz` is not 8192.
    BlockSizeMismatch {
        /// The size found.
        found: u32,
    },
    /// `xl_tot_len` is below the 24-byte record header (0 in zero-filled space).
    RecordTooShort {
        /// The length found.
        tot_len: u32,
    },
    /// `xl_tot_len` is above the 1 GiB cap.
    RecordTooLong {
        /// The length found.
        tot_len: u32,
    },
    /// `xl_rmid` is neither a built-in nor a custom resource manager.
    InvalidRmid {
        /// The identifier found.
        rmid: u8,
    },
    /// `xl_prev` is not the start of the previous record.
    IncorrectPrevLink {
        /// The link found.
        prev: Lsn,
    },
    /// The record's CRC-32C does not match `xl_crc`.
    ChecksumMismatch,
    /// A page that should continue a record lacks `XLP_FIRST_IS_CONTRECORD`.
    NoContrecordFlag,
    /// `xlp_rem_len` disagrees with the bytes of the record still to come.
    InvalidContrecordLength {
        /// The length found.
        rem_len: u32,
        /// The length expected.
        expected: u32,
    },
    /// A page that should start with a new record claims to continue one.
    ContrecordRequested,
    /// `XLP_FIRST_IS_OVERWRITE_CONTRECORD` on a page where no record was left incomplete.
    UnexpectedOverwriteContrecord,
    /// A byte of the MAXALIGN padding after a record is not zero.
    NonzeroPadding,
    /// A byte between an `XLOG_SWITCH` record and the end of its segment is not zero.
    NonzeroAfterSwitch,
}

impl WalErrorKind {
    /// Whether this is a page-header problem (reported with the segment file and offset).
    pub fn is_page_error(self) -> bool {
        matches!(
            self,
            WalErrorKind::InvalidMagic { .. }
                | WalErrorKind::MagicChanged { .. }
                | WalErrorKind::InvalidInfoBits { .. }
                | WalErrorKind::UnexpectedPageAddr { .. }
                | WalErrorKind::InvalidTimeline
                | WalErrorKind::OutOfSequenceTimeline { .. }
                | WalErrorKind::TimelineBeyondMax { .. }
        )
    }
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        describe(self, f)
    }
}

fn describe(e: &WalError, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    use WalErrorKind as K;
    let WalError {
        lsn,
        kind,
        timeline,
        segment_size,
    } = *e;
    let page = |f: &mut fmt::Formatter<'_>, msg: fmt::Arguments<'_>| {
        let name = SegmentName {
            timeline,
            segno: segment_size.segment_of(lsn),
        };
        let offset = segment_size.offset_in_segment(lsn);
        let file = name.file_name(segment_size);
        write!(f, "{msg} in log segment {file}, offset {offset}")
    };
    match kind {
        K::NotPageAligned => write!(f, "WAL position {lsn} is not at a page boundary"),
        K::PositionOverflow => write!(f, "WAL position overflows after {lsn}"),
        K::InvalidMagic { magic } => page(f, format_args!("invalid magic number {magic:04X}")),
        K::MagicChanged { magic, expected } => page(
            f,
            format_args!("invalid magic number {magic:04X} (expected {expected:04X})"),
        ),
        K::InvalidInfoBits { info } => page(f, format_args!("invalid info bits {info:04X}")),
        K::UnexpectedPageAddr { pageaddr } => {
            page(f, format_args!("unexpected pageaddr {pageaddr}"))
        }
        K::InvalidTimeline => page(f, format_args!("invalid timeline ID 0")),
        K::OutOfSequenceTimeline { tli, after } => page(
            f,
            format_args!("out-of-sequence timeline ID {tli} (after {after})"),
        ),
        K::TimelineBeyondMax { tli, max } => page(
            f,
            format_args!("timeline ID {tli} is beyond the current timeline {max}"),
        ),
        K::SystemIdMismatch { found, expected } => write!(
            f,
            "WAL file is from different database system: WAL file database system identifier \
             is {found}, pg_control database system identifier is {expected}"
        ),
        K::SegmentSizeMismatch { found } => write!(
            f,
            "WAL file is from different database system: incorrect segment size in page header \
             ({found}) at {lsn}"
        ),
        K::BlockSizeMismatch { found } => write!(
            f,
            "WAL file is from different database system: incorrect XLOG_BLCKSZ in page header \
             ({found}) at {lsn}"
        ),
        K::RecordTooShort { tot_len } => {
            write!(
                f,
                "invalid record length at {lsn}: wanted 24, got {tot_len}"
            )
        }
        K::RecordTooLong { tot_len } => write!(f, "record length {tot_len} at {lsn} too long"),
        K::InvalidRmid { rmid } => write!(f, "invalid resource manager ID {rmid} at {lsn}"),
        K::IncorrectPrevLink { prev } => {
            write!(f, "record with incorrect prev-link {prev} at {lsn}")
        }
        K::ChecksumMismatch => write!(
            f,
            "incorrect resource manager data checksum in record at {lsn}"
        ),
        K::NoContrecordFlag => write!(f, "there is no contrecord flag at {lsn}"),
        K::InvalidContrecordLength { rem_len, expected } => write!(
            f,
            "invalid contrecord length {rem_len} (expected {expected}) at {lsn}"
        ),
        K::ContrecordRequested => write!(f, "contrecord is requested by {lsn}"),
        K::UnexpectedOverwriteContrecord => {
            write!(f, "unexpected overwrite-contrecord flag at {lsn}")
        }
        K::NonzeroPadding => write!(f, "nonzero alignment padding at {lsn}"),
        K::NonzeroAfterSwitch => write!(f, "nonzero byte after WAL switch record at {lsn}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(lsn: u64, kind: WalErrorKind) -> WalError {
        WalError {
            lsn: Lsn(lsn),
            kind,
            timeline: TimelineId::ONE,
            segment_size: WalSegmentSize::DEFAULT,
        }
    }

    #[test]
    fn messages_follow_postgres() {
        let e = err(0xB0_0070, WalErrorKind::RecordTooShort { tot_len: 0 });
        assert_eq!(
            e.to_string(),
            "invalid record length at 0/B00070: wanted 24, got 0"
        );
        let e = err(
            0x363_2000,
            WalErrorKind::UnexpectedPageAddr {
                pageaddr: Lsn(0x362_E000),
            },
        );
        assert_eq!(
            e.to_string(),
            "unexpected pageaddr 0/362E000 in log segment 000000010000000000000003, \
             offset 6496256"
        );
        let e = err(0x300_0000, WalErrorKind::InvalidMagic { magic: 0xD111 });
        assert_eq!(
            e.to_string(),
            "invalid magic number D111 in log segment 000000010000000000000003, offset 0"
        );
        let e = err(0x300_0028, WalErrorKind::ChecksumMismatch);
        assert_eq!(
            e.to_string(),
            "incorrect resource manager data checksum in record at 0/3000028"
        );
    }

    #[test]
    fn every_kind_has_a_message() {
        let t2 = TimelineId::new(2).unwrap();
        let kinds = [
            WalErrorKind::NotPageAligned,
            WalErrorKind::PositionOverflow,
            WalErrorKind::MagicChanged {
                magic: 0xD113,
                expected: 0xD110,
            },
            WalErrorKind::InvalidInfoBits { info: 0x10 },
            WalErrorKind::InvalidTimeline,
            WalErrorKind::OutOfSequenceTimeline {
                tli: TimelineId::ONE,
                after: t2,
            },
            WalErrorKind::TimelineBeyondMax {
                tli: t2,
                max: TimelineId::ONE,
            },
            WalErrorKind::SystemIdMismatch {
                found: SystemId(1),
                expected: SystemId(2),
            },
            WalErrorKind::SegmentSizeMismatch { found: 3 },
            WalErrorKind::BlockSizeMismatch { found: 4 },
            WalErrorKind::RecordTooLong { tot_len: u32::MAX },
            WalErrorKind::InvalidRmid { rmid: 22 },
            WalErrorKind::IncorrectPrevLink { prev: Lsn(1) },
            WalErrorKind::NoContrecordFlag,
            WalErrorKind::InvalidContrecordLength {
                rem_len: 1,
                expected: 2,
            },
            WalErrorKind::ContrecordRequested,
            WalErrorKind::UnexpectedOverwriteContrecord,
            WalErrorKind::NonzeroPadding,
            WalErrorKind::NonzeroAfterSwitch,
        ];
        for kind in kinds {
            let text = err(0x100_0000, kind).to_string();
            assert!(!text.contains('{') && text.len() > 10, "{kind:?}: {text}");
            assert_eq!(kind.is_page_error(), text.contains("in log segment"));
        }
    }
}
