//! The fan-out between the WAL writer and the downstream senders.
//!
//! It is the read side of walsender's `XLogSendPhysical` for many clients at once: the writer
//! publishes each new durable end through a [`HubFeed`], every sender waits on a
//! [`watch`] of it ([`Hub::subscribe`]) and takes `[cursor, durable)` in pieces with
//! [`Hub::read`], cut as walsender cuts its `XLogData` messages (PROTOCOL.md §3.2):
//! - at most [`MAX_SEND_SIZE`] (128 KiB); when more is pending, the piece ends at
//!   `from + 128 KiB` rounded down to an 8 KiB page boundary (from 0/3000100 it ends at
//!   0/3020000), otherwise exactly at the limit, which may be mid-page;
//! - never past the durable end, whatever limit the caller passes (§7 item 17);
//! - never across a segment end. Walsender crosses segments inside one message only because
//!   it reads page by page; a receiver accepts either.
//!
//! A piece comes from the tail cache when `from` lies in it: a zero-copy `Bytes::slice` of the
//! chunk the writer wrote (cached as it is written, served once the durable end covers it),
//! ending where that chunk ends (so a reader that keeps up gets the upstream's own message
//! boundaries; joining two chunks would cost a copy). Otherwise,
//! and always for older timelines (§4.2), it is read from the segment file: what the page
//! cache holds at once on the reader's thread (`RWF_NOWAIT`), the rest with `pread` on
//! tokio's blocking pool, so a slow disk stalls only the readers waiting for it, never the
//! runtime's workers. Memory does not grow with the number of readers or their lag: the tail
//! is bounded, the buffers of disk reads are shared by all readers and lent only while a read
//! is written out (see the `pool` module), and no payload goes through a channel.
//!
//! A sender on a socket the kernel can send files to asks with [`Hub::send_batch`], which
//! gives what the page cache holds as [`FileSpan`]s, the tail's WAL too: the sender passes
//! them to `sendfile`, so its WAL reaches the socket with no read into a buffer, no copy
//! through user space, and no chunk of the tail held while the socket is full. The pieces
//! are cut by the same rule; only where the bytes are differs. So that the newest file is at
//! hand, the writer's [`HubFeed::publish`] keeps it open in the shared reader.

mod pool;
mod recent;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use tokio::sync::watch;

use crate::storage::{FileSpan, SegmentPins, SegmentReader, StoreError};
use crate::types::{DurableEnd, Lsn, SegmentName, TimelineId, WAL_PAGE_SIZE, WalSegmentSize};

use pool::ReadPool;
use recent::RecentWal;

pub use crate::types::MAX_SEND_SIZE;

/// Timeline history files by timeline, as the store holds them.
pub type Histories = Arc<BTreeMap<TimelineId, Bytes>>;

/// Counters of the bytes [`Hub::read`] returned, and what the tail holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    /// Bytes served from the tail cache, without a copy.
    pub served_from_tail: u64,
    /// Bytes served by reading segment files.
    pub served_from_disk: u64,
    /// Bytes served as stretches of segment files for the sender to pass to its socket
    /// ([`Hub::send_batch`]); not counted in `served_from_disk`.
    pub served_as_files: u64,
    /// Bytes the tail cache holds now.
    pub tail_bytes: usize,
}

/// The readers' side of the fan-out; cheap to clone.
#[derive(Clone, Debug)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// The writer's side of the fan-out. Dropping it closes the [`watch`]: waiting readers see
/// `changed()` fail and know no more WAL will come.
#[derive(Debug)]
pub struct HubFeed {
    shared: Arc<Shared>,
    tx: watch::Sender<DurableEnd>,
}

#[derive(Debug)]
struct Shared {
    wal_dir: PathBuf,
    /// Set once the store's segment size is known; nothing is published before.
    reader: OnceLock<SegmentReader>,
    /// The segments the reader holds open, which a removal must not reuse.
    pins: SegmentPins,
    state: RwLock<State>,
    durable: watch::Receiver<DurableEnd>,
    from_tail: AtomicU64,
    from_disk: AtomicU64,
    as_files: AtomicU64,
    removed_below: AtomicU64,
    /// The oldest cursor of the connected readers as last recorded; `u64::MAX` for none.
    oldest_reader: AtomicU64,
    /// The upstream's next transaction id at its last checkpoint in the WAL; 0 until known.
    next_xid: AtomicU64,
    /// `redo` of the newest checkpoint record written; 0 before one.
    last_redo: AtomicU64,
    /// The buffers disk reads go into, and the turn to read.
    pool: ReadPool,
}

