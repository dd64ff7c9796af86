//! BASE_BACKUP through the relay (issue 13), against a real PostgreSQL: `pg_basebackup -X
//! stream -c fast` aimed at the relay gets its backup from the relay's upstream and its WAL
//! from the relay's store, `pg_verifybackup` passes, and the copy starts as a hot standby on a
//! relay slot and replays to the primary's position; the same from a network that reaches
//! only the relay, over TLS with SCRAM. Bad options get the primary's own errors, and the
//! targets that would write on the primary are refused.
//!
//! The network test needs root (`ip netns`); under `CI=true` it must be there.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod downstream_client;
mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use support::certs::TestCa;
use support::relay_topology::{primary_with, relay_repl, wait_replayed};
use support::*;
use walrelay::testkit::localpg::{
    Cluster, PgBinaries, ScratchDir, free_port, require_postgres, wait_until,
};

#[test]
fn pg_basebackup_through_the_relay_verifies_and_streams() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "basebackup");
    let primary = archiving_primary(&bins, dir.path(), 1);
    primary
        .psql("CREATE TABLE t AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 20000) g")
        .unwrap();
    let (relay_port, http_port) = (free_port().unwrap(), free_port().unwrap());
    let listen = format!("127.0.0.1:{relay_port}");
    let http = format!("127.0.0.1:{http_port}");
    let relay = RelayProcess::start(
        &primary.conninfo(),
        &dir.path().join("relay"),
        &[
            "--listen",
            &listen,
            "--max-base-backups",
            "2",
            "--http-listen",
            &http,
        ],
    );
    let now = primary.current_wal_flush_lsn().unwrap();
    wait_acked(&primary, now, Duration::from_secs(30));

    let via_relay = format!("host=127.0.0.1 port={relay_port} user=postgres");
    relay_repl(&bins, relay_port, "CREATE_REPLICATION_SLOT sb1 PHYSICAL");
    let standby_conninfo = format!("{via_relay} application_name=sb1");
    let mut standby = primary
        .verified_standby_through(
            &via_relay,
            &["--manifest-checksums=SHA256"],
            &standby_conninfo,
            Some("sb1"),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", relay.log_contents()));
    // The relay logs the backup once it has left the upstream, just after the answer.
    let logged = || Ok(relay.log_contents().contains("BASE_BACKUP relayed"));
    wait_until(Duration::from_secs(5), "the backup logged", logged)
        .unwrap_or_else(|e| panic!("{e}\n{}", relay.log_contents()));
    let (_, _, metrics) = http_get(http_port, "/metrics", &[]);
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(name));
        line.and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert_eq!(
        value("walrelay_base_backups_total{outcome=\"completed\"}"),
        1.0
    );
    assert_eq!(
        value("walrelay_base_backups_total{outcome=\"aborted\"}"),
        0.0
    );
    assert_eq!(value("walrelay_base_backups_running "), 0.0);
    // A6: pg_basebackup's temporary slot on the relay is gone, as READ_REPLICATION_SLOT says.
    let log = relay.log_contents();
    let temporary = log
        .split("slot=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .find(|name| name.starts_with("pg_basebackup_"))
        .unwrap_or_else(|| panic!("no stream on a pg_basebackup slot:\n{log}"))
        .to_owned();
    let read = relay_repl(
        &bins,
        relay_port,
        &format!("READ_REPLICATION_SLOT {temporary}"),
    );
    assert_eq!(read, "||", "{temporary}");
    let table = primary.psql("SELECT pg_table_size('t')").unwrap();
    assert!(
        value("walrelay_base_backup_bytes_total ") > table.parse::<f64>().unwrap(),
        "a backup holds the table"
    );

    standby.start().unwrap();
    primary
        .psql("INSERT INTO t SELECT g, 'after' FROM generate_series(20001, 21000) g")
        .unwrap();
    let target = primary.current_wal_flush_lsn().unwrap();
    wait_replayed(&standby, target, Duration::from_secs(60));
    assert_eq!(
        standby.psql("SELECT count(*) FROM t").unwrap(),
        primary.psql("SELECT count(*) FROM t").unwrap()
    );
    // Nothing of the backup is left running on the primary.
    assert_eq!(
        primary
            .psql("SELECT count(*) FROM pg_stat_progress_basebackup")
            .unwrap(),
        "0"
    );
}

