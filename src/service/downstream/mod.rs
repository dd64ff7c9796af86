//! The downstream side of the relay: a walsender for real standbys, `pg_receivewal` and
//! other relays, over the WAL the relay has made durable.
//!
//! The protocol decisions are the sans-IO [`crate::proto::downstream`] session's; here are
//! what they need:
//! - `context`: what every connection shares (the upstream's identity, the hub, the slot
//!   registry and its file, the connection limit, the list of streams);
//! - `connection`: the I/O of one connection around its session.

mod connection;
mod context;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::proto::downstream::DownstreamSession;
use crate::service::conn::{FrameReader, FrameWriter};

pub(crate) use context::ServerContext;
pub use context::{DownstreamConfig, StreamStatus};

/// Bytes asked of a downstream socket per read: clients send short messages.
const DOWNSTREAM_READ_CHUNK: usize = 16 * 1024;

/// Serves one downstream connection until it ends or `shutdown` fires.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ServerContext>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let session = DownstreamSession::new(ctx.session_config(), peer.ip());
    let connection = connection::Connection::new(
        FrameReader::new(rd, DOWNSTREAM_READ_CHUNK),
        FrameWriter::new(wr),
        session,
        ctx,
        shutdown,
    );
    let span = info_span!(
        "downstream",
        peer = %peer,
        app = tracing::field::Empty,
        pid = tracing::field::Empty,
        slot = tracing::field::Empty
    );
    connection.run().instrument(span).await;
}

#[cfg(test)]
mod tests;
