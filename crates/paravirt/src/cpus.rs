//! CPUs: every op names a CPU by its *index*, dense from 0 (the boot CPU) to
//! the number of CPUs the kernel runs; the local APIC names it by its APIC ID,
//! which is sparse on real hosts (Xen PVH hands out 0, 2, 4, ...). The kernel
//! numbers its CPUs, tells paravirt each one's APIC ID ([`set_apic_id`]) as it
//! comes up, and answers [`crate::InitParams::current_cpu`] with the index.
//!
//! Per-CPU state in the backends is sized for [`MAX_CPUS`] indices. A CPU
//! beyond that is refused where it would first need state of its own
//! ([`crate::init_secondary`] returns [`CpuError::BeyondCapacity`]) and is
//! never given another CPU's: an op that would reach per-CPU state for it
//! panics with the index and the capacity, rather than share.

use core::sync::atomic::{AtomicU32, Ordering};

/// CPUs whose per-CPU state the backends hold (indices 0..MAX_CPUS).
pub const MAX_CPUS: usize = 256;

/// Why a CPU cannot be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuError {
    /// Its index is at or beyond [`MAX_CPUS`].
    BeyondCapacity {
        /// The CPU's index.
        cpu: u32,
    },
}

impl core::fmt::Display for CpuError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            CpuError::BeyondCapacity { cpu } => {
                write!(f, "CPU {cpu} is beyond the {MAX_CPUS} CPUs paravirt's per-CPU state is sized for")
            }
        }
    }
}

/// Checks `cpu` against [`MAX_CPUS`].
pub fn check(cpu: u32) -> Result<usize, CpuError> {
    let i = cpu as usize;
    if i < MAX_CPUS {
        Ok(i)
    } else {
        Err(CpuError::BeyondCapacity { cpu })
    }
}

/// `cpu`'s slot in a per-CPU table. A CPU beyond [`MAX_CPUS`] never shares
/// another's: it panics, naming both numbers.
#[track_caller]
pub fn slot(cpu: u32) -> usize {
    match check(cpu) {
        Ok(i) => i,
        Err(e) => panic!("{e}"),
    }
}

const UNKNOWN: u32 = u32::MAX;
static APIC_IDS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(UNKNOWN) }; MAX_CPUS];

/// Records that CPU `cpu` has APIC ID `apic_id` (the kernel, as each CPU
/// comes up, before it sends or receives IPIs).
pub fn set_apic_id(cpu: u32, apic_id: u32) -> Result<(), CpuError> {
    APIC_IDS[check(cpu)?].store(apic_id, Ordering::Release);
    Ok(())
}

/// CPU `cpu`'s APIC ID; its index while it has none recorded (as on a
/// machine whose APIC IDs are dense).
pub fn apic_id(cpu: u32) -> u32 {
    match check(cpu) {
        Ok(i) => match APIC_IDS[i].load(Ordering::Acquire) {
            UNKNOWN => cpu,
            id => id,
        },
        Err(_) => cpu,
    }
}

/// The index of the CPU with APIC ID `apic_id`, if one was recorded.
pub fn by_apic_id(apic_id: u32) -> Option<u32> {
    APIC_IDS.iter().position(|a| a.load(Ordering::Acquire) == apic_id).map(|i| i as u32)
}

const WORDS: usize = MAX_CPUS / 64;

/// A set of CPUs by index (bit n = CPU n), any of the [`MAX_CPUS`].
#[derive(Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct CpuSet([u64; WORDS]);

impl CpuSet {
    /// No CPU.
    pub const EMPTY: CpuSet = CpuSet([0; WORDS]);

    /// Just `cpu`.
    pub fn of(cpu: u32) -> CpuSet {
        let mut s = CpuSet::EMPTY;
        s.insert(cpu);
        s
    }

    /// CPUs 0..`n`.
    pub fn first(n: u32) -> CpuSet {
        let mut s = CpuSet::EMPTY;
        for cpu in 0..n.min(MAX_CPUS as u32) {
            s.insert(cpu);
        }
        s
    }

    /// Adds `cpu`; false (and nothing added) if it is beyond [`MAX_CPUS`].
    pub fn insert(&mut self, cpu: u32) -> bool {
        let Ok(i) = check(cpu) else { return false };
        self.0[i / 64] |= 1 << (i % 64);
        true
    }

    /// Removes `cpu`.
    pub fn remove(&mut self, cpu: u32) {
        if let Ok(i) = check(cpu) {
            self.0[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        check(cpu).is_ok_and(|i| self.0[i / 64] & (1 << (i % 64)) != 0)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    /// How many CPUs it holds.
    pub fn len(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }

    /// The CPUs in both.
    pub fn and(&self, other: &CpuSet) -> CpuSet {
        CpuSet(core::array::from_fn(|i| self.0[i] & other.0[i]))
    }

    /// Its CPUs, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            core::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                Some(w as u32 * 64 + b)
            })
        })
    }
}

impl core::fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_hold_every_index_and_refuse_beyond() {
        let mut s = CpuSet::EMPTY;
        assert!(s.insert(0) && s.insert(63) && s.insert(64) && s.insert(255));
        assert!(!s.insert(256), "beyond MAX_CPUS: refused, not aliased");
        assert!(!s.contains(256) && !s.contains(u32::MAX));
        assert_eq!(s.iter().collect::<std::vec::Vec<_>>(), [0, 63, 64, 255]);
        assert_eq!(s.len(), 4);
        s.remove(63);
        assert!(!s.contains(63) && s.contains(64));
        assert_eq!(CpuSet::first(70).len(), 70);
        assert_eq!(s.and(&CpuSet::of(64)), CpuSet::of(64));
    }

    #[test]
    fn apic_ids_map_both_ways_and_default_to_the_index() {
        assert_eq!(apic_id(200), 200, "none recorded: the index");
        set_apic_id(201, 402).unwrap();
        assert_eq!(apic_id(201), 402);
        assert_eq!(by_apic_id(402), Some(201));
        assert_eq!(set_apic_id(256, 1), Err(CpuError::BeyondCapacity { cpu: 256 }));
        let msg = std::format!("{}", CpuError::BeyondCapacity { cpu: 300 });
        assert!(msg.contains("300") && msg.contains("256"), "{msg}");
    }

    #[test]
    #[should_panic(expected = "CPU 256 is beyond the 256 CPUs")]
    fn a_slot_beyond_capacity_is_refused_loudly() {
        slot(256);
    }
}
