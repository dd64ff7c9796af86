//! Tests of the hub: cut rule, tail and disk sources, limits, timelines, concurrency.
//!
//! Built only for tests: the parent declares this module under `#[cfg(test)]`.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::*;
use crate::types::SegmentNo;

const SEG: u64 = 1 << 20;

fn size() -> WalSegmentSize {
    WalSegmentSize::new(SEG as u32).unwrap()
}

fn tli(n: u32) -> TimelineId {
    TimelineId::new(n).unwrap()
}

/// Deterministic WAL stand-in: every byte depends on its LSN and a seed (the timeline).
fn content(from: u64, len: usize, seed: u8) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((from + i).wrapping_mul(31) >> 3) as u8 ^ seed)
        .collect()
}

fn path(dir: &Path, timeline: u32, segno: u64, partial: bool) -> PathBuf {
    let name = SegmentName {
        timeline: tli(timeline),
        segno: SegmentNo(segno),
    }
    .file_name(size());
    dir.join(if partial {
        format!("{name}.partial")
    } else {
        name
    })
}

/// Writes `data` at `lsn` the way the store does: into `NAME.partial`, renamed to `NAME` once
/// the segment is full.
fn append(dir: &Path, timeline: u32, lsn: u64, data: &[u8]) {
    let mut at = lsn;
    for piece in data.chunks(SEG as usize) {
        let mut piece = piece;
        while !piece.is_empty() {
            let (segno, offset) = (at / SEG, at % SEG);
            let n = piece.len().min((SEG - offset) as usize);
            let partial = path(dir, timeline, segno, true);
            let f = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&partial)
                .unwrap();
            f.write_all_at(&piece[..n], offset).unwrap();
            if offset + n as u64 == SEG {
                fs::rename(&partial, path(dir, timeline, segno, false)).unwrap();
            }
            (at, piece) = (at + n as u64, &piece[n..]);
        }
    }
}

/// Stores `wal` of timeline 1 from `from` and publishes it, 100 000 bytes at a time, as the
/// writer does.
fn store_and_publish(dir: &Path, feed: &HubFeed, from: u64, wal: &[u8]) {
    let mut at = from;
    for chunk in wal.chunks(100_000) {
        append(dir, 1, at, chunk);
        let end = at + chunk.len() as u64;
        feed.publish(tli(1), Lsn(end), [(Lsn(at), Bytes::copy_from_slice(chunk))]);
        at = end;
    }
}

fn hub(dir: &Path, capacity: usize) -> (Hub, HubFeed) {
    let (hub, feed) = Hub::new(dir.to_path_buf(), capacity);
    feed.set_segment_size(size());
    (hub, feed)
}

/// Reads everything from `from` until `read` returns `None`, checking each piece's shape.
async fn read_all(hub: &Hub, timeline: u32, from: u64, limit: Lsn) -> Vec<u8> {
    let mut got = Vec::new();
    let mut at = Lsn(from);
    while let Some(piece) = hub.read(tli(timeline), at, limit).await.unwrap() {
        let end = Lsn(at.0 + piece.len() as u64);
        assert!(!piece.is_empty() && piece.len() as u64 <= MAX_SEND_SIZE);
        assert_eq!(size().segment_of(at), size().segment_of(Lsn(end.0 - 1)));
        got.extend_from_slice(&piece);
        at = end;
    }
    got
}

#[test]
fn pieces_are_cut_like_walsender() {
    let size = WalSegmentSize::DEFAULT;
    let at = |s: &str| s.parse::<Lsn>().unwrap();
    let end = |from: &str, limit: Lsn| piece_end(at(from), limit, size);
    // The observed first chunk from 0/3000100: 130 816 bytes, ending at 0/3020000.
    assert_eq!(end("0/3000100", Lsn::MAX), at("0/3020000"));
    assert_eq!(at("0/3020000").0 - at("0/3000100").0, 130_816);
    assert_eq!(end("0/3000100", at("0/3020101")), at("0/3020000"));
    // Exactly 128 KiB pending, or less: up to the limit, even mid-page.
    assert_eq!(end("0/3000100", at("0/3020100")), at("0/3020100"));
    assert_eq!(end("0/3000000", at("0/3000060")), at("0/3000060"));
    assert_eq!(end("0/3000000", Lsn::MAX), at("0/3020000"));
    // Never across a segment end.
    assert_eq!(end("0/3FFF000", Lsn::MAX), at("0/4000000"));
    assert_eq!(end("0/3FFFFFF", at("0/4000010")), at("0/4000000"));
    assert_eq!(piece_end(Lsn(u64::MAX - 9), Lsn::MAX, size), Lsn::MAX);
}

