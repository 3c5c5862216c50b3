//! The steal clock (`docs/abi/vmware.md` §5): a vCPU's stolen time is its
//! thread's run-queue wait ([`crate::schedstat`]). One updater thread,
//! started by the first registration, writes it into every registered
//! record every [`PERIOD`], in TSC ticks counted from the registration, with
//! one aligned 8-byte store; it ends once the run drops the clocks.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::schedstat::parse_run_delay;

/// How often the records are brought up to date: a guest reads a value at
/// most this old (a KVM host updates at each entry instead; a vCPU here may
/// run CPL 3 code for long stretches without an exit).
pub const PERIOD: Duration = Duration::from_millis(2);

/// `ns` of stolen time as ticks of a `khz` TSC.
pub fn ns_to_ticks(ns: u64, khz: u64) -> u64 {
    u64::try_from(u128::from(ns) * u128::from(khz) / 1_000_000).unwrap_or(u64::MAX)
}

fn read_run_delay(file: &File) -> Option<u64> {
    let mut buf = [0u8; 96];
    let n = file.read_at(&mut buf, 0).ok()?;
    parse_run_delay(std::str::from_utf8(&buf[..n]).ok()?)
}

/// One vCPU's registration.
#[derive(Debug)]
struct Registration {
    gpa: u64,
    /// The vCPU thread's `schedstat`, opened by that thread.
    schedstat: File,
    /// `run_delay` when it registered.
    base_ns: u64,
    /// The last value written: the record never goes back.
    ticks: u64,
}

/// Every vCPU's steal clock.
#[derive(Debug)]
pub struct StealClocks {
    memory: GuestMemoryMmap,
    khz: u64,
    slots: Vec<Mutex<Option<Registration>>>,
    /// Whether the updater thread runs (set by the first registration).
    updater: OnceLock<bool>,
    /// Records written by the updater, for `--stats`.
    updates: AtomicU64,
}

/// Why a registration was not taken.
#[derive(Debug, thiserror::Error)]
pub enum StealError {
    /// The host does not account run-queue time for the thread.
    #[error("cannot read this thread's schedstat: {0}")]
    Schedstat(std::io::Error),
    /// The record is not in guest memory.
    #[error("the record at {0:#x} is not in guest memory")]
    Memory(u64),
    /// The updater thread could not start.
    #[error("the steal-clock thread could not start")]
    Thread,
}

impl StealClocks {
    /// Clocks for `vcpus` vCPUs of a TSC at `khz`, writing into `memory`.
    pub fn new(memory: GuestMemoryMmap, khz: u64, vcpus: usize) -> Arc<Self> {
        let slots = (0..vcpus).map(|_| Mutex::new(None)).collect();
        Arc::new(StealClocks { memory, khz, slots, updater: OnceLock::new(), updates: AtomicU64::new(0) })
    }

    fn slot(&self, vcpu: u8) -> MutexGuard<'_, Option<Registration>> {
        // A poisoned slot only means an updater panicked mid-write.
        self.slots[usize::from(vcpu)].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers the record at `gpa` for `vcpu`, on that vCPU's own thread:
    /// the record reads 0 from now on, and grows with the thread's run-queue
    /// time. Replaces an earlier registration.
    pub fn enable(self: &Arc<Self>, vcpu: u8, gpa: u64) -> Result<(), StealError> {
        let schedstat = File::open("/proc/thread-self/schedstat").map_err(StealError::Schedstat)?;
        let base_ns = read_run_delay(&schedstat).ok_or_else(|| {
            StealError::Schedstat(std::io::Error::new(std::io::ErrorKind::InvalidData, "no run_delay field"))
        })?;
        if !*self.updater.get_or_init(|| self.start_updater()) {
            return Err(StealError::Thread);
        }
        // Held across the zeroing: the updater cannot write an old count
        // after it.
        let mut slot = self.slot(vcpu);
        self.memory.store(0u64, GuestAddress(gpa), Ordering::Release).map_err(|_| StealError::Memory(gpa))?;
        *slot = Some(Registration { gpa, schedstat, base_ns, ticks: 0 });
        Ok(())
    }

    /// Stops writing `vcpu`'s record.
    pub fn disable(&self, vcpu: u8) {
        *self.slot(vcpu) = None;
    }

    /// Records written so far.
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }

    fn start_updater(self: &Arc<Self>) -> bool {
        let clocks: Weak<StealClocks> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("steal-clock".into())
            .spawn(move || {
                // Ends within a period of the run dropping the clocks.
                while let Some(clocks) = clocks.upgrade() {
                    clocks.update_all();
                    drop(clocks);
                    std::thread::sleep(PERIOD);
                }
            })
            .is_ok()
    }

    /// Brings every registered record up to date.
    pub fn update_all(&self) {
        for vcpu in 0..self.slots.len() {
            let mut slot = self.slot(vcpu as u8);
            let Some(reg) = slot.as_mut() else { continue };
            // A thread that has ended reads nothing: its record stays.
            let Some(now) = read_run_delay(&reg.schedstat) else { continue };
            let ticks = ns_to_ticks(now.saturating_sub(reg.base_ns), self.khz).max(reg.ticks);
            if self.memory.store(ticks, GuestAddress(reg.gpa), Ordering::Release).is_ok() {
                reg.ticks = ticks;
                self.updates.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_follow_the_tsc_frequency() {
        assert_eq!(ns_to_ticks(1_000_000, 2_400_000), 2_400_000, "1 ms at 2.4 GHz");
        assert_eq!(ns_to_ticks(0, 2_400_000), 0);
        assert_eq!(ns_to_ticks(u64::MAX, u64::MAX), u64::MAX, "saturates");
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    #[test]
    fn a_registered_record_starts_at_zero_and_never_goes_back() {
        let mem = memory();
        mem.write_obj(0xdead_beefu64, GuestAddress(0x1000)).unwrap();
        let clocks = StealClocks::new(mem.clone(), 2_400_000, 1);
        clocks.enable(0, 0x1000).expect("this host keeps schedstat");
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x1000)).unwrap(), 0);
        // This thread spinning beside one more than the host has CPUs: it
        // waits on a run queue, and the record shows it.
        let spin = || {
            let t = std::time::Instant::now();
            while t.elapsed() < Duration::from_millis(300) {
                std::hint::spin_loop();
            }
        };
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        let hogs: Vec<_> = (0..=cpus).map(|_| std::thread::spawn(spin)).collect();
        let mut last = 0;
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(300) {
            clocks.update_all();
            let now = mem.read_obj::<u64>(GuestAddress(0x1000)).unwrap();
            assert!(now >= last, "went back: {last} -> {now}");
            last = now;
        }
        hogs.into_iter().for_each(|h| h.join().unwrap());
        assert!(last > 0, "no steal under contention");
        clocks.disable(0);
        let before = clocks.updates();
        clocks.update_all();
        assert_eq!(clocks.updates(), before, "a disabled record is left alone");
        assert!(clocks.enable(0, 0x10_0000).is_err(), "outside memory");
    }
}
