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
use std::time::{Duration, Instant};

use support::*;
use walrelay::testkit::localpg::{
    Cluster, ClusterBuilder, PgBinaries, StopMode, free_port, require_major, require_postgres,
    wait_until,
};

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
