//! The downstream side of the relay: a walsender for real standbys, `pg_receivewal` and
//! other relays, over the WAL the relay has made durable.
//!
//! - [`startup`]: first packets, login and the parameters clients read;
//! - [`commands`]: the replication commands, answered as `walsender.c` answers them;
//! - [`sender`]: `START_REPLICATION`, streaming from the hub;
//!
//! [`ServerContext`] is what every connection shares: the upstream's identity, the store's
//! positions, the hub, the slot registry and the connection limit.

pub mod commands;
pub mod sender;
pub mod startup;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span};

use crate::hub::{DurableEnd, Hub};
use crate::proto::walsender::ClientPositions;
use crate::service::conn::{FrameReader, FrameWriter};
use crate::slots::{BackendPid, FullXid, SlotRegistry, XminHorizon};
use crate::types::{Lsn, SystemId, TimelineId, WalSegmentSize};
use startup::Refused;

/// Bytes asked of a downstream socket per read: clients send short messages.
const DOWNSTREAM_READ_CHUNK: usize = 16 * 1024;

/// Limits and timeouts of the downstream side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownstreamConfig {
    /// Most concurrent replication connections (`max_wal_senders`).
    pub max_wal_senders: usize,
    /// Drop a streaming client silent this long (`wal_sender_timeout`); zero disables.
    pub sender_timeout: Duration,
    /// Close a connection that has not logged in after this long (`authentication_timeout`).
    pub authentication_timeout: Duration,
}

/// What the relay learnt about its upstream on its latest connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamInfo {
    /// The system identifier.
    pub system_id: SystemId,
    /// The WAL segment size.
    pub segment_size: WalSegmentSize,
    /// `server_version` as the upstream reported it.
    pub server_version: String,
    /// The same as a number (150018).
    pub version_num: u32,
}

/// What every downstream connection shares.
#[derive(Debug)]
pub struct ServerContext {
    /// Limits and timeouts.
    pub config: DownstreamConfig,
    upstream: watch::Receiver<Option<UpstreamInfo>>,
    durable: watch::Receiver<DurableEnd>,
    /// The fan-out of durable WAL.
    pub hub: Hub,
    slots: Mutex<SlotRegistry>,
    wal_dir: PathBuf,
    next_pid: AtomicI32,
    senders: AtomicUsize,
    cancel_seed: i32,
    live: Mutex<Live>,
    horizon: watch::Sender<XminHorizon>,
}

/// What the connected streams report: where each one is, and its hot-standby feedback.
#[derive(Debug, Default)]
struct Live {
    streams: BTreeMap<BackendPid, StreamStatus>,
    feedback: BTreeMap<BackendPid, XminHorizon>,
}

/// One streaming downstream, as `pg_stat_replication` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStatus {
    /// The connection's pid.
    pub pid: BackendPid,
    /// Its `application_name`.
    pub application_name: String,
    /// The slot it streams from, if any.
    pub slot: Option<String>,
    /// The timeline it streams.
    pub timeline: TimelineId,
    /// The end of what was sent to it.
    pub sent: Lsn,
    /// What it last reported.
    pub client: ClientPositions,
}

impl Live {
    /// The oldest xmin and catalog xmin over the connected streams.
    fn horizon(&self) -> XminHorizon {
        let oldest = |pick: fn(&XminHorizon) -> Option<FullXid>| {
            self.feedback.values().filter_map(pick).min()
        };
        XminHorizon {
            xmin: oldest(|h| h.xmin),
            catalog_xmin: oldest(|h| h.catalog_xmin),
        }
    }
}

