//! XLogData decode throughput: frames of 128 KiB WAL (what a walsender sends when it is
//! behind) split off a receive buffer and decoded, against a plain memory copy of the same
//! bytes as the machine's limit.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use walrelay::types::{Lsn, PgTimestamp};
use walrelay::wire::{BackendMessage, ServerCopyData, XLogData, split_frame};

const CHUNK: usize = 128 * 1024;
const FRAMES: usize = 64;

fn stream() -> Bytes {
    let mut out = BytesMut::new();
    for i in 0..FRAMES {
        let start = Lsn((i * CHUNK) as u64);
        ServerCopyData::XLogData(XLogData {
            start,
            end: Lsn(start.0 + CHUNK as u64),
            send_time: PgTimestamp(0),
            data: Bytes::from(vec![(i % 251) as u8; CHUNK]),
        })
        .write(&mut out)
        .unwrap();
    }
    out.freeze()
}

fn decode(c: &mut Criterion) {
    let wire = stream();
    let mut group = c.benchmark_group("xlogdata");
    group.throughput(Throughput::Bytes((FRAMES * CHUNK) as u64));
    group.bench_function("split_and_decode_128KiB_frames", |b| {
        b.iter_batched(
            || BytesMut::from(&wire[..]),
            |mut buf| {
                let mut total = 0usize;
                while let Some(frame) = split_frame(&mut buf, 1 << 20).unwrap() {
                    let BackendMessage::CopyData(payload) = BackendMessage::parse(frame).unwrap()
                    else {
                        unreachable!()
                    };
                    let ServerCopyData::XLogData(x) = ServerCopyData::parse(payload).unwrap()
                    else {
                        unreachable!()
                    };
                    total += x.data.len();
                }
                black_box(total)
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("memcpy_baseline", |b| {
        let mut dst = vec![0u8; wire.len()];
        b.iter(|| {
            dst.copy_from_slice(&wire);
            black_box(&dst);
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
