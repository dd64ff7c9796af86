//! End-to-end fan-out benchmark: WAL from one real primary to real standbys and to many
//! lightweight protocol clients, served by the primary itself (`direct`), by a PostgreSQL
//! cascading standby (`cascade`) or by the relay (`relay`), with the time delivery takes and
//! what the serving side spends on it. One run gives every figure; it prints one JSON document
//! on stdout and the README's Markdown tables (and its progress) on stderr.
//!
//! ```text
//! cargo build --release --bin walrelay --example fanout_bench
//! target/release/examples/fanout_bench > fanout.json
//! target/release/examples/fanout_bench --only relay,cascade --standbys 4 --loads wal
//! target/release/examples/fanout_bench --smoke
//! ```
//!
//! The defaults (`--standbys 1,4,16 --mb 512 --table-mb 128 --clients 16,64,256 --client-mb
//! 128`, pgbench for 30 s) are meant to finish in about 10 minutes on 2 cores, with about 12 GB
//! of free disk; `--smoke` runs every part at tiny sizes in well under a minute.
//!
//! Everything runs on this machine, over loopback only: one throwaway primary (16 MB segments,
//! `max_wal_size = 16GB`, `checkpoint_timeout = 1h`, so no checkpoint falls in a measured
//! window; a `CHECKPOINT` is taken before each run instead, then `sync`, so that no run shares
//! the disk with the writeback of what came before it). Everything the benchmark starts
//! is stopped, and its directories removed, at the end, on an error, and on Ctrl-C or SIGTERM.
//! MB are 2^20 bytes throughout.
//!
//! # The parts (`--only`, all by default, in this order)
//!
//! - `disk`: the machine's fdatasync'd sequential write bandwidth on the filesystem the relay
//!   writes to, the way the relay writes (see `disk.rs`): 128 KiB chunks into one new file per
//!   segment, fdatasync every 16 chunks, then after every chunk.
//! - `catchup`: the relay's ingest of WAL already written (see `catchup.rs`), which the load's
//!   pace does not bound: a relay is stopped, `--mb` MB are written, the relay is started again
//!   and timed until its durable end has all of it; then `pg_receivewal --no-sync` fetches the
//!   same WAL from the primary, to show what the walsender sends.
//! - `relay`, `cascade`, `direct`: groups of 0 and of each `--standbys` count of hot
//!   standbys, each on a slot of the group's fan-out server (the relay with `walrelay run`, on
//!   its own slot of the primary; C, a hot standby of the primary on a slot of its own; or
//!   nothing, the primary serves), started for the group and stopped after. The modes take
//!   turns within each count, and the mode that goes first moves on from one count to the
//!   next, so that no mode always runs after the others, on a disk that the earlier groups
//!   left in another state. The group of 0 measures the server alone: the relay's ingest,
//!   C's receive and replay, the primary's own write. Each group is measured under each
//!   `--loads` load: `wal` writes `--mb` MB of 1 MB
//!   non-transactional `pg_logical_emit_message` records and one commit (WAL that standbys
//!   barely replay); `table` commits 5000-row INSERTs into a table with a primary key until
//!   `--table-mb` MB of WAL are written (heap and index records that standbys replay).
//! - `clients`: for each `--clients` count, a fresh relay and that many lightweight protocol
//!   clients (see `clients.rs`), each on a slot of its own, under the WAL-only load of
//!   `--client-mb` MB.
//! - `latency`: a fresh relay, a pgbench database (`-i -s 1`), one lightweight client on the
//!   relay and one on the primary, then `pgbench -n -R <rate> -c <clients> -j 1 -T <seconds>`.
//!
//! # Times
//!
//! A run starts when everything has caught up (received and replayed the primary's flush LSN)
//! after a checkpoint, and half a second of rest. Its clock starts just before the load's
//! query is sent; "written" is when the load's last commit returned; the target is the
//! primary's flush LSN then. A standby "had it" when its `pg_last_wal_receive_lsn()` (WAL
//! received and flushed by its walreceiver, not necessarily replayed) reached the target; the
//! relay when its durable end (`IDENTIFY_SYSTEM`'s xlogpos) did; C when its own
//! `pg_last_wal_receive_lsn()` did. These are polled over persistent connections: every 50 ms
//! during the load (none can be reached before it ends) and then in rounds 1 ms apart, so each
//! time is late by at most one round and its pause; the median round is reported
//! (`poll_round_ms`). A
//! lightweight client records the instant of each of its reads, so its time needs no polling.
//!
//! # CPU and memory
//!
//! The window of a run is from its clock's start until the last standby or client had the WAL.
//! CPU is utime + stime from `/proc` (10 ms ticks), see `procfs.rs`:
//!
//! - the relay per thread: `tokio-rt-worker` (the tokio runtime's workers, which receive,
//!   validate and send, and its blocking pool, which reads segment files for lagging readers
//!   and writes slot files), `wal-writer` (write and fdatasync), `walrelay` (the main thread)
//!   and `exited` (threads that ended inside the window);
//! - a PostgreSQL server per process, grouped by the role in its title: `walsender`,
//!   `walreceiver`, `startup` (replay), `other` (postmaster, checkpointer, backends…); the
//!   primary is measured too in the relay and cascade modes.
//!
//! The send path's CPU per standby and GiB: for PostgreSQL, its walsender processes' CPU per
//! GiB divided by the standbys; for the relay, whose workers also receive the WAL, its CPU per
//! GiB less its CPU per GiB with no standby under the same load (the group of 0), divided by
//! the standbys. The same subtraction of the ingest run gives the relay's CPU per lightweight
//! client. The clients' own CPU is that of this process's `bench-client` threads.
//!
//! Peak RSS is `VmHWM`, reset at the window's start (`/proc/PID/clear_refs`), summed over the
//! server's processes; PSS is summed `smaps_rollup` `Pss`, sampled every 100 ms. RSS counts
//! PostgreSQL's shared memory in every process; PSS divides it among them.
//!
//! # Latency
//!
//! While pgbench runs at a fixed rate, a thread samples the primary's
//! `pg_current_wal_flush_lsn()` every `--latency-sample-us` over one connection, keeping the
//! instants each query was sent and answered; each client records when each read brought WAL
//! and how far it then reached. For every sample that shows the flush LSN advanced to `L`, the
//! flush happened after the previous sample was sent (`t0`) and before this one was answered
//! (`t1`) and before the client's first read that reached `L` (`a`); it is placed in the
//! middle of `(t0, min(t1, a)]` and the latency is `a` minus that. Each latency is thus exact
//! to within half that interval (about half the sampling interval plus a query's round trip);
//! the median interval is reported as `resolution_ms`. Both clients stream at once from the
//! same load, so the relay's added latency is their difference.