/// The published end and the tail of its timeline, changed together, and the history files.
#[derive(Debug)]
struct State {
    end: DurableEnd,
    tail: RecentWal,
    histories: Histories,
}

/// Consecutive pieces of WAL, each one XLogData, from [`Hub::send_batch`].
#[derive(Debug)]
pub enum Pieces {
    /// Bytes in memory: from the tail, or read from disk.
    Memory(Vec<Bytes>),
    /// Stretches of segment files that the page cache holds, for `sendfile`.
    Files(Vec<FileSpan>),
}

/// Where the next piece comes from.
enum Source {
    Nothing,
    /// The piece is in the tail; `limit` as for `Disk`.
    Tail {
        piece: Bytes,
        limit: Lsn,
    },
    /// The piece `[from, end)` is on disk; `limit` is how far this read may go at all.
    Disk {
        end: Lsn,
        limit: Lsn,
    },
}

impl Hub {
    /// A hub reading stored WAL from the segment files in `wal_dir` and caching about
    /// `tail_capacity_bytes` of the newest WAL written (0 disables the cache); the [`HubFeed`]
    /// goes to the writer, which sets the segment size before it publishes.
    pub fn new(wal_dir: PathBuf, tail_capacity_bytes: usize) -> (Hub, HubFeed) {
        let (tx, durable) = watch::channel(DurableEnd::default());
        let shared = Arc::new(Shared {
            wal_dir,
            reader: OnceLock::new(),
            pins: SegmentPins::default(),
            state: RwLock::new(State {
                end: DurableEnd::default(),
                tail: RecentWal::new(tail_capacity_bytes),
                histories: Histories::default(),
            }),
            durable,
            from_tail: AtomicU64::new(0),
            from_disk: AtomicU64::new(0),
            as_files: AtomicU64::new(0),
            removed_below: AtomicU64::new(0),
            oldest_reader: AtomicU64::new(u64::MAX),
            next_xid: AtomicU64::new(0),
            last_redo: AtomicU64::new(0),
            pool: ReadPool::default(),
        });
        let feed = HubFeed {
            shared: Arc::clone(&shared),
            tx,
        };
        (Hub { shared }, feed)
    }

    /// A receiver of the durable end, woken at every change.
    pub fn subscribe(&self) -> watch::Receiver<DurableEnd> {
        self.shared.durable.clone()
    }

    /// The durable end now.
    pub fn durable(&self) -> DurableEnd {
        *self.shared.durable.borrow()
    }

    /// The timeline history files the store holds.
    pub fn histories(&self) -> Histories {
        Arc::clone(&self.shared.read_state().histories)
    }

    /// The segment size, once the writer has set it.
    pub fn segment_size(&self) -> Option<WalSegmentSize> {
        self.shared.reader.get().map(SegmentReader::segment_size)
    }

    /// The next piece of WAL of `timeline`: it starts exactly at `from` and ends at or before
    /// `limit`, cut as the module documentation says. `None` when there is nothing to send:
    /// `from` is at or past `limit`, or past the durable end of the current timeline, or
    /// `timeline` is newer than the current one (or nothing is published yet). On the current
    /// timeline the caller passes its own cap (or `Lsn::MAX`); on an older one, its switch
    /// point, which is not checked here.
    ///
    /// # Errors
    /// [`StoreError::SegmentRemoved`] if the segment file is gone (PostgreSQL's 58P01),
    /// [`StoreError::Io`] if it cannot be read or the read task fails.
    pub async fn read(
        &self,
        timeline: TimelineId,
        from: Lsn,
        limit: Lsn,
    ) -> Result<Option<Bytes>, StoreError> {
        let mut pieces = self.read_batch_kept(timeline, from, limit, 1).await?;
        Ok((!pieces.is_empty()).then(|| pieces.swap_remove(0)))
    }

