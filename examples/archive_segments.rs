//! A WAL archiver built on an embedded relay (no listener): it reads the relay's durable,
//! CRC-checked WAL with [`RelayHandle::wal_stream`] and writes each completed segment to
//! ARCHIVE_DIR under its PostgreSQL file name, through a temporary file that is fsynced and
//! renamed, so that `restore_command = 'cp ARCHIVE_DIR/%f %p'` can use it. It holds one
//! segment in memory. It stops once all WAL before STOP_LSN is archived, or after SECONDS.
//!
//! ```text
//! cargo run --example archive_segments -- UPSTREAM DATA_DIR ARCHIVE_DIR [STOP_LSN [SECONDS]]
//! ```

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use walrelay::types::{Lsn, SegmentName};
use walrelay::{Relay, RelayHandle};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [upstream, data_dir, archive, rest @ ..] = args.as_slice() else {
        bail!("usage: archive_segments UPSTREAM DATA_DIR ARCHIVE_DIR [STOP_LSN [SECONDS]]");
    };
    let stop_at = rest.first().map_or(Ok(Lsn::MAX), |s| s.parse())?;
    let seconds = rest.get(1).map(|s| s.parse()).transpose()?;
    std::fs::create_dir_all(archive)?;
    let handle = Relay::builder(upstream, data_dir).open()?.spawn();
    let outcome = tokio::select! {
        archived = archive_wal(&handle, Path::new(archive), stop_at) => archived,
        () = tokio::time::sleep(seconds.map_or(Duration::MAX, Duration::from_secs)) => Ok(()),
    };
    handle.shutdown().await?;
    outcome
}

async fn archive_wal(relay: &RelayHandle, archive: &Path, stop_at: Lsn) -> Result<()> {
    // Start where the relay's stored WAL begins, once it has some.
    let (size, start) = loop {
        let s = relay.status();
        if let (Some(up), Some(oldest)) = (s.upstream, s.oldest) {
            break (up.segment_size, oldest);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("archiving from {start}");
    let mut stream = relay.wal_stream(start);
    let (mut current, mut buf) = (None, Vec::with_capacity(size.bytes() as usize));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        // Chunks come in order, without gaps, and never cross a segment end. One that starts a
        // segment or a new timeline (at the start of the switch point's segment: the old
        // timeline's unfinished segment is dropped) starts a new buffer.
        let timeline = chunk.timeline;
        if size.offset_in_segment(chunk.start) == 0 || current != Some(timeline) {
            current = Some(timeline);
            buf.clear();
        }
        buf.extend_from_slice(&chunk.data);
        if size.offset_in_segment(chunk.end()) == 0 && buf.len() == size.bytes() as usize {
            let segno = size.segment_of(chunk.start);
            let name = SegmentName { timeline, segno }.file_name(size);
            tokio::task::block_in_place(|| write_segment(archive, &name, &buf))?;
            println!("archived {name}, WAL up to {}", chunk.end());
            if chunk.end() >= stop_at {
                return Ok(());
            }
        }
    }
    bail!("the relay stopped")
}

/// Writes `name` in `dir` atomically and durably: a temporary file, fsync, rename, fsync.
fn write_segment(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}
