//! Real PostgreSQL clusters on loopback, for integration tests and `walrelay demo`.
//!
//! This mirrors what PostgreSQL's own TAP harness (`PostgreSQL::Test::Cluster`) does: `initdb`
//! into a private directory, a free port and a private Unix socket directory, `pg_ctl` to start
//! and stop, `pg_basebackup` for standbys, and the client tools (`psql`, `pg_receivewal`,
//! `pg_waldump`, `pgbench`) run against those servers. With `archive(true)` the primary copies
//! every completed segment into an archive directory with [`archive_command`] (a copy and a
//! rename, safe to kill): the ground truth for byte comparisons.
//!
//! PostgreSQL refuses to run its server tools as root. When this process is root, the tools in
//! [`PG_USER_TOOLS`] run as the `postgres` user (`Command::uid/gid`) and the directories they
//! use are chowned to it. Read-only and client tools run as the caller, so `pg_waldump` can read
//! a root-owned `0700` directory.
//!
//! Every server and background process is tracked by pid and stopped on `Drop`; every directory
//! is unique (`walrelay-LABEL-PID-COUNTER-NANOS`) and removed on `Drop` unless kept, or unless
//! the thread is panicking (a failing test keeps its files for debugging).

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::types::{Lsn, TimelineId};

// Spelled out because `walrelay demo` also compiles this file into the binary through a
// `#[path]` attribute, and a file loaded that way looks for its child modules next to itself
// (as a `mod.rs` would), not in `localpg/`. The same path resolves to the same file in both.
#[path = "localpg/cluster.rs"]
mod cluster;
#[path = "localpg/xid_epoch.rs"]
mod xid_epoch;

pub use cluster::{Cluster, ClusterBuilder, StopMode, archive_command};

/// Tools that run as the `postgres` user when this process is root: the ones that refuse root
/// and the ones whose output a server must own.
pub const PG_USER_TOOLS: &[&str] = &[
    "initdb",
    "pg_ctl",
    "postgres",
    "pg_basebackup",
    "pg_resetwal",
];

/// Ports handed out recently by [`free_port`], never handed out again while remembered.
static RECENT_PORTS: Mutex<VecDeque<u16>> = Mutex::new(VecDeque::new());

/// Makes directory names unique within this process.
static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

/// What went wrong while running a local PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    /// No usable PostgreSQL installation (or no `postgres` user while running as root).
    #[error("PostgreSQL not found: {0}")]
    NotFound(String),
    /// A file, directory or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its standard error (and the server log's new lines, for `pg_ctl start`).
        stderr: String,
    },
    /// A command succeeded but printed something unexpected.
    #[error("unexpected output from `{command}`: {output:?}")]
    Unexpected {
        /// The command or query.
        command: String,
        /// What it printed.
        output: String,
    },
    /// A condition did not become true in time.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// The condition.
        what: String,
        /// How long it was awaited.
        waited: Duration,
    },
    /// An argument the harness does not accept.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, LocalPgError>;

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> LocalPgError {
    let context = context.into();
    move |source| LocalPgError::Io { context, source }
}

/// The user PostgreSQL tools run as when this process is root.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RunAs {
    uid: u32,
    gid: u32,
    home: PathBuf,
}

/// A PostgreSQL installation's `bin` directory.
#[derive(Clone, Debug)]
pub struct PgBinaries {
    dir: PathBuf,
    /// Where the tools `dir` lacks come from (a server-only build gets PostgreSQL 15's
    /// client tools, which speak to servers of every major).
    clients: Option<PathBuf>,
    run_as: Option<RunAs>,
    /// A network namespace every tool runs in (`nsenter --net`), if any.
    netns: Option<PathBuf>,
}

