//! The address column of a `host*` rule: its parsing and its matching against a client's
//! address.
//!
//! This mirrors the address part of PostgreSQL 15's `parse_hba_line` (`hba.c`), with
//! `pg_sockaddr_cidr_mask` (`ip.c`) for the `/bits` suffix, and `check_ip`,
//! `check_same_host_or_net` and `check_network_callback` for matching: an address matches a
//! range of its own family when the bits the mask keeps are equal. Host names are refused: the
//! relay does no DNS lookups. Addresses are read in their standard forms only; what glibc's
//! `getaddrinfo` also takes as numeric (`127.1`, `0x7f.0.0.1`, `fe80::1%eth0`) is read as a
//! host name, and refused too.
//!
//! PostgreSQL listens on IPv6-only sockets, so an IPv4 client always reaches it as IPv4. The
//! relay may accept IPv4 clients on a dual-stack socket, where they appear as IPv4-mapped
//! IPv6 addresses (`::ffff:10.1.2.3`): such an address is matched as the IPv4 address it
//! carries, so it matches IPv4 rules and not IPv6 ones, as PostgreSQL would see the client.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::token::Line;

/// One address and prefix of the relay's machine, for `samehost` and `samenet`
/// (what PostgreSQL gets from `getifaddrs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalNetwork {
    /// An address of an interface.
    pub addr: IpAddr,
    /// The length of the interface's network prefix; more than the family's width counts as
    /// the whole address.
    pub prefix_len: u8,
}

/// What a `host*` rule's address column allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbaAddress {
    /// `all`: any address.
    All,
    /// `samehost`: any of the machine's own addresses.
    SameHost,
    /// `samenet`: any address in a network the machine is directly connected to.
    SameNet,
    /// An address and mask: `10.0.0.0/8`, `fe80::/10`, or `10.0.0.0 255.0.0.0` with the mask
    /// in its own column. The mask is of the same family; it need not be contiguous.
    Range {
        /// The network address, as written (bits outside the mask are ignored).
        addr: IpAddr,
        /// The mask.
        mask: IpAddr,
    },
}

impl HbaAddress {
    /// Whether a client at `peer` matches, given the machine's networks (`check_hba`'s address
    /// switch).
    pub fn matches(&self, peer: IpAddr, local_networks: &[LocalNetwork]) -> bool {
        let peer = peer.to_canonical();
        match *self {
            HbaAddress::All => true,
            HbaAddress::Range { addr, mask } => in_range(peer, addr, mask),
            HbaAddress::SameHost => local_networks.iter().any(|net| {
                let addr = net.addr.to_canonical();
                in_range(peer, addr, cidr_mask(addr, u32::MAX))
            }),
            HbaAddress::SameNet => local_networks.iter().any(|net| {
                let addr = net.addr.to_canonical();
                in_range(peer, addr, cidr_mask(addr, u32::from(net.prefix_len)))
            }),
        }
    }
}

