//! `START_REPLICATION … PHYSICAL`: streaming durable WAL to one client, as a walsender does
//! (`walsender.c:StartReplication`, `WalSndLoop`, `XLogSendPhysical`, `ProcessRepliesIfAny`,
//! `WalSndDone`).
//!
//! - The checks PostgreSQL makes before CopyBothResponse answer before it: the upstream is
//!   known, the timeline is in the relay's history, the start is not past a historic
//!   timeline's end, the slot exists and is free. A historic timeline that ends exactly at the
//!   start skips copy mode and answers the next timeline at once.
//! - WAL goes out from the requested start up to the durable end, or a historic timeline's
//!   switch point; there the session sends CopyDone and waits for the client's, then answers
//!   the next timeline. A timeline that becomes historic while it is streamed (the relay
//!   followed a promotion) ends the same way.
//! - Client messages: a status update moves the client's positions and its slot, and asks for
//!   a keepalive when it wants one; hot-standby feedback not "in the recent past" of the
//!   upstream's transaction ids is ignored, as `ProcessStandbyHSFeedbackMessage` ignores it;
//!   CopyDone ends the stream; Terminate closes; anything else is FATAL 08P01.
//! - A client silent for half the sender timeout is asked for a reply; one silent for all of
//!   it is dropped.
//! - At shutdown, the client is asked to confirm what it was sent; once it has, or after a
//!   short wait, the stream ends with `COPY 0` and the connection closes.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tracing::{debug, info, warn};

use super::reply::{self, Column, ColumnType, failed, ready, starting_up};
use super::send::SendStream;
use super::{Action, Now, Outbox, Pending, Phase, RelayView, SessionConfig, StreamStart};
use crate::types::{FullXid, Lsn, SlotName, SqlState, TimelineId, XminHorizon};
use crate::wal::TimelineHistory;
use crate::wire::backend::CopyResponse;
use crate::wire::frontend::FrontendMessage;
use crate::wire::replication::{ClientCopyData, ServerCopyData};
use crate::wire::{BackendMessage, ErrorFields, Frame};

/// What the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Request {
    /// The slot to stream from and advance.
    pub slot: Option<String>,
    /// The first byte to send.
    pub start: Lsn,
    /// The timeline; the relay's current one when absent.
    pub timeline: Option<TimelineId>,
}

/// A request that passed the checks before its slot is acquired.
#[derive(Debug)]
pub(super) struct Checked {
    request: Request,
    timeline: TimelineId,
    historic: Option<HistoricEnd>,
}

/// Where a stream on a historic timeline must stop, and which timeline follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HistoricEnd {
    switch: Lsn,
    next: TimelineId,
}

/// WAL to send: `[from, limit)` of `timeline`, in XLogData whose `walEnd` is `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendRange {
    /// The timeline whose segment files hold that WAL: the stream's own, or for the last
    /// segment of a historic timeline the next one.
    pub timeline: TimelineId,
    /// Where the next XLogData starts.
    pub from: Lsn,
    /// How far this stream may go now.
    pub limit: Lsn,
}

/// A stream in progress.
#[derive(Debug)]
pub(super) struct Streaming {
    send: SendStream,
    timeline: TimelineId,
    historic: Option<HistoricEnd>,
    slot: Option<String>,
    /// CopyDone went out: the timeline ended, the client's CopyDone is awaited.
    done_sent: bool,
    /// The relay is stopping: the stream ends once the client confirms, or at this instant.
    stopping_at: Option<Instant>,
    /// Feedback from this client was ignored once already (logged as a warning once).
    feedback_ignored: bool,
}

/// `START_REPLICATION`: the checks, then the slot.
pub(super) fn start(
    io: &mut Outbox,
    config: &SessionConfig,
    request: Request,
    now: Now,
    view: &RelayView,
) -> Phase {
    let checked = match check(request, view) {
        Ok(c) => c,
        Err(e) => return failed(io, &e),
    };
    match checked.request.slot.clone() {
        Some(name) => {
            io.act(Action::AcquireSlot(name));
            Phase::Waiting(Pending::Acquire(Box::new(checked)))
        }
        None => begin(io, config, checked, now),
    }
}

/// The answer to [`Action::AcquireSlot`].
pub(super) fn acquired(
    io: &mut Outbox,
    config: &SessionConfig,
    checked: Checked,
    outcome: Result<(), ErrorFields>,
    now: Now,
) -> Phase {
    match outcome {
        Ok(()) => begin(io, config, checked, now),
        Err(e) => failed(io, &e),
    }
}

