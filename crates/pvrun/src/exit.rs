//! The middle layer of the exit loop: a pure mapping from one `VcpuExit` to
//! what should happen next. It touches only the devices, never the vCPU, so
//! it can be tested with made-up exits.

use kvm_ioctls::VcpuExit;

use crate::devices::Devices;
use crate::layout::{BENCH_MARKER_PORT, DEBUG_EXIT_PORT, KBD_CONTROLLER_PORT, KBD_RESET_COMMAND};

/// What the run loop should do after an exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitAction {
    /// Enter the guest again.
    Continue,
    /// The guest wrote this value to the debug-exit port: stop.
    DebugExit(u32),
    /// The guest pulsed the keyboard controller's reset line (0xfe to port
    /// 0x64): stop, as a reset.
    Reset,
    /// KVM_EXIT_SHUTDOWN (triple fault): stop, the guest crashed.
    Shutdown,
    /// KVM_EXIT_INTERNAL_ERROR: stop; the details are in `kvm_run`.
    InternalError,
    /// KVM_EXIT_FAIL_ENTRY: stop.
    FailEntry {
        /// `hardware_entry_failure_reason`.
        reason: u64,
        /// The host CPU.
        cpu: u32,
    },
    /// An exit pvrun does not expect: stop.
    Unexpected(String),
}

/// The value of an `out` to the debug-exit port: the first element's bytes
/// little-endian (1, 2 or 4 of them; the first of a string `outs`).
pub fn debug_exit_value(element: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    let n = element.len().min(4);
    bytes[..n].copy_from_slice(&element[..n]);
    u32::from_le_bytes(bytes)
}

/// Maps one exit of vCPU `vcpu` to an action, serving port and MMIO
/// accesses on `devices`, each port access one element of `data.len()`
/// bytes. See [`handle_exit_sized`].
pub fn handle_exit(exit: VcpuExit<'_>, vcpu: u8, devices: &mut Devices) -> ExitAction {
    handle_exit_sized(exit, vcpu, None, devices)
}

