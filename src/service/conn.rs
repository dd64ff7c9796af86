//! Framed PostgreSQL protocol connections over TCP, TLS or a Unix socket.
//!
//! A [`FrameReader`] fills one buffer from which whole messages are split without copying; the
//! length of every message is checked against a cap before anything is reserved for it. A
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

use crate::wire::WireError;
use crate::wire::frame::{Frame, split_frame, split_startup_packet};
use crate::wire::{BackendMessage, ErrorFields, StartupPacket};

/// A byte stream to a peer: plain TCP, or TLS over TCP.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (client side).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A Unix-domain socket.
    Unix(UnixStream),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Why a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// A socket error.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection.
    #[error("server closed the connection unexpectedly")]
    Closed,
    /// The peer sent a malformed message.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The peer did not answer a command in time.
    #[error("timed out after {0:?} without progress")]
    Timeout(Duration),
}

/// A client connection that sends and receives whole messages: a [`FrameReader`] and a
/// [`FrameWriter`] over the two halves of one transport.
#[derive(Debug)]
pub struct Connection {
    rd: FrameReader<ReadHalf<Transport>>,
    wr: FrameWriter<WriteHalf<Transport>>,
    max_frame: usize,
    reply_timeout: Duration,
}

/// How long a peer may take to answer a command unless told otherwise.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes asked of an upstream socket per read: a walsender sends up to 128 KiB at a time.
const UPSTREAM_READ_CHUNK: usize = 256 * 1024;

impl Connection {
    /// Wraps a transport; messages longer than `max_frame` are refused.
    pub fn new(io: Transport, max_frame: usize) -> Connection {
        let (rd, wr) = tokio::io::split(io);
        Connection {
            rd: FrameReader::new(rd, UPSTREAM_READ_CHUNK),
            wr: FrameWriter::new(wr),
            max_frame,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
        }
    }

    /// Changes the cap on message length (login uses a small one).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Sets how long [`Connection::recv_reply`] waits.
    pub fn set_reply_timeout(&mut self, timeout: Duration) {
        self.reply_timeout = timeout;
    }

    /// The next message, reading from the socket as needed.
    ///
    /// # Errors
    /// A socket error, end of stream, or a malformed frame.
    pub async fn recv(&mut self) -> Result<Frame, ConnError> {
        self.rd.frame(self.max_frame).await
    }

    /// The next message of an answer the peer owes: like [`Connection::recv`], but within
    /// the reply timeout, on the relay's own clock.
    ///
    /// # Errors
    /// As [`Connection::recv`], and [`ConnError::Timeout`].
    pub async fn recv_reply(&mut self) -> Result<Frame, ConnError> {
        let limit = self.reply_timeout;
        tokio::time::timeout(limit, self.recv())
            .await
            .map_err(|_| ConnError::Timeout(limit))?
    }

    /// The send buffer, to encode messages into; [`Connection::flush`] sends it.
    pub fn out(&mut self) -> &mut BytesMut {
        self.wr.out()
    }

    /// Sends everything queued.
    ///
    /// # Errors
    /// A socket error.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        self.wr.flush().await
    }

    /// Flushes and closes the sending side (TLS sends `close_notify`).
    pub async fn shutdown(&mut self) {
        self.wr.close().await;
    }
}

/// The reading half: whole messages split off a buffer, each length capped before anything is
/// reserved for it.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    read_chunk: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps the reading half of a connection; each read asks the socket for up to
    /// `read_chunk` bytes.
    pub fn new(io: R, read_chunk: usize) -> FrameReader<R> {
        FrameReader {
            io,
            buf: BytesMut::with_capacity(read_chunk),
            read_chunk,
        }
    }

    /// Whether bytes are buffered beyond the last message taken.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
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
            self.fill().await?;
        }
    }

    /// The next typed message of at most `max_len` bytes.
    ///
    /// # Errors
    /// A socket error, end of stream, or a frame over the cap.
    pub async fn frame(&mut self, max_len: usize) -> Result<Frame, ConnError> {
        loop {
            if let Some(frame) = split_frame(&mut self.buf, max_len)? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), ConnError> {
        self.buf.reserve(self.read_chunk);
        if self.io.read_buf(&mut self.buf).await? == 0 {
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
            out: BytesMut::with_capacity(4096),
        }
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

    /// Sends `e` (a FATAL error) after what is buffered, and closes: the way every refusal
    /// ends a connection. A peer that is gone by then changes nothing.
    pub async fn fatal(&mut self, e: &ErrorFields) {
        if BackendMessage::ErrorResponse(e.clone())
            .write(self.out())
            .is_ok()
        {
            self.close().await;
        }
    }

    /// Sends what is buffered and closes the sending side.
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
    }
}
