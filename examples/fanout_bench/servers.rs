//! The servers of a run: the primary, the fan-out server in front of the standbys (the primary
//! itself, a cascading standby, or the relay), and groups of standbys.
//!
//! Standbys are cheap copies: one `pg_basebackup` of the primary per group, never started,
//! then `cp -a` of it for each standby, each configured with its own port, slot and
//! `application_name` (see `Cluster::cold_standby`). Each copy starts recovery from the
//! backup's checkpoint, as a standby made by its own `pg_basebackup` would.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use walrelay::testkit::localpg::{
    self, Cluster, ClusterBuilder, PgBinaries, PgProcess, ScratchDir, free_port,
};
use walrelay::types::Lsn;

use crate::procfs::Split;
use crate::sqlconn::SqlConn;
use crate::{SETUP_TIMEOUT, wait_for};

/// Starts a primary whose settings (inherited by every standby) keep checkpoints out of the
/// measured runs and allow a walsender and a slot per standby.
pub fn start_primary(
    bins: &PgBinaries,
    root: &Path,
    segment_mb: u32,
    senders: u32,
) -> Result<Cluster> {
    let senders = senders.to_string();
    let mut primary = ClusterBuilder::new(bins.clone(), root)
        .segment_size_mb(segment_mb)
        .config("max_wal_size", "16GB")
        .config("checkpoint_timeout", "1h")
        .config("max_wal_senders", &senders)
        .config("max_replication_slots", &senders)
        .config("max_connections", "100")
        .init()?;
    primary.start()?;
    Ok(primary)
}

/// `walrelay run` against the primary, on its own slot there.
pub struct RelayServer {
    process: PgProcess,
    /// How it was started, for [`RelayServer::restart`].
    command: Vec<OsString>,
    /// The downstream port.
    pub port: u16,
    /// Its slot on the primary, dropped by [`RelayServer::stop`].
    upstream_slot: String,
    scraper: Option<(Arc<AtomicBool>, JoinHandle<u64>)>,
    // Last: the process is stopped before its directories go.
    dir: ScratchDir,
    _data: ScratchDir,
}

/// How to start a relay.
pub struct RelayOptions<'a> {
    /// The binary.
    pub walrelay: &'a Path,
    /// Where its directory goes.
    pub root: &'a Path,
    /// Where its WAL store's directory goes.
    pub data_root: &'a Path,
    /// Its slot's name on the primary.
    pub upstream_slot: String,
    /// `--max-wal-senders` and `--max-replication-slots`.
    pub max_senders: usize,
    /// GET `/metrics` this often (0: never).
    pub scrape_every_ms: u64,
}

impl RelayServer {
    /// Starts the relay and waits until it serves and holds the primary's current WAL.
    pub fn start(bins: &PgBinaries, primary: &Cluster, opts: &RelayOptions) -> Result<Self> {
        let dir = bins.scratch_dir(opts.root, "relay")?;
        let data = bins.scratch_dir(opts.data_root, "relay-data")?;
        let (port, http) = (free_port()?, free_port()?);
        let senders = opts.max_senders.to_string();
        let mut command: Vec<OsString> = vec![opts.walrelay.into()];
        command.extend(
            [
                "run",
                "--upstream",
                &primary.conninfo(),
                "--upstream-slot",
                &opts.upstream_slot,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--http-listen",
                &format!("127.0.0.1:{http}"),
                "--max-wal-senders",
                &senders,
                "--max-replication-slots",
                &senders,
                "--log-level",
                "warn",
                "--data-dir",
            ]
            .map(Into::into),
        );
        command.push(data.path().into());
        let process = spawn_relay(&command, &dir.path().join("relay.log"), port)?;
        let scraper = (opts.scrape_every_ms > 0).then(|| {
            let on = Arc::new(AtomicBool::new(true));
            let (flag, every) = (Arc::clone(&on), opts.scrape_every_ms);
            (on, thread::spawn(move || scrape_until(http, every, &flag)))
        });
        let relay = RelayServer {
            process,
            command,
            port,
            upstream_slot: opts.upstream_slot.clone(),
            scraper,
            dir,
            _data: data,
        };
        let target = SqlConn::connect(primary.port(), false, "bench")?
            .query_lsn("SELECT pg_current_wal_flush_lsn()")?;
        let mut conn = SqlConn::connect(port, true, "bench")?;
        wait_for(SETUP_TIMEOUT, "the relay to catch up", || {
            Ok(relay_durable(&mut conn)? >= target)
        })?;
        Ok(relay)
    }

    /// The relay's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Stops the relay (SIGINT), keeping its data and its slot on the primary, which then
    /// holds the WAL written until [`RelayServer::restart`].
    pub fn pause(&mut self) -> Result<()> {
        self.process.stop()?;
        Ok(())
    }

    /// Starts the relay again, as it was first started, and returns once it serves: it goes
    /// on from its durable end.
    pub fn restart(&mut self) -> Result<()> {
        let log = self.dir.path().join("relay-restarted.log");
        self.process = spawn_relay(&self.command, &log, self.port)?;
        Ok(())
    }

