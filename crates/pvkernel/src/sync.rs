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
