//! A scriptable fake walsender for ACCEPTANCE.md §2.6: an upstream that answers the relay's
//! login and replication commands the way a test tells it to, including in ways no real
//! PostgreSQL server would (a hostile or buggy primary).
//!
//! Each accepted connection runs the [`Script`] current at that moment: the answer to an
//! SSLRequest, the authentication exchange, the messages up to ReadyForQuery, the answers to
//! `IDENTIFY_SYSTEM`, `SHOW wal_segment_size` and `TIMELINE_HISTORY`, and what follows
//! `START_REPLICATION` (real WAL in XLogData chunks, with an optional [`Fault`] at one LSN, or
//! raw bytes). Everything the relay sends is recorded per connection in a [`Session`]. After a
//! scripted answer that ends the exchange the fake keeps the socket open and listens, so any
//! timeout is the relay's own.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use walrelay::types::{Lsn, PgTimestamp, SqlState};
use walrelay::wire::backend::{CopyResponse, INT4_OID, TEXT_OID};
use walrelay::wire::{
    Authentication, BackendMessage, ClientCopyData, ErrorFields, FieldDescription, Frame,
    FrontendMessage, SaslInitialResponse, StandbyStatusUpdate, StartupPacket, TransactionStatus,
    XLogData, split_frame, split_startup_packet,
};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The size of the XLogData chunks a walsender sends (`MAX_SEND_SIZE`).
pub const CHUNK: usize = 128 * 1024;

/// Real WAL bytes that begin at `start`.
#[derive(Clone, Debug)]
pub struct Wal {
    /// The LSN of the first byte.
    pub start: Lsn,
    /// The bytes.
    pub bytes: Bytes,
}

impl Wal {
    /// The LSN after the last byte.
    pub fn end(&self) -> Lsn {
        Lsn(self.start.0 + self.bytes.len() as u64)
    }

    /// `len` bytes from `at`, cut short at the end.
    pub fn slice(&self, at: Lsn, len: usize) -> Bytes {
        let from = (at.0 - self.start.0) as usize;
        self.bytes.slice(from..(from + len).min(self.bytes.len()))
    }

    /// The bytes in `[from, to)`.
    pub fn range(&self, from: Lsn, to: Lsn) -> Bytes {
        self.slice(from, (to.0 - from.0) as usize)
    }
}

/// What is sent in place of the chunk that starts at the fault's LSN.
#[derive(Clone, Debug)]
pub enum Fault {
    /// XLogData starting this many bytes past the expected position (a gap).
    Skip(u64),
    /// XLogData starting this many bytes before the expected position (an overlap).
    Rewind(u64),
    /// XLogData at the expected position carrying these bytes instead of the WAL.
    Data(Bytes),
}

/// What follows CopyBothResponse.
#[derive(Clone, Debug)]
pub enum Stream {
    /// `wal` from the requested position in XLogData of `chunk` bytes; at `fault`'s LSN,
    /// once the relay has reported everything before it as written, the fault is sent instead
    /// and the stream goes silent.
    Wal {
        wal: Wal,
        chunk: usize,
        fault: Option<(Lsn, Fault)>,
    },
    /// These bytes, then silence.
    Raw(Bytes),
}

/// The answer to `START_REPLICATION`.
#[derive(Clone, Debug)]
pub enum Start {
    /// CopyBothResponse and the stream.
    CopyBoth(Stream),
    /// These bytes instead (CopyOutResponse, an error, ...), then silence.
    Raw(Bytes),
}

/// The authentication exchange after the StartupMessage.
#[derive(Clone, Debug)]
pub enum Auth {
    /// AuthenticationOk at once (trust).
    Trust,
    /// AuthenticationSASL offering SCRAM-SHA-256, then this server-first-message with
    /// `{nonce}` replaced by the client's nonce; `then` answers the client-final-message;
    /// then silence.
    Scram { server_first: String, then: Bytes },
    /// These bytes, then silence.
    Raw(Bytes),
}

