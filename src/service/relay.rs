//! A relay: its store and writer thread, its hub, the upstream connection, and when it
//! listens, its slot registry and downstream listener. Everything is built in
//! [`Relay::open`], in the order the parts need each other, and runs in [`Relay::run`].
//!
//! Shutdown follows DESIGN.md habit 7: the token fires (SIGTERM or SIGINT), the listener stops
//! accepting, every downstream stream ends as a walsender's does, and the upstream task lets
//! the writer sync what is queued, sends a final status update and closes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, ConfigChanges};
use crate::hub::{Hub, HubFeed};
use crate::metrics::Counters;
use crate::proto::conninfo::{ConnInfo, ConnInfoError, Env};
use crate::proto::syncrep::{SyncAck, SyncNamesError, SyncStandbyNames};
use crate::proto::upstream::StreamTiming;
use crate::service::downstream::{
    Access, AccessError, DownstreamConfig, Reload, ServerContext, mock_nonce,
};
use crate::service::http::{self, HttpError};
use crate::service::listener::{self, BoundUnixSocket};
use crate::service::retention::{self, RetentionPolicy};
use crate::service::status::{RelayMonitor, RelayStatus};
use crate::service::upstream::{self, Links, UpstreamError, UpstreamSettings};
use crate::service::wal_stream::WalStream;
use crate::service::writer::{Positions, Writer, WriterError};
use crate::slots::{SlotError, SlotFile, SlotRegistry};
use crate::storage::{
    DataDirLock, StoreError, UPSTREAM_STATE_FILE, load_upstream_info, save_upstream_info,
};
use crate::types::{Lsn, TimelineId, UpstreamInfo, XminHorizon};

/// How much recent WAL the hub keeps in memory for senders that keep up.
const TAIL_CACHE_BYTES: usize = 4 << 20;

/// How often slot positions are written to disk (PostgreSQL does it at checkpoints).
const SLOT_PERSIST_INTERVAL: Duration = Duration::from_secs(1);

