//! The CopyData payloads of physical streaming replication, both directions
//! (`walsender.c:XLogSendPhysical`, `WalSndKeepalive`, `ProcessStandbyMessage`;
//! `walreceiver.c:XLogWalRcvProcessMsg`, `XLogWalRcvSendReply`, `XLogWalRcvSendHSFeedback`).
//!
//! Server to client: XLogData (`w`) and the primary keepalive (`k`, exactly 18 bytes, as the
//! walreceiver insists). Client to server: the standby status update (`r`, 34 bytes) and hot
//! standby feedback (`h`, 25 bytes). XLogData decodes without copying the WAL, and its frame
//! header can be encoded apart from the WAL so a sender writes both without a copy.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::WireError;
use super::reader::Reader;
use crate::types::{Lsn, PgTimestamp};

/// The XLogData header inside the CopyData payload: `w`, start, end, send time.
pub const XLOG_DATA_HEADER_LEN: usize = 25;
/// The CopyData frame header plus the XLogData header: `d`, Int32 length, then the 25 bytes.
pub const XLOG_DATA_FRAME_HEADER_LEN: usize = 5 + XLOG_DATA_HEADER_LEN;
/// The size of a primary keepalive payload.
pub const KEEPALIVE_LEN: usize = 18;
/// The size of a standby status update payload.
pub const STATUS_UPDATE_LEN: usize = 34;
/// The size of a hot standby feedback payload.
pub const HOT_STANDBY_FEEDBACK_LEN: usize = 25;

/// `w`: a run of WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// The LSN of the first byte of `data` (dataStart).
    pub start: Lsn,
    /// The sender's walEnd: its flush or send limit when sent, often beyond `start + data.len()`.
    pub end: Lsn,
    /// When the sender sent the message.
    pub send_time: PgTimestamp,
    /// The WAL bytes, shared with the receive buffer.
    pub data: Bytes,
}

impl XLogData {
    /// Decodes a CopyData payload that starts with `w`. The WAL is not copied: `data` is the
    /// payload itself, advanced past the header.
    ///
    /// # Errors
    /// [`WireError::UnknownReplicationTag`] if the payload is not `w`, [`WireError::Short`] if
    /// the header is under 25 bytes.
    pub fn parse(mut payload: Bytes) -> Result<XLogData, WireError> {
        let mut r = tagged(&payload, b'w')?;
        let start = Lsn(r.u64()?);
        let end = Lsn(r.u64()?);
        let send_time = PgTimestamp(r.i64()?);
        payload.advance(r.position());
        Ok(XLogData {
            start,
            end,
            send_time,
            data: payload,
        })
    }

    /// The CopyData frame header for an XLogData carrying `data_len` bytes of WAL: write it,
    /// then the WAL itself, and the frame is complete.
    ///
    /// # Errors
    /// [`WireError::TooLong`] if the frame would exceed an Int32 length.
    pub fn frame_header(
        start: Lsn,
        end: Lsn,
        send_time: PgTimestamp,
        data_len: usize,
    ) -> Result<[u8; XLOG_DATA_FRAME_HEADER_LEN], WireError> {
        let len = data_len
            .checked_add(4 + XLOG_DATA_HEADER_LEN)
            .and_then(|n| i32::try_from(n).ok())
            .ok_or(WireError::TooLong { len: data_len })?;
        let mut header = [0; XLOG_DATA_FRAME_HEADER_LEN];
        let mut w: &mut [u8] = &mut header;
        w.put_u8(b'd');
        w.put_i32(len);
        w.put_u8(b'w');
        w.put_u64(start.0);
        w.put_u64(end.0);
        w.put_i64(send_time.0);
        Ok(header)
    }

    /// The frame header for this message; see [`XLogData::frame_header`].
    ///
    /// # Errors
    /// [`WireError::TooLong`] if the frame would exceed an Int32 length.
    pub fn header(&self) -> Result<[u8; XLOG_DATA_FRAME_HEADER_LEN], WireError> {
        XLogData::frame_header(self.start, self.end, self.send_time, self.data.len())
    }

