//! The relay killed, stopped and cut off from a restarting primary, against a real
//! PostgreSQL 15 under a write load (ACCEPTANCE.md rows B1, B4 and B5).
//!
//! - B1: `kill -9` at seeded random moments; after each restart the recovered durable end is
//!   at or past every flush position the primary saw acknowledged before the kill (O5), and at
//!   the end the stored segments equal the archive's (O3) and `pg_waldump` reads them (O4).
//! - B4: SIGTERM exits 0 within 10 s each time; the relay restarts and loses nothing.
//! - B5: `pg_ctl restart -m fast` and `-m immediate` of the primary: the relay reconnects by
//!   itself and resumes with no gap.
//!
//! Durations and counts are tunable: `WALRELAY_B1_KILLS` (8), `WALRELAY_B1_KILLS_16MB` (4),
//! `WALRELAY_B1_SEED`, `WALRELAY_B4_TERMS` (5).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::{Duration, Instant};

use support::*;
use walrelay::testkit::localpg::{Cluster, StopMode, require_postgres};
use walrelay::types::{Lsn, WalSegmentSize};

/// How often the primary's view of the relay's flush is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(75);

/// Starts the relay on `primary` and waits until it acknowledges the current segment start.
fn start_relay(primary: &Cluster, data: &std::path::Path, size: WalSegmentSize) -> RelayProcess {
    let relay = RelayProcess::start(&primary.conninfo(), data, &[]);
    let start = size.segment_start(primary.current_wal_flush_lsn().unwrap());
    wait_acked(primary, start, Duration::from_secs(30));
    relay
}

/// A relay restarted on the same data directory: the log offset where this run begins and
/// the durable and valid ends it recovered (its "recovered stored WAL" log line).
struct Restarted {
    relay: RelayProcess,
    since: usize,
    durable: Lsn,
    valid: Lsn,
}

fn restart(primary: &Cluster, old: RelayProcess) -> Restarted {
    let data = old.data_dir.clone();
    let since = old.log_len();
    drop(old);
    let relay = RelayProcess::start(&primary.conninfo(), &data, &[]);
    relay.wait_log(since, "recovered stored WAL", Duration::from_secs(20));
    let (durable, valid) = recovered_end(&relay.log_since(since)).unwrap();
    Restarted {
        relay,
        since,
        durable,
        valid,
    }
}

/// Waits until the relay logs that it streams again after byte `offset` of its log.
fn wait_streaming(relay: &RelayProcess, offset: usize) -> Duration {
    relay.wait_log(offset, "streaming timeline=", Duration::from_secs(30))
}

