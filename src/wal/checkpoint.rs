//! The next transaction id and the redo point, as checkpoint records carry them.
//!
//! An `XLOG_CHECKPOINT_SHUTDOWN` or `XLOG_CHECKPOINT_ONLINE` record (resource manager 0, info
//! 0x00 or 0x10) has no block references; its main data is a `CheckPoint` (`pg_control.h`)
//! behind a short data header (`XLR_BLOCK_ID_DATA_SHORT`, then one length byte). Its
//! `nextXid` is what `TransactionIdInRecentPast` compares hot-standby feedback with on the
//! primary: a 64-bit `FullTransactionId` at offset 24 in every major the relay serves, 12 to
//! 18 (`XLogRecordAssemble`, `CreateCheckPoint`). 12 replaced 11's `nextXidEpoch` (at 20) and
//! 32-bit `nextXid` (at 24) with it; 17 added `wal_level` at 20, in what had been padding
//! (`pg_control.h` of each major). Its `redo`, where recovery from it starts and so where a
//! base backup taken with it starts, is the first field (offset 0) in every major. The unit
//! tests read checkpoint records written by a server of each major on clusters whose epoch
//! is above 0 (`tests/data/checkpoints`).

use super::RecordHeader;

/// `XLOG_CHECKPOINT_SHUTDOWN`.
const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;
/// `XLOG_CHECKPOINT_ONLINE`.
const XLOG_CHECKPOINT_ONLINE: u8 = 0x10;
/// `XLR_BLOCK_ID_DATA_SHORT`: main data of fewer than 256 bytes follows, length in one byte.
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
/// The data header and the `CheckPoint` fields up to the end of `nextXid`.
const CAPTURE: usize = 2 + 32;

/// The first bytes of a checkpoint record's body, gathered as they stream by.
#[derive(Clone, Copy, Debug)]
pub(super) struct CheckpointCapture {
    start: u64,
    buf: [u8; CAPTURE],
    have: usize,
}

impl CheckpointCapture {
    /// Starts gathering the body of the record at `start` if it is a checkpoint.
    pub(super) fn begin(start: u64, header: &RecordHeader) -> Option<CheckpointCapture> {
        let kind = header.info & 0xF0;
        (header.rmid == super::RM_XLOG_ID
            && (kind == XLOG_CHECKPOINT_SHUTDOWN || kind == XLOG_CHECKPOINT_ONLINE))
            .then_some(CheckpointCapture {
                start,
                buf: [0; CAPTURE],
                have: 0,
            })
    }

    /// Takes the next body bytes of the record at `start`.
    pub(super) fn take(&mut self, start: u64, data: &[u8]) {
        if start != self.start {
            return;
        }
        let n = (CAPTURE - self.have).min(data.len());
        if let (Some(to), Some(from)) = (self.buf.get_mut(self.have..self.have + n), data.get(..n))
        {
            to.copy_from_slice(from);
            self.have += n;
        }
    }

    /// The checkpoint's `nextXid` (epoch and xid as one 64-bit value), once the record at
    /// `start` is complete and checked; `None` if the body is not laid out as a checkpoint's.
    pub(super) fn next_xid(&self, start: u64) -> Option<u64> {
        self.field(start, 24)
    }

    /// The checkpoint's `redo`, as [`Self::next_xid`] gives its `nextXid`.
    pub(super) fn redo(&self, start: u64) -> Option<u64> {
        self.field(start, 0)
    }

