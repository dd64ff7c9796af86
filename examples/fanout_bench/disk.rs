//! The machine's fdatasync'd sequential write bandwidth, measured the way the relay writes:
//! one new file per WAL segment, 128 KiB `write`s (walsender's `MAX_SEND_SIZE`, the largest
//! XLogData), `fdatasync` every [`SYNC_EVERY`] chunks and at the end of each segment. Three
//! passes: letting the page cache drop each stretch once it is synced
//! (`POSIX_FADV_DONTNEED`, as the relay's writer does), keeping it (as a plain program does),
//! and with `fdatasync` after every chunk. The first two differ where memory the page cache
//! takes for the first time costs more than the disk (a virtual machine whose memory the host
//! backs lazily): the faster of them is the machine's bandwidth. The files go to a directory
//! beside the relay's data, on the same filesystem.

use std::fs::File;
use std::io::Write;
use std::num::NonZeroU64;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use rustix::fs::{Advice, fadvise};
use serde::Serialize;
use walrelay::testkit::localpg::PgBinaries;

use crate::MIB;

/// The size of one write.
pub const CHUNK: usize = 128 * 1024;

/// Chunks between two fdatasyncs in the first two passes: two of the relay's batches
/// (`SYNC_EVERY_CHUNKS` in `src/service/writer.rs`), one in its fdatasync and the next being
/// written, as the relay's writer goes on while syncs are quick; when they are slow it holds
/// up to `MAX_UNSYNCED_CHUNKS` (64) and syncs larger batches.
pub const SYNC_EVERY: usize = 16;

/// One pass of the write loop.
#[derive(Debug, Serialize)]
pub struct DiskPass {
    /// Chunks written between two fdatasyncs.
    pub sync_every_chunks: usize,
    /// Whether the page cache was told to drop each stretch once it was synced.
    pub releases_cache: bool,
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
    /// The passes: fdatasync every [`SYNC_EVERY`] chunks releasing the page cache behind,
    /// then keeping it, then fdatasync after every chunk.
    pub passes: Vec<DiskPass>,
}

impl Disk {
    /// The machine's bandwidth: the faster pass of those that sync every [`SYNC_EVERY`] chunks.
    pub fn best_mib_s(&self) -> Option<f64> {
        self.passes
            .iter()
            .filter(|p| p.sync_every_chunks == SYNC_EVERY)
            .map(|p| p.mib_s)
            .reduce(f64::max)
    }

    /// The pass that syncs every `every` chunks and releases the page cache or not.
    pub fn pass(&self, every: usize, releases_cache: bool) -> Option<&DiskPass> {
        self.passes
            .iter()
            .find(|p| p.sync_every_chunks == every && p.releases_cache == releases_cache)
    }
}

/// Writes `mb` MB in `segment_mb` MB files under `root`, three times.
pub fn measure(bins: &PgBinaries, root: &Path, mb: u32, segment_mb: u32) -> Result<Disk> {
    let chunk = vec![0x5a_u8; CHUNK];
    let per_file = (u64::from(segment_mb) * MIB) as usize / CHUNK;
    let files = (u64::from(mb) * MIB).div_ceil(u64::from(segment_mb) * MIB);
    let mut passes = Vec::new();
    for (every, release) in [(SYNC_EVERY, true), (SYNC_EVERY, false), (1, false)] {
        let dir = bins.scratch_dir(root, "disk")?;
        crate::write_back();
        let began = Instant::now();
        let mut written = 0_usize;
        for n in 0..files {
            let mut file = File::create(dir.path().join(format!("{n:024X}")))?;
            let mut released = 0_u64;
            for i in 1..=per_file {
                file.write_all(&chunk)?;
                written += 1;
                if written.is_multiple_of(every) {
                    file.sync_data()?;
                    let synced = (i * CHUNK) as u64;
                    if release && let Some(len) = NonZeroU64::new(synced - released) {
                        fadvise(&file, released, Some(len), Advice::DontNeed)?;
                        released = synced;
                    }
                }
            }
            file.sync_data()?;
        }
        let secs = began.elapsed().as_secs_f64();
        let bytes = (written * CHUNK) as f64;
        passes.push(DiskPass {
            sync_every_chunks: every,
            releases_cache: release,
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
