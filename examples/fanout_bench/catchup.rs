//! The relay's ingest when the WAL is already on the primary, so that the load's pace does not
//! bound it: the relay is stopped, the WAL-only load writes `--mb` MB (the relay's slot holds
//! it), and the relay is started again. It then receives, checks, writes and fdatasyncs as
//! fast as the primary's walsender sends and its disk takes. Beside it, `pg_receivewal
//! --no-sync` fetches the same WAL from the primary, on a slot made when the relay stopped:
//! what the walsender sends to a client that only writes it into the page cache.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;
use walrelay::testkit::localpg::Cluster;
use walrelay::types::Lsn;

use crate::fanout::Load;
use crate::procfs::{Meter, Split, Usage};
use crate::servers::{RelayServer, drop_slot, relay_durable};
use crate::sqlconn::SqlConn;
use crate::{Bench, MIB, RUN_TIMEOUT, SETUP_TIMEOUT, check_interrupt, log, wait_for};

/// The slot `pg_receivewal` streams from.
const RECEIVEWAL_SLOT: &str = "bench_catchup_receivewal";

/// One catching-up of WAL already written.
#[derive(Debug, Serialize)]
pub struct Catchup {
    /// WAL the relay was behind when it started again: the primary's flush LSN after the load
    /// less the relay's durable end when it stopped.
    pub relay_bytes: u64,
    /// From starting the relay again until its durable end reached the primary's flush LSN.
    pub relay_s: f64,
    /// `relay_bytes` over `relay_s`, in MB a second.
    pub relay_mib_s: f64,
    /// WAL the relay made durable after its first answer to `IDENTIFY_SYSTEM`, once it served.
    pub relay_serving_bytes: u64,
    /// `relay_serving_bytes` over the time since that answer, in MB a second: the rate with
    /// the relay's start-up left out.
    pub relay_serving_mib_s: f64,
    /// What the relay spent from that answer on, by thread (its CPU per GiB is over
    /// `relay_serving_bytes`).
    pub relay: Usage,
    /// WAL `pg_receivewal` fetched: from the start of the segment its slot began in.
    pub receivewal_bytes: u64,
    /// From starting `pg_receivewal` until it exited at the primary's flush LSN (`-E`).
    pub receivewal_s: f64,
    /// `receivewal_bytes` over `receivewal_s`, in MB a second.
    pub receivewal_mib_s: f64,
}

/// Runs the catching-up once.
pub fn run_catchup(bench: &Bench, primary: &Cluster) -> Result<Catchup> {
    log("catch-up", "starting a relay");
    let opts = bench.relay_options("relay_catchup", 0);
    let mut relay = RelayServer::start(&bench.bins, primary, &opts)?;
    let mut conn = SqlConn::connect(primary.port(), false, "bench-load")?;
    conn.query("CHECKPOINT")?;
    let settled = conn.query_lsn("SELECT pg_current_wal_flush_lsn()")?;
    let mut relay_conn = SqlConn::connect(relay.port, true, "bench")?;
    wait_for(SETUP_TIMEOUT, "the relay to catch up", || {
        Ok(relay_durable(&mut relay_conn)? >= settled)
    })?;
    let from = relay_durable(&mut relay_conn)?;
    drop(relay_conn);
    relay.pause()?;
    conn.query(&format!(
        "SELECT pg_create_physical_replication_slot('{RECEIVEWAL_SLOT}', true)"
    ))?;
    let receivewal_from = conn.query_lsn(&format!(
        "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{RECEIVEWAL_SLOT}'"
    ))?;
    let mb = bench.args.mb;
    log(
        "catch-up",
        &format!("writing {mb} MB with the relay stopped"),
    );
    Load::Wal.write(&mut conn, mb)?;
    let target = conn.query_lsn("SELECT pg_current_wal_flush_lsn()")?;
    crate::write_back();

    let began = Instant::now();
    relay.restart()?;
    let mut relay_conn = SqlConn::connect(relay.port, true, "bench")?;
    let serving = (relay_durable(&mut relay_conn)?, Instant::now());
    let meter = Meter::start(relay.pid(), Split::Threads, bench.clk_tck, false);
    while relay_durable(&mut relay_conn)? < target {
        check_interrupt()?;
        if began.elapsed() > RUN_TIMEOUT {
            bail!("the relay did not catch up within {RUN_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(1));
    }
    let relay_s = began.elapsed().as_secs_f64();
    let serving_s = serving.1.elapsed().as_secs_f64();
    let usage = meter.finish();
    drop(relay_conn);
    relay.stop(primary)?;

    let dir = bench.bins.scratch_dir(bench.root.path(), "receivewal")?;
    let segment = u64::from(bench.args.segment_mb) * MIB;
    let receivewal_start = Lsn(receivewal_from.0 - receivewal_from.0 % segment);
    // pg_receivewal stops once it has received past `-E` (`stop_streaming`: endpos < xlogpos),
    // so one byte below the target ends it when the target arrives, not at the next record.
    let endpos = Lsn(target.0 - 1).to_string();
    crate::write_back();
    let began = Instant::now();
    let mut receivewal = bench.bins.receivewal(
        &primary.conninfo(),
        dir.path(),
        &["--slot", RECEIVEWAL_SLOT, "--no-sync", "-E", &endpos],
    )?;
    let status = receivewal.wait(RUN_TIMEOUT)?;
    let receivewal_s = began.elapsed().as_secs_f64();
    if !status.success() {
        bail!(
            "pg_receivewal failed ({status}): {}",
            receivewal.log_contents()
        );
    }
    drop_slot(primary, RECEIVEWAL_SLOT)?;

    let relay_bytes = target.saturating_distance(from);
    let relay_serving_bytes = target.saturating_distance(serving.0);
    let receivewal_bytes = target.saturating_distance(receivewal_start);
    let rate = |bytes: u64, s: f64| bytes as f64 / MIB as f64 / s;
    let catchup = Catchup {
        relay_bytes,
        relay_s,
        relay_mib_s: rate(relay_bytes, relay_s),
        relay_serving_bytes,
        relay_serving_mib_s: rate(relay_serving_bytes, serving_s),
        relay: usage,
        receivewal_bytes,
        receivewal_s,
        receivewal_mib_s: rate(receivewal_bytes, receivewal_s),
    };
    log(
        "catch-up",
        &format!(
            "relay: {:.0} MB in {:.2} s ({:.0} MB/s, {:.0} once serving; CPU {:.2} s); \
             pg_receivewal --no-sync: {:.0} MB in {:.2} s ({:.0} MB/s)",
            relay_bytes as f64 / MIB as f64,
            relay_s,
            catchup.relay_mib_s,
            catchup.relay_serving_mib_s,
            catchup.relay.cpu_s,
            receivewal_bytes as f64 / MIB as f64,
            receivewal_s,
            catchup.receivewal_mib_s
        ),
    );
    Ok(catchup)
}
