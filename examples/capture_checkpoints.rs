//! Captures, from a real server of each major from 12 to 18, the WAL of a checkpoint record
//! on a cluster whose transaction-id epoch is above 0, with what the server says of it, for
//! the unit tests of how the relay reads `nextXid` (`src/wal/checkpoint.rs`).
//!
//! For each major: a cluster with 1 MB segments, its epoch set to 3 (`pg_resetwal -e`, or
//! for the builds without one, what `Cluster::set_xid_epoch` does), a few transactions, a
//! segment switch and a `CHECKPOINT`. The server writes the checkpoint record; the capture is
//! its segment from the start to the record's end (`pg<major>.wal`), and `pg<major>.txt` holds
//! the server's own account: `server_version`, `system_identifier`, and `checkpoint_lsn`,
//! `next_xid` (`epoch:xid`) and `timeline_id` from `pg_control_checkpoint()`.
//!
//! ```text
//! bash scripts/fetch-postgres
//! cargo run --example capture_checkpoints -- tests/data/checkpoints
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use walrelay::testkit::localpg::{ClusterBuilder, PgBinaries, StopMode};
use walrelay::types::{Lsn, WalSegmentSize};

const EPOCH: u32 = 3;

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "tests/data/checkpoints".into()),
    );
    fs::create_dir_all(&out)?;
    let clients = PgBinaries::find()?;
    for major in 12..=18 {
        let bins = PgBinaries::for_major(major, &clients)
            .with_context(|| format!("PostgreSQL {major}: run scripts/fetch-postgres"))?;
        capture(&bins, major, &out).with_context(|| format!("PostgreSQL {major}"))?;
    }
    Ok(())
}

fn capture(bins: &PgBinaries, major: u32, out: &Path) -> Result<()> {
    let scratch = bins.scratch_dir(&std::env::temp_dir(), &format!("capture{major}"))?;
    let mut pg = ClusterBuilder::new(bins.clone(), scratch.path())
        .segment_size_mb(1)
        .init()?;
    pg.set_xid_epoch(EPOCH)?;
    pg.start()?;
    pg.psql("CREATE TABLE t (i int)")?;
    for i in 0..5 {
        pg.psql(&format!("INSERT INTO t VALUES ({i})"))?;
    }
    pg.switch_wal()?;
    pg.psql("CHECKPOINT")?;
    let fields = pg.psql(
        "SELECT current_setting('server_version'), s.system_identifier, c.checkpoint_lsn, \
         c.next_xid, c.timeline_id \
         FROM pg_control_checkpoint() c, pg_control_system() s",
    )?;
    let [version, sysid, lsn, next_xid, timeline]: [&str; 5] = fields
        .split('|')
        .collect::<Vec<_>>()
        .try_into()
        .map_err(|_| anyhow::anyhow!("unexpected: {fields}"))?;
    if !next_xid.starts_with(&format!("{EPOCH}:")) {
        bail!("the epoch did not take: next_xid {next_xid}");
    }
    let lsn: Lsn = lsn.parse().map_err(|e| anyhow::anyhow!("{lsn}: {e:?}"))?;
    let size = WalSegmentSize::new(1 << 20).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let name = pg.psql(&format!("SELECT pg_walfile_name('{lsn}')"))?;
    pg.stop(StopMode::Fast)?;
    let segment = fs::read(pg.data_dir().join("pg_wal").join(&name))?;
    let at = usize::try_from(size.offset_in_segment(lsn))?;
    let len = segment
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .context("the record is beyond the segment")?;
    let len = usize::try_from(len)?;
    if at % 8192 + len > 8192 {
        bail!("the checkpoint record at {lsn} crosses a page boundary");
    }
    let end = at + len;
    let bytes = segment
        .get(..end)
        .context("the record is beyond the segment")?;
    fs::write(out.join(format!("pg{major}.wal")), bytes)?;
    let start = size.segment_start(lsn);
    fs::write(
        out.join(format!("pg{major}.txt")),
        format!(
            "server_version={version}\nsystem_identifier={sysid}\nsegment_start={start}\n\
             checkpoint_lsn={lsn}\nnext_xid={next_xid}\ntimeline_id={timeline}\n"
        ),
    )?;
    println!("PostgreSQL {version}: checkpoint at {lsn}, next_xid {next_xid}");
    Ok(())
}