    /// Appends the whole CopyData message to `out`, copying the WAL; a sender that wants no
    /// copy writes [`XLogData::header`] and then `data` itself.
    ///
    /// # Errors
    /// [`WireError::TooLong`] if the frame would exceed an Int32 length.
    pub fn write(&self, out: &mut BytesMut) -> Result<(), WireError> {
        out.put_slice(&self.header()?);
        out.put_slice(&self.data);
        Ok(())
    }

    /// Appends the CopyData payload (without the `d` frame) to `out`.
    pub fn write_payload(&self, out: &mut BytesMut) {
        out.put_u8(b'w');
        out.put_u64(self.start.0);
        out.put_u64(self.end.0);
        out.put_i64(self.send_time.0);
        out.put_slice(&self.data);
    }
}

/// `k`: the primary's keepalive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// The sender's `sentPtr`: the end of WAL sent so far.
    pub end: Lsn,
    /// When the sender sent the message.
    pub send_time: PgTimestamp,
    /// The client must answer at once with a status update.
    pub reply_requested: bool,
}

impl PrimaryKeepalive {
    /// Decodes a CopyData payload that starts with `k`; it must be exactly 18 bytes.
    ///
    /// # Errors
    /// [`WireError::UnknownReplicationTag`] if the payload is not `k`, [`WireError::BadLength`]
    /// if it is not 18 bytes.
    pub fn parse(payload: &[u8]) -> Result<PrimaryKeepalive, WireError> {
        let mut r = exact(payload, b'k', "keepalive", KEEPALIVE_LEN)?;
        Ok(PrimaryKeepalive {
            end: Lsn(r.u64()?),
            send_time: PgTimestamp(r.i64()?),
            reply_requested: r.u8()? != 0,
        })
    }

    /// Appends the whole CopyData message to `out`.
    pub fn write(&self, out: &mut BytesMut) {
        put_copy_data_header(out, KEEPALIVE_LEN);
        self.write_payload(out);
    }

    /// Appends the CopyData payload (without the `d` frame) to `out`.
    pub fn write_payload(&self, out: &mut BytesMut) {
        out.put_u8(b'k');
        out.put_u64(self.end.0);
        out.put_i64(self.send_time.0);
        out.put_u8(u8::from(self.reply_requested));
    }
}

/// `r`: the standby's positions. Each is "last byte + 1"; 0 means unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// WAL received and written.
    pub write: Lsn,
    /// WAL flushed to durable storage.
    pub flush: Lsn,
    /// WAL replayed.
    pub apply: Lsn,
    /// When the standby sent the message.
    pub send_time: PgTimestamp,
    /// The server must answer at once with a keepalive.
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// Decodes a CopyData payload that starts with `r`; it must be exactly 34 bytes.
    ///
    /// # Errors
    /// [`WireError::UnknownReplicationTag`] if the payload is not `r`, [`WireError::Short`]
    /// ("insufficient data left in message") if it is shorter, [`WireError::Trailing`] if longer.
    pub fn parse(payload: &[u8]) -> Result<StandbyStatusUpdate, WireError> {
        let mut r = tagged(payload, b'r')?;
        let update = StandbyStatusUpdate {
            write: Lsn(r.u64()?),
            flush: Lsn(r.u64()?),
            apply: Lsn(r.u64()?),
            send_time: PgTimestamp(r.i64()?),
            reply_requested: r.u8()? != 0,
        };
        r.finish()?;
        Ok(update)
    }

    /// Appends the whole CopyData message to `out`.
    pub fn write(&self, out: &mut BytesMut) {
        put_copy_data_header(out, STATUS_UPDATE_LEN);
        self.write_payload(out);
    }

    /// Appends the CopyData payload (without the `d` frame) to `out`.
    pub fn write_payload(&self, out: &mut BytesMut) {
        out.put_u8(b'r');
        out.put_u64(self.write.0);
        out.put_u64(self.flush.0);
        out.put_u64(self.apply.0);
        out.put_i64(self.send_time.0);
        out.put_u8(u8::from(self.reply_requested));
    }
}

