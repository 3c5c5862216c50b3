//! The outer layer of the exit loop: the per-vCPU run-state machine, the
//! vCPU threads, and the watchdog that stops them.
//!
//! Layers, innermost first:
//! 1. [`Vcpu::run`]: one `KVM_RUN`.
//! 2. [`handle_exit_sized`]: a pure map from the exit to an [`ExitAction`].
//! 3. [`VcpuRunner`]: the state machine that turns actions (and `KVM_RUN`
//!    errors) into the next [`RunState`], reading vCPU state for crash
//!    reports.
//!
//! Stopping a vCPU that is inside `KVM_RUN` (guest in `cli; hlt`, a spin
//! loop, or a `vmcall` that this host never returns from) follows the usual
//! KVM recipe: set the shared stop flag, then send the vCPU thread a
//! real-time signal. The signal makes a blocked `KVM_RUN` return `EINTR`; its
//! handler also sets `kvm_run.immediate_exit`, so a signal that lands just
//! before `KVM_RUN` is entered still makes it return at once.

use std::cell::Cell;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuExit;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::devices::{DeviceStats, Devices};
use crate::error::{Error, GuestError};
use crate::exit::{handle_exit_sized, ExitAction};
use crate::vcpu::Vcpu;
use crate::vm::{SetupError, Vm};

/// Offset from `SIGRTMIN` of the signal that kicks a vCPU out of `KVM_RUN`.
pub const VCPU_KICK_SIGNAL_OFFSET: c_int = 0;
/// How long the watchdog waits for kicked vCPUs to come back before it
/// gives up on them.
pub const KICK_GRACE: Duration = Duration::from_millis(500);
/// How often a vCPU that has not come back is signalled again.
const KICK_INTERVAL: Duration = Duration::from_millis(20);