    /// The 8-byte field at `offset` of the `CheckPoint`.
    fn field(&self, start: u64, offset: usize) -> Option<u64> {
        if start != self.start || self.have < CAPTURE {
            return None;
        }
        let [id, len, fields @ ..] = self.buf;
        if id != XLR_BLOCK_ID_DATA_SHORT || usize::from(len) < CAPTURE - 2 {
            return None;
        }
        let bytes = fields.get(offset..offset + 8)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Lsn;

    fn header(rmid: u8, info: u8) -> RecordHeader {
        RecordHeader {
            tot_len: 114,
            xid: 0,
            prev: Lsn(0),
            info,
            rmid,
            crc: 0,
        }
    }

    /// A checkpoint body with `epoch_at`/`xid_at` set in the `CheckPoint` fields.
    fn body(epoch_at: usize, xid_at: usize) -> Vec<u8> {
        let mut b = vec![XLR_BLOCK_ID_DATA_SHORT, 88];
        b.extend(vec![0; 88]);
        b[2 + epoch_at..2 + epoch_at + 4].copy_from_slice(&7_u32.to_le_bytes());
        b[2 + xid_at..2 + xid_at + 4].copy_from_slice(&1234_u32.to_le_bytes());
        b
    }

    /// What `examples/capture_checkpoints.rs` captured from a server of `major`: the segment
    /// up to the end of a checkpoint record, and the server's account of it.
    struct Captured {
        wal: Vec<u8>,
        fields: String,
    }

    impl Captured {
        fn load(major: u32) -> Captured {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/checkpoints");
            Captured {
                wal: std::fs::read(format!("{dir}/pg{major}.wal")).unwrap(),
                fields: std::fs::read_to_string(format!("{dir}/pg{major}.txt")).unwrap(),
            }
        }

        fn field(&self, key: &str) -> &str {
            self.fields
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .unwrap()
        }

        fn lsn(&self, key: &str) -> u64 {
            self.field(key).parse::<Lsn>().unwrap().0
        }

        /// `next_xid` as `pg_control_checkpoint()` shows it (`epoch:xid`), as one value.
        fn next_xid(&self) -> u64 {
            let (epoch, xid) = self.field("next_xid").split_once(':').unwrap();
            (epoch.parse::<u64>().unwrap() << 32) | xid.parse::<u64>().unwrap()
        }
    }

    /// Each major's own checkpoint record, read through the validator as it streams by: the
    /// `nextXid` is the one the server reports, epoch included, and the page magic names the
    /// major.
    #[test]
    fn reads_next_xid_as_each_major_reports_it() {
        use crate::types::{SystemId, WalSegmentSize};
        use crate::wal::{WalCheckConfig, WalValidator, major_version_of_magic};
        for major in 12..=18 {
            let c = Captured::load(major);
            assert!(c.next_xid() >> 32 > 0, "PG {major}: captured with epoch 0");
            let cfg = WalCheckConfig {
                system_id: SystemId(c.field("system_identifier").parse().unwrap()),
                segment_size: WalSegmentSize::new(1 << 20).unwrap(),
            };
            let start = Lsn(c.lsn("segment_start"));
            for chunk in [1, 100, 8192] {
                let mut v = WalValidator::new(start, cfg).unwrap();
                for piece in c.wal.chunks(chunk) {
                    v.feed(piece).unwrap();
                }
                assert_eq!(v.next_xid(), Some(c.next_xid()), "PG {major}");
                // The redo point lies in the checkpoint's segment, at or before the record.
                let redo = v.last_redo().unwrap().0;
                let range = c.lsn("segment_start")..=c.lsn("checkpoint_lsn");
                assert!(range.contains(&redo), "PG {major}: redo {redo:X}");
                assert_eq!(v.page_magic().and_then(major_version_of_magic), Some(major));
                assert_eq!(v.position(), Lsn(start.0 + c.wal.len() as u64));
            }
        }
    }

    /// What sits before `nextXid` differs (17 and 18 put `wal_level` where 12 to 16 have
    /// padding, and 11 had its epoch), and is never read as the epoch.
    #[test]
    fn what_precedes_next_xid_is_not_the_epoch() {
        for major in [12, 16, 17, 18] {
            let c = Captured::load(major);
            let at = usize::try_from(c.lsn("checkpoint_lsn") - c.lsn("segment_start")).unwrap();
            let record = &c.wal[at..];
            let header = RecordHeader::parse(record[..24].try_into().unwrap());
            let mut capture = CheckpointCapture::begin(7, &header).unwrap();
            capture.take(7, &record[24..]);
            assert_eq!(capture.next_xid(7), Some(c.next_xid()), "PG {major}");
            let before = u32::from_le_bytes(record[24 + 2 + 20..24 + 2 + 24].try_into().unwrap());
            let wal_level_replica = 1;
            if major >= 17 {
                assert_eq!(before, wal_level_replica, "PG {major}: wal_level");
            }
            assert_ne!(u64::from(before), c.next_xid() >> 32, "PG {major}");
        }
    }

    #[test]
    fn only_checkpoint_records_are_gathered() {
        assert!(CheckpointCapture::begin(0, &header(0, 0x00)).is_some());
        assert!(CheckpointCapture::begin(0, &header(0, 0x10)).is_some());
        assert!(
            CheckpointCapture::begin(0, &header(0, 0x40)).is_none(),
            "XLOG_SWITCH"
        );
        assert!(CheckpointCapture::begin(0, &header(1, 0x10)).is_none());
    }

    #[test]
    fn reads_next_xid_in_any_split() {
        let bytes = body(28, 24);
        let mut c = CheckpointCapture::begin(100, &header(0, 0x10)).unwrap();
        for piece in bytes.chunks(5) {
            c.take(100, piece);
        }
        c.take(200, &[9; 40]);
        assert_eq!(c.next_xid(100), Some((7 << 32) | 1234));
        assert_eq!(c.redo(100), Some(0), "the test body's redo");
        assert_eq!(c.redo(200), None);
        assert_eq!(c.next_xid(200), None, "another record");
        let mut short = CheckpointCapture::begin(0, &header(0, 0)).unwrap();
        short.take(0, &body(28, 24)[..20]);
        assert_eq!(short.next_xid(0), None);
        let mut long_form = CheckpointCapture::begin(0, &header(0, 0)).unwrap();
        let mut b = body(28, 24);
        b[0] = 254;
        long_form.take(0, &b);
        assert_eq!(long_form.next_xid(0), None);
    }
}
