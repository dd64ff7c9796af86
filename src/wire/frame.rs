//! Message framing over a receive buffer, as PostgreSQL's `pq_getmessage` and
//! `ProcessStartupPacket` do it.
//!
//! A typed message is a 1-byte tag and an Int32 length that counts itself; a first packet is
//! untyped (Int32 length, Int32 code). The announced length is checked against the caller's cap
//! before any memory is reserved for it, so a hostile `0x7fffffff` never allocates. "Need more
//! bytes" is `Ok(None)`; a frame is split off the buffer without copying.

use bytes::{Buf, Bytes, BytesMut};

use super::error::WireError;
use super::reader::Reader;
use super::startup::StartupPacket;

/// PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`: the largest first packet, counting the bytes
/// after its length word.
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;

/// The smallest value of a first packet's length word: itself plus the Int32 code.
pub const MIN_STARTUP_PACKET_LEN: usize = 8;

/// PostgreSQL's `PQ_SMALL_MESSAGE_LIMIT`: the cap for messages that are always small
/// (CopyDone, Terminate, Sync, and a standby's replies while streaming).
pub const SMALL_FRAME_LIMIT: usize = 10_000;

/// PostgreSQL's `PG_MAX_AUTH_TOKEN_LENGTH`: the cap for password and SASL messages.
pub const AUTH_FRAME_LIMIT: usize = 65_535;

/// The cap for a client's messages in command mode (Query). PostgreSQL allows 1 GB; replication
/// commands are short, and 2 MiB leaves room for a 1 MB command to get its proper error.
pub const COMMAND_FRAME_LIMIT: usize = 2 << 20;

/// The cap for messages from an upstream server. A walsender's XLogData carries at most
/// 128 KiB of WAL; result sets (timeline history files) are small.
pub const BACKEND_FRAME_LIMIT: usize = 8 << 20;

/// One typed message: its tag and its body (without tag and length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message type byte.
    pub tag: u8,
    /// The message body, shared with the receive buffer.
    pub body: Bytes,
}

/// The whole length (type byte and length word included) of the typed message at the front of
/// `buf`, once its 5-byte header is there; `Ok(None)` before.
///
/// `max_len` caps the Int32 length word (which counts itself), like `pq_getmessage`'s
/// `maxlen`.
///
/// # Errors
/// [`WireError::FrameLength`] if the length is below 4 or above `max_len`.
pub fn frame_len(buf: &[u8], max_len: usize) -> Result<Option<usize>, WireError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let mut r = Reader::new(header);
    let tag = r.u8()?;
    let len = r.i32()?;
    match usize::try_from(len) {
        Ok(n) if (4..=max_len).contains(&n) => Ok(Some(n + 1)),
        _ => Err(WireError::FrameLength {
            tag,
            len,
            max: max_len,
        }),
    }
}

/// Splits the next typed message off the front of `buf`.
///
/// `max_len` caps the length word as [`frame_len`] does. Returns `Ok(None)` until the whole
/// message is buffered; in that case room for the rest is reserved, which is bounded by
/// `max_len`.
///
/// # Errors
/// [`WireError::FrameLength`] if the length is below 4 or above `max_len`, as soon as the
/// 5-byte header is buffered.
pub fn split_frame(buf: &mut BytesMut, max_len: usize) -> Result<Option<Frame>, WireError> {
    let Some(total) = frame_len(buf, max_len)? else {
        return Ok(None);
    };
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total);
    let tag = frame.get_u8();
    frame.advance(4);
    Ok(Some(Frame {
        tag,
        body: frame.freeze(),
    }))
}

