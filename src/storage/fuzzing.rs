//! Fuzz body for storage recovery: any directory contents and file bytes (truncated files,
//! zeros, wrong sizes, stray temporary names, directories where files belong) must open as a
//! store or fail with an error, never panic; and opening twice must find the same end, as
//! recovery after a crash during recovery must.
//!
//! Input layout: one flags byte, then up to 12 entries of `kind`, `segment`, `len` (u16 LE)
//! and, for the kinds that take them, `len` content bytes. `kind` picks the name form (bits
//! 0–2), the timeline 1–3 (bits 3–4) and how the content is made (bits 5–6).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::types::{SegmentName, SegmentNo, SystemId, TimelineId, WalSegmentSize};

use super::{StoreIdentity, WalStore, state};

/// The system identifier of the PostgreSQL 15 cluster that wrote `tests/data/wal`, so seeds
/// made of real segments get past the page header checks.
const SEED_SYSTEM_ID: u64 = 0x6B08_5C32_0859_F716;
/// Segment size of every fuzzed store: the smallest PostgreSQL allows.
const SEG: usize = 1 << 20;
/// Most entries read from one input.
const MAX_ENTRIES: usize = 12;

/// Builds a data directory from `data`, opens it twice and checks that both opens agree.
pub fn fuzz_recovery(data: &[u8]) {
    let Some(scratch) = Scratch::new() else {
        return;
    };
    // A failure to build the directory is just another directory to recover.
    let _ = build(&scratch.0, &mut Input(data));
    let durable = |s: WalStore| s.end().map(|e| (e.timeline, e.durable));
    if let Ok(first) = WalStore::open(&scratch.0).map(durable)
        && let Ok(second) = WalStore::open(&scratch.0).map(durable)
    {
        assert_eq!(first, second, "recovery is not idempotent");
    }
}

/// A temporary directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Option<Scratch> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("walrelay-fuzz-recovery-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).ok()?;
        Some(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The fuzz bytes, consumed from the front.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).first().copied()
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
}

fn build(dir: &Path, input: &mut Input<'_>) -> std::io::Result<()> {
    let flags = input.u8().unwrap_or(0);
    let wal = dir.join("wal");
    if flags & 0x04 != 0 {
        return fs::write(&wal, b"not a directory");
    }
    fs::create_dir_all(&wal)?;
    let size = WalSegmentSize::new(SEG as u32).map_err(std::io::Error::other)?;
    let state_path = dir.join(state::STATE_FILE);
    if flags & 0x02 != 0 {
        let len = usize::from(input.u8().unwrap_or(0));
        fs::write(&state_path, input.take(len))?;
    } else if flags & 0x01 == 0 {
        let id = StoreIdentity {
            system_id: SystemId(SEED_SYSTEM_ID),
            segment_size: size,
        };
        fs::write(&state_path, state::render(id))?;
    }
    for _ in 0..MAX_ENTRIES {
        let (Some(kind), Some(seg), Some(len)) = (input.u8(), input.u8(), input.u16()) else {
            break;
        };
        let tli = TimelineId::new(u32::from((kind >> 3) % 3) + 1).unwrap_or(TimelineId::ONE);
        let name = SegmentName {
            timeline: tli,
            segno: SegmentNo(7 + u64::from(seg % 16)),
        }
        .file_name(size);
        let len = usize::from(len);
        let content = match (kind >> 5) % 4 {
            0 => input.take(len).to_vec(),
            1 => vec![0; len * 16],
            2 => padded(input.take(len), SEG),
            _ => padded(input.take(len), len * 16),
        };
        let history = tli.history_file_name();
        let path = match kind % 8 {
            0 => wal.join(&name),
            1 => wal.join(format!("{name}.partial")),
            2 => wal.join(format!("{name}.tmp")),
            3 => wal.join(format!("{name}.partial.tmp")),
            4 => wal.join(history),
            5 => wal.join(format!("{history}.tmp")),
            6 => dir.join(format!("{}.tmp", state::STATE_FILE)),
            _ => {
                fs::create_dir_all(wal.join(format!("{name}.partial")))?;
                continue;
            }
        };
        fs::write(path, content)?;
    }
    Ok(())
}

/// `bytes` followed by zeros up to `len` (or cut to `len`).
fn padded(bytes: &[u8], len: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.resize(len, 0);
    v
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{self, bytes};
    use super::*;
    use crate::types::Lsn;

    /// An entry of the input layout.
    fn entry(kind: u8, seg: u8, content: &[u8]) -> Vec<u8> {
        let mut v = vec![kind, seg];
        v.extend((content.len() as u16).to_le_bytes());
        v.extend(content);
        v
    }

    #[test]
    fn seed_system_id_is_the_fixtures() {
        assert_eq!(fixture::id().system_id, SystemId(SEED_SYSTEM_ID));
    }

    #[test]
    fn survives_assorted_directories() {
        fuzz_recovery(&[]);
        for flags in 0..8 {
            fuzz_recovery(&[flags, 0, 0, 0, 0, 1, 1, 3, 0, b'a', b'b', b'c']);
        }
        // Real WAL: segment 7 complete (made by zero padding of the part that matters),
        // a torn partial of 8, stray names, and the same on timeline 2.
        let seg7 = bytes(Lsn(0x70_0000), Lsn(0x70_F000));
        let seg8 = bytes(Lsn(0x80_0000), Lsn(0x80_E123));
        // (0x41: segment 7 a full partial, as the writer sets one aside.)
        for (kind7, kind8) in [
            (0x40, 0x01),
            (0x48, 0x09),
            (0x40, 0x21),
            (0x40, 0x00),
            (0x41, 0x01),
        ] {
            let mut input = vec![0u8];
            input.extend(entry(kind7, 0, seg7));
            input.extend(entry(kind8, 1, &seg8[..seg8.len().min(0xFFFF)]));
            input.extend(entry(0x02, 2, b"x"));
            input.extend(entry(0x07, 1, b""));
            fuzz_recovery(&input);
        }
        let mut rng = 0x5EED_0004u64;
        for _ in 0..200 {
            let data: Vec<u8> = (0..rng % 300)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng as u8
                })
                .collect();
            fuzz_recovery(&data);
        }
    }
}
