//! WAL record headers (`XLogRecord` in `xlogrecord.h`), their CRC-32C
//! (`xlogreader.c:ValidXLogRecord`) and the header checks of
//! `xlogreader.c:ValidXLogRecordHeader`.
//!
//! A record is a 24-byte header followed by `xl_tot_len - 24` body bytes; it starts at an
//! 8-byte (MAXALIGN) boundary and may cross page headers, which are not part of it. The CRC
//! covers the body first and then header bytes `[0, 20)`, so `xl_crc` itself is excluded.

use crate::types::Lsn;

use super::WalErrorKind;

/// `SizeOfXLogRecord`.
pub const SIZE_OF_XLOG_RECORD: usize = 24;
/// The largest `xl_tot_len` accepted: 1 GiB (PostgreSQL's `XLogRecordMaxSize` is 1020 MiB).
pub const XLOG_RECORD_MAX_SIZE: u32 = 1 << 30;
/// `MAXIMUM_ALIGNOF`: records start at multiples of this.
pub const MAXIMUM_ALIGNOF: u64 = 8;
/// `RM_XLOG_ID`, the resource manager of `XLOG_SWITCH`.
pub const RM_XLOG_ID: u8 = 0;
/// `RM_MAX_BUILTIN_ID` (`RM_LOGICALMSG_ID`), the same in PostgreSQL 12 to 18.
pub const RM_MAX_BUILTIN_ID: u8 = 21;
/// `RM_MIN_CUSTOM_ID`: custom resource managers (PostgreSQL 15+) use 128 to 255.
pub const RM_MIN_CUSTOM_ID: u8 = 128;
/// `XLR_INFO_MASK`: the low `xl_info` bits reserved for the record machinery.
pub const XLR_INFO_MASK: u8 = 0x0F;
/// `XLOG_SWITCH`: ends the segment early; the rest of it is zeros.
pub const XLOG_SWITCH: u8 = 0x40;
/// `XLOG_OVERWRITE_CONTRECORD`: marks an abandoned cross-page record.
pub const XLOG_OVERWRITE_CONTRECORD: u8 = 0xD0;

/// Whether `rmid` names a resource manager (`RmgrIdIsValid`): built-in or custom.
pub fn rmid_is_valid(rmid: u8) -> bool {
    rmid <= RM_MAX_BUILTIN_ID || rmid >= RM_MIN_CUSTOM_ID
}

/// `lsn` rounded up to the next MAXALIGN boundary, or `None` past the end of the LSN space.
pub fn maxalign(lsn: Lsn) -> Option<Lsn> {
    lsn.checked_add(MAXIMUM_ALIGNOF - 1)
        .map(|l| l.align_down(MAXIMUM_ALIGNOF))
}

/// Checks `xl_tot_len` alone, which is all that is known of a record whose header is split
/// across pages (only the length is sure to be on the first page).
///
/// # Errors
/// Below 24 bytes ("invalid record length") or above the 1 GiB cap.
pub fn check_total_length(tot_len: u32) -> Result<(), WalErrorKind> {
    if tot_len < SIZE_OF_XLOG_RECORD as u32 {
        Err(WalErrorKind::RecordTooShort { tot_len })
    } else if tot_len > XLOG_RECORD_MAX_SIZE {
        Err(WalErrorKind::RecordTooLong { tot_len })
    } else {
        Ok(())
    }
}

/// A parsed record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// `xl_tot_len`: header plus body, excluding page headers crossed.
    pub tot_len: u32,
    /// `xl_xid`.
    pub xid: u32,
    /// `xl_prev`: the start of the previous record.
    pub prev: Lsn,
    /// `xl_info`; the high 4 bits belong to the resource manager.
    pub info: u8,
    /// `xl_rmid`.
    pub rmid: u8,
    /// `xl_crc`.
    pub crc: u32,
}

