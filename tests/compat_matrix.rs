//! Every PostgreSQL major from 12 to 18 on both sides of the relay, at 16 MB and 1 MB segments:
//! a primary of that major, the relay (given the primary and a second standby of it as its
//! upstream hosts), and a hot standby of the same major streaming from the relay on a relay
//! slot with `hot_standby_feedback`. Standbys are cold copies of the cleanly stopped primary
//! (the server-only builds of 12 and 13 have no `pg_basebackup`, and PostgreSQL 15's refuses
//! newer servers); client tools are the major's own, or PostgreSQL 15's where it has none.
//!
//! For each, under a write load with DDL, `VACUUM` and `pg_switch_wal()`:
//! - the standby behind the relay replays to the primary's end and holds the same data;
//! - the relay's completed segments are byte-identical to the primary's archived copies;
//! - the primary's slot for the relay gets an xmin from the standby's feedback, on a cluster
//!   whose transaction-id epoch is above 0;
//! - the relay answers `IDENTIFY_SYSTEM`, `SHOW`, `TIMELINE_HISTORY`, `READ_REPLICATION_SLOT`
//!   (15 and later) and `CREATE_REPLICATION_SLOT` in both syntaxes as that major does;
//! - `pg_basebackup -X stream` aimed at the relay fares as aimed at the primary (PostgreSQL
//!   15's, and the major's own where its build has one); each copy through the relay holds
//!   the primary's files, verifies, and starts as a standby of the relay that replays to the
//!   primary's end;
//! - after the primary stops and the second standby is promoted, the relay and the standby
//!   behind it follow onto timeline 2, and the relay's history file is byte-identical to the
//!   promoted server's.
//!
//! The other majors' servers come from `scripts/fetch-postgres` (or `PG_BIN_<major>`); under
//! `CI=true` a missing one fails its test. Each step's time goes to the test's output, and a
//! run that passes is recorded under the target directory's `tmp/compat-matrix`, from which
//! `scripts/compat-table` makes the README's compatibility table.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;
use walrelay::testkit::localpg::{
    Cluster, ClusterBuilder, PgBinaries, ScratchDir, StopMode, free_port, require_major,
    require_postgres, wait_until,
};
use walrelay::types::Lsn;

macro_rules! majors {
    ($($major:literal => $sixteen:ident, $one:ident;)*) => {
        $(
            #[test]
            fn $sixteen() {
                matrix($major, 16);
            }

            #[test]
            fn $one() {
                matrix($major, 1);
            }
        )*
    };
}

majors! {
    12 => pg12_16mb_segments, pg12_1mb_segments;
    13 => pg13_16mb_segments, pg13_1mb_segments;
    14 => pg14_16mb_segments, pg14_1mb_segments;
    15 => pg15_16mb_segments, pg15_1mb_segments;
    16 => pg16_16mb_segments, pg16_1mb_segments;
    17 => pg17_16mb_segments, pg17_1mb_segments;
    18 => pg18_16mb_segments, pg18_1mb_segments;
}

const TIMEOUT: Duration = Duration::from_secs(90);

/// The transaction-id epoch every primary starts with.
const EPOCH: u32 = 3;

/// Names the major, the segment size and the step in every failure, with the relay log's
/// first warning (or its last lines when it has none): in the message of a failed step, and
/// after any other failed assertion.
struct Run {
    major: u32,
    segment_mb: u32,
    t0: Instant,
    relay_log: Option<std::path::PathBuf>,
    last_step: std::cell::RefCell<String>,
}

impl Run {
    fn step(&self, what: &str) {
        println!(
            "PG {} at {} MB segments: {what} ({:.1} s)",
            self.major,
            self.segment_mb,
            self.t0.elapsed().as_secs_f64()
        );
        *self.last_step.borrow_mut() = what.to_owned();
    }

    /// The relay log's first warning or error, else its last lines.
    fn relay_says(&self) -> String {
        let Some(path) = &self.relay_log else {
            return "(the relay has not started)".into();
        };
        let log = fs::read_to_string(path).unwrap_or_default();
        if let Some(first) = log
            .lines()
            .find(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        {
            return format!("first relay warning: {first}");
        }
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(5)..];
        format!("no warning in the relay log; it ends:\n{}", tail.join("\n"))
    }

