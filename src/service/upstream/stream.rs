//! One connection to the upstream: log in, identify, then stream timeline after timeline into
//! the store until shutdown or an error.
//!
//! While streaming, WAL goes to the writer through its bounded queue; status updates report
//! what it has written and made durable (never more), on the session's schedule and whenever
//! the server asks; the downstreams' oldest xmin goes up as hot-standby feedback whenever it
//! changes. At shutdown, the writer syncs what is queued and the final positions go up before
//! Terminate.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::commands::{StartPoint, check_identity};
use super::connect::{self, Upstream};
use super::{Links, UpstreamError, UpstreamSettings};
use crate::proto::query::{EndOfTimeline, IdentifySystem, segment_size_from_show};
use crate::proto::upstream::{Event, SessionError};
use crate::service::conn::{DEFAULT_REPLY_TIMEOUT, UPSTREAM_READ_CHUNK};
use crate::service::writer::{Positions, Writer, WriterError};
use crate::storage::StoreIdentity;
use crate::types::{Lsn, PgTimestamp, UpstreamInfo};

/// How often status updates go out while the writer's queue is full.
const STATUS_WHILE_BLOCKED: Duration = Duration::from_secs(1);

/// How one `START_REPLICATION` stream ended.
enum StreamEnd {
    Shutdown,
    Timeline(EndOfTimeline),
}

/// Milliseconds since the Unix epoch, for the metrics.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn wall() -> PgTimestamp {
    PgTimestamp::from_system_time(SystemTime::now())
}

/// Connects, checks the upstream, and streams until shutdown (`Ok`) or an error.
pub(super) async fn connect_and_stream(
    settings: &UpstreamSettings,
    writer: &Writer,
    links: &Links,
    shutdown: &CancellationToken,
) -> Result<(), UpstreamError> {
    let mut up = connect::connect(&settings.conninfo, &settings.application_name, shutdown).await?;
    info!(server_version = %up.server.server_version, "connected to upstream");
    let timeout = settings.timing.receive_timeout;
    up.conn.set_reply_timeout(if timeout.is_zero() {
        DEFAULT_REPLY_TIMEOUT
    } else {
        timeout
    });
    let identify = up.query("IDENTIFY_SYSTEM").await?;
    let id = IdentifySystem::from_result(&identify).map_err(SessionError::from)?;
    let show = up.query("SHOW wal_segment_size").await?;
    let size = segment_size_from_show(&show).map_err(SessionError::from)?;
    let identity = StoreIdentity {
        system_id: id.system_id,
        segment_size: size,
    };
    check_identity(writer, identity).await?;
    let server_version = up.server.server_version.clone();
    let info = UpstreamInfo::new(id.system_id, size, server_version);
    links.info.send_replace(Some(Arc::new(info)));
    let mut point = up.start_point(writer, &id, size).await?;
    up.ensure_slot(&settings.slot).await?;
    loop {
        match stream(&mut up, settings, writer, point, links, shutdown).await? {
            StreamEnd::Shutdown => {
                up.conn.shutdown().await;
                return Ok(());
            }
            StreamEnd::Timeline(next) => {
                info!(next = %next.next, start = %next.start, "upstream timeline ended, following");
                up.fetch_histories(writer, point.timeline, next.next)
                    .await?;
                let start = size.segment_start(next.start);
                writer.switch_timeline(next.next, start).await?;
                point = StartPoint {
                    timeline: next.next,
                    start,
                };
            }
        }
    }
}

