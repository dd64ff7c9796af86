//! The thread that owns the WAL store: appends WAL, fsyncs in batches, and publishes how far
//! the WAL is written and durable, to the upstream side (a `watch` of [`Positions`]) and to
//! the downstream senders (the hub's feed).
//!
//! Appends arrive through a bounded channel, so a slow disk slows the reader of the upstream
//! socket instead of growing memory. Each batch is made durable by one `fdatasync`, and only
//! then is the new durable end published: nothing is reported or served before it is on disk.
//! Unless a small batch with nothing queued behind it is all there is (which the writer syncs
//! itself, so that a lone chunk pays no hand-off), that `fdatasync` runs on a second thread and
//! what arrives meanwhile is appended (checked and written into the page cache), up to
//! [`MAX_UNSYNCED_CHUNKS`] unsynced; as soon as the sync returns, what it made durable is
//! published and the next sync begins with all that was appended since (group commit). So one
//! sync at most is ever in flight, and up to that bound a slower disk makes larger batches
//! rather than a slower relay. The store checks every byte before writing it, and the durable
//! end published is the end of the last CRC-checked record within the synced bytes, so a
//! partly received record is never counted.
//!
//! Each chunk goes into the hub's tail as soon as it is written ([`HubFeed::stage`]), where
//! nothing of it is served before a published durable end covers it; the writer keeps only
//! where its unsynced chunks end. So what waits for a sync costs no memory beyond the tail's
//! bound, and after a failed sync the tail forgets what was never published.
//!
//! After each sync the writer lets the page cache drop the durable WAL that every connected
//! reader has been sent, but for the newest [`CACHE_KEPT_BYTES`] below it: the next writes
//! reuse those pages instead of taking memory the machine has not touched yet (which costs
//! far more than the copy on a virtual machine whose memory the host backs lazily), and the
//! relay's WAL does not push other files out of the cache.
//!
//! A store error marks the writer failed ([`Positions::failed`]): appends queued after it are
//! dropped, and the upstream side, which then reconnects, first calls [`Writer::reopen`],
//! whose recovery finds the true end again. Everything else the upstream side asks of the
//! store goes through the typed calls here, each answered once what was queued before it is
//! written and synced.

use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::{Arc, mpsc as std_mpsc};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::hub::HubFeed;
use crate::metrics::Counters;
use crate::storage::{PendingFlush, SegmentRemoval, StoreEnd, StoreError, StoreIdentity, WalStore};
use crate::types::{Lsn, TimelineId};

/// Chunks that may wait for the writer before the receiver stops reading the socket (1 MiB).
/// The writer takes them while a sync runs, so the queue fills only once
/// [`MAX_UNSYNCED_CHUNKS`] are unsynced, or while the writer itself waits for the disk; a
/// queue of 16 measured no faster.
const QUEUE_CHUNKS: usize = 8;

/// Chunks appended before a sync begins, when none is running. Without a bound, a receiver
/// that keeps the queue from ever running empty would hold back the durable end for as long
/// as it does; batches of 16 measured about as fast with more memory (the README gives the
/// measurements).
const SYNC_EVERY_CHUNKS: usize = 8;

/// Chunks a running sync and the batch appended meanwhile cover at most (64 MiB). While a sync
/// runs, what arrives is appended up to this bound, and the next sync, begun as soon as the
/// running one returns, covers all of it: when the disk is busy and each sync takes long, one
/// sync covers more, instead of the relay taking one batch per sync. The writer does not hold
/// the chunks (the hub's tail does, within its own bound), so the bound costs no memory: it
/// only limits how far the written end runs ahead of the durable end, which is what a failed
/// sync makes the relay fetch again. When more than the tail holds waits for a sync, readers
/// at the durable end find it in the page cache instead. With 16 standbys writing to the same
/// disk a sync could take long enough that 64 chunks (8 MiB) left the upstream socket unread
/// for much of the time; with 512 the WAL was durable sooner in four pairs of runs of five,
/// and catching up was faster as well (the README gives the measurements).
const MAX_UNSYNCED_CHUNKS: usize = 512;

// While a sync runs, at least a whole batch more can be appended.
const _: () = assert!(MAX_UNSYNCED_CHUNKS >= 2 * SYNC_EVERY_CHUNKS);

/// Durable WAL kept in the page cache below the oldest connected reader's cursor (or the
/// durable end, with no reader), for readers that connect or reconnect a little behind.
const CACHE_KEPT_BYTES: u64 = 64 << 20;

/// What the store holds, as last published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    /// The timeline being written.
    pub timeline: Option<TimelineId>,
    /// End of the bytes written (not necessarily synced).
    pub written: Lsn,
    /// End of the WAL that is synced and whose records all passed their checks.
    pub durable: Lsn,
    /// The oldest WAL stored: the start of the oldest segment file.
    pub oldest: Option<Lsn>,
    /// The error that failed the writer, until it is reopened.
    pub failed: Option<String>,
}

