//! systemd's notification protocol (`sd_notify(3)`), for a unit of `Type=notify`: `READY=1`
//! once the relay has opened its store and bound its ports, `RELOADING=1` and `READY=1`
//! around a reload (for `Type=notify` with `ExecReload` sending SIGHUP), `STOPPING=1` when shutdown begins, and `WATCHDOG=1` at half the
//! interval systemd asks for (`WatchdogSec`, passed as `WATCHDOG_USEC`). Each is one datagram
//! to the socket in `NOTIFY_SOCKET` (a path, or an abstract name after `@`); without that
//! variable nothing is sent.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where notifications go, if systemd asked for them.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: std::os::unix::net::SocketAddr,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` names; `None` when it is unset, empty or unusable (a
    /// warning says which).
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        let name = name.to_str()?.to_owned();
        if name.is_empty() {
            return None;
        }
        let target = match name.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            }
            None => std::os::unix::net::SocketAddr::from_pathname(&name),
        };
        let made = target.and_then(|target| Ok((UnixDatagram::unbound()?, target)));
        match made {
            Ok((socket, target)) => Some(Notifier { socket, target }),
            Err(e) => {
                tracing::warn!(socket = %name, error = %e, "cannot use NOTIFY_SOCKET");
                None
            }
        }
    }

    /// Sends `state` (such as `READY=1`); a failure is logged and otherwise ignored.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.target) {
            tracing::warn!(error = %e, state, "could not notify systemd");
        }
    }

    /// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, if it is set for this
    /// process (`WATCHDOG_PID` absent or this process's).
    pub fn watchdog_interval() -> Option<Duration> {
        if let Some(pid) = std::env::var_os("WATCHDOG_PID")
            && pid.to_str() != Some(&std::process::id().to_string())
        {
            return None;
        }
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }
}