/// Parses the address column (`fields[*next]`) of a `host*` rule, and the mask column after it
/// when the address has no `/bits`; advances `*next` past what it used.
pub(super) fn parse_address(line: &Line, next: &mut usize) -> Result<HbaAddress, super::HbaError> {
    let Some(tokens) = line.fields.get(*next) else {
        return Err(line.error("end-of-line before IP address specification"));
    };
    *next += 1;
    let token = line.single(tokens, "multiple values specified for host address")?;
    if token.is_keyword("all") {
        return Ok(HbaAddress::All);
    }
    if token.is_keyword("samehost") {
        return Ok(HbaAddress::SameHost);
    }
    if token.is_keyword("samenet") {
        return Ok(HbaAddress::SameNet);
    }
    let (host, bits) = match token.text.split_once('/') {
        Some((host, bits)) => (host, Some(bits)),
        None => (token.text.as_str(), None),
    };
    let Ok(addr) = host.parse::<IpAddr>() else {
        if bits.is_some() {
            return Err(line.error(format!(
                "specifying both host name and CIDR mask is invalid: \"{}\"",
                token.text
            )));
        }
        return Err(line.error(format!(
            "host name \"{host}\" is not supported by walrelay: write an IP address range"
        )));
    };
    if let Some(bits) = bits {
        let Some(bits) = cidr_bits(bits, addr) else {
            return Err(line.error(format!("invalid CIDR mask in address \"{}\"", token.text)));
        };
        return Ok(HbaAddress::Range {
            addr,
            mask: cidr_mask(addr, bits),
        });
    }
    let Some(tokens) = line.fields.get(*next) else {
        return Err(line.error("end-of-line before netmask specification"));
    };
    *next += 1;
    let token = line.single(tokens, "multiple values specified for netmask")?;
    let Ok(mask) = token.text.parse::<IpAddr>() else {
        // What glibc's gai_strerror says for EAI_NONAME.
        return Err(line.error(format!(
            "invalid IP mask \"{}\": Name or service not known",
            token.text
        )));
    };
    if addr.is_ipv4() != mask.is_ipv4() {
        return Err(line.error("IP address and mask do not match"));
    }
    Ok(HbaAddress::Range { addr, mask })
}

/// `pg_sockaddr_cidr_mask`'s reading of the text after `/`: `strtol` in base 10 (leading white
/// space and a sign allowed, nothing after the digits), from 0 to the family's width.
fn cidr_bits(text: &str, family: IpAddr) -> Option<u32> {
    let digits = text.trim_start_matches([' ', '\t', '\n', '\u{b}', '\u{c}', '\r']);
    let bits: i64 = digits.parse().ok()?;
    let width = if family.is_ipv4() { 32 } else { 128 };
    if (0..=width).contains(&bits) {
        u32::try_from(bits).ok()
    } else {
        None
    }
}

/// The mask of `bits` leading ones in `family`'s width (all ones past the width).
fn cidr_mask(family: IpAddr, bits: u32) -> IpAddr {
    match family {
        IpAddr::V4(_) => {
            let ones = u32::MAX
                .checked_shl(32u32.saturating_sub(bits))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(ones))
        }
        IpAddr::V6(_) => {
            let ones = u128::MAX
                .checked_shl(128u32.saturating_sub(bits))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(ones))
        }
    }
}

