//! The relay serving clients on another network, as PostgreSQL 15 clients see it: psql,
//! pg_receivewal and standbys inside a network namespace of the test's own, joined to this
//! one by a veth pair, log in over TLS with SCRAM (channel binding required), MD5 secrets,
//! cleartext passwords over TLS and client certificates, by rules in pg_hba.conf format and
//! secrets copied from the primary's `pg_authid` or made by `walrelay passwd`; they are refused
//! with PostgreSQL's texts when the rules say no (H3: plaintext against a `hostssl`-only rule,
//! a `reject` rule for the namespace's address range, a user no rule names). A standby streams through a relay restart;
//! three standbys keep streaming while the certificate is rotated and a rule added with SIGHUP,
//! and a broken rules file on reload keeps the old rules.
//!
//! Needs root (`ip netns`) and `openssl`; under `CI=true` both must be there.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::certs::{Issued, TestCa, Validity, served_serial};
use support::*;
use walrelay::testkit::localpg::{
    Cluster, PgBinaries, ScratchDir, free_port, pg_cache, require_postgres, run, wait_until,
};
use walrelay::testkit::netns::NetNs;

const ALICE: &str = "alice-pw";
const BOB: &str = "bob-pw";
const CAROL: &str = "carol-pw";
const ERIN: &str = "erin-pw";

/// A primary, certificates, users, rules, a namespace, and the relay serving them.
struct Site {
    /// The same binaries, run inside the namespace.
    remote: PgBinaries,
    ns: NetNs,
    dir: ScratchDir,
    primary: Cluster,
    relay: RelayProcess,
    port: u16,
    ca: TestCa,
    server: Issued,
    hba: PathBuf,
    flags: Vec<String>,
}

/// The secret PostgreSQL stores for a role made with `password_encryption = method`.
fn primary_secret(primary: &Cluster, user: &str, password: &str, method: &str) -> String {
    primary
        .psql(&format!(
            "SET password_encryption = '{method}'; CREATE ROLE {user} LOGIN REPLICATION PASSWORD '{password}'"
        ))
        .unwrap();
    primary
        .psql(&format!(
            "SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'"
        ))
        .unwrap()
}

fn rules(ns: &NetNs) -> String {
    let from = format!("{}/32", ns.inside_addr());
    format!(
        "# TYPE   DATABASE     USER               ADDRESS       METHOD
hostssl    replication  alice,mallory      {from}  scram-sha-256
hostssl    replication  bob                {from}  md5
hostssl    replication  certuser           {from}  cert
hostssl    replication  backup             {from}  cert map=certs
hostssl    replication  carol              {from}  password
hostnossl  replication  erin,plainonly     {from}  scram-sha-256
hostssl    replication  sslonly            {from}  scram-sha-256
host       replication  rejected           {from}  reject
hostssl    replication  alice              127.0.0.1/32  scram-sha-256
"
    )
}

