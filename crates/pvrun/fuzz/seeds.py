#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (crates/pvrun/fuzz/corpus/<target>/): a few
hand-made inputs per target, in the byte layout each pvrun::fuzzing function reads."""
import struct, os
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
def put(target, name, data):
    d = os.path.join(root, target); os.makedirs(d, exist_ok=True)
    open(os.path.join(d, name), "wb").write(data)

# exit_handler: records (kind, vcpu, ...): 0 out(port,size,count,data) 1 in(port,size,count) 2 mmio read(addr,len) 3 mmio write(addr,len,data) 4 counters(n, u64...)
def out(vcpu, port, size, count, data): return bytes([0, vcpu]) + struct.pack("<HBB", port, size, count - 1) + data
def inn(vcpu, port, size, count): return bytes([1, vcpu]) + struct.pack("<HBB", port, size, count - 1)
put("exit_handler", "serial-line", out(0, 0x3f8, 1, 6, b"hello\n") + out(1, 0x3f8, 1, 3, b"ab\n"))
put("exit_handler", "lsr-rep-insb", inn(0, 0x3fd, 1, 16) + inn(0, 0x3f8, 2, 4))
put("exit_handler", "bench-protocol", bytes([4, 0, 4]) + struct.pack("<4Q", 10, 20, 30, 40) +
    out(0, 0xf8, 4, 1, struct.pack("<I", 0x4d425650 ^ 0x4d425650)) + out(0, 0xf8, 4, 1, struct.pack("<I", 1)) +
    out(0, 0xf8, 4, 1, struct.pack("<I", 2)) + inn(0, 0xf8, 4, 6))
put("exit_handler", "debug-exit-and-reset", out(2, 0xf4, 4, 1, b"\x03\0\0\0") + out(3, 0x64, 1, 2, b"\x01\xfe"))
put("exit_handler", "mmio", bytes([2, 0]) + struct.pack("<QB", 0xfed00000, 4) + bytes([3, 1]) + struct.pack("<QB", 0x1_0000_0000, 8) + b"\xff" * 8)

# loader: ELF64 images like the tests build.
def note(name, typ, desc):
    n = struct.pack("<III", len(name), len(desc), typ) + name
    n += b"\0" * (-len(n) % 4) + desc
    return n + b"\0" * (-len(n) % 4)
def elf(code, notes, paddr=0x100000, ptype_note=True):
    phnum = 1 + (1 if notes is not None else 0)
    eh = b"\x7fELF" + bytes([2, 1, 1]) + b"\0" * 9
    eh += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, paddr, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    f = bytearray(eh)
    f += struct.pack("<IIQQQQQQ", 1, 5, 0x1000, paddr, paddr, len(code), len(code), 0x1000)
    if notes is not None:
        off = 64 + 56 * phnum
        f += struct.pack("<IIQQQQQQ", 4, 4, off, 0, 0, len(notes), len(notes), 4)
        f += notes
    f += b"\0" * (0x1000 - len(f))
    return bytes(f) + code
exit0 = bytes([0xb0, 0, 0xe6, 0xf4, 0xf4])
put("loader", "pvh-note32", elf(exit0, note(b"Xen\0", 18, struct.pack("<I", 0x100000))))
put("loader", "pvh-note64", elf(exit0, note(b"Xen\0", 18, struct.pack("<Q", 0x100000))))
put("loader", "lguest-notes", elf(exit0, note(b"Lguest\0", 1, struct.pack("<Q", 0x100000)) + note(b"Lguest\0", 2, struct.pack("<II", 1, 0))))
put("loader", "two-notes", elf(exit0, note(b"Xen\0", 18, struct.pack("<I", 0x100000)) + note(b"Xen\0", 18, struct.pack("<I", 0xfffffff0))))
put("loader", "no-note", elf(exit0, None))
put("loader", "truncated", elf(exit0, note(b"Xen\0", 18, struct.pack("<I", 0x100000)))[:100])

# boot_info: u64 memory size, then the command line.
put("boot_info", "128m", struct.pack("<Q", 128 << 20) + b"pvkernel.tests=pv. console=ttyS0")
put("boot_info", "16g", struct.pack("<Q", 16 << 30) + b"x" * 200)
put("boot_info", "long", struct.pack("<Q", 64 << 20) + b"y" * 4095)

# bench_marker: n counters, u64 served, then ops (bit 0: read; bits 4..7: length).
def w(v): return bytes([0x40]) + struct.pack("<I", v)
r = bytes([0x41])
put("bench_marker", "reset-start-stop", bytes([4]) + struct.pack("<4QQ", 1, 2, 3, 4, 0) + w(0) + r + w(1) + w(2) + r * 6)
put("bench_marker", "garbage", bytes([1]) + struct.pack("<QQ", 7, 0) + bytes([0x20, 1, 2, 0x81, 0x11]) + w(2) + w(9))

# vmi_calls: count, n slots(u8 -> n*8 bytes), page, entry, cr3, rdi, rsi, rdx, rcx, call (u16)
def vmi(count, slots, page, entry, cr3, regs, call):
    return bytes([count, len(slots) // 8]) + slots + struct.pack("<QQQ4QH", page, entry, cr3, *regs, call)
put("vmi_calls", "cpuid-and-irq", vmi(0, b"", 0, 0, 0, (1, 0, 0, 0), 0) + vmi(0, b"", 0, 0, 0, (0, 0, 0, 0), 30) + vmi(0, b"", 0, 0, 0, (0x200, 0, 0, 0), 32))
put("vmi_calls", "set-pxe", vmi(0, b"", 0x1000, 0x2003, 0x1000, (0x5003, 0x1008, 1, 0), 38))
put("vmi_calls", "queue", vmi(2, struct.pack("<8Q", 0x5003, 0x1000, 1, 0, 0x6003, 0x1008, 1, 0), 0x1000, 0x2003, 0x1000, (0, 0, 0, 0), 73))
put("vmi_calls", "alarm-and-power", vmi(0, b"", 0, 0, 0, (0x2400000, 1 << 40, 0, 1 << 39), 68) + vmi(0, b"", 0, 0, 0, (0, 0, 0, 0), 69) + vmi(0, b"", 0, 0, 0, (5, 0, 0, 0), 37))

# lguest_calls: offset (u16), n (u8), bytes, call (u8), rbx, rcx, rdx, rsi
def lg(at, data, call, *a):
    a = list(a) + [0] * (4 - len(a))
    return struct.pack("<HB", at, len(data)) + data + bytes([call]) + struct.pack("<4Q", *a)
put("lguest_calls", "flush-and-cpuid", lg(0, b"", 0) + lg(0, b"", 22, 1, 0))
put("lguest_calls", "ring", lg(40, b"\0", 0) + lg(0, b"", 0))
put("lguest_calls", "set-pte", lg(0, b"", 14, 0x1000, 0x400000, 0x5003) + lg(0, b"", 4, 0x1000))