#[tokio::test]
async fn reads_from_disk_follow_the_cut_rule() {
    let t = TempDir::new().unwrap();
    let seg3 = t.path().join("000000010000000000000003");
    fs::File::create(&seg3).unwrap().set_len(16 << 20).unwrap();
    let (hub, feed) = Hub::new(t.path().to_path_buf(), 1 << 20);
    feed.set_segment_size(WalSegmentSize::DEFAULT);
    feed.switch_timeline(tli(1), "0/3F00000".parse().unwrap());
    let first = hub.read(tli(1), Lsn(0x300_0100), Lsn::MAX).await.unwrap();
    assert_eq!(first.unwrap().len(), 130_816);
    let next = hub.read(tli(1), Lsn(0x302_0000), Lsn::MAX).await.unwrap();
    assert_eq!(next.unwrap().len(), 128 * 1024);
    let last = hub.read(tli(1), Lsn(0x3EF_FF00), Lsn::MAX).await.unwrap();
    assert_eq!(last.unwrap().len(), 0x100);
    assert_eq!(hub.stats().served_from_disk, 130_816 + 128 * 1024 + 0x100);
}

#[tokio::test]
async fn tail_reads_are_slices_of_the_published_chunks() {
    let t = TempDir::new().unwrap();
    let (hub, feed) = hub(t.path(), 1 << 20);
    let a = Bytes::from(content(SEG, 100_000, 1));
    let b = Bytes::from(content(SEG + 100_000, 50_000, 1));
    feed.publish(tli(1), Lsn(SEG + 150_000), [(Lsn(SEG), a.clone())]);
    feed.publish(
        tli(1),
        Lsn(SEG + 150_000),
        [(Lsn(SEG + 100_000), b.clone())],
    );
    let piece = hub.read(tli(1), Lsn(SEG + 10), Lsn::MAX).await.unwrap();
    let piece = piece.unwrap();
    assert_eq!(
        (piece.as_ptr(), piece.len()),
        (a[10..].as_ptr(), a.len() - 10)
    );
    let piece = hub
        .read(tli(1), Lsn(SEG + 100_000), Lsn(SEG + 120_000))
        .await;
    let piece = piece.unwrap().unwrap();
    assert_eq!((piece.as_ptr(), piece.len()), (b.as_ptr(), 20_000));
    let stats = hub.stats();
    assert_eq!(stats.served_from_tail, 99_990 + 20_000);
    assert_eq!((stats.served_from_disk, stats.tail_bytes), (0, 150_000));
}

#[tokio::test]
async fn reads_below_the_tail_come_from_disk() {
    let t = TempDir::new().unwrap();
    let (from, to) = (SEG, 3 * SEG + 0x8_0000);
    let wal = content(from, (to - from) as usize, 1);
    let (hub, feed) = hub(t.path(), 256 * 1024);
    store_and_publish(t.path(), &feed, from, &wal);
    assert!(path(t.path(), 1, 2, false).exists());
    assert_eq!(read_all(&hub, 1, from, Lsn::MAX).await, wal);
    let stats = hub.stats();
    assert!(stats.served_from_tail > 0 && stats.served_from_disk > 0);
    assert_eq!(stats.served_from_tail + stats.served_from_disk, to - from);
    assert!(stats.tail_bytes <= 256 * 1024 + 100_000);
    // The disk copy and the cached copy of the newest bytes are the same.
    let cached = hub.read(tli(1), Lsn(to - 1000), Lsn::MAX).await.unwrap();
    assert_eq!(cached.unwrap(), wal[wal.len() - 1000..]);
}

