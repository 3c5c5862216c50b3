//! The platforms pvkernel boots on, how to launch each, and whether it is present.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::build;
use crate::LabError;

/// How a platform runs the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Launcher {
    /// `qemu-system-x86_64 -accel tcg -M <machine>` (software emulation: bare metal).
    QemuTcg(&'static str),
    /// `qemu-system-x86_64 -accel kvm -M pc` on /dev/kvm.
    QemuKvm,
    /// Our own VMM on /dev/kvm, with `--personality`.
    Pvrun(&'static str),
    /// Real Xen (Debian's hypervisor, under QEMU TCG) with the kernel as dom0.
    Xen(XenDom0),
    /// Anyone's VMM (`pvlab run --vmm`): a command line with `{kernel}` and
    /// `{cmdline}` in it, whose standard output carries the guest's COM1.
    Vmm(&'static str),
}

/// How Xen builds dom0 from the kernel's ELF.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum XenDom0 {
    /// Paravirtualized: ring 3, page tables by hypercall (the PV ELF notes).
    Pv,
    /// Hardware-virtualized, entered at the PVH note (`dom0=pvh`).
    Pvh,
}

/// One row of the matrix.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Platform {
    /// Name used on the command line and in reports.
    pub name: &'static str,
    /// How it runs.
    pub launcher: Launcher,
    /// What the kernel must report on its `# platform:` line (`*`: anything).
    pub expect_platform: &'static str,
    /// The backend the kernel must select there (`*`: any).
    pub expect_backend: &'static str,
    /// vCPUs to give the guest (the kernel is told to expect them).
    pub cpus: u32,
    /// Guest memory, MiB (Xen platforms: the machine's; dom0 gets 64 MiB).
    pub mem_mib: u32,
    /// Extra launcher arguments.
    pub extra_args: &'static [&'static str],
    /// Hold the guest clock to the host's within [`crate::run::MAX_CLOCK_DRIFT`]
    /// (where the kernel prints clock marks). Off where the hypervisor itself runs
    /// under emulation and its timekeeping wanders (Xen on QEMU TCG).
    pub check_clock: bool,
    /// Watchdog for one boot.
    #[serde(skip)]
    pub timeout: Duration,
}

/// QEMU's pc machine without its VMware backdoor (`vmport`, on by default
/// under TCG): bare hardware, as the native platforms mean it.
pub const PC: &str = "pc,vmport=off";
/// QEMU's q35 machine without its VMware backdoor.
pub const Q35: &str = "q35,vmport=off";

