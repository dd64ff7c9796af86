//! One reading of everything `/metrics` and `/status` show, taken at once so that both say
//! the same: the relay's status, its counters, its store on disk and the process. Positions
//! are bytes (an LSN as a number, as postgres_exporter exports `pg_stat_replication`), times
//! seconds.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::process::{self, ProcessStats};
use crate::metrics::Counters;
use crate::service::status::{RelayMonitor, RelayStatus};
use crate::slots::SlotInfo;
use crate::types::Lsn;

/// The WAL files of the store: how many and how many bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StoreUsage {
    /// Segment files (partial ones included).
    pub segments: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// What the endpoints read: a status, the counters and the figures around them.
#[derive(Debug)]
pub(crate) struct Snapshot<'a> {
    /// The relay's state.
    pub status: RelayStatus,
    /// What its tasks counted.
    pub counters: &'a Counters,
    /// Its store on disk.
    pub store: StoreUsage,
    /// The process.
    pub process: ProcessStats,
    /// When the reading was taken.
    pub now: SystemTime,
    /// The retention limit of slots (`max_slot_wal_keep_size`), if any.
    pub max_slot_wal_keep_size: Option<u64>,
}

/// `pg_replication_slots.wal_status` and `safe_wal_size` of one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotWal {
    /// `reserved`, `unreserved` or `lost` (the relay has no `max_wal_size` to be `extended`
    /// beyond).
    pub status: &'static str,
    /// Bytes that can still be written before the slot is lost; `None` without a limit.
    pub safe_wal_size: Option<i64>,
}

impl Snapshot<'_> {
    /// Reads the store's directory and the process; the caller runs it off the runtime's
    /// threads.
    pub(crate) fn read<'a>(
        monitor: &'a RelayMonitor,
        wal_dir: &Path,
        max_slot_wal_keep_size: Option<u64>,
    ) -> Snapshot<'a> {
        Snapshot {
            status: monitor.status(),
            counters: monitor.counters(),
            store: store_usage(wal_dir),
            process: process::read(),
            now: SystemTime::now(),
            max_slot_wal_keep_size,
        }
    }

    /// Seconds since the Unix epoch.
    pub(crate) fn now_seconds(&self) -> f64 {
        unix_seconds(self.now)
    }

    /// The server's end of WAL as it last said, if it has.
    pub(crate) fn upstream_end(&self) -> Option<Lsn> {
        Some(Lsn(self.counters.upstream.server_end())).filter(|l| l.0 != 0)
    }

    /// How far the durable end trails the server's, in bytes.
    pub(crate) fn upstream_lag_bytes(&self) -> u64 {
        self.upstream_end()
            .map_or(0, |end| end.0.saturating_sub(self.status.durable.0))
    }

    /// How long the durable end has trailed the server's, in seconds (0 when it does not).
    pub(crate) fn upstream_lag_seconds(&self) -> f64 {
        self.counters
            .upstream
            .behind_since_ms()
            .map_or(0.0, |since| {
                (self.now_seconds() - since as f64 / 1000.0).max(0.0)
            })
    }

    /// A slot's `wal_status` and `safe_wal_size` now (see [`slot_wal`]).
    pub(crate) fn slot_wal(&self, slot: &SlotInfo) -> SlotWal {
        slot_wal(slot, self.status.durable, self.max_slot_wal_keep_size)
    }
}

/// A slot's `wal_status` and `safe_wal_size`, as `pg_replication_slots` says them, with the
/// durable end at `durable` and `max_slot_wal_keep_size` at `limit`: lost once invalidated;
/// unreserved when the limit is already passed (retention invalidates it next); reserved
/// otherwise. Without a limit there is no `safe_wal_size` (NULL).
pub(crate) fn slot_wal(slot: &SlotInfo, durable: Lsn, limit: Option<u64>) -> SlotWal {
    let Some(restart) = slot.restart_lsn else {
        let status = if slot.is_lost() { "lost" } else { "reserved" };
        return SlotWal {
            status,
            safe_wal_size: None,
        };
    };
    let held = durable.0.saturating_sub(restart.0);
    let safe = limit.map(|limit| {
        i64::try_from(limit).unwrap_or(i64::MAX) - i64::try_from(held).unwrap_or(i64::MAX)
    });
    let status = if safe.is_some_and(|s| s < 0) {
        "unreserved"
    } else {
        "reserved"
    };
    SlotWal {
        status,
        safe_wal_size: safe,
    }
}

/// Seconds since the Unix epoch of `t`.
pub(crate) fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// Counts the segment files (24 hex digits, `.partial` included) in `wal_dir`.
fn store_usage(wal_dir: &Path) -> StoreUsage {
    let mut usage = StoreUsage::default();
    let Ok(entries) = std::fs::read_dir(wal_dir) else {
        return usage;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stem = name.strip_suffix(".partial").unwrap_or(&name);
        if stem.len() == 24 && stem.bytes().all(|b| b.is_ascii_hexdigit()) {
            usage.segments += 1;
            usage.bytes += entry.metadata().map_or(0, |m| m.len());
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::SlotName;

    fn slot(restart: Option<u64>, invalidated: Option<u64>) -> SlotInfo {
        SlotInfo {
            name: SlotName::new("s").unwrap(),
            temporary: false,
            active_owner: None,
            restart_lsn: restart.map(Lsn),
            invalidated_at: invalidated.map(Lsn),
            xmin: None,
            catalog_xmin: None,
        }
    }

    #[test]
    fn wal_status_and_safe_wal_size_as_pg_replication_slots() {
        let durable = Lsn(1000);
        let reserved = |status, safe| SlotWal {
            status,
            safe_wal_size: safe,
        };
        assert_eq!(
            slot_wal(&slot(Some(400), None), durable, None),
            reserved("reserved", None)
        );
        assert_eq!(
            slot_wal(&slot(Some(400), None), durable, Some(700)),
            reserved("reserved", Some(100))
        );
        assert_eq!(
            slot_wal(&slot(Some(200), None), durable, Some(700)),
            reserved("unreserved", Some(-100))
        );
        assert_eq!(
            slot_wal(&slot(None, Some(300)), durable, Some(700)),
            reserved("lost", None)
        );
        assert_eq!(
            slot_wal(&slot(None, None), durable, None),
            reserved("reserved", None)
        );
    }
}
