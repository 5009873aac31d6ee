//! IO buffers that go back to a pool when dropped.
//!
//! Large request payloads and read replies (up to 32 MiB) would otherwise be
//! allocated and zeroed per request, which costs as much as copying them.
//! An [`IoBuffer`] taken from a [`BufferPool`] returns to it on drop,
//! wherever that happens (a device thread, the reply writer), so steady
//! sequential IO allocates nothing.
//!
//! A recycled buffer still holds bytes of an earlier request. Whoever fills
//! one must fill all of it before its bytes are used: the socket reader fills
//! write payloads completely before a write starts, and a device's read must
//! fill the whole data range (the `BlockDevice::read` contract).

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

/// Buffers smaller than this are allocated fresh (malloc's caches are
/// cheaper than the pool's lock at that size).
pub const POOLED_MIN: usize = 64 << 10;

/// Buffers larger than this are freed, not pooled, so the pool's memory
/// stays bounded (`max_buffers` × this).
pub const POOLED_MAX: usize = 8 << 20;

/// A bounded free list of large buffers, shared by every connection.
#[derive(Debug)]
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    max_buffers: usize,
}

impl BufferPool {
    /// A pool that keeps at most `max_buffers` buffers.
    pub fn new(max_buffers: usize) -> Arc<BufferPool> {
        Arc::new(BufferPool { free: Mutex::new(Vec::new()), max_buffers })
    }

    /// A buffer of exactly `len` bytes. Its contents are unspecified (zeros
    /// when fresh, old bytes when recycled).
    pub fn take(self: &Arc<Self>, len: usize) -> IoBuffer {
        if len < POOLED_MIN {
            return IoBuffer { data: vec![0; len], pool: None };
        }
        let recycled = {
            let mut free = self.free.lock().unwrap_or_else(|poison| poison.into_inner());
            free.iter().position(|buffer| buffer.capacity() >= len).map(|at| free.swap_remove(at))
        };
        let data = match recycled {
            Some(mut data) => {
                // Grows (zero-filling only the new tail) or shrinks in place.
                data.resize(len, 0);
                data
            }
            None => vec![0; len],
        };
        IoBuffer { data, pool: Some(self.clone()) }
    }

    fn give_back(&self, data: Vec<u8>) {
        if data.capacity() > POOLED_MAX {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|poison| poison.into_inner());
        if free.len() < self.max_buffers {
            free.push(data);
        }
    }
}

/// An owned byte buffer, returned to its pool (if any) on drop.
pub struct IoBuffer {
    data: Vec<u8>,
    pool: Option<Arc<BufferPool>>,
}

impl IoBuffer {
    /// A buffer that belongs to no pool.
    pub fn unpooled(data: Vec<u8>) -> IoBuffer {
        IoBuffer { data, pool: None }
    }

    /// Appends bytes (for small reply buffers).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
    }

    /// The underlying vector, for encoders that append.
    pub fn vec_mut(&mut self) -> &mut Vec<u8> {
        &mut self.data
    }
}

impl Deref for IoBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data
    }
}

impl DerefMut for IoBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

impl fmt::Debug for IoBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoBuffer")
            .field("len", &self.data.len())
            .field("pooled", &self.pool.is_some())
            .finish()
    }
}

impl Drop for IoBuffer {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give_back(std::mem::take(&mut self.data));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_recycled_and_small_ones_are_not() {
        // A dropped large buffer comes back (same allocation) for the next
        // request of any size up to its capacity; small ones never pool.
        let pool = BufferPool::new(4);
        let first = pool.take(1 << 20);
        let address = first.as_ptr();
        drop(first);
        let second = pool.take(512 << 10);
        assert_eq!(second.as_ptr(), address);
        assert_eq!(second.len(), 512 << 10);
        drop(second);
        let grown = pool.take(1 << 20);
        assert_eq!(grown.len(), 1 << 20);
        let small = pool.take(4096);
        assert!(small.pool.is_none());
    }

    #[test]
    fn the_pool_is_bounded() {
        // More buffers than the bound are dropped, not kept.
        let pool = BufferPool::new(2);
        let buffers: Vec<IoBuffer> = (0..5).map(|_| pool.take(POOLED_MIN)).collect();
        drop(buffers);
        assert_eq!(pool.free.lock().unwrap().len(), 2);
    }
}
