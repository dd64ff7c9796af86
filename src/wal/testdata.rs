//! The WAL captured from PostgreSQL 15 under `tests/data/wal` (see its README), for tests.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.

use std::sync::OnceLock;

use crate::types::{Lsn, SystemId, WalSegmentSize};

use super::WalCheckConfig;

/// The captured cluster's system identifier.
pub const SYSID: SystemId = SystemId(7_712_515_731_830_208_278);
/// Where segment 000000010000000000000007, the first captured one, starts.
pub const FIRST: u64 = 0x70_0000;
/// The captured segments: 7 to B.
pub const SEGMENTS: std::ops::RangeInclusive<u64> = 7..=0xB;
/// 1 MiB.
pub const SEG: u64 = 1 << 20;
/// Where the overwrite-contrecord window starts.
pub const WINDOW_START: u64 = 0xFF_8000;

fn dir() -> String {
    format!("{}/tests/data/wal", env!("CARGO_MANIFEST_DIR"))
}

pub fn cfg() -> WalCheckConfig {
    WalCheckConfig {
        system_id: SYSID,
        segment_size: WalSegmentSize::new(1 << 20).unwrap(),
    }
}

/// Segments 7 to B, concatenated (from 0/700000 to 0/C00000).
pub fn all() -> &'static [u8] {
    static ALL: OnceLock<Vec<u8>> = OnceLock::new();
    ALL.get_or_init(|| {
        SEGMENTS
            .flat_map(|n| std::fs::read(format!("{}/00000001{n:016X}", dir())).unwrap())
            .collect()
    })
}

/// The bytes of segment `n`.
pub fn segment(n: u64) -> &'static [u8] {
    let from = ((n - 7) * SEG) as usize;
    &all()[from..from + SEG as usize]
}

/// The bytes from `lsn` to the end of the captured segments.
pub fn from(lsn: u64) -> &'static [u8] {
    &all()[(lsn - FIRST) as usize..]
}

/// A record as pg_waldump listed it.
#[derive(Clone, Copy, Debug)]
pub struct Listed {
    pub lsn: Lsn,
    pub tot_len: u32,
    pub prev: Lsn,
    pub switch: bool,
}

/// `records.txt`: every record of segments 7 to B, as pg_waldump listed them.
pub fn records() -> Vec<Listed> {
    let text = std::fs::read_to_string(format!("{}/records.txt", dir())).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Listed {
                lsn: f[0].parse().unwrap(),
                tot_len: f[1].parse().unwrap(),
                prev: f[2].parse().unwrap(),
                switch: f[3] == "XLOG" && f[4] == "SWITCH",
            }
        })
        .collect()
}

/// 32 KiB before and after 0/1000000 from a cluster whose crash recovery abandoned the record
/// at 0/FF9C88 and wrote an XLOG_OVERWRITE_CONTRECORD at 0/1000028.
pub fn overwrite_window() -> Vec<u8> {
    std::fs::read(format!("{}/overwrite-contrecord-0_FF8000.bin", dir())).unwrap()
}
