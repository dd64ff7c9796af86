//! A TCP fault proxy for tests: it sits between a client and an upstream server (a relay and
//! its primary, a standby and the relay) and injects network faults on command.
//!
//! The faults are the ones toxiproxy and the PostgreSQL TAP tests' proxies produce, and the ones
//! a walreceiver or walsender must survive: bytes re-sliced into tiny writes (frame reassembly,
//! `slicer`), a blackhole that forwards nothing while both sockets stay open (receive
//! timeouts, `wal_receiver_timeout`), connection resets (`SO_LINGER` 0, so the peer gets an RST),
//! and refused reconnects.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How bytes flow through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// Both directions forwarded as they arrive.
    Pass,
    /// Upstream-to-client bytes re-sliced into writes of 1..=`max` bytes, each flushed on its
    /// own (the sockets use `TCP_NODELAY`). Client-to-upstream bytes pass unchanged.
    Slice {
        /// The largest write.
        max: usize,
    },
    /// Nothing forwarded either way; sockets stay open and unread, so the senders' buffers
    /// fill up as behind a blackholed route.
    Stall,
}

/// What every connection watches: the mode and a reset generation.
#[derive(Clone, Copy, Debug)]
struct Control {
    mode: FaultMode,
    resets: u64,
}

#[derive(Debug)]
struct Shared {
    control: watch::Sender<Control>,
    refuse_new: AtomicBool,
    accepted: AtomicU64,
    refused: AtomicU64,
}

/// A handle that changes a running [`FaultProxy`]'s behaviour; clones share the proxy.
#[derive(Clone, Debug)]
pub struct FaultControl {
    shared: Arc<Shared>,
}

impl FaultControl {
    /// Switches every connection, current and future, to `mode`.
    pub fn set_mode(&self, mode: FaultMode) {
        self.shared.control.send_modify(|c| c.mode = mode);
    }

    /// The current mode.
    pub fn mode(&self) -> FaultMode {
        self.shared.control.borrow().mode
    }

    /// Closes every current connection, both sides, with an RST (`SO_LINGER` 0).
    pub fn reset_all(&self) {
        self.shared.control.send_modify(|c| c.resets += 1);
    }

    /// While `true`, new connections are accepted and reset at once, without reaching upstream.
    pub fn refuse_new(&self, refuse: bool) {
        self.shared.refuse_new.store(refuse, Ordering::SeqCst);
    }

    /// Connections accepted and forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections refused so far (see [`refuse_new`](FaultControl::refuse_new)).
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

/// A proxy listening on `127.0.0.1` that forwards to one upstream address. Dropping it closes
/// the listener and every connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    control: FaultControl,
    cancel: CancellationToken,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards each connection to `upstream`, in
    /// [`FaultMode::Pass`]. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// When the listening socket cannot be bound.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (control, _) = watch::channel(Control {
            mode: FaultMode::Pass,
            resets: 0,
        });
        let shared = Arc::new(Shared {
            control,
            refuse_new: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let cancel = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            upstream,
            Arc::clone(&shared),
            cancel.clone(),
        ));
        Ok(FaultProxy {
            addr,
            control: FaultControl { shared },
            cancel,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients connect to on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A handle to change the proxy's behaviour.
    pub fn control(&self) -> FaultControl {
        self.control.clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, _)) = accepted else {
            // Out of descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if shared.refuse_new.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.set_zero_linger();
            continue;
        }
        let seed = shared.accepted.fetch_add(1, Ordering::SeqCst);
        let control = shared.control.subscribe();
        tokio::spawn(connection(
            client,
            upstream,
            control,
            seed,
            cancel.child_token(),
        ));
    }
}

/// Forwards one connection until both sides close, an error, a reset or cancellation.
async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut control: watch::Receiver<Control>,
    seed: u64,
    cancel: CancellationToken,
) {
    let server = tokio::select! {
        () = cancel.cancelled() => return,
        server = TcpStream::connect(upstream) => server,
    };
    let Ok(server) = server else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let resets = control.borrow_and_update().resets;
    let (to_server, to_client) = (control.clone(), control.clone());
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let reset = tokio::select! {
        () = cancel.cancelled() => false,
        Ok(_) = control.wait_for(|c| c.resets != resets) => true,
        _ = async {
            tokio::try_join!(
                pump(&mut client_rx, &mut server_tx, to_server, None),
                pump(&mut server_rx, &mut client_tx, to_client, Some(SliceSizes::new(seed))),
            )
        } => false,
    };
    if reset {
        // Reunited, so that dropping sends no FIN (a dropped write half shuts down first).
        for stream in [client_rx.reunite(client_tx), server_rx.reunite(server_tx)]
            .into_iter()
            .flatten()
        {
            let _ = stream.set_zero_linger();
        }
    }
}