impl ServerContext {
    /// Everything the connections share.
    pub fn new(
        config: DownstreamConfig,
        upstream: watch::Receiver<Option<UpstreamInfo>>,
        hub: Hub,
        slots: SlotRegistry,
        wal_dir: PathBuf,
        horizon: watch::Sender<XminHorizon>,
    ) -> ServerContext {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        ServerContext {
            config,
            upstream,
            durable: hub.subscribe(),
            hub,
            slots: Mutex::new(slots),
            wal_dir,
            next_pid: AtomicI32::new(
                i32::try_from(std::process::id() % 1_000_000).unwrap_or(1) * 1000 + 1,
            ),
            senders: AtomicUsize::new(0),
            cancel_seed: i32::from_ne_bytes(seed.to_ne_bytes()),
            live: Mutex::new(Live::default()),
            horizon,
        }
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a stream that starts; retention keeps what connected streams still read.
    pub fn begin_stream(&self, status: StreamStatus) {
        self.live().streams.insert(status.pid, status);
    }

    /// Records how far a stream has been sent and what its client last reported.
    pub fn update_stream(&self, pid: BackendPid, sent: Lsn, client: ClientPositions) {
        if let Some(s) = self.live().streams.get_mut(&pid) {
            s.sent = sent;
            s.client = client;
        }
    }

    /// The connected streams.
    pub fn streams(&self) -> Vec<StreamStatus> {
        self.live().streams.values().cloned().collect()
    }

    /// The oldest cursor of the connected streams.
    pub fn oldest_cursor(&self) -> Option<Lsn> {
        self.live().streams.values().map(|s| s.sent).min()
    }

    /// Records a stream's hot-standby feedback and republishes the horizon sent upstream.
    pub fn set_feedback(&self, pid: BackendPid, feedback: XminHorizon) {
        let mut live = self.live();
        live.feedback.insert(pid, feedback);
        self.horizon.send_replace(live.horizon());
    }

    /// Forgets a stream that ended: its cursor no longer holds WAL and its feedback no longer
    /// holds back the upstream.
    pub fn forget_stream(&self, pid: BackendPid) {
        let mut live = self.live();
        live.streams.remove(&pid);
        if live.feedback.remove(&pid).is_some() {
            self.horizon.send_replace(live.horizon());
        }
    }

    /// The upstream's identity, once the relay has connected to it.
    pub fn upstream(&self) -> Option<UpstreamInfo> {
        self.upstream.borrow().clone()
    }

    /// `server_version` to report and its number; empty until the upstream is known.
    pub fn server_version(&self) -> (String, u32) {
        self.upstream()
            .map(|u| (u.server_version, u.version_num))
            .unwrap_or_default()
    }

    /// The relay's timeline and the end of the WAL it can serve on it.
    pub fn durable(&self) -> DurableEnd {
        *self.durable.borrow()
    }

    /// The relay's current timeline (1 before anything is stored).
    pub fn timeline(&self) -> TimelineId {
        self.durable().timeline.unwrap_or(TimelineId::ONE)
    }

    /// The slot registry. A panic elsewhere never poisons it for good: slots are plain data.
    pub fn slots(&self) -> MutexGuard<'_, SlotRegistry> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where the WAL and history files are.
    pub fn wal_dir(&self) -> &std::path::Path {
        &self.wal_dir
    }

    /// A secret for BackendKeyData (the relay has no cancel to offer; it is only unique-ish).
    pub fn cancel_key(&self) -> i32 {
        self.cancel_seed ^ self.next_pid.load(Ordering::Relaxed)
    }

    /// Takes one of `max_wal_senders` places; `None` when all are taken.
    fn claim_sender(self: &Arc<Self>) -> Option<SenderSlot> {
        let max = self.config.max_wal_senders;
        self.senders
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
        Some(SenderSlot {
            ctx: Arc::clone(self),
            pid: BackendPid(pid),
        })
    }
}

/// One of the `max_wal_senders` places, held for the life of a connection. Dropping it frees
/// the place and drops the connection's temporary slots, as `ReplicationSlotCleanup` does.
#[derive(Debug)]
pub struct SenderSlot {
    ctx: Arc<ServerContext>,
    /// The pid reported in BackendKeyData.
    pub pid: BackendPid,
}

impl Drop for SenderSlot {
    fn drop(&mut self) {
        let dropped = self.ctx.slots().release_owner(self.pid);
        if !dropped.is_empty() {
            debug!(slots = ?dropped, "dropped temporary slots");
        }
        self.ctx.senders.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one downstream connection until it ends or `shutdown` fires.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ServerContext>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let (mut rd, mut wr) = (
        FrameReader::new(rd, DOWNSTREAM_READ_CHUNK),
        FrameWriter::new(wr),
    );
    let span = info_span!("downstream", peer = %peer, app = tracing::field::Empty, pid = tracing::field::Empty);
    async move {
        let limit = ctx.config.authentication_timeout;
        let login = tokio::select! {
            () = shutdown.cancelled() => return,
            outcome = tokio::time::timeout(limit, startup::login(&mut rd, &mut wr, peer, &ctx)) => outcome,
        };
        let login = match login {
            Ok(Ok(login)) => login,
            Ok(Err(Refused::Fatal(e))) => {
                info!(sqlstate = %e.code, error = %e.message, "connection refused");
                return;
            }
            Ok(Err(Refused::Silent(e))) => {
                debug!(error = %e, "connection closed during startup");
                return;
            }
            Err(_) => {
                debug!("closing connection that did not log in within the authentication timeout");
                return;
            }
        };
        tracing::Span::current().record("app", login.application_name.as_str());
        tracing::Span::current().record("pid", login.slot.pid.0);
        info!(user = %login.user, "replication connection authorized");
        match commands::run(&mut rd, &mut wr, &login, &ctx, &shutdown).await {
            Ok(()) => debug!("connection ended"),
            Err(e) => info!(error = %e, "connection ended"),
        }
    }
    .instrument(span)
    .await;
}
