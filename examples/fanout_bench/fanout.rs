//! Real standbys behind each fan-out server: for each mode, a fan-out server, then groups of
//! 0, then each `--standbys` count of standbys, each group measured under each load.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;
use walrelay::testkit::localpg::Cluster;
use walrelay::types::Lsn;

use crate::diskstats::DiskWrites;
use crate::procfs::{Meter, Split, Usage};
use crate::sampler::{Probe, Sampler};
use crate::servers::{FanOut, Mode, RECEIVED_SQL, Standbys, wait_caught_up};
use crate::sqlconn::SqlConn;
use crate::{Bench, MIB, log};

/// What the primary writes during a measured run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Load {
    /// 1 MB non-transactional `pg_logical_emit_message` records, then one commit: WAL and
    /// nothing else, so standbys replay almost nothing.
    Wal,
    /// Transactions of 5000-row INSERTs (about 130-byte rows, a primary key) into a table,
    /// until the WAL written reaches the size: heap and index records, replayed by standbys.
    Table,
}

impl Load {
    /// Its name in the output.
    pub fn name(self) -> &'static str {
        match self {
            Load::Wal => "wal",
            Load::Table => "table",
        }
    }

    /// Creates what the load writes to.
    pub fn prepare(self, conn: &mut SqlConn) -> Result<()> {
        if self == Load::Table {
            conn.query(
                "DROP TABLE IF EXISTS walrelay_bench; \
                 CREATE TABLE walrelay_bench (id bigserial PRIMARY KEY, payload text)",
            )?;
        }
        Ok(())
    }

    /// Writes about `mb` MB of WAL on the primary.
    pub fn write(self, conn: &mut SqlConn, mb: u32) -> Result<()> {
        match self {
            Load::Wal => conn.query(&format!(
                "DO $$ DECLARE payload text := repeat('x', {MIB}); BEGIN \
                   FOR i IN 1..{mb} LOOP \
                     PERFORM pg_logical_emit_message(false, 'bench', payload); \
                   END LOOP; \
                 END $$; \
                 SELECT pg_logical_emit_message(true, 'bench', 'end')"
            ))?,
            Load::Table => conn.query(&format!(
                "DO $$ DECLARE start pg_lsn := pg_current_wal_insert_lsn(); BEGIN \
                   WHILE pg_current_wal_insert_lsn() - start < {bytes} LOOP \
                     INSERT INTO walrelay_bench (payload) \
                       SELECT repeat(md5(g::text), 4) FROM generate_series(1, 5000) g; \
                     COMMIT; \
                   END LOOP; \
                 END $$",
                bytes = u64::from(mb) * MIB
            ))?,
        };
        Ok(())
    }

    /// Removes what the load wrote.
    pub fn cleanup(self, conn: &mut SqlConn) -> Result<()> {
        if self == Load::Table {
            conn.query("DROP TABLE IF EXISTS walrelay_bench")?;
        }
        Ok(())
    }
}

/// One measured run: a mode, a number of standbys, a load.
#[derive(Debug, Serialize)]
pub struct Case {
    /// The fan-out server.
    pub mode: Mode,
    /// Standbys behind it.
    pub standbys: usize,
    /// The load.
    pub load: Load,
    /// WAL written: the primary's flush LSN at the end minus its insert LSN at the start.
    pub wal_bytes: u64,
    /// From the load's start until its last commit returned.
    pub write_s: f64,
    /// From the load's start until the fan-out server held the WAL: the relay's durable end
    /// (`IDENTIFY_SYSTEM`), C's `pg_last_wal_receive_lsn()`; `None` for the primary.
    pub server_received_s: Option<f64>,
    /// Per standby, from the load's start until its `pg_last_wal_receive_lsn()` reached the
    /// primary's flush LSN, sorted.
    pub standby_received_s: Vec<f64>,
    /// Median polling round once the load had ended, in ms: the resolution of the times.
    pub poll_round_ms: f64,
    /// What the fan-out server spent, from the load's start until every standby had the WAL:
    /// the relay's process by thread, or a PostgreSQL server's processes by role.
    pub server: Usage,
    /// What the primary's processes spent meanwhile, by role (the relay and cascade modes; in
    /// the direct mode the primary is the server).
    pub primary: Option<Usage>,
    /// Bytes the disks under the clusters and the relay's data wrote in the same window
    /// (`/proc/diskstats`): the primary's, the server's and the standbys' writes together.
    pub disk_written_bytes: Option<u64>,
}