thread_local! {
    /// This thread's vCPU `kvm_run` mapping, for the kick signal handler.
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick signal handler. It runs on the vCPU thread (the signal is sent
/// with `pthread_kill`); interrupting `KVM_RUN` is the signal's own effect,
/// and setting `immediate_exit` covers the window before `KVM_RUN` is entered.
extern "C" fn kick_handler(_num: c_int, _info: *mut libc::siginfo_t, _ctx: *mut c_void) {
    // `try_with` cannot panic; the key has no destructor, so it is never
    // in the "being destroyed" state anyway.
    let _ = KVM_RUN_PTR.try_with(|ptr| {
        let run = ptr.get();
        if !run.is_null() {
            // SAFETY: `run` was stored by this same thread from its live
            // vCPU's `kvm_run` mapping and is reset to null before that vCPU
            // is dropped (see `VcpuRunner::run`), so it points to mapped
            // memory. Only the one-byte `immediate_exit` field is written,
            // with a volatile store through the raw pointer (no reference is
            // created), which is what `VcpuFd::set_kvm_immediate_exit` does;
            // the kernel reads it at the next KVM_RUN entry.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> c_int {
    SIGRTMIN() + VCPU_KICK_SIGNAL_OFFSET
}

/// Installs [`kick_handler`] once per process.
fn install_kick_handler() -> Result<c_int, SetupError> {
    static INSTALLED: OnceLock<Result<c_int, i32>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let signum = kick_signal();
            register_signal_handler(signum, kick_handler).map(|()| signum).map_err(|e| e.errno())
        })
        .map_err(|errno| SetupError::SignalHandler(std::io::Error::from_raw_os_error(errno)))
}

fn lock(devices: &Mutex<Devices>) -> MutexGuard<'_, Devices> {
    // A poisoned lock only means another vCPU thread panicked mid-access;
    // the devices are still usable for reporting.
    devices.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a served ABI (a personality beyond KVM's own, such as lguest) adds to
/// the run loop of one vCPU. Its methods run on the vCPU's thread.
pub trait ServedAbi: Send + std::fmt::Debug {
    /// Whether `port` is this ABI's: writes come to [`Self::port_out`],
    /// reads to [`Self::port_in`].
    fn owns_port(&self, port: u16) -> bool;
    /// A write to one of its ports, with the vCPU stopped at it.
    fn port_out(&mut self, vcpu: &mut Vcpu, port: u16, ctx: &RunCtx) -> Result<Flow, GuestError>;
    /// A `size`-byte read from one of its ports, with the vCPU stopped at
    /// it: the value read (its low `size` bytes reach AL, AX or EAX as KVM
    /// resumes the guest). By default all ones, as an unclaimed port reads.
    fn port_in(&mut self, _vcpu: &mut Vcpu, _port: u16, _size: u8, _ctx: &RunCtx) -> Result<u32, GuestError> {
        Ok(u32::MAX)
    }
    /// A `rdmsr` KVM left to user space (a personality that asked for MSR
    /// exits): the value, or `None` for a #GP. By default every one faults,
    /// as KVM's unknown MSRs do.
    fn msr_read(&mut self, _vcpu: &mut Vcpu, _index: u32) -> Option<u64> {
        None
    }
    /// A `wrmsr` KVM left to user space: `false` for a #GP.
    fn msr_write(&mut self, _vcpu: &mut Vcpu, _index: u32, _value: u64) -> bool {
        false
    }
    /// Before each entry into the guest: after any exit, and after a kick.
    fn before_run(&mut self, vcpu: &mut Vcpu, ctx: &RunCtx) -> Result<Flow, GuestError>;
    /// What the personality counted, for `--stats`: one line, `name: key=N ...`.
    fn counters(&self) -> String;
}

/// With this variable set, the guest's vCPU 0 (not the hypercall probe's)
/// prints `pvrun: first KVM_RUN at <ns>` (CLOCK_MONOTONIC) on stderr just
/// before it first enters the guest: what the start-up benchmark
/// (`benches/startup.rs`) measures against.
pub const STARTUP_STAMP_ENV: &str = "PVRUN_STARTUP_STAMP";

fn stamp_first_run() {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "pvrun: first KVM_RUN at {ns}");
}

/// Why pvrun ends a guest that broke its served ABI (lguest's "sudden
/// death"): one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Death(pub String);

impl std::fmt::Display for Death {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Ends the current call or trap with a [`Death`].
macro_rules! die {
    ($($arg:tt)*) => { return Err($crate::runner::Death(format!($($arg)*))) };
}
pub(crate) use die;

/// What a served ABI may use of the run loop.
pub struct RunCtx<'a> {
    /// The devices (the console).
    pub devices: &'a Mutex<Devices>,
    /// Set when the run is being stopped: a wait must end.
    pub stop: &'a AtomicBool,
}

impl RunCtx<'_> {
    /// Passes console bytes of vCPU `vcpu` to the serial output.
    pub fn console(&self, vcpu: u8, bytes: &[u8]) {
        lock(self.devices).console_write(vcpu, bytes);
    }
}

/// What a served ABI tells the run loop.
#[derive(Debug)]
pub enum Flow {
    /// Enter the guest.
    Run,
    /// The vCPU is done.
    Stop(VcpuStop),
}

/// Why a vCPU stopped.
#[derive(Debug)]
pub enum VcpuStop {
    /// The guest wrote this value to the debug-exit port.
    DebugExit(u32),
    /// The guest asked for a reset (keyboard controller, port 0x64, or a
    /// served ABI's restart).
    Reset,
    /// The guest powered off through a served ABI, with its reason.
    PowerOff(String),
    /// The guest crashed.
    Crashed(GuestError),
    /// The watchdog stopped it; RIP if it could be read.
    Kicked {
        /// Where the vCPU was.
        rip: Option<u64>,
    },
}

/// The state of one vCPU's run loop.
#[derive(Debug)]
pub enum RunState {
    /// Keep entering the guest.
    Running,
    /// Done, for this reason.
    Stopped(VcpuStop),
}

/// Runs one vCPU until it stops: the run-state machine.
#[derive(Debug)]
pub struct VcpuRunner {
    vcpu: Vcpu,
    devices: Arc<Mutex<Devices>>,
    stop: Arc<AtomicBool>,
    abi: Option<Box<dyn ServedAbi>>,
    /// Exits served here (KVM_RUN returns other than a kick), for the bench marker.
    exits: Arc<AtomicU64>,
}

/// What one `KVM_RUN` came back with, once the exit's borrow of the vCPU ends.
enum Exit {
    /// Handled by the devices.
    Device(ExitAction),
    /// A write to a port of the served ABI.
    Abi(u16),
    /// A read from a port of the served ABI: the port, the size of one
    /// access, and how many (more than one: a string `ins`).
    AbiIn(u16, u8, u32),
    /// A `rdmsr` KVM left to user space: the MSR.
    MsrRead(u32),
    /// A `wrmsr` KVM left to user space: the MSR and the value.
    MsrWrite(u32, u64),
}

impl VcpuRunner {
    /// A runner for `vcpu`, serving exits on `devices` (and `abi`'s ports on
    /// `abi`), stopping when `stop` is set.
    pub fn new(
        vcpu: Vcpu,
        devices: Arc<Mutex<Devices>>,
        stop: Arc<AtomicBool>,
        abi: Option<Box<dyn ServedAbi>>,
    ) -> Self {
        let exits = lock(&devices).vmm_exits(vcpu.index());
        VcpuRunner { vcpu, devices, stop, abi, exits }
    }

    fn flow(
        &mut self,
        f: impl FnOnce(&mut dyn ServedAbi, &mut Vcpu, &RunCtx) -> Result<Flow, GuestError>,
    ) -> Option<RunState> {
        let abi = self.abi.as_deref_mut()?;
        let ctx = RunCtx { devices: &self.devices, stop: &self.stop };
        match f(abi, &mut self.vcpu, &ctx) {
            Ok(Flow::Run) => None,
            Ok(Flow::Stop(stop)) => Some(RunState::Stopped(stop)),
            Err(e) => Some(RunState::Stopped(VcpuStop::Crashed(e))),
        }
    }

    /// One transition: enter the guest once and decide what comes next.
    pub fn step(&mut self) -> RunState {
        if self.stop.load(Ordering::Acquire) {
            return RunState::Stopped(VcpuStop::Kicked { rip: self.vcpu.rip() });
        }
        if let Some(state) = self.flow(|abi, vcpu, ctx| abi.before_run(vcpu, ctx)) {
            return state;
        }
        let index = self.vcpu.index();
        let run = self.vcpu.kvm_run_ptr();
        let exit = match self.vcpu.run() {
            Ok(VcpuExit::IoOut(port, _)) if self.abi.as_ref().is_some_and(|a| a.owns_port(port)) => {
                Ok(Exit::Abi(port))
            }
            Ok(VcpuExit::IoIn(port, _)) if self.abi.as_ref().is_some_and(|a| a.owns_port(port)) => {
                // SAFETY: as for the device exits below: `run` is this vCPU's
                // live kvm_run mapping, whose `io` member KVM filled for this
                // exit; read through the raw pointer.
                let io = unsafe { std::ptr::addr_of!((*run).__bindgen_anon_1.io).read() };
                Ok(Exit::AbiIn(port, io.size, io.count))
            }
            Ok(VcpuExit::X86Rdmsr(msr)) if self.abi.is_some() => Ok(Exit::MsrRead(msr.index)),
            Ok(VcpuExit::X86Wrmsr(msr)) if self.abi.is_some() => Ok(Exit::MsrWrite(msr.index, msr.data)),
            Ok(exit) => {
                let io_size = match exit {
                    // SAFETY: `run` is this vCPU's live kvm_run mapping, and for an
                    // I/O exit its `io` member is the one KVM filled. It is read
                    // through the raw pointer: the exit's borrow covers only the
                    // data area further into the mapping.
                    VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => Some(usize::from(unsafe {
                        std::ptr::addr_of!((*run).__bindgen_anon_1.io.size).read()
                    })),
                    _ => None,
                };
                Ok(Exit::Device(handle_exit_sized(exit, index, io_size, &mut lock(&self.devices))))
            }
            Err(e) => Err(e),
        };
        let action = match exit {
            Ok(Exit::Abi(port)) => {
                self.exits.fetch_add(1, Ordering::Relaxed);
                return self
                    .flow(|abi, vcpu, ctx| abi.port_out(vcpu, port, ctx))
                    .unwrap_or(RunState::Running);
            }
            Ok(Exit::AbiIn(port, size, count)) => {
                self.exits.fetch_add(1, Ordering::Relaxed);
                let abi = match self.abi.as_deref_mut() {
                    // A string read is no call of any served ABI: it reads an
                    // unclaimed port.
                    Some(abi) if count == 1 => abi,
                    _ => {
                        self.vcpu.complete_io_in(u32::MAX);
                        return RunState::Running;
                    }
                };
                let ctx = RunCtx { devices: &self.devices, stop: &self.stop };
                return match abi.port_in(&mut self.vcpu, port, size, &ctx) {
                    Ok(value) => {
                        self.vcpu.complete_io_in(value);
                        RunState::Running
                    }
                    Err(e) => RunState::Stopped(VcpuStop::Crashed(e)),
                };
            }
            Ok(Exit::MsrRead(index)) => {
                self.exits.fetch_add(1, Ordering::Relaxed);
                let value = self.abi.as_deref_mut().and_then(|abi| abi.msr_read(&mut self.vcpu, index));
                self.vcpu.complete_msr(value);
                return RunState::Running;
            }
            Ok(Exit::MsrWrite(index, value)) => {
                self.exits.fetch_add(1, Ordering::Relaxed);
                let done =
                    self.abi.as_deref_mut().is_some_and(|abi| abi.msr_write(&mut self.vcpu, index, value));
                self.vcpu.complete_msr(done.then_some(0));
                return RunState::Running;
            }
            Ok(Exit::Device(action)) => {
                self.exits.fetch_add(1, Ordering::Relaxed);
                action
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                // Kicked (or a stray signal): clear the flag the handler may
                // have set, then let the stop check above decide.
                self.vcpu.set_immediate_exit(false);
                return RunState::Running;
            }
            Err(e) => {
                return RunState::Stopped(VcpuStop::Crashed(GuestError::RunFailed {
                    vcpu: index,
                    source: std::io::Error::from_raw_os_error(e.errno()),
                    rip: self.vcpu.rip(),
                }))
            }
        };
        let crashed = |e| RunState::Stopped(VcpuStop::Crashed(e));
        match action {
            ExitAction::Continue => RunState::Running,
            ExitAction::DebugExit(value) => RunState::Stopped(VcpuStop::DebugExit(value)),
            ExitAction::Reset => RunState::Stopped(VcpuStop::Reset),
            ExitAction::Shutdown => {
                crashed(GuestError::TripleFault { vcpu: index, regs: self.vcpu.registers().map(Box::new) })
            }
            ExitAction::InternalError => {
                let info = self.vcpu.internal_error_info().unwrap_or_default();
                crashed(GuestError::InternalError {
                    vcpu: index,
                    suberror: info.suberror,
                    data: info.data,
                    regs: self.vcpu.registers().map(Box::new),
                })
            }
            ExitAction::FailEntry { reason, cpu } => {
                crashed(GuestError::FailEntry { vcpu: index, reason, cpu, rip: self.vcpu.rip() })
            }
            ExitAction::Unexpected(what) => {
                crashed(GuestError::UnexpectedExit { vcpu: index, what, rip: self.vcpu.rip() })
            }
        }
    }

    /// Steps until the vCPU stops, first printing the start-up stamp if
    /// `stamp` (see [`STARTUP_STAMP_ENV`]). Must run on the thread the
    /// watchdog signals.
    pub fn run(mut self, stamp: bool) -> VcpuStop {
        KVM_RUN_PTR.with(|p| p.set(self.vcpu.kvm_run_ptr()));
        if stamp {
            stamp_first_run();
        }
        let stop = loop {
            if let RunState::Stopped(stop) = self.step() {
                break stop;
            }
        };
        // Before the vCPU (and its kvm_run mapping) can be dropped.
        KVM_RUN_PTR.with(|p| p.set(std::ptr::null_mut()));
        if let Some(abi) = &self.abi {
            lock(&self.devices).set_abi_counters(self.vcpu.index(), abi.counters());
        }
        stop
    }
}

/// How a guest ended on its own terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// It wrote to the debug-exit port (0xf4).
    DebugExit,
    /// It asked for a reset (0xfe to the keyboard controller, port 0x64, or a
    /// served ABI's restart).
    Reset,
    /// It powered off through a served ABI (lguest's `SHUTDOWN`).
    PowerOff,
}

/// How a guest ended on its own terms: it wrote to the debug-exit port, asked
/// for a reset, or powered off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestExit {
    /// Debug exit, reset or power-off.
    pub kind: ExitKind,
    /// The value written to port 0xf4 (0 otherwise).
    pub value: u32,
    /// The process status to exit with: `(value << 1) | 1`, as QEMU's
    /// isa-debug-exit (the OS keeps only its low 8 bits); 0 for a reset or a
    /// power-off.
    pub status: i32,
    /// The reason a served ABI's power-off gave.
    pub reason: Option<String>,
    /// Device traffic counters.
    pub stats: DeviceStats,
}

