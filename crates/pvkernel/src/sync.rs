//! A cell for kernel globals that are set up once on the boot CPU.

use core::cell::UnsafeCell;

/// Interior-mutable global written during single-CPU boot and read afterwards.
pub struct BootCell<T>(UnsafeCell<T>);

// SAFETY: all mutation goes through `BootCell::get_mut`, whose contract forbids
// concurrent access; shared reads after boot are race-free.
unsafe impl<T> Sync for BootCell<T> {}

impl<T> BootCell<T> {
    /// Wraps a value.
    pub const fn new(v: T) -> Self {
        BootCell(UnsafeCell::new(v))
    }

    /// Mutable access.
    ///
    /// # Safety
    /// No other reference to the value may be live, and no other CPU may touch it.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn get_mut(&self) -> &mut T {
        // SAFETY: forwarded to the caller.
        unsafe { &mut *self.0.get() }
    }

    /// Raw pointer to the value.
    pub const fn as_ptr(&self) -> *mut T {
        self.0.get()
    }
}

impl<T, const N: usize> BootCell<[T; N]> {
    /// Mutable access to element `i` alone (no reference to the rest of the array
    /// is formed, so other CPUs may use their own elements meanwhile).
    ///
    /// # Safety
    /// No other reference to element `i` may be live, and no other CPU may touch it.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slot_mut(&self, i: usize) -> &mut T {
        assert!(i < N, "slot {i} out of {N}");
        // SAFETY: `i` is in bounds; exclusivity of the element is the caller's.
        unsafe { &mut *(self.0.get() as *mut T).add(i) }
    }
}
