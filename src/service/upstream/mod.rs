//! The upstream side of the relay: connect to the primary, check who it is, keep the relay's
//! slot there, and stream WAL into the store, reconnecting with capped exponential backoff.
//!
//! What happens on each connection mirrors a walreceiver (`walreceiver.c:WalReceiverMain`)
//! and `pg_receivewal` (`receivelog.c`): `IDENTIFY_SYSTEM`, `SHOW wal_segment_size`,
//! `TIMELINE_HISTORY` for newer timelines, the slot, then `START_REPLICATION SLOT … PHYSICAL`
//! from the store's durable end. A server with another system identifier or segment size than
//! the data directory holds is refused before anything from it is stored. The messages
//! themselves are the sans-IO [`crate::proto::upstream`] session's business:
//! - `connect`: sockets, TLS and the login;
//! - `commands`: the replication commands before streaming, and where streaming starts;
//! - `stream`: one `START_REPLICATION` stream into the store.

mod commands;
pub(crate) mod connect;
mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::metrics::{Counters, EndReason};
use crate::proto::conninfo::ConnInfo;
use crate::proto::syncrep::SyncAck;
use crate::proto::upstream::{SessionError, StreamTiming};
use crate::service::conn::ConnError;
use crate::service::writer::{Writer, WriterError};
use crate::types::{SqlState, TimelineId, UpstreamInfo, WalSegmentSize, XminHorizon};

pub use connect::ConnectError;

/// Settings of the upstream connection.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// The parsed connection string.
    pub conninfo: ConnInfo,
    /// The relay's slot on the upstream.
    pub slot: String,
    /// The application_name used unless the connection string sets one.
    pub application_name: String,
    /// Status interval and receive timeout.
    pub timing: StreamTiming,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
}

/// Why an upstream connection ended.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The connection string is invalid.
    #[error("invalid connection string: {0}")]
    ConnInfo(#[from] crate::proto::conninfo::ConnInfoError),
    /// Connecting or logging in failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection failed.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// The server refused, broke the protocol, or ended the stream.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The store refused or failed.
    #[error(transparent)]
    Writer(#[from] WriterError),
    /// The upstream is another database system than the one stored.
    #[error(
        "database system identifier differs between the upstream and the relay: the upstream has {upstream}, the data directory holds {stored}"
    )]
    SystemIdMismatch {
        /// What the upstream reported.
        upstream: String,
        /// What the store holds.
        stored: String,
    },
    /// The upstream has another segment size than the one stored.
    #[error(
        "WAL segment size differs: the upstream has {upstream}, the data directory holds {stored}"
    )]
    SegmentSizeMismatch {
        /// What the upstream reported.
        upstream: WalSegmentSize,
        /// What the store holds.
        stored: WalSegmentSize,
    },
    /// The upstream's timeline is behind the relay's.
    #[error("highest timeline {upstream} of the upstream is behind the relay's timeline {relay}")]
    TimelineBehind {
        /// The upstream's timeline.
        upstream: TimelineId,
        /// The relay's.
        relay: TimelineId,
    },
    /// The relay's timeline is not in the upstream's history.
    #[error(
        "the relay's timeline {relay} is not in the history of the upstream's timeline {upstream}: the relay holds WAL of an abandoned branch"
    )]
    ForkedAway {
        /// The upstream's timeline.
        upstream: TimelineId,
        /// The relay's.
        relay: TimelineId,
    },
}

impl UpstreamError {
    /// The SQLSTATE of the server's error, if the server sent one.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            UpstreamError::Session(e) => e.server_sqlstate(),
            _ => None,
        }
    }
}

/// What the upstream side shares with the rest of the relay.
#[derive(Debug)]
pub(crate) struct Links {
    /// Where the upstream's identity is published for the downstream side.
    pub info: watch::Sender<Option<Arc<UpstreamInfo>>>,
    /// The oldest xmin the downstreams report, forwarded upstream as hot-standby feedback.
    pub feedback: watch::Receiver<XminHorizon>,
    /// What the synchronous standbys let the relay acknowledge.
    pub sync: watch::Receiver<SyncAck>,
    /// Where connections, their ends and the WAL received are counted.
    pub counters: Arc<Counters>,
}

