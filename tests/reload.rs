//! SIGHUP applies a new configuration file to a running relay, under load, against real
//! servers: the upstream connection string switches to a second server (a standby of the
//! same primary) while the two standbys behind the relay keep their walreceivers (same pids)
//! and keep replaying; a configuration file with an error is reported and the running
//! settings stay; a setting that only a restart can change is named and kept.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;
use walrelay::testkit::localpg::{Cluster, free_port, require_postgres, wait_until};
use walrelay::types::Lsn;

const TIMEOUT: Duration = Duration::from_secs(60);

fn write_config(path: &Path, upstream: &str, data_dir: &Path, listen: &str, extra: &str) {
    std::fs::write(
        path,
        format!(
            "upstream = \"{upstream}\"\ndata_dir = \"{}\"\nlisten = \"{listen}\"\n\
             reconnect_min = \"50ms\"\nreconnect_max = \"1s\"\nstatus_interval = \"1s\"\n{extra}",
            data_dir.display()
        ),
    )
    .unwrap();
}

fn receiver_pid(standby: &Cluster) -> String {
    standby
        .psql("SELECT pid FROM pg_stat_wal_receiver")
        .unwrap()
}

/// Whether `server` has the relay among its walsenders.
fn serves_relay(server: &Cluster) -> bool {
    server
        .psql("SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walrelay'")
        .is_ok_and(|n| n == "1")
}

fn wait_replayed(standbys: &[Cluster], end: Lsn) {
    for s in standbys {
        wait_until(TIMEOUT, "standby replay", || Ok(s.replay_lsn()? >= end)).unwrap();
    }
}

/// The whole reload story, in order.
#[test]
fn sighup_switches_the_upstream_under_load_and_refuses_a_broken_file() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "reload");
    let primary = archiving_primary(&bins, &dir.path().join("primary"), 16);
    // The second server: a standby of the primary, streaming from it directly.
    let mut second = primary
        .basebackup_standby(
            &format!("{} application_name=second", primary.conninfo()),
            None,
        )
        .unwrap();
    second.start().unwrap();

    let relay_port = free_port().unwrap();
    let listen = format!("127.0.0.1:{relay_port}");
    let config = dir.path().join("walrelay.toml");
    let data_dir = dir.path().join("relay");
    write_config(&config, &primary.conninfo(), &data_dir, &listen, "");
    let relay = RelayProcess::start_run(
        std::path::Path::new(env!("CARGO_BIN_EXE_walrelay")),
        &data_dir,
        &["--config", config.to_str().unwrap()],
    );
    let relay_conninfo = format!("host=127.0.0.1 port={relay_port} user=postgres");
    wait_until(TIMEOUT, "the relay to serve", || {
        Ok(bins
            .psql(
                &format!("{relay_conninfo} replication=1"),
                "IDENTIFY_SYSTEM",
            )
            .is_ok())
    })
    .unwrap();
    let mut standbys = Vec::new();
    for name in ["r1", "r2"] {
        bins.psql(
            &format!("{relay_conninfo} replication=1"),
            &format!("CREATE_REPLICATION_SLOT {name} PHYSICAL"),
        )
        .unwrap();
        let mut s = primary
            .basebackup_standby(
                &format!("{relay_conninfo} application_name={name}"),
                Some(name),
            )
            .unwrap();
        s.start().unwrap();
        standbys.push(s);
    }
    wait_until(TIMEOUT, "walreceivers", || {
        Ok(standbys.iter().all(|s| !receiver_pid(s).is_empty()))
    })
    .unwrap();
    let pids: Vec<String> = standbys.iter().map(receiver_pid).collect();
    assert!(serves_relay(&primary) && !serves_relay(&second));

    let load = WriteLoad::start(&bins, &primary.conninfo(), 100, 0);
    std::thread::sleep(Duration::from_secs(1));

    // 1. The upstream switches to the second server.
    let at = relay.log_len();
    write_config(&config, &second.conninfo(), &data_dir, &listen, "");
    relay.signal("HUP");
    relay.wait_log(at, "setting reloaded", TIMEOUT);
    wait_until(
        TIMEOUT,
        "the relay streaming from the second server",
        || Ok(serves_relay(&second) && !serves_relay(&primary)),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let end = primary.current_wal_flush_lsn().unwrap();
    wait_replayed(&standbys, end);
    let log = relay.log_since(at);
    assert!(log.contains("setting=\"upstream\""), "{log}");
    assert!(
        log.contains("upstream settings changed: reconnecting with them"),
        "{log}"
    );
    assert!(
        !log.contains("postgres@") && !log.contains(&second.conninfo()),
        "the connection string is not logged"
    );

    // 2. A broken file is reported; the second server stays the upstream.
    let at = relay.log_len();
    write_config(
        &config,
        &primary.conninfo(),
        &data_dir,
        &listen,
        "sender_timeout = \"banana\"\n",
    );
    relay.signal("HUP");
    relay.wait_log(at, "configuration not reloaded", TIMEOUT);
    std::thread::sleep(Duration::from_secs(2));
    assert!(serves_relay(&second) && !serves_relay(&primary));

    // 3. A setting only a restart applies is named and kept; the others apply.
    let at = relay.log_len();
    let other = format!("127.0.0.1:{}", free_port().unwrap());
    write_config(
        &config,
        &second.conninfo(),
        &data_dir,
        &other,
        "wal_keep_size = \"64MB\"\n",
    );
    relay.signal("HUP");
    relay.wait_log(at, "only a restart applies it", TIMEOUT);
    let log = relay.log_since(at);
    assert!(log.contains("setting=\"listen\""), "{log}");
    assert!(log.contains("setting=\"wal_keep_size\""), "{log}");
    assert!(
        bins.psql(
            &format!("{relay_conninfo} replication=1"),
            "IDENTIFY_SYSTEM"
        )
        .is_ok(),
        "the old listen address still serves"
    );

    let (committed, _) = load.stop();
    assert!(committed > 0);
    let end = primary.current_wal_flush_lsn().unwrap();
    wait_replayed(&standbys, end);
    let after: Vec<String> = standbys.iter().map(receiver_pid).collect();
    assert_eq!(pids, after, "a walreceiver restarted");
    for s in &standbys {
        assert_eq!(
            s.psql("SELECT count(*) FROM walrelay_fault_load").unwrap(),
            primary
                .psql("SELECT count(*) FROM walrelay_fault_load")
                .unwrap()
        );
    }
    drop(relay);
}