#[tokio::test]
async fn nothing_past_the_durable_end_or_the_limit() {
    let t = TempDir::new().unwrap();
    let s = SEG;
    append(t.path(), 1, s, &content(s, 3000, 1));
    for capacity in [1 << 20, 0] {
        let (hub, feed) = hub(t.path(), capacity);
        assert_eq!(*hub.subscribe().borrow(), DurableEnd::default());
        assert!(hub.read(tli(1), Lsn(s), Lsn::MAX).await.unwrap().is_none());
        let chunk = Bytes::from(content(s, 1000, 1));
        feed.publish(tli(1), Lsn(s + 600), [(Lsn(s), chunk)]);
        let read = |from: u64, limit: Lsn| hub.read(tli(1), Lsn(from), limit);
        assert_eq!(read(s, Lsn::MAX).await.unwrap().unwrap().len(), 600);
        assert_eq!(read(s, Lsn(s + 100)).await.unwrap().unwrap().len(), 100);
        assert!(read(s + 600, Lsn::MAX).await.unwrap().is_none());
        assert!(read(s + 50, Lsn(s + 50)).await.unwrap().is_none());
        assert!(read(s + 50, Lsn(s + 40)).await.unwrap().is_none());
        // A newer timeline holds nothing yet.
        assert!(hub.read(tli(2), Lsn(s), Lsn::MAX).await.unwrap().is_none());
        feed.publish(tli(1), Lsn(s + 1000), []);
        let rest = read(s + 600, Lsn::MAX).await.unwrap().unwrap();
        assert_eq!(rest, content(s + 600, 400, 1));
        let source = hub.stats();
        assert_eq!(source.served_from_tail == 0, capacity == 0);
    }
}

#[tokio::test]
async fn staged_wal_is_served_from_the_tail_once_published_and_discarded_if_never() {
    let t = TempDir::new().unwrap();
    let s = SEG;
    let (hub, feed) = hub(t.path(), 1 << 20);
    // Only the current timeline is cached: before it is known, nothing.
    feed.stage(tli(1), Lsn(s), content(s, 100, 1).into());
    assert_eq!(hub.stats().tail_bytes, 0);
    feed.switch_timeline(tli(1), Lsn(s));
    let mut rx = hub.subscribe();
    rx.borrow_and_update();
    let staged = Bytes::from(content(s, 1000, 1));
    // Written into the file and the page cache, then staged, as the writer does.
    append(t.path(), 1, s, &staged);
    feed.stage(tli(1), Lsn(s), staged.clone());
    feed.stage(tli(2), Lsn(s + 1000), content(s + 1000, 10, 2).into());
    assert_eq!(hub.stats().tail_bytes, 1000);
    // Written, not durable: nobody is woken and nothing is served, from memory or the file.
    assert!(!rx.has_changed().unwrap());
    assert!(hub.read(tli(1), Lsn(s), Lsn::MAX).await.unwrap().is_none());
    let pieces = hub.send_batch(tli(1), Lsn(s), Lsn::MAX, 1 << 20).await;
    assert!(matches!(pieces, Ok(Pieces::Memory(p)) if p.is_empty()));
    feed.publish(tli(1), Lsn(s + 600), []);
    assert!(rx.has_changed().unwrap());
    let piece = hub.read(tli(1), Lsn(s), Lsn::MAX).await.unwrap().unwrap();
    assert_eq!((piece.as_ptr(), piece.len()), (staged.as_ptr(), 600));
    let Ok(Pieces::Files(spans)) = hub.send_batch(tli(1), Lsn(s), Lsn::MAX, 1 << 20).await else {
        panic!("the published WAL is in the page cache");
    };
    assert_eq!(spans.iter().map(FileSpan::len).sum::<usize>(), 600);
    // A failed sync: the bytes past the published end may never be durable, and the WAL that
    // comes again in their place (here other bytes) is what is served.
    feed.discard_unpublished();
    assert_eq!(hub.stats().tail_bytes, 600);
    let again = Bytes::from(content(s + 600, 400, 3));
    feed.stage(tli(1), Lsn(s + 600), again.clone());
    feed.publish(tli(1), Lsn(s + 1000), []);
    let rest = hub.read(tli(1), Lsn(s + 600), Lsn::MAX).await.unwrap();
    assert_eq!(rest, Some(again));
    assert_eq!(hub.stats().served_from_disk, 0);
}

