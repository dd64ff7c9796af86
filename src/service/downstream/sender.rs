//! `START_REPLICATION … PHYSICAL`: streaming durable WAL to one client, as a walsender does
//! (`walsender.c:StartReplication`, `WalSndLoop`, `XLogSendPhysical`, `WalSndDone`).
//!
//! Checks that PostgreSQL makes before CopyBothResponse (the slot exists and is free, the
//! timeline is in the relay's history, the start is not past a historic timeline's end) answer
//! before it; WAL that retention removed answers 58P01 after it. A start beyond the durable
//! end waits, with keepalives, until the WAL arrives. A historic timeline ends at its switch
//! point with CopyDone and the next timeline's result set. Writes that make no progress for
//! the sender timeout drop the client, as silence does.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::commands::{Column, complete, error, result, slot_error, starting_up};
use super::startup::Login;
use super::{ServerContext, StreamStatus};
use crate::hub::ReadBuffer;
use crate::proto::walsender::{ClientPositions, SendStream};
use crate::service::conn::ConnError;
use crate::service::conn::{FrameReader, FrameWriter};
use crate::slots::{BackendPid, FullXid, XminHorizon};
use crate::storage::StoreError;
use crate::types::{Lsn, PgTimestamp, TimelineId};
use crate::wal::TimelineHistory;
use crate::wire::backend::{CopyResponse, INT8_OID, TEXT_OID};
use crate::wire::frame::SMALL_FRAME_LIMIT;
use crate::wire::frontend::FrontendMessage;
use crate::wire::replication::{ClientCopyData, ServerCopyData, XLogData};
use crate::wire::{BackendMessage, ErrorFields};

/// What the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The slot to stream from and advance.
    pub slot: Option<String>,
    /// The first byte to send.
    pub start: Lsn,
    /// The timeline; the relay's current one when absent.
    pub timeline: Option<TimelineId>,
}

/// How much WAL a sender that is behind takes and writes at once: eight XLogData messages.
const BATCH_BYTES: u64 = 8 * crate::types::MAX_SEND_SIZE;

/// How long a shutting-down sender waits for the client to confirm what it was sent.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// Holds a slot for the stream and lets it go at the end.
struct AcquiredSlot<'a> {
    ctx: &'a ServerContext,
    name: String,
    pid: BackendPid,
}

impl Drop for AcquiredSlot<'_> {
    fn drop(&mut self) {
        self.ctx.slots().release(&self.name, self.pid);
    }
}

/// Forgets the stream's cursor and feedback when it ends, however it ends.
struct ForgetStream<'a> {
    ctx: &'a ServerContext,
    pid: BackendPid,
}

impl Drop for ForgetStream<'_> {
    fn drop(&mut self) {
        self.ctx.forget_stream(self.pid);
    }
}

/// Where a stream on the requested timeline must stop, if that timeline is historic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HistoricEnd {
    switch: Lsn,
    next: TimelineId,
}

