//! A small PostgreSQL wire client over `std::net` for the downstream tests: it sends exact
//! byte sequences (first packets, queries, CopyData, replies) to the relay and reads its
//! answers as raw messages, with a deadline on every read, so a test can see precisely what
//! came back and when the relay closed the connection.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// The protocol 3.0 code of a StartupMessage.
pub const PROTOCOL_3: u32 = 196_608;
/// SSLRequest's code.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// CancelRequest's code.
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// How long the relay may take to answer or close (O8's 5 s).
pub const ANSWER: Duration = Duration::from_secs(5);

/// The most a single message from the relay may announce before the client gives up.
const MAX_MESSAGE: usize = 64 << 20;

/// One typed message from the server: tag and body (without tag and length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// A field of an ErrorResponse or NoticeResponse (`b'C'`, `b'M'`, `b'V'`, …).
    pub fn field(&self, code: u8) -> Option<String> {
        let mut rest = self.body.as_slice();
        while let Some((&c, tail)) = rest.split_first() {
            if c == 0 {
                return None;
            }
            let end = tail.iter().position(|&b| b == 0)?;
            if c == code {
                return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
            }
            rest = &tail[end + 1..];
        }
        None
    }

    /// The SQLSTATE of an ErrorResponse (empty when absent).
    pub fn sqlstate(&self) -> String {
        self.field(b'C').unwrap_or_default()
    }

    /// The primary message text of an ErrorResponse (empty when absent).
    pub fn message(&self) -> String {
        self.field(b'M').unwrap_or_default()
    }

    /// The non-localised severity (`V`), else `S`.
    pub fn severity(&self) -> String {
        self.field(b'V')
            .or_else(|| self.field(b'S'))
            .unwrap_or_default()
    }

    /// The payload of a CopyData message.
    pub fn copy_data(&self) -> Option<&[u8]> {
        (self.tag == b'd').then_some(self.body.as_slice())
    }

    /// `(walEnd, replyRequested)` of a primary keepalive (`'k'`, exactly 18 bytes).
    pub fn keepalive(&self) -> Option<(u64, bool)> {
        let p = self.copy_data()?;
        if p.len() != 18 || p[0] != b'k' {
            return None;
        }
        Some((be_u64(&p[1..9]), p[17] == 1))
    }

    /// `(dataStart, walEnd, WAL length)` of an XLogData (`'w'`).
    pub fn xlogdata(&self) -> Option<(u64, u64, usize)> {
        let p = self.copy_data()?;
        if p.len() < 25 || p[0] != b'w' {
            return None;
        }
        Some((be_u64(&p[1..9]), be_u64(&p[9..17]), p.len() - 25))
    }

    /// The text of a CommandComplete.
    pub fn command_tag(&self) -> Option<String> {
        (self.tag == b'C').then(|| cstr(&self.body))
    }

    /// The values of a DataRow (`None` for NULL).
    pub fn data_row(&self) -> Option<Vec<Option<String>>> {
        if self.tag != b'D' {
            return None;
        }
        let n = u16::from_be_bytes([self.body[0], self.body[1]]) as usize;
        let mut at = 2;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            let len = i32::from_be_bytes(self.body[at..at + 4].try_into().unwrap());
            at += 4;
            if len < 0 {
                values.push(None);
            } else {
                let end = at + len as usize;
                values.push(Some(
                    String::from_utf8_lossy(&self.body[at..end]).into_owned(),
                ));
                at = end;
            }
        }
        Some(values)
    }
}

/// What a read brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// A whole message.
    Msg(Msg),
    /// The server closed the connection (EOF or reset); bytes of an unfinished message are
    /// dropped.
    Closed,
    /// Nothing complete arrived before the deadline.
    TimedOut,
}

/// A connection to the relay's port.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    closed: bool,
}