    /// Consecutive pieces from `from`, each cut as [`Hub::read`] cuts one, together at most
    /// about `max_bytes`: what a sender that is behind writes at once. Pieces from the tail
    /// come without copying; from disk, one read on the blocking pool covers them all (up to
    /// the segment's end), into a buffer of the shared pool. The caller must drop
    /// the pieces soon (once they are written): while it holds them, the buffer is not free
    /// for other readers. [`Hub::read_batch_kept`] gives pieces that may be kept.
    ///
    /// # Errors
    /// As [`Hub::read`].
    pub async fn read_batch(
        &self,
        timeline: TimelineId,
        from: Lsn,
        limit: Lsn,
        max_bytes: u64,
    ) -> Result<Vec<Bytes>, StoreError> {
        self.batch(timeline, from, limit, max_bytes, false).await
    }

    /// [`Hub::read_batch`], with what comes from disk copied out of the shared buffer, so
    /// that the pieces may be kept as long as the caller likes.
    ///
    /// # Errors
    /// As [`Hub::read`].
    pub async fn read_batch_kept(
        &self,
        timeline: TimelineId,
        from: Lsn,
        limit: Lsn,
        max_bytes: u64,
    ) -> Result<Vec<Bytes>, StoreError> {
        self.batch(timeline, from, limit, max_bytes, true).await
    }

    /// [`Hub::read_batch`] for a sender that can pass files to its socket: what the page
    /// cache holds of a segment file already open, the tail's WAL included, comes as
    /// [`Pieces::Files`], cut alike, up to `max_bytes` (never past the segment's end) and with
    /// no buffer of the shared pool; anything else as [`Hub::read_batch`] gives it.
    ///
    /// # Errors
    /// As [`Hub::read`].
    pub async fn send_batch(
        &self,
        timeline: TimelineId,
        from: Lsn,
        limit: Lsn,
        max_bytes: u64,
    ) -> Result<Pieces, StoreError> {
        if let Some(spans) = self.cached_spans(timeline, from, limit, max_bytes) {
            return Ok(Pieces::Files(spans));
        }
        self.batch(timeline, from, limit, max_bytes, false)
            .await
            .map(Pieces::Memory)
    }

    /// The pieces from `from` as file stretches, when the page cache holds them, whether the
    /// tail holds them too or not; `None` leaves everything else, errors included, to the
    /// reads.
    fn cached_spans(
        &self,
        timeline: TimelineId,
        from: Lsn,
        limit: Lsn,
        max_bytes: u64,
    ) -> Option<Vec<FileSpan>> {
        let reader = self.shared.reader.get()?;
        if from < Lsn(self.shared.removed_below.load(Ordering::Acquire)) {
            return None;
        }
        let (end, limit) = match self.shared.source(reader, timeline, from, limit) {
            Source::Disk { end, limit } => (end, limit),
            Source::Tail { piece, limit } => (from.checked_add(piece.len() as u64)?, limit),
            Source::Nothing => return None,
        };
        let size = reader.segment_size();
        let span = disk_span(from, end, limit, max_bytes, size);
        let len = usize::try_from(span.saturating_distance(from)).ok()?;
        let file = reader.cached_span(timeline, from, len)?;
        self.shared
            .as_files
            .fetch_add(file.len() as u64, Ordering::Relaxed);
        Some(cut(from, file, limit, size))
    }

    async fn batch(
        &self,
        timeline: TimelineId,
        from: Lsn,
        limit: Lsn,
        max_bytes: u64,
        keep: bool,
    ) -> Result<Vec<Bytes>, StoreError> {
        let Some(reader) = self.shared.reader.get() else {
            return Ok(Vec::new());
        };
        if from < Lsn(self.shared.removed_below.load(Ordering::Acquire)) {
            // Gone from disk: the tail may still hold it, but PostgreSQL serves WAL only from
            // files, and a client must see the same 58P01 whatever the relay caches.
            let size = reader.segment_size();
            let name = SegmentName {
                timeline,
                segno: size.segment_of(from),
            };
            return Err(StoreError::SegmentRemoved {
                file: name.file_name(size),
            });
        }
        let mut pieces = Vec::new();
        let mut at = from;
        let mut taken = 0;
        while taken < max_bytes {
            match self.shared.source(reader, timeline, at, limit) {
                Source::Nothing => break,
                Source::Tail { piece, .. } => {
                    count(&self.shared.from_tail, &piece);
                    at = Lsn(at.0 + piece.len() as u64);
                    taken += piece.len() as u64;
                    pieces.push(piece);
                }
                Source::Disk { end, limit } => {
                    let size = reader.segment_size();
                    let budget = (max_bytes - taken).min(pool::READ_BYTES as u64);
                    let span = disk_span(at, end, limit, budget, size);
                    let mut data = read_disk(&self.shared.pool, reader, timeline, at, span).await?;
                    if keep {
                        data = Bytes::copy_from_slice(&data);
                    }
                    count(&self.shared.from_disk, &data);
                    pieces.extend(cut(at, data, limit, size));
                    break;
                }
            }
        }
        Ok(pieces)
    }