/// Runs START_REPLICATION to its end; the caller sends ReadyForQuery afterwards.
///
/// # Errors
/// A broken connection.
pub async fn start_replication<R, W>(
    rd: &mut FrameReader<R>,
    wr: &mut FrameWriter<W>,
    login: &Login,
    ctx: &Arc<ServerContext>,
    shutdown: &CancellationToken,
    req: Request,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let checked = match before_copy(ctx, login, &req) {
        Ok(c) => c,
        Err(e) => {
            error(wr, e);
            return Ok(());
        }
    };
    let (tli, historic, _slot) = checked;
    if historic.is_some_and(|h| h.switch == req.start) {
        // Nothing to stream on this timeline: skip copy mode.
        end_of_timeline_result(wr, historic);
        complete(wr, "START_REPLICATION");
        return Ok(());
    }
    BackendMessage::CopyBothResponse(CopyResponse {
        format: 0,
        column_formats: Vec::new(),
    })
    .write(wr.out())?;
    wr.flush().await?;
    info!(timeline = %tli, start = %req.start, slot = req.slot.as_deref().unwrap_or(""), "streaming");
    ctx.begin_stream(StreamStatus {
        pid: login.slot.pid,
        application_name: login.application_name.clone(),
        slot: req.slot.clone(),
        timeline: tli,
        sent: req.start,
        client: ClientPositions::default(),
    });
    let _forget = ForgetStream {
        ctx,
        pid: login.slot.pid,
    };
    let mut stream = Stream {
        ctx,
        pid: login.slot.pid,
        slot: req.slot.clone(),
        tli,
        historic,
        send: SendStream::new(req.start, ctx.config.sender_timeout, Instant::now()),
        done_sent: false,
        buffer: ReadBuffer::default(),
    };
    match stream.run(rd, wr, shutdown).await? {
        Ending::ClientDone => {
            if !stream.done_sent {
                BackendMessage::CopyDone.write(wr.out())?;
            }
            complete(wr, "START_STREAMING");
            complete(wr, "START_REPLICATION");
        }
        Ending::TimelineEnd => {
            end_of_timeline_result(wr, historic);
            complete(wr, "START_REPLICATION");
        }
        Ending::Error(e) => error(wr, e),
    }
    Ok(())
}

/// The checks before CopyBothResponse: the upstream is known, the timeline is in the
/// history and the start not past its end, the slot exists and is free.
fn before_copy<'a>(
    ctx: &'a ServerContext,
    login: &Login,
    req: &Request,
) -> Result<(TimelineId, Option<HistoricEnd>, Option<AcquiredSlot<'a>>), ErrorFields> {
    ctx.upstream().ok_or_else(starting_up)?;
    let current = ctx.timeline();
    let tli = req.timeline.unwrap_or(current);
    let historic = historic_end(ctx, tli, current)?;
    if let Some(h) = historic.filter(|h| req.start > h.switch) {
        let text = format!(
            "requested starting point {} on timeline {tli} is not in this server's history",
            req.start
        );
        let detail = format!(
            "This server's history forked from timeline {tli} at {}.",
            h.switch
        );
        return Err(ErrorFields::new("ERROR", "XX000", text).with_detail(detail));
    }
    let slot = match &req.slot {
        None => None,
        Some(name) => {
            ctx.slots()
                .acquire(name, login.slot.pid)
                .map_err(slot_error)?;
            Some(AcquiredSlot {
                ctx,
                name: name.clone(),
                pid: login.slot.pid,
            })
        }
    };
    Ok((tli, historic, slot))
}

/// For a timeline older than the current one: where it ends and which timeline follows.
fn historic_end(
    ctx: &ServerContext,
    tli: TimelineId,
    current: TimelineId,
) -> Result<Option<HistoricEnd>, ErrorFields> {
    let not_in_history = || {
        ErrorFields::new(
            "ERROR",
            "XX000",
            format!("requested timeline {tli} is not in this server's history"),
        )
    };
    if tli == current {
        return Ok(None);
    }
    if tli > current {
        return Err(not_in_history());
    }
    let bytes = std::fs::read(ctx.wal_dir().join(current.history_file_name()))
        .map_err(|_| not_in_history())?;
    let history = TimelineHistory::parse(current, &bytes).map_err(|_| not_in_history())?;
    let (switch, next) = history.switch_point(tli).ok_or_else(not_in_history)?;
    Ok(Some(HistoricEnd { switch, next }))
}

/// The `next_tli, next_tli_startpos` result set and its `START_STREAMING` tag.
fn end_of_timeline_result<W: AsyncWrite + Unpin>(
    wr: &mut FrameWriter<W>,
    historic: Option<HistoricEnd>,
) {
    let Some(h) = historic else { return };
    let columns: [Column<'_>; 2] = [
        ("next_tli", INT8_OID, 8),
        ("next_tli_startpos", TEXT_OID, -1),
    ];
    let row = vec![Some(h.next.to_string()), Some(h.switch.to_string())];
    result(wr, &columns, -1, vec![row], "START_STREAMING");
}