impl RawClient {
    /// Connects to `127.0.0.1:port`.
    pub fn connect(port: u16) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the relay");
        stream.set_nodelay(true).unwrap();
        RawClient {
            stream,
            buf: Vec::new(),
            closed: false,
        }
    }

    /// Connects and logs in as `postgres` for physical replication, reading up to
    /// ReadyForQuery; panics on any error.
    pub fn login(port: u16, application_name: &str) -> RawClient {
        let mut c = RawClient::connect(port);
        c.send(&startup_packet(&[
            ("user", "postgres"),
            ("database", "replication"),
            ("replication", "true"),
            ("application_name", application_name),
        ]));
        let msgs = c.until_ready(Duration::from_secs(10));
        assert!(
            msgs.iter().any(|m| m.tag == b'R' && m.body == [0, 0, 0, 0]),
            "no AuthenticationOk: {msgs:?}"
        );
        c
    }

    /// Writes `bytes` in one `write` call; panics if the socket is broken.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the relay");
    }

    /// Closes the sending side.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads socket bytes into the buffer until `deadline`; false on EOF or reset.
    fn fill(&mut self, deadline: Instant) -> Option<bool> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Some(false),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(true)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) if e.kind() == ErrorKind::Interrupted => Some(true),
            Err(_) => Some(false),
        }
    }

    /// The next `n` raw bytes (for the one-byte answer to SSLRequest); fewer when the
    /// connection closes or the deadline passes first.
    pub fn read_bytes(&mut self, n: usize, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        while self.buf.len() < n && !self.closed {
            match self.fill(deadline) {
                Some(true) => {}
                Some(false) => self.closed = true,
                None => break,
            }
        }
        let take = n.min(self.buf.len());
        self.buf.drain(..take).collect()
    }

    /// The next typed message, within `timeout`.
    pub fn read_msg(&mut self, timeout: Duration) -> Got {
        let deadline = Instant::now() + timeout;
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                assert!(
                    (4..=MAX_MESSAGE).contains(&len),
                    "bad length {len} from the relay"
                );
                if self.buf.len() > len {
                    let body = self.buf[5..len + 1].to_vec();
                    let tag = self.buf[0];
                    self.buf.drain(..len + 1);
                    return Got::Msg(Msg { tag, body });
                }
            }
            if self.closed {
                return Got::Closed;
            }
            match self.fill(deadline) {
                Some(true) => {}
                Some(false) => self.closed = true,
                None => return Got::TimedOut,
            }
        }
    }

    /// The next message; panics on close or timeout.
    pub fn expect_msg(&mut self, timeout: Duration) -> Msg {
        match self.read_msg(timeout) {
            Got::Msg(m) => m,
            other => panic!("expected a message from the relay, got {other:?}"),
        }
    }

    /// Messages up to and including ReadyForQuery; panics on close or timeout.
    pub fn until_ready(&mut self, timeout: Duration) -> Vec<Msg> {
        let deadline = Instant::now() + timeout;
        let mut msgs = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_msg(left) {
                Got::Msg(m) => {
                    let done = m.tag == b'Z';
                    msgs.push(m);
                    if done {
                        return msgs;
                    }
                }
                other => panic!("{other:?} before ReadyForQuery; got so far: {msgs:?}"),
            }
        }
    }

    /// Messages until the server closes the connection, and how long that took; `None` when
    /// it is still open at `timeout`.
    pub fn until_closed(&mut self, timeout: Duration) -> Option<(Duration, Vec<Msg>)> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut msgs = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_msg(left) {
                Got::Msg(m) => msgs.push(m),
                Got::Closed => return Some((start.elapsed(), msgs)),
                Got::TimedOut => return None,
            }
        }
    }

    /// Every raw byte until the server closes, and how long that took; `None` when still
    /// open at `timeout`. For answers that are not well-formed v3 messages.
    pub fn raw_until_closed(&mut self, timeout: Duration) -> Option<(Duration, Vec<u8>)> {
        let start = Instant::now();
        let deadline = start + timeout;
        while !self.closed {
            match self.fill(deadline) {
                Some(true) => {}
                Some(false) => self.closed = true,
                None => return None,
            }
        }
        Some((start.elapsed(), std::mem::take(&mut self.buf)))
    }

    /// Sends a simple Query and returns the messages up to ReadyForQuery.
    pub fn query(&mut self, sql: &str) -> Vec<Msg> {
        self.send(&query_msg(sql));
        self.until_ready(Duration::from_secs(10))
    }

    /// `IDENTIFY_SYSTEM`: (systemid, timeline, xlogpos).
    pub fn identify_system(&mut self) -> (String, u32, u64) {
        let msgs = self.query("IDENTIFY_SYSTEM");
        let row = msgs
            .iter()
            .find_map(Msg::data_row)
            .unwrap_or_else(|| panic!("no row: {msgs:?}"));
        let tli = row[1].as_deref().unwrap().parse().unwrap();
        let pos = parse_lsn(row[2].as_deref().unwrap());
        (row[0].clone().unwrap(), tli, pos)
    }
}