impl GuestExit {
    /// The result of a guest that wrote `value` to the debug-exit port.
    pub fn from_value(value: u32, stats: DeviceStats) -> Self {
        GuestExit {
            kind: ExitKind::DebugExit,
            value,
            status: (value.wrapping_shl(1) | 1) as i32,
            reason: None,
            stats,
        }
    }

    /// The result of a guest that asked for a reset: status 0.
    pub fn reset(stats: DeviceStats) -> Self {
        GuestExit { kind: ExitKind::Reset, value: 0, status: 0, reason: None, stats }
    }

    /// The result of a guest that powered off with `reason`: status 0.
    pub fn power_off(reason: String, stats: DeviceStats) -> Self {
        GuestExit { kind: ExitKind::PowerOff, value: 0, status: 0, reason: Some(reason), stats }
    }
}

/// Held shut while the vCPU threads are spawned: no vCPU enters the guest
/// before every thread exists, so vCPUs already running guest code do not
/// slow down the spawning of the rest (255 threads on a host with two CPUs),
/// and the watchdog's `timeout` counts from when all of them start.
#[derive(Debug, Default)]
struct StartGate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl StartGate {
    fn wait(&self) {
        let open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A kick signal may wake the wait early: the loop waits again.
        let _open = self.opened.wait_while(open, |open| !*open);
    }

