//! The relay under a real Patroni cluster (Debian's `patroni` 3.0 and `etcd-server` 3.4):
//! three PostgreSQL members managed by Patroni, the relay's upstream naming all three with
//! `target_session_attrs=read-write`, its slot a Patroni permanent slot (`slots:` in the DCS
//! configuration), and two standbys behind the relay on relay slots. Under a pgbench load,
//! first `patronictl switchover`, then a `kill -9` of the new leader's postmaster (with
//! `primary_start_timeout: 0`, so Patroni fails over instead of restarting it). After each:
//!
//! - the relay streams from the new leader (its `pg_stat_replication` shows `walrelay`
//!   streaming) within Patroni's failover time plus 5 s, the failover time being measured:
//!   from the switchover command or the kill to the new leader leaving recovery;
//! - both standbys behind the relay receive WAL of the new timeline on the walreceiver they
//!   had before (same pid: neither restarted nor reconnected);
//! - once the load stops, their data equals the new leader's;
//! - the relay's slot exists on the new leader;
//! - and at the end, `pg_waldump` reads the relay's WAL end to end across both switches.
//!
//! Replication is asynchronous, so a crash may lose WAL: the old leader may have sent the
//! relay WAL that the member Patroni promotes never received. A standby behind the relay that
//! replayed it cannot follow the new timeline ("forked off current database system timeline
//! before current recovery point"), any more than a standby of the old leader could. The test
//! recognises that case (a standby's replay position past the new timeline's fork point),
//! prints it, and then checks the relay but not those standbys; after the switchover it fails.
//!
//! Patroni runs with `ttl: 10`, `loop_wait: 1` and `retry_timeout: 4`; its failover took
//! 2 to 3.2 s here. The relay retries its upstream at most every second (`--reconnect-max`),
//! and the standbys outside Patroni as often (`wal_retrieve_retry_interval`);
//! `WALRELAY_PATRONI_RETRY=5s` sets both to their defaults.
//!
//! It also measures, and prints, the time from the event to the first WAL of the new
//! timeline at a standby behind the relay (`pg_stat_wal_receiver.received_tli`, sampled every
//! 20 ms), next to the same for a standby attached to the members directly, without a slot
//! (its `primary_conninfo` names all three with `target_session_attrs=read-write`, which
//! PostgreSQL 15's walreceiver honours). Timings are printed, never asserted, beyond the 5 s
//! above.
//!
//! A second test puts a Patroni standby cluster behind the relay: a second scope in the same
//! etcd whose `standby_cluster` host and port are the relay's, and which leaves Patroni's
//! defaults for building the standby leader (the `basebackup` method: `pg_basebackup -X
//! stream` against that host, with a spread checkpoint). Its standby leader must be built
//! through the relay (one `BASE_BACKUP` relayed to the primary, the WAL of `-X stream` served
//! by the relay), stream from the relay on a relay slot, and receive what the primary writes
//! next, as must the replica that clones from it; the primary sees the relay alone.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::patroni::{FirstSeen, PatroniCluster, PgbenchLoad, Spec, require_patroni};
use support::*;
use walrelay::testkit::localpg::{
    Cluster, ClusterBuilder, PgBinaries, ScratchDir, free_port, require_postgres, run, wait_until,
};
use walrelay::types::Lsn;

/// `t` on a primary that the relay streams from.
const RELAY_STREAMS_HERE: &str = "SELECT NOT pg_is_in_recovery() AND EXISTS (SELECT 1 FROM \
     pg_stat_replication WHERE application_name = 'walrelay' AND state = 'streaming')";

/// A standby's received timeline, `-` while its walreceiver is not running.
const RECEIVED_TLI: &str =
    "SELECT coalesce((SELECT received_tli FROM pg_stat_wal_receiver)::text, '-')";