/// The first ErrorResponse among `msgs`.
pub fn first_error(msgs: &[Msg]) -> Option<&Msg> {
    msgs.iter().find(|m| m.tag == b'E')
}

/// `X/Y` to a number.
pub fn parse_lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// A number as `X/Y`.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().unwrap())
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// A first packet: Int32 length (counting itself), then `body`.
pub fn first_packet(body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// A first packet that declares `len` bytes: below the 8-byte minimum, that many bytes (at
/// least the length field itself); otherwise the length, protocol 3.0 and 1000 bytes, far
/// fewer than a large `len` promises.
pub fn packet_of_length(len: u32) -> Vec<u8> {
    let mut bytes = len.to_be_bytes().to_vec();
    if len < 8 {
        bytes.resize(len.max(4) as usize, 0);
    } else {
        bytes.extend_from_slice(&PROTOCOL_3.to_be_bytes());
        bytes.extend_from_slice(&[b'x'; 1000]);
    }
    bytes
}

/// A StartupMessage with protocol `major.minor` and `params`, properly terminated.
pub fn startup_packet_version(major: u16, minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&major.to_be_bytes());
    body.extend_from_slice(&minor.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    first_packet(&body)
}

/// A protocol 3.0 StartupMessage.
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    startup_packet_version(3, 0, params)
}

/// The parameters of a normal physical replication login.
pub const REPLICATION_LOGIN: &[(&str, &str)] = &[
    ("user", "postgres"),
    ("database", "replication"),
    ("replication", "true"),
    ("application_name", "raw"),
];

/// SSLRequest.
pub fn ssl_request() -> Vec<u8> {
    first_packet(&SSL_REQUEST_CODE.to_be_bytes())
}

/// CancelRequest for `pid` and `key`.
pub fn cancel_request(pid: u32, key: u32) -> Vec<u8> {
    let mut body = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
    body.extend_from_slice(&pid.to_be_bytes());
    body.extend_from_slice(&key.to_be_bytes());
    first_packet(&body)
}

