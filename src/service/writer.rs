//! The thread that owns the WAL store: appends validated WAL, fsyncs in batches, and
//! publishes how far the WAL is written and durable.
//!
//! Appends arrive through a bounded channel, so a slow disk slows the reader of the upstream
//! socket instead of growing memory. After each batch the thread calls `fdatasync` once and
//! only then publishes the new durable end: nothing is reported or served before it is on
//! disk. The durable end it publishes is the end of the last CRC-checked record within the
//! synced bytes, so a partly received record is never counted.

use std::thread;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};

use crate::storage::WalStore;
use crate::types::{Lsn, TimelineId};

/// Chunks that may wait for the disk before the receiver stops reading the socket.
const QUEUE_CHUNKS: usize = 64;

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

enum Command {
    Append {
        start: Lsn,
        data: Bytes,
        valid_end: Lsn,
    },
    SetDurable(Lsn),
    Call(Box<dyn FnOnce(&mut WalStore) + Send>),
}

/// A handle to the writer thread.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<Command>,
    positions: watch::Receiver<Positions>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Append { start, data, .. } => {
                write!(f, "Append({start}, {} bytes)", data.len())
            }
            Command::SetDurable(lsn) => write!(f, "SetDurable({lsn})"),
            Command::Call(_) => f.write_str("Call"),
        }
    }
}

/// Room for one append in the writer's queue.
#[derive(Debug)]
pub struct AppendPermit<'a>(mpsc::Permit<'a, Command>);

impl AppendPermit<'_> {
    /// Queues WAL starting at `start`; `valid_end` is the validator's end of checked records
    /// once these bytes are in.
    pub fn append(self, start: Lsn, data: Bytes, valid_end: Lsn) {
        self.0.send(Command::Append {
            start,
            data,
            valid_end,
        });
    }
}

/// The writer thread has stopped.
#[derive(Debug, thiserror::Error)]
#[error("the WAL writer has stopped{}", .0.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
pub struct WriterStopped(pub Option<String>);

impl Writer {
    /// Starts the thread, which owns `store` until it stops. `durable` is the durable end the
    /// store already holds (its validated end after recovery).
    ///
    /// # Errors
    /// The thread cannot be spawned.
    pub fn spawn(
        store: WalStore,
        durable: Lsn,
    ) -> std::io::Result<(Writer, thread::JoinHandle<WalStore>)> {
        let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
        let initial = Positions {
            timeline: store.timeline(),
            written: store.write_end().unwrap_or_default(),
            durable,
            failed: None,
        };
        let (ptx, prx) = watch::channel(initial);
        let handle = thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || run(store, rx, ptx, durable))?;
        Ok((Writer { tx, positions: prx }, handle))
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

    /// Sets the durable end the writer publishes, after syncing what is queued; used when
    /// the stream moves to a new timeline and starts over at a segment start.
    ///
    /// # Errors
    /// The writer has stopped.
    pub async fn set_durable(&self, lsn: Lsn) -> Result<(), WriterStopped> {
        self.tx
            .send(Command::SetDurable(lsn))
            .await
            .map_err(|_| self.stopped())
    }

    /// Runs `f` on the store in the writer thread once everything queued before it is
    /// written and synced.
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

    /// Watches the published positions.
    pub fn positions(&self) -> watch::Receiver<Positions> {
        self.positions.clone()
    }

    fn stopped(&self) -> WriterStopped {
        WriterStopped(self.positions.borrow().failed.clone())
    }
}

fn run(
    mut store: WalStore,
    mut rx: mpsc::Receiver<Command>,
    ptx: watch::Sender<Positions>,
    durable: Lsn,
) -> WalStore {
    let mut state = Batch {
        durable,
        pending: None,
        failed: None,
    };
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Append {
                    start,
                    data,
                    valid_end,
                } => match store.append(start, &data) {
                    Ok(()) => state.pending = Some(valid_end),
                    Err(e) => state.failed = Some(e.to_string()),
                },
                Command::SetDurable(lsn) => {
                    state.flush(&mut store);
                    state.durable = lsn;
                }
                Command::Call(f) => {
                    state.flush(&mut store);
                    state.publish(&store, &ptx);
                    if state.failed.is_none() {
                        f(&mut store);
                    }
                }
            }
            if state.failed.is_some() {
                break;
            }
            next = rx.try_recv().ok();
        }
        state.flush(&mut store);
        state.publish(&store, &ptx);
        if state.failed.is_some() {
            break;
        }
    }
    store
}

/// What the writer thread knows between batches.
struct Batch {
    durable: Lsn,
    pending: Option<Lsn>,
    failed: Option<String>,
}

impl Batch {
    /// Syncs what was appended; the durable end becomes the checked end of the synced bytes.
    fn flush(&mut self, store: &mut WalStore) {
        if self.failed.is_some() {
            return;
        }
        if let Some(valid) = self.pending.take() {
            match store.flush() {
                Ok(synced) => self.durable = self.durable.max(valid.min(synced)),
                Err(e) => self.failed = Some(e.to_string()),
            }
        }
    }

    fn publish(&self, store: &WalStore, ptx: &watch::Sender<Positions>) {
        ptx.send_replace(Positions {
            timeline: store.timeline(),
            written: store.write_end().unwrap_or_default(),
            durable: self.durable,
            failed: self.failed.clone(),
        });
    }
}
