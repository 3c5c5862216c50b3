//! The backdoor's commands as a pure function: registers and host facts in,
//! registers and at most one steal-clock change out (`docs/abi/vmware.md`
//! §3, §5 and §7). Nothing here touches the vCPU, memory or a clock.

pub use pvabi::vmware::Regs;
use pvabi::vmware::{self as abi, cmd, stealclock, STEAL_TIME_SIZE};

/// What the host answers with: fixed for the run, except `now`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Host {
    /// The guest TSC's frequency, kHz (0: unknown, so GETHZ answers
    /// "unsupported" and there is no steal clock).
    pub tsc_khz: u32,
    /// The local APIC's bus (timer) frequency, kHz.
    pub apic_khz: u32,
    /// Guest memory, bytes.
    pub mem_bytes: u64,
    /// Whether the host can keep a steal clock (it accounts each thread's
    /// run-queue wait); without one, or without `tsc_khz`, STEALCLOCK
    /// answers "not available".
    pub steal: bool,
    /// The wall clock: seconds and microseconds since the Unix epoch (UTC).
    pub now: (u64, u32),
}

impl Host {
    /// Whether a guest-physical `gpa` can hold a steal-time record: 64-byte
    /// aligned, all 64 bytes inside one region of guest RAM.
    pub fn record_fits(&self, gpa: u64) -> bool {
        let size = STEAL_TIME_SIZE as u64;
        gpa.is_multiple_of(size)
            && crate::layout::ram_regions(self.mem_bytes)
                .iter()
                .any(|&(start, len)| gpa >= start && len >= size && gpa - start <= len - size)
    }
}

/// A change to the calling vCPU's steal clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Steal {
    /// Keep the record at this guest-physical address from now on.
    Enable(u64),
    /// Stop writing the record.
    Disable,
}

/// What a call did besides its registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The command, when the magic was right and pvrun serves it.
    pub served: Option<u16>,
    /// The steal-clock change, if any.
    pub steal: Option<Steal>,
}

/// GETVERSION's ECX: an ESX host, as QEMU answers.
pub const VMX_TYPE: u32 = abi::VMX_TYPE_ESX;
/// GETTIME's and GETTIMEFULL's ECX: the largest time lag the host lets go
/// uncorrected, µs (QEMU's default `max-time-lag`).
pub const MAX_TIME_LAG_US: u32 = 1_000_000;

