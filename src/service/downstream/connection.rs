//! The I/O of one downstream connection around its sans-IO session: read what the session
//! expects, feed it in, carry out its actions, send its output; while streaming, read WAL
//! from the hub and write it as XLogData.
//!
//! Two rules of the socket live here rather than in the session, because they are about
//! writes that do not complete: the authentication timeout covers the whole startup, and a
//! stream whose writes make no progress for the sender timeout is dropped, as silence is.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

mod backup;

use super::DOWNSTREAM_READ_CHUNK;
use super::context::{BackupPlace, SenderPlace, ServerContext, StreamStatus};
use super::file_send;
use super::transport::{Replay, Transport};
use crate::hub::Pieces;
use crate::metrics::Refusal;
use crate::metrics::lag::LagReader;
use crate::proto::downstream::streaming::SendRange;
use crate::proto::downstream::{
    Action, DownstreamSession, Expect, FoundSlot, Now, Peer, SenderClaim, StreamStart,
};
use crate::service::conn::{ConnError, FrameReader, FrameWriter};
use crate::service::tls::server::ServerTls;
use crate::slots::{Persistency, SlotError};
use crate::storage::StoreError;
use crate::types::{BackendPid, DurableEnd, Lsn, PgTimestamp, SqlState};
use crate::wire::replication::XLogData;
use crate::wire::{ErrorFields, WireError};

/// How much WAL a sender that is behind takes and writes at once: eight XLogData messages.
const BATCH_BYTES: u64 = 8 * crate::types::MAX_SEND_SIZE;

/// The time now, on both clocks.
pub(crate) fn now() -> Now {
    Now {
        at: Instant::now(),
        wall: PgTimestamp::from_system_time(SystemTime::now()),
    }
}

/// The ErrorResponse for a slot error, with PostgreSQL's SQLSTATE and hint.
fn slot_refusal(e: &SlotError) -> ErrorFields {
    let fields = ErrorFields::error(e.sqlstate(), e.to_string());
    match e.hint() {
        Some(h) => fields.with_hint(h),
        None => fields,
    }
}

/// The ErrorResponse for WAL that cannot be read.
fn wal_refusal(e: &StoreError) -> ErrorFields {
    match e {
        StoreError::SegmentRemoved { file } => ErrorFields::error(
            SqlState::UNDEFINED_FILE,
            format!("requested WAL segment {file} has already been removed"),
        ),
        other => ErrorFields::error(SqlState::IO_ERROR, other.to_string()),
    }
}

/// The first byte of a TLS handshake record: a client that opens with a ClientHello.
const TLS_HANDSHAKE: u8 = 0x16;

/// One connection: its two halves, its session, and what it holds of the relay.
pub(crate) struct Connection<T: Transport> {
    rd: FrameReader<T::Read>,
    wr: FrameWriter<T::Write>,
    session: DownstreamSession,
    ctx: Arc<ServerContext>,
    /// The certificate the port had when the connection came.
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
    place: Option<SenderPlace>,
    stream: Option<StreamIo>,
    /// A place among `max_base_backups`, while a BASE_BACKUP is relayed.
    backup: Option<BackupPlace>,
}

/// A connection that has logged in, over the stream it came on or over TLS.
enum LoggedIn<T: Transport> {
    Plain(Connection<T>),
    Tls(Connection<TlsStream<Replay<T>>>),
}

/// What a stream needs between two sends: the durable end it last saw.
struct StreamIo {
    durable: watch::Receiver<DurableEnd>,
    /// Whether the session was told of the shutdown.
    stopping: bool,
}

/// Whether the connection goes on.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Open,
    /// The session asked for the TLS handshake.
    Tls {
        direct: bool,
    },
    Closed,
}

impl<T: Transport> Connection<T> {
    /// A connection whose session has just begun; `tls` is the port's certificate, if any.
    pub(crate) fn new(
        stream: T,
        session: DownstreamSession,
        ctx: Arc<ServerContext>,
        tls: Option<ServerTls>,
        shutdown: CancellationToken,
    ) -> Self {
        let (rd, wr) = stream.halves();
        Connection {
            rd: FrameReader::new(rd, DOWNSTREAM_READ_CHUNK),
            wr: FrameWriter::new(wr),
            session,
            ctx,
            tls,
            shutdown,
            place: None,
            stream: None,
            backup: None,
        }
    }

