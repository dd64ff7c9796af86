//! What the block devices under the benchmark's directories wrote, from `/proc/diskstats`:
//! every process's writes that reached the disk (the primary's, the fan-out server's, the
//! standbys'), fsynced or written back, and the file systems' own (their metadata). On one
//! disk shared by all of them, this is the work that bounds how fast WAL can be delivered.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A device's `major:minor`.
type Device = (u64, u64);

/// The bytes one `/proc/diskstats` sector counts.
const SECTOR: u64 = 512;

/// Counts the bytes written to the devices that hold some directories.
#[derive(Debug)]
pub struct DiskWrites {
    devices: BTreeSet<Device>,
}

impl DiskWrites {
    /// The devices holding `dirs`, each once; a directory on a device that `/proc/diskstats`
    /// does not list (tmpfs, overlayfs) adds nothing.
    pub fn of(dirs: &[&Path]) -> DiskWrites {
        let devices = dirs
            .iter()
            .filter_map(|d| fs::metadata(d).ok())
            .map(|m| split_dev(m.dev()))
            .collect();
        DiskWrites { devices }
    }

    /// The bytes written so far, summed over the devices; `None` when none is listed.
    pub fn written(&self) -> Option<u64> {
        let stats = fs::read_to_string("/proc/diskstats").ok()?;
        let sectors: Vec<u64> = stats
            .lines()
            .filter_map(sectors_written)
            .filter(|(dev, _)| self.devices.contains(dev))
            .map(|(_, sectors)| sectors)
            .collect();
        (!sectors.is_empty()).then(|| sectors.iter().sum::<u64>() * SECTOR)
    }
}

/// `st_dev` as `major:minor`, as glibc's `gnu_dev_major` and `gnu_dev_minor` split it.
fn split_dev(dev: u64) -> Device {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// A `/proc/diskstats` line's device and its sectors written (the tenth field).
fn sectors_written(line: &str) -> Option<(Device, u64)> {
    let mut fields = line.split_whitespace();
    let major = fields.next()?.parse().ok()?;
    let minor = fields.next()?.parse().ok()?;
    let sectors = fields.nth(7)?.parse().ok()?;
    Some(((major, minor), sectors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sectors_written_of_a_line() {
        let line = " 254       0 vda 207581 10806 13629394 223171 2970884 479040 463238632 3145807 \
                    0 464792 3756798 426909 40 243028840 108772 1079174 279047";
        assert_eq!(sectors_written(line), Some(((254, 0), 463_238_632)));
        assert_eq!(sectors_written("   7  0 loop0 1 2"), None);
    }

    #[test]
    fn splits_device_numbers() {
        assert_eq!(split_dev(65024), (254, 0));
        assert_eq!(split_dev((259 << 8) | 3), (259, 3));
        // Minor 300 spills into the high bits: (8 << 8) | 0x2C | (0x100 << 12).
        assert_eq!(split_dev(0x0010_082C), (8, 300));
    }
}
