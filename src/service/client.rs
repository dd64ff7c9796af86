//! A physical replication client of PostgreSQL, the one the relay uses upstream, for programs
//! that want WAL straight from a server: log in as libpq does (connection strings, `PG*`
//! variables, `.pgpass`, TLS, SCRAM), run replication commands, and stream WAL.
//!
//! The stream keeps the connection alive as a walreceiver does (status updates at the status
//! interval and whenever the server asks, a ping at half the receive timeout, the timeout on
//! its own clock) and checks that every XLogData continues where the previous one ended. It
//! reports the WAL it handed out as written, and as flushed only what the caller confirms
//! with [`ReplicationStream::confirm`]; it checks nothing inside the WAL: feed it to a
//! [`crate::wal::WalValidator`] for that.

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::conn::DEFAULT_REPLY_TIMEOUT;
use super::relay::process_env;
use super::upstream::UpstreamError;
use super::upstream::connect::{self, Upstream};
use crate::proto::conninfo::ConnInfo;
use crate::proto::query::{IdentifySystem, QueryResult, segment_size_from_show};
use crate::proto::upstream::{Event, SessionError, StreamTiming};
use crate::types::{Lsn, PgTimestamp, TimelineId, WalSegmentSize};

/// A logged-in replication connection.
pub struct ReplicationClient {
    up: Upstream,
}

impl std::fmt::Debug for ReplicationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationClient")
            .field("server_version", &self.up.server.server_version)
            .finish_non_exhaustive()
    }
}

impl ReplicationClient {
    /// Connects with a libpq connection string (`key=value` or a `postgresql://` URI), with
    /// the process's `PG*` variables and `.pgpass` as libpq reads them.
    ///
    /// # Errors
    /// A bad connection string, or the login failed on every host.
    pub async fn connect(conninfo: &str) -> Result<ReplicationClient, UpstreamError> {
        let info = ConnInfo::parse(conninfo, &process_env())?;
        let never = CancellationToken::new();
        let mut up = connect::connect(&info, "walrelay", &never).await?;
        up.conn.set_reply_timeout(DEFAULT_REPLY_TIMEOUT);
        Ok(ReplicationClient { up })
    }

    /// `server_version` as the server reported it.
    pub fn server_version(&self) -> &str {
        &self.up.server.server_version
    }

    /// Runs a replication command and returns its result.
    ///
    /// # Errors
    /// The server's error, a malformed answer, or a broken connection.
    pub async fn query(&mut self, sql: &str) -> Result<QueryResult, UpstreamError> {
        self.up.query(sql).await
    }

    /// Says goodbye (Terminate) and closes the connection.
    ///
    /// # Errors
    /// The connection broke.
    pub async fn close(mut self) -> Result<(), UpstreamError> {
        let mut out = bytes::BytesMut::new();
        crate::wire::frontend::FrontendMessage::Terminate
            .write(&mut out)
            .map_err(SessionError::from)?;
        self.up.conn.send(out).await?;
        self.up.conn.shutdown().await;
        Ok(())
    }

    /// `IDENTIFY_SYSTEM`.
    ///
    /// # Errors
    /// As [`Self::query`], or an answer that is not a valid row.
    pub async fn identify_system(&mut self) -> Result<IdentifySystem, UpstreamError> {
        let result = self.query("IDENTIFY_SYSTEM").await?;
        Ok(IdentifySystem::from_result(&result).map_err(SessionError::from)?)
    }

    /// `SHOW wal_segment_size`.
    ///
    /// # Errors
    /// As [`Self::query`], or a size PostgreSQL does not allow.
    pub async fn segment_size(&mut self) -> Result<WalSegmentSize, UpstreamError> {
        let result = self.query("SHOW wal_segment_size").await?;
        Ok(segment_size_from_show(&result).map_err(SessionError::from)?)
    }

    /// `START_REPLICATION [SLOT slot] PHYSICAL start TIMELINE timeline`: the WAL from `start`.
    ///
    /// # Errors
    /// The server refused (no such slot, WAL removed, timeline not in its history), or the
    /// timeline ends exactly at `start`.
    pub async fn start_replication(
        mut self,
        slot: Option<&str>,
        timeline: TimelineId,
        start: Lsn,
        timing: StreamTiming,
    ) -> Result<ReplicationStream, UpstreamError> {
        self.up
            .session
            .start_replication(slot, timeline, start, timing, Instant::now())?;
        match self.up.next_answer().await? {
            None => Ok(ReplicationStream {
                up: self.up,
                written: start,
                confirmed: Lsn::INVALID,
            }),
            Some(next) => Err(SessionError::Protocol(format!(
                "timeline {timeline} ends at {start}; it continues as timeline {}",
                next.next
            ))
            .into()),
        }
    }
}

/// A running `START_REPLICATION` stream.
pub struct ReplicationStream {
    up: Upstream,
    written: Lsn,
    confirmed: Lsn,
}

impl std::fmt::Debug for ReplicationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationStream")
            .field("written", &self.written)
            .field("confirmed", &self.confirmed)
            .finish_non_exhaustive()
    }
}

impl ReplicationStream {
    /// The next piece of WAL and the LSN of its first byte; `None` when the server ended the
    /// timeline or the stream (it shuts down).
    ///
    /// # Errors
    /// A broken stream: a gap, a malformed message, a server silent for the receive timeout,
    /// the server's error.
    pub async fn next(&mut self) -> Result<Option<(Lsn, Bytes)>, UpstreamError> {
        loop {
            let wall = PgTimestamp::from_system_time(SystemTime::now());
            let (written, confirmed) = (self.written, self.confirmed);
            self.up
                .session
                .keep_alive(written, confirmed, Instant::now(), wall)?;
            self.up.conn.send(self.up.session.take_output()).await?;
            let deadline = self.up.session.stream().map(|rs| rs.next_deadline());
            let frame = tokio::select! {
                frame = self.up.conn.recv(self.up.session.frame_limit()) => frame?,
                () = sleep_until(deadline) => continue,
            };
            match self.up.session.message(frame, Instant::now()) {
                Ok(Event::Wal { start, data }) => {
                    self.written = Lsn(start.0.saturating_add(data.len() as u64));
                    return Ok(Some((start, data)));
                }
                Ok(Event::ReplyRequested) => {
                    self.up
                        .session
                        .report(written, confirmed, Instant::now(), wall);
                }
                Ok(Event::TimelineDone) | Err(SessionError::StreamEnded(_)) => return Ok(None),
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Tells the server that WAL up to `lsn` is safe with the caller (the flush position of
    /// the next status update).
    pub fn confirm(&mut self, lsn: Lsn) {
        self.confirmed = self.confirmed.max(lsn.min(self.written));
    }

    /// Ends the stream as a walreceiver does: a last status update with what was received
    /// and confirmed, then Terminate, then the close.
    ///
    /// # Errors
    /// The connection broke.
    pub async fn close(mut self) -> Result<(), UpstreamError> {
        let wall = PgTimestamp::from_system_time(SystemTime::now());
        self.up
            .session
            .terminate(self.written, self.confirmed, Instant::now(), wall);
        self.up.conn.send(self.up.session.take_output()).await?;
        self.up.conn.shutdown().await;
        Ok(())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
