//! The relay's `flush_lag` against PostgreSQL's own: under one write load, a standby attached
//! to the primary directly and one attached through the relay, both sampled once a second;
//! the relay's figure for its standby (`walrelay_replication_flush_lag_seconds`, from when the
//! relay made the WAL durable) must agree with the primary's `pg_stat_replication.flush_lag`
//! for its own, within 20% plus the relay's own fsync and the one-sample granularity of both.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::Duration;

use support::*;
use walrelay::testkit::localpg::{free_port, require_postgres, wait_until};

const TIMEOUT: Duration = Duration::from_secs(60);

fn metrics(port: u16) -> String {
    http_get(port, "/metrics", &[]).2
}

/// The value of the first sample of `name` whose line contains `with`.
fn sample(text: &str, name: &str, with: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(with))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Medians over 20 samples: the relay's flush lag for its standby against the primary's for
/// the directly attached one.
#[test]
fn flush_lag_agrees_with_pg_stat_replication() {
    let Some(bins) = require_postgres() else {
        return;
    };
    let dir = scratch(&bins, "lag");
    let primary = archiving_primary(&bins, &dir.path().join("primary"), 16);
    let (relay_port, http_port) = (free_port().unwrap(), free_port().unwrap());
    let relay = RelayProcess::start(
        &primary.conninfo(),
        &dir.path().join("relay"),
        &[
            "--listen",
            &format!("127.0.0.1:{relay_port}"),
            "--http-listen",
            &format!("127.0.0.1:{http_port}"),
        ],
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
    bins.psql(
        &format!("{relay_conninfo} replication=1"),
        "CREATE_REPLICATION_SLOT behind PHYSICAL",
    )
    .unwrap();
    primary.create_physical_slot("direct").unwrap();
    let mut behind = primary
        .basebackup_standby(
            &format!("{relay_conninfo} application_name=behind"),
            Some("behind"),
        )
        .unwrap();
    let mut direct = primary
        .basebackup_standby(
            &format!("{} application_name=direct", primary.conninfo()),
            Some("direct"),
        )
        .unwrap();
    behind.start().unwrap();
    direct.start().unwrap();

    let load = WriteLoad::start(&bins, &primary.conninfo(), 50, 0);
    std::thread::sleep(Duration::from_secs(3));
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    while ours.len() < 20 {
        std::thread::sleep(Duration::from_millis(500));
        let pg = primary
            .psql(
                "SELECT extract(epoch FROM flush_lag) FROM pg_stat_replication \
                 WHERE application_name = 'direct'",
            )
            .unwrap();
        let text = metrics(http_port);
        let relay = sample(
            &text,
            "walrelay_replication_flush_lag_seconds",
            "application_name=\"behind\"",
        );
        if let (Ok(pg), Some(relay)) = (pg.parse::<f64>(), relay) {
            theirs.push(pg);
            ours.push(relay);
        }
    }
    load.stop();
    let text = metrics(http_port);
    let fsyncs = sample(&text, "walrelay_store_fsync_duration_seconds_count", "").unwrap();
    let fsync_sum = sample(&text, "walrelay_store_fsync_duration_seconds_sum", "").unwrap();
    let fsync = fsync_sum / fsyncs.max(1.0);
    let (ours, theirs) = (median(ours), median(theirs));
    println!(
        "flush_lag median: relay {:.2} ms, PostgreSQL {:.2} ms; the relay's mean fsync {:.2} ms",
        ours * 1e3,
        theirs * 1e3,
        fsync * 1e3
    );
    // Both count from a local flush to the standby's report of it; each takes the older of
    // two samples around the reported position, so one sampling interval of slack either
    // side (a flush each, at most the larger of the two lags' own spacing: the relay's fsync).
    let slack = 0.2 * theirs + 2.0 * fsync + 0.002;
    assert!(
        (ours - theirs).abs() <= slack,
        "relay {ours:.4} s against PostgreSQL {theirs:.4} s: more than {slack:.4} s apart"
    );
    drop(relay);
}
