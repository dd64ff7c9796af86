//! The downstream side of the relay: a walsender for real standbys, `pg_receivewal` and
//! other relays, over the WAL the relay has made durable.
//!
//! The protocol decisions are the sans-IO [`crate::proto::downstream`] session's; here are
//! what they need:
//! - `context`: what every connection shares (the upstream's identity, the hub, the slot
//!   registry and its file, the connection limit, the list of streams);
//! - `connection`: the I/O of one connection around its session.

mod access;
mod connection;
mod context;
mod file_send;
mod transport;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::proto::downstream::{DownstreamSession, Peer};

pub use access::AccessError;
pub(crate) use access::{Access, Reload, mock_nonce};
pub(crate) use context::ServerContext;
pub use context::{DownstreamConfig, StreamStatus};
pub(crate) use transport::Transport;

/// Bytes asked of a downstream socket per read: clients send short messages.
const DOWNSTREAM_READ_CHUNK: usize = 16 * 1024;

/// Serves one downstream connection until it ends or `shutdown` fires. It uses the
/// certificate and rules the port has as it comes, to its end.
pub(crate) async fn serve<T: Transport>(
    stream: T,
    peer: Peer,
    label: String,
    ctx: Arc<ServerContext>,
    shutdown: CancellationToken,
) {
    ctx.counters.downstream.accepted();
    let Some(nonce) = access::connection_nonce() else {
        return;
    };
    let access = ctx.access();
    let session = DownstreamSession::new(
        ctx.session_config(&access, peer),
        peer,
        std::sync::Arc::clone(&access.policy),
        nonce,
    );
    let connection =
        connection::Connection::new(stream, session, ctx, access.tls.clone(), shutdown);
    let span = info_span!(
        "downstream",
        peer = %label,
        ssl = tracing::field::Empty,
        app = tracing::field::Empty,
        pid = tracing::field::Empty,
        slot = tracing::field::Empty
    );
    connection.run().instrument(span).await;
}

#[cfg(test)]
mod tests;
