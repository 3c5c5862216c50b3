//! The hypercalls (`docs/abi/hyperv.md` §5): decoding the input value, the
//! two IPI calls, and the result value. Pure: guest memory is read through
//! a closure, and the IPI is returned for the glue to send.

use pvabi::hyperv::hypercall::{self as hc, status};
use pvabi::hyperv::{vpset, IPI_VECTORS};

/// RCX of a call, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Input {
    /// The call code.
    pub code: u16,
    /// The fast form: input in RDX and R8.
    pub fast: bool,
    /// Variable header size, 8-byte units.
    pub varhead: u64,
    /// Rep count.
    pub reps: u64,
    /// Any bit the TLFS reserves (31:27, 63:60) set.
    pub reserved: bool,
}

impl Input {
    /// Decodes RCX.
    pub fn decode(rcx: u64) -> Self {
        Input {
            code: (rcx & hc::CODE_MASK) as u16,
            fast: rcx & hc::FAST != 0,
            varhead: (rcx >> hc::VARHEAD_SHIFT) & hc::VARHEAD_MASK,
            reps: (rcx >> hc::REP_COUNT_SHIFT) & hc::REP_COUNT_MASK,
            reserved: rcx & (0x1f << 27 | 0xf << 60) != 0,
        }
    }
}

/// A call that was answered with success: an IPI of `vector` to the VPs
/// `targets` (existing ones only, lowest first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipi {
    /// The vector.
    pub vector: u8,
    /// The VP indices.
    pub targets: Vec<u32>,
}

/// The result value for RAX: the status in bits 15:0, no reps completed.
pub fn result(status: u16) -> u64 {
    u64::from(status)
}

/// The registers of a call: RCX, RDX, R8.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    /// The input value.
    pub rcx: u64,
    /// Input GPA, or the first 8 bytes of a fast call's input.
    pub rdx: u64,
    /// Output GPA, or the next 8 bytes of a fast call's input.
    pub r8: u64,
}

/// One call from a partition of `vps` VPs. `read(gpa, buf)` fills `buf` from
/// guest memory (false: not RAM). `Ok` is an IPI to send (then the status
/// is success); `Err` the status to return.
pub fn call(regs: Regs, vps: u32, read: &dyn Fn(u64, &mut [u8]) -> bool) -> Result<Ipi, u16> {
    let input = Input::decode(regs.rcx);
    match input.code {
        hc::SEND_IPI | hc::SEND_IPI_EX if input.reserved || input.reps != 0 => {
            Err(status::INVALID_HYPERCALL_INPUT)
        }
        hc::SEND_IPI => {
            if input.varhead != 0 {
                return Err(status::INVALID_HYPERCALL_INPUT);
            }
            let (word, mask) = if input.fast {
                (regs.rdx, regs.r8)
            } else {
                let mut buf = [0u8; 16];
                fetch(regs.rdx, &mut buf, read)?;
                (u64_at(&buf, 0), u64_at(&buf, 8))
            };
            let vector = checked_vector(word)?;
            let targets = (0..64.min(vps)).filter(|vp| mask & (1 << vp) != 0).collect();
            Ok(Ipi { vector, targets })
        }
        hc::SEND_IPI_EX => {
            // The processor set does not fit two registers: memory only.
            if input.fast {
                return Err(status::INVALID_HYPERCALL_INPUT);
            }
            let mut head = [0u8; 24];
            fetch(regs.rdx, &mut head, read)?;
            let vector = checked_vector(u64_at(&head, 0))?;
            let (format, valid) = (u64_at(&head, 8), u64_at(&head, 16));
            let targets = match format {
                vpset::FORMAT_ALL if input.varhead == 0 => (0..vps).collect(),
                vpset::FORMAT_SPARSE_4K if input.varhead == u64::from(valid.count_ones()) => {
                    let banks = valid.count_ones() as usize;
                    let mut buf = vec![0u8; 24 + 8 * banks];
                    fetch(regs.rdx, &mut buf, read)?;
                    let mut targets = Vec::new();
                    for (i, bank) in (0..64u32).filter(|b| valid & (1 << b) != 0).enumerate() {
                        let bits = u64_at(&buf, 24 + 8 * i);
                        targets.extend((0..64).filter(|v| bits & (1 << v) != 0).map(|v| bank * 64 + v));
                    }
                    targets.retain(|&vp| vp < vps);
                    targets
                }
                _ => return Err(status::INVALID_HYPERCALL_INPUT),
            };
            Ok(Ipi { vector, targets })
        }
        _ => Err(status::INVALID_HYPERCALL_CODE),
    }
}

/// The vector word of an IPI input: the vector in bits 31:0 (0x10..=0xff),
/// the reserved half 0.
fn checked_vector(word: u64) -> Result<u8, u16> {
    let vector = word as u32;
    if word >> 32 != 0 || !IPI_VECTORS.contains(&vector) {
        return Err(status::INVALID_PARAMETER);
    }
    Ok(vector as u8)
}

