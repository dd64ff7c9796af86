//! Base-backup throughput through the relay against directly from the primary, in the same
//! run, with the relay's CPU and memory during each backup.
//!
//! For each of two database sizes (a pgbench database of `--scale`, 130 ≈ 2 GB by default,
//! and a smaller one, a quarter of it by default) the benchmark fills one throwaway primary
//! with `pgbench -i -s N`, starts a fresh `walrelay run` in front of it (`--listen`,
//! `--max-base-backups`), and then takes `pg_basebackup -Fp -X stream -c fast` (with its
//! default manifest) `--rounds` times each way, alternating: directly from the primary, and
//! with `-h RELAY`, which the relay relays to the primary through one 256 KiB buffer. Rounds
//! swap the order (direct then relay, relay then direct, …), so neither mode always goes
//! first. Each copy goes to a new directory, is measured (the sum of its files' sizes), and is
//! deleted before the next backup, and dirty pages are then written out with `sync`, so no
//! backup pays for the previous one's writeback. The first relayed copy at each size is
//! checked with `pg_verifybackup` before it is deleted (not timed).
//!
//! Each backup is timed wall-clock, from the start of `pg_basebackup` to its exit; its rate
//! is the copy's size over that time. Around each backup, either way, the relay's CPU time is
//! read from `/proc/PID/stat` (utime + stime: the relay is one process, its threads
//! included), and its `VmRSS` is read from `/proc/PID/status` just before the backup and
//! every 10 ms during it; `VmHWM` (the relay's peak over its life, which began after the
//! database was filled) is read after it; the kernel updates `VmHWM` lazily, so it can be
//! below the sampled peak. During a direct backup the relay only receives the
//! WAL the backup's checkpoint writes: that is the baseline. The primary's walsender and the
//! client are not measured: they are the same either way.
//!
//! The relay-to-direct ratio is that of the median rates. The memory the relay needs for a
//! backup should not depend on the database's size: compare the peak RSS at the two sizes.
//!
//! ```text
//! cargo build --release
//! cargo run --release --example basebackup_bench -- [--scale 130] [--small-scale 32]
//!     [--rounds 3] [--sync] [--dir DIR]
//! cargo run --release --example basebackup_bench -- --smoke
//! ```
//!
//! `BASEBACKUP_BENCH_SCALE` and `BASEBACKUP_BENCH_SMALL_SCALE` may set the scales instead.
//! `--smoke` runs scales 8 and 2, a check that everything works, in well under a minute. Progress
//! and a Markdown table go to stderr; stdout gets one JSON object. Disk space needed: the
//! primary's database, one copy of it, and the WAL `pgbench -i` writes (up to the primary's
//! `max_wal_size`, 1 GB). Everything it starts is stopped and its directories are removed at
//! the end. MB are 2^20 bytes throughout.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use serde_json::{Value, json};
use walrelay::testkit::localpg::{
    self, Cluster, ClusterBuilder, LocalPgError, PgBinaries, PgProcess, ScratchDir, free_port,
    wait_until,
};
use walrelay::types::Lsn;

/// One MB.
const MIB: f64 = 1_048_576.0;

/// How long starting the relay or its catching up with the primary may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

/// How often the relay's `VmRSS` is read during a backup.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// The pgbench scales of `--smoke`.
const SMOKE_SCALES: (u32, u32) = (8, 2);

/// Time `pg_basebackup` directly from a primary and through the relay, at two database sizes.
#[derive(Debug, Parser)]
struct Args {
    /// pgbench scale of the larger database (130 makes about 2 GB).
    #[arg(
        long,
        env = "BASEBACKUP_BENCH_SCALE",
        default_value_t = 130,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    scale: u32,
    /// pgbench scale of the smaller database, measured first [default: a quarter of
    /// --scale]; 0 measures only the larger one.
    #[arg(long, env = "BASEBACKUP_BENCH_SMALL_SCALE", value_name = "N")]
    small_scale: Option<u32>,
    /// Scales 8 and 2, whatever --scale and --small-scale say: a quick check.
    #[arg(long)]
    smoke: bool,
    /// Backups in each mode at each size (at least 3).
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u32).range(3..))]
    rounds: u32,
    /// Let `pg_basebackup` fsync each copy (by default it runs with `--no-sync`, and only
    /// the transfer is timed).
    #[arg(long)]
    sync: bool,
    /// The relay's `--max-base-backups`.
    #[arg(long, default_value_t = 2, value_name = "N")]
    max_base_backups: u32,
    /// The relay binary [default: `walrelay` in the directory above this example's].
    #[arg(long, value_name = "PATH")]
    walrelay: Option<PathBuf>,
    /// Where to put the primary, the relay's data and the copies [default: the temporary
    /// directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

