//! Lightweight protocol clients: minimal physical replication clients, many of them on a
//! tokio runtime of few threads (named [`CLIENT_THREAD`], so their CPU time can be read apart
//! from the rest of the benchmark's).
//!
//! Each client logs in over loopback with `replication=true` (trust, no password), optionally
//! creates a physical slot on its own connection (`CREATE_REPLICATION_SLOT name PHYSICAL
//! RESERVE_WAL`), runs `IDENTIFY_SYSTEM` and `START_REPLICATION [SLOT name] PHYSICAL <xlogpos>
//! TIMELINE <tli>` from the server's current position, then reads CopyData: an XLogData (`w`)
//! must start where the previous one ended and moves the received end; a keepalive (`k`) that
//! asks for a reply gets one at once. After each read from the socket that brought WAL it sends
//! a standby status update (`r`) with write = flush = apply = the received end, as a
//! walreceiver replies after each write and flush, and at least every 10 s otherwise. The WAL
//! itself is neither kept nor checked beyond its position: the client costs a read and a
//! header parse per message.
//!
//! Every client records the received end after each read with the instant the read returned,
//! so the moment it first held a given LSN is known to the resolution of its reads.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, anyhow, bail};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use walrelay::types::{Lsn, PgTimestamp};
use walrelay::wire::{
    Authentication, BackendMessage, Frame, FrontendMessage, PrimaryKeepalive, Reader,
    StandbyStatusUpdate, StartupMessage, StartupPacket, frame_len,
};

/// The name of the client runtime's threads.
pub const CLIENT_THREAD: &str = "bench-client";

/// The largest message accepted from a server.
const MAX_MESSAGE: usize = 16 << 20;

/// A status update is sent at least this often (`wal_receiver_status_interval`).
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// Where one client streams from.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    /// The server's loopback port.
    pub port: u16,
    /// `application_name`.
    pub name: String,
    /// The physical slot the client creates and streams on; `None` streams without one.
    pub slot: Option<String>,
}

/// A client's progress, shared with the benchmark's thread.
#[derive(Debug, Default)]
pub struct Progress {
    /// The end of the WAL received so far.
    pub received: AtomicU64,
    /// START_REPLICATION has been answered.
    pub streaming: AtomicBool,
    /// Why the client stopped, if it failed.
    pub error: Mutex<Option<String>>,
}

/// The received end after each read, with the instant the read returned.
pub type Arrivals = Vec<(Lsn, Instant)>;

/// Clients running on their own runtime.
pub struct Pool {
    runtime: Runtime,
    cancel: CancellationToken,
    clients: Vec<(Arc<Progress>, JoinHandle<Arrivals>)>,
}

