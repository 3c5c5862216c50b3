//! The synthetic MSRs (`docs/abi/hyperv.md` §3): a pure function of the
//! partition's state, the host's facts and the access. What needs guest
//! memory (filling the hypercall page, writing the reference TSC page) comes
//! back as an [`Effect`] for the glue to carry out.

use pvabi::hyperv::{msr, TscPage};

/// What the host tells the guest, fixed for the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// The guest TSC's frequency, Hz (`KVM_GET_TSC_KHZ` × 1000; 0: unknown,
    /// and then neither the frequency MSR nor the TSC page is served).
    pub tsc_hz: u64,
    /// The local APIC timer's frequency, Hz.
    pub apic_hz: u64,
    /// Guest RAM, `(start GPA, length)` pairs: the pages the guest may name.
    pub ram: Vec<(u64, u64)>,
    /// The guest TSC when the partition was made: reference time 0.
    pub tsc_at_start: u64,
}

impl Host {
    /// Whether the 4 KiB page at `gpa` lies wholly in RAM.
    pub fn page_in_ram(&self, gpa: u64) -> bool {
        self.ram
            .iter()
            .any(|&(start, len)| gpa >= start && gpa.checked_add(4096).is_some_and(|end| end <= start + len))
    }

    /// The reference TSC page for this host: `tsc_scale`/2⁶⁴ units of 100 ns
    /// per tick, offset so that reference time starts at 0 with the
    /// partition (TLFS, "Partition reference counter").
    pub fn tsc_page(&self) -> Option<TscPage> {
        (self.tsc_hz != 0).then(|| {
            let tsc_scale = ((10_000_000u128 << 64) / u128::from(self.tsc_hz)) as u64;
            TscPage {
                tsc_sequence: 1,
                reserved: 0,
                tsc_scale,
                tsc_offset: -(scaled(self.tsc_at_start, tsc_scale) as i64),
            }
        })
    }

    /// Reference time (100 ns units) at guest TSC `tsc`, as the TSC page gives it.
    pub fn reference_time(&self, tsc: u64) -> Option<u64> {
        let page = self.tsc_page()?;
        Some(scaled(tsc, page.tsc_scale).wrapping_add(page.tsc_offset as u64))
    }
}

/// (`tsc` × `scale`) >> 64.
fn scaled(tsc: u64, scale: u64) -> u64 {
    ((u128::from(tsc) * u128::from(scale)) >> 64) as u64
}

/// The partition-wide MSRs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Partition {
    /// HV_X64_MSR_GUEST_OS_ID.
    pub guest_os_id: u64,
    /// HV_X64_MSR_HYPERCALL.
    pub hypercall: u64,
    /// HV_X64_MSR_REFERENCE_TSC.
    pub reference_tsc: u64,
}

impl Partition {
    /// Whether the hypercall page is enabled (and so hypercalls answer).
    pub fn hypercalls_enabled(&self) -> bool {
        self.hypercall & msr::ENABLE != 0
    }
}

/// What a write asks of the glue besides the new state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing: the state alone changed (or did not).
    None,
    /// Fill the page at this GPA with the hypercall code.
    HypercallPage(u64),
    /// Write this page at this GPA.
    TscPage(u64, TscPage),
}

/// A `rdmsr` of `index` by VP `vp`, with `tsc` the guest TSC at the read
/// (asked only for the reference counter). `None`: #GP, as for any MSR
/// this hypervisor does not have.
pub fn read(
    p: &Partition,
    host: &Host,
    vp: u32,
    index: u32,
    tsc: impl FnOnce() -> Option<u64>,
) -> Option<u64> {
    match index {
        msr::GUEST_OS_ID => Some(p.guest_os_id),
        msr::HYPERCALL => Some(p.hypercall),
        msr::VP_INDEX => Some(u64::from(vp)),
        msr::TIME_REF_COUNT => host.reference_time(tsc()?),
        msr::REFERENCE_TSC if host.tsc_hz != 0 => Some(p.reference_tsc),
        msr::TSC_FREQUENCY if host.tsc_hz != 0 => Some(host.tsc_hz),
        msr::APIC_FREQUENCY => Some(host.apic_hz),
        _ => None,
    }
}