#[test]
fn bad_options_get_the_primarys_errors_and_server_targets_are_refused() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "basebackup-refusals");
    let primary = archiving_primary(&bins, dir.path(), 1);
    let relay_port = free_port().unwrap();
    let listen = format!("127.0.0.1:{relay_port}");
    let relay = RelayProcess::start(
        &primary.conninfo(),
        &dir.path().join("relay"),
        &["--listen", &listen],
    );
    let now = primary.current_wal_flush_lsn().unwrap();
    wait_acked(&primary, now, Duration::from_secs(30));
    let error_of = |conninfo: &str, sql: &str| {
        bins.psql(&format!("{conninfo} replication=1"), sql)
            .unwrap_err()
            .to_string()
    };
    let via_relay = format!("host=127.0.0.1 port={relay_port} user=postgres");
    // The primary answers these itself; the relay must answer the same.
    for sql in [
        "BASE_BACKUP (FOO)",
        "BASE_BACKUP (LABEL 'a', LABEL 'b')",
        "BASE_BACKUP (MAX_RATE 1)",
        "BASE_BACKUP (TARGET 'bogus')",
        "BASE_BACKUP (MANIFEST_CHECKSUMS 'sha256')",
        "BASE_BACKUP LABEL 'x'",
    ] {
        let theirs = error_of(&primary.conninfo(), sql);
        let ours = error_of(&via_relay, sql);
        let message = |e: &str| {
            e.lines()
                .find(|l| l.contains("ERROR:"))
                .map(|l| l[l.find("ERROR:").unwrap()..].to_owned())
                .unwrap_or_default()
        };
        assert_eq!(message(&ours), message(&theirs), "{sql}");
        assert!(!message(&ours).is_empty(), "{sql}: {ours}");
    }
    let server = error_of(
        &via_relay,
        "BASE_BACKUP (TARGET 'server', TARGET_DETAIL '/tmp/walrelay-never')",
    );
    assert!(
        server.contains("backup stored on server"),
        "{server}\n{}",
        relay.log_contents()
    );
    assert!(!std::path::Path::new("/tmp/walrelay-never").exists());
    let blackhole = error_of(&via_relay, "BASE_BACKUP (TARGET 'blackhole')");
    assert!(
        blackhole.contains("unrecognized target: \"blackhole\""),
        "{blackhole}"
    );
}

/// A primary with a table of `rows` rows (20 000 is a few MB: minutes at 32 kB/s, and enough
/// dirty buffers to make a spread checkpoint with `checkpoint_timeout = 1h` last a minute),
/// a relay with one backup place and `relay_args` in front of it, and the relay's port.
fn primary_and_relay(
    bins: &PgBinaries,
    dir: &Path,
    rows: u32,
    relay_args: &[&str],
) -> (Cluster, RelayProcess, u16) {
    let primary = primary_with(
        bins,
        dir,
        &[("checkpoint_timeout", "1h"), ("max_wal_size", "4GB")],
    );
    primary
        .psql(&format!(
            "CREATE TABLE t AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, {rows}) g"
        ))
        .unwrap();
    let relay_port = free_port().unwrap();
    let listen = format!("127.0.0.1:{relay_port}");
    let mut args = vec!["--listen", &listen, "--max-base-backups", "1"];
    args.extend_from_slice(relay_args);
    let relay = RelayProcess::start(&primary.conninfo(), &dir.join("relay"), &args);
    let now = primary.current_wal_flush_lsn().unwrap();
    wait_acked(&primary, now, Duration::from_secs(30));
    (primary, relay, relay_port)
}

