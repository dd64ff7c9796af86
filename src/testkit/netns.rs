//! A network namespace joined to this one by a veth pair, so that clients connect to the relay
//! from an address of their own rather than from loopback: what a standby on another machine
//! looks like to it. Needs root (`ip netns`, `ip link`); removed on `Drop`.
//!
//! Each namespace gets a /30 of 10.0.0.0/8 picked from this process's id and a counter, so
//! that tests running in parallel processes do not share addresses. Traffic stays between the
//! two ends of the pair.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::localpg::{LocalPgError, run};

/// Namespaces made by this process so far.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace and the veth pair that joins it to this one.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    host_link: String,
    host: Ipv4Addr,
    inside: Ipv4Addr,
}

impl NetNs {
    /// Creates the namespace, the pair, their addresses and routes, and brings them up.
    ///
    /// # Errors
    /// An `ip` command failed (not root, or no `iproute2`).
    pub fn create() -> Result<NetNs, LocalPgError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // 22 bits of /30 index: the low pid bits and the counter.
        let index = (pid.wrapping_mul(8).wrapping_add(n)) & 0x3f_ffff;
        let base = u32::from(Ipv4Addr::new(10, 0, 0, 0)) | (index << 2);
        let tag = format!("{:x}", (pid << 4 | (n & 0xf)) & 0xff_ffff);
        let ns = NetNs {
            name: format!("walrelay-{tag}"),
            host_link: format!("wrh{tag}"),
            host: Ipv4Addr::from(base + 1),
            inside: Ipv4Addr::from(base + 2),
        };
        let peer = format!("wrn{tag}");
        let host_cidr = format!("{}/30", ns.host);
        let inside_cidr = format!("{}/30", ns.inside);
        let steps: [&[&str]; 8] = [
            &["netns", "add", &ns.name],
            &[
                "link",
                "add",
                &ns.host_link,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ],
            &["link", "set", &peer, "netns", &ns.name],
            &["addr", "add", &host_cidr, "dev", &ns.host_link],
            &["link", "set", &ns.host_link, "up"],
            &["-n", &ns.name, "addr", "add", &inside_cidr, "dev", &peer],
            &["-n", &ns.name, "link", "set", &peer, "up"],
            &["-n", &ns.name, "link", "set", "lo", "up"],
        ];
        for args in steps {
            run(Command::new("ip").args(args))?;
        }
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` lists it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its handle for `nsenter --net` ([`super::localpg::PgBinaries::in_netns`]).
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// This side's address: where a server here listens for clients inside.
    pub fn host_addr(&self) -> Ipv4Addr {
        self.host
    }

    /// The address clients inside connect from.
    pub fn inside_addr(&self) -> Ipv4Addr {
        self.inside
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace removes the end inside it, and with it its peer here.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
    }
}