    /// Records that retention removed every segment below `lsn`: reads below it fail as
    /// removed WAL even when the tail still holds the bytes. Never moves backwards.
    pub fn removed_below(&self, lsn: Lsn) {
        self.shared.removed_below.fetch_max(lsn.0, Ordering::AcqRel);
    }

    /// Records the oldest position a connected reader has yet to be sent, `None` with no
    /// reader: the writer lets the page cache drop durable WAL below it
    /// ([`HubFeed::oldest_reader`]). A reader that starts further back later reads from disk.
    pub fn set_oldest_reader(&self, cursor: Option<Lsn>) {
        let value = cursor.map_or(u64::MAX, |c| c.0);
        self.shared.oldest_reader.store(value, Ordering::Relaxed);
    }

    /// The upstream's next transaction id (epoch and xid as one value) as the last
    /// checkpoint record in the stored WAL says; `None` before the writer has seen one.
    pub fn next_xid(&self) -> Option<u64> {
        Some(self.shared.next_xid.load(Ordering::Relaxed)).filter(|x| *x != 0)
    }

    /// The redo point of the last checkpoint record in the stored WAL, or the oldest WAL
    /// retention has left if that redo was removed; `None` before the writer has seen one.
    pub fn last_redo(&self) -> Option<Lsn> {
        let redo = Some(Lsn(self.shared.last_redo.load(Ordering::Relaxed))).filter(|l| l.0 != 0);
        let removed = Lsn(self.shared.removed_below.load(Ordering::Acquire));
        redo.map(|r| r.max(removed))
    }

    /// What was served so far and what the tail holds.
    pub fn stats(&self) -> HubStats {
        HubStats {
            served_from_tail: self.shared.from_tail.load(Ordering::Relaxed),
            served_from_disk: self.shared.from_disk.load(Ordering::Relaxed),
            served_as_files: self.shared.as_files.load(Ordering::Relaxed),
            tail_bytes: self.shared.read_state().tail.bytes(),
        }
    }
}

/// Reads `[from, end)`, within one segment, into a buffer of `pool`: what the page cache
/// holds at once, anything else on the blocking pool.
async fn read_disk(
    pool: &ReadPool,
    reader: &SegmentReader,
    timeline: TimelineId,
    from: Lsn,
    end: Lsn,
) -> Result<Bytes, StoreError> {
    let task_reader = reader.clone();
    let len = usize::try_from(end.saturating_distance(from)).unwrap_or(0);
    let read = pool
        .read(
            len,
            |buf| reader.read_cached(timeline, from, buf),
            move |buf| task_reader.read_at(timeline, from, buf),
        )
        .await;
    read.map_err(|e| {
        let size = reader.segment_size();
        let name = SegmentName {
            timeline,
            segno: size.segment_of(from),
        };
        StoreError::Io {
            op: "read",
            path: reader.dir().join(name.file_name(size)),
            source: io::Error::other(e),
        }
    })?
}

impl HubFeed {
    /// Sets the store's segment size, which readers need: once, before the first publish.
    /// A later call changes nothing (a data directory never changes its segment size).
    pub fn set_segment_size(&self, size: WalSegmentSize) {
        let dir = self.shared.wal_dir.clone();
        let pins = self.shared.pins.clone();
        let _ = self
            .shared
            .reader
            .get_or_init(|| SegmentReader::with_pins(dir, size, pins));
    }

