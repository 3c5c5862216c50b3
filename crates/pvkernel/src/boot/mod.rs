//! Boot protocols. Each converts what its loader hands over into one [`BootInfo`];
//! nothing above this module knows how the kernel was entered.

pub mod lguest;
pub mod pvh;
pub mod smp;
pub mod xenpv;

/// Largest number of memory regions kept.
pub const MAX_REGIONS: usize = 64;
/// Largest command line kept, in bytes.
pub const MAX_CMDLINE: usize = 1024;

/// Kind of a physical memory range (E820 numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemKind {
    /// Usable RAM.
    Ram,
    /// Reserved, ACPI, unusable or unknown.
    Reserved,
}

impl MemKind {
    /// E820/`XEN_HVM_MEMMAP_TYPE_*` type to kind.
    pub fn from_e820(kind: u32) -> Self {
        if kind == 1 {
            MemKind::Ram
        } else {
            MemKind::Reserved
        }
    }
}

/// One physical memory range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRegion {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// What it is.
    pub kind: MemKind,
}

impl MemRegion {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// The command line, kept for the whole run (copied out of [`BootInfo`]).
static CMDLINE: crate::sync::BootCell<([u8; MAX_CMDLINE], usize)> =
    crate::sync::BootCell::new(([0; MAX_CMDLINE], 0));

/// What the boot protocol told us.
pub struct BootInfo {
    /// Boot protocol name ("pvh", "xen-pv", "lguest").
    pub protocol: &'static str,
    /// How the kernel was entered (decides whether it owns the hardware).
    pub flow: paravirt::BootFlow,
    /// RAM the loader left unmapped, `[start, end)`: the kernel maps it at its
    /// physical address before handing out frames from it (Xen PV maps only the
    /// first few MiB).
    pub unmapped_ram: Option<(u64, u64)>,
    /// Version of the loader's structure.
    pub version: u32,
    /// Physical address of the loader's structure.
    pub start_info_paddr: u64,
    /// Memory map as given (unsorted, possibly empty).
    regions: [MemRegion; MAX_REGIONS],
    region_count: usize,
    /// Regions dropped because the table was full.
    pub regions_dropped: usize,
    cmdline: [u8; MAX_CMDLINE],
    cmdline_len: usize,
    /// Set when the loader's structure was unusable.
    pub error: Option<&'static str>,
}

impl BootInfo {
    /// Nothing known yet.
    pub const fn empty(protocol: &'static str) -> Self {
        BootInfo {
            protocol,
            flow: paravirt::BootFlow::Hardware,
            unmapped_ram: None,
            version: 0,
            start_info_paddr: 0,
            regions: [MemRegion { start: 0, len: 0, kind: MemKind::Reserved }; MAX_REGIONS],
            region_count: 0,
            regions_dropped: 0,
            cmdline: [0; MAX_CMDLINE],
            cmdline_len: 0,
            error: None,
        }
    }

    /// Adds a memory region.
    pub fn push_region(&mut self, r: MemRegion) {
        if self.region_count < MAX_REGIONS {
            self.regions[self.region_count] = r;
            self.region_count += 1;
        } else {
            self.regions_dropped += 1;
        }
    }

    /// The memory map.
    pub fn regions(&self) -> &[MemRegion] {
        &self.regions[..self.region_count]
    }

    /// Copies a NUL-terminated command line (truncated to [`MAX_CMDLINE`]).
    ///
    /// # Safety
    /// `p` must point at readable memory up to its NUL or `MAX_CMDLINE` bytes.
    pub unsafe fn set_cmdline_from_cstr(&mut self, p: *const u8) {
        let mut n = 0;
        while n < MAX_CMDLINE {
            // SAFETY: the caller guarantees readability up to the NUL or the limit.
            let b = unsafe { p.add(n).read() };
            if b == 0 {
                break;
            }
            self.cmdline[n] = b;
            n += 1;
        }
        self.cmdline_len = n;
    }

    /// The command line; invalid UTF-8 yields an empty string.
    pub fn cmdline(&self) -> &'static str {
        // SAFETY: CMDLINE is written only by `take_cmdline`, once, at boot.
        let (buf, len) = unsafe { &*CMDLINE.as_ptr() };
        core::str::from_utf8(&buf[..*len]).unwrap_or("")
    }

    /// Moves the command line into its permanent home and returns it. Once, at boot.
    pub fn take_cmdline(&mut self) -> &'static str {
        // SAFETY: boot CPU only, before anyone reads CMDLINE.
        let slot = unsafe { CMDLINE.get_mut() };
        slot.0 = self.cmdline;
        slot.1 = self.cmdline_len;
        self.cmdline()
    }

    /// Whether the kernel owns the CPU's privileged state and the local APIC
    /// (false for Xen PV and lguest guests, which run in ring 3 without either).
    pub fn owns_hardware(&self) -> bool {
        self.flow == paravirt::BootFlow::Hardware
    }

    /// Whether every kernel mapping must be user-accessible: the kernel runs in
    /// ring 3 on tables the hardware walks as they are (lguest; Xen PV's
    /// hypervisor adjusts the kernel's entries itself).
    pub fn kernel_pages_are_user(&self) -> bool {
        matches!(self.flow, paravirt::BootFlow::Lguest { .. })
    }

    /// Total usable RAM in bytes.
    pub fn ram_bytes(&self) -> u64 {
        self.regions().iter().filter(|r| r.kind == MemKind::Ram).map(|r| r.len).sum()
    }
}
