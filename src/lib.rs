//! walrelay: a relay for PostgreSQL physical streaming replication.
//!
//! It connects to a primary (or any server that sends WAL) as a replication client, stores the
//! WAL on local disk in PostgreSQL's own segment format, validated and fsynced, and serves it
//! to many downstream clients that speak the same protocol: standbys, `pg_receivewal`, other
//! relays. The primary serves one walsender and keeps one slot however many standbys sit
//! behind the relay.
//!
//! # Three ways to use it
//!
//! - **The binary**: `walrelay run --upstream CONNINFO --data-dir DIR --listen HOST:PORT`
//!   (see the README), or `walrelay demo` to watch it at work against a throwaway primary.
//! - **A relay inside your program**: [`Relay::builder`] sets it up, [`Relay::spawn`] runs
//!   it on your tokio runtime, and the [`RelayHandle`] reports its [`RelayStatus`] and stops
//!   it. `examples/embed_relay.rs` does exactly this.
//! - **A consumer of the WAL**: [`RelayHandle::wal_stream`] hands out the relay's durable,
//!   CRC-checked WAL in order, as a standby would get it (`examples/archive_segments.rs`
//!   writes completed segments to an archive with it); [`client::ReplicationClient`] streams
//!   WAL straight from a server, without a relay (`examples/tail_wal.rs` feeds it to a
//!   [`wal::WalValidator`] and prints record boundaries).
//!
//! # How it is built
//!
//! Three rings, dependencies pointing inward (a test, `tests/architecture.rs`, keeps them):
//! - the pure core, with no I/O and no clock: [`types`] (LSNs, timelines, slot names,
//!   SQLSTATEs), [`wire`] (the protocol's messages), [`wal`] (pages, records, the streaming
//!   validator, timeline histories) and [`proto`], where the two sessions decide everything:
//!   [`proto::downstream::DownstreamSession`] for a client of the relay and
//!   [`proto::upstream::UpstreamSession`] for the relay as a client of its upstream;
//! - stateful services: [`storage`] (the segment store and its crash recovery), [`slots`]
//!   (the relay's replication slots) and [`hub`] (the fan-out of durable WAL), with
//!   [`statefile`] for the relay's own small files;
//! - edges: the service (tokio tasks, sockets, TLS, the writer thread; its public face is
//!   [`Relay`] and [`client`]), [`config`] and [`cli`].
//!
//! `cargo check --no-default-features` builds the pure core alone.
//!
//! The test harness, `testkit::localpg` and `testkit::faultproxy` (real PostgreSQL servers on
//! loopback and a TCP proxy that injects network faults), is not part of this API: it is built
//! only with the `testkit` feature, which the crate's own tests, benches and examples turn on.
//! `walrelay demo` compiles `localpg` into the binary instead.
#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod metrics;
pub mod proto;
pub mod types;
pub mod wal;
pub mod wire;

#[cfg(feature = "runtime")]
pub mod hub;
#[cfg(feature = "runtime")]
pub mod storage;

#[cfg(feature = "runtime")]
pub mod cli;
#[cfg(feature = "runtime")]
pub mod config;
#[cfg(feature = "runtime")]
mod service;

#[cfg(feature = "runtime")]
pub use config::Config;
#[cfg(feature = "runtime")]
pub use service::{
    AccessError, ConnectError, HttpError, Relay, RelayBuilder, RelayError, RelayHandle,
    RelayMonitor, RelayStatus, Reloader, StreamStatus, UpstreamError, WalChunk, WalStream,
    WriterError,
};

/// A physical replication client of PostgreSQL: the one the relay uses upstream, for programs
/// that stream WAL from a server themselves.
#[cfg(feature = "runtime")]
pub mod client {
    pub use crate::proto::query::{IdentifySystem, QueryResult};
    pub use crate::proto::upstream::StreamTiming;
    pub use crate::service::client::{ReplicationClient, ReplicationStream};
    pub use crate::service::tls;
}
#[cfg(feature = "runtime")]
pub mod slots;
#[cfg(feature = "runtime")]
pub mod statefile;

#[cfg(feature = "testkit")]
pub mod testkit;