fn site(label: &str) -> Option<Site> {
    let bins = require_postgres()?;
    let ns = netns_or_skip()?;
    let remote = bins.in_netns(ns.path());
    let dir = scratch(&bins, label);
    let primary = archiving_primary(&bins, dir.path(), 1);
    let certs = dir.path().join("certs");
    let ca = TestCa::new(&certs, "walrelay-test-ca");
    let host = ns.host_addr().to_string();
    let server = ca.server("server", "relay", &["localhost", "127.0.0.1", &host], 1);
    let users = format!(
        "alice {}\nbob {}\n{}{}",
        primary_secret(&primary, "alice", ALICE, "scram-sha-256"),
        primary_secret(&primary, "bob", BOB, "md5"),
        passwd_line("carol", CAROL),
        passwd_line("erin", ERIN),
    );
    let users_file = dir.path().join("users");
    fs::write(&users_file, users).unwrap();
    fs::set_permissions(&users_file, fs::Permissions::from_mode(0o600)).unwrap();
    let hba = dir.path().join("relay_hba.conf");
    fs::write(&hba, rules(&ns)).unwrap();
    let ident = dir.path().join("relay_ident.conf");
    fs::write(
        &ident,
        "# MAP  SYSTEM-USERNAME  PG-USERNAME\ncerts  certuser  backup\n",
    )
    .unwrap();
    let port = free_port().unwrap();
    let flags: Vec<String> = [
        "--listen".into(),
        format!("0.0.0.0:{port}"),
        "--ssl-cert-file".into(),
        server.cert.display().to_string(),
        "--ssl-key-file".into(),
        server.key.display().to_string(),
        "--ssl-ca-file".into(),
        ca.cert_file.display().to_string(),
        "--hba-file".into(),
        hba.display().to_string(),
        "--auth-file".into(),
        users_file.display().to_string(),
        "--ident-file".into(),
        ident.display().to_string(),
    ]
    .into();
    let relay = start_relay(&primary, dir.path(), &flags);
    Some(Site {
        remote,
        ns,
        dir,
        primary,
        relay,
        port,
        ca,
        server,
        hba,
        flags,
    })
}

fn start_relay(primary: &Cluster, dir: &Path, flags: &[String]) -> RelayProcess {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let relay = RelayProcess::start(&primary.conninfo(), &dir.join("relay"), &flags);
    let now = primary.current_wal_flush_lsn().unwrap();
    wait_acked(primary, now, Duration::from_secs(30));
    relay
}

impl Site {
    /// A connection string to the relay from inside the namespace, with `extra` settings.
    fn remote_conninfo(&self, extra: &str) -> String {
        format!(
            "host={} port={} replication=1 connect_timeout=10 {extra}",
            self.ns.host_addr(),
            self.port
        )
    }

    /// `verify-full` against the test CA.
    fn verified(&self) -> String {
        format!(
            "sslmode=verify-full sslrootcert={}",
            self.ca.cert_file.display()
        )
    }

    /// `IDENTIFY_SYSTEM` from inside the namespace.
    fn identify(&self, extra: &str) -> Result<String, String> {
        self.remote
            .psql(&self.remote_conninfo(extra), "IDENTIFY_SYSTEM")
            .map_err(|e| e.to_string())
    }

    fn assert_alive(&self) {
        let alice = format!("user=alice password={ALICE} {}", self.verified());
        let ours = self.identify(&alice).unwrap();
        let system = self.primary.system_id().unwrap().to_string();
        assert!(ours.starts_with(&format!("{system}|")), "{ours}");
    }
}