/// `pg_basebackup -X stream --no-sync` through the relay into a new directory under
/// `parent` (removed when the returned guard drops), with `args`.
fn pg_basebackup(
    bins: &PgBinaries,
    parent: &Path,
    relay_port: u16,
    args: &[&str],
) -> (Command, ScratchDir) {
    let target = bins.scratch_dir(parent, "copy").unwrap();
    let mut cmd = bins.command("pg_basebackup");
    cmd.arg("-D")
        .arg(target.path().join("data"))
        .args([
            "-d",
            &format!("host=127.0.0.1 port={relay_port} user=postgres"),
        ])
        .args(["-X", "stream", "--no-sync"])
        .args(args);
    (cmd, target)
}

/// [`pg_basebackup`] started in a process group of its own (the `-X stream` streamer is a
/// forked child), once the primary's backup is in `phase`.
fn client_in_phase(
    bins: &PgBinaries,
    parent: &Path,
    primary: &Cluster,
    relay: &RelayProcess,
    relay_port: u16,
    args: &[&str],
    phase: &str,
) -> (Child, ScratchDir) {
    use std::os::unix::process::CommandExt;
    let (mut cmd, target) = pg_basebackup(bins, parent, relay_port, args);
    let client = cmd.process_group(0).spawn().unwrap();
    let sql = format!("SELECT count(*) FROM pg_stat_progress_basebackup WHERE phase = '{phase}'");
    let running = || primary.psql(&sql).map(|n| n == "1");
    wait_until(Duration::from_secs(30), phase, running)
        .unwrap_or_else(|e| panic!("{e}\n{}", relay.log_contents()));
    (client, target)
}

/// Sends `sig` to the client's process group.
fn signal_group(client: &Child, sig: &str) {
    let group = format!("-{}", client.id());
    let sent = Command::new("kill")
        .args([sig, "--", &group])
        .status()
        .unwrap();
    assert!(sent.success());
}

/// Waits until no backup runs on the primary, within `limit`.
fn backup_gone(primary: &Cluster, relay: &RelayProcess, limit: Duration) {
    let gone = || {
        primary
            .psql("SELECT count(*) FROM pg_stat_progress_basebackup")
            .map(|n| n == "0")
    };
    wait_until(limit, "backup gone from the primary", gone)
        .unwrap_or_else(|e| panic!("{e}\n{}", relay.log_contents()));
}

/// The relay's only place is free again: the next backup gets it and completes.
fn backup_completes(bins: &PgBinaries, parent: &Path, relay_port: u16) {
    let (mut cmd, _copy) = pg_basebackup(bins, parent, relay_port, &["-c", "fast"]);
    walrelay::testkit::localpg::run(&mut cmd).unwrap();
}

/// A client killed in the middle of a throttled backup: the relay drops its upstream
/// connection, the primary's walsender fails its next write and aborts the backup, and
/// nothing of it is left on the primary within a few seconds. Meanwhile a second backup,
/// beyond `--max-base-backups 1`, is refused.
#[test]
fn a_client_killed_while_streaming_leaves_no_backup_running() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "basebackup-abort");
    let (primary, relay, port) = primary_and_relay(&bins, dir.path(), 20_000, &[]);
    let args = ["-c", "fast", "--max-rate=32k"];
    let phase = "streaming database files";
    let (mut client, _copy) =
        client_in_phase(&bins, dir.path(), &primary, &relay, port, &args, phase);

    let (mut second, _copy) = pg_basebackup(&bins, dir.path(), port, &[]);
    let second = walrelay::testkit::localpg::run(&mut second)
        .unwrap_err()
        .to_string();
    assert!(
        second.contains("number of requested base backups exceeds max_base_backups (currently 1)"),
        "{second}"
    );

    signal_group(&client, "-KILL");
    let _ = client.wait();
    backup_gone(&primary, &relay, Duration::from_secs(5));
    let log = relay.log_contents();
    assert!(
        log.contains("BASE_BACKUP aborted") || log.contains("BASE_BACKUP ended early"),
        "{log}"
    );
    backup_completes(&bins, dir.path(), port);
}