impl PgBinaries {
    /// Finds the binaries: `PG_BIN`, else `pg_config --bindir`, else the highest
    /// `/usr/lib/postgresql/*/bin`, else PostgreSQL 15's build that `scripts/fetch-postgres`
    /// keeps (see [`pg_cache`]).
    ///
    /// # Errors
    /// [`LocalPgError::NotFound`] when none holds a `postgres` binary, or when running as root
    /// without a `postgres` user.
    pub fn find() -> Result<PgBinaries> {
        if let Some(dir) = std::env::var_os("PG_BIN").filter(|d| !d.is_empty()) {
            return PgBinaries::new(dir);
        }
        let from_pg_config = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|d| d.join("postgres").is_file());
        let fetched = || {
            let bin = pg_cache().join("15").join("bin");
            bin.join("psql").is_file().then_some(bin)
        };
        match from_pg_config
            .or_else(highest_packaged_bindir)
            .or_else(fetched)
        {
            Some(dir) => PgBinaries::new(dir),
            None => Err(LocalPgError::NotFound(
                "set PG_BIN, put pg_config on PATH, install /usr/lib/postgresql/*/bin, or run scripts/fetch-postgres 15".into(),
            )),
        }
    }

    /// Uses the binaries in `dir`.
    ///
    /// # Errors
    /// [`LocalPgError::NotFound`] when `dir` has no `postgres`, or when running as root without
    /// a `postgres` user.
    pub fn new(dir: impl Into<PathBuf>) -> Result<PgBinaries> {
        let dir = dir.into();
        if !dir.join("postgres").is_file() {
            let msg = format!("no postgres binary in {}", dir.display());
            return Err(LocalPgError::NotFound(msg));
        }
        let run_as = if effective_uid()? == 0 {
            let passwd = fs::read_to_string("/etc/passwd").map_err(io_err("read /etc/passwd"))?;
            let user = passwd_entry(&passwd, "postgres");
            Some(user.ok_or_else(|| LocalPgError::NotFound("user postgres".into()))?)
        } else {
            None
        };
        Ok(PgBinaries {
            dir,
            clients: None,
            run_as,
            netns: None,
        })
    }

    /// The same binaries, each run inside the network namespace whose handle is `netns`
    /// (`/run/netns/NAME`, as `ip netns add` makes it), through `nsenter`: servers started
    /// with them listen, and clients connect, from that namespace.
    pub fn in_netns(&self, netns: impl Into<PathBuf>) -> PgBinaries {
        PgBinaries {
            netns: Some(netns.into()),
            ..self.clone()
        }
    }

    /// The `bin` directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server build of PostgreSQL `major`, with `clients`' tools for what it lacks:
    /// `PG_BIN_<major>` if set, else the cache `scripts/fetch-postgres` fills
    /// (`$WALRELAY_PG_CACHE`, or `walrelay-postgres` in the temporary directory).
    ///
    /// # Errors
    /// [`LocalPgError::NotFound`] when neither holds a `postgres` binary.
    pub fn for_major(major: u32, clients: &PgBinaries) -> Result<PgBinaries> {
        let dir = std::env::var_os(format!("PG_BIN_{major}"))
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| pg_cache().join(major.to_string()).join("bin"));
        if !dir.join("postgres").is_file() {
            return Err(LocalPgError::NotFound(format!(
                "PostgreSQL {major}: no postgres in {} (run scripts/fetch-postgres {major}, or set PG_BIN_{major})",
                dir.display()
            )));
        }
        Ok(PgBinaries {
            dir,
            clients: Some(clients.dir.clone()),
            ..clients.clone()
        })
    }

    /// The path of one tool, such as `pg_waldump`.
    pub fn path(&self, tool: &str) -> PathBuf {
        let own = self.dir.join(tool);
        match &self.clients {
            Some(clients) if !own.is_file() => clients.join(tool),
            _ => own,
        }
    }

    /// The major version, from `postgres --version` (`postgres (PostgreSQL) 15.18` is 15).
    ///
    /// # Errors
    /// When `postgres` cannot run or prints something else.
    pub fn version(&self) -> Result<u32> {
        let out = run(self.command("postgres").arg("--version"))?;
        parse_major(&out).ok_or(LocalPgError::Unexpected {
            command: "postgres --version".into(),
            output: out,
        })
    }

    /// A command for `tool` with the `PG*` environment removed, `LC_ALL=C`, stdin from
    /// `/dev/null`, the temporary directory as working directory, and the `postgres` user when
    /// this process is root and `tool` is one of [`PG_USER_TOOLS`].
    pub fn command(&self, tool: &str) -> Command {
        let user = self
            .run_as
            .as_ref()
            .filter(|_| PG_USER_TOOLS.contains(&tool));
        let mut cmd = match &self.netns {
            None => Command::new(self.path(tool)),
            Some(netns) => {
                // nsenter enters as root, then becomes the tool's user before it execs it.
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net={}", netns.display()));
                if let Some(user) = user {
                    cmd.args(["-S", &user.uid.to_string(), "-G", &user.gid.to_string()]);
                }
                cmd.arg("--").arg(self.path(tool));
                cmd
            }
        };
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        cmd.env("LC_ALL", "C")
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null());
        if let Some(user) = user {
            if self.netns.is_none() {
                cmd.uid(user.uid).gid(user.gid);
            }
            cmd.env("HOME", &user.home);
        }
        cmd
    }

    /// Runs `psql -X -At -v ON_ERROR_STOP=1 -d CONNINFO -c SQL` and returns its trimmed output.
    /// `conninfo` may point at any server, the relay included (`replication=1` for replication
    /// commands).
    ///
    /// # Errors
    /// With psql's stderr when it fails.
    pub fn psql(&self, conninfo: &str, sql: &str) -> Result<String> {
        let mut cmd = self.command("psql");
        cmd.args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-c",
            sql,
        ]);
        run(&mut cmd)
    }

    /// Runs `pg_waldump --path=DIR --timeline=T --start=S --end=E` with its output discarded:
    /// success means every record in the range parsed and passed its CRC check.
    ///
    /// # Errors
    /// With pg_waldump's stderr when it exits non-zero.
    pub fn waldump(&self, dir: &Path, timeline: TimelineId, start: Lsn, end: Lsn) -> Result<()> {
        let mut cmd = self.command("pg_waldump");
        cmd.arg(format!("--path={}", dir.display()))
            .arg(format!("--timeline={timeline}"))
            .arg(format!("--start={start}"))
            .arg(format!("--end={end}"))
            .stdout(Stdio::null());
        run(&mut cmd).map(drop)
    }

    /// Starts `pg_receivewal -D DIR -d CONNINFO --no-loop --verbose EXTRA…` in the background,
    /// logging to `DIR.log` beside `dir` (removed on `Drop` unless the thread is panicking).
    ///
    /// # Errors
    /// When the log file cannot be created or the process cannot start.
    pub fn receivewal(&self, conninfo: &str, dir: &Path, extra: &[&str]) -> Result<PgProcess> {
        let mut cmd = self.command("pg_receivewal");
        cmd.arg("-D")
            .arg(dir)
            .args(["-d", conninfo, "--no-loop", "--verbose"])
            .args(extra);
        let mut process = spawn(cmd, &dir.with_extension("log"))?;
        process.remove_log = true;
        Ok(process)
    }

    /// Creates a unique directory `PARENT/walrelay-LABEL-…`, owned by the `postgres` user when
    /// this process is root.
    ///
    /// # Errors
    /// When the directory cannot be created or chowned.
    pub fn scratch_dir(&self, parent: &Path, label: &str) -> Result<ScratchDir> {
        fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
        let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("walrelay-{label}-{}-{n}-{nanos}", std::process::id());
        let dir = ScratchDir {
            path: parent.join(name),
            keep: false,
        };
        self.make_dir(&dir.path)?;
        Ok(dir)
    }

    /// Creates `path` and hands it to the `postgres` user when this process is root.
    fn make_dir(&self, path: &Path) -> Result<()> {
        fs::create_dir(path).map_err(io_err(format!("create {}", path.display())))?;
        self.give(path)
    }

    /// Writes `contents` to `path`, owned by the `postgres` user when this process is root.
    fn write_file(&self, path: &Path, contents: &str) -> Result<()> {
        fs::write(path, contents).map_err(io_err(format!("write {}", path.display())))?;
        self.give(path)
    }

    fn give(&self, path: &Path) -> Result<()> {
        match &self.run_as {
            Some(u) => chown(path, Some(u.uid), Some(u.gid))
                .map_err(io_err(format!("chown {}", path.display()))),
            None => Ok(()),
        }
    }
}