#[test]
fn clients_on_another_network_log_in_as_the_rules_say() {
    let Some(s) = site("netlogin") else { return };
    let system = s.primary.system_id().unwrap().to_string();
    let verified = s.verified();
    let inside = s.ns.inside_addr();
    let client = s.ca.client("certuser", "certuser", Validity::Current);
    let expired = s.ca.client("expired", "certuser", Validity::Expired);
    let alice_cert = s.ca.client("alicecert", "alice", Validity::Current);
    let stranger_ca = TestCa::new(&s.dir.path().join("other-ca"), "another-ca");
    let stranger = stranger_ca.client("stranger", "certuser", Validity::Current);
    let cert = |c: &Issued| format!("sslcert={} sslkey={}", c.cert.display(), c.key.display());

    let accepted = [
        (
            "SCRAM with channel binding required, verify-full",
            format!("user=alice password={ALICE} {verified} channel_binding=require"),
            "scram-sha-256",
        ),
        (
            "an MD5 secret copied from the primary, sslmode=require",
            format!("user=bob password={BOB} sslmode=require"),
            "md5",
        ),
        (
            "a cleartext password over TLS",
            format!("user=carol password={CAROL} {verified}"),
            "password",
        ),
        (
            "a client certificate whose CN is the user",
            format!("user=certuser {verified} {}", cert(&client)),
            "cert",
        ),
        (
            "a client certificate mapped to the user by the ident file",
            format!("user=backup {verified} {}", cert(&client)),
            "cert",
        ),
        (
            "SCRAM without TLS where the rule is hostnossl",
            format!("user=erin password={ERIN} sslmode=disable"),
            "scram-sha-256",
        ),
    ];
    for (what, conninfo, method) in &accepted {
        let out = s
            .identify(conninfo)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(out.starts_with(&format!("{system}|")), "{what}: {out}");
        let log = s.relay.log_contents();
        assert!(
            log.lines()
                .any(|l| l.contains("replication connection authorized")
                    && l.contains(&format!("peer={inside}:"))
                    && l.contains(&format!("method=\"{method}\""))),
            "{what}: no login line with method {method}"
        );
    }

    let refused = [
        (
            "a wrong password",
            format!("user=alice password=wrong {verified}"),
            "FATAL:  password authentication failed for user \"alice\"".to_owned(),
        ),
        (
            "an unknown user",
            format!("user=mallory password=whatever {verified}"),
            "FATAL:  password authentication failed for user \"mallory\"".to_owned(),
        ),
        (
            "a hostnossl rule over TLS",
            format!("user=plainonly password=x {verified}"),
            format!(
                "FATAL:  no pg_hba.conf entry for replication connection from host \"{inside}\", user \"plainonly\", SSL encryption"
            ),
        ),
        (
            "a hostssl rule over plaintext",
            "user=sslonly password=x sslmode=disable".to_owned(),
            format!(
                "FATAL:  no pg_hba.conf entry for replication connection from host \"{inside}\", user \"sslonly\", no encryption"
            ),
        ),
        (
            "no matching rule",
            format!("user=nobody password=x {verified}"),
            format!(
                "FATAL:  no pg_hba.conf entry for replication connection from host \"{inside}\", user \"nobody\", SSL encryption"
            ),
        ),
        (
            "a reject rule",
            format!("user=rejected password=x {verified}"),
            format!(
                "FATAL:  pg_hba.conf rejects replication connection for host \"{inside}\", user \"rejected\", SSL encryption"
            ),
        ),
        (
            "a cert rule without a certificate",
            format!("user=certuser {verified}"),
            "FATAL:  connection requires a valid client certificate".to_owned(),
        ),
        (
            "a certificate whose CN is another user",
            format!("user=certuser {verified} {}", cert(&alice_cert)),
            "FATAL:  certificate authentication failed for user \"certuser\"".to_owned(),
        ),
        (
            "a certificate the ident file does not map to the user",
            format!("user=backup {verified} {}", cert(&alice_cert)),
            "FATAL:  certificate authentication failed for user \"backup\"".to_owned(),
        ),
        (
            "an expired client certificate",
            format!("user=certuser {verified} {}", cert(&expired)),
            "certificate expired".to_owned(),
        ),
        (
            "a client certificate from an unknown CA",
            format!("user=certuser {verified} {}", cert(&stranger)),
            "unknown ca".to_owned(),
        ),
        (
            "channel_binding=require against a rule without TLS",
            format!("user=erin password={ERIN} sslmode=disable channel_binding=require"),
            "channel binding".to_owned(),
        ),
    ];
    for (what, conninfo, expected) in &refused {
        let e = s.identify(conninfo).expect_err(what);
        assert!(
            e.contains(expected.as_str()),
            "{what}: expected {expected:?} in {e}"
        );
        s.assert_alive();
    }
    let log = s.relay.log_contents();
    for user in [
        "alice",
        "mallory",
        "plainonly",
        "sslonly",
        "nobody",
        "rejected",
    ] {
        let refusals = log
            .lines()
            .filter(|l| l.contains("connection refused") && l.contains(&format!("user={user} ")))
            .count();
        assert!(refusals >= 1, "no refusal logged for {user}");
    }
    assert!(!log.contains(ALICE) && !log.contains(CAROL) && !log.contains("SCRAM-SHA-256$"));

    // H2 and H14 over TLS: SQL, logical replication and bad slot names get PostgreSQL's
    // answers, and no file appears for a name that tries to leave the slot directory.
    let alice = format!("user=alice password={ALICE} {verified}");
    let sql = s
        .remote
        .psql(&s.remote_conninfo(&alice), "SELECT 1")
        .unwrap_err()
        .to_string();
    assert!(
        sql.contains("cannot execute SQL commands in WAL sender for physical replication"),
        "{sql}"
    );
    let logical = s
        .remote
        .psql(
            &s.remote_conninfo(&alice)
                .replace("replication=1", "replication=database"),
            "IDENTIFY_SYSTEM",
        )
        .unwrap_err()
        .to_string();
    assert!(logical.contains("replication=database"), "{logical}");
    for (name, expected) in [
        ("../../x", "contains invalid character"),
        ("a/b", "contains invalid character"),
        ("A", "contains invalid character"),
        ("", "is too short"),
    ] {
        let e = s
            .remote
            .psql(
                &s.remote_conninfo(&alice),
                &format!("CREATE_REPLICATION_SLOT \"{name}\" PHYSICAL"),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains(expected), "{name:?}: {e}");
    }
    assert!(!s.dir.path().join("x").exists() && !Path::new("/tmp/x").exists());

    // pg_receivewal from the other network, verify-full and SCRAM with channel binding.
    let wal = s.dir.path().join("received");
    fs::create_dir(&wal).unwrap();
    let conninfo = s.remote_conninfo(&format!(
        "user=alice password={ALICE} {verified} channel_binding=require"
    ));
    let mut receiver = s.remote.receivewal(&conninfo, &wal, &[]).unwrap();
    s.primary.write_load(500).unwrap();
    let switched = s.primary.switch_wal().unwrap();
    wait_until(
        Duration::from_secs(30),
        "pg_receivewal completes a segment",
        || Ok(!segment_files(&wal).is_empty()),
    )
    .unwrap();
    assert!(
        receiver.try_status().unwrap().is_none(),
        "pg_receivewal exited"
    );
    receiver.stop().unwrap();
    let size = s.primary.wal_segment_size().unwrap();
    assert_same_segments(&wal, &s.primary.archive_dir(), size);
    assert!(switched.0 > 0);
}

