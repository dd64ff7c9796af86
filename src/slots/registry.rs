//! [`SlotRegistry`]: the relay's physical slots in memory, persisted through the `state` module.
//!
//! Ownership follows PostgreSQL's `active_pid`: a connection acquires a slot to stream from it
//! and releases it when done; a temporary slot stays bound to its creator after release
//! (`ReplicationSlotRelease`) and is dropped with it (`ReplicationSlotCleanup`).

use std::collections::BTreeMap;
use std::path::Path;

use crate::types::{BackendPid, FullXid, Lsn, SlotName, XminHorizon};

use super::persist::SlotSnapshot;
use super::state::{self, STATE_FILE, SlotData};
use super::{Persistency, SlotError, SlotInfo};

/// One slot in memory.
#[derive(Clone, Debug)]
struct Slot {
    temporary: bool,
    active: Option<BackendPid>,
    data: SlotData,
}

impl Slot {
    /// See [`SlotInfo::is_lost`].
    fn is_lost(&self) -> bool {
        self.data.restart_lsn.is_none() && self.data.invalidated_at.is_some()
    }

    fn info(&self, name: &SlotName) -> SlotInfo {
        SlotInfo {
            name: name.clone(),
            temporary: self.temporary,
            active_owner: self.active,
            restart_lsn: self.data.restart_lsn,
            invalidated_at: self.data.invalidated_at,
            xmin: self.data.xmin,
            catalog_xmin: self.data.catalog_xmin,
        }
    }
}

/// A change the registry made in memory that must reach the disk before it is reported: write
/// [`Pending::snapshot`], and on failure give it back to [`SlotRegistry::undo`].
#[derive(Debug)]
#[must_use = "a pending slot change must be written, or undone"]
pub struct Pending {
    snapshot: SlotSnapshot,
    undo: Undo,
}

impl Pending {
    /// What to write.
    pub fn snapshot(&self) -> &SlotSnapshot {
        &self.snapshot
    }
}

/// How to take a change back.
#[derive(Debug)]
enum Undo {
    /// Remove the slot created.
    Create(SlotName),
    /// Put back the slot dropped.
    Drop(SlotName, Slot),
    /// Give these slots back their data from before the invalidation.
    Invalidate(Vec<(SlotName, SlotData)>),
}

/// The relay's replication slots.
#[derive(Debug)]
pub struct SlotRegistry {
    /// `max_replication_slots`: persistent and temporary slots together.
    max_slots: usize,
    slots: BTreeMap<SlotName, Slot>,
    /// Whether a persistent slot changed since the last snapshot was handed out.
    dirty: bool,
    /// The number of the last snapshot handed out.
    version: u64,
}

impl SlotRegistry {
    /// Opens the registry kept in `data_dir` (created 0700 if missing), with room for
    /// `max_slots` slots. Persistent slots come back as last persisted, released; temporary
    /// ones are gone. A temporary file left by an interrupted write is removed. Its state file
    /// is then written through a [`super::SlotFile`] on the same directory.
    ///
    /// # Errors
    /// [`SlotError::Io`] if the directory or file cannot be read, [`SlotError::BadStateFile`]
    /// if the state file is damaged or foreign, [`SlotError::TooManyOnDisk`] if it records more
    /// than `max_slots` slots.
    pub fn open(data_dir: &Path, max_slots: usize) -> Result<SlotRegistry, SlotError> {
        let recorded = state::open(data_dir)?;
        if recorded.len() > max_slots {
            return Err(SlotError::TooManyOnDisk {
                path: data_dir.join(STATE_FILE),
                found: recorded.len(),
                max: max_slots,
            });
        }
        let slots = recorded
            .into_iter()
            .map(|(name, data)| {
                let slot = Slot {
                    temporary: false,
                    active: None,
                    data,
                };
                (name, slot)
            })
            .collect();
        Ok(SlotRegistry {
            max_slots,
            slots,
            dirty: false,
            version: 0,
        })
    }

    /// Creates a slot, reserving WAL from `restart_lsn` when given (`RESERVE_WAL`: the caller
    /// passes what it still holds, such as the start of its oldest segment). A temporary slot
    /// stays bound to its owner and needs no write; a persistent one is released, and the
    /// [`Pending`] change must be written before the slot is reported created.
    ///
    /// # Errors
    /// [`SlotError::AlreadyExists`], [`SlotError::AllInUse`].
    pub fn create(
        &mut self,
        name: &SlotName,
        persistency: Persistency,
        restart_lsn: Option<Lsn>,
    ) -> Result<Option<Pending>, SlotError> {
        if self.slots.contains_key(name) {
            return Err(SlotError::AlreadyExists(name.clone()));
        }
        if self.slots.len() >= self.max_slots {
            return Err(SlotError::AllInUse);
        }
        let active = match persistency {
            Persistency::Persistent => None,
            Persistency::Temporary { owner } => Some(owner),
        };
        let slot = Slot {
            temporary: active.is_some(),
            active,
            data: SlotData {
                restart_lsn: restart_lsn.filter(|l| l.is_valid()),
                ..SlotData::default()
            },
        };
        let persistent = !slot.temporary;
        self.slots.insert(name.clone(), slot);
        Ok(persistent.then(|| self.pending(Undo::Create(name.clone()))))
    }