/// Why the relay could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The upstream connection string is invalid.
    #[error("invalid upstream connection string: {0}")]
    ConnInfo(#[from] ConnInfoError),
    /// The `base_backup_upstream` connection string is invalid.
    #[error("invalid base_backup_upstream connection string: {0}")]
    BackupConnInfo(ConnInfoError),
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The writer failed for good.
    #[error(transparent)]
    Writer(#[from] WriterError),
    /// The slot registry cannot be opened.
    #[error(transparent)]
    Slots(#[from] SlotError),
    /// The listen address is invalid or taken.
    #[error("could not listen on \"{address}\": {source}")]
    Listen {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The upstream side failed for good.
    #[error(transparent)]
    Upstream(Box<UpstreamError>),
    /// The relay's task ended abnormally.
    #[error("the relay's task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The upstream side's thread could not start or ended abnormally.
    #[error("the upstream thread failed: {0}")]
    Thread(String),
    /// A setting is invalid.
    #[error(transparent)]
    SlotName(#[from] crate::types::SlotNameError),
    /// The certificate or an access file cannot be used.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The HTTP endpoint cannot start.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// `synchronous_standby_names` does not parse.
    #[error(transparent)]
    SyncStandbyNames(#[from] SyncNamesError),
}

impl From<UpstreamError> for RelayError {
    fn from(e: UpstreamError) -> Self {
        RelayError::Upstream(Box::new(e))
    }
}

/// The downstream side, ready to serve once the upstream is known.
#[derive(Debug)]
struct Downstream {
    listener: std::net::TcpListener,
    unix: Option<BoundUnixSocket>,
    ctx: Arc<ServerContext>,
    reload: Arc<Mutex<Reload>>,
}

/// Applies a new configuration to a running relay, as SIGHUP does to `walrelay run`.
#[derive(Debug, Clone)]
pub struct Reloader {
    /// The configuration in force.
    running: Arc<Mutex<Config>>,
    upstream: Arc<watch::Sender<UpstreamSettings>>,
    retention: Arc<watch::Sender<RetentionPolicy>>,
    downstream: Option<(Arc<Mutex<Reload>>, Arc<ServerContext>)>,
    http: Option<Arc<http::HttpSettings>>,
}

impl Reloader {
    /// Reads the certificate, key, CA, hba, auth and ident files again; the connections that
    /// come next use them, and those already connected keep what they came with. A relay
    /// that does not listen has nothing to read.
    ///
    /// # Errors
    /// A file that cannot be read or parsed: it is logged, and the relay keeps what it had.
    pub fn reload(&self) -> Result<(), AccessError> {
        match &self.downstream {
            Some((reload, ctx)) => ctx.reload(&lock(reload)),
            None => Ok(()),
        }
    }

    /// Applies `new`: the upstream connection (the relay reconnects with it; downstreams
    /// go on streaming what the store holds), retention, limits and timeouts for the
    /// connections that come next, the HTTP token, and the access files, read again. What
    /// only a restart can change (data directory, listen addresses, `max_replication_slots`)
    /// is logged and kept. Everything is checked before anything is applied, so a new
    /// configuration that fails leaves the running one as it was.
    ///
    /// # Errors
    /// An invalid upstream connection string, or a token, certificate or access file that
    /// cannot be read or parsed.
    pub fn apply(&self, new: &Config) -> Result<ConfigChanges, RelayError> {
        let mut running = lock(&self.running);
        let changes = running.changes(new);
        let new = running.reloaded(new);
        let settings = upstream_settings(&new)?;
        let sync_names = sync_standby_names(&new)?;
        let backup_conninfo = backup_conninfo(&new)?;
        let token = match (&self.http, &new.http_token_file) {
            (Some(_), Some(path)) => Some(http::read_token(path)?),
            _ => None,
        };
        if let Some((reload, ctx)) = &self.downstream {
            let mut reload = lock(reload);
            let next = Reload {
                files: new.access.clone(),
                mock_nonce: reload.mock_nonce,
            };
            ctx.reload(&next)?;
            *reload = next;
            ctx.set_config(downstream_config(&new));
            ctx.set_backup_conninfo(backup_conninfo);
            if changes.applied.contains(&"synchronous_standby_names") {
                ctx.set_synchronous(sync_names);
            }
        }
        const UPSTREAM: [&str; 7] = [
            "upstream",
            "upstream_slot",
            "application_name",
            "status_interval",
            "receive_timeout",
            "reconnect_min",
            "reconnect_max",
        ];
        if changes.applied.iter().any(|c| UPSTREAM.contains(c)) {
            self.upstream.send_replace(settings);
        }
        self.retention.send_replace(retention_policy(&new));
        if let Some(settings) = &self.http {
            *settings
                .token
                .write()
                .unwrap_or_else(PoisonError::into_inner) = token;
            *settings
                .ready_window
                .write()
                .unwrap_or_else(PoisonError::into_inner) = new.ready_upstream_window;
        }
        for setting in &changes.applied {
            info!(setting, "setting reloaded");
        }
        for setting in &changes.need_restart {
            warn!(
                setting,
                "setting changed in the configuration, but only a restart applies it: the running value stays"
            );
        }
        if changes.is_empty() {
            info!("configuration reloaded: no setting changed");
        }
        *running = new;
        Ok(changes)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The upstream side's settings in `config`.
fn upstream_settings(config: &Config) -> Result<UpstreamSettings, RelayError> {
    Ok(UpstreamSettings {
        conninfo: ConnInfo::parse(&config.upstream, &process_env())?,
        slot: config.upstream_slot.to_string(),
        application_name: config.application_name.clone(),
        timing: StreamTiming {
            status_interval: config.status_interval,
            receive_timeout: config.receive_timeout,
        },
        reconnect_min: config.reconnect_min,
        reconnect_max: config.reconnect_max.max(config.reconnect_min),
    })
}

/// The server BASE_BACKUP is taken from, when `config` names one other than the upstream.
fn backup_conninfo(config: &Config) -> Result<Option<ConnInfo>, RelayError> {
    config
        .base_backup_upstream
        .as_deref()
        .map(|s| ConnInfo::parse(s, &process_env()))
        .transpose()
        .map_err(RelayError::BackupConnInfo)
}

/// The synchronous standbys `config` names, parsed.
fn sync_standby_names(config: &Config) -> Result<Option<SyncStandbyNames>, RelayError> {
    Ok(config
        .synchronous_standby_names
        .as_deref()
        .map(str::parse)
        .transpose()?)
}

fn retention_policy(config: &Config) -> RetentionPolicy {
    RetentionPolicy {
        wal_keep_size: config.wal_keep_size,
        max_slot_wal_keep_size: config.max_slot_wal_keep_size,
    }
}

fn downstream_config(config: &Config) -> DownstreamConfig {
    DownstreamConfig {
        max_wal_senders: config.max_wal_senders,
        max_base_backups: config.max_base_backups,
        sender_timeout: config.sender_timeout,
        authentication_timeout: config.authentication_timeout,
    }
}

/// A relay that has opened its store and is ready to stream.
#[derive(Debug)]
pub struct Relay {
    /// Held while the relay lives: no other relay may use the data directory.
    _lock: DataDirLock,
    /// What the relay's tasks count, for the metrics.
    counters: Arc<Counters>,
    config: Arc<Mutex<Config>>,
    upstream: Arc<watch::Sender<UpstreamSettings>>,
    retention: Arc<watch::Sender<RetentionPolicy>>,
    data_dir: PathBuf,
    hub: Hub,
    /// The hub's feed outlives the writer thread: streams end with the relay, not before.
    feed: Arc<HubFeed>,
    writer: Writer,
    info: watch::Sender<Option<Arc<UpstreamInfo>>>,
    horizon: watch::Receiver<XminHorizon>,
    /// What the synchronous standbys let the relay acknowledge upstream.
    sync: watch::Receiver<SyncAck>,
    downstream: Option<Downstream>,
    http: Option<Http>,
}

/// The HTTP endpoint, bound and ready to serve.
#[derive(Debug)]
struct Http {
    listener: std::net::TcpListener,
    settings: Arc<http::HttpSettings>,
}

/// Builds a [`Relay`]: where it streams from and stores WAL, whether it serves, and its
/// settings, each with the default `walrelay run` has.
///
/// ```no_run
/// # async fn example() -> Result<(), walrelay::RelayError> {
/// let relay = walrelay::Relay::builder("host=db1 user=walrelay", "/var/lib/walrelay")
///     .listen("127.0.0.1:5433")
///     .upstream_slot("relay_1")?
///     .open()?;
/// let handle = relay.spawn();
/// println!("{:?}", handle.status());
/// handle.shutdown().await
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RelayBuilder {
    config: Config,
}

impl RelayBuilder {
    /// Serves downstream clients on `address` (`HOST:PORT`; port 0 picks a free one).
    pub fn listen(mut self, address: impl Into<String>) -> RelayBuilder {
        self.config.listen = Some(address.into());
        self
    }

    /// The relay's physical slot on the upstream (default `walrelay`).
    ///
    /// # Errors
    /// A name PostgreSQL would refuse.
    pub fn upstream_slot(mut self, name: &str) -> Result<RelayBuilder, RelayError> {
        self.config.upstream_slot = crate::types::SlotName::new(name)?;
        Ok(self)
    }

    /// Any other setting, on the [`Config`] itself.
    pub fn configure(mut self, f: impl FnOnce(&mut Config)) -> RelayBuilder {
        f(&mut self.config);
        self
    }

    /// The configuration so far.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Opens the relay: see [`Relay::open`].
    ///
    /// # Errors
    /// As [`Relay::open`].
    pub fn open(self) -> Result<Relay, RelayError> {
        Relay::open(&self.config)
    }
}

/// A relay running on the tokio runtime, from [`Relay::spawn`].
#[derive(Debug)]
pub struct RelayHandle {
    monitor: RelayMonitor,
    reloader: Reloader,
    hub: Hub,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), RelayError>>,
}

impl Relay {
    /// How long shutdown may take before a program gives up waiting.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

    /// A relay streaming from `upstream` (a libpq connection string) into `data_dir`, with
    /// every other setting at its default and no listener.
    pub fn builder(upstream: impl Into<String>, data_dir: impl Into<PathBuf>) -> RelayBuilder {
        RelayBuilder {
            config: Config::new(upstream, data_dir),
        }
    }

    /// Takes the data directory's lock, opens (and recovers) the store and starts its writer,
    /// opens the slot registry and binds the listen address if there is one.
    ///
    /// # Errors
    /// A bad connection string, a data directory another relay holds, a store or slot
    /// registry that cannot be opened, or an address that cannot be bound.
    pub fn open(config: &Config) -> Result<Relay, RelayError> {
        let settings = upstream_settings(config)?;
        let upstream = Arc::new(watch::channel(settings).0);
        let lock = DataDirLock::acquire(&config.data_dir)?;
        let (hub, feed) = Hub::new(config.data_dir.join("wal"), TAIL_CACHE_BYTES);
        let feed = Arc::new(feed);
        let counters = Arc::new(Counters::default());
        let writer = Writer::open(&config.data_dir, Arc::clone(&feed), Arc::clone(&counters))?;
        let (info, info_rx) = watch::channel(None);
        let (horizon_tx, horizon) = watch::channel(XminHorizon::default());
        let (sync_tx, sync) = watch::channel(SyncAck::Off);
        let sync_names = sync_standby_names(config)?;
        let downstream = match &config.listen {
            None => None,
            Some(address) => {
                let mock_nonce = mock_nonce(&config.data_dir)?;
                let ctx = ServerContext::new(
                    downstream_config(config),
                    info_rx,
                    hub.clone(),
                    SlotRegistry::open(&config.data_dir, config.max_replication_slots)?,
                    Arc::new(SlotFile::new(&config.data_dir)),
                    horizon_tx,
                    Access::load(&config.access, mock_nonce)?,
                )
                .with_counters(Arc::clone(&counters))
                .with_synchronous(sync_names, sync_tx)
                .with_backup_upstream(upstream.subscribe());
                ctx.set_backup_conninfo(backup_conninfo(config)?);
                let listener = bind(address)?;
                let unix = match &config.unix_socket_dir {
                    None => None,
                    Some(dir) => {
                        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
                        Some(BoundUnixSocket::bind(dir, port).map_err(|source| {
                            RelayError::Listen {
                                address: dir.display().to_string(),
                                source,
                            }
                        })?)
                    }
                };
                Some(Downstream {
                    listener,
                    unix,
                    ctx: Arc::new(ctx),
                    reload: Arc::new(Mutex::new(Reload {
                        files: config.access.clone(),
                        mock_nonce,
                    })),
                })
            }
        };
        let http = match &config.http_listen {
            None => None,
            Some(address) => {
                let token = config
                    .http_token_file
                    .as_deref()
                    .map(http::read_token)
                    .transpose()?;
                let listener = bind(address)?;
                let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
                if !loopback && token.is_none() {
                    warn!(
                        address = %address,
                        "the HTTP endpoint listens beyond loopback without http_token_file: /metrics and /status answer loopback clients only"
                    );
                }
                Some(Http {
                    listener,
                    settings: Arc::new(http::HttpSettings {
                        token: RwLock::new(token),
                        ready_window: RwLock::new(config.ready_upstream_window),
                    }),
                })
            }
        };
        Ok(Relay {
            _lock: lock,
            http,
            counters,
            config: Arc::new(Mutex::new(config.clone())),
            upstream,
            retention: Arc::new(watch::channel(retention_policy(config)).0),
            data_dir: config.data_dir.clone(),
            hub,
            feed,
            writer,
            info,
            horizon,
            sync,
            downstream,
        })
    }

    /// The address the relay listens on, if it does.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.downstream
            .as_ref()
            .and_then(|d| d.listener.local_addr().ok())
    }

    /// What applies a new configuration, or reads the access files again, while the relay
    /// runs.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            running: Arc::clone(&self.config),
            upstream: Arc::clone(&self.upstream),
            retention: Arc::clone(&self.retention),
            downstream: self
                .downstream
                .as_ref()
                .map(|d| (Arc::clone(&d.reload), Arc::clone(&d.ctx))),
            http: self.http.as_ref().map(|h| Arc::clone(&h.settings)),
        }
    }

    /// A view of the relay's state that outlives [`Relay::run`].
    pub fn monitor(&self) -> RelayMonitor {
        RelayMonitor::new(
            self.writer.positions(),
            self.info.subscribe(),
            self.downstream.as_ref().map(|d| Arc::clone(&d.ctx)),
            Arc::clone(&self.counters),
        )
    }

    /// The relay's state now.
    pub fn status(&self) -> RelayStatus {
        self.monitor().status()
    }

    /// The validated, durable WAL from `start` on, in order, as the relay stores it: the
    /// same bytes a standby streaming from the relay gets.
    pub fn wal_stream(&self, start: Lsn) -> WalStream {
        WalStream::new(self.hub.clone(), start)
    }

    /// The history file of `timeline` as the relay stores it (what `TIMELINE_HISTORY` serves
    /// and an archive needs beside the segments of a new timeline); `None` for timeline 1 or
    /// one the relay has not seen.
    pub fn timeline_history(&self, timeline: TimelineId) -> Option<Bytes> {
        self.hub.histories().get(&timeline).cloned()
    }

    /// Runs the relay on the current tokio runtime until [`RelayHandle::shutdown`].
    pub fn spawn(self) -> RelayHandle {
        let monitor = self.monitor();
        let reloader = self.reloader();
        let hub = self.hub.clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(self.run(shutdown.clone()));
        RelayHandle {
            monitor,
            reloader,
            hub,
            shutdown,
            task,
        }
    }

    /// Streams, and serves if listening, until `shutdown` fires.
    ///
    /// # Errors
    /// Only failures that retrying cannot fix (the store's writer thread is gone).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RelayError> {
        // What the upstream told last time lets standbys be served before it is reachable.
        if let Some(identity) = self.writer.identity().await.ok().flatten()
            && let Some(known) = load_upstream_info(&self.data_dir, identity)
        {
            self.info.send_replace(Some(Arc::new(known)));
        }
        let http = self.http.map(|h| {
            let state = http::HttpState {
                monitor: RelayMonitor::new(
                    self.writer.positions(),
                    self.info.subscribe(),
                    self.downstream.as_ref().map(|d| Arc::clone(&d.ctx)),
                    Arc::clone(&self.counters),
                ),
                wal_dir: self.data_dir.join("wal"),
                retention: self.retention.subscribe(),
                settings: h.settings,
            };
            (h.listener, Arc::new(state))
        });
        let http = async {
            let Some((listener, state)) = http else {
                return;
            };
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => http::serve(listener, state, shutdown.clone()).await,
                Err(e) => warn!(error = %e, "could not serve the HTTP endpoint"),
            }
        };
        let save_info = save_info(self.info.subscribe(), self.data_dir, shutdown.clone());
        let links = Links {
            info: self.info,
            feedback: self.horizon,
            sync: self.sync,
            counters: Arc::clone(&self.counters),
        };
        // Cancelled with the relay's shutdown, or when this future is dropped.
        let upstream_stop = shutdown.child_token();
        let upstream = on_own_thread(
            upstream::run(
                self.upstream.subscribe(),
                self.writer.clone(),
                links,
                upstream_stop.clone(),
            ),
            upstream_stop.drop_guard(),
        );
        let downstream = async {
            if let Some(d) = self.downstream {
                serve(d, self.writer, self.retention.subscribe(), shutdown.clone()).await;
            }
        };
        let (up, (), (), ()) = tokio::join!(upstream, downstream, save_info, http);
        drop(self.feed);
        up?;
        info!("relay stopped");
        Ok(())
    }
}

/// Runs the upstream side on a thread of its own, with a runtime of its own: receiving WAL is
/// never queued behind the senders' tasks. With many standbys the tasks of the shared runtime
/// take turns, and a receiver that got one turn in every round of sixteen senders held back
/// the relay's durable end, and with it every standby.
/// `stop` ends it when the relay's future is dropped before it finished.
async fn on_own_thread(
    work: impl Future<Output = Result<(), UpstreamError>> + Send + 'static,
    stop: tokio_util::sync::DropGuard,
) -> Result<(), RelayError> {
    let (done, result) = tokio::sync::oneshot::channel();
    let started = std::thread::Builder::new()
        .name("upstream".into())
        .spawn(move || {
            let outcome = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(work).map_err(RelayError::from),
                Err(e) => Err(RelayError::Thread(e.to_string())),
            };
            let _ = done.send(outcome);
        });
    if let Err(e) = started {
        return Err(RelayError::Thread(e.to_string()));
    }
    let outcome = result
        .await
        .unwrap_or_else(|_| Err(RelayError::Thread("the upstream thread ended".into())));
    drop(stop);
    outcome
}