/// PostgreSQL 17's `sslnegotiation=direct` (a ClientHello as the first bytes, ALPN
/// `postgresql`), through psql linked with libpq 17: the one in PostgreSQL 17's build that
/// `scripts/fetch-postgres` fetches, or in `WALRELAY_LIBPQ17`.
#[test]
fn libpq_17_direct_tls_logs_in() {
    let lib = std::env::var_os("WALRELAY_LIBPQ17")
        .map(PathBuf::from)
        .unwrap_or_else(|| pg_cache().join("17").join("lib"));
    if !lib.join("libpq.so.5").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide libpq 17 (scripts/fetch-postgres 17)"
        );
        eprintln!("skipping: no libpq 17 in {}", lib.display());
        return;
    }
    let Some(s) = site("direct") else { return };
    let mut psql = s.remote.command("psql");
    psql.env("LD_LIBRARY_PATH", &lib).args([
        "-X",
        "-At",
        "-d",
        &s.remote_conninfo(&format!(
            "user=alice password={ALICE} {} sslnegotiation=direct channel_binding=require",
            s.verified()
        )),
        "-c",
        "IDENTIFY_SYSTEM",
    ]);
    let out = run(&mut psql).unwrap();
    assert!(
        out.starts_with(&s.primary.system_id().unwrap().to_string()),
        "{out}"
    );
}