/// A client killed while the primary's walsender waits for a spread checkpoint, writing
/// nothing: the relay's CancelRequest interrupts the wait, where a dropped connection alone
/// would be noticed only after the checkpoint.
#[test]
fn a_client_killed_during_the_checkpoint_leaves_no_backup_running() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "basebackup-cancel");
    let (primary, relay, port) = primary_and_relay(&bins, dir.path(), 20_000, &[]);
    let args = ["-c", "spread"];
    let phase = "waiting for checkpoint to finish";
    let (mut client, _copy) =
        client_in_phase(&bins, dir.path(), &primary, &relay, port, &args, phase);
    signal_group(&client, "-KILL");
    let _ = client.wait();
    backup_gone(&primary, &relay, Duration::from_secs(5));
    assert!(relay.log_contents().contains("BASE_BACKUP ended early"));
    backup_completes(&bins, dir.path(), port);
}

/// The client's own CancelRequest, sent to the relay with the BackendKeyData the relay gave
/// it, interrupts its BASE_BACKUP as it would on PostgreSQL: the primary's walsender answers
/// 57014, the client gets that error and ReadyForQuery, its connection stays usable, and no
/// backup is left on the primary. A request with a wrong key changes nothing.
#[test]
fn the_clients_cancel_request_interrupts_its_backup() {
    use downstream_client::{RawClient, cancel_request, first_error, query_msg, startup_packet};
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "basebackup-client-cancel");
    let (primary, relay, port) = primary_and_relay(&bins, dir.path(), 20_000, &[]);
    let mut client = RawClient::connect(port);
    client.send(&startup_packet(&[
        ("user", "postgres"),
        ("database", "replication"),
        ("replication", "true"),
    ]));
    let greeting = client.until_ready(Duration::from_secs(10));
    let key_data = greeting
        .iter()
        .find(|m| m.tag == b'K')
        .expect("BackendKeyData");
    let (pid, key) = (
        u32::from_be_bytes(key_data.body[..4].try_into().unwrap()),
        u32::from_be_bytes(key_data.body[4..8].try_into().unwrap()),
    );
    client.send(&query_msg(
        "BASE_BACKUP (LABEL 'cancelled', PROGRESS, CHECKPOINT 'spread', WAIT 0)",
    ));
    let waiting = || {
        primary
            .psql("SELECT count(*) FROM pg_stat_progress_basebackup WHERE phase = 'waiting for checkpoint to finish'")
            .map(|n| n == "1")
    };
    wait_until(Duration::from_secs(30), "the spread checkpoint", waiting)
        .unwrap_or_else(|e| panic!("{e}\n{}", relay.log_contents()));

    let cancel = |key: u32| {
        let mut c = RawClient::connect(port);
        c.send(&cancel_request(pid, key));
        assert!(c.until_closed(Duration::from_secs(5)).is_some());
    };
    cancel(key.wrapping_add(1));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        primary
            .psql("SELECT count(*) FROM pg_stat_progress_basebackup")
            .unwrap(),
        "1",
        "a wrong key cancelled the backup"
    );

    cancel(key);
    let answer = client.until_ready(Duration::from_secs(10));
    let error = first_error(&answer).unwrap_or_else(|| panic!("{answer:?}"));
    assert_eq!(error.sqlstate(), "57014", "{answer:?}");
    assert_eq!(error.message(), "canceling statement due to user request");
    backup_gone(&primary, &relay, Duration::from_secs(5));
    let (system, _, _) = client.identify_system();
    assert_eq!(system, primary.system_id().unwrap().to_string());
    assert!(
        relay
            .log_contents()
            .contains("cancel request for a relayed BASE_BACKUP")
    );
    drop(client);
    backup_completes(&bins, dir.path(), port);
}