/// A typed message: tag, Int32 length (counting itself), body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A simple Query.
pub fn query_msg(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

/// CopyData carrying `payload`.
pub fn copy_data(payload: &[u8]) -> Vec<u8> {
    message(b'd', payload)
}

/// CopyDone.
pub fn copy_done() -> Vec<u8> {
    message(b'c', &[])
}

/// Terminate.
pub fn terminate() -> Vec<u8> {
    message(b'X', &[])
}

/// The 34-byte payload of a standby status update (`'r'`).
pub fn status_update(write: u64, flush: u64, apply: u64, reply_requested: bool) -> Vec<u8> {
    let mut p = vec![b'r'];
    p.extend_from_slice(&write.to_be_bytes());
    p.extend_from_slice(&flush.to_be_bytes());
    p.extend_from_slice(&apply.to_be_bytes());
    p.extend_from_slice(&0i64.to_be_bytes());
    p.push(u8::from(reply_requested));
    p
}

/// Steps of a session built on the reads above.
impl RawClient {
    /// Logs in and sends `START_REPLICATION` at the relay's position; returns once
    /// CopyBothResponse arrived.
    pub fn streaming(port: u16, application_name: &str) -> RawClient {
        let mut c = RawClient::login(port, application_name);
        let (_, tli, pos) = c.identify_system();
        c.send(&query_msg(&format!(
            "START_REPLICATION {} TIMELINE {tli}",
            lsn_text(pos)
        )));
        let w = c.expect_msg(ANSWER);
        assert_eq!(w.tag, b'W', "{w:?}");
        c
    }

    /// The answer to a StartupMessage: every message until ReadyForQuery or the close.
    pub fn startup_answer(&mut self) -> Vec<Msg> {
        let mut msgs = Vec::new();
        loop {
            match self.read_msg(ANSWER) {
                Got::Msg(m) => {
                    let done = m.tag == b'Z';
                    msgs.push(m);
                    if done {
                        return msgs;
                    }
                }
                Got::Closed => return msgs,
                Got::TimedOut => panic!("no answer to the startup packet: {msgs:?}"),
            }
        }
    }

    /// The relay closes the connection within [`ANSWER`]; returns the ErrorResponse it sent
    /// first, if any.
    pub fn error_then_close(&mut self) -> Option<Msg> {
        let (_, msgs) = self
            .until_closed(ANSWER)
            .unwrap_or_else(|| panic!("still open after {ANSWER:?}"));
        first_error(&msgs).cloned()
    }

    /// Reads the stream of a client that never replies until the relay closes it: when the
    /// first keepalive asking for a reply came and when the connection closed (both counted
    /// from this call), and how many WAL bytes arrived. Panics on an ErrorResponse or when
    /// still open after `limit`.
    pub fn read_without_replying(&mut self, limit: Duration) -> (Option<Duration>, Duration, u64) {
        let t0 = Instant::now();
        let (mut ping, mut wal) = (None, 0u64);
        loop {
            match self.read_msg(limit.saturating_sub(t0.elapsed())) {
                Got::Msg(m) => {
                    if m.keepalive().is_some_and(|(_, reply)| reply) && ping.is_none() {
                        ping = Some(t0.elapsed());
                    }
                    if let Some((_, _, n)) = m.xlogdata() {
                        wal += n as u64;
                    }
                    assert_ne!(m.tag, b'E', "error while streaming: {}", m.message());
                }
                Got::Closed => return (ping, t0.elapsed(), wal),
                Got::TimedOut => panic!("the relay did not close a silent client within {limit:?}"),
            }
        }
    }
}

/// Sends `bytes` as a new connection's first write and returns every byte the relay sent
/// before it closed the connection (empty for a silent close); panics when still open after
/// [`ANSWER`].
pub fn bytes_before_close(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut c = RawClient::connect(port);
    c.send(bytes);
    let (_, got) = c
        .raw_until_closed(ANSWER)
        .unwrap_or_else(|| panic!("still open after {ANSWER:?}"));
    got
}

/// Sends `bytes` as a new connection's first write and returns the relay's messages until
/// it closed the connection; panics when still open after [`ANSWER`].
pub fn messages_before_close(port: u16, bytes: &[u8]) -> Vec<Msg> {
    let mut c = RawClient::connect(port);
    c.send(bytes);
    let (_, msgs) = c
        .until_closed(ANSWER)
        .unwrap_or_else(|| panic!("still open after {ANSWER:?}"));
    msgs
}

/// The single FATAL ErrorResponse of a refused login as (SQLSTATE, message); panics when
/// anything else came.
pub fn only_fatal(msgs: &[Msg]) -> (String, String) {
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let e = &msgs[0];
    assert_eq!((e.tag, e.severity().as_str()), (b'E', "FATAL"), "{e:?}");
    (e.sqlstate(), e.message())
}

/// The end of a stream the client ended with CopyDone (PROTOCOL.md §3.5): CopyDone,
/// `START_STREAMING`, `START_REPLICATION`, ReadyForQuery, after any CopyData still queued.
pub fn assert_copy_done_ending(msgs: &[Msg]) {
    let tail: Vec<_> = msgs
        .iter()
        .filter(|m| m.tag != b'd')
        .map(|m| (char::from(m.tag), m.command_tag()))
        .collect();
    let want = [
        ('c', None),
        ('C', Some("START_STREAMING".to_owned())),
        ('C', Some("START_REPLICATION".to_owned())),
        ('Z', None),
    ];
    assert_eq!(tail, want, "{msgs:?}");
}

/// A thread that sends a standby status update on a clone of a connection's socket every
/// interval, until the socket breaks or it is dropped: a client that keeps talking but never
/// reads.
pub struct Replier {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Replier {
    pub fn start(c: &RawClient, every: Duration) -> Replier {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let mut socket = c.stream.try_clone().unwrap();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut sent = 0;
            let reply = copy_data(&status_update(0, 0, 0, false));
            while !flag.load(Ordering::SeqCst) && socket.write_all(&reply).is_ok() {
                sent += 1;
                std::thread::sleep(every);
            }
            sent
        });
        Replier {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the thread; returns how many replies it sent.
    pub fn stop(mut self) -> u64 {
        self.halt()
    }

    fn halt(&mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread
            .take()
            .map_or(0, |t| t.join().unwrap_or_default())
    }
}

impl Drop for Replier {
    fn drop(&mut self) {
        self.halt();
    }
}