/// Maps one exit of vCPU `vcpu` to an action, serving port and MMIO
/// accesses on `devices`. Runs before the guest is re-entered, so the bench
/// marker's snapshots are taken at the exit of the marker's `out` itself.
///
/// A port exit carries `count` elements of `io_size` bytes (KVM batches a
/// string `ins`/`outs` into one exit): every element goes to the same port,
/// its bytes to that port and the ones above it, as the CPU would do them one
/// by one. `None` (or a size that does not divide the data): one element.
pub fn handle_exit_sized(
    exit: VcpuExit<'_>,
    vcpu: u8,
    io_size: Option<usize>,
    devices: &mut Devices,
) -> ExitAction {
    let size = |len: usize| io_size.filter(|&s| s > 0 && len.is_multiple_of(s)).unwrap_or(len.max(1));
    match exit {
        VcpuExit::IoOut(DEBUG_EXIT_PORT, data) => {
            ExitAction::DebugExit(debug_exit_value(&data[..size(data.len()).min(data.len())]))
        }
        VcpuExit::IoOut(KBD_CONTROLLER_PORT, data)
            if data.chunks(size(data.len())).any(|e| e.first() == Some(&KBD_RESET_COMMAND)) =>
        {
            ExitAction::Reset
        }
        VcpuExit::IoOut(BENCH_MARKER_PORT, data) => {
            for element in data.chunks(size(data.len())) {
                devices.bench_write(vcpu, element);
            }
            ExitAction::Continue
        }
        VcpuExit::IoIn(BENCH_MARKER_PORT, data) => {
            let n = size(data.len());
            for element in data.chunks_mut(n) {
                devices.bench_read(vcpu, element);
            }
            ExitAction::Continue
        }
        VcpuExit::IoOut(port, data) => {
            for element in data.chunks(size(data.len())) {
                devices.pio_write(vcpu, port, element);
            }
            ExitAction::Continue
        }
        VcpuExit::IoIn(port, data) => {
            let n = size(data.len());
            for element in data.chunks_mut(n) {
                devices.pio_read(vcpu, port, element);
            }
            ExitAction::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            devices.mmio_read(addr, data);
            ExitAction::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            devices.mmio_write(addr, data);
            ExitAction::Continue
        }
        // A signal arrived while in the guest; the run loop checks why.
        VcpuExit::Intr => ExitAction::Continue,
        VcpuExit::Shutdown => ExitAction::Shutdown,
        VcpuExit::InternalError => ExitAction::InternalError,
        VcpuExit::FailEntry(reason, cpu) => ExitAction::FailEntry { reason, cpu },
        VcpuExit::Hlt => {
            ExitAction::Unexpected("KVM_EXIT_HLT (the in-kernel irqchip should have handled HLT)".to_owned())
        }
        VcpuExit::SystemEvent(type_, data) => {
            ExitAction::Unexpected(format!("KVM_EXIT_SYSTEM_EVENT type {type_} data {data:x?}"))
        }
        VcpuExit::MemoryFault { flags, gpa, size } => ExitAction::Unexpected(format!(
            "KVM_EXIT_MEMORY_FAULT at guest address {gpa:#x} size {size:#x} flags {flags:#x}"
        )),
        VcpuExit::Hypercall(h) => ExitAction::Unexpected(format!("KVM_EXIT_HYPERCALL nr {:#x}", h.nr)),
        VcpuExit::Unsupported(reason) => {
            ExitAction::Unexpected(format!("exit reason {reason} unknown to kvm-ioctls"))
        }
        other => ExitAction::Unexpected(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::tests::SharedBuf;

    #[test]
    fn serial_write_reaches_the_output() {
        let buf = SharedBuf::default();
        let mut devices = Devices::new(Box::new(buf.clone()));
        for b in b"hi\n" {
            assert_eq!(handle_exit(VcpuExit::IoOut(0x3f8, &[*b]), 0, &mut devices), ExitAction::Continue);
        }
        devices.settle();
        assert_eq!(buf.contents(), b"hi\n");
    }

    #[test]
    fn debug_exit_port_stops_with_the_value() {
        let mut devices = Devices::new(Box::new(std::io::sink()));
        assert_eq!(handle_exit(VcpuExit::IoOut(0xf4, &[0]), 0, &mut devices), ExitAction::DebugExit(0));
        assert_eq!(handle_exit(VcpuExit::IoOut(0xf4, &[3]), 0, &mut devices), ExitAction::DebugExit(3));
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0xf4, &[0x34, 0x12]), 0, &mut devices),
            ExitAction::DebugExit(0x1234)
        );
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0xf4, &[1, 0, 0, 0x80]), 0, &mut devices),
            ExitAction::DebugExit(0x8000_0001)
        );
        // Reading the port is not an exit.
        let mut data = [0u8];
        assert_eq!(handle_exit(VcpuExit::IoIn(0xf4, &mut data), 0, &mut devices), ExitAction::Continue);
        assert_eq!(data, [0xff]);
    }

    #[test]
    fn keyboard_controller_reset_stops_the_run() {
        let mut devices = Devices::new(Box::new(std::io::sink()));
        assert_eq!(handle_exit(VcpuExit::IoOut(0x64, &[0xfe]), 1, &mut devices), ExitAction::Reset);
        // A 16-bit write puts its low byte on port 0x64.
        assert_eq!(handle_exit(VcpuExit::IoOut(0x64, &[0xfe, 0]), 0, &mut devices), ExitAction::Reset);
        // Other commands, reads, and 0xfe elsewhere are ignored.
        for (port, value) in [(0x64, 0xfd), (0x64, 0xff), (0x60, 0xfe), (0x80, 0xfe)] {
            assert_eq!(handle_exit(VcpuExit::IoOut(port, &[value]), 0, &mut devices), ExitAction::Continue);
        }
        let mut data = [0u8];
        assert_eq!(handle_exit(VcpuExit::IoIn(0x64, &mut data), 0, &mut devices), ExitAction::Continue);
        assert_eq!(data, [0xff]);
        assert_eq!(devices.stats().unknown_pio, 5);
    }

    #[test]
    fn serial_lines_of_two_vcpus_do_not_mix() {
        let buf = SharedBuf::default();
        // No idle flush: however slowly this test runs, the lines stay whole.
        let mut devices =
            Devices::with_idle_flush(Box::new(buf.clone()), std::time::Duration::from_secs(3600));
        for (a, b) in b"aaaa\n".iter().zip(b"bbbb\n") {
            handle_exit(VcpuExit::IoOut(0x3f8, &[*a]), 0, &mut devices);
            handle_exit(VcpuExit::IoOut(0x3f8, &[*b]), 1, &mut devices);
        }
        devices.settle();
        assert_eq!(buf.contents(), b"aaaa\nbbbb\n");
    }

    #[test]
    fn unknown_port_is_ignored_and_reads_all_ones() {
        let mut devices = Devices::new(Box::new(std::io::sink()));
        assert_eq!(handle_exit(VcpuExit::IoOut(0x80, &[0x55]), 0, &mut devices), ExitAction::Continue);
        let mut data = [0u8; 2];
        assert_eq!(handle_exit(VcpuExit::IoIn(0x1234, &mut data), 0, &mut devices), ExitAction::Continue);
        assert_eq!(data, [0xff, 0xff]);
        let mut data = [0u8; 4];
        assert_eq!(
            handle_exit(VcpuExit::MmioRead(0xfed0_0000, &mut data), 0, &mut devices),
            ExitAction::Continue
        );
        assert_eq!(data, [0xff; 4]);
        assert_eq!(devices.stats().unknown_pio, 2);
        assert_eq!(devices.stats().unknown_mmio, 1);
    }

    #[test]
    fn bench_marker_port_reaches_the_vcpus_marker() {
        let mut devices = Devices::new(Box::new(std::io::sink()));
        assert_eq!(handle_exit(VcpuExit::IoOut(0xf8, &[0; 4]), 0, &mut devices), ExitAction::Continue);
        let mut data = [0x55u8; 4];
        assert_eq!(handle_exit(VcpuExit::IoIn(0xf8, &mut data), 0, &mut devices), ExitAction::Continue);
        assert_eq!(data, [0; 4], "no statistics: RESET reads 0");
        handle_exit(VcpuExit::IoOut(0xf8, &[7, 0, 0, 0]), 0, &mut devices);
        let s = devices.stats();
        assert_eq!((s.bench_accesses, s.bench_garbage, s.unknown_pio), (2, 1, 0));
    }

    #[test]
    fn string_io_sends_every_element_to_the_same_port() {
        let buf = SharedBuf::default();
        let mut devices = Devices::new(Box::new(buf.clone()));
        // `rep insb` of 16 from the LSR: sixteen reads of the LSR (idle: 0x60).
        let mut data = [0u8; 16];
        handle_exit_sized(VcpuExit::IoIn(0x3fd, &mut data), 0, Some(1), &mut devices);
        assert_eq!(data, [0x60; 16]);
        // `rep outsb` to the data port: every byte is output.
        handle_exit_sized(VcpuExit::IoOut(0x3f8, b"str\n"), 0, Some(1), &mut devices);
        devices.settle();
        assert_eq!(buf.contents(), b"str\n");
        // `rep insw` of 2 from the LSR: each word reads LSR then MSR.
        let mut words = [0u8; 4];
        handle_exit_sized(VcpuExit::IoIn(0x3fd, &mut words), 0, Some(2), &mut devices);
        assert_eq!(words[0], words[2]);
        assert_eq!(words[1], words[3]);
        // `rep outsb` to the debug-exit port: the first element is the value.
        assert_eq!(
            handle_exit_sized(VcpuExit::IoOut(0xf4, &[5, 9, 9, 9]), 0, Some(1), &mut devices),
            ExitAction::DebugExit(5)
        );
        // A reset byte anywhere in a string `outsb` to the controller resets.
        assert_eq!(
            handle_exit_sized(VcpuExit::IoOut(0x64, &[0x01, 0xfe]), 0, Some(1), &mut devices),
            ExitAction::Reset
        );
        // Four RESETs to the bench marker as one `rep outsd`: four valid accesses.
        let mut devices = Devices::new(Box::new(std::io::sink()));
        handle_exit_sized(VcpuExit::IoOut(0xf8, &[0; 16]), 0, Some(4), &mut devices);
        assert_eq!(devices.stats().bench_accesses, 4);
    }

    #[test]
    fn crashes_stop_the_run() {
        let mut devices = Devices::new(Box::new(std::io::sink()));
        assert_eq!(handle_exit(VcpuExit::Shutdown, 0, &mut devices), ExitAction::Shutdown);
        assert_eq!(handle_exit(VcpuExit::InternalError, 0, &mut devices), ExitAction::InternalError);
        assert_eq!(
            handle_exit(VcpuExit::FailEntry(0x21, 1), 0, &mut devices),
            ExitAction::FailEntry { reason: 0x21, cpu: 1 }
        );
        assert!(matches!(handle_exit(VcpuExit::Hlt, 0, &mut devices), ExitAction::Unexpected(_)));
    }
}