/// `--base-backup-upstream` takes backups from another server of the same cluster (here a
/// standby of the primary, so the backup says `BACKUP FROM: standby`) while the relay streams
/// from its upstream; a server of another cluster is refused with PostgreSQL's words for a
/// standby of the wrong primary.
#[test]
fn backups_come_from_the_base_backup_upstream() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "basebackup-other-upstream");
    let primary = archiving_primary(&bins, dir.path(), 1);
    primary
        .psql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g")
        .unwrap();
    let mut standby = primary
        .basebackup_standby(&primary.conninfo(), None)
        .unwrap();
    standby.start().unwrap();
    primary.psql("CHECKPOINT").unwrap();
    wait_replayed(
        &standby,
        primary.current_wal_flush_lsn().unwrap(),
        Duration::from_secs(30),
    );

    let relay_port = free_port().unwrap();
    let listen = format!("127.0.0.1:{relay_port}");
    let relay = RelayProcess::start(
        &primary.conninfo(),
        &dir.path().join("relay"),
        &[
            "--listen",
            &listen,
            "--base-backup-upstream",
            &standby.conninfo(),
        ],
    );
    wait_acked(
        &primary,
        primary.current_wal_flush_lsn().unwrap(),
        Duration::from_secs(30),
    );
    let (mut cmd, copy) = pg_basebackup(&bins, dir.path(), relay_port, &["-c", "fast"]);
    walrelay::testkit::localpg::run(&mut cmd)
        .unwrap_or_else(|e| panic!("{e}\n{}", relay.log_contents()));
    let label = std::fs::read_to_string(copy.path().join("data/backup_label")).unwrap();
    assert!(label.contains("BACKUP FROM: standby"), "{label}");
    walrelay::testkit::localpg::run(
        bins.command("pg_verifybackup")
            .arg(copy.path().join("data")),
    )
    .unwrap();

    let other = archiving_primary(&bins, dir.path(), 1);
    let other_port = free_port().unwrap();
    let listen = format!("127.0.0.1:{other_port}");
    let wrong_args = [
        "--listen",
        &listen,
        "--base-backup-upstream",
        &other.conninfo(),
        "--upstream-slot",
        "relay_wrong",
        "--application-name",
        "relay_wrong",
    ];
    let _wrong = RelayProcess::start(
        &primary.conninfo(),
        &dir.path().join("relay-wrong"),
        &wrong_args,
    );
    let now = primary.current_wal_flush_lsn().unwrap();
    wait_until(Duration::from_secs(30), "the second relay streams", || {
        Ok(acked_flush(&primary, "relay_wrong").is_some_and(|f| f >= now))
    })
    .unwrap();
    let (mut cmd, _copy) = pg_basebackup(&bins, dir.path(), other_port, &["-c", "fast"]);
    let refused = walrelay::testkit::localpg::run(&mut cmd)
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("database system identifier differs"),
        "{refused}"
    );
    assert_eq!(
        other
            .psql("SELECT count(*) FROM pg_stat_replication")
            .unwrap(),
        "0"
    );
}

/// A client that stops reading (SIGSTOP) is dropped after the sender timeout, and the
/// backup ends on the primary.
#[test]
fn a_client_that_stops_reading_is_dropped_after_the_sender_timeout() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "basebackup-stall");
    let args = ["--sender-timeout", "2s"];
    let (primary, relay, port) = primary_and_relay(&bins, dir.path(), 300_000, &args);
    let phase = "streaming database files";
    let (mut client, _copy) = client_in_phase(
        &bins,
        dir.path(),
        &primary,
        &relay,
        port,
        &["-c", "fast"],
        phase,
    );
    signal_group(&client, "-STOP");
    backup_gone(&primary, &relay, Duration::from_secs(20));
    assert!(
        relay.log_contents().contains("the client has not read for"),
        "{}",
        relay.log_contents()
    );
    signal_group(&client, "-KILL");
    let _ = client.wait();
    backup_completes(&bins, dir.path(), port);
}

