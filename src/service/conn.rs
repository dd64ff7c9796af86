//! Framed PostgreSQL protocol connections over TCP, TLS or a Unix socket.
//!
//! A [`FrameReader`] fills one buffer from which whole messages are split without copying; the
//! length of every message is checked against a cap before anything is reserved for it. A
//! message longer than the reader's read chunk (an `XLogData` of WAL) is read into an
//! allocation of its own, exactly its size, so that the WAL it carries can be kept without a
//! copy and without pinning the receive buffer. A
//! [`FrameWriter`] buffers encoded messages and sends them with WAL payloads in one vectored
//! write. The halves are separate so a sender can keep writing WAL while replies are read; a
//! client [`Connection`] pairs them. A TLS peer that closes without `close_notify` is a
//! truncation error, not a clean end.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, UnixStream};

use crate::wire::StartupPacket;
use crate::wire::WireError;
use crate::wire::frame::{Frame, frame_len, split_frame, split_startup_packet};

/// A byte stream to a peer: plain TCP, TLS over TCP, or a Unix-domain socket.
#[derive(Debug)]
pub enum Socket {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (client side).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A Unix-domain socket.
    Unix(UnixStream),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// A socket error.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The peer closed the connection.
    #[error("server closed the connection unexpectedly")]
    Closed,
    /// The peer sent a malformed message.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The peer did not answer a command in time.
    #[error("timed out after {0:?} without progress")]
    Timeout(Duration),
}

/// A client connection that sends and receives whole messages: a [`FrameReader`] and a
/// [`FrameWriter`] over the two halves of one socket.
#[derive(Debug)]
pub struct Connection {
    rd: FrameReader<ReadHalf<Socket>>,
    wr: FrameWriter<WriteHalf<Socket>>,
    reply_timeout: Duration,
}

/// How long a peer may take to answer a command unless told otherwise.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes asked of an upstream socket per read. A walsender's `XLogData` (up to 128 KiB of WAL)
/// is longer, so it gets a buffer of its own and only this much of it is ever copied.
pub const UPSTREAM_READ_CHUNK: usize = 8 * 1024;

impl Connection {
    /// Wraps a socket.
    pub fn new(io: Socket) -> Connection {
        let (rd, wr) = tokio::io::split(io);
        Connection {
            rd: FrameReader::new(rd, UPSTREAM_READ_CHUNK),
            wr: FrameWriter::new(wr),
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
        }
    }

    /// Sets how long [`Connection::recv_reply`] waits.
    pub fn set_reply_timeout(&mut self, timeout: Duration) {
        self.reply_timeout = timeout;
    }

    /// The next message, of at most `max_len` bytes, reading from the socket as needed.
    /// Cancel-safe.
    ///
    /// # Errors
    /// A socket error, end of stream, or a frame over the cap.
    pub async fn recv(&mut self, max_len: usize) -> Result<Frame, ConnError> {
        self.rd.frame(max_len).await
    }

    /// The next message of an answer the peer owes: like [`Connection::recv`], but within
    /// the reply timeout, on the relay's own clock.
    ///
    /// # Errors
    /// As [`Connection::recv`], and [`ConnError::Timeout`].
    pub async fn recv_reply(&mut self, max_len: usize) -> Result<Frame, ConnError> {
        let limit = self.reply_timeout;
        tokio::time::timeout(limit, self.recv(max_len))
            .await
            .map_err(|_| ConnError::Timeout(limit))?
    }

    /// Sends `bytes` (nothing when empty).
    ///
    /// # Errors
    /// A socket error.
    pub async fn send(&mut self, bytes: BytesMut) -> Result<(), ConnError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.wr.out().unsplit(bytes);
        self.wr.flush().await
    }

    /// Flushes and closes the sending side (TLS sends `close_notify`).
    pub async fn shutdown(&mut self) {
        self.wr.close().await;
    }

    /// The two halves of the socket, for bytes that are relayed rather than parsed, with
    /// what was read and not yet taken. Anything not yet sent is dropped.
    pub fn into_parts(self) -> (ReadHalf<Socket>, BytesMut, WriteHalf<Socket>) {
        let (rd, read) = self.rd.into_parts();
        (rd, read, self.wr.into_inner())
    }
}

/// Bytes asked per read for a connection's first packet: a startup packet is short, and a
/// connection that has not logged in should cost little memory.
const STARTUP_READ_CHUNK: usize = 1024;

/// The most a long message is given before its bytes arrive: an `XLogData` of 128 KiB of WAL
/// and its headers fit.
const LONG_FIRST_ALLOCATION: usize = 256 * 1024;

