//! A Patroni cluster on loopback for the tests: one etcd (Debian's `etcd-server`, its v3
//! API), and Patroni members (Debian's `patroni`, its `etcd3` DCS) that manage PostgreSQL
//! servers of the harness's binaries: three by default, or as [`Spec`] says, which can also
//! make it a standby cluster (`standby_cluster` in the DCS configuration) of a second scope in
//! the etcd of another cluster. Every process runs as the `postgres` user when the test runs
//! as root, on ports from [`free_port`], in one scratch directory; all of them are killed on
//! `Drop` (Patroni first, so that it restarts nothing, then each postmaster by the pid in its
//! `postmaster.pid`, then etcd when the cluster started it).
//!
//! Also here: a pgbench load that survives failovers, a sampler that records when a query's
//! answer first turns into the one awaited, and `pg_waldump` over a WAL directory that
//! crosses timelines.

use std::fs;
use std::io::{BufRead, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walrelay::testkit::localpg::{PgBinaries, free_port, wait_until};
use walrelay::types::{SegmentName, WalSegmentSize};

use super::{http_get, segment_files};

/// The Patroni cluster's name (`scope`) unless [`Spec`] names another.
pub const SCOPE: &str = "walrelay-test";

/// What [`PatroniCluster::start_with`] builds.
pub struct Spec<'a> {
    /// Patroni's `scope`.
    pub scope: &'a str,
    /// The members are named `PREFIX1`, `PREFIX2`, …
    pub prefix: &'a str,
    pub members: usize,
    /// A standby cluster: `bootstrap.dcs.standby_cluster` with `host: 127.0.0.1` and this
    /// `port` and `primary_slot_name`, and nothing else (no `create_replica_methods`, no
    /// `postgresql.basebackup`), so that its first member is built by Patroni's default
    /// `basebackup` method against that port. Without it, the cluster is created with
    /// `initdb` and has the relay's slot (`walrelay`) as a permanent slot.
    pub standby_of: Option<(u16, &'a str)>,
}

impl Default for Spec<'_> {
    /// Three members `node1` to `node3` of [`SCOPE`], not a standby cluster.
    fn default() -> Self {
        Spec {
            scope: SCOPE,
            prefix: "node",
            members: 3,
            standby_of: None,
        }
    }
}

/// Patroni's timing in the tests: a leader key that lives 10 s, an HA loop every second, and
/// `primary_start_timeout: 0`, so that a primary whose postmaster dies is failed over at
/// once rather than restarted in place.
pub const TTL_SECS: u32 = 10;
/// See [`TTL_SECS`].
pub const LOOP_WAIT_SECS: u32 = 1;
/// See [`TTL_SECS`].
pub const RETRY_TIMEOUT_SECS: u32 = 4;

/// Whether `patroni`, `patronictl`, `etcd` and the Python etcd client are installed. When
/// they are not: `false` after a `SKIP` line, or, under CI (`CI=true`), a test failure.
pub fn require_patroni() -> bool {
    let mut missing: Vec<&str> = ["patroni", "patronictl", "etcd"]
        .into_iter()
        .filter(|tool| !on_path(tool))
        .collect();
    // Patroni's own interpreter (its shebang): another python3 may come first on PATH.
    let etcd_client = Command::new(patroni_python())
        .args(["-c", "import etcd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !etcd_client {
        missing.push("python3-etcd");
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "{} not installed (scripts/system-tools --tests installs them)",
        missing.join(", ")
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but {msg}");
    }
    eprintln!("SKIP: {msg}");
    false
}

fn find_on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

fn on_path(tool: &str) -> bool {
    find_on_path(tool).is_some()
}

/// The interpreter in the `patroni` script's `#!` line, else `python3`.
fn patroni_python() -> String {
    find_on_path("patroni")
        .and_then(|p| fs::read_to_string(p).ok())
        .and_then(|text| {
            let first = text.lines().next()?.strip_prefix("#!")?.trim().to_owned();
            first.split_whitespace().next().map(str::to_owned)
        })
        .unwrap_or_else(|| "python3".to_owned())
}

/// A command that runs as the owner of `dir` (the `postgres` user, for a scratch directory of
/// a root test), with `HOME` there and no `PG*` or `ETCD*` variables.
fn command_as_owner_of(program: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("PG") || key_text.starts_with("ETCD") {
            cmd.env_remove(&key);
        }
    }
    cmd.env("HOME", dir)
        .env("LC_ALL", "C.UTF-8")
        .current_dir(dir)
        .stdin(Stdio::null());
    let me = fs::metadata("/proc/self").unwrap().uid();
    if me == 0 {
        let owner = fs::metadata(dir).unwrap();
        cmd.uid(owner.uid()).gid(owner.gid());
    }
    cmd
}

