//! The relay as a client of its upstream server, as a state machine without I/O: what a
//! walreceiver and `pg_receivewal` do with every message the server sends.
//!
//! - Login (`fe-connect.c`, `fe-auth.c`): authentication requests go to [`ClientAuth`]; then
//!   ParameterStatus, BackendKeyData and notices until ReadyForQuery, at most
//!   [`MAX_STARTUP_MESSAGES`] of them. An ErrorResponse refuses the login.
//! - Commands (`libpqwalreceiver.c`): a simple Query, answered up to ReadyForQuery as a
//!   [`QueryResult`] (capped in rows and bytes) or the server's error; at most
//!   [`MAX_NOTICES`] notices per command.
//! - `START_REPLICATION`: CopyBothResponse starts the stream; an ErrorResponse or a result set
//!   instead ends the timeline at once (a timeline that ends where streaming would start).
//!   While streaming, CopyData goes through the [`ReceiveStream`]; CopyDone ends the timeline
//!   (the caller answers with [`UpstreamSession::end_timeline`], and the next timeline's
//!   result follows); CommandComplete ends the stream (the server shuts down); an
//!   ErrorResponse ends it with the server's error.
//!
//! The caller reads frames of at most [`UpstreamSession::frame_limit`] bytes, feeds them to
//! [`UpstreamSession::message`] and sends [`UpstreamSession::take_output`].

pub mod receive;
pub mod target;

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tracing::info;

use crate::proto::auth::{AuthAction, AuthError, AuthRequest, ClientAuth};
use crate::proto::query::{EndOfTimeline, QueryResult, ResultError};
use crate::proto::syncrep::SyncAck;
use crate::types::{Lsn, PgTimestamp, TimelineId, XminHorizon, server_version_num};
use crate::wire::frame::{AUTH_FRAME_LIMIT, BACKEND_FRAME_LIMIT};
use crate::wire::frontend::FrontendMessage;
use crate::wire::replication::{ClientCopyData, HotStandbyFeedback};
use crate::wire::{BackendMessage, ErrorFields, Frame, StartupMessage, StartupPacket, WireError};

pub use receive::{Inbound, ReceiveStream, StreamError, StreamTiming};

/// Most ParameterStatus and NoticeResponse messages accepted before ReadyForQuery.
pub const MAX_STARTUP_MESSAGES: usize = 1000;

/// Most NoticeResponses accepted during one command before the server is taken as hostile.
pub const MAX_NOTICES: usize = 100;

/// What the server told about itself during the login.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// `server_version` as reported, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub server_version: String,
    /// The same as a number, like libpq's `PQserverVersion` (150018).
    pub version_num: u32,
    /// The backend pid from BackendKeyData.
    pub backend_pid: i32,
    /// The secret key from BackendKeyData, for a CancelRequest.
    pub cancel_key: CancelKey,
    /// `default_transaction_read_only`, if reported (PostgreSQL 14 and later).
    pub default_read_only: Option<bool>,
    /// `in_hot_standby`, if reported (PostgreSQL 14 and later).
    pub in_hot_standby: Option<bool>,
}

/// The secret of BackendKeyData: what a CancelRequest must carry. Never printed.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct CancelKey(pub i32);

impl std::fmt::Debug for CancelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CancelKey(..)")
    }
}

