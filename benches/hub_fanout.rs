//! Fan-out through the hub: one writer, N readers each taking all of the WAL.
//!
//! Per iteration a writer thread writes 32 MiB in 128 KiB chunks into 16 MiB segment files
//! (`NAME.partial`, renamed when full, as the store does, but without fdatasync: the disk is
//! not what is measured) and publishes every 8 chunks, as one fsync batch would. N reader
//! tasks on a two-worker tokio runtime follow the durable end with `Hub::read` until they
//! have everything, from the 8 MiB tail when close and from the files when behind.
//! Throughput is all bytes delivered (32 MiB × N); per reader it is that divided by N, which
//! is printed after each group together with the share served from the tail.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tempfile::TempDir;
use walrelay::hub::{Hub, HubFeed, HubStats};
use walrelay::types::{Lsn, SegmentName, SegmentNo, TimelineId, WalSegmentSize};

/// WAL written per iteration.
const TOTAL: usize = 32 << 20;
/// The chunk size upstream sends (`MAX_SEND_SIZE`).
const CHUNK: usize = 128 * 1024;
/// Chunks per publish, like one fsync batch.
const BATCH: usize = 8;
/// Tail cache size.
const TAIL: usize = 8 << 20;
const START: Lsn = Lsn(16 << 20);

fn timeline() -> TimelineId {
    TimelineId::ONE
}

fn segment_path(dir: &Path, segno: u64, partial: bool) -> PathBuf {
    let name = SegmentName {
        timeline: timeline(),
        segno: SegmentNo(segno),
    }
    .file_name(WalSegmentSize::DEFAULT);
    dir.join(if partial {
        format!("{name}.partial")
    } else {
        name
    })
}

/// Writes every chunk to its segment file and publishes them in batches.
fn write_all(dir: &Path, wal: &Bytes, feed: &HubFeed) {
    let seg = WalSegmentSize::DEFAULT.bytes_u64();
    let mut file: Option<(u64, File)> = None;
    let mut batch = Vec::with_capacity(BATCH);
    for (i, off) in (0..wal.len()).step_by(CHUNK).enumerate() {
        let chunk = wal.slice(off..(off + CHUNK).min(wal.len()));
        let lsn = START.0 + off as u64;
        let segno = lsn / seg;
        if file.as_ref().is_none_or(|(s, _)| *s != segno) {
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(segment_path(dir, segno, true))
                .unwrap();
            file = Some((segno, f));
        }
        let (_, f) = file.as_ref().unwrap();
        f.write_all_at(&chunk, lsn % seg).unwrap();
        let end = lsn + chunk.len() as u64;
        if end.is_multiple_of(seg) {
            fs::rename(
                segment_path(dir, segno, true),
                segment_path(dir, segno, false),
            )
            .unwrap();
            file = None;
        }
        batch.push((Lsn(lsn), chunk));
        if (i + 1).is_multiple_of(BATCH) || end == START.0 + wal.len() as u64 {
            feed.publish(timeline(), Lsn(end), batch.drain(..));
        }
    }
}

/// Follows the durable end until all of the WAL was read; returns the bytes read.
async fn follow(hub: Hub) -> u64 {
    let mut rx = hub.subscribe();
    let end = Lsn(START.0 + TOTAL as u64);
    let mut at = START;
    loop {
        rx.borrow_and_update();
        while let Some(piece) = hub.read(timeline(), at, Lsn::MAX).await.unwrap() {
            at = Lsn(at.0 + piece.len() as u64);
        }
        if at == end || rx.changed().await.is_err() {
            return at.0 - START.0;
        }
    }
}

/// One iteration: returns how long it took and the hub's counters.
fn run(rt: &tokio::runtime::Runtime, wal: &Bytes, readers: usize) -> (Duration, HubStats) {
    let dir = TempDir::new_in(std::env::temp_dir()).unwrap();
    let (hub, feed) = Hub::new(dir.path().to_path_buf(), TAIL);
    feed.set_segment_size(WalSegmentSize::DEFAULT);
    feed.switch_timeline(timeline(), START);
    let began = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..readers)
            .map(|_| tokio::spawn(follow(hub.clone())))
            .collect();
        let (path, wal) = (dir.path().to_path_buf(), wal.clone());
        let writer = tokio::task::spawn_blocking(move || write_all(&path, &wal, &feed));
        writer.await.unwrap();
        for t in tasks {
            assert_eq!(t.await.unwrap(), TOTAL as u64);
        }
    });
    (began.elapsed(), hub.stats())
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let wal: Bytes = (0..TOTAL as u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect::<Vec<u8>>()
        .into();
    let mut group = c.benchmark_group("hub_fanout");
    group.sample_size(10);
    for readers in [1, 16, 128] {
        let (mut spent, mut runs, mut tail, mut disk) = (Duration::ZERO, 0u32, 0, 0);
        group.throughput(Throughput::Bytes((TOTAL * readers) as u64));
        group.bench_with_input(BenchmarkId::new("readers", readers), &readers, |b, &n| {
            b.iter_custom(|iters| {
                let mut took = Duration::ZERO;
                for _ in 0..iters {
                    let (t, stats) = run(&rt, &wal, n);
                    took += t;
                    (tail, disk) = (tail + stats.served_from_tail, disk + stats.served_from_disk);
                }
                (spent, runs) = (spent + took, runs + iters as u32);
                took
            })
        });
        let per_reader = TOTAL as f64 * f64::from(runs) / spent.as_secs_f64() / (1 << 20) as f64;
        let from_tail = 100.0 * tail as f64 / (tail + disk).max(1) as f64;
        println!(
            "hub_fanout/readers/{readers}: {per_reader:.0} MiB/s per reader, {from_tail:.1}% from the tail"
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