impl RecordHeader {
    /// Parses the 24 header bytes (the 2 padding bytes at 18 are ignored here; they are
    /// covered by the CRC).
    pub fn parse(bytes: &[u8; SIZE_OF_XLOG_RECORD]) -> RecordHeader {
        let [
            t0,
            t1,
            t2,
            t3,
            x0,
            x1,
            x2,
            x3,
            p0,
            p1,
            p2,
            p3,
            p4,
            p5,
            p6,
            p7,
            info,
            rmid,
            _,
            _,
            c0,
            c1,
            c2,
            c3,
        ] = *bytes;
        RecordHeader {
            tot_len: u32::from_le_bytes([t0, t1, t2, t3]),
            xid: u32::from_le_bytes([x0, x1, x2, x3]),
            prev: Lsn(u64::from_le_bytes([p0, p1, p2, p3, p4, p5, p6, p7])),
            info,
            rmid,
            crc: u32::from_le_bytes([c0, c1, c2, c3]),
        }
    }

    /// The header's 24 bytes, with zero padding.
    pub fn to_bytes(&self) -> [u8; SIZE_OF_XLOG_RECORD] {
        let mut out = [0u8; SIZE_OF_XLOG_RECORD];
        let bytes = self
            .tot_len
            .to_le_bytes()
            .into_iter()
            .chain(self.xid.to_le_bytes())
            .chain(self.prev.0.to_le_bytes())
            .chain([self.info, self.rmid, 0, 0])
            .chain(self.crc.to_le_bytes());
        for (dst, src) in out.iter_mut().zip(bytes) {
            *dst = src;
        }
        out
    }

    /// Whether this is an `XLOG_SWITCH` record.
    pub fn is_switch(&self) -> bool {
        self.rmid == RM_XLOG_ID && self.info & !XLR_INFO_MASK == XLOG_SWITCH
    }

    /// `ValidXLogRecordHeader` for the record at `at`: the length, the resource manager, and
    /// the prev-link. With `prev` known, `xl_prev` must equal it; without (the first record
    /// read), it must at least lie before the record, as after a random-access start.
    ///
    /// # Errors
    /// The first check that fails.
    pub fn check(&self, at: Lsn, prev: Option<Lsn>) -> Result<(), WalErrorKind> {
        check_total_length(self.tot_len)?;
        if !rmid_is_valid(self.rmid) {
            return Err(WalErrorKind::InvalidRmid { rmid: self.rmid });
        }
        let linked = match prev {
            Some(p) => self.prev == p,
            None => self.prev < at,
        };
        if !linked {
            return Err(WalErrorKind::IncorrectPrevLink { prev: self.prev });
        }
        Ok(())
    }
}

/// Finishes a record CRC: `body_crc` is `crc32c` of body bytes `[24, xl_tot_len)` (computed
/// in any number of `crc32c_append` steps from 0), then header bytes `[0, 20)` are appended.
pub fn finish_record_crc(body_crc: u32, header: &[u8; SIZE_OF_XLOG_RECORD]) -> u32 {
    let (covered, _crc) = header.split_at(SIZE_OF_XLOG_RECORD - 4);
    crc32c::crc32c_append(body_crc, covered)
}

