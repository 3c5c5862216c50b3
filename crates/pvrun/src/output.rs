//! The serial output's writer thread: the guest never waits for the host's
//! stdout.
//!
//! A vCPU hands its bytes to [`Output::write`], which only collects them:
//! per vCPU, into lines. A complete line (or 4 KiB of one) is queued at
//! once; a partial line once the guest has written nothing for
//! [`IDLE_FLUSH`], so a prompt or a progress dot shows up. One thread,
//! started with the first byte, writes the queue to the sink. A reader that
//! stalls therefore stalls nobody: the queue holds up to [`QUEUE_CAP`]
//! bytes, and what a guest writes beyond that while the sink does not move
//! is dropped and counted ([`Output::lost`]). At the end of a run
//! [`Output::finish`] queues the partial lines and waits for the queue to
//! empty, but no longer than its grace, and gives up early on a sink that
//! makes no progress: a stalled stdout cannot keep pvrun past its
//! `--timeout` by more than that grace. [`escape_controls`] is what
//! `--escape-serial` applies to each piece as it is queued.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most bytes waiting for the sink (the memory bound of the output).
pub const QUEUE_CAP: usize = 16 << 20;
/// A sink that accepts nothing for this long is taken to be stalled.
pub const STALL: Duration = Duration::from_millis(500);
/// A partial line is passed on once the guest has been this long without
/// writing.
pub const IDLE_FLUSH: Duration = Duration::from_millis(30);
/// A line is passed on in pieces of this many bytes (the memory bound of a
/// vCPU's partial line).
pub const MAX_LINE: usize = 4096;

#[derive(Default)]
struct State {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes in `chunks` and in the writer's hands.
    queued: usize,
    /// Bytes dropped: queue full, or the sink failed.
    lost: u64,
    /// The sink failed: everything from now on is lost.
    failed: bool,
    /// When the writer last finished a chunk (or started waiting for one).
    progress: Option<Instant>,
    /// No more chunks will come: the writer ends when the queue is empty.
    closed: bool,
    /// Each vCPU's unfinished line, by vCPU index.
    partial: Vec<Vec<u8>>,
    /// When a byte last joined a partial line, if one is pending.
    partial_since: Option<Instant>,
    /// Queue pieces through [`escape_controls`].
    escape: bool,
}

impl State {
    /// Queues one piece of output (escaped if asked), or counts it as lost.
    fn queue(&mut self, piece: Vec<u8>) {
        if piece.is_empty() {
            return;
        }
        let piece = if self.escape { escape_controls(&piece) } else { piece };
        if self.failed || self.queued + piece.len() > QUEUE_CAP {
            self.lost += piece.len() as u64;
            return;
        }
        self.queued += piece.len();
        self.chunks.push_back(piece);
    }

    /// Queues every partial line, vCPU 0's first.
    fn queue_partials(&mut self) {
        for vcpu in 0..self.partial.len() {
            let piece = std::mem::take(&mut self.partial[vcpu]);
            self.queue(piece);
        }
        self.partial_since = None;
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when a chunk arrives, is written, or the output closes.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The line collector, the queue and its writer thread.
pub struct Output {
    shared: Arc<Shared>,
    /// The sink until the writer thread takes it (at the first byte).
    sink: Option<Box<dyn Write + Send>>,
    idle_flush: Duration,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.shared.lock();
        f.debug_struct("Output")
            .field("queued", &s.queued)
            .field("lost", &s.lost)
            .field("partial", &s.partial.iter().map(Vec::len).collect::<Vec<_>>())
            .finish()
    }
}

impl Output {
    /// Output to `sink`, partial lines passed on after [`IDLE_FLUSH`].
    pub fn new(sink: Box<dyn Write + Send>) -> Output {
        Output::with_idle_flush(sink, IDLE_FLUSH)
    }

    /// Output to `sink`, partial lines passed on after `idle_flush`.
    pub fn with_idle_flush(sink: Box<dyn Write + Send>, idle_flush: Duration) -> Output {
        Output { shared: Arc::default(), sink: Some(sink), idle_flush }
    }

    /// Shows control characters as `\xNN` from now on ([`escape_controls`]).
    pub fn escape(&mut self, on: bool) {
        self.shared.lock().escape = on;
    }

    /// Bytes vCPU `vcpu` wrote; never waits for the sink.
    pub fn write(&mut self, vcpu: usize, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut s = self.shared.lock();
        if s.partial.len() <= vcpu {
            s.partial.resize_with(vcpu + 1, Vec::new);
        }
        s.partial[vcpu].extend_from_slice(bytes);
        if bytes.contains(&b'\n') || s.partial[vcpu].len() >= MAX_LINE {
            let piece = std::mem::take(&mut s.partial[vcpu]);
            s.queue(piece);
            if s.partial.iter().all(Vec::is_empty) {
                s.partial_since = None;
            }
        } else {
            s.partial_since = Some(Instant::now());
        }
        drop(s);
        self.start_writer();
        self.shared.changed.notify_all();
    }