mod catchup;
mod client_runs;
mod clients;
mod disk;
mod diskstats;
mod fanout;
mod procfs;
mod report;
mod sampler;
mod servers;
mod sqlconn;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use serde_json::json;
use walrelay::testkit::localpg::{PgBinaries, ScratchDir};

use crate::fanout::Load;
use crate::servers::{Mode, RelayOptions};

/// One MB.
pub const MIB: u64 = 1 << 20;

/// How long starting a server, a base backup or a catch-up may take.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a measured run may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(1800);

/// Set by Ctrl-C or SIGTERM: the benchmark stops at its next wait and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// A part of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// The disk's fdatasync'd write bandwidth.
    Disk,
    /// The relay catching up WAL already written.
    Catchup,
    /// Standbys behind the relay.
    Relay,
    /// Standbys behind a cascading standby.
    Cascade,
    /// Standbys on the primary.
    Direct,
    /// Lightweight clients on one relay.
    Clients,
    /// Flush → received latency under pgbench.
    Latency,
}

/// Fan-out of WAL to real standbys and lightweight clients: direct, cascading standby, relay.
#[derive(Debug, Parser)]
pub struct Args {
    /// Standby counts behind each fan-out server (a group of 0 always runs first).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,4,16",
        value_name = "N,…"
    )]
    pub standbys: Vec<usize>,
    /// The loads each group is measured under.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "wal,table")]
    pub loads: Vec<Load>,
    /// WAL of the WAL-only load, in MB.
    #[arg(long, default_value_t = 512, value_name = "MB")]
    pub mb: u32,
    /// WAL of the table-writing load, in MB.
    #[arg(long, default_value_t = 128, value_name = "MB")]
    pub table_mb: u32,
    /// Lightweight client counts, one relay each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "16,64,256",
        value_name = "N,…"
    )]
    pub clients: Vec<usize>,
    /// WAL written while the lightweight clients stream, in MB.
    #[arg(long, default_value_t = 128, value_name = "MB")]
    pub client_mb: u32,
    /// Threads of the lightweight clients' runtime.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub client_threads: usize,
    /// pgbench's rate in the latency part (`-R`), transactions a second.
    #[arg(long, default_value_t = 200, value_name = "TPS")]
    pub latency_rate: u32,
    /// pgbench's clients in the latency part (`-c`).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub latency_clients: u32,
    /// pgbench's duration in the latency part (`-T`).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub latency_seconds: u64,
    /// How often the primary's flush LSN is sampled in the latency part.
    #[arg(long, default_value_t = 1000, value_name = "µs")]
    pub latency_sample_us: u64,
    /// Bytes written by each pass of the disk part, in MB [default: --mb].
    #[arg(long, value_name = "MB")]
    pub disk_mb: Option<u32>,
    /// WAL segment size of the primary, in MB (a power of two from 1 to 1024).
    #[arg(long, default_value_t = 16, value_name = "S")]
    pub segment_mb: u32,
    /// The parts to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "disk,catchup,relay,cascade,direct,clients,latency"
    )]
    only: Vec<Part>,
    /// Tiny sizes for a quick check that everything works (overrides the size options).
    #[arg(long)]
    smoke: bool,
    /// The relay binary [default: `walrelay` in the directory above this example's].
    #[arg(long, value_name = "PATH")]
    walrelay: Option<PathBuf>,
    /// Where to put the clusters and the relay's data [default: the temporary directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Where the relays keep their WAL [default: beside the clusters, under --dir]. A directory
    /// on another disk spares the relay the primary's and the standbys' fsyncs, as a machine
    /// of its own would; one on tmpfs shows what the relay costs without its disk. The disk
    /// part measures the filesystem of this directory.
    #[arg(long, value_name = "DIR")]
    relay_dir: Option<PathBuf>,
    /// Scrape the relay's /metrics this often while it runs (0: never), to see what monitoring
    /// costs the fan-out.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    scrape_every_ms: u64,
}

