//! The VMI alarm: one per vCPU, armed by `SetAlarm` with an absolute expiry
//! on a cycle counter, raised as an interrupt by a thread of pvrun's at that
//! time (the in-kernel irqchip then wakes the vCPU, even from `hlt`).
//!
//! API 2.0's rules (Appendix A): a one-shot alarm disarms when it fires; a
//! periodic one fires on the grid E(i) = e0 + p·i and, after a gap, only
//! once, at the first E(i) later than now; re-arming replaces the alarm;
//! CancelAlarm reports whether one was armed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How an alarm reaches the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// ISA IRQ 0, through the guest's PIC or IOAPIC routing.
    Irq0,
    /// A fixed interrupt at this vector on the vCPU's local APIC (VMI/64's
    /// `WIRED_VECTOR`).
    Vector(u8),
}

/// An armed alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Armed {
    /// When it fires next.
    pub at: Instant,
    /// Its period (None: one-shot).
    pub period: Option<Duration>,
    /// Where it goes.
    pub wire: Wire,
}

/// What the trap flavour's calls use of the alarm (a fake in tests).
pub trait AlarmClock: Send + std::fmt::Debug {
    /// Arms (or re-arms) the alarm.
    fn set(&self, alarm: Armed);
    /// Disarms it; whether it was armed.
    fn cancel(&self) -> bool;
    /// How many times it has fired.
    fn fired(&self) -> u64;
}

/// The next expiry of a periodic alarm last due at `due`, after `now`: the
/// first point of the grid `due + k·period` later than `now` (one fire per
/// gap, however long).
pub fn next_on_grid(due: Instant, period: Duration, now: Instant) -> Instant {
    if now < due || period.is_zero() {
        return due.max(now);
    }
    let behind = now.duration_since(due).as_nanos();
    let steps = behind / period.as_nanos() + 1;
    due + Duration::from_nanos((period.as_nanos() * steps).min(u64::MAX as u128) as u64)
}

#[derive(Debug, Default)]
struct State {
    armed: Option<Armed>,
    quit: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    fired: AtomicU64,
}

/// The alarm of one vCPU: a thread that sleeps until the expiry, then calls
/// `raise` with the wire.
pub struct Alarm {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Alarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alarm").field("fired", &self.shared.fired.load(Ordering::Relaxed)).finish()
    }
}

impl Alarm {
    /// Starts the alarm's thread; `raise` delivers an interrupt.
    pub fn start(raise: impl Fn(Wire) + Send + 'static) -> std::io::Result<Alarm> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new().name("pvrun-vmi-alarm".into()).spawn(move || {
            let mut state = s.state.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if state.quit {
                    return;
                }
                let Some(armed) = state.armed else {
                    state = s.changed.wait(state).unwrap_or_else(|e| e.into_inner());
                    continue;
                };
                let now = Instant::now();
                if now < armed.at {
                    state =
                        s.changed.wait_timeout(state, armed.at - now).unwrap_or_else(|e| e.into_inner()).0;
                    continue;
                }
                state.armed = armed.period.map(|p| Armed { at: next_on_grid(armed.at, p, now), ..armed });
                s.fired.fetch_add(1, Ordering::Relaxed);
                drop(state);
                raise(armed.wire);
                state = s.state.lock().unwrap_or_else(|e| e.into_inner());
            }
        })?;
        Ok(Alarm { shared, thread: Some(thread) })
    }

    fn edit<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let out = f(&mut state);
        self.shared.changed.notify_all();
        out
    }
}

impl AlarmClock for Alarm {
    fn set(&self, alarm: Armed) {
        self.edit(|s| s.armed = Some(alarm));
    }

    fn cancel(&self) -> bool {
        self.edit(|s| s.armed.take().is_some())
    }

    fn fired(&self) -> u64 {
        self.shared.fired.load(Ordering::Relaxed)
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        self.edit(|s| s.quit = true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn the_grid_skips_to_the_first_point_after_now() {
        let t0 = Instant::now();
        let p = Duration::from_millis(10);
        assert_eq!(next_on_grid(t0 + p, p, t0), t0 + p, "not due yet");
        assert_eq!(next_on_grid(t0, p, t0), t0 + p);
        assert_eq!(next_on_grid(t0, p, t0 + Duration::from_millis(35)), t0 + Duration::from_millis(40));
    }

    #[test]
    fn a_one_shot_fires_once_and_a_periodic_one_keeps_firing() {
        let (tx, rx) = mpsc::channel();
        let alarm = Alarm::start(move |w| tx.send(w).unwrap()).unwrap();
        let soon = Instant::now() + Duration::from_millis(5);
        alarm.set(Armed { at: soon, period: None, wire: Wire::Vector(0x40) });
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(Wire::Vector(0x40)));
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err(), "a one-shot fires once");
        assert!(!alarm.cancel(), "a fired one-shot is no longer armed");

        alarm.set(Armed { at: Instant::now(), period: Some(Duration::from_millis(5)), wire: Wire::Irq0 });
        for _ in 0..3 {
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(Wire::Irq0));
        }
        assert!(alarm.cancel(), "a periodic alarm stays armed");
        while rx.recv_timeout(Duration::from_millis(30)).is_ok() {}
        assert!(alarm.fired() >= 4);
    }
}