/// The checks before CopyBothResponse that need no slot.
fn check(request: Request, view: &RelayView) -> Result<Checked, ErrorFields> {
    if view.upstream.is_none() {
        return Err(starting_up());
    }
    let current = view.timeline();
    let timeline = request.timeline.unwrap_or(current);
    let historic = historic_end(view, timeline, current)?;
    if let Some(h) = historic.filter(|h| request.start > h.switch) {
        let text = format!(
            "requested starting point {} on timeline {timeline} is not in this server's history",
            request.start
        );
        let detail = format!(
            "This server's history forked from timeline {timeline} at {}.",
            h.switch
        );
        return Err(ErrorFields::error(SqlState::INTERNAL_ERROR, text).with_detail(detail));
    }
    Ok(Checked {
        request,
        timeline,
        historic,
    })
}

/// For a timeline older than the current one: where it ends and which timeline follows.
fn historic_end(
    view: &RelayView,
    tli: TimelineId,
    current: TimelineId,
) -> Result<Option<HistoricEnd>, ErrorFields> {
    let not_in_history = || {
        ErrorFields::error(
            SqlState::INTERNAL_ERROR,
            format!("requested timeline {tli} is not in this server's history"),
        )
    };
    if tli == current {
        return Ok(None);
    }
    if tli > current {
        return Err(not_in_history());
    }
    let bytes = view.histories.get(&current).ok_or_else(not_in_history)?;
    let history = TimelineHistory::parse(current, bytes).map_err(|_| not_in_history())?;
    let (switch, next) = history.switch_point(tli).ok_or_else(not_in_history)?;
    Ok(Some(HistoricEnd { switch, next }))
}

/// The end of the WAL this server has had: the durable end of its timeline, or where the
/// parent timeline ended when that is further. After a timeline switch the relay stores the
/// new timeline again from the start of the segment it forked in, so for a while its durable
/// end there lies below the parent's end, which the standbys that streamed the parent hold
/// and report in their first status updates on the new timeline.
fn held_end(view: &RelayView) -> Lsn {
    let current = view.timeline();
    let parent_end = view
        .histories
        .get(&current)
        .and_then(|bytes| TimelineHistory::parse(current, bytes).ok())
        .and_then(|h| h.entries.last().map(|e| e.switchpoint));
    parent_end.map_or(view.durable.lsn, |end| end.max(view.durable.lsn))
}

/// Starts the stream: CopyBothResponse, or at once the next timeline when the historic one
/// ends where streaming would start.
fn begin(io: &mut Outbox, config: &SessionConfig, checked: Checked, now: Now) -> Phase {
    let Checked {
        request,
        timeline,
        historic,
    } = checked;
    if let Some(h) = historic.filter(|h| h.switch == request.start) {
        // Nothing to stream on this timeline: skip copy mode.
        next_timeline_result(&mut io.out, h);
        reply::complete(&mut io.out, "START_REPLICATION");
        io.act(Action::EndStream { slot: request.slot });
        return ready(io);
    }
    reply::message(
        &mut io.out,
        &BackendMessage::CopyBothResponse(CopyResponse::default()),
    );
    info!(%timeline, start = %request.start, slot = request.slot.as_deref().unwrap_or(""), "streaming");
    io.act(Action::BeginStream(StreamStart {
        slot: request.slot.as_deref().and_then(|s| SlotName::new(s).ok()),
        timeline,
        start: request.start,
    }));
    Phase::Streaming(Box::new(Streaming {
        send: SendStream::new(request.start, config.sender_timeout, now.at),
        timeline,
        historic,
        slot: request.slot,
        done_sent: false,
        stopping_at: None,
        feedback_ignored: false,
    }))
}

/// The `next_tli, next_tli_startpos` result set that ends a historic timeline.
fn next_timeline_result(out: &mut BytesMut, h: HistoricEnd) {
    let columns = [
        Column("next_tli", ColumnType::Int8),
        Column("next_tli_startpos", ColumnType::Text),
    ];
    let values = vec![Some(h.next.to_string()), Some(h.switch.to_string())];
    reply::result(out, &columns, values, "START_STREAMING");
}

impl Streaming {
    /// The slot the stream acquired, if any.
    fn slot(&self) -> Option<String> {
        self.slot.clone()
    }