    /// Drops a slot on behalf of connection `by`, which may hold it itself. Dropping a
    /// persistent slot hands back a [`Pending`] change to write before reporting it.
    /// `DROP_REPLICATION_SLOT … WAIT` is the caller's loop: retry while this fails with
    /// [`SlotError::Active`].
    ///
    /// # Errors
    /// [`SlotError::DoesNotExist`], [`SlotError::Active`] if another connection holds it.
    pub fn drop_slot(&mut self, name: &str, by: BackendPid) -> Result<Option<Pending>, SlotError> {
        self.check_usable(name, by)?;
        let Some((name, slot)) = self.slots.remove_entry(name) else {
            return Err(SlotError::DoesNotExist(name.to_owned()));
        };
        let persistent = !slot.temporary;
        Ok(persistent.then(|| self.pending(Undo::Drop(name, slot))))
    }

    /// Takes back a change whose write failed: the slot created is gone, the slot dropped is
    /// back, invalidated slots have their positions again. The registry is marked dirty, so the
    /// next [`Self::take_dirty`] writes the state as it is now.
    pub fn undo(&mut self, pending: Pending) {
        match pending.undo {
            Undo::Create(name) => {
                self.slots.remove(&name);
            }
            Undo::Drop(name, slot) => {
                self.slots.entry(name).or_insert(slot);
            }
            Undo::Invalidate(before) => {
                for (name, data) in before {
                    if let Some(slot) = self.slots.get_mut(&name) {
                        slot.data = data;
                    }
                }
            }
        }
        self.dirty = true;
    }

    /// Acquires a slot for connection `by` to stream from (`ReplicationSlotAcquire`); acquiring
    /// a slot it already holds succeeds. A lost slot can be acquired, as in PostgreSQL 15: the
    /// caller refuses to serve WAL that is gone.
    ///
    /// # Errors
    /// [`SlotError::DoesNotExist`], or [`SlotError::Active`] if another connection holds it.
    pub fn acquire(&mut self, name: &str, by: BackendPid) -> Result<(), SlotError> {
        self.check_usable(name, by)?;
        if let Some(slot) = self.slots.get_mut(name) {
            slot.active = Some(by);
        }
        Ok(())
    }

    /// Releases a persistent slot that `by` holds (`ReplicationSlotRelease`). Anything else,
    /// including a temporary slot, which stays bound to its creator, is left as it is.
    pub fn release(&mut self, name: &str, by: BackendPid) {
        let held = |s: &&mut Slot| !s.temporary && s.active == Some(by);
        if let Some(slot) = self.slots.get_mut(name).filter(held) {
            slot.active = None;
        }
    }

    /// Connection `by` has ended: releases every slot it holds and drops its temporary slots
    /// (`ReplicationSlotCleanup`). Returns the names of the temporary slots dropped.
    pub fn release_owner(&mut self, by: BackendPid) -> Vec<SlotName> {
        let mut dropped = Vec::new();
        self.slots.retain(|name, slot| {
            if slot.active != Some(by) {
                return true;
            }
            if slot.temporary {
                dropped.push(name.clone());
                return false;
            }
            slot.active = None;
            true
        });
        dropped
    }

    /// A standby status update reported `flush`: the slot's `restart_lsn` becomes `flush`,
    /// forwards or backwards, unless `flush` is 0 (`PhysicalConfirmReceivedLocation`). The
    /// caller clamps `flush` to what it has sent. Saved with the next [`Self::take_dirty`].
    ///
    /// # Errors
    /// [`SlotError::DoesNotExist`].
    pub fn confirm_flush(&mut self, name: &str, flush: Lsn) -> Result<(), SlotError> {
        self.update(name, |d| {
            if flush.is_valid() {
                d.restart_lsn = Some(flush);
            }
        })
    }

