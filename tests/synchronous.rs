//! Synchronous acknowledgements through the relay, against real PostgreSQL 15: the primary
//! lists the relay in `synchronous_standby_names`, the relay lists its three standbys with
//! `--synchronous-standby-names 'ANY 2 (s1, s2, s3)'`.
//!
//! - A7: with no synchronous standbys of its own the relay is the primary's synchronous
//!   standby: commits go on while it is attached (the primary sees only it, as `sync`, its
//!   flush never past what the relay stored), wait while it is stopped, go on when it is back.
//! - Commits wait while fewer than two standbys stream, and go on when one returns.
//! - Rounds of single-row commits with `synchronous_commit` `on` and `remote_apply`, each
//!   beside pgbench (`-N`, 2 clients) in the same mode, each with a `kill -9` of the relay or
//!   of a standby at a seeded random moment. The round ends by freezing the relay (SIGSTOP),
//!   so no more WAL reaches the standbys and nothing more is acknowledged, then stopping the
//!   client; once the standbys have applied what they hold, every commit the client saw
//!   acknowledged is visible on at least two of the three, and pgbench has finished cleanly.
//! - `--synchronous-standby-names` reloads: a name no standby has makes commits wait, a value
//!   that does not parse is refused and the running one kept, the right name releases them.
//!
//! Tunable: `WALRELAY_SYNC_ROUNDS` (4), `WALRELAY_SYNC_SEED`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;
use walrelay::testkit::localpg::{Cluster, PgBinaries, free_port, require_postgres, wait_until};

const NAMES: [&str; 3] = ["s1", "s2", "s3"];

struct Topology {
    primary: Cluster,
    relay: RelayProcess,
    relay_dir: std::path::PathBuf,
    upstream: String,
    listen: String,
    http: String,
    standbys: Vec<Cluster>,
}

impl Topology {
    fn start(dir: &Path, bins: &PgBinaries) -> Topology {
        let mut primary = archiving_primary(bins, dir, 1);
        primary.pgbench(&["-i", "-s", "1", "-q"]).unwrap();
        primary
            .set_config("synchronous_standby_names", "walrelay")
            .unwrap();
        primary.psql("SELECT pg_reload_conf()").unwrap();
        let relay_port = free_port().unwrap();
        let listen = format!("127.0.0.1:{relay_port}");
        let upstream = primary.conninfo();
        let relay_dir = dir.join("relay");
        let http = format!("127.0.0.1:{}", free_port().unwrap());
        let relay = start_relay(&upstream, &relay_dir, &listen, &http);
        wait_listening(relay_port, Duration::from_secs(30));
        let relay_conninfo = format!("host=127.0.0.1 port={relay_port} user=postgres");
        // The primary's commits wait for the relay from here on; the relay needs standbys.
        let mut standbys = Vec::new();
        for name in NAMES {
            bins.psql(
                &format!("{relay_conninfo} replication=1"),
                &format!("CREATE_REPLICATION_SLOT \"{name}\" PHYSICAL RESERVE_WAL"),
            )
            .unwrap();
        }
        for name in NAMES {
            let mut s = primary
                .basebackup_standby(
                    &format!("{relay_conninfo} application_name={name}"),
                    Some(name),
                )
                .unwrap();
            s.start().unwrap();
            standbys.push(s);
        }
        primary
            .psql("CREATE TABLE acked (id bigint PRIMARY KEY)")
            .unwrap();
        Topology {
            primary,
            relay,
            relay_dir,
            upstream,
            listen,
            http,
            standbys,
        }
    }

    fn restart_relay(&mut self) {
        self.relay.kill9();
        self.relay = start_relay(&self.upstream, &self.relay_dir, &self.listen, &self.http);
    }

    /// The relay's `walrelay_synchronous_standbys_missing`.
    fn missing(&self) -> String {
        let port = self.http.rsplit_once(':').unwrap().1.parse().unwrap();
        let (_, _, body) = http_get(port, "/metrics", &[]);
        body.lines()
            .find_map(|l| l.strip_prefix("walrelay_synchronous_standbys_missing "))
            .unwrap_or_else(|| panic!("no synchronous metric in {body}"))
            .to_owned()
    }
}