/// A hot standby of the primary, running inside the namespace, streaming from the relay on a
/// relay slot as `alice` with verify-full and channel binding.
fn remote_standby(s: &Site, name: &str) -> Cluster {
    let conninfo = s.remote_conninfo(&format!(
        "user=alice password={ALICE} {} channel_binding=require application_name={name}",
        s.verified()
    ));
    s.remote
        .psql(
            &conninfo,
            &format!("CREATE_REPLICATION_SLOT \"{name}\" PHYSICAL"),
        )
        .unwrap();
    let conninfo = conninfo.replace(" replication=1", "");
    let mut standby = s.primary.basebackup_standby(&conninfo, Some(name)).unwrap();
    standby.set_bins(s.remote.clone());
    standby.start().unwrap();
    standby
}

fn wait_streaming(standby: &Cluster) {
    wait_until(Duration::from_secs(60), "the walreceiver streams", || {
        Ok(standby
            .psql("SELECT status FROM pg_stat_wal_receiver")
            .is_ok_and(|st| st == "streaming"))
    })
    .unwrap();
}

fn wait_caught_up(primary: &Cluster, standby: &Cluster) {
    let target = primary.current_wal_flush_lsn().unwrap();
    wait_until(
        Duration::from_secs(60),
        &format!("the standby replays to {target}"),
        || Ok(standby.replay_lsn()? >= target),
    )
    .unwrap();
}

fn receiver_pid(standby: &Cluster) -> String {
    standby
        .psql("SELECT pid FROM pg_stat_wal_receiver")
        .unwrap()
}

#[test]
fn a_standby_on_another_network_streams_through_a_relay_restart() {
    let Some(mut s) = site("netstandby") else {
        return;
    };
    let standby = remote_standby(&s, "remote_1");
    wait_streaming(&standby);
    s.primary.write_load(2000).unwrap();
    wait_caught_up(&s.primary, &standby);

    s.relay.signal("TERM");
    assert!(s.relay.wait_exit(Duration::from_secs(20)).is_some());
    s.primary.write_load(2000).unwrap();
    s.relay = start_relay(&s.primary, s.dir.path(), &s.flags);
    wait_caught_up(&s.primary, &standby);
    wait_streaming(&standby);
    let count = standby
        .psql("SELECT count(*) FROM pg_stat_wal_receiver")
        .unwrap();
    assert_eq!(count, "1");
    assert!(
        s.relay.log_contents().contains("app=\"remote_1\""),
        "the standby did not log in again"
    );
}

#[test]
fn sighup_rotates_the_certificate_and_adds_rules_without_dropping_streams() {
    let Some(s) = site("reload") else { return };
    let standbys: Vec<Cluster> = (1..=3)
        .map(|i| remote_standby(&s, &format!("reload_{i}")))
        .collect();
    for standby in &standbys {
        wait_streaming(standby);
    }
    let pids: Vec<String> = standbys.iter().map(receiver_pid).collect();
    assert_eq!(
        served_serial("127.0.0.1", s.port).as_deref(),
        Some(s.server.serial.as_str())
    );
    let late = format!("user=late {}", s.verified());
    let e = s.identify(&late).expect_err("late is not in the rules yet");
    assert!(e.contains("no pg_hba.conf entry"), "{e}");

    // A new certificate from the same CA in the same files, and a rule for `late`.
    let host = s.ns.host_addr().to_string();
    let rotated =
        s.ca.server("server", "relay", &["localhost", "127.0.0.1", &host], 2);
    assert_ne!(rotated.serial, s.server.serial);
    let from = format!("{}/32", s.ns.inside_addr());
    let mut rules = fs::read_to_string(&s.hba).unwrap();
    rules.push_str(&format!("hostssl replication late {from} trust\n"));
    fs::write(&s.hba, &rules).unwrap();
    s.relay.signal("HUP");
    wait_until(Duration::from_secs(10), "the reload is logged", || {
        Ok(s.relay.log_contents().contains("rule added"))
    })
    .unwrap();
    let log = s.relay.log_contents();
    assert!(
        log.contains("certificate:"),
        "the new certificate is not logged"
    );
    assert!(!log.contains("BEGIN"), "key or certificate text in the log");

    assert_eq!(
        served_serial("127.0.0.1", s.port).as_deref(),
        Some(rotated.serial.as_str())
    );
    let out = s.identify(&late).unwrap();
    assert!(out.starts_with(&s.primary.system_id().unwrap().to_string()));
    s.primary.write_load(2000).unwrap();
    for standby in &standbys {
        wait_caught_up(&s.primary, standby);
    }
    let after: Vec<String> = standbys.iter().map(receiver_pid).collect();
    assert_eq!(pids, after, "a walreceiver reconnected");

    // A rules file that does not parse: the old rules stay in force.
    fs::write(
        &s.hba,
        format!("{rules}host replication all 10.0.0.0/33 trust\n"),
    )
    .unwrap();
    s.relay.signal("HUP");
    wait_until(
        Duration::from_secs(10),
        "the failed reload is logged",
        || Ok(s.relay.log_contents().contains("not reloaded")),
    )
    .unwrap();
    let log = s.relay.log_contents();
    assert!(
        log.contains("invalid CIDR mask in address \"10.0.0.0/33\"")
            && log.contains(&s.hba.display().to_string()),
        "the error names neither the line's fault nor the file"
    );
    s.identify(&late).unwrap();
    s.assert_alive();
    s.primary.write_load(500).unwrap();
    for standby in &standbys {
        wait_caught_up(&s.primary, standby);
    }
    let still: Vec<String> = standbys.iter().map(receiver_pid).collect();
    assert_eq!(pids, still);
}