/// `h`: the oldest transaction ids the standby still needs. Zero xmins release the hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotStandbyFeedback {
    /// When the standby sent the message.
    pub send_time: PgTimestamp,
    /// The standby's xmin (32-bit), 0 for none.
    pub xmin: u32,
    /// The epoch of `xmin`.
    pub xmin_epoch: u32,
    /// The standby's catalog xmin, 0 for none.
    pub catalog_xmin: u32,
    /// The epoch of `catalog_xmin`.
    pub catalog_xmin_epoch: u32,
}

impl HotStandbyFeedback {
    /// Decodes a CopyData payload that starts with `h`; it must be exactly 25 bytes.
    ///
    /// # Errors
    /// [`WireError::UnknownReplicationTag`] if the payload is not `h`, [`WireError::Short`] if
    /// it is shorter, [`WireError::Trailing`] if longer.
    pub fn parse(payload: &[u8]) -> Result<HotStandbyFeedback, WireError> {
        let mut r = tagged(payload, b'h')?;
        let feedback = HotStandbyFeedback {
            send_time: PgTimestamp(r.i64()?),
            xmin: r.u32()?,
            xmin_epoch: r.u32()?,
            catalog_xmin: r.u32()?,
            catalog_xmin_epoch: r.u32()?,
        };
        r.finish()?;
        Ok(feedback)
    }

    /// Appends the whole CopyData message to `out`.
    pub fn write(&self, out: &mut BytesMut) {
        put_copy_data_header(out, HOT_STANDBY_FEEDBACK_LEN);
        self.write_payload(out);
    }

    /// Appends the CopyData payload (without the `d` frame) to `out`.
    pub fn write_payload(&self, out: &mut BytesMut) {
        out.put_u8(b'h');
        out.put_i64(self.send_time.0);
        out.put_u32(self.xmin);
        out.put_u32(self.xmin_epoch);
        out.put_u32(self.catalog_xmin);
        out.put_u32(self.catalog_xmin_epoch);
    }
}

/// A CopyData payload from a walsender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCopyData {
    /// `w`.
    XLogData(XLogData),
    /// `k`.
    Keepalive(PrimaryKeepalive),
}

impl ServerCopyData {
    /// Decodes a CopyData payload from a walsender.
    ///
    /// # Errors
    /// [`WireError::UnknownReplicationTag`] for a sub-type other than `w` or `k`, and the
    /// errors of [`XLogData::parse`] and [`PrimaryKeepalive::parse`].
    pub fn parse(payload: Bytes) -> Result<ServerCopyData, WireError> {
        match payload.first() {
            Some(b'w') => XLogData::parse(payload).map(ServerCopyData::XLogData),
            Some(b'k') => PrimaryKeepalive::parse(&payload).map(ServerCopyData::Keepalive),
            Some(&tag) => Err(WireError::UnknownReplicationTag(tag)),
            None => Err(empty()),
        }
    }

    /// Appends the CopyData payload (without the `d` frame) to `out`.
    pub fn write_payload(&self, out: &mut BytesMut) {
        match self {
            ServerCopyData::XLogData(x) => x.write_payload(out),
            ServerCopyData::Keepalive(k) => k.write_payload(out),
        }
    }

    /// Appends the whole CopyData message to `out`. To send XLogData without copying the WAL,
    /// write [`XLogData::header`] and the data separately instead.
    ///
    /// # Errors
    /// [`WireError::TooLong`] if the frame would exceed an Int32 length.
    pub fn write(&self, out: &mut BytesMut) -> Result<(), WireError> {
        match self {
            ServerCopyData::XLogData(x) => x.write(out),
            ServerCopyData::Keepalive(k) => {
                k.write(out);
                Ok(())
            }
        }
    }
}

/// A CopyData payload from a standby or another replication client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCopyData {
    /// `r`.
    StatusUpdate(StandbyStatusUpdate),
    /// `h`.
    HotStandbyFeedback(HotStandbyFeedback),
}

