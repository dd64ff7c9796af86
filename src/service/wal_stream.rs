//! The relay's durable WAL as an in-process stream: for a program that embeds the relay and
//! wants the WAL it validated (to archive it, to index it) without a replication connection.
//!
//! It reads what a standby streaming from the relay would get, through the same hub: only WAL
//! that is synced and whose records passed their CRC checks, in order, without gaps. When the
//! relay follows a promotion onto a new timeline, the stream ends the old timeline at its
//! switch point and goes on with the new one from the start of the switch point's segment, as
//! `pg_receivewal` does. A stream does not hold WAL back from retention: one that falls too
//! far behind gets [`StoreError::SegmentRemoved`].

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::sync::watch;

use crate::hub::Hub;
use crate::storage::StoreError;
use crate::types::{DurableEnd, Lsn, TimelineId};
use crate::wal::TimelineHistory;

/// Bytes read from the hub at once.
const BATCH_BYTES: u64 = 8 * crate::types::MAX_SEND_SIZE;

/// A piece of durable WAL. Like walsender's `XLogData` ([`crate::hub`] cuts both), it never
/// crosses a segment end: the last chunk of each segment ends exactly at the segment's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalChunk {
    /// The timeline it belongs to.
    pub timeline: TimelineId,
    /// The LSN of its first byte.
    pub start: Lsn,
    /// The WAL bytes.
    pub data: Bytes,
}

impl WalChunk {
    /// The LSN just after its last byte.
    pub fn end(&self) -> Lsn {
        Lsn(self.start.0.saturating_add(self.data.len() as u64))
    }
}

/// The relay's durable WAL from a start position on; see the module documentation.
#[derive(Debug)]
pub struct WalStream {
    hub: Hub,
    durable: watch::Receiver<DurableEnd>,
    timeline: Option<TimelineId>,
    next: Lsn,
    ready: VecDeque<WalChunk>,
}

impl WalStream {
    pub(crate) fn new(hub: Hub, start: Lsn) -> WalStream {
        WalStream {
            durable: hub.subscribe(),
            hub,
            timeline: None,
            next: start,
            ready: VecDeque::new(),
        }
    }

    /// The timeline and position the next chunk starts at (the timeline is the relay's
    /// current one until the first chunk).
    pub fn position(&self) -> (Option<TimelineId>, Lsn) {
        (self.timeline, self.next)
    }