/// The other shapes of the answer pass through whole: server-side compression (larger CopyData
/// of the compressing sinks), WAL in the archive (`-X fetch`), tar format, SHA-512 manifest
/// checksums. Each plain copy passes `pg_verifybackup`; the tar one is checked by listing it.
#[test]
fn other_answer_shapes_pass_through() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "basebackup-shapes");
    let (primary, relay, port) = primary_and_relay(&bins, dir.path(), 20_000, &[]);
    let source = format!("host=127.0.0.1 port={port} user=postgres");
    let cases: [&[&str]; 4] = [
        &["-X", "stream", "--compress=server-zstd"],
        &["-X", "stream", "--compress=server-gzip:5"],
        &["-X", "fetch", "--manifest-checksums=SHA512"],
        &["-X", "stream", "-Ft"],
    ];
    for args in cases {
        let copy = bins.scratch_dir(dir.path(), "shape").unwrap();
        let data = copy.path().join("data");
        let mut cmd = bins.command("pg_basebackup");
        cmd.arg("-D")
            .arg(&data)
            .args(["-d", &source, "-c", "fast", "--no-sync"])
            .args(args);
        walrelay::testkit::localpg::run(&mut cmd)
            .unwrap_or_else(|e| panic!("{args:?}: {e}\n{}", relay.log_contents()));
        if args.contains(&"-Ft") {
            let listed = std::process::Command::new("tar")
                .arg("tf")
                .arg(data.join("base.tar"))
                .output()
                .unwrap();
            assert!(listed.status.success(), "{args:?}");
            let names = String::from_utf8_lossy(&listed.stdout);
            assert!(names.lines().any(|l| l == "PG_VERSION"), "{names}");
            assert!(data.join("pg_wal.tar").exists() && data.join("backup_manifest").exists());
        } else {
            let mut verify = bins.command("pg_verifybackup");
            verify.arg(&data);
            walrelay::testkit::localpg::run(&mut verify)
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }
    assert_eq!(
        primary
            .psql("SELECT count(*) FROM pg_stat_progress_basebackup")
            .unwrap(),
        "0"
    );
}

/// Two BASE_BACKUPs pipelined in one write run one after the other, as on a walsender (which
/// reads nothing during a backup): the second is read only after the first's ReadyForQuery,
/// and with one backup place it gets the place the first released.
#[test]
fn pipelined_backups_run_one_after_the_other() {
    use downstream_client::{RawClient, first_error, query_msg};
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "basebackup-pipelined");
    let (_primary, relay, port) = primary_and_relay(&bins, dir.path(), 2_000, &[]);
    let mut client = RawClient::login(port, "pipelined");
    let mut both = query_msg("BASE_BACKUP (CHECKPOINT 'fast')");
    both.extend(query_msg("BASE_BACKUP (CHECKPOINT 'fast', MANIFEST 'yes')"));
    client.send(&both);
    for (n, manifest) in [(1, false), (2, true)] {
        let answer = client.until_ready(Duration::from_secs(60));
        assert!(
            first_error(&answer).is_none(),
            "backup {n}: {:?}\n{}",
            first_error(&answer),
            relay.log_contents()
        );
        let tags: Vec<u8> = answer.iter().map(|m| m.tag).collect();
        assert_eq!(tags.iter().filter(|t| **t == b'H').count(), 1, "backup {n}");
        assert!(tags.contains(&b'c'), "backup {n}");
        let last_tag = answer.iter().rev().find_map(|m| m.command_tag());
        assert_eq!(last_tag.as_deref(), Some("BASE_BACKUP"), "backup {n}");
        // PostgreSQL 15's `m` CopyData announces the manifest.
        let has_manifest = answer
            .iter()
            .any(|m| m.copy_data().is_some_and(|d| d.first() == Some(&b'm')));
        assert_eq!(has_manifest, manifest, "backup {n}");
    }
    // The relay logs each backup once it has left the upstream, just after the answer.
    let logged = || Ok(relay.log_contents().matches("BASE_BACKUP relayed").count() == 2);
    wait_until(Duration::from_secs(5), "two backups logged", logged).unwrap();
}

/// The password of the one user the network test's relay lets in.
const BACKUP_PASSWORD: &str = "backup-pw";