/// The highest `/usr/lib/postgresql/*/bin` holding a `postgres` binary (Debian's layout).
/// Where `scripts/fetch-postgres` keeps the builds of other majors.
pub fn pg_cache() -> PathBuf {
    std::env::var_os("WALRELAY_PG_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("walrelay-postgres"))
}

fn highest_packaged_bindir() -> Option<PathBuf> {
    let version_key = |name: &str| -> Option<(u32, u32)> {
        let (major, minor) = name.split_once('.').unwrap_or((name, "0"));
        Some((major.parse().ok()?, minor.parse().ok()?))
    };
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let key = version_key(&entry.file_name().to_string_lossy())?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((key, bin))
        })
        .max_by_key(|(key, _)| *key)
        .map(|(_, bin)| bin)
}

/// The major version in `postgres --version` output (`postgres (PostgreSQL) 18beta1` is 18).
fn parse_major(version: &str) -> Option<u32> {
    let (_, rest) = version.split_once("(PostgreSQL)")?;
    let number = rest.split_whitespace().next()?;
    let digits = number.bytes().take_while(u8::is_ascii_digit).count();
    number.get(..digits)?.parse().ok()
}

/// This process's effective uid, from `/proc/self/status`.
fn effective_uid() -> Result<u32> {
    let status =
        fs::read_to_string("/proc/self/status").map_err(io_err("read /proc/self/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| LocalPgError::Unexpected {
            command: "read /proc/self/status".into(),
            output: "no Uid line".into(),
        })
}

