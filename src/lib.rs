//! walrelay: a relay for PostgreSQL physical streaming replication.
//!
//! It connects to a primary (or any server that sends WAL) as a replication client, stores the
//! WAL on local disk in PostgreSQL's own segment format, and serves it to many downstream
//! clients that speak the same protocol.
//!
//! The crate is built in three rings (see `DESIGN.md`):
//! - the pure core, with no I/O and no clock: [`types`], [`wire`], [`wal`], [`proto`];
//! - stateful services: [`storage`], [`slots`], [`hub`];
//! - edges: [`service`], [`config`], [`cli`].
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
    ConnectError, Relay, RelayBuilder, RelayError, RelayHandle, RelayMonitor, RelayStatus,
    StreamStatus, UpstreamError, WalChunk, WalStream, WriterError,
};

/// A physical replication client of PostgreSQL: the one the relay uses upstream, for programs
/// that stream WAL from a server themselves.
#[cfg(feature = "runtime")]
pub mod client {
    pub use crate::service::client::{ReplicationClient, ReplicationStream};
    pub use crate::service::tls;
}
#[cfg(feature = "runtime")]
pub mod slots;
#[cfg(feature = "runtime")]
pub mod statefile;

#[cfg(feature = "testkit")]
pub mod testkit;
