//! TLS: the upstream connection's client configuration per `sslmode`, and the downstream
//! port's server configuration.

mod client;
pub(crate) mod server;

pub use crate::proto::certificate::server_end_point_hash;
pub use client::{TlsError, client_config, server_name};
