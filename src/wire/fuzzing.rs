//! Fuzz entry points for the wire layer; `fuzz/fuzz_targets/*.rs` only call these.
//!
//! Properties checked: no panic on any input; buffers never grow past the frame cap (plus
//! the input itself); framing gives the same result whether bytes arrive whole or in chunks;
//! and whatever decodes re-encodes to something that decodes to the same value.

use bytes::{Bytes, BytesMut};

use super::backend::BackendMessage;
use super::error::WireError;
use super::frame::{
    BACKEND_FRAME_LIMIT, COMMAND_FRAME_LIMIT, Frame, MAX_STARTUP_PACKET_LEN, split_frame,
    split_startup_packet,
};
use super::frontend::{FrontendMessage, SaslInitialResponse, parse_password};
use super::replication::{ClientCopyData, ServerCopyData};
use super::startup::StartupPacket;

/// Feeds `data[1..]` to the typed-message framer in chunks of `data[0]` bytes (at least 1) and
/// decodes every frame as a server message.
pub fn fuzz_backend_framer(data: &[u8]) {
    let Some((&seed, data)) = data.split_first() else {
        return;
    };
    frames(
        data,
        usize::from(seed).max(1),
        BACKEND_FRAME_LIMIT,
        |frame| {
            let tag = frame.tag;
            if let Ok(msg) = BackendMessage::parse(frame) {
                let mut out = BytesMut::new();
                assert!(
                    msg.write(&mut out).is_ok(),
                    "decoded {msg:?} fails to encode"
                );
                let again = reframe(out, tag);
                assert_eq!(BackendMessage::parse(again).as_ref(), Ok(&msg));
                if let BackendMessage::CopyData(payload) = msg {
                    fuzz_replication_payloads(&payload);
                }
            }
        },
    );
}

/// Feeds `data[1..]` to the first-packet parser whole and in chunks of `data[0] % 16 + 1`
/// bytes; both must give the same packets and error, and every packet must round-trip.
pub fn fuzz_startup(data: &[u8]) {
    let Some((&seed, data)) = data.split_first() else {
        return;
    };
    let whole = startup_packets(data, data.len().max(1));
    let chunked = startup_packets(data, usize::from(seed % 16) + 1);
    assert_eq!(whole, chunked);
    for packet in whole.0 {
        let mut out = BytesMut::new();
        assert!(packet.write(&mut out).is_ok());
        let reparsed = split_startup_packet(&mut out, MAX_STARTUP_PACKET_LEN);
        assert_eq!(reparsed, Ok(Some(packet)));
    }
}

/// Feeds `data[1..]` to the typed-message framer in chunks of `data[0]` bytes and decodes every
/// frame as a client message, including the bodies of `p` and `d` messages.
pub fn fuzz_frontend(data: &[u8]) {
    let Some((&seed, data)) = data.split_first() else {
        return;
    };
    frames(
        data,
        usize::from(seed).max(1),
        COMMAND_FRAME_LIMIT,
        |frame| {
            let tag = frame.tag;
            let Ok(msg) = FrontendMessage::parse(frame) else {
                return;
            };
            let mut out = BytesMut::new();
            assert!(
                msg.write(&mut out).is_ok(),
                "decoded {msg:?} fails to encode"
            );
            assert_eq!(FrontendMessage::parse(reframe(out, tag)).as_ref(), Ok(&msg));
            match msg {
                FrontendMessage::Password(body) => fuzz_password_body(&body),
                FrontendMessage::CopyData(payload) => fuzz_replication_payloads(&payload),
                _ => {}
            }
        },
    );
}

/// Decodes `data` as a CopyData payload of each direction; whatever decodes must re-encode to
/// the same value, and XLogData's separate header plus WAL must equal its whole frame.
pub fn fuzz_replication_payloads(data: &[u8]) {
    let payload = Bytes::copy_from_slice(data);
    if let Ok(msg) = ServerCopyData::parse(payload.clone()) {
        let mut out = BytesMut::new();
        msg.write_payload(&mut out);
        assert_eq!(ServerCopyData::parse(out.freeze()).as_ref(), Ok(&msg));
        if let ServerCopyData::XLogData(x) = &msg {
            let mut whole = BytesMut::new();
            assert!(msg.write(&mut whole).is_ok());
            let header = x.header();
            assert!(header.is_ok());
            let split = [header.unwrap_or_default().as_slice(), &x.data].concat();
            assert_eq!(&whole[..], &split[..]);
        }
    }
    if let Ok(msg) = ClientCopyData::parse(payload) {
        let mut out = BytesMut::new();
        msg.write_payload(&mut out);
        assert_eq!(ClientCopyData::parse(out.freeze()), Ok(msg));
    }
}

fn fuzz_password_body(body: &Bytes) {
    let _ = parse_password(body);
    if let Ok(msg) = SaslInitialResponse::parse(body) {
        let mut out = BytesMut::new();
        assert!(msg.write(&mut out).is_ok());
        let FrontendMessage::Password(again) =
            FrontendMessage::parse(reframe(out, b'p')).unwrap_or(FrontendMessage::Sync)
        else {
            unreachable!("a written SASLInitialResponse is a p message")
        };
        assert_eq!(SaslInitialResponse::parse(&again), Ok(msg));
    }
}

/// Splits `data`, delivered `chunk` bytes at a time, into frames until an error, checking that
/// the buffer stays within the cap.
fn frames(data: &[u8], chunk: usize, max_len: usize, mut each: impl FnMut(Frame)) {
    let bound = 2 * (max_len + 5 + data.len());
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match split_frame(&mut buf, max_len) {
                Ok(Some(frame)) => each(frame),
                Ok(None) => break,
                Err(_) => return,
            }
            assert!(buf.capacity() <= bound);
        }
        assert!(buf.capacity() <= bound);
    }
}

/// Re-splits an encoded message, which must be exactly one frame with the given tag.
fn reframe(mut out: BytesMut, tag: u8) -> Frame {
    let frame = split_frame(&mut out, usize::MAX);
    assert!(out.is_empty());
    match frame {
        Ok(Some(frame)) if frame.tag == tag => frame,
        other => unreachable!("re-encoded message does not frame: {other:?}"),
    }
}

type StartupRun = (Vec<StartupPacket>, Option<WireError>);

fn startup_packets(data: &[u8], chunk: usize) -> StartupRun {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match split_startup_packet(&mut buf, MAX_STARTUP_PACKET_LEN) {
                Ok(Some(packet)) => packets.push(packet),
                Ok(None) => break,
                Err(e) => return (packets, Some(e)),
            }
        }
        assert!(buf.capacity() <= 2 * (MAX_STARTUP_PACKET_LEN + 4 + data.len()));
    }
    (packets, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_points_accept_seeds() {
        fuzz_backend_framer(b"\x03Z\0\0\0\x05IW\0\0\0\x07\0\0\0d\0\0\0\x17k\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\x02\x01");
        fuzz_startup(b"\x02\0\0\0\x08\x04\xd2\x16\x2f\0\0\0\x0e\0\x03\0\0a\0b\0\0");
        fuzz_frontend(b"\x01Q\0\0\0\x05\0p\0\0\0\x0bM\0\xff\xff\xff\xffX\0\0\0\x04");
        fuzz_replication_payloads(b"w\0\0\0\0\x03\0\0\0\0\0\0\0\x03\0\0\x60\0\0\0\0\0\0\0\0WAL");
        fuzz_replication_payloads(&[b'h'; 25]);
        fuzz_backend_framer(b"\x01d\x7f\xff\xff\xff");
    }
}