/// Splits the first packet of a connection (SSLRequest, GSSENCRequest, CancelRequest or
/// StartupMessage) off the front of `buf` and classifies it.
///
/// `max_len` caps the bytes after the length word, like `MAX_STARTUP_PACKET_LENGTH`
/// ([`MAX_STARTUP_PACKET_LEN`]). Returns `Ok(None)` until the whole packet is buffered.
///
/// # Errors
/// [`WireError::StartupLength`] for a length word below 8 or above `max_len + 4`, and the
/// errors of [`StartupPacket::parse`] for the packet itself.
pub fn split_startup_packet(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<StartupPacket>, WireError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let len = Reader::new(header).i32()?;
    let total = match usize::try_from(len) {
        Ok(n) if n >= MIN_STARTUP_PACKET_LEN && n - 4 <= max_len => n,
        _ => return Err(WireError::StartupLength { len }),
    };
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let packet = buf.split_to(total);
    StartupPacket::parse(packet.get(4..).unwrap_or_default()).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::startup::StartupMessage;

    #[test]
    fn need_more_bytes_is_none() {
        let mut buf = BytesMut::from(&b"Z\0\0\0"[..]);
        assert_eq!(split_frame(&mut buf, 100).unwrap(), None);
        buf.extend_from_slice(&[5]);
        assert_eq!(split_frame(&mut buf, 100).unwrap(), None);
        buf.extend_from_slice(b"IQ");
        let frame = split_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(frame.tag, b'Z');
        assert_eq!(&frame.body[..], b"I");
        assert_eq!(&buf[..], b"Q");
    }

    #[test]
    fn two_frames_in_one_buffer_split_zero_copy() {
        let mut buf = BytesMut::from(&b"c\0\0\0\x04d\0\0\0\x06ab"[..]);
        let base = buf.as_ptr() as usize;
        let first = split_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!((first.tag, first.body.len()), (b'c', 0));
        let second = split_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(&second.body[..], b"ab");
        assert_eq!(second.body.as_ptr() as usize, base + 10);
        assert!(buf.is_empty());
    }

    #[test]
    fn hostile_lengths_fail_before_allocating() {
        for len in [0x7fff_ffff_u32, 0xffff_ffff, 3, 0, 101] {
            let mut buf = BytesMut::with_capacity(5);
            buf.extend_from_slice(b"d");
            buf.extend_from_slice(&len.to_be_bytes());
            let err = split_frame(&mut buf, 100).unwrap_err();
            assert!(
                matches!(err, WireError::FrameLength { tag: b'd', .. }),
                "{err}"
            );
            assert!(buf.capacity() < 100);
        }
        let mut exact = BytesMut::from(&b"d\0\0\0\x64"[..]);
        assert_eq!(split_frame(&mut exact, 100).unwrap(), None);
    }

    #[test]
    fn startup_length_limits() {
        for len in [0_i32, 3, 7, 10_005, 0x7fff_ffff, -1] {
            let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
            let err = split_startup_packet(&mut buf, MAX_STARTUP_PACKET_LEN).unwrap_err();
            assert_eq!(err, WireError::StartupLength { len });
            assert!(buf.capacity() < 1000);
        }
        let mut max = BytesMut::from(&10_004_i32.to_be_bytes()[..]);
        assert_eq!(
            split_startup_packet(&mut max, MAX_STARTUP_PACKET_LEN).unwrap(),
            None
        );
    }

    #[test]
    fn startup_packet_in_chunks() {
        let mut wire = BytesMut::new();
        let msg = StartupMessage {
            minor_version: 0,
            params: vec![("user".into(), "postgres".into())],
        };
        StartupPacket::Startup(msg.clone())
            .write(&mut wire)
            .unwrap();
        wire.extend_from_slice(b"rest");
        let mut buf = BytesMut::new();
        let mut parsed = None;
        for chunk in wire.chunks(3) {
            buf.extend_from_slice(chunk);
            if parsed.is_none() {
                parsed = split_startup_packet(&mut buf, MAX_STARTUP_PACKET_LEN).unwrap();
            }
        }
        assert_eq!(parsed, Some(StartupPacket::Startup(msg)));
        assert_eq!(&buf[..], b"rest");
    }
}