/// A relay whose only downstream access is TLS plus SCRAM, serving a client in a network
/// namespace that cannot reach the primary (which listens on 127.0.0.1 only; the relay
/// listens on this side of the veth pair and reaches the primary on loopback). From inside:
/// the primary does not answer `pg_isready` while the relay does; pg_basebackup without TLS
/// is refused by the relay's rules; with `sslmode=verify-full` and SCRAM (password from
/// `PGPASSWORD`) it takes a copy that `pg_verifybackup` passes, both of its connections
/// logged in by SCRAM from the namespace; the copy, started inside the namespace as a hot
/// standby of the relay on a relay slot made beforehand, streams from the relay's address
/// over TLS and replays to the primary's position with the same data.
#[test]
fn tls_and_scram_backup_from_a_network_that_cannot_reach_the_primary() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let Some(ns) = netns_or_skip() else {
        return;
    };
    let remote = bins.in_netns(ns.path());
    let dir = scratch(&bins, "basebackup-tls");
    let primary = archiving_primary(&bins, dir.path(), 1);
    primary
        .psql("CREATE TABLE t AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 20000) g")
        .unwrap();
    // The user's secret as the primary stores it; the relay checks it, the primary never
    // sees the user (the relay's own connections to it are `postgres` on loopback).
    primary
        .psql(&format!(
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE backup LOGIN REPLICATION PASSWORD '{BACKUP_PASSWORD}'"
        ))
        .unwrap();
    let secret = primary
        .psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'backup'")
        .unwrap();
    assert!(secret.starts_with("SCRAM-SHA-256$"), "{secret}");
    let users = dir.path().join("users");
    fs::write(&users, format!("backup {secret}\n")).unwrap();
    fs::set_permissions(&users, fs::Permissions::from_mode(0o600)).unwrap();
    // The namespace's /30: both ends of the pair.
    let subnet = std::net::Ipv4Addr::from(u32::from(ns.host_addr()) & !3);
    let hba = dir.path().join("hba.conf");
    fs::write(
        &hba,
        format!("hostssl replication backup {subnet}/30 scram-sha-256\n"),
    )
    .unwrap();
    let host = ns.host_addr().to_string();
    let ca = TestCa::new(&dir.path().join("certs"), "walrelay-test-ca");
    let server = ca.server("server", "relay", &[&host], 1);
    let port = free_port().unwrap();
    let listen = format!("{host}:{port}");
    let relay = RelayProcess::start(
        &primary.conninfo(),
        &dir.path().join("relay"),
        &[
            "--listen",
            &listen,
            "--ssl-cert-file",
            server.cert.to_str().unwrap(),
            "--ssl-key-file",
            server.key.to_str().unwrap(),
            "--hba-file",
            hba.to_str().unwrap(),
            "--auth-file",
            users.to_str().unwrap(),
        ],
    );
    let now = primary.current_wal_flush_lsn().unwrap();
    wait_acked(&primary, now, Duration::from_secs(30));

    // From inside, the relay answers and the primary does not, at either address; from
    // here, the primary answers.
    let ready = |bins: &PgBinaries, host: &str, port: u16| {
        let mut cmd = bins.command("pg_isready");
        cmd.args(["-h", host, "-p", &port.to_string(), "-t", "5"]);
        cmd.output().unwrap().status.code()
    };
    assert_eq!(ready(&bins, "127.0.0.1", primary.port()), Some(0));
    assert_eq!(
        ready(&remote, &host, port),
        Some(0),
        "the relay, from inside"
    );
    for address in ["127.0.0.1", host.as_str()] {
        assert_eq!(
            ready(&remote, address, primary.port()),
            Some(2),
            "the primary at {address}, from inside: pg_isready's exit code"
        );
    }

    let relay_at = |extra: &str| format!("host={host} port={port} user=backup {extra}");
    let verified = format!("sslmode=verify-full sslrootcert={}", ca.cert_file.display());
    let basebackup = |conninfo: &str, target: &Path| {
        let mut cmd = remote.command("pg_basebackup");
        cmd.env("PGPASSWORD", BACKUP_PASSWORD)
            .arg("-D")
            .arg(target)
            .args(["-d", conninfo])
            .args(["-X", "stream", "-c", "fast", "--no-sync"])
            .arg("--manifest-checksums=SHA256");
        walrelay::testkit::localpg::run(&mut cmd).map_err(|e| e.to_string())
    };

    // Without TLS the relay's rules have no entry for the client.
    let plain = bins.scratch_dir(dir.path(), "plain").unwrap();
    let refused = basebackup(&relay_at("sslmode=disable"), &plain.path().join("data"))
        .expect_err("a backup without TLS");
    let inside = ns.inside_addr();
    assert!(
        refused.contains(&format!(
            "no pg_hba.conf entry for replication connection from host \"{inside}\", user \"backup\", no encryption"
        )),
        "{refused}"
    );
    assert!(!relay.log_contents().contains("BASE_BACKUP"));

    // The standby's slot on the relay, made from inside before the backup.
    let slot_conninfo = format!(
        "{} replication=1",
        relay_at(&format!("{verified} password={BACKUP_PASSWORD}"))
    );
    remote
        .psql(
            &slot_conninfo,
            "CREATE_REPLICATION_SLOT tls_copy PHYSICAL RESERVE_WAL",
        )
        .unwrap();
    let logins_before = scram_logins(&relay.log_contents(), &inside.to_string());

    // With TLS and SCRAM: the copy, verified.
    let copy = bins.scratch_dir(dir.path(), "copy").unwrap();
    let data = copy.path().join("data");
    basebackup(
        &relay_at(&format!("{verified} channel_binding=require")),
        &data,
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", relay.log_contents()));
    let mut verify = bins.command("pg_verifybackup");
    verify.arg(&data);
    let out = walrelay::testkit::localpg::run(&mut verify).unwrap();
    assert!(out.contains("backup successfully verified"), "{out}");
    // Its two connections (the backup, the WAL streamer) logged in by SCRAM over TLS from
    // inside.
    let logins = scram_logins(&relay.log_contents(), &inside.to_string());
    assert_eq!(logins, logins_before + 2, "{}", relay.log_contents());
    let logged = || Ok(relay.log_contents().contains("BASE_BACKUP relayed"));
    wait_until(Duration::from_secs(5), "the backup logged", logged)
        .unwrap_or_else(|e| panic!("{e}\n{}", relay.log_contents()));
    let label = fs::read_to_string(data.join("backup_label")).unwrap();
    assert!(label.contains("START TIMELINE: 1"), "{label}");

    // The copy as a hot standby inside the namespace, streaming from the relay's address.
    let feed = relay_at(&format!(
        "{verified} password={BACKUP_PASSWORD} application_name=tls_copy"
    ));
    let mut standby = primary
        .standby_from_copy(copy, &feed, Some("tls_copy"))
        .unwrap();
    standby.set_bins(remote.clone());
    standby.start().unwrap();
    primary
        .psql("INSERT INTO t SELECT g, 'after' FROM generate_series(20001, 21000) g")
        .unwrap();
    let target = primary.current_wal_flush_lsn().unwrap();
    wait_replayed(&standby, target, Duration::from_secs(60));
    let digest = "SELECT count(*) || ':' || md5(string_agg(id || pad, ',' ORDER BY id)) FROM t";
    assert_eq!(standby.psql(digest).unwrap(), primary.psql(digest).unwrap());
    let receiver = standby
        .psql("SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver")
        .unwrap();
    assert_eq!(receiver, format!("streaming|{host}|{port}"));
    let slot = remote
        .psql(&slot_conninfo, "READ_REPLICATION_SLOT tls_copy")
        .unwrap();
    assert!(slot.starts_with("physical|"), "{slot}");
    // The primary serves only the relay: its walsender, no backup left running.
    assert_eq!(
        primary
            .psql("SELECT string_agg(application_name, ',') FROM pg_stat_replication")
            .unwrap(),
        "walrelay"
    );
    assert_eq!(
        primary
            .psql("SELECT count(*) FROM pg_stat_progress_basebackup")
            .unwrap(),
        "0"
    );
}

/// How many SCRAM logins over TLS from `peer` the relay's `log` holds.
fn scram_logins(log: &str, peer: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.contains("replication connection authorized")
                && l.contains(&format!("peer={peer}:"))
                && l.contains(" ssl=\"TLS")
                && l.contains("method=\"scram-sha-256\"")
        })
        .count()
}
