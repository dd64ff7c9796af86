//! The runs with lightweight protocol clients: many clients on one relay, and the latency from
//! the primary's flush to a client's receipt under a steady pgbench load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use serde::Serialize;
use walrelay::testkit::localpg::Cluster;
use walrelay::types::Lsn;

use crate::clients::{Arrivals, CLIENT_THREAD, ClientSpec, Pool, reached};
use crate::fanout::Load;
use crate::procfs::{Meter, Split, Usage};
use crate::sampler::{Probe, Sampler};
use crate::servers::RelayServer;
use crate::sqlconn::SqlConn;
use crate::{Bench, MIB, RUN_TIMEOUT, SETUP_TIMEOUT, log, wait_for};

/// The relay's memory budget: 16 MB, plus 64 kB per client.
pub fn memory_budget_kib(clients: usize) -> u64 {
    16 * 1024 + 64 * clients as u64
}

/// One relay serving `clients` lightweight clients, each on a slot of its own.
#[derive(Debug, Serialize)]
pub struct ClientsCase {
    /// Clients streaming from the relay.
    pub clients: usize,
    /// WAL written on the primary.
    pub wal_bytes: u64,
    /// From the load's start until its last commit returned.
    pub write_s: f64,
    /// From the load's start until the relay's durable end reached the primary's flush LSN.
    pub relay_durable_s: f64,
    /// Per client, from the load's start until it had received everything, sorted.
    pub client_received_s: Vec<f64>,
    /// The relay's process, by thread, with its peak RSS and PSS in the window.
    pub relay: Usage,
    /// CPU seconds of the clients' own threads (`bench-client`).
    pub client_cpu_s: f64,
    /// 16 MB + 64 kB per client, in kB.
    pub memory_budget_kib: u64,
}

/// Runs one relay per client count.
pub fn run_clients(bench: &Bench, primary: &Cluster) -> Result<Vec<ClientsCase>> {
    let mut cases = Vec::new();
    for &n in &bench.args.clients {
        let tag = format!("clients {n}");
        log(&tag, "starting a relay and the clients");
        let opts = bench.relay_options(&format!("relay_clients_{n}"), n);
        let relay = RelayServer::start(&bench.bins, primary, &opts)?;
        let mut pool = Pool::new(bench.args.client_threads)?;
        for i in 1..=n {
            pool.spawn(ClientSpec {
                port: relay.port,
                name: format!("c{i}"),
                slot: Some(format!("c{i}")),
            });
        }
        wait_for(SETUP_TIMEOUT, "the clients to stream", || {
            pool.all_streaming()
        })?;
        let case = measure_clients(bench, primary, &relay, &pool);
        let arrivals = pool.finish();
        relay.stop(primary)?;
        let mut case = case?;
        let began = case.1;
        let mut received: Vec<f64> = arrivals?
            .iter()
            .map(|a| reached(a, case.2).map_or(f64::NAN, |t| (t - began).as_secs_f64()))
            .collect();
        received.sort_by(f64::total_cmp);
        case.0.client_received_s = received;
        log(
            &tag,
            &format!(
                "{:.0} MB to {n} clients in {:.2} s; relay CPU {:.2} s, peak RSS {} kB",
                case.0.wal_bytes as f64 / MIB as f64,
                case.0.client_received_s.last().copied().unwrap_or_default(),
                case.0.relay.cpu_s,
                case.0.relay.peak_rss_kib.unwrap_or_default()
            ),
        );
        cases.push(case.0);
    }
    Ok(cases)
}