/// Every platform, in matrix order.
pub const ALL: &[Platform] = &[
    Platform {
        name: "qemu-tcg-pc",
        launcher: Launcher::QemuTcg(PC),
        expect_platform: "tcg",
        expect_backend: "native",
        cpus: 1,
        mem_mib: GUEST_MEM_MIB,
        extra_args: &[],
        check_clock: true,
        timeout: Duration::from_secs(60),
    },
    Platform {
        name: "qemu-tcg-q35",
        launcher: Launcher::QemuTcg(Q35),
        expect_platform: "tcg",
        expect_backend: "native",
        cpus: 1,
        mem_mib: GUEST_MEM_MIB,
        extra_args: &[],
        check_clock: true,
        timeout: Duration::from_secs(60),
    },
    Platform {
        name: "qemu-tcg-microvm",
        launcher: Launcher::QemuTcg("microvm"),
        expect_platform: "tcg",
        expect_backend: "native",
        cpus: 1,
        mem_mib: GUEST_MEM_MIB,
        extra_args: &[],
        check_clock: true,
        timeout: Duration::from_secs(60),
    },
    Platform {
        name: "qemu-tcg-smp2",
        launcher: Launcher::QemuTcg(PC),
        expect_platform: "tcg",
        expect_backend: "native",
        cpus: 2,
        mem_mib: GUEST_MEM_MIB,
        extra_args: &[],
        check_clock: true,
        timeout: Duration::from_secs(60),
    },
    Platform {
        name: "qemu-tcg-smp4",
        launcher: Launcher::QemuTcg(Q35),
        expect_platform: "tcg",
        expect_backend: "native",
        cpus: 4,
        mem_mib: GUEST_MEM_MIB,
        extra_args: &[],
        check_clock: true,
        timeout: Duration::from_secs(60),
    },
    Platform {
        name: "qemu-tcg-icount",
        launcher: Launcher::QemuTcg("microvm"),
        expect_platform: "tcg",
        expect_backend: "native",
        cpus: 1,
        mem_mib: GUEST_MEM_MIB,
        // Virtual time counts instructions: cycles become deterministic.
        extra_args: &["-icount", "shift=0"],
        check_clock: true,
        timeout: Duration::from_secs(60),
    },
    Platform {
        name: "qemu-tcg-vmport",
        // QEMU's own implementation of VMware's backdoor (`hw/i386/vmport.c`).
        launcher: Launcher::QemuTcg("pc,vmport=on"),
        expect_platform: "tcg",
        expect_backend: "vmware",
        cpus: 2,
        mem_mib: GUEST_MEM_MIB,
        extra_args: &[],
        check_clock: true,
        timeout: Duration::from_secs(60),
    },
    Platform {
        name: "pvrun-kvm",
        launcher: Launcher::Pvrun("kvm"),
        expect_platform: "kvm",
        expect_backend: "kvm",
        cpus: 2,
        mem_mib: GUEST_MEM_MIB,
        extra_args: &[],
        check_clock: true,
        timeout: Duration::from_secs(60),
    },
    Platform {
        name: "pvrun-none",
        launcher: Launcher::Pvrun("none"),
        expect_platform: "bare",
        expect_backend: "native",
        cpus: 2,
        mem_mib: GUEST_MEM_MIB,
        extra_args: &[],
        check_clock: true,
        timeout: Duration::from_secs(60),
    },
    Platform {
        name: "pvrun-lguest",
        launcher: Launcher::Pvrun("lguest"),
        expect_platform: "lguest",
        expect_backend: "lguest",
        cpus: 1,
        mem_mib: GUEST_MEM_MIB,
        extra_args: &[],
        check_clock: true,
        timeout: Duration::from_secs(60),
    },
    Platform {
        name: "pvrun-vmi",
        launcher: Launcher::Pvrun("vmi"),
        expect_platform: "vmi",
        expect_backend: "vmi",
        cpus: 1,
        mem_mib: GUEST_MEM_MIB,
        // The ROM's calls exit to pvrun (its data page is one vCPU's).
        extra_args: &["--vmi-rom", "trap"],
        check_clock: true,
        timeout: Duration::from_secs(60),
    },
    Platform {
        name: "pvrun-vmi-native",
        launcher: Launcher::Pvrun("vmi"),
        expect_platform: "vmi",
        expect_backend: "vmi",
        cpus: 2,
        mem_mib: GUEST_MEM_MIB,
        // The same ROM ABI, its calls the native instructions.
        extra_args: &["--vmi-rom", "native"],
        check_clock: true,
        timeout: Duration::from_secs(60),
    },
    Platform {
        name: "pvrun-vmware",
        launcher: Launcher::Pvrun("vmware"),
        expect_platform: "vmware",
        expect_backend: "vmware",
        cpus: 2,
        mem_mib: GUEST_MEM_MIB,
        extra_args: &[],
        check_clock: true,
        timeout: Duration::from_secs(60),
    },
    Platform {
        name: "pvrun-hyperv",
        launcher: Launcher::Pvrun("hyperv"),
        expect_platform: "hyperv",
        expect_backend: "hyperv",
        cpus: 2,
        mem_mib: GUEST_MEM_MIB,
        extra_args: &[],
        check_clock: true,
        timeout: Duration::from_secs(60),
    },
    // Scale: many vCPUs, sparse APIC IDs (Xen PVH), much memory.
    Platform {
        name: "qemu-tcg-smp16",
        launcher: Launcher::QemuTcg(Q35),
        expect_platform: "tcg",
        expect_backend: "native",
        cpus: 16,
        mem_mib: GUEST_MEM_MIB,
        extra_args: &[],
        check_clock: true,
        timeout: Duration::from_secs(60),
    },
    Platform {
        name: "qemu-tcg-smp64",
        launcher: Launcher::QemuTcg(Q35),
        expect_platform: "tcg",
        expect_backend: "native",
        cpus: 64,
        mem_mib: 512,
        extra_args: &[],
        check_clock: true,
        timeout: Duration::from_secs(120),
    },
    Platform {
        name: "pvrun-smp16",
        launcher: Launcher::Pvrun("kvm"),
        expect_platform: "kvm",
        expect_backend: "kvm",
        cpus: 16,
        mem_mib: GUEST_MEM_MIB,
        extra_args: &[],
        check_clock: true,
        timeout: Duration::from_secs(120),
    },
    Platform {
        name: "pvrun-16g",
        launcher: Launcher::Pvrun("kvm"),
        expect_platform: "kvm",
        expect_backend: "kvm",
        cpus: 2,
        mem_mib: 16384,
        extra_args: &[],
        check_clock: true,
        timeout: Duration::from_secs(60),
    },
    Platform {
        name: "xen-pv",
        launcher: Launcher::Xen(XenDom0::Pv),
        expect_platform: "xen",
        expect_backend: "xen",
        cpus: 2,
        mem_mib: GUEST_MEM_MIB,
        extra_args: &[],
        check_clock: false,
        timeout: Duration::from_secs(120),
    },
    Platform {
        name: "xen-pvh",
        launcher: Launcher::Xen(XenDom0::Pvh),
        expect_platform: "xen",
        expect_backend: "xen",
        cpus: 2,
        mem_mib: GUEST_MEM_MIB,
        extra_args: &[],
        check_clock: false,
        timeout: Duration::from_secs(120),
    },
    Platform {
        name: "xen-pv-smp8",
        launcher: Launcher::Xen(XenDom0::Pv),
        expect_platform: "xen",
        expect_backend: "xen",
        cpus: 8,
        mem_mib: GUEST_MEM_MIB,
        extra_args: &[],
        check_clock: false,
        timeout: Duration::from_secs(180),
    },
    Platform {
        name: "xen-pvh-smp8",
        launcher: Launcher::Xen(XenDom0::Pvh),
        expect_platform: "xen",
        expect_backend: "xen",
        cpus: 8,
        mem_mib: GUEST_MEM_MIB,
        extra_args: &[],
        check_clock: false,
        timeout: Duration::from_secs(180),
    },
    Platform {
        name: "qemu-kvm",
        launcher: Launcher::QemuKvm,
        expect_platform: "kvm",
        expect_backend: "kvm",
        cpus: 2,
        mem_mib: GUEST_MEM_MIB,
        extra_args: &[],
        check_clock: true,
        timeout: Duration::from_secs(120),
    },
];

