//! End-to-end fan-out benchmark: WAL from one real primary to N real standbys, delivered either
//! by the relay or by a PostgreSQL cascading standby, with the time it takes and what the
//! fan-out server spends on it.
//!
//! For each mode the benchmark starts a throwaway primary, the fan-out server and N hot standbys
//! (each a `pg_basebackup` of the primary) that stream from the fan-out server on slots of their
//! own. Once all stream and have caught up, it writes a fixed volume of WAL on the primary from
//! one session (1 MB non-transactional `pg_logical_emit_message` records, then one commit that
//! flushes them) and waits until every standby's `pg_last_wal_receive_lsn()` (received and
//! flushed by its walreceiver, not replayed) reaches the primary's flush LSN.
//!
//! - `relay`: the `walrelay` binary (`walrelay run --upstream … --listen …`), holding one slot on
//!   the primary and creating the N downstream slots itself (`CREATE_REPLICATION_SLOT`).
//! - `cascade`: what PostgreSQL offers for the same job, a hot standby C of the primary whose
//!   walsenders serve the N standbys on slots created on C
//!   (`pg_create_physical_replication_slot`).
//!
//! What the fan-out server spends is read from `/proc`: CPU time as utime + stime of every
//! process in its tree plus the time of children it has reaped (cutime + cstime), before and
//! after the run; peak RSS as `VmHWM` of `/proc/PID/status` (each process's peak over its life,
//! setup included) summed over the tree; and PSS from `/proc/PID/smaps_rollup`, summed over the
//! tree and sampled during the run. C's time includes its startup process replaying the WAL, a
//! job the relay does not have. RSS counts PostgreSQL's shared memory (`shared_buffers` and the
//! rest of the shared segment) once in every process that has touched it; PSS divides each
//! shared page among the processes that map it, so the summed PSS counts it once.
//!
//! ```text
//! cargo build --release
//! cargo run --release --example fanout_bench -- [--standbys N] [--mb MB] [--segment-mb S]
//!     [--only relay|cascade]
//! ```
//!
//! Everything it starts is stopped and its directories are removed at the end. MB are 2^20
//! bytes throughout.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use walrelay::testkit::localpg::{
    self, Cluster, ClusterBuilder, LocalPgError, PgBinaries, PgProcess, ScratchDir, free_port,
    wait_until,
};
use walrelay::types::Lsn;

/// One MB.
const MIB: u64 = 1 << 20;

/// How long starting a server, a base backup or a catch-up may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the standbys may take to receive the written WAL.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// How often the fan-out server's PSS is sampled during the run.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// Time WAL delivered to N standbys through the relay and through a cascading standby.
#[derive(Debug, Parser)]
struct Args {
    /// Standbys behind the fan-out server.
    #[arg(long, default_value_t = 3, value_name = "N")]
    standbys: u32,
    /// WAL to write on the primary, in MB.
    #[arg(long, default_value_t = 256, value_name = "MB")]
    mb: u32,
    /// WAL segment size of the primary, in MB (a power of two from 1 to 1024).
    #[arg(long, default_value_t = 16, value_name = "S")]
    segment_mb: u32,
    /// The relay binary [default: `walrelay` in the directory above this example's].
    #[arg(long, value_name = "PATH")]
    walrelay: Option<PathBuf>,
    /// Where to put the clusters and the relay's data [default: the temporary directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Which fan-out servers to run [default: both].
    #[arg(long, value_enum, value_name = "MODE")]
    only: Option<Mode>,
    /// Scrape the relay's /metrics this often while the WAL is written (0: never), to see
    /// what monitoring costs the fan-out.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    scrape_every_ms: u64,
}

/// What serves the standbys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// The `walrelay` binary.
    Relay,
    /// A PostgreSQL cascading standby.
    Cascade,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Relay => "relay",
            Mode::Cascade => "cascade",
        }
    }
}

/// The running fan-out server the standbys stream from.
enum FanOut {
    /// `walrelay run` listening on `port`, its data in `_dir` (fields drop in order: the
    /// process is killed before its directory is removed).
    Relay {
        process: PgProcess,
        port: u16,
        http: u16,
        _dir: ScratchDir,
    },
    /// Cascading standby C.
    Cascade(Cluster),
}

impl FanOut {
    /// The connection string standbys put in `primary_conninfo`.
    fn conninfo(&self) -> String {
        match self {
            FanOut::Relay { port, .. } => format!("host=127.0.0.1 port={port} user=postgres"),
            FanOut::Cascade(c) => c.conninfo(),
        }
    }