    /// The value, or a panic naming where it failed and why.
    fn ok<T, E: std::fmt::Display>(&self, what: &str, r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| {
            panic!(
                "PG {} at {} MB segments, {what}: {e}\n{}",
                self.major,
                self.segment_mb,
                self.relay_says()
            )
        })
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "PG {} at {} MB segments failed after the step \"{}\"\n{}",
                self.major,
                self.segment_mb,
                self.last_step.borrow(),
                self.relay_says()
            );
        }
    }
}

fn repl(bins: &PgBinaries, conninfo: &str, sql: &str) -> Result<String, String> {
    bins.psql(&format!("{conninfo} replication=1"), sql)
        .map_err(|e| e.to_string())
}

/// What the load leaves, as one checksum: every table the load touches.
const DIGEST: &str = "SELECT md5(string_agg(t, ',' ORDER BY t)) FROM ( \
     SELECT format('%s:%s', id, payload) AS t FROM walrelay_load \
     UNION ALL SELECT format('m%s:%s:%s', k, v, w) FROM matrix_ddl) s";

/// DDL, updates, deletes, `VACUUM` and a segment switch.
fn load(primary: &Cluster, round: u32) -> walrelay::types::Lsn {
    primary.write_load(2000).unwrap();
    primary
        .psql(&format!(
            "CREATE TABLE IF NOT EXISTS matrix_ddl (k int PRIMARY KEY, v text); \
             ALTER TABLE matrix_ddl ADD COLUMN IF NOT EXISTS w int DEFAULT {round}; \
             INSERT INTO matrix_ddl SELECT g + {round} * 1000, md5(g::text) \
               FROM generate_series(1, 500) g; \
             UPDATE walrelay_load SET payload = upper(payload) WHERE id % 7 = {round}; \
             DELETE FROM walrelay_load WHERE id % 11 = {round}; \
             CREATE INDEX IF NOT EXISTS matrix_ddl_v ON matrix_ddl (v)"
        ))
        .unwrap();
    primary.psql("VACUUM walrelay_load").unwrap();
    primary.switch_wal().unwrap();
    primary.write_load(200).unwrap()
}