    /// Stops the relay (SIGINT) and drops its slot on the primary; returns the scrapes of
    /// `/metrics` it served.
    pub fn stop(mut self, primary: &Cluster) -> Result<Option<u64>> {
        let scrapes = self.scraper.take().map(|(on, handle)| {
            on.store(false, Ordering::Relaxed);
            handle.join().unwrap_or(0)
        });
        self.process.stop()?;
        drop_slot(primary, &self.upstream_slot)?;
        Ok(scrapes)
    }
}

/// Starts `walrelay` with `command` (the binary, then its arguments) and waits until it
/// accepts replication connections on `port`.
fn spawn_relay(command: &[OsString], log: &Path, port: u16) -> Result<PgProcess> {
    let (program, args) = command
        .split_first()
        .context("no walrelay command to start")?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    let mut process = localpg::spawn(cmd, log)?;
    wait_for(SETUP_TIMEOUT, "the relay to serve", || {
        if let Some(status) = process.try_status()? {
            bail!("walrelay exited ({status}): {}", process.log_contents());
        }
        Ok(SqlConn::connect(port, true, "bench").is_ok())
    })?;
    Ok(process)
}

/// The relay's durable end: `IDENTIFY_SYSTEM`'s xlogpos.
pub fn relay_durable(conn: &mut SqlConn) -> Result<Lsn> {
    let text = conn.query_column("IDENTIFY_SYSTEM", 2)?;
    text.parse()
        .map_err(|_| anyhow::anyhow!("IDENTIFY_SYSTEM gave xlogpos {text:?}"))
}

/// Drops a physical slot on a PostgreSQL server once it is no longer active (its walsender
/// may take a moment to exit after its client went).
pub fn drop_slot(server: &Cluster, slot: &str) -> Result<()> {
    let mut conn = SqlConn::connect(server.port(), false, "bench")?;
    let sql = format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE slot_name = '{slot}' AND NOT active"
    );
    let exists = format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'");
    wait_for(SETUP_TIMEOUT, &format!("slot {slot} to be dropped"), || {
        conn.query(&sql)?;
        Ok(conn.query_value(&exists)? == "0")
    })
}

/// GETs `/metrics` from the relay every `every_ms` while `on`; returns how many succeeded.
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
        thread::sleep(Duration::from_millis(every_ms));
    }
    done
}

/// What serves the standbys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Standbys stream from the primary itself.
    Direct,
    /// Standbys stream from a PostgreSQL cascading standby of the primary.
    Cascade,
    /// Standbys stream from the relay.
    Relay,
}

impl Mode {
    /// Its name in the output.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Cascade => "cascade",
            Mode::Relay => "relay",
        }
    }
}

/// The running fan-out server.
pub enum FanOut {
    /// The primary.
    Direct,
    /// Cascading standby C, on slot `cascade` of the primary.
    Cascade(Cluster),
    /// The relay.
    Relay(RelayServer),
}

impl FanOut {
    /// Starts the fan-out server of `mode`.
    pub fn start(
        mode: Mode,
        bins: &PgBinaries,
        primary: &Cluster,
        relay: &RelayOptions,
    ) -> Result<FanOut> {
        Ok(match mode {
            Mode::Direct => FanOut::Direct,
            Mode::Relay => FanOut::Relay(RelayServer::start(bins, primary, relay)?),
            Mode::Cascade => {
                primary.create_physical_slot("cascade")?;
                let conninfo = format!("{} application_name=cascade", primary.conninfo());
                let mut c = primary.basebackup_standby(&conninfo, Some("cascade"))?;
                c.start()?;
                let target = SqlConn::connect(primary.port(), false, "bench")?
                    .query_lsn("SELECT pg_current_wal_flush_lsn()")?;
                wait_caught_up(&c, target)?;
                FanOut::Cascade(c)
            }
        })
    }

    /// Its downstream port.
    pub fn port(&self, primary: &Cluster) -> u16 {
        match self {
            FanOut::Direct => primary.port(),
            FanOut::Cascade(c) => c.port(),
            FanOut::Relay(r) => r.port,
        }
    }

    /// What to measure: the root pid and how to split its CPU time.
    pub fn measured(&self, primary: &Cluster) -> Result<(u32, Split)> {
        Ok(match self {
            FanOut::Direct => (primary.pid().context("the primary is down")?, Split::Roles),
            FanOut::Cascade(c) => (c.pid().context("the cascade is down")?, Split::Roles),
            FanOut::Relay(r) => (r.pid(), Split::Threads),
        })
    }

    /// A connection and the query (and column) that give how far it has WAL to serve: the
    /// relay's durable end, what C has received; `None` for the primary.
    pub fn probe(&self) -> Result<Option<(SqlConn, &'static str, usize)>> {
        Ok(match self {
            FanOut::Direct => None,
            FanOut::Cascade(c) => {
                Some((SqlConn::connect(c.port(), false, "bench")?, RECEIVED_SQL, 0))
            }
            FanOut::Relay(r) => Some((
                SqlConn::connect(r.port, true, "bench")?,
                "IDENTIFY_SYSTEM",
                2,
            )),
        })
    }