/// Reads `buf.len()` bytes of input at `gpa`: 8-byte aligned, within one
/// page (TLFS, "Hypercall inputs and outputs"), in RAM.
fn fetch(gpa: u64, buf: &mut [u8], read: &dyn Fn(u64, &mut [u8]) -> bool) -> Result<(), u16> {
    if !gpa.is_multiple_of(8) || (gpa & 0xfff) as usize + buf.len() > 4096 {
        return Err(status::INVALID_ALIGNMENT);
    }
    if !read(gpa, buf) {
        return Err(status::INVALID_PARAMETER);
    }
    Ok(())
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guest memory of one page at 0x1000 holding `bytes`.
    fn memory(bytes: Vec<u8>) -> impl Fn(u64, &mut [u8]) -> bool {
        move |gpa, buf| {
            let Some(at) = gpa.checked_sub(0x1000).map(|a| a as usize) else { return false };
            match bytes.get(at..at + buf.len()) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            }
        }
    }

    fn words(w: &[u64]) -> Vec<u8> {
        let mut v: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        v.resize(4096, 0);
        v
    }

    const FAST: u64 = hc::FAST;

    #[test]
    fn a_fast_ipi_names_vps_by_mask() {
        let none = memory(Vec::new());
        let regs = Regs { rcx: u64::from(hc::SEND_IPI) | FAST, rdx: 0xf0, r8: 0b1011 };
        assert_eq!(call(regs, 4, &none), Ok(Ipi { vector: 0xf0, targets: vec![0, 1, 3] }));
        // VPs that do not exist are left out.
        assert_eq!(call(regs, 2, &none), Ok(Ipi { vector: 0xf0, targets: vec![0, 1] }));
    }

    #[test]
    fn a_slow_ipi_reads_its_input_from_memory() {
        let mem = memory(words(&[0x40, 0b110]));
        let regs = Regs { rcx: u64::from(hc::SEND_IPI), rdx: 0x1000, r8: 0 };
        assert_eq!(call(regs, 8, &mem), Ok(Ipi { vector: 0x40, targets: vec![1, 2] }));
        // Misaligned, crossing a page, outside RAM.
        assert_eq!(call(Regs { rdx: 0x1004, ..regs }, 8, &mem), Err(status::INVALID_ALIGNMENT));
        assert_eq!(call(Regs { rdx: 0x1ff8, ..regs }, 8, &mem), Err(status::INVALID_ALIGNMENT));
        assert_eq!(call(Regs { rdx: 0x8000, ..regs }, 8, &mem), Err(status::INVALID_PARAMETER));
    }

    #[test]
    fn bad_vectors_and_inputs_are_refused() {
        let none = memory(Vec::new());
        let fast = |rdx| Regs { rcx: u64::from(hc::SEND_IPI) | FAST, rdx, r8: 1 };
        for bad in [0x0f, 0x100, 0x1_0000_0040] {
            assert_eq!(call(fast(bad), 4, &none), Err(status::INVALID_PARAMETER), "{bad:#x}");
        }
        let with = |extra: u64| Regs { rcx: fast(0x40).rcx | extra, ..fast(0x40) };
        assert_eq!(call(with(1 << 32), 4, &none), Err(status::INVALID_HYPERCALL_INPUT), "a rep count");
        assert_eq!(call(with(1 << 17), 4, &none), Err(status::INVALID_HYPERCALL_INPUT), "a header");
        assert_eq!(call(with(1 << 30), 4, &none), Err(status::INVALID_HYPERCALL_INPUT), "reserved");
        let other = Regs { rcx: 0x0002, rdx: 0, r8: 0 };
        assert_eq!(call(other, 4, &none), Err(status::INVALID_HYPERCALL_CODE));
    }

    #[test]
    fn the_ex_call_takes_sparse_banks_and_all() {
        // Banks 0 and 2: VP 1, and VPs 128 and 130.
        let mem = memory(words(&[0x41, vpset::FORMAT_SPARSE_4K, 0b101, 0b10, 0b101]));
        let regs = Regs { rcx: u64::from(hc::SEND_IPI_EX) | 2 << hc::VARHEAD_SHIFT, rdx: 0x1000, r8: 0 };
        assert_eq!(call(regs, 255, &mem), Ok(Ipi { vector: 0x41, targets: vec![1, 128, 130] }));
        assert_eq!(call(regs, 129, &mem), Ok(Ipi { vector: 0x41, targets: vec![1, 128] }));
        // The header size must count the banks.
        let short = Regs { rcx: u64::from(hc::SEND_IPI_EX) | 1 << hc::VARHEAD_SHIFT, ..regs };
        assert_eq!(call(short, 255, &mem), Err(status::INVALID_HYPERCALL_INPUT));
        let all = memory(words(&[0x42, vpset::FORMAT_ALL, 0]));
        let regs = Regs { rcx: u64::from(hc::SEND_IPI_EX), rdx: 0x1000, r8: 0 };
        assert_eq!(call(regs, 3, &all), Ok(Ipi { vector: 0x42, targets: vec![0, 1, 2] }));
        let fast = Regs { rcx: regs.rcx | FAST, ..regs };
        assert_eq!(call(fast, 3, &all), Err(status::INVALID_HYPERCALL_INPUT));
    }
}
