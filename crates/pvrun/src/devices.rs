//! The emulated devices: the COM1 UART, the bench marker on port 0xf8, and
//! the defaults for every other port and MMIO address (writes ignored, reads
//! all-ones).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};

use crate::layout::{BENCH_MAGIC, BENCH_RESET, BENCH_START, BENCH_STOP, COM1_PORT, COM1_PORT_COUNT};
use crate::output::Output;

/// The serial interrupt line is not wired yet: the guest polls the LSR.
#[derive(Debug, Default)]
pub struct NoInterrupt;

impl Trigger for NoInterrupt {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// The UART's output, attributed to the vCPU that wrote it.
///
/// The UART model flushes after every byte; [`Output`] collects the bytes of
/// each vCPU separately and passes a vCPU's output on at each newline, when
/// 4 KiB have piled up, after a short idle ([`crate::output::IDLE_FLUSH`]),
/// or when [`SerialOut::finish`] is called. A reader of the host's stdout
/// sees every line as soon as the guest completes it, a prompt soon after,
/// lines written by several vCPUs at once never interleave, and a reader
/// that stalls never stalls a vCPU.
#[derive(Debug)]
pub struct SerialOut {
    out: Output,
    /// The vCPU whose bytes the UART is writing now.
    current: usize,
}

impl SerialOut {
    /// Writes to `inner`, from a thread of its own.
    pub fn new(inner: Box<dyn Write + Send>) -> Self {
        SerialOut { out: Output::new(inner), current: 0 }
    }

    /// Attributes the bytes written from now on to vCPU `vcpu`.
    pub fn select(&mut self, vcpu: u8) {
        self.current = usize::from(vcpu);
    }

    /// Hands over whatever is pending, vCPU 0's first, and waits for it to
    /// reach the host (see [`Output::drain`] for how long); whether it did.
    pub fn finish(&mut self, grace: Duration) -> bool {
        self.out.finish(grace)
    }

    /// Bytes that could not reach the host.
    pub fn lost(&self) -> u64 {
        self.out.lost()
    }
}

impl Write for SerialOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(self.current, buf);
        Ok(buf.len())
    }

    /// Deliberately a no-op: [`Output`] decides when bytes move on.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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
    /// Serial bytes that could not reach the host: its stdout failed (e.g. a
    /// closed pipe), or stalled while [`crate::output::QUEUE_CAP`] bytes waited.
    pub serial_lost_bytes: u64,
    /// Valid bench-marker accesses: RESET, START and STOP writes and 32-bit
    /// reads (see [`BenchMarker`]).
    pub bench_accesses: u64,
    /// Bench-marker accesses that were ignored: unknown commands, sizes
    /// other than 32 bits, STOP without START.
    pub bench_garbage: u64,
}

/// Where the bench marker gets its counters: the instruction-emulation and
/// exit counts of the vCPU that accessed the port, read at the exit of that
/// access. A trait so the protocol can be tested with made-up counters.
pub trait StatsSource: Send {
    /// `(insn_emulation, exits)` now, or `None` if they cannot be read.
    fn counters(&mut self) -> Option<(u64, u64)>;
}

/// The bench-marker device of one vCPU (port [`crate::layout::BENCH_MARKER_PORT`];
/// the protocol is documented there).
pub struct BenchMarker {
    source: Option<Box<dyn StatsSource>>,
    /// Exits pvrun served for this vCPU (the run loop counts them).
    served: Arc<AtomicU64>,
    /// `Some` between START and STOP: the counters at START (`None` inside
    /// if they could not be read) and the served exits.
    start: Option<(Option<(u64, u64)>, u64)>,
    /// What the next 32-bit reads return, oldest first; all-ones when empty.
    pending: VecDeque<u32>,
}

impl std::fmt::Debug for BenchMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchMarker")
            .field("has_source", &self.source.is_some())
            .field("start", &self.start)
            .field("pending", &self.pending)
            .finish()
    }
}

impl BenchMarker {
    /// A marker reading its counters from `source` (`None`: no statistics,
    /// RESET then reads 0) and the exits pvrun served from `served`.
    pub fn new(source: Option<Box<dyn StatsSource>>, served: Arc<AtomicU64>) -> Self {
        BenchMarker { source, served, start: None, pending: VecDeque::with_capacity(6) }
    }

