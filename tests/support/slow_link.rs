//! A loopback TCP proxy that shapes one direction to a byte rate, as `tc tbf` on a slow
//! link would: a standby behind it receives WAL slowly while its replies pass freely.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A loopback TCP proxy whose server-to-client direction is shaped to `rate` bytes per second
/// (0: unshaped), as `tc tbf` would shape a slow link. Client-to-server bytes pass freely.
pub struct SlowLink {
    /// The port clients connect to on 127.0.0.1.
    pub port: u16,
    rate: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl SlowLink {
    /// Listens on a free loopback port and forwards each connection to `server_port`,
    /// unshaped until [`SlowLink::set_rate`].
    pub fn start(server_port: u16) -> SlowLink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let link = SlowLink {
            port,
            rate: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        let (rate, stop, conns) = (link.rate.clone(), link.stop.clone(), link.conns.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)) else {
                    continue;
                };
                let mut held = conns.lock().unwrap();
                held.push(client.try_clone().unwrap());
                held.push(server.try_clone().unwrap());
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump(client, server, None));
                let rate = rate.clone();
                std::thread::spawn(move || pump(s2, c2, Some(rate)));
            }
        });
        link
    }

    /// Shapes server-to-client bytes to `bytes_per_sec` (0: unshaped), on every connection.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::SeqCst);
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for conn in self.conns.lock().unwrap().iter() {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` to `to` in reads of at most 8 KiB, sleeping after each so that the bytes
/// flow at `rate` when it is set and non-zero.
fn pump(mut from: TcpStream, mut to: TcpStream, rate: Option<Arc<AtomicU64>>) {
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        let r = rate.as_ref().map_or(0, |r| r.load(Ordering::SeqCst));
        if r > 0 {
            std::thread::sleep(Duration::from_secs_f64(n as f64 / r as f64));
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
