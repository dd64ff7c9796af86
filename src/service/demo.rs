//! `walrelay demo`: the relay's main job on one machine with nothing to configure.
//!
//! It starts a throwaway PostgreSQL primary from the binaries it finds (see
//! [`crate::localpg`]), runs the relay against it in this process while a small write load
//! runs, and prints the primary's flush position next to the relay's received and durable
//! ends once a second, until Ctrl-C (or `--duration`). Everything it started is stopped and
//! its directories are removed at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::localpg::{ClusterBuilder, LocalPgError, PgBinaries, StopMode};
use crate::service::relay::{Relay, RelayError};
use crate::types::Lsn;

/// What the demo is asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Segment size of the throwaway primary, in MB.
    pub segment_size_mb: u32,
    /// Where to put its files; a new temporary directory when `None`.
    pub dir: Option<PathBuf>,
    /// Stop after this long; `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
}

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Starting or driving PostgreSQL failed.
    #[error("{0}")]
    LocalPg(#[from] LocalPgError),
    /// The relay failed.
    #[error("{0}")]
    Relay(#[from] RelayError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Runs the demo until Ctrl-C or the chosen duration.
///
/// # Errors
/// No PostgreSQL found, a cluster that does not start, or a relay that fails.
pub async fn run(opts: DemoOptions) -> Result<(), DemoError> {
    let bins = PgBinaries::find()?;
    let version = bins.version()?;
    let parent = opts.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)
        .map_err(|e| DemoError::Other(format!("{}: {e}", parent.display())))?;
    let mut scratch = bins.scratch_dir(&parent, "demo")?;
    if opts.dir.is_some() {
        scratch.keep();
    }
    println!(
        "walrelay demo: PostgreSQL {version} from {}",
        bins.dir().display()
    );
    let mut primary = ClusterBuilder::new(bins, scratch.path().join("primary"))
        .segment_size_mb(opts.segment_size_mb)
        .init()?;
    primary.start()?;
    println!(
        "primary listening on 127.0.0.1:{} ({} MB segments)",
        primary.port(),
        opts.segment_size_mb
    );
    let relay_dir = scratch.path().join("relay");
    let config = Config {
        upstream: primary.conninfo(),
        data_dir: relay_dir.clone(),
        upstream_slot: "walrelay".into(),
        application_name: "walrelay".into(),
        status_interval: Duration::from_secs(10),
        receive_timeout: Duration::from_secs(60),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(5),
        listen: None,
        max_wal_senders: 64,
        max_replication_slots: 64,
        sender_timeout: Duration::from_secs(60),
        authentication_timeout: Duration::from_secs(60),
        wal_keep_size: crate::config::DEFAULT_WAL_KEEP_SIZE,
        max_slot_wal_keep_size: None,
    };
    let relay = Relay::open(&config)?;
    let mut positions = relay.positions();
    let shutdown = CancellationToken::new();
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    println!("relay storing WAL in {}", relay_dir.join("wal").display());

    let primary = Arc::new(primary);
    let stop_load = Arc::new(AtomicBool::new(false));
    let load = {
        let (primary, stop) = (Arc::clone(&primary), Arc::clone(&stop_load));
        tokio::task::spawn_blocking(move || {
            while !stop.load(Ordering::Relaxed) {
                primary.write_load(2000)?;
            }
            Ok::<(), LocalPgError>(())
        })
    };

    println!(
        "{:>20} {:>20} {:>20} {:>10}",
        "primary flush", "relay received", "relay durable", "MB/s"
    );
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut last = (Instant::now(), positions.borrow().durable);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = ticker.tick() => {}
        }
        if opts.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let p = positions.borrow_and_update().clone();
        let flush = primary.current_wal_flush_lsn().unwrap_or(Lsn::INVALID);
        let secs = last.0.elapsed().as_secs_f64().max(1e-3);
        let mbs = p.durable.saturating_distance(last.1) as f64 / secs / 1e6;
        last = (Instant::now(), p.durable);
        println!(
            "{:>20} {:>20} {:>20} {mbs:>10.1}",
            flush.to_string(),
            p.written.to_string(),
            p.durable.to_string()
        );
        if let Some(failed) = p.failed {
            println!("relay writer failed: {failed}");
        }
    }
    println!("stopping");
    stop_load.store(true, Ordering::Relaxed);
    let _ = load.await;
    shutdown.cancel();
    let relayed = relay_task
        .await
        .map_err(|e| DemoError::Other(e.to_string()))?;
    let final_positions = positions.borrow().clone();
    if let Ok(mut primary) = Arc::try_unwrap(primary) {
        primary.stop(StopMode::Fast)?;
    }
    println!(
        "relay stopped at durable {}; demo cleaned up",
        final_positions.durable
    );
    relayed?;
    Ok(())
}
