//! One downstream connection as a physical walsender serves it, as a state machine without
//! I/O: first packets and login, command mode, and the streaming phase of
//! `START_REPLICATION`.
//!
//! The caller owns the socket and the clock. It feeds the session what arrives (a first
//! packet, a frame, or a read error), the time, and a [`RelayView`] of the relay; the session
//! answers by appending backend messages to its output ([`DownstreamSession::take_output`])
//! and by queueing [`Action`]s for what it cannot do itself: take a connection place, read,
//! create, drop or acquire a slot, register a stream and its progress, close. An action that
//! has an answer is answered through the matching method ([`DownstreamSession::claimed`],
//! [`DownstreamSession::slot_read`], [`DownstreamSession::slot_done`],
//! [`DownstreamSession::tls_started`]) before anything else is fed. While streaming, [`DownstreamSession::next_send`] says which WAL to send and
//! [`DownstreamSession::sent`] records that it went out; [`DownstreamSession::deadline`] says
//! when to call [`DownstreamSession::tick`].
//!
//! - [`startup`]: SSLRequest (and TLS), GSSENCRequest, CancelRequest, the StartupMessage
//!   checks, the connection limit and the greeting (`postmaster.c`, `postinit.c`);
//! - [`authenticate`]: the access rules and the authentication exchanges (`auth.c`);
//! - [`command`]: the replication commands, answered as `walsender.c` answers them;
//! - [`backup`]: a BASE_BACKUP relayed from the upstream: its place, its end;
//! - [`streaming`]: `START_REPLICATION`, client messages while streaming, keepalives, the end
//!   of a historic timeline, and the end of the stream at shutdown (`WalSndLoop`,
//!   `ProcessRepliesIfAny`, `WalSndDone`);
//! - [`send`]: the position and silence bookkeeping of one stream;
//! - `reply`: encoding answers into the output.

pub mod authenticate;
pub mod backup;
pub mod command;
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
mod reply;
pub mod send;
pub mod startup;
pub mod streaming;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tracing::info;

use crate::types::{
    BackendPid, DurableEnd, Lsn, PgTimestamp, SlotName, SqlState, TimelineId, UpstreamInfo,
    XminHorizon,
};
use crate::wire::frame::{COMMAND_FRAME_LIMIT, MAX_STARTUP_PACKET_LEN, SMALL_FRAME_LIMIT};
use crate::wire::{ErrorFields, Frame, StartupMessage, StartupPacket, WireError};

pub use authenticate::{AccessPolicy, Authenticated, Peer};
pub use backup::{BackupEnd, check_backup_upstream};
pub use send::{AheadOfServer, ClientPositions, Reply, SendStream};

use crate::proto::auth::server::SERVER_NONCE_LEN;

use startup::Startup;
use streaming::Streaming;

/// What the session needs to know of the relay when it decides: cheap to build, owned.
#[derive(Debug, Clone, Default)]
pub struct RelayView {
    /// The upstream's identity; `None` until the relay has reached it once.
    pub upstream: Option<Arc<UpstreamInfo>>,
    /// How far the relay's WAL is durable, on which timeline.
    pub durable: DurableEnd,
    /// The timeline history files the relay holds, by timeline.
    pub histories: Arc<BTreeMap<TimelineId, Bytes>>,
    /// The upstream's next transaction id as of the last checkpoint record stored, epoch and
    /// xid as one value; `None` before one was seen.
    pub next_xid: Option<u64>,
    /// The redo point of the last checkpoint record stored: where a base backup taken now
    /// would start; `None` before one was seen.
    pub last_redo: Option<Lsn>,
}

impl RelayView {
    /// The relay's current timeline (1 before anything is stored).
    pub fn timeline(&self) -> TimelineId {
        self.durable.timeline.unwrap_or(TimelineId::ONE)
    }

    /// `tliOfPointInHistory`: the timeline that wrote `lsn`, by the current timeline's
    /// history (the current timeline when it has none, or it does not parse).
    pub fn timeline_of(&self, lsn: Lsn) -> TimelineId {
        let current = self.timeline();
        self.histories
            .get(&current)
            .and_then(|bytes| crate::wal::TimelineHistory::parse(current, bytes).ok())
            .map_or(current, |h| h.timeline_of(lsn))
    }
}

