//! Helpers for tests that put real standbys behind the relay: the primary, replication
//! commands on the relay, standbys on relay slots and what they report, the relay's
//! `/status`, and log searches.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use walrelay::testkit::localpg::{Cluster, ClusterBuilder, PgBinaries, wait_until};
use walrelay::types::Lsn;

use super::http_get;

/// A started primary with 1 MB segments, archiving on, and `config`.
pub fn primary_with(bins: &PgBinaries, dir: &Path, config: &[(&str, &str)]) -> Cluster {
    let mut builder = ClusterBuilder::new(bins.clone(), dir)
        .segment_size_mb(1)
        .archive(true);
    for (key, value) in config {
        builder = builder.config(key, value);
    }
    let mut primary = builder.init().unwrap();
    primary.start().unwrap();
    primary
}

/// A replication command on the relay listening on `port`.
pub fn relay_repl(bins: &PgBinaries, port: u16, sql: &str) -> String {
    let conninfo = format!("host=127.0.0.1 port={port} user=postgres replication=1");
    bins.psql(&conninfo, sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A hot standby of `primary` streaming from the relay on `relay_port` through relay slot
/// `slot` (created here), with `config` set; started.
pub fn relay_standby(
    primary: &Cluster,
    relay_port: u16,
    slot: &str,
    config: &[(&str, &str)],
) -> Cluster {
    relay_repl(
        primary.bins(),
        relay_port,
        &format!("CREATE_REPLICATION_SLOT {slot} PHYSICAL"),
    );
    let conninfo =
        format!("host=127.0.0.1 port={relay_port} user=postgres application_name={slot}");
    let mut standby = primary.basebackup_standby(&conninfo, Some(slot)).unwrap();
    for (key, value) in config {
        standby.set_config(key, value).unwrap();
    }
    standby.start().unwrap();
    standby
}

/// The pid of a standby's walreceiver, `None` while it has none.
pub fn walreceiver_pid(standby: &Cluster) -> Option<u32> {
    standby
        .psql("SELECT pid FROM pg_stat_wal_receiver WHERE status = 'streaming'")
        .ok()?
        .parse()
        .ok()
}

/// Waits until `standby` has replayed up to `target`; returns how long that took.
pub fn wait_replayed(standby: &Cluster, target: Lsn, timeout: Duration) -> Duration {
    let start = Instant::now();
    wait_until(timeout, &format!("standby replay >= {target}"), || {
        Ok(standby.replay_lsn().is_ok_and(|r| r >= target))
    })
    .unwrap();
    start.elapsed()
}

/// `restart_lsn` of the primary's slot for the relay.
pub fn relay_slot_restart(primary: &Cluster) -> Option<Lsn> {
    primary
        .psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'walrelay'")
        .ok()?
        .parse()
        .ok()
}

/// Row count and an md5 over every row of `table`, ordered by id.
pub fn table_digest(cluster: &Cluster, table: &str) -> String {
    cluster
        .psql(&format!(
            "SELECT count(*) || ' ' || coalesce(md5(string_agg(id || ':' || payload, ',' \
             ORDER BY id)), '-') FROM {table}"
        ))
        .unwrap()
}

/// The relay's `/status` as JSON.
pub fn relay_status(http_port: u16) -> serde_json::Value {
    let (code, _, body) = http_get(http_port, "/status", &[]);
    assert_eq!(code, 200, "/status: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Log lines of `log` that contain any of `needles`.
pub fn lines_with<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .collect()
}

/// Sets its flag when dropped, so a helper thread stops even when the test panics (a scope
/// would otherwise wait for it forever).
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The pid of the primary's walsender for the relay.
pub fn walsender_pid(primary: &Cluster) -> Option<u32> {
    primary
        .psql("SELECT pid FROM pg_stat_replication WHERE application_name = 'walrelay'")
        .ok()?
        .parse()
        .ok()
}
