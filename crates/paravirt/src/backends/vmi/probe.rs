//! Detection: VMI announces itself by its option ROM, not by CPUID. As
//! Linux's `probe_vmi_rom` did, scan 0xC0000–0xDFFFF in 2 KiB steps and take
//! the first ROM that passes; here "passes" means the header checks
//! (`pvabi::vmi::check_rom`), an answer from `get_reloc` this backend can use
//! for every call it maps, and `vmi_init` returning 0 — in that order, so a
//! broken ROM is never activated. What was refused, and why, is kept for the
//! kernel to report ([`refusal`]).

use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use super::abi::{self, call, reloc, RomError};
use crate::select::{CpuidSource, Note, Probe};

/// Priority of VMI when its ROM is found: above KVM's, as the ROM is the more
/// specific announcement (a VMI hypervisor may run on KVM).
pub const PRIORITY: u32 = 40;

/// Every call the backend maps, checked at the probe.
pub const USED: &[u64] = &[
    call::CPUID,
    call::SET_GDT,
    call::SET_IDT,
    call::SET_TR,
    call::SET_CR0,
    call::SET_CR3,
    call::SET_CR4,
    call::GET_CR0,
    call::GET_CR2,
    call::GET_CR3,
    call::GET_CR4,
    call::WBINVD,
    call::ENABLE_INTERRUPTS,
    call::DISABLE_INTERRUPTS,
    call::GET_INTERRUPT_MASK,
    call::SET_INTERRUPT_MASK,
    call::IRET,
    call::HALT,
    call::REBOOT,
    call::SHUTDOWN,
    call::SET_PXE,
    call::ALLOCATE_PAGE,
    call::RELEASE_PAGE,
    call::INVAL_PAGE,
    call::FLUSH_TLB,
    call::IO_DELAY,
    call::GET_CYCLE_FREQUENCY,
    call::GET_CYCLE_COUNTER,
    call::SET_ALARM,
    call::GET_WALLCLOCK_TIME,
    call::SET_LAZY_MODE,
];

/// Calls that may do nothing (a NOP answer); any other must act or answer.
const MAY_BE_NOP: &[u64] =
    &[call::WBINVD, call::IO_DELAY, call::ALLOCATE_PAGE, call::RELEASE_PAGE, call::SET_LAZY_MODE];

const UNPROBED: u8 = 0;
const FOUND: u8 = 1;
const ABSENT: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNPROBED);
static ROM_BASE: AtomicU64 = AtomicU64::new(0);
static EIP: [AtomicU64; call::COUNT as usize] = [const { AtomicU64::new(0) }; call::COUNT as usize];
static KIND: [AtomicU8; call::COUNT as usize] = [const { AtomicU8::new(reloc::NONE) }; call::COUNT as usize];

/// The refusal note: written once, by the probe, before `STATE` is published.
struct RefusalCell(UnsafeCell<Option<Note>>);
// SAFETY: written only by `scan`, which runs once on the boot CPU before any
// reader (readers first load `STATE` with Acquire, after `scan` stored it
// with Release).
unsafe impl Sync for RefusalCell {}
static REFUSAL: RefusalCell = RefusalCell(UnsafeCell::new(None));

/// Priority when a usable VMI ROM is in the window (probed once).
pub fn detect(_probe: &Probe, _src: &dyn CpuidSource) -> Option<u32> {
    if STATE.load(Ordering::Acquire) == UNPROBED {
        scan();
    }
    (STATE.load(Ordering::Acquire) == FOUND).then_some(PRIORITY)
}

/// What the probe refused, and why.
pub fn refusal() -> Option<Note> {
    if STATE.load(Ordering::Acquire) == UNPROBED {
        return None;
    }
    // SAFETY: published before STATE (see `RefusalCell`); never written again.
    unsafe { *REFUSAL.0.get() }
}

/// Where the ROM is (after a successful probe).
pub fn rom_base() -> u64 {
    ROM_BASE.load(Ordering::Relaxed)
}

/// What `get_reloc` answered for `number` (NONE for a call never asked).
pub fn relocation(number: u64) -> abi::Relocation {
    match (EIP.get(number as usize), KIND.get(number as usize)) {
        (Some(eip), Some(kind)) => {
            abi::Relocation { eip: eip.load(Ordering::Relaxed), kind: kind.load(Ordering::Relaxed) }
        }
        _ => abi::Relocation { eip: 0, kind: reloc::NONE },
    }
}

/// `get_reloc`'s answer, two words in RAX and RDX.
#[repr(C)]
struct Answer {
    eip: u64,
    kind: u64,
}

