//! The buffers readers that lag read segment files into, shared by all of them.
//!
//! A reader that has fallen out of the tail reads up to [`READ_BYTES`] (256 KiB, two
//! `XLogData`) from disk at a time, however much more its batch may take from the tail, into
//! one of [`BUFFERS`] buffers. The buffer goes out to its socket as zero-copy [`Bytes`]
//! slices, and comes back here once the last slice is dropped, which is as soon as the write
//! completed. So the memory of disk reads is fixed, [`BUFFERS`] × [`READ_BYTES`] (3 MiB),
//! however many readers lag: when every buffer is out, readers wait for one in turn (tokio's
//! semaphores are fair). A reader whose client does not read holds its buffer until the
//! client reads or the sender timeout drops it; it takes many such clients at once to slow
//! the others.
//!
//! What the page cache holds, which is nearly everything a reader lags by, is read at once
//! on the reader's own thread without waiting for the disk (`preadv2` with `RWF_NOWAIT`), as
//! a walsender reads: a hand-off to another thread for each read cost more than the read.
//! Only a read that would wait for the disk goes to the blocking pool, at most
//! [`CONCURRENT_READS`] at once, instead of each lagging reader taking a thread.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Buffers lent to readers at most.
pub(super) const BUFFERS: usize = 12;

/// Disk reads running at once.
pub(super) const CONCURRENT_READS: usize = 4;

/// The most one disk read takes, and the size buffers are made with: what a reader whose
/// client does not read holds.
pub(super) const READ_BYTES: usize = 2 * crate::types::MAX_SEND_SIZE as usize;

/// The shared buffers and the turn to read.
#[derive(Debug)]
pub(super) struct ReadPool {
    inner: Arc<Inner>,
    reads: Semaphore,
    lent: Arc<Semaphore>,
}

#[derive(Debug, Default)]
struct Inner {
    free: Mutex<Vec<Vec<u8>>>,
}

/// A buffer lent out: what was read into it, and the pool it goes back to when dropped.
struct Lent {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<Inner>,
    /// Given back after the buffer, so that a reader woken by it finds the buffer free.
    _place: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.pool
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(buf);
    }
}

impl Default for ReadPool {
    fn default() -> Self {
        ReadPool {
            inner: Arc::default(),
            reads: Semaphore::new(CONCURRENT_READS),
            lent: Arc::new(Semaphore::new(BUFFERS)),
        }
    }
}