#[tokio::test]
async fn publishing_wakes_subscribers_on_change_only() {
    let t = TempDir::new().unwrap();
    let (hub, feed) = hub(t.path(), 1 << 20);
    let mut rx = hub.subscribe();
    feed.switch_timeline(tli(1), Lsn(SEG));
    assert!(rx.has_changed().unwrap());
    let seen = *rx.borrow_and_update();
    assert_eq!(
        seen,
        DurableEnd {
            timeline: Some(tli(1)),
            lsn: Lsn(SEG)
        }
    );
    feed.publish(tli(1), Lsn(SEG), []);
    assert!(!rx.has_changed().unwrap());
    feed.publish(
        tli(1),
        Lsn(SEG + 8),
        [(Lsn(SEG), Bytes::from_static(b"12345678"))],
    );
    assert!(rx.has_changed().unwrap());
    drop(feed);
    rx.borrow_and_update();
    assert!(rx.changed().await.is_err());
}

#[tokio::test]
async fn older_timelines_are_read_from_disk() {
    let t = TempDir::new().unwrap();
    let (s, switch) = (SEG, SEG + 5000);
    // Timeline 1 stops inside segment 1, which timeline 2 starts again from its beginning.
    append(t.path(), 1, s, &content(s, 6000, 1));
    let (hub, feed) = hub(t.path(), 1 << 20);
    feed.publish(
        tli(1),
        Lsn(s + 6000),
        [(Lsn(s), content(s, 6000, 1).into())],
    );
    feed.switch_timeline(tli(2), Lsn(s));
    assert_eq!(hub.stats().tail_bytes, 0);
    append(t.path(), 2, s, &content(s, 8000, 2));
    feed.publish(
        tli(2),
        Lsn(s + 8000),
        [(Lsn(s), content(s, 8000, 2).into())],
    );
    let old = read_all(&hub, 1, s, Lsn(switch)).await;
    assert_eq!(old, content(s, 5000, 1));
    let new = read_all(&hub, 2, s, Lsn::MAX).await;
    assert_eq!(new, content(s, 8000, 2));
    let stats = hub.stats();
    assert_eq!(
        (stats.served_from_disk, stats.served_from_tail),
        (5000, 8000)
    );
}

#[tokio::test]
async fn removed_segments_are_reported_as_removed() {
    let t = TempDir::new().unwrap();
    let (hub, feed) = hub(t.path(), 1 << 20);
    feed.publish(
        tli(1),
        Lsn(3 * SEG),
        [(Lsn(2 * SEG), content(2 * SEG, 100, 1).into())],
    );
    let err = hub.read(tli(1), Lsn(SEG), Lsn::MAX).await.unwrap_err();
    assert!(matches!(err, StoreError::SegmentRemoved { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "requested WAL segment 000000010000000000000001 has already been removed"
    );
}

/// One writer appends and publishes uneven chunks, with the durable end sometimes inside the
/// last one; readers starting early and late (from disk) all get the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_readers_get_identical_bytes() {
    let t = TempDir::new().unwrap();
    let (from, total) = (SEG, 3 * SEG as usize + 12_345);
    let wal = Bytes::from(content(from, total, 1));
    let (hub, feed) = hub(t.path(), 300_000);
    feed.switch_timeline(tli(1), Lsn(from));
    let dir = t.path().to_path_buf();
    let writer_wal = wal.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let (mut at, mut i) = (0, 0u64);
        while at < total {
            i += 1;
            let len = ((i * 48_271) % (128 * 1024) + 1) as usize;
            let chunk = writer_wal.slice(at..(at + len).min(total));
            append(&dir, 1, from + at as u64, &chunk);
            let end = from + (at + chunk.len()) as u64;
            let durable = if i % 3 == 0 {
                end - chunk.len() as u64 / 2
            } else {
                end
            };
            feed.publish(
                tli(1),
                Lsn(durable),
                [(Lsn(from + at as u64), chunk.clone())],
            );
            at += chunk.len();
            if i % 8 == 0 {
                std::thread::yield_now();
            }
        }
        feed.publish(tli(1), Lsn(from + total as u64), []);
    });
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let hub = hub.clone();
            tokio::spawn(async move {
                let mut rx = hub.subscribe();
                let (mut got, end) = (Vec::new(), from + total as u64);
                loop {
                    rx.borrow_and_update();
                    let at = from + got.len() as u64;
                    got.extend(read_all(&hub, 1, at, Lsn::MAX).await);
                    if from + got.len() as u64 == end || rx.changed().await.is_err() {
                        return got;
                    }
                }
            })
        })
        .collect();
    writer.await.unwrap();
    for r in readers {
        assert!(r.await.unwrap() == wal, "a reader got different bytes");
    }
    // Late readers start below the tail and read from disk.
    let late = read_all(&hub, 1, from, Lsn::MAX).await;
    assert!(late == wal);
    let stats = hub.stats();
    assert!(stats.served_from_disk >= total as u64 - 300_000 - 128 * 1024);
    assert!(stats.tail_bytes <= 300_000 + 128 * 1024);
}

