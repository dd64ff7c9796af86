//! The upstream side of the relay: connect to the primary, check who it is, keep the relay's
//! slot there, and stream WAL into the store, reconnecting with capped exponential backoff.
//!
//! What happens on each connection mirrors a walreceiver (`walreceiver.c:WalReceiverMain`)
//! and `pg_receivewal` (`receivelog.c`): `IDENTIFY_SYSTEM`, `SHOW wal_segment_size`,
//! `TIMELINE_HISTORY` for newer timelines, the slot, then `START_REPLICATION SLOT … PHYSICAL`
//! from the store's durable end. A server with another system identifier or segment size than
//! the data directory holds is refused before anything from it is stored.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::proto::conninfo::ConnInfo;
use crate::proto::query::{
    EndOfTimeline, HistoryFile, IdentifySystem, ResultError, SlotInfo, segment_size_from_show,
};
use crate::proto::stream::{Inbound, ReceiveStream, StreamError, StreamTiming};
use crate::service::conn::{ConnError, Connection, DEFAULT_REPLY_TIMEOUT, UPSTREAM_READ_CHUNK};
use crate::service::downstream::UpstreamInfo;
use crate::service::login::{self, LoginError, ServerInfo};
use crate::service::session::{read_result, read_result_from, simple_query};
use crate::service::writer::{Positions, Writer, WriterStopped};
use crate::slots::XminHorizon;
use crate::storage::{StoreError, StoreIdentity};
use crate::types::{Lsn, PgTimestamp, TimelineId, WalSegmentSize};
use crate::wire::frontend::FrontendMessage;
use crate::wire::replication::{ClientCopyData, HotStandbyFeedback};
use crate::wire::{BackendMessage, ErrorFields, WireError};

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
    /// Connecting or logging in failed.
    #[error("{0}")]
    Login(#[from] LoginError),
    /// The connection failed.
    #[error("{0}")]
    Conn(ConnError),
    /// A malformed message.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The server answered with an error.
    #[error("server error: {0}")]
    Server(ErrorFields),
    /// The server broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A command's result is malformed.
    #[error("{0}")]
    Result(#[from] ResultError),
    /// The replication stream broke its rules.
    #[error("{0}")]
    Stream(#[from] StreamError),
    /// The store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The writer thread stopped.
    #[error("{0}")]
    Writer(#[from] WriterStopped),
    /// The upstream ended the stream, as a walsender does when its server shuts down
    /// (`CommandComplete "COPY 0"` while in copy mode).
    #[error("the upstream ended the stream ({0}); it is probably shutting down")]
    StreamEnded(String),
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
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            UpstreamError::Server(e) => Some(e.code.as_str()),
            _ => None,
        }
    }
}

/// What the upstream side shares with the rest of the relay.
#[derive(Debug)]
pub struct Links {
    /// Where the upstream's identity is published for the downstream side.
    pub info: watch::Sender<Option<UpstreamInfo>>,
    /// The oldest xmin the downstreams report, forwarded upstream as hot-standby feedback.
    pub feedback: watch::Receiver<XminHorizon>,
}

/// How a connection ended without an error.
enum Ended {
    Shutdown,
}

/// Streams from the upstream into the store until `shutdown` fires, reconnecting on errors
/// with exponential backoff between `reconnect_min` and `reconnect_max`. A failed writer is
/// replaced through `reopen`, which reopens (and so recovers) the store.
///
/// # Errors
/// Only what cannot be retried: the store cannot be reopened.
pub async fn run(
    settings: UpstreamSettings,
    mut writer: Writer,
    links: Links,
    mut reopen: impl FnMut() -> Result<Writer, UpstreamError>,
    shutdown: CancellationToken,
) -> Result<(), UpstreamError> {
    let mut delay = settings.reconnect_min;
    let mut attempt: u64 = 0;
    let peer = settings
        .conninfo
        .hosts()
        .iter()
        .map(|e| format!("{}:{}", e.pgpass_host(), e.port))
        .collect::<Vec<_>>()
        .join(",");
    loop {
        attempt += 1;
        let span = info_span!("upstream", peer = %peer, attempt, slot = %settings.slot);
        let started = Instant::now();
        let outcome = connect_and_stream(&settings, &writer, &links, &shutdown)
            .instrument(span)
            .await;
        match outcome {
            Ok(Ended::Shutdown) => return Ok(()),
            Err(e) => {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                if matches!(e, UpstreamError::StreamEnded(_)) {
                    info!(reason = %e, "upstream connection ended");
                } else if e.sqlstate() == Some("58P01") {
                    error!(error = %e, "the upstream no longer has the WAL the relay needs next; the relay will not skip over it. Restore the missing segments upstream, or move this data directory aside and start the relay afresh");
                } else {
                    warn!(error = %e, sqlstate = e.sqlstate().unwrap_or(""), "upstream connection ended");
                }
                if writer.positions().borrow().failed.is_some() {
                    writer = reopen()?;
                }
            }
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
        }
        delay = (delay * 2).min(settings.reconnect_max);
    }
}

/// Where streaming starts on a connection.
struct StartPoint {
    timeline: TimelineId,
    start: Lsn,
}

async fn connect_and_stream(
    settings: &UpstreamSettings,
    writer: &Writer,
    links: &Links,
    shutdown: &CancellationToken,
) -> Result<Ended, UpstreamError> {
    let (mut conn, server) =
        login::connect(&settings.conninfo, &settings.application_name, shutdown).await?;
    info!(server_version = %server.server_version, "connected to upstream");
    let timing = settings.timing;
    conn.set_reply_timeout(if timing.receive_timeout.is_zero() {
        DEFAULT_REPLY_TIMEOUT
    } else {
        timing.receive_timeout
    });
    let id = IdentifySystem::from_result(&simple_query(&mut conn, "IDENTIFY_SYSTEM").await?)?;
    let size = segment_size_from_show(&simple_query(&mut conn, "SHOW wal_segment_size").await?)?;
    let identity = StoreIdentity {
        system_id: id.system_id,
        segment_size: size,
    };
    check_identity(writer, identity).await?;
    links.info.send_replace(Some(UpstreamInfo {
        system_id: id.system_id,
        segment_size: size,
        server_version: server.server_version.clone(),
        version_num: server.version_num,
    }));
    let mut point = start_point(&mut conn, writer, &id, size).await?;
    ensure_slot(&mut conn, &settings.slot, &server).await?;
    loop {
        let end = stream(&mut conn, settings, writer, &point, links, shutdown).await?;
        match end {
            StreamEnd::Shutdown => {
                conn.shutdown().await;
                return Ok(Ended::Shutdown);
            }
            StreamEnd::Timeline(next) => {
                info!(next = %next.next, start = %next.start, "upstream timeline ended, following");
                fetch_histories(&mut conn, writer, point.timeline, next.next).await?;
                let start = size.segment_start(next.start);
                writer
                    .call(move |s| s.switch_timeline(next.next, start))
                    .await??;
                point = StartPoint {
                    timeline: next.next,
                    start,
                };
            }
        }
    }
}

/// Refuses an upstream that is another system, or records the identity on first use.
async fn check_identity(writer: &Writer, identity: StoreIdentity) -> Result<(), UpstreamError> {
    match writer.call(|s| s.identity()).await? {
        Some(stored) if stored.system_id != identity.system_id => {
            Err(UpstreamError::SystemIdMismatch {
                upstream: identity.system_id.to_string(),
                stored: stored.system_id.to_string(),
            })
        }
        Some(stored) if stored.segment_size != identity.segment_size => {
            Err(UpstreamError::SegmentSizeMismatch {
                upstream: identity.segment_size,
                stored: stored.segment_size,
            })
        }
        Some(_) => Ok(()),
        None => {
            info!(system_id = %identity.system_id, segment_size = %identity.segment_size, "initializing data directory");
            Ok(writer.call(move |s| s.initialize(identity)).await??)
        }
    }
}

/// Decides where to stream from: the durable end of the store, or on first start the
/// start of the upstream's current segment; follows a newer upstream timeline.
async fn start_point(
    conn: &mut Connection,
    writer: &Writer,
    id: &IdentifySystem,
    size: WalSegmentSize,
) -> Result<StartPoint, UpstreamError> {
    let Some(end) = writer.call(|s| s.end()).await? else {
        fetch_histories(conn, writer, TimelineId::ONE, id.timeline).await?;
        let start = size.segment_start(id.xlogpos);
        let tli = id.timeline;
        writer.call(move |s| s.start_at(tli, start)).await??;
        info!(timeline = %tli, start = %start, "first start: streaming from the upstream's current segment");
        return Ok(StartPoint {
            timeline: tli,
            start,
        });
    };
    if id.timeline < end.timeline {
        return Err(UpstreamError::TimelineBehind {
            upstream: id.timeline,
            relay: end.timeline,
        });
    }
    if id.timeline == end.timeline {
        return Ok(StartPoint {
            timeline: end.timeline,
            start: end.durable,
        });
    }
    let history = fetch_histories(conn, writer, end.timeline, id.timeline).await?;
    let (switch, next) =
        history
            .and_then(|h| h.switch_point(end.timeline))
            .ok_or(UpstreamError::ForkedAway {
                upstream: id.timeline,
                relay: end.timeline,
            })?;
    if end.durable > switch {
        warn!(relay_end = %end.durable, switch_point = %switch, "the relay holds WAL past the upstream's switch point; it is not part of the new timeline");
    }
    let start = size.segment_start(end.durable.min(switch));
    writer
        .call(move |s| s.switch_timeline(next, start))
        .await??;
    Ok(StartPoint {
        timeline: next,
        start,
    })
}

/// Fetches and stores the history files of timelines `(from, to]` that the store lacks;
/// returns the parsed history of `to`.
async fn fetch_histories(
    conn: &mut Connection,
    writer: &Writer,
    from: TimelineId,
    to: TimelineId,
) -> Result<Option<crate::wal::TimelineHistory>, UpstreamError> {
    let mut last = None;
    let mut tli = from.next();
    while let Some(t) = tli.filter(|t| *t <= to) {
        let file = HistoryFile::from_result(
            &simple_query(conn, &format!("TIMELINE_HISTORY {t}")).await?,
            t,
        )?;
        let content = file.content.to_vec();
        writer.call(move |s| s.write_history(t, &content)).await??;
        last = Some(file.history);
        tli = t.next();
    }
    Ok(last)
}

/// Makes sure the relay's physical slot exists on the upstream.
async fn ensure_slot(
    conn: &mut Connection,
    slot: &str,
    server: &ServerInfo,
) -> Result<(), UpstreamError> {
    let modern = server.version_num >= 150_000;
    if modern {
        let info = SlotInfo::from_result(
            &simple_query(conn, &format!("READ_REPLICATION_SLOT \"{slot}\"")).await?,
        )?;
        if info.exists {
            if info.restart_lsn.is_none() {
                warn!(
                    slot,
                    "the upstream slot holds no WAL (it was created without reserving WAL or has been invalidated)"
                );
            }
            return Ok(());
        }
    }
    let sql = if modern {
        format!("CREATE_REPLICATION_SLOT \"{slot}\" PHYSICAL (RESERVE_WAL)")
    } else {
        format!("CREATE_REPLICATION_SLOT \"{slot}\" PHYSICAL RESERVE_WAL")
    };
    match simple_query(conn, &sql).await {
        Ok(_) => {
            info!(slot, "created the relay's slot on the upstream");
            Ok(())
        }
        Err(UpstreamError::Server(e)) if e.code == "42710" => Ok(()),
        Err(e) => Err(e),
    }
}

/// How one START_REPLICATION stream ended.
enum StreamEnd {
    Shutdown,
    Timeline(EndOfTimeline),
}

/// Streams one timeline until it ends, the relay shuts down, or an error.
async fn stream(
    conn: &mut Connection,
    settings: &UpstreamSettings,
    writer: &Writer,
    point: &StartPoint,
    links: &Links,
    shutdown: &CancellationToken,
) -> Result<StreamEnd, UpstreamError> {
    let sql = format!(
        "START_REPLICATION SLOT \"{}\" PHYSICAL {} TIMELINE {}",
        settings.slot, point.start, point.timeline
    );
    FrontendMessage::Query(sql).write(conn.out())?;
    conn.flush().await?;
    match BackendMessage::parse(conn.recv_reply().await?)? {
        BackendMessage::CopyBothResponse(_) => {}
        first @ (BackendMessage::ErrorResponse(_) | BackendMessage::RowDescription(_)) => {
            // An error, or a timeline that ends exactly where streaming would start: the
            // server skips copy mode and sends the next timeline at once.
            let result = read_result_from(conn, first).await?;
            let next = EndOfTimeline::from_result(&result, point.timeline, point.start)?;
            return Ok(StreamEnd::Timeline(next));
        }
        other => {
            return Err(UpstreamError::Protocol(format!(
                "expected CopyBothResponse, got message type '{}'",
                char::from(other.tag())
            )));
        }
    }
    info!(timeline = %point.timeline, start = %point.start, "streaming");
    let mut rs = ReceiveStream::new(point.start, settings.timing, Instant::now());
    let mut positions = writer.positions();
    let mut status_tick = tokio::time::interval(Duration::from_secs(1));
    // Like a walreceiver, say at once what xmin is held (0/0 releases an old one).
    let mut feedback = links.feedback.clone();
    send_feedback(conn, *feedback.borrow_and_update());
    loop {
        let now = Instant::now();
        rs.check_timeout(now)?;
        let p = positions.borrow_and_update().clone();
        if let Some(failed) = p.failed {
            return Err(WriterStopped(Some(failed)).into());
        }
        rs.set_positions(p.written, p.durable);
        if rs.ping_due(now) {
            let wall = PgTimestamp::from_system_time(SystemTime::now());
            ClientCopyData::StatusUpdate(rs.ping(now, wall)).write(conn.out());
            conn.flush().await?;
        } else if rs.status_due(now) {
            send_status(conn, &mut rs, &p);
            conn.flush().await?;
        }
        let deadline = tokio::time::Instant::from_std(rs.next_deadline());
        let frame = tokio::select! {
            () = shutdown.cancelled() => {
                finish(conn, writer, &mut rs).await?;
                return Ok(StreamEnd::Shutdown);
            }
            changed = positions.changed() => {
                changed.map_err(|_| WriterStopped(None))?;
                continue;
            }
            Ok(()) = feedback.changed() => {
                send_feedback(conn, *feedback.borrow_and_update());
                conn.flush().await?;
                continue;
            }
            () = tokio::time::sleep_until(deadline) => continue,
            frame = conn.recv() => frame?,
        };
        let copy = match BackendMessage::parse(frame)? {
            BackendMessage::CopyData(payload) => payload,
            BackendMessage::CopyDone => return end_of_timeline(conn, writer, point, &mut rs).await,
            BackendMessage::ErrorResponse(e) => return Err(UpstreamError::Server(e)),
            BackendMessage::CommandComplete(tag) => return Err(UpstreamError::StreamEnded(tag)),
            BackendMessage::NoticeResponse(n) => {
                info!(notice = %n, "upstream notice");
                continue;
            }
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "unexpected message type '{}' during streaming",
                    char::from(other.tag())
                )));
            }
        };
        match rs.on_copy_data(copy, Instant::now())? {
            Inbound::Wal { start, data } => {
                let wal = (start, data);
                store_wal(conn, writer, &mut rs, &mut status_tick, wal, &positions).await?;
            }
            Inbound::ReplyRequested => {
                let p = positions.borrow().clone();
                send_status(conn, &mut rs, &p);
                conn.flush().await?;
            }
            Inbound::Nothing => {}
        }
    }
}