/// How the fake answers one connection. Every field is public so a test changes what it needs.
#[derive(Clone, Debug)]
pub struct Script {
    /// Sent in reply to an SSLRequest. Unless it is exactly `N`, the connection then only
    /// records raw bytes (a TLS ClientHello, say) until the client leaves.
    pub ssl_answer: Bytes,
    /// The authentication exchange.
    pub auth: Auth,
    /// Sent after AuthenticationOk: ParameterStatus, BackendKeyData, ReadyForQuery.
    pub ready: Bytes,
    /// The answer to `IDENTIFY_SYSTEM`.
    pub identify: Bytes,
    /// The answer to `SHOW wal_segment_size`.
    pub show_segment_size: Bytes,
    /// The answer to `TIMELINE_HISTORY n`, for any n.
    pub timeline_history: Bytes,
    /// The answer to `START_REPLICATION`.
    pub start: Start,
}

impl Script {
    /// A well-behaved PostgreSQL 15 primary of system `system_id` with 1 MiB segments, timeline
    /// 1 and its flush position inside `wal`'s first segment, serving `wal`.
    pub fn serving(system_id: u64, wal: Wal) -> Script {
        let xlogpos = Lsn(wal.start.0 + 0x8000).to_string();
        Script {
            ssl_answer: Bytes::from_static(b"N"),
            auth: Auth::Trust,
            ready: ready("15.18"),
            identify: identify(&system_id.to_string(), "1", &xlogpos),
            show_segment_size: show("1MB"),
            timeline_history: error("58P01", "could not open file"),
            start: Start::CopyBoth(Stream::Wal {
                wal,
                chunk: CHUNK,
                fault: None,
            }),
        }
    }
}

/// What the relay sent on one connection.
#[derive(Clone, Debug, Default)]
pub struct Session {
    /// It began with an SSLRequest.
    pub ssl_requested: bool,
    /// Raw bytes received after an SSL answer other than `N`.
    pub after_ssl: Vec<u8>,
    /// The StartupMessage parameters.
    pub startup: Vec<(String, String)>,
    /// Bodies of `p` messages (passwords and SASL responses).
    pub passwords: Vec<Bytes>,
    /// Every Query, in order.
    pub queries: Vec<String>,
    /// Standby status updates received while streaming.
    pub statuses: Vec<StandbyStatusUpdate>,
    /// The client closed the connection (or sent Terminate).
    pub closed: bool,
}

impl Session {
    /// The LSN the relay asked for in `START_REPLICATION`.
    pub fn start_lsn(&self) -> Option<Lsn> {
        self.queries.iter().find_map(|q| start_lsn(q))
    }

    /// Whether a query starting with `prefix` was received.
    pub fn asked(&self, prefix: &str) -> bool {
        self.queries.iter().any(|q| q.starts_with(prefix))
    }

    /// The highest write position reported.
    pub fn max_write(&self) -> Lsn {
        self.statuses
            .iter()
            .map(|s| s.write)
            .max()
            .unwrap_or(Lsn(0))
    }

    /// The highest flush position reported.
    pub fn max_flush(&self) -> Lsn {
        self.statuses
            .iter()
            .map(|s| s.flush)
            .max()
            .unwrap_or(Lsn(0))
    }
}

/// The LSN after `PHYSICAL` in a `START_REPLICATION` command.
fn start_lsn(query: &str) -> Option<Lsn> {
    let mut words = query.strip_prefix("START_REPLICATION")?.split_whitespace();
    words.find(|w| *w == "PHYSICAL")?;
    words.next()?.parse().ok()
}

struct Shared {
    script: Mutex<Script>,
    sessions: Mutex<Vec<Session>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn record(&self, idx: usize, f: impl FnOnce(&mut Session)) {
        f(&mut self.sessions.lock().unwrap()[idx]);
    }
}