/// Copies `from` to `to` under the current mode until EOF, then shuts `to` down. With
/// `slicer`, [`FaultMode::Slice`] applies to this direction.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    mut control: watch::Receiver<Control>,
    mut slicer: Option<SliceSizes>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        flowing(&mut control).await?;
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        let mut rest = buf.get(..n).unwrap_or_default();
        while !rest.is_empty() {
            let take = match (flowing(&mut control).await?, slicer.as_mut()) {
                (FaultMode::Slice { max }, Some(sizes)) => sizes.next(max),
                _ => rest.len(),
            };
            let (head, tail) = rest.split_at_checked(take).unwrap_or((rest, &[]));
            to.write_all(head).await?;
            to.flush().await?;
            rest = tail;
        }
    }
}

/// Waits while the mode is [`FaultMode::Stall`] and returns the mode that lets bytes flow.
async fn flowing(control: &mut watch::Receiver<Control>) -> io::Result<FaultMode> {
    control
        .wait_for(|c| c.mode != FaultMode::Stall)
        .await
        .map(|c| c.mode)
        .map_err(|_| io::Error::other("fault proxy closed"))
}

/// Pseudo-random slice sizes (xorshift64), deterministic per connection.
#[derive(Debug)]
struct SliceSizes(u64);

impl SliceSizes {
    fn new(seed: u64) -> SliceSizes {
        SliceSizes(seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A size in `1..=max` (1 when `max` is 0).
    fn next(&mut self, max: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let max = u64::try_from(max.max(1)).unwrap_or(u64::MAX);
        usize::try_from(self.0 % max).map_or(1, |n| n + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::time::timeout;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut rx, mut tx) = socket.split();
                    let _ = tokio::io::copy(&mut rx, &mut tx).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, data: &[u8]) -> Vec<u8> {
        let (mut rx, mut tx) = stream.split();
        let mut got = vec![0u8; data.len()];
        let (written, read) = tokio::join!(tx.write_all(data), rx.read_exact(&mut got));
        written.unwrap();
        read.unwrap();
        got
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn passes_bytes_both_ways() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        let data = pattern(300_000);
        assert_eq!(round_trip(&mut client, &data).await, data);
        assert_eq!(proxy.control().accepted(), 1);
    }

    #[tokio::test]
    async fn sliced_bytes_arrive_intact() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        proxy.control().set_mode(FaultMode::Slice { max: 7 });
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        let data = pattern(100_000);
        assert_eq!(round_trip(&mut client, &data).await, data);
    }

    /// Records the size of every write.
    #[derive(Default)]
    struct Recorder {
        bytes: Vec<u8>,
        writes: Vec<usize>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.bytes.extend_from_slice(buf);
            self.writes.push(buf.len());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn slicer_writes_one_to_max_bytes() {
        let (tx, rx) = watch::channel(Control {
            mode: FaultMode::Slice { max: 7 },
            resets: 0,
        });
        let data = pattern(10_000);
        let mut out = Recorder::default();
        pump(&mut &data[..], &mut out, rx, Some(SliceSizes::new(3)))
            .await
            .unwrap();
        assert_eq!(out.bytes, data);
        assert!(out.writes.iter().all(|&n| (1..=7).contains(&n)));
        for size in 1..=7 {
            assert!(out.writes.contains(&size), "no write of {size} bytes");
        }
        drop(tx);
    }

    #[tokio::test]
    async fn stall_holds_bytes_until_pass() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut client, b"warm").await, b"warm");
        proxy.control().set_mode(FaultMode::Stall);
        client.write_all(b"held").await.unwrap();
        let mut got = [0u8; 4];
        let early = timeout(Duration::from_millis(300), client.read_exact(&mut got)).await;
        assert!(early.is_err(), "bytes passed a stalled proxy");
        proxy.control().set_mode(FaultMode::Pass);
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"held");
    }

    #[tokio::test]
    async fn reset_all_sends_rst() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut client, b"hello").await, b"hello");
        proxy.control().reset_all();
        let mut buf = [0u8; 8];
        let err = client.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut again, b"again").await, b"again");
        assert_eq!(proxy.control().accepted(), 2);
    }

    #[tokio::test]
    async fn refused_connections_never_reach_upstream() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        proxy.control().refuse_new(true);
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        let _ = client.write_all(b"x").await;
        let mut buf = [0u8; 1];
        assert!(!matches!(client.read(&mut buf).await, Ok(1)));
        assert_eq!(
            (proxy.control().refused(), proxy.control().accepted()),
            (1, 0)
        );
        proxy.control().refuse_new(false);
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut client, b"ok").await, b"ok");
    }

    #[tokio::test]
    async fn drop_closes_connections() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut client, b"hi").await, b"hi");
        drop(proxy);
        let mut buf = [0u8; 1];
        let read = timeout(Duration::from_secs(5), client.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))));
    }
}
