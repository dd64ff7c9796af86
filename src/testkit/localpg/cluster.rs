//! One PostgreSQL server in a private directory: `initdb`, `postgresql.conf` and `pg_hba.conf`
//! settings, `pg_ctl` start and stop, SQL helpers, and standbys made with `pg_basebackup`.
//!
//! The settings the harness owns go to `data/walrelay.conf`, which `postgresql.conf` includes
//! last, so a standby copied by `pg_basebackup` rewrites that one file with its own port, socket
//! directory and `primary_conninfo`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{LocalPgError, PgBinaries, Result, ScratchDir, free_port, io_err, run, send_signal};
use super::{process_alive, wait_until};
use crate::types::{Lsn, SystemId, WalSegmentSize};

/// How long `pg_ctl` may wait for a server to start or stop, in seconds.
const PG_CTL_TIMEOUT_SECS: &str = "120";

/// How `pg_ctl stop` shuts a server down (`-m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Waits for clients to disconnect.
    Smart,
    /// Disconnects clients, then a shutdown checkpoint.
    Fast,
    /// Quits at once, like a crash: recovery runs at the next start.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Sets `key` in an ordered settings list, replacing an earlier value.
fn set(settings: &mut Vec<(String, String)>, key: &str, value: &str) {
    settings.retain(|(k, _)| k != key);
    settings.push((key.to_string(), value.to_string()));
}

/// One `postgresql.conf` line with the value quoted, as the GUC file scanner reads it.
fn conf_line(key: &str, value: &str) -> String {
    let escaped = value.replace('\\', "\\\\").replace('\'', "''");
    format!("{key} = '{escaped}'\n")
}

/// `s` quoted for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// An `archive_command` that copies each completed segment into `dir` and survives being
/// killed, as an immediate shutdown kills it mid-copy: it copies to `%f.tmp` and renames, so
/// the archive never holds a partial segment under its name, and when the archive already
/// holds the segment it succeeds only if the copy is identical. That is the rule PostgreSQL's
/// documentation gives (continuous archiving): after a crash the archiver may offer a segment
/// it archived once already, and a plain `test ! -f` would then fail for ever.
pub fn archive_command(dir: &Path) -> String {
    let a = sh_quote(&dir.to_string_lossy());
    format!(
        "if test -f {a}/%f; then cmp -s %p {a}/%f; \
         else cp %p {a}/%f.tmp && mv {a}/%f.tmp {a}/%f; fi"
    )
}

/// Settings for a new cluster: `initdb --wal-segsize`, `archive_mode`, `postgresql.conf` lines
/// and `pg_hba.conf` lines.
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    bins: PgBinaries,
    base_dir: PathBuf,
    segment_size_mb: u32,
    archive: bool,
    config: Vec<(String, String)>,
    hba: Vec<String>,
}

impl ClusterBuilder {
    /// A primary with 16 MB segments, no archiving, trust for loopback, in a new directory
    /// under `base_dir` (usually `std::env::temp_dir()`).
    pub fn new(bins: PgBinaries, base_dir: impl Into<PathBuf>) -> ClusterBuilder {
        ClusterBuilder {
            bins,
            base_dir: base_dir.into(),
            segment_size_mb: 16,
            archive: false,
            config: Vec::new(),
            hba: Vec::new(),
        }
    }

    /// The WAL segment size in MB (`initdb --wal-segsize`), a power of two from 1 to 1024.
    pub fn segment_size_mb(mut self, mb: u32) -> ClusterBuilder {
        self.segment_size_mb = mb;
        self
    }

    /// Copies every completed segment into [`Cluster::archive_dir`] (`archive_mode=on`).
    pub fn archive(mut self, on: bool) -> ClusterBuilder {
        self.archive = on;
        self
    }

    /// One `postgresql.conf` setting; the value is quoted for the file, so pass it bare
    /// (`config("synchronous_standby_names", "relay")`). `port` is the harness's to choose.
    pub fn config(mut self, key: &str, value: &str) -> ClusterBuilder {
        set(&mut self.config, key, value);
        self
    }