impl Positions {
    fn of(store: &WalStore, failed: Option<String>) -> Positions {
        let end = store.end();
        Positions {
            timeline: end.map(|e| e.timeline),
            written: store.write_end().unwrap_or_default(),
            durable: end.map(|e| e.valid).unwrap_or_default(),
            oldest: store.oldest(),
            failed,
        }
    }
}

/// Why a call on the writer failed.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An earlier store error failed the writer; it must be reopened.
    #[error("the WAL store failed: {0}")]
    Failed(String),
    /// The writer thread is gone.
    #[error("the WAL writer has stopped")]
    Stopped,
}

type Reply<T> = oneshot::Sender<Result<T, WriterError>>;

enum Command {
    Append { start: Lsn, data: Bytes },
    Sync(Reply<()>),
    Identity(Reply<Option<StoreIdentity>>),
    Initialize(StoreIdentity, Reply<()>),
    End(Reply<Option<StoreEnd>>),
    StartAt(TimelineId, Lsn, Reply<()>),
    SwitchTimeline(TimelineId, Lsn, Reply<()>),
    WriteHistory(TimelineId, Bytes, Reply<()>),
    LetGoBefore(Lsn, Reply<SegmentRemoval>),
    Reopen(Reply<()>),
}

/// A handle to the writer thread; clones share it.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<Command>,
    positions: watch::Receiver<Positions>,
}

/// Room for one append in the writer's queue.
#[derive(Debug)]
pub struct AppendPermit<'a>(mpsc::Permit<'a, Command>);

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Append { start, data } => write!(f, "Append({start}, {} bytes)", data.len()),
            _ => f.write_str("Command"),
        }
    }
}

impl AppendPermit<'_> {
    /// Queues WAL starting at `start`.
    pub fn append(self, start: Lsn, data: Bytes) {
        self.0.send(Command::Append { start, data });
    }
}

impl Writer {
    /// Opens (and so recovers) the store in `data_dir` and starts the thread that owns it,
    /// publishing to `feed` after every sync.
    ///
    /// # Errors
    /// The store cannot be opened, or the thread cannot be spawned.
    pub fn open(
        data_dir: &Path,
        feed: Arc<HubFeed>,
        counters: Arc<Counters>,
    ) -> Result<Writer, WriterError> {
        let thread_error = |source| StoreError::Io {
            op: "start the writer thread for",
            path: data_dir.to_path_buf(),
            source,
        };
        let (state, prx) = WriterState::open(data_dir, feed, counters)?;
        let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
        thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || run(state, rx))
            .map_err(thread_error)?;
        Ok(Writer { tx, positions: prx })
    }

    /// Waits for room in the queue; the permit then queues one append without waiting.
    ///
    /// # Errors
    /// [`WriterError::Stopped`].
    pub async fn reserve(&self) -> Result<AppendPermit<'_>, WriterError> {
        match self.tx.reserve().await {
            Ok(permit) => Ok(AppendPermit(permit)),
            Err(_) => Err(WriterError::Stopped),
        }
    }

    /// Watches the published positions.
    pub fn positions(&self) -> watch::Receiver<Positions> {
        self.positions.clone()
    }

    /// Waits until everything queued is written and synced; the positions are published.
    ///
    /// # Errors
    /// The store failed, or the thread is gone.
    pub async fn sync(&self) -> Result<(), WriterError> {
        self.ask(Command::Sync).await
    }

    /// The store's identity, `None` before it is initialized.
    ///
    /// # Errors
    /// As [`Writer::sync`].
    pub async fn identity(&self) -> Result<Option<StoreIdentity>, WriterError> {
        self.ask(Command::Identity).await
    }

    /// Records the identity on first use ([`WalStore::initialize`]).
    ///
    /// # Errors
    /// As [`WalStore::initialize`], or the thread is gone.
    pub async fn initialize(&self, identity: StoreIdentity) -> Result<(), WriterError> {
        self.ask(|reply| Command::Initialize(identity, reply)).await
    }

    /// Where the stored WAL ends; `None` while it holds none.
    ///
    /// # Errors
    /// As [`Writer::sync`].
    pub async fn end(&self) -> Result<Option<StoreEnd>, WriterError> {
        self.ask(Command::End).await
    }

    /// Starts an empty store ([`WalStore::start_at`]).
    ///
    /// # Errors
    /// As [`WalStore::start_at`], or the thread is gone.
    pub async fn start_at(&self, timeline: TimelineId, start: Lsn) -> Result<(), WriterError> {
        self.ask(|reply| Command::StartAt(timeline, start, reply))
            .await
    }

    /// Continues on a newer timeline ([`WalStore::switch_timeline`]).
    ///
    /// # Errors
    /// As [`WalStore::switch_timeline`], or the thread is gone.
    pub async fn switch_timeline(
        &self,
        timeline: TimelineId,
        start: Lsn,
    ) -> Result<(), WriterError> {
        self.ask(|reply| Command::SwitchTimeline(timeline, start, reply))
            .await
    }

    /// Stores a timeline history file durably; the hub serves it from then on.
    ///
    /// # Errors
    /// As [`WalStore::write_history`], or the thread is gone.
    pub async fn write_history(
        &self,
        timeline: TimelineId,
        content: Bytes,
    ) -> Result<(), WriterError> {
        self.ask(|reply| Command::WriteHistory(timeline, content, reply))
            .await
    }

    /// Removes the segments wholly below `lsn` and returns how many went. The writer's thread
    /// only lets go of them ([`WalStore::let_go_before`]), even while the store is failed
    /// (they are not the tail, and on a full disk their space is what lets it open again);
    /// they are unlinked on a blocking thread, so that appends and syncs go on meanwhile.
    ///
    /// # Errors
    /// As [`WalStore::remove_before`], or the thread is gone.
    pub async fn remove_before(&self, lsn: Lsn) -> Result<usize, WriterError> {
        let removal = self.ask(|reply| Command::LetGoBefore(lsn, reply)).await?;
        if removal.is_empty() {
            return Ok(0);
        }
        match tokio::task::spawn_blocking(move || removal.run()).await {
            Ok(removed) => Ok(removed?),
            Err(_) => Err(WriterError::Stopped),
        }
    }

    /// After a store error: cuts the segment being written back to what an fdatasync covered
    /// ([`WalStore::discard_unsynced`]), opens the store again, whose recovery finds the true
    /// end, and clears the failure. Appends queued before are dropped.
    ///
    /// # Errors
    /// The store cannot be opened again, or the thread is gone.
    pub async fn reopen(&self) -> Result<(), WriterError> {
        self.ask(Command::Reopen).await
    }

    /// Sends a command and waits for its answer.
    async fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, WriterError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(command(reply))
            .await
            .map_err(|_| WriterError::Stopped)?;
        answer.await.map_err(|_| WriterError::Stopped)?
    }
}