    /// The pid at the root of its process tree.
    fn pid(&self) -> Result<u32> {
        match self {
            FanOut::Relay { process, .. } => Ok(process.pid()),
            FanOut::Cascade(c) => c.pid().context("the cascading standby is not running"),
        }
    }

    /// Creates the physical slot `name` for one standby.
    fn create_slot(&self, bins: &PgBinaries, name: &str) -> Result<()> {
        match self {
            FanOut::Relay { .. } => {
                let sql = format!("CREATE_REPLICATION_SLOT \"{name}\" PHYSICAL");
                bins.psql(&replication(&self.conninfo()), &sql)?;
            }
            FanOut::Cascade(c) => c.create_physical_slot(name)?,
        }
        Ok(())
    }

    /// How far it has WAL to serve: the relay's durable end (`IDENTIFY_SYSTEM`'s xlogpos) or
    /// what C has received.
    fn received(&self, bins: &PgBinaries) -> Result<Lsn, LocalPgError> {
        match self {
            FanOut::Relay { .. } => {
                let sql = "IDENTIFY_SYSTEM";
                let out = bins.psql(&replication(&self.conninfo()), sql)?;
                parse_lsn(sql, out.split('|').nth(2).unwrap_or_default())
            }
            FanOut::Cascade(c) => received(c),
        }
    }

    /// C's `shared_buffers`; `None` for the relay.
    fn shared_buffers(&self) -> Result<Option<String>> {
        match self {
            FanOut::Relay { .. } => Ok(None),
            FanOut::Cascade(c) => Ok(Some(c.psql("SHOW shared_buffers")?)),
        }
    }
}

/// `conninfo` for replication commands.
fn replication(conninfo: &str) -> String {
    format!("{conninfo} replication=1")
}

/// Parses `out`, the answer to `sql`, as an LSN.
fn parse_lsn(sql: &str, out: &str) -> Result<Lsn, LocalPgError> {
    out.parse().map_err(|_| LocalPgError::Unexpected {
        command: sql.into(),
        output: out.into(),
    })
}

/// A standby's `pg_last_wal_receive_lsn()` (`0/0` before it has received anything).
fn received(standby: &Cluster) -> Result<Lsn, LocalPgError> {
    let sql = "SELECT coalesce(pg_last_wal_receive_lsn(), '0/0')";
    parse_lsn(sql, &standby.psql(sql)?)
}

/// Waits until `standby` has received WAL up to `target`.
fn wait_received(standby: &Cluster, target: Lsn, timeout: Duration) -> Result<()> {
    let what = format!("the standby on port {} to receive {target}", standby.port());
    wait_until(timeout, &what, || Ok(received(standby)? >= target))?;
    Ok(())
}

/// Starts a primary whose settings (inherited by every standby) keep checkpoints out of the
/// measured run and allow a walsender and a slot per standby.
fn start_primary(bins: &PgBinaries, root: &Path, args: &Args) -> Result<Cluster> {
    let senders = (args.standbys + 4).max(16).to_string();
    let mut primary = ClusterBuilder::new(bins.clone(), root)
        .segment_size_mb(args.segment_mb)
        .config("max_wal_size", "16GB")
        .config("checkpoint_timeout", "1h")
        .config("max_wal_senders", &senders)
        .config("max_replication_slots", &senders)
        .init()?;
    primary.start()?;
    Ok(primary)
}