/// The pgbench tables' contents, in one line.
const DIGEST: &str = "SELECT \
     (SELECT count(*) || ' ' || sum(abalance) FROM pgbench_accounts) || ' ' || \
     (SELECT md5(string_agg(aid || ':' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts) \
     || ' ' || (SELECT md5(string_agg(bid || ':' || bbalance, ',' ORDER BY bid)) \
     FROM pgbench_branches) || ' ' || (SELECT md5(string_agg(tid || ':' || tbalance, ',' \
     ORDER BY tid)) FROM pgbench_tellers) || ' ' || \
     (SELECT count(*) || ' ' || coalesce(sum(delta), 0) FROM pgbench_history)";

/// How long after Patroni's failover the relay may take to stream from the new leader.
const RELAY_BUDGET: Duration = Duration::from_secs(5);

/// The longest wait between attempts to reach a lost upstream, for the relay
/// (`--reconnect-max`) and for the standbys outside Patroni (`wal_retrieve_retry_interval`):
/// `WALRELAY_PATRONI_RETRY` (a PostgreSQL duration such as `5s`, both sides' default), else 1 s.
fn retry_interval() -> String {
    std::env::var("WALRELAY_PATRONI_RETRY")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "1s".to_owned())
}

/// What every phase works on.
struct Setup<'a> {
    bins: &'a PgBinaries,
    cluster: &'a PatroniCluster,
    /// The two standbys behind the relay.
    behind: &'a [Cluster],
    /// The standby attached to the members directly.
    direct: &'a Cluster,
    /// Where pgbench connects: every member, read-write.
    load: String,
    relay: &'a RelayProcess,
}

#[test]
fn relay_follows_patroni_switchover_and_leader_crash() {
    let Some(bins) = require_postgres() else {
        return;
    };
    if !require_patroni() {
        return;
    }
    let dir = scratch(&bins, "patroni");
    let cluster = PatroniCluster::start(&bins, dir.path());
    let leader = cluster.wait_healthy(&bins, Duration::from_secs(60));
    let leader_ci = cluster.members[leader].conninfo();
    bins.psql(&leader_ci, "CREATE ROLE walrelay LOGIN REPLICATION")
        .unwrap();
    let mut init = bins.command("pgbench");
    init.args([
        "-i",
        "-s",
        "1",
        "-q",
        &format!("{leader_ci} dbname=postgres"),
    ]);
    run(&mut init).unwrap();

    let (relay, relay_port) = start_relay(&cluster, dir.path());
    let relay_ci = format!("host=127.0.0.1 port={relay_port} user=postgres");
    wait_until(
        Duration::from_secs(30),
        "relay streams from the leader",
        || Ok(bins.psql(&leader_ci, RELAY_STREAMS_HERE)? == "t"),
    )
    .unwrap();
    let (behind, direct) = outside_standbys(&bins, &cluster, &dir, leader, &relay_ci);
    let size = behind[0].wal_segment_size().unwrap();
    let setup = Setup {
        bins: &bins,
        cluster: &cluster,
        behind: &behind,
        direct: &direct,
        load: cluster.all_members(
            "user=postgres dbname=postgres target_session_attrs=read-write connect_timeout=2",
        ),
        relay: &relay,
    };

    let candidate = (leader + 1) % cluster.members.len();
    let switched = failover(&setup, "switchover", leader, false, || {
        eprintln!("{}", cluster.switchover(leader, candidate));
    });
    assert_eq!(switched, candidate, "Patroni promoted another member");
    failover(
        &setup,
        "kill -9 of the leader's postmaster",
        switched,
        true,
        || {
            cluster.kill_postmaster(switched);
        },
    );

    let runs = support::patroni::assert_waldump_across_timelines(&bins, &relay.wal_dir(), size);
    eprintln!("pg_waldump read the relay's WAL, (timeline, segments): {runs:?}");
    let timelines: Vec<u32> = runs.iter().map(|(tli, _)| *tli).collect();
    let last = u32::try_from(cluster.leader_timeline().unwrap()).unwrap();
    assert_eq!(timelines.last(), Some(&last), "{runs:?}");
    assert!(timelines.len() >= 3, "{runs:?}");
}