fn open_store(data_dir: &Path) -> Result<WalStore, StoreError> {
    let store = WalStore::open(data_dir)?;
    if let Some(end) = store.end() {
        info!(timeline = %end.timeline, durable = %end.durable, valid = %end.valid, "recovered stored WAL");
    }
    Ok(store)
}

/// Takes commands and syncs what they appended, as [`next_step`] decides: batches of
/// [`SYNC_EVERY_CHUNKS`] with no sync running, synced on the syncer's thread while the next
/// one is appended, or here at once when a small batch is all there is (a lone chunk pays no
/// hand-off). While a sync runs, whichever comes first is taken: the next command or the
/// sync's return, whose durable WAL is published at once; the next sync then covers all that
/// was appended meanwhile (group commit).
fn run(mut w: WriterState, mut rx: mpsc::Receiver<Command>) {
    loop {
        let wake = match next_step(w.standing(rx.is_empty())) {
            Step::SyncHere => {
                let _ = w.sync();
                w.report();
                continue;
            }
            Step::StartSync => {
                w.start_sync();
                w.report();
                continue;
            }
            Step::AwaitSync => {
                w.finish_sync();
                w.report();
                continue;
            }
            Step::TakeCommand => Wake::Command(rx.blocking_recv()),
            Step::TakeEither => match rx.try_recv() {
                Ok(cmd) => Wake::Command(Some(cmd)),
                Err(mpsc::error::TryRecvError::Disconnected) => Wake::Command(None),
                Err(mpsc::error::TryRecvError::Empty) => block_on(async {
                    tokio::select! {
                        biased;
                        done = w.syncer.done.recv() => Wake::Synced(done),
                        cmd = rx.recv() => Wake::Command(cmd),
                    }
                }),
            },
        };
        match wake {
            Wake::Command(Some(cmd)) => {
                w.execute(cmd);
                w.poll_sync();
            }
            Wake::Command(None) => break,
            Wake::Synced(done) => {
                w.in_flight = false;
                w.take_sync_outcome(done);
                w.report();
            }
        }
    }
    w.finish_sync();
}

/// Where the writer stands, for [`next_step`].
#[derive(Debug, Clone, Copy)]
struct Standing {
    /// Whether a sync runs on the syncer's thread.
    in_flight: bool,
    /// Chunks appended and not yet published as durable: with no sync running, those
    /// appended since the last one (each sync's return publishes all it covered); with one
    /// running, those it covers as well.
    unsynced: usize,
    /// Whether no command waits in the queue.
    queue_empty: bool,
    /// Whether a store error failed the writer.
    failed: bool,
}

/// What the writer does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Sync the batch on this thread and wait for it.
    SyncHere,
    /// Begin syncing the batch on the syncer's thread.
    StartSync,
    /// Wait for the next command.
    TakeCommand,
    /// Wait for the running sync to return.
    AwaitSync,
    /// Take the next command, or the running sync's return, whichever comes first.
    TakeEither,
}