/// Starts `walrelay run` against the primary and waits until it answers replication commands.
fn start_relay(
    walrelay: &Path,
    bins: &PgBinaries,
    primary: &Cluster,
    root: &Path,
) -> Result<FanOut> {
    let dir = bins.scratch_dir(root, "relay")?;
    let (port, http) = (free_port()?, free_port()?);
    let mut cmd = Command::new(walrelay);
    cmd.args(["run", "--upstream", &primary.conninfo(), "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .stdin(Stdio::null());
    let mut process = localpg::spawn(cmd, &dir.path().join("relay.log"))?;
    let conninfo = replication(&format!("host=127.0.0.1 port={port} user=postgres"));
    wait_until(SETUP_TIMEOUT, "the relay to serve", || {
        if let Some(status) = process.try_status()? {
            return Err(LocalPgError::Unexpected {
                command: format!("walrelay run (exited: {status})"),
                output: process.log_contents(),
            });
        }
        Ok(bins.psql(&conninfo, "IDENTIFY_SYSTEM").is_ok())
    })?;
    Ok(FanOut::Relay {
        process,
        port,
        http,
        _dir: dir,
    })
}

/// Makes cascading standby C from a base backup of the primary, on a slot of the primary.
fn start_cascade(primary: &Cluster) -> Result<FanOut> {
    primary.create_physical_slot("cascade")?;
    let conninfo = format!("{} application_name=cascade", primary.conninfo());
    let mut cascade = primary.basebackup_standby(&conninfo, Some("cascade"))?;
    cascade.start()?;
    Ok(FanOut::Cascade(cascade))
}

/// Creates a slot `dI` on the fan-out server for each standby, makes the standbys from base
/// backups of the primary, starts them once the fan-out server holds the WAL they will ask
/// for, and waits until all stream and have caught up with the primary.
fn start_standbys(
    bins: &PgBinaries,
    primary: &Cluster,
    fanout: &FanOut,
    count: u32,
) -> Result<Vec<Cluster>> {
    let mut standbys = Vec::new();
    for i in 1..=count {
        let slot = format!("d{i}");
        fanout.create_slot(bins, &slot)?;
        let conninfo = format!("{} application_name={slot}", fanout.conninfo());
        standbys.push(primary.basebackup_standby(&conninfo, Some(&slot))?);
    }
    let now = primary.current_wal_flush_lsn()?;
    wait_until(SETUP_TIMEOUT, "the fan-out server to catch up", || {
        Ok(fanout.received(bins)? >= now)
    })?;
    for standby in &mut standbys {
        standby.start()?;
    }
    for standby in &standbys {
        let what = format!("the standby on port {} to stream", standby.port());
        wait_until(SETUP_TIMEOUT, &what, || {
            let status = standby.psql("SELECT status FROM pg_stat_wal_receiver")?;
            Ok(status == "streaming")
        })?;
    }
    let now = primary.current_wal_flush_lsn()?;
    for standby in &standbys {
        wait_received(standby, now, SETUP_TIMEOUT)?;
    }
    Ok(standbys)
}

/// The measured run, as seen from the primary and the standbys.
#[derive(Debug)]
struct Load {
    /// WAL written on the primary: its flush LSN at the end minus its insert LSN at the start.
    wal_bytes: u64,
    /// Until the primary had written and flushed it all.
    write: Duration,
    /// Until every standby had received it all.
    deliver: Duration,
}

/// Writes `mb` MB of WAL on the primary in one session and waits until every standby has
/// received it.
fn run_load(primary: &Cluster, standbys: &[Cluster], mb: u32, tag: &str) -> Result<Load> {
    let sql = "SELECT pg_current_wal_insert_lsn()";
    let start = parse_lsn(sql, &primary.psql(sql)?)?;
    let began = Instant::now();
    primary.psql(&format!(
        "DO $$ DECLARE payload text := repeat('x', {MIB}); BEGIN \
           FOR i IN 1..{mb} LOOP \
             PERFORM pg_logical_emit_message(false, 'bench', payload); \
           END LOOP; \
         END $$; \
         SELECT pg_logical_emit_message(true, 'bench', 'end')"
    ))?;
    let target = primary.current_wal_flush_lsn()?;
    let write = began.elapsed();
    println!(
        "[{tag}] primary wrote {start}..{target} in {:.2} s; waiting for the standbys",
        write.as_secs_f64()
    );
    for standby in standbys {
        wait_received(standby, target, RUN_TIMEOUT)?;
    }
    Ok(Load {
        wal_bytes: target.saturating_distance(start),
        write,
        deliver: began.elapsed(),
    })
}

/// What the fan-out server's process tree spent during the run.
#[derive(Debug)]
struct Usage {
    /// CPU seconds (user + system).
    cpu_secs: f64,
    /// Processes in the tree at the end.
    processes: usize,
    /// Summed `VmHWM` of those processes, in kB.
    peak_rss_kib: u64,
    /// Largest summed PSS seen while sampling, in kB; `None` without `smaps_rollup`.
    peak_pss_kib: Option<u64>,
}

/// Runs `work` while measuring the process tree rooted at `root` (ticks are `clk_tck` a second).
fn measured<T>(root: u32, clk_tck: u64, work: impl FnOnce() -> Result<T>) -> Result<(T, Usage)> {
    let before = tree_ticks(root);
    let stop = AtomicBool::new(false);
    let (value, peak_pss_kib) = thread::scope(|scope| {
        let sampler = scope.spawn(|| sample_pss(root, &stop));
        let value = work();
        stop.store(true, Ordering::Relaxed);
        let peak = sampler
            .join()
            .map_err(|_| anyhow!("the PSS sampler failed"));
        (value, peak)
    });
    let value = value?;
    let ticks = tree_ticks(root).saturating_sub(before);
    let tree = process_tree(root);
    let usage = Usage {
        cpu_secs: ticks as f64 / clk_tck as f64,
        processes: tree.len(),
        peak_rss_kib: tree
            .iter()
            .filter_map(|p| status_kib(p.pid, "VmHWM:"))
            .sum(),
        peak_pss_kib: peak_pss_kib?,
    };
    Ok((value, usage))
}

/// Samples the summed PSS of the tree rooted at `root` until `stop`, and returns the largest.
fn sample_pss(root: u32, stop: &AtomicBool) -> Option<u64> {
    let mut peak = None;
    loop {
        let tree = process_tree(root);
        let sum = tree.iter().map(|p| pss_kib(p.pid)).sum::<Option<u64>>();
        peak = peak.max(sum);
        if stop.load(Ordering::Relaxed) {
            return peak;
        }
        thread::sleep(SAMPLE_EVERY);
    }
}

/// One process, from `/proc/PID/stat`.
#[derive(Clone, Copy, Debug)]
struct Proc {
    pid: u32,
    ppid: u32,
    /// utime + stime.
    ticks: u64,
    /// cutime + cstime: the time of the children it has reaped.
    child_ticks: u64,
}

/// Reads `/proc/PID/stat`; `None` when the process is gone.
fn proc_stat(pid: u32) -> Option<Proc> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces), field 3 (state) comes first.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some(Proc {
        pid,
        ppid: u32::try_from(num(4)?).ok()?,
        ticks: num(14)? + num(15)?,
        child_ticks: num(16)? + num(17)?,
    })
}

