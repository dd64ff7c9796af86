//! What a scrape of `/metrics` costs the relay: latency of one scrape, and the relay's CPU
//! with 10 scrapes a second against none, at 1, 16 and 64 downstreams.
//!
//! A local PostgreSQL 15 primary runs a steady write load (`pg_logical_emit_message`, about
//! 1 MB/s); `walrelay run` (the release build) relays it with `--listen` and `--http-listen`;
//! the downstreams are minimal replication clients in this process (the crate's own
//! `ReplicationClient`), each on a relay slot, confirming what they receive. For each count,
//! the relay's CPU time (`/proc/PID/stat`) is measured over `--seconds` without scrapes, then
//! over as long with 10 scrapes a second; the difference is what scraping costs. Latency is
//! that of the scrapes themselves, one at a time over a fresh connection each.
//!
//! ```text
//! cargo build --release
//! cargo run --release --example scrape_bench -- [--seconds 10] [--json out.json]
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use walrelay::client::{ReplicationClient, StreamTiming};
use walrelay::testkit::localpg::{self, ClusterBuilder, PgBinaries, free_port, wait_until};

#[derive(Debug, Parser)]
struct Args {
    /// Seconds measured per case, without and with scrapes.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Write the results as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The relay binary [default: target/release/walrelay].
    #[arg(long)]
    walrelay: Option<PathBuf>,
}

/// `/proc` counts CPU time in USER_HZ ticks, 100 a second.
const USER_HZ: f64 = 100.0;

fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("/proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> { Ok(f.get(i).context("stat field")?.parse::<f64>()?) };
    // utime and stime are fields 14 and 15; `f` starts at field 3.
    Ok((ticks(11)? + ticks(12)?) / USER_HZ)
}

/// One scrape: its latency and the size of the text.
fn scrape(port: u16) -> Result<(Duration, usize)> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    let took = t0.elapsed();
    if !body.starts_with(b"HTTP/1.1 200") {
        bail!("scrape failed: {}", String::from_utf8_lossy(&body));
    }
    Ok((took, body.len()))
}

#[derive(Debug)]
struct Case {
    downstreams: usize,
    idle_cpu: f64,
    scraped_cpu: f64,
    scrapes: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    bytes: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let walrelay = match &args.walrelay {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("no directory above this example's")?
            .join("walrelay"),
    };
    if !walrelay.is_file() {
        bail!(
            "{} not found: run `cargo build --release` first",
            walrelay.display()
        );
    }
    let bins = PgBinaries::find()?;
    let root = bins.scratch_dir(&std::env::temp_dir(), "scrape-bench")?;
    let mut primary = ClusterBuilder::new(bins.clone(), root.path())
        .config("max_wal_senders", "8")
        .init()?;
    primary.start()?;
    let relay_dir = bins.scratch_dir(root.path(), "relay")?;
    let (port, http) = (free_port()?, free_port()?);
    let mut cmd = Command::new(&walrelay);
    cmd.args(["run", "--upstream", &primary.conninfo(), "--data-dir"])
        .arg(relay_dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(["--max-wal-senders", "80", "--max-replication-slots", "80"])
        .stdin(Stdio::null());
    let relay = localpg::spawn(cmd, &relay_dir.path().join("relay.log"))?;
    let pid = relay.pid();
    let relay_conninfo = format!("host=127.0.0.1 port={port} user=postgres");
    wait_until(Duration::from_secs(60), "the relay to serve", || {
        Ok(bins
            .psql(
                &format!("{relay_conninfo} replication=1"),
                "IDENTIFY_SYSTEM",
            )
            .is_ok())
    })?;

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (bins, conninfo, stop) = (bins.clone(), primary.conninfo(), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = bins.psql(
                    &conninfo,
                    "SELECT pg_logical_emit_message(false, 'bench', repeat('x', 100000))",
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut cases = Vec::new();
    let mut clients = 0;
    for target in [1_usize, 16, 64] {
        while clients < target {
            let name = format!("bench_{clients}");
            bins.psql(
                &format!("{relay_conninfo} replication=1"),
                &format!("CREATE_REPLICATION_SLOT {name} PHYSICAL RESERVE_WAL"),
            )?;
            let conninfo = format!("{relay_conninfo} application_name={name}");
            runtime.spawn(async move {
                let Ok(mut client) = ReplicationClient::connect(&conninfo).await else {
                    return;
                };
                let Ok(id) = client.identify_system().await else {
                    return;
                };
                let timing = StreamTiming {
                    status_interval: Duration::from_secs(1),
                    receive_timeout: Duration::from_secs(60),
                };
                let start = walrelay::types::Lsn(id.xlogpos.0 & !0xFF_FFFF);
                let timeline = id.timeline;
                let Ok(mut stream) = client
                    .start_replication(Some(&name), timeline, start, timing)
                    .await
                else {
                    return;
                };
                while let Ok(Some((at, data))) = stream.next().await {
                    stream.confirm(walrelay::types::Lsn(at.0 + data.len() as u64));
                }
            });
            clients += 1;
        }
        std::thread::sleep(Duration::from_secs(3));
        let window = Duration::from_secs(args.seconds);
        let c0 = cpu_seconds(pid)?;
        std::thread::sleep(window);
        let idle_cpu = cpu_seconds(pid)? - c0;
        let mut latencies = Vec::new();
        let mut bytes = 0;
        let c1 = cpu_seconds(pid)?;
        let t0 = Instant::now();
        while t0.elapsed() < window {
            let tick = Instant::now();
            let (took, size) = scrape(http)?;
            latencies.push(took);
            bytes = size;
            if let Some(rest) = Duration::from_millis(100).checked_sub(tick.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        let scraped_cpu = cpu_seconds(pid)? - c1;
        latencies.sort();
        let at = |q: f64| {
            let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
            latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        cases.push(Case {
            downstreams: target,
            idle_cpu,
            scraped_cpu,
            scrapes: latencies.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
            bytes,
        });
    }
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    runtime.shutdown_timeout(Duration::from_secs(1));

    let secs = args.seconds as f64;
    println!(
        "| downstreams | relay CPU, no scrapes | relay CPU, 10 scrapes/s | scraping costs | scrape p50 | p99 | max | /metrics size |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut json = Vec::new();
    for c in &cases {
        let cost = (c.scraped_cpu - c.idle_cpu) / secs * 100.0;
        println!(
            "| {} | {:.2}% of a core | {:.2}% | {:+.2}% of a core | {:.2} ms | {:.2} ms | {:.2} ms | {} kB |",
            c.downstreams,
            c.idle_cpu / secs * 100.0,
            c.scraped_cpu / secs * 100.0,
            cost,
            c.p50_ms,
            c.p99_ms,
            c.max_ms,
            c.bytes / 1000
        );
        json.push(format!(
            "{{\"downstreams\":{},\"idle_cpu_s\":{:.3},\"scraped_cpu_s\":{:.3},\"seconds\":{},\"scrapes\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"bytes\":{}}}",
            c.downstreams, c.idle_cpu, c.scraped_cpu, args.seconds, c.scrapes, c.p50_ms, c.p99_ms, c.max_ms, c.bytes
        ));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, format!("[{}]\n", json.join(",")))?;
    }
    drop(relay);
    Ok(())
}
