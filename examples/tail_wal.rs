//! Streams WAL straight from a PostgreSQL server with walrelay's replication client, without a
//! relay and without a slot, and checks every record as it arrives with [`WalValidator`].
//!
//! It asks `IDENTIFY_SYSTEM` and `SHOW wal_segment_size`, starts at the beginning of the
//! segment holding the server's flush position on its current timeline, and prints for each
//! piece of WAL the LSN range received and the end of the last complete, CRC-checked record.
//! It stops once that boundary reaches STOP_LSN (or once BYTES bytes have arrived) and prints
//! `last record boundary X/Y`. Invalid WAL makes it exit non-zero.
//!
//! ```text
//! cargo run --example tail_wal -- "host=127.0.0.1 port=5432 user=postgres" 0/3000060
//! cargo run --example tail_wal -- "host=127.0.0.1 port=5432 user=postgres" 1000000
//! ```
//! The user needs the REPLICATION attribute (or to be a superuser).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use walrelay::client::{IdentifySystem, ReplicationClient, StreamTiming};
use walrelay::types::Lsn;
use walrelay::wal::{WalCheckConfig, WalValidator};

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(conninfo), Some(stop)) = (args.next(), args.next()) else {
        bail!("usage: tail_wal CONNINFO STOP_LSN|BYTES");
    };
    // "X/Y" is an LSN to reach; a plain number is a byte count.
    let (stop_lsn, max_bytes) = match stop.parse::<Lsn>() {
        Ok(lsn) => (lsn, u64::MAX),
        Err(_) => (Lsn::MAX, stop.parse().context("STOP_LSN|BYTES")?),
    };

    let mut client = ReplicationClient::connect(&conninfo).await?;
    println!("connected to PostgreSQL {}", client.server_version());
    let IdentifySystem {
        system_id,
        timeline,
        xlogpos,
    } = client.identify_system().await?;
    let size = client.segment_size().await?;
    println!("system {system_id}, timeline {timeline}, flushed up to {xlogpos}, {size} segments");
    let start = size.segment_start(xlogpos);
    let check = WalCheckConfig {
        system_id,
        segment_size: size,
    };
    let mut validator = WalValidator::new(start, check)?;
    let timing = StreamTiming {
        status_interval: Duration::from_secs(1),
        ..StreamTiming::default()
    };
    let mut stream = client
        .start_replication(None, timeline, start, timing)
        .await?;

    let mut received = 0u64;
    while validator.valid_end() < stop_lsn && received < max_bytes {
        let Some((at, data)) = stream.next().await? else {
            bail!("the server ended the stream at {}", validator.position());
        };
        let end = Lsn(at.0 + data.len() as u64);
        validator
            .feed(&data)
            .with_context(|| format!("invalid WAL in {at}..{end}"))?;
        let valid_end = validator.valid_end();
        // Without a slot this only shows up in pg_stat_replication.flush_lsn.
        stream.confirm(valid_end);
        received += data.len() as u64;
        println!("received {at}..{end}, records end at {valid_end}");
    }
    stream.close().await?;
    println!("last record boundary {}", validator.valid_end());
    Ok(())
}