/// Runs the group of `n` standbys (0: the fan-out server alone) of one mode under each load,
/// with a fan-out server of its own, started for it and stopped after.
pub fn run_group(bench: &Bench, primary: &Cluster, mode: Mode, n: usize) -> Result<Vec<Case>> {
    let tag = format!("{} {n}", mode.name());
    let relay = bench.relay_options(&format!("relay_{}", mode.name()), 0);
    log(&tag, "starting the fan-out server");
    let fanout = FanOut::start(mode, &bench.bins, primary, &relay)?;
    let group = if n > 0 {
        log(&tag, &format!("making {n} standbys"));
        Some(Standbys::start(primary, &fanout, n)?)
    } else {
        None
    };
    let standbys = group.as_ref().map_or(&[][..], |g| &g.list[..]);
    let mut cases = Vec::new();
    for &load in &bench.args.loads {
        let mb = match load {
            Load::Wal => bench.args.mb,
            Load::Table => bench.args.table_mb,
        };
        let case = run_case(bench, primary, &fanout, standbys, (mode, load, mb))?;
        log(
            &tag,
            &format!(
                "{}: {:.0} MB written in {:.2} s, all standbys had it after {:.2} s, \
                 server CPU {:.2} s",
                load.name(),
                case.wal_bytes as f64 / MIB as f64,
                case.write_s,
                case.standby_received_s
                    .last()
                    .copied()
                    .unwrap_or(case.write_s),
                case.server.cpu_s
            ),
        );
        cases.push(case);
    }
    if let Some(group) = group {
        group.stop(primary, &fanout)?;
    }
    if let Some(scrapes) = fanout.stop(primary)? {
        log(&tag, &format!("{scrapes} scrapes of /metrics"));
    }
    Ok(cases)
}

/// Waits until the fan-out server and every standby hold (and have replayed) the primary's
/// current WAL, after a checkpoint, so the run starts from rest.
fn settle(primary: &mut SqlConn, fanout: &FanOut, standbys: &[Cluster]) -> Result<()> {
    primary.query("CHECKPOINT")?;
    let target = primary.query_lsn("SELECT pg_current_wal_flush_lsn()")?;
    if let FanOut::Cascade(c) = fanout {
        wait_caught_up(c, target)?;
    }
    if let Some((mut conn, sql, column)) = fanout.probe()? {
        crate::wait_for(
            crate::SETUP_TIMEOUT,
            "the fan-out server to catch up",
            || {
                Ok(conn
                    .query_column(sql, column)?
                    .parse::<Lsn>()
                    .unwrap_or_default()
                    >= target)
            },
        )?;
    }
    for standby in standbys {
        wait_caught_up(standby, target)?;
    }
    crate::write_back();
    thread::sleep(Duration::from_millis(500));
    Ok(())
}

/// One measured run.
fn run_case(
    bench: &Bench,
    primary: &Cluster,
    fanout: &FanOut,
    standbys: &[Cluster],
    (mode, load, mb): (Mode, Load, u32),
) -> Result<Case> {
    let mut conn = SqlConn::connect(primary.port(), false, "bench-load")?;
    load.prepare(&mut conn)?;
    settle(&mut conn, fanout, standbys)?;
    let mut probes = Vec::new();
    let has_server_probe = match fanout.probe()? {
        Some((conn, sql, column)) => {
            probes.push(Probe {
                name: "server".into(),
                conn,
                sql,
                column,
            });
            true
        }
        None => false,
    };
    for (i, standby) in standbys.iter().enumerate() {
        probes.push(Probe {
            name: format!("standby {}", i + 1),
            conn: SqlConn::connect(standby.port(), false, "bench")?,
            sql: RECEIVED_SQL,
            column: 0,
        });
    }
    let (root, split) = fanout.measured(primary)?;
    let server = Meter::start(root, split, bench.clk_tck, true);
    let primary_meter = match fanout {
        FanOut::Direct => None,
        _ => primary
            .pid()
            .map(|pid| Meter::start(pid, Split::Roles, bench.clk_tck, false)),
    };
    let disk = DiskWrites::of(&[bench.root.path(), bench.relay_data_root()]);
    let disk_before = disk.written();
    let sampler = Sampler::start(probes);
    let start = conn.query_lsn("SELECT pg_current_wal_insert_lsn()")?;
    let began = Instant::now();
    load.write(&mut conn, mb)?;
    let write_s = began.elapsed().as_secs_f64();
    sampler.go_fast();
    let target = conn.query_lsn("SELECT pg_current_wal_flush_lsn()")?;
    let sampled = sampler.finish(target)?;
    let server = server.finish();
    let disk_written_bytes = disk
        .written()
        .zip(disk_before)
        .map(|(after, before)| after.saturating_sub(before));
    let primary_usage = primary_meter.map(Meter::finish);
    load.cleanup(&mut conn)?;
    let since = |at: &Option<Instant>| at.map_or(f64::NAN, |t| (t - began).as_secs_f64());
    let mut reached = sampled.reached.iter();
    let server_received_s = if has_server_probe {
        reached.next().map(since)
    } else {
        None
    };
    let mut standby_received_s: Vec<f64> = reached.map(since).collect();
    standby_received_s.sort_by(f64::total_cmp);
    Ok(Case {
        mode,
        standbys: standbys.len(),
        load,
        wal_bytes: target.saturating_distance(start),
        write_s,
        server_received_s,
        standby_received_s,
        poll_round_ms: sampled.round_ms,
        server,
        primary: primary_usage,
        disk_written_bytes,
    })
}