/// The limits of the downstream side that shape a session's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// `max_wal_senders`, named in the error for a connection beyond it.
    pub max_wal_senders: usize,
    /// Most BASE_BACKUPs relayed at once; 0 refuses BASE_BACKUP.
    pub max_base_backups: usize,
    /// Drop a streaming client silent this long (`wal_sender_timeout`); zero disables.
    pub sender_timeout: Duration,
    /// How long a stream waits at shutdown for its client to confirm what it was sent.
    pub shutdown_wait: Duration,
    /// Whether the port has a certificate: SSLRequest is answered `S` and a TLS ClientHello
    /// is taken.
    pub tls: bool,
}

/// What the handshake established, as [`DownstreamSession::tls_started`] reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSession {
    /// The `tls-server-end-point` hash of the server's certificate, for SCRAM-SHA-256-PLUS;
    /// `None` when its signature algorithm has none.
    pub certificate_hash: Option<Vec<u8>>,
    /// The client's certificate, verified against the CA file, if it sent one: its subject's
    /// common name, if it has one.
    pub client_certificate: Option<Option<String>>,
}

/// The time, twice: a monotonic instant for timers, the wall clock for message timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// For timeouts.
    pub at: Instant,
    /// For `sendTime` fields.
    pub wall: PgTimestamp,
}

/// Who is connected, once the login succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// The user name from the StartupMessage.
    pub user: String,
    /// The application name, made printable.
    pub application_name: String,
    /// The pid reported in BackendKeyData; it names temporary slots.
    pub pid: BackendPid,
    /// How the user authenticated.
    pub how: Authenticated,
}

/// A place among `max_wal_senders`, as [`Action::ClaimSender`] is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderClaim {
    /// The connection's pid.
    pub pid: BackendPid,
    /// The secret of its BackendKeyData.
    pub cancel_key: i32,
}

/// A slot as `READ_REPLICATION_SLOT` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoundSlot {
    /// The oldest WAL it holds; `None` for none.
    pub restart_lsn: Option<Lsn>,
}

/// A stream that starts, for the relay's list of streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStart {
    /// The slot it streams from, if any.
    pub slot: Option<SlotName>,
    /// The timeline it streams.
    pub timeline: TimelineId,
    /// The first byte it sends.
    pub start: Lsn,
}

/// What the session asks its caller to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Take one of `max_wal_senders`; answer with [`DownstreamSession::claimed`].
    ClaimSender,
    /// Look a slot up; answer with [`DownstreamSession::slot_read`].
    ReadSlot(SlotName),
    /// Create a slot, durably if persistent; answer with [`DownstreamSession::slot_done`].
    CreateSlot {
        /// Its name.
        name: SlotName,
        /// Bound to this connection and never written to disk.
        temporary: bool,
        /// `RESERVE_WAL`: the restart position.
        reserve: Option<Lsn>,
    },
    /// Drop a slot, durably; with `wait`, wait while another connection holds it. Answer with
    /// [`DownstreamSession::slot_done`].
    DropSlot {
        /// Its name, as given (a bad one is simply not found).
        name: String,
        /// `WAIT`.
        wait: bool,
    },
    /// Acquire a slot for this connection's stream; answer with
    /// [`DownstreamSession::slot_done`].
    AcquireSlot(String),
    /// A stream starts: count its cursor and show it.
    BeginStream(StreamStart),
    /// How far the stream is sent and what its client last reported.
    Progress {
        /// The end of what was sent.
        sent: Lsn,
        /// The client's last report.
        client: ClientPositions,
    },
    /// Move the slot to the client's flush position, clamped to what was sent.
    ConfirmFlush {
        /// The slot.
        slot: String,
        /// Its new `restart_lsn`.
        flush: Lsn,
    },
    /// The client's hot-standby feedback, for the relay's own and for the slot's.
    Feedback {
        /// The slot, if the stream has one.
        slot: Option<String>,
        /// The xmin and catalog xmin it holds; none releases.
        horizon: XminHorizon,
    },
    /// The stream (or the START_REPLICATION that acquired `slot`) ended: forget its cursor and
    /// feedback, release the slot.
    EndStream {
        /// The slot it had acquired.
        slot: Option<String>,
    },
    /// Send what is in the output (an SSLRequest's `S`), then run the TLS handshake as the
    /// server; `direct` when the client opened with a ClientHello. Answer with
    /// [`DownstreamSession::tls_started`], or close the connection when it fails.
    StartTls {
        /// No SSLRequest came first: ALPN `postgresql` is required.
        direct: bool,
    },
    /// Take one of `max_base_backups`; answer with [`DownstreamSession::backup_claimed`].
    ClaimBackup,
    /// Send what is in the output, then relay a BASE_BACKUP: send `query` upstream on a
    /// connection of its own and forward the answer up to its ReadyForQuery; answer with
    /// [`DownstreamSession::backup_ended`].
    StartBackup {
        /// The client's Query text, unchanged.
        query: String,
        /// What the checked options ask for.
        request: crate::wire::command::BackupRequest,
    },
    /// A CancelRequest: interrupt what the connection this BackendKeyData names runs (a
    /// relayed BASE_BACKUP is cancelled upstream; anything else has nothing to cancel). No
    /// answer; the session closes next.
    Cancel {
        /// The pid of the connection to interrupt.
        pid: BackendPid,
        /// The secret key it must have been given.
        secret_key: i32,
    },
    /// Send what is in the output, then close the connection.
    Close,
}