fn matrix(major: u32, segment_mb: u32) {
    let Some(bins) = require_major(major) else {
        return;
    };
    let mut run = Run {
        major,
        segment_mb,
        t0: Instant::now(),
        relay_log: None,
        last_step: std::cell::RefCell::new("start".into()),
    };
    // A run that fails leaves no record of an earlier one that passed.
    let _ = fs::remove_file(record_path(major, segment_mb));
    assert_eq!(bins.version().unwrap(), major);
    let dir = scratch(&bins, &format!("pg{major}-{segment_mb}"));
    let mut primary = run.ok(
        "initdb",
        ClusterBuilder::new(bins.clone(), dir.path())
            .segment_size_mb(segment_mb)
            .archive(true)
            // What a base backup through the relay sent it, for the comparison with what
            // pg_basebackup sends it directly.
            .config("log_replication_commands", "on")
            .init(),
    );
    // As if the cluster had used more than 2^32 transaction ids: feedback carries the epoch,
    // and the primary ignores an xmin whose epoch is not its own.
    run.ok("set the epoch", primary.set_xid_epoch(EPOCH));
    run.ok("start the primary", primary.start());
    let next_xid = primary
        .psql("SELECT next_xid FROM pg_control_checkpoint()")
        .unwrap();
    assert!(
        next_xid.starts_with(&format!("{EPOCH}:")),
        "PG {major}: next_xid {next_xid}"
    );
    primary.create_physical_slot("direct").unwrap();
    let size = primary.wal_segment_size().unwrap();
    let version = primary.psql("SHOW server_version").unwrap();
    run.step("primary up");

    // Two copies of the stopped primary: one fed by it directly (the failover target), one
    // fed by the relay.
    let relay_port = free_port().unwrap();
    let relay_conninfo = format!("host=127.0.0.1 port={relay_port} user=postgres");
    let direct_feed = format!("{} application_name=direct", primary.conninfo());
    let mut direct = run.ok(
        "copy the direct standby",
        primary.cold_standby(&direct_feed, Some("direct")),
    );
    let behind_feed = format!("{relay_conninfo} application_name=behind");
    let mut behind = run.ok(
        "copy the standby behind the relay",
        primary.cold_standby(&behind_feed, Some("behind")),
    );
    behind.set_config("hot_standby_feedback", "on").unwrap();
    behind
        .set_config("wal_receiver_status_interval", "1s")
        .unwrap();
    run.ok("start the direct standby", direct.start());

    let upstream = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres connect_timeout=2",
        primary.port(),
        direct.port()
    );
    let listen = format!("127.0.0.1:{relay_port}");
    let relay = RelayProcess::start_binary(
        &relay_binary(),
        &upstream,
        &dir.path().join("relay"),
        &[
            "--listen",
            &listen,
            "--reconnect-min",
            "50ms",
            "--reconnect-max",
            "1s",
            "--status-interval",
            "1s",
        ],
    );
    run.relay_log = Some(relay.log.clone());
    let now = primary.current_wal_flush_lsn().unwrap();
    wait_acked(&primary, now, TIMEOUT);
    run.ok(
        "create the relay slot",
        repl(
            &bins,
            &relay_conninfo,
            "CREATE_REPLICATION_SLOT \"behind\" PHYSICAL",
        ),
    );
    run.ok("start the standby behind the relay", behind.start());
    run.step("relay and standbys up");

    let mut end = primary.current_wal_flush_lsn().unwrap();
    for round in 1..=3 {
        end = load(&primary, round);
        // 12 and 13 tell the walsender's client every reload with ParameterStatus, mid-stream.
        primary.psql("SELECT pg_reload_conf()").unwrap();
    }
    run.ok(
        "the standby behind the relay replays to the primary's end",
        wait_until(TIMEOUT, "replay", || Ok(behind.replay_lsn()? >= end)),
    );
    assert_eq!(
        behind.psql(DIGEST).unwrap(),
        primary.psql(DIGEST).unwrap(),
        "PG {major}: the standby's data differs from the primary's"
    );
    let log = relay.log_contents();
    assert!(
        !log.contains("upstream connection ended"),
        "PG {major}: the relay lost its upstream stream:\n{log}"
    );
    run.step("standby caught up with the same data");

    run.ok(
        "the relay's slot on the primary gets the standby's xmin",
        wait_until(TIMEOUT, "feedback xmin", || {
            Ok(!primary
                .psql("SELECT xmin FROM pg_replication_slots WHERE slot_name = 'walrelay'")?
                .is_empty())
        }),
    );
    run.step("feedback reached the primary");

    let last = primary.switch_wal().unwrap();
    run.ok("archive", primary.wait_archived(last, TIMEOUT));
    let flushed = primary.current_wal_flush_lsn().unwrap();
    wait_acked(&primary, flushed, TIMEOUT);
    let compared = assert_same_segments(&relay.wal_dir(), &primary.archive_dir(), size);
    assert!(
        compared >= 3,
        "PG {major}: only {compared} segments compared"
    );
    run.step(&format!("{compared} segments byte-identical"));

    commands_answer_as_the_primary(&run, &bins, &primary, &relay_conninfo);
    receivewal_fares_as_against_the_primary(&run, &bins, &primary, &relay_conninfo, dir.path());
    base_backups_fare_as_against_the_primary(
        &run,
        &bins,
        &primary,
        &relay,
        &relay_conninfo,
        dir.path(),
    );
    run.step("base backups through the relay");

    another_majors_standby_is_refused_as_by_the_primary(
        &run,
        &primary,
        &relay_conninfo,
        dir.path(),
    );
    run.step("commands, pg_receivewal 15 and another major's standby answered as by the primary");

    // The failover: the primary stops, the direct standby is promoted, the relay moves on.
    let before = primary.current_wal_flush_lsn().unwrap();
    run.ok(
        "the direct standby catches up",
        wait_until(TIMEOUT, "direct replay", || {
            Ok(direct.replay_lsn()? >= before)
        }),
    );
    run.ok("stop the primary", primary.stop(StopMode::Fast));
    run.ok("promote", direct.psql("SELECT pg_promote()"));
    run.ok(
        "the promotion ends",
        wait_until(TIMEOUT, "promotion", || {
            Ok(direct.psql("SELECT pg_is_in_recovery()")? == "f")
        }),
    );
    let end = load(&direct, 4);
    run.ok(
        "the standby behind the relay follows onto timeline 2",
        wait_until(TIMEOUT, "replay on timeline 2", || {
            Ok(behind.replay_lsn()? >= end)
        }),
    );
    assert_eq!(
        behind
            .psql("SELECT received_tli FROM pg_stat_wal_receiver")
            .unwrap(),
        "2"
    );
    assert_eq!(behind.psql(DIGEST).unwrap(), direct.psql(DIGEST).unwrap());
    let history = run.ok(
        "the relay stores the history file",
        fs::read(relay.wal_dir().join("00000002.history")),
    );
    assert_eq!(
        history,
        fs::read(direct.data_dir().join("pg_wal/00000002.history")).unwrap(),
        "PG {major}: the history file differs from the promoted server's"
    );
    let ours = repl(&bins, &relay_conninfo, "TIMELINE_HISTORY 2").unwrap();
    let theirs = repl(&bins, &direct.conninfo(), "TIMELINE_HISTORY 2").unwrap();
    assert_eq!(ours, theirs, "PG {major}: TIMELINE_HISTORY 2");
    run.step("followed the promotion onto timeline 2");
    record(major, segment_mb, &version, run.t0.elapsed());
}