    /// Creates physical slot `name` for a standby.
    pub fn create_slot(&self, primary: &Cluster, name: &str) -> Result<()> {
        match self {
            FanOut::Direct => primary.create_physical_slot(name)?,
            FanOut::Cascade(c) => c.create_physical_slot(name)?,
            FanOut::Relay(r) => {
                let mut conn = SqlConn::connect(r.port, true, "bench")?;
                conn.query(&format!(
                    "CREATE_REPLICATION_SLOT {name} PHYSICAL RESERVE_WAL"
                ))?;
            }
        }
        Ok(())
    }

    /// Drops slot `name` once its standby is gone.
    pub fn drop_slot(&self, primary: &Cluster, name: &str) -> Result<()> {
        match self {
            FanOut::Direct => drop_slot(primary, name),
            FanOut::Cascade(c) => drop_slot(c, name),
            FanOut::Relay(r) => {
                let mut conn = SqlConn::connect(r.port, true, "bench")?;
                wait_for(SETUP_TIMEOUT, &format!("relay slot {name} to drop"), || {
                    Ok(conn.query(&format!("DROP_REPLICATION_SLOT {name}")).is_ok())
                })
            }
        }
    }

    /// Stops it and drops its slot on the primary; returns the relay's `/metrics` scrapes.
    pub fn stop(self, primary: &Cluster) -> Result<Option<u64>> {
        match self {
            FanOut::Direct => Ok(None),
            FanOut::Cascade(c) => {
                drop(c);
                drop_slot(primary, "cascade")?;
                Ok(None)
            }
            FanOut::Relay(r) => r.stop(primary),
        }
    }
}

/// A standby's received end (`0/0` before it has received anything).
pub const RECEIVED_SQL: &str = "SELECT coalesce(pg_last_wal_receive_lsn(), '0/0')";

/// Received and replayed ends of a standby.
const CAUGHT_UP_SQL: &str = "SELECT coalesce(pg_last_wal_receive_lsn(), '0/0'), \
     coalesce(pg_last_wal_replay_lsn(), '0/0'), \
     (SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming')";

/// Waits until `standby` streams and has received and replayed up to `target`.
pub fn wait_caught_up(standby: &Cluster, target: Lsn) -> Result<()> {
    let mut conn = None;
    let what = format!(
        "the standby on port {} to stream and reach {target}",
        standby.port()
    );
    wait_for(SETUP_TIMEOUT, &what, || {
        if conn.is_none() {
            conn = SqlConn::connect(standby.port(), false, "bench").ok();
        }
        let Some(c) = conn.as_mut() else {
            return Ok(false);
        };
        let row = c
            .query(CAUGHT_UP_SQL)?
            .into_iter()
            .next()
            .unwrap_or_default();
        let lsn = |i: usize| -> Lsn {
            row.get(i)
                .cloned()
                .flatten()
                .and_then(|t| t.parse().ok())
                .unwrap_or_default()
        };
        let streaming = row.get(2).cloned().flatten().as_deref() == Some("1");
        Ok(streaming && lsn(0) >= target && lsn(1) >= target)
    })
}

/// A group of standbys behind one fan-out server, on slots `d1`…`dN` of it.
pub struct Standbys {
    /// The running standbys.
    pub list: Vec<Cluster>,
    /// Their slots on the fan-out server.
    slots: Vec<String>,
}

impl Standbys {
    /// Makes `n` standbys of `fanout` (one base backup of the primary, copied), starts them and
    /// waits until all stream.
    pub fn start(primary: &Cluster, fanout: &FanOut, n: usize) -> Result<Standbys> {
        let slots: Vec<String> = (1..=n).map(|i| format!("d{i}")).collect();
        for slot in &slots {
            fanout.create_slot(primary, slot)?;
        }
        let port = fanout.port(primary);
        let conninfo = |name: &str| {
            format!("host=127.0.0.1 port={port} user=postgres application_name={name}")
        };
        let mut template = primary.basebackup_standby(&conninfo("template"), None)?;
        let mut list = Vec::new();
        for slot in &slots {
            list.push(template.cold_standby(&conninfo(slot), Some(slot))?);
        }
        drop(template);
        let mut group = Standbys { list, slots };
        thread::scope(|scope| {
            let starts: Vec<_> = group
                .list
                .iter_mut()
                .map(|s| scope.spawn(move || s.start()))
                .collect();
            starts.into_iter().try_for_each(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("start panicked"))?
                    .map_err(anyhow::Error::from)
            })
        })?;
        Ok(group)
    }

    /// Stops the standbys, removes their directories and drops their slots.
    pub fn stop(self, primary: &Cluster, fanout: &FanOut) -> Result<()> {
        drop(self.list);
        for slot in &self.slots {
            fanout.drop_slot(primary, slot)?;
        }
        Ok(())
    }
}

/// The relay binary: `--walrelay`, else `walrelay` in the directory above this example's
/// (`target/release/examples/fanout_bench` → `target/release/walrelay`).
pub fn relay_binary(given: Option<&Path>) -> Result<PathBuf> {
    let path = match given {
        Some(path) => path.to_path_buf(),
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