    /// Serves the connection until it ends.
    pub(crate) async fn run(self) {
        let limit = self.ctx.config().authentication_timeout;
        let counters = Arc::clone(&self.ctx.counters);
        match tokio::time::timeout(limit, self.start()).await {
            Err(_) => {
                counters.downstream.refused(Refusal::Protocol);
                debug!("closing connection that did not log in within the authentication timeout");
            }
            Ok(None) => {}
            Ok(Some(LoggedIn::Plain(conn))) => conn.logged_in().await,
            Ok(Some(LoggedIn::Tls(conn))) => conn.logged_in().await,
        }
    }

    /// The startup, with a TLS handshake if the session asks for one; `None` when the
    /// connection closed before it logged in.
    async fn start(mut self) -> Option<LoggedIn<T>> {
        let counters = Arc::clone(&self.ctx.counters);
        let protocol = || counters.downstream.refused(Refusal::Protocol);
        match self.log_in().await {
            Ok(Flow::Open) => Some(LoggedIn::Plain(self)),
            Ok(Flow::Closed) => {
                self.count_refusal();
                None
            }
            Ok(Flow::Tls { direct }) => {
                let Some(mut tls) = self.start_tls(direct).await else {
                    protocol();
                    return None;
                };
                match tls.log_in().await {
                    Ok(Flow::Open) => Some(LoggedIn::Tls(tls)),
                    Ok(Flow::Closed | Flow::Tls { .. }) => {
                        tls.count_refusal();
                        None
                    }
                    Err(e) => {
                        protocol();
                        debug!(error = %e, "connection closed during startup");
                        None
                    }
                }
            }
            Err(e) => {
                protocol();
                debug!(error = %e, "connection closed during startup");
                None
            }
        }
    }

    /// Counts a connection the session closed with an error before login; one that closed
    /// without one (a cancel request, a client that went away) is not a refusal.
    fn count_refusal(&self) {
        if let Some(code) = self.session.closed_with() {
            let reason = Refusal::of_sqlstate(code.code());
            self.ctx.counters.downstream.refused(reason);
        }
    }

    /// The TLS handshake, as the server, over the same socket; `direct` when the client
    /// opened with it. What was read of the ClientHello is replayed to it.
    async fn start_tls(self, direct: bool) -> Option<Connection<TlsStream<Replay<T>>>> {
        let Connection {
            rd,
            wr,
            mut session,
            ctx,
            tls,
            shutdown,
            place,
            stream,
            backup,
        } = self;
        let (rd, read) = rd.into_parts();
        let socket = T::whole(rd, wr.into_inner())?;
        let config = tls?;
        let handshake = tokio::select! {
            () = shutdown.cancelled() => return None,
            handshake = config.accept(Replay::new(read, socket), direct) => handshake,
        };
        match handshake {
            Ok((socket, established)) => {
                let (_, tls) = socket.get_ref();
                let ssl = format!(
                    "{} {}",
                    tls.protocol_version()
                        .map_or("-", |v| v.as_str().unwrap_or("-")),
                    tls.negotiated_cipher_suite()
                        .map_or("-", |s| s.suite().as_str().unwrap_or("-"))
                );
                tracing::Span::current().record("ssl", ssl.as_str());
                session.tls_started(established);
                let (rd, wr) = socket.halves();
                Some(Connection {
                    rd: FrameReader::new(rd, DOWNSTREAM_READ_CHUNK),
                    wr: FrameWriter::new(wr),
                    session,
                    ctx,
                    tls: Some(config),
                    shutdown,
                    place,
                    stream,
                    backup,
                })
            }
            Err(e) => {
                info!(error = %e, "could not accept SSL connection");
                None
            }
        }
    }

    /// Command mode and streaming, after the login.
    async fn logged_in(mut self) {
        if let Some(login) = self.session.login() {
            let span = tracing::Span::current();
            span.record("app", login.application_name.as_str());
            span.record("pid", login.pid.0);
            info!(
                user = %login.user,
                method = login.how.method,
                rule = login.how.rule.as_deref().unwrap_or("-"),
                identity = login.how.identity.as_deref().unwrap_or("-"),
                "replication connection authorized"
            );
        }
        match self.serve().await {
            Ok(()) => debug!("connection ended"),
            Err(e) => info!(error = %e, "connection ended"),
        }
    }

