//! The downstream listener: accepts connections and serves each in its own task, tracked so
//! that shutdown waits for them to end their streams.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::service::downstream::{self, ServerContext};

/// Accepts connections on `listener` until `shutdown` fires, then waits for every connection
/// task to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    ctx: Arc<ServerContext>,
    shutdown: CancellationToken,
) {
    let tasks = TaskTracker::new();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "listening for replication connections");
    }
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tasks.spawn(downstream::serve(
                    stream,
                    peer,
                    Arc::clone(&ctx),
                    shutdown.clone(),
                ));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off briefly rather than spin.
                warn!(error = %e, "could not accept a connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    tasks.close();
    tasks.wait().await;
}