    fn open(&self) {
        *self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = true;
        self.opened.notify_all();
    }
}

/// Runs `vcpus` on their own threads until one of them stops (debug exit,
/// reset or crash), then stops the others; the watchdog stops all of them
/// after `timeout`, counted from when every vCPU thread exists and the
/// vCPUs start. Application processors still waiting for INIT/SIPI sit in
/// `KVM_RUN` until then; the stop signal brings them back like the rest.
///
/// A vCPU thread that does not come back from `KVM_RUN` within
/// [`KICK_GRACE`] of being signalled is left behind (detached, still owning
/// its share of the VM so guest memory stays mapped); the caller is expected
/// to exit the process soon after. With `stamp_first_run`, vCPU 0 stamps
/// its first entry (see [`STARTUP_STAMP_ENV`]).
pub fn run_vcpus(
    vm: Arc<Vm>,
    vcpus: Vec<(Vcpu, Option<Box<dyn ServedAbi>>)>,
    devices: Arc<Mutex<Devices>>,
    timeout: Duration,
    stamp_first_run: bool,
) -> Result<GuestExit, Error> {
    let signum = install_kick_handler()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<(usize, u8, VcpuStop)>();
    let mut threads: Vec<Option<JoinHandle<()>>> = Vec::with_capacity(vcpus.len());
    let gate = Arc::new(StartGate::default());

    for (slot, (vcpu, abi)) in vcpus.into_iter().enumerate() {
        let (vm, devices, vcpu_stop, tx) = (vm.clone(), devices.clone(), stop.clone(), tx.clone());
        let vcpu_gate = gate.clone();
        let index = vcpu.index();
        let spawned = std::thread::Builder::new().name(format!("vcpu{index}")).spawn(move || {
            vcpu_gate.wait();
            let stamp = stamp_first_run && index == 0;
            let outcome = VcpuRunner::new(vcpu, devices, vcpu_stop, abi).run(stamp);
            let _ = tx.send((slot, index, outcome));
            // The vCPU is gone now; only then may the memory go.
            drop(vm);
        });
        match spawned {
            Ok(handle) => threads.push(Some(handle)),
            Err(e) => {
                // The threads that exist see the stop flag first thing.
                stop.store(true, Ordering::Release);
                gate.open();
                stop_all(&stop, &mut threads, &rx, signum);
                return Err(SetupError::SpawnThread(e).into());
            }
        }
    }
    drop(tx);
    gate.open();

    let first = match rx.recv_timeout(timeout) {
        Ok((slot, index, outcome)) => {
            join(&mut threads[slot]);
            Some((index, outcome))
        }
        Err(RecvTimeoutError::Timeout) => None,
        Err(RecvTimeoutError::Disconnected) => {
            for t in threads.iter_mut() {
                join(t);
            }
            return Err(SetupError::VcpuThreadPanicked.into());
        }
    };
    let rest = stop_all(&stop, &mut threads, &rx, signum);
    let stuck = threads.iter().any(Option::is_some);

    // The final serial flush; a stuck thread might hold the lock, so only try.
    let stats = match devices.try_lock() {
        Ok(mut d) => {
            d.flush();
            d.stats()
        }
        Err(std::sync::TryLockError::Poisoned(p)) => {
            let mut d = p.into_inner();
            d.flush();
            d.stats()
        }
        Err(std::sync::TryLockError::WouldBlock) => DeviceStats::default(),
    };

    // A vCPU that stopped on its own wins over the watchdog, even if it
    // reported during the grace period; the first one to stop wins over the
    // others. On a timeout, the lowest-numbered vCPU's RIP is reported.
    let mut kicked: Option<(u8, u64)> = None;
    for (index, outcome) in first.into_iter().chain(rest) {
        match outcome {
            VcpuStop::DebugExit(value) => return Ok(GuestExit::from_value(value, stats)),
            VcpuStop::Reset => return Ok(GuestExit::reset(stats)),
            VcpuStop::PowerOff(reason) => return Ok(GuestExit::power_off(reason, stats)),
            VcpuStop::Crashed(e) => return Err(e.into()),
            VcpuStop::Kicked { rip: Some(rip) } if kicked.is_none_or(|(i, _)| index < i) => {
                kicked = Some((index, rip))
            }
            VcpuStop::Kicked { .. } => {}
        }
    }
    Err(Error::Timeout {
        timeout,
        rip: kicked.map(|(_, rip)| rip),
        vcpu: kicked.map_or(0, |(index, _)| index),
        stuck,
    })
}

