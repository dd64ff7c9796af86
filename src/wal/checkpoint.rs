//! The next transaction id, as checkpoint records carry it.
//!
//! An `XLOG_CHECKPOINT_SHUTDOWN` or `XLOG_CHECKPOINT_ONLINE` record (resource manager 0, info
//! 0x00 or 0x10) has no block references; its main data is a `CheckPoint` (`pg_control.h`)
//! behind a short data header (`XLR_BLOCK_ID_DATA_SHORT`, then one length byte). Its
//! `nextXid` is what `TransactionIdInRecentPast` compares hot-standby feedback with on the
//! primary: from PostgreSQL 13 a 64-bit `FullTransactionId` at offset 24; in 12, the epoch at
//! 20 and the 32-bit xid at 24 (`XLogRecordAssemble`, `CreateCheckPoint`).

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

    /// The checkpoint's `nextXid` as a 64-bit full id, once the record at `start` is complete
    /// and checked, for WAL of PostgreSQL `major`; `None` if the body is not laid out as a
    /// checkpoint's.
    pub(super) fn next_xid(&self, start: u64, major: u32) -> Option<u64> {
        if start != self.start || self.have < CAPTURE {
            return None;
        }
        let [id, len, fields @ ..] = self.buf;
        if id != XLR_BLOCK_ID_DATA_SHORT || usize::from(len) < CAPTURE - 2 {
            return None;
        }
        let u32_at = |at: usize| {
            let bytes = fields.get(at..at + 4)?;
            Some(u32::from_le_bytes(bytes.try_into().ok()?))
        };
        let (epoch, xid) = if major >= 13 {
            (u32_at(28)?, u32_at(24)?)
        } else {
            (u32_at(20)?, u32_at(24)?)
        };
        Some((u64::from(epoch) << 32) | u64::from(xid))
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
    fn reads_next_xid_in_either_layout_and_in_any_split() {
        for (major, epoch_at) in [(12, 20), (13, 28), (15, 28), (18, 28)] {
            let bytes = body(epoch_at, 24);
            let mut c = CheckpointCapture::begin(100, &header(0, 0x10)).unwrap();
            for piece in bytes.chunks(5) {
                c.take(100, piece);
            }
            c.take(200, &[9; 40]);
            assert_eq!(c.next_xid(100, major), Some((7 << 32) | 1234), "PG {major}");
            assert_eq!(c.next_xid(200, major), None, "another record");
        }
        let mut short = CheckpointCapture::begin(0, &header(0, 0)).unwrap();
        short.take(0, &body(28, 24)[..20]);
        assert_eq!(short.next_xid(0, 15), None);
        let mut long_form = CheckpointCapture::begin(0, &header(0, 0)).unwrap();
        let mut b = body(28, 24);
        b[0] = 254;
        long_form.take(0, &b);
        assert_eq!(long_form.next_xid(0, 15), None);
    }
}