/// The measured part of one client count: returns the case (without the clients' times), the
/// load's start and the target.
fn measure_clients(
    bench: &Bench,
    primary: &Cluster,
    relay: &RelayServer,
    pool: &Pool,
) -> Result<(ClientsCase, Instant, Lsn)> {
    let mut conn = SqlConn::connect(primary.port(), false, "bench-load")?;
    conn.query("CHECKPOINT")?;
    let settled = conn.query_lsn("SELECT pg_current_wal_flush_lsn()")?;
    wait_for(SETUP_TIMEOUT, "the clients to catch up", || {
        Ok(pool.min_received()? >= settled)
    })?;
    crate::write_back();
    thread::sleep(Duration::from_millis(500));
    let relay_meter = Meter::start(relay.pid(), Split::Threads, bench.clk_tck, true);
    let own = Meter::start(std::process::id(), Split::Threads, bench.clk_tck, false);
    let sampler = Sampler::start(vec![Probe {
        name: "relay".into(),
        conn: SqlConn::connect(relay.port, true, "bench")?,
        sql: "IDENTIFY_SYSTEM",
        column: 2,
    }]);
    let start = conn.query_lsn("SELECT pg_current_wal_insert_lsn()")?;
    let began = Instant::now();
    Load::Wal.write(&mut conn, bench.args.client_mb)?;
    let write_s = began.elapsed().as_secs_f64();
    sampler.go_fast();
    let target = conn.query_lsn("SELECT pg_current_wal_flush_lsn()")?;
    let sampled = sampler.finish(target)?;
    wait_until_fast(RUN_TIMEOUT, "every client to receive the WAL", || {
        Ok(pool.min_received()? >= target)
    })?;
    let relay_usage = relay_meter.finish();
    let own = own.finish();
    let relay_durable_s = sampled
        .reached
        .first()
        .copied()
        .flatten()
        .map_or(f64::NAN, |t| (t - began).as_secs_f64());
    let case = ClientsCase {
        clients: pool.len(),
        wal_bytes: target.saturating_distance(start),
        write_s,
        relay_durable_s,
        client_received_s: Vec::new(),
        relay: relay_usage,
        client_cpu_s: own.cpu_by.get(CLIENT_THREAD).copied().unwrap_or_default(),
        memory_budget_kib: memory_budget_kib(pool.len()),
    };
    Ok((case, began, target))
}

/// Checks `done` every millisecond (the clients' positions are in memory).
fn wait_until_fast(
    timeout: Duration,
    what: &str,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let began = Instant::now();
    while !done()? {
        crate::check_interrupt()?;
        if began.elapsed() > timeout {
            return Err(anyhow!("timed out waiting for {what}"));
        }
        thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Percentiles of one latency series, in ms.
#[derive(Debug, Default, Serialize)]
pub struct Dist {
    /// Flushes matched with an arrival.
    pub samples: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Median width of the interval in which each flush is known to have happened, in ms:
    /// each latency is exact to within half of it.
    pub resolution_ms: f64,
}

/// Primary flush → received latency under `pgbench -R`, through the relay and direct.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// pgbench's target rate (`-R`), transactions a second.
    pub rate: u32,
    /// pgbench's duration (`-T`).
    pub seconds: u64,
    /// pgbench's clients (`-c`).
    pub pgbench_clients: u32,
    /// What pgbench reported.
    pub tps: Option<f64>,
    /// Samples of the primary's flush LSN that showed it advanced.
    pub flushes: usize,
    /// Median time between two samples, in ms.
    pub sample_interval_ms: f64,
    /// A client streaming from the relay.
    pub relay: Dist,
    /// A client streaming from the primary.
    pub direct: Dist,
}

/// One sample of the primary's flush LSN: the query's send and answer instants.
type FlushSample = (Instant, Instant, Lsn);

/// Runs pgbench at a fixed rate with a client on the relay and one on the primary.
pub fn run_latency(bench: &Bench, primary: &Cluster) -> Result<Latency> {
    let args = &bench.args;
    log("latency", "pgbench -i -s 1");
    primary.pgbench(&["-i", "-s", "1", "-q"])?;
    let opts = bench.relay_options("relay_latency", 2);
    let relay = RelayServer::start(&bench.bins, primary, &opts)?;
    let mut pool = Pool::new(1)?;
    for (name, port) in [("via_relay", relay.port), ("direct", primary.port())] {
        pool.spawn(ClientSpec {
            port,
            name: name.into(),
            slot: None,
        });
    }
    let outcome = measure_latency(bench, primary, &pool);
    let arrivals = pool.finish();
    relay.stop(primary)?;
    SqlConn::connect(primary.port(), false, "bench")?
        .query("DROP TABLE pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers")?;
    let (samples, tps) = outcome?;
    let arrivals = arrivals?;
    let dist = |i: usize| {
        arrivals
            .get(i)
            .map_or_else(Dist::default, |a| latencies(&samples, a))
    };
    let mut gaps: Vec<Duration> = samples
        .windows(2)
        .filter_map(|w| Some(w.get(1)?.0 - w.first()?.0))
        .collect();
    gaps.sort();
    let result = Latency {
        rate: args.latency_rate,
        seconds: args.latency_seconds,
        pgbench_clients: args.latency_clients,
        tps,
        flushes: samples
            .windows(2)
            .filter(|w| matches!((w.first(), w.get(1)), (Some(a), Some(b)) if b.2 > a.2))
            .count(),
        sample_interval_ms: gaps
            .get(gaps.len() / 2)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3),
        relay: dist(0),
        direct: dist(1),
    };
    log(
        "latency",
        &format!(
            "p50/p99 through the relay {:.2}/{:.2} ms, direct {:.2}/{:.2} ms",
            result.relay.p50_ms, result.relay.p99_ms, result.direct.p50_ms, result.direct.p99_ms
        ),
    );
    Ok(result)
}