fn join(thread: &mut Option<JoinHandle<()>>) {
    if let Some(handle) = thread.take() {
        // The thread has already sent its outcome; a panic after that is
        // not worth reporting.
        let _ = handle.join();
    }
}

/// Sets the stop flag and signals every vCPU thread still running until it
/// reports, for at most [`KICK_GRACE`]. Returns the outcomes received; the
/// threads that did not report stay in `threads`.
///
/// Each round signals the threads still out once, then collects every report
/// that arrives until the next round ([`KICK_INTERVAL`] later), so the cost
/// grows with the number of vCPUs, not with its square (255 vCPUs coming back
/// one by one must not re-signal the rest 255 times).
fn stop_all(
    stop: &AtomicBool,
    threads: &mut [Option<JoinHandle<()>>],
    rx: &mpsc::Receiver<(usize, u8, VcpuStop)>,
    signum: c_int,
) -> Vec<(u8, VcpuStop)> {
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + KICK_GRACE;
    let mut outcomes = Vec::new();
    let mut out = threads.iter().filter(|t| t.is_some()).count();
    'rounds: while out > 0 {
        for handle in threads.iter().flatten() {
            // Fails only if the thread has already exited, which is fine.
            let _ = handle.kill(signum);
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let next_round = (now + KICK_INTERVAL).min(deadline);
        while out > 0 {
            let wait = next_round.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok((slot, index, outcome)) => {
                    join(&mut threads[slot]);
                    outcomes.push((index, outcome));
                    out -= 1;
                }
                Err(RecvTimeoutError::Timeout) => break,
                // Every remaining thread died without reporting.
                Err(RecvTimeoutError::Disconnected) => {
                    for t in threads.iter_mut() {
                        join(t);
                    }
                    break 'rounds;
                }
            }
        }
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_exit_status_is_qemu_compatible() {
        let s = DeviceStats::default();
        assert_eq!(GuestExit::from_value(0, s).status, 1);
        assert_eq!(GuestExit::from_value(3, s).status, 7);
        assert_eq!(GuestExit::from_value(0x7f, s).status & 0xff, 0xff);
        assert_eq!(GuestExit::from_value(0x80, s).status & 0xff, 0x01);
        assert_eq!(GuestExit::from_value(0, s).kind, ExitKind::DebugExit);
        let reset = GuestExit::reset(s);
        assert_eq!((reset.kind, reset.status), (ExitKind::Reset, 0));
    }
}