    /// One `pg_hba.conf` line, placed before the default loopback `trust` lines (the first
    /// match wins).
    pub fn hba_line(mut self, line: &str) -> ClusterBuilder {
        self.hba.push(line.to_string());
        self
    }

    /// Runs `initdb` and writes the configuration. The server is not started.
    ///
    /// # Errors
    /// When a directory cannot be made or `initdb` fails.
    pub fn init(self) -> Result<Cluster> {
        let dir = self.bins.scratch_dir(&self.base_dir, "pg")?;
        let data = dir.path().join("data");
        let mut initdb = self.bins.command("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync"])
            .args(["-E", "UTF8", "--locale=C"])
            .arg(format!("--wal-segsize={}", self.segment_size_mb));
        run(&mut initdb)?;
        let settings = self.settings(dir.path())?;
        self.write_hba(&data)?;
        let conf = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).map_err(io_err("read postgresql.conf"))?;
        text.push_str("\ninclude 'walrelay.conf'\n");
        self.bins.write_file(&conf, &text)?;
        let cluster = Cluster {
            bins: self.bins,
            dir,
            port: free_port()?,
            settings,
            pid: None,
        };
        cluster.write_settings()?;
        Ok(cluster)
    }

    /// A hot standby copied with `pg_basebackup -X stream -c fast` from the server that
    /// `source` (a connection string) reaches, one this harness did not start included (a
    /// Patroni member, say), that streams from `primary_conninfo` with
    /// `primary_slot_name = slot`. The copy's `postgresql.conf` and `pg_hba.conf` are replaced
    /// by this builder's settings and rules, as [`init`](ClusterBuilder::init) writes them, so
    /// nothing of the source's own configuration (its port, its paths) is kept. Returned
    /// stopped; archiving is off whatever [`archive`](ClusterBuilder::archive) says.
    ///
    /// # Errors
    /// When pg_basebackup fails or the configuration cannot be written.
    pub fn basebackup_standby_of(
        mut self,
        source: &str,
        primary_conninfo: &str,
        slot: Option<&str>,
    ) -> Result<Cluster> {
        let dir = self.bins.scratch_dir(&self.base_dir, "standby")?;
        let data = dir.path().join("data");
        let mut cmd = self.bins.command("pg_basebackup");
        cmd.arg("-D")
            .arg(&data)
            .args(["-d", source, "-X", "stream", "-c", "fast", "--no-sync"]);
        run(&mut cmd)?;
        self.archive = false;
        set(&mut self.config, "hot_standby", "on");
        set(&mut self.config, "primary_conninfo", primary_conninfo);
        if let Some(slot) = slot {
            set(&mut self.config, "primary_slot_name", slot);
        }
        let settings = self.settings(dir.path())?;
        self.write_hba(&data)?;
        self.bins
            .write_file(&data.join("postgresql.conf"), "include 'walrelay.conf'\n")?;
        self.bins.write_file(&data.join("standby.signal"), "")?;
        let standby = Cluster {
            bins: self.bins,
            dir,
            port: free_port()?,
            settings,
            pid: None,
        };
        standby.write_settings()?;
        Ok(standby)
    }

    /// Writes `pg_hba.conf`: the caller's lines, then trust for local and loopback clients.
    fn write_hba(&self, data: &Path) -> Result<()> {
        let mut hba = self.hba.join("\n");
        hba.push_str("\nlocal all all trust\nlocal replication all trust\n");
        hba.push_str("host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n");
        self.bins.write_file(&data.join("pg_hba.conf"), &hba)
    }

    /// The replication defaults, the archive (created in `root`) and the caller's settings.
    fn settings(&self, root: &Path) -> Result<Vec<(String, String)>> {
        let keep = if self.bins.version()? >= 13 {
            "wal_keep_size"
        } else {
            "wal_keep_segments"
        };
        let mut settings = Vec::new();
        for (key, value) in [
            ("wal_level", "replica"),
            ("max_wal_senders", "16"),
            ("max_replication_slots", "16"),
            (keep, "0"),
            ("logging_collector", "off"),
            ("log_line_prefix", "%m [%p] %q%a "),
        ] {
            set(&mut settings, key, value);
        }
        if self.archive {
            let arch = root.join("archive");
            self.bins.make_dir(&arch)?;
            set(&mut settings, "archive_mode", "on");
            set(&mut settings, "archive_command", &archive_command(&arch));
        }
        for (key, value) in &self.config {
            set(&mut settings, key, value);
        }
        Ok(settings)
    }
}