impl ClientCopyData {
    /// Decodes a CopyData payload from a replication client.
    ///
    /// # Errors
    /// [`WireError::UnknownReplicationTag`] for a sub-type other than `r` or `h`, and the
    /// errors of [`StandbyStatusUpdate::parse`] and [`HotStandbyFeedback::parse`].
    pub fn parse(payload: Bytes) -> Result<ClientCopyData, WireError> {
        match payload.first() {
            Some(b'r') => StandbyStatusUpdate::parse(&payload).map(ClientCopyData::StatusUpdate),
            Some(b'h') => {
                HotStandbyFeedback::parse(&payload).map(ClientCopyData::HotStandbyFeedback)
            }
            Some(&tag) => Err(WireError::UnknownReplicationTag(tag)),
            None => Err(empty()),
        }
    }

    /// Appends the CopyData payload (without the `d` frame) to `out`.
    pub fn write_payload(&self, out: &mut BytesMut) {
        match self {
            ClientCopyData::StatusUpdate(r) => r.write_payload(out),
            ClientCopyData::HotStandbyFeedback(h) => h.write_payload(out),
        }
    }

    /// Appends the whole CopyData message to `out`.
    pub fn write(&self, out: &mut BytesMut) {
        match self {
            ClientCopyData::StatusUpdate(r) => r.write(out),
            ClientCopyData::HotStandbyFeedback(h) => h.write(out),
        }
    }
}

fn put_copy_data_header(out: &mut BytesMut, payload_len: usize) {
    out.put_u8(b'd');
    out.put_u32(4 + payload_len as u32);
}

fn empty() -> WireError {
    WireError::Short {
        needed: 1,
        remaining: 0,
    }
}

/// A reader past the sub-type byte, which must be `tag`.
fn tagged(payload: &[u8], tag: u8) -> Result<Reader<'_>, WireError> {
    let mut r = Reader::new(payload);
    match r.u8()? {
        t if t == tag => Ok(r),
        t => Err(WireError::UnknownReplicationTag(t)),
    }
}

