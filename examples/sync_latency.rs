//! What synchronous replication through the relay costs a commit: pgbench's commit latency
//! (p50, p99) with `synchronous_commit = on`, `-N`, 4 clients, in three setups on one
//! machine:
//!
//! 1. `direct`: one standby attached to the primary is its synchronous standby;
//! 2. `relay`: the relay is the synchronous standby, acknowledging what it made durable;
//! 3. `relay ANY 1`: the relay acknowledges only what one of its two standbys flushed
//!    (`--synchronous-standby-names 'ANY 1 (d1, d2)'`).
//!
//! Also printed: the fdatasync rate of the disk the relay writes to (`pg_test_fsync`), since
//! the relay's added latency should be about one fsync.
//!
//! ```text
//! cargo build --release
//! cargo run --release --example sync_latency -- [--seconds 20] [--json out.json]
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use walrelay::testkit::localpg::{
    self, Cluster, ClusterBuilder, PgBinaries, free_port, wait_until,
};

#[derive(Debug, Parser)]
struct Args {
    /// Seconds of pgbench per setup.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Write the results as JSON to this file too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The relay binary [default: target/release/walrelay].
    #[arg(long)]
    walrelay: Option<PathBuf>,
}

/// One setup's result.
#[derive(Debug)]
struct Case {
    name: &'static str,
    tps: f64,
    p50_ms: f64,
    p99_ms: f64,
    transactions: usize,
}

/// Runs pgbench against `primary` and reads its per-transaction log.
fn bench(primary: &Cluster, logs: &Path, name: &'static str, seconds: u64) -> Result<Case> {
    let prefix = logs.join(name.replace(' ', "_"));
    let secs = seconds.to_string();
    let prefix_arg = format!("--log-prefix={}", prefix.display());
    primary.pgbench(&["-N", "-c", "4", "-j", "2", "-T", &secs, "-l", &prefix_arg])?;
    let mut latencies = Vec::new();
    let stem = prefix
        .file_name()
        .context("log prefix")?
        .to_string_lossy()
        .into_owned();
    for entry in std::fs::read_dir(logs)? {
        let entry = entry?;
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("{stem}."))
        {
            continue;
        }
        for line in std::fs::read_to_string(entry.path())?.lines() {
            // client_id transaction_no time script_no time_epoch time_us
            if let Some(us) = line
                .split_whitespace()
                .nth(2)
                .and_then(|t| t.parse::<u64>().ok())
            {
                latencies.push(us);
            }
        }
    }
    if latencies.is_empty() {
        bail!("{name}: pgbench logged no transaction");
    }
    latencies.sort_unstable();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(i).map_or(0.0, |us| *us as f64 / 1000.0)
    };
    Ok(Case {
        name,
        tps: latencies.len() as f64 / seconds as f64,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        transactions: latencies.len(),
    })
}

fn set_sync(primary: &mut Cluster, names: &str) -> Result<()> {
    primary.set_config("synchronous_standby_names", names)?;
    primary.psql("SELECT pg_reload_conf()")?;
    Ok(())
}

fn start_relay(
    walrelay: &Path,
    primary: &Cluster,
    dir: &Path,
    port: u16,
    extra: &[&str],
) -> Result<localpg::PgProcess> {
    let mut cmd = Command::new(walrelay);
    cmd.args(["run", "--upstream", &primary.conninfo(), "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stdin(Stdio::null());
    Ok(localpg::spawn(cmd, &dir.join("relay.log"))?)
}

fn wait_streaming(standby: &Cluster) -> Result<()> {
    wait_until(Duration::from_secs(60), "a standby to stream", || {
        Ok(standby.psql("SELECT status FROM pg_stat_wal_receiver")? == "streaming")
    })
    .with_context(|| standby.log_contents())?;
    Ok(())
}

/// `pg_test_fsync`'s fdatasync rate for a file in `dir`, when the build has the tool.
fn fdatasync_rate(bins: &PgBinaries, dir: &Path) -> Option<String> {
    let mut cmd = bins.command("pg_test_fsync");
    cmd.args(["-s", "2", "-f"]).arg(dir.join("fsync_test"));
    let out = localpg::run(&mut cmd).ok()?;
    out.lines()
        .find(|l| l.trim_start().starts_with("fdatasync"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
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
    let root = bins.scratch_dir(&std::env::temp_dir(), "sync-latency")?;
    let logs = bins.scratch_dir(root.path(), "pgbench-logs")?;
    let mut primary = ClusterBuilder::new(bins.clone(), root.path()).init()?;
    primary.start()?;
    primary.pgbench(&["-i", "-s", "10", "-q"])?;
    let mut cases = Vec::new();

    // 1. A standby attached to the primary.
    let mut direct = primary.basebackup_standby(
        &format!("{} application_name=direct", primary.conninfo()),
        None,
    )?;
    direct.start()?;
    wait_streaming(&direct)?;
    set_sync(&mut primary, "direct")?;
    eprintln!("direct standby streaming: pgbench for {} s", args.seconds);
    cases.push(bench(&primary, logs.path(), "direct", args.seconds)?);
    set_sync(&mut primary, "")?;
    direct.stop(localpg::StopMode::Fast)?;

    // 2. The relay as the synchronous standby.
    let relay_dir = bins.scratch_dir(root.path(), "relay")?;
    let port = free_port()?;
    let relay_conninfo = format!("host=127.0.0.1 port={port} user=postgres");
    let mut relay = start_relay(&walrelay, &primary, relay_dir.path(), port, &[])?;
    wait_until(Duration::from_secs(60), "the relay streams", || {
        Ok(primary.psql(
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walrelay' AND state = 'streaming'",
        )? == "1")
    })?;
    set_sync(&mut primary, "walrelay")?;
    eprintln!("relay streaming: pgbench for {} s", args.seconds);
    cases.push(bench(&primary, logs.path(), "relay", args.seconds)?);

    // 3. The relay waiting for one of its two standbys.
    let mut standbys = Vec::new();
    for name in ["d1", "d2"] {
        let mut s = primary
            .basebackup_standby(&format!("{relay_conninfo} application_name={name}"), None)?;
        s.start()?;
        wait_streaming(&s).with_context(|| relay.log_contents())?;
        standbys.push(s);
    }
    relay.stop()?;
    let _relay = start_relay(
        &walrelay,
        &primary,
        relay_dir.path(),
        port,
        &["--synchronous-standby-names", "ANY 1 (d1, d2)"],
    )?;
    for s in &standbys {
        wait_streaming(s)?;
    }
    eprintln!(
        "two standbys behind the relay: pgbench for {} s",
        args.seconds
    );
    cases.push(bench(&primary, logs.path(), "relay ANY 1", args.seconds)?);

    let fsync = fdatasync_rate(&bins, relay_dir.path());
    println!("| setup | commits/s | p50 ms | p99 ms | transactions |");
    println!("|---|---:|---:|---:|---:|");
    for c in &cases {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} |",
            c.name, c.tps, c.p50_ms, c.p99_ms, c.transactions
        );
    }
    if let Some(f) = &fsync {
        println!("pg_test_fsync on the relay's disk: {f}");
    }
    if let Some(path) = &args.json {
        let rows: Vec<serde_json::Value> = cases
            .iter()
            .map(|c| {
                serde_json::json!({
                    "setup": c.name, "tps": c.tps, "p50_ms": c.p50_ms,
                    "p99_ms": c.p99_ms, "transactions": c.transactions,
                })
            })
            .collect();
        let doc = serde_json::json!({ "seconds": args.seconds, "cases": rows, "fdatasync": fsync });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}