impl RelayHandle {
    /// The relay's state now.
    pub fn status(&self) -> RelayStatus {
        self.monitor.status()
    }

    /// See [`Relay::reloader`].
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// A view of the relay's state that outlives the handle.
    pub fn monitor(&self) -> RelayMonitor {
        self.monitor.clone()
    }

    /// See [`Relay::wal_stream`].
    pub fn wal_stream(&self, start: Lsn) -> WalStream {
        WalStream::new(self.hub.clone(), start)
    }

    /// See [`Relay::timeline_history`].
    pub fn timeline_history(&self, timeline: TimelineId) -> Option<Bytes> {
        self.hub.histories().get(&timeline).cloned()
    }

    /// Whether the relay stopped on its own: only a failure that retrying cannot fix stops
    /// it; [`RelayHandle::shutdown`] then says which.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the relay as SIGTERM does, and waits for it.
    ///
    /// # Errors
    /// What stopped the relay before, if anything did.
    pub async fn shutdown(self) -> Result<(), RelayError> {
        self.shutdown.cancel();
        self.task.await?
    }
}

fn bind(address: &str) -> Result<std::net::TcpListener, RelayError> {
    std::net::TcpListener::bind(address)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| RelayError::Listen {
            address: address.to_owned(),
            source,
        })
}

