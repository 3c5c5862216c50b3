//! The emulated devices: the COM1 UART, and the defaults for every other
//! port and MMIO address (writes ignored, reads all-ones).

use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};

use crate::layout::{COM1_PORT, COM1_PORT_COUNT};

/// The serial interrupt line is not wired yet: the guest polls the LSR.
#[derive(Debug, Default)]
pub struct NoInterrupt;

impl Trigger for NoInterrupt {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// Line-buffered, write-through serial output.
///
/// The UART model flushes after every byte; this passes output on to the
/// real writer (and flushes it) at each newline, when 4 KiB have piled up,
/// or when [`SerialOut::finish`] is called, so a reader of the host's stdout
/// sees every line as soon as the guest completes it.
pub struct SerialOut {
    inner: Box<dyn Write + Send>,
    line: Vec<u8>,
}

impl SerialOut {
    const MAX_PENDING: usize = 4096;

    /// Wraps `inner`.
    pub fn new(inner: Box<dyn Write + Send>) -> Self {
        SerialOut {
            inner,
            line: Vec::with_capacity(256),
        }
    }

    /// Writes out and flushes whatever is pending.
    pub fn finish(&mut self) -> io::Result<()> {
        let pending = std::mem::take(&mut self.line);
        if !pending.is_empty() {
            self.inner.write_all(&pending)?;
        }
        self.inner.flush()
    }
}

impl Write for SerialOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.line.extend_from_slice(buf);
        if buf.contains(&b'\n') || self.line.len() >= Self::MAX_PENDING {
            self.finish()?;
        }
        Ok(buf.len())
    }

    /// Deliberately a no-op: output is flushed per line (see the type docs).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Debug for SerialOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialOut")
            .field("pending", &self.line.len())
            .finish_non_exhaustive()
    }
}

/// Counters of device traffic, reported with the result of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Port I/O exits handled in userspace.
    pub pio_exits: u64,
    /// MMIO exits handled in userspace.
    pub mmio_exits: u64,
    /// Accesses to ports no device claims.
    pub unknown_pio: u64,
    /// Accesses to MMIO addresses no device claims.
    pub unknown_mmio: u64,
    /// Bytes the guest wrote to the serial port.
    pub serial_bytes: u64,
    /// Serial bytes that could not be written to the host (e.g. closed pipe).
    pub serial_lost_bytes: u64,
}

/// All devices of the VM, behind one lock.
pub struct Devices {
    serial: Serial<NoInterrupt, NoEvents, SerialOut>,
    stats: DeviceStats,
}

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devices")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Devices {
    /// Devices whose serial output goes to `serial_out`.
    pub fn new(serial_out: Box<dyn Write + Send>) -> Self {
        Devices {
            serial: Serial::new(NoInterrupt, SerialOut::new(serial_out)),
            stats: DeviceStats::default(),
        }
    }

    /// The traffic counters.
    pub fn stats(&self) -> DeviceStats {
        self.stats
    }

    /// Writes out any partial serial line.
    pub fn flush(&mut self) {
        // Ignored: if the host's stdout is gone there is nobody to tell.
        let _ = self.serial.writer_mut().finish();
    }

    fn com1_offset(port: u16, i: usize) -> Option<u8> {
        let p = usize::from(port) + i;
        let base = usize::from(COM1_PORT);
        (base..base + usize::from(COM1_PORT_COUNT))
            .contains(&p)
            .then(|| (p - base) as u8)
    }

    /// An `in` from `port`: fills `data` (one byte per consecutive port).
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        self.stats.pio_exits += 1;
        let mut claimed = false;
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match Self::com1_offset(port, i) {
                Some(off) => {
                    claimed = true;
                    self.serial.read(off)
                }
                None => 0xff,
            };
        }
        if !claimed {
            self.stats.unknown_pio += 1;
        }
    }

    /// An `out` of `data` to `port` (one byte per consecutive port).
    pub fn pio_write(&mut self, port: u16, data: &[u8]) {
        self.stats.pio_exits += 1;
        let mut claimed = false;
        for (i, byte) in data.iter().enumerate() {
            if let Some(off) = Self::com1_offset(port, i) {
                claimed = true;
                if off == 0 {
                    self.stats.serial_bytes += 1;
                }
                if self.serial.write(off, *byte).is_err() {
                    self.stats.serial_lost_bytes += 1;
                }
            }
        }
        if !claimed {
            self.stats.unknown_pio += 1;
        }
    }

    /// A read from an MMIO address no in-kernel device claims: all-ones.
    pub fn mmio_read(&mut self, _addr: u64, data: &mut [u8]) {
        self.stats.mmio_exits += 1;
        self.stats.unknown_mmio += 1;
        data.fill(0xff);
    }

    /// A write to an MMIO address no in-kernel device claims: ignored.
    pub fn mmio_write(&mut self, _addr: u64, _data: &[u8]) {
        self.stats.mmio_exits += 1;
        self.stats.unknown_mmio += 1;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer tests can read back.
    #[derive(Clone, Default)]
    pub(crate) struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl SharedBuf {
        pub(crate) fn contents(&self) -> Vec<u8> {
            self.0.lock().unwrap().clone()
        }
    }

    #[test]
    fn serial_output_is_passed_on_per_line() {
        let buf = SharedBuf::default();
        let mut d = Devices::new(Box::new(buf.clone()));
        d.pio_write(0x3f8, b"h");
        d.pio_write(0x3f8, b"i");
        assert_eq!(buf.contents(), b"");
        d.pio_write(0x3f8, b"\n");
        assert_eq!(buf.contents(), b"hi\n");
        d.pio_write(0x3f8, b"x");
        d.flush();
        assert_eq!(buf.contents(), b"hi\nx");
        assert_eq!(d.stats().serial_bytes, 4);
        assert_eq!(d.stats().unknown_pio, 0);
    }

    #[test]
    fn lsr_says_transmitter_empty() {
        let mut d = Devices::new(Box::new(io::sink()));
        let mut lsr = [0u8];
        d.pio_read(0x3fd, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60, "THRE and TEMT set");
    }

    #[test]
    fn unknown_ports_and_mmio_read_all_ones() {
        let mut d = Devices::new(Box::new(io::sink()));
        let mut data = [0u8; 4];
        d.pio_read(0x80, &mut data);
        assert_eq!(data, [0xff; 4]);
        d.pio_write(0x80, &[1]);
        let mut data = [0u8; 8];
        d.mmio_read(0xd000_0000, &mut data);
        assert_eq!(data, [0xff; 8]);
        d.mmio_write(0xd000_0000, &[0; 4]);
        let s = d.stats();
        assert_eq!((s.unknown_pio, s.unknown_mmio), (2, 2));
    }
}
