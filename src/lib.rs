//! walrelay: a relay for PostgreSQL physical streaming replication.
//!
//! It connects to a primary (or any server that sends WAL) as a replication client, stores the
//! WAL on local disk in PostgreSQL's own segment format, and serves it to many downstream
//! clients that speak the same protocol.
//!
//! The crate is built in three rings (see `DESIGN.md`):
//! - the pure core, with no I/O and no clock: [`types`], [`wire`], [`wal`], [`proto`];
//! - stateful services: [`storage`], [`slots`], [`hub`];
//! - edges: [`service`], [`config`], [`cli`], and [`localpg`] and [`faultproxy`], which start
//!   real PostgreSQL servers and inject network faults for the tests and the demo.
//!
//! `cargo check --no-default-features` builds the pure core alone.
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
pub mod localpg;

#[cfg(feature = "runtime")]
pub mod cli;
#[cfg(feature = "runtime")]
pub mod config;
#[cfg(feature = "runtime")]
pub mod faultproxy;
#[cfg(feature = "runtime")]
pub mod service;
#[cfg(feature = "runtime")]
pub mod slots;
#[cfg(feature = "runtime")]
pub mod statefile;