/// A login that passed its checks: it authenticates, then waits for its place among
/// `max_wal_senders`.
#[derive(Debug)]
struct PendingLogin {
    user: String,
    application_name: String,
    startup: StartupMessage,
    how: Option<Authenticated>,
}

impl PendingLogin {
    /// The user name of the StartupMessage.
    pub(super) fn user(&self) -> &str {
        &self.user
    }

    /// The login, authenticated as `how`.
    pub(super) fn authenticated(self, how: Authenticated) -> PendingLogin {
        PendingLogin {
            how: Some(how),
            ..self
        }
    }
}

/// An action whose answer the session waits for.
#[derive(Debug)]
enum Pending {
    /// A login waits for its place.
    Claim(Box<PendingLogin>),
    /// `READ_REPLICATION_SLOT`.
    ReadSlot,
    /// `ALTER_REPLICATION_SLOT`: the slot is looked up.
    AlterSlot(SlotName),
    /// `CREATE_REPLICATION_SLOT`.
    CreateSlot(SlotName),
    /// `DROP_REPLICATION_SLOT`.
    DropSlot,
    /// `START_REPLICATION SLOT`: the slot is being acquired.
    Acquire(Box<streaming::Checked>),
    /// The TLS handshake runs.
    Tls(Box<Startup>),
    /// A BASE_BACKUP waits for its place: its Query text and request.
    Backup(Box<(String, crate::wire::command::BackupRequest)>),
}

/// What the caller should read next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A first packet of at most this many bytes.
    StartupPacket(usize),
    /// A typed message of at most this many bytes.
    Frame(usize),
    /// Nothing: an action awaits its answer, or the session is over.
    Nothing,
}

/// Where the session is.
#[derive(Debug)]
enum Phase {
    /// Before the StartupMessage is accepted.
    Startup(Startup),
    /// Between commands.
    Command,
    /// An action must be answered before the session goes on.
    Waiting(Pending),
    /// An authentication exchange waits for the client.
    Authenticating(Box<authenticate::Exchange>),
    /// `START_REPLICATION` is streaming.
    Streaming(Box<Streaming>),
    /// The caller relays a BASE_BACKUP's answer.
    BaseBackup,
    /// The connection is to be closed.
    Closed,
}

/// What the session has for its caller: bytes to send and actions to take.
#[derive(Debug, Default)]
struct Outbox {
    out: BytesMut,
    actions: VecDeque<Action>,
    /// The SQLSTATE of the error the session closed with, if it did.
    closed_with: Option<SqlState>,
}

impl Outbox {
    /// Queues an action.
    fn act(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    /// Sends `e` and closes: the one way a session ends with an error.
    fn fatal(&mut self, e: &ErrorFields) -> Phase {
        // The message may quote what the client sent: logged printable only.
        let error = reply::printable(&e.message);
        info!(sqlstate = %e.code, %error, "closing connection");
        self.refuse(e)
    }

    /// Sends `e` and closes, for a refusal its caller has logged.
    fn refuse(&mut self, e: &ErrorFields) -> Phase {
        reply::error(&mut self.out, e);
        self.closed_with = Some(e.code.clone());
        self.close()
    }

    /// Closes after what is in the output.
    fn close(&mut self) -> Phase {
        self.act(Action::Close);
        Phase::Closed
    }
}

/// One downstream connection.
#[derive(Debug)]
pub struct DownstreamSession {
    config: SessionConfig,
    peer: Peer,
    policy: Arc<AccessPolicy>,
    nonce: [u8; SERVER_NONCE_LEN],
    phase: Phase,
    login: Option<Login>,
    io: Outbox,
}

impl DownstreamSession {
    /// A session for a client connecting from `peer`, let in by `policy`; `nonce` is fresh
    /// random bytes for its authentication exchange (SCRAM's server nonce, MD5's salt).
    pub fn new(
        config: SessionConfig,
        peer: Peer,
        policy: Arc<AccessPolicy>,
        nonce: [u8; SERVER_NONCE_LEN],
    ) -> DownstreamSession {
        DownstreamSession {
            config,
            peer,
            policy,
            nonce,
            phase: Phase::Startup(Startup::default()),
            login: None,
            io: Outbox::default(),
        }
    }