/// Creates `path` owned as `like` is.
fn make_dir_like(path: &Path, like: &Path) {
    fs::create_dir_all(path).unwrap();
    let meta = fs::metadata(like).unwrap();
    std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid())).unwrap();
}

/// Writes `path` owned as `like` is.
fn write_file_like(path: &Path, contents: &str, like: &Path) {
    fs::write(path, contents).unwrap();
    let meta = fs::metadata(like).unwrap();
    std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid())).unwrap();
}

/// Starts `cmd` with stdout and stderr appended to `log`.
fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    cmd.stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("start {:?}: {e}", cmd.get_program()))
}

/// Whether `pid` is a live process (not a zombie).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, Some('Z' | 'X') | None)
    })
}

/// `kill -SIG PID`, whatever its outcome.
fn kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One Patroni member: its PostgreSQL port, its REST API port, its directory (`data/`, the
/// Unix socket, `patroni.yml`, `patroni.log`, which also gets PostgreSQL's log).
pub struct Member {
    pub name: String,
    pub pg_port: u16,
    pub rest_port: u16,
    pub dir: PathBuf,
    patroni: Option<Child>,
}

impl Member {
    /// `host=127.0.0.1 port=PG_PORT user=postgres`.
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.pg_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("patroni.yml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("patroni.log")
    }

    /// The postmaster's pid from `postmaster.pid`, if the file is there and that process lives.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let is_postgres = String::from_utf8_lossy(&cmdline).contains("postgres");
        (alive(pid) && is_postgres).then_some(pid)
    }

    /// Its `patroni.yml`: the etcd3 DCS at `etcd`, the bootstrap configuration with the
    /// relay's permanent slot, or the `standby_cluster` section of a standby cluster,
    /// PostgreSQL on loopback with `bin_dir`.
    fn config(&self, spec: &Spec<'_>, etcd_port: u16, bin_dir: &Path) -> String {
        let (name, dir, pg, rest) = (&self.name, self.dir.display(), self.pg_port, self.rest_port);
        let bin_dir = bin_dir.display();
        let scope = spec.scope;
        let source = match spec.standby_of {
            Some((port, slot)) => format!(
                "    # A standby cluster: its standby leader is built with Patroni's default
    # create_replica_methods (basebackup) from this host and port, then streams from them
    # on this slot.
    standby_cluster:
      host: 127.0.0.1
      port: {port}
      primary_slot_name: {slot}
"
            ),
            None => "    # The relay's slot on the primary: Patroni creates it on whichever member leads, and
    # does not drop it as an unknown slot.
    slots:
      walrelay:
        type: physical
"
            .to_owned(),
        };
        format!(
            "scope: {scope}
name: {name}
restapi:
  listen: 127.0.0.1:{rest}
  connect_address: 127.0.0.1:{rest}
etcd3:
  hosts: 127.0.0.1:{etcd_port}
watchdog:
  mode: off
bootstrap:
  dcs:
    ttl: {TTL_SECS}
    loop_wait: {LOOP_WAIT_SECS}
    retry_timeout: {RETRY_TIMEOUT_SECS}
    primary_start_timeout: 0
    maximum_lag_on_failover: 16777216
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        max_wal_senders: 16
        max_replication_slots: 16
        wal_keep_size: 256MB
{source}  initdb:
    - encoding: UTF8
    - locale: C
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {dir}/data
  bin_dir: {bin_dir}
  pgpass: {dir}/pgpass
  authentication:
    superuser:
      username: postgres
    replication:
      username: replicator
    rewind:
      username: postgres
  parameters:
    unix_socket_directories: {dir}
  pg_hba:
    - local all all trust
    - host replication walrelay 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
    - host all all 127.0.0.1/32 trust
"
        )
    }
}