/// Streams from the upstream into the store until `shutdown` fires, reconnecting on errors
/// with exponential backoff between `reconnect_min` and `reconnect_max`. After a store error
/// the writer is reopened (and so recovers) before the next attempt, as often as it takes.
///
/// # Errors
/// Only what cannot be retried: the writer's thread is gone.
pub(crate) async fn run(
    mut settings_rx: watch::Receiver<UpstreamSettings>,
    writer: Writer,
    links: Links,
    shutdown: CancellationToken,
) -> Result<(), UpstreamError> {
    let mut delay = settings_rx.borrow().reconnect_min;
    let mut attempt: u64 = 0;
    loop {
        let settings = settings_rx.borrow_and_update().clone();
        if !reopen_store(&writer).await? {
            // While the store cannot be opened (the disk still fails), the relay keeps
            // serving what it holds and tries again.
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(settings.reconnect_max);
            continue;
        }
        let peer = settings
            .conninfo
            .hosts()
            .iter()
            .map(|e| format!("{}:{}", e.pgpass_host(), e.port))
            .collect::<Vec<_>>()
            .join(",");
        attempt += 1;
        let span = info_span!("upstream", peer = %peer, attempt, slot = %settings.slot);
        let started = Instant::now();
        let connection =
            stream::connect_and_stream(&settings, &writer, &links, &shutdown).instrument(span);
        // New settings (a reload) end the connection at once; the next one uses them.
        let outcome = tokio::select! {
            outcome = connection => outcome,
            Ok(()) = settings_rx.changed() => {
                links.counters.upstream.set_connected(false);
                info!("upstream settings changed: reconnecting with them");
                delay = settings_rx.borrow().reconnect_min;
                continue;
            }
        };
        if let Err(e) = outcome {
            links.counters.upstream.ended(end_reason(&e));
            if shutdown.is_cancelled() {
                return Ok(());
            }
            log_end(&e);
            // At once, so that what is on disk is recovered before anyone looks.
            reopen_store(&writer).await?;
        } else {
            links.counters.upstream.set_connected(false);
            return Ok(());
        }
        if started.elapsed() > settings.reconnect_max {
            delay = settings.reconnect_min;
        }
        info!(
            delay_ms = delay.as_millis() as u64,
            "reconnecting to upstream"
        );
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
            Ok(()) = settings_rx.changed() => {
                info!("upstream settings changed: reconnecting with them");
                delay = settings_rx.borrow().reconnect_min;
                continue;
            }
        }
        delay = (delay * 2).min(settings.reconnect_max);
    }
}

/// After a store error, opens the store again: its recovery re-reads what is on disk and
/// cuts what cannot be trusted, before anything more is streamed into it. `false` while it
/// cannot be opened (logged).
///
/// # Errors
/// The writer's thread is gone.
async fn reopen_store(writer: &Writer) -> Result<bool, UpstreamError> {
    if writer.positions().borrow().failed.is_none() {
        return Ok(true);
    }
    match writer.reopen().await {
        Ok(()) => Ok(true),
        Err(WriterError::Stopped) => Err(WriterError::Stopped.into()),
        Err(e) => {
            error!(error = %e, "the WAL store cannot be opened again; trying again after a delay");
            Ok(false)
        }
    }
}

/// Why a connection ended, as the metrics count it.
fn end_reason(e: &UpstreamError) -> EndReason {
    match e {
        UpstreamError::ConnInfo(_) | UpstreamError::Connect(_) => EndReason::Connect,
        UpstreamError::Conn(_) => EndReason::Connection,
        UpstreamError::Session(SessionError::StreamEnded(_)) => EndReason::StreamEnded,
        UpstreamError::Session(s) if s.server_sqlstate().is_some() => EndReason::ServerError,
        UpstreamError::Session(_) => EndReason::Connection,
        UpstreamError::Writer(_) => EndReason::Store,
        UpstreamError::SystemIdMismatch { .. }
        | UpstreamError::SegmentSizeMismatch { .. }
        | UpstreamError::TimelineBehind { .. }
        | UpstreamError::ForkedAway { .. } => EndReason::Mismatch,
    }
}

/// Logs why a connection ended, once, at the level it deserves.
fn log_end(e: &UpstreamError) {
    if matches!(e, UpstreamError::Session(SessionError::StreamEnded(_))) {
        info!(reason = %e, "upstream connection ended");
    } else if e.sqlstate() == Some(&SqlState::UNDEFINED_FILE) {
        error!(error = %e, "the upstream no longer has the WAL the relay needs next; the relay will not skip over it. Restore the missing segments upstream, or move this data directory aside and start the relay afresh");
    } else {
        let sqlstate = e.sqlstate().map(SqlState::code).unwrap_or("");
        warn!(error = %e, sqlstate, "upstream connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnects_are_counted_by_what_ended_them() {
        assert_eq!(
            end_reason(&UpstreamError::Connect(ConnectError::Timeout)),
            EndReason::Connect
        );
        let mismatch = UpstreamError::SystemIdMismatch {
            upstream: "1".into(),
            stored: "2".into(),
        };
        assert_eq!(end_reason(&mismatch), EndReason::Mismatch);
        let behind = UpstreamError::TimelineBehind {
            upstream: TimelineId::ONE,
            relay: TimelineId::ONE,
        };
        assert_eq!(end_reason(&behind), EndReason::Mismatch);
        assert_eq!(
            end_reason(&UpstreamError::Writer(WriterError::Stopped)),
            EndReason::Store
        );
        let protocol = UpstreamError::Session(SessionError::Protocol("x".into()));
        assert_eq!(end_reason(&protocol), EndReason::Connection);
    }
}