impl Args {
    /// The scales to measure, smaller first.
    fn scales(&self) -> Vec<u32> {
        let (large, small) = if self.smoke {
            SMOKE_SCALES
        } else {
            (self.scale, self.small_scale.unwrap_or(self.scale / 4))
        };
        if small == 0 || small >= large {
            vec![large]
        } else {
            vec![small, large]
        }
    }
}

/// Where a backup comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `pg_basebackup` aimed at the primary.
    Direct,
    /// `pg_basebackup` aimed at the relay.
    Relay,
}

impl Mode {
    /// Its name in the output.
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Relay => "relay",
        }
    }
}

/// One timed backup.
#[derive(Debug)]
struct Run {
    /// Which round (from 1).
    round: u32,
    /// Wall-clock time of `pg_basebackup`.
    seconds: f64,
    /// The copy's size: the sum of its files' sizes.
    bytes: u64,
    /// The relay's CPU time (user + system) during the backup.
    relay_cpu_s: f64,
    /// The relay's `VmRSS` just before the backup, in kB.
    relay_rss_before_kib: u64,
    /// The largest `VmRSS` of the relay seen during the backup, in kB.
    relay_rss_peak_kib: u64,
    /// How many times `VmRSS` was read during the backup.
    rss_samples: u64,
    /// The relay's `VmHWM` after the backup, in kB.
    relay_hwm_kib: u64,
}

impl Run {
    /// MB a second.
    fn rate(&self) -> f64 {
        self.bytes as f64 / MIB / self.seconds
    }

    /// The relay's CPU time as a share of one core, in percent.
    fn cpu_percent(&self) -> f64 {
        100.0 * self.relay_cpu_s / self.seconds
    }

    fn to_json(&self) -> Value {
        json!({
            "round": self.round,
            "seconds": round3(self.seconds),
            "bytes": self.bytes,
            "mb_per_s": round3(self.rate()),
            "relay_cpu_s": round3(self.relay_cpu_s),
            "relay_cpu_percent": round3(self.cpu_percent()),
            "relay_rss_before_kib": self.relay_rss_before_kib,
            "relay_rss_peak_kib": self.relay_rss_peak_kib,
            "relay_rss_samples": self.rss_samples,
            "relay_vm_hwm_kib": self.relay_hwm_kib,
        })
    }
}

/// The backups of one database size.
#[derive(Debug)]
struct SizeResult {
    scale: u32,
    /// `pg_database_size('postgres')`, where pgbench's tables are.
    database_bytes: u64,
    /// The sum of `pg_database_size` over all databases.
    cluster_bytes: u64,
    /// How long `pgbench -i` took.
    init_seconds: f64,
    /// The relay's `VmRSS` once it had caught up, before the first backup, in kB.
    relay_rss_idle_kib: u64,
    direct: Vec<Run>,
    relay: Vec<Run>,
    /// Lines "BASE_BACKUP relayed" in the relay's log at the end.
    relayed_logged: usize,
}

impl SizeResult {
    /// The ratio of the median rates, relay over direct.
    fn ratio(&self) -> f64 {
        median(self.relay.iter().map(Run::rate)) / median(self.direct.iter().map(Run::rate))
    }

    /// The largest `VmRSS` seen during any relayed backup, in kB.
    fn relay_peak_rss(&self) -> u64 {
        self.relay
            .iter()
            .map(|r| r.relay_rss_peak_kib)
            .max()
            .unwrap_or(0)
    }

    /// The relay's `VmHWM` after the last backup, in kB.
    fn relay_hwm(&self) -> u64 {
        let all = self.direct.iter().chain(&self.relay);
        all.map(|r| r.relay_hwm_kib).max().unwrap_or(0)
    }

