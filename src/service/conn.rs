//! A framed PostgreSQL protocol connection over TCP or TLS.
//!
//! Reads fill one buffer from which whole messages are split without copying; the length of
//! every message is checked against a cap before anything is reserved for it. A TLS peer that
//! closes without `close_notify` is a truncation error, not a clean end.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::wire::WireError;
use crate::wire::frame::{Frame, split_frame};

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

/// A connection that sends and receives whole messages.
#[derive(Debug)]
pub struct Connection {
    io: Transport,
    rbuf: BytesMut,
    wbuf: BytesMut,
    max_frame: usize,
    reply_timeout: Duration,
}

/// How long a peer may take to answer a command unless told otherwise.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 256 * 1024;

impl Connection {
    /// Wraps a transport; messages longer than `max_frame` are refused.
    pub fn new(io: Transport, max_frame: usize) -> Connection {
        Connection {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(4096),
            max_frame,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
        }
    }

    /// Sets how long [`Connection::recv_reply`] waits.
    pub fn set_reply_timeout(&mut self, timeout: Duration) {
        self.reply_timeout = timeout;
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

    /// The next message if one is already buffered.
    ///
    /// # Errors
    /// A message longer than the cap.
    pub fn try_recv(&mut self) -> Result<Option<Frame>, ConnError> {
        Ok(split_frame(&mut self.rbuf, self.max_frame)?)
    }

    /// The next message, reading from the socket as needed.
    ///
    /// # Errors
    /// A socket error, end of stream, or a malformed frame.
    pub async fn recv(&mut self) -> Result<Frame, ConnError> {
        loop {
            if let Some(frame) = self.try_recv()? {
                return Ok(frame);
            }
            self.rbuf.reserve(READ_CHUNK);
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ConnError::Closed);
            }
        }
    }

    /// Changes the cap on message length (login uses a small one).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Whether bytes are buffered that are not yet a whole message.
    pub fn has_buffered(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// The send buffer, to encode messages into; [`Connection::flush`] sends it.
    pub fn out(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    /// Sends everything queued.
    ///
    /// # Errors
    /// A socket error.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Flushes and closes the sending side (TLS sends `close_notify`).
    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
    }
}
