//! A running relay: the store and its writer thread, the upstream connection, and, when it
//! listens, the hub, the slot registry and the downstream listener.
//!
//! Shutdown follows DESIGN.md habit 7: the token fires (SIGTERM or SIGINT), the listener stops
//! accepting, every downstream stream ends as a walsender's does, and the upstream task lets
//! the writer sync what is queued, sends a final status update and closes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::hub::{Hub, HubFeed};
use crate::proto::conninfo::{ConnInfo, ConnInfoError, Env};
use crate::proto::stream::StreamTiming;
use crate::service::downstream::{DownstreamConfig, ServerContext, StreamStatus, UpstreamInfo};
use crate::service::listener;
use crate::service::retention::{self, RetentionPolicy};
use crate::service::upstream::{self, Links, UpstreamError, UpstreamSettings};
use crate::service::upstream_info;
use crate::service::writer::{Positions, Writer};
use crate::slots::{SlotError, SlotRegistry, XminHorizon};
use crate::storage::{DataDirLock, SegmentReader, StoreError, WalStore};

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
    /// The store cannot be opened.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The slot registry cannot be opened.
    #[error("{0}")]
    Slots(#[from] SlotError),
    /// A socket, thread or task could not be set up.
    #[error("could not start: {0}")]
    Spawn(#[from] std::io::Error),
    /// The listen address is invalid or taken.
    #[error("could not listen on \"{address}\": {source}")]
    Listen {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The upstream side failed for good.
    #[error("{0}")]
    Upstream(Box<UpstreamError>),
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
    config: DownstreamConfig,
    slots: SlotRegistry,
    retention: RetentionPolicy,
}

/// A relay that has opened its store and is ready to stream.
#[derive(Debug)]
pub struct Relay {
    /// Held while the relay lives: no other relay may use the data directory.
    _lock: DataDirLock,
    settings: UpstreamSettings,
    data_dir: PathBuf,
    writer: Writer,
    downstream: Option<Downstream>,
    served: Downstreams,
}

/// A view of the downstream side of a running relay, for status displays.
#[derive(Debug, Clone, Default)]
pub struct Downstreams(Arc<OnceLock<Arc<ServerContext>>>);

impl Downstreams {
    /// The streaming downstreams; empty until the relay serves.
    pub fn streams(&self) -> Vec<StreamStatus> {
        self.0.get().map(|ctx| ctx.streams()).unwrap_or_default()
    }
}

/// The hub's feed, kept outside the writer so that a writer restarted after a store error
/// publishes to the same hub.
type SharedFeed = Arc<Mutex<Option<Arc<HubFeed>>>>;

impl Relay {
    /// Parses the connection string, opens (and recovers) the store and the slots, starts
    /// the writer and binds the listen address.
    ///
    /// # Errors
    /// A bad connection string, a store or slot registry that cannot be opened, no thread for
    /// the writer, or an address that cannot be bound.
    pub fn open(config: &Config) -> Result<Relay, RelayError> {
        let conninfo = ConnInfo::parse(&config.upstream, &process_env())?;
        let settings = UpstreamSettings {
            conninfo,
            slot: config.upstream_slot.clone(),
            application_name: config.application_name.clone(),
            timing: StreamTiming {
                status_interval: config.status_interval,
                receive_timeout: config.receive_timeout,
            },
            reconnect_min: config.reconnect_min,
            reconnect_max: config.reconnect_max.max(config.reconnect_min),
        };
        let lock = DataDirLock::acquire(&config.data_dir)?;
        let writer = open_writer(&config.data_dir, None)?;
        let downstream = match &config.listen {
            None => None,
            Some(address) => {
                let listener = std::net::TcpListener::bind(address.as_str())
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|source| RelayError::Listen {
                        address: address.clone(),
                        source,
                    })?;
                Some(Downstream {
                    listener,
                    config: DownstreamConfig {
                        max_wal_senders: config.max_wal_senders,
                        sender_timeout: config.sender_timeout,
                        authentication_timeout: config.authentication_timeout,
                    },
                    slots: SlotRegistry::open(&config.data_dir, config.max_replication_slots)?,
                    retention: RetentionPolicy {
                        wal_keep_size: config.wal_keep_size,
                        max_slot_wal_keep_size: config.max_slot_wal_keep_size,
                    },
                })
            }
        };
        Ok(Relay {
            _lock: lock,
            settings,
            data_dir: config.data_dir.clone(),
            writer,
            downstream,
            served: Downstreams::default(),
        })
    }

    /// The address the relay listens on, if it does.
    pub fn listen_addr(&self) -> Option<std::net::SocketAddr> {
        self.downstream
            .as_ref()
            .and_then(|d| d.listener.local_addr().ok())
    }

    /// The downstream side, for status displays.
    pub fn downstreams(&self) -> Downstreams {
        self.served.clone()
    }

    /// Watches what the store holds (written and durable ends).
    pub fn positions(&self) -> watch::Receiver<Positions> {
        self.writer.positions()
    }

    /// Streams until `shutdown` fires.
    ///
    /// # Errors
    /// Only failures that retrying cannot fix (the store cannot be reopened).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RelayError> {
        let feed: SharedFeed = Arc::new(Mutex::new(None));
        // What the upstream told last time lets standbys be served before it is reachable.
        let known = match self.writer.call(|s| s.identity()).await {
            Ok(Some(identity)) => upstream_info::load(&self.data_dir, identity),
            _ => None,
        };
        let (info_tx, info_rx) = watch::channel(known);
        let save_info =
            save_upstream_info(info_rx.clone(), self.data_dir.clone(), shutdown.clone());
        let data_dir = self.data_dir.clone();
        let reopen_feed = Arc::clone(&feed);
        let current: CurrentWriter = Arc::new(Mutex::new(self.writer.clone()));
        let reopen_current = Arc::clone(&current);
        let reopen = move || {
            let feed = lock(&reopen_feed).clone();
            let writer = open_writer(&data_dir, feed).map_err(|e| match e {
                RelayError::Store(s) => UpstreamError::Store(s),
                other => UpstreamError::Protocol(other.to_string()),
            })?;
            *lock(&reopen_current) = writer.clone();
            Ok(writer)
        };
        let (horizon_tx, horizon_rx) = watch::channel(XminHorizon::default());
        let links = Links {
            info: info_tx,
            feedback: horizon_rx,
        };
        let hub = HubLinks {
            served: self.served.clone(),
            writer: Arc::clone(&current),
            feed,
            info: info_rx,
            horizon: horizon_tx,
        };
        let upstream = upstream::run(self.settings, self.writer, links, reopen, shutdown.clone());
        let downstream = async {
            if let Some(d) = self.downstream {
                serve_downstream(d, &self.data_dir, hub, shutdown.clone()).await;
            }
            Ok::<(), RelayError>(())
        };
        let (up, down, ()) = tokio::join!(upstream, downstream, save_info);
        up?;
        down?;
        info!("relay stopped");
        Ok(())
    }
}