/// Queues WAL for the store, which checks it before writing. While the queue is full,
/// status updates keep going out so that the upstream does not time out.
async fn store_wal(
    conn: &mut Connection,
    writer: &Writer,
    rs: &mut ReceiveStream,
    tick: &mut tokio::time::Interval,
    (start, data): (Lsn, Bytes),
    positions: &watch::Receiver<Positions>,
) -> Result<(), UpstreamError> {
    loop {
        tokio::select! {
            permit = writer.reserve() => {
                // Long messages come in buffers of their own and are kept as they are; a
                // short one shares the receive buffer, so it is copied and the buffer reused.
                let data = if data.len() < UPSTREAM_READ_CHUNK {
                    Bytes::copy_from_slice(&data)
                } else {
                    data
                };
                permit?.append(start, data);
                return Ok(());
            }
            _ = tick.tick() => {
                let p = positions.borrow().clone();
                send_status(conn, rs, &p);
                conn.flush().await?;
            }
        }
    }
}

/// Queues hot-standby feedback: the oldest xmin the downstreams hold, or 0/0 for none.
fn send_feedback(conn: &mut Connection, h: XminHorizon) {
    let part = |x: Option<crate::slots::FullXid>| x.map_or((0, 0), |x| (x.xid(), x.epoch()));
    let (xmin, xmin_epoch) = part(h.xmin);
    let (catalog_xmin, catalog_xmin_epoch) = part(h.catalog_xmin);
    let wall = PgTimestamp::from_system_time(SystemTime::now());
    ClientCopyData::HotStandbyFeedback(HotStandbyFeedback {
        send_time: wall,
        xmin,
        xmin_epoch,
        catalog_xmin,
        catalog_xmin_epoch,
    })
    .write(conn.out());
}

