//! The downstream listeners: TCP, and a Unix-domain socket when one is configured. Each
//! accepted connection is served in its own task, tracked so that shutdown waits for them to
//! end their streams.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::proto::downstream::Peer;
use crate::service::downstream::{self, ServerContext};

/// Accepts connections on `tcp` and `unix` until `shutdown` fires, then waits for every
/// connection task to finish.
pub(crate) async fn serve(
    tcp: TcpListener,
    unix: Option<UnixSocket>,
    ctx: Arc<ServerContext>,
    shutdown: CancellationToken,
) {
    let tasks = TaskTracker::new();
    if let Ok(addr) = tcp.local_addr() {
        info!(%addr, "listening for replication connections");
    }
    let on_tcp = accept_loop(&shutdown, || async {
        let (stream, peer) = tcp.accept().await?;
        let _ = stream.set_nodelay(true);
        let serve = downstream::serve(
            stream,
            Peer::Tcp(peer.ip()),
            peer.to_string(),
            Arc::clone(&ctx),
            shutdown.clone(),
        );
        tasks.spawn(serve);
        Ok(())
    });
    let on_unix = async {
        let Some(unix) = &unix else { return };
        info!(path = %unix.path.display(), "listening for replication connections");
        accept_loop(&shutdown, || async {
            let (stream, _) = unix.listener.accept().await?;
            let serve = downstream::serve(
                stream,
                Peer::Local,
                "[local]".to_owned(),
                Arc::clone(&ctx),
                shutdown.clone(),
            );
            tasks.spawn(serve);
            Ok(())
        })
        .await;
    };
    tokio::join!(on_tcp, on_unix);
    tasks.close();
    tasks.wait().await;
}

/// Calls `accept` until shutdown; an error (out of file descriptors and the like) backs off
/// briefly rather than spinning.
async fn accept_loop<F, Fut>(shutdown: &CancellationToken, mut accept: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<()>>,
{
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = accept() => accepted,
        };
        if let Err(e) = accepted {
            warn!(error = %e, "could not accept a connection");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

/// A Unix-domain socket `.s.PGSQL.PORT` in a directory, removed when dropped.
#[derive(Debug)]
pub(crate) struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A bound socket, before the runtime serves it.
#[derive(Debug)]
pub(crate) struct BoundUnixSocket {
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
}

impl BoundUnixSocket {
    /// Binds `DIR/.s.PGSQL.PORT`, readable and writable by everyone as PostgreSQL's default
    /// `unix_socket_permissions` (0777); access is the rules' to decide. A socket file left by
    /// a relay that is gone is replaced; one something still listens on is an error.
    ///
    /// # Errors
    /// The directory is missing or not writable, or the socket is in use.
    pub(crate) fn bind(dir: &Path, port: u16) -> io::Result<BoundUnixSocket> {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!(".s.PGSQL.{port}"));
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another server might be running on \"{}\"", path.display()),
                ));
            }
            std::fs::remove_file(&path)?;
        }
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
        listener.set_nonblocking(true)?;
        Ok(BoundUnixSocket { listener, path })
    }

    /// The socket, served by the current runtime.
    ///
    /// # Errors
    /// The runtime cannot take it.
    pub(crate) fn serve(self) -> io::Result<UnixSocket> {
        // Unlinked on drop from here on, whether or not this succeeds.
        let path = self.path.clone();
        match UnixListener::from_std(self.listener) {
            Ok(listener) => Ok(UnixSocket { listener, path }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }
}