fn scan() {
    // A hosted build (the unit tests) has no option-ROM window to read.
    if cfg!(not(target_os = "none")) {
        STATE.store(ABSENT, Ordering::Release);
        return;
    }
    let (mut refused, mut other) = (None, None);
    let mut base = abi::ROM_WINDOW_START;
    let mut state = ABSENT;
    while base < abi::ROM_WINDOW_END {
        // SAFETY: a kernel entered on (virtual) hardware keeps the first MiB
        // mapped at its physical address (`BootFlow::Hardware`'s contract);
        // the option-ROM window is readable memory, ROM or RAM.
        let window =
            unsafe { core::slice::from_raw_parts(base as *const u8, (abi::ROM_WINDOW_END - base) as usize) };
        let outcome =
            abi::check_rom(window).map_err(Refused::Header).and_then(|info| activate(base, info.len));
        match outcome {
            Ok(()) => {
                ROM_BASE.store(base, Ordering::Relaxed);
                state = FOUND;
                break;
            }
            Err(Refused::Header(RomError::NotARom)) => {}
            // Another device's ROM (QEMU's boot ROM, a VGA BIOS): noted only if
            // no VMI ROM was refused.
            Err(why @ Refused::Header(RomError::NoVmiSignature)) => {
                other.get_or_insert((base, why));
            }
            Err(why) => {
                forget_answers();
                refused.get_or_insert((base, why));
            }
        }
        base += abi::ROM_ALIGN;
    }
    if state != FOUND {
        if let Some((at, why)) = refused.or(other) {
            let mut note = Note::new();
            let _ = match why {
                Refused::Header(RomError::NoVmiSignature) => {
                    write!(note, "option ROM at {at:#x} is not a VMI ROM: no \"cVmi\" signature")
                }
                _ => write!(note, "option ROM at {at:#x} refused: {why}"),
            };
            // SAFETY: the one write, before STATE is published (see `RefusalCell`).
            unsafe { *REFUSAL.0.get() = Some(note) };
        }
    }
    STATE.store(state, Ordering::Release);
}

/// Why a ROM was refused: its header, or an answer of its own.
#[derive(Clone, Copy, Debug)]
enum Refused {
    Header(RomError),
    BadType { number: u64, kind: u64 },
    OutsideRom { number: u64, eip: u64 },
    OutOfReach { number: u64, eip: u64 },
    JumpForCall { number: u64 },
    IretNotAJump { kind: u8 },
    NopMustAct { number: u64 },
    InitFailed(u64),
}

impl core::fmt::Display for Refused {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Refused::Header(e) => write!(f, "{e}"),
            Refused::BadType { number, kind } => write!(f, "get_reloc({number}) answered type {kind}"),
            Refused::OutsideRom { number, eip } => {
                write!(f, "get_reloc({number}) answered {eip:#x}, outside the ROM")
            }
            Refused::OutOfReach { number, eip } => {
                write!(f, "get_reloc({number}) answered {eip:#x}, beyond a rel32 call from the kernel")
            }
            Refused::JumpForCall { number } => {
                write!(f, "get_reloc({number}) answered a jump; only IRET is one")
            }
            Refused::IretNotAJump { kind } => write!(f, "get_reloc(IRET) answered type {kind}, not a jump"),
            Refused::NopMustAct { number } => {
                write!(f, "get_reloc({number}) answered NOP for a call that must act")
            }
            Refused::InitFailed(r) => write!(f, "vmi_init returned {r:#x}"),
        }
    }
}

/// Asks `get_reloc` about every call the backend maps, keeps the answers if
/// all are usable, then runs `vmi_init`.
fn activate(base: u64, len: usize) -> Result<(), Refused> {
    let rom = base..base + len as u64;
    // SAFETY: `check_rom` accepted the header, so `get_reloc` is the ROM's
    // entry point, a System V function of one argument answering two words.
    let get_reloc: extern "C" fn(u64) -> Answer =
        unsafe { core::mem::transmute(base + abi::header::GET_RELOC as u64) };
    let here = activate as *const () as u64;
    for &number in USED {
        let Answer { eip, kind } = get_reloc(number);
        let kind = match u8::try_from(kind) {
            Ok(k @ (reloc::NONE | reloc::CALL_REL | reloc::JUMP_REL | reloc::NOP)) => k,
            _ => return Err(Refused::BadType { number, kind }),
        };
        if matches!(kind, reloc::CALL_REL | reloc::JUMP_REL) {
            if !rom.contains(&eip) {
                return Err(Refused::OutsideRom { number, eip });
            }
            if eip.abs_diff(here) >= 1 << 31 {
                return Err(Refused::OutOfReach { number, eip });
            }
        }
        match (number, kind) {
            (call::IRET, reloc::NONE | reloc::JUMP_REL) => {}
            (call::IRET, k) => return Err(Refused::IretNotAJump { kind: k }),
            (n, reloc::JUMP_REL) => return Err(Refused::JumpForCall { number: n }),
            (n, reloc::NOP) if !MAY_BE_NOP.contains(&n) => return Err(Refused::NopMustAct { number: n }),
            _ => {}
        }
        EIP[number as usize].store(if kind == reloc::NOP { 0 } else { eip }, Ordering::Relaxed);
        KIND[number as usize].store(kind, Ordering::Relaxed);
    }
    // SAFETY: as `get_reloc`: the header's other entry point, no arguments,
    // 0 in RAX when the ROM is ready.
    let vmi_init: extern "C" fn() -> u64 =
        unsafe { core::mem::transmute(base + abi::header::VMI_INIT as u64) };
    match vmi_init() {
        0 => Ok(()),
        r => Err(Refused::InitFailed(r)),
    }
}

/// Drops the answers of a refused ROM.
fn forget_answers() {
    for (eip, kind) in EIP.iter().zip(&KIND) {
        eip.store(0, Ordering::Relaxed);
        kind.store(reloc::NONE, Ordering::Relaxed);
    }
}
