//! The registry of the relay's own physical replication slots, the ones its downstream standbys
//! and `pg_receivewal` name in `primary_slot_name` / `--slot`.
//!
//! It mirrors PostgreSQL 15's `slot.c`, `slotfuncs.c` and the slot handling of `walsender.c`:
//! - names are [`SlotName`](crate::types::SlotName)s, checked on create by the caller; other
//!   commands look a name up as text and simply fail to find a bad one;
//! - persistent slots survive restarts; temporary slots belong to the connection that created
//!   them, are never written to disk and are dropped when that connection ends;
//! - a slot is acquired by one connection at a time (`active_pid`), otherwise 55006;
//! - `restart_lsn` follows the flush position the standby reports, in both directions, and only
//!   when it is not 0 (`PhysicalConfirmReceivedLocation`); `xmin`/`catalog_xmin` follow
//!   hot-standby feedback (`PhysicalReplicationSlotNewXmin`);
//! - a slot that falls behind the retention limit is invalidated like `max_slot_wal_keep_size`
//!   (`InvalidateObsoleteReplicationSlots`): its `restart_lsn` becomes NULL, `invalidated_at`
//!   keeps the old value, and it holds back nothing any more.
//!
//! The registry only keeps state, in memory; the caller decides what to retain, when to persist,
//! and what the relay's current WAL positions are. It does no locking and no I/O after
//! [`SlotRegistry::open`]: the service wraps it in a mutex and writes what it hands out through
//! a [`SlotPersister`] on a blocking thread, never while holding that mutex.
//!
//! # Persistence
//!
//! All persistent slots live in one text file, `DATA_DIR/slots.state` (see the `state` module),
//! instead of PostgreSQL's `pg_replslot/<name>/state`:
//! - a slot name never becomes part of a path, so no name can reach outside the data directory,
//!   whatever the name checks let through;
//! - one atomic replace (tmp, fsync, rename, fsync of the directory) commits a create, a drop,
//!   an invalidation and every position advanced since the last save together, so after a
//!   crash the slot set is one that existed;
//! - physical slots are few and carry no spill files (the reason for PostgreSQL's per-slot
//!   directories), so the file stays a few kilobytes and a rewrite costs the same fsyncs as a
//!   per-slot file would.
//!
//! A create, a drop or an invalidation changes the registry at once and hands back a
//! [`Pending`] change: a numbered [`SlotSnapshot`] of the persistent slots, which the caller
//! writes before it reports the change, and [`SlotRegistry::undo`]es if the write fails.
//! Position updates only mark the registry dirty, and [`SlotRegistry::take_dirty`] hands out a
//! snapshot when the caller decides to save them (PostgreSQL saves slots at checkpoints). A
//! [`SlotFile`] never replaces a newer snapshot with an older one, so writes may finish in any
//! order. After a crash a `restart_lsn` may be older than the last one reported, which errs on
//! the safe side.

mod error;
mod persist;
mod registry;
mod slot;
mod state;

pub use error::SlotError;
pub use persist::{SlotFile, SlotPersister, SlotSnapshot};
pub use registry::{Pending, SlotRegistry};
pub use slot::{Persistency, SlotInfo};
pub use state::STATE_FILE;
