//! Fuzz entry point for the access files; `fuzz/fuzz_targets/access.rs` only calls it.
//!
//! The input, read as text (invalid UTF-8 replaced), is parsed as a `pg_hba.conf` and as a
//! `pg_ident.conf`; every included file is missing (so `include_if_exists` skips it and
//! `include` is an error). When the rules parse, a few fixed connections are matched against
//! them. Properties: no panic; an error names the given file and a line of the input (or, for
//! a `pg_hba.conf` without rules, line 0); a matched rule is the first rule that matches, and
//! names a line of the input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{HbaError, HbaFile, HbaRequest, IdentFile, LocalNetwork, Transport};

const HBA_FILE: &str = "/etc/walrelay/pg_hba.conf";
const IDENT_FILE: &str = "/etc/walrelay/pg_ident.conf";

/// Parses `data` as both files and matches connections: see the module documentation.
pub fn fuzz_access(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines = text.split('\n').count();
    let mut missing = |_: &str| Err::<String, String>(String::new());
    match HbaFile::parse(&text, HBA_FILE, &mut missing) {
        Ok(hba) => match_requests(&hba, lines),
        Err(e) => check_error(&e, HBA_FILE, lines, true),
    }
    match IdentFile::parse(&text, IDENT_FILE, &mut missing) {
        Ok(ident) => {
            for line in ident.lines() {
                assert!((1..=lines).contains(&line.line()));
                let (map, system, user) = (line.map(), line.system_user(), line.database_user());
                assert!(map.is_empty() || ident.maps(map, system, user));
            }
            let _ = ident.maps("map", "standby", "replicator");
            assert!(ident.maps("", "same", "same"));
        }
        Err(e) => check_error(&e, IDENT_FILE, lines, false),
    }
}

fn check_error(e: &HbaError, file: &str, lines: usize, hba: bool) {
    assert_eq!(e.file, file, "{e}");
    let whole_file = hba && e.line == 0;
    assert!(whole_file || (1..=lines).contains(&e.line), "{e}");
    assert!(!e.to_string().is_empty());
}

fn match_requests(hba: &HbaFile, lines: usize) {
    assert!(!hba.rules().is_empty());
    let nets = [
        LocalNetwork {
            addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            prefix_len: 8,
        },
        LocalNetwork {
            addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
            prefix_len: 128,
        },
    ];
    let peers = [
        Transport::Local,
        Transport::Host {
            addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ssl: false,
        },
        Transport::Host {
            addr: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
            ssl: true,
        },
        Transport::Host {
            addr: IpAddr::V6(Ipv4Addr::new(192, 168, 1, 5).to_ipv6_mapped()),
            ssl: false,
        },
        Transport::Host {
            addr: IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
            ssl: true,
        },
    ];
    for transport in peers {
        for (user, replication) in [("replicator", true), ("all", true), ("postgres", false)] {
            let req = HbaRequest {
                transport,
                user,
                replication,
                database: "postgres",
                local_networks: &nets,
            };
            let first = hba.rules().iter().find(|r| r.matches(&req));
            assert_eq!(hba.matching(&req), first);
            if let Some(rule) = first {
                assert!((1..=lines).contains(&rule.line()));
                assert_eq!(rule.file(), HBA_FILE);
                assert!(rule.describe().contains(rule.raw_line()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_point_accepts_seeds() {
        fuzz_access(b"host replication all 10.0.0.0/8 scram-sha-256\nlocal all all trust\n");
        fuzz_access(b"hostssl replication all ::/0 cert map=certs\ncerts cn replicator\n");
        fuzz_access(b"host replication all 10.0.0.0 255.0.0.0 md5 \\\n clientcert=verify-ca");
        fuzz_access(b"include other.conf\n");
        fuzz_access(b"# nothing\n");
        fuzz_access(b"\xff\x00\"\"\",,,#");
        fuzz_access(b"");
    }
}