/// The relay binary: the release build in `WALRELAY_BIN` (what `scripts/test` builds and CI
/// runs), else this test's own build.
fn relay_binary() -> std::path::PathBuf {
    match std::env::var_os("WALRELAY_BIN") {
        Some(bin) => bin.into(),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs the matrix against the release build: set WALRELAY_BIN (scripts/test does)"
            );
            env!("CARGO_BIN_EXE_walrelay").into()
        }
    }
}

/// Where passed runs are recorded, for `scripts/compat-table`.
fn results_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("compat-matrix")
}

/// One line per passed run: major, segment size, server version, seconds.
fn record(major: u32, segment_mb: u32, version: &str, took: Duration) {
    fs::create_dir_all(results_dir()).unwrap();
    let line = format!(
        "{major}\t{segment_mb}\t{version}\t{:.1}\n",
        took.as_secs_f64()
    );
    fs::write(record_path(major, segment_mb), line).unwrap();
}

fn record_path(major: u32, segment_mb: u32) -> std::path::PathBuf {
    results_dir().join(format!("pg{major}-{segment_mb}mb"))
}

/// The commands a client of this major sends, answered by the relay as by the primary: the
/// same values (system id, segment size, timeline) and the same column layouts.
fn commands_answer_as_the_primary(run: &Run, bins: &PgBinaries, primary: &Cluster, relay: &str) {
    let major = run.major;
    let both = |sql: &str| (repl(bins, relay, sql), repl(bins, &primary.conninfo(), sql));
    let (ours, theirs) = both("IDENTIFY_SYSTEM");
    let (ours, theirs) = (ours.unwrap(), theirs.unwrap());
    let fields = |s: &str| s.split('|').map(str::to_owned).collect::<Vec<_>>();
    let (o, t) = (fields(&ours), fields(&theirs));
    assert_eq!(o.len(), t.len(), "PG {major}: IDENTIFY_SYSTEM columns");
    assert_eq!((&o[0], &o[1], &o[3]), (&t[0], &t[1], &t[3]), "PG {major}");
    for setting in ["wal_segment_size", "data_directory_mode"] {
        let (ours, theirs) = both(&format!("SHOW {setting}"));
        assert_eq!(ours.unwrap(), theirs.unwrap(), "PG {major}: SHOW {setting}");
    }
    let version = repl(bins, relay, "SHOW server_version").unwrap();
    assert!(
        version.starts_with(&format!("{major}.")),
        "PG {major}: the relay reports server_version {version}"
    );
    // CREATE_REPLICATION_SLOT: the syntax of before 15 everywhere, the parenthesized one
    // where the major has it; the same columns.
    let old = |name: &str| format!("CREATE_REPLICATION_SLOT {name} PHYSICAL RESERVE_WAL");
    let (ours, theirs) = (
        repl(bins, relay, &old("matrix_old")).unwrap(),
        repl(bins, &primary.conninfo(), &old("matrix_old")).unwrap(),
    );
    assert_eq!(
        ours.split('|').count(),
        theirs.split('|').count(),
        "PG {major}: CREATE_REPLICATION_SLOT columns: {ours} against {theirs}"
    );
    assert!(ours.starts_with("matrix_old|") && theirs.starts_with("matrix_old|"));
    let new = "CREATE_REPLICATION_SLOT matrix_new PHYSICAL (RESERVE_WAL)";
    // What this major refuses, the relay refuses with the same message: commands it does
    // not know (as SQL), syntax it does not have, options it does not know, and failover
    // options on a physical slot.
    let mut refused = vec![
        "CREATE_REPLICATION_SLOT matrix_failover PHYSICAL (FAILOVER)",
        "ALTER_REPLICATION_SLOT matrix_old (FAILOVER)",
    ];
    if major < 15 {
        refused.extend([new, "READ_REPLICATION_SLOT behind"]);
    }
    if major < 17 {
        refused.push("UPLOAD_MANIFEST");
    }
    for sql in refused {
        let (ours, theirs) = both(sql);
        let (ours, theirs) = match (ours, theirs) {
            (Err(o), Err(t)) => (o, t),
            (o, t) => panic!("PG {major}: {sql}: the relay {o:?}, the primary {t:?}"),
        };
        let message = |e: &str| {
            e.lines()
                .find_map(|l| l.split_once("ERROR:  "))
                .map(|(_, m)| m.to_owned())
                .unwrap_or_else(|| e.to_owned())
        };
        assert_eq!(message(&ours), message(&theirs), "PG {major}: {sql}");
    }
    if major >= 15 {
        let ours = repl(bins, relay, new).unwrap();
        assert!(ours.starts_with("matrix_new|"), "{ours}");
        repl(bins, &primary.conninfo(), new).unwrap();
        let (ours, theirs) = both("READ_REPLICATION_SLOT nosuch");
        assert_eq!(
            ours.unwrap(),
            theirs.unwrap(),
            "PG {major}: READ_REPLICATION_SLOT of a missing slot"
        );
        let ours = repl(bins, relay, "READ_REPLICATION_SLOT behind").unwrap();
        assert!(ours.starts_with("physical|"), "PG {major}: {ours}");
        for conninfo in [relay, primary.conninfo().as_str()] {
            repl(bins, conninfo, "DROP_REPLICATION_SLOT matrix_new").unwrap();
        }
    }
    for conninfo in [relay, primary.conninfo().as_str()] {
        repl(bins, conninfo, "DROP_REPLICATION_SLOT matrix_old").unwrap();
    }
}