/// Saves what the upstream reports whenever it changes, until shutdown.
async fn save_upstream_info(
    mut info: watch::Receiver<Option<UpstreamInfo>>,
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
                tokio::task::spawn_blocking(move || upstream_info::save(&dir, &current)).await;
            if let Ok(Err(e)) = written {
                warn!(error = %e, "could not save {}", upstream_info::FILE);
            }
        }
        saved = now;
    }
}

/// What the downstream side needs from the rest of the relay.
struct HubLinks {
    served: Downstreams,
    writer: CurrentWriter,
    feed: SharedFeed,
    info: watch::Receiver<Option<UpstreamInfo>>,
    horizon: watch::Sender<XminHorizon>,
}

/// The writer now running: the upstream side replaces it after a store error.
pub type CurrentWriter = Arc<Mutex<Writer>>;

/// Locks a mutex; a panic elsewhere leaves the data usable (it is replaced whole).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits until the upstream is known, then serves downstream connections until shutdown.
async fn serve_downstream(
    d: Downstream,
    data_dir: &Path,
    links: HubLinks,
    shutdown: CancellationToken,
) {
    let HubLinks {
        served,
        writer,
        feed,
        info: mut info_rx,
        horizon,
    } = links;
    let size = loop {
        if let Some(info) = info_rx.borrow_and_update().as_ref() {
            break info.segment_size;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = info_rx.changed() => if changed.is_err() { return },
        }
    };
    let wal_dir = data_dir.join("wal");
    let (hub, hub_feed) = Hub::new(SegmentReader::new(wal_dir.clone(), size), TAIL_CACHE_BYTES);
    let hub_feed = Arc::new(hub_feed);
    *lock(&feed) = Some(Arc::clone(&hub_feed));
    let attach = lock(&writer).clone();
    if attach.attach(hub_feed).await.is_err() {
        warn!("the writer restarted before the hub was attached; the next writer publishes to it");
    }
    let listener = match tokio::net::TcpListener::from_std(d.listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "could not serve the listen socket");
            return;
        }
    };
    let ctx = Arc::new(ServerContext::new(
        d.config, info_rx, hub, d.slots, wal_dir, horizon,
    ));
    let _ = served.0.set(Arc::clone(&ctx));
    let persist = persist_slots(Arc::clone(&ctx), shutdown.clone());
    let retain = retention::run(
        Arc::clone(&ctx),
        writer,
        size,
        d.retention,
        shutdown.clone(),
    );
    tokio::join!(
        listener::serve(listener, Arc::clone(&ctx), shutdown),
        persist,
        retain
    );
    let _ = ctx.slots().persist_if_dirty();
}

/// Writes moved slot positions to disk now and then, until shutdown.
async fn persist_slots(ctx: Arc<ServerContext>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SLOT_PERSIST_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ctx = Arc::clone(&ctx);
        let saved = tokio::task::spawn_blocking(move || ctx.slots().persist_if_dirty()).await;
        if let Ok(Err(e)) = saved {
            warn!(error = %e, "could not save replication slots");
        }
    }
}

fn open_writer(data_dir: &Path, feed: Option<Arc<HubFeed>>) -> Result<Writer, RelayError> {
    let store = WalStore::open(data_dir)?;
    if let Some(end) = store.end() {
        info!(timeline = %end.timeline, durable = %end.durable, valid = %end.valid, "recovered stored WAL");
    }
    Ok(Writer::spawn(store, feed)?)
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

/// How long shutdown may take before the process gives up waiting.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