/// The reading half: whole messages split off a buffer, each length capped before anything is
/// reserved for it. Messages longer than the read chunk come in buffers of their own.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    read_chunk: usize,
    /// A long message being read: its whole length and the bytes so far (never more).
    long: Option<(usize, BytesMut)>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps the reading half of a connection; each read asks the socket for up to
    /// `read_chunk` bytes, and a message longer than that is read into its own buffer.
    pub fn new(io: R, read_chunk: usize) -> FrameReader<R> {
        FrameReader {
            io,
            buf: BytesMut::new(),
            read_chunk,
            long: None,
        }
    }

    /// Whether bytes are buffered beyond the last message taken.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty() || self.long.is_some()
    }

    /// The first byte not yet taken, waiting for one if none is buffered; it stays buffered.
    ///
    /// # Errors
    /// A socket error or end of stream.
    pub async fn first_byte(&mut self) -> Result<u8, ConnError> {
        loop {
            if let Some(&b) = self.buf.first() {
                return Ok(b);
            }
            self.fill(STARTUP_READ_CHUNK).await?;
        }
    }

    /// The reading half back, with the bytes read from it and not yet taken.
    pub fn into_parts(self) -> (R, BytesMut) {
        // A long message started with what the buffer held; the buffer is empty until it ends.
        let read = match self.long {
            Some((_, mut long)) => {
                long.extend_from_slice(&self.buf);
                long
            }
            None => self.buf,
        };
        (self.io, read)
    }

    /// The next first packet (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage).
    ///
    /// # Errors
    /// A socket error, end of stream, or a malformed packet.
    pub async fn startup_packet(&mut self, max_len: usize) -> Result<StartupPacket, ConnError> {
        loop {
            if let Some(packet) = split_startup_packet(&mut self.buf, max_len)? {
                return Ok(packet);
            }
            self.fill(STARTUP_READ_CHUNK).await?;
        }
    }

    /// The next typed message of at most `max_len` bytes. Cancel-safe: what was read stays
    /// buffered for the next call.
    ///
    /// # Errors
    /// A socket error, end of stream, or a frame over the cap.
    pub async fn frame(&mut self, max_len: usize) -> Result<Frame, ConnError> {
        loop {
            if let Some((total, long)) = &mut self.long {
                let missing = total.saturating_sub(long.len());
                if missing > 0 {
                    let mut limited = (&mut self.io).take(missing as u64);
                    if limited.read_buf(long).await? == 0 {
                        return Err(ConnError::Closed);
                    }
                    continue;
                }
            }
            if let Some((_, mut long)) = self.long.take() {
                // It holds exactly one whole message, whose length was checked.
                return split_frame(&mut long, usize::MAX)?.ok_or(ConnError::Closed);
            }
            match frame_len(&self.buf, max_len)? {
                Some(total) if total > self.read_chunk && self.buf.len() < total => {
                    // Only the prefix already read is copied; the rest goes straight in. A
                    // message announced longer than an XLogData gets its memory as its bytes
                    // arrive, not on the word of its header.
                    let mut long = BytesMut::with_capacity(total.min(LONG_FIRST_ALLOCATION));
                    long.extend_from_slice(&self.buf);
                    self.buf.clear();
                    self.long = Some((total, long));
                }
                Some(_) => {
                    if let Some(frame) = split_frame(&mut self.buf, max_len)? {
                        return Ok(frame);
                    }
                    self.fill(self.read_chunk).await?;
                }
                None => self.fill(self.read_chunk).await?,
            }
        }
    }

    /// Reads up to `chunk` more bytes into the buffer.
    async fn fill(&mut self, chunk: usize) -> Result<(), ConnError> {
        self.buf.reserve(chunk);
        let mut limited = (&mut self.io).take(chunk as u64);
        if limited.read_buf(&mut self.buf).await? == 0 {
            return Err(ConnError::Closed);
        }
        Ok(())
    }
}

/// Byte chunks written as one buffer, so that they can go out in vectored writes.
struct Parts(VecDeque<Bytes>);

impl Buf for Parts {
    fn remaining(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    fn chunk(&self) -> &[u8] {
        self.0.front().map_or(&[], |b| b.as_ref())
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in dst.iter_mut().zip(self.0.iter()) {
            *slot = std::io::IoSlice::new(part);
            n += 1;
        }
        n
    }

    fn advance(&mut self, mut cnt: usize) {
        while cnt > 0 {
            let Some(front) = self.0.front_mut() else {
                return;
            };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.0.pop_front();
        }
    }
}

/// The writing half with an output buffer that messages are encoded into.
#[derive(Debug)]
pub struct FrameWriter<W> {
    io: W,
    out: BytesMut,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps the writing half of a connection.
    pub fn new(io: W) -> FrameWriter<W> {
        FrameWriter {
            io,
            out: BytesMut::new(),
        }
    }

    /// The writing half.
    pub fn get_ref(&self) -> &W {
        &self.io
    }

    /// The writing half back; what is buffered and not flushed is dropped.
    pub fn into_inner(self) -> W {
        self.io
    }

