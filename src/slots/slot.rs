//! What callers see of a slot: who holds it, whether it is temporary, its positions.

use crate::types::{BackendPid, FullXid, Lsn, SlotName};

/// Whether a slot outlives the connection that created it (`ReplicationSlotPersistency`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistency {
    /// Kept on disk until dropped (`RS_PERSISTENT`).
    Persistent,
    /// Bound to `owner`, never written to disk, dropped when `owner` ends (`RS_TEMPORARY`).
    Temporary {
        /// The creating connection.
        owner: BackendPid,
    },
}

/// One slot as `pg_replication_slots` and `READ_REPLICATION_SLOT` show it. `restart_tli` is not
/// here: it depends on the timeline history (`tliOfPointInHistory`), which the caller holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotInfo {
    /// The slot name.
    pub name: SlotName,
    /// Whether it is a temporary slot.
    pub temporary: bool,
    /// The connection that has it acquired (`active_pid`); always the creator for a temporary
    /// slot.
    pub active_owner: Option<BackendPid>,
    /// The oldest WAL the slot holds; `None` holds nothing (never reserved, or lost).
    pub restart_lsn: Option<Lsn>,
    /// The `restart_lsn` it had when it was last invalidated.
    pub invalidated_at: Option<Lsn>,
    /// The standby's xmin from hot-standby feedback.
    pub xmin: Option<FullXid>,
    /// The standby's catalog xmin from hot-standby feedback.
    pub catalog_xmin: Option<FullXid>,
}

impl SlotInfo {
    /// Whether the slot was invalidated and holds nothing since (`wal_status = lost`). Using it
    /// fails: its WAL is gone. It can be dropped and created again.
    pub fn is_lost(&self) -> bool {
        self.restart_lsn.is_none() && self.invalidated_at.is_some()
    }
}
