//! The machine's fdatasync'd sequential write bandwidth, measured the way the relay writes:
//! one new file per WAL segment, 128 KiB `write`s (walsender's `MAX_SEND_SIZE`, the largest
//! XLogData), `fdatasync` every 16 chunks (the writer's `SYNC_EVERY_CHUNKS` in
//! `src/service/writer.rs`) and at the end of each segment; then again with `fdatasync` after
//! every chunk. The files go to a directory beside the relay's data, on the same filesystem.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;
use walrelay::testkit::localpg::PgBinaries;

use crate::MIB;

/// The size of one write.
pub const CHUNK: usize = 128 * 1024;

/// Chunks between two fdatasyncs in the first pass: the writer's `SYNC_EVERY_CHUNKS`.
pub const WRITER_SYNC_EVERY: usize = 16;

/// One pass of the write loop.
#[derive(Debug, Serialize)]
pub struct DiskPass {
    /// Chunks written between two fdatasyncs.
    pub sync_every_chunks: usize,
    /// Seconds for all of it.
    pub secs: f64,
    /// MB a second.
    pub mib_s: f64,
}

/// Both passes.
#[derive(Debug, Serialize)]
pub struct Disk {
    /// Bytes written in each pass.
    pub bytes: u64,
    /// The bytes of one file (the WAL segment size).
    pub file_bytes: u64,
    /// Bytes of one write.
    pub chunk_bytes: usize,
    /// The passes: fdatasync every [`WRITER_SYNC_EVERY`] chunks, then after every chunk.
    pub passes: Vec<DiskPass>,
}

/// Writes `mb` MB in `segment_mb` MB files under `root`, twice.
pub fn measure(bins: &PgBinaries, root: &Path, mb: u32, segment_mb: u32) -> Result<Disk> {
    let chunk = vec![0x5a_u8; CHUNK];
    let per_file = (u64::from(segment_mb) * MIB) as usize / CHUNK;
    let files = (u64::from(mb) * MIB).div_ceil(u64::from(segment_mb) * MIB);
    let mut passes = Vec::new();
    for every in [WRITER_SYNC_EVERY, 1] {
        let dir = bins.scratch_dir(root, "disk")?;
        let began = Instant::now();
        let mut written = 0_usize;
        for n in 0..files {
            let mut file = File::create(dir.path().join(format!("{n:024X}")))?;
            for _ in 0..per_file {
                file.write_all(&chunk)?;
                written += 1;
                if written.is_multiple_of(every) {
                    file.sync_data()?;
                }
            }
            file.sync_data()?;
        }
        let secs = began.elapsed().as_secs_f64();
        let bytes = (written * CHUNK) as f64;
        passes.push(DiskPass {
            sync_every_chunks: every,
            secs,
            mib_s: bytes / MIB as f64 / secs,
        });
    }
    Ok(Disk {
        bytes: files * u64::from(segment_mb) * MIB,
        file_bytes: u64::from(segment_mb) * MIB,
        chunk_bytes: CHUNK,
        passes,
    })
}