    /// When to tick next: the client's silence, or while stopping, the end of the wait.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.stopping_at.or_else(|| self.send.client_deadline())
    }

    /// The WAL to send next. At the end of a historic timeline, CopyDone goes out instead
    /// (once), and nothing is sent any more; nothing is sent while stopping either.
    pub(super) fn next_send(&mut self, out: &mut BytesMut, view: &RelayView) -> Option<SendRange> {
        if self.done_sent || self.stopping_at.is_some() {
            return None;
        }
        let limit = self.limit(view);
        let from = self.send.sent();
        if from < limit {
            return Some(SendRange {
                timeline: self.file_timeline(from, view),
                from,
                limit,
            });
        }
        if self.historic.is_some() {
            reply::message(out, &BackendMessage::CopyDone);
            self.done_sent = true;
        }
        None
    }

    /// How far this stream may send: the durable end, or a historic timeline's end. When
    /// the relay moves to a newer timeline meanwhile, this one becomes historic.
    /// The timeline whose segment file holds `from`, as walsender chooses it
    /// (`XLogSendPhysical`): on a historic timeline, the segment it ends in is read from the
    /// next timeline's file, which holds the same WAL up to the switch point. The relay's copy
    /// of that segment on the old timeline may stop short of the switch point (it had received
    /// less than the server that was promoted), while the next timeline's file, which it
    /// stores again from that segment's start, holds all of it.
    fn file_timeline(&self, from: Lsn, view: &RelayView) -> TimelineId {
        match (self.historic, view.upstream.as_deref()) {
            (Some(h), Some(up))
                if up.segment_size.segment_of(from) == up.segment_size.segment_of(h.switch) =>
            {
                h.next
            }
            _ => self.timeline,
        }
    }

    fn limit(&mut self, view: &RelayView) -> Lsn {
        let end = view.durable;
        if self.historic.is_none()
            && let Some(current) = end.timeline.filter(|t| *t != self.timeline)
        {
            let stop_here = HistoricEnd {
                switch: self.send.sent(),
                next: current,
            };
            self.historic = historic_end(view, self.timeline, current)
                .ok()
                .flatten()
                .or(Some(stop_here));
        }
        match self.historic {
            Some(h) => h.switch,
            None => end.lsn,
        }
    }

    /// WAL up to `end` went out.
    pub(super) fn sent(&mut self, io: &mut Outbox, end: Lsn) {
        self.send.sent_to(end);
        self.progress(io);
    }

    /// The WAL could not be read: the stream ends with `error`, and command mode goes on.
    pub(super) fn fail(&self, io: &mut Outbox, error: &ErrorFields) -> Phase {
        io.act(Action::EndStream { slot: self.slot() });
        failed(io, error)
    }

    /// Pings and the sender timeout; the end of the wait at shutdown.
    pub(super) fn tick(mut self: Box<Self>, io: &mut Outbox, now: Now) -> Phase {
        if let Some(at) = self.stopping_at {
            if now.at >= at {
                return self.stopped(io);
            }
            return Phase::Streaming(self);
        }
        if self.send.client().timed_out(now.at) {
            info!("terminating walsender process due to replication timeout");
            return self.end(io, None);
        }
        if self.send.client().ping_due(now.at) {
            self.keepalive(&mut io.out, now, true);
            self.send.client().pinged();
        }
        Phase::Streaming(self)
    }

    /// The relay stops: ask the client to confirm what it was sent, and end once it has, or
    /// after `wait`.
    pub(super) fn shutdown(
        mut self: Box<Self>,
        io: &mut Outbox,
        now: Now,
        wait: Duration,
    ) -> Phase {
        if self.stopping_at.is_some() {
            return Phase::Streaming(self);
        }
        if self.done_sent {
            // Copy mode is over on this side; there is nothing left to confirm.
            return self.end(io, None);
        }
        self.keepalive(&mut io.out, now, true);
        self.stopping_at = Some(now.at + wait);
        if self.send.confirmed() {
            return self.stopped(io);
        }
        Phase::Streaming(self)
    }

    /// The stream ends at shutdown, as `WalSndDone` ends it: `COPY 0`, then close.
    fn stopped(&self, io: &mut Outbox) -> Phase {
        reply::complete(&mut io.out, "COPY 0");
        self.end(io, None)
    }

    /// Ends the stream and the connection, with a FATAL error if given.
    fn end(&self, io: &mut Outbox, fatal: Option<&ErrorFields>) -> Phase {
        io.act(Action::EndStream { slot: self.slot() });
        match fatal {
            Some(e) => io.fatal(e),
            None => io.close(),
        }
    }

    /// A keepalive carrying the end of what was sent.
    fn keepalive(&self, out: &mut BytesMut, now: Now, reply_requested: bool) {
        let k = self.send.keepalive(now.wall, reply_requested);
        // A keepalive is fixed-size and always encodes.
        let _ = ServerCopyData::Keepalive(k).write(out);
    }

    /// Reports where the stream is.
    fn progress(&self, io: &mut Outbox) {
        io.act(Action::Progress {
            sent: self.send.sent(),
            client: self.send.positions(),
        });
    }

    /// One message from the client.
    pub(super) fn frame(
        mut self: Box<Self>,
        io: &mut Outbox,
        frame: Frame,
        now: Now,
        view: &RelayView,
    ) -> Phase {
        self.send.on_client_message(now.at);
        let violation = |text: String| ErrorFields::fatal(SqlState::PROTOCOL_VIOLATION, text);
        let message = match FrontendMessage::parse(frame) {
            Ok(m) => m,
            Err(e) => return self.end(io, Some(&ErrorFields::fatal(e.sqlstate(), e.to_string()))),
        };
        let outcome = match message {
            FrontendMessage::CopyData(payload) => match ClientCopyData::parse(payload) {
                Ok(ClientCopyData::StatusUpdate(r)) => self.on_status(io, &r, now, view),
                Ok(ClientCopyData::HotStandbyFeedback(h)) => {
                    self.on_feedback(io, &h, view);
                    Ok(())
                }
                Err(e) => Err(violation(e.to_string())),
            },
            FrontendMessage::CopyDone => return self.client_done(io),
            FrontendMessage::Terminate => return self.end(io, None),
            other => {
                let tag = char::from(other.tag());
                Err(violation(format!("invalid standby message type \"{tag}\"")))
            }
        };
        match outcome {
            Err(e) => self.end(io, Some(&e)),
            Ok(()) if self.stopping_at.is_some() && self.send.confirmed() => self.stopped(io),
            Ok(()) => Phase::Streaming(self),
        }
    }

    /// A standby status update.
    fn on_status(
        &mut self,
        io: &mut Outbox,
        r: &crate::wire::StandbyStatusUpdate,
        now: Now,
        view: &RelayView,
    ) -> Result<(), ErrorFields> {
        let reported = r.write.max(r.flush);
        // A client may report up to where it asked to start, even when the relay has not
        // got that far yet: `pg_basebackup`'s WAL streamer and `pg_receivewal` report their
        // start position at once.
        let end = if reported > view.durable.lsn {
            held_end(view).max(self.send.sent())
        } else {
            view.durable.lsn
        };
        let reply = self
            .send
            .on_status(r, end, now.at)
            .map_err(|e| ErrorFields::fatal(SqlState::PROTOCOL_VIOLATION, e.to_string()))?;
        self.progress(io);
        if let (Some(slot), Some(flush)) = (&self.slot, reply.slot_flush) {
            io.act(Action::ConfirmFlush {
                slot: slot.clone(),
                flush,
            });
        }
        if reply.reply_requested {
            self.keepalive(&mut io.out, now, false);
        }
        Ok(())
    }

    /// Hot-standby feedback, unless it is not in the recent past of the upstream's ids: one
    /// client's impossible xmin must not become the minimum the relay reports, which the
    /// primary would then ignore for every standby.
    fn on_feedback(
        &mut self,
        io: &mut Outbox,
        h: &crate::wire::HotStandbyFeedback,
        view: &RelayView,
    ) {
        let horizon = XminHorizon {
            xmin: FullXid::new(h.xmin_epoch, h.xmin),
            catalog_xmin: FullXid::new(h.catalog_xmin_epoch, h.catalog_xmin),
        };
        if let Some(next) = view.next_xid
            && !horizon.near(next)
        {
            // The standby's queries lose the protection it asked for: worth one warning.
            if self.feedback_ignored {
                debug!(xmin = ?horizon.xmin, next, "ignoring feedback not in the recent past");
            } else {
                warn!(
                    xmin = ?horizon.xmin,
                    catalog_xmin = ?horizon.catalog_xmin,
                    next_xid = next,
                    "ignoring hot standby feedback: its xmin is not in the recent past of the \
                     upstream's next transaction id (logged once per stream)"
                );
                self.feedback_ignored = true;
            }
            return;
        }
        debug!(xmin = ?horizon.xmin, "hot standby feedback");
        io.act(Action::Feedback {
            slot: self.slot(),
            horizon,
        });
    }

    /// The client's CopyDone: after a historic timeline's end, the next timeline; otherwise
    /// the client ended the stream.
    fn client_done(&self, io: &mut Outbox) -> Phase {
        if self.stopping_at.is_some() {
            return self.stopped(io);
        }
        io.act(Action::EndStream { slot: self.slot() });
        match self.historic.filter(|_| self.done_sent) {
            Some(h) => next_timeline_result(&mut io.out, h),
            None => {
                reply::message(&mut io.out, &BackendMessage::CopyDone);
                reply::complete(&mut io.out, "START_STREAMING");
            }
        }
        reply::complete(&mut io.out, "START_REPLICATION");
        ready(io)
    }
}
