//! The command line of the `pvrun` binary.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config::{VmConfig, TIMEOUT_MAX};
use crate::cpuid::{parse_feature_mask, Personality};

const AFTER_HELP: &str = "\
The guest's serial port (COM1) is copied to stdout, line by line (a partial
line once the guest has been idle for 30 ms).

Exit status:
  (v << 1) | 1  the guest wrote v to port 0xf4 (QEMU isa-debug-exit), or a VMI
                guest called Shutdown(v): always odd
  0             the guest wrote 0xfe to port 0x64 (keyboard-controller reset),
                an lguest guest asked for a restart, or a VMI guest called
                Reboot; stderr says 'pvrun: guest requested a reset'. Or an
                lguest guest powered off (SHUTDOWN); stderr says 'pvrun: guest
                powered off: <reason>'. Also --probe-host
  2             bad input: arguments, kernel file, memory size, --cpus (0,
                above 255 or above what KVM allows), --cpuid-mask, command
                line; --personality lguest with a kernel that has no lguest64
                entry or speaks another ABI major version;
                --vmi-rom/--vmi-corrupt without --personality vmi, or the trap
                ROM with more than one vCPU
  4             the guest crashed: triple fault, KVM internal error, failed entry
                (the message names the vCPU: 'vCPU 1: triple fault ...'); or an
                lguest or VMI guest broke the ABI ('guest killed: vCPU 0:
                lguest: ...', '... vmi: ...')
  6             KVM unavailable: device missing, permission denied, not KVM,
                wrong API version or a missing capability
  70            pvrun itself failed (e.g. could not allocate guest memory), or
                stdout could not take --probe-host's report or --help
  124           the guest did not finish within --timeout

Errors are printed as one line, 'pvrun: error: <message>', on stderr (a
stderr that cannot take it changes nothing else). Serial output stdout could
not take (it failed, or stalled with 16 MiB waiting) is dropped and reported
after the run: 'pvrun: serial output: N bytes lost (...)'.

With --stats, the run ends with one more line on stderr (before any error):
  pvrun: stats: exits=N insn_emulation=N halt_exits=N io_exits=N mmio_exits=N
KVM's per-vCPU counters (KVM_GET_STATS_FD) for the whole run, those this KVM
has; or 'pvrun: stats: unavailable: <why>'. Personalities lguest and vmi (trap
ROM) add a line per vCPU with what they served:
  pvrun: stats: vCPU 0: lguest: hypercalls=N async_calls=N traps=N msrs=N interrupts=N
  pvrun: stats: vCPU 0: vmi: traps=N updates=N deferred=N alarms=N

Port 0xf8 is a bench marker: the guest brackets a region of its code with
START/STOP and reads back the emulated instructions and exits it took (see
the README).

Hypercall probe (personality kvm): before building the VM, pvrun runs a tiny
probe VM that makes one KVM hypercall (vmcall, or vmmcall on AMD/Hygon hosts)
under a 100 ms watchdog. If it does not return, the hypercall-based KVM
features pv_unhalt (7), pv_send_ipi (11), pv_sched_yield (13) and
hc_map_gpa_range (16) are cleared from CPUID 0x40000001 EAX. The verdict is
kept per host (kernel release, KVM API version, CPU, KVM device) in
$PVRUN_CACHE_DIR, else $XDG_CACHE_HOME/pvrun, else ~/.cache/pvrun, so later
launches do not pay the probe; --refresh-probe (and --probe-host) probe
again and keep the new verdict. --no-hypercall-probe skips it and clears
the features anyway. --probe-host shows what was found and decided.

KVM feature names for --cpuid-mask: clocksource (0), nop_io_delay (1),
mmu_op (2), clocksource2 (3), async_pf (4), steal_time (5), pv_eoi (6),
pv_unhalt (7), pv_tlb_flush (9), async_pf_vmexit (10), pv_send_ipi (11),
poll_control (12), pv_sched_yield (13), async_pf_int (14),
msi_ext_dest_id (15), hc_map_gpa_range (16), migration_control (17),
clocksource_stable_bit (24); or bit numbers 0..=31.";

/// Boots a PVH kernel ELF in a minimal KVM virtual machine.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "pvrun",
    version,
    about = "Boots a PVH kernel ELF in a minimal KVM virtual machine",
    long_about = "Boots a PVH kernel ELF in a minimal KVM virtual machine: 1 to 255 vCPUs, \
                  and at most what KVM allows: KVM_CAP_MAX_VCPUS (vCPU 0 enters the kernel, the \
                  others wait for INIT-SIPI-SIPI), guest RAM at \
                  physical address 0, a 16550 UART on COM1 (0x3f8) copied to stdout, and \
                  QEMU's isa-debug-exit port at 0xf4 to end the run with a status.",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// The kernel: an x86-64 ELF with a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY);
    /// required unless --probe-host
    #[arg(value_name = "KERNEL", required_unless_present = "probe_host")]
    pub kernel: Option<PathBuf>,

    /// Guest RAM in MiB (16..=16384)
    #[arg(long, value_name = "MiB", default_value_t = crate::layout::MEM_MIB_DEFAULT, allow_negative_numbers = true)]
    pub mem: u64,

    /// Kernel command line (at most 4095 bytes)
    #[arg(long, value_name = "STRING", default_value = "")]
    pub cmdline: String,

    /// Stop the guest after this many seconds (decimals allowed, e.g. 0.5)
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "60",
        value_parser = parse_timeout,
        allow_negative_numbers = true
    )]
    pub timeout: Duration,

    /// The KVM device to use
    #[arg(long, value_name = "PATH", default_value = "/dev/kvm")]
    pub kvm: PathBuf,

    /// At the end, print KVM's exit and emulated-instruction counts on stderr
    #[arg(long)]
    pub stats: bool,

    /// Number of vCPUs: 1..=255, and at most what KVM allows: KVM_CAP_MAX_VCPUS (see
    /// --probe-host); vCPU 0 boots, the others wait for INIT-SIPI-SIPI
    #[arg(long, value_name = "N", default_value_t = 1, allow_negative_numbers = true)]
    pub cpus: u32,

    /// What the guest sees of the hypervisor: kvm (KVM's CPUID leaves
    /// 0x40000000/1, minus cleared bits), none (no hypervisor bit, no
    /// 0x400000xx leaves), lguest (the kernel runs in ring 3 at its lguest64
    /// entry, served lguest's hypercalls; one vCPU; docs/abi/lguest.md), vmi
    /// (a VMI/64 option ROM at 0xC0000; docs/abi/vmi.md), vmware
    /// ("VMwareVMware" and the timing leaf at 0x40000000, VMware's backdoor
    /// on port 0x5658 with a steal clock per vCPU; docs/abi/vmware.md) or
    /// hyperv ("Microsoft Hv" at 0x40000000, the reference TSC page,
    /// frequency MSRs and IPI hypercalls; docs/abi/hyperv.md)
    #[arg(long, value_name = "NAME", value_enum, default_value_t = Personality::Kvm)]
    pub personality: Personality,

    /// KVM feature bits to clear from CPUID 0x40000001 EAX: comma-separated
    /// names (e.g. pv_eoi,steal_time) and/or bit numbers; may be repeated
    #[arg(long, value_name = "LIST", value_parser = parse_cpuid_mask)]
    pub cpuid_mask: Vec<u32>,

    /// Skip the hypercall probe (~100 ms where hypercalls hang) and assume
    /// hypercalls do not return: the hypercall-based KVM features are cleared
    #[arg(long)]
    pub no_hypercall_probe: bool,

    /// Personality vmi: how the ROM's calls are done: trap (an exit to pvrun
    /// per call; one vCPU) or native (the native instructions, inside the ROM)
    #[arg(long, value_name = "FLAVOUR", value_enum)]
    pub vmi_rom: Option<crate::vmi::Flavour>,

    /// Personality vmi: build a defect into the ROM, to test that the guest
    /// refuses it: checksum, major (version 3), signature (no "cVmi"), reloc
    /// (get_reloc answers outside the ROM)
    #[arg(long, value_name = "DEFECT", value_enum)]
    pub vmi_corrupt: Option<crate::vmi::Corruption>,

    /// Show the guest's control characters on stdout as \xNN (all but
    /// newline and tab, and bytes that are not UTF-8), so that it cannot
    /// drive the terminal; off, the guest's bytes pass as they are
    #[arg(long)]
    pub escape_serial: bool,

    /// Run the hypercall probe again even though this host's verdict is kept
    /// (in $PVRUN_CACHE_DIR, else $XDG_CACHE_HOME/pvrun, else ~/.cache/pvrun),
    /// and keep the new one
    #[arg(long, conflicts_with = "no_hypercall_probe")]
    pub refresh_probe: bool,

    /// Print what the host offers (KVM version, capabilities, CPUID, the
    /// hypercall probe) and what pvrun would advertise, then exit 0
    #[arg(long, conflicts_with = "kernel")]
    pub probe_host: bool,
}