/// The uid, gid and home of `user` in `/etc/passwd` text.
fn passwd_entry(passwd: &str, user: &str) -> Option<RunAs> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [name, _, uid, gid, _, home, ..] if *name == user => Some(RunAs {
                uid: uid.parse().ok()?,
                gid: gid.parse().ok()?,
                home: PathBuf::from(home),
            }),
            _ => None,
        }
    })
}

/// The PostgreSQL binaries for a test, or `None` (with a `SKIP` line on stderr) when there are
/// none. Under CI (`CI=true`) a missing PostgreSQL is a test failure, never a silent skip.
///
/// # Panics
/// When PostgreSQL is not found and `CI` is `true`.
#[allow(clippy::panic)] // failing the calling test is this function's purpose under CI
pub fn require_postgres() -> Option<PgBinaries> {
    match PgBinaries::find() {
        Ok(bins) => Some(bins),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but {e}")
        }
        Err(e) => {
            eprintln!("SKIP: {e}");
            None
        }
    }
}

/// The pinned server build of PostgreSQL `major` for a test ([`PgBinaries::for_major`]), with
/// the installed client tools; for the installed major, the installed build when none is
/// fetched. `None`, after a message, when they are missing, so the test can return early.
///
/// # Panics
/// When they are missing and `CI` is `true`.
#[allow(clippy::panic)] // failing the calling test is this function's purpose under CI
pub fn require_major(major: u32) -> Option<PgBinaries> {
    let clients = require_postgres()?;
    match PgBinaries::for_major(major, &clients) {
        Ok(bins) => Some(bins),
        Err(_) if clients.version().ok() == Some(major) => Some(clients),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but {e}")
        }
        Err(e) => {
            eprintln!("SKIP: {e}");
            None
        }
    }
}

/// A loopback TCP port that was free a moment ago and that this process has not handed out
/// recently.
///
/// # Errors
/// When binding `127.0.0.1:0` fails or no fresh port turns up.
pub fn free_port() -> Result<u16> {
    for _ in 0..64 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0));
        let addr = listener.and_then(|l| l.local_addr());
        let port = addr.map_err(io_err("bind 127.0.0.1:0"))?.port();
        let mut recent = RECENT_PORTS.lock().unwrap_or_else(PoisonError::into_inner);
        if !recent.contains(&port) {
            recent.push_back(port);
            if recent.len() > 1024 {
                recent.pop_front();
            }
            return Ok(port);
        }
    }
    Err(LocalPgError::Io {
        context: "find a free port".into(),
        source: io::ErrorKind::AddrInUse.into(),
    })
}

/// Checks `check` every 50 ms until it returns `true`.
///
/// # Errors
/// The first error `check` returns, or [`LocalPgError::Timeout`] naming `what`.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    loop {
        if check()? {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(LocalPgError::Timeout {
                what: what.into(),
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `cmd` to completion and returns its trimmed stdout.
///
/// # Errors
/// When it cannot start, or exits non-zero (the error carries its stderr).
pub fn run(cmd: &mut Command) -> Result<String> {
    let output = cmd
        .output()
        .map_err(io_err(format!("start `{}`", describe(cmd))))?;
    if !output.status.success() {
        return Err(LocalPgError::Command {
            command: describe(cmd),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Starts `cmd` in the background with stdout and stderr going to the file `log`.
///
/// # Errors
/// When the log file cannot be created or the process cannot start.
pub fn spawn(mut cmd: Command, log: &Path) -> Result<PgProcess> {
    let out = File::create(log).map_err(io_err(format!("create {}", log.display())))?;
    let err = out.try_clone().map_err(io_err("dup log file"))?;
    let command = describe(&cmd);
    let child = cmd
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(io_err(format!("start `{command}`")))?;
    Ok(PgProcess {
        child,
        command,
        log: log.to_path_buf(),
        remove_log: false,
    })
}

fn describe(cmd: &Command) -> String {
    let parts = std::iter::once(cmd.get_program()).chain(cmd.get_args());
    parts
        .map(|p| p.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sends `signal` (a name such as `INT`) to `pid` through the shell's `kill`.
fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "kill -s \"$1\" \"$2\"",
        "sh",
        signal,
        &pid.to_string(),
    ]);
    run(&mut cmd).map(drop)
}

/// Whether `pid` is a live (not zombie) process.
fn process_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// A background process (`pg_receivewal`, `pgbench`, the relay…), killed (SIGKILL) on `Drop`.
#[derive(Debug)]
pub struct PgProcess {
    child: Child,
    command: String,
    log: PathBuf,
    remove_log: bool,
}

impl PgProcess {
    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it writes to stdout and stderr so far.
    pub fn log_contents(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    ///
    /// # Errors
    /// When waiting fails.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .map_err(io_err(format!("wait for `{}`", self.command)))
    }

    /// Waits up to `timeout` for it to exit.
    ///
    /// # Errors
    /// [`LocalPgError::Timeout`] when it is still running.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut status = None;
        let what = format!("`{}` to exit", self.command);
        wait_until(timeout, &what, || {
            status = self.try_status()?;
            Ok(status.is_some())
        })?;
        status.ok_or(LocalPgError::Timeout {
            what,
            waited: timeout,
        })
    }

    /// Asks it to stop with SIGINT, then SIGKILLs it after 10 s.
    ///
    /// # Errors
    /// When it cannot be signalled or waited for.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_status()? {
            return Ok(status);
        }
        send_signal(self.pid(), "INT")?;
        match self.wait(Duration::from_secs(10)) {
            Err(LocalPgError::Timeout { .. }) => {
                self.child.kill().map_err(io_err("kill"))?;
                self.child.wait().map_err(io_err("wait"))
            }
            other => other,
        }
    }
}

impl Drop for PgProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if self.remove_log && !std::thread::panicking() {
            let _ = fs::remove_file(&self.log);
        }
    }
}

/// A directory removed on `Drop`, unless [`keep`](ScratchDir::keep) was called or the thread
/// is panicking.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
    keep: bool,
}