/// The relay reconnected, and never waited longer than `--reconnect-max` (1 s, see
/// `RelayProcess::start`) between attempts.
fn assert_capped_backoff(log: &str) {
    let delays: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("reconnecting to upstream"))
        .filter_map(|l| {
            l.split("delay_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(!delays.is_empty(), "the relay did not reconnect:\n{log}");
    assert!(
        delays.iter().all(|&d| d <= 1000),
        "reconnect delays beyond the cap: {delays:?}"
    );
}

fn assert_healthy_log(relay: &RelayProcess) {
    let log = relay.log_contents();
    assert!(!log.contains("panicked at"), "the relay panicked");
}

/// B1: kill -9 at `kills` seeded random moments under load.
fn kill9_under_load(mb: u32, kills: u64) {
    let Some(bins) = require_postgres() else {
        return;
    };
    let seed = seed_from_env("WALRELAY_B1_SEED");
    let mut rng = TestRng::new(seed);
    let dir = scratch(&bins, "b1");
    let primary = archiving_primary(&bins, dir.path(), mb);
    let size = primary.wal_segment_size().unwrap();
    let mut relay = start_relay(&primary, &dir.path().join("relay"), size);
    let load = WriteLoad::start(&bins, &primary.conninfo(), 400, 20_000 * mb as usize);
    let sampler = FlushSampler::start(&bins, &primary.conninfo(), "walrelay", SAMPLE_EVERY);
    let began = Instant::now();
    let mut since = 0;
    for kill in 1..=kills {
        // One kill in four lands early, while the relay recovers, connects or catches up.
        if rng.between(0, 4) != 0 {
            wait_streaming(&relay, since);
        }
        let delay = rng.between(50, 1500);
        std::thread::sleep(Duration::from_millis(delay));
        assert!(relay.is_running(), "the relay exited by itself");
        relay.kill9();
        let acked = sampler.highest();
        let on_disk = stored_end(&relay.wal_dir(), size).unwrap();
        let Restarted {
            relay: next,
            since: next_since,
            durable,
            valid,
        } = restart(&primary, relay);
        (relay, since) = (next, next_since);
        println!(
            "B1 kill {kill}/{kills} at +{delay} ms: highest acked flush {acked}, files end at \
             {on_disk}, recovered durable {durable} valid {valid}"
        );
        assert!(
            durable <= on_disk,
            "recovered {durable}, past the end of the files {on_disk}"
        );
        assert!(
            durable >= acked,
            "O5: the relay acknowledged {acked} but recovered only to {durable} (seed {seed})"
        );
        assert!(valid <= durable);
    }
    let samples = sampler.samples();
    drop(sampler);
    let (committed, failed) = load.stop();
    let compared = converge_and_compare(&primary, &relay.wal_dir(), size);
    println!(
        "B1 {mb} MB segments, seed {seed}: {kills} kills in {:.1} s, {samples} flush samples, \
         {committed} load transactions ({failed} failed), {compared} segments byte-identical",
        began.elapsed().as_secs_f64()
    );
    assert!(compared >= 2, "only {compared} segments compared");
    assert!(relay.is_running());
    assert_healthy_log(&relay);
}

#[test]
fn b1_kill9_at_random_moments_1mb() {
    kill9_under_load(1, env_u64("WALRELAY_B1_KILLS", 8));
}

#[test]
fn b1_kill9_at_random_moments_16mb() {
    kill9_under_load(16, env_u64("WALRELAY_B1_KILLS_16MB", 4));
}

/// B4: SIGTERM under load; exit 0 within 10 s each time; nothing lost.
#[test]
fn b4_sigterm_under_load() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let terms = env_u64("WALRELAY_B4_TERMS", 5);
    let dir = scratch(&bins, "b4");
    let primary = archiving_primary(&bins, dir.path(), 1);
    let size = primary.wal_segment_size().unwrap();
    let mut relay = start_relay(&primary, &dir.path().join("relay"), size);
    let load = WriteLoad::start(&bins, &primary.conninfo(), 400, 20_000);
    let sampler = FlushSampler::start(&bins, &primary.conninfo(), "walrelay", SAMPLE_EVERY);
    let mut rng = TestRng::new(seed_from_env("WALRELAY_B4_SEED"));
    let mut since = 0;
    for term in 1..=terms {
        wait_streaming(&relay, since);
        std::thread::sleep(Duration::from_millis(rng.between(300, 1500)));
        let offset = relay.log_len();
        let sent = Instant::now();
        relay.signal("TERM");
        let status = relay.wait_exit(Duration::from_secs(10));
        let took = sent.elapsed();
        println!("B4 SIGTERM {term}/{terms}: exit {status:?} after {took:?}");
        let status = status.unwrap_or_else(|| {
            panic!(
                "no exit within 10 s of SIGTERM:\n{}",
                relay.log_since(offset)
            )
        });
        assert!(
            status.success(),
            "exit status {status}:\n{}",
            relay.log_since(offset)
        );
        assert!(
            relay
                .log_since(offset)
                .contains("sent final status update upstream"),
            "no final status update before exit:\n{}",
            relay.log_since(offset)
        );
        let acked = sampler.highest();
        let next = restart(&primary, relay);
        let durable = next.durable;
        (relay, since) = (next.relay, next.since);
        assert!(
            durable >= acked,
            "O5: acknowledged {acked}, recovered {durable} after SIGTERM"
        );
    }
    drop(sampler);
    let (committed, _) = load.stop();
    let compared = converge_and_compare(&primary, &relay.wal_dir(), size);
    println!("B4: {committed} load transactions, {compared} segments byte-identical");
    assert_healthy_log(&relay);
}

/// B5: the primary restarts (fast, then immediate) while the relay streams.
#[test]
fn b5_primary_restarts_fast_and_immediate() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "b5");
    let mut primary = archiving_primary(&bins, dir.path(), 1);
    let size = primary.wal_segment_size().unwrap();
    let relay = start_relay(&primary, &dir.path().join("relay"), size);
    let load = WriteLoad::start(&bins, &primary.conninfo(), 400, 20_000);
    for mode in [StopMode::Fast, StopMode::Immediate] {
        std::thread::sleep(Duration::from_millis(1500));
        let offset = relay.log_len();
        let began = Instant::now();
        primary.restart(mode).unwrap();
        let restarted = began.elapsed();
        relay.wait_log(offset, "reconnecting", Duration::from_secs(30));
        wait_streaming(&relay, offset);
        let streaming = began.elapsed();
        std::thread::sleep(Duration::from_millis(500));
        let flush = primary.current_wal_flush_lsn().unwrap();
        wait_acked(&primary, flush, Duration::from_secs(30));
        println!(
            "B5 {mode:?}: pg_ctl restart took {restarted:?}; the relay streamed again \
             {streaming:?} after the restart began and acknowledged {flush} after {:?}",
            began.elapsed()
        );
        assert_capped_backoff(&relay.log_since(offset));
    }
    let (committed, failed) = load.stop();
    let compared = converge_and_compare(&primary, &relay.wal_dir(), size);
    println!("B5: {committed} load transactions ({failed} failed), {compared} segments compared");
    assert_healthy_log(&relay);
}

/// A second relay on a data directory in use is refused, as a second postmaster is, and the
/// first streams on; after the first is killed with SIGKILL its lock is gone with it.
#[test]
fn a_data_directory_serves_one_relay_at_a_time() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "lock");
    let primary = archiving_primary(&bins, dir.path(), 1);
    let size = primary.wal_segment_size().unwrap();
    let data = dir.path().join("relay");
    let mut first = start_relay(&primary, &data, size);
    let mut second = RelayProcess::start(&primary.conninfo(), &data, &[]);
    let status = second
        .wait_exit(Duration::from_secs(10))
        .expect("a second relay on the same data directory kept running");
    let log = second.log_contents();
    println!("second relay: {status}: {log}");
    assert!(!status.success());
    let expected = format!("is another walrelay (PID {}) running", first.pid());
    assert!(log.contains(&expected), "{log}");
    let end = primary.switch_wal().unwrap();
    wait_acked(&primary, end, Duration::from_secs(30));
    first.kill9();
    let third = start_relay(&primary, &data, size);
    let end = primary.switch_wal().unwrap();
    wait_acked(&primary, end, Duration::from_secs(30));
    drop(third);
}