#[tokio::test]
async fn a_batch_from_disk_is_the_same_pieces_read_one_by_one() {
    let t = TempDir::new().unwrap();
    let (from, to) = (SEG + 0x100, 3 * SEG + 0x8_0000);
    let wal = content(from, (to - from) as usize, 7);
    let (hub, feed) = hub(t.path(), 0);
    append(t.path(), 1, from, &wal);
    feed.publish(tli(1), Lsn(to), []);
    let mut at = Lsn(from);
    while at < Lsn(to) {
        let batch = hub
            .read_batch(tli(1), at, Lsn::MAX, 8 * MAX_SEND_SIZE)
            .await
            .unwrap();
        assert!(!batch.is_empty());
        let total: u64 = batch.iter().map(|p| p.len() as u64).sum();
        assert!(total <= 8 * MAX_SEND_SIZE);
        for piece in batch {
            let single = hub.read(tli(1), at, Lsn::MAX).await.unwrap().unwrap();
            assert_eq!(piece, single, "piece at {at}");
            at = Lsn(at.0 + piece.len() as u64);
        }
    }
    assert_eq!(at, Lsn(to));
}

#[tokio::test]
async fn lagging_readers_share_read_buffers_once_nothing_holds_them() {
    let t = TempDir::new().unwrap();
    let (from, to) = (SEG, 2 * SEG);
    let wal = content(from, (to - from) as usize, 11);
    let (hub, feed) = hub(t.path(), 0);
    append(t.path(), 1, from, &wal);
    feed.publish(tli(1), Lsn(to), []);
    let step = 2 * MAX_SEND_SIZE;
    let batch = async |at: u64| {
        hub.read_batch(tli(1), Lsn(at), Lsn::MAX, step)
            .await
            .unwrap()
    };
    let first = batch(from).await;
    let first_ptr = first[0].as_ptr();
    let held = first.clone();
    drop(first);
    // A piece of that read is still held (its write has not completed): another reader's
    // read must not go into it.
    let second = batch(from + step).await;
    assert_ne!(second[0].as_ptr(), first_ptr);
    let held_len: usize = held.iter().map(Bytes::len).sum();
    assert_eq!(held.concat(), wal[..held_len]);
    let second_ptr = second[0].as_ptr();
    drop(held);
    drop(second);
    // Nothing holds either read any more: the next read, whoever makes it, reuses one.
    let third = batch(from + 2 * step).await;
    assert!([first_ptr, second_ptr].contains(&third[0].as_ptr()));
    let third_len: usize = third.iter().map(Bytes::len).sum();
    let at = (2 * step) as usize;
    assert_eq!(third.concat(), wal[at..at + third_len]);
}

