//! A queue of page-table writes for lazy-MMU mode, for backends that batch
//! (Xen PV turns a batch into one multicall).
//!
//! Semantics: writes are applied in the order they were queued; a full queue is
//! flushed before the next write is accepted; leaving lazy mode flushes; a write
//! outside lazy mode is applied at once.

/// One queued write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Update {
    /// The entry.
    pub entry: *mut u64,
    /// Its new value.
    pub value: u64,
}

/// A lazy-MMU queue with room for `N` writes.
pub struct LazyQueue<const N: usize> {
    active: bool,
    len: usize,
    buf: [Update; N],
    /// Number of batches handed to the apply function.
    pub flushes: u64,
}

impl<const N: usize> Default for LazyQueue<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> LazyQueue<N> {
    /// An inactive, empty queue.
    pub const fn new() -> Self {
        LazyQueue {
            active: false,
            len: 0,
            buf: [Update { entry: core::ptr::null_mut(), value: 0 }; N],
            flushes: 0,
        }
    }

    /// Whether lazy mode is on.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Writes waiting.
    pub fn pending(&self) -> &[Update] {
        &self.buf[..self.len]
    }

    /// Enters lazy mode.
    pub fn enter(&mut self) {
        self.active = true;
    }

    /// Queues a write (lazy mode) or applies it now; `apply` receives a batch.
    pub fn write(&mut self, u: Update, apply: &mut impl FnMut(&[Update])) {
        if !self.active {
            apply(&[u]);
            return;
        }
        if self.len == N {
            self.flush(apply);
        }
        self.buf[self.len] = u;
        self.len += 1;
    }

    /// Applies the queued writes as one batch; stays in lazy mode.
    pub fn flush(&mut self, apply: &mut impl FnMut(&[Update])) {
        if self.len > 0 {
            apply(&self.buf[..self.len]);
            self.flushes += 1;
            self.len = 0;
        }
    }

    /// Flushes and leaves lazy mode.
    pub fn leave(&mut self, apply: &mut impl FnMut(&[Update])) {
        self.flush(apply);
        self.active = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn ptr(i: usize) -> *mut u64 {
        (0x1000 + i * 8) as *mut u64
    }

    #[test]
    fn outside_lazy_mode_writes_apply_at_once() {
        let mut q = LazyQueue::<4>::new();
        let mut batches: Vec<Vec<Update>> = Vec::new();
        q.write(Update { entry: ptr(0), value: 1 }, &mut |b| batches.push(b.to_vec()));
        assert_eq!(batches.len(), 1);
        assert!(q.pending().is_empty());
    }

    #[test]
    fn lazy_mode_batches_in_order_and_flushes_when_full() {
        let mut q = LazyQueue::<4>::new();
        let mut batches: Vec<Vec<Update>> = Vec::new();
        q.enter();
        for i in 0..10 {
            q.write(Update { entry: ptr(i), value: i as u64 }, &mut |b| batches.push(b.to_vec()));
        }
        // Two full batches flushed on the way, two writes still pending.
        assert_eq!(batches.len(), 2);
        assert_eq!(q.pending().len(), 2);
        q.leave(&mut |b| batches.push(b.to_vec()));
        assert!(!q.is_active());
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        let order: Vec<u64> = batches.iter().flatten().map(|u| u.value).collect();
        assert_eq!(order, (0..10).collect::<Vec<_>>());
        assert_eq!(q.flushes, 3);
    }

    #[test]
    fn flush_keeps_lazy_mode_and_empty_flush_is_free() {
        let mut q = LazyQueue::<8>::new();
        let mut n = 0;
        q.enter();
        q.flush(&mut |_| n += 1);
        assert_eq!(n, 0);
        q.write(Update { entry: ptr(1), value: 7 }, &mut |_| n += 1);
        q.flush(&mut |_| n += 1);
        assert_eq!(n, 1);
        assert!(q.is_active());
    }
}
