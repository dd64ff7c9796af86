//! Transaction ids with their epoch, as hot-standby feedback carries them, and the horizon of
//! the oldest ones a set of standbys still needs.
//!
//! A slot stores its `xmin`/`catalog_xmin` as PostgreSQL's `FullTransactionId` (`xid8`), so the
//! relay can forward the minimum upstream with the right epoch (`'h'` messages send both halves).

use std::fmt;

/// A normal transaction id with its epoch: the epoch in the high 32 bits, the 32-bit xid in the
/// low ones. Invalid, bootstrap and frozen ids (32-bit values below 3, those that fail
/// `TransactionIdIsNormal`) are never represented: they are `None` wherever an xid is optional.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FullXid(u64);

impl FullXid {
    /// `FirstNormalTransactionId`.
    const FIRST_NORMAL: u32 = 3;

    /// The id `xid` of epoch `epoch`, or `None` when `xid` is not normal (0, 1 or 2), which
    /// feedback uses to release its hold.
    pub fn new(epoch: u32, xid: u32) -> Option<FullXid> {
        FullXid::from_u64((u64::from(epoch) << 32) | u64::from(xid))
    }

    /// The id from its 64-bit form, or `None` when its 32-bit part is not normal.
    pub fn from_u64(value: u64) -> Option<FullXid> {
        (value & 0xFFFF_FFFF >= u64::from(FullXid::FIRST_NORMAL)).then_some(FullXid(value))
    }

    /// The 64-bit form.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The epoch.
    pub fn epoch(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The 32-bit transaction id.
    pub fn xid(self) -> u32 {
        self.0 as u32
    }

    /// Whether a primary whose next id was `next` at its last checkpoint can take this id as
    /// a standby's xmin. The primary's `TransactionIdInRecentPast` ignores feedback from
    /// another epoch than its next id's (or the one before, for ids above it); the relay knows
    /// the next id only as of the last checkpoint record it stored, so it allows 2^31 ids
    /// either side of it, the most that can be live at once.
    pub fn near(self, next: u64) -> bool {
        self.0.abs_diff(next) < 1 << 31
    }
}

/// The oldest transaction ids standbys still need, to forward upstream as hot-standby feedback
/// (`ReplicationSlotsComputeRequiredXmin`); `None` where nothing is held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XminHorizon {
    /// The smallest `xmin`.
    pub xmin: Option<FullXid>,
    /// The smallest `catalog_xmin`.
    pub catalog_xmin: Option<FullXid>,
}

impl XminHorizon {
    /// The oldest of each over `horizons`.
    pub fn oldest<'a>(horizons: impl IntoIterator<Item = &'a XminHorizon> + Clone) -> XminHorizon {
        XminHorizon {
            xmin: horizons.clone().into_iter().filter_map(|h| h.xmin).min(),
            catalog_xmin: horizons.into_iter().filter_map(|h| h.catalog_xmin).min(),
        }
    }

    /// Whether both ids are near `next` (see [`FullXid::near`]); an absent id always is.
    pub fn near(&self, next: u64) -> bool {
        [self.xmin, self.catalog_xmin]
            .into_iter()
            .flatten()
            .all(|x| x.near(next))
    }
}

/// The 64-bit decimal form, as PostgreSQL prints an `xid8`.
impl fmt::Display for FullXid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_and_validity() {
        let x = FullXid::new(2, 748).unwrap();
        assert_eq!((x.epoch(), x.xid(), x.get()), (2, 748, (2 << 32) | 748));
        assert_eq!(x.to_string(), "8589935340");
        assert_eq!(FullXid::from_u64(x.get()), Some(x));
        for xid in 0..3 {
            assert_eq!(FullXid::new(0, xid), None);
            assert_eq!(FullXid::new(7, xid), None);
        }
        assert!(FullXid::new(0, 3).is_some());
        // Later epochs order after earlier ones whatever the 32-bit part.
        assert!(FullXid::new(1, 3).unwrap() > FullXid::new(0, u32::MAX).unwrap());
    }

    #[test]
    fn near_the_next_id_means_within_2_pow_31() {
        let next = (5 << 32) | 1000;
        let at = |epoch, xid| FullXid::new(epoch, xid).unwrap().near(next);
        assert!(at(5, 3) && at(5, 1000) && at(5, 90_000));
        // Across the epoch boundary below.
        assert!(at(4, u32::MAX - 10));
        assert!(!at(4, 1000), "a whole epoch back");
        assert!(!at(0, 748), "another epoch");
        assert!(!at(6, 1000), "an epoch ahead");
    }
}