/// Queues a status update with the positions the writer published.
fn send_status(conn: &mut Connection, rs: &mut ReceiveStream, p: &Positions) {
    rs.set_positions(p.written, p.durable);
    let wall = PgTimestamp::from_system_time(SystemTime::now());
    ClientCopyData::StatusUpdate(rs.status(Instant::now(), wall)).write(conn.out());
}

/// On shutdown: let the writer sync what is queued, report it, and say goodbye.
async fn finish(
    conn: &mut Connection,
    writer: &Writer,
    rs: &mut ReceiveStream,
) -> Result<(), UpstreamError> {
    writer.call(|_| ()).await?;
    let p = writer.positions().borrow().clone();
    send_status(conn, rs, &p);
    FrontendMessage::Terminate.write(conn.out())?;
    conn.flush().await?;
    info!(written = %p.written, durable = %p.durable, "sent final status update upstream");
    Ok(())
}

/// The upstream ended the timeline with CopyDone: answer CopyDone and read the next timeline.
async fn end_of_timeline(
    conn: &mut Connection,
    writer: &Writer,
    point: &StartPoint,
    rs: &mut ReceiveStream,
) -> Result<StreamEnd, UpstreamError> {
    writer.call(|_| ()).await?;
    let p = writer.positions().borrow().clone();
    send_status(conn, rs, &p);
    FrontendMessage::CopyDone.write(conn.out())?;
    conn.flush().await?;
    let result = read_result(conn).await?;
    Ok(StreamEnd::Timeline(EndOfTimeline::from_result(
        &result,
        point.timeline,
        rs.next(),
    )?))
}
