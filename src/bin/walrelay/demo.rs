//! `walrelay demo`: the relay's main job on one machine with nothing to configure.
//!
//! It starts a throwaway PostgreSQL primary from the binaries it finds (see
//! [`crate::localpg`]), runs the relay against it in this process, and puts two real hot
//! standbys behind the relay, each on its own relay slot. While a small write load runs, it
//! prints once a second what the primary has flushed, what the relay has received and made
//! durable, and a row per standby: the WAL sent to it, what it reports flushed and replayed,
//! and how far behind it is in bytes and in time. Everything it started is stopped and its
//! directories are removed at the end (Ctrl-C, or `--duration`).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use walrelay::types::Lsn;
use walrelay::{Config, Relay, RelayError, StreamStatus};

use crate::localpg::{Cluster, ClusterBuilder, LocalPgError, PgBinaries, StopMode, free_port};

/// The standbys the demo puts behind the relay.
const STANDBYS: [&str; 2] = ["standby1", "standby2"];

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
    #[error(transparent)]
    LocalPg(#[from] LocalPgError),
    /// The relay failed.
    #[error(transparent)]
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
    let mut primary = ClusterBuilder::new(bins.clone(), scratch.path().join("primary"))
        .segment_size_mb(opts.segment_size_mb)
        .init()?;
    primary.start()?;
    println!(
        "primary on 127.0.0.1:{} ({} MB segments)",
        primary.port(),
        opts.segment_size_mb
    );

    let relay_port = free_port()?;
    let http_port = free_port()?;
    let relay = Relay::open(&demo_config(
        &primary,
        scratch.path().join("relay"),
        relay_port,
        http_port,
    ))?;
    let relay = relay.spawn();
    let relay_conninfo = format!("host=127.0.0.1 port={relay_port} user=postgres");
    println!(
        "relay on 127.0.0.1:{relay_port}, storing WAL in {}; the same figures as metrics: http://127.0.0.1:{http_port}/metrics and /status",
        scratch.path().join("relay/wal").display()
    );

    let primary = Arc::new(primary);
    let standbys = {
        let (primary, conninfo) = (Arc::clone(&primary), relay_conninfo.clone());
        tokio::task::spawn_blocking(move || start_standbys(&primary, &bins, &conninfo))
            .await
            .map_err(|e| DemoError::Other(e.to_string()))??
    };
    // WAL the standbys can only have replayed by streaming it from the relay.
    let after_start = relay.status().durable;
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

    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut history = DurableHistory::default();
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
        // Downstream first, then the relay, then the primary: each is read after what it
        // feeds, so a row never shows a client ahead of the relay or the relay ahead of the
        // primary.
        let p = relay.status();
        history.record(p.durable);
        let flush = {
            let primary = Arc::clone(&primary);
            tokio::task::spawn_blocking(move || primary.current_wal_flush_lsn())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(Lsn::INVALID)
        };
        println!(
            "\nprimary flushed {flush}   relay received {}   relay durable {}   {:.1} MB/s",
            p.written,
            p.durable,
            history.rate_mb_s()
        );
        print_streams(&p.streams, p.durable);
        if let Some(failed) = p.store_failure {
            println!("relay writer failed: {failed}");
        }
    }
    println!("stopping");
    stop_load.store(true, Ordering::Relaxed);
    let _ = load.await;
    let final_positions = relay.status();
    drop(standbys);
    let relayed = relay.shutdown().await;
    if let Ok(mut primary) = Arc::try_unwrap(primary) {
        primary.stop(StopMode::Fast)?;
    }
    println!(
        "relay stopped at durable {}; demo cleaned up",
        final_positions.durable
    );
    relayed?;
    if opts.duration.is_some() {
        every_standby_replayed(&final_positions.streams, after_start)?;
    }
    Ok(())
}