/// `--unix-socket-dir`: `local` rules decide, the host is `[local]` in refusals, and the
/// socket file goes with the relay.
#[test]
fn unix_socket_clients_follow_local_rules() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "unixsock");
    let primary = archiving_primary(&bins, dir.path(), 1);
    let alice = primary_secret(&primary, "alice", ALICE, "scram-sha-256");
    let users = dir.path().join("users");
    fs::write(&users, format!("alice {alice}\n")).unwrap();
    fs::set_permissions(&users, fs::Permissions::from_mode(0o600)).unwrap();
    let hba = dir.path().join("hba.conf");
    fs::write(
        &hba,
        "local replication alice scram-sha-256\nlocal replication all reject\n",
    )
    .unwrap();
    let sockets = dir.path().join("sockets");
    fs::create_dir(&sockets).unwrap();
    let port = free_port().unwrap();
    let flags = [
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--unix-socket-dir".to_owned(),
        sockets.display().to_string(),
        "--hba-file".to_owned(),
        hba.display().to_string(),
        "--auth-file".to_owned(),
        users.display().to_string(),
    ];
    let mut relay = start_relay(&primary, dir.path(), &flags);
    let socket = sockets.join(format!(".s.PGSQL.{port}"));
    assert!(socket.exists());
    let local = |user: &str, password: &str| {
        bins.psql(
            &format!(
                "host={} port={port} user={user} password={password} replication=1",
                sockets.display()
            ),
            "IDENTIFY_SYSTEM",
        )
        .map_err(|e| e.to_string())
    };
    let out = local("alice", ALICE).unwrap();
    assert!(
        out.starts_with(&primary.system_id().unwrap().to_string()),
        "{out}"
    );
    let e = local("alice", "wrong").unwrap_err();
    assert!(
        e.contains("password authentication failed for user \"alice\""),
        "{e}"
    );
    let e = local("bob", "x").unwrap_err();
    assert!(
        e.contains(
            "pg_hba.conf rejects replication connection for host \"[local]\", user \"bob\", no encryption"
        ),
        "{e}"
    );
    // Over TCP no rule matches.
    let e = bins
        .psql(
            &format!("host=127.0.0.1 port={port} user=alice password={ALICE} replication=1"),
            "IDENTIFY_SYSTEM",
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no pg_hba.conf entry for replication connection from host \"127.0.0.1\""),
        "{e}"
    );
    relay.signal("TERM");
    assert!(relay.wait_exit(Duration::from_secs(20)).is_some());
    assert!(!socket.exists(), "the socket file outlived the relay");
}
