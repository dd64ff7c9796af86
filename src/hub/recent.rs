//! The tail cache: the newest WAL of the current timeline as shared `Bytes` chunks, in a
//! bounded ring.
//!
//! It plays the part of PostgreSQL's WAL buffers for a cascading walsender that is close to the
//! end: readers there get `Bytes::slice`s of the chunks the writer stored, without a copy or a
//! read. The chunks are the writer's own (as received from upstream), so a reader that keeps up
//! sees the upstream's message boundaries. Memory is bounded by the capacity plus one chunk,
//! whatever the number of readers: the oldest chunk is dropped as soon as the others cover the
//! capacity.

use std::collections::VecDeque;
use std::fmt;

use bytes::Bytes;

use crate::types::Lsn;

/// One cached chunk; `start + data.len()` never overflows (checked on push).
struct Chunk {
    start: Lsn,
    data: Bytes,
}

impl Chunk {
    fn end(&self) -> Lsn {
        Lsn(self.start.0 + self.data.len() as u64)
    }
}

/// Contiguous chunks, oldest first.
pub(super) struct RecentWal {
    chunks: VecDeque<Chunk>,
    bytes: usize,
    capacity: usize,
}

impl fmt::Debug for RecentWal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecentWal")
            .field("start", &self.chunks.front().map(|c| c.start))
            .field("end", &self.end())
            .field("chunks", &self.chunks.len())
            .field("bytes", &self.bytes)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl RecentWal {
    /// An empty cache keeping about `capacity` bytes (0 keeps nothing).
    pub(super) fn new(capacity: usize) -> RecentWal {
        RecentWal {
            chunks: VecDeque::new(),
            bytes: 0,
            capacity,
        }
    }

    /// Drops every chunk.
    pub(super) fn clear(&mut self) {
        self.chunks.clear();
        self.bytes = 0;
    }

    /// The bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The end of the cached WAL, `None` when empty.
    fn end(&self) -> Option<Lsn> {
        self.chunks.back().map(Chunk::end)
    }

    /// Adds WAL `[start, start + data.len())`. A chunk that overlaps what is cached adds only
    /// its new bytes (the same WAL, written again); one that leaves a gap restarts the cache at
    /// it. Then the oldest chunks go while the rest still cover the capacity.
    pub(super) fn push(&mut self, start: Lsn, data: Bytes) {
        let Some(end) = start.checked_add(data.len() as u64) else {
            return;
        };
        let (start, data) = match self.end() {
            Some(have) if end <= have => return,
            Some(have) if start < have => {
                let skip = usize::try_from(have.0 - start.0).unwrap_or(usize::MAX);
                (have, data.slice(skip.min(data.len())..))
            }
            Some(have) if start > have => {
                self.clear();
                (start, data)
            }
            _ => (start, data),
        };
        if data.is_empty() {
            return;
        }
        self.bytes += data.len();
        self.chunks.push_back(Chunk { start, data });
        while self
            .chunks
            .front()
            .is_some_and(|c| self.bytes - c.data.len() >= self.capacity)
        {
            if let Some(old) = self.chunks.pop_front() {
                self.bytes -= old.data.len();
            }
        }
    }

    /// Drops what is cached from `end` on.
    pub(super) fn truncate(&mut self, end: Lsn) {
        while let Some(last) = self.chunks.back_mut() {
            if last.start >= end {
                self.bytes -= last.data.len();
                self.chunks.pop_back();
            } else {
                let keep = usize::try_from(end.0 - last.start.0).unwrap_or(usize::MAX);
                if keep < last.data.len() {
                    self.bytes -= last.data.len() - keep;
                    last.data.truncate(keep);
                }
                return;
            }
        }
    }

    /// The cached WAL from `from` up to `end` or the end of the chunk holding `from`, whichever
    /// comes first, as a slice of that chunk; `None` if `from` is not cached or `end <= from`.
    pub(super) fn slice(&self, from: Lsn, end: Lsn) -> Option<Bytes> {
        let at = self.chunks.partition_point(|c| c.end() <= from);
        let chunk = self.chunks.get(at).filter(|c| c.start <= from)?;
        let lo = usize::try_from(from.0 - chunk.start.0).ok()?;
        let hi = usize::try_from(end.min(chunk.end()).0 - chunk.start.0).ok()?;
        (lo < hi).then(|| chunk.data.slice(lo..hi))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(len: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; len])
    }

    fn range(t: &RecentWal) -> Option<(Lsn, Lsn)> {
        Some((t.chunks.front()?.start, t.end()?))
    }

    #[test]
    fn slices_share_the_published_bytes() {
        let mut t = RecentWal::new(1 << 20);
        let a = chunk(1000, 1);
        let b = chunk(500, 2);
        t.push(Lsn(10_000), a.clone());
        t.push(Lsn(11_000), b.clone());
        let s = t.slice(Lsn(10_100), Lsn(20_000)).unwrap();
        assert_eq!(s.as_ptr(), a[100..].as_ptr());
        assert_eq!(s.len(), 900);
        let s = t.slice(Lsn(11_000), Lsn(11_200)).unwrap();
        assert_eq!((s.as_ptr(), s.len()), (b.as_ptr(), 200));
        assert!(t.slice(Lsn(9_999), Lsn(20_000)).is_none());
        assert!(t.slice(Lsn(11_500), Lsn(20_000)).is_none());
        assert!(t.slice(Lsn(10_500), Lsn(10_500)).is_none());
    }

    #[test]
    fn overlaps_are_trimmed_and_gaps_restart() {
        let mut t = RecentWal::new(1 << 20);
        t.push(Lsn(100), chunk(100, 1));
        t.push(Lsn(150), chunk(100, 2));
        assert_eq!(range(&t), Some((Lsn(100), Lsn(250))));
        assert_eq!(t.bytes(), 150);
        // Only the bytes past the cached end are new.
        assert_eq!(t.slice(Lsn(199), Lsn(300)).unwrap(), &[1][..]);
        assert_eq!(t.slice(Lsn(200), Lsn(300)).unwrap(), &[2; 50][..]);
        t.push(Lsn(120), chunk(50, 3));
        t.push(Lsn(250), Bytes::new());
        assert_eq!(range(&t), Some((Lsn(100), Lsn(250))));
        t.push(Lsn(300), chunk(10, 4));
        assert_eq!(range(&t), Some((Lsn(300), Lsn(310))));
        assert_eq!(t.bytes(), 10);
        t.push(Lsn(u64::MAX - 5), chunk(10, 5));
        assert_eq!(range(&t), Some((Lsn(300), Lsn(310))));
        t.clear();
        assert_eq!((range(&t), t.bytes()), (None, 0));
    }

    #[test]
    fn memory_stays_within_capacity_plus_one_chunk() {
        let capacity = 1 << 20;
        let mut t = RecentWal::new(capacity);
        let mut at = Lsn(0x300_0000);
        let mut max_chunk = 0;
        for i in 0..500u64 {
            let len = (i * 7919 % (128 * 1024)) as usize + 1;
            max_chunk = max_chunk.max(len);
            t.push(at, chunk(len, i as u8));
            at = Lsn(at.0 + len as u64);
            let held = t.chunks.iter().map(|c| c.data.len()).sum::<usize>();
            assert_eq!(held, t.bytes());
            assert!(t.bytes() <= capacity + max_chunk, "{} bytes", t.bytes());
            assert_eq!(t.end(), Some(at));
            if at.0 - 0x300_0000 >= capacity as u64 {
                assert!(t.bytes() >= capacity, "{} bytes", t.bytes());
            }
        }
    }

    #[test]
    fn truncation_drops_whole_chunks_and_cuts_the_one_it_falls_in() {
        let mut t = RecentWal::new(1 << 20);
        t.push(Lsn(100), chunk(100, 1));
        t.push(Lsn(200), chunk(100, 2));
        t.push(Lsn(300), chunk(100, 3));
        t.truncate(Lsn(400));
        assert_eq!((range(&t), t.bytes()), (Some((Lsn(100), Lsn(400))), 300));
        t.truncate(Lsn(250));
        assert_eq!((range(&t), t.bytes()), (Some((Lsn(100), Lsn(250))), 150));
        assert_eq!(t.slice(Lsn(200), Lsn(400)).unwrap(), &[2; 50][..]);
        // What comes again after the cut continues the cache.
        t.push(Lsn(250), chunk(10, 4));
        assert_eq!(range(&t), Some((Lsn(100), Lsn(260))));
        t.truncate(Lsn(100));
        assert_eq!((range(&t), t.bytes()), (None, 0));
        t.truncate(Lsn(0));
        assert_eq!((range(&t), t.bytes()), (None, 0));
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut t = RecentWal::new(0);
        t.push(Lsn(0), chunk(10, 1));
        assert_eq!((range(&t), t.bytes()), (None, 0));
    }
}