    /// First packets, until the session has logged in, closed, or asked for TLS.
    async fn log_in(&mut self) -> Result<Flow, ConnError> {
        loop {
            let max = match self.session.expects() {
                Expect::StartupPacket(max) => max,
                Expect::Frame(max) if self.session.login().is_none() => {
                    // The authentication exchange.
                    let frame = tokio::select! {
                        () = self.shutdown.cancelled() => return Ok(Flow::Closed),
                        frame = self.rd.frame(max) => frame,
                    };
                    self.on_frame(frame)?;
                    match self.act().await? {
                        Flow::Open => continue,
                        other => return Ok(other),
                    }
                }
                Expect::Frame(_) | Expect::Nothing => return Ok(Flow::Open),
            };
            let first = tokio::select! {
                () = self.shutdown.cancelled() => return Ok(Flow::Closed),
                first = self.rd.first_byte() => first?,
            };
            if first == TLS_HANDSHAKE {
                self.session.direct_tls();
                match self.act().await? {
                    Flow::Open => continue,
                    other => return Ok(other),
                }
            }
            let packet = tokio::select! {
                () = self.shutdown.cancelled() => return Ok(Flow::Closed),
                packet = self.rd.startup_packet(max) => packet,
            };
            let packet = match packet {
                Ok(p) => Ok(p),
                Err(ConnError::Wire(e)) => Err(e),
                Err(e) => return Err(e),
            };
            let view = self.ctx.view(self.ctx.hub.durable());
            let buffered = self.rd.has_buffered();
            self.session.startup_packet(packet, buffered, &view);
            match self.act().await? {
                Flow::Open => {}
                other => return Ok(other),
            }
        }
    }

    /// Command mode and streaming, until the connection ends.
    async fn serve(&mut self) -> Result<(), ConnError> {
        loop {
            let flow = match self.session.expects() {
                Expect::Frame(max) if self.session.is_streaming() => self.stream_step(max).await?,
                Expect::Frame(max) => self.command_step(max).await?,
                Expect::StartupPacket(_) | Expect::Nothing => Flow::Closed,
            };
            if flow != Flow::Open {
                return Ok(());
            }
        }
    }

    /// Waits for one message in command mode, or shutdown.
    async fn command_step(&mut self, max: usize) -> Result<Flow, ConnError> {
        tokio::select! {
            () = self.shutdown.cancelled() => self.session.shutdown(now()),
            frame = self.rd.frame(max) => self.on_frame(frame)?,
        }
        self.act().await
    }