/// The writer's batching policy. With no sync running, a batch is synced once it holds
/// [`SYNC_EVERY_CHUNKS`] or nothing more waits: a small batch with nothing behind it here at
/// once, anything else on the syncer's thread so that what follows is appended meanwhile.
/// While a sync runs, appends go on until [`MAX_UNSYNCED_CHUNKS`] are unsynced.
fn next_step(s: Standing) -> Step {
    if s.in_flight {
        if s.unsynced >= MAX_UNSYNCED_CHUNKS {
            Step::AwaitSync
        } else {
            Step::TakeEither
        }
    } else if s.failed || s.unsynced == 0 {
        Step::TakeCommand
    } else if s.queue_empty && s.unsynced < SYNC_EVERY_CHUNKS {
        Step::SyncHere
    } else if s.queue_empty || s.unsynced >= SYNC_EVERY_CHUNKS {
        Step::StartSync
    } else {
        Step::TakeCommand
    }
}

/// What the writer woke up for: a command (`None`: every handle is gone) or the return of
/// the sync on the syncer's thread (`None`: that thread is gone).
enum Wake {
    Command(Option<Command>),
    Synced(Option<Box<SyncOutcome>>),
}

/// A flush run on the syncer's thread, its outcome and how long it took.
type SyncOutcome = (PendingFlush, Result<(), StoreError>, Duration);

/// The thread that runs the writer's flushes ([`PendingFlush::run`]) while the writer
/// appends what comes next.
struct Syncer {
    begun: std_mpsc::SyncSender<PendingFlush>,
    done: mpsc::Receiver<Box<SyncOutcome>>,
}

impl Syncer {
    fn spawn() -> std::io::Result<Syncer> {
        let (begun, todo) = std_mpsc::sync_channel::<PendingFlush>(1);
        let (report, done) = mpsc::channel(1);
        thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || {
                for pending in todo {
                    let started = Instant::now();
                    let outcome = pending.run();
                    if report
                        .blocking_send(Box::new((pending, outcome, started.elapsed())))
                        .is_err()
                    {
                        break;
                    }
                }
            })?;
        Ok(Syncer { begun, done })
    }
}