/// pg_receivewal of PostgreSQL 15 against the relay fares as against the primary: it streams
/// from majors up to its own, and refuses newer ones itself, with the same message, because the
/// relay reports the upstream's `server_version`.
fn receivewal_fares_as_against_the_primary(
    run: &Run,
    bins: &PgBinaries,
    primary: &Cluster,
    relay: &str,
    scratch: &std::path::Path,
) {
    let major = run.major;
    let fifteen = require_postgres().unwrap();
    assert_eq!(
        fifteen.version().unwrap(),
        15,
        "the installed client tools are 15's"
    );
    // pg_receivewal stops once it has received past --endpos; the byte before the flush end
    // is one it gets at once, with no need for more WAL to come.
    let end = walrelay::types::Lsn(primary.current_wal_flush_lsn().unwrap().0 - 1);
    let attempt = |label: &str, conninfo: &str| {
        let dir = bins.scratch_dir(scratch, label).unwrap();
        let mut cmd = fifteen.command("pg_receivewal");
        cmd.arg("-D").arg(dir.path()).args([
            "-d",
            conninfo,
            "--no-loop",
            &format!("--endpos={end}"),
        ]);

        walrelay::testkit::localpg::run(&mut cmd).map_err(|e| {
            let text = e.to_string();
            text.lines()
                .find_map(|l| l.split_once("pg_receivewal: error: "))
                .map(|(_, m)| m.to_owned())
                .unwrap_or(text)
        })
    };
    let ours = attempt("recv-relay", relay);
    let theirs = attempt("recv-primary", &primary.conninfo());
    match (&ours, &theirs) {
        (Ok(_), Ok(_)) => assert!(major <= 15, "PG {major}: pg_receivewal 15 streamed from it"),
        (Err(o), Err(t)) => assert_eq!(o, t, "PG {major}: pg_receivewal 15's refusal"),
        _ => panic!(
            "PG {major}: pg_receivewal 15 against the relay {ours:?}, against the primary {theirs:?}"
        ),
    }
}