/// Like [`tagged`], for a payload that must be exactly `len` bytes.
fn exact<'a>(
    payload: &'a [u8],
    tag: u8,
    message: &'static str,
    len: usize,
) -> Result<Reader<'a>, WireError> {
    let r = tagged(payload, tag)?;
    if payload.len() == len {
        Ok(r)
    } else {
        Err(WireError::BadLength {
            message,
            expected: len,
            actual: payload.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::backend::BackendMessage;
    use crate::wire::frame::{BACKEND_FRAME_LIMIT, split_frame};
    use crate::wire::frontend::FrontendMessage;

    const XLOG_DATA: &[u8] = include_bytes!("../../tests/data/wire/copy_data_w.bin");
    const KEEPALIVE: &[u8] = include_bytes!("../../tests/data/wire/copy_data_k.bin");
    const STATUS_UPDATE: &[u8] = include_bytes!("../../tests/data/wire/copy_data_r.bin");
    const FEEDBACK: &[u8] = include_bytes!("../../tests/data/wire/copy_data_h.bin");

    /// The payload of a captured server CopyData message, through the real framer.
    fn server_payload(wire: &[u8]) -> Bytes {
        let mut buf = BytesMut::from(wire);
        let frame = split_frame(&mut buf, BACKEND_FRAME_LIMIT).unwrap().unwrap();
        match BackendMessage::parse(frame).unwrap() {
            BackendMessage::CopyData(payload) => payload,
            other => panic!("{other:?}"),
        }
    }

    fn client_payload(wire: &[u8]) -> Bytes {
        let mut buf = BytesMut::from(wire);
        let frame = split_frame(&mut buf, BACKEND_FRAME_LIMIT).unwrap().unwrap();
        match FrontendMessage::parse(frame).unwrap() {
            FrontendMessage::CopyData(payload) => payload,
            other => panic!("{other:?}"),
        }
    }

    fn framed(write: impl FnOnce(&mut BytesMut)) -> BytesMut {
        let mut out = BytesMut::new();
        write(&mut out);
        out
    }

    #[test]
    fn golden_xlog_data_decodes_zero_copy() {
        let payload = server_payload(XLOG_DATA);
        let ServerCopyData::XLogData(x) = ServerCopyData::parse(payload.clone()).unwrap() else {
            panic!()
        };
        assert_eq!((x.start, x.end), (Lsn(0x151_7390), Lsn(0x151_73f8)));
        assert_eq!(x.data.len(), XLOG_DATA.len() - XLOG_DATA_FRAME_HEADER_LEN);
        assert_eq!(x.data.as_ptr(), payload[XLOG_DATA_HEADER_LEN..].as_ptr());
        assert!(x.send_time.0 > 800_000_000_000_000);
        let header = x.header().unwrap();
        assert_eq!(&XLOG_DATA[..XLOG_DATA_FRAME_HEADER_LEN], &header[..]);
        assert_eq!(&framed(|out| x.write(out).unwrap())[..], XLOG_DATA);
        let msg = ServerCopyData::XLogData(x);
        assert_eq!(&framed(|out| msg.write(out).unwrap())[..], XLOG_DATA);
        assert_eq!(&framed(|out| msg.write_payload(out))[..], &payload[..]);
    }

    #[test]
    fn golden_keepalive() {
        let parsed = ServerCopyData::parse(server_payload(KEEPALIVE)).unwrap();
        let ServerCopyData::Keepalive(k) = parsed else {
            panic!()
        };
        assert_eq!(k.end, Lsn(0x151_7390));
        assert!(k.reply_requested);
        assert_eq!(&framed(|out| k.write(out))[..], KEEPALIVE);
        assert_eq!(&framed(|out| parsed.write(out).unwrap())[..], KEEPALIVE);
    }

    #[test]
    fn golden_status_update() {
        let parsed = ClientCopyData::parse(client_payload(STATUS_UPDATE)).unwrap();
        let ClientCopyData::StatusUpdate(r) = parsed else {
            panic!()
        };
        assert_eq!(
            (r.write, r.flush, r.apply),
            (Lsn(0x151_7390), Lsn(0), Lsn(0))
        );
        assert!(!r.reply_requested);
        assert_eq!(&framed(|out| r.write(out))[..], STATUS_UPDATE);
        assert_eq!(&framed(|out| parsed.write(out))[..], STATUS_UPDATE);
    }

    #[test]
    fn golden_hot_standby_feedback() {
        let parsed = ClientCopyData::parse(client_payload(FEEDBACK)).unwrap();
        let ClientCopyData::HotStandbyFeedback(h) = parsed else {
            panic!()
        };
        assert_eq!(
            (h.xmin, h.xmin_epoch, h.catalog_xmin, h.catalog_xmin_epoch),
            (727, 0, 0, 0)
        );
        assert_eq!(&framed(|out| h.write(out))[..], FEEDBACK);
        assert_eq!(&framed(|out| parsed.write(out))[..], FEEDBACK);
    }

    #[test]
    fn round_trips_with_extreme_values() {
        let server = [
            ServerCopyData::XLogData(XLogData {
                start: Lsn::MAX,
                end: Lsn(0),
                send_time: PgTimestamp(i64::MIN),
                data: Bytes::new(),
            }),
            ServerCopyData::Keepalive(PrimaryKeepalive {
                end: Lsn::MAX,
                send_time: PgTimestamp(-1),
                reply_requested: false,
            }),
        ];
        for msg in server {
            let payload = framed(|out| msg.write_payload(out)).freeze();
            assert_eq!(ServerCopyData::parse(payload).unwrap(), msg);
        }
        let client = [
            ClientCopyData::StatusUpdate(StandbyStatusUpdate {
                write: Lsn(1),
                flush: Lsn(2),
                apply: Lsn::MAX,
                send_time: PgTimestamp(i64::MAX),
                reply_requested: true,
            }),
            ClientCopyData::HotStandbyFeedback(HotStandbyFeedback {
                send_time: PgTimestamp(5),
                xmin: u32::MAX,
                xmin_epoch: 1,
                catalog_xmin: 2,
                catalog_xmin_epoch: u32::MAX,
            }),
        ];
        for msg in client {
            let payload = framed(|out| msg.write_payload(out)).freeze();
            assert_eq!(ClientCopyData::parse(payload).unwrap(), msg);
        }
    }

    #[test]
    fn keepalive_must_be_exactly_18_bytes() {
        let payload = server_payload(KEEPALIVE);
        for len in [1, 17] {
            let err = ServerCopyData::parse(payload.slice(..len)).unwrap_err();
            assert!(
                matches!(err, WireError::BadLength { expected: 18, .. }),
                "{err}"
            );
        }
        let mut long = BytesMut::from(&payload[..]);
        long.put_u8(0);
        let err = ServerCopyData::parse(long.freeze()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid keepalive message: length 19, expected 18"
        );
    }

    #[test]
    fn status_update_and_feedback_lengths() {
        let r = client_payload(STATUS_UPDATE);
        let err = ClientCopyData::parse(r.slice(..33)).unwrap_err();
        assert_eq!(err.to_string(), "insufficient data left in message");
        let long = Bytes::from([&r[..], &[0]].concat());
        assert_eq!(
            ClientCopyData::parse(long),
            Err(WireError::Trailing { extra: 1 })
        );
        let h = client_payload(FEEDBACK);
        assert!(matches!(
            ClientCopyData::parse(h.slice(..24)),
            Err(WireError::Short { .. })
        ));
        let long = Bytes::from([&h[..], &[0, 0]].concat());
        assert_eq!(
            ClientCopyData::parse(long),
            Err(WireError::Trailing { extra: 2 })
        );
    }

    #[test]
    fn short_xlog_data_header() {
        let payload = server_payload(XLOG_DATA);
        let err = ServerCopyData::parse(payload.slice(..24)).unwrap_err();
        assert!(matches!(err, WireError::Short { .. }));
        let empty_wal = ServerCopyData::parse(payload.slice(..25)).unwrap();
        assert!(
            matches!(empty_wal, ServerCopyData::XLogData(XLogData { ref data, .. }) if data.is_empty())
        );
    }

    #[test]
    fn unknown_sub_types() {
        let tagged = |t: u8| Bytes::from(vec![t; 40]);
        assert_eq!(
            ServerCopyData::parse(tagged(b'r')),
            Err(WireError::UnknownReplicationTag(b'r'))
        );
        assert_eq!(
            ClientCopyData::parse(tagged(b'x')),
            Err(WireError::UnknownReplicationTag(b'x'))
        );
        assert_eq!(
            ClientCopyData::parse(tagged(b'w')),
            Err(WireError::UnknownReplicationTag(b'w'))
        );
        assert!(matches!(
            ServerCopyData::parse(Bytes::new()),
            Err(WireError::Short { .. })
        ));
        assert!(matches!(
            ClientCopyData::parse(Bytes::new()),
            Err(WireError::Short { .. })
        ));
        assert_eq!(
            PrimaryKeepalive::parse(&[b'w'; 18]),
            Err(WireError::UnknownReplicationTag(b'w'))
        );
    }

    #[test]
    fn frame_header_layout_and_limits() {
        let header =
            XLogData::frame_header(Lsn(0x300_0000), Lsn(0x300_0060), PgTimestamp(1), 96).unwrap();
        let mut expected = vec![b'd', 0, 0, 0, 125, b'w'];
        expected.extend_from_slice(&0x300_0000_u64.to_be_bytes());
        expected.extend_from_slice(&0x300_0060_u64.to_be_bytes());
        expected.extend_from_slice(&1_i64.to_be_bytes());
        assert_eq!(&header[..], &expected[..]);
        let max = i32::MAX as usize - 29;
        assert!(XLogData::frame_header(Lsn(0), Lsn(0), PgTimestamp(0), max).is_ok());
        let too_long = XLogData::frame_header(Lsn(0), Lsn(0), PgTimestamp(0), max + 1);
        assert_eq!(too_long, Err(WireError::TooLong { len: max + 1 }));
        assert!(XLogData::frame_header(Lsn(0), Lsn(0), PgTimestamp(0), usize::MAX).is_err());
    }
}