    /// Closes the readers' cached handles of segments wholly below `lsn`, before a removal
    /// takes them, so that it may reuse them ([`SegmentReader::close_below`]).
    pub fn close_segments_below(&self, lsn: Lsn) {
        if let Some(reader) = self.shared.reader.get() {
            reader.close_below(lsn);
        }
    }

    /// The segments the readers hold open: what a removal that reuses files must be given
    /// ([`SegmentRemoval::reusing`](crate::storage::SegmentRemoval::reusing)).
    pub fn segment_pins(&self) -> SegmentPins {
        self.shared.pins.clone()
    }

    /// Publishes the timeline history files the store holds.
    pub fn set_histories(&self, histories: BTreeMap<TimelineId, Bytes>) {
        self.shared.write_state().histories = Arc::new(histories);
    }

    /// Publishes a new durable end of `timeline` with the chunks written since the last call
    /// and not staged ([`HubFeed::stage`]; contiguous, in order, each `(start, bytes)`), and
    /// wakes the readers. Chunks may reach past `durable` (a record not yet complete): those
    /// bytes are cached but not served until a later end covers them, and a chunk published
    /// again is cached once. A timeline other than the current one starts over as
    /// [`HubFeed::switch_timeline`] does.
    pub fn publish(
        &self,
        timeline: TimelineId,
        durable: Lsn,
        chunks: impl IntoIterator<Item = (Lsn, Bytes)>,
    ) {
        let end = DurableEnd {
            timeline: Some(timeline),
            lsn: durable,
        };
        {
            let mut state = self.shared.write_state();
            if state.end.timeline != end.timeline {
                state.tail.clear();
            }
            for (start, data) in chunks {
                state.tail.push(start, data);
            }
            state.end = end;
        }
        self.keep_open(timeline, durable);
        self.send(end);
    }

    /// Caches WAL `[start, start + data.len())` of `timeline` as soon as it is written, ahead
    /// of the durable end: nothing of it is served until [`HubFeed::publish`] moves the end
    /// over it, and readers that keep up then find it here. Ignored unless `timeline` is the
    /// current one. So the writer need not hold what it wrote until it is synced: the tail's
    /// bounded memory is the only copy kept.
    pub fn stage(&self, timeline: TimelineId, start: Lsn, data: Bytes) {
        let mut state = self.shared.write_state();
        if state.end.timeline == Some(timeline) {
            state.tail.push(start, data);
        }
    }

    /// Drops what was cached beyond the published end ([`HubFeed::stage`]), when the writer
    /// learns that it may never become durable.
    pub fn discard_unpublished(&self) {
        let mut state = self.shared.write_state();
        let end = state.end.lsn;
        state.tail.truncate(end);
    }

    /// The oldest position a connected reader has yet to be sent, as last recorded with
    /// [`Hub::set_oldest_reader`]; `None` with no reader.
    pub fn oldest_reader(&self) -> Option<Lsn> {
        Some(self.shared.oldest_reader.load(Ordering::Relaxed))
            .filter(|c| *c != u64::MAX)
            .map(Lsn)
    }

    /// Records the next transaction id of the newest checkpoint record written (see
    /// [`Hub::next_xid`]).
    pub fn set_next_xid(&self, next_xid: u64) {
        self.shared.next_xid.store(next_xid, Ordering::Relaxed);
    }

    /// Records the redo point of the newest checkpoint record written (see
    /// [`Hub::last_redo`]).
    pub fn set_last_redo(&self, redo: Lsn) {
        self.shared.last_redo.store(redo.0, Ordering::Relaxed);
    }

    /// Moves on to `timeline`, whose durable WAL ends at `start`: the tail is emptied, and the
    /// timeline before becomes historic (read from disk). Also sets the starting point after
    /// the store is opened.
    pub fn switch_timeline(&self, timeline: TimelineId, start: Lsn) {
        let end = DurableEnd {
            timeline: Some(timeline),
            lsn: start,
        };
        {
            let mut state = self.shared.write_state();
            state.tail.clear();
            state.end = end;
        }
        self.send(end);
    }