/// One PostgreSQL server in its own directory: `data/`, `archive/`, `server.log` and its Unix
/// socket. Stopped (immediate) by pid on `Drop`, and the directory removed unless kept.
#[derive(Debug)]
pub struct Cluster {
    bins: PgBinaries,
    dir: ScratchDir,
    port: u16,
    settings: Vec<(String, String)>,
    pid: Option<u32>,
}

impl Cluster {
    /// Starts the server with `pg_ctl start -w`. When the port was taken meanwhile, it retries
    /// on a fresh port.
    ///
    /// # Errors
    /// With pg_ctl's stderr and the new server log lines when the server does not start.
    pub fn start(&mut self) -> Result<()> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let log_len = fs::metadata(self.log_path()).map_or(0, |m| m.len());
            let mut cmd = self.bins.command("pg_ctl");
            cmd.arg("start")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.log_path())
                .args(["-w", "-s", "-t", PG_CTL_TIMEOUT_SECS]);
            let Err(mut err) = run(&mut cmd) else {
                self.pid = Some(self.read_pid()?);
                return Ok(());
            };
            let log = self.log_contents();
            let new_lines = log
                .get(usize::try_from(log_len).unwrap_or(0)..)
                .unwrap_or(&log);
            if attempts < 3 && new_lines.contains("could not bind") {
                self.port = free_port()?;
                self.write_settings()?;
                continue;
            }
            if let LocalPgError::Command { stderr, .. } = &mut err {
                stderr.push_str("\nserver log:\n");
                stderr.push_str(new_lines);
            }
            return Err(err);
        }
    }

    /// Stops the server with `pg_ctl stop -m MODE -w`.
    ///
    /// # Errors
    /// When pg_ctl fails (for example, the server is not running).
    pub fn stop(&mut self, mode: StopMode) -> Result<()> {
        let mut cmd = self.bins.command("pg_ctl");
        cmd.arg("stop").arg("-D").arg(self.data_dir()).args([
            "-m",
            mode.as_arg(),
            "-w",
            "-s",
            "-t",
            PG_CTL_TIMEOUT_SECS,
        ]);
        run(&mut cmd)?;
        self.pid = None;
        Ok(())
    }

    /// Kills the postmaster and the processes it started with SIGKILL, as a crash stops them,
    /// and waits until they are gone; the next start runs crash recovery.
    ///
    /// # Errors
    /// When `kill` fails or a process outlives the wait.
    pub fn kill9(&mut self) -> Result<()> {
        let Some(pid) = self.pid.take() else {
            return Ok(());
        };
        let mut pids = vec![pid];
        pids.extend(children_of(pid));
        let mut cmd = Command::new("kill");
        cmd.arg("-9").args(pids.iter().map(u32::to_string));
        // A process that already exited is not an error.
        let _ = cmd.output();
        wait_until(
            Duration::from_secs(10),
            "killed server processes exit",
            || Ok(pids.iter().all(|p| !process_alive(*p))),
        )?;
        // The killed postmaster may linger as a zombie where nothing reaps orphans, and a
        // new postmaster would take it for a running one: its lock files go, as a reboot
        // would make them stale.
        let socket = self.dir.path().join(format!(".s.PGSQL.{}", self.port));
        let lock_files = [
            self.data_dir().join("postmaster.pid"),
            socket.with_extension(format!("{}.lock", self.port)),
            socket,
        ];
        for file in lock_files {
            match fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_err(format!("remove {}", file.display()))(e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Stops the server with `mode`, then starts it.
    ///
    /// # Errors
    /// As [`stop`](Cluster::stop) and [`start`](Cluster::start).
    pub fn restart(&mut self, mode: StopMode) -> Result<()> {
        self.stop(mode)?;
        self.start()
    }

    /// Keeps the directory after `Drop` (the server is still stopped).
    pub fn keep(&mut self) {
        self.dir.keep();
    }

    /// The postmaster's pid while started.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host=127.0.0.1 port=N user=postgres`.
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.port)
    }

    /// The binaries this cluster runs.
    pub fn bins(&self) -> &PgBinaries {
        &self.bins
    }

    /// Runs the cluster, from its next start, and its queries with `bins`: the same binaries
    /// inside a network namespace ([`PgBinaries::in_netns`]), for a standby on "another
    /// machine".
    pub fn set_bins(&mut self, bins: PgBinaries) {
        self.bins = bins;
    }

    /// The directory holding `data/`, `archive/`, `server.log` and the socket.
    pub fn root_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `PGDATA`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Where `archive_command` copies completed segments (exists with `archive(true)`).
    pub fn archive_dir(&self) -> PathBuf {
        self.dir.path().join("archive")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server log so far (empty before the first start).
    pub fn log_contents(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Sets one `postgresql.conf` setting (value quoted for the file). It takes effect at the
    /// next start, or at a reload for reloadable settings.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn set_config(&mut self, key: &str, value: &str) -> Result<()> {
        set(&mut self.settings, key, value);
        self.write_settings()
    }

    /// Writes `data/walrelay.conf`, which `postgresql.conf` includes last.
    fn write_settings(&self) -> Result<()> {
        let mut text = conf_line("listen_addresses", "127.0.0.1");
        text.push_str(&conf_line("port", &self.port.to_string()));
        let socket_dir = self.dir.path().to_string_lossy();
        text.push_str(&conf_line("unix_socket_directories", &socket_dir));
        for (key, value) in self.settings.iter().filter(|(key, _)| key != "port") {
            text.push_str(&conf_line(key, value));
        }
        self.bins
            .write_file(&self.data_dir().join("walrelay.conf"), &text)
    }

    fn read_pid(&self) -> Result<u32> {
        let path = self.data_dir().join("postmaster.pid");
        let text = fs::read_to_string(&path).map_err(io_err(format!("read {}", path.display())))?;
        let first = text.lines().next().unwrap_or_default();
        first.trim().parse().map_err(|_| LocalPgError::Unexpected {
            command: format!("read {}", path.display()),
            output: first.to_string(),
        })
    }

    /// Runs SQL through psql as `postgres` on database `postgres`; returns the trimmed output
    /// (`-At`: unaligned, tuples only).
    ///
    /// # Errors
    /// With psql's stderr when it fails.
    pub fn psql(&self, sql: &str) -> Result<String> {
        self.bins.psql(&self.conninfo(), sql)
    }

    fn query_lsn(&self, sql: &str) -> Result<Lsn> {
        let out = self.psql(sql)?;
        out.parse().map_err(|_| LocalPgError::Unexpected {
            command: sql.to_string(),
            output: out,
        })
    }

    /// `pg_current_wal_flush_lsn()` (primaries only).
    ///
    /// # Errors
    /// When the query fails.
    pub fn current_wal_flush_lsn(&self) -> Result<Lsn> {
        self.query_lsn("SELECT pg_current_wal_flush_lsn()")
    }

    /// `pg_last_wal_replay_lsn()` (standbys only; `0/0` before replay starts).
    ///
    /// # Errors
    /// When the query fails.
    pub fn replay_lsn(&self) -> Result<Lsn> {
        self.query_lsn("SELECT coalesce(pg_last_wal_replay_lsn(), '0/0')")
    }

    /// `pg_switch_wal()`: the end (plus one) of the segment's last record.
    ///
    /// # Errors
    /// When the query fails.
    pub fn switch_wal(&self) -> Result<Lsn> {
        self.query_lsn("SELECT pg_switch_wal()")
    }

    /// `SHOW wal_segment_size`.
    ///
    /// # Errors
    /// When the query fails or prints an invalid size.
    pub fn wal_segment_size(&self) -> Result<WalSegmentSize> {
        let out = self.psql("SHOW wal_segment_size")?;
        WalSegmentSize::parse_show(&out).map_err(|_| LocalPgError::Unexpected {
            command: "SHOW wal_segment_size".into(),
            output: out,
        })
    }

    /// The system identifier, from `pg_control_system()`.
    ///
    /// # Errors
    /// When the query fails.
    pub fn system_id(&self) -> Result<SystemId> {
        let sql = "SELECT system_identifier FROM pg_control_system()";
        let out = self.psql(sql)?;
        out.parse().map_err(|_| LocalPgError::Unexpected {
            command: sql.into(),
            output: out,
        })
    }

    /// Creates a physical slot that reserves WAL at once.
    ///
    /// # Errors
    /// When `name` is not lower-case letters, digits and underscores, or the query fails.
    pub fn create_physical_slot(&self, name: &str) -> Result<()> {
        let valid = name
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'));
        if !valid || name.is_empty() || name.len() > 63 {
            return Err(LocalPgError::Invalid(format!("slot name {name:?}")));
        }
        let sql = format!("SELECT pg_create_physical_replication_slot('{name}', true)");
        self.psql(&sql).map(drop)
    }

    /// Inserts `rows` rows of about 130 bytes into table `walrelay_load` (created if missing)
    /// and returns the flush LSN after the commit.
    ///
    /// # Errors
    /// When a query fails.
    pub fn write_load(&self, rows: u32) -> Result<Lsn> {
        self.psql(&format!(
            "CREATE TABLE IF NOT EXISTS walrelay_load (id bigserial PRIMARY KEY, payload text); \
             INSERT INTO walrelay_load (payload) \
             SELECT repeat(md5(g::text), 4) FROM generate_series(1, {rows}) g"
        ))?;
        self.current_wal_flush_lsn()
    }

    /// Writes one transactional `pg_logical_emit_message` record carrying `bytes` bytes (it
    /// spans segments when larger than one) and returns the flush LSN after the commit.
    ///
    /// # Errors
    /// When a query fails.
    pub fn emit_message(&self, bytes: usize) -> Result<Lsn> {
        let sql = format!("SELECT pg_logical_emit_message(true, 'walrelay', repeat('x', {bytes}))");
        self.psql(&sql)?;
        self.current_wal_flush_lsn()
    }

    /// Runs `pgbench -h 127.0.0.1 -p PORT -U postgres ARGS… postgres` and returns its output
    /// (for example `&["-i", "-s", "10"]`, then `&["-c", "4", "-T", "60"]`).
    ///
    /// # Errors
    /// With pgbench's stderr when it fails.
    pub fn pgbench(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.bins.command("pgbench");
        cmd.args(self.client_args()).args(args).arg("postgres");
        run(&mut cmd)
    }

    /// The flags that point a client tool at this server as `postgres`.
    fn client_args(&self) -> [String; 6] {
        [
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ]
        .map(str::to_owned)
    }

    /// Waits until the segment holding the byte before `upto` is archived in full, and returns
    /// its path (a primary with `archive(true)`; pass [`switch_wal`](Cluster::switch_wal)'s
    /// result).
    ///
    /// # Errors
    /// When a query fails or the segment does not arrive within `timeout`.
    pub fn wait_archived(&self, upto: Lsn, timeout: Duration) -> Result<PathBuf> {
        let name = self.psql(&format!("SELECT pg_walfile_name('{upto}')"))?;
        let size = u64::from(self.wal_segment_size()?.bytes());
        let path = self.archive_dir().join(&name);
        wait_until(timeout, &format!("archived {name}"), || {
            Ok(fs::metadata(&path).is_ok_and(|m| m.len() == size))
        })?;
        Ok(path)
    }

    /// Takes `pg_basebackup -X stream -c fast` of this server into a new directory beside it
    /// and configures it as a hot standby that streams from `primary_conninfo` (this server,
    /// the relay, …) with `primary_slot_name = slot`. Returns it stopped; archiving is off.
    ///
    /// # Errors
    /// When pg_basebackup fails or the configuration cannot be written.
    pub fn basebackup_standby(
        &self,
        primary_conninfo: &str,
        slot: Option<&str>,
    ) -> Result<Cluster> {
        let parent = self.dir.path().parent().unwrap_or(Path::new("/"));
        let dir = self.bins.scratch_dir(parent, "standby")?;
        let data = dir.path().join("data");
        let mut cmd = self.bins.command("pg_basebackup");
        cmd.arg("-D").arg(&data).args(self.client_args()).args([
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-sync",
        ]);
        run(&mut cmd)?;
        self.standby_in(dir, primary_conninfo, slot)
    }

    /// [`basebackup_standby`](Cluster::basebackup_standby), with the backup taken through
    /// `source` (a connection string: the relay, say) with `pg_basebackup -X stream -c fast`
    /// and `args`, and checked with `pg_verifybackup` before it is configured.
    ///
    /// # Errors
    /// When pg_basebackup or pg_verifybackup fails, or the configuration cannot be written.
    pub fn verified_standby_through(
        &self,
        source: &str,
        args: &[&str],
        primary_conninfo: &str,
        slot: Option<&str>,
    ) -> Result<Cluster> {
        let parent = self.dir.path().parent().unwrap_or(Path::new("/"));
        let dir = self.bins.scratch_dir(parent, "standby")?;
        let data = dir.path().join("data");
        let mut cmd = self.bins.command("pg_basebackup");
        cmd.arg("-D")
            .arg(&data)
            .args(["-d", source, "-X", "stream", "-c", "fast", "--no-sync"])
            .args(args);
        run(&mut cmd)?;
        run(self.bins.command("pg_verifybackup").arg(&data))?;
        self.standby_in(dir, primary_conninfo, slot)
    }

    /// A copy of this server that the caller took into `dir`'s `data/` (its own
    /// `pg_basebackup`, from wherever it ran, already checked as it saw fit), configured as
    /// [`basebackup_standby`](Cluster::basebackup_standby) configures its copy. Returned
    /// stopped.
    ///
    /// # Errors
    /// When the configuration cannot be written.
    pub fn standby_from_copy(
        &self,
        dir: ScratchDir,
        primary_conninfo: &str,
        slot: Option<&str>,
    ) -> Result<Cluster> {
        self.standby_in(dir, primary_conninfo, slot)
    }

    /// Sets the transaction-id epoch of this stopped, cleanly shut down cluster to `epoch`:
    /// with the build's own `pg_resetwal -e`, or where it has none (the server-only builds of
    /// 12 and 13), by changing what `pg_resetwal -e` changes in `pg_control` and the last
    /// checkpoint record.
    ///
    /// # Errors
    /// When the server is running, or the change fails.
    pub fn set_xid_epoch(&mut self, epoch: u32) -> Result<()> {
        if self.pid.is_some() {
            return Err(LocalPgError::Unexpected {
                command: "set the transaction-id epoch".into(),
                output: "the server is running".into(),
            });
        }
        if self.bins.dir().join("pg_resetwal").is_file() {
            let mut cmd = self.bins.command("pg_resetwal");
            cmd.arg("-e")
                .arg(epoch.to_string())
                .arg("-D")
                .arg(self.data_dir());
            run(&mut cmd).map(drop)
        } else {
            super::xid_epoch::set_in_place(&self.data_dir(), epoch)
        }
    }

    /// A standby made the way PostgreSQL allows without `pg_basebackup` (which a server-only
    /// build lacks, and which refuses servers newer than itself): a copy of this server's
    /// data directory, taken while it is cleanly stopped, that streams from
    /// `primary_conninfo` with `primary_slot_name = slot` and starts where the copy ends.
    /// This server is stopped (`fast`, a shutdown checkpoint) and started again; the standby
    /// is returned stopped, archiving off.
    ///
    /// # Errors
    /// When this server cannot be stopped or started, or the copy fails.
    pub fn cold_standby(&mut self, primary_conninfo: &str, slot: Option<&str>) -> Result<Cluster> {
        let running = self.pid.is_some();
        if running {
            self.stop(StopMode::Fast)?;
        }
        let copied = self.copy_stopped(primary_conninfo, slot);
        if running {
            self.start()?;
        }
        copied
    }

    /// The copy of this server's data in `dir` made a hot standby of `primary_conninfo` on
    /// `slot`: `standby.signal`, this server's settings without archiving, its own port.
    fn standby_in(
        &self,
        dir: ScratchDir,
        primary_conninfo: &str,
        slot: Option<&str>,
    ) -> Result<Cluster> {
        self.bins
            .write_file(&dir.path().join("data").join("standby.signal"), "")?;
        let mut settings = self.settings.clone();
        settings.retain(|(key, _)| !key.starts_with("archive_"));
        set(&mut settings, "hot_standby", "on");
        set(&mut settings, "primary_conninfo", primary_conninfo);
        if let Some(slot) = slot {
            set(&mut settings, "primary_slot_name", slot);
        }
        let standby = Cluster {
            bins: self.bins.clone(),
            dir,
            port: free_port()?,
            settings,
            pid: None,
        };
        standby.write_settings()?;
        Ok(standby)
    }

    fn copy_stopped(&self, primary_conninfo: &str, slot: Option<&str>) -> Result<Cluster> {
        let parent = self.dir.path().parent().unwrap_or(Path::new("/"));
        let dir = self.bins.scratch_dir(parent, "standby")?;
        let data = dir.path().join("data");
        // `cp -a` keeps the owner, modes and links the server requires of its directory.
        run(Command::new("cp").arg("-a").arg(self.data_dir()).arg(&data))?;
        for leftover in ["postmaster.pid", "postmaster.opts"] {
            let _ = fs::remove_file(data.join(leftover));
        }
        self.standby_in(dir, primary_conninfo, slot)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_contents();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines
                .get(lines.len().saturating_sub(40)..)
                .unwrap_or_default();
            eprintln!("{}:\n{}", self.log_path().display(), tail.join("\n"));
        }
        let Some(pid) = self.pid.take() else { return };
        let _ = send_signal(pid, "QUIT");
        let gone = || Ok(!process_alive(pid));
        if wait_until(Duration::from_secs(10), "postmaster exit", gone).is_err() {
            let _ = send_signal(pid, "KILL");
            let _ = wait_until(Duration::from_secs(5), "postmaster exit", gone);
        }
    }
}

/// The processes whose parent is `pid`, from `/proc`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                // `pid (comm) state ppid …`: comm may hold spaces, so split after the `)`.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_config_values() {
        assert_eq!(conf_line("a", "it's"), "a = 'it''s'\n");
        assert_eq!(conf_line("b", "c:\\x"), "b = 'c:\\\\x'\n");
        assert_eq!(sh_quote("/tmp/it's"), "'/tmp/it'\\''s'");
    }

    #[test]
    fn settings_replace_earlier_values() {
        let mut s = Vec::new();
        set(&mut s, "a", "1");
        set(&mut s, "b", "2");
        set(&mut s, "a", "3");
        assert_eq!(s, [("b".into(), "2".into()), ("a".into(), "3".into())]);
    }
}
