//! The buffers readers that lag read segment files into, shared by all of them.
//!
//! A reader that has fallen out of the tail reads up to [`READ_BYTES`] (256 KiB, two
//! `XLogData`) from disk at a time, however much more its batch may take from the tail.
//! The buffer goes out to its socket as zero-copy [`Bytes`] slices, and comes back here once
//! the last slice is dropped, which is as soon as the write completed. So the memory of disk
//! reads does not grow with the number of lagging readers: it is what is being read and
//! written at the moment, plus at most [`KEPT_BUFFERS`] kept for the next reads. A reader
//! whose socket is full holds its buffer until the client reads; it never waits for another
//! reader's buffer (a new one is made when none is free), so a slow client slows only itself.
//!
//! At most [`CONCURRENT_READS`] reads run at once on the blocking pool: lagging readers queue
//! for them in turn (tokio's semaphore is fair), instead of each taking a thread.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::sync::Semaphore;

/// Free buffers kept for the next reads; more are freed.
pub(super) const KEPT_BUFFERS: usize = 8;

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
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut free = self
            .pool
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if free.len() < KEPT_BUFFERS {
            free.push(buf);
        }
    }
}

impl Default for ReadPool {
    fn default() -> Self {
        ReadPool {
            inner: Arc::default(),
            reads: Semaphore::new(CONCURRENT_READS),
        }
    }
}

impl ReadPool {
    /// Runs `read` on the blocking pool, in turn, with a buffer of at least `len` bytes; it
    /// returns how many bytes it read. The bytes read are lent out as [`Bytes`].
    pub(super) async fn read<E: Send + 'static>(
        &self,
        len: usize,
        read: impl FnOnce(&mut [u8]) -> Result<usize, E> + Send + 'static,
    ) -> Result<Result<Bytes, E>, tokio::task::JoinError> {
        // The semaphore is never closed.
        let _turn = self.reads.acquire().await.ok();
        let mut buf = self.take(len);
        let task = tokio::task::spawn_blocking(move || {
            let n = read(buf.get_mut(..len).unwrap_or_default());
            (buf, n)
        });
        let (buf, n) = task.await?;
        Ok(n.map(|n| {
            Bytes::from_owner(Lent {
                buf,
                len: n.min(len),
                pool: Arc::clone(&self.inner),
            })
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

    #[tokio::test]
    async fn a_buffer_comes_back_once_its_last_slice_is_dropped() {
        let pool = ReadPool::default();
        let first = pool.read(100, fill(1)).await.unwrap().unwrap();
        assert_eq!(&first[..], &[1; 100][..]);
        let ptr = first.as_ptr();
        let slice = first.slice(10..20);
        drop(first);
        assert_eq!(pool.kept(), 0, "a slice still holds it");
        // Read into another buffer meanwhile: the held one is not written into.
        let second = pool.read(100, fill(2)).await.unwrap().unwrap();
        assert_ne!(second.as_ptr(), ptr);
        assert_eq!(&slice[..], &[1; 10][..]);
        drop(slice);
        assert_eq!(pool.kept(), 1);
        let third = pool.read(50, fill(3)).await.unwrap().unwrap();
        assert_eq!(third.as_ptr(), ptr, "the free buffer is read into again");
        assert_eq!(third.len(), 50);
    }

    #[tokio::test]
    async fn no_more_than_a_few_buffers_are_kept() {
        let pool = ReadPool::default();
        let mut held = Vec::new();
        for _ in 0..KEPT_BUFFERS + 5 {
            held.push(pool.read(10, fill(0)).await.unwrap().unwrap());
        }
        drop(held);
        assert_eq!(pool.kept(), KEPT_BUFFERS);
    }

    #[tokio::test]
    async fn a_short_read_and_an_error_are_passed_on() {
        let pool = ReadPool::default();
        let short = pool
            .read(100, |buf: &mut [u8]| Ok::<_, ()>(buf.len() / 2))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(short.len(), 50);
        let failed = pool
            .read(100, |_: &mut [u8]| Err::<usize, _>("gone"))
            .await
            .unwrap();
        assert_eq!(failed, Err("gone"));
    }
}