    /// Hot-standby feedback: each of `xmin` and `catalog_xmin` only moves forward, except
    /// that an invalid (`None`) value on either side replaces the other, so `None`/`None`
    /// releases both (`PhysicalReplicationSlotNewXmin`). The caller has already ignored values
    /// not in the recent past. Saved with the next [`Self::take_dirty`].
    ///
    /// # Errors
    /// [`SlotError::DoesNotExist`].
    pub fn hot_standby_feedback(
        &mut self,
        name: &str,
        feedback: XminHorizon,
    ) -> Result<(), SlotError> {
        fn advance(stored: &mut Option<FullXid>, feedback: Option<FullXid>) {
            match (*stored, feedback) {
                (Some(s), Some(f)) if s >= f => {}
                _ => *stored = feedback,
            }
        }
        self.update(name, |d| {
            advance(&mut d.xmin, feedback.xmin);
            advance(&mut d.catalog_xmin, feedback.catalog_xmin);
        })
    }

    /// Invalidates every slot whose `restart_lsn` is below `oldest_kept`, the oldest WAL the
    /// retention limit keeps (`InvalidateObsoleteReplicationSlots`): its `restart_lsn` becomes
    /// `None` and `invalidated_at` keeps the old value, so it no longer holds back removal.
    /// Returns the names invalidated (the caller ends the connections holding them) and, if a
    /// persistent slot was among them, the change to write.
    pub fn invalidate_behind(&mut self, oldest_kept: Lsn) -> (Vec<SlotName>, Option<Pending>) {
        let mut lost = Vec::new();
        let mut before = Vec::new();
        for (name, slot) in &mut self.slots {
            if let Some(lsn) = slot.data.restart_lsn.filter(|l| *l < oldest_kept) {
                if !slot.temporary {
                    before.push((name.clone(), slot.data));
                }
                slot.data.restart_lsn = None;
                slot.data.invalidated_at = Some(lsn);
                lost.push(name.clone());
            }
        }
        let pending = (!before.is_empty()).then(|| self.pending(Undo::Invalidate(before)));
        (lost, pending)
    }

    /// A snapshot to write if a position changed since the last one was handed out (the
    /// caller saves now and then, as PostgreSQL does at checkpoints). If writing it fails,
    /// [`Self::mark_dirty`] makes the next call try again.
    pub fn take_dirty(&mut self) -> Option<SlotSnapshot> {
        self.dirty.then(|| self.snapshot())
    }

    /// Asks the next [`Self::take_dirty`] for a snapshot, after a write that failed.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// The oldest `restart_lsn` of any slot: WAL from there on must be kept
    /// (`XLogGetReplicationSlotMinimumLSN`). Lost slots hold nothing.
    pub fn min_restart_lsn(&self) -> Option<Lsn> {
        self.slots.values().filter_map(|s| s.data.restart_lsn).min()
    }

    /// The oldest `xmin` and `catalog_xmin` over the slots. Lost slots are left out, as in
    /// PostgreSQL 16 and later: their standbys can never resume.
    pub fn xmin_horizon(&self) -> XminHorizon {
        let live = || self.slots.values().filter(|s| !s.is_lost());
        XminHorizon {
            xmin: live().filter_map(|s| s.data.xmin).min(),
            catalog_xmin: live().filter_map(|s| s.data.catalog_xmin).min(),
        }
    }

    /// The slot called `name`, if any (`READ_REPLICATION_SLOT`; `active_owner` for `WAIT`).
    pub fn get(&self, name: &str) -> Option<SlotInfo> {
        self.slots.get_key_value(name).map(|(n, s)| s.info(n))
    }

    /// Every slot, by name.
    pub fn list(&self) -> Vec<SlotInfo> {
        self.slots.iter().map(|(name, s)| s.info(name)).collect()
    }

    /// Fails unless the slot exists and is free or held by `by`.
    fn check_usable(&self, name: &str, by: BackendPid) -> Result<(), SlotError> {
        match self.slots.get_key_value(name) {
            None => Err(SlotError::DoesNotExist(name.to_owned())),
            Some((name, slot)) => match slot.active {
                Some(pid) if pid != by => Err(SlotError::Active {
                    name: name.clone(),
                    pid,
                }),
                _ => Ok(()),
            },
        }
    }

    /// Applies `change` to a slot's persistent data, marking the registry dirty if that
    /// changed a persistent slot.
    fn update(&mut self, name: &str, change: impl FnOnce(&mut SlotData)) -> Result<(), SlotError> {
        let slot = self
            .slots
            .get_mut(name)
            .ok_or_else(|| SlotError::DoesNotExist(name.to_owned()))?;
        let before = slot.data;
        change(&mut slot.data);
        self.dirty |= !slot.temporary && slot.data != before;
        Ok(())
    }

    /// A change to write: the persistent slots now, which include every position moved so far.
    fn pending(&mut self, undo: Undo) -> Pending {
        Pending {
            snapshot: self.snapshot(),
            undo,
        }
    }