    fn mode_json(runs: &[Run]) -> Value {
        json!({
            "median_mb_per_s": round3(median(runs.iter().map(Run::rate))),
            "median_seconds": round3(median(runs.iter().map(|r| r.seconds))),
            "median_relay_cpu_s": round3(median(runs.iter().map(|r| r.relay_cpu_s))),
            "median_relay_cpu_percent": round3(median(runs.iter().map(Run::cpu_percent))),
            "relay_rss_peak_kib": runs.iter().map(|r| r.relay_rss_peak_kib).max(),
            "runs": runs.iter().map(Run::to_json).collect::<Vec<_>>(),
        })
    }

    fn to_json(&self) -> Value {
        json!({
            "pgbench_scale": self.scale,
            "database_bytes": self.database_bytes,
            "database_mb": round3(self.database_bytes as f64 / MIB),
            "cluster_bytes": self.cluster_bytes,
            "pgbench_init_seconds": round3(self.init_seconds),
            "relay_rss_idle_kib": self.relay_rss_idle_kib,
            "direct": SizeResult::mode_json(&self.direct),
            "relay": SizeResult::mode_json(&self.relay),
            "relay_over_direct": round3(self.ratio()),
            "relay_at_least_90_percent": self.ratio() >= 0.9,
            "relay_rss_peak_kib": self.relay_peak_rss(),
            "relay_vm_hwm_kib": self.relay_hwm(),
            "relayed_backups_logged": self.relayed_logged,
        })
    }
}

/// The median of `values` (the mean of the middle two for an even count); 0 when empty.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    match (
        v.len() % 2,
        v.get(mid),
        mid.checked_sub(1).and_then(|i| v.get(i)),
    ) {
        (1, Some(m), _) => *m,
        (0, Some(hi), Some(lo)) => (hi + lo) / 2.0,
        _ => 0.0,
    }
}

/// `x` to three decimals, for the JSON.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One reading of `/proc/PID/stat`: utime + stime, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // After the command name (which may hold spaces), field 3 (state) comes first.
    let (_, rest) = stat.rsplit_once(')').context("/proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        let text = fields.get(n - 3).context("a short /proc/PID/stat")?;
        Ok(text.parse()?)
    };
    Ok(field(14)? + field(15)?)
}

/// A `kB` line of `/proc/PID/status`, such as `VmRSS:`.
fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let line = text.lines().find_map(|l| l.strip_prefix(key));
    let kib = line.and_then(|l| l.split_whitespace().next()?.parse().ok());
    kib.with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// `getconf CLK_TCK`: the unit of the times in `/proc/PID/stat`.
fn clock_ticks() -> Result<u64> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("getconf CLK_TCK printed {text:?}"))
}