    /// The next chunk of durable WAL, waiting until there is one; `None` once the relay has
    /// stopped.
    ///
    /// # Errors
    /// [`StoreError::SegmentRemoved`] if retention removed the WAL asked for, another
    /// [`StoreError`] if it cannot be read or a timeline is not in the relay's history.
    pub async fn next(&mut self) -> Option<Result<WalChunk, StoreError>> {
        loop {
            if let Some(chunk) = self.ready.pop_front() {
                return Some(Ok(chunk));
            }
            let end = *self.durable.borrow_and_update();
            if let Some(current) = end.timeline {
                match self.fill(current, end.lsn).await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => return Some(Err(e)),
                }
            }
            if self.durable.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Reads what there is on the stream's timeline, or moves on to the next timeline at the
    /// end of a historic one. Whether it made progress.
    async fn fill(&mut self, current: TimelineId, durable: Lsn) -> Result<bool, StoreError> {
        let timeline = *self.timeline.get_or_insert(current);
        let (limit, next) = if timeline == current {
            (durable, None)
        } else {
            let (switch, next) = self.switch_point(timeline, current)?;
            (switch, Some(next))
        };
        if self.next < limit {
            let pieces = self
                .hub
                .read_batch_kept(timeline, self.next, limit, BATCH_BYTES)
                .await?;
            for data in pieces {
                let chunk = WalChunk {
                    timeline,
                    start: self.next,
                    data,
                };
                self.next = chunk.end();
                self.ready.push_back(chunk);
            }
            return Ok(!self.ready.is_empty());
        }
        let Some(next) = next else {
            return Ok(false);
        };
        let size = self.hub.segment_size().ok_or(StoreError::NotInitialized)?;
        self.timeline = Some(next);
        self.next = size.segment_start(limit);
        Ok(true)
    }

    /// Where `timeline` ends in the history of `current`, and which timeline follows.
    fn switch_point(
        &self,
        timeline: TimelineId,
        current: TimelineId,
    ) -> Result<(Lsn, TimelineId), StoreError> {
        let not_in_history = || StoreError::BadTimeline {
            timeline,
            reason: "not in the history of the relay's current timeline",
        };
        let histories = self.hub.histories();
        let bytes = histories.get(&current).ok_or_else(not_in_history)?;
        TimelineHistory::parse(current, bytes)
            .ok()
            .and_then(|h| h.switch_point(timeline))
            .ok_or_else(not_in_history)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{SegmentName, SegmentNo, WalSegmentSize};

    const SIZE: u32 = 1 << 20;

    fn tli(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    /// Stores `data` at `start` (within segment 3) on `timeline` as its `.partial` file.
    fn store(dir: &std::path::Path, timeline: u32, data: &[u8]) {
        let size = WalSegmentSize::new(SIZE).unwrap();
        let name = SegmentName {
            timeline: tli(timeline),
            segno: SegmentNo(3),
        }
        .file_name(size);
        std::fs::write(dir.join(format!("{name}.partial")), data).unwrap();
    }

    #[tokio::test]
    async fn the_stream_follows_the_relay_onto_a_new_timeline() {
        let t = tempfile::TempDir::new().unwrap();
        let (hub, feed) = Hub::new(t.path().to_path_buf(), 0);
        feed.set_segment_size(WalSegmentSize::new(SIZE).unwrap());
        let old: Vec<u8> = (0..0x100u32).map(|i| i as u8).collect();
        store(t.path(), 1, &old);
        feed.publish(tli(1), Lsn(0x30_0100), []);
        let mut stream = WalStream::new(hub, Lsn(0x30_0000));
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!((first.timeline, first.start), (tli(1), Lsn(0x30_0000)));
        assert_eq!(first.data, old);
        // The relay followed a promotion at 0/300080: timeline 2 starts over at its segment.
        let new: Vec<u8> = (0..0x200u32).map(|i| (i as u8) ^ 0xFF).collect();
        store(t.path(), 2, &new);
        let history = Bytes::from_static(b"1\t0/300080\tno recovery target specified\n");
        feed.set_histories([(tli(2), history)].into());
        feed.publish(tli(2), Lsn(0x30_0200), []);
        let second = stream.next().await.unwrap().unwrap();
        assert_eq!((second.timeline, second.start), (tli(2), Lsn(0x30_0000)));
        assert_eq!(second.data, new);
        assert_eq!(stream.position(), (Some(tli(2)), Lsn(0x30_0200)));
    }

    #[tokio::test]
    async fn a_timeline_not_in_the_history_is_an_error() {
        let t = tempfile::TempDir::new().unwrap();
        let (hub, feed) = Hub::new(t.path().to_path_buf(), 0);
        feed.set_segment_size(WalSegmentSize::new(SIZE).unwrap());
        store(t.path(), 1, &[1; 16]);
        feed.publish(tli(1), Lsn(0x30_0010), []);
        let mut stream = WalStream::new(hub, Lsn(0x30_0000));
        stream.next().await.unwrap().unwrap();
        feed.publish(tli(3), Lsn(0x30_0010), []);
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(matches!(err, StoreError::BadTimeline { .. }), "{err}");
    }

    #[tokio::test]
    async fn the_stream_ends_with_the_relay() {
        let t = tempfile::TempDir::new().unwrap();
        let (hub, feed) = Hub::new(t.path().to_path_buf(), 0);
        let mut stream = WalStream::new(hub, Lsn(0x30_0000));
        drop(feed);
        assert!(stream.next().await.is_none());
    }
}