    fn counters(&mut self) -> Option<(u64, u64)> {
        self.source.as_mut().and_then(|s| s.counters())
    }

    /// An `out` to the port; `false` if it was garbage (and ignored).
    pub fn write(&mut self, data: &[u8]) -> bool {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return false;
        };
        match u32::from_le_bytes(bytes) {
            BENCH_RESET => {
                self.start = None;
                self.pending.clear();
                let magic = if self.counters().is_some() { BENCH_MAGIC } else { 0 };
                self.pending.push_back(magic);
            }
            // The run loop counts this START's own exit after it is handled:
            // start one further on, so the region's count leaves it out.
            BENCH_START => {
                self.start = Some((self.counters(), self.served.load(Ordering::Relaxed).wrapping_add(1)))
            }
            BENCH_STOP => {
                let Some((start, served0)) = self.start.take() else {
                    return false;
                };
                self.pending.clear();
                if let (Some((insn0, exits0)), Some((insn1, exits1))) = (start, self.counters()) {
                    let (insn, exits) = (insn1.wrapping_sub(insn0), exits1.wrapping_sub(exits0));
                    let served = self.served.load(Ordering::Relaxed).wrapping_sub(served0);
                    for v in [insn, exits, served] {
                        self.pending.extend([v as u32, (v >> 32) as u32]);
                    }
                }
            }
            _ => return false,
        }
        true
    }

    /// An `in` from the port: the next pending word, else all-ones; `false`
    /// if it was garbage (not 32 bits: all-ones, nothing consumed).
    pub fn read(&mut self, data: &mut [u8]) -> bool {
        if data.len() != 4 {
            data.fill(0xff);
            return false;
        }
        let word = self.pending.pop_front().unwrap_or(u32::MAX);
        data.copy_from_slice(&word.to_le_bytes());
        true
    }
}

/// How long the end of a run waits for the serial output to reach the host.
pub const SERIAL_DRAIN_GRACE: Duration = Duration::from_secs(2);

/// All devices of the VM, behind one lock.
pub struct Devices {
    serial: Serial<NoInterrupt, NoEvents, SerialOut>,
    /// One bench marker per vCPU, by vCPU index (created on first use).
    bench: Vec<BenchMarker>,
    /// Per vCPU: the exits pvrun served (the run loop counts, the marker reads).
    served: Vec<Arc<AtomicU64>>,
    /// Per vCPU: its served ABI's counters, once it stopped.
    abi_counters: std::collections::BTreeMap<u8, String>,
    stats: DeviceStats,
}

impl std::fmt::Debug for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devices").field("stats", &self.stats).finish_non_exhaustive()
    }
}

impl Devices {
    /// Devices whose serial output goes to `serial_out`.
    pub fn new(serial_out: Box<dyn Write + Send>) -> Self {
        Devices::with_output(Output::new(serial_out))
    }

    /// Devices whose serial output goes to `serial_out`, partial lines after
    /// `idle_flush`.
    #[cfg(test)]
    pub(crate) fn with_idle_flush(serial_out: Box<dyn Write + Send>, idle_flush: Duration) -> Self {
        Devices::with_output(Output::with_idle_flush(serial_out, idle_flush))
    }

    fn with_output(serial_out: Output) -> Self {
        Devices {
            serial: Serial::new(NoInterrupt, SerialOut { out: serial_out, current: 0 }),
            bench: Vec::new(),
            served: Vec::new(),
            abi_counters: std::collections::BTreeMap::new(),
            stats: DeviceStats::default(),
        }
    }

    /// Whether the guest's control characters reach the host as they are
    /// (the default) or shown as `\xNN` (`--escape-serial`).
    pub fn escape_serial(&mut self, on: bool) {
        self.serial.writer_mut().out.escape(on);
    }

    /// Records what vCPU `vcpu`'s served ABI counted (see
    /// [`crate::runner::ServedAbi::counters`]).
    pub fn set_abi_counters(&mut self, vcpu: u8, line: String) {
        self.abi_counters.insert(vcpu, line);
    }

    /// Every vCPU's served-ABI counters, `vCPU n: <line>`, by vCPU.
    pub fn abi_counters(&self) -> Vec<String> {
        self.abi_counters.iter().map(|(v, line)| format!("vCPU {v}: {line}")).collect()
    }