/// The pgbench run with the flush sampler: returns the samples and pgbench's tps.
fn measure_latency(
    bench: &Bench,
    primary: &Cluster,
    pool: &Pool,
) -> Result<(Vec<FlushSample>, Option<f64>)> {
    let args = &bench.args;
    wait_for(SETUP_TIMEOUT, "the clients to stream", || {
        pool.all_streaming()
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let every = Duration::from_micros(args.latency_sample_us);
    let mut conn = SqlConn::connect(primary.port(), false, "bench-flush")?;
    let flag = Arc::clone(&stop);
    let sampler = thread::spawn(move || -> Result<Vec<FlushSample>> {
        let mut samples = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            let sent = Instant::now();
            let lsn = conn.query_lsn("SELECT pg_current_wal_flush_lsn()")?;
            samples.push((sent, Instant::now(), lsn));
            thread::sleep(every);
        }
        Ok(samples)
    });
    log(
        "latency",
        &format!(
            "pgbench -R {} -c {} for {} s",
            args.latency_rate, args.latency_clients, args.latency_seconds
        ),
    );
    let out = primary.pgbench(&[
        "-n",
        "-R",
        &args.latency_rate.to_string(),
        "-c",
        &args.latency_clients.to_string(),
        "-j",
        "1",
        "-T",
        &args.latency_seconds.to_string(),
    ]);
    stop.store(true, Ordering::Relaxed);
    let samples = sampler
        .join()
        .map_err(|_| anyhow!("the flush sampler panicked"))??;
    let out = out?;
    let tps = out
        .lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
    let last = samples.last().map_or(Lsn(0), |s| s.2);
    wait_until_fast(
        SETUP_TIMEOUT,
        "the clients to receive the last flush",
        || Ok(pool.min_received()? >= last),
    )?;
    Ok((samples, tps))
}

/// Matches every advance of the flush LSN with the client's first arrival at or past it.
///
/// The sample that first showed LSN `L` was answered at `t1`; the one before it, which did
/// not show `L`, was sent at `t0`. The flush of `L` happened in `(t0, t1]` and no later than
/// its arrival `a`, so it is placed in the middle of `(t0, min(t1, a)]`.
fn latencies(samples: &[FlushSample], arrivals: &Arrivals) -> Dist {
    let mut values = Vec::new();
    let mut widths = Vec::new();
    for pair in samples.windows(2) {
        let (Some(prev), Some(this)) = (pair.first(), pair.get(1)) else {
            continue;
        };
        if this.2 <= prev.2 {
            continue;
        }
        let Some(arrival) = reached(arrivals, this.2) else {
            continue;
        };
        let (lo, hi) = (prev.0, this.1.min(arrival));
        let width = hi.saturating_duration_since(lo);
        let flushed = lo + width / 2;
        values.push(arrival.saturating_duration_since(flushed).as_secs_f64() * 1e3);
        widths.push(width.as_secs_f64() * 1e3);
    }
    values.sort_by(f64::total_cmp);
    widths.sort_by(f64::total_cmp);
    let at = |v: &[f64], q: f64| {
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v.get(i).copied().unwrap_or(f64::NAN)
    };
    Dist {
        samples: values.len(),
        p50_ms: at(&values, 0.5),
        p99_ms: at(&values, 0.99),
        max_ms: at(&values, 1.0),
        resolution_ms: at(&widths, 0.5),
    }
}
