//! The edge of the relay: tokio tasks, sockets, TLS, the writer thread and shutdown.
//!
//! - `relay`: [`Relay`] opens the store, the hub and the slots in the order they need each
//!   other, and runs the upstream and downstream sides until shutdown; [`RelayHandle`] and
//!   [`RelayMonitor`] watch it run;
//! - `upstream`: the connection to the primary, around the sans-IO upstream session;
//! - `downstream` and `listener`: the walsender side, around the sans-IO downstream session;
//! - `writer`: the thread that owns the WAL store; `retention`: which segments go;
//! - `wal_stream`: the durable WAL in-process; `status`: what a running relay reports;
//! - `http`: `/metrics`, `/status`, `/healthz` and `/readyz`;
//! - `client`: the replication client, for programs that stream from a server themselves;
//! - `conn` and `tls`: framed connections and the upstream TLS configuration.

pub mod client;
pub(crate) mod conn;
mod downstream;
mod http;
mod listener;
mod relay;
mod retention;
mod status;
pub mod tls;
mod upstream;
mod wal_stream;
mod writer;

pub use downstream::{AccessError, StreamStatus};
pub use http::HttpError;
pub use relay::{Relay, RelayBuilder, RelayError, RelayHandle, Reloader};
pub use status::{RelayMonitor, RelayStatus};
pub use upstream::{ConnectError, UpstreamError};
pub use wal_stream::{WalChunk, WalStream};
pub use writer::WriterError;