    /// One step of a stream: send what there is, else wait for the client, new WAL, a
    /// deadline or shutdown.
    async fn stream_step(&mut self, max: usize) -> Result<Flow, ConnError> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(Flow::Closed);
        };
        let durable = *stream.durable.borrow_and_update();
        let at = now();
        if self.shutdown.is_cancelled() && !std::mem::replace(&mut stream.stopping, true) {
            self.session.shutdown(at);
        } else if self.session.deadline().is_some_and(|d| d <= at.at) {
            self.session.tick(at);
        }
        let view = self.ctx.view(durable);
        if let Some(range) = self.session.next_send(&view) {
            self.send(range, at).await?;
            // Take what the client sent meanwhile without waiting for more.
            if let Ok(frame) = tokio::time::timeout(Duration::ZERO, self.rd.frame(max)).await {
                self.on_frame(frame)?;
            }
            return self.act().await;
        }
        if self.act().await? != Flow::Open {
            return Ok(Flow::Closed);
        }
        let deadline = self.session.deadline().map(tokio::time::Instant::from_std);
        let Some(stream) = self.stream.as_mut() else {
            return Ok(Flow::Open);
        };
        let stopping = stream.stopping;
        tokio::select! {
            () = self.shutdown.cancelled(), if !stopping => {}
            frame = self.rd.frame(max) => self.on_frame(frame)?,
            changed = stream.durable.changed() => {
                if changed.is_err() {
                    return Ok(Flow::Closed);
                }
            }
            () = sleep_until(deadline) => self.session.tick(now()),
        }
        self.act().await
    }

    /// Reads up to eight XLogData of WAL from the hub and writes them in one go.
    async fn send(&mut self, range: SendRange, at: Now) -> Result<(), ConnError> {
        if self.stream.is_none() {
            return Ok(());
        }
        let SendRange {
            timeline,
            from,
            limit,
        } = range;
        let hub = &self.ctx.hub;
        let read = match T::plain_tcp(self.wr.get_ref()) {
            Some(_) => hub.send_batch(timeline, from, limit, BATCH_BYTES).await,
            None => hub
                .read_batch(timeline, from, limit, BATCH_BYTES)
                .await
                .map(Pieces::Memory),
        };
        let pieces = match read {
            Ok(pieces) => pieces,
            Err(e) => {
                self.session.wal_unavailable(&wal_refusal(&e));
                return Ok(());
            }
        };
        let end = match pieces {
            Pieces::Memory(pieces) if pieces.is_empty() => return Ok(()),
            Pieces::Memory(pieces) => {
                // Each piece is one XLogData; all of them go out in one vectored write.
                let mut parts = Vec::with_capacity(pieces.len() * 2);
                let mut end = from;
                for piece in pieces {
                    let header = XLogData::frame_header(end, limit, at.wall, piece.len())?;
                    parts.push(Bytes::copy_from_slice(&header));
                    end = Lsn(end.0 + piece.len() as u64);
                    parts.push(piece);
                }
                self.write(parts).await?;
                end
            }
            Pieces::Files(spans) => {
                // What is buffered goes first.
                self.write(Vec::new()).await?;
                let Some(tcp) = T::plain_tcp(self.wr.get_ref()) else {
                    return Ok(());
                };
                let sending = file_send::send_spans(tcp, spans, from, limit, at.wall);
                within(self.send_timeout(), sending).await?
            }
        };
        self.session.sent(end);
        Ok(())
    }

    /// Feeds a message, or the error reading it, to the session. A closed or broken socket
    /// ends the connection here.
    fn on_frame(&mut self, frame: Result<crate::wire::Frame, ConnError>) -> Result<(), ConnError> {
        let frame = match frame {
            Ok(f) => Ok(f),
            Err(ConnError::Wire(e)) => Err::<_, WireError>(e),
            Err(e) => return Err(e),
        };
        let durable = match &self.stream {
            Some(s) => *s.durable.borrow(),
            None => self.ctx.hub.durable(),
        };
        let view = self.ctx.view(durable);
        self.session.frame(frame, now(), &view);
        Ok(())
    }

    /// Carries out the session's actions, feeding back their answers, then sends its output.
    async fn act(&mut self) -> Result<Flow, ConnError> {
        while let Some(action) = self.session.poll_action() {
            if let Action::Close = action {
                let out = self.session.take_output();
                self.wr.out().extend_from_slice(&out);
                self.wr.close().await;
                return Ok(Flow::Closed);
            }
            if let Action::StartTls { direct } = action {
                // The `S` goes out in the clear; the handshake follows.
                let out = self.session.take_output();
                self.wr.out().extend_from_slice(&out);
                self.wr.flush().await?;
                return Ok(Flow::Tls { direct });
            }
            self.carry_out(action).await?;
        }
        if self.session.has_output() {
            let out = self.session.take_output();
            self.wr.out().extend_from_slice(&out);
            self.write(Vec::new()).await?;
        }
        Ok(Flow::Open)
    }

    /// One action other than closing.
    async fn carry_out(&mut self, action: Action) -> Result<(), ConnError> {
        let pid = self.place.as_ref().map_or(BackendPid(0), |p| p.pid);
        let view = || self.ctx.view(self.ctx.hub.durable());
        match action {
            Action::ClaimSender => {
                self.place = self.ctx.claim_sender();
                let claim = self.place.as_ref().map(|p| SenderClaim {
                    pid: p.pid,
                    cancel_key: p.cancel_key,
                });
                self.session.claimed(claim, &view());
            }
            Action::ReadSlot(name) => {
                let found = self.ctx.slots().get(name.as_str()).map(|s| FoundSlot {
                    restart_lsn: s.restart_lsn,
                });
                self.session.slot_read(found, &view());
            }
            Action::CreateSlot {
                name,
                temporary,
                reserve,
            } => {
                let persistency = if temporary {
                    Persistency::Temporary { owner: pid }
                } else {
                    Persistency::Persistent
                };
                let created = self.ctx.create_slot(&name, persistency, reserve).await;
                self.session
                    .slot_done(created.map_err(|e| slot_refusal(&e)), now());
            }
            Action::DropSlot { name, wait } => {
                let Some(dropped) = self.ctx.drop_slot(&name, pid, wait, &self.shutdown).await
                else {
                    return Err(ConnError::Closed);
                };
                self.session
                    .slot_done(dropped.map_err(|e| slot_refusal(&e)), now());
            }
            Action::AcquireSlot(name) => {
                let acquired = self.ctx.slots().acquire(&name, pid);
                self.session
                    .slot_done(acquired.map_err(|e| slot_refusal(&e)), now());
            }
            Action::ClaimBackup => {
                self.backup = self.ctx.claim_backup();
                self.session.backup_claimed(self.backup.is_some());
            }
            Action::Cancel { pid, secret_key } => self.ctx.cancel(pid, secret_key),
            Action::StartBackup { query, .. } => {
                let end = self.relay_backup(query).await;
                self.backup = None;
                self.session.backup_ended(end?);
            }
            other => self.record(other, pid),
        }
        Ok(())
    }

    /// The actions that only tell the relay where a stream is.
    fn record(&mut self, action: Action, pid: BackendPid) {
        match action {
            Action::BeginStream(StreamStart {
                slot,
                timeline,
                start,
            }) => {
                if let Some(name) = &slot {
                    tracing::Span::current().record("slot", name.as_str());
                }
                let application_name = self
                    .session
                    .login()
                    .map(|l| l.application_name.clone())
                    .unwrap_or_default();
                self.ctx.begin_stream(StreamStatus {
                    pid,
                    application_name,
                    slot,
                    timeline,
                    start,
                    sent: start,
                    client: Default::default(),
                    client_addr: match self.session.peer() {
                        Peer::Tcp(ip) => Some(ip),
                        Peer::Local => None,
                    },
                    lags: LagReader::default(),
                    caught_up: false,
                });
                self.stream = Some(StreamIo {
                    durable: self.ctx.hub.subscribe(),
                    stopping: false,
                });
            }
            Action::Progress { sent, client } => self.ctx.update_stream(pid, sent, client),
            Action::ConfirmFlush { slot, flush } => {
                let _ = self.ctx.slots().confirm_flush(&slot, flush);
            }
            Action::Feedback { slot, horizon } => {
                self.ctx.set_feedback(pid, slot.as_deref(), horizon);
            }
            Action::EndStream { slot } => {
                self.ctx.forget_stream(pid);
                if let Some(name) = slot {
                    self.ctx.slots().release(&name, pid);
                }
                self.stream = None;
            }
            Action::ClaimSender
            | Action::ReadSlot(_)
            | Action::CreateSlot { .. }
            | Action::DropSlot { .. }
            | Action::AcquireSlot(_)
            | Action::ClaimBackup
            | Action::StartBackup { .. }
            | Action::Cancel { .. }
            | Action::StartTls { .. }
            | Action::Close => {}
        }
    }

    /// Sends what is buffered, then `parts`. While streaming, a client that does not read for
    /// the sender timeout is dropped.
    async fn write(&mut self, parts: Vec<Bytes>) -> Result<(), ConnError> {
        let timeout = self.send_timeout();
        within(timeout, self.wr.flush_parts(parts)).await
    }

    /// How long a write may make no progress: the sender timeout while streaming.
    fn send_timeout(&self) -> Option<Duration> {
        let timeout = self.ctx.config().sender_timeout;
        (self.stream.is_some() && !timeout.is_zero()).then_some(timeout)
    }
}

/// `writing` if it ends within `timeout`; a client that does not read for that long is
/// dropped.
async fn within<R>(
    timeout: Option<Duration>,
    writing: impl Future<Output = Result<R, ConnError>>,
) -> Result<R, ConnError> {
    let Some(timeout) = timeout else {
        return writing.await;
    };
    match tokio::time::timeout(timeout, writing).await {
        Ok(r) => r,
        Err(_) => {
            info!("terminating walsender process: the client has not read for {timeout:?}");
            Err(ConnError::Timeout(timeout))
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
