//! The thread that owns the WAL store: appends WAL, fsyncs in batches, and publishes how far
//! the WAL is written and durable.
//!
//! Appends arrive through a bounded channel, so a slow disk slows the reader of the upstream
//! socket instead of growing memory. After each batch the thread calls `fdatasync` once and
//! only then publishes the new durable end: nothing is reported or served before it is on
//! disk. The store checks every byte before writing it, and the durable end published is the
//! end of the last CRC-checked record within the synced bytes, so a partly received record is
//! never counted. Any store error stops the thread; the service reopens the store, whose
//! recovery finds the true end again.

use std::sync::Arc;
use std::thread;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::hub::HubFeed;
use crate::storage::{StoreError, WalStore};
use crate::types::{Lsn, TimelineId};

/// Chunks that may wait for the disk before the receiver stops reading the socket.
const QUEUE_CHUNKS: usize = 16;

/// Chunks appended between two syncs at most. Without a bound, a receiver that keeps the
/// queue from ever running empty would hold back the durable end (and keep every chunk in
/// memory) for as long as it does.
const SYNC_EVERY_CHUNKS: usize = 8;

/// What the store holds, as last published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions {
    /// The timeline being written.
    pub timeline: Option<TimelineId>,
    /// End of the bytes written (not necessarily synced).
    pub written: Lsn,
    /// End of the WAL that is synced and whose records all passed their checks.
    pub durable: Lsn,
    /// The error that stopped the writer, if one did.
    pub failed: Option<String>,
}

impl Positions {
    fn of(store: &WalStore, failed: Option<String>) -> Positions {
        let end = store.end();
        Positions {
            timeline: end.map(|e| e.timeline),
            written: store.write_end().unwrap_or_default(),
            durable: end.map(|e| e.valid).unwrap_or_default(),
            failed,
        }
    }
}

enum Command {
    Append { start: Lsn, data: Bytes },
    Call(Box<dyn FnOnce(&mut WalStore) + Send>),
    Attach(Arc<HubFeed>),
}

/// A handle to the writer thread.
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
            Command::Call(_) => f.write_str("Call"),
            Command::Attach(_) => f.write_str("Attach"),
        }
    }
}

impl AppendPermit<'_> {
    /// Queues WAL starting at `start`.
    pub fn append(self, start: Lsn, data: Bytes) {
        self.0.send(Command::Append { start, data });
    }
}

/// The writer thread has stopped.
#[derive(Debug, thiserror::Error)]
#[error("the WAL writer has stopped{}", .0.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
pub struct WriterStopped(pub Option<String>);

impl Writer {
    /// Starts the thread, which owns `store` until it stops and publishes to `feed`, if
    /// given, after every sync.
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub fn spawn(store: WalStore, feed: Option<Arc<HubFeed>>) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
        let (ptx, prx) = watch::channel(Positions::of(&store, None));
        thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || run(store, feed, rx, &ptx))?;
        Ok(Writer { tx, positions: prx })
    }

    /// Waits for room in the queue; the permit then queues one append without waiting.
    ///
    /// # Errors
    /// The writer has stopped.
    pub async fn reserve(&self) -> Result<AppendPermit<'_>, WriterStopped> {
        match self.tx.reserve().await {
            Ok(permit) => Ok(AppendPermit(permit)),
            Err(_) => Err(self.stopped()),
        }
    }

    /// Runs `f` on the store in the writer thread once everything queued before it is
    /// written and synced, and publishes the positions afterwards.
    ///
    /// # Errors
    /// The writer has stopped.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut WalStore) -> T + Send + 'static,
    ) -> Result<T, WriterStopped> {
        let (rtx, rrx) = oneshot::channel();
        let job = Box::new(move |store: &mut WalStore| {
            let _ = rtx.send(f(store));
        });
        self.tx
            .send(Command::Call(job))
            .await
            .map_err(|_| self.stopped())?;
        rrx.await.map_err(|_| self.stopped())
    }

    /// Hands the writer the hub's feed: from now on every durable end, with the chunks that
    /// reached the disk, is published to the downstream senders.
    ///
    /// # Errors
    /// The writer has stopped.
    pub async fn attach(&self, feed: Arc<HubFeed>) -> Result<(), WriterStopped> {
        self.tx
            .send(Command::Attach(feed))
            .await
            .map_err(|_| self.stopped())
    }

    /// Watches the published positions.
    pub fn positions(&self) -> watch::Receiver<Positions> {
        self.positions.clone()
    }

    fn stopped(&self) -> WriterStopped {
        WriterStopped(self.positions.borrow().failed.clone())
    }
}

/// Takes commands in batches: what is queued (up to [`SYNC_EVERY_CHUNKS`] appends) is
/// appended, then synced once.
fn run(
    store: WalStore,
    feed: Option<Arc<HubFeed>>,
    mut rx: mpsc::Receiver<Command>,
    ptx: &watch::Sender<Positions>,
) {
    let mut w = WriterState {
        store,
        unsynced: Vec::new(),
        feed,
    };
    w.publish();
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        let mut outcome = Ok(());
        while let Some(cmd) = next.take() {
            outcome = match cmd {
                Command::Append { start, data } => {
                    let appended = w.store.append(start, &data);
                    w.unsynced.push((start, data));
                    appended
                }
                Command::Call(f) => w.sync().map(|()| {
                    f(&mut w.store);
                    w.publish();
                    ptx.send_replace(Positions::of(&w.store, None));
                }),
                Command::Attach(feed) => {
                    w.feed = Some(feed);
                    w.publish();
                    Ok(())
                }
            };
            if outcome.is_err() || w.unsynced.len() >= SYNC_EVERY_CHUNKS {
                break;
            }
            next = rx.try_recv().ok();
        }
        let failed = outcome.and_then(|()| w.sync()).err();
        let stop = failed.is_some();
        ptx.send_replace(Positions::of(&w.store, failed.map(|e| e.to_string())));
        if stop {
            return;
        }
    }
}

/// The store, the chunks appended since the last sync, and where to publish them.
struct WriterState {
    store: WalStore,
    unsynced: Vec<(Lsn, Bytes)>,
    feed: Option<Arc<HubFeed>>,
}

impl WriterState {
    /// Syncs what was appended, then hands it to the hub.
    fn sync(&mut self) -> Result<(), StoreError> {
        if !self.unsynced.is_empty() {
            self.store.flush()?;
            self.publish();
        }
        Ok(())
    }

    /// Publishes the durable end, with the chunks now on disk, to the hub.
    fn publish(&mut self) {
        let chunks = std::mem::take(&mut self.unsynced);
        let (Some(feed), Some(end)) = (&self.feed, self.store.end()) else {
            return;
        };
        if let Some(next_xid) = self.store.validator().and_then(|v| v.next_xid()) {
            feed.set_next_xid(next_xid);
        }
        feed.publish(end.timeline, end.valid, chunks);
    }
}