    /// The writer thread, at the first byte (none for a guest that writes
    /// nothing). Should it not start, every byte is lost, and counted as such.
    fn start_writer(&mut self) {
        let Some(sink) = self.sink.take() else { return };
        let (writer, idle) = (self.shared.clone(), self.idle_flush);
        let started = std::thread::Builder::new()
            .name("pvrun-serial".into())
            .spawn(move || write_loop(&writer, sink, idle));
        if started.is_err() {
            let mut s = self.shared.lock();
            s.failed = true;
            s.lost += s.queued as u64;
            s.queued = 0;
            s.chunks.clear();
        }
    }

    /// Queues the partial lines (vCPU 0's first), then [`Output::drain`]s.
    pub fn finish(&mut self, grace: Duration) -> bool {
        self.queue_partials();
        self.shared.changed.notify_all();
        self.drain(grace)
    }

    /// Queues the partial lines (vCPU 0's first) for the writer.
    fn queue_partials(&mut self) {
        let mut s = self.shared.lock();
        s.queue_partials();
        let pending = s.queued > 0;
        drop(s);
        if pending {
            self.start_writer();
        }
    }

    /// Waits until everything queued has reached the sink, at most `grace`,
    /// and less if the sink makes no progress for [`STALL`]. Whether it all
    /// went.
    pub fn drain(&self, grace: Duration) -> bool {
        let start = Instant::now();
        let deadline = start + grace;
        let mut s = self.shared.lock();
        loop {
            if s.queued == 0 {
                return true;
            }
            let now = Instant::now();
            // Progress counts from the start of the wait at the earliest.
            let moved = s.progress.map_or(start, |p| p.max(start));
            let stalled = now.duration_since(moved) >= STALL;
            if s.failed || stalled || now >= deadline {
                return false;
            }
            let wait = (deadline - now).min(STALL);
            s = self.shared.changed.wait_timeout(s, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Bytes dropped so far: the queue was full, or the sink failed.
    pub fn lost(&self) -> u64 {
        self.shared.lock().lost
    }
}

impl Drop for Output {
    /// Lets the writer finish what is queued, partial lines too, and end;
    /// does not wait for it (a sink stalled forever keeps only that thread
    /// and its queue).
    fn drop(&mut self) {
        self.queue_partials();
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}

/// `bytes` with what could drive a terminal made visible: C0 control
/// characters other than newline and tab, DEL, the C1 controls (U+0080 to
/// U+009F) and bytes that are not UTF-8 become `\xNN` (each byte of a C1
/// character, too). Everything else, UTF-8 text included, passes unchanged.
pub fn escape_controls(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let hex = |out: &mut Vec<u8>, b: u8| out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            let mut buf = [0u8; 4];
            let encoded = c.encode_utf8(&mut buf).as_bytes();
            let control = (c.is_control() && c != '\n' && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c);
            if control {
                encoded.iter().for_each(|&b| hex(&mut out, b));
            } else {
                out.extend_from_slice(encoded);
            }
        }
        chunk.invalid().iter().for_each(|&b| hex(&mut out, b));
    }
    out
}

fn write_loop(shared: &Shared, mut sink: Box<dyn Write + Send>, idle_flush: Duration) {
    let mut s = shared.lock();
    s.progress = Some(Instant::now());
    loop {
        let Some(chunk) = s.chunks.pop_front() else {
            if s.closed {
                return;
            }
            match s.partial_since {
                Some(since) if since.elapsed() >= idle_flush => s.queue_partials(),
                Some(since) => {
                    let wait = idle_flush.saturating_sub(since.elapsed());
                    s = shared.changed.wait_timeout(s, wait).unwrap_or_else(|e| e.into_inner()).0;
                }
                None => s = shared.changed.wait(s).unwrap_or_else(|e| e.into_inner()),
            }
            s.progress = Some(Instant::now());
            continue;
        };
        drop(s);
        let ok = sink.write_all(&chunk).and_then(|()| sink.flush()).is_ok();
        s = shared.lock();
        s.queued -= chunk.len();
        s.progress = Some(Instant::now());
        if !ok {
            // Nobody to tell: what is queued and what comes is lost.
            s.failed = true;
            s.lost += chunk.len() as u64 + s.queued as u64;
            s.queued = 0;
            s.chunks.clear();
        }
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A sink that blocks every write while `stalled` is set.
    struct Stalling {
        stalled: Arc<AtomicBool>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stalling {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            while self.stalled.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn stalling() -> (Output, Arc<AtomicBool>, Arc<Mutex<Vec<u8>>>) {
        let stalled = Arc::new(AtomicBool::new(true));
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Stalling { stalled: stalled.clone(), out: out.clone() };
        (Output::new(Box::new(sink)), stalled, out)
    }

    #[test]
    fn a_stalled_sink_blocks_neither_the_sender_nor_the_drain_for_long() {
        let (mut o, stalled, out) = stalling();
        let t0 = Instant::now();
        let mut line = vec![b'x'; 999];
        line.push(b'\n');
        for _ in 0..100 {
            o.write(0, &line);
        }
        assert!(t0.elapsed() < Duration::from_millis(200), "sending never waits");
        let t0 = Instant::now();
        assert!(!o.drain(Duration::from_secs(10)), "a stalled sink is given up on");
        assert!(t0.elapsed() < STALL * 3, "within the stall limit, not the grace: {:?}", t0.elapsed());
        stalled.store(false, Ordering::Release);
        assert!(o.drain(Duration::from_secs(10)));
        assert_eq!(out.lock().unwrap().len(), 100_000, "nothing lost once it moves again");
        assert_eq!(o.lost(), 0);
    }

    #[test]
    fn past_the_cap_bytes_are_dropped_and_counted() {
        let (mut o, stalled, out) = stalling();
        for _ in 0..(QUEUE_CAP / 4096 + 10) {
            o.write(3, &[b'y'; MAX_LINE]);
        }
        assert!(o.lost() >= 9 * 4096);
        stalled.store(false, Ordering::Release);
        assert!(o.drain(Duration::from_secs(10)));
        assert_eq!(out.lock().unwrap().len() as u64 + o.lost(), ((QUEUE_CAP / 4096 + 10) * 4096) as u64);
    }

    #[test]
    fn escaping_leaves_text_and_shows_controls() {
        assert_eq!(escape_controls(b"plain text\tand tab\n"), b"plain text\tand tab\n");
        assert_eq!(escape_controls("µs ✓\n".as_bytes()), "µs ✓\n".as_bytes());
        assert_eq!(escape_controls(b"\x1b[2J\x07\r\x7f"), br"\x1b[2J\x07\x0d\x7f");
        assert_eq!(escape_controls("\u{9b}".as_bytes()), br"\xc2\x9b", "a C1 CSI");
        assert_eq!(escape_controls(b"a\xffb\xc3"), br"a\xffb\xc3", "not UTF-8");
    }

    #[test]
    fn a_failing_sink_loses_what_follows() {
        let mut o = Output::new(Box::new(FailAfter(3)));
        o.write(0, b"ab\n");
        assert!(o.drain(Duration::from_secs(5)));
        o.write(0, b"de\n");
        assert!(!o.drain(Duration::from_secs(5)) || o.lost() == 3);
        o.write(0, b"gh\n");
        assert_eq!(o.lost(), 6);
    }

    /// A sink whose contents the test can read.
    fn shared_sink() -> (Box<dyn Write + Send>, Arc<Mutex<Vec<u8>>>) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Stalling { stalled: Arc::new(AtomicBool::new(false)), out: out.clone() };
        (Box::new(sink), out)
    }

    #[test]
    fn a_partial_line_shows_up_once_the_guest_is_idle() {
        let (sink, out) = shared_sink();
        let mut o = Output::with_idle_flush(sink, Duration::from_millis(20));
        o.write(0, b"login: ");
        let t0 = Instant::now();
        while out.lock().unwrap().is_empty() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(*out.lock().unwrap(), b"login: ", "the prompt reached the sink without a newline");
        assert!(t0.elapsed() >= Duration::from_millis(15), "not before the idle time: {:?}", t0.elapsed());
        o.write(0, b"root\n");
        assert!(o.drain(Duration::from_secs(5)));
        assert_eq!(*out.lock().unwrap(), b"login: root\n");
    }

    #[test]
    fn partial_lines_wait_for_their_newline_and_come_out_at_the_end() {
        let (sink, out) = shared_sink();
        let mut o = Output::with_idle_flush(sink, Duration::from_secs(3600));
        o.write(1, b"b");
        o.write(0, b"a");
        o.write(2, b"c\n");
        assert!(o.drain(Duration::from_secs(5)));
        assert_eq!(*out.lock().unwrap(), b"c\n", "a line of one vCPU is not cut by another's");
        assert!(o.finish(Duration::from_secs(5)));
        assert_eq!(*out.lock().unwrap(), b"c\nab", "at the end, vCPU 0's first");
    }

    #[test]
    fn escaping_applies_to_partial_lines_too() {
        let (sink, out) = shared_sink();
        let mut o = Output::with_idle_flush(sink, Duration::from_secs(3600));
        o.escape(true);
        o.write(0, b"\x1b[2J\n\x07");
        assert!(o.finish(Duration::from_secs(5)));
        assert_eq!(*out.lock().unwrap(), b"\\x1b[2J\n\\x07");
    }

    /// Accepts `n` bytes, then fails.
    struct FailAfter(usize);

    impl Write for FailAfter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("full"));
            }
            let n = buf.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