/// A `wrmsr` of `value` to `index`. `Err(())`: #GP (a read-only or unknown
/// MSR, reserved bits set, or a page outside RAM), the state unchanged.
#[allow(clippy::result_unit_err)]
pub fn write(p: &mut Partition, host: &Host, index: u32, value: u64) -> Result<Effect, ()> {
    let page = value & msr::PAGE_MASK;
    let enable = value & msr::ENABLE != 0;
    match index {
        msr::GUEST_OS_ID => {
            p.guest_os_id = value;
            // TLFS, "Establishing the hypercall interface": clearing the OS identity disables the hypercall page.
            if value == 0 {
                p.hypercall &= !msr::ENABLE;
            }
            Ok(Effect::None)
        }
        msr::HYPERCALL => {
            // Bits 11:1 are reserved (bit 1, "locked", is not offered).
            if value & 0xffe != 0 || (enable && !host.page_in_ram(page)) {
                return Err(());
            }
            // Without an OS identity the enable bit does not stick (same section).
            let enable = enable && p.guest_os_id != 0;
            p.hypercall = page | u64::from(enable);
            Ok(if enable { Effect::HypercallPage(page) } else { Effect::None })
        }
        msr::REFERENCE_TSC if host.tsc_hz != 0 => {
            if value & 0xffe != 0 || (enable && !host.page_in_ram(page)) {
                return Err(());
            }
            p.reference_tsc = value;
            match (enable, host.tsc_page()) {
                (true, Some(tsc_page)) => Ok(Effect::TscPage(page, tsc_page)),
                _ => Ok(Effect::None),
            }
        }
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host { tsc_hz: 2_000_000_000, apic_hz: 1_000_000_000, ram: vec![(0, 64 << 20)], tsc_at_start: 0 }
    }

    #[test]
    fn the_hypercall_page_needs_an_os_identity_and_ram() {
        let (mut p, h) = (Partition::default(), host());
        assert_eq!(write(&mut p, &h, msr::HYPERCALL, 0x5000 | 1), Ok(Effect::None));
        assert!(!p.hypercalls_enabled(), "enabled without a guest OS ID");
        write(&mut p, &h, msr::GUEST_OS_ID, 0x8100_0000_0000_0000).unwrap();
        assert_eq!(write(&mut p, &h, msr::HYPERCALL, 0x5000 | 1), Ok(Effect::HypercallPage(0x5000)));
        assert!(p.hypercalls_enabled());
        assert_eq!(read(&p, &h, 0, msr::HYPERCALL, || None), Some(0x5001));
        // Outside RAM, or reserved bits: #GP, nothing changed.
        assert_eq!(write(&mut p, &h, msr::HYPERCALL, (64 << 20) | 1), Err(()));
        assert_eq!(write(&mut p, &h, msr::HYPERCALL, 0x6000 | 3), Err(()));
        assert_eq!(p.hypercall, 0x5001);
        // Clearing the identity disables the page.
        write(&mut p, &h, msr::GUEST_OS_ID, 0).unwrap();
        assert!(!p.hypercalls_enabled());
    }

    #[test]
    fn the_tsc_page_and_the_counter_agree() {
        let (mut p, h) = (Partition::default(), host());
        let Ok(Effect::TscPage(gpa, page)) = write(&mut p, &h, msr::REFERENCE_TSC, 0x7000 | 1) else {
            panic!("no TSC page");
        };
        assert_eq!((gpa, page.tsc_sequence, page.tsc_offset), (0x7000, 1, 0));
        // 2 GHz: 2·10⁹ ticks are one second, 10⁷ units of 100 ns.
        let t = 2_000_000_000u64;
        let by_page = ((u128::from(t) * u128::from(page.tsc_scale)) >> 64) as u64;
        assert!((9_999_999..=10_000_000).contains(&by_page), "{by_page}");
        assert_eq!(read(&p, &h, 0, msr::TIME_REF_COUNT, || Some(t)), Some(by_page));
        assert_eq!(read(&p, &h, 0, msr::TSC_FREQUENCY, || None), Some(2_000_000_000));
        assert_eq!(read(&p, &h, 3, msr::VP_INDEX, || None), Some(3));
        // A partition made when the TSC read 10 s: reference time starts there.
        let later = Host { tsc_at_start: 10 * t, ..h };
        let page = later.tsc_page().unwrap();
        let at = |tsc: u64| scaled(tsc, page.tsc_scale).wrapping_add(page.tsc_offset as u64);
        assert!(at(10 * t) <= 1, "{}", at(10 * t));
        assert_eq!(later.reference_time(11 * t), Some(at(11 * t)));
        assert!((9_999_999..=10_000_001).contains(&at(11 * t)), "{}", at(11 * t));
    }

    #[test]
    fn without_a_tsc_frequency_no_clock_is_offered() {
        let (mut p, h) = (Partition::default(), Host { tsc_hz: 0, ..host() });
        assert_eq!(write(&mut p, &h, msr::REFERENCE_TSC, 0x7001), Err(()));
        assert_eq!(read(&p, &h, 0, msr::TSC_FREQUENCY, || None), None);
        assert_eq!(read(&p, &h, 0, msr::TIME_REF_COUNT, || Some(5)), None);
    }

    #[test]
    fn read_only_and_unknown_msrs_fault() {
        let (mut p, h) = (Partition::default(), host());
        for index in
            [msr::VP_INDEX, msr::TIME_REF_COUNT, msr::TSC_FREQUENCY, msr::APIC_FREQUENCY, 0x4000_0073, 0x1234]
        {
            assert_eq!(write(&mut p, &h, index, 1), Err(()), "{index:#x}");
        }
        assert_eq!(read(&p, &h, 0, 0x4000_0073, || None), None);
        assert_eq!(p, Partition::default());
    }

    #[test]
    fn a_page_must_fit_in_ram() {
        let h = Host { ram: vec![(0, 0x10_0000), (0x1_0000_0000, 0x10_0000)], ..host() };
        assert!(h.page_in_ram(0xf_f000));
        assert!(!h.page_in_ram(0x10_0000));
        assert!(h.page_in_ram(0x1_0000_0000));
        assert!(!h.page_in_ram(!0xfff));
    }
}