/// Parses a `--cpuid-mask` list (see [`parse_feature_mask`]).
pub fn parse_cpuid_mask(s: &str) -> Result<u32, String> {
    parse_feature_mask(s).map_err(|e| e.to_string())
}

/// Parses a timeout in seconds: a positive decimal number.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("the timeout must be greater than 0 (got {s})"));
    }
    Duration::try_from_secs_f64(secs).ok().filter(|d| !d.is_zero() && *d <= TIMEOUT_MAX).ok_or_else(|| {
        format!("the timeout must be greater than 0 and at most {} s (got {s})", TIMEOUT_MAX.as_secs())
    })
}

impl Cli {
    /// The run configuration (validated later, by [`crate::run`]); `--stats`
    /// and `--probe-host` are not part of it (the binary acts on them). The
    /// kernel path is empty with `--probe-host`.
    pub fn into_config(self) -> VmConfig {
        VmConfig {
            kernel: self.kernel.unwrap_or_default(),
            mem_mib: self.mem,
            cmdline: self.cmdline,
            timeout: self.timeout,
            kvm_path: self.kvm,
            cpus: self.cpus,
            personality: self.personality,
            cpuid_mask: self.cpuid_mask.iter().fold(0, |m, b| m | b),
            hypercall_probe: !self.no_hypercall_probe,
            refresh_probe: self.refresh_probe,
            vmi_rom: self.vmi_rom,
            vmi_corrupt: self.vmi_corrupt,
            escape_serial: self.escape_serial,
        }
    }
}