/// `root` and all its live descendants.
fn process_tree(root: u32) -> Vec<Proc> {
    let all: Vec<Proc> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(proc_stat)
        .collect();
    let mut tree: Vec<Proc> = all.iter().filter(|p| p.pid == root).copied().collect();
    let mut next = 0;
    while let Some(parent) = tree.get(next).map(|p| p.pid) {
        tree.extend(all.iter().filter(|p| p.ppid == parent));
        next += 1;
    }
    tree
}

/// CPU ticks spent so far by the tree rooted at `root`, reaped children included, so that a
/// process exiting between two readings moves its time from one term to the other.
fn tree_ticks(root: u32) -> u64 {
    process_tree(root)
        .iter()
        .map(|p| p.ticks + p.child_ticks)
        .sum()
}

/// A `kB` line of `/proc/PID/status`, such as `VmHWM:`.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    kib_line(&text, key)
}

/// `Pss:` of `/proc/PID/smaps_rollup`.
fn pss_kib(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    kib_line(&text, "Pss:")
}

/// The number on the line starting with `key` (`VmHWM:     1234 kB`).
fn kib_line(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix(key))?;
    line.split_whitespace().next()?.parse().ok()
}

/// `getconf CLK_TCK`: the unit of the times in `/proc/PID/stat`.
fn clock_ticks() -> Result<u64> {
    let out = Command::new("getconf").arg("CLK_TCK").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("getconf CLK_TCK printed {text:?}"))
}

/// The relay binary: `--walrelay`, else `walrelay` in the directory above this example's
/// (`target/release/examples/fanout_bench` → `target/release/walrelay`).
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

/// The result of one mode.
#[derive(Debug)]
struct Outcome {
    mode: Mode,
    load: Load,
    usage: Usage,
    shared_buffers: Option<String>,
}

/// What every mode shares.
struct Bench {
    args: Args,
    bins: PgBinaries,
    /// The relay binary.
    walrelay: PathBuf,
    /// The unit of the times in `/proc/PID/stat`.
    clk_tck: u64,
    /// Holds every cluster and the relay's data; removed at the end.
    root: ScratchDir,
}

impl Bench {
    /// Runs one mode from a fresh primary to teardown (the standbys, the fan-out server and the
    /// primary drop in that order).
    fn run(&self, mode: Mode) -> Result<Outcome> {
        let (args, bins, tag) = (&self.args, &self.bins, mode.name());
        println!("[{tag}] starting the primary");
        let primary = start_primary(bins, self.root.path(), args)?;
        println!("[{tag}] starting the fan-out server");
        let fanout = match mode {
            Mode::Relay => start_relay(&self.walrelay, bins, &primary, self.root.path())?,
            Mode::Cascade => start_cascade(&primary)?,
        };
        println!("[{tag}] making {} standbys", args.standbys);
        let standbys = start_standbys(bins, &primary, &fanout, args.standbys)?;
        println!(
            "[{tag}] {} standbys streaming from {}; writing {} MB of WAL",
            standbys.len(),
            fanout.conninfo(),
            args.mb
        );
        let scraping = Arc::new(AtomicBool::new(true));
        let scraper = match (&fanout, args.scrape_every_ms) {
            (FanOut::Relay { http, .. }, every) if every > 0 => {
                let (http, scraping) = (*http, Arc::clone(&scraping));
                Some(std::thread::spawn(move || {
                    scrape_until(http, every, &scraping)
                }))
            }
            _ => None,
        };
        let run = || run_load(&primary, &standbys, args.mb, tag);
        let (load, usage) = measured(fanout.pid()?, self.clk_tck, run)?;
        scraping.store(false, Ordering::Relaxed);
        if let Some(scraper) = scraper {
            let scrapes = scraper.join().unwrap_or(0);
            println!("[{tag}] {scrapes} scrapes of /metrics during the run");
        }
        let shared_buffers = fanout.shared_buffers()?;
        println!(
            "[{tag}] all standbys received it after {:.2} s; stopping",
            load.deliver.as_secs_f64()
        );
        Ok(Outcome {
            mode,
            load,
            usage,
            shared_buffers,
        })
    }
}