/// The relay, its upstream every member with `target_session_attrs=read-write`, listening on
/// a free port (returned with it).
fn start_relay(cluster: &PatroniCluster, dir: &Path) -> (RelayProcess, u16) {
    eprintln!(
        "retry interval of the relay (--reconnect-max) and of the standbys outside Patroni \
         (wal_retrieve_retry_interval): {}",
        retry_interval()
    );
    let relay_port = free_port().unwrap();
    let listen = format!("127.0.0.1:{relay_port}");
    let upstream =
        cluster.all_members("user=walrelay target_session_attrs=read-write connect_timeout=2");
    let relay = RelayProcess::start_bare(
        &upstream,
        &dir.join("relay"),
        &[
            "--listen",
            &listen,
            "--reconnect-min",
            "100ms",
            "--reconnect-max",
            &retry_interval(),
            "--status-interval",
            "1s",
        ],
    );
    (relay, relay_port)
}

/// Two standbys behind the relay, each on a relay slot, and one attached to the members
/// directly, all streaming (the direct one from the leader).
fn outside_standbys(
    bins: &PgBinaries,
    cluster: &PatroniCluster,
    dir: &ScratchDir,
    leader: usize,
    relay_ci: &str,
) -> (Vec<Cluster>, Cluster) {
    let leader_ci = cluster.members[leader].conninfo();
    let mut behind = Vec::new();
    for name in ["d1", "d2"] {
        bins.psql(
            &format!("{relay_ci} replication=1"),
            &format!("CREATE_REPLICATION_SLOT \"{name}\" PHYSICAL"),
        )
        .unwrap();
        let primary_conninfo = format!("{relay_ci} application_name={name}");
        let standby = outside_standby(bins, dir, &leader_ci, &primary_conninfo, Some(name));
        behind.push(standby);
    }
    let direct_ci = cluster.all_members(
        "user=postgres target_session_attrs=read-write connect_timeout=2 application_name=direct",
    );
    let direct = outside_standby(bins, dir, &leader_ci, &direct_ci, None);
    for standby in behind.iter().chain([&direct]) {
        wait_until(Duration::from_secs(60), "standby streaming", || {
            Ok(standby.psql("SELECT status FROM pg_stat_wal_receiver")? == "streaming")
        })
        .unwrap();
    }
    let sql = "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'direct'";
    assert_eq!(
        bins.psql(&leader_ci, sql).unwrap(),
        "1",
        "the direct standby does not stream from the leader"
    );
    (behind, direct)
}

/// A hot standby outside Patroni: a base backup taken from the leader directly that streams
/// from `primary_conninfo`, started, with the relay's retry interval as
/// `wal_retrieve_retry_interval`.
fn outside_standby(
    bins: &PgBinaries,
    dir: &ScratchDir,
    leader_ci: &str,
    primary_conninfo: &str,
    slot: Option<&str>,
) -> Cluster {
    let mut standby = ClusterBuilder::new(bins.clone(), dir.path())
        .config("wal_retrieve_retry_interval", &retry_interval())
        .basebackup_standby_of(leader_ci, primary_conninfo, slot)
        .unwrap();
    standby.start().unwrap();
    standby
}

/// What happened after an event, as the samplers saw it.
struct Observed {
    /// The member Patroni promoted.
    new: usize,
    /// From the event to the new leader leaving recovery.
    patroni_failover: Duration,
    /// From the event to the relay streaming from the new leader.
    relay: Option<Duration>,
    /// From the event to the first WAL of the new timeline at d1, d2 and the direct standby.
    new_timeline: Vec<Option<Duration>>,
    /// Where the new timeline forked from the old one.
    fork: Lsn,
    /// Which of d1, d2 and the direct standby replayed old-timeline WAL past `fork`.
    past_fork: Vec<bool>,
}

