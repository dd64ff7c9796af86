//! A running relay: the store, its writer thread and the upstream connection.
//!
//! Shutdown follows DESIGN.md habit 7: the token fires (SIGTERM or SIGINT), the upstream task
//! lets the writer sync what is queued, sends a final status update and closes; then the
//! writer thread ends and hands the store back.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::proto::conninfo::{ConnInfo, ConnInfoError, Env};
use crate::proto::stream::StreamTiming;
use crate::service::upstream::{self, UpstreamError, UpstreamSettings};
use crate::service::writer::{Positions, Writer};
use crate::storage::{StoreError, WalStore};

/// Why the relay could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The upstream connection string is invalid.
    #[error("invalid upstream connection string: {0}")]
    ConnInfo(#[from] ConnInfoError),
    /// The store cannot be opened.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A thread or task could not be started.
    #[error("could not start: {0}")]
    Spawn(#[from] std::io::Error),
    /// The upstream side failed for good.
    #[error("{0}")]
    Upstream(Box<UpstreamError>),
}

impl From<UpstreamError> for RelayError {
    fn from(e: UpstreamError) -> Self {
        RelayError::Upstream(Box::new(e))
    }
}

/// A relay that has opened its store and is ready to stream.
#[derive(Debug)]
pub struct Relay {
    settings: UpstreamSettings,
    data_dir: PathBuf,
    writer: Writer,
}

impl Relay {
    /// Parses the connection string, opens (and recovers) the store and starts the writer.
    ///
    /// # Errors
    /// A bad connection string, a store that cannot be opened, or no thread for the writer.
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
        let writer = open_writer(&config.data_dir)?;
        Ok(Relay {
            settings,
            data_dir: config.data_dir.clone(),
            writer,
        })
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
        let data_dir = self.data_dir.clone();
        let reopen = move || {
            open_writer(&data_dir).map_err(|e| match e {
                RelayError::Store(s) => UpstreamError::Store(s),
                other => UpstreamError::Protocol(other.to_string()),
            })
        };
        upstream::run(self.settings, self.writer, reopen, shutdown).await?;
        info!("relay stopped");
        Ok(())
    }
}

fn open_writer(data_dir: &std::path::Path) -> Result<Writer, RelayError> {
    let store = WalStore::open(data_dir)?;
    if let Some(end) = store.end() {
        info!(timeline = %end.timeline, durable = %end.durable, valid = %end.valid, "recovered stored WAL");
    }
    Ok(Writer::spawn(store)?)
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
