//! The I/O of a relayed BASE_BACKUP: a new replication connection to the upstream, the
//! client's Query text sent on it unchanged, and the answer forwarded to the client through
//! one buffer until its ReadyForQuery ([`AnswerScanner`] finds it).
//!
//! The buffer is read from the upstream only once the client has taken what it held, so a
//! slow client slows the upstream's walsender (its socket fills) and the relay's memory for a
//! backup is that buffer, whatever the size of the database. A client that goes away (or
//! stops reading for the sender timeout, as a stalled stream) ends the backup upstream: a
//! CancelRequest interrupts a walsender that waits (for its checkpoint, its size estimate,
//! its MAX_RATE), and the upstream connection is dropped at once, so one that writes fails;
//! either way it exits and PostgreSQL aborts the backup (`do_pg_abort_backup`). The client's own messages are not read meanwhile,
//! as a walsender reads none during a backup: only the end of its stream is watched for,
//! until it sends something.
//!
//! At shutdown the backup is cancelled the same way, and the client gets FATAL 57P01 when
//! the answer stands between two messages (else its connection closes).
//!
//! Before the command goes upstream, the server reached must be the relay's upstream as its
//! clients know it: same system identifier, same major ([`check_backup_upstream`]); a
//! `--upstream` whose hosts include another cluster, or a failover to another major, gets
//! an error rather than a backup of something else.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf};
use tracing::{debug, info};

use super::Connection;
use crate::metrics::BackupOutcome;
use crate::proto::basebackup::AnswerScanner;
use crate::proto::conninfo::Endpoint;
use crate::proto::downstream::{BackupEnd, check_backup_upstream};
use crate::proto::query::IdentifySystem;
use crate::proto::upstream::CancelKey;
use crate::service::conn::{ConnError, Socket};
use crate::service::downstream::Transport;
use crate::service::downstream::context::CancelWatch;
use crate::service::upstream::connect::{Upstream, cancel, connect};
use crate::types::SqlState;
use crate::wire::ErrorFields;
use crate::wire::frontend::FrontendMessage;

/// The one buffer between the upstream and the client.
const BACKUP_BUFFER: usize = 256 * 1024;

/// How long a CancelRequest to the upstream may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// The `application_name` of the upstream connection, unless the connection string sets one.
const APPLICATION_NAME: &str = "walrelay_basebackup";

impl<T: Transport> Connection<T> {
    /// Relays one BASE_BACKUP whose Query text is `query`, and says how it ended.
    ///
    /// # Errors
    /// The client's socket failed or stalled: the connection ends.
    pub(super) async fn relay_backup(&mut self, query: String) -> Result<BackupEnd, ConnError> {
        let counters = Arc::clone(&self.ctx.counters);
        counters.downstream.backup_started();
        let mut scanner = AnswerScanner::new();
        let end = self.relay_backup_with(query, &mut scanner).await;
        counters
            .downstream
            .backup_ended(outcome(end.as_ref().ok(), scanner.saw_error()));
        end
    }

