//! Which WAL the relay keeps, as a checkpoint's `KeepLogSeg` decides it on a primary, plus
//! the relay's own rule that a connected reader's cursor is kept too.
//!
//! From the segment of the durable end, WAL is kept back to the oldest slot `restart_lsn` and
//! the oldest connected cursor, but never more than `max_slot_wal_keep_size` back: a slot that
//! falls further behind is invalidated (and loses its hold) rather than filling the disk, as
//! `InvalidateObsoleteReplicationSlots` does. At least `wal_keep_size` back is always kept.
//! Segments wholly below what is kept are let go of by the writer thread, which owns the store,
//! and unlinked on a blocking thread, as unlinking can wait for the device.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::service::downstream::ServerContext;
use crate::service::writer::{Writer, WriterError};
use crate::types::{Lsn, WalSegmentSize};

/// How often retention looks.
const INTERVAL: Duration = Duration::from_secs(1);

/// The retention limits, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// WAL always kept behind the durable end (`wal_keep_size`).
    pub wal_keep_size: u64,
    /// The most WAL slots may hold behind the durable end (`max_slot_wal_keep_size`); `None`
    /// for no limit.
    pub max_slot_wal_keep_size: Option<u64>,
}

impl RetentionPolicy {
    /// The oldest LSN to keep, and the floor below which slots are invalidated if any.
    pub fn keep(
        &self,
        size: WalSegmentSize,
        durable: Lsn,
        oldest_slot: Option<Lsn>,
        oldest_cursor: Option<Lsn>,
    ) -> (Lsn, Option<Lsn>) {
        let current = size.segment_start(durable);
        let held = [oldest_slot, oldest_cursor].into_iter().flatten().min();
        let mut keep = held.map_or(current, |h| current.min(size.segment_start(h)));
        let floor = self
            .max_slot_wal_keep_size
            .map(|max| size.segment_start(current.checked_sub(max).unwrap_or(Lsn(0))));
        if let Some(floor) = floor {
            keep = keep.max(floor);
        }
        let kept_anyway = current.checked_sub(self.wal_keep_size).unwrap_or(Lsn(0));
        (keep.min(size.segment_start(kept_anyway)), floor)
    }
}

/// Applies the policy every second until shutdown, and at once when the durable end enters a
/// new segment (a relay catching up writes many a second, and a small disk must not fill
/// between two rounds) or the store fails (a full disk: what retention frees is what lets it
/// open again).
pub(crate) async fn run(
    ctx: Arc<ServerContext>,
    writer: Writer,
    policy: watch::Receiver<RetentionPolicy>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(INTERVAL);
    let mut positions = writer.positions();
    let mut durable_rx = ctx.hub.subscribe();
    let mut segment = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            Ok(()) = positions.changed() => {
                if positions.borrow_and_update().failed.is_none() {
                    continue;
                }
            }
            Ok(()) = durable_rx.changed() => {
                let end = durable_rx.borrow_and_update().lsn;
                let now = ctx.hub.segment_size().map(|s| s.segment_of(end));
                if now == segment {
                    continue;
                }
            }
        }
        // The settings now: a reload changes them between two rounds.
        let policy = *policy.borrow();
        let durable = ctx.hub.durable();
        let (Some(_), Some(size)) = (durable.timeline, ctx.hub.segment_size()) else {
            continue;
        };
        segment = Some(size.segment_of(durable.lsn));
        let in_memory = ctx.slots().min_restart_lsn();
        let cursor = ctx.oldest_cursor();
        ctx.hub.set_oldest_reader(cursor);
        let (keep, floor) = policy.keep(size, durable.lsn, in_memory, cursor);
        if let Some(floor) = floor.filter(|f| in_memory.is_some_and(|s| s < *f)) {
            match ctx.invalidate_slots_behind(floor).await {
                Ok(names) => {
                    for name in names {
                        warn!(slot = %name, "invalidating slot because its restart_lsn exceeds max_slot_wal_keep_size");
                    }
                }
                Err(e) => warn!(error = %e, "could not invalidate slots"),
            }
        }
        if !removes_any(positions.borrow().oldest, keep, size) {
            continue;
        }
        // Slot positions go to disk before the WAL they no longer hold, as a checkpoint writes
        // them; where they cannot (a full disk), WAL stays back to where the slots on disk are.
        if let Err(e) = ctx.save_slots().await {
            debug!(error = %e, "could not save replication slots before removing WAL");
        }
        let (keep, _) = policy.keep(size, durable.lsn, ctx.slots_floor(), cursor);
        match writer.remove_before(keep).await {
            Ok(0) | Err(WriterError::Failed(_) | WriterError::Stopped) => {}
            Ok(n) => {
                ctx.hub.removed_below(keep);
                debug!(removed = n, keep = %keep, "removed old segments");
            }
            Err(e) => warn!(error = %e, "could not remove old segments"),
        }
    }
}

/// Whether keeping from `keep` removes any segment, the oldest stored starting at `oldest`.
fn removes_any(oldest: Option<Lsn>, keep: Lsn, size: WalSegmentSize) -> bool {
    oldest.is_some_and(|o| o < size.segment_start(keep))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn size() -> WalSegmentSize {
        WalSegmentSize::new(1 << 20).unwrap()
    }

    #[test]
    fn only_a_whole_segment_below_what_is_kept_is_worth_removing() {
        let oldest = Some(Lsn(3 * MB));
        assert!(!removes_any(oldest, Lsn(3 * MB), size()));
        assert!(!removes_any(oldest, Lsn(4 * MB - 1), size()));
        assert!(removes_any(oldest, Lsn(4 * MB), size()));
        assert!(!removes_any(None, Lsn(9 * MB), size()));
    }

    #[test]
    fn keeps_back_to_the_oldest_holder() {
        let p = RetentionPolicy {
            wal_keep_size: 0,
            max_slot_wal_keep_size: None,
        };
        let durable = Lsn(10 * MB + 5);
        assert_eq!(p.keep(size(), durable, None, None), (Lsn(10 * MB), None));
        assert_eq!(
            p.keep(size(), durable, Some(Lsn(3 * MB + 7)), None).0,
            Lsn(3 * MB)
        );
        assert_eq!(
            p.keep(size(), durable, Some(Lsn(6 * MB)), Some(Lsn(4 * MB + 1)))
                .0,
            Lsn(4 * MB)
        );
    }

    #[test]
    fn wal_keep_size_is_always_kept() {
        let p = RetentionPolicy {
            wal_keep_size: 4 * MB,
            max_slot_wal_keep_size: None,
        };
        assert_eq!(p.keep(size(), Lsn(10 * MB), None, None).0, Lsn(6 * MB));
        assert_eq!(p.keep(size(), Lsn(2 * MB), None, None).0, Lsn(0));
    }

    #[test]
    fn slots_hold_at_most_the_limit() {
        let p = RetentionPolicy {
            wal_keep_size: 0,
            max_slot_wal_keep_size: Some(4 * MB),
        };
        let (keep, floor) = p.keep(size(), Lsn(10 * MB), Some(Lsn(MB)), None);
        assert_eq!((keep, floor), (Lsn(6 * MB), Some(Lsn(6 * MB))));
        let (keep, _) = p.keep(size(), Lsn(10 * MB), Some(Lsn(8 * MB)), None);
        assert_eq!(keep, Lsn(8 * MB));
    }
}
