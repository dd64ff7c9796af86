//! The byte streams a downstream connection runs over, split into a reading and a writing
//! half while it serves, and put back together when it turns to TLS.
//!
//! TCP and Unix sockets split without a lock (`into_split`); a TLS stream is split with
//! [`tokio::io::split`]. [`Replay`] gives a TLS handshake the bytes the connection had already
//! read: the start of a ClientHello that came as a connection's first bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, UnixStream, tcp, unix};

/// A stream a downstream connection can split and put back together.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// The reading half.
    type Read: AsyncRead + Unpin + Send + 'static;
    /// The writing half.
    type Write: AsyncWrite + Unpin + Send + 'static;

    /// The two halves.
    fn halves(self) -> (Self::Read, Self::Write);

    /// The stream again, from the halves [`Transport::halves`] gave; `None` for halves of two
    /// different streams, which the relay never mixes.
    fn whole(read: Self::Read, write: Self::Write) -> Option<Self>;

    /// The TCP socket under the writing half, when nothing stands between them, so that WAL
    /// can be sent to it from files ([`super::file_send`]); `None` by default.
    fn plain_tcp(_write: &Self::Write) -> Option<&TcpStream> {
        None
    }
}

impl Transport for TcpStream {
    type Read = tcp::OwnedReadHalf;
    type Write = tcp::OwnedWriteHalf;

    fn halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }

    fn whole(read: Self::Read, write: Self::Write) -> Option<Self> {
        read.reunite(write).ok()
    }

    fn plain_tcp(write: &Self::Write) -> Option<&TcpStream> {
        Some(write.as_ref())
    }
}

impl Transport for UnixStream {
    type Read = unix::OwnedReadHalf;
    type Write = unix::OwnedWriteHalf;

    fn halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }

    fn whole(read: Self::Read, write: Self::Write) -> Option<Self> {
        read.reunite(write).ok()
    }
}

/// A TLS stream is split with a lock; it is never turned into anything else.
impl<S: Transport> Transport for tokio_rustls::server::TlsStream<Replay<S>> {
    type Read = ReadHalf<Self>;
    type Write = WriteHalf<Self>;

    fn halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }

    fn whole(read: Self::Read, write: Self::Write) -> Option<Self> {
        read.is_pair_of(&write).then(|| read.unsplit(write))
    }
}

#[cfg(test)]
impl Transport for tokio::io::DuplexStream {
    type Read = ReadHalf<Self>;
    type Write = WriteHalf<Self>;

    fn halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }

    fn whole(read: Self::Read, write: Self::Write) -> Option<Self> {
        read.is_pair_of(&write).then(|| read.unsplit(write))
    }
}

/// A stream whose first reads return bytes already taken from it.
#[derive(Debug)]
pub(crate) struct Replay<S> {
    read: BytesMut,
    inner: S,
}

impl<S> Replay<S> {
    /// `inner`, read from `read` first.
    pub(crate) fn new(read: BytesMut, inner: S) -> Replay<S> {
        Replay { read, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.has_remaining() {
            let n = this.read.len().min(buf.remaining());
            buf.put_slice(&this.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn replayed_bytes_come_first_then_the_stream() {
        let (mut ours, theirs) = tokio::io::duplex(64);
        let mut replay = Replay::new(BytesMut::from(&b"\x16\x03"[..]), theirs);
        ours.write_all(b"\x01rest").await.unwrap();
        let mut got = [0u8; 7];
        replay.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"\x16\x03\x01rest");
        replay.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        ours.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }

    #[tokio::test]
    async fn halves_of_one_stream_are_put_back_together() {
        let (a, _) = tokio::io::duplex(8);
        let (b, _) = tokio::io::duplex(8);
        let (ra, wa) = a.halves();
        let (rb, wb) = b.halves();
        assert!(tokio::io::DuplexStream::whole(ra, wb).is_none());
        assert!(tokio::io::DuplexStream::whole(rb, wa).is_none());
        let (c, _) = tokio::io::duplex(8);
        let (rc, wc) = c.halves();
        assert!(tokio::io::DuplexStream::whole(rc, wc).is_some());
    }
}