    /// [`relay_backup`](Self::relay_backup), with `scanner` reading the answer.
    async fn relay_backup_with(
        &mut self,
        query: String,
        scanner: &mut AnswerScanner,
    ) -> Result<BackupEnd, ConnError> {
        let out = self.session.take_output();
        self.wr.out().extend_from_slice(&out);
        self.wr.flush().await?;
        let Some(conninfo) = self.ctx.backup_upstream() else {
            let detail = "no upstream connection string is configured".to_owned();
            return Ok(BackupEnd::ConnectFailed(detail));
        };
        let mut up = match connect(&conninfo, APPLICATION_NAME, &self.shutdown).await {
            Ok(up) => up,
            Err(e) => {
                info!(error = %e, "could not connect upstream for BASE_BACKUP");
                return Ok(BackupEnd::ConnectFailed(e.to_string()));
            }
        };
        if let Err(e) = self.check_upstream(&mut up).await {
            up.conn.shutdown().await;
            return Ok(BackupEnd::Refused(e));
        }
        let upstream_cancel = UpstreamCancel {
            pid: up.server.backend_pid,
            key: up.server.cancel_key,
            endpoint: up.endpoint,
        };
        let pid = upstream_cancel.pid;
        let (mut rd, read, mut wr) = up.conn.into_parts();
        let mut message = BytesMut::new();
        FrontendMessage::Query(query).write(&mut message)?;
        if let Err(e) = wr.write_all(&message).await {
            return Ok(BackupEnd::UpstreamLost {
                after_error: false,
                detail: e.to_string(),
            });
        }
        let cancels = self
            .place
            .as_ref()
            .map(|p| self.ctx.watch_cancel(p.pid, p.cancel_key));
        let mut relayed = 0u64;
        let end = self
            .forward(
                &mut rd,
                read,
                scanner,
                &mut relayed,
                cancels.as_ref(),
                &upstream_cancel,
            )
            .await;
        match &end {
            Ok(BackupEnd::Done) => {
                let mut terminate = BytesMut::new();
                FrontendMessage::Terminate.write(&mut terminate)?;
                let _ = wr.write_all(&terminate).await;
                info!(pid, relayed, "BASE_BACKUP relayed");
            }
            Ok(other) => info!(pid, relayed, outcome = ?other, "BASE_BACKUP ended early"),
            Err(e) => info!(pid, relayed, error = %e, "BASE_BACKUP aborted: client lost"),
        }
        if !matches!(end, Ok(BackupEnd::Done | BackupEnd::UpstreamLost { .. })) {
            // A walsender waiting (checkpoint, size estimate, MAX_RATE) is interrupted by the
            // cancel; one writing fails on the socket dropped below.
            upstream_cancel.send();
        }
        // Dropping the upstream halves closes the socket.
        end
    }

    /// Asks the server reached who it is: it must be the upstream the relay's clients know.
    async fn check_upstream(&self, up: &mut Upstream) -> Result<(), ErrorFields> {
        let known = self
            .ctx
            .view(self.ctx.hub.durable())
            .upstream
            .ok_or_else(|| {
                ErrorFields::error(
                    SqlState::CANNOT_CONNECT_NOW,
                    "the database system is starting up",
                )
            })?;
        let lost = |detail: String| {
            ErrorFields::error(
                SqlState::CONNECTION_FAILURE,
                "lost connection to the upstream server during BASE_BACKUP",
            )
            .with_detail(detail)
        };
        let result = up
            .query("IDENTIFY_SYSTEM")
            .await
            .map_err(|e| lost(e.to_string()))?;
        let id = IdentifySystem::from_result(&result).map_err(|e| lost(e.to_string()))?;
        check_backup_upstream(&known, id.system_id, up.server.version_num)
    }

    /// Moves the answer from `rd` (after the bytes in `read`) to the client. The client's
    /// own CancelRequest (`cancels`) is passed on upstream, whose answer (57014) then ends
    /// the backup as PostgreSQL's would.
    async fn forward(
        &mut self,
        rd: &mut ReadHalf<Socket>,
        read: BytesMut,
        scanner: &mut AnswerScanner,
        relayed: &mut u64,
        cancels: Option<&CancelWatch>,
        upstream: &UpstreamCancel,
    ) -> Result<BackupEnd, ConnError> {
        let mut buf = read;
        let mut watch_client = !self.rd.has_buffered();
        loop {
            if buf.is_empty() {
                buf.reserve(BACKUP_BUFFER);
                let got = tokio::select! {
                    () = self.shutdown.cancelled() => {
                        return Ok(if scanner.at_boundary() {
                            BackupEnd::Shutdown
                        } else {
                            BackupEnd::Broken
                        });
                    }
                    first = self.rd.first_byte(), if watch_client => {
                        match first {
                            // Held until the answer is over; the client is not read again.
                            Ok(_) => watch_client = false,
                            Err(e) => {
                                debug!(error = %e, "client went away during BASE_BACKUP");
                                return Ok(BackupEnd::Broken);
                            }
                        }
                        continue;
                    }
                    () = cancelled(cancels) => {
                        upstream.send();
                        continue;
                    }
                    got = rd.read_buf(&mut buf) => got,
                };
                match got {
                    Ok(0) => {
                        let detail = "server closed the connection unexpectedly";
                        return Ok(lost(scanner, detail.to_owned()));
                    }
                    Ok(_) => {}
                    Err(e) => return Ok(lost(scanner, e.to_string())),
                }
            }
            let scanned = match scanner.scan(&buf) {
                Ok(scanned) => scanned,
                Err(e) => {
                    info!(error = %e, "upstream sent a malformed BASE_BACKUP answer");
                    return Ok(BackupEnd::Broken);
                }
            };
            let answer = buf.split_to(scanned.answer).freeze();
            *relayed += answer.len() as u64;
            self.ctx
                .counters
                .downstream
                .backup_relayed(answer.len() as u64);
            self.write_answer(answer).await?;
            if scanned.done {
                return Ok(BackupEnd::Done);
            }
        }
    }

