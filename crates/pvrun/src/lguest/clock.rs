//! The clock event (`SET_CLOCKEVENT`): a one-shot deadline on the monotonic
//! clock that raises IRQ 0. (4.13 armed an hrtimer on `CLOCK_REALTIME`, so a
//! wall-clock step moved it; lguest64 uses the monotonic clock.)
//!
//! While the guest runs, a POSIX timer sends the vCPU thread the run loop's
//! kick signal at the deadline, which brings `KVM_RUN` back so pvrun can
//! deliver; while it halts, the thread sleeps until the deadline itself.

use std::time::{Duration, Instant};

/// The deadline, and the timer that kicks the vCPU thread at it.
#[derive(Debug, Default)]
pub struct Clock {
    deadline: Option<Instant>,
    /// The kick signal; `None` until the run loop attaches one (then the
    /// timer is created on first use, on the vCPU thread).
    signal: Option<i32>,
    timer: Option<PosixTimer>,
}

impl Clock {
    /// From now on, a deadline also kicks the calling thread with `signal`.
    pub fn attach(&mut self, signal: i32) {
        self.signal = Some(signal);
    }

    /// `SET_CLOCKEVENT(delta)`: IRQ 0 `delta_ns` from now; 0 cancels.
    pub fn set(&mut self, delta_ns: u64) {
        self.deadline =
            (delta_ns != 0).then(|| Instant::now().checked_add(Duration::from_nanos(delta_ns))).flatten();
        if let Some(signal) = self.signal {
            if self.timer.is_none() {
                // Without a timer the run loop still sees the deadline at its
                // next stop; it only loses the prompt kick.
                self.timer = PosixTimer::new(signal).ok();
            }
            if let Some(t) = &self.timer {
                t.arm(self.deadline.map(|d| d.saturating_duration_since(Instant::now())));
            }
        }
    }

    /// Whether the deadline has passed (it is then consumed).
    pub fn expired(&mut self) -> bool {
        match self.deadline {
            Some(d) if Instant::now() >= d => {
                self.deadline = None;
                true
            }
            _ => false,
        }
    }

    /// The pending deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

/// A POSIX timer that signals one thread (`SIGEV_THREAD_ID`).
#[derive(Debug)]
struct PosixTimer(libc::timer_t);

// SAFETY: a timer id is a plain handle the kernel resolves; any thread may arm or
// delete it.
unsafe impl Send for PosixTimer {}

impl PosixTimer {
    /// A timer on `CLOCK_MONOTONIC` that sends `signal` to the calling thread.
    fn new(signal: i32) -> std::io::Result<Self> {
        // SAFETY: all-zero is a valid `sigevent` (a plain C struct).
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = signal;
        // SAFETY: gettid has no preconditions.
        event.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `event` and `id` are valid for the call; the kernel fills `id`.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut id) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(PosixTimer(id))
    }

    /// Fires once after `after` (`None`: disarmed).
    fn arm(&self, after: Option<Duration>) {
        let value = after.map_or(libc::timespec { tv_sec: 0, tv_nsec: 0 }, |d| libc::timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
            // A zero value would disarm: fire as soon as possible instead.
            tv_nsec: if d.is_zero() { 1 } else { libc::c_long::from(d.subsec_nanos()) },
        });
        let spec =
            libc::itimerspec { it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 }, it_value: value };
        // SAFETY: `self.0` is a live timer; `spec` is valid for the call. Failure
        // (impossible with these arguments) would only cost the prompt kick.
        unsafe { libc::timer_settime(self.0, 0, &spec, std::ptr::null_mut()) };
    }
}

impl Drop for PosixTimer {
    fn drop(&mut self) {
        // SAFETY: `self.0` is a live timer, deleted once.
        unsafe { libc::timer_delete(self.0) };
    }
}

/// Sleeps up to `max`, or until a signal (a kick) arrives.
pub fn nap(max: Duration) {
    let ts = libc::timespec {
        tv_sec: max.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(max.subsec_nanos()),
    };
    // SAFETY: `ts` is valid for the call; an early return (EINTR) is wanted.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_expires_once_and_zero_cancels() {
        let mut c = Clock::default();
        assert!(!c.expired());
        c.set(1);
        std::thread::sleep(Duration::from_millis(1));
        assert!(c.expired());
        assert!(!c.expired(), "consumed");
        c.set(60_000_000_000);
        assert!(!c.expired());
        c.set(0);
        assert_eq!(c.deadline(), None);
        c.set(u64::MAX);
        assert!(!c.expired());
    }
}