fn start_relay(upstream: &str, dir: &Path, listen: &str, http: &str) -> RelayProcess {
    RelayProcess::start(
        upstream,
        dir,
        &[
            "--listen",
            listen,
            "--http-listen",
            http,
            "--synchronous-standby-names",
            "ANY 2 (s1, s2, s3)",
        ],
    )
}

/// pgbench (`-N`, 2 clients, 3 s) with `synchronous_commit = mode`, in a thread: its output.
fn pgbench(
    bins: &PgBinaries,
    primary: &Cluster,
    mode: &str,
) -> std::thread::JoinHandle<std::process::Output> {
    let mut cmd = bins.command("pgbench");
    let port = primary.port().to_string();
    cmd.args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
        .args(["-N", "-c", "2", "-T", "3", "postgres"])
        .env("PGOPTIONS", format!("-c synchronous_commit={mode}"));
    std::thread::spawn(move || cmd.output().unwrap())
}

/// A client committing one row at a time in one session; the ids it prints are the commits
/// it saw acknowledged.
struct Committer {
    child: std::process::Child,
    acked: mpsc::Receiver<i64>,
}

impl Committer {
    fn start(bins: &PgBinaries, primary: &Cluster, mode: &str, first: i64) -> Committer {
        let mut cmd = bins.command("psql");
        cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(primary.conninfo())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "SET synchronous_commit = {mode};").unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, acked) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(id) = line.trim().parse::<i64>() {
                    let _ = tx.send(id);
                }
            }
        });
        std::thread::spawn(move || {
            for id in first.. {
                let sql = format!("INSERT INTO acked VALUES ({id}) RETURNING id;");
                if writeln!(stdin, "{sql}").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
                if id > first + 1_000_000 {
                    break;
                }
            }
        });
        Committer { child, acked }
    }

    /// Stops the client at once and returns what it saw acknowledged.
    fn stop(mut self) -> BTreeSet<i64> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.acked.try_iter().collect()
    }
}

fn visible(standby: &Cluster, ids: &BTreeSet<i64>) -> usize {
    let (lo, hi) = (ids.first().unwrap(), ids.last().unwrap());
    let rows = standby
        .psql(&format!(
            "SELECT id FROM acked WHERE id BETWEEN {lo} AND {hi}"
        ))
        .unwrap();
    let have: BTreeSet<i64> = rows.lines().filter_map(|l| l.parse().ok()).collect();
    ids.intersection(&have).count()
}