    /// The buffer to encode messages into; [`FrameWriter::flush`] sends it.
    pub fn out(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// Sends what is buffered, then `parts` as they are (XLogData headers and WAL), in
    /// vectored writes.
    ///
    /// # Errors
    /// A socket error.
    pub async fn flush_parts(&mut self, parts: Vec<Bytes>) -> Result<(), ConnError> {
        let mut queue: VecDeque<Bytes> = VecDeque::with_capacity(parts.len() + 1);
        if !self.out.is_empty() {
            queue.push_back(self.out.split().freeze());
        }
        queue.extend(parts.into_iter().filter(|p| !p.is_empty()));
        let mut all = Parts(queue);
        self.io.write_all_buf(&mut all).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Sends what is buffered.
    ///
    /// # Errors
    /// A socket error.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        self.flush_parts(Vec::new()).await
    }

    /// Sends what is buffered and closes the sending side.
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of every kind of length: short ones that share the receive buffer, and long ones
    /// (over the read chunk) that get buffers of their own.
    fn frames() -> Vec<(u8, Vec<u8>)> {
        let lens = [
            0,
            1,
            17,
            8190,
            8191,
            8192,
            20_000,
            131_072 + 25,
            3,
            65_536,
            9000,
            0,
        ];
        lens.iter()
            .enumerate()
            .map(|(i, &len)| {
                let body = (0..len).map(|j| (i * 31 + j * 7) as u8).collect();
                (b'd' + (i % 3) as u8, body)
            })
            .collect()
    }

    fn encode(frames: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut wire = Vec::new();
        for (tag, body) in frames {
            wire.push(*tag);
            wire.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
            wire.extend_from_slice(body);
        }
        wire
    }

    #[tokio::test]
    async fn frames_of_every_length_survive_any_slicing_and_cancelled_reads() {
        let frames = frames();
        let wire = encode(&frames);
        let (mut tx, rx) = tokio::io::duplex(4096);
        let writer = tokio::spawn(async move {
            // Slices of 1 to about 10 000 bytes, with pauses that leave reads pending.
            let mut at = 0;
            let mut step = 1;
            while at < wire.len() {
                let end = (at + step).min(wire.len());
                tx.write_all(&wire[at..end]).await.unwrap();
                at = end;
                step = (step * 7 + 3) % 10_007 + 1;
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        });
        let mut reader = FrameReader::new(rx, 8192);
        let mut got = Vec::new();
        while got.len() < frames.len() {
            // Reads cut short by a timeout lose nothing.
            match tokio::time::timeout(Duration::from_micros(300), reader.frame(1 << 20)).await {
                Ok(frame) => {
                    let frame = frame.unwrap();
                    got.push((frame.tag, frame.body.to_vec()));
                }
                Err(_) => continue,
            }
        }
        writer.await.unwrap();
        assert!(got == frames);
        assert!(!reader.has_buffered());
    }

    #[tokio::test]
    async fn a_long_frame_over_the_cap_is_refused_before_its_body_is_read() {
        let (mut tx, rx) = tokio::io::duplex(64);
        tx.write_all(b"d\x00\x10\x00\x00").await.unwrap();
        let mut reader = FrameReader::new(rx, 8192);
        let err = reader.frame(1 << 16).await.unwrap_err();
        assert!(
            matches!(err, ConnError::Wire(WireError::FrameLength { .. })),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_long_frame_gets_memory_as_its_bytes_arrive() {
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        let mut wire = vec![b'Q'];
        wire.extend_from_slice(&(2_000_000_i32).to_be_bytes());
        wire.extend_from_slice(&[b'x'; 20_000]);
        tx.write_all(&wire).await.unwrap();
        let mut reader = FrameReader::new(rx, 8192);
        let pending = tokio::time::timeout(Duration::from_millis(100), reader.frame(4 << 20));
        assert!(pending.await.is_err(), "a frame came out of 20 000 bytes");
        let (total, long) = reader.long.as_ref().unwrap();
        assert_eq!(*total, 2_000_001);
        assert_eq!(long.len(), 20_005);
        assert!(
            long.capacity() <= LONG_FIRST_ALLOCATION,
            "{}",
            long.capacity()
        );
    }

    #[tokio::test]
    async fn a_peer_that_closes_inside_a_long_frame_is_a_closed_connection() {
        let mut wire = encode(&[(b'd', vec![5; 50_000])]);
        wire.truncate(30_000);
        let (mut tx, rx) = tokio::io::duplex(1 << 16);
        tx.write_all(&wire).await.unwrap();
        drop(tx);
        let mut reader = FrameReader::new(rx, 8192);
        let err = reader.frame(1 << 20).await.unwrap_err();
        assert!(matches!(err, ConnError::Closed), "{err:?}");
    }
}
