//! Which hypervisor (if any) we run on, from the CPUID hypervisor leaf.

use paravirt::cpu;

/// What we found.
pub struct Platform {
    /// Short name: kvm, tcg, xen, hyperv, vmware, lguest, vmi, bare, or `unknown`.
    pub name: &'static str,
    /// The raw 12-byte signature at 0x40000000 (zeros when none).
    pub signature: [u8; 12],
}

impl Platform {
    /// The signature as text, up to the first byte that is not printable.
    pub fn signature_str(&self) -> &str {
        // "Microsoft Hv" has a space; NUL padding ends the others.
        let end = self.signature.iter().position(|&b| !(b.is_ascii_graphic() || b == b' ')).unwrap_or(12);
        core::str::from_utf8(&self.signature[..end]).unwrap_or("")
    }
}

/// Reads the hypervisor signature; an lguest guest knows its host from the boot
/// flow and a VMI guest from its ROM (neither ABI has a CPUID signature).
pub fn detect(flow: paravirt::BootFlow, backend: &str) -> Platform {
    if let paravirt::BootFlow::Lguest { .. } = flow {
        return Platform { name: "lguest", signature: [0; 12] };
    }
    if backend == "vmi" {
        return Platform { name: "vmi", signature: [0; 12] };
    }
    let hypervisor_bit = cpu::cpuid(1, 0).ecx & (1 << 31) != 0;
    if !hypervisor_bit {
        return Platform { name: "bare", signature: [0; 12] };
    }
    let l = cpu::cpuid(0x4000_0000, 0);
    let mut signature = [0u8; 12];
    signature[..4].copy_from_slice(&l.ebx.to_le_bytes());
    signature[4..8].copy_from_slice(&l.ecx.to_le_bytes());
    signature[8..].copy_from_slice(&l.edx.to_le_bytes());
    let name = match &signature {
        b"KVMKVMKVM\0\0\0" => "kvm",
        b"TCGTCGTCGTCG" => "tcg",
        b"XenVMMXenVMM" => "xen",
        b"Microsoft Hv" => "hyperv",
        b"VMwareVMware" => "vmware",
        [0, ..] => "bare",
        _ => "unknown",
    };
    Platform { name, signature }
}