    /// Wakes readers only on a change.
    /// Keeps the file that the durable end lies in open for the senders, so those that can
    /// send files find it without opening it on their own threads. The writer's thread may
    /// wait for the disk; a file that cannot be opened is left to the reads.
    fn keep_open(&self, timeline: TimelineId, durable: Lsn) {
        if let Some(reader) = self.shared.reader.get() {
            let last = durable.0.saturating_sub(1);
            let _ = reader.keep_open(timeline, Lsn(last));
        }
    }

    fn send(&self, end: DurableEnd) {
        self.tx.send_if_modified(|v| {
            let changed = *v != end;
            *v = end;
            changed
        });
    }
}

impl Shared {
    // Nothing in a critical section can panic; a poisoned state is still consistent.
    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides, under the lock, what the next piece is and where it comes from.
    fn source(
        &self,
        reader: &SegmentReader,
        timeline: TimelineId,
        from: Lsn,
        limit: Lsn,
    ) -> Source {
        let state = self.read_state();
        let live = state.end.timeline == Some(timeline);
        let limit = match state.end.timeline {
            Some(_) if live => limit.min(state.end.lsn),
            Some(current) if timeline < current => limit,
            _ => return Source::Nothing,
        };
        if from >= limit {
            return Source::Nothing;
        }
        let end = piece_end(from, limit, reader.segment_size());
        match live.then(|| state.tail.slice(from, end)).flatten() {
            Some(piece) => Source::Tail { piece, limit },
            None => Source::Disk { end, limit },
        }
    }
}

/// How far one disk read from `from` goes: at least the first piece (to `first_end`), and
/// more while `budget` lasts, staying below `limit` and in `from`'s segment; cut on a page
/// boundary unless it stops at `limit` or the segment end.
fn disk_span(from: Lsn, first_end: Lsn, limit: Lsn, budget: u64, size: WalSegmentSize) -> Lsn {
    let segment_end = size
        .segment_start(from)
        .checked_add(size.bytes_u64())
        .unwrap_or(Lsn::MAX);
    let bound = limit.min(segment_end);
    let want = from.checked_add(budget).unwrap_or(Lsn::MAX);
    let span = if want < bound {
        want.align_down(u64::from(WAL_PAGE_SIZE))
    } else {
        bound
    };
    span.max(first_end)
}

/// WAL that can be cut into pieces: bytes, or a stretch of a file.
trait Cuttable: Sized {
    fn len(&self) -> usize;
    fn split_to(&mut self, n: usize) -> Self;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Cuttable for Bytes {
    fn len(&self) -> usize {
        Bytes::len(self)
    }
    fn split_to(&mut self, n: usize) -> Self {
        Bytes::split_to(self, n)
    }
}

impl Cuttable for FileSpan {
    fn len(&self) -> usize {
        FileSpan::len(self)
    }
    fn split_to(&mut self, n: usize) -> Self {
        FileSpan::split_to(self, n)
    }
}

/// Cuts `data`, read from `from`, into walsender pieces bound by `limit`.
fn cut<C: Cuttable>(from: Lsn, data: C, limit: Lsn, size: WalSegmentSize) -> Vec<C> {
    let mut pieces = Vec::new();
    let mut at = from;
    let mut rest = data;
    while !rest.is_empty() {
        let end = piece_end(at, limit, size);
        let len = usize::try_from(end.saturating_distance(at))
            .unwrap_or(0)
            .clamp(1, rest.len());
        let piece = rest.split_to(len);
        at = Lsn(at.0 + piece.len() as u64);
        pieces.push(piece);
    }
    pieces
}

/// Where a piece starting at `from` (below `limit`) ends: walsender's rule, and the end of
/// `from`'s segment.
fn piece_end(from: Lsn, limit: Lsn, size: WalSegmentSize) -> Lsn {
    let end = match from.checked_add(MAX_SEND_SIZE) {
        Some(most) if most < limit => most.align_down(u64::from(WAL_PAGE_SIZE)),
        _ => limit,
    };
    match size.segment_start(from).checked_add(size.bytes_u64()) {
        Some(segment_end) => end.min(segment_end),
        None => end,
    }
}

fn count(counter: &AtomicU64, piece: &Bytes) {
    counter.fetch_add(piece.len() as u64, Ordering::Relaxed);
}

#[cfg(test)]
mod tests;