impl ReadPool {
    /// Reads into a buffer of at least `len` bytes and lends out the bytes read as [`Bytes`].
    /// `now`, which must not block, goes first, on the caller's thread; where it reads
    /// nothing (`None`), `read` runs on the blocking pool, in turn. Either returns how many
    /// bytes it read.
    pub(super) async fn read<E: Send + 'static>(
        &self,
        len: usize,
        now: impl FnOnce(&mut [u8]) -> Option<usize>,
        read: impl FnOnce(&mut [u8]) -> Result<usize, E> + Send + 'static,
    ) -> Result<Result<Bytes, E>, tokio::task::JoinError> {
        // The semaphores are never closed.
        let place = Arc::clone(&self.lent).acquire_owned().await;
        let mut buf = self.take(len);
        let n = match now(buf.get_mut(..len).unwrap_or_default()) {
            Some(n) => Ok(n),
            None => {
                let _turn = self.reads.acquire().await.ok();
                let task = tokio::task::spawn_blocking(move || {
                    let n = read(buf.get_mut(..len).unwrap_or_default());
                    (buf, n)
                });
                let (read_into, n) = task.await?;
                buf = read_into;
                n
            }
        };
        let pool = Arc::clone(&self.inner);
        Ok(n.map(|n| match place {
            Ok(place) => Bytes::from_owner(Lent {
                buf,
                len: n.min(len),
                pool,
                _place: place,
            }),
            Err(_) => Bytes::from(buf).slice(..n.min(len)),
        }))
    }

    /// A free buffer of at least `len` bytes, or a new one.
    fn take(&self, len: usize) -> Vec<u8> {
        let mut free = self
            .inner
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match free.iter().position(|b| b.len() >= len) {
            Some(i) => free.swap_remove(i),
            None => vec![0; len.max(READ_BYTES)],
        }
    }

    /// Free buffers kept now.
    #[cfg(test)]
    pub(super) fn kept(&self) -> usize {
        self.inner
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(byte: u8) -> impl FnOnce(&mut [u8]) -> Result<usize, ()> + Send + 'static {
        move |buf: &mut [u8]| {
            buf.fill(byte);
            Ok(buf.len())
        }
    }

    /// A read that never finds anything without waiting.
    fn never(_: &mut [u8]) -> Option<usize> {
        None
    }

    #[tokio::test]
    async fn what_reads_without_waiting_skips_the_blocking_pool_and_is_lent_alike() {
        let pool = ReadPool::default();
        let quick = |buf: &mut [u8]| {
            buf.fill(7);
            Some(buf.len() - 1)
        };
        let not_called = |_: &mut [u8]| -> Result<usize, ()> { panic!("the blocking read ran") };
        let got = pool.read(100, quick, not_called).await.unwrap().unwrap();
        assert_eq!(&got[..], &[7; 99][..]);
        drop(got);
        assert_eq!(pool.kept(), 1, "its buffer comes back as any other");
        // Where it reads nothing, the blocking read does it, into the same buffer.
        let got = pool.read(100, never, fill(8)).await.unwrap().unwrap();
        assert_eq!(&got[..], &[8; 100][..]);
    }

    #[tokio::test]
    async fn a_buffer_comes_back_once_its_last_slice_is_dropped() {
        let pool = ReadPool::default();
        let first = pool.read(100, never, fill(1)).await.unwrap().unwrap();
        assert_eq!(&first[..], &[1; 100][..]);
        let ptr = first.as_ptr();
        let slice = first.slice(10..20);
        drop(first);
        assert_eq!(pool.kept(), 0, "a slice still holds it");
        // Read into another buffer meanwhile: the held one is not written into.
        let second = pool.read(100, never, fill(2)).await.unwrap().unwrap();
        assert_ne!(second.as_ptr(), ptr);
        assert_eq!(&slice[..], &[1; 10][..]);
        drop(slice);
        assert_eq!(pool.kept(), 1);
        let third = pool.read(50, never, fill(3)).await.unwrap().unwrap();
        assert_eq!(third.as_ptr(), ptr, "the free buffer is read into again");
        assert_eq!(third.len(), 50);
    }

    #[tokio::test]
    async fn when_every_buffer_is_lent_the_next_reader_waits_for_one() {
        let pool = Arc::new(ReadPool::default());
        let mut held = Vec::new();
        for _ in 0..BUFFERS {
            held.push(pool.read(10, never, fill(0)).await.unwrap().unwrap());
        }
        let waiting = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.read(10, never, fill(9)).await.unwrap().unwrap() })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "no buffer is free");
        let slice = held.pop().unwrap().slice(..1);
        assert!(!waiting.is_finished(), "a slice still holds the buffer");
        drop(slice);
        let got = waiting.await.unwrap();
        assert_eq!(&got[..], &[9; 10][..]);
        drop(held);
        drop(got);
        assert_eq!(pool.kept(), BUFFERS, "every buffer is back, none more");
    }

    #[tokio::test]
    async fn a_short_read_and_an_error_are_passed_on() {
        let pool = ReadPool::default();
        let short = pool
            .read(100, never, |buf: &mut [u8]| Ok::<_, ()>(buf.len() / 2))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(short.len(), 50);
        let failed = pool
            .read(100, never, |_: &mut [u8]| Err::<usize, _>("gone"))
            .await
            .unwrap();
        assert_eq!(failed, Err("gone"));
    }
}