#[test]
fn commits_wait_for_two_of_three_standbys_behind_the_relay() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "sync");
    let mut t = Topology::start(dir.path(), &bins);
    for s in &t.standbys {
        wait_until(Duration::from_secs(60), "standby streaming", || {
            Ok(s.psql("SELECT status FROM pg_stat_wal_receiver")? == "streaming")
        })
        .unwrap();
    }
    assert_eq!(
        t.primary
            .psql("SELECT sync_state FROM pg_stat_replication WHERE application_name = 'walrelay'")
            .unwrap(),
        "sync"
    );
    let count = |c: &Cluster| c.psql("SELECT count(*) FROM pg_stat_replication").unwrap();
    assert_eq!(
        count(&t.primary),
        "1",
        "only the relay streams from the primary"
    );

    // Two standbys gone: a commit waits; one back: it returns.
    t.standbys[1].kill9().unwrap();
    t.standbys[2].kill9().unwrap();
    let (tx, rx) = mpsc::channel();
    let conninfo = t.primary.conninfo();
    let bins2 = bins.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        let r = bins2.psql(&conninfo, "INSERT INTO acked VALUES (-1)");
        let _ = tx.send((r, started.elapsed()));
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(4)).is_err(),
        "a commit returned with one synchronous standby of two"
    );
    let log = t.relay.log_contents();
    assert!(
        log.contains("too few synchronous standbys are streaming") && log.contains("required=2"),
        "{log}"
    );
    assert_eq!(t.missing(), "1");
    t.standbys[1].start().unwrap();
    let (r, _) = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the commit returns once two standbys stream");
    r.unwrap();
    assert_eq!(t.missing(), "0");
    t.standbys[2].start().unwrap();

    // Rounds with a crash each; after each, what was acknowledged is on two standbys.
    let rounds = env_u64("WALRELAY_SYNC_ROUNDS", 4);
    let mut rng = TestRng::new(seed_from_env("WALRELAY_SYNC_SEED"));
    let mut next_id = 1;
    for round in 0..rounds {
        let mode = if round % 2 == 0 { "on" } else { "remote_apply" };
        for s in &t.standbys {
            wait_until(Duration::from_secs(60), "standby streaming", || {
                Ok(s.psql("SELECT status FROM pg_stat_wal_receiver")? == "streaming")
            })
            .unwrap();
        }
        let committer = Committer::start(&bins, &t.primary, mode, next_id);
        let load = pgbench(&bins, &t.primary, mode);
        std::thread::sleep(Duration::from_millis(rng.between(500, 2000)));
        let victim = rng.between(0, 4);
        // Every other round a killed standby stays down until the check: the two others
        // must then hold everything acknowledged since.
        let mut down = None;
        let what = if victim == 3 {
            t.restart_relay();
            "relay".to_owned()
        } else {
            let i = victim as usize;
            t.standbys[i].kill9().unwrap();
            if round % 2 == 0 {
                std::thread::sleep(Duration::from_millis(rng.between(100, 1000)));
                t.standbys[i].start().unwrap();
                NAMES[i].to_owned()
            } else {
                down = Some(i);
                format!("{} (down until the check)", NAMES[i])
            }
        };
        std::thread::sleep(Duration::from_millis(rng.between(1000, 2500)));
        // Freeze the relay first: no more WAL reaches the standbys and no more is
        // acknowledged, so what the client saw acknowledged must already be on them.
        t.relay.signal("STOP");
        let acked = committer.stop();
        assert!(
            !acked.is_empty(),
            "round {round} ({mode}, {what}): nothing committed"
        );
        next_id = acked.last().unwrap() + 1_000;
        // Let the standbys apply what they hold.
        std::thread::sleep(Duration::from_secs(2));
        let mut holding = 0;
        for (i, s) in t.standbys.iter().enumerate() {
            if down != Some(i) && visible(s, &acked) == acked.len() {
                holding += 1;
            }
        }
        t.relay.signal("CONT");
        if let Some(i) = down {
            t.standbys[i].start().unwrap();
        }
        let bench = load.join().unwrap();
        let out = String::from_utf8_lossy(&bench.stdout);
        assert!(
            bench.status.success() && out.contains("number of transactions actually processed"),
            "round {round}: pgbench failed: {out}{}",
            String::from_utf8_lossy(&bench.stderr)
        );
        eprintln!(
            "round {round}: synchronous_commit={mode}, killed {what}, {} commits acknowledged, on {holding} standbys",
            acked.len()
        );
        assert!(
            holding >= 2,
            "round {round} ({mode}, killed {what}): acknowledged commits on only {holding} standbys"
        );
    }
}

/// A commit on `primary` in a thread: its outcome arrives on the channel when it returns.
fn commit_in_background(bins: &PgBinaries, primary: &Cluster, id: i64) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel();
    let (bins, conninfo) = (bins.clone(), primary.conninfo());
    std::thread::spawn(move || {
        bins.psql(&conninfo, &format!("INSERT INTO acked VALUES ({id})"))
            .unwrap();
        let _ = tx.send(());
    });
    rx
}