    /// The counter of exits pvrun serves for vCPU `vcpu` (the run loop adds to
    /// it; the bench marker reports it).
    pub fn vmm_exits(&mut self, vcpu: u8) -> Arc<AtomicU64> {
        let i = usize::from(vcpu);
        if self.served.len() <= i {
            self.served.resize_with(i + 1, Arc::default);
        }
        self.served[i].clone()
    }

    /// Gives vCPU `vcpu`'s bench marker its counters (`None`: statistics
    /// unavailable). Without this call the marker behaves as with `None`.
    pub fn set_stats_source(&mut self, vcpu: u8, source: Option<Box<dyn StatsSource>>) {
        let served = self.vmm_exits(vcpu);
        *self.bench_marker(vcpu) = BenchMarker::new(source, served);
    }

    fn bench_marker(&mut self, vcpu: u8) -> &mut BenchMarker {
        let i = usize::from(vcpu);
        while self.bench.len() <= i {
            let served = self.vmm_exits(self.bench.len() as u8);
            self.bench.push(BenchMarker::new(None, served));
        }
        &mut self.bench[i]
    }

    /// Console bytes vCPU `vcpu` wrote through a served ABI (lguest's
    /// `CONSOLE_WRITE`): the same output, line by line, as COM1's.
    pub fn console_write(&mut self, vcpu: u8, bytes: &[u8]) {
        let out = self.serial.writer_mut();
        out.select(vcpu);
        self.stats.serial_bytes += bytes.len() as u64;
        if out.write_all(bytes).is_err() {
            self.stats.serial_lost_bytes += bytes.len() as u64;
        }
    }

    fn count_bench(&mut self, ok: bool) {
        self.stats.pio_exits += 1;
        if ok {
            self.stats.bench_accesses += 1;
        } else {
            self.stats.bench_garbage += 1;
        }
    }

    /// An `out` by vCPU `vcpu` to the bench-marker port.
    pub fn bench_write(&mut self, vcpu: u8, data: &[u8]) {
        let ok = self.bench_marker(vcpu).write(data);
        self.count_bench(ok);
    }

    /// An `in` by vCPU `vcpu` from the bench-marker port.
    pub fn bench_read(&mut self, vcpu: u8, data: &mut [u8]) {
        let ok = self.bench_marker(vcpu).read(data);
        self.count_bench(ok);
    }

    /// The traffic counters.
    pub fn stats(&mut self) -> DeviceStats {
        DeviceStats {
            serial_lost_bytes: self.stats.serial_lost_bytes + self.serial.writer_mut().lost(),
            ..self.stats
        }
    }

    /// Hands over any partial serial line and waits for the output to reach
    /// the host, at most [`SERIAL_DRAIN_GRACE`] (less if the host's stdout
    /// makes no progress); whether it all did.
    pub fn flush(&mut self) -> bool {
        self.serial.writer_mut().finish(SERIAL_DRAIN_GRACE)
    }

    /// Waits for every complete line handed over so far to reach the host.
    #[cfg(test)]
    pub(crate) fn settle(&mut self) {
        assert!(self.serial.writer_mut().out.drain(Duration::from_secs(10)), "the output did not drain");
    }

    fn com1_offset(port: u16, i: usize) -> Option<u8> {
        let p = usize::from(port) + i;
        let base = usize::from(COM1_PORT);
        (base..base + usize::from(COM1_PORT_COUNT)).contains(&p).then(|| (p - base) as u8)
    }