    /// Writes part of the answer; a client that takes none of it for the sender timeout is
    /// dropped.
    async fn write_answer(&mut self, answer: Bytes) -> Result<(), ConnError> {
        let timeout = self.ctx.config().sender_timeout;
        let write = self.wr.flush_parts(vec![answer]);
        if timeout.is_zero() {
            return write.await;
        }
        match tokio::time::timeout(timeout, write).await {
            Ok(written) => written,
            Err(_) => {
                info!("terminating BASE_BACKUP: the client has not read for {timeout:?}");
                Err(ConnError::Timeout(timeout))
            }
        }
    }
}

/// How a backup ended, for the metrics: `end` is `None` when the client's socket failed;
/// `saw_error` when the answer carried an ErrorResponse.
fn outcome(end: Option<&BackupEnd>, saw_error: bool) -> BackupOutcome {
    match end {
        Some(BackupEnd::Done) if !saw_error => BackupOutcome::Completed,
        Some(
            BackupEnd::Done
            | BackupEnd::ConnectFailed(_)
            | BackupEnd::Refused(_)
            | BackupEnd::UpstreamLost { .. },
        ) => BackupOutcome::Failed,
        Some(BackupEnd::Shutdown | BackupEnd::Broken) | None => BackupOutcome::Aborted,
    }
}

/// What a CancelRequest to the upstream backend relaying a backup carries.
struct UpstreamCancel {
    pid: i32,
    key: CancelKey,
    endpoint: Option<Endpoint>,
}

impl UpstreamCancel {
    /// Sends the CancelRequest, in the background; a failure is only logged.
    fn send(&self) {
        let Some(endpoint) = self.endpoint.clone() else {
            return;
        };
        let (pid, key) = (self.pid, self.key);
        tokio::spawn(async move {
            if let Err(e) = cancel(&endpoint, pid, key, CANCEL_TIMEOUT).await {
                info!(pid, error = %e, "could not cancel the upstream BASE_BACKUP");
            }
        });
    }
}

/// Waits for a CancelRequest on `watch`; forever without one.
async fn cancelled(watch: Option<&CancelWatch>) {
    match watch {
        Some(w) => w.cancelled().await,
        None => std::future::pending().await,
    }
}

/// The end when the upstream connection is lost: answerable between two messages, not
/// inside one.
fn lost(scanner: &AnswerScanner, detail: String) -> BackupEnd {
    if scanner.at_boundary() {
        BackupEnd::UpstreamLost {
            after_error: scanner.after_error(),
            detail,
        }
    } else {
        BackupEnd::Broken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_for_the_metrics() {
        assert_eq!(
            outcome(Some(&BackupEnd::Done), false),
            BackupOutcome::Completed
        );
        // The upstream's own error (a bad compression level, a checksum failure) ends in
        // ReadyForQuery too: the backup failed.
        assert_eq!(outcome(Some(&BackupEnd::Done), true), BackupOutcome::Failed);
        let lost = BackupEnd::UpstreamLost {
            after_error: false,
            detail: "reset".into(),
        };
        assert_eq!(outcome(Some(&lost), false), BackupOutcome::Failed);
        let refused = BackupEnd::ConnectFailed("no route".into());
        assert_eq!(outcome(Some(&refused), false), BackupOutcome::Failed);
        assert_eq!(
            outcome(Some(&BackupEnd::Broken), false),
            BackupOutcome::Aborted
        );
        assert_eq!(
            outcome(Some(&BackupEnd::Shutdown), false),
            BackupOutcome::Aborted
        );
        assert_eq!(outcome(None, false), BackupOutcome::Aborted);
    }
}
