//! The registry of the relay's own physical replication slots, the ones its downstream standbys
//! and `pg_receivewal` name in `primary_slot_name` / `--slot`.
//!
//! It mirrors PostgreSQL 15's `slot.c`, `slotfuncs.c` and the slot handling of `walsender.c`:
//! - names are `[a-z0-9_]{1,63}` (`ReplicationSlotValidateName`), checked on create only; other
//!   commands simply fail to find a bad name;
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
//! The registry only keeps state; the caller decides what to retain, when to persist, and what
//! the relay's current WAL positions are. It does no locking: the service wraps it in a mutex.
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
//! Creates, drops and invalidations are written at once; position updates only mark the
//! registry dirty, and [`SlotRegistry::persist_if_dirty`] saves them when the caller decides
//! (PostgreSQL saves slots at checkpoints). After a crash a `restart_lsn` may be older than the
//! last one reported, which errs on the safe side.

mod error;
mod name;
mod registry;
mod slot;
mod state;
mod xid;

pub use error::SlotError;
pub use name::{MAX_SLOT_NAME_LEN, validate_slot_name};
pub use registry::SlotRegistry;
pub use slot::{BackendPid, Persistency, SlotInfo, XminHorizon};
pub use state::STATE_FILE;
pub use xid::FullXid;