/// A running fake upstream on 127.0.0.1.
pub struct FakeUpstream {
    rt: Option<Runtime>,
    port: u16,
    shared: Arc<Shared>,
}

impl FakeUpstream {
    /// Listens on a free loopback port and answers every connection with `script`.
    pub fn start(script: Script) -> FakeUpstream {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            sessions: Mutex::new(Vec::new()),
            tasks: Mutex::new(Vec::new()),
        });
        rt.spawn(accept_loop(listener, Arc::clone(&shared)));
        FakeUpstream {
            rt: Some(rt),
            port,
            shared,
        }
    }

    /// A connection string for this server: `host`, `port`, `user=u`, then `extra`.
    pub fn conninfo(&self, extra: &str) -> String {
        format!("host=127.0.0.1 port={} user=u {extra}", self.port)
    }

    /// What each connection so far received.
    pub fn sessions(&self) -> Vec<Session> {
        self.shared.sessions.lock().unwrap().clone()
    }

    /// Uses `script` for new connections and drops the open ones, as a restart would.
    pub fn replace(&self, script: Script) {
        *self.shared.script.lock().unwrap() = script;
        for task in self.shared.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Waits until `cond` holds for the sessions; panics after `timeout` naming `what`.
    pub fn wait(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&[Session]) -> bool,
    ) -> Vec<Session> {
        let deadline = Instant::now() + timeout;
        loop {
            let sessions = self.sessions();
            if cond(&sessions) {
                return sessions;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; sessions: {sessions:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((sock, _)) = listener.accept().await {
        let idx = {
            let mut sessions = shared.sessions.lock().unwrap();
            sessions.push(Session::default());
            sessions.len() - 1
        };
        let script = shared.script.lock().unwrap().clone();
        let conn_shared = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            let _ = serve(&conn_shared, idx, sock, script).await;
            conn_shared.record(idx, |s| s.closed = true);
        });
        shared.tasks.lock().unwrap().push(task);
    }
}

/// The receiving half of a connection, framing what the client sends.
struct Inbox {
    rd: OwnedReadHalf,
    buf: BytesMut,
}

impl Inbox {
    /// Reads more bytes; `false` at end of stream.
    async fn fill(&mut self) -> Res<bool> {
        self.buf.reserve(64 * 1024);
        Ok(self.rd.read_buf(&mut self.buf).await? > 0)
    }

    async fn startup(&mut self) -> Res<Option<StartupPacket>> {
        loop {
            if let Some(p) = split_startup_packet(&mut self.buf, 10_000)? {
                return Ok(Some(p));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    async fn frame(&mut self) -> Res<Option<Frame>> {
        loop {
            if let Some(f) = split_frame(&mut self.buf, 1 << 20)? {
                return Ok(Some(f));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }
}

/// Both halves of a connection.
struct Peer {
    inbox: Inbox,
    wr: OwnedWriteHalf,
}

impl Peer {
    async fn send(&mut self, bytes: &[u8]) -> Res<()> {
        self.wr.write_all(bytes).await?;
        Ok(())
    }
}

async fn serve(shared: &Shared, idx: usize, sock: TcpStream, script: Script) -> Res<()> {
    sock.set_nodelay(true)?;
    let (rd, wr) = sock.into_split();
    let mut peer = Peer {
        inbox: Inbox {
            rd,
            buf: BytesMut::new(),
        },
        wr,
    };
    let mut packet = peer.inbox.startup().await?;
    if let Some(StartupPacket::SslRequest) = packet {
        shared.record(idx, |s| s.ssl_requested = true);
        peer.send(&script.ssl_answer).await?;
        if script.ssl_answer.as_ref() != b"N" {
            return record_raw(shared, idx, &mut peer.inbox).await;
        }
        packet = peer.inbox.startup().await?;
    }
    let Some(StartupPacket::Startup(msg)) = packet else {
        return Ok(());
    };
    shared.record(idx, |s| s.startup = msg.params.clone());
    match &script.auth {
        Auth::Trust => peer.send(&auth(Authentication::Ok)).await?,
        Auth::Scram { server_first, then } => {
            return scram(shared, idx, &mut peer, server_first, then).await;
        }
        Auth::Raw(bytes) => {
            peer.send(bytes).await?;
            return listen(shared, idx, &mut peer.inbox).await;
        }
    }
    peer.send(&script.ready).await?;
    commands(shared, idx, &mut peer, &script).await
}

/// Records raw bytes until the client leaves.
async fn record_raw(shared: &Shared, idx: usize, inbox: &mut Inbox) -> Res<()> {
    loop {
        let bytes = inbox.buf.split();
        shared.record(idx, |s| s.after_ssl.extend_from_slice(&bytes));
        if !inbox.fill().await? {
            return Ok(());
        }
    }
}

/// Records the client's messages until it leaves (or sends Terminate).
async fn listen(shared: &Shared, idx: usize, inbox: &mut Inbox) -> Res<()> {
    while let Some(frame) = inbox.frame().await? {
        if !note(shared, idx, FrontendMessage::parse(frame)?) {
            break;
        }
    }
    Ok(())
}

/// Records one client message; `false` for Terminate.
fn note(shared: &Shared, idx: usize, msg: FrontendMessage) -> bool {
    match msg {
        FrontendMessage::Query(q) => shared.record(idx, |s| s.queries.push(q)),
        FrontendMessage::Password(p) => shared.record(idx, |s| s.passwords.push(p)),
        FrontendMessage::CopyData(d) => {
            if let Ok(ClientCopyData::StatusUpdate(r)) = ClientCopyData::parse(d) {
                shared.record(idx, |s| s.statuses.push(r));
            }
        }
        FrontendMessage::Terminate => return false,
        _ => {}
    }
    true
}

async fn scram(
    shared: &Shared,
    idx: usize,
    peer: &mut Peer,
    server_first: &str,
    then: &[u8],
) -> Res<()> {
    let mechanisms = vec!["SCRAM-SHA-256".to_owned()];
    peer.send(&auth(Authentication::Sasl { mechanisms }))
        .await?;
    let Some(frame) = peer.inbox.frame().await? else {
        return Ok(());
    };
    shared.record(idx, |s| s.passwords.push(frame.body.clone()));
    let initial = SaslInitialResponse::parse(&frame.body)?;
    let client_first =
        String::from_utf8_lossy(initial.data.as_deref().unwrap_or_default()).into_owned();
    let nonce = client_first
        .split(',')
        .find_map(|a| a.strip_prefix("r="))
        .unwrap_or_default();
    let challenge = server_first.replace("{nonce}", nonce);
    peer.send(&auth(Authentication::SaslContinue(Bytes::from(challenge))))
        .await?;
    let Some(frame) = peer.inbox.frame().await? else {
        return Ok(());
    };
    shared.record(idx, |s| s.passwords.push(frame.body));
    peer.send(then).await?;
    listen(shared, idx, &mut peer.inbox).await
}

async fn commands(shared: &Shared, idx: usize, peer: &mut Peer, script: &Script) -> Res<()> {
    while let Some(frame) = peer.inbox.frame().await? {
        let msg = FrontendMessage::parse(frame)?;
        let FrontendMessage::Query(q) = &msg else {
            if note(shared, idx, msg) {
                continue;
            }
            return Ok(());
        };
        let q = q.clone();
        note(shared, idx, msg);
        let answer = if q.starts_with("IDENTIFY_SYSTEM") {
            script.identify.clone()
        } else if q.starts_with("SHOW wal_segment_size") {
            script.show_segment_size.clone()
        } else if q.starts_with("TIMELINE_HISTORY") {
            script.timeline_history.clone()
        } else if q.starts_with("READ_REPLICATION_SLOT") {
            result(
                &["slot_type", "restart_lsn", "restart_tli"],
                &[vec![Some("physical"), Some("0/700000"), Some("1")]],
            )
        } else if q.starts_with("CREATE_REPLICATION_SLOT") {
            result(
                &[
                    "slot_name",
                    "consistent_point",
                    "snapshot_name",
                    "output_plugin",
                ],
                &[vec![Some("walrelay"), Some("0/700000"), None, None]],
            )
        } else if q.starts_with("START_REPLICATION") {
            return start_replication(shared, idx, peer, &script.start, &q).await;
        } else {
            error("42601", "syntax error")
        };
        peer.send(&answer).await?;
    }
    Ok(())
}

async fn start_replication(
    shared: &Shared,
    idx: usize,
    peer: &mut Peer,
    start: &Start,
    q: &str,
) -> Res<()> {
    let stream = match start {
        Start::Raw(bytes) => {
            peer.send(bytes).await?;
            return listen(shared, idx, &mut peer.inbox).await;
        }
        Start::CopyBoth(stream) => stream,
    };
    let from = start_lsn(q).ok_or("no LSN in START_REPLICATION")?;
    if let Stream::Wal { wal, .. } = stream
        && (from < wal.start || from > wal.end())
    {
        let removed = error("58P01", "requested WAL segment has already been removed");
        peer.send(&removed).await?;
        return listen(shared, idx, &mut peer.inbox).await;
    }
    peer.send(&message(BackendMessage::CopyBothResponse(
        CopyResponse::default(),
    )))
    .await?;
    let wr = &mut peer.wr;
    let send = async move {
        match stream {
            Stream::Raw(bytes) => Ok(wr.write_all(bytes).await?),
            Stream::Wal { wal, chunk, fault } => {
                let fault = fault.as_ref();
                send_wal(shared, idx, wr, wal, *chunk, from, fault).await
            }
        }
    };
    let (sent, listened) = tokio::join!(send, listen(shared, idx, &mut peer.inbox));
    sent.and(listened)
}

/// Sends `wal` from `from` in chunks; at the fault, waits for the relay to report everything
/// before it as written, sends the fault and stops.
async fn send_wal(
    shared: &Shared,
    idx: usize,
    wr: &mut OwnedWriteHalf,
    wal: &Wal,
    chunk: usize,
    from: Lsn,
    fault: Option<&(Lsn, Fault)>,
) -> Res<()> {
    let mut pos = from;
    while pos < wal.end() {
        if let Some((at, fault)) = fault.filter(|(at, _)| *at == pos) {
            wait_written(shared, idx, *at).await;
            let bytes = match fault {
                Fault::Skip(n) => {
                    xlog_data(Lsn(at.0 + n), wal.end(), &wal.slice(Lsn(at.0 + n), chunk))
                }
                Fault::Rewind(n) => {
                    xlog_data(Lsn(at.0 - n), wal.end(), &wal.slice(Lsn(at.0 - n), chunk))
                }
                Fault::Data(data) => xlog_data(*at, wal.end(), data),
            };
            wr.write_all(&bytes).await?;
            return Ok(());
        }
        let mut len = chunk.min((wal.end().0 - pos.0) as usize);
        if let Some((at, _)) = fault.filter(|(at, _)| *at > pos) {
            len = len.min((at.0 - pos.0) as usize);
        }
        wr.write_all(&xlog_data(pos, wal.end(), &wal.slice(pos, len)))
            .await?;
        pos = Lsn(pos.0 + len as u64);
    }
    Ok(())
}

/// Waits (up to 5 s) until the relay has reported `lsn` as written.
async fn wait_written(shared: &Shared, idx: usize, lsn: Lsn) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if shared.sessions.lock().unwrap()[idx].max_write() >= lsn {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One encoded XLogData CopyData message.
pub fn xlog_data(start: Lsn, wal_end: Lsn, data: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    let x = XLogData {
        start,
        end: wal_end,
        send_time: PgTimestamp(0),
        data: Bytes::copy_from_slice(data),
    };
    x.write(&mut out).unwrap();
    out.freeze()
}

/// A CopyData message with this payload, as raw bytes.
pub fn copy_data(payload: &[u8]) -> Bytes {
    message(BackendMessage::CopyData(Bytes::copy_from_slice(payload)))
}

/// One encoded backend message.
pub fn message(m: BackendMessage) -> Bytes {
    let mut out = BytesMut::new();
    m.write(&mut out).unwrap();
    out.freeze()
}

/// An encoded authentication request.
pub fn auth(a: Authentication) -> Bytes {
    message(BackendMessage::Authentication(a))
}

/// ParameterStatus messages a PostgreSQL server sends, BackendKeyData and ReadyForQuery.
pub fn ready(server_version: &str) -> Bytes {
    let mut out = BytesMut::new();
    for (name, value) in [
        ("server_version", server_version),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("integer_datetimes", "on"),
    ] {
        out.put(message(BackendMessage::ParameterStatus {
            name: name.into(),
            value: value.into(),
        }));
    }
    out.put(message(BackendMessage::BackendKeyData {
        process_id: 4242,
        secret_key: 7,
    }));
    out.put(message(BackendMessage::ReadyForQuery(
        TransactionStatus::Idle,
    )));
    out.freeze()
}

/// A result set of text columns, then CommandComplete and ReadyForQuery.
pub fn result(columns: &[&str], rows: &[Vec<Option<&str>>]) -> Bytes {
    let rows: Vec<Vec<Option<Bytes>>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| v.map(|v| Bytes::copy_from_slice(v.as_bytes())))
                .collect()
        })
        .collect();
    result_bytes(columns, rows)
}

/// [`result`] with raw column values (which may hold NUL bytes).
pub fn result_bytes(columns: &[&str], rows: Vec<Vec<Option<Bytes>>>) -> Bytes {
    let fields = columns
        .iter()
        .map(|c| {
            let oid = if *c == "timeline" || *c == "restart_tli" {
                INT4_OID
            } else {
                TEXT_OID
            };
            FieldDescription::text(*c, oid, -1, -1)
        })
        .collect();
    let mut out = BytesMut::new();
    out.put(message(BackendMessage::RowDescription(fields)));
    for row in rows {
        out.put(message(BackendMessage::DataRow(row)));
    }
    out.put(message(BackendMessage::CommandComplete("SELECT".into())));
    out.put(message(BackendMessage::ReadyForQuery(
        TransactionStatus::Idle,
    )));
    out.freeze()
}

/// An `IDENTIFY_SYSTEM` answer with these texts.
pub fn identify(system_id: &str, timeline: &str, xlogpos: &str) -> Bytes {
    result(
        &["systemid", "timeline", "xlogpos", "dbname"],
        &[vec![Some(system_id), Some(timeline), Some(xlogpos), None]],
    )
}

/// A `SHOW` answer.
pub fn show(value: &str) -> Bytes {
    result(&["wal_segment_size"], &[vec![Some(value)]])
}

/// A `TIMELINE_HISTORY` answer.
pub fn history(file_name: &str, content: &[u8]) -> Bytes {
    let row = vec![
        Some(Bytes::copy_from_slice(file_name.as_bytes())),
        Some(Bytes::copy_from_slice(content)),
    ];
    result_bytes(&["filename", "content"], vec![row])
}

/// An ErrorResponse, then ReadyForQuery.
pub fn error(code: &str, text: &str) -> Bytes {
    let mut out = BytesMut::new();
    out.put(message(BackendMessage::ErrorResponse(ErrorFields::error(
        SqlState::from_code(code),
        text,
    ))));
    out.put(message(BackendMessage::ReadyForQuery(
        TransactionStatus::Idle,
    )));
    out.freeze()
}