/// Runs `future` to its end on this thread, parking it between polls: what the writer needs
/// to wait for whichever of two channels has something first, without a runtime.
fn block_on<F: Future>(future: F) -> F::Output {
    /// Wakes the parked thread.
    struct Unpark(thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}

/// Below where the page cache may drop durable WAL: the oldest connected reader's cursor (the
/// durable end with no reader, never past it) less [`CACHE_KEPT_BYTES`]; `None` while that is
/// below the start of WAL.
fn cache_release_point(durable: Lsn, oldest_reader: Option<Lsn>) -> Option<Lsn> {
    let read = oldest_reader.map_or(durable, |c| c.min(durable));
    read.checked_sub(CACHE_KEPT_BYTES)
}

/// The store, where it lives, the chunks appended since the last sync, where to publish them,
/// and the error that failed it.
struct WriterState {
    store: WalStore,
    data_dir: PathBuf,
    /// Where each chunk appended and not yet durable ends; the chunks themselves are only in
    /// the hub's tail ([`HubFeed::stage`]).
    unsynced: Vec<Lsn>,
    /// Runs flushes while the next chunks are appended.
    syncer: Syncer,
    /// Whether a flush runs on the syncer's thread.
    in_flight: bool,
    feed: Arc<HubFeed>,
    positions: watch::Sender<Positions>,
    failed: Option<String>,
    /// Where fsync times and write errors are counted.
    counters: Arc<Counters>,
}

impl WriterState {
    /// Opens (and so recovers) the store in `data_dir`, starts the syncer's thread and tells
    /// `feed` what the store holds; with the receiver of the positions it publishes.
    fn open(
        data_dir: &Path,
        feed: Arc<HubFeed>,
        counters: Arc<Counters>,
    ) -> Result<(WriterState, watch::Receiver<Positions>), StoreError> {
        let store = open_store(data_dir)?;
        let syncer = Syncer::spawn().map_err(|source| StoreError::Io {
            op: "start the sync thread for",
            path: data_dir.to_path_buf(),
            source,
        })?;
        let (positions, prx) = watch::channel(Positions::of(&store, None));
        let mut state = WriterState {
            store,
            data_dir: data_dir.to_path_buf(),
            unsynced: Vec::new(),
            syncer,
            in_flight: false,
            feed,
            positions,
            failed: None,
            counters,
        };
        state.announce();
        Ok((state, prx))
    }

    /// Runs one command. Anything but an append, a reopen or letting go of old segments
    /// first syncs what was appended, so it sees (and answers after) every append queued
    /// before it.
    fn execute(&mut self, cmd: Command) {
        match cmd {
            Command::Append { start, data } => {
                if self.failed.is_none() {
                    let end = start.checked_add(data.len() as u64).unwrap_or(Lsn::MAX);
                    self.unsynced.push(end);
                    match self.store.append(start, &data) {
                        Ok(()) => {
                            if let Some(at) = self.store.end() {
                                self.feed.stage(at.timeline, start, data);
                            }
                        }
                        Err(e) => self.fail(&e),
                    }
                }
            }
            Command::Reopen(reply) => {
                self.finish_sync();
                let reopened = self.reopen();
                self.report();
                let _ = reply.send(reopened.map_err(WriterError::from));
            }
            Command::Sync(reply) => self.answer(reply, false, |_| Ok(())),
            Command::Identity(reply) => self.answer(reply, false, |s| Ok(s.identity())),
            Command::Initialize(id, reply) => self.answer(reply, true, |s| s.initialize(id)),
            Command::End(reply) => self.answer(reply, false, |s| Ok(s.end())),
            Command::StartAt(tli, lsn, reply) => {
                self.answer(reply, false, |s| s.start_at(tli, lsn))
            }
            Command::SwitchTimeline(tli, lsn, reply) => {
                self.answer(reply, false, |s| s.switch_timeline(tli, lsn));
            }
            Command::WriteHistory(tli, content, reply) => {
                self.answer(reply, true, |s| s.write_history(tli, &content));
            }
            Command::LetGoBefore(lsn, reply) => {
                // No sync first: only segments below the one being written go, and each
                // was fdatasync'd when it was completed. Files no reader holds are reused.
                self.feed.close_segments_below(lsn);
                let pins = self.feed.segment_pins();
                let removal = self.store.let_go_before(lsn).map(|r| r.reusing(pins));
                self.report();
                let _ = reply.send(removal.map_err(WriterError::from));
            }
        }
    }

    /// Syncs, runs `f` on the store, and answers with its outcome; the hub learns what
    /// changed (with `announce`, also the store's identity and history files). An error of
    /// `f` is only answered (the store refused); an error of the sync fails the writer.
    fn answer<T>(
        &mut self,
        reply: Reply<T>,
        announce: bool,
        f: impl FnOnce(&mut WalStore) -> Result<T, StoreError>,
    ) {
        let outcome = self.sync().and_then(|()| Ok(f(&mut self.store)?));
        if announce {
            self.announce();
        } else {
            self.publish();
        }
        self.report();
        let _ = reply.send(outcome);
    }

    /// Publishes the positions to the upstream side.
    fn report(&self) {
        self.positions
            .send_replace(Positions::of(&self.store, self.failed.clone()));
    }

    fn fail(&mut self, e: &StoreError) {
        self.counters.store.write_error();
        if self.failed.is_none() {
            warn!(error = %e, "the WAL store failed; it is opened again before streaming goes on");
            self.failed = Some(e.to_string());
        }
        self.unsynced.clear();
        self.feed.discard_unpublished();
        // The upstream side learns it at once, and opens the store again.
        self.report();
    }

    fn reopen(&mut self) -> Result<(), StoreError> {
        self.unsynced.clear();
        self.feed.discard_unpublished();
        self.store.discard_unsynced()?;
        self.store = open_store(&self.data_dir)?;
        self.failed = None;
        self.announce();
        Ok(())
    }

    /// Where it stands, for [`next_step`].
    fn standing(&self, queue_empty: bool) -> Standing {
        Standing {
            in_flight: self.in_flight,
            unsynced: self.unsynced.len(),
            queue_empty,
            failed: self.failed.is_some(),
        }
    }

    /// Begins a flush of what was appended, on the syncer's thread, so that the next chunks
    /// are appended while it runs; the writer takes its outcome when it returns (or waits
    /// for it in [`WriterState::finish_sync`]). Run here if that thread is gone.
    fn start_sync(&mut self) {
        if self.failed.is_some() || self.unsynced.is_empty() {
            return;
        }
        let pending = match self.store.begin_flush() {
            Ok(pending) => pending,
            Err(e) => return self.fail(&e),
        };
        match self.syncer.begun.send(pending) {
            Ok(()) => self.in_flight = true,
            Err(std_mpsc::SendError(pending)) => {
                let started = Instant::now();
                let outcome = pending.run();
                self.complete_sync(pending, outcome, started.elapsed());
            }
        }
    }

    /// Waits for the flush on the syncer's thread, if one runs, and hands what it made
    /// durable to the hub.
    fn finish_sync(&mut self) {
        if !std::mem::take(&mut self.in_flight) {
            return;
        }
        let done = self.syncer.done.blocking_recv();
        self.take_sync_outcome(done);
    }

    /// Takes what the syncer's thread returned for the flush that was in flight (`None`:
    /// that thread is gone).
    fn take_sync_outcome(&mut self, done: Option<Box<SyncOutcome>>) {
        match done.map(|d| *d) {
            Some((pending, outcome, took)) => self.complete_sync(pending, outcome, took),
            None => self.syncer_gone(),
        }
    }

    /// Takes the outcome of the flush on the syncer's thread if it has returned, without
    /// waiting.
    fn poll_sync(&mut self) {
        if !self.in_flight {
            return;
        }
        match self.syncer.done.try_recv() {
            Ok(done) => {
                self.in_flight = false;
                self.take_sync_outcome(Some(done));
            }
            Err(mpsc::error::TryRecvError::Empty) => {}
            Err(mpsc::error::TryRecvError::Disconnected) => {
                self.in_flight = false;
                self.take_sync_outcome(None);
            }
        }
    }

    /// The syncer's thread ended with a flush in flight: nothing it covered is known durable.
    fn syncer_gone(&mut self) {
        self.fail(&StoreError::Io {
            op: "fdatasync",
            path: self.data_dir.clone(),
            source: std::io::Error::other("the WAL sync thread has stopped"),
        });
    }

    /// Takes the outcome of a flush: publishes what it made durable, or fails the writer.
    /// After the writer failed, what was begun before counts for nothing (the store is opened
    /// again before anything else), but a failure still cuts the file back.
    fn complete_sync(
        &mut self,
        pending: PendingFlush,
        outcome: Result<(), StoreError>,
        took: Duration,
    ) {
        if self.failed.is_some() {
            // What it covered is cut back even so: the store's recovery, when it is opened
            // again, must not find bytes a failed fdatasync may have lost.
            if outcome.is_err() {
                let _ = self.store.finish_flush(pending, outcome);
            }
            return;
        }
        self.counters.store.fsync(took);
        match self.store.finish_flush(pending, outcome) {
            Ok(_) => {
                self.publish();
                self.release_cache();
            }
            Err(e) => self.fail(&e),
        }
    }

    /// Syncs what was appended, then hands it to the hub; a sync error fails the writer.
    fn sync(&mut self) -> Result<(), WriterError> {
        self.finish_sync();
        if let Some(e) = &self.failed {
            return Err(WriterError::Failed(e.clone()));
        }
        if !self.unsynced.is_empty() {
            let started = std::time::Instant::now();
            let flushed = self.store.flush();
            self.counters.store.fsync(started.elapsed());
            if let Err(e) = flushed {
                self.fail(&e);
                return Err(e.into());
            }
            self.publish();
            self.release_cache();
        }
        Ok(())
    }

    /// Lets the page cache drop the durable WAL that every connected reader has been sent
    /// ([`cache_release_point`]).
    fn release_cache(&mut self) {
        let durable = self.store.durable_end();
        if let Some(below) = durable.and_then(|d| cache_release_point(d, self.feed.oldest_reader()))
        {
            self.store.release_cache_below(below);
        }
    }

    /// Tells the hub what the store is, after it was opened or its identity or histories
    /// changed: its segment size, history files and durable end.
    fn announce(&mut self) {
        if let Some(id) = self.store.identity() {
            self.feed.set_segment_size(id.segment_size);
        }
        match self.store.histories() {
            Ok(histories) => self.feed.set_histories(histories),
            Err(e) => warn!(error = %e, "could not read the timeline history files"),
        }
        self.publish();
    }

    /// Publishes the durable end, with the chunks now on disk, to the hub; the positions first,
    /// so that what the relay reports as durable is never behind what it serves.
    fn publish(&mut self) {
        self.report();
        let Some(end) = self.store.end() else {
            self.unsynced.clear();
            return;
        };
        let on_disk = self.unsynced.partition_point(|e| *e <= end.durable);
        self.unsynced.drain(..on_disk);
        if let Some(next_xid) = self.store.validator().and_then(|v| v.next_xid()) {
            self.feed.set_next_xid(next_xid);
        }
        if let Some(redo) = self.store.validator().and_then(|v| v.last_redo()) {
            self.feed.set_last_redo(redo);
        }
        self.feed.publish(end.timeline, end.valid, []);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use tokio::sync::oneshot;

    use super::{
        CACHE_KEPT_BYTES, Command, MAX_UNSYNCED_CHUNKS, QUEUE_CHUNKS, SYNC_EVERY_CHUNKS, Standing,
        Step, Writer, WriterState, block_on, cache_release_point, next_step,
    };
    use crate::hub::Hub;
    use crate::metrics::Counters;
    use crate::storage::fixture;
    use crate::types::{Lsn, TimelineId};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_queued_while_a_sync_runs_are_appended_meanwhile_and_all_served() {
        let t = tempfile::TempDir::new().unwrap();
        let (hub, feed) = Hub::new(t.path().join("wal"), 64 << 20);
        let counters = Arc::new(Counters::default());
        let writer = Writer::open(t.path(), Arc::new(feed), Arc::clone(&counters)).unwrap();
        writer.initialize(fixture::id()).await.unwrap();
        let timeline = TimelineId::new(1).unwrap();
        writer.start_at(timeline, fixture::start()).await.unwrap();
        let (from, to) = (fixture::start(), fixture::end());
        let mut durable = writer.positions();
        // Small chunks, queued as fast as the writer takes them: the queue stays full.
        let chunks = fixture::bytes(from, to).chunks(8192);
        let count = chunks.len();
        assert!(count > 4 * QUEUE_CHUNKS);
        let mut at = from;
        for chunk in chunks {
            writer
                .reserve()
                .await
                .unwrap()
                .append(at, Bytes::copy_from_slice(chunk));
            at = Lsn(at.0 + chunk.len() as u64);
        }
        // Everything becomes durable without another command to push it.
        durable.wait_for(|p| p.durable == to).await.unwrap();
        assert_eq!(writer.end().await.unwrap().unwrap().durable, to);
        // Every chunk reached the hub's tail in order: all of it is served from memory.
        let mut served = Vec::new();
        while let Some(piece) = hub
            .read(timeline, Lsn(from.0 + served.len() as u64), to)
            .await
            .unwrap()
        {
            served.extend_from_slice(&piece);
        }
        assert_eq!(served, fixture::bytes(from, to));
        let stats = hub.stats();
        assert_eq!((stats.served_from_disk, stats.served_as_files), (0, 0));
        fixture::assert_complete(t.path(), 7, 12);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_append_fails_the_writer_and_is_published_without_another_command() {
        let t = tempfile::TempDir::new().unwrap();
        let (_hub, feed) = Hub::new(t.path().join("wal"), 64 << 20);
        let writer = Writer::open(t.path(), Arc::new(feed), Arc::default()).unwrap();
        writer.initialize(fixture::id()).await.unwrap();
        writer
            .start_at(TimelineId::new(1).unwrap(), fixture::start())
            .await
            .unwrap();
        let mut positions = writer.positions();
        // WAL that does not continue where the store ends: the store refuses it.
        let after_a_gap = Lsn(fixture::start().0 + 8192);
        let data = Bytes::copy_from_slice(fixture::bytes(after_a_gap, Lsn(after_a_gap.0 + 8192)));
        writer.reserve().await.unwrap().append(after_a_gap, data);
        // The upstream side, which waits on the positions, learns it and can open the store
        // again; nothing else is sent to the writer.
        let failed = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            positions.wait_for(|p| p.failed.is_some()),
        )
        .await
        .expect("the failure is published")
        .unwrap()
        .clone();
        assert_eq!(failed.durable, fixture::start());
        writer.reopen().await.unwrap();
        assert_eq!(writer.positions().borrow().failed, None);
    }

    /// A writer's state in `t`, run without its thread, its store started at the fixture's
    /// start on timeline 1, and the hub it feeds.
    fn started_state(t: &tempfile::TempDir) -> (Hub, WriterState) {
        let (hub, feed) = Hub::new(t.path().join("wal"), 64 << 20);
        let (mut w, _) = WriterState::open(t.path(), Arc::new(feed), Arc::default()).unwrap();
        w.execute(Command::Initialize(fixture::id(), oneshot::channel().0));
        let timeline = TimelineId::new(1).unwrap();
        w.execute(Command::StartAt(
            timeline,
            fixture::start(),
            oneshot::channel().0,
        ));
        (hub, w)
    }

    /// The command appending the fixture's WAL in `[from, to)`.
    fn append(from: Lsn, to: Lsn) -> Command {
        Command::Append {
            start: from,
            data: Bytes::copy_from_slice(fixture::bytes(from, to)),
        }
    }

    #[test]
    fn a_failure_drops_from_the_tail_what_was_written_and_never_published() {
        let t = tempfile::TempDir::new().unwrap();
        let (hub, mut w) = started_state(&t);
        let timeline = TimelineId::new(1).unwrap();
        let (start, half) = (fixture::start(), Lsn(fixture::start().0 + 0x4000));
        // Written and staged in the tail, not synced: nothing is served.
        w.execute(append(start, half));
        assert_eq!(hub.stats().tail_bytes, 0x4000);
        assert_eq!(hub.durable().lsn, start);
        // WAL that does not continue it fails the writer before any sync.
        w.execute(append(Lsn(half.0 + 8192), Lsn(half.0 + 16384)));
        assert!(w.failed.is_some());
        assert_eq!(hub.stats().tail_bytes, 0);
        // Opened again, the same WAL comes again and is served once synced.
        w.execute(Command::Reopen(oneshot::channel().0));
        w.execute(append(start, half));
        w.execute(Command::Sync(oneshot::channel().0));
        let valid = fixture::valid_end_of(fixture::bytes(start, half));
        assert!(valid > start);
        assert_eq!(hub.durable().lsn, valid);
        let served = block_on(hub.read(timeline, start, Lsn::MAX))
            .unwrap()
            .unwrap();
        assert_eq!(served, fixture::bytes(start, valid));
    }

    #[test]
    fn old_segments_are_let_go_without_a_sync_and_even_while_failed() {
        let t = tempfile::TempDir::new().unwrap();
        let (hub, mut w) = started_state(&t);
        let start = fixture::start();
        let (synced, written) = (Lsn(start.0 + (2 << 20)), Lsn(start.0 + (2 << 20) + 0x4000));
        w.execute(append(start, synced));
        w.execute(Command::Sync(oneshot::channel().0));
        w.execute(append(synced, written));
        let durable = hub.durable().lsn;
        let let_go = |w: &mut WriterState, lsn: Lsn| {
            let (reply, mut answer) = oneshot::channel();
            w.execute(Command::LetGoBefore(lsn, reply));
            answer.try_recv().unwrap().unwrap()
        };
        let removal = let_go(&mut w, Lsn(start.0 + (1 << 20)));
        assert_eq!(removal.len(), 1);
        // Nothing was synced for it: what waited for a sync still waits.
        assert_eq!((hub.durable().lsn, w.unsynced.len()), (durable, 1));
        assert_eq!(w.positions.borrow().oldest, Some(Lsn(start.0 + (1 << 20))));
        assert_eq!(removal.run().unwrap(), 1);
        // A failed store still lets its old segments go.
        w.execute(append(Lsn(written.0 + 8192), Lsn(written.0 + 16384)));
        assert!(w.failed.is_some());
        assert_eq!(let_go(&mut w, synced).run().unwrap(), 1);
        assert!(!t.path().join("wal").join(fixture::name(1, 8)).exists());
    }

    #[test]
    fn the_wait_ends_for_whichever_channel_has_something_first() {
        let (tx_a, mut rx_a) = tokio::sync::mpsc::channel::<u8>(1);
        let (_tx_b, mut rx_b) = tokio::sync::mpsc::channel::<u8>(1);
        // Sent from another thread once this one is parked.
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            tx_a.blocking_send(7).unwrap();
        });
        let got = block_on(async {
            tokio::select! {
                biased;
                b = rx_b.recv() => ("b", b),
                a = rx_a.recv() => ("a", a),
            }
        });
        assert_eq!(got, ("a", Some(7)));
        sender.join().unwrap();
    }

    #[test]
    fn the_cache_is_released_below_every_reader_and_the_newest_wal() {
        let kept = CACHE_KEPT_BYTES;
        let durable = Lsn(10 * kept);
        // No reader: all but the newest WAL.
        assert_eq!(cache_release_point(durable, None), Some(Lsn(9 * kept)));
        // A reader behind holds what it has yet to be sent, and the WAL just before it.
        let behind = Lsn(3 * kept + 5);
        assert_eq!(
            cache_release_point(durable, Some(behind)),
            Some(Lsn(2 * kept + 5))
        );
        // A cursor past the durable end (a reader of a newer timeline's start) counts as the end.
        assert_eq!(
            cache_release_point(durable, Some(Lsn(20 * kept))),
            Some(Lsn(9 * kept))
        );
        // Less WAL than what is kept: nothing.
        assert_eq!(cache_release_point(Lsn(kept - 1), None), None);
        assert_eq!(cache_release_point(durable, Some(Lsn(kept / 2))), None);
    }

    fn idle(unsynced: usize, queue_empty: bool) -> Standing {
        Standing {
            in_flight: false,
            unsynced,
            queue_empty,
            failed: false,
        }
    }

    fn syncing(unsynced: usize, queue_empty: bool) -> Standing {
        Standing {
            in_flight: true,
            ..idle(unsynced, queue_empty)
        }
    }

    #[test]
    fn with_no_sync_running_a_batch_is_synced_when_full_or_when_nothing_more_waits() {
        // Nothing appended since the last sync: wait for commands.
        assert_eq!(next_step(idle(0, true)), Step::TakeCommand);
        assert_eq!(next_step(idle(0, false)), Step::TakeCommand);
        // More waits and the batch is not full: append it first.
        let short = SYNC_EVERY_CHUNKS - 1;
        assert_eq!(next_step(idle(short, false)), Step::TakeCommand);
        // A full batch is synced on the syncer's thread, whatever waits behind it.
        let full = SYNC_EVERY_CHUNKS;
        assert_eq!(next_step(idle(full, false)), Step::StartSync);
        assert_eq!(next_step(idle(full, true)), Step::StartSync);
        // A small batch with nothing behind it is synced here, without a hand-off.
        assert_eq!(next_step(idle(1, true)), Step::SyncHere);
        assert_eq!(next_step(idle(short, true)), Step::SyncHere);
    }

    #[test]
    fn while_a_sync_runs_appends_go_on_up_to_the_bound_then_wait_for_it() {
        // Whatever comes first: a command, or the sync's return.
        assert_eq!(next_step(syncing(8, true)), Step::TakeEither);
        assert_eq!(next_step(syncing(8, false)), Step::TakeEither);
        // Past a batch's size: the running sync is not waited for while room is left.
        let room = MAX_UNSYNCED_CHUNKS - 1;
        assert_eq!(next_step(syncing(room, false)), Step::TakeEither);
        // The bound reached: only the sync's return lets the writer go on.
        assert_eq!(next_step(syncing(room + 1, false)), Step::AwaitSync);
        assert_eq!(next_step(syncing(room + 1, true)), Step::AwaitSync);
    }

    #[test]
    fn a_failed_writer_begins_no_sync() {
        let failed = Standing {
            failed: true,
            ..idle(SYNC_EVERY_CHUNKS, true)
        };
        assert_eq!(next_step(failed), Step::TakeCommand);
        // A sync begun before the failure is still taken, so that its outcome is applied.
        let running = Standing {
            in_flight: true,
            ..failed
        };
        assert_eq!(next_step(running), Step::TakeEither);
    }
}