/// Why the session with the upstream cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Authentication failed on the relay's side.
    #[error("authentication failed: {0}")]
    Auth(#[from] AuthError),
    /// A malformed message.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The server answered with an error.
    #[error("server error: {0}")]
    Server(ErrorFields),
    /// The server broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A command's result is malformed.
    #[error(transparent)]
    Result(#[from] ResultError),
    /// The replication stream broke its rules.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The upstream ended the stream, as a walsender does when its server shuts down
    /// (`CommandComplete "COPY 0"` while in copy mode).
    #[error("the upstream ended the stream ({0}); it is probably shutting down")]
    StreamEnded(String),
}

impl SessionError {
    /// The SQLSTATE of the server's error, if the server sent one.
    pub fn server_sqlstate(&self) -> Option<&crate::types::SqlState> {
        match self {
            SessionError::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// What a message from the server means for the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing to do but read on (send the output first, if any).
    Continue,
    /// The login is complete; commands may be sent.
    Ready(ServerInfo),
    /// A command's complete result.
    Result(QueryResult),
    /// `START_REPLICATION` entered copy mode.
    Streaming,
    /// The timeline ended before copy mode (the server answered with the next timeline at
    /// once); the session is idle again.
    TimelineEnded(EndOfTimeline),
    /// WAL to check and store, starting exactly where the stream stands.
    Wal {
        /// The LSN of the first byte.
        start: Lsn,
        /// The bytes.
        data: Bytes,
    },
    /// The server wants a status update now.
    ReplyRequested,
    /// The server ended the timeline with CopyDone; answer with
    /// [`UpstreamSession::end_timeline`] once what was received is stored.
    TimelineDone,
}

/// Where the session is.
#[derive(Debug)]
enum Phase {
    Authenticating,
    Starting { messages: usize },
    Idle,
    Query(Box<Answer>),
    StartingStream { timeline: TimelineId, start: Lsn },
    Streaming { timeline: TimelineId },
    EndingTimeline { timeline: TimelineId, stop: Lsn },
    Done,
}

/// A command's answer as it arrives.
#[derive(Debug, Default)]
struct Answer {
    result: QueryResult,
    error: Option<ErrorFields>,
    notices: usize,
    /// Whether this answer ends a timeline (and which, and where streaming stopped).
    ends_timeline: Option<(TimelineId, Lsn)>,
}

/// The relay's session with its upstream.
pub struct UpstreamSession {
    phase: Phase,
    auth: ClientAuth,
    server: ServerInfo,
    stream: Option<ReceiveStream>,
    synchronous: SyncAck,
    out: BytesMut,
}

impl std::fmt::Debug for UpstreamSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSession")
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl UpstreamSession {
    /// A session that logs in as a replication client with `params` (user, application
    /// name, options), authenticating through `auth`. The StartupMessage is in the output.
    ///
    /// # Errors
    /// A parameter that cannot be encoded (a NUL byte).
    pub fn new(params: Vec<(String, String)>, auth: ClientAuth) -> Result<Self, WireError> {
        let mut out = BytesMut::new();
        StartupPacket::Startup(StartupMessage {
            minor_version: 0,
            params,
        })
        .write(&mut out)?;
        Ok(UpstreamSession {
            phase: Phase::Authenticating,
            auth,
            server: ServerInfo::default(),
            stream: None,
            synchronous: SyncAck::Off,
            out,
        })
    }

    /// The bytes to send, taken out of the session.
    pub fn take_output(&mut self) -> BytesMut {
        self.out.split()
    }

    /// The longest message to accept now: short during the login, up to an XLogData after.
    pub fn frame_limit(&self) -> usize {
        match self.phase {
            Phase::Authenticating | Phase::Starting { .. } => AUTH_FRAME_LIMIT,
            _ => BACKEND_FRAME_LIMIT,
        }
    }

    /// Whether the login completed with SCRAM-SHA-256-PLUS.
    pub fn channel_bound(&self) -> bool {
        self.auth.channel_bound()
    }

    /// The stream, while one runs.
    pub fn stream(&mut self) -> Option<&mut ReceiveStream> {
        self.stream.as_mut()
    }

    /// Sends a replication command; its answer comes as [`Event::Result`].
    ///
    /// # Errors
    /// A command with a NUL byte, or a session that is not idle.
    pub fn query(&mut self, sql: &str) -> Result<(), SessionError> {
        self.expect_idle("a command")?;
        FrontendMessage::Query(sql.to_owned()).write(&mut self.out)?;
        self.phase = Phase::Query(Box::default());
        Ok(())
    }

    /// Sends `START_REPLICATION [SLOT slot] PHYSICAL start TIMELINE timeline`.
    ///
    /// # Errors
    /// As [`Self::query`].
    pub fn start_replication(
        &mut self,
        slot: Option<&str>,
        timeline: TimelineId,
        start: Lsn,
        timing: StreamTiming,
        now: Instant,
    ) -> Result<(), SessionError> {
        let slot = slot.map(|s| format!("SLOT \"{s}\" ")).unwrap_or_default();
        let sql = format!("START_REPLICATION {slot}PHYSICAL {start} TIMELINE {timeline}");
        self.query(&sql)?;
        self.phase = Phase::StartingStream { timeline, start };
        let mut rs = ReceiveStream::new(start, timing, now);
        rs.set_synchronous(self.synchronous);
        self.stream = Some(rs);
        Ok(())
    }

    /// What the synchronous standbys allow the status updates to acknowledge, from now on
    /// (see [`ReceiveStream::set_synchronous`]).
    pub fn set_synchronous(&mut self, ack: SyncAck) {
        self.synchronous = ack;
        if let Some(rs) = self.stream.as_mut() {
            rs.set_synchronous(ack);
        }
    }

    /// While streaming: a status update with the positions given, if one is due (or a ping,
    /// if the server has been silent for half the receive timeout).
    ///
    /// # Errors
    /// [`StreamError::Timeout`] once the server has been silent for the whole timeout.
    pub fn keep_alive(
        &mut self,
        written: Lsn,
        durable: Lsn,
        now: Instant,
        wall: PgTimestamp,
    ) -> Result<(), SessionError> {
        let Some(rs) = self.stream.as_mut() else {
            return Ok(());
        };
        rs.check_timeout(now)?;
        rs.set_positions(written, durable);
        if rs.ping_due(now) {
            ClientCopyData::StatusUpdate(rs.ping(now, wall)).write(&mut self.out);
        } else if rs.status_due(now) {
            ClientCopyData::StatusUpdate(rs.status(now, wall)).write(&mut self.out);
        }
        Ok(())
    }

    /// While streaming: a status update now, with the positions given.
    pub fn report(&mut self, written: Lsn, durable: Lsn, now: Instant, wall: PgTimestamp) {
        if let Some(rs) = self.stream.as_mut() {
            rs.set_positions(written, durable);
            ClientCopyData::StatusUpdate(rs.status(now, wall)).write(&mut self.out);
        }
    }

    /// While streaming: hot-standby feedback holding `horizon` (0/0 releases).
    pub fn feedback(&mut self, horizon: XminHorizon, wall: PgTimestamp) {
        let part = |x: Option<crate::types::FullXid>| x.map_or((0, 0), |x| (x.xid(), x.epoch()));
        let (xmin, xmin_epoch) = part(horizon.xmin);
        let (catalog_xmin, catalog_xmin_epoch) = part(horizon.catalog_xmin);
        ClientCopyData::HotStandbyFeedback(HotStandbyFeedback {
            send_time: wall,
            xmin,
            xmin_epoch,
            catalog_xmin,
            catalog_xmin_epoch,
        })
        .write(&mut self.out);
    }

    /// After [`Event::TimelineDone`]: a last status update with the positions given, and
    /// CopyDone; the next timeline's result follows as [`Event::TimelineEnded`].
    pub fn end_timeline(&mut self, written: Lsn, durable: Lsn, now: Instant, wall: PgTimestamp) {
        if let Phase::Streaming { timeline } = self.phase {
            self.report(written, durable, now, wall);
            let _ = FrontendMessage::CopyDone.write(&mut self.out);
            let stop = self.stream.take().map_or(Lsn::INVALID, |rs| rs.next());
            self.phase = Phase::EndingTimeline { timeline, stop };
        }
    }

    /// Ends the session: a last status update if streaming, then Terminate.
    pub fn terminate(&mut self, written: Lsn, durable: Lsn, now: Instant, wall: PgTimestamp) {
        self.report(written, durable, now, wall);
        let _ = FrontendMessage::Terminate.write(&mut self.out);
        self.phase = Phase::Done;
    }

    /// Ends an idle session: Terminate, as libpq closes a connection it does not keep.
    pub fn leave(&mut self) {
        let _ = FrontendMessage::Terminate.write(&mut self.out);
        self.phase = Phase::Done;
    }

    /// Takes one message from the server.
    ///
    /// # Errors
    /// What ends the session: see [`SessionError`].
    pub fn message(&mut self, frame: Frame, now: Instant) -> Result<Event, SessionError> {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Authenticating => self.authenticating(frame),
            Phase::Starting { messages } => self.starting(frame, messages),
            Phase::Query(answer) => self.answer(*answer, BackendMessage::parse(frame)?),
            Phase::StartingStream { timeline, start } => {
                self.starting_stream(timeline, start, BackendMessage::parse(frame)?)
            }
            Phase::Streaming { timeline } => self.streaming(timeline, frame, now),
            Phase::EndingTimeline { timeline, stop } => {
                let answer = Answer {
                    ends_timeline: Some((timeline, stop)),
                    ..Answer::default()
                };
                self.answer(answer, BackendMessage::parse(frame)?)
            }
            phase @ (Phase::Idle | Phase::Done) => {
                self.phase = phase;
                let tag = char::from(frame.tag);
                Err(SessionError::Protocol(format!(
                    "unexpected message type '{tag}' while idle"
                )))
            }
        }
    }

    fn authenticating(&mut self, frame: Frame) -> Result<Event, SessionError> {
        if frame.tag == b'R' {
            match self.auth.handle(AuthRequest::parse(&frame.body)?)? {
                AuthAction::Send(response) => response.encode(&mut self.out)?,
                AuthAction::Wait => {}
                AuthAction::Authenticated => {
                    self.phase = Phase::Starting { messages: 0 };
                    return Ok(Event::Continue);
                }
            }
            self.phase = Phase::Authenticating;
            return Ok(Event::Continue);
        }
        match BackendMessage::parse(frame)? {
            BackendMessage::ErrorResponse(e) => Err(SessionError::Server(e)),
            BackendMessage::NoticeResponse(_) => {
                self.phase = Phase::Authenticating;
                Ok(Event::Continue)
            }
            other => Err(unexpected(
                &other,
                "expected authentication request, got message type",
                "",
            )),
        }
    }

    fn starting(&mut self, frame: Frame, messages: usize) -> Result<Event, SessionError> {
        if messages >= MAX_STARTUP_MESSAGES {
            return Err(SessionError::Protocol(
                "too many messages before ReadyForQuery".into(),
            ));
        }
        match BackendMessage::parse(frame)? {
            BackendMessage::ParameterStatus { name, value } => match name.as_str() {
                "server_version" => {
                    self.server.version_num = server_version_num(&value);
                    self.server.server_version = value;
                }
                "default_transaction_read_only" => {
                    self.server.default_read_only = Some(value == "on");
                }
                "in_hot_standby" => self.server.in_hot_standby = Some(value == "on"),
                _ => {}
            },
            BackendMessage::BackendKeyData {
                process_id,
                secret_key,
            } => {
                self.server.backend_pid = process_id;
                self.server.cancel_key = CancelKey(secret_key);
            }
            BackendMessage::NoticeResponse(_) => {}
            BackendMessage::ErrorResponse(e) => return Err(SessionError::Server(e)),
            BackendMessage::ReadyForQuery(_) => {
                self.phase = Phase::Idle;
                return Ok(Event::Ready(self.server.clone()));
            }
            other => {
                return Err(unexpected(
                    &other,
                    "unexpected message type",
                    "before ReadyForQuery",
                ));
            }
        }
        self.phase = Phase::Starting {
            messages: messages + 1,
        };
        Ok(Event::Continue)
    }

    /// One message of a command's answer, up to ReadyForQuery.
    fn answer(&mut self, mut a: Answer, msg: BackendMessage) -> Result<Event, SessionError> {
        match msg {
            BackendMessage::RowDescription(fields) => a
                .result
                .on_row_description(fields.into_iter().map(|f| (f.name, f.type_oid)).collect()),
            BackendMessage::DataRow(row) => a.result.on_data_row(row)?,
            BackendMessage::CommandComplete(tag) => a.result.on_command_complete(tag),
            BackendMessage::EmptyQueryResponse | BackendMessage::ParameterStatus { .. } => {}
            BackendMessage::ErrorResponse(e) => a.error = Some(e),
            BackendMessage::NoticeResponse(n) => {
                a.notices += 1;
                if a.notices > MAX_NOTICES {
                    return Err(SessionError::Protocol(
                        "too many notices from server".into(),
                    ));
                }
                info!(notice = %n, "upstream notice");
            }
            BackendMessage::ReadyForQuery(_) => {
                self.phase = Phase::Idle;
                if let Some(e) = a.error {
                    return Err(SessionError::Server(e));
                }
                return Ok(match a.ends_timeline {
                    Some((tli, stop)) => {
                        Event::TimelineEnded(EndOfTimeline::from_result(&a.result, tli, stop)?)
                    }
                    None => Event::Result(a.result),
                });
            }
            other => {
                return Err(unexpected(
                    &other,
                    "unexpected message type",
                    "in command response",
                ));
            }
        }
        self.phase = Phase::Query(Box::new(a));
        Ok(Event::Continue)
    }

    /// The first answer to `START_REPLICATION`.
    fn starting_stream(
        &mut self,
        timeline: TimelineId,
        start: Lsn,
        msg: BackendMessage,
    ) -> Result<Event, SessionError> {
        match msg {
            BackendMessage::CopyBothResponse(_) => {
                info!(%timeline, %start, "streaming");
                self.phase = Phase::Streaming { timeline };
                Ok(Event::Streaming)
            }
            first @ (BackendMessage::ErrorResponse(_) | BackendMessage::RowDescription(_)) => {
                // An error, or a timeline that ends exactly where streaming would start: the
                // server skips copy mode and sends the next timeline at once.
                self.stream = None;
                let answer = Answer {
                    ends_timeline: Some((timeline, start)),
                    ..Answer::default()
                };
                self.answer(answer, first)
            }
            other => Err(unexpected(
                &other,
                "expected CopyBothResponse, got message type",
                "",
            )),
        }
    }

    /// One message while streaming.
    fn streaming(
        &mut self,
        timeline: TimelineId,
        frame: Frame,
        now: Instant,
    ) -> Result<Event, SessionError> {
        let event = match BackendMessage::parse(frame)? {
            BackendMessage::CopyData(payload) => {
                let rs = self
                    .stream
                    .as_mut()
                    .ok_or_else(|| SessionError::Protocol("CopyData without a stream".into()))?;
                match rs.on_copy_data(payload, now)? {
                    Inbound::Wal { start, data } => Event::Wal { start, data },
                    Inbound::ReplyRequested => Event::ReplyRequested,
                    Inbound::Nothing => Event::Continue,
                }
            }
            BackendMessage::CopyDone => Event::TimelineDone,
            BackendMessage::ErrorResponse(e) => return Err(SessionError::Server(e)),
            BackendMessage::CommandComplete(tag) => return Err(SessionError::StreamEnded(tag)),
            BackendMessage::NoticeResponse(n) => {
                info!(notice = %n, "upstream notice");
                Event::Continue
            }
            // Allowed at any time (12 and 13 send them on every reload); nothing the relay
            // reports changes with them.
            BackendMessage::ParameterStatus { .. } => Event::Continue,
            other => {
                return Err(unexpected(
                    &other,
                    "unexpected message type",
                    "during streaming",
                ));
            }
        };
        self.phase = Phase::Streaming { timeline };
        Ok(event)
    }

    fn expect_idle(&self, what: &str) -> Result<(), SessionError> {
        match self.phase {
            Phase::Idle => Ok(()),
            _ => Err(SessionError::Protocol(format!(
                "cannot send {what} while the session is busy"
            ))),
        }
    }
}

/// A message that has no place here.
fn unexpected(msg: &BackendMessage, before: &str, after: &str) -> SessionError {
    let tag = char::from(msg.tag());
    let text = if after.is_empty() {
        format!("{before} '{tag}'")
    } else {
        format!("{before} '{tag}' {after}")
    };
    SessionError::Protocol(text)
}

#[cfg(test)]
mod tests;
