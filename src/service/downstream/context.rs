//! What every downstream connection shares: the upstream's identity, the hub, the slot
//! registry and its state file, the connection limit, and the list of streams.
//!
//! The registry sits behind a mutex that is only ever held for in-memory work: a slot change
//! that must reach the disk is written on a blocking thread, from a snapshot taken under the
//! lock, and undone if the write fails. A stalled disk therefore stalls only the command that
//! waits for its slot file, never the status updates of other streams.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::access::{Access, AccessError, Reload};
use crate::hub::Hub;
use crate::metrics::Counters;
use crate::metrics::lag::{DurableTimes, LagReader, Reported};
use crate::proto::conninfo::ConnInfo;
use crate::proto::downstream::{ClientPositions, Peer, RelayView, SessionConfig};
use crate::proto::syncrep::{AckPositions, Standby, SyncAck, SyncStandbyNames};
use crate::service::upstream::UpstreamSettings;
use crate::slots::{Pending, Persistency, SlotError, SlotPersister, SlotRegistry};
use crate::types::{BackendPid, DurableEnd, Lsn, SlotName, TimelineId, UpstreamInfo, XminHorizon};

/// How long a stream waits at shutdown for its client to confirm what it was sent.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// How often `DROP_REPLICATION_SLOT … WAIT` looks whether the slot is free.
const DROP_WAIT_POLL: Duration = Duration::from_millis(100);

/// Limits and timeouts of the downstream side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownstreamConfig {
    /// Most concurrent replication connections (`max_wal_senders`).
    pub max_wal_senders: usize,
    /// Most BASE_BACKUPs relayed at once; 0 refuses BASE_BACKUP.
    pub max_base_backups: usize,
    /// Drop a streaming client silent this long (`wal_sender_timeout`); zero disables.
    pub sender_timeout: Duration,
    /// Close a connection that has not logged in after this long (`authentication_timeout`).
    pub authentication_timeout: Duration,
}

/// One streaming downstream, as `pg_stat_replication` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStatus {
    /// The connection's pid.
    pub pid: BackendPid,
    /// Its `application_name`.
    pub application_name: String,
    /// The slot it streams from, if any.
    pub slot: Option<SlotName>,
    /// The timeline it streams.
    pub timeline: TimelineId,
    /// Where streaming started (or resumed on a new timeline).
    pub start: Lsn,
    /// The end of what was sent to it.
    pub sent: Lsn,
    /// What it last reported.
    pub client: ClientPositions,
    /// Its address; `None` over the Unix-domain socket.
    pub client_addr: Option<IpAddr>,
    /// `write_lag`, `flush_lag` and `replay_lag`, as `pg_stat_replication` computes them.
    pub lags: LagReader,
    /// Whether it has once been sent everything the relay held: its `state` is then
    /// `streaming`, before that `catchup`, as in `pg_stat_replication`.
    pub caught_up: bool,
}

impl StreamStatus {
    /// `pg_stat_replication.state`.
    pub fn state(&self) -> &'static str {
        if self.caught_up {
            "streaming"
        } else {
            "catchup"
        }
    }
}

/// What the connected streams report: where each one is, and its hot-standby feedback.
#[derive(Debug, Default)]
struct Live {
    streams: BTreeMap<BackendPid, StreamStatus>,
    feedback: BTreeMap<BackendPid, XminHorizon>,
}

/// What every downstream connection shares.
pub(crate) struct ServerContext {
    config: RwLock<DownstreamConfig>,
    upstream: watch::Receiver<Option<Arc<UpstreamInfo>>>,
    pub(crate) hub: Hub,
    slots: Mutex<SlotRegistry>,
    slot_file: Arc<dyn SlotPersister>,
    /// The oldest `restart_lsn` of the slots as last written to disk.
    slots_on_disk: Mutex<Option<Lsn>>,
    next_pid: AtomicI32,
    senders: AtomicUsize,
    /// BASE_BACKUPs being relayed.
    backups: AtomicUsize,
    /// The upstream side's settings, as reloaded: BASE_BACKUP is taken from its server
    /// unless `backup_conninfo` names another.
    backup_upstream: Option<watch::Receiver<UpstreamSettings>>,
    /// `base_backup_upstream`, parsed.
    backup_conninfo: RwLock<Option<ConnInfo>>,
    cancel_seed: i32,
    /// The connections relaying a BASE_BACKUP, by pid: their cancel key, and what wakes them
    /// when a CancelRequest names them.
    backup_cancels: Mutex<BTreeMap<BackendPid, (i32, Arc<Notify>)>>,
    live: Mutex<Live>,
    horizon: watch::Sender<XminHorizon>,
    access: RwLock<Arc<Access>>,
    /// Where connections are counted.
    pub(crate) counters: Arc<Counters>,
    /// When the durable end reached each position, for the streams' lags.
    durable_times: Mutex<DurableTimes>,
    /// Which streams are synchronous standbys.
    sync_names: Mutex<Option<Arc<SyncStandbyNames>>>,
    /// What the synchronous standbys let the relay acknowledge upstream.
    sync_ack: watch::Sender<SyncAck>,
}