/// The one-line message for a clap error (without clap's "error: " prefix,
/// usage block and hint).
pub fn clap_error_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let text: Vec<&str> = rendered.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
    let text = text.join(" ");
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    format!("{text} (see 'pvrun --help')")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigError;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pvrun").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let c = parse(&["k.elf"]).unwrap().into_config();
        assert_eq!(c, VmConfig::new("k.elf"));
        assert_eq!(c.timeout, Duration::from_secs(60));
        assert!(!parse(&["k.elf"]).unwrap().stats);
        assert!(parse(&["--stats", "k.elf"]).unwrap().stats);
    }

    #[test]
    fn mem_range() {
        for (mem, ok) in [
            ("16", true),
            ("128", true),
            ("16384", true),
            ("0", false),
            ("8", false),
            ("16385", false),
            ("100000000", false),
        ] {
            let config = parse(&["--mem", mem, "k"]).unwrap().into_config();
            assert_eq!(config.validate().is_ok(), ok, "--mem {mem}");
            if !ok {
                assert!(matches!(config.validate(), Err(ConfigError::MemOutOfRange { .. })));
            }
        }
        for bad in ["-1", "abc", "99999999999999999999999"] {
            assert!(parse(&["--mem", bad, "k"]).is_err(), "--mem {bad}");
        }
    }

    #[test]
    fn timeout_accepts_decimals() {
        let c = parse(&["--timeout", "0.5", "k"]).unwrap();
        assert_eq!(c.timeout, Duration::from_millis(500));
        for bad in ["0", "-1", "abc", "nan", "inf", "1e30"] {
            assert!(parse(&["--timeout", bad, "k"]).is_err(), "--timeout {bad}");
        }
    }

    #[test]
    fn all_options() {
        let c = parse(&["--mem", "64", "--cmdline", "a b", "--kvm", "/x", "--timeout", "2", "k"])
            .unwrap()
            .into_config();
        assert_eq!(c.mem_mib, 64);
        assert_eq!(c.cmdline, "a b");
        assert_eq!(c.kvm_path, PathBuf::from("/x"));
        assert_eq!(c.timeout, Duration::from_secs(2));
    }

    #[test]
    fn smp_and_cpuid_options() {
        let c = parse(&["k"]).unwrap().into_config();
        assert_eq!((c.cpus, c.personality, c.cpuid_mask, c.hypercall_probe), (1, Personality::Kvm, 0, true));
        let c = parse(&[
            "--cpus",
            "4",
            "--personality",
            "none",
            "--cpuid-mask",
            "pv_eoi,steal_time",
            "--cpuid-mask",
            "3",
            "--no-hypercall-probe",
            "k",
        ])
        .unwrap()
        .into_config();
        assert_eq!(c.cpus, 4);
        assert_eq!(c.personality, Personality::None);
        assert_eq!(c.cpuid_mask, (1 << 6) | (1 << 5) | (1 << 3));
        assert!(!c.hypercall_probe);
        for (cpus, ok) in [
            ("0", false),
            ("1", true),
            ("8", true),
            ("9", true),
            ("255", true),
            ("256", false),
            ("-1", false),
        ] {
            let parsed = parse(&["--cpus", cpus, "k"]);
            let valid = parsed.is_ok_and(|c| c.into_config().validate().is_ok());
            assert_eq!(valid, ok, "--cpus {cpus}");
        }
        assert!(parse(&["--personality", "xen", "k"]).is_err());
    }

    #[test]
    fn unknown_mask_names_are_usage_errors_listing_the_names() {
        let err = parse(&["--cpuid-mask", "pv_eoi,bogus", "k"]).unwrap_err();
        let line = clap_error_line(&err);
        assert!(line.contains("unknown KVM feature 'bogus'"), "{line}");
        assert!(line.contains("valid names: clocksource, nop_io_delay"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn probe_host_needs_no_kernel() {
        let c = parse(&["--probe-host"]).unwrap();
        assert!(c.probe_host && c.kernel.is_none());
        let c = parse(&["--probe-host", "--kvm", "/x", "--cpuid-mask", "5"]).unwrap();
        assert_eq!(c.into_config().cpuid_mask, 1 << 5);
        assert!(parse(&["--probe-host", "k"]).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn clap_errors_become_one_line() {
        let err = parse(&[]).unwrap_err();
        let line = clap_error_line(&err);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("<KERNEL>"), "{line}");
        let err = parse(&["--mem", "abc", "k"]).unwrap_err();
        let line = clap_error_line(&err);
        assert!(line.starts_with("invalid value 'abc' for '--mem <MiB>'"), "{line}");
    }
}
