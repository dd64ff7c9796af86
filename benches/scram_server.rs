//! The cost of one SCRAM-SHA-256 login on the relay's downstream port, with a secret of
//! PostgreSQL's default 4096 iterations.
//!
//! `server_share` is what the relay spends: `ScramServer::new`, `client_first` and
//! `client_final` on messages recorded once (no PBKDF2 runs on the server side; it only
//! checks the proof with HMACs). `whole_exchange` adds the client (`postgres-protocol`'s
//! `ScramSha256`), whose PBKDF2 dominates. `cleartext_password` is the `password` method's
//! check, which runs the 4096 iterations on the server.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use walrelay::proto::auth::{ScramServer, Secret, ServerChannel};

const MOCK: [u8; 32] = [0x42; 32];
const NONCE: [u8; 18] = [7; 18];

fn server(secret: &Secret) -> ScramServer {
    ScramServer::new("alice", Some(secret), &MOCK, ServerChannel::Plain, NONCE)
}

/// One whole exchange; returns the client's two messages.
fn exchange(secret: &Secret) -> (Vec<u8>, Vec<u8>) {
    let mut client = ScramSha256::new(b"pencil", ChannelBinding::unsupported());
    let mut server = server(secret);
    let first = client.message().to_vec();
    let server_first = server.client_first("SCRAM-SHA-256", &first).unwrap();
    client.update(&server_first).unwrap();
    let last = client.message().to_vec();
    let server_final = server.client_final(&last).unwrap();
    client.finish(&server_final).unwrap();
    (first, last)
}

fn bench(c: &mut Criterion) {
    let secret = Secret::scram_from_password("pencil", *b"0123456789abcdef", 4096);
    let (first, last) = exchange(&secret);
    let mut group = c.benchmark_group("scram_server");
    group.bench_function("server_share", |b| {
        b.iter(|| {
            let mut s = server(black_box(&secret));
            s.client_first("SCRAM-SHA-256", black_box(&first)).unwrap();
            s.client_final(black_box(&last)).unwrap()
        })
    });
    group.bench_function("whole_exchange", |b| {
        b.iter(|| exchange(black_box(&secret)))
    });
    group.bench_function("cleartext_password", |b| {
        b.iter(|| assert!(secret.verify_password("alice", black_box(b"pencil"))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