/// A standby of another major (a cluster of its own: a standby's data directory is of one
/// major) is refused as the primary refuses it: its walreceiver compares the system
/// identifier first, and the relay reports the primary's. Its log says the same at the relay
/// as at the primary.
fn another_majors_standby_is_refused_as_by_the_primary(
    run: &Run,
    primary: &Cluster,
    relay: &str,
    scratch: &std::path::Path,
) {
    let major = run.major;
    let other = if major == 15 {
        require_major(16).unwrap()
    } else {
        require_postgres().unwrap()
    };
    let mut stranger = run.ok(
        "initdb of another major",
        ClusterBuilder::new(other, scratch).init(),
    );
    let mut refusal = |conninfo: &str| {
        let mut stranger = stranger.cold_standby(conninfo, None).unwrap();
        stranger.start().unwrap();
        let mut said = String::new();
        run.ok(
            "a standby of another major is refused",
            wait_until(TIMEOUT, "the walreceiver's refusal", || {
                let log = stranger.log_contents();
                let mut lines = log.lines().skip_while(|l| !l.contains("system identifier"));
                let (Some(fatal), Some(detail)) = (lines.next(), lines.next()) else {
                    return Ok(false);
                };
                let from = |l: &str, key: &str| l.find(key).map(|i| l[i..].to_owned());
                said = format!(
                    "{}\n{}",
                    from(fatal, "FATAL:").unwrap_or_default(),
                    from(detail, "DETAIL:").unwrap_or_default()
                );
                Ok(true)
            }),
        );
        said
    };
    let ours = refusal(relay);
    let theirs = refusal(&primary.conninfo());
    assert!(
        ours.contains("database system identifier differs"),
        "PG {major}: {ours}"
    );
    assert_eq!(ours, theirs, "PG {major}: a standby of another major");
}

/// The first `TOOL: error: …` line of a client tool's failure, else the whole text.
fn tool_error(text: &str, tool: &str) -> String {
    let prefix = format!("{tool}: error: ");
    text.lines()
        .find_map(|l| l.split_once(prefix.as_str()))
        .map(|(_, m)| m.to_owned())
        .unwrap_or_else(|| text.to_owned())
}

/// A copy taken by `pg_basebackup`, with the primary's flush position just before and just
/// after it.
struct Copy {
    dir: ScratchDir,
    before: Lsn,
    after: Lsn,
}

impl Copy {
    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }
}

/// `pg_basebackup -X stream -c fast` as the matrix takes it: SHA-256 manifest checksums from
/// 13 on, no manifest for 12 (which makes none).
fn basebackup_args(major: u32) -> [&'static str; 6] {
    let manifest = if major >= 13 {
        "--manifest-checksums=SHA256"
    } else {
        "--no-manifest"
    };
    ["-X", "stream", "-c", "fast", "--no-sync", manifest]
}

/// The text of the last `BASE_BACKUP` the primary logged as received from a walsender whose
/// log prefix ends with `who` (`[PID]` or `[PID] APP`).
fn received_backup_command(primary: &Cluster, who: &str) -> Option<String> {
    let needle = format!("{who} LOG:  received replication command: BASE_BACKUP");
    primary
        .log_contents()
        .lines()
        .rev()
        .find(|l| l.contains(&needle))
        .and_then(|l| l.split_once("received replication command: "))
        .map(|(_, command)| command.to_owned())
}

