//! A loopback TCP proxy that behaves like a slow wide-area link, as `tc netem delay` plus a
//! rate limit would (netem is not available on every test kernel): each direction of each
//! connection delays every byte by a fixed latency and delivers at most a given byte rate.
//!
//! Per direction, a reader thread reads chunks from one socket and stamps them with the time
//! they were read; a writer thread sends them on in slices, each going out once the link is
//! free (at the rate, as netem's `rate` serializes) and arriving the delay after that, so
//! never earlier than its read time plus the delay. The queue between them is bounded in
//! bytes (a link's buffer), so a sender that outruns the rate is held back by TCP, as on a
//! real link.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most bytes read at once, and so the largest chunk queued.
const CHUNK: usize = 16 * 1024;

/// Bytes written per paced slice.
const SLICE: usize = 4 * 1024;

/// How the link behaves in each direction.
#[derive(Debug, Clone, Copy)]
pub struct LinkShape {
    /// One-way latency added to every byte.
    pub delay: Duration,
    /// Bytes per second delivered at most (0: unlimited).
    pub rate: u64,
    /// Bytes that may wait in the link per direction before the reader stops reading.
    pub buffer: usize,
}

/// What crossed the link, per direction, across all connections.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Bytes delivered client → server.
    pub to_server: AtomicU64,
    /// Bytes delivered server → client.
    pub to_client: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
}

/// The proxy: listens on a loopback port and forwards each connection to `server_port`
/// through a shaped link. Closing it (drop) shuts every connection down.
pub struct WanLink {
    /// The port clients connect to on 127.0.0.1.
    pub port: u16,
    /// What crossed it.
    pub counters: Arc<LinkCounters>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl WanLink {
    /// Listens on a free loopback port; each connection is forwarded to `server_port` with
    /// `shape` applied in both directions.
    pub fn start(server_port: u16, shape: LinkShape) -> WanLink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let link = WanLink {
            port: listener.local_addr().unwrap().port(),
            counters: Arc::new(LinkCounters::default()),
            stop: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        let (stop, conns, counters) =
            (link.stop.clone(), link.conns.clone(), link.counters.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)) else {
                    continue;
                };
                counters.accepted.fetch_add(1, Ordering::SeqCst);
                for s in [&client, &server] {
                    let _ = s.set_nodelay(true);
                    conns.lock().unwrap().push(s.try_clone().unwrap());
                }
                direction(&client, &server, shape, counters.clone(), true);
                direction(&server, &client, shape, counters.clone(), false);
            }
        });
        link
    }
}

impl Drop for WanLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for conn in self.conns.lock().unwrap().iter() {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

/// Starts the two threads of one direction, `from` → `to`.
fn direction(
    from: &TcpStream,
    to: &TcpStream,
    shape: LinkShape,
    counters: Arc<LinkCounters>,
    to_server: bool,
) {
    let slots = (shape.buffer / CHUNK).max(1);
    let (tx, rx) = sync_channel::<(Instant, Vec<u8>)>(slots);
    let (reader, writer) = (from.try_clone().unwrap(), to.try_clone().unwrap());
    std::thread::spawn(move || read_side(reader, tx));
    std::thread::spawn(move || write_side(writer, rx, shape, &counters, to_server));
}

/// Reads chunks and queues them with the time they were read, until EOF or an error.
fn read_side(mut from: TcpStream, tx: SyncSender<(Instant, Vec<u8>)>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
            break;
        }
    }
    // Dropping `tx` lets the writer deliver what is queued, then close its side.
}

/// Delivers each chunk at its read time plus the delay, paced to the rate.
fn write_side(
    mut to: TcpStream,
    rx: Receiver<(Instant, Vec<u8>)>,
    shape: LinkShape,
    counters: &LinkCounters,
    to_server: bool,
) {
    let delivered = if to_server {
        &counters.to_server
    } else {
        &counters.to_client
    };
    // When the link is next free: a slice of n bytes occupies it for n / rate from when it
    // starts to go out, and arrives the delay after it has gone out.
    let mut free_at = Instant::now();
    while let Ok((read_at, chunk)) = rx.recv() {
        for slice in chunk.chunks(SLICE) {
            let busy = if shape.rate == 0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(slice.len() as f64 / shape.rate as f64)
            };
            free_at = read_at.max(free_at) + busy;
            let due = free_at + shape.delay;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(slice).is_err() {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
            delivered.fetch_add(slice.len() as u64, Ordering::SeqCst);
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
