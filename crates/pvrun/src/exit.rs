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

/// The value of an `out` to the debug-exit port: the data little-endian,
/// 1, 2 or 4 bytes (at most the first 4 bytes of a string `out`).
pub fn debug_exit_value(data: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    let n = data.len().min(4);
    bytes[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(bytes)
}

/// Maps one exit of vCPU `vcpu` to an action, serving port and MMIO
/// accesses on `devices`. Runs before the guest is re-entered, so the bench
/// marker's snapshots are taken at the exit of the marker's `out` itself.
pub fn handle_exit(exit: VcpuExit<'_>, vcpu: u8, devices: &mut Devices) -> ExitAction {
    match exit {
        VcpuExit::IoOut(DEBUG_EXIT_PORT, data) => ExitAction::DebugExit(debug_exit_value(data)),
        VcpuExit::IoOut(KBD_CONTROLLER_PORT, [KBD_RESET_COMMAND, ..]) => ExitAction::Reset,
        VcpuExit::IoOut(BENCH_MARKER_PORT, data) => {
            devices.bench_write(vcpu, data);
            ExitAction::Continue
        }
        VcpuExit::IoIn(BENCH_MARKER_PORT, data) => {
            devices.bench_read(vcpu, data);
            ExitAction::Continue
        }
        VcpuExit::IoOut(port, data) => {
            devices.pio_write(vcpu, port, data);
            ExitAction::Continue
        }
        VcpuExit::IoIn(port, data) => {
            devices.pio_read(vcpu, port, data);
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
        let mut devices = Devices::new(Box::new(buf.clone()));
        for (a, b) in b"aaaa\n".iter().zip(b"bbbb\n") {
            handle_exit(VcpuExit::IoOut(0x3f8, &[*a]), 0, &mut devices);
            handle_exit(VcpuExit::IoOut(0x3f8, &[*b]), 1, &mut devices);
        }
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