/// Saves what the upstream reports whenever it changes, until shutdown.
async fn save_info(
    mut info: watch::Receiver<Option<Arc<UpstreamInfo>>>,
    data_dir: PathBuf,
    shutdown: CancellationToken,
) {
    let mut saved = info.borrow_and_update().clone();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = info.changed() => if changed.is_err() { return },
        }
        let now = info.borrow_and_update().clone();
        if now == saved {
            continue;
        }
        if let Some(current) = now.clone() {
            let dir = data_dir.clone();
            let written =
                tokio::task::spawn_blocking(move || save_upstream_info(&dir, &current)).await;
            if let Ok(Err(e)) = written {
                warn!(error = %e, "could not save {UPSTREAM_STATE_FILE}");
            }
        }
        saved = now;
    }
}

/// Waits until the upstream is known, then serves downstream connections until shutdown,
/// saving slot positions and applying retention meanwhile.
async fn serve(
    d: Downstream,
    writer: Writer,
    retention: watch::Receiver<RetentionPolicy>,
    shutdown: CancellationToken,
) {
    let mut known = d.ctx.upstream_known();
    tokio::select! {
        () = shutdown.cancelled() => return,
        known = known.wait_for(Option::is_some) => if known.is_err() { return },
    }
    let listener = match tokio::net::TcpListener::from_std(d.listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "could not serve the listen socket");
            return;
        }
    };
    let unix = match d.unix.map(BoundUnixSocket::serve).transpose() {
        Ok(unix) => unix,
        Err(e) => {
            warn!(error = %e, "could not serve the Unix-domain socket");
            return;
        }
    };
    let ctx = d.ctx;
    tokio::join!(
        listener::serve(listener, unix, Arc::clone(&ctx), shutdown.clone()),
        save_slots(Arc::clone(&ctx), shutdown.clone()),
        record_durable(Arc::clone(&ctx), writer.positions(), shutdown.clone()),
        retention::run(Arc::clone(&ctx), writer, retention, shutdown)
    );
    if let Err(e) = ctx.save_slots().await {
        warn!(error = %e, "could not save replication slots");
    }
}