/// pg_basebackup against the relay fares as against the primary. PostgreSQL 15's client
/// sends the keyword syntax to 12, 13 and 14 (and reads one COPY per tablespace) and the
/// parenthesised one to 15; it refuses newer servers itself, with the same message through
/// the relay as directly, since the relay reports the upstream's `server_version`. Where the
/// major's build has its own pg_basebackup (14, 16, 17, 18), that one too goes through the
/// relay. Every copy through the relay:
/// - is the answer to the client's own command, which reached the primary unchanged (the
///   primary logs it; for 15's client, the same text as when it was aimed at the primary),
///   and the relay logs it as relayed;
/// - starts at a position the primary had during the backup, in the WAL file the primary
///   names for it, and holds the load's table files;
/// - passes `pg_verifybackup` (the major's own where it has one; 15's without WAL parsing
///   for 13, whose WAL 15's `pg_waldump` cannot read), or for 12, which makes no manifest,
///   has none;
///
/// and the first one starts as a hot standby of this major, streaming from the relay on a
/// relay slot made beforehand, and replays to the primary's end with the same data: its WAL
/// came from the relay's store through `-X stream`.
fn base_backups_fare_as_against_the_primary(
    run: &Run,
    bins: &PgBinaries,
    primary: &Cluster,
    relay: &RelayProcess,
    relay_conninfo: &str,
    scratch: &Path,
) {
    let major = run.major;
    let fifteen = require_postgres().unwrap();
    run.ok(
        "create the copy's relay slot",
        repl(
            bins,
            relay_conninfo,
            "CREATE_REPLICATION_SLOT matrix_copy PHYSICAL RESERVE_WAL",
        ),
    );
    let args = basebackup_args(major);
    let take = |client: &PgBinaries, label: &str, conninfo: &str| -> Result<Copy, String> {
        let dir = client.scratch_dir(scratch, label).unwrap();
        let before = primary.current_wal_flush_lsn().unwrap();
        let mut cmd = client.command("pg_basebackup");
        cmd.arg("-D")
            .arg(dir.path().join("data"))
            .args(["-d", conninfo])
            .args(args);
        walrelay::testkit::localpg::run(&mut cmd)
            .map_err(|e| tool_error(&e.to_string(), "pg_basebackup"))?;
        let after = primary.current_wal_flush_lsn().unwrap();
        Ok(Copy { dir, before, after })
    };
    let relayed_before = relay.log_contents().matches("BASE_BACKUP relayed").count();
    let mut copies = Vec::new();

    // PostgreSQL 15's client, aimed at the primary first, then at the relay.
    let direct = take(&fifteen, "bb15-direct", &primary.conninfo());
    let direct_command = direct.is_ok().then(|| {
        received_backup_command(primary, "] pg_basebackup")
            .unwrap_or_else(|| panic!("PG {major}: the primary logged no BASE_BACKUP"))
    });
    let through = take(&fifteen, "bb15-relay", relay_conninfo);
    match (&direct, through) {
        (Ok(_), Ok(copy)) => {
            assert!(major <= 15, "PG {major}: pg_basebackup 15 took a copy");
            copies.push(("pg_basebackup 15", copy, direct_command));
        }
        (Err(theirs), Err(ours)) => {
            assert_eq!(&ours, theirs, "PG {major}: pg_basebackup 15's failure");
            assert!(
                theirs.starts_with("incompatible server version"),
                "PG {major}: pg_basebackup 15 aimed at the primary: {theirs}"
            );
        }
        (direct, through) => panic!(
            "PG {major}: pg_basebackup 15 aimed at the primary {:?}, at the relay {:?}\n{}",
            direct.as_ref().map(|_| "made a copy"),
            through.as_ref().map(|_| "made a copy"),
            run.relay_says()
        ),
    }
    drop(direct);
    run.step("pg_basebackup 15 aimed at the primary, then at the relay");

    // The major's own client, where its build has one.
    if major != 15 && bins.dir().join("pg_basebackup").is_file() {
        let copy = run.ok(
            "the major's own pg_basebackup through the relay",
            take(bins, "bb-own-relay", relay_conninfo),
        );
        copies.push(("its own pg_basebackup", copy, None));
        run.step("its own pg_basebackup aimed at the relay");
    }
    assert!(!copies.is_empty(), "PG {major}: no copy through the relay");

    for (n, (client, copy, direct_command)) in copies.iter().enumerate() {
        let what = format!("PG {major}, {client} through the relay");
        // The relay logs the backup once it has left the upstream, just after the answer.
        let count = relayed_before + n + 1;
        run.ok(
            &format!("{what}: the relay logs the backup"),
            wait_until(Duration::from_secs(5), "BASE_BACKUP relayed", || {
                Ok(relay.log_contents().matches("BASE_BACKUP relayed").count() >= count)
            }),
        );
        let log = relay.log_contents();
        let line = log
            .lines()
            .filter(|l| l.contains("BASE_BACKUP relayed"))
            .nth(count - 1)
            .unwrap();
        let pid: u32 = line
            .split_once("BASE_BACKUP relayed pid=")
            .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{what}: no upstream pid in {line:?}"));
        let command = received_backup_command(primary, &format!("[{pid}] walrelay_basebackup"))
            .unwrap_or_else(|| panic!("{what}: the primary logged no BASE_BACKUP from pid {pid}"));
        // The parenthesised syntax from 15 on, the keywords before.
        let second = command.split_whitespace().nth(1);
        let syntax = if major >= 15 { "(" } else { "LABEL" };
        assert_eq!(second, Some(syntax), "{what}: {command}");
        assert_eq!(
            command.contains("MANIFEST_CHECKSUMS 'SHA256'"),
            major >= 13,
            "{what}: {command}"
        );
        if let Some(direct) = direct_command {
            assert_eq!(&command, direct, "{what}: the command the primary received");
        }
        check_copy(&what, bins, primary, copy);
    }
    run.step("the copies checked");

    // The first copy as a standby of the relay.
    let (client, copy, _) = copies.swap_remove(0);
    let end_of_copy = copy.after;
    let feed = format!("{relay_conninfo} application_name=matrix_copy");
    let mut standby = run.ok(
        "configure the copy as a standby",
        primary.standby_from_copy(copy.dir, &feed, Some("matrix_copy")),
    );
    run.ok("start the copy", standby.start());
    run.step("the copy started");
    let end = primary.write_load(500).unwrap();
    assert!(end > end_of_copy);
    run.ok(
        &format!("the copy by {client} replays to the primary's end"),
        wait_until(TIMEOUT, "the copy's replay", || {
            Ok(standby.replay_lsn()? >= end)
        }),
    );
    assert_eq!(
        standby.psql(DIGEST).unwrap(),
        primary.psql(DIGEST).unwrap(),
        "PG {major}: the copy's data differs from the primary's"
    );
    run.ok("stop the copy", standby.stop(StopMode::Fast));
    drop(standby);
    run.ok(
        "drop the copy's relay slot",
        wait_until(TIMEOUT, "the slot dropped", || {
            Ok(repl(bins, relay_conninfo, "DROP_REPLICATION_SLOT matrix_copy").is_ok())
        }),
    );
}