impl Args {
    /// The sizes of `--smoke`.
    fn smoke(&mut self) {
        self.standbys = vec![1];
        self.mb = 8;
        self.table_mb = 4;
        self.clients = vec![2, 4];
        self.client_mb = 8;
        self.latency_rate = 50;
        self.latency_clients = 2;
        self.latency_seconds = 2;
        self.disk_mb = Some(16);
    }
}

/// What every part shares.
pub struct Bench {
    /// The options.
    pub args: Args,
    /// PostgreSQL's binaries.
    pub bins: PgBinaries,
    /// The relay binary.
    pub walrelay: PathBuf,
    /// The ticks a second of `/proc`'s CPU times.
    pub clk_tck: f64,
    /// Holds every cluster and the relays' data; removed at the end.
    pub root: ScratchDir,
}

impl Bench {
    /// Where the relays keep their data: `--relay-dir`, else beside the clusters.
    pub fn relay_data_root(&self) -> &Path {
        self.args.relay_dir.as_deref().unwrap_or(self.root.path())
    }

    /// How to start a relay with slot `slot` on the primary, for `clients` lightweight clients
    /// and the standbys.
    pub fn relay_options(&self, slot: &str, clients: usize) -> RelayOptions<'_> {
        let standbys = self.args.standbys.iter().copied().max().unwrap_or(0);
        RelayOptions {
            walrelay: &self.walrelay,
            root: self.root.path(),
            data_root: self.relay_data_root(),
            upstream_slot: slot.to_string(),
            max_senders: clients + standbys + 16,
            scrape_every_ms: self.args.scrape_every_ms,
        }
    }
}

/// When the benchmark started, for the progress lines.
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Prints a progress line on stderr, with the seconds since the start.
pub fn log(tag: &str, message: &str) {
    let since = STARTED.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("{since:6.1} s [{tag}] {message}");
}

/// Writes every dirty page back to the disks (`sync`) before a measured run, so the run does
/// not share the disk with the writeback of what came before it: standbys copied with
/// `pg_basebackup --no-sync`, the data files an earlier run's standbys replayed into, the
/// files of an earlier pass. The kernel would otherwise write them back at a time of its
/// choosing, in one run and not in another.
pub fn write_back() {
    rustix::fs::sync();
}

/// Fails once Ctrl-C or SIGTERM has arrived.
pub fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Checks `done` every 20 ms until it holds, fails after `timeout` or on an interrupt.
pub fn wait_for(
    timeout: Duration,
    what: &str,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let began = Instant::now();
    loop {
        check_interrupt()?;
        if done()? {
            return Ok(());
        }
        if began.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sets [`INTERRUPTED`] on Ctrl-C or SIGTERM (a thread of its own waits for them).
fn watch_signals() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    thread::spawn(move || {
        runtime.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("interrupted: stopping at the next wait and cleaning up");
            INTERRUPTED.store(true, Ordering::Relaxed);
        });
    });
    Ok(())
}