/// A run with a set duration (a script's, such as CI's) fails unless every standby replayed,
/// from the relay, WAL the relay made durable after the standbys started.
fn every_standby_replayed(streams: &[StreamStatus], after: Lsn) -> Result<(), DemoError> {
    for name in STANDBYS {
        let applied = streams
            .iter()
            .filter(|s| s.application_name == name)
            .map(|s| s.client.apply)
            .max();
        match applied {
            Some(lsn) if lsn > after => {}
            Some(lsn) => {
                return Err(DemoError::Other(format!(
                    "{name} replayed up to {lsn}, not past {after}"
                )));
            }
            None => {
                return Err(DemoError::Other(format!(
                    "{name} was not streaming from the relay at the end"
                )));
            }
        }
    }
    println!("every standby replayed WAL from the relay past {after}");
    Ok(())
}

fn demo_config(primary: &Cluster, data_dir: PathBuf, port: u16, http_port: u16) -> Config {
    Config {
        reconnect_max: Duration::from_secs(5),
        listen: Some(format!("127.0.0.1:{port}")),
        http_listen: Some(format!("127.0.0.1:{http_port}")),
        ..Config::new(primary.conninfo(), data_dir)
    }
}

/// Creates a relay slot per standby, takes a base backup of the primary for each, points it
/// at the relay and starts it.
fn start_standbys(
    primary: &Cluster,
    bins: &PgBinaries,
    relay: &str,
) -> Result<Vec<Cluster>, DemoError> {
    crate::localpg::wait_until(Duration::from_secs(30), "the relay to serve", || {
        Ok(bins
            .psql(&format!("{relay} replication=1"), "IDENTIFY_SYSTEM")
            .is_ok())
    })?;
    let mut standbys = Vec::new();
    for name in STANDBYS {
        let slot = format!("{name}_slot");
        let sql = format!("CREATE_REPLICATION_SLOT \"{slot}\" PHYSICAL");
        bins.psql(&format!("{relay} replication=1"), &sql)?;
        let conninfo = format!("{relay} application_name={name}");
        let mut standby = primary.basebackup_standby(&conninfo, Some(&slot))?;
        standby.start()?;
        println!(
            "{name} on 127.0.0.1:{}, streaming from the relay on slot {slot}",
            standby.port()
        );
        standbys.push(standby);
    }
    Ok(standbys)
}

/// One row per standby, from the same status `/metrics` reads: lag bytes are the relay's
/// durable end minus the replayed position (`walrelay_upstream_flush_lsn` minus
/// `walrelay_replication_replay_lsn`), and the replay lag is `replay_lag` as
/// `pg_stat_replication` computes it (`walrelay_replication_replay_lag_seconds`; `-` when
/// NULL, as when a standby is idle and caught up).
fn print_streams(streams: &[StreamStatus], durable: Lsn) {
    println!(
        "  {:<12} {:<16} {:>14} {:>14} {:>14} {:>12} {:>11}",
        "application", "slot", "sent", "flushed", "replayed", "lag bytes", "replay lag"
    );
    for s in streams {
        let replayed = s.client.apply;
        let lag_time = s
            .lags
            .replay_lag()
            .map_or_else(|| "-".to_owned(), |d| format!("{:.3}s", d.as_secs_f64()));
        println!(
            "  {:<12} {:<16} {:>14} {:>14} {:>14} {:>12} {:>11}",
            s.application_name,
            s.slot.as_ref().map_or("-", |slot| slot.as_str()),
            s.sent.to_string(),
            s.client.flush.to_string(),
            replayed.to_string(),
            durable.saturating_distance(replayed),
            lag_time
        );
    }
}

/// The relay's durable end, once a second, for the rate it advances at.
#[derive(Debug, Default)]
struct DurableHistory {
    samples: VecDeque<(Instant, Lsn)>,
}

impl DurableHistory {
    fn record(&mut self, durable: Lsn) {
        self.samples.push_back((Instant::now(), durable));
        if self.samples.len() > 600 {
            self.samples.pop_front();
        }
    }

    fn rate_mb_s(&self) -> f64 {
        let n = self.samples.len();
        match (self.samples.get(n.wrapping_sub(2)), self.samples.back()) {
            (Some((t0, a)), Some((t1, b))) => {
                b.saturating_distance(*a) as f64
                    / t1.duration_since(*t0).as_secs_f64().max(1e-3)
                    / 1e6
            }
            _ => 0.0,
        }
    }
}