/// etcd in `dir/etcd` on a free client port; returns that port, the process and its log.
fn start_etcd(dir: &Path) -> (u16, Child, PathBuf) {
    let etcd_port = free_port().unwrap();
    let peer_port = free_port().unwrap();
    let etcd_dir = dir.join("etcd");
    make_dir_like(&etcd_dir, dir);
    let etcd_log = dir.join("etcd.log");
    let client = format!("http://127.0.0.1:{etcd_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut cmd = command_as_owner_of("etcd", dir);
    cmd.args(["--name", "etcd1", "--data-dir"])
        .arg(etcd_dir.join("data"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("etcd1={peer}")])
        .args(["--initial-cluster-state", "new"])
        .args(["--initial-cluster-token", SCOPE]);
    let etcd = spawn_logged(cmd, &etcd_log);
    (etcd_port, etcd, etcd_log)
}

/// Patroni members, and the etcd they use when they started it, started by
/// [`PatroniCluster::start`] or [`PatroniCluster::start_with`].
pub struct PatroniCluster {
    pub scope: String,
    pub members: Vec<Member>,
    pub etcd_port: u16,
    /// Whether the members are a standby cluster (their leader a standby leader).
    pub standby: bool,
    etcd: Option<Child>,
    etcd_log: Option<PathBuf>,
}

impl PatroniCluster {
    /// Starts etcd, then the first member, which bootstraps the cluster and leads, then the
    /// two others, and waits until both stream from the leader. `dir` is a scratch directory
    /// (owned by `postgres` when the test is root).
    pub fn start(bins: &PgBinaries, dir: &Path) -> PatroniCluster {
        PatroniCluster::start_with(bins, dir, &Spec::default(), None)
    }

    /// Starts the cluster `spec` describes: etcd unless it joins the etcd of `beside` (as a
    /// cluster of another scope), then the first member, which bootstraps the cluster (with
    /// `initdb`, or from the standby cluster's source) and leads, then the others, and waits
    /// until they stream from the leader. `dir` is a scratch directory (owned by `postgres`
    /// when the test is root); each member gets a directory named after it there.
    pub fn start_with(
        bins: &PgBinaries,
        dir: &Path,
        spec: &Spec<'_>,
        beside: Option<&PatroniCluster>,
    ) -> PatroniCluster {
        let (etcd_port, etcd, etcd_log) = match beside {
            Some(other) => (other.etcd_port, None, None),
            None => {
                let (port, child, log) = start_etcd(dir);
                (port, Some(child), Some(log))
            }
        };
        let members = (1..=spec.members)
            .map(|i| {
                let name = format!("{}{i}", spec.prefix);
                Member {
                    pg_port: free_port().unwrap(),
                    rest_port: free_port().unwrap(),
                    dir: dir.join(&name),
                    name,
                    patroni: None,
                }
            })
            .collect();
        let mut cluster = PatroniCluster {
            scope: spec.scope.to_owned(),
            members,
            etcd_port,
            standby: spec.standby_of.is_some(),
            etcd,
            etcd_log,
        };
        wait_until(Duration::from_secs(30), "etcd healthy", || {
            Ok(
                std::net::TcpStream::connect(("127.0.0.1", etcd_port)).is_ok()
                    && http_get(etcd_port, "/health", &[]).2.contains("true"),
            )
        })
        .unwrap();
        for i in 0..cluster.members.len() {
            let member = &cluster.members[i];
            make_dir_like(&member.dir, dir);
            let config = member.config(spec, etcd_port, bins.dir());
            write_file_like(&member.config_path(), &config, dir);
        }
        cluster.start_member(0);
        // A standby leader is in recovery, and is first built by a base backup.
        let (in_recovery, timeout) = if cluster.standby {
            ("t", Duration::from_secs(300))
        } else {
            ("f", Duration::from_secs(60))
        };
        let first = format!("{} leads", cluster.members[0].name);
        wait_until(timeout, &first, || {
            Ok(cluster.leader() == Some(0)
                && bins
                    .psql(&cluster.members[0].conninfo(), "SELECT pg_is_in_recovery()")
                    .is_ok_and(|r| r == in_recovery))
        })
        .unwrap_or_else(|e| panic!("{e}; cluster: {:?}", cluster.view()));
        for i in 1..cluster.members.len() {
            cluster.start_member(i);
        }
        cluster.wait_healthy(bins, Duration::from_secs(90));
        cluster
    }

    fn start_member(&mut self, i: usize) {
        let member = &mut self.members[i];
        let mut cmd = command_as_owner_of("patroni", &member.dir);
        cmd.arg(member.config_path());
        member.patroni = Some(spawn_logged(cmd, &member.log_path()));
    }

    /// Patroni's `GET /cluster`, from the first member whose REST API answers.
    pub fn view(&self) -> Option<serde_json::Value> {
        self.members.iter().find_map(|m| {
            std::net::TcpStream::connect(("127.0.0.1", m.rest_port)).ok()?;
            let (code, _, body) = http_get(m.rest_port, "/cluster", &[]);
            (code == 200)
                .then(|| serde_json::from_str(&body).ok())
                .flatten()
        })
    }

    /// The role Patroni gives the leader: `leader`, or `standby_leader` in a standby cluster.
    fn leader_role(&self) -> &'static str {
        if self.standby {
            "standby_leader"
        } else {
            "leader"
        }
    }

    /// The index of the member Patroni names leader (the standby leader in a standby
    /// cluster), if any.
    pub fn leader(&self) -> Option<usize> {
        let view = self.view()?;
        let name = view["members"]
            .as_array()?
            .iter()
            .find(|m| m["role"] == self.leader_role() && m["state"] == "running")?["name"]
            .as_str()?
            .to_owned();
        self.members.iter().position(|m| m.name == name)
    }

    /// The leader's timeline according to Patroni.
    pub fn leader_timeline(&self) -> Option<u64> {
        let view = self.view()?;
        view["members"]
            .as_array()?
            .iter()
            .find(|m| m["role"] == self.leader_role())?["timeline"]
            .as_u64()
    }

    /// Waits until a leader runs and the other members stream from it (its
    /// `pg_stat_replication`); returns the leader's index.
    pub fn wait_healthy(&self, bins: &PgBinaries, timeout: Duration) -> usize {
        let mut leader = None;
        wait_until(timeout, "a leader and streaming replicas", || {
            leader = self.leader();
            let Some(l) = leader else { return Ok(false) };
            let names: Vec<String> = (0..self.members.len())
                .filter(|&i| i != l)
                .map(|i| format!("'{}'", self.members[i].name))
                .collect();
            let sql = format!(
                "SELECT count(*) FROM pg_stat_replication \
                 WHERE application_name = ANY (ARRAY[{}]::text[]) AND state = 'streaming'",
                names.join(", ")
            );
            Ok(bins
                .psql(&self.members[l].conninfo(), &sql)
                .is_ok_and(|n| n == names.len().to_string()))
        })
        .unwrap_or_else(|e| panic!("{e}; cluster: {:?}", self.view()));
        leader.unwrap()
    }

    /// A connection string naming every member: `host=127.0.0.1,… port=P1,P2,P3 EXTRA`.
    pub fn all_members(&self, extra: &str) -> String {
        let hosts = vec!["127.0.0.1"; self.members.len()].join(",");
        let ports: Vec<String> = self.members.iter().map(|m| m.pg_port.to_string()).collect();
        format!("host={hosts} port={} {extra}", ports.join(","))
    }

    /// `patronictl -c MEMBER1'S_CONFIG ARGS…`; returns its output, panics when it fails.
    pub fn patronictl(&self, args: &[&str]) -> String {
        let mut cmd = command_as_owner_of("patronictl", &self.members[0].dir);
        cmd.arg("-c").arg(self.members[0].config_path()).args(args);
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "patronictl {args:?}: {text}");
        text
    }

    /// `patronictl switchover --leader L --candidate C --force`.
    pub fn switchover(&self, leader: usize, candidate: usize) -> String {
        self.patronictl(&[
            "switchover",
            &self.scope,
            "--leader",
            &self.members[leader].name,
            "--candidate",
            &self.members[candidate].name,
            "--force",
        ])
    }

    /// `kill -9` of member `i`'s postmaster (Patroni itself lives on).
    pub fn kill_postmaster(&self, i: usize) {
        let pid = self.members[i]
            .postmaster_pid()
            .unwrap_or_else(|| panic!("{} has no running postmaster", self.members[i].name));
        kill(pid, "KILL");
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for m in &self.members {
                eprintln!("{}:\n{}", m.log_path().display(), tail(&m.log_path(), 60));
            }
            if let Some(log) = &self.etcd_log {
                eprintln!("{}:\n{}", log.display(), tail(log, 20));
            }
        }
        // Patroni first, or it would start PostgreSQL again.
        for m in &mut self.members {
            if let Some(mut child) = m.patroni.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for m in &self.members {
            let Some(pid) = m.postmaster_pid() else {
                continue;
            };
            kill(pid, "QUIT");
            let gone = || Ok(!alive(pid));
            if wait_until(Duration::from_secs(10), "postmaster exit", gone).is_err() {
                kill(pid, "KILL");
                let _ = wait_until(Duration::from_secs(5), "postmaster exit", gone);
            }
        }
        if let Some(mut etcd) = self.etcd.take() {
            let _ = etcd.kill();
            let _ = etcd.wait();
        }
    }
}