impl Pool {
    /// A runtime of `threads` worker threads for the clients.
    pub fn new(threads: usize) -> Result<Pool> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .max_blocking_threads(1)
            .thread_name(CLIENT_THREAD)
            .enable_all()
            .build()?;
        Ok(Pool {
            runtime,
            cancel: CancellationToken::new(),
            clients: Vec::new(),
        })
    }

    /// Starts one client.
    pub fn spawn(&mut self, spec: ClientSpec) {
        let progress = Arc::new(Progress::default());
        let (shared, cancel) = (Arc::clone(&progress), self.cancel.clone());
        let task = self.runtime.spawn(async move {
            let mut arrivals = Vec::new();
            let outcome = tokio::select! {
                outcome = stream(&spec, &shared, &mut arrivals) => outcome,
                () = cancel.cancelled() => Ok(()),
            };
            if let Err(e) = outcome {
                let mut error = shared.error.lock().unwrap_or_else(|p| p.into_inner());
                *error = Some(format!("client {}: {e:#}", spec.name));
            }
            arrivals
        });
        self.clients.push((progress, task));
    }

    /// The first error of any client.
    pub fn error(&self) -> Option<String> {
        self.clients
            .iter()
            .find_map(|(p, _)| p.error.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Whether every client streams (fails if one has failed).
    pub fn all_streaming(&self) -> Result<bool> {
        if let Some(e) = self.error() {
            bail!("{e}");
        }
        Ok(self
            .clients
            .iter()
            .all(|(p, _)| p.streaming.load(Ordering::Relaxed)))
    }

    /// The lowest received end over the clients (fails if one has failed).
    pub fn min_received(&self) -> Result<Lsn> {
        if let Some(e) = self.error() {
            bail!("{e}");
        }
        let min = self
            .clients
            .iter()
            .map(|(p, _)| p.received.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        Ok(Lsn(min))
    }

    /// How many clients there are.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Stops every client and returns what each received, in the order they were started.
    pub fn finish(self) -> Result<Vec<Arrivals>> {
        self.cancel.cancel();
        let Pool {
            runtime, clients, ..
        } = self;
        let arrivals = runtime.block_on(async {
            let mut all = Vec::new();
            for (_, task) in clients {
                all.push(
                    task.await
                        .map_err(|e| anyhow!("a client task failed: {e}"))?,
                );
            }
            Ok::<_, anyhow::Error>(all)
        });
        runtime.shutdown_timeout(Duration::from_secs(1));
        arrivals
    }
}

/// The first instant at which `arrivals` reached `target`.
pub fn reached(arrivals: &Arrivals, target: Lsn) -> Option<Instant> {
    let i = arrivals.partition_point(|(lsn, _)| *lsn < target);
    arrivals.get(i).map(|(_, at)| *at)
}

/// One connection, from login to the end of the stream.
async fn stream(spec: &ClientSpec, progress: &Progress, arrivals: &mut Arrivals) -> Result<()> {
    let mut conn = Conn::connect(spec).await?;
    if let Some(slot) = &spec.slot {
        conn.query(&format!(
            "CREATE_REPLICATION_SLOT {slot} PHYSICAL RESERVE_WAL"
        ))
        .await?;
    }
    let row = conn.query("IDENTIFY_SYSTEM").await?;
    let column = |i: usize| -> Result<String> {
        row.get(i)
            .cloned()
            .flatten()
            .ok_or_else(|| anyhow!("IDENTIFY_SYSTEM without column {i}"))
    };
    let (timeline, start) = (column(1)?, column(2)?);
    let slot = spec
        .slot
        .as_ref()
        .map_or(String::new(), |s| format!("SLOT {s} "));
    conn.start(&format!(
        "START_REPLICATION {slot}PHYSICAL {start} TIMELINE {timeline}"
    ))
    .await?;
    let start: Lsn = start.parse().map_err(|_| anyhow!("bad xlogpos {start}"))?;
    progress.received.store(start.0, Ordering::Relaxed);
    progress.streaming.store(true, Ordering::Relaxed);
    conn.copy_both(start, progress, arrivals).await
}

/// A client connection and its receive buffer.
struct Conn {
    socket: TcpStream,
    buf: BytesMut,
    out: BytesMut,
}

impl Conn {
    /// Connects and logs in (trust only).
    async fn connect(spec: &ClientSpec) -> Result<Conn> {
        let socket = TcpStream::connect(("127.0.0.1", spec.port)).await?;
        socket.set_nodelay(true)?;
        let mut conn = Conn {
            socket,
            buf: BytesMut::with_capacity(256 * 1024),
            out: BytesMut::with_capacity(128),
        };
        StartupPacket::Startup(StartupMessage {
            minor_version: 0,
            params: vec![
                ("user".into(), "postgres".into()),
                ("replication".into(), "true".into()),
                ("application_name".into(), spec.name.clone()),
            ],
        })
        .write(&mut conn.out)?;
        conn.flush().await?;
        conn.until_ready().await?;
        Ok(conn)
    }

    /// Sends what is in `out`.
    async fn flush(&mut self) -> Result<()> {
        self.socket.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// The next whole message.
    async fn next(&mut self) -> Result<Frame> {
        loop {
            if let Some(frame) = walrelay::wire::split_frame(&mut self.buf, MAX_MESSAGE)? {
                return Ok(frame);
            }
            if self.socket.read_buf(&mut self.buf).await? == 0 {
                bail!("the server closed the connection");
            }
        }
    }

    /// Reads until ReadyForQuery and returns the first DataRow.
    async fn until_ready(&mut self) -> Result<Vec<Option<String>>> {
        let mut first = None;
        loop {
            match BackendMessage::parse(self.next().await?)? {
                BackendMessage::ReadyForQuery(_) => return Ok(first.unwrap_or_default()),
                BackendMessage::ErrorResponse(e) => {
                    bail!("{} {}: {}", e.severity, e.code, e.message)
                }
                BackendMessage::Authentication(Authentication::Ok) => {}
                BackendMessage::Authentication(other) => {
                    bail!("the server asks for authentication ({other:?}); use trust")
                }
                BackendMessage::DataRow(columns) if first.is_none() => {
                    first = Some(
                        columns
                            .into_iter()
                            .map(|c| c.map(|v| String::from_utf8_lossy(&v).into_owned()))
                            .collect(),
                    );
                }
                _ => {}
            }
        }
    }

    /// Runs a command and returns the first row of its result.
    async fn query(&mut self, sql: &str) -> Result<Vec<Option<String>>> {
        FrontendMessage::Query(sql.to_string()).write(&mut self.out)?;
        self.flush().await?;
        self.until_ready().await
    }

    /// Sends START_REPLICATION and waits for CopyBothResponse.
    async fn start(&mut self, sql: &str) -> Result<()> {
        FrontendMessage::Query(sql.to_string()).write(&mut self.out)?;
        self.flush().await?;
        loop {
            match BackendMessage::parse(self.next().await?)? {
                BackendMessage::CopyBothResponse(_) => return Ok(()),
                BackendMessage::ErrorResponse(e) => bail!("{sql}: {}: {}", e.code, e.message),
                _ => {}
            }
        }
    }

    /// Queues a status update acknowledging `received` as written, flushed and applied.
    fn status(&mut self, received: Lsn) {
        StandbyStatusUpdate {
            write: received,
            flush: received,
            apply: received,
            send_time: PgTimestamp::from_system_time(SystemTime::now()),
            reply_requested: false,
        }
        .write(&mut self.out);
    }

    /// The replication stream: reads, takes the messages apart, acknowledges.
    async fn copy_both(
        &mut self,
        mut received: Lsn,
        progress: &Progress,
        arrivals: &mut Arrivals,
    ) -> Result<()> {
        let mut acked = received;
        let mut last_status = Instant::now();
        loop {
            let wait = STATUS_INTERVAL.saturating_sub(last_status.elapsed());
            let read = tokio::time::timeout(wait, self.socket.read_buf(&mut self.buf)).await;
            let now = Instant::now();
            match read {
                Ok(Ok(0)) => bail!("the server closed the connection"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {} // the status interval passed
            }
            let mut reply = false;
            while let Some(len) = frame_len(&self.buf, MAX_MESSAGE)? {
                if self.buf.len() < len {
                    self.buf.reserve(len - self.buf.len());
                    break;
                }
                let body = self.buf.get(5..len).unwrap_or_default();
                match self.buf.first() {
                    Some(b'd') => reply |= on_copy_data(body, &mut received)?,
                    Some(b'E') => {
                        bail!("error from the server: {}", String::from_utf8_lossy(body))
                    }
                    Some(b'c') => bail!("the server ended the stream (CopyDone)"),
                    _ => {}
                }
                self.buf.advance(len);
            }
            if received != acked {
                progress.received.store(received.0, Ordering::Relaxed);
                arrivals.push((received, now));
            }
            if reply || received != acked || last_status.elapsed() >= STATUS_INTERVAL {
                self.status(received);
                self.flush().await?;
                acked = received;
                last_status = Instant::now();
            }
        }
    }
}

/// Handles one CopyData payload; returns whether the server asked for a reply.
fn on_copy_data(payload: &[u8], received: &mut Lsn) -> Result<bool> {
    match payload.first() {
        Some(b'w') => {
            let mut r = Reader::new(payload);
            r.u8()?;
            let start = Lsn(r.u64()?);
            r.u64()?; // walEnd
            r.i64()?; // sendTime
            if start != *received {
                bail!("XLogData starts at {start}, expected {received}");
            }
            *received = Lsn(start.0 + r.remaining() as u64);
            Ok(false)
        }
        Some(b'k') => Ok(PrimaryKeepalive::parse(payload)?.reply_requested),
        _ => Ok(false),
    }
}