/// The CRC of a whole reassembled record (header and body, page headers removed), or `None`
/// when `record` is shorter than a header.
pub fn record_crc(record: &[u8]) -> Option<u32> {
    let (header, body) = record.split_first_chunk::<SIZE_OF_XLOG_RECORD>()?;
    Some(finish_record_crc(crc32c::crc32c(body), header))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record at 0/700028 in tests/data/wal/000000010000000000000007 (NEXTOID, 30 bytes).
    const NEXTOID: [u8; 30] = [
        0x1E, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xE0, 0x07, 0x60, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x30, 0x00, 0x00, 0x00, 0x70, 0xAC, 0x20, 0xE9, 0xFF, 0x04, 0x00, 0x60, 0x00, 0x00,
    ];

    fn header_of(record: &[u8]) -> [u8; 24] {
        record[..24].try_into().unwrap()
    }

    #[test]
    fn crc_matches_real_record() {
        let h = RecordHeader::parse(&header_of(&NEXTOID));
        assert_eq!(h.tot_len, 30);
        assert_eq!(h.prev, Lsn(0x60_07E0));
        assert_eq!((h.rmid, h.info), (RM_XLOG_ID, 0x30));
        assert_eq!(h.crc, 0xE920_AC70);
        assert_eq!(record_crc(&NEXTOID), Some(h.crc));
        assert_eq!(h.to_bytes(), header_of(&NEXTOID));
        let mut flipped = NEXTOID;
        flipped[18] = 1;
        assert_ne!(record_crc(&flipped), Some(h.crc));
    }

    #[test]
    fn crc_matches_captured_segment() {
        let seg = crate::wal::testdata::segment(7);
        let rec = &seg[0x28..0x28 + 30];
        let h = RecordHeader::parse(&header_of(rec));
        assert_eq!(record_crc(rec), Some(h.crc));
        let split = crc32c::crc32c_append(crc32c::crc32c(&rec[24..27]), &rec[27..]);
        assert_eq!(finish_record_crc(split, &header_of(rec)), h.crc);
        assert_eq!(h.check(Lsn(0x70_0028), Some(Lsn(0x60_07E0))), Ok(()));
        assert_eq!(h.check(Lsn(0x70_0028), None), Ok(()));
        assert_eq!(record_crc(&rec[..23]), None);
    }

    #[test]
    fn header_checks() {
        let h = RecordHeader::parse(&header_of(&NEXTOID));
        let at = Lsn(0x70_0028);
        let with = |f: &dyn Fn(&mut RecordHeader)| {
            let mut x = h;
            f(&mut x);
            x.check(at, Some(Lsn(0x60_07E0)))
        };
        assert_eq!(
            with(&|x| x.tot_len = 0),
            Err(WalErrorKind::RecordTooShort { tot_len: 0 })
        );
        assert_eq!(
            with(&|x| x.tot_len = XLOG_RECORD_MAX_SIZE + 1),
            Err(WalErrorKind::RecordTooLong {
                tot_len: XLOG_RECORD_MAX_SIZE + 1
            })
        );
        assert_eq!(with(&|x| x.tot_len = XLOG_RECORD_MAX_SIZE), Ok(()));
        assert_eq!(
            with(&|x| x.rmid = 22),
            Err(WalErrorKind::InvalidRmid { rmid: 22 })
        );
        assert_eq!(
            with(&|x| x.rmid = 127),
            Err(WalErrorKind::InvalidRmid { rmid: 127 })
        );
        assert_eq!(with(&|x| x.rmid = 128), Ok(()));
        assert_eq!(with(&|x| x.rmid = 255), Ok(()));
        assert_eq!(
            with(&|x| x.prev = Lsn(0x60_07E8)),
            Err(WalErrorKind::IncorrectPrevLink {
                prev: Lsn(0x60_07E8)
            })
        );
        let mut ahead = h;
        ahead.prev = at;
        assert_eq!(
            ahead.check(at, None),
            Err(WalErrorKind::IncorrectPrevLink { prev: at })
        );
    }

    #[test]
    fn switch_and_alignment() {
        let mut h = RecordHeader::parse(&header_of(&NEXTOID));
        assert!(!h.is_switch());
        h.info = XLOG_SWITCH | 0x01;
        assert!(h.is_switch());
        h.rmid = 1;
        assert!(!h.is_switch());
        assert_eq!(maxalign(Lsn(0x70_0046)), Some(Lsn(0x70_0048)));
        assert_eq!(maxalign(Lsn(0x70_0048)), Some(Lsn(0x70_0048)));
        assert_eq!(maxalign(Lsn(u64::MAX)), None);
        assert!(rmid_is_valid(0) && rmid_is_valid(21) && !rmid_is_valid(100));
    }
}