#[test]
fn synchronous_standby_names_reload() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "sync-reload");
    let mut primary = archiving_primary(&bins, dir.path(), 1);
    primary
        .set_config("synchronous_standby_names", "walrelay")
        .unwrap();
    primary.psql("SELECT pg_reload_conf()").unwrap();
    let relay_port = free_port().unwrap();
    let data_dir = dir.path().join("relay");
    let config = dir.path().join("walrelay.toml");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "upstream = \"{}\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{relay_port}\"\n\
                 status_interval = \"1s\"\n{extra}",
                primary.conninfo(),
                data_dir.display()
            ),
        )
        .unwrap();
    };
    write("");
    let relay = RelayProcess::start_run(
        Path::new(env!("CARGO_BIN_EXE_walrelay")),
        &data_dir,
        &["--config", config.to_str().unwrap()],
    );
    wait_listening(relay_port, Duration::from_secs(30));
    let relay_conninfo = format!("host=127.0.0.1 port={relay_port} user=postgres");
    let mut s1 = primary
        .basebackup_standby(&format!("{relay_conninfo} application_name=s1"), None)
        .unwrap();
    s1.start().unwrap();
    // Without the setting the relay acknowledges what it made durable.
    primary
        .psql("CREATE TABLE acked (id bigint PRIMARY KEY)")
        .unwrap();
    let wait = Duration::from_secs(30);
    commit_in_background(&bins, &primary, 1)
        .recv_timeout(wait)
        .unwrap();

    // A name no standby has: commits wait.
    let mark = relay.log_len();
    write("synchronous_standby_names = \"FIRST 1 (nobody)\"\n");
    relay.signal("HUP");
    relay.wait_log(
        mark,
        "setting reloaded setting=\"synchronous_standby_names\"",
        wait,
    );
    let blocked = commit_in_background(&bins, &primary, 2);
    assert!(blocked.recv_timeout(Duration::from_secs(3)).is_err());

    // A value that does not parse is refused and the running one stays.
    let mark = relay.log_len();
    write("synchronous_standby_names = \"FIRST 0 (s1)\"\n");
    relay.signal("HUP");
    relay.wait_log(
        mark,
        "number of synchronous standbys (0) must be greater than zero",
        wait,
    );
    assert!(blocked.recv_timeout(Duration::from_secs(2)).is_err());

    // The standby's name: the waiting commit returns once s1 streams and holds it.
    write("synchronous_standby_names = \"s1\"\n");
    relay.signal("HUP");
    blocked.recv_timeout(wait).expect("the commit returns");
    wait_until(wait, "s1 applies the commit", || {
        Ok(s1.psql("SELECT count(*) FROM acked WHERE id = 2")? == "1")
    })
    .unwrap();
}

/// A7: the relay itself as the primary's synchronous standby (no synchronous standbys of its
/// own): commits go on while it is attached, wait while it is stopped, and go on once it is
/// back; the primary sees only the relay, as `sync`.
#[test]
fn a7_relay_as_the_synchronous_standby() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "a7");
    let mut primary = archiving_primary(&bins, dir.path(), 1);
    primary
        .psql("CREATE TABLE acked (id bigint PRIMARY KEY)")
        .unwrap();
    primary
        .set_config("synchronous_standby_names", "walrelay")
        .unwrap();
    primary.psql("SELECT pg_reload_conf()").unwrap();
    let relay_port = free_port().unwrap();
    let listen = format!("127.0.0.1:{relay_port}");
    let relay_dir = dir.path().join("relay");
    let mut relay = RelayProcess::start(&primary.conninfo(), &relay_dir, &["--listen", &listen]);
    wait_listening(relay_port, Duration::from_secs(30));
    let relay_conninfo = format!("host=127.0.0.1 port={relay_port} user=postgres");
    let mut standbys = Vec::new();
    for name in ["d1", "d2"] {
        let mut s = primary
            .basebackup_standby(&format!("{relay_conninfo} application_name={name}"), None)
            .unwrap();
        s.start().unwrap();
        standbys.push(s);
    }
    let wait = Duration::from_secs(30);
    for id in 1..=20 {
        commit_in_background(&bins, &primary, id)
            .recv_timeout(wait)
            .expect("a commit hangs with the relay attached");
    }
    let rows = primary
        .psql("SELECT application_name, sync_state FROM pg_stat_replication")
        .unwrap();
    assert_eq!(rows, "walrelay|sync");
    // The acknowledged flush never passes what the relay made durable.
    let acked = acked_flush(&primary, "walrelay").unwrap();
    let stored = stored_end(&relay.wal_dir(), primary.wal_segment_size().unwrap()).unwrap();
    assert!(acked <= stored, "acknowledged {acked}, stored {stored}");

    relay.signal("TERM");
    relay.wait_exit(wait).expect("the relay stops");
    let blocked = commit_in_background(&bins, &primary, 100);
    assert!(
        blocked.recv_timeout(Duration::from_secs(3)).is_err(),
        "a commit returned with the synchronous standby stopped"
    );
    let _relay = RelayProcess::start(&primary.conninfo(), &relay_dir, &["--listen", &listen]);
    blocked
        .recv_timeout(wait)
        .expect("the commit returns once the relay is back");
    for s in &standbys {
        wait_until(wait, "standby has the commit", || {
            Ok(s.psql("SELECT count(*) FROM acked WHERE id = 100")? == "1")
        })
        .unwrap();
    }
}