impl std::fmt::Debug for ServerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerContext")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Locks a mutex; a panic elsewhere leaves the data usable (it is plain data).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ServerContext {
    /// Everything the connections share. `horizon` receives the oldest xmin the streams hold.
    pub(crate) fn new(
        config: DownstreamConfig,
        upstream: watch::Receiver<Option<Arc<UpstreamInfo>>>,
        hub: Hub,
        slots: SlotRegistry,
        slot_file: Arc<dyn SlotPersister>,
        horizon: watch::Sender<XminHorizon>,
        access: Access,
    ) -> ServerContext {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        ServerContext {
            config: RwLock::new(config),
            upstream,
            hub,
            slots_on_disk: Mutex::new(slots.min_restart_lsn()),
            slots: Mutex::new(slots),
            slot_file,
            next_pid: AtomicI32::new(
                i32::try_from(std::process::id() % 1_000_000).unwrap_or(1) * 1000 + 1,
            ),
            senders: AtomicUsize::new(0),
            backups: AtomicUsize::new(0),
            backup_upstream: None,
            backup_conninfo: RwLock::new(None),
            cancel_seed: i32::from_ne_bytes(seed.to_ne_bytes()),
            backup_cancels: Mutex::default(),
            live: Mutex::new(Live::default()),
            horizon,
            access: RwLock::new(Arc::new(access)),
            counters: Arc::default(),
            durable_times: Mutex::new(DurableTimes::default()),
            sync_names: Mutex::new(None),
            sync_ack: watch::channel(SyncAck::Off).0,
        }
    }

    /// Publishes what the synchronous standbys let the relay acknowledge into `ack`, which
    /// the upstream side reads, choosing them by `names` (none: [`SyncAck::Off`]).
    pub(crate) fn with_synchronous(
        mut self,
        names: Option<SyncStandbyNames>,
        ack: watch::Sender<SyncAck>,
    ) -> ServerContext {
        self.sync_ack = ack;
        self.set_synchronous(names);
        self
    }

    /// What the synchronous standbys let the relay acknowledge now.
    pub(crate) fn sync_ack(&self) -> SyncAck {
        *self.sync_ack.borrow()
    }

    /// Chooses the synchronous standbys by `names` from now on.
    pub(crate) fn set_synchronous(&self, names: Option<SyncStandbyNames>) {
        *lock(&self.sync_names) = names.map(Arc::new);
        self.refresh_sync(&lock(&self.live));
    }

    /// Decides again what the synchronous standbys allow, publishes it when it changed, and
    /// logs when commits upstream start or stop waiting for too few standbys.
    fn refresh_sync(&self, live: &Live) {
        let names = lock(&self.sync_names).clone();
        let ack = match names.as_deref() {
            None => SyncAck::Off,
            Some(names) => {
                let standbys: Vec<Standby<'_>> = live
                    .streams
                    .values()
                    .map(|s| Standby {
                        application_name: &s.application_name,
                        streaming: s.caught_up,
                        positions: AckPositions {
                            write: s.client.write,
                            flush: s.client.flush,
                            apply: s.client.apply,
                        },
                    })
                    .collect();
                names.decide(&standbys)
            }
        };
        self.sync_ack.send_if_modified(|old| {
            if *old == ack {
                return false;
            }
            match (*old, ack) {
                (SyncAck::Short { available: was, .. }, SyncAck::Short { available, .. })
                    if was == available => {}
                (_, SyncAck::Short { required, available }) => warn!(
                    required,
                    available,
                    "too few synchronous standbys are streaming: the relay acknowledges nothing more upstream, so commits that wait for it wait"
                ),
                (SyncAck::Short { .. } | SyncAck::Off, SyncAck::Held(_)) => info!(
                    names = %names.as_deref().map(ToString::to_string).unwrap_or_default(),
                    "enough synchronous standbys are streaming: acknowledging what they hold"
                ),
                _ => {}
            }
            *old = ack;
            true
        });
    }

    /// The limits and timeouts now.
    pub(crate) fn config(&self) -> DownstreamConfig {
        *self.config.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// New limits and timeouts, for the connections that come next.
    pub(crate) fn set_config(&self, config: DownstreamConfig) {
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
    }

    /// Takes BASE_BACKUPs from the upstream `settings` name (none: BASE_BACKUP fails with
    /// "could not connect").
    pub(crate) fn with_backup_upstream(
        mut self,
        settings: watch::Receiver<UpstreamSettings>,
    ) -> ServerContext {
        self.backup_upstream = Some(settings);
        self
    }

    /// Takes BASE_BACKUPs from the server `conninfo` names rather than from the upstream;
    /// `None`: from the upstream. For the backups that come next.
    pub(crate) fn set_backup_conninfo(&self, conninfo: Option<ConnInfo>) {
        *self
            .backup_conninfo
            .write()
            .unwrap_or_else(PoisonError::into_inner) = conninfo;
    }

    /// The connection string a BASE_BACKUP is taken with, as configured now.
    pub(crate) fn backup_upstream(&self) -> Option<ConnInfo> {
        let own = self
            .backup_conninfo
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        own.or_else(|| {
            self.backup_upstream
                .as_ref()
                .map(|s| s.borrow().conninfo.clone())
        })
    }

    /// Takes one of `max_base_backups` places; `None` when all are taken.
    pub(crate) fn claim_backup(self: &Arc<Self>) -> Option<BackupPlace> {
        let max = self.config().max_base_backups;
        self.backups
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(BackupPlace {
            ctx: Arc::clone(self),
        })
    }

    /// Counts into `counters` (the relay's) rather than a set of its own.
    pub(crate) fn with_counters(mut self, counters: Arc<Counters>) -> ServerContext {
        self.counters = counters;
        self
    }

    /// What a session needs to know of the relay, with `durable` as the end to serve.
    pub(crate) fn view(&self, durable: DurableEnd) -> RelayView {
        RelayView {
            upstream: self.upstream.borrow().clone(),
            durable,
            histories: self.hub.histories(),
            next_xid: self.hub.next_xid(),
            last_redo: self.hub.last_redo(),
        }
    }

    /// The upstream's identity as it becomes known.
    pub(crate) fn upstream_known(&self) -> watch::Receiver<Option<Arc<UpstreamInfo>>> {
        self.upstream.clone()
    }

    /// The limits a session answers with, under `access`, for a client at `peer`: TLS is
    /// offered over TCP when there is a certificate, never over the Unix socket (as in
    /// PostgreSQL).
    pub(crate) fn session_config(&self, access: &Access, peer: Peer) -> SessionConfig {
        SessionConfig {
            max_wal_senders: self.config().max_wal_senders,
            max_base_backups: self.config().max_base_backups,
            sender_timeout: self.config().sender_timeout,
            shutdown_wait: SHUTDOWN_WAIT,
            tls: access.tls.is_some() && peer != Peer::Local,
        }
    }

    /// The certificate and rules a new connection uses.
    pub(crate) fn access(&self) -> Arc<Access> {
        Arc::clone(&self.access.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Reads the access files again for the connections that come next, and logs what
    /// changed; on an error, logs it and keeps what there was.
    pub(crate) fn reload(&self, reload: &Reload) -> Result<(), AccessError> {
        let new = match Access::load(&reload.files, reload.mock_nonce) {
            Ok(new) => new,
            Err(e) => {
                warn!(error = %e, "configuration files not reloaded: the current certificate and rules stay in force");
                return Err(e);
            }
        };
        let changes = self.access().changes(&new);
        *self.access.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(new);
        if changes.is_empty() {
            info!("configuration files reloaded: nothing changed");
        }
        for change in changes {
            info!(%change, "configuration files reloaded");
        }
        Ok(())
    }

    /// The registry, for in-memory work only.
    pub(crate) fn slots(&self) -> MutexGuard<'_, SlotRegistry> {
        lock(&self.slots)
    }

    /// Takes one of `max_wal_senders` places; `None` when all are taken.
    pub(crate) fn claim_sender(self: &Arc<Self>) -> Option<SenderPlace> {
        let max = self.config().max_wal_senders;
        self.senders
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        let pid = BackendPid(self.next_pid.fetch_add(1, Ordering::Relaxed));
        // Unguessable: a CancelRequest with it interrupts the connection's BASE_BACKUP.
        let cancel_key = getrandom::u32().map_or(self.cancel_seed ^ pid.0, |k| {
            i32::from_ne_bytes(k.to_ne_bytes())
        });
        Some(SenderPlace {
            ctx: Arc::clone(self),
            pid,
            cancel_key,
        })
    }

    /// Lets a CancelRequest carrying `pid` and `key` reach the BASE_BACKUP this connection
    /// relays, until the returned watch is dropped.
    pub(crate) fn watch_cancel(self: &Arc<Self>, pid: BackendPid, key: i32) -> CancelWatch {
        let notify = Arc::new(Notify::new());
        lock(&self.backup_cancels).insert(pid, (key, Arc::clone(&notify)));
        CancelWatch {
            ctx: Arc::clone(self),
            pid,
            notify,
        }
    }

    /// A CancelRequest: wakes the BASE_BACKUP of connection `pid` if `key` is its key. As
    /// PostgreSQL, says nothing to the requester either way.
    pub(crate) fn cancel(&self, pid: BackendPid, key: i32) {
        match lock(&self.backup_cancels).get(&pid) {
            Some((k, notify)) if *k == key => {
                info!(pid = pid.0, "cancel request for a relayed BASE_BACKUP");
                notify.notify_one();
            }
            Some(_) => debug!(pid = pid.0, "wrong key in cancel request"),
            None => debug!(
                pid = pid.0,
                "cancel request for a connection with nothing to cancel"
            ),
        }
    }

    /// Creates a slot; a persistent one is on disk before this returns.
    pub(crate) async fn create_slot(
        &self,
        name: &SlotName,
        persistency: Persistency,
        reserve: Option<Lsn>,
    ) -> Result<(), SlotError> {
        let pending = self.slots().create(name, persistency, reserve)?;
        self.write(pending).await
    }

    /// Drops a slot on behalf of `pid`, durably; with `wait`, waits while another connection
    /// holds it. `None` when shutdown came first.
    pub(crate) async fn drop_slot(
        &self,
        name: &str,
        pid: BackendPid,
        wait: bool,
        shutdown: &CancellationToken,
    ) -> Option<Result<(), SlotError>> {
        loop {
            let dropped = self.slots().drop_slot(name, pid);
            match dropped {
                Err(SlotError::Active { .. }) if wait => {}
                Err(e) => return Some(Err(e)),
                Ok(pending) => return Some(self.write(pending).await),
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(DROP_WAIT_POLL) => {}
            }
        }
    }

    /// Invalidates the slots behind `floor` durably; returns their names.
    pub(crate) async fn invalidate_slots_behind(
        &self,
        floor: Lsn,
    ) -> Result<Vec<SlotName>, SlotError> {
        let (lost, pending) = self.slots().invalidate_behind(floor);
        self.write(pending).await.map(|()| lost)
    }

    /// Writes the slot positions that moved since the last write, if any.
    pub(crate) async fn save_slots(&self) -> Result<(), SlotError> {
        let Some(snapshot) = self.slots().take_dirty() else {
            return Ok(());
        };
        let floor = snapshot.min_restart_lsn();
        let file = Arc::clone(&self.slot_file);
        let written = tokio::task::spawn_blocking(move || file.write(&snapshot))
            .await
            .unwrap_or_else(|e| Err(blocking_failed(e)));
        match written {
            Ok(()) => *lock(&self.slots_on_disk) = floor,
            Err(_) => self.slots().mark_dirty(),
        }
        written
    }

    /// The oldest WAL the slots hold: their `restart_lsn` in memory, or as last written to
    /// disk where that is older. Retention keeps both, as PostgreSQL writes its slots before
    /// it removes WAL, so that a slot read back after a crash never points at removed WAL.
    pub(crate) fn slots_floor(&self) -> Option<Lsn> {
        let in_memory = self.slots().min_restart_lsn();
        [in_memory, *lock(&self.slots_on_disk)]
            .into_iter()
            .flatten()
            .min()
    }

    /// Writes a pending change off the runtime's threads, and undoes it if that fails.
    async fn write(&self, pending: Option<Pending>) -> Result<(), SlotError> {
        let Some(pending) = pending else {
            return Ok(());
        };
        let snapshot = pending.snapshot().clone();
        let floor = snapshot.min_restart_lsn();
        let file = Arc::clone(&self.slot_file);
        let written = tokio::task::spawn_blocking(move || file.write(&snapshot))
            .await
            .unwrap_or_else(|e| Err(blocking_failed(e)));
        match written {
            Ok(()) => *lock(&self.slots_on_disk) = floor,
            Err(_) => self.slots().undo(pending),
        }
        written
    }

    /// Records a stream that starts; retention keeps what connected streams still read.
    pub(crate) fn begin_stream(&self, status: StreamStatus) {
        let mut live = lock(&self.live);
        live.streams.insert(status.pid, status);
        self.refresh_sync(&live);
    }

    /// Records how far a stream has been sent and what its client last reported.
    pub(crate) fn update_stream(&self, pid: BackendPid, sent: Lsn, client: ClientPositions) {
        let now = Instant::now();
        let mut live = lock(&self.live);
        if let Some(s) = live.streams.get_mut(&pid) {
            if client != s.client {
                // A new reply: its positions read the lags.
                let reported = Reported {
                    write: client.write,
                    flush: client.flush,
                    apply: client.apply,
                };
                s.lags
                    .on_reply(reported, sent, now, &lock(&self.durable_times));
            }
            s.sent = sent;
            s.client = client;
            if !s.caught_up && sent >= self.hub.durable().lsn {
                s.caught_up = true;
            }
            self.refresh_sync(&live);
        }
    }

    /// Replication connections holding a sender place now.
    pub(crate) fn senders_in_use(&self) -> usize {
        self.senders.load(Ordering::Relaxed)
    }

    /// The connected streams.
    pub(crate) fn streams(&self) -> Vec<StreamStatus> {
        lock(&self.live).streams.values().cloned().collect()
    }

    /// The durable end reached `lsn` now: the time lags are measured from.
    pub(crate) fn record_durable(&self, lsn: Lsn, at: Instant) {
        lock(&self.durable_times).record(lsn, at);
    }

    /// The oldest cursor of the connected streams.
    pub(crate) fn oldest_cursor(&self) -> Option<Lsn> {
        lock(&self.live).streams.values().map(|s| s.sent).min()
    }

    /// Records a stream's hot-standby feedback, for its slot and for the horizon the relay
    /// reports upstream.
    pub(crate) fn set_feedback(&self, pid: BackendPid, slot: Option<&str>, feedback: XminHorizon) {
        let mut live = lock(&self.live);
        live.feedback.insert(pid, feedback);
        self.horizon
            .send_replace(XminHorizon::oldest(live.feedback.values()));
        drop(live);
        if let Some(name) = slot {
            let _ = self.slots().hot_standby_feedback(name, feedback);
        }
    }

    /// Forgets a stream that ended: its cursor no longer holds WAL and its feedback no longer
    /// holds back the upstream.
    pub(crate) fn forget_stream(&self, pid: BackendPid) {
        let mut live = lock(&self.live);
        live.streams.remove(&pid);
        if live.feedback.remove(&pid).is_some() {
            self.horizon
                .send_replace(XminHorizon::oldest(live.feedback.values()));
        }
        self.refresh_sync(&live);
    }
}

fn blocking_failed(e: tokio::task::JoinError) -> SlotError {
    SlotError::Io {
        op: "write",
        path: crate::slots::STATE_FILE.into(),
        source: std::io::Error::other(e),
    }
}

/// While it lives, a CancelRequest for its connection wakes [`CancelWatch::cancelled`].
#[derive(Debug)]
pub(crate) struct CancelWatch {
    ctx: Arc<ServerContext>,
    pid: BackendPid,
    notify: Arc<Notify>,
}

impl CancelWatch {
    /// Waits for a CancelRequest (one that came before this is waited on is not lost).
    pub(crate) async fn cancelled(&self) {
        self.notify.notified().await;
    }
}

impl Drop for CancelWatch {
    fn drop(&mut self) {
        lock(&self.ctx.backup_cancels).remove(&self.pid);
    }
}

/// One of the `max_wal_senders` places, held for the life of a connection. Dropping it frees
/// the place, forgets the connection's stream, and releases its slots and drops its temporary
/// ones, as `ReplicationSlotCleanup` does.
#[derive(Debug)]
pub(crate) struct SenderPlace {
    ctx: Arc<ServerContext>,
    /// The pid reported in BackendKeyData.
    pub(crate) pid: BackendPid,
    /// The secret reported with it, which a CancelRequest must carry.
    pub(crate) cancel_key: i32,
}

impl Drop for SenderPlace {
    fn drop(&mut self) {
        self.ctx.forget_stream(self.pid);
        let dropped = self.ctx.slots().release_owner(self.pid);
        if !dropped.is_empty() {
            debug!(slots = ?dropped, "dropped temporary slots");
        }
        self.ctx.senders.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One of the `max_base_backups` places, held while a BASE_BACKUP is relayed.
#[derive(Debug)]
pub(crate) struct BackupPlace {
    ctx: Arc<ServerContext>,
}

impl Drop for BackupPlace {
    fn drop(&mut self) {
        self.ctx.backups.fetch_sub(1, Ordering::AcqRel);
    }
}