/// The machine, for the report.
fn machine() -> serde_json::Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string());
    json!({
        "cpus": thread::available_parallelism().map_or(0, usize::from),
        "cpu_model": model,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
    })
}

fn main() -> Result<()> {
    STARTED.get_or_init(Instant::now);
    let mut args = Args::parse();
    if args.smoke {
        args.smoke();
    }
    if args.standbys.contains(&0) || args.mb == 0 || args.table_mb == 0 || args.client_mb == 0 {
        bail!("--standbys counts and the sizes must be at least 1");
    }
    watch_signals()?;
    let walrelay = servers::relay_binary(args.walrelay.as_deref())?;
    let bins = PgBinaries::find()?;
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let root = bins.scratch_dir(&parent, "fanout-bench")?;
    let config = json!({
        "standbys": args.standbys, "loads": args.loads, "mb": args.mb, "table_mb": args.table_mb,
        "clients": args.clients, "client_mb": args.client_mb,
        "client_threads": args.client_threads, "segment_mb": args.segment_mb,
        "latency": {"rate": args.latency_rate, "clients": args.latency_clients,
                    "seconds": args.latency_seconds, "sample_us": args.latency_sample_us},
        "scrape_every_ms": args.scrape_every_ms,
        "relay_dir": args.relay_dir, "smoke": args.smoke,
        "postgres_major": bins.version()?, "walrelay": walrelay.display().to_string(),
        "machine": machine(),
    });
    let bench = Bench {
        args,
        bins,
        walrelay,
        clk_tck: procfs::clock_ticks()?,
        root,
    };
    let report = run(&bench, config)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!("{}", report::tables(&report));
    Ok(())
}

/// Runs the parts asked for.
fn run(bench: &Bench, config: serde_json::Value) -> Result<report::Report> {
    let args = &bench.args;
    let began = Instant::now();
    let senders = args.standbys.iter().copied().max().unwrap_or(0) + 8;
    log(
        "setup",
        &format!("starting the primary in {}", bench.root.path().display()),
    );
    let primary = servers::start_primary(
        &bench.bins,
        bench.root.path(),
        args.segment_mb,
        u32::try_from(senders.max(16))?,
    )?;
    let disk = if args.only.contains(&Part::Disk) {
        let mb = args.disk_mb.unwrap_or(args.mb);
        log("disk", &format!("writing {mb} MB twice"));
        Some(disk::measure(
            &bench.bins,
            bench.relay_data_root(),
            mb,
            args.segment_mb,
        )?)
    } else {
        None
    };
    let catchup = if args.only.contains(&Part::Catchup) {
        Some(catchup::run_catchup(bench, &primary)?)
    } else {
        None
    };
    let modes: Vec<Mode> = [
        (Part::Relay, Mode::Relay),
        (Part::Cascade, Mode::Cascade),
        (Part::Direct, Mode::Direct),
    ]
    .into_iter()
    .filter_map(|(part, mode)| args.only.contains(&part).then_some(mode))
    .collect();
    let mut fanout = Vec::new();
    let counts = std::iter::once(0).chain(args.standbys.iter().copied());
    for (i, n) in counts.enumerate() {
        let mut order = modes.clone();
        if let Some(first) = i.checked_rem(modes.len()) {
            order.rotate_left(first);
        }
        for mode in order {
            fanout.extend(fanout::run_group(bench, &primary, mode, n)?);
        }
    }
    let clients = if args.only.contains(&Part::Clients) {
        client_runs::run_clients(bench, &primary)?
    } else {
        Vec::new()
    };
    let latency = if args.only.contains(&Part::Latency) {
        Some(client_runs::run_latency(bench, &primary)?)
    } else {
        None
    };
    let derived = report::derive(
        &fanout,
        &clients,
        latency.as_ref(),
        disk.as_ref(),
        catchup.as_ref(),
    );
    let mut config = config;
    if let Some(map) = config.as_object_mut() {
        map.insert("elapsed_s".into(), json!(began.elapsed().as_secs_f64()));
    }
    log(
        "done",
        &format!("after {:.0} s", began.elapsed().as_secs_f64()),
    );
    Ok(report::Report {
        config,
        disk,
        catchup,
        fanout,
        clients,
        latency,
        derived,
    })
}