/// Answers one backdoor call in place. A wrong magic or a command pvrun does
/// not serve answers EAX = 0xFFFFFFFF and leaves every other register as it
/// was (`vmware.md` §7.2).
pub fn call(regs: &mut Regs, host: &Host) -> Outcome {
    let unsupported = |regs: &mut Regs| {
        regs.eax = abi::UNSUPPORTED;
        Outcome { served: None, steal: None }
    };
    if regs.eax != abi::MAGIC {
        return unsupported(regs);
    }
    let command = (regs.ecx & 0xffff) as u16;
    let mut steal = None;
    match u32::from(command) {
        cmd::GETVERSION => {
            regs.eax = abi::VERSION;
            regs.ebx = abi::MAGIC;
            regs.ecx = VMX_TYPE;
        }
        // VMware's unit, MiB (QEMU answers bytes): informational only.
        cmd::GETMEMSIZE => regs.eax = u32::try_from(host.mem_bytes >> 20).unwrap_or(u32::MAX),
        cmd::GETTIME => {
            let (secs, us) = host.now;
            regs.eax = secs as u32;
            regs.ebx = us;
            regs.ecx = MAX_TIME_LAG_US;
        }
        cmd::GETHZ if host.tsc_khz == 0 => regs.ebx = abi::UNSUPPORTED,
        cmd::GETHZ => {
            let hz = u64::from(host.tsc_khz) * 1000;
            regs.eax = hz as u32;
            regs.ebx = (hz >> 32) as u32;
            regs.ecx = host.apic_khz.saturating_mul(1000);
        }
        // Success leaves EAX as the magic.
        cmd::GETTIMEFULL => {
            let (secs, us) = host.now;
            regs.esi = (secs >> 32) as u32;
            regs.edx = secs as u32;
            regs.ebx = us;
            regs.ecx = MAX_TIME_LAG_US;
        }
        // No bit pvrun can promise: KVM does not say whether the TSCs stay
        // synchronized, and x2APIC is the guest's to check in CPUID.
        cmd::GET_VCPU_INFO => regs.eax = 0,
        cmd::STEALCLOCK if host.tsc_khz == 0 || !host.steal => return unsupported(regs),
        cmd::STEALCLOCK => {
            let (hi, lo) = (regs.esi, regs.edi);
            if (hi, lo) == stealclock::DISABLE_ARGS {
                steal = Some(Steal::Disable);
                regs.eax = stealclock::DISABLED;
            } else {
                let gpa = (u64::from(hi) << 32) | u64::from(lo);
                if host.record_fits(gpa) {
                    steal = Some(Steal::Enable(gpa));
                    regs.eax = stealclock::ENABLED;
                } else {
                    // Refused: whatever was registered stays.
                    regs.eax = stealclock::DISABLED;
                }
            }
        }
        _ => return unsupported(regs),
    }
    Outcome { served: Some(command), steal }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Host = Host {
        tsc_khz: 2_400_000,
        apic_khz: 1_000_000,
        mem_bytes: 128 << 20,
        steal: true,
        now: (0x1_6932_1000, 250_000),
    };

    fn ask(command: u32, ebx: u32, esi: u32, edi: u32) -> (Regs, Outcome) {
        let mut r = Regs { eax: abi::MAGIC, ebx, ecx: command, edx: u32::from(abi::PORT), esi, edi };
        let out = call(&mut r, &HOST);
        (r, out)
    }

    #[test]
    fn getversion_answers_as_qemu_does() {
        let (r, out) = ask(cmd::GETVERSION, !abi::MAGIC, 0, 0);
        assert_eq!((r.eax, r.ebx, r.ecx), (abi::VERSION, abi::MAGIC, abi::VMX_TYPE_ESX));
        assert_eq!(out.served, Some(10));
    }

    #[test]
    fn a_wrong_magic_or_an_unknown_command_changes_only_eax() {
        let mut r = Regs { eax: 0x1234, ebx: 1, ecx: cmd::GETVERSION, edx: 0x5658, esi: 2, edi: 3 };
        let before = r;
        assert_eq!(call(&mut r, &HOST).served, None);
        assert_eq!(r, Regs { eax: abi::UNSUPPORTED, ..before });
        for unknown in [0, 1, 19, 30, 55, 0xffff] {
            let (r, out) = ask(unknown, 7, 8, 9);
            assert_eq!((r.eax, r.ebx, r.ecx, r.esi, r.edi), (abi::UNSUPPORTED, 7, unknown, 8, 9));
            assert_eq!(out, Outcome { served: None, steal: None });
        }
    }

    #[test]
    fn the_sub_command_in_ecx_high_is_ignored() {
        let (r, _) = ask(0x0001_0000 | cmd::GETVERSION, 0, 0, 0);
        assert_eq!(r.ebx, abi::MAGIC);
    }

    #[test]
    fn gethz_agrees_with_the_timing_leaf() {
        let (r, _) = ask(cmd::GETHZ, abi::UNSUPPORTED, 0, 0);
        let hz = (u64::from(r.ebx) << 32) | u64::from(r.eax);
        assert_eq!(hz, 2_400_000_000);
        assert_eq!(r.ecx, 1_000_000_000);
        let mut r = Regs { eax: abi::MAGIC, ebx: abi::UNSUPPORTED, ecx: cmd::GETHZ, ..Regs::default() };
        call(&mut r, &Host { tsc_khz: 0, ..HOST });
        assert_eq!((r.eax, r.ebx), (abi::MAGIC, abi::UNSUPPORTED), "unknown frequency");
    }

    #[test]
    fn gettimefull_leaves_the_magic_and_splits_the_seconds() {
        let (r, _) = ask(cmd::GETTIMEFULL, 0, 0, 0);
        assert_eq!((r.eax, r.esi, r.edx, r.ebx), (abi::MAGIC, 1, 0x6932_1000, 250_000));
        let (r, _) = ask(cmd::GETTIME, 0, 0, 0);
        assert_eq!((r.eax, r.ebx), (0x6932_1000, 250_000));
    }

    #[test]
    fn getmemsize_is_in_mib_and_vcpu_info_is_served() {
        assert_eq!(ask(cmd::GETMEMSIZE, 0, 0, 0).0.eax, 128);
        let info = ask(cmd::GET_VCPU_INFO, 0, 0, 0).0.eax;
        assert_eq!(info & abi::vcpu_info::RESERVED, 0);
    }

    #[test]
    fn stealclock_registers_only_aligned_records_inside_memory() {
        let (r, out) = ask(cmd::STEALCLOCK, 0, 0, 0x10_0040);
        assert_eq!((r.eax, out.steal), (stealclock::ENABLED, Some(Steal::Enable(0x10_0040))));
        let (esi, edi) = stealclock::DISABLE_ARGS;
        let (r, out) = ask(cmd::STEALCLOCK, 0, esi, edi);
        assert_eq!((r.eax, out.steal), (stealclock::DISABLED, Some(Steal::Disable)));
        for (hi, lo) in [(0, 0x10_0020), (0, (128 << 20) - 32), (1, 0), (0xffff_ffff, 0xffff_ffc0)] {
            let (r, out) = ask(cmd::STEALCLOCK, 0, hi, lo);
            assert_eq!((r.eax, out.steal), (stealclock::DISABLED, None), "{hi:#x}:{lo:#x}");
        }
        assert!(HOST.record_fits((128 << 20) - 64), "the last 64 bytes");
        let big = Host { mem_bytes: 4 << 30, ..HOST };
        assert!(!big.record_fits(3 << 30), "the MMIO gap");
        assert!(big.record_fits((4 << 30) + 64), "above the gap");
        let mut r = Regs { eax: abi::MAGIC, ecx: cmd::STEALCLOCK, esi, edi, ..Regs::default() };
        call(&mut r, &Host { tsc_khz: 0, ..HOST });
        assert_eq!(r.eax, stealclock::NOT_AVAILABLE, "no frequency: no steal clock");
        let mut r = Regs { eax: abi::MAGIC, ecx: cmd::STEALCLOCK, esi, edi, ..Regs::default() };
        call(&mut r, &Host { steal: false, ..HOST });
        assert_eq!(r.eax, stealclock::NOT_AVAILABLE, "no schedstat: no steal clock");
    }
}
