//! XLogData messages whose WAL the kernel sends from the page cache (`sendfile`), for senders
//! on plain TCP.
//!
//! Each message is its header, sent with `MSG_MORE` so that it waits for its WAL and leaves in
//! the same segment, then the stretch of the segment file, passed to `sendfile`. The WAL is
//! never read into a buffer nor copied through user space; the socket's pages refer to the
//! page cache's. That is safe because stored WAL below the durable end is never written
//! again, and a removed file's pages live on as long as a socket refers to them.

use std::io;

use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::service::conn::ConnError;
use crate::storage::FileSpan;
use crate::types::{Lsn, PgTimestamp};
use crate::wire::replication::XLogData;

/// Sends `spans`, consecutive WAL from `from`, one XLogData each, whose `walEnd` is `limit`;
/// returns where the WAL sent ends. Waits for the socket's room as a write does.
///
/// # Errors
/// A socket error, or a file that ends before the stretch it should hold.
pub(super) async fn send_spans(
    tcp: &TcpStream,
    spans: Vec<FileSpan>,
    from: Lsn,
    limit: Lsn,
    wall: PgTimestamp,
) -> Result<Lsn, ConnError> {
    let mut end = from;
    for span in spans {
        let header = XLogData::frame_header(end, limit, wall, span.len())?;
        send_more(tcp, &header).await?;
        send_span(tcp, &span).await?;
        end = Lsn(end.0 + span.len() as u64);
    }
    Ok(end)
}

/// Writes all of `buf` with `MSG_MORE`: the kernel holds it for what follows.
async fn send_more(tcp: &TcpStream, mut buf: &[u8]) -> io::Result<()> {
    let socket = socket2::SockRef::from(tcp);
    while !buf.is_empty() {
        let n = when_writable(tcp, || socket.send_with_flags(buf, libc::MSG_MORE)).await?;
        buf = buf.get(n..).unwrap_or_default();
    }
    Ok(())
}

/// Passes all of `span` to `sendfile`.
async fn send_span(tcp: &TcpStream, span: &FileSpan) -> io::Result<()> {
    let mut offset = span.offset();
    let end = offset + span.len() as u64;
    while offset < end {
        let count = usize::try_from(end - offset).unwrap_or(usize::MAX);
        let sent = when_writable(tcp, || {
            rustix::fs::sendfile(tcp, span.file(), Some(&mut offset), count)
                .map_err(io::Error::from)
        })
        .await?;
        if sent == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the segment file ends at {offset}, before the WAL it should hold"),
            ));
        }
    }
    Ok(())
}

/// Runs `op` once the socket has room, again each time it finds none.
async fn when_writable<R>(tcp: &TcpStream, mut op: impl FnMut() -> io::Result<R>) -> io::Result<R> {
    loop {
        tcp.writable().await?;
        match tcp.try_io(Interest::WRITABLE, &mut op) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;
    use std::time::Duration;

    use bytes::Bytes;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::storage::SegmentReader;
    use crate::types::{TimelineId, WalSegmentSize};

    const SEG: u64 = 16 << 20;

    #[tokio::test]
    async fn each_stretch_goes_as_one_xlogdata_however_little_room_the_socket_has() {
        let t = tempfile::TempDir::new().unwrap();
        let wal: Vec<u8> = (0..3 << 20)
            .map(|i: u32| (i.wrapping_mul(7) >> 5) as u8)
            .collect();
        let file = t.path().join("000000010000000000000001.partial");
        std::fs::File::create(&file)
            .unwrap()
            .write_all_at(&wal, 0)
            .unwrap();
        let size = WalSegmentSize::new(SEG as u32).unwrap();
        let reader = SegmentReader::new(t.path().to_path_buf(), size);
        let tli = TimelineId::new(1).unwrap();
        reader.read_at(tli, Lsn(SEG), &mut [0; 1]).unwrap();
        let from = Lsn(SEG + 100);
        let mut span = reader.cached_span(tli, from, wal.len() - 100).unwrap();
        let spans = vec![span.split_to(1), span.split_to(200_000), span];

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // Small buffers, so that the socket fills long before the stretches are sent.
        socket2::SockRef::from(&server)
            .set_send_buffer_size(16 << 10)
            .unwrap();
        socket2::SockRef::from(&client)
            .set_recv_buffer_size(16 << 10)
            .unwrap();
        let limit = Lsn(SEG + 5_000_000);
        let wall = PgTimestamp(42);
        let sender = tokio::spawn(async move {
            let end = send_spans(&server, spans, from, limit, wall).await;
            (end.unwrap(), server)
        });
        // The receiver reads nothing for a while: the socket fills and the sender waits.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!sender.is_finished());
        let mut client = client;
        let mut got = Vec::new();
        let mut at = from;
        for want in [1, 200_000, wal.len() - 200_101] {
            let mut head = [0u8; 5];
            client.read_exact(&mut head).await.unwrap();
            assert_eq!(head[0], b'd');
            let len = u32::from_be_bytes(head[1..].try_into().unwrap()) as usize;
            let mut payload = vec![0; len - 4];
            client.read_exact(&mut payload).await.unwrap();
            let x = XLogData::parse(Bytes::from(payload)).unwrap();
            assert_eq!((x.start, x.end, x.send_time), (at, limit, wall));
            assert_eq!(x.data.len(), want);
            at = Lsn(at.0 + want as u64);
            got.extend_from_slice(&x.data);
        }
        let (end, _server) = sender.await.unwrap();
        assert_eq!(end, at);
        assert_eq!(got, wal[100..]);
    }
}