/// Streams one timeline until it ends, the relay shuts down, or an error.
async fn stream(
    up: &mut Upstream,
    settings: &UpstreamSettings,
    writer: &Writer,
    point: StartPoint,
    links: &Links,
    shutdown: &CancellationToken,
) -> Result<StreamEnd, UpstreamError> {
    let (timeline, start) = (point.timeline, point.start);
    let (slot, timing) = (&settings.slot, settings.timing);
    up.session
        .start_replication(Some(slot), timeline, start, timing, Instant::now())?;
    if let Some(next) = up.next_answer().await? {
        // The timeline ends exactly where streaming would start.
        return Ok(StreamEnd::Timeline(next));
    }
    links.counters.upstream.set_connected(true);
    let mut positions = writer.positions();
    let mut blocked_tick = tokio::time::interval(STATUS_WHILE_BLOCKED);
    // Like a walreceiver, say at once what xmin is held (0/0 releases an old one).
    let mut feedback = links.feedback.clone();
    up.session.feedback(*feedback.borrow_and_update(), wall());
    let mut sync = links.sync.clone();
    loop {
        up.session.set_synchronous(*sync.borrow_and_update());
        let p = positions.borrow_and_update().clone();
        links.counters.upstream.note_durable(p.durable.0, unix_ms());
        if let Some(failed) = p.failed {
            return Err(WriterError::Failed(failed).into());
        }
        up.session
            .keep_alive(p.written, p.durable, Instant::now(), wall())?;
        up.conn.send(up.session.take_output()).await?;
        let deadline = up.session.stream().map(|rs| rs.next_deadline());
        let frame = tokio::select! {
            () = shutdown.cancelled() => {
                finish(up, writer).await?;
                return Ok(StreamEnd::Shutdown);
            }
            changed = positions.changed() => {
                changed.map_err(|_| WriterError::Stopped)?;
                continue;
            }
            Ok(()) = feedback.changed() => {
                up.session.feedback(*feedback.borrow_and_update(), wall());
                continue;
            }
            // The loop's top sends what the synchronous standbys now hold.
            Ok(()) = sync.changed() => continue,
            () = sleep_until(deadline) => continue,
            frame = up.conn.recv(up.session.frame_limit()) => frame?,
        };
        let event = up.session.message(frame, Instant::now())?;
        links.counters.upstream.contact(unix_ms());
        if let Some(rs) = up.session.stream() {
            links.counters.upstream.set_server_end(rs.server_end().0);
        }
        match event {
            Event::Wal { start, data } => {
                links.counters.upstream.received(data.len());
                store_wal(up, writer, &mut blocked_tick, (start, data), &positions).await?;
            }
            Event::ReplyRequested => report(up, &positions.borrow()),
            Event::TimelineDone => return end_of_timeline(up, writer).await,
            Event::Continue => {}
            other => {
                let text = format!("unexpected event while streaming: {other:?}");
                return Err(SessionError::Protocol(text).into());
            }
        }
    }
}

/// Queues WAL for the store, which checks it before writing. While the queue is full,
/// status updates keep going out so that the upstream does not time out the relay, and the
/// time spent waiting does not count as the upstream's silence.
async fn store_wal(
    up: &mut Upstream,
    writer: &Writer,
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
                if let Some(rs) = up.session.stream() {
                    rs.resumed_reading(Instant::now());
                }
                return Ok(());
            }
            _ = tick.tick() => {
                report(up, &positions.borrow());
                up.conn.send(up.session.take_output()).await?;
            }
        }
    }
}

/// Queues a status update with the positions the writer published.
fn report(up: &mut Upstream, p: &Positions) {
    up.session
        .report(p.written, p.durable, Instant::now(), wall());
}

/// On shutdown: let the writer sync what is queued, report it, and say goodbye.
async fn finish(up: &mut Upstream, writer: &Writer) -> Result<(), UpstreamError> {
    writer.sync().await?;
    let p = writer.positions().borrow().clone();
    up.session
        .terminate(p.written, p.durable, Instant::now(), wall());
    up.conn.send(up.session.take_output()).await?;
    info!(written = %p.written, durable = %p.durable, "sent final status update upstream");
    Ok(())
}

/// The upstream ended the timeline with CopyDone: once what was received is stored, answer
/// CopyDone and read the next timeline.
async fn end_of_timeline(up: &mut Upstream, writer: &Writer) -> Result<StreamEnd, UpstreamError> {
    writer.sync().await?;
    let p = writer.positions().borrow().clone();
    up.session
        .end_timeline(p.written, p.durable, Instant::now(), wall());
    match up.next_answer().await? {
        Some(next) => Ok(StreamEnd::Timeline(next)),
        None => {
            Err(SessionError::Protocol("the server streamed again after CopyDone".into()).into())
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
        None => std::future::pending().await,
    }
}
