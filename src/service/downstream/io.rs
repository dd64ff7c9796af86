//! Framed reading and buffered writing on a downstream connection, split in two halves so that
//! a sender can keep writing WAL while another task reads the client's replies.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::service::conn::ConnError;
use crate::wire::frame::{split_frame, split_startup_packet};
use crate::wire::{Frame, StartupPacket};

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;

/// The reading half: whole messages split off a buffer, each length capped before anything is
/// reserved for it.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps the reading half of a connection.
    pub fn new(io: R) -> FrameReader<R> {
        FrameReader {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
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
        self.buf.reserve(READ_CHUNK);
        if self.io.read_buf(&mut self.buf).await? == 0 {
            return Err(ConnError::Closed);
        }
        Ok(())
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

    /// Sends what is buffered, then `payload` as is (WAL, without copying it).
    ///
    /// # Errors
    /// A socket error.
    pub async fn flush_with(&mut self, payload: &[u8]) -> Result<(), ConnError> {
        // One vectored write for header and WAL where the socket allows it.
        let mut both = Buf::chain(&self.out[..], payload);
        self.io.write_all_buf(&mut both).await?;
        self.out.clear();
        self.io.flush().await?;
        Ok(())
    }

    /// Sends what is buffered.
    ///
    /// # Errors
    /// A socket error.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        self.flush_with(&[]).await
    }

    /// Sends what is buffered and closes the sending side.
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
    }
}