impl ScratchDir {
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory after `Drop`.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() {
            eprintln!("keeping {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_major_versions() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.18 (Debian 15.18-1)"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 18beta1"), Some(18));
        assert_eq!(parse_major("postgres (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("something else 15"), None);
    }

    #[test]
    fn reads_passwd_entries() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
        let user = passwd_entry(passwd, "postgres").unwrap();
        assert_eq!((user.uid, user.gid), (101, 104));
        assert_eq!(user.home, PathBuf::from("/var/lib/postgresql"));
        assert_eq!(passwd_entry(passwd, "nobody"), None);
        assert_eq!(passwd_entry("postgres:x:abc:1:::", "postgres"), None);
    }

    /// The archiver is killed mid-copy by an immediate shutdown and offers the segment again
    /// after the restart: the second try must succeed, and a different file under the same
    /// name must not be accepted.
    #[test]
    fn the_archive_command_survives_a_killed_copy() {
        let dir = std::env::temp_dir().join(format!("walrelay-archive-cmd-{}", std::process::id()));
        let (wal, archive) = (dir.join("pg_wal"), dir.join("archive"));
        fs::create_dir_all(&wal).unwrap();
        fs::create_dir_all(&archive).unwrap();
        let name = "000000010000000000000027";
        fs::write(wal.join(name), vec![7u8; 8192]).unwrap();
        let archive_one = || {
            let command = archive_command(&archive)
                .replace("%p", &format!("pg_wal/{name}"))
                .replace("%f", name);
            Command::new("sh")
                .arg("-c")
                .arg(command)
                .current_dir(&dir)
                .status()
                .unwrap()
                .success()
        };
        // What a copy killed half-way leaves behind.
        fs::write(archive.join(format!("{name}.tmp")), vec![7u8; 100]).unwrap();
        assert!(archive_one(), "a leftover partial copy blocks archiving");
        assert_eq!(fs::read(archive.join(name)).unwrap(), vec![7u8; 8192]);
        assert!(archive_one(), "a segment archived already is refused");
        fs::write(wal.join(name), vec![8u8; 8192]).unwrap();
        assert!(
            !archive_one(),
            "a different segment under an archived name is accepted"
        );
        assert_eq!(fs::read(archive.join(name)).unwrap(), vec![7u8; 8192]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn free_ports_are_not_repeated() {
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
    }

    #[test]
    fn process_liveness_follows_proc() {
        assert!(process_alive(std::process::id()));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn scratch_dirs_are_unique_and_removed() {
        let bins = PgBinaries {
            dir: PathBuf::from("/nonexistent"),
            clients: None,
            run_as: None,
            netns: None,
        };
        let tmp = std::env::temp_dir();
        let a = bins.scratch_dir(&tmp, "t").unwrap();
        let b = bins.scratch_dir(&tmp, "t").unwrap();
        assert_ne!(a.path(), b.path());
        let path = a.path().to_path_buf();
        assert!(path.is_dir());
        drop(a);
        assert!(!path.exists());
    }
}