/// Looks a platform up by name.
pub fn by_name(name: &str) -> Result<&'static Platform, LabError> {
    ALL.iter().find(|p| p.name == name).ok_or_else(|| {
        let names: Vec<_> = ALL.iter().map(|p| p.name).collect();
        LabError::UnknownPlatform(name.to_string(), names.join(", "))
    })
}

/// Guest memory for every boot, in MiB.
pub const GUEST_MEM_MIB: u32 = 128;

/// The Xen hypervisor image (`$PVLAB_XEN`, or what scripts/fetch-xen.sh leaves).
pub fn xen_image() -> std::path::PathBuf {
    std::env::var_os("PVLAB_XEN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| build::repo_root().join(".cache/xen/xen"))
}

/// QEMU binary (`$PVLAB_QEMU` or `qemu-system-x86_64`).
pub fn qemu_binary() -> String {
    std::env::var("PVLAB_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".to_string())
}

fn qemu_present() -> Result<(), String> {
    match Command::new(qemu_binary()).arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(_) => Err(format!("{} --version failed", qemu_binary())),
        Err(e) => Err(format!("{} not found ({e}); run scripts/setup.sh", qemu_binary())),
    }
}

/// Whether the program of a `--vmm` command can be run.
fn vmm_present(template: &str) -> Result<(), String> {
    let words = shell_words::split(template).map_err(|e| format!("cannot split the command: {e}"))?;
    let program = words.first().ok_or("an empty command")?;
    let found = if program.contains('/') {
        Path::new(program).is_file()
    } else {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
    };
    if found {
        Ok(())
    } else {
        Err(format!("{program} not found"))
    }
}

/// Whether the host can give a guest `mib` MiB (touched lazily: what the
/// kernel must grant is address space, at most its RAM and swap).
fn address_space_for(mib: u32) -> Result<(), String> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse().ok())
            .unwrap_or(0)
    };
    let host_mib = (kib("MemTotal:") + kib("SwapTotal:")) / 1024;
    if host_mib == 0 || u64::from(mib) < host_mib {
        Ok(())
    } else {
        Err(format!("a {mib} MiB guest needs more than this host's {host_mib} MiB of RAM and swap"))
    }
}

fn kvm_usable() -> Result<(), String> {
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("/dev/kvm absent".to_string()),
        Err(e) => Err(format!("/dev/kvm not usable: {e}")),
    }
}