/// The sum of the sizes of the files under `dir`.
fn tree_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += tree_bytes(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

/// The relay binary: `--walrelay`, else `walrelay` in the directory above this example's
/// (`target/release/examples/basebackup_bench` → `target/release/walrelay`).
fn relay_binary(args: &Args) -> Result<PathBuf> {
    let path = match &args.walrelay {
        Some(path) => path.clone(),
        None => {
            let exe = std::env::current_exe()?;
            let profile = exe.parent().and_then(Path::parent);
            profile
                .context("no directory above this example's")?
                .join("walrelay")
        }
    };
    if !path.is_file() {
        bail!(
            "{} not found: run `cargo build --release` first, or pass --walrelay PATH",
            path.display()
        );
    }
    Ok(path)
}

/// `walrelay run` in front of the primary (fields drop in order: the process is killed
/// before its directory is removed).
struct Relay {
    process: PgProcess,
    port: u16,
    _dir: ScratchDir,
}

impl Relay {
    /// Starts the relay and waits until it answers replication commands.
    fn start(bench: &Bench, primary: &Cluster) -> Result<Relay> {
        let dir = bench.bins.scratch_dir(bench.root.path(), "relay")?;
        let port = free_port()?;
        let mut cmd = Command::new(&bench.walrelay);
        cmd.args(["run", "--upstream", &primary.conninfo(), "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--max-base-backups",
                &bench.args.max_base_backups.to_string(),
            ])
            .stdin(Stdio::null());
        let mut process = localpg::spawn(cmd, &dir.path().join("relay.log"))?;
        let conninfo = replication(&relay_conninfo(port));
        wait_until(SETUP_TIMEOUT, "the relay to serve", || {
            if let Some(status) = process.try_status()? {
                return Err(LocalPgError::Unexpected {
                    command: format!("walrelay run (exited: {status})"),
                    output: process.log_contents(),
                });
            }
            Ok(bench.bins.psql(&conninfo, "IDENTIFY_SYSTEM").is_ok())
        })?;
        Ok(Relay {
            process,
            port,
            _dir: dir,
        })
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Waits until the relay has stored the primary's WAL up to its flush LSN now.
    fn catch_up(&self, bins: &PgBinaries, primary: &Cluster) -> Result<()> {
        let target = primary.current_wal_flush_lsn()?;
        let conninfo = replication(&relay_conninfo(self.port));
        let what = format!("the relay to store the WAL up to {target}");
        wait_until(SETUP_TIMEOUT, &what, || {
            let out = bins.psql(&conninfo, "IDENTIFY_SYSTEM")?;
            let xlogpos = out.split('|').nth(2).unwrap_or_default();
            let lsn: Lsn = xlogpos.parse().map_err(|_| LocalPgError::Unexpected {
                command: "IDENTIFY_SYSTEM".into(),
                output: out.clone(),
            })?;
            Ok(lsn >= target)
        })
        .with_context(|| self.process.log_contents())
    }

    /// Stops the relay and drops its slot on the primary, which would otherwise keep all
    /// the WAL written after it (the next size's `pgbench -i`).
    fn stop(mut self, primary: &Cluster) -> Result<()> {
        self.process.stop()?;
        let inactive =
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walrelay' AND NOT active";
        wait_until(SETUP_TIMEOUT, "the relay's slot to be released", || {
            Ok(primary.psql(inactive)? == "1")
        })?;
        primary.psql("SELECT pg_drop_replication_slot('walrelay')")?;
        Ok(())
    }

    /// How many backups the relay has logged as relayed to their end.
    fn relayed_logged(&self) -> usize {
        let log = self.process.log_contents();
        log.lines()
            .filter(|l| l.contains("BASE_BACKUP relayed"))
            .count()
    }
}

/// The relay's connection string for `port`.
fn relay_conninfo(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=postgres")
}

/// `conninfo` for replication commands.
fn replication(conninfo: &str) -> String {
    format!("{conninfo} replication=1")
}

/// What every size shares.
struct Bench {
    args: Args,
    bins: PgBinaries,
    /// The relay binary.
    walrelay: PathBuf,
    /// The unit of the times in `/proc/PID/stat`.
    clk_tck: u64,
    /// Holds the primary, the relay's data and the copies; removed at the end.
    root: ScratchDir,
}

impl Bench {
    /// Fills the primary to `scale`, starts a relay in front of it and takes the backups.
    fn size(&self, primary: &Cluster, scale: u32) -> Result<SizeResult> {
        eprintln!("[scale {scale}] pgbench -i -s {scale}");
        let began = Instant::now();
        primary.pgbench(&["-i", "-q", "-s", &scale.to_string()])?;
        let init_seconds = began.elapsed().as_secs_f64();
        primary.psql("CHECKPOINT")?;
        let database_bytes = primary
            .psql("SELECT pg_database_size('postgres')")?
            .parse()?;
        let cluster_bytes = primary
            .psql("SELECT sum(pg_database_size(oid)) FROM pg_database")?
            .parse()?;
        eprintln!(
            "[scale {scale}] database {:.1} MB (all databases {:.1} MB) after {init_seconds:.1} s; starting the relay",
            database_bytes as f64 / MIB,
            cluster_bytes as f64 / MIB,
        );
        let relay = Relay::start(self, primary)?;
        relay.catch_up(&self.bins, primary)?;
        let relay_rss_idle_kib = status_kib(relay.pid(), "VmRSS:")?;
        let (mut direct, mut relayed) = (Vec::new(), Vec::new());
        for round in 1..=self.args.rounds {
            let order = if round % 2 == 1 {
                [Mode::Direct, Mode::Relay]
            } else {
                [Mode::Relay, Mode::Direct]
            };
            for mode in order {
                let verify = mode == Mode::Relay && relayed.is_empty();
                let run = self.backup(primary, &relay, mode, round, verify)?;
                eprintln!(
                    "[scale {scale}] round {round} {:<6} {:>8.1} MB in {:>7.2} s: {:>7.1} MB/s, relay CPU {:.2} s, RSS {} -> peak {} kB",
                    mode.name(),
                    run.bytes as f64 / MIB,
                    run.seconds,
                    run.rate(),
                    run.relay_cpu_s,
                    run.relay_rss_before_kib,
                    run.relay_rss_peak_kib,
                );
                match mode {
                    Mode::Direct => direct.push(run),
                    Mode::Relay => relayed.push(run),
                }
            }
        }
        let relayed_logged = relay.relayed_logged();
        if relayed_logged != relayed.len() {
            bail!(
                "the relay logged {relayed_logged} relayed backups, not {}:\n{}",
                relayed.len(),
                relay.process.log_contents()
            );
        }
        relay.stop(primary)?;
        Ok(SizeResult {
            scale,
            database_bytes,
            cluster_bytes,
            init_seconds,
            relay_rss_idle_kib,
            direct,
            relay: relayed,
            relayed_logged,
        })
    }

    /// Takes one backup, measures it and the relay meanwhile, and deletes it.
    fn backup(
        &self,
        primary: &Cluster,
        relay: &Relay,
        mode: Mode,
        round: u32,
        verify: bool,
    ) -> Result<Run> {
        let conninfo = match mode {
            Mode::Direct => primary.conninfo(),
            Mode::Relay => relay_conninfo(relay.port),
        };
        // The relay serves `-X stream` from what it has stored.
        relay.catch_up(&self.bins, primary)?;
        let dir = self.bins.scratch_dir(self.root.path(), "copy")?;
        let data = dir.path().join("data");
        let mut cmd = self.bins.command("pg_basebackup");
        cmd.arg("-D").arg(&data).args([
            "-d",
            &conninfo,
            "-Fp",
            "-X",
            "stream",
            "-c",
            "fast",
            "-l",
            &format!("bench {} {round}", mode.name()),
        ]);
        if !self.args.sync {
            cmd.arg("--no-sync");
        }
        let pid = relay.pid();
        let rss_before = status_kib(pid, "VmRSS:")?;
        let ticks_before = cpu_ticks(pid)?;
        let stop = AtomicBool::new(false);
        let (outcome, seconds, sampled) = thread::scope(|scope| {
            let sampler = scope.spawn(|| sample_rss(pid, &stop));
            let began = Instant::now();
            let outcome = localpg::run(&mut cmd);
            let seconds = began.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            let sampled = sampler
                .join()
                .map_err(|_| anyhow!("the RSS sampler failed"));
            (outcome, seconds, sampled)
        });
        outcome.with_context(|| format!("{} backup", mode.name()))?;
        let ticks = cpu_ticks(pid)?.saturating_sub(ticks_before);
        let (peak, samples) = sampled?;
        let relay_hwm_kib = status_kib(pid, "VmHWM:")?;
        let bytes = tree_bytes(&data)?;
        if verify {
            localpg::run(self.bins.command("pg_verifybackup").arg(&data))
                .context("pg_verifybackup of a copy taken through the relay")?;
        }
        drop(dir);
        // Writes back whatever of the deleted copy (or else) is still dirty.
        localpg::run(&mut Command::new("sync"))?;
        Ok(Run {
            round,
            seconds,
            bytes,
            relay_cpu_s: ticks as f64 / self.clk_tck as f64,
            relay_rss_before_kib: rss_before,
            relay_rss_peak_kib: peak.max(rss_before),
            rss_samples: samples,
            relay_hwm_kib,
        })
    }
}

/// Reads `pid`'s `VmRSS` every [`SAMPLE_EVERY`] until `stop` (and once after it); returns
/// the largest, in kB, and how many readings there were.
fn sample_rss(pid: u32, stop: &AtomicBool) -> (u64, u64) {
    let (mut peak, mut samples) = (0, 0);
    loop {
        let done = stop.load(Ordering::Relaxed);
        if let Ok(kib) = status_kib(pid, "VmRSS:") {
            peak = peak.max(kib);
            samples += 1;
        }
        if done {
            return (peak, samples);
        }
        thread::sleep(SAMPLE_EVERY);
    }
}

/// Starts the primary: checkpoints only when asked for (pgbench's, the backups').
fn start_primary(bins: &PgBinaries, root: &Path) -> Result<Cluster> {
    let mut primary = ClusterBuilder::new(bins.clone(), root)
        .config("checkpoint_timeout", "1h")
        .init()?;
    primary.start()?;
    Ok(primary)
}

/// Prints the Markdown table (in the README's shape) and what its columns mean.
fn print_table(results: &[SizeResult]) {
    let list = |runs: &[Run], f: &dyn Fn(&Run) -> String| {
        runs.iter().map(f).collect::<Vec<_>>().join(", ")
    };
    eprintln!();
    eprintln!(
        "| Database (pgbench scale) | Direct MB/s | Through the relay MB/s | Relay / direct (medians) | Relay CPU s per relayed backup | Relay RSS idle / before each relayed backup / peak during / VmHWM |"
    );
    eprintln!("|---|---|---|---:|---|---|");
    for r in results {
        let before = r.relay.iter().map(|x| x.relay_rss_before_kib);
        let before = match (before.clone().min(), before.max()) {
            (Some(lo), Some(hi)) if mb(hi) - mb(lo) >= 0.05 => {
                format!("{:.1}–{:.1}", mb(lo), mb(hi))
            }
            (Some(lo), _) => format!("{:.1}", mb(lo)),
            _ => "n/a".into(),
        };
        eprintln!(
            "| {:.0} MB ({}) | {} | {} | {:.2} | {} | {:.1} / {before} / {:.1} / {:.1} MB |",
            r.database_bytes as f64 / MIB,
            r.scale,
            list(&r.direct, &|x| format!("{:.0}", x.rate())),
            list(&r.relay, &|x| format!("{:.0}", x.rate())),
            r.ratio(),
            list(&r.relay, &|x| format!("{:.2}", x.relay_cpu_s)),
            mb(r.relay_rss_idle_kib),
            mb(r.relay_peak_rss()),
            mb(r.relay_hwm()),
        );
    }
    eprintln!();
    eprintln!(
        "database: pg_database_size of pgbench's database; MB/s: the copy's size (all databases and the WAL) over pg_basebackup's wall-clock time, each run in order"
    );
    eprintln!("relay CPU: utime + stime of the relay during a relayed backup");
    eprintln!(
        "RSS: the relay's VmRSS once caught up, before each relayed backup, its peak during them (read every 10 ms), and VmHWM at the end"
    );
}

/// kB to MB.
fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() -> Result<()> {
    let args = Args::parse();
    let walrelay = relay_binary(&args)?;
    let bins = PgBinaries::find()?;
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let root = bins.scratch_dir(&parent, "basebackup-bench")?;
    let postgres = bins.version()?;
    let scales = args.scales();
    eprintln!(
        "pg_basebackup -Fp -X stream -c fast{}, direct and through the relay, {} rounds at pgbench scales {scales:?}, PostgreSQL {postgres}, relay {}",
        if args.sync { "" } else { " --no-sync" },
        args.rounds,
        walrelay.display()
    );
    let bench = Bench {
        args,
        bins,
        walrelay,
        clk_tck: clock_ticks()?,
        root,
    };
    let started = Instant::now();
    let primary = start_primary(&bench.bins, bench.root.path())?;
    let results = scales
        .iter()
        .map(|scale| bench.size(&primary, *scale))
        .collect::<Result<Vec<_>>>()?;
    drop(primary);
    print_table(&results);
    let doc = json!({
        "postgres_major": postgres,
        "relay_binary": bench.walrelay.display().to_string(),
        "command": format!(
            "pg_basebackup -Fp -X stream -c fast{}",
            if bench.args.sync { "" } else { " --no-sync" }
        ),
        "rounds": bench.args.rounds,
        "max_base_backups": bench.args.max_base_backups,
        "rss_sample_ms": SAMPLE_EVERY.as_millis() as u64,
        "mb": "2^20 bytes",
        "total_seconds": round3(started.elapsed().as_secs_f64()),
        "sizes": results.iter().map(SizeResult::to_json).collect::<Vec<_>>(),
        "relay_rss_peak_kib_by_scale": results
            .iter()
            .map(|r| (r.scale.to_string(), json!(r.relay_peak_rss())))
            .collect::<serde_json::Map<_, _>>(),
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}
