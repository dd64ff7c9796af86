//! The test harness: real PostgreSQL clusters on loopback ([`localpg`]), a TCP proxy that
//! injects network faults ([`faultproxy`]), and network namespaces that clients connect from
//! ([`netns`]).
//!
//! It is for the integration tests, benches and examples, and `walrelay demo` compiles
//! [`localpg`] into the binary; it is never on the relay's running path. It is built only
//! with the `testkit` feature, which is off by default: the crate's own tests, benches and
//! examples turn it on through a dev-dependency on the crate itself (see `Cargo.toml`).

pub mod faultproxy;
pub mod localpg;
pub mod netns;
