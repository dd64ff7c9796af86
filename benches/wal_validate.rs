//! Throughput of the streaming WAL validator over the WAL captured from PostgreSQL 15 in
//! `tests/data/wal`, fed in 128 KiB chunks as `XLogData` messages arrive.
//!
//! `all_segments` is the five captured segments (a 3 MiB logical message, full-page images,
//! small heap records, two switches and their zero fill); `small_records` is the first
//! segment alone, where most records are under 100 bytes or full-page images.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use walrelay::types::{Lsn, SystemId, WalSegmentSize};
use walrelay::wal::{WalCheckConfig, WalValidator};

const CHUNK: usize = 128 * 1024;
const START: Lsn = Lsn(0x70_0000);

fn captured() -> Vec<u8> {
    (7..=0xBu64)
        .flat_map(|n| {
            let path = format!(
                "{}/tests/data/wal/00000001{n:016X}",
                env!("CARGO_MANIFEST_DIR")
            );
            std::fs::read(path).expect("captured WAL segment")
        })
        .collect()
}

fn validate(wal: &[u8], cfg: WalCheckConfig) -> Lsn {
    let mut v = WalValidator::new(START, cfg).unwrap();
    for chunk in wal.chunks(CHUNK) {
        v.feed(chunk).unwrap();
    }
    v.valid_end()
}

fn bench(c: &mut Criterion) {
    let wal = captured();
    let cfg = WalCheckConfig {
        system_id: SystemId(7_712_515_731_830_208_278),
        segment_size: WalSegmentSize::new(1 << 20).unwrap(),
    };
    let mut group = c.benchmark_group("wal_validate");
    for (name, bytes) in [
        ("all_segments", &wal[..]),
        ("small_records", &wal[..1 << 20]),
    ] {
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(name, |b| b.iter(|| validate(black_box(bytes), cfg)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
