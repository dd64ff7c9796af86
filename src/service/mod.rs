//! The edge of the relay: tokio tasks, sockets, TLS, the writer thread and shutdown.
//!
//! [`relay::Relay`] ties them together: it opens the store, starts the writer thread and
//! runs the upstream connection until the shutdown token fires.

pub mod conn;
pub mod downstream;
pub mod listener;
pub mod login;
pub mod relay;
pub mod retention;
pub mod session;
pub mod tls;
pub mod upstream;
pub mod upstream_info;
pub mod writer;