    /// The persistent slots now, under a new number; nothing is dirty after it.
    fn snapshot(&mut self) -> SlotSnapshot {
        self.version += 1;
        self.dirty = false;
        SlotSnapshot {
            version: self.version,
            slots: self
                .slots
                .iter()
                .filter(|(_, s)| !s.temporary)
                .map(|(name, s)| (name.clone(), s.data))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::{SlotFile, SlotPersister};
    use std::fs;
    use std::ops::{Deref, DerefMut};
    use tempfile::TempDir;

    /// The registry with its state file, each change written as the service writes it: a
    /// pending change is written, and undone when the write fails.
    struct Reg {
        r: SlotRegistry,
        f: SlotFile,
    }

    impl Deref for Reg {
        type Target = SlotRegistry;
        fn deref(&self) -> &SlotRegistry {
            &self.r
        }
    }

    impl DerefMut for Reg {
        fn deref_mut(&mut self) -> &mut SlotRegistry {
            &mut self.r
        }
    }

    impl Reg {
        fn commit(&mut self, pending: Option<Pending>) -> Result<(), SlotError> {
            let Some(p) = pending else { return Ok(()) };
            self.f.write(p.snapshot()).inspect_err(|_| self.r.undo(p))
        }

        fn create(
            &mut self,
            name: &str,
            p: Persistency,
            lsn: Option<Lsn>,
        ) -> Result<(), SlotError> {
            let pending = self.r.create(&SlotName::new(name).unwrap(), p, lsn)?;
            self.commit(pending)
        }

        fn drop_slot(&mut self, name: &str, by: BackendPid) -> Result<(), SlotError> {
            let pending = self.r.drop_slot(name, by)?;
            self.commit(pending)
        }

        fn invalidate_behind(&mut self, lsn: Lsn) -> Result<Vec<String>, SlotError> {
            let (lost, pending) = self.r.invalidate_behind(lsn);
            self.commit(pending)?;
            Ok(lost.iter().map(ToString::to_string).collect())
        }

        fn persist_if_dirty(&mut self) -> Result<bool, SlotError> {
            let Some(snapshot) = self.r.take_dirty() else {
                return Ok(false);
            };
            self.f
                .write(&snapshot)
                .map(|()| true)
                .inspect_err(|_| self.r.mark_dirty())
        }

        fn hot_standby_feedback(
            &mut self,
            name: &str,
            xmin: Option<FullXid>,
            catalog_xmin: Option<FullXid>,
        ) -> Result<(), SlotError> {
            self.r
                .hot_standby_feedback(name, XminHorizon { xmin, catalog_xmin })
        }

        fn release_owner(&mut self, by: BackendPid) -> Vec<String> {
            let dropped = self.r.release_owner(by);
            dropped.iter().map(ToString::to_string).collect()
        }

        fn names(&self) -> Vec<String> {
            self.r.list().iter().map(|s| s.name.to_string()).collect()
        }
    }

    const A: BackendPid = BackendPid(101);
    const B: BackendPid = BackendPid(202);

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    fn xid(x: u32) -> Option<FullXid> {
        FullXid::new(0, x)
    }

    fn open(t: &TempDir, max: usize) -> Reg {
        open_at(t.path(), max)
    }

    fn open_at(dir: &Path, max: usize) -> Reg {
        Reg {
            r: SlotRegistry::open(dir, max).unwrap(),
            f: SlotFile::new(dir),
        }
    }

    fn restart(r: &SlotRegistry, name: &str) -> Option<Lsn> {
        r.get(name).unwrap().restart_lsn
    }

    /// SQLSTATE and message of an error.
    fn fails<T: std::fmt::Debug>(r: Result<T, SlotError>) -> (String, String) {
        let e = r.unwrap_err();
        (e.sqlstate().to_string(), e.to_string())
    }

    fn error(code: &str, message: &str) -> (String, String) {
        (code.to_owned(), message.to_owned())
    }

    #[test]
    fn create_drop_duplicate_missing() {
        let t = TempDir::new().unwrap();
        let mut r = open(&t, 10);
        r.create("d1", Persistency::Persistent, Some(lsn("0/3000000")))
            .unwrap();
        let info = r.get("d1").unwrap();
        assert_eq!(
            info,
            SlotInfo {
                name: SlotName::new("d1").unwrap(),
                temporary: false,
                active_owner: None,
                restart_lsn: Some(lsn("0/3000000")),
                invalidated_at: None,
                xmin: None,
                catalog_xmin: None,
            }
        );
        assert!(!info.is_lost());
        assert_eq!(
            fails(r.create("d1", Persistency::Temporary { owner: A }, None)),
            error("42710", "replication slot \"d1\" already exists")
        );
        r.drop_slot("d1", A).unwrap();
        assert_eq!(r.get("d1"), None);
        let missing = error("42704", "replication slot \"d1\" does not exist");
        assert_eq!(fails(r.drop_slot("d1", A)), missing);
        assert_eq!(fails(r.acquire("d1", A)), missing);
        assert_eq!(fails(r.confirm_flush("d1", lsn("0/1"))), missing);
        assert_eq!(fails(r.hot_standby_feedback("d1", None, None)), missing);
        // RESERVE_WAL at 0/0 reserves nothing.
        r.create("d2", Persistency::Persistent, Some(Lsn::INVALID))
            .unwrap();
        assert_eq!(restart(&r, "d2"), None);
    }

    #[test]
    fn bad_names_find_nothing_and_touch_no_file() {
        let t = TempDir::new().unwrap();
        let data = t.path().join("data");
        let mut r = open_at(&data, 10);
        let long = "a".repeat(64);
        for name in ["../../x", "a/b", "A", "é", "", &long, "/etc/passwd", ".."] {
            // Only valid names can be created (SlotName); other commands do not check names:
            // they find no such slot, as in PostgreSQL.
            assert_eq!(r.drop_slot(name, A).unwrap_err().sqlstate(), "42704");
            assert_eq!(r.acquire(name, A).unwrap_err().sqlstate(), "42704");
            assert_eq!(r.get(name), None);
        }
        let entries = |dir: &Path| -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        assert_eq!(entries(t.path()), ["data"]);
        assert!(entries(&data).is_empty());
        r.create("ok", Persistency::Persistent, None).unwrap();
        assert_eq!(entries(t.path()), ["data"]);
        assert_eq!(
            entries(&data),
            [super::super::persist::RESERVE_FILE, STATE_FILE]
        );
    }

    #[test]
    fn temporary_slots_belong_to_their_creator() {
        let t = TempDir::new().unwrap();
        let mut r = open(&t, 10);
        let temp = Persistency::Temporary { owner: A };
        r.create("pg_basebackup_101", temp, Some(lsn("0/2000000")))
            .unwrap();
        r.create("t2", temp, None).unwrap();
        r.create("kept", Persistency::Persistent, None).unwrap();
        r.acquire("kept", A).unwrap();
        let info = r.get("t2").unwrap();
        assert!(info.temporary);
        assert_eq!(info.active_owner, Some(A));
        assert_eq!(r.min_restart_lsn(), Some(lsn("0/2000000")));
        let busy = error(
            "55006",
            "replication slot \"pg_basebackup_101\" is active for PID 101",
        );
        assert_eq!(fails(r.acquire("pg_basebackup_101", B)), busy);
        assert_eq!(fails(r.drop_slot("pg_basebackup_101", B)), busy);
        // The creator streams from it; releasing keeps it bound to the creator.
        r.acquire("pg_basebackup_101", A).unwrap();
        r.release("pg_basebackup_101", A);
        assert_eq!(r.get("pg_basebackup_101").unwrap().active_owner, Some(A));
        assert_eq!(fails(r.acquire("pg_basebackup_101", B)), busy);
        // Temporary slots never reach the disk.
        assert!(!r.persist_if_dirty().unwrap());
        r.confirm_flush("t2", lsn("0/5000000")).unwrap();
        assert!(!r.persist_if_dirty().unwrap());
        assert_eq!(open(&t, 10).list().len(), 1);
        // The creator can drop one itself; its end drops the rest and releases the others.
        r.drop_slot("t2", A).unwrap();
        assert_eq!(r.release_owner(B), Vec::<String>::new());
        assert_eq!(r.release_owner(A), ["pg_basebackup_101"]);
        assert_eq!(r.names(), ["kept"]);
        assert_eq!(r.get("kept").unwrap().active_owner, None);
        assert_eq!(r.min_restart_lsn(), None);
    }

    #[test]
    fn one_connection_at_a_time() {
        let t = TempDir::new().unwrap();
        let mut r = open(&t, 10);
        r.create("d1", Persistency::Persistent, None).unwrap();
        r.acquire("d1", A).unwrap();
        r.acquire("d1", A).unwrap();
        let busy = error("55006", "replication slot \"d1\" is active for PID 101");
        assert_eq!(fails(r.acquire("d1", B)), busy);
        assert_eq!(fails(r.drop_slot("d1", B)), busy);
        // What `DROP_REPLICATION_SLOT … WAIT` watches.
        assert_eq!(r.get("d1").unwrap().active_owner, Some(A));
        r.release("d1", B);
        assert_eq!(r.get("d1").unwrap().active_owner, Some(A));
        r.release("d1", A);
        assert_eq!(r.get("d1").unwrap().active_owner, None);
        r.acquire("d1", B).unwrap();
        assert_eq!(r.release_owner(B), Vec::<String>::new());
        assert_eq!(r.get("d1").unwrap().active_owner, None);
        // The holder may drop its own slot.
        r.acquire("d1", A).unwrap();
        r.drop_slot("d1", A).unwrap();
        assert!(r.list().is_empty());
    }

    #[test]
    fn limit_counts_every_slot() {
        let t = TempDir::new().unwrap();
        let mut r = open(&t, 2);
        r.create("a", Persistency::Persistent, None).unwrap();
        r.create("b", Persistency::Temporary { owner: A }, None)
            .unwrap();
        let err = r.create("c", Persistency::Persistent, None).unwrap_err();
        assert_eq!(
            (err.sqlstate().code(), err.to_string().as_str(), err.hint()),
            (
                "53400",
                "all replication slots are in use",
                Some("Free one or increase max_replication_slots.")
            )
        );
        // A duplicate is reported before a full registry, as in PostgreSQL.
        assert_eq!(
            r.create("a", Persistency::Persistent, None)
                .unwrap_err()
                .sqlstate(),
            "42710"
        );
        r.release_owner(A);
        r.create("c", Persistency::Persistent, None).unwrap();
        // Lowering the limit below what is on disk is refused at open, as PostgreSQL does.
        let err = SlotRegistry::open(t.path(), 1).unwrap_err();
        assert_eq!(err.sqlstate(), "53400");
        assert_eq!(
            err.hint(),
            Some("Increase max_replication_slots and try again.")
        );
        assert!(err.to_string().contains(STATE_FILE), "{err}");
        let empty = TempDir::new().unwrap();
        let mut none = open(&empty, 0);
        assert_eq!(
            none.create("x", Persistency::Persistent, None)
                .unwrap_err()
                .sqlstate(),
            "53400"
        );
    }

    #[test]
    fn restart_lsn_follows_flush_both_ways() {
        let t = TempDir::new().unwrap();
        let mut r = open(&t, 10);
        r.create("w1", Persistency::Persistent, None).unwrap();
        r.create("d1", Persistency::Persistent, Some(lsn("0/4000000")))
            .unwrap();
        assert_eq!(restart(&r, "w1"), None);
        assert_eq!(r.min_restart_lsn(), Some(lsn("0/4000000")));
        // pg_receivewal without --synchronous reports flush 0: it holds nothing.
        r.confirm_flush("w1", Lsn::INVALID).unwrap();
        assert_eq!(restart(&r, "w1"), None);
        assert!(!r.persist_if_dirty().unwrap());
        r.confirm_flush("w1", lsn("0/5000000")).unwrap();
        assert_eq!(restart(&r, "w1"), Some(lsn("0/5000000")));
        // A reconnecting walreceiver reports an older position: the slot goes back.
        r.confirm_flush("w1", lsn("0/3000000")).unwrap();
        assert_eq!(restart(&r, "w1"), Some(lsn("0/3000000")));
        assert_eq!(r.min_restart_lsn(), Some(lsn("0/3000000")));
        r.confirm_flush("w1", Lsn::INVALID).unwrap();
        assert_eq!(restart(&r, "w1"), Some(lsn("0/3000000")));
        r.confirm_flush("d1", lsn("0/6000000")).unwrap();
        assert_eq!(r.min_restart_lsn(), Some(lsn("0/3000000")));
        assert!(r.persist_if_dirty().unwrap());
        assert!(!r.persist_if_dirty().unwrap());
        // The same value again changes nothing.
        r.confirm_flush("d1", lsn("0/6000000")).unwrap();
        assert!(!r.persist_if_dirty().unwrap());
    }

    #[test]
    fn xmin_moves_forward_unless_either_side_is_invalid() {
        let t = TempDir::new().unwrap();
        let mut r = open(&t, 10);
        r.create("d1", Persistency::Persistent, None).unwrap();
        let held = |r: &SlotRegistry| {
            let s = r.get("d1").unwrap();
            (s.xmin, s.catalog_xmin)
        };
        r.hot_standby_feedback("d1", xid(100), None).unwrap();
        assert_eq!(held(&r), (xid(100), None));
        r.hot_standby_feedback("d1", xid(90), xid(50)).unwrap();
        assert_eq!(held(&r), (xid(100), xid(50)));
        r.hot_standby_feedback("d1", xid(110), xid(40)).unwrap();
        assert_eq!(held(&r), (xid(110), xid(50)));
        // A later epoch is ahead whatever its 32-bit part.
        let next_epoch = FullXid::new(1, 5);
        r.hot_standby_feedback("d1", next_epoch, xid(60)).unwrap();
        assert_eq!(held(&r), (next_epoch, xid(60)));
        r.hot_standby_feedback("d1", xid(120), None).unwrap();
        assert_eq!(held(&r), (next_epoch, None));
        // 0/0 releases both.
        r.hot_standby_feedback("d1", None, None).unwrap();
        assert_eq!(held(&r), (None, None));
        assert!(r.persist_if_dirty().unwrap());
    }

    #[test]
    fn horizon_is_the_oldest_xmin() {
        let t = TempDir::new().unwrap();
        let mut r = open(&t, 10);
        assert_eq!(r.xmin_horizon(), XminHorizon::default());
        for name in ["a", "b", "c"] {
            r.create(name, Persistency::Persistent, Some(lsn("0/1000000")))
                .unwrap();
        }
        r.create(
            "t",
            Persistency::Temporary { owner: A },
            Some(lsn("0/1000000")),
        )
        .unwrap();
        r.hot_standby_feedback("a", xid(300), xid(30)).unwrap();
        r.hot_standby_feedback("b", xid(200), None).unwrap();
        r.hot_standby_feedback("t", xid(250), xid(20)).unwrap();
        assert_eq!(
            r.xmin_horizon(),
            XminHorizon {
                xmin: xid(200),
                catalog_xmin: xid(20),
            }
        );
        r.release_owner(A);
        assert_eq!(r.xmin_horizon().catalog_xmin, xid(30));
    }

    #[test]
    fn lost_slots_hold_nothing_back() {
        let t = TempDir::new().unwrap();
        let mut r = open(&t, 10);
        r.create("d2", Persistency::Persistent, Some(lsn("0/1000000")))
            .unwrap();
        r.create("d1", Persistency::Persistent, Some(lsn("0/5000000")))
            .unwrap();
        r.create(
            "t",
            Persistency::Temporary { owner: A },
            Some(lsn("0/2000000")),
        )
        .unwrap();
        r.create("idle", Persistency::Persistent, None).unwrap();
        r.hot_standby_feedback("d2", xid(10), xid(10)).unwrap();
        r.hot_standby_feedback("d1", xid(500), None).unwrap();
        r.acquire("d2", B).unwrap();
        assert_eq!(r.min_restart_lsn(), Some(lsn("0/1000000")));
        assert_eq!(r.invalidate_behind(lsn("0/4000000")).unwrap(), ["d2", "t"]);
        let lost = r.get("d2").unwrap();
        assert!(lost.is_lost());
        assert_eq!(
            (lost.restart_lsn, lost.invalidated_at, lost.active_owner),
            (None, Some(lsn("0/1000000")), Some(B))
        );
        assert!(!r.get("idle").unwrap().is_lost());
        assert_eq!(r.min_restart_lsn(), Some(lsn("0/5000000")));
        assert_eq!(
            r.xmin_horizon(),
            XminHorizon {
                xmin: xid(500),
                catalog_xmin: None
            }
        );
        assert!(r.invalidate_behind(lsn("0/4000000")).unwrap().is_empty());
        // Bug #17103: with every reserving slot lost, nothing holds back removal, and a new
        // slot reserves from the oldest file still there, which the caller passes.
        assert_eq!(r.invalidate_behind(lsn("0/9000000")).unwrap(), ["d1"]);
        assert_eq!(r.min_restart_lsn(), None);
        r.create("d3", Persistency::Persistent, Some(lsn("0/9000000")))
            .unwrap();
        assert_eq!(r.min_restart_lsn(), Some(lsn("0/9000000")));
        // The invalidation is on disk at once.
        let reopened = open(&t, 10);
        assert!(reopened.get("d2").unwrap().is_lost());
        assert!(reopened.get("d1").unwrap().is_lost());
    }

    #[test]
    fn a_lost_slot_can_be_dropped_and_created_again() {
        let t = TempDir::new().unwrap();
        let mut r = open(&t, 10);
        r.create("d2", Persistency::Persistent, Some(lsn("0/1000000")))
            .unwrap();
        r.invalidate_behind(lsn("0/3000000")).unwrap();
        // Acquiring works, as in PostgreSQL 15; serving its WAL is what fails, in the caller.
        r.acquire("d2", A).unwrap();
        assert!(r.get("d2").unwrap().is_lost());
        r.drop_slot("d2", A).unwrap();
        r.create("d2", Persistency::Persistent, Some(lsn("0/3000000")))
            .unwrap();
        let fresh = open(&t, 10).get("d2").unwrap();
        assert_eq!(
            (fresh.restart_lsn, fresh.invalidated_at),
            (Some(lsn("0/3000000")), None)
        );
    }

    #[test]
    fn reopen_keeps_what_was_persisted() {
        let t = TempDir::new().unwrap();
        let mut r = open(&t, 10);
        r.create("d1", Persistency::Persistent, Some(lsn("0/1000000")))
            .unwrap();
        r.create("w1", Persistency::Persistent, None).unwrap();
        r.create(
            "tmp",
            Persistency::Temporary { owner: A },
            Some(lsn("0/1000000")),
        )
        .unwrap();
        r.acquire("d1", B).unwrap();
        r.confirm_flush("d1", lsn("0/2000000")).unwrap();
        r.hot_standby_feedback("d1", xid(700), None).unwrap();
        // A crash now: the slot is as last persisted, older than reported (the safe side).
        let crashed = open(&t, 10);
        assert_eq!(crashed.names(), ["d1", "w1"]);
        let d1 = crashed.get("d1").unwrap();
        assert_eq!((d1.restart_lsn, d1.xmin), (Some(lsn("0/1000000")), None));
        assert!(r.persist_if_dirty().unwrap());
        let d1 = open(&t, 10).get("d1").unwrap();
        assert_eq!(
            (d1.restart_lsn, d1.xmin, d1.active_owner, d1.temporary),
            (Some(lsn("0/2000000")), xid(700), None, false)
        );
        // A create writes pending positions too.
        r.confirm_flush("d1", lsn("0/2800000")).unwrap();
        r.create("d3", Persistency::Persistent, None).unwrap();
        assert!(!r.persist_if_dirty().unwrap());
        assert_eq!(restart(&open(&t, 10), "d1"), Some(lsn("0/2800000")));
    }

    #[test]
    fn damaged_state_and_leftovers() {
        let t = TempDir::new().unwrap();
        let mut r = open(&t, 10);
        r.create("d1", Persistency::Persistent, Some(lsn("0/1000000")))
            .unwrap();
        // A crash in the middle of the next write leaves the temporary file behind.
        fs::write(t.path().join("slots.state.tmp"), b"half a fi").unwrap();
        assert_eq!(restart(&open(&t, 10), "d1"), Some(lsn("0/1000000")));
        assert!(!t.path().join("slots.state.tmp").exists());
        let path = t.path().join(STATE_FILE);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replace("0/1000000", "0/1000001")).unwrap();
        let err = SlotRegistry::open(t.path(), 10).unwrap_err();
        assert_eq!(err.sqlstate(), "XX001");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let t = TempDir::new().unwrap();
        let data = t.path().join("data");
        let mut r = open_at(&data, 10);
        r.create("d1", Persistency::Persistent, Some(lsn("0/1000000")))
            .unwrap();
        r.confirm_flush("d1", lsn("0/2000000")).unwrap();
        fs::remove_dir_all(&data).unwrap();
        let io = |e: SlotError| (e.sqlstate().to_string(), matches!(e, SlotError::Io { .. }));
        let err = r.create("d2", Persistency::Persistent, None).unwrap_err();
        assert_eq!(io(err), ("58030".into(), true));
        assert_eq!(r.get("d2"), None);
        assert_eq!(
            io(r.drop_slot("d1", A).unwrap_err()),
            ("58030".into(), true)
        );
        assert_eq!(
            io(r.invalidate_behind(lsn("0/3000000")).unwrap_err()).0,
            "58030"
        );
        assert_eq!(restart(&r, "d1"), Some(lsn("0/2000000")));
        assert_eq!(io(r.persist_if_dirty().unwrap_err()).0, "58030");
        // Temporary slots need no write.
        r.create("t", Persistency::Temporary { owner: A }, None)
            .unwrap();
        fs::create_dir(&data).unwrap();
        assert!(r.persist_if_dirty().unwrap());
        assert_eq!(restart(&open_at(&data, 10), "d1"), Some(lsn("0/2000000")));
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let t = TempDir::new().unwrap();
        let mut r = open(&t, 10);
        let name = SlotName::new("d1").unwrap();
        let first = r.r.create(&name, Persistency::Persistent, None).unwrap();
        let second = r.r.drop_slot("d1", A).unwrap();
        let (first, second) = (first.unwrap(), second.unwrap());
        assert!(second.snapshot().version() > first.snapshot().version());
        // The later write finishes first; the earlier one then changes nothing on disk.
        r.f.write(second.snapshot()).unwrap();
        r.f.write(first.snapshot()).unwrap();
        assert!(open(&t, 10).list().is_empty());
    }

    #[test]
    fn undo_takes_back_a_drop() {
        let t = TempDir::new().unwrap();
        let mut r = open(&t, 10);
        r.create("d1", Persistency::Persistent, Some(lsn("0/1000000")))
            .unwrap();
        let pending = r.r.drop_slot("d1", A).unwrap().unwrap();
        assert_eq!(r.get("d1"), None);
        r.r.undo(pending);
        assert_eq!(restart(&r, "d1"), Some(lsn("0/1000000")));
        assert!(r.persist_if_dirty().unwrap(), "an undo is saved again");
    }
}