/// Notes when the durable end reaches each position, which the streams' lags are measured
/// from, until shutdown.
async fn record_durable(
    ctx: Arc<ServerContext>,
    mut positions: watch::Receiver<Positions>,
    shutdown: CancellationToken,
) {
    loop {
        let durable = positions.borrow_and_update().durable;
        ctx.record_durable(durable, std::time::Instant::now());
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = positions.changed() => if changed.is_err() { return },
        }
    }
}

/// Writes moved slot positions to disk now and then, until shutdown.
async fn save_slots(ctx: Arc<ServerContext>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SLOT_PERSIST_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = ctx.save_slots().await {
            warn!(error = %e, "could not save replication slots");
        }
    }
}

/// The process environment as libpq would read it: `PG*` variables, the OS user, `HOME`.
pub fn process_env() -> Env {
    let mut env = Env::from_lookup(|k| std::env::var(k).ok());
    if let Some(user) = std::env::var("USER")
        .ok()
        .or_else(|| std::env::var("LOGNAME").ok())
        .or_else(os_user_name)
    {
        env = env.with_os_user(user);
    }
    if let Ok(home) = std::env::var("HOME") {
        env = env.with_home(home);
    }
    env
}

/// The name of the process's real user, from `/proc/self/status` and `/etc/passwd`.
fn os_user_name() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_owned();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid).then(|| name.to_owned())
    })
}