/// GETs `/metrics` from the relay every `every_ms` while `on`; returns how many it did.
fn scrape_until(http: u16, every_ms: u64, on: &AtomicBool) -> u64 {
    use std::io::{Read, Write};
    let mut done = 0;
    while on.load(Ordering::Relaxed) {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", http)) {
            let _ =
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
            let mut body = Vec::new();
            if s.read_to_end(&mut body).is_ok() && body.starts_with(b"HTTP/1.1 200") {
                done += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(every_ms));
    }
    done
}

/// What the columns mean.
const LEGEND: [&str; 5] = [
    "deliver s: from the first write until every standby had received the primary's flush LSN",
    "total MB/s: standbys x WAL MB / deliver s",
    "CPU: user + system time of the fan-out server's process tree; procs: its processes",
    "cascade CPU includes C's startup process replaying the WAL (C is a hot standby)",
    "peak RSS: VmHWM summed over the tree; PostgreSQL's shared memory counts in every process",
];

/// Prints the comparison.
fn print_table(args: &Args, outcomes: &[Outcome]) {
    println!();
    println!(
        "{:<8} {:>7} {:>8} {:>10} {:>11} {:>7} {:>6} {:>6} {:>13} {:>13}",
        "mode",
        "WAL MB",
        "write s",
        "deliver s",
        "total MB/s",
        "CPU s",
        "CPU %",
        "procs",
        "peak RSS MB",
        "peak PSS MB"
    );
    for o in outcomes {
        let wal_mb = o.load.wal_bytes as f64 / MIB as f64;
        let deliver = o.load.deliver.as_secs_f64();
        let pss = o
            .usage
            .peak_pss_kib
            .map_or("n/a".into(), |k| format!("{:.1}", k as f64 / 1024.0));
        println!(
            "{:<8} {:>7.1} {:>8.2} {:>10.2} {:>11.1} {:>7.2} {:>6.1} {:>6} {:>13.1} {:>13}",
            o.mode.name(),
            wal_mb,
            o.load.write.as_secs_f64(),
            deliver,
            f64::from(args.standbys) * wal_mb / deliver,
            o.usage.cpu_secs,
            100.0 * o.usage.cpu_secs / deliver,
            o.usage.processes,
            o.usage.peak_rss_kib as f64 / 1024.0,
            pss,
        );
    }
    println!();
    for line in LEGEND {
        println!("{line}");
    }
    let every = SAMPLE_EVERY.as_millis();
    println!(
        "peak PSS: summed Pss of smaps_rollup, sampled every {every} ms, shared pages divided"
    );
    for o in outcomes {
        if let Some(sb) = &o.shared_buffers {
            println!("{}: shared_buffers = {sb}", o.mode.name());
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.standbys == 0 || args.mb == 0 {
        bail!("--standbys and --mb must be at least 1");
    }
    let walrelay = relay_binary(&args)?;
    let bins = PgBinaries::find()?;
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let root = bins.scratch_dir(&parent, "fanout-bench")?;
    println!(
        "fan-out of {} MB of WAL to {} standbys, {} MB segments, PostgreSQL {}, relay {}",
        args.mb,
        args.standbys,
        args.segment_mb,
        bins.version()?,
        walrelay.display()
    );
    let bench = Bench {
        args,
        bins,
        walrelay,
        clk_tck: clock_ticks()?,
        root,
    };
    let modes = match bench.args.only {
        Some(mode) => vec![mode],
        None => vec![Mode::Relay, Mode::Cascade],
    };
    let outcomes = modes
        .into_iter()
        .map(|mode| bench.run(mode))
        .collect::<Result<Vec<_>>>()?;
    print_table(&bench.args, &outcomes);
    Ok(())
}
