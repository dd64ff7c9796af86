//! Appending WAL to the segment store versus writing the same bytes straight to files.
//!
//! Both sides write the captured PostgreSQL 15 segments of `tests/data/wal` in 128 KiB chunks
//! and make them durable (fdatasync) every N chunks, into a fresh directory under
//! `std::env::temp_dir()` on the real disk (set `TMPDIR` to measure another one). The store
//! also validates every record and page header, renames completed segments and fsyncs the
//! directory, so the gap between the two lines is the store's whole overhead.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::fs::{self, File};
use std::hint::black_box;
use std::io::Write;
use std::path::Path;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tempfile::TempDir;
use walrelay::storage::{StoreIdentity, WalStore};
use walrelay::types::{Lsn, SegmentName, SystemId, TimelineId, WalSegmentSize};

/// The chunk size walsender sends (`MAX_SEND_SIZE`).
const CHUNK: usize = 128 * 1024;

/// Consecutive WAL segments, their identity and their start.
struct Wal {
    bytes: Vec<u8>,
    id: StoreIdentity,
    timeline: TimelineId,
    start: Lsn,
}

fn load() -> Wal {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/wal");
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.len() == 24)
        .collect();
    names.sort();
    let mut bytes = Vec::new();
    for n in &names {
        bytes.extend(fs::read(dir.join(n)).unwrap());
    }
    let segment_size = u32::from_le_bytes(bytes[32..36].try_into().unwrap());
    let segment_size = WalSegmentSize::new(segment_size).unwrap();
    let first = SegmentName::parse(&names[0], segment_size).unwrap();
    let id = StoreIdentity {
        system_id: SystemId(u64::from_le_bytes(bytes[24..32].try_into().unwrap())),
        segment_size,
    };
    Wal {
        bytes,
        id,
        timeline: first.timeline,
        start: segment_size.start_of(first.segno).unwrap(),
    }
}

fn fresh_store(wal: &Wal) -> (TempDir, WalStore) {
    let dir = TempDir::new_in(std::env::temp_dir()).unwrap();
    let mut store = WalStore::open(dir.path()).unwrap();
    store.initialize(wal.id).unwrap();
    store.start_at(wal.timeline, wal.start).unwrap();
    (dir, store)
}

fn store_append(wal: &Wal, store: &mut WalStore, flush_every: usize) {
    let mut at = wal.start;
    for (i, chunk) in wal.bytes.chunks(CHUNK).enumerate() {
        store.append(at, chunk).unwrap();
        at = Lsn(at.0 + chunk.len() as u64);
        if (i + 1) % flush_every == 0 {
            black_box(store.flush().unwrap());
        }
    }
    black_box(store.flush().unwrap());
}

/// The same pattern with plain files: one file per segment, `write_all` and `sync_data`.
fn raw_append(wal: &Wal, dir: &Path, flush_every: usize) {
    let seg = wal.id.segment_size.bytes() as usize;
    let per_segment = seg / CHUNK;
    for (n, segment) in wal.bytes.chunks(seg).enumerate() {
        let mut f = File::create(dir.join(format!("{n:024X}"))).unwrap();
        for (i, chunk) in segment.chunks(CHUNK).enumerate() {
            f.write_all(chunk).unwrap();
            if (n * per_segment + i + 1).is_multiple_of(flush_every) {
                f.sync_data().unwrap();
            }
        }
        f.sync_data().unwrap();
    }
}

fn bench(c: &mut Criterion) {
    let wal = load();
    let mut group = c.benchmark_group("store_append");
    group.throughput(Throughput::Bytes(wal.bytes.len() as u64));
    group.sample_size(10);
    for flush_every in [1, 8] {
        group.bench_with_input(
            BenchmarkId::new("walstore", flush_every),
            &flush_every,
            |b, &n| {
                b.iter_batched(
                    || fresh_store(&wal),
                    |(dir, mut store)| {
                        store_append(&wal, &mut store, n);
                        (dir, store)
                    },
                    BatchSize::PerIteration,
                )
            },
        );
        group.bench_with_input(
            BenchmarkId::new("raw_files", flush_every),
            &flush_every,
            |b, &n| {
                b.iter_batched(
                    || TempDir::new_in(std::env::temp_dir()).unwrap(),
                    |dir| {
                        raw_append(&wal, dir.path(), n);
                        dir
                    },
                    BatchSize::PerIteration,
                )
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