/// Runs `trigger` (a switchover, a crash) on leader `old` under a pgbench load, checks what
/// the module's header says, prints the timings and returns the new leader's index. With
/// `may_lose_wal` (a crash), standbys that replayed WAL the new leader never had are
/// reported, not failed.
fn failover(
    s: &Setup<'_>,
    what: &str,
    old: usize,
    may_lose_wal: bool,
    trigger: impl FnOnce(),
) -> usize {
    let cluster = s.cluster;
    let next = cluster.leader_timeline().unwrap() + 1;
    let receivers: Vec<String> = s
        .behind
        .iter()
        .map(|c| c.psql("SELECT pid FROM pg_stat_wal_receiver").unwrap())
        .collect();
    let load = PgbenchLoad::start(s.bins, &s.load);
    std::thread::sleep(Duration::from_secs(3));
    let log_offset = s.relay.log_len();
    let seen = observe(s, what, old, next, trigger);
    report(s, what, next, &seen, log_offset);
    check_relay(s, what, &seen);
    // A little load on the new timeline.
    std::thread::sleep(Duration::from_secs(2));
    let (completed, ended_early) = load.stop();
    eprintln!("{what}: pgbench runs completed {completed}, ended early {ended_early}");

    let lost = seen.past_fork.iter().take(s.behind.len()).any(|p| *p);
    assert!(
        may_lose_wal || !lost,
        "{what}: standbys replayed past the fork point {}: {:?}",
        seen.fork,
        seen.past_fork
    );
    if lost {
        // Asynchronous replication lost WAL: no standby that replayed it can follow the new
        // timeline (PostgreSQL: "new timeline N forked off current database system timeline
        // M before current recovery point"), wherever it streams from.
        eprintln!(
            "{what}: LOST WAL: {} was promoted with timeline {} ending at {}, but the old \
             leader had already sent more to the relay; standbys past that point (d1, d2, \
             direct): {:?}. They cannot follow without pg_rewind or a new copy, behind the \
             relay or not, so their timeline and data are not checked after this event.",
            cluster.members[seen.new].name,
            next - 1,
            seen.fork,
            seen.past_fork
        );
    } else {
        check_standbys(s, what, next, &seen, &receivers);
    }
    assert_eq!(
        cluster.wait_healthy(s.bins, Duration::from_secs(90)),
        seen.new
    );
    seen.new
}