    /// An `in` by vCPU `vcpu` from `port`: fills `data` (one byte per
    /// consecutive port).
    pub fn pio_read(&mut self, vcpu: u8, port: u16, data: &mut [u8]) {
        self.stats.pio_exits += 1;
        self.serial.writer_mut().select(vcpu);
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

    /// An `out` of `data` by vCPU `vcpu` to `port` (one byte per
    /// consecutive port). Serial output is kept apart per vCPU until a line
    /// is complete.
    pub fn pio_write(&mut self, vcpu: u8, port: u16, data: &[u8]) {
        self.stats.pio_exits += 1;
        self.serial.writer_mut().select(vcpu);
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
        let mut d = Devices::with_idle_flush(Box::new(buf.clone()), Duration::from_secs(3600));
        d.pio_write(0, 0x3f8, b"h");
        d.pio_write(0, 0x3f8, b"i");
        assert_eq!(buf.contents(), b"");
        d.pio_write(0, 0x3f8, b"\n");
        d.settle();
        assert_eq!(buf.contents(), b"hi\n");
        d.pio_write(0, 0x3f8, b"x");
        d.flush();
        assert_eq!(buf.contents(), b"hi\nx");
        assert_eq!(d.stats().serial_bytes, 4);
        assert_eq!(d.stats().unknown_pio, 0);
    }

    #[test]
    fn serial_lines_are_kept_apart_per_vcpu() {
        let buf = SharedBuf::default();
        let mut d = Devices::with_idle_flush(Box::new(buf.clone()), Duration::from_secs(3600));
        d.pio_write(2, 0x3f8, b"c");
        d.pio_write(0, 0x3f8, b"a");
        d.pio_write(2, 0x3f8, b"c");
        d.pio_write(1, 0x3f8, b"b");
        d.pio_write(0, 0x3f8, b"\n");
        d.settle();
        assert_eq!(buf.contents(), b"a\n");
        d.pio_write(2, 0x3f8, b"\n");
        d.settle();
        assert_eq!(buf.contents(), b"a\ncc\n");
        d.pio_write(0, 0x3f8, b"z");
        // At the end the partial lines come out, vCPU 0's first.
        d.flush();
        assert_eq!(buf.contents(), b"a\ncc\nzb");
    }

    #[test]
    fn a_long_serial_line_is_passed_on_in_pieces() {
        let buf = SharedBuf::default();
        let mut d = Devices::new(Box::new(buf.clone()));
        for _ in 0..crate::output::MAX_LINE {
            d.pio_write(1, 0x3f8, b"x");
        }
        d.settle();
        assert_eq!(buf.contents().len(), crate::output::MAX_LINE);
    }

    #[test]
    fn lsr_says_transmitter_empty() {
        let mut d = Devices::new(Box::new(io::sink()));
        let mut lsr = [0u8];
        d.pio_read(0, 0x3fd, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60, "THRE and TEMT set");
    }

    /// Made-up counters: each call returns the next pair (the last one
    /// forever), or `None` if there are none.
    struct FakeCounters {
        values: Values,
    }

    type Values = Arc<Mutex<Vec<(u64, u64)>>>;

    impl StatsSource for FakeCounters {
        fn counters(&mut self) -> Option<(u64, u64)> {
            let mut v = self.values.lock().unwrap();
            match v.len() {
                0 => None,
                1 => Some(v[0]),
                _ => Some(v.remove(0)),
            }
        }
    }

    fn fake(values: &[(u64, u64)]) -> (Devices, Values) {
        let values = Arc::new(Mutex::new(values.to_vec()));
        let mut d = Devices::new(Box::new(io::sink()));
        d.set_stats_source(0, Some(Box::new(FakeCounters { values: values.clone() })));
        (d, values)
    }

    fn out(d: &mut Devices, v: u32) {
        d.bench_write(0, &v.to_le_bytes());
    }

    fn read(d: &mut Devices) -> u32 {
        let mut data = [0u8; 4];
        d.bench_read(0, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn bench_reset_reads_the_magic_once() {
        let (mut d, _) = fake(&[(0, 0)]);
        out(&mut d, BENCH_RESET);
        assert_eq!(read(&mut d), 0x6d62_7670);
        assert_eq!(read(&mut d), u32::MAX);
        assert_eq!(d.stats().bench_accesses, 3);
        assert_eq!(d.stats().bench_garbage, 0);
        assert_eq!(d.stats().pio_exits, 3);
        assert_eq!(d.stats().unknown_pio, 0);
    }

    #[test]
    fn bench_without_stats_reads_zero_after_reset() {
        // No source at all, a source that cannot read, and a vCPU that never
        // got one.
        let mut d = Devices::new(Box::new(io::sink()));
        d.set_stats_source(0, None);
        let (mut failing, _) = fake(&[]);
        for d in [&mut d, &mut failing, &mut Devices::new(Box::new(io::sink()))] {
            out(d, BENCH_RESET);
            assert_eq!(read(d), 0);
            assert_eq!(read(d), u32::MAX);
            // START/STOP work but leave nothing to read.
            out(d, BENCH_START);
            out(d, BENCH_STOP);
            assert_eq!(read(d), u32::MAX);
            assert_eq!(d.stats().bench_garbage, 0);
        }
    }

    #[test]
    fn bench_start_stop_gives_the_deltas_in_four_reads() {
        let (mut d, values) = fake(&[
            (0, 0), // RESET
            (0x1_0000_0005, 40),
            (0x3_0000_0004, 0x2_0000_0049),
        ]);
        out(&mut d, BENCH_RESET);
        assert_eq!(read(&mut d), BENCH_MAGIC);
        out(&mut d, BENCH_START);
        assert_eq!(read(&mut d), u32::MAX, "nothing pending between START and STOP");
        d.vmm_exits(0).fetch_add(4, Ordering::Relaxed);
        out(&mut d, BENCH_STOP);
        // insn delta 0x1_ffff_ffff, exits delta 0x2_0000_0021, served exits 4
        // less this START's own.
        let words: Vec<u32> = (0..6).map(|_| read(&mut d)).collect();
        assert_eq!(words, [0xffff_ffff, 1, 0x21, 2, 3, 0]);
        assert_eq!(read(&mut d), u32::MAX);
        assert_eq!(read(&mut d), u32::MAX);

        // A second region; a RESET drops an unread result.
        *values.lock().unwrap() = vec![(100, 7), (107, 9), (0, 0)];
        out(&mut d, BENCH_START);
        out(&mut d, BENCH_STOP);
        assert_eq!(read(&mut d), 7);
        out(&mut d, BENCH_RESET);
        assert_eq!(read(&mut d), BENCH_MAGIC);
        assert_eq!(read(&mut d), u32::MAX);
        assert_eq!(d.stats().bench_garbage, 0);
    }

    #[test]
    fn bench_garbage_is_ignored_and_counted() {
        let (mut d, _) = fake(&[(5, 5)]);
        out(&mut d, 7); // unknown command
        out(&mut d, u32::MAX);
        d.bench_write(0, &[1]); // START, but 8 bits
        d.bench_write(0, &[2, 0]); // STOP, but 16 bits
        out(&mut d, BENCH_STOP); // STOP without START
        let mut byte = [0u8];
        d.bench_read(0, &mut byte);
        assert_eq!(byte, [0xff]);
        let mut two = [0u8; 2];
        d.bench_read(0, &mut two);
        assert_eq!(two, [0xff; 2]);
        assert_eq!(d.stats().bench_garbage, 7);
        assert_eq!(d.stats().bench_accesses, 0);
        // A short read consumes nothing.
        out(&mut d, BENCH_RESET);
        d.bench_read(0, &mut byte);
        assert_eq!(read(&mut d), BENCH_MAGIC);
        // STOP after STOP is garbage too: START is consumed.
        out(&mut d, BENCH_START);
        out(&mut d, BENCH_STOP);
        out(&mut d, BENCH_STOP);
        assert_eq!([read(&mut d), read(&mut d)], [0, 0]);
        assert_eq!(d.stats().bench_garbage, 9);
    }

    #[test]
    fn bench_markers_are_per_vcpu() {
        let (mut d, _) = fake(&[(1, 1)]);
        out(&mut d, BENCH_START);
        // vCPU 1 has no statistics and no START of its own.
        d.bench_write(1, &BENCH_STOP.to_le_bytes());
        assert_eq!(d.stats().bench_garbage, 1);
        d.bench_write(1, &BENCH_RESET.to_le_bytes());
        let mut data = [0u8; 4];
        d.bench_read(1, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0);
        out(&mut d, BENCH_STOP);
        assert_eq!(read(&mut d), 0);
    }

    #[test]
    fn unknown_ports_and_mmio_read_all_ones() {
        let mut d = Devices::new(Box::new(io::sink()));
        let mut data = [0u8; 4];
        d.pio_read(0, 0x80, &mut data);
        assert_eq!(data, [0xff; 4]);
        d.pio_write(0, 0x80, &[1]);
        let mut data = [0u8; 8];
        d.mmio_read(0xd000_0000, &mut data);
        assert_eq!(data, [0xff; 8]);
        d.mmio_write(0xd000_0000, &[0; 4]);
        let s = d.stats();
        assert_eq!((s.unknown_pio, s.unknown_mmio), (2, 2));
    }
}