/// One copy through the relay, checked without starting it: its backup label, its files,
/// its manifest.
fn check_copy(what: &str, bins: &PgBinaries, primary: &Cluster, copy: &Copy) {
    let major = bins.version().unwrap();
    let data = copy.data();
    let label = fs::read_to_string(data.join("backup_label")).unwrap();
    let field = |name: &str| {
        label
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{what}: no {name} in backup_label:\n{label}"))
            .trim()
            .to_owned()
    };
    // START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
    let location = field("START WAL LOCATION:");
    let (lsn, file) = location
        .split_once(" (file ")
        .unwrap_or_else(|| panic!("{what}: {location}"));
    let start: Lsn = lsn.parse().unwrap();
    let file = file.trim_end_matches(')');
    assert!(
        copy.before <= start && start <= copy.after,
        "{what}: the copy starts at {start}, the primary was at {} before and {} after",
        copy.before,
        copy.after
    );
    let theirs = primary
        .psql(&format!("SELECT pg_walfile_name('{start}')"))
        .unwrap();
    assert_eq!(file, theirs, "{what}: the start's WAL file");
    assert_eq!(field("START TIMELINE:"), "1", "{what}");
    assert_eq!(field("LABEL:"), "pg_basebackup base backup", "{what}");
    assert!(
        data.join("pg_wal").join(file).is_file(),
        "{what}: the start's WAL file is not in the copy's pg_wal"
    );
    for table in ["walrelay_load", "matrix_ddl"] {
        let path = primary
            .psql(&format!("SELECT pg_relation_filepath('{table}')"))
            .unwrap();
        let len = fs::metadata(data.join(&path)).map_or(0, |m| m.len());
        assert!(len > 0, "{what}: {table}'s file {path} is missing or empty");
    }
    let manifest = data.join("backup_manifest");
    if major < 13 {
        assert!(!manifest.exists(), "{what}: a manifest from PostgreSQL 12");
        return;
    }
    // 15's pg_waldump reads no older WAL: where the major has no pg_verifybackup of its own,
    // 15's checks everything but the WAL, which the standby made of the copy replays.
    let own = bins.dir().join("pg_verifybackup").is_file();
    let mut verify = bins.command("pg_verifybackup");
    if !own && major != 15 {
        verify.arg("--no-parse-wal");
    }
    verify.arg(&data);
    let out = walrelay::testkit::localpg::run(&mut verify)
        .unwrap_or_else(|e| panic!("{what}: pg_verifybackup: {e}"));
    assert!(
        out.contains("backup successfully verified"),
        "{what}: {out}"
    );
}