/// Samples one query every 20 ms through one psql session (opened again when it ends) in a
/// thread, and keeps the instant of the first answer that `awaited` accepts, and that answer.
pub struct FirstSeen {
    first: Arc<Mutex<Option<(Instant, String)>>>,
    samples: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    psql_pid: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FirstSeen {
    /// `sql` must answer exactly one row of one column, whatever the server's state.
    pub fn start(
        bins: &PgBinaries,
        conninfo: &str,
        sql: &str,
        awaited: impl Fn(&str) -> bool + Send + 'static,
    ) -> FirstSeen {
        let first = Arc::new(Mutex::new(None));
        let samples = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let psql_pid = Arc::new(AtomicU32::new(0));
        let (bins, conninfo) = (bins.clone(), format!("{conninfo} connect_timeout=2"));
        let query = format!("{};\n", sql.trim_end_matches(';'));
        let (f, n, s, p) = (
            first.clone(),
            samples.clone(),
            stop.clone(),
            psql_pid.clone(),
        );
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) && f.lock().unwrap().is_none() {
                let mut psql = bins.command("psql");
                psql.args(["-X", "-At", "-d", &conninfo])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null());
                let Ok(mut child) = psql.spawn() else { return };
                p.store(child.id(), Ordering::SeqCst);
                let mut input = child.stdin.take().unwrap();
                let mut output = std::io::BufReader::new(child.stdout.take().unwrap());
                let mut line = String::new();
                while !s.load(Ordering::SeqCst) {
                    line.clear();
                    if input.write_all(query.as_bytes()).is_err()
                        || output.read_line(&mut line).unwrap_or(0) == 0
                    {
                        break;
                    }
                    let at = Instant::now();
                    n.fetch_add(1, Ordering::SeqCst);
                    let answer = line.trim();
                    if awaited(answer) {
                        *f.lock().unwrap() = Some((at, answer.to_owned()));
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                p.store(0, Ordering::SeqCst);
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        FirstSeen {
            first,
            samples,
            stop,
            psql_pid,
            thread: Some(thread),
        }
    }

    /// When the awaited answer was first seen.
    pub fn at(&self) -> Option<Instant> {
        self.first.lock().unwrap().as_ref().map(|(at, _)| *at)
    }

    /// Waits until a first sample was taken (the session is open).
    pub fn wait_sampling(&self, timeout: Duration) {
        wait_until(timeout, "a first sample", || {
            Ok(self.samples.load(Ordering::SeqCst) > 0 || self.at().is_some())
        })
        .unwrap();
    }

    /// Waits up to `timeout` for the awaited answer; `None` when it did not come.
    pub fn wait(&self, timeout: Duration) -> Option<Instant> {
        let _ = wait_until(timeout, "the awaited answer", || Ok(self.at().is_some()));
        self.at()
    }
}

impl Drop for FirstSeen {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let pid = self.psql_pid.load(Ordering::SeqCst);
        if pid != 0 {
            kill(pid, "KILL");
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `pgbench -n -c 2 -T 2` against `conninfo`, run again and again in a thread until stopped:
/// a run that loses its server (a failover) ends, and the next one connects to whichever
/// server the connection string reaches then.
pub struct PgbenchLoad {
    stop: Arc<AtomicBool>,
    pid: Arc<AtomicU32>,
    completed: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PgbenchLoad {
    pub fn start(bins: &PgBinaries, conninfo: &str) -> PgbenchLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let pid = Arc::new(AtomicU32::new(0));
        let completed = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (bins, conninfo) = (bins.clone(), conninfo.to_owned());
        let (s, p, c, f) = (stop.clone(), pid.clone(), completed.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let mut cmd = bins.command("pgbench");
                cmd.args(["-n", "-c", "2", "-j", "2", "-T", "2", &conninfo])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                let Ok(mut child) = cmd.spawn() else { return };
                p.store(child.id(), Ordering::SeqCst);
                let ok = child.wait().is_ok_and(|st| st.success());
                p.store(0, Ordering::SeqCst);
                if ok {
                    c.fetch_add(1, Ordering::SeqCst);
                } else {
                    f.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        PgbenchLoad {
            stop,
            pid,
            completed,
            failed,
            thread: Some(thread),
        }
    }

    /// Stops the load (the running pgbench is killed) and returns how many runs completed
    /// and how many ended early.
    pub fn stop(mut self) -> (u64, u64) {
        self.halt();
        (
            self.completed.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let pid = self.pid.load(Ordering::SeqCst);
        if pid != 0 {
            kill(pid, "KILL");
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for PgbenchLoad {
    fn drop(&mut self) {
        self.halt();
    }
}

/// O4 across timeline switches: the completed segments of `wal_dir`, in segment order (where
/// two timelines hold the same segment, the newer one's copy), have no gap, and `pg_waldump`
/// reads each timeline's run of them from its first segment's start to its last one's end.
/// Returns the timelines and how many segments each run has.
pub fn assert_waldump_across_timelines(
    bins: &PgBinaries,
    wal_dir: &Path,
    size: WalSegmentSize,
) -> Vec<(u32, usize)> {
    let mut segments: Vec<SegmentName> = segment_files(wal_dir)
        .iter()
        .map(|n| SegmentName::parse(n, size).unwrap())
        .collect();
    segments.sort_by_key(|s| (s.segno, s.timeline));
    segments.dedup_by(|later, earlier| {
        let same = later.segno == earlier.segno;
        if same {
            *earlier = *later;
        }
        same
    });
    assert!(!segments.is_empty(), "no completed segment in {wal_dir:?}");
    for pair in segments.windows(2) {
        assert_eq!(
            pair[1].segno.0,
            pair[0].segno.0 + 1,
            "gap between {:?} and {:?}",
            pair[0],
            pair[1]
        );
        assert!(pair[1].timeline >= pair[0].timeline, "{pair:?}");
    }
    let mut runs: Vec<(u32, usize)> = Vec::new();
    for run in segments.chunk_by(|a, b| a.timeline == b.timeline) {
        let (first, last) = (run[0], run[run.len() - 1]);
        bins.waldump(
            wal_dir,
            first.timeline,
            size.start_of(first.segno).unwrap(),
            size.start_of(last.segno.next().unwrap()).unwrap(),
        )
        .unwrap_or_else(|e| panic!("pg_waldump on timeline {}: {e}", first.timeline));
        runs.push((first.timeline.get(), run.len()));
    }
    runs
}