/// `check_ip`: same family, and equal under the mask (`pg_range_sockaddr`).
fn in_range(peer: IpAddr, addr: IpAddr, mask: IpAddr) -> bool {
    match (peer, addr, mask) {
        (IpAddr::V4(p), IpAddr::V4(a), IpAddr::V4(m)) => {
            (u32::from(p) ^ u32::from(a)) & u32::from(m) == 0
        }
        (IpAddr::V6(p), IpAddr::V6(a), IpAddr::V6(m)) => {
            (u128::from(p) ^ u128::from(a)) & u128::from(m) == 0
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn range(addr: &str, bits: u32) -> HbaAddress {
        HbaAddress::Range {
            addr: ip(addr),
            mask: cidr_mask(ip(addr), bits),
        }
    }

    #[test]
    fn masks() {
        assert_eq!(cidr_mask(ip("0.0.0.0"), 0), ip("0.0.0.0"));
        assert_eq!(cidr_mask(ip("0.0.0.0"), 8), ip("255.0.0.0"));
        assert_eq!(cidr_mask(ip("0.0.0.0"), 32), ip("255.255.255.255"));
        assert_eq!(cidr_mask(ip("0.0.0.0"), 99), ip("255.255.255.255"));
        assert_eq!(cidr_mask(ip("::"), 10), ip("ffc0::"));
        assert_eq!(
            cidr_mask(ip("::"), 128),
            ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")
        );
        assert_eq!(cidr_mask(ip("::"), 0), ip("::"));
    }

    #[test]
    fn cidr_bits_read_as_strtol() {
        let v4 = ip("10.0.0.0");
        assert_eq!(cidr_bits("8", v4), Some(8));
        assert_eq!(cidr_bits("+8", v4), Some(8));
        assert_eq!(cidr_bits(" 08", v4), Some(8));
        assert_eq!(cidr_bits("-0", v4), Some(0));
        assert_eq!(cidr_bits("32", v4), Some(32));
        assert_eq!(cidr_bits("33", v4), None);
        assert_eq!(cidr_bits("128", ip("::")), Some(128));
        assert_eq!(cidr_bits("129", ip("::")), None);
        for bad in ["", " ", "8 ", "8x", "0x8", "-1", "99999999999999999999"] {
            assert_eq!(cidr_bits(bad, v4), None, "{bad:?}");
        }
    }

    #[test]
    fn ranges_match_their_family_only() {
        let net = range("10.0.0.0", 8);
        assert!(net.matches(ip("10.200.3.4"), &[]));
        assert!(!net.matches(ip("11.0.0.1"), &[]));
        // Bits outside the mask are ignored on both sides.
        assert!(range("10.1.2.3", 8).matches(ip("10.9.9.9"), &[]));
        assert!(range("0.0.0.0", 0).matches(ip("192.0.2.1"), &[]));
        assert!(!range("0.0.0.0", 0).matches(ip("::1"), &[]));
        assert!(!range("::", 0).matches(ip("127.0.0.1"), &[]));
        assert!(range("fe80::", 10).matches(ip("fe80::1:2"), &[]));
        assert!(!range("fe80::", 10).matches(ip("fec0::1"), &[]));
        assert!(range("::1", 128).matches(ip("::1"), &[]));
        // A non-contiguous mask from a mask column works bit by bit.
        let odd = HbaAddress::Range {
            addr: ip("10.0.0.5"),
            mask: ip("255.0.0.255"),
        };
        assert!(odd.matches(ip("10.7.7.5"), &[]));
        assert!(!odd.matches(ip("10.7.7.6"), &[]));
    }

    #[test]
    fn mapped_ipv4_peers_match_as_ipv4() {
        let mapped = ip("::ffff:10.1.2.3");
        assert!(range("10.0.0.0", 8).matches(mapped, &[]));
        assert!(range("10.1.2.3", 32).matches(mapped, &[]));
        assert!(!range("::", 0).matches(mapped, &[]));
        assert!(!range("::ffff:0.0.0.0", 96).matches(mapped, &[]));
        assert!(HbaAddress::All.matches(mapped, &[]));
    }

    #[test]
    fn samehost_and_samenet() {
        let nets = [
            LocalNetwork {
                addr: ip("192.168.1.10"),
                prefix_len: 24,
            },
            LocalNetwork {
                addr: ip("127.0.0.1"),
                prefix_len: 8,
            },
            LocalNetwork {
                addr: ip("2001:db8::7"),
                prefix_len: 64,
            },
            LocalNetwork {
                addr: ip("::ffff:172.16.0.1"),
                prefix_len: 200,
            },
        ];
        let host = HbaAddress::SameHost;
        assert!(host.matches(ip("192.168.1.10"), &nets));
        assert!(host.matches(ip("::ffff:192.168.1.10"), &nets));
        assert!(!host.matches(ip("192.168.1.11"), &nets));
        assert!(host.matches(ip("2001:db8::7"), &nets));
        assert!(host.matches(ip("172.16.0.1"), &nets));
        assert!(!host.matches(ip("10.0.0.1"), &[]));
        let net = HbaAddress::SameNet;
        assert!(net.matches(ip("192.168.1.200"), &nets));
        assert!(net.matches(ip("127.5.5.5"), &nets));
        assert!(net.matches(ip("2001:db8::1:2"), &nets));
        assert!(!net.matches(ip("2001:db8:1::1"), &nets));
        assert!(!net.matches(ip("192.168.2.1"), &nets));
        // A prefix wider than the family counts as the whole address.
        assert!(net.matches(ip("172.16.0.1"), &nets));
        assert!(!net.matches(ip("172.16.0.2"), &nets));
        assert!(!net.matches(ip("192.168.1.1"), &[]));
    }
}