    /// What to read next, with the length cap of the phase.
    pub fn expects(&self) -> Expect {
        match &self.phase {
            Phase::Startup(_) => Expect::StartupPacket(MAX_STARTUP_PACKET_LEN),
            Phase::Authenticating(a) => Expect::Frame(a.frame_limit()),
            Phase::Command => Expect::Frame(COMMAND_FRAME_LIMIT),
            Phase::Streaming(_) => Expect::Frame(SMALL_FRAME_LIMIT),
            Phase::Waiting(_) | Phase::BaseBackup | Phase::Closed => Expect::Nothing,
        }
    }

    /// The SQLSTATE of the error the session closed the connection with, if it did.
    pub fn closed_with(&self) -> Option<&SqlState> {
        self.io.closed_with.as_ref()
    }

    /// Where the client connects from.
    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// The login, once the client has logged in.
    pub fn login(&self) -> Option<&Login> {
        self.login.as_ref()
    }

    /// Whether `START_REPLICATION` is streaming (or ending its stream).
    pub fn is_streaming(&self) -> bool {
        matches!(self.phase, Phase::Streaming(_))
    }

    /// Whether a BASE_BACKUP is being relayed.
    pub fn is_backing_up(&self) -> bool {
        matches!(self.phase, Phase::BaseBackup)
    }

    /// Whether the connection is to be closed.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The bytes to send, taken out of the session.
    pub fn take_output(&mut self) -> BytesMut {
        self.io.out.split()
    }

    /// Whether there are bytes to send.
    pub fn has_output(&self) -> bool {
        !self.io.out.is_empty()
    }

    /// The next thing to do, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.io.actions.pop_front()
    }