impl Platform {
    /// The boot protocol the kernel is entered through there (its `boot:` field).
    pub fn boot_protocol(&self) -> &'static str {
        match self.launcher {
            Launcher::Xen(XenDom0::Pv) => "xen-pv",
            Launcher::Pvrun("lguest") => "lguest",
            _ => "pvh",
        }
    }

    /// Whether the kernel runs deprivileged there (Xen PV, lguest: ring 3,
    /// every privileged op served by the backend).
    pub fn deprivileged(&self) -> bool {
        matches!(self.launcher, Launcher::Xen(XenDom0::Pv) | Launcher::Pvrun("lguest"))
    }

    /// What the kernel's `# op irq.disable` line must say there: the inline
    /// `cli`, Xen PV's `vcpu_info` store, lguest's inline store, or a call
    /// into the VMI ROM.
    pub fn irq_disable_implementation(&self) -> &'static str {
        match self.launcher {
            Launcher::Xen(XenDom0::Pv) => "xen",
            Launcher::Pvrun("lguest") => "lguest-inline",
            Launcher::Pvrun("vmi") => "vmi(call)",
            _ => "native-inline",
        }
    }

    /// `Err(reason)` when this machine cannot run the platform.
    pub fn availability(&self) -> Result<(), String> {
        match self.launcher {
            Launcher::QemuTcg(_) => qemu_present(),
            Launcher::QemuKvm => qemu_present().and_then(|()| kvm_usable()),
            Launcher::Pvrun(_) => kvm_usable().and_then(|()| address_space_for(self.mem_mib)),
            Launcher::Xen(_) => qemu_present().and_then(|()| match xen_image() {
                p if p.is_file() => Ok(()),
                p => Err(format!("no Xen image at {} (run scripts/fetch-xen.sh)", p.display())),
            }),
            Launcher::Vmm(template) => vmm_present(template),
        }
    }

    /// The kernel command line this platform's boot gets from `cmdline`:
    /// `pvkernel.cpus=N` added (how many CPUs the kernel waits for).
    pub fn kernel_cmdline(&self, cmdline: &str) -> String {
        format!("{cmdline} pvkernel.cpus={}", self.cpus).trim().to_string()
    }

    /// The command that boots `kernel` with `cmdline` (made [`Platform::kernel_cmdline`]).
    /// `launcher_args` go to the launcher before the kernel (e.g. pvrun's
    /// `--cpuid-mask`).
    pub fn command(&self, kernel: &Path, cmdline: &str, launcher_args: &[&str]) -> Result<Command, LabError> {
        let mem = self.mem_mib.to_string();
        let cpus = self.cpus.to_string();
        let cmdline = self.kernel_cmdline(cmdline);
        let cmdline = cmdline.as_str();
        let cmd = match self.launcher {
            Launcher::QemuTcg(machine) => {
                let mut c = qemu(kernel, cmdline, machine, "tcg", &mem, &cpus);
                c.args(self.extra_args).args(launcher_args);
                c
            }
            Launcher::QemuKvm => {
                let mut c = qemu(kernel, cmdline, "pc", "kvm", &mem, &cpus);
                c.args(self.extra_args).args(launcher_args);
                c
            }
            Launcher::Xen(dom0) => {
                let mut c = Command::new(qemu_binary());
                c.args(["-M", "q35", "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "2"]).args([
                    "-display",
                    "none",
                    "-no-reboot",
                    "-monitor",
                    "none",
                    "-serial",
                    "stdio",
                ]);
                if dom0 == XenDom0::Pvh {
                    // A PVH dom0 needs an IOMMU.
                    c.args(["-device", "intel-iommu,intremap=on"]);
                }
                let mode = if dom0 == XenDom0::Pvh { " dom0=pvh" } else { "" };
                c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
                    .arg("-kernel")
                    .arg(xen_image())
                    .arg("-append")
                    .arg(format!(
                        "console=com1 com1=115200 loglvl=all guest_loglvl=all{mode} \
                         dom0_max_vcpus={cpus} dom0_mem=64M"
                    ))
                    .arg("-initrd")
                    // Multiboot module string: the path, then dom0's command line.
                    .arg(format!("{} {cmdline}", kernel.display()))
                    .args(self.extra_args)
                    .args(launcher_args);
                c
            }
            Launcher::Vmm(template) => {
                let words = shell_words::split(template)
                    .map_err(|e| LabError::Usage(format!("--vmm '{template}': {e}")))?;
                let kernel = kernel.display().to_string();
                let fill = |w: &String| {
                    w.replace("{kernel}", &kernel)
                        .replace("{cmdline}", cmdline)
                        .replace("{cpus}", &cpus)
                        .replace("{mem}", &mem)
                };
                let Some((program, args)) = words.split_first() else {
                    return Err(LabError::Usage("--vmm: an empty command".into()));
                };
                let mut c = Command::new(fill(program));
                c.args(args.iter().map(fill)).args(self.extra_args).args(launcher_args);
                c
            }
            Launcher::Pvrun(personality) => {
                let mut c = Command::new(build::pvrun()?);
                c.args(["--mem", &mem, "--cpus", &cpus, "--personality", personality])
                    .args(self.extra_args)
                    .arg("--timeout")
                    .arg(self.timeout.as_secs().to_string())
                    .arg("--cmdline")
                    .arg(cmdline)
                    .args(launcher_args)
                    .arg(kernel);
                c
            }
        };
        Ok(cmd)
    }
}

fn qemu(kernel: &Path, cmdline: &str, machine: &str, accel: &str, mem: &str, cpus: &str) -> Command {
    let mut c = Command::new(qemu_binary());
    c.args(["-M", machine, "-accel", accel, "-m", mem, "-smp", cpus])
        .args(["-nodefaults", "-display", "none", "-no-reboot", "-monitor", "none"])
        .args(["-serial", "stdio"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-append")
        .arg(cmdline);
    c
}
