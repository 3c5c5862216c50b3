//! The serial output's writer thread: the guest never waits for the host's
//! stdout.
//!
//! A vCPU hands complete lines to [`Output::send`], which only queues them;
//! one thread writes the queue to the sink. A reader that stalls therefore
//! stalls nobody: the queue holds up to [`QUEUE_CAP`] bytes, and what a guest
//! writes beyond that while the sink does not move is dropped and counted
//! ([`Output::lost`]). At the end of a run [`Output::drain`] waits for the
//! queue to empty, but no longer than its grace, and gives up early on a sink
//! that makes no progress: a stalled stdout cannot keep pvrun past its
//! `--timeout` by more than that grace. [`escape_controls`] is what
//! `--escape-serial` applies before the queue.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Most bytes waiting for the sink (the memory bound of the output).
pub const QUEUE_CAP: usize = 16 << 20;
/// A sink that accepts nothing for this long is taken to be stalled.
pub const STALL: Duration = Duration::from_millis(500);

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

/// The queue and its writer thread.
pub struct Output {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.shared.lock();
        f.debug_struct("Output").field("queued", &s.queued).field("lost", &s.lost).finish()
    }
}

impl Output {
    /// Starts the writer thread for `sink`. Should the thread not start,
    /// every byte is lost, and counted as such.
    pub fn start(sink: Box<dyn Write + Send>) -> Output {
        let shared = Arc::new(Shared::default());
        let writer = shared.clone();
        let started =
            std::thread::Builder::new().name("pvrun-serial".into()).spawn(move || write_loop(&writer, sink));
        if started.is_err() {
            shared.lock().failed = true;
        }
        Output { shared }
    }

    /// Queues `bytes` for the sink; never waits.
    pub fn send(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let mut s = self.shared.lock();
        if s.failed || s.queued + bytes.len() > QUEUE_CAP {
            s.lost += bytes.len() as u64;
            return;
        }
        s.queued += bytes.len();
        s.chunks.push_back(bytes);
        drop(s);
        self.shared.changed.notify_all();
    }

    /// Waits until everything sent has reached the sink, at most `grace`, and
    /// less if the sink makes no progress for [`STALL`]. Whether it all went.
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
    /// Lets the writer finish what is queued and end; does not wait for it
    /// (a sink stalled forever keeps only that thread and its queue).
    fn drop(&mut self) {
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

fn write_loop(shared: &Shared, mut sink: Box<dyn Write + Send>) {
    let mut s = shared.lock();
    s.progress = Some(Instant::now());
    loop {
        let Some(chunk) = s.chunks.pop_front() else {
            if s.closed {
                return;
            }
            s = shared.changed.wait(s).unwrap_or_else(|e| e.into_inner());
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
        (Output::start(Box::new(sink)), stalled, out)
    }

    #[test]
    fn a_stalled_sink_blocks_neither_the_sender_nor_the_drain_for_long() {
        let (mut o, stalled, out) = stalling();
        let t0 = Instant::now();
        for _ in 0..100 {
            o.send(vec![b'x'; 1000]);
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
            o.send(vec![b'y'; 4096]);
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
        let mut o = Output::start(Box::new(FailAfter(3)));
        o.send(b"abc".to_vec());
        assert!(o.drain(Duration::from_secs(5)));
        o.send(b"def".to_vec());
        assert!(!o.drain(Duration::from_secs(5)) || o.lost() == 3);
        o.send(b"ghi".to_vec());
        assert_eq!(o.lost(), 6);
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