/// Prints what the samplers saw, and who created the relay's slot on the new leader.
fn report(s: &Setup<'_>, what: &str, next: u64, seen: &Observed, log_offset: usize) {
    let at =
        |d: Option<Duration>| d.map_or("never".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
    eprintln!(
        "{what}: Patroni promoted {} after {:.2} s; the relay streamed from it after {}; first \
         timeline-{next} WAL at the standbys behind the relay after {} and {}, at the standby \
         attached to the members directly after {}",
        s.cluster.members[seen.new].name,
        seen.patroni_failover.as_secs_f64(),
        at(seen.relay),
        at(seen.new_timeline[0]),
        at(seen.new_timeline[1]),
        at(seen.new_timeline[2]),
    );
    let created = s
        .relay
        .count_log(log_offset, "created the relay's slot on the upstream");
    eprintln!(
        "{what}: the relay's slot on the new leader was created by {}",
        if created == 0 { "Patroni" } else { "the relay" }
    );
}

/// The relay streams from the new leader within Patroni's failover time plus
/// [`RELAY_BUDGET`], and its slot is there.
fn check_relay(s: &Setup<'_>, what: &str, seen: &Observed) {
    let name = &s.cluster.members[seen.new].name;
    let relay_after = seen.relay.unwrap_or_else(|| {
        panic!(
            "{what}: the relay never streamed from the new leader {name}; it streams from {:?}",
            streaming_from(s)
        )
    });
    assert!(
        relay_after <= seen.patroni_failover + RELAY_BUDGET,
        "{what}: the relay streamed from the new leader {relay_after:?} after the event, \
         Patroni's failover took {:?}",
        seen.patroni_failover
    );
    let sql = "SELECT slot_type FROM pg_replication_slots WHERE slot_name = 'walrelay'";
    assert_eq!(
        s.bins
            .psql(&s.cluster.members[seen.new].conninfo(), sql)
            .unwrap(),
        "physical",
        "{what}: the relay's slot is not on the new leader {name}"
    );
}

/// Both standbys behind the relay reached timeline `next` on the walreceivers (`receivers`,
/// their pids) they had before the event, and end with the new leader's data.
fn check_standbys(s: &Setup<'_>, what: &str, next: u64, seen: &Observed, receivers: &[String]) {
    for (i, d) in seen.new_timeline.iter().take(s.behind.len()).enumerate() {
        assert!(
            d.is_some(),
            "{what}: standby d{} behind the relay did not reach timeline {next}",
            i + 1
        );
    }
    for (standby, pid) in s.behind.iter().zip(receivers) {
        assert_eq!(
            &standby
                .psql("SELECT pid FROM pg_stat_wal_receiver")
                .unwrap(),
            pid,
            "{what}: a walreceiver behind the relay was restarted"
        );
    }
    let new_ci = s.cluster.members[seen.new].conninfo();
    compare_at_rest(s, what, &new_ci, &next.to_string());
}

/// Starts the samplers, runs `trigger` and waits for what follows: the new leader, the relay
/// streaming from it, and each standby outside Patroni on timeline `next`, or past the fork
/// point on the old one.
fn observe(s: &Setup<'_>, what: &str, old: usize, next: u64, trigger: impl FnOnce()) -> Observed {
    let (bins, cluster) = (s.bins, s.cluster);
    let others: Vec<usize> = (0..cluster.members.len()).filter(|&i| i != old).collect();
    let watch = |i: usize, sql: &str| {
        FirstSeen::start(bins, &cluster.members[i].conninfo(), sql, |a| a == "t")
    };
    let promoted: Vec<FirstSeen> = others
        .iter()
        .map(|&i| watch(i, "SELECT NOT pg_is_in_recovery()"))
        .collect();
    let relay_on: Vec<FirstSeen> = others
        .iter()
        .map(|&i| watch(i, RELAY_STREAMS_HERE))
        .collect();
    let outside: Vec<&Cluster> = s.behind.iter().chain([s.direct]).collect();
    let new_tli: Vec<FirstSeen> = outside
        .iter()
        .map(|c| {
            let next = next.to_string();
            FirstSeen::start(bins, &c.conninfo(), RECEIVED_TLI, move |a| a == next)
        })
        .collect();
    for w in promoted.iter().chain(&relay_on).chain(&new_tli) {
        w.wait_sampling(Duration::from_secs(10));
    }
    assert!(
        promoted.iter().all(|w| w.at().is_none()),
        "a replica is out of recovery before the {what}"
    );

    let t0 = Instant::now();
    trigger();
    wait_until(Duration::from_secs(60), "a new leader", || {
        Ok(promoted.iter().any(|w| w.at().is_some()))
    })
    .unwrap_or_else(|e| panic!("{what}: {e}; cluster: {:?}", cluster.view()));
    let (k, promoted_at) = promoted
        .iter()
        .enumerate()
        .filter_map(|(k, w)| w.at().map(|at| (k, at)))
        .min_by_key(|(_, at)| *at)
        .unwrap();
    let new_ci = cluster.members[others[k]].conninfo();
    let fork = fork_point(bins, &new_ci, next);
    let mut past_fork = vec![false; outside.len()];
    let _ = wait_until(
        Duration::from_secs(60),
        "standbys on the new timeline",
        || {
            for (i, (w, c)) in new_tli.iter().zip(&outside).enumerate() {
                if w.at().is_none() && !past_fork[i] {
                    past_fork[i] = c.replay_lsn().is_ok_and(|r| r > fork);
                }
            }
            Ok(new_tli
                .iter()
                .zip(&past_fork)
                .all(|(w, past)| w.at().is_some() || *past))
        },
    );
    let relay = relay_on[k].wait(Duration::from_secs(30));
    Observed {
        new: others[k],
        patroni_failover: promoted_at - t0,
        relay: relay.map(|at| at - t0),
        new_timeline: new_tli.iter().map(|w| w.at().map(|at| at - t0)).collect(),
        fork,
        past_fork,
    }
}

/// Where timeline `tli` forked from its parent: the last entry of its history file, read
/// from the server at `conninfo`.
fn fork_point(bins: &PgBinaries, conninfo: &str, tli: u64) -> Lsn {
    let sql = format!("SELECT pg_read_file('pg_wal/{tli:08X}.history')");
    let history = bins.psql(conninfo, &sql).unwrap();
    let last = history.lines().rfind(|l| !l.trim().is_empty()).unwrap();
    last.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// With the load stopped: the new leader switches segments, the relay acknowledges its end,
/// and both standbys behind the relay replay it on timeline `next` with the leader's data.
fn compare_at_rest(s: &Setup<'_>, what: &str, new_ci: &str, next: &str) {
    let bins = s.bins;
    bins.psql(new_ci, "SELECT pg_switch_wal()").unwrap();
    let end: Lsn = bins
        .psql(new_ci, "SELECT pg_current_wal_flush_lsn()")
        .unwrap()
        .parse()
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "relay acknowledges the end",
        || Ok(acked_flush_at(bins, new_ci, "walrelay").is_some_and(|f| f >= end)),
    )
    .unwrap();
    let expected = bins.psql(new_ci, DIGEST).unwrap();
    for standby in s.behind {
        wait_until(Duration::from_secs(60), "standby replays the end", || {
            Ok(standby.replay_lsn()? >= end)
        })
        .unwrap();
        assert_eq!(
            standby.psql(DIGEST).unwrap(),
            expected,
            "{what}: data differ"
        );
        assert_eq!(standby.psql(RECEIVED_TLI).unwrap(), next);
    }
}

/// Which members the relay streams from, by name.
fn streaming_from(s: &Setup<'_>) -> Vec<String> {
    s.cluster
        .members
        .iter()
        .filter(|m| {
            s.bins
                .psql(
                    &m.conninfo(),
                    "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walrelay'",
                )
                .is_ok_and(|n| n != "0")
        })
        .map(|m| m.name.clone())
        .collect()
}

/// The standby cluster's scope, its members' name prefix, and its slot on the relay.
const STANDBY_SCOPE: &str = "walrelay-standby";
const STANDBY_PREFIX: &str = "standby";
const STANDBY_SLOT: &str = "patroni_standby";

/// The test table's contents, in one line.
const ROWS_DIGEST: &str =
    "SELECT count(*) || ' ' || md5(string_agg(id || ':' || pad, ',' ORDER BY id)) FROM t";

/// A standby cluster (second scope, same etcd, two members) whose `standby_cluster` is the
/// relay in front of a one-member cluster, with Patroni's defaults for building its standby
/// leader: `create_replica_methods` unset (so `basebackup`) and no `postgresql.basebackup`
/// options (so a spread checkpoint). The standby leader's `pg_basebackup -X stream` goes to
/// the relay, which relays the `BASE_BACKUP` to the primary and serves the WAL itself; the
/// standby leader then streams from the relay on a relay slot, and the second member clones
/// from the standby leader and streams from it. Checked: the relay relayed one backup, the
/// primary ran a spread (not immediate) checkpoint for it, the standby leader's data
/// directory is that `pg_basebackup` copy with the primary's rows, it streams from the
/// relay's port on the slot, rows written afterwards reach both members equal, and the
/// primary has the relay as its only walsender and the relay's slot as its only slot.
#[test]
fn patroni_standby_cluster_bootstraps_through_the_relay() {
    let Some(bins) = require_postgres() else {
        return;
    };
    if !require_patroni() {
        return;
    }
    let dir = scratch(&bins, "patroni-standby");
    let primary_spec = Spec {
        members: 1,
        ..Spec::default()
    };
    let cluster = PatroniCluster::start_with(&bins, dir.path(), &primary_spec, None);
    let primary = &cluster.members[0];
    let primary_ci = primary.conninfo();
    bins.psql(&primary_ci, "CREATE ROLE walrelay LOGIN REPLICATION")
        .unwrap();
    let (relay, relay_port) = start_relay(&cluster, dir.path());
    wait_until(
        Duration::from_secs(30),
        "relay streams from the primary",
        || Ok(bins.psql(&primary_ci, RELAY_STREAMS_HERE)? == "t"),
    )
    .unwrap();
    let relay_ci = format!("host=127.0.0.1 port={relay_port} user=postgres");
    bins.psql(
        &format!("{relay_ci} replication=1"),
        &format!("CREATE_REPLICATION_SLOT \"{STANDBY_SLOT}\" PHYSICAL RESERVE_WAL"),
    )
    .unwrap();
    // Then a table of some 40 pages, left dirty in shared buffers with its catalog rows: the
    // backup's spread checkpoint writes them at the pace PostgreSQL keeps when ahead of
    // schedule (one buffer every 100 ms), seconds in which the primary sends nothing on the
    // backup's connection.
    bins.psql(&primary_ci, "CHECKPOINT").unwrap();
    bins.psql(
        &primary_ci,
        "CREATE TABLE t AS SELECT g AS id, repeat(md5(g::text), 4) AS pad \
         FROM generate_series(1, 2000) g",
    )
    .unwrap();
    let before = bins.psql(&primary_ci, ROWS_DIGEST).unwrap();
    let relay_offset = relay.log_len();
    let primary_log_offset = log_len(&primary.log_path());

    let started = Instant::now();
    let standby_spec = Spec {
        scope: STANDBY_SCOPE,
        prefix: STANDBY_PREFIX,
        members: 2,
        standby_of: Some((relay_port, STANDBY_SLOT)),
    };
    let standby = PatroniCluster::start_with(&bins, dir.path(), &standby_spec, Some(&cluster));
    eprintln!(
        "the standby cluster was up (standby leader and replica streaming) after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let leader = standby.leader().unwrap();
    assert_eq!(leader, 0, "the first member bootstraps the standby cluster");
    let (b1, b2) = (&standby.members[0], &standby.members[1]);

    // The backup went through the relay, once (the replica clones from the standby leader).
    let relayed = relay.count_log(relay_offset, "BASE_BACKUP relayed");
    let early = relay.count_log(relay_offset, "BASE_BACKUP ended early")
        + relay.count_log(relay_offset, "BASE_BACKUP aborted");
    assert_eq!(
        (relayed, early),
        (1, 0),
        "relay log:\n{}",
        relay.log_since(relay_offset)
    );
    // Its WAL (-X stream) came from the relay's store, on pg_basebackup's temporary slot.
    let wal_streams = relay
        .log_since(relay_offset)
        .lines()
        .filter(|l| l.contains("streaming timeline=") && l.contains("slot=\"pg_basebackup_"))
        .count();
    assert_eq!(wal_streams, 1, "{}", relay.log_since(relay_offset));
    // By Patroni's built-in method from the relay's address, with a spread checkpoint.
    let b1_log = read_log(&b1.log_path());
    let source =
        format!("bootstrapped clone from remote member postgresql://127.0.0.1:{relay_port}");
    assert!(b1_log.contains(&source), "{b1_log}");
    assert!(
        b1_log.contains("replica has been created using basebackup"),
        "{b1_log}"
    );
    let primary_log = read_log(&primary.log_path());
    let primary_log = primary_log.get(primary_log_offset..).unwrap_or_default();
    let (write, complete) = spread_checkpoint_write(primary_log);
    eprintln!("the backup's spread checkpoint on the primary: {complete}");
    assert!(
        write >= 1.0,
        "the backup's checkpoint was not spread over seconds: {write} s"
    );
    let label = bins
        .psql(&b1.conninfo(), "SELECT pg_read_file('backup_label.old')")
        .unwrap();
    assert!(
        label.contains("LABEL: pg_basebackup base backup")
            && label.contains("BACKUP FROM: primary"),
        "{label}"
    );
    let manifest = "SELECT count(*) FROM pg_ls_dir('.') AS f WHERE f = 'backup_manifest'";
    assert_eq!(bins.psql(&b1.conninfo(), manifest).unwrap(), "1");
    assert_eq!(bins.psql(&b1.conninfo(), ROWS_DIGEST).unwrap(), before);

    // The standby leader streams from the relay on its slot, the replica from the leader.
    let receiver = "SELECT status || ' ' || sender_host || ' ' || sender_port || ' ' || \
                    coalesce(slot_name, '-') FROM pg_stat_wal_receiver";
    assert_eq!(
        bins.psql(&b1.conninfo(), receiver).unwrap(),
        format!("streaming 127.0.0.1 {relay_port} {STANDBY_SLOT}")
    );
    let b2_receiver = bins.psql(&b2.conninfo(), receiver).unwrap();
    assert!(
        b2_receiver.starts_with(&format!("streaming 127.0.0.1 {} ", b1.pg_port)),
        "{b2_receiver}"
    );

    // Rows written on the primary afterwards reach both members.
    bins.psql(
        &primary_ci,
        "INSERT INTO t SELECT g, repeat(md5((g * 7)::text), 4) FROM generate_series(20001, 40000) g; \
         UPDATE t SET pad = 'updated' WHERE id % 100 = 0; DELETE FROM t WHERE id % 1000 = 1",
    )
    .unwrap();
    let end: Lsn = bins
        .psql(&primary_ci, "SELECT pg_current_wal_flush_lsn()")
        .unwrap()
        .parse()
        .unwrap();
    let expected = bins.psql(&primary_ci, ROWS_DIGEST).unwrap();
    assert_ne!(expected, before);
    for member in [b1, b2] {
        wait_until(
            Duration::from_secs(60),
            &format!("{} replays the primary's end", member.name),
            || {
                let replayed: Lsn = bins
                    .psql(&member.conninfo(), "SELECT pg_last_wal_replay_lsn()")?
                    .parse()
                    .unwrap();
                Ok(replayed >= end)
            },
        )
        .unwrap();
        assert_eq!(
            bins.psql(&member.conninfo(), ROWS_DIGEST).unwrap(),
            expected,
            "{} differs from the primary",
            member.name
        );
    }

    // The primary serves the relay alone: no walsender and no slot of the standby cluster.
    let senders = "SELECT string_agg(application_name || ':' || state, ',' \
                   ORDER BY application_name) FROM pg_stat_replication";
    assert_eq!(
        bins.psql(&primary_ci, senders).unwrap(),
        "walrelay:streaming"
    );
    let slots = "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots";
    assert_eq!(bins.psql(&primary_ci, slots).unwrap(), "walrelay");
    eprintln!(
        "standby cluster bootstrapped through the relay and streaming from it; {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
}

/// The write phase, in seconds, of the one spread checkpoint (`checkpoint starting: force
/// wait`, not `immediate`) that PostgreSQL's `log` reports, and its `checkpoint complete`
/// line, where that figure comes from.
fn spread_checkpoint_write(log: &str) -> (f64, &str) {
    let lines: Vec<&str> = log.lines().collect();
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("checkpoint starting:"))
        .collect();
    let spread: Vec<usize> = starts
        .iter()
        .copied()
        .filter(|&i| lines[i].ends_with("checkpoint starting: force wait"))
        .collect();
    assert_eq!(
        spread.len(),
        1,
        "not one spread checkpoint on the primary: {:?}",
        starts.iter().map(|&i| lines[i]).collect::<Vec<_>>()
    );
    let complete = lines[spread[0]..]
        .iter()
        .find(|l| l.contains("checkpoint complete:"))
        .copied()
        .unwrap_or_else(|| panic!("the spread checkpoint did not complete:\n{log}"));
    let write = complete
        .split("write=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no write= in {complete}"));
    (write.parse().unwrap(), complete)
}

/// A log file's length in bytes, 0 when it does not exist.
fn log_len(path: &Path) -> usize {
    std::fs::metadata(path).map_or(0, |m| usize::try_from(m.len()).unwrap())
}

/// A log file's text (lossy), empty when it does not exist.
fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