/// How streaming ended.
enum Ending {
    /// The client sent CopyDone.
    ClientDone,
    /// A historic timeline reached its end and the client confirmed with CopyDone.
    TimelineEnd,
    /// An error after CopyBothResponse (e.g. WAL already removed).
    Error(ErrorFields),
}

struct Stream<'a> {
    ctx: &'a ServerContext,
    pid: BackendPid,
    slot: Option<String>,
    tli: TimelineId,
    historic: Option<HistoricEnd>,
    send: SendStream,
    done_sent: bool,
    /// Reused for the disk reads of a stream that lags.
    buffer: ReadBuffer,
}

/// What the client sent while streaming.
enum FromClient {
    Nothing,
    Done,
}

impl Stream<'_> {
    async fn run<R, W>(
        &mut self,
        rd: &mut FrameReader<R>,
        wr: &mut FrameWriter<W>,
        shutdown: &CancellationToken,
    ) -> Result<Ending, ConnError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut durable_rx = self.ctx.hub.subscribe();
        loop {
            if shutdown.is_cancelled() {
                return self.shut_down(rd, wr).await;
            }
            let now = Instant::now();
            if self.send.timed_out(now) {
                info!("terminating walsender process due to replication timeout");
                return Err(ConnError::Closed);
            }
            if self.send.ping_due(now) {
                self.keepalive(wr, true)?;
                self.send.pinged();
                self.write_parts(wr, Vec::new()).await?;
            }
            let limit = self.limit();
            if self.send.sent() < limit {
                if let Some(ending) = self.send_some(wr, limit).await? {
                    return Ok(ending);
                }
                // Take what the client sent meanwhile without waiting for more.
                let pending =
                    tokio::time::timeout(Duration::ZERO, rd.frame(SMALL_FRAME_LIMIT)).await;
                if let Ok(frame) = pending
                    && let FromClient::Done = self.on_client(wr, frame?).await?
                {
                    return Ok(Ending::ClientDone);
                }
                continue;
            }
            if let Some(h) = self.historic.filter(|h| self.send.sent() >= h.switch) {
                return self.finish_timeline(rd, wr, h).await;
            }
            let deadline = self
                .send
                .next_deadline()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                () = shutdown.cancelled() => return self.shut_down(rd, wr).await,
                frame = rd.frame(SMALL_FRAME_LIMIT) => {
                    if let FromClient::Done = self.on_client(wr, frame?).await? {
                        return Ok(Ending::ClientDone);
                    }
                }
                changed = durable_rx.changed() => {
                    if changed.is_err() {
                        return Err(ConnError::Closed);
                    }
                }
                () = sleep_until(deadline) => {}
            }
        }
    }

    /// How far this stream may send: the durable end, or a historic timeline's end. When
    /// the relay moves to a newer timeline meanwhile, this one becomes historic.
    fn limit(&mut self) -> Lsn {
        let end = self.ctx.durable();
        if self.historic.is_none() && end.timeline.is_some_and(|t| t != self.tli) {
            let current = end.timeline.unwrap_or(self.tli);
            let stop_here = HistoricEnd {
                switch: self.send.sent(),
                next: current,
            };
            self.historic = historic_end(self.ctx, self.tli, current).unwrap_or(Some(stop_here));
        }
        match self.historic {
            Some(h) => h.switch,
            None => end.lsn,
        }
    }

    /// Sends one XLogData; an Ending when the WAL is no longer there.
    async fn send_some<W: AsyncWrite + Unpin>(
        &mut self,
        wr: &mut FrameWriter<W>,
        limit: Lsn,
    ) -> Result<Option<Ending>, ConnError> {
        let from = self.send.sent();
        let pieces = match self
            .ctx
            .hub
            .read_batch(self.tli, from, limit, BATCH_BYTES, &mut self.buffer)
            .await
        {
            Ok(p) if p.is_empty() => return Ok(None),
            Ok(p) => p,
            Err(StoreError::SegmentRemoved { file }) => {
                let text = format!("requested WAL segment {file} has already been removed");
                return Ok(Some(Ending::Error(ErrorFields::new(
                    "ERROR", "58P01", text,
                ))));
            }
            Err(e) => {
                return Ok(Some(Ending::Error(ErrorFields::new(
                    "ERROR",
                    "58030",
                    e.to_string(),
                ))));
            }
        };
        // Each piece is one XLogData; all of them go out in one vectored write.
        let now = wall_clock();
        let mut parts = Vec::with_capacity(pieces.len() * 2);
        let mut at = from;
        for piece in pieces {
            let header = XLogData::frame_header(at, limit, now, piece.len())?;
            parts.push(Bytes::copy_from_slice(&header));
            at = Lsn(at.0 + piece.len() as u64);
            parts.push(piece);
        }
        self.write_parts(wr, parts).await?;
        self.send.sent_to(at);
        self.ctx
            .update_stream(self.pid, self.send.sent(), self.send.positions());
        Ok(None)
    }

    /// Flushes the output, then `parts` (nothing for a keepalive), within the sender timeout:
    /// a client that does not read for that long is dropped.
    async fn write_parts<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut FrameWriter<W>,
        parts: Vec<Bytes>,
    ) -> Result<(), ConnError> {
        let timeout = self.ctx.config.sender_timeout;
        if timeout.is_zero() {
            return wr.flush_parts(parts).await;
        }
        match tokio::time::timeout(timeout, wr.flush_parts(parts)).await {
            Ok(r) => r,
            Err(_) => {
                info!("terminating walsender process: the client has not read for {timeout:?}");
                Err(ConnError::Timeout(timeout))
            }
        }
    }

    fn keepalive<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut FrameWriter<W>,
        reply_requested: bool,
    ) -> Result<(), ConnError> {
        let k = self.send.keepalive(wall_clock(), reply_requested);
        ServerCopyData::Keepalive(k).write(wr.out())?;
        Ok(())
    }

    /// Handles one message from the client.
    async fn on_client<W: AsyncWrite + Unpin>(
        &mut self,
        wr: &mut FrameWriter<W>,
        frame: crate::wire::Frame,
    ) -> Result<FromClient, ConnError> {
        let now = Instant::now();
        self.send.on_client_message(now);
        let msg = match FrontendMessage::parse(frame) {
            Ok(m) => m,
            Err(e) => {
                return Err(self
                    .fatal(wr, ErrorFields::new("FATAL", e.sqlstate(), e.to_string()))
                    .await);
            }
        };
        match msg {
            FrontendMessage::CopyData(payload) => match ClientCopyData::parse(payload) {
                Ok(ClientCopyData::StatusUpdate(r)) => {
                    let end = self.ctx.durable().lsn;
                    let reply = match self.send.on_status(&r, end, now) {
                        Ok(reply) => reply,
                        Err(e) => {
                            let fields = ErrorFields::new("FATAL", "08P01", e.to_string());
                            return Err(self.fatal(wr, fields).await);
                        }
                    };
                    self.ctx
                        .update_stream(self.pid, self.send.sent(), self.send.positions());
                    if let (Some(name), Some(flush)) = (&self.slot, reply.slot_flush) {
                        let _ = self.ctx.slots().confirm_flush(name, flush);
                    }
                    if reply.reply_requested {
                        self.keepalive(wr, false)?;
                        self.write_parts(wr, Vec::new()).await?;
                    }
                    Ok(FromClient::Nothing)
                }
                Ok(ClientCopyData::HotStandbyFeedback(h)) => {
                    let feedback = XminHorizon {
                        xmin: FullXid::new(h.xmin_epoch, h.xmin),
                        catalog_xmin: FullXid::new(h.catalog_xmin_epoch, h.catalog_xmin),
                    };
                    // As ProcessStandbyHSFeedbackMessage ignores ids not in the recent past:
                    // one client's impossible xmin must not become the minimum the relay
                    // reports, which the primary would then ignore for every standby.
                    if let Some(next) = self.ctx.hub.next_xid()
                        && [feedback.xmin, feedback.catalog_xmin]
                            .into_iter()
                            .flatten()
                            .any(|x| !x.near(next))
                    {
                        let xmin = feedback.xmin;
                        debug!(?xmin, next, "ignoring feedback not in the recent past");
                        return Ok(FromClient::Nothing);
                    }
                    debug!(xmin = ?feedback.xmin, "hot standby feedback");
                    self.ctx.set_feedback(self.pid, feedback);
                    if let Some(name) = &self.slot {
                        let _ = self.ctx.slots().hot_standby_feedback(
                            name,
                            feedback.xmin,
                            feedback.catalog_xmin,
                        );
                    }
                    Ok(FromClient::Nothing)
                }
                Err(e) => Err(self
                    .fatal(wr, ErrorFields::new("FATAL", "08P01", e.to_string()))
                    .await),
            },
            FrontendMessage::CopyDone => Ok(FromClient::Done),
            FrontendMessage::Terminate => Err(ConnError::Closed),
            other => {
                let tag = char::from(other.tag());
                let text = format!("invalid standby message type \"{tag}\"");
                Err(self
                    .fatal(wr, ErrorFields::new("FATAL", "08P01", text))
                    .await)
            }
        }
    }

    async fn fatal<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut FrameWriter<W>,
        e: ErrorFields,
    ) -> ConnError {
        info!(sqlstate = %e.code, error = %e.message, "closing replication connection");
        wr.fatal(&e).await;
        ConnError::Closed
    }

    /// A historic timeline is sent up to its end: CopyDone, and wait for the client's.
    async fn finish_timeline<R, W>(
        &mut self,
        rd: &mut FrameReader<R>,
        wr: &mut FrameWriter<W>,
        _end: HistoricEnd,
    ) -> Result<Ending, ConnError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        BackendMessage::CopyDone.write(wr.out())?;
        self.done_sent = true;
        self.write_parts(wr, Vec::new()).await?;
        loop {
            let frame = rd.frame(SMALL_FRAME_LIMIT).await?;
            if let FromClient::Done = self.on_client(wr, frame).await? {
                return Ok(Ending::TimelineEnd);
            }
        }
    }

    /// The relay is stopping: wait briefly for the client to confirm what it was sent, then
    /// end the stream with `COPY 0` and close, as `WalSndDone` does.
    async fn shut_down<R, W>(
        &mut self,
        rd: &mut FrameReader<R>,
        wr: &mut FrameWriter<W>,
    ) -> Result<Ending, ConnError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_WAIT;
        self.keepalive(wr, true)?;
        let _ = self.write_parts(wr, Vec::new()).await;
        while !self.confirmed() {
            match tokio::time::timeout_at(deadline, rd.frame(SMALL_FRAME_LIMIT)).await {
                Ok(Ok(frame)) => {
                    if let FromClient::Done = self.on_client(wr, frame).await? {
                        break;
                    }
                }
                _ => break,
            }
        }
        complete(wr, "COPY 0");
        wr.close().await;
        Err(ConnError::Closed)
    }

    /// Whether the client confirmed everything sent: its flush, or its write when it reports
    /// no flush (`pg_receivewal` without a slot).
    fn confirmed(&self) -> bool {
        let p = self.send.positions();
        let done = if p.flush.is_valid() { p.flush } else { p.write };
        done >= self.send.sent()
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn wall_clock() -> PgTimestamp {
    PgTimestamp::from_system_time(SystemTime::now())
}