/// The bytes of a file stretch.
fn span_bytes(span: &FileSpan) -> Vec<u8> {
    let mut got = vec![0; span.len()];
    span.file().read_exact_at(&mut got, span.offset()).unwrap();
    got
}

#[tokio::test]
async fn a_sender_that_can_send_files_gets_walsender_pieces_as_stretches_of_the_files() {
    let t = TempDir::new().unwrap();
    let (from, to) = (SEG, 3 * SEG + 0x8_0000);
    let wal = content(from, (to - from) as usize, 4);
    let (hub, feed) = hub(t.path(), 256 * 1024);
    store_and_publish(t.path(), &feed, from, &wal);
    let batch = 8 * MAX_SEND_SIZE;
    // The tail's WAL as well as older WAL: the writer kept each file open as it published
    // into it, so nothing is read.
    let (mut at, mut got, mut batches, mut files) = (Lsn(from), Vec::new(), 0, 0);
    while at < Lsn(to) {
        let pieces = hub.send_batch(tli(1), at, Lsn::MAX, batch).await.unwrap();
        let Pieces::Files(spans) = pieces else {
            panic!("at {at}: {pieces:?}");
        };
        batches += 1;
        let total: usize = spans.iter().map(FileSpan::len).sum();
        assert!(total as u64 <= batch);
        for (i, span) in spans.iter().enumerate() {
            let end = piece_end(at, Lsn(to), size());
            if i + 1 < spans.len() {
                assert_eq!(Lsn(at.0 + span.len() as u64), end);
            } else {
                assert!(Lsn(at.0 + span.len() as u64) <= end);
            }
            got.extend(span_bytes(span));
            files += span.len() as u64;
            at = Lsn(at.0 + span.len() as u64);
        }
    }
    assert_eq!(got, wal);
    // A batch goes as far as it may, to the segment's end.
    assert_eq!(batches, 3);
    let stats = hub.stats();
    assert_eq!((stats.served_as_files, files), (to - from, to - from));
    assert_eq!((stats.served_from_disk, stats.served_from_tail), (0, 0));
    let end = hub
        .send_batch(tli(1), Lsn(to), Lsn::MAX, batch)
        .await
        .unwrap();
    assert!(matches!(end, Pieces::Memory(p) if p.is_empty()));
    // Below what retention removed: the same error as a read, whatever the files hold.
    hub.removed_below(Lsn(2 * SEG));
    let err = hub
        .send_batch(tli(1), Lsn(SEG), Lsn::MAX, batch)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::SegmentRemoved { .. }), "{err}");
}

#[tokio::test]
async fn without_a_file_at_hand_a_sender_that_can_send_files_is_given_bytes() {
    let t = TempDir::new().unwrap();
    let (hub, feed) = hub(t.path(), 1 << 20);
    // Published, but no file holds it (the tail alone): the tail's bytes, as a read gets them.
    let a = Bytes::from(content(SEG, 100_000, 1));
    feed.publish(tli(1), Lsn(SEG + 100_000), [(Lsn(SEG), a.clone())]);
    let Pieces::Memory(pieces) = hub
        .send_batch(tli(1), Lsn(SEG), Lsn::MAX, 1 << 20)
        .await
        .unwrap()
    else {
        panic!("no file holds this WAL");
    };
    assert_eq!(pieces, [a]);
    assert_eq!(hub.stats().served_as_files, 0);
}

#[test]
fn the_writer_learns_where_the_oldest_reader_is() {
    let t = TempDir::new().unwrap();
    let (hub, feed) = hub(t.path(), 0);
    assert_eq!(feed.oldest_reader(), None, "no reader recorded yet");
    hub.set_oldest_reader(Some(Lsn(3 * SEG + 17)));
    assert_eq!(feed.oldest_reader(), Some(Lsn(3 * SEG + 17)));
    // The readers move on; the last one leaves.
    hub.clone().set_oldest_reader(Some(Lsn(5 * SEG)));
    assert_eq!(feed.oldest_reader(), Some(Lsn(5 * SEG)));
    hub.set_oldest_reader(None);
    assert_eq!(feed.oldest_reader(), None);
}