    /// When to call [`Self::tick`] even if nothing arrives.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Streaming(s) => s.deadline(),
            _ => None,
        }
    }

    /// Takes a first packet, or the error reading it; `buffered` says whether more bytes came
    /// after it before the answer (bytes a client must not send after an SSLRequest).
    pub fn startup_packet(
        &mut self,
        packet: Result<StartupPacket, WireError>,
        buffered: bool,
        view: &RelayView,
    ) {
        self.phase = match self.take_phase() {
            Phase::Startup(s) => {
                let client = authenticate::Client {
                    peer: self.peer,
                    tls: None,
                    policy: &self.policy,
                    nonce: self.nonce,
                };
                s.packet(&mut self.io, &self.config, client, packet, buffered, view)
            }
            other => self.out_of_order(other, "a first packet"),
        };
    }

    /// The first bytes are a TLS record (a ClientHello), not a packet length: PostgreSQL 17's
    /// direct TLS. With a certificate, [`Action::StartTls`] follows; without one, the close.
    pub fn direct_tls(&mut self) {
        self.phase = match self.take_phase() {
            Phase::Startup(s) => s.direct_tls(&mut self.io, &self.config),
            other => self.out_of_order(other, "a TLS handshake"),
        };
    }

    /// Answers [`Action::StartTls`]: the handshake succeeded, and first packets go on over it.
    pub fn tls_started(&mut self, tls: TlsSession) {
        self.phase = match self.take_phase() {
            Phase::Waiting(Pending::Tls(s)) => s.tls_started(tls),
            other => self.out_of_order(other, "a TLS session"),
        };
    }

    /// Answers [`Action::ClaimSender`]: a place, or `None` when all are taken.
    pub fn claimed(&mut self, claim: Option<SenderClaim>, view: &RelayView) {
        self.phase = match self.take_phase() {
            Phase::Waiting(Pending::Claim(login)) => {
                let (phase, login) =
                    startup::logged_in(&mut self.io, &self.config, *login, claim, view);
                self.login = login;
                phase
            }
            other => self.out_of_order(other, "a sender claim"),
        };
    }

    /// Answers [`Action::ClaimBackup`]: whether a place was free.
    pub fn backup_claimed(&mut self, granted: bool) {
        self.phase = match self.take_phase() {
            Phase::Waiting(Pending::Backup(pending)) => {
                backup::claimed(&mut self.io, &self.config, *pending, granted)
            }
            other => self.out_of_order(other, "a backup claim"),
        };
    }

    /// Answers [`Action::StartBackup`]: how the relayed answer ended.
    pub fn backup_ended(&mut self, end: BackupEnd) {
        self.phase = match self.take_phase() {
            Phase::BaseBackup => backup::ended(&mut self.io, end),
            other => self.out_of_order(other, "the end of a backup"),
        };
    }

    /// Answers [`Action::ReadSlot`].
    pub fn slot_read(&mut self, slot: Option<FoundSlot>, view: &RelayView) {
        self.phase = match self.take_phase() {
            Phase::Waiting(Pending::ReadSlot) => {
                command::read_slot_answer(&mut self.io, slot, view)
            }
            Phase::Waiting(Pending::AlterSlot(name)) => {
                command::alter_slot_answer(&mut self.io, &name, slot)
            }
            other => self.out_of_order(other, "a slot read"),
        };
    }

    /// Answers [`Action::CreateSlot`], [`Action::DropSlot`] and [`Action::AcquireSlot`]:
    /// done, or the error to report.
    pub fn slot_done(&mut self, outcome: Result<(), ErrorFields>, now: Now) {
        self.phase = match self.take_phase() {
            Phase::Waiting(pending)
                if !matches!(
                    pending,
                    Pending::Claim(_)
                        | Pending::ReadSlot
                        | Pending::AlterSlot(_)
                        | Pending::Tls(_)
                        | Pending::Backup(_)
                ) =>
            {
                command::slot_done(&mut self.io, &self.config, pending, outcome, now)
            }
            other => self.out_of_order(other, "a slot change"),
        };
    }

    /// Takes a typed message, or the error reading it, in command mode or while streaming.
    pub fn frame(&mut self, frame: Result<Frame, WireError>, now: Now, view: &RelayView) {
        if let Phase::Authenticating(_) = self.phase {
            self.phase = match self.take_phase() {
                Phase::Authenticating(a) => authenticate::frame(&mut self.io, a, frame),
                other => other,
            };
            return;
        }
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                // PostgreSQL logs a bad length and closes without an answer (`pq_getmessage`).
                info!(error = %e, "closing connection");
                self.phase = self.io.close();
                return;
            }
        };
        self.phase = match self.take_phase() {
            Phase::Command => command::frame(&mut self.io, &self.config, frame, now, view),
            Phase::Streaming(s) => s.frame(&mut self.io, frame, now, view),
            other => self.out_of_order(other, "a message"),
        };
    }

    /// While streaming: the WAL to send next, if any. It may end a historic timeline instead
    /// (a CopyDone in the output).
    pub fn next_send(&mut self, view: &RelayView) -> Option<streaming::SendRange> {
        match &mut self.phase {
            Phase::Streaming(s) => s.next_send(&mut self.io.out, view),
            _ => None,
        }
    }

    /// While streaming: WAL up to `end` went out.
    pub fn sent(&mut self, end: Lsn) {
        if let Phase::Streaming(s) = &mut self.phase {
            s.sent(&mut self.io, end);
        }
    }

    /// While streaming: the WAL to send cannot be read (it was removed, or the disk failed).
    /// The stream ends with `error`, and command mode goes on.
    pub fn wal_unavailable(&mut self, error: &ErrorFields) {
        self.phase = match self.take_phase() {
            Phase::Streaming(s) => s.fail(&mut self.io, error),
            other => other,
        };
    }

    /// The clock moved: pings and timeouts while streaming.
    pub fn tick(&mut self, now: Now) {
        self.phase = match self.take_phase() {
            Phase::Streaming(s) => s.tick(&mut self.io, now),
            other => other,
        };
    }

    /// The relay is shutting down: a connection logging in is closed, one in command mode
    /// gets FATAL 57P01, a stream asks its client to confirm what it was sent, then ends.
    pub fn shutdown(&mut self, now: Now) {
        self.phase = match self.take_phase() {
            Phase::Startup(_)
            | Phase::Authenticating(_)
            | Phase::Waiting(_)
            | Phase::BaseBackup => self.io.close(),
            Phase::Command => self.io.fatal(&ErrorFields::fatal(
                SqlState::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command",
            )),
            Phase::Streaming(s) => s.shutdown(&mut self.io, now, self.config.shutdown_wait),
            Phase::Closed => Phase::Closed,
        };
    }

    fn take_phase(&mut self) -> Phase {
        std::mem::replace(&mut self.phase, Phase::Closed)
    }

    /// Input the session did not ask for in this phase: the caller broke the contract, and
    /// the connection ends.
    fn out_of_order(&mut self, phase: Phase, what: &str) -> Phase {
        tracing::error!(?phase, what, "downstream session fed out of order");
        match phase {
            Phase::Closed => Phase::Closed,
            _ => self.io.close(),
        }
    }
}
