//! The Linux personality: run an unmodified x86-64 Linux program (static, static-PIE or
//! dynamically linked; glibc or musl) in guest ring 3, with the shim as its kernel.
//!
//! ```text
//!  guest ring 3: PROG + ld.so + libc (native speed)
//!       │ syscall → #UD → `out 0xe6; iretq` stub (cpu.rs)
//!       ▼
//!  vCPU thread: Process::on_trap → syscall.rs (guest pointers through mm.rs, checked)
//!       → host calls (host.rs) on the virtual fd table (fd.rs) → RAX/RCX/R11, resume
//! ```
//!
//! * [`loader`]: the program and its PT_INTERP interpreter, mapped from their files
//!   (every mapping is recorded with path and offset, like perf's MMAP2).
//! * [`stack`]: argv, envp and the auxiliary vector.
//! * [`mm`]: guest page tables, mappings, brk; every guest pointer is checked there.
//!   [`frames`]: the guest-physical frames they come from; [`shm`]: frames shared
//!   between processes (`MAP_SHARED`).
//! * [`cpu`]: the trap area and the system-call path (why it costs one exit).
//! * [`syscall`]: the system calls; anything else is `-ENOSYS`, counted and reported.
//! * [`host`]: the only `unsafe` of the personality (host system calls).
//! * [`entropy`]: the program's random bytes: the host's, or a fixed stream (exact mode).
//! * [`clock`]: the program's clocks: the host's, or a virtual clock (exact mode).
//! * [`vdso`]: the vDSO every program maps, so reading a clock is no exit; [`vclock`]:
//!   the clocks of its data page (the host's, from the guest's TSC).
//!
//! * [`events`]: epoll, eventfd and timerfd on host instances, and the generic ioctls.
//! * [`net`]: sockets on host sockets (SCM_RIGHTS descriptors translated).
//! * [`thread`]: threads (one vCPU each) and futex queues; [`futex`]: the call, and
//!   futexes in memory shared between processes.
//! * [`signal`]: signal dispositions and the queues of pending signals.
//! * [`itimer`]: the real-time interval timer (`alarm`, `setitimer`).
//! * [`proc`]: processes: what they share (ids, parents, zombies, waits, signals between
//!   them), and the process model.
//! * [`procfs`]: `/proc/self` and `/proc/PID` with the guest's process ids.
//! * [`sigframe`]: signal frames for the program's handlers, and `rt_sigreturn`
//!   ([`signal`] holds the signal model they use).
//! * [`block`] and [`waiter`]: what a thread blocks on with its process released.
//! * [`program`]: a checked program and its initial image; [`outcome`]: what a system
//!   call does to the program; [`report`]: what the personality tells its caller;
//!   [`errno`] and [`error`]: the errors.
//!
//! Layers (each file imports only files below it): `abi`, `errno`, `error`, `waiter`,
//! `host` at the bottom; then `frames`, `shm`, `vclock`; `mm`, `fd`, `signal`, `stack`, `entropy`,
//! `clock`; `vdso`, `cpu`, `report`, `loader`, `thread`; `proc`, `program`, `itimer`, `block`, `outcome`; this file, which defines
//! [`Process`]; and on top the files that extend it: `syscall`, `futex`, `events`, `net`,
//! `sigframe`, `procfs`. One arrow still points up: `mm`'s fork asks the emulated LBR
//! (`pmu::kvm_hook`) for the bytes under its breakpoints.
//!
//! The process model (see [`proc`]): a guest process is a [`Process`] with its own
//! address space (own page tables, from the VM's one frame pool), descriptor table,
//! signal dispositions and working directory; each of its threads is a vCPU. `fork`,
//! `vfork` and a `clone` without `CLONE_VM` copy the address space and start the child
//! on a vCPU of its own (a vfork parent lends the child its address space and waits
//! until the child execs or exits); `execve`
//! builds a new address space in place, on the same vCPU (from a threaded process, the
//! other threads end first, as Linux's de_thread; see `Process::end_other_threads`).
//! Signals from other processes kick the receiver's vCPUs out of the guest and are
//! delivered at once (`Process::deliver_async`). A vCPU whose thread ended
//! waits for the next thread or process. The run ends when the first process ends.
//!
//! Memory shared between processes (`MAP_SHARED` regions and files) is backed by
//! refcounted shared frames ([`shm`]): a fork maps them in the child instead of copying;
//! futexes in it meet across processes ([`futex`]).
//!
//! Limits: no copy-on-write (a fork copies the private pages that are not all zero); a
//! `clone` that shares memory between two processes without vfork ends the program with
//! an "unsupported" error; private file mappings are copies.

pub mod abi;
pub mod block;
pub mod clock;
pub mod cpu;
mod elf_image;
pub mod entropy;
pub mod errno;
pub mod error;
pub mod events;
pub mod fd;
pub mod files;
pub mod frames;
pub mod futex;
pub mod host;
pub mod itimer;
pub mod limits;
pub mod loader;
pub mod mm;
pub mod net;
pub mod outcome;
pub mod proc;
pub mod procfs;
pub mod program;
pub mod report;
pub mod shm;
pub mod sigframe;
pub mod signal;
pub mod signalfd;
pub mod sigwait;
pub mod stack;
pub mod syscall;
pub mod sysv;
pub mod thread;
pub mod trapsyms;
pub mod usage;
pub mod vclock;
pub mod vdso;
pub mod waiter;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;

use kvm_bindings::kvm_regs;
use kvm_ioctls::VcpuFd;

use crate::arch::RFLAGS_TF;
use crate::error::VmError;
use crate::linux::abi::*;
use crate::linux::block::Block;
use crate::linux::cpu::{TrapArea, TrapFrame};
pub use crate::linux::error::LinuxError;
use crate::linux::fd::FdTable;
pub use crate::linux::mm::LentSpace;
use crate::linux::mm::{AddressSpace, Fault, MapRecord};
pub use crate::linux::program::Program;
use crate::linux::program::build_image;
pub use crate::linux::report::{
    GuestEvent, GuestEventSink, LinuxReport, ProcessRecord, TimedGuestEvent,
};
use crate::linux::thread::{Futexes, NewThread, Task};
use crate::memory::{GuestMemory, GuestPhysAddr, GuestVirtAddr};

/// How a trap ends.
#[derive(Debug)]
pub enum TrapAction {
    Resume,
    /// exit_group (or the last thread's exit) with this status.
    Exit(i32),
    /// The program is killed by `signal` (a fault, or an unsupported call).
    Killed {
        signal: i32,
        reason: String,
    },
    /// This thread ended (`exit`); others still run.
    ThreadExit,
    /// The thread blocks (futex wait, sleep): the caller releases the process, waits,
    /// then calls [`Process::finish_block`].
    Block {
        pending: Pending,
        block: Block,
    },
    /// `clone` made a thread: the caller starts it on a new vCPU, then calls
    /// [`Process::finish_clone`].
    Clone {
        pending: Pending,
        child: Box<NewThread>,
    },
    /// fork/vfork/clone made a process: the caller starts its thread on a vCPU, then
    /// calls [`Process::finish_fork`].
    Fork {
        pending: Pending,
        child: Box<NewProcess>,
    },
    /// execve replaced the program: the vCPU runs on these page-table roots now.
    Exec {
        roots: [u64; 2],
    },
    /// fork or execve, to finish with [`Process::finish_process_op`].
    ProcessOp {
        pending: Pending,
        op: ProcessOp,
    },
}

/// A process `fork` made, and its first thread.
pub struct NewProcess {
    /// The parent's address space, lent to the child (vfork with CLONE_VM).
    pub lent: Option<LentSpace>,
    pub process: Process,
    pub thread: NewThread,
    /// The parent waits for it to exec or exit (vfork).
    pub vfork: bool,
}

impl std::fmt::Debug for NewProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewProcess")
            .field("pid", &self.process.pid)
            .field("vfork", &self.vfork)
            .finish()
    }
}

/// A system call whose result is not known yet: the registers to resume with.
#[derive(Debug)]
pub struct Pending {
    regs: kvm_regs,
    /// The registers go back through the run page (KVM_CAP_SYNC_REGS).
    fast: bool,
    /// The call's number (to start it again after a signal handler, SA_RESTART).
    nr: u64,
}

/// A running program: its memory, descriptors and counters.
pub struct Process {
    pub(crate) mm: AddressSpace,
    pub(crate) fds: FdTable,
    trap: TrapArea,
    pub(crate) path: PathBuf,
    pub(crate) report: LinuxReport,
    pub(crate) counts: BTreeMap<u64, u64>,
    /// Signal dispositions the program set (`struct sigaction` as the kernel takes it).
    pub(crate) sigactions: BTreeMap<u64, [u8; 32]>,
    /// The process id (the main thread's id).
    pub(crate) pid: u64,
    /// Thread TSS/stack slots handed out ([`cpu::build_thread_trap`]).
    trap_slots: u64,
    /// Threads alive, and the host threads running them (to kick them out of the guest).
    /// (None until the thread's vCPU starts.)
    pub(crate) threads: BTreeMap<u64, Option<libc::pthread_t>>,
    /// Signals sent to other threads (tgkill), taken at their next system call.
    pub(crate) signals_for: BTreeMap<u64, signal::SigPending>,
    pub(crate) futexes: Futexes,
    /// Bumped whenever page-table entries were removed or restricted: every vCPU must
    /// reload CR3 before it runs the program again (see [`thread`]).
    tlb_generation: Arc<std::sync::atomic::AtomicU64>,
    /// Where each file mapping goes as it is made ([`crate::vm::VmConfig::guest_maps`]).
    map_sink: Option<GuestEventSink>,
    /// What the VM's processes share (ids, zombies, waits, signals between them).
    pub(crate) kernel: Arc<proc::Kernel>,
    /// What other processes may change here without the lock.
    pub(crate) shared: Arc<proc::Shared>,
    /// The VM's first process (its end is the run's end).
    pub(crate) initial: bool,
    /// The working directory when the program changed it (chdir/fchdir): its path and
    /// an `O_PATH` descriptor; None: lbrprof's own.
    pub(crate) cwd: Option<(PathBuf, Arc<std::os::fd::OwnedFd>)>,
    /// A vfork parent waiting for this process to exec or exit.
    pub(crate) vfork_parent: Option<Arc<waiter::Waiter>>,
    /// Where this process's address space goes back to its vfork parent.
    pub(crate) lent: Option<LentSpace>,
    /// The parking places of its threads (an execve wakes the others to end them).
    pub(crate) waiters: BTreeMap<u64, Arc<waiter::Waiter>>,
    /// Address spaces an execve replaced while other threads may still run on them:
    /// each is freed once no thread holds its token ([`Task::space_token`]).
    retired: Vec<(std::sync::Weak<()>, AddressSpace)>,
    /// ITIMER_REAL (alarm, setitimer): SIGALRM to this process.
    pub(crate) itimer: Arc<itimer::RealTimer>,
    /// POSIX timers (timer_create), by id.
    pub(crate) timers: BTreeMap<u64, Arc<itimer::RealTimer>>,
    /// The next POSIX timer id to try: Linux hands them out in increasing order (a
    /// deleted timer's id is not reused at once).
    pub(crate) next_timer: u64,
    /// Its random bytes (getrandom, AT_RANDOM, /dev/urandom): the host's or a fixed stream.
    pub(crate) entropy: entropy::Entropy,
    /// The resource limits it set (RLIMIT_NOFILE is its descriptor table's).
    pub(crate) limits: limits::Limits,
}

impl Drop for Process {
    /// A vfork child that never ran (or was stopped) still gives its parent's address
    /// space back.
    fn drop(&mut self) {
        self.give_back();
    }
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process").field("path", &self.path).finish()
    }
}

/// Copies of lbrprof's standard descriptors for the program.
fn stdio() -> [Option<std::os::fd::OwnedFd>; 3] {
    [0, 1, 2].map(|fd| host::dup(fd).ok())
}

impl Process {
    /// Load `program` into `mem` (guest-physical from `first_free` up is the program's)
    /// and return it with the registers of its first instruction. It is the VM's first
    /// process: its exit ends the run. With `pinned`, its clocks are virtual
    /// ([`clock`]) and its processes are numbered from [`proc::PINNED_PID`]; otherwise
    /// it reads the host's clocks and has lbrprof's pid.
    pub fn load(
        mem: Arc<GuestMemory>,
        first_free: u64,
        program: &Program,
        source: entropy::EntropySource,
        pinned: bool,
    ) -> Result<(Process, Task, kvm_regs), LinuxError> {
        let oom = |_| LinuxError::OutOfMemory;
        let mut mm = AddressSpace::new(mem, first_free).map_err(oom)?;
        let mut entropy = entropy::Entropy::new(source);
        let vdso = vdso::Vdso::new(mm.memory_arc(), mm.pool()).map_err(oom)?;
        let (trap, regs) = build_image(&mut mm, program, entropy.at_random(), None, Some(&vdso))?;
        let report = LinuxReport {
            maps: mm.maps.clone(),
            processes: 1,
            ..Default::default()
        };
        let ids = host::ids();
        // The first process is lbrprof's stand-in: its pid, parent, process group and
        // session are lbrprof's (pinned: the leader of group 1000 in session 999, as a
        // shell's job).
        let (pid, ppid, (pgid, sid), clock) = if pinned {
            (
                proc::PINNED_PID,
                proc::PINNED_PARENT,
                (proc::PINNED_PID, proc::PINNED_PARENT),
                clock::Clock::pinned(),
            )
        } else {
            (
                ids[0],
                ids[1],
                host::group_and_session(),
                clock::Clock::host(),
            )
        };
        let shared: Arc<proc::Shared> = Arc::default();
        let kernel = Arc::new(
            proc::Kernel::new(mm.pool(), pid, ppid, shared.clone())
                .in_session(pgid, sid)
                .with_clock(clock)
                .with_vdso(Some(vdso)),
        );
        let mut p = Process::with(mm, FdTable::with_stdio(stdio()), trap, pid);
        p.kernel = kernel;
        p.shared = shared;
        p.initial = true;
        p.path = program.path.clone();
        p.report = report;
        p.entropy = entropy;
        let task = p.main_task();
        Ok((p, task, regs))
    }

    /// The program starts with the signals of `mask` (bit `n - 1` for signal `n`)
    /// ignored, as a program exec'ed by a process that ignores them (SIGKILL and SIGSTOP
    /// cannot be).
    pub fn inherit_ignored(&mut self, mask: u64) {
        for sig in 1..=64u64 {
            let fixed = sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64;
            if mask & (1 << (sig - 1)) != 0 && !fixed {
                let mut raw = [0u8; 32];
                raw[..8].copy_from_slice(&1u64.to_le_bytes()); // SIG_IGN
                self.sigactions.insert(sig, raw);
            }
        }
    }

    fn with(mm: AddressSpace, fds: FdTable, trap: TrapArea, pid: u64) -> Process {
        let pool = mm.pool();
        let shared: Arc<proc::Shared> = Arc::default();
        Process {
            mm,
            fds,
            trap,
            path: PathBuf::new(),
            report: LinuxReport::default(),
            counts: BTreeMap::new(),
            sigactions: BTreeMap::new(),
            pid,
            trap_slots: 0,
            threads: BTreeMap::new(),
            signals_for: BTreeMap::new(),
            futexes: Futexes::default(),
            tlb_generation: Arc::default(),
            map_sink: None,
            kernel: Arc::new(proc::Kernel::new(pool, pid, 0, shared.clone())),
            shared,
            initial: false,
            cwd: None,
            vfork_parent: None,
            lent: None,
            waiters: BTreeMap::new(),
            retired: Vec::new(),
            itimer: Arc::new(itimer::RealTimer::interval_timer()),
            timers: BTreeMap::new(),
            next_timer: 0,
            entropy: entropy::Entropy::new(entropy::EntropySource::Host),
            limits: limits::Limits::default(),
        }
    }

    /// The task of the program's first thread (its id is the process id).
    pub fn main_task(&self) -> Task {
        let mut t = Task::new(self.pid, self.mm.cr3(), self.trap);
        // Linux names a process after its executable's file name (15 bytes at most).
        let name = self
            .path
            .file_name()
            .map(|n| n.as_bytes())
            .unwrap_or_default();
        let n = name.len().min(15);
        t.comm[..n].copy_from_slice(&name[..n]);
        t
    }

    /// The generation of page-table changes every vCPU must have flushed (see [`thread`]).
    pub fn tlb_generation(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.tlb_generation.clone()
    }

    /// Thread `task` runs on the calling host thread from now on.
    pub fn register_thread(&mut self, task: &Task) {
        // SAFETY: pthread_self has no preconditions.
        self.threads
            .insert(task.tid, Some(unsafe { libc::pthread_self() }));
        self.waiters.insert(task.tid, task.waiter.clone());
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.shared.vcpus().insert(task.tid, me);
        self.shared.accounts.enter(task.tid);
        self.shared.shown().threads.insert(task.tid, task.comm);
        if task.tid == self.pid {
            self.publish();
        }
    }

    /// A process with a trap area and no program: for tests and fuzzing of the system
    /// calls (map memory with [`Process::memory_mut`], then call [`Process::syscall`]).
    #[doc(hidden)]
    pub fn bare(mem: Arc<GuestMemory>) -> Result<Process, errno::Errno> {
        let mut mm = AddressSpace::new(mem, 0x1000)?;
        let trap = cpu::build_trap_area(&mut mm, None)?;
        let mut p = Process::with(mm, FdTable::with_stdio([None, None, None]), trap, 1);
        p.path = PathBuf::from("/bare");
        Ok(p)
    }

    /// The address space (tests and fuzzing).
    #[doc(hidden)]
    pub fn memory_mut(&mut self) -> &mut AddressSpace {
        &mut self.mm
    }

    /// Whether `port` is one of the trap stubs' exits.
    pub fn is_trap_port(port: u16) -> bool {
        port == TRAP_PORT_SYSCALL
            || port == TRAP_PORT_NULL
            || (TRAP_PORT_OTHER..=TRAP_PORT_BASE + 31).contains(&port)
    }

    /// Use KVM_CAP_SYNC_REGS for `task`'s system calls (the caller checked KVM has it).
    pub fn use_sync_regs(task: &mut Task, vcpu: &mut VcpuFd) {
        vcpu.set_sync_valid_reg(kvm_ioctls::SyncReg::Register);
        task.sync_regs = true;
    }

    /// From now on, send every file mapping to `tx` as it is made, starting with the
    /// process itself and the mappings already made (the program and its interpreter).
    pub fn send_maps_to(&mut self, tx: GuestEventSink) {
        tx.send(GuestEvent::Process(self.record()));
        for m in &self.report.maps {
            tx.send(GuestEvent::Map(m.clone()));
        }
        self.map_sink = Some(tx);
    }

    /// This process as a recorder sees it.
    pub fn record(&self) -> ProcessRecord {
        let comm = self
            .path
            .file_name()
            .map(|n| String::from_utf8_lossy(&n.as_bytes()[..n.len().min(15)]).into_owned())
            .unwrap_or_default();
        ProcessRecord {
            space: self.mm.space,
            pid: self.pid,
            ppid: self.kernel.parent(self.pid).unwrap_or(0),
            comm,
            exe: self.path.clone(),
            roots: self.mm.roots(),
        }
    }

    /// Records a mapping the program made, and sends it on (see [`Self::send_maps_to`]).
    pub(crate) fn note_map(&mut self, m: MapRecord) {
        if let Some(tx) = &self.map_sink {
            tx.send(GuestEvent::Map(m.clone()));
        }
        self.report.maps.push(m);
    }

    /// Records the mappings the address space added since it had `known` (an `mmap` of a
    /// file, anonymous memory made executable).
    pub(crate) fn note_new_maps(&mut self, known: usize) {
        let new: Vec<MapRecord> = self.mm.maps.get(known..).unwrap_or_default().to_vec();
        for m in new {
            self.note_map(m);
        }
    }

    /// The process's id.
    pub fn pid(&self) -> u64 {
        self.pid
    }

    /// Its address space's id ([`ProcessRecord::space`]).
    pub fn space(&self) -> u32 {
        self.mm.space
    }

    /// A vfork parent takes its address space back from its child; every vCPU of the
    /// process reloads CR3 (the child may have changed mappings).
    fn take_back(&mut self, slot: &LentSpace) {
        if let Some(mm) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
            self.mm = mm;
            self.tlb_generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }

    /// A vfork child gives the address space it borrowed back to its parent.
    fn give_back(&mut self) {
        if let Some(slot) = self.lent.take() {
            let hollow = AddressSpace::hollow(self.mm.memory_arc(), self.mm.pool());
            let mm = std::mem::replace(&mut self.mm, hollow);
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(mm);
        }
    }

    /// A child that never started: as if it had ended and been waited for.
    pub fn forget_child(&mut self, pid: u64) {
        self.kernel.exit(pid, proc::killed(libc::SIGKILL));
        let _ = self
            .kernel
            .reap(self.pid, proc::WaitFor::Pid(pid), false, None);
    }

    /// Whether this is the VM's first process.
    pub fn is_initial(&self) -> bool {
        self.initial
    }

    /// What other processes may change here without the lock (and whether it ended).
    pub fn shared(&self) -> Arc<proc::Shared> {
        self.shared.clone()
    }

    /// The process ended with wait status `status`: its parent may reap it, its other
    /// threads stop, a vfork parent goes on, and what it reported joins the run's.
    pub fn end(&mut self, tid: u64, status: i32) {
        // What it used, for its parent's wait4 and getrusage(RUSAGE_CHILDREN).
        let resident = self.report.peak_bytes.max(self.mm.resident_bytes());
        self.shared.accounts.note_resident(resident);
        self.shared.accounts.leave_all();
        {
            // A zombie: its main thread, no memory (so no arguments either: ps says
            // `<defunct>`).
            let mut shown = self.shared.shown();
            let pid = self.pid;
            shown.threads.retain(|&t, _| t == pid);
            shown.vm = proc::VmSizes::default();
            shown.cmdline.clear();
        }
        // The file pages of its shared mappings reach the file now, as they would be
        // in the page cache on Linux for whoever reads the file next.
        self.mm.write_back_all();
        if self.threads.len() <= 1 {
            // No other thread runs on it: its shared mappings go now, so a System V
            // segment's attachment count is right when the parent sees it ended.
            self.mm.unmap_shared();
        }
        self.give_back();
        // Its descriptors close before its parent hears of its end, as Linux's exit
        // closes them (a reader of a pipe it wrote reads end-of-file, its locks go):
        // the first process's table would otherwise stay open until the run's end.
        self.fds.close_range(0, u64::MAX, false);
        if let Some(w) = self.vfork_parent.take() {
            w.wake();
        }
        self.kernel.exit(self.pid, status);
        for (_, t) in self.threads.iter().filter(|(t, _)| **t != tid) {
            if let Some(t) = t {
                crate::kick::kick_thread(*t);
            }
        }
        // Its threads blocked with the process released (futex waits, sleeps, polls)
        // end too: until they do, the process, and with it its descriptors, stays
        // (a reader of a pipe it wrote to would wait for the end of the file forever).
        for (_, w) in self.waiters.iter().filter(|(t, _)| **t != tid) {
            w.wake();
        }
        self.waiters.clear();
        self.threads.clear();
        self.shared.vcpus().clear();
        if !self.initial {
            let r = self.take_report();
            self.kernel.absorb(r);
        }
    }

    /// What the run reports about the program (taken once at the end); for the first
    /// process, merged with what every other process of the run reported.
    pub fn take_report(&mut self) -> LinuxReport {
        let mut r = std::mem::take(&mut self.report);
        r.maps = std::mem::take(&mut self.mm.maps);
        r.out_of_memory = self.mm.exhausted();
        if self.initial {
            let k = self.kernel.finished();
            r.syscalls += k.syscalls;
            for (n, c) in k.unimplemented {
                *r.unimplemented.entry(n).or_insert(0) += c;
            }
            r.maps.extend(k.maps);
            r.out_of_memory = r.out_of_memory.or(k.out_of_memory);
            r.peak_bytes = r.peak_bytes.max(k.peak_bytes);
            r.trap_ns += k.trap_ns;
            r.demand_faults += k.demand_faults;
            r.fault_ns += k.fault_ns;
            r.threads += k.threads;
            r.processes += k.processes;
            r.execs += k.execs;
            r.left_running = self.kernel.still_running();
            r.left_running.retain(|&p| p != self.pid);
        }
        r
    }

    /// Handle the exit of trap stub `port` on `task`'s vCPU: the vCPU is on the stub's
    /// `out` (in ring 0, or in ring 3 for a system call on hosts that take SYSCALL there).
    pub fn on_trap(
        &mut self,
        task: &mut Task,
        vcpu: &mut VcpuFd,
        port: u16,
    ) -> Result<TrapAction, VmError> {
        let kvm = |op: &'static str| move |source| VmError::Kvm { op, source };
        if self.shared.ended(task) {
            // Its process ended (another thread's exit_group, a fatal signal) or another
            // thread's execve ended this one while it waited for the lock. Serving the
            // call could block it where no end wakes it any more (the end woke the
            // waiters there were), and a blocked thread keeps the process's descriptors
            // open: a parent reading a pipe from it would wait for end-of-file forever.
            return Ok(TrapAction::ThreadExit);
        }
        if port == TRAP_PORT_NULL {
            // The floor: nothing to do (KVM skips the `out` at the next entry).
            return Ok(TrapAction::Resume);
        }
        if let Some(v) = &self.kernel.vdso {
            v.clock.tick();
        }
        let started = std::time::Instant::now();
        // KVM finishes an `out` at the next KVM_RUN. For a system call whose path is
        // known that is what we want: KVM skips the `out` only if RIP is still on it
        // (complete_fast_pio_out compares the linear RIP), so the ring-3 return (RIP set
        // to RCX) and the ring-0 `sysretq` both come out right, and RAX set here
        // survives. Otherwise let KVM finish it first (the KVM API's rule: state is
        // consistent after re-entering KVM_RUN; immediate_exit returns at once).
        if port == TRAP_PORT_BASE + u16::from(VEC_PF) && self.demand_fault(task, vcpu)? {
            self.report.demand_faults += 1;
            self.report.fault_ns += started.elapsed().as_nanos() as u64;
            return Ok(TrapAction::Resume);
        }
        if port != TRAP_PORT_SYSCALL || task.syscall_mode.is_none() {
            vcpu.set_kvm_immediate_exit(1);
            let _ = vcpu.run();
            vcpu.set_kvm_immediate_exit(0);
        }
        if port == TRAP_PORT_SYSCALL {
            // The fast path: registers from and back to the run page.
            let fast = task.sync_regs && task.syscall_mode.is_some();
            let mut regs = if fast {
                vcpu.sync_regs().regs
            } else {
                vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?
            };
            let nr = regs.rax;
            if task.shim_stepped {
                // The flags `syscall` saved in R11 come back through SYSRETQ or the
                // shim's ring-3 return: without KVM's TF (see `Task::shim_stepped`).
                regs.r11 &= !RFLAGS_TF;
            }
            let action = match self.syscall_service(task, vcpu, &mut regs)? {
                Serviced::Resume => {
                    write_regs(vcpu, &regs, fast)?;
                    TrapAction::Resume
                }
                Serviced::Block(block) => TrapAction::Block {
                    pending: Pending { regs, fast, nr },
                    block,
                },
                Serviced::Clone(child) => TrapAction::Clone {
                    pending: Pending { regs, fast, nr },
                    child,
                },
                Serviced::Op(op) => TrapAction::ProcessOp {
                    pending: Pending { regs, fast, nr },
                    op,
                },
                Serviced::End(action) => action,
            };
            self.report.trap_ns += started.elapsed().as_nanos() as u64;
            return Ok(action);
        }
        let regs = vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?;
        let vector = if port == TRAP_PORT_OTHER {
            32
        } else {
            (port - TRAP_PORT_BASE) as u8
        };
        let mut words = [0u64; 6];
        let n = if has_error_code(vector) { 6 } else { 5 };
        let Some(frame_pa) = task.trap.stack_phys_of(regs.rsp, 8 * n as u64) else {
            return Ok(self.killed(
                libc::SIGSEGV,
                format!("trap {vector} with a corrupt ring-0 stack"),
            ));
        };
        for (i, w) in words.iter_mut().enumerate().take(n) {
            *w = self
                .mm
                .memory()
                .read_u64(GuestPhysAddr(frame_pa.0 + 8 * i as u64))
                .unwrap_or(0);
        }
        let rflags_at = if n == 6 { 3 } else { 2 };
        if task.shim_stepped && words[rflags_at] & RFLAGS_TF != 0 {
            // The stub's IRETQ would restore KVM's TF (see `Task::shim_stepped`).
            words[rflags_at] &= !RFLAGS_TF;
            let at = GuestPhysAddr(frame_pa.0 + 8 * rflags_at as u64);
            let _ = self.mm.memory().write_u64(at, words[rflags_at]);
        }
        let frame = TrapFrame::parse(vector, &words);
        let action = if vector == VEC_NMI || vector == 32 {
            // A PMI or stray interrupt: the stub's iretq resumes the program.
            TrapAction::Resume
        } else {
            let (sig, name) = cpu::signal_for(vector);
            let sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
            let cr2 = sregs.cr2;
            // SEGV_MAPERR or SEGV_ACCERR, as the mappings say.
            let mut pf_code = 1;
            if vector == VEC_PF && frame.from_user() {
                let err = frame.error_code.unwrap_or(0);
                match self.mm.fault(cr2, err & PF_WRITE != 0, err & PF_FETCH != 0) {
                    Fault::Resolved => {
                        self.resume_faulted(task, vcpu, &regs, sregs)?;
                        self.report.demand_faults += 1;
                        self.report.fault_ns += started.elapsed().as_nanos() as u64;
                        return Ok(TrapAction::Resume);
                    }
                    Fault::OutOfMemory => {
                        return Ok(self.killed(
                            libc::SIGKILL,
                            format!(
                                "ran out of guest memory (--vm-mem) touching {cr2:#x} at rip {:#x}; \
                                 ended as Linux's OOM killer ends a program. Raise --vm-mem",
                                frame.rip
                            ),
                        ));
                    }
                    f => pf_code = f.si_code(),
                }
            }
            if frame.from_user()
                && self.deliver_fault(
                    task, vcpu, &regs, &frame, frame_pa, vector, sig, cr2, pf_code,
                )?
            {
                self.report.trap_ns += started.elapsed().as_nanos() as u64;
                return Ok(TrapAction::Resume);
            }
            let mut why = format!("{name} (exception {vector}) at rip {:#x}", frame.rip);
            if vector == VEC_PF {
                why.push_str(&format!(", address {cr2:#x}"));
            }
            if let Some(e) = frame.error_code {
                why.push_str(&format!(", error code {e:#x}"));
            }
            self.killed(sig, why)
        };
        self.report.trap_ns += started.elapsed().as_nanos() as u64;
        Ok(action)
    }

    fn killed(&self, signal: i32, reason: String) -> TrapAction {
        TrapAction::Killed { signal, reason }
    }

    /// End a [`TrapAction::Block`]: `woken` says whether the waiter was woken (rather
    /// than timed out or stopped). Resumes the program with the call's result, or gives
    /// the block back ([`TrapAction::Block`]) to wait again when what woke it was not
    /// for it (a signal another thread took, or one the program ignores).
    ///
    /// A signal that runs a handler or ends the process interrupts the wait as
    /// signal(7) says: a read, accept, recv or wait4/waitid starts again after the
    /// handler when it has SA_RESTART, and returns EINTR otherwise; poll, select,
    /// epoll_wait, the sleeps and rt_sigsuspend always return EINTR.
    pub fn finish_block(
        &mut self,
        task: &mut Task,
        vcpu: &mut VcpuFd,
        mut pending: Pending,
        block: Block,
        woken: bool,
    ) -> Result<TrapAction, VmError> {
        use std::sync::atomic::Ordering;
        if self.shared.ended(task) {
            // Ended while blocked (its process ended, or another thread's execve):
            // nothing of the call is left to finish (the run loop ends the thread
            // before it runs again), but a wait in a futex of shared memory must leave
            // its queue (the process's own queues end with it or went with the execve).
            if matches!(block, Block::Futex { .. }) {
                self.kernel.futexes().remove(task.tid);
            }
            return Ok(TrapAction::ThreadExit);
        }
        self.shared.sleepers().remove(&task.tid);
        // rt_sigtimedwait takes a signal of its set before any is delivered, with the
        // thread's own mask back (the others stay where they were sent).
        let waited = match &block {
            Block::SigWait(w) => {
                if let Some(mask) = task.saved_sigmask.take() {
                    task.sigmask = mask;
                }
                Some(self.take_waited(task, w.set))
            }
            _ => None,
        };
        self.take_signals(task);
        let interrupting = self.interrupting(task);
        let interrupted = interrupting.is_some();
        let restarts = interrupting == Some(true);
        // Nothing came for the call and nothing interrupts it: wait again (unless the
        // VM or the process is ending: then the call ends with EINTR).
        let ending =
            crate::kick::stopping() || self.shared.dead.load(std::sync::atomic::Ordering::Acquire);
        let again = !interrupted && !ending;
        let eintr = errno::Errno(libc::EINTR).ret();
        let ret = match block {
            // Still queued: not woken by FUTEX_WAKE but by a signal (EINTR), a timeout
            // (unless a wake came in between the timeout and this lock), or nothing
            // (a spurious wake-up, which futex callers allow).
            Block::Futex { .. } if self.futex_unqueue(task.tid) => {
                if interrupted {
                    eintr
                } else if !woken {
                    self.timed_out(task);
                    errno::Errno(libc::ETIMEDOUT).ret()
                } else {
                    0
                }
            }
            Block::Futex { .. } => 0,
            Block::Sleep { until, rem } if woken && interrupted => {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if rem != 0 {
                    let mut b = [0u8; 16];
                    b[..8].copy_from_slice(&left.as_secs().to_le_bytes());
                    b[8..].copy_from_slice(&u64::from(left.subsec_nanos()).to_le_bytes());
                    let _ = self.mm.write(GuestVirtAddr(rem), &b);
                }
                eintr
            }
            Block::Sleep { until, rem } if woken && again => {
                return Ok(self.block_again(task, pending, Block::Sleep { until, rem }));
            }
            Block::Sleep { .. } => 0,
            Block::Poll(p) if p.cut_short() && again => {
                return Ok(self.block_again(task, pending, Block::Poll(p)));
            }
            Block::Poll(p) if p.cut_short() && interrupted => eintr,
            Block::Poll(p) => {
                if p.timed_out() {
                    self.timed_out(task);
                }
                self.poll_done(&p)
            }
            Block::Epoll(e) if e.cut_short() && again => {
                return Ok(self.block_again(task, pending, Block::Epoll(e)));
            }
            Block::Epoll(e) if e.cut_short() && interrupted => eintr,
            Block::Epoll(e) => {
                if e.timed_out() {
                    self.timed_out(task);
                }
                self.epoll_done(&e)
            }
            Block::Restart { poll, nr } if poll.cut_short() && again => {
                return Ok(self.block_again(task, pending, Block::Restart { poll, nr }));
            }
            Block::Restart { poll, .. } if poll.cut_short() && interrupted && !restarts => eintr,
            Block::Restart { nr, .. } => restart(&mut pending.regs, nr),
            Block::Wait(w) if matches!(w.result, Err(errno::Errno(libc::EINTR))) && again => {
                return Ok(self.block_again(task, pending, Block::Wait(w)));
            }
            Block::Wait(w) if matches!(w.result, Err(errno::Errno(libc::EINTR))) && restarts => {
                restart(&mut pending.regs, pending.nr)
            }
            Block::Wait(w) => self.wait_done(&w),
            // A lock call: EINTR when a handler runs and does not restart it, else
            // the call again (after the handler, or at once).
            Block::Retry { .. } if interrupted && !restarts => eintr,
            Block::Retry { nr, .. } => restart(&mut pending.regs, nr),
            Block::Suspend if again => {
                return Ok(self.block_again(task, pending, Block::Suspend));
            }
            Block::Suspend => eintr,
            Block::SigWait(w) => match waited.flatten() {
                Some(taken) => self
                    .waited(task, w.info, &taken)
                    .unwrap_or_else(|e| e.ret()),
                None if interrupted || ending => eintr,
                None if woken => {
                    return Ok(match self.wait_with_set(task, w) {
                        outcome::Outcome::Block(b) => self.block_again(task, pending, b),
                        _ => TrapAction::Resume,
                    });
                }
                None => {
                    self.timed_out(task);
                    errno::Errno(libc::EAGAIN).ret()
                }
            },
            Block::Write(w) if w.cut_short() && again => {
                return Ok(self.block_again(task, pending, Block::Write(w)));
            }
            Block::Write(w) if w.cut_short() && w.wrote_nothing() && restarts => {
                restart(&mut pending.regs, pending.nr)
            }
            Block::Write(w) => match w.result {
                Ok(n) => n as u64,
                Err(e) => {
                    // A write to a pipe nobody reads: SIGPIPE (see `syscall`).
                    if e.0 == libc::EPIPE {
                        self.send_self(task, libc::SIGPIPE, signal::SI_USER);
                    }
                    e.ret()
                }
            },
            Block::Vfork { child, lent } => {
                if let Some(slot) = lent {
                    self.take_back(&slot);
                }
                child
            }
        };
        task.timeout_span = None;
        pending.regs.rax = ret;
        if ret != eintr
            && let Some(mask) = task.saved_sigmask.take()
        {
            // A call with a temporary mask that did not end by a signal restores its
            // mask before signals are delivered (Linux's
            // `restore_saved_sigmask_unless`): those it let in stay pending.
            task.sigmask = mask;
        }
        // Signals that came meanwhile are delivered as the call returns (a handler's
        // frame saves the mask from before a temporary one of the call).
        let posted = self.shared.signals.load(Ordering::Acquire);
        if (task.pending.set() | posted) & !task.sigmask != 0
            && let Some(end) = self.deliver_pending(task, vcpu, &mut pending.regs)?
        {
            return Ok(end);
        }
        if let Some(mask) = task.saved_sigmask.take() {
            task.sigmask = mask;
        }
        write_regs(vcpu, &pending.regs, pending.fast)?;
        Ok(TrapAction::Resume)
    }

    /// `task`'s wait timed out: a virtual clock passes its timeout.
    fn timed_out(&self, task: &mut Task) {
        if let Some(span) = task.timeout_span.take() {
            self.kernel.clock.advance(span);
        }
    }

    /// Make a blocked call interruptible: a signal sent to the process or the thread
    /// wakes `task`'s waiter from now on (its vCPU thread is kicked too, which ends a
    /// host poll at once), and one already pending ends the wait at once.
    fn interruptible(&mut self, task: &mut Task, block: &Block) {
        use std::sync::atomic::Ordering;
        if matches!(block, Block::Vfork { .. }) {
            return;
        }
        if !matches!(
            block,
            Block::Sleep { .. } | Block::Futex { .. } | Block::Wait(_) | Block::Retry { .. }
        ) {
            // (A sleep, a lock retry and a futex wait reset it before queueing; a wait4
            // in `reap`.)
            task.waiter.reset();
        }
        self.shared.sleepers().insert(task.tid, task.waiter.clone());
        let posted = self.shared.signals.load(Ordering::Acquire);
        if (task.pending.set() | posted) & !task.sigmask != 0 {
            task.waiter.wake();
        }
    }

    /// Wait again for `block` (see [`Self::finish_block`]).
    fn block_again(&mut self, task: &mut Task, pending: Pending, block: Block) -> TrapAction {
        task.waiter.reset();
        if let Block::Wait(w) = &block {
            // Queued again for its children's ends.
            let _ = w.kernel.reap(w.parent, w.which, w.keep, Some(&task.waiter));
        }
        self.interruptible(task, &block);
        TrapAction::Block { pending, block }
    }

    /// Whether a pending signal interrupts a blocked call of `task`: Some(restart)
    /// when one will run a handler (restart: it has SA_RESTART) or end the process.
    /// Pending signals the program ignores (explicitly, or by default as SIGCHLD) are
    /// dropped on the way, as Linux discards them.
    fn interrupting(&mut self, task: &mut Task) -> Option<bool> {
        loop {
            let sig = task.pending.next(task.sigmask)?;
            let act = self.action(sig);
            match act.handler {
                1 => {}
                0 if !signal::default_terminates(sig) => {}
                0 => return Some(false),
                _ => return Some(act.flags & signal::SA_RESTART != 0),
            }
            if let Some(info) = task.pending.take(sig) {
                self.discarded(&info);
            }
        }
    }

    /// End a [`TrapAction::Clone`]: `started` says whether the new thread runs.
    /// Resumes the parent with the child's id, or `-EAGAIN`.
    pub fn finish_clone(
        &mut self,
        vcpu: &mut VcpuFd,
        mut pending: Pending,
        child: u64,
        started: bool,
    ) -> Result<(), VmError> {
        pending.regs.rax = if started {
            self.report.threads += 1;
            child
        } else {
            self.threads.remove(&child);
            errno::Errno(libc::EAGAIN).ret()
        };
        write_regs(vcpu, &pending.regs, pending.fast)
    }

    /// Carry out a [`TrapAction::ProcessOp`]: a fork gives [`TrapAction::Fork`] (or the
    /// error, resumed), an exec [`TrapAction::Exec`] (or the error, resumed).
    pub fn finish_process_op(
        &mut self,
        task: &mut Task,
        vcpu: &mut VcpuFd,
        mut pending: Pending,
        op: ProcessOp,
    ) -> Result<TrapAction, VmError> {
        if self.shared.ended(task) {
            return Ok(TrapAction::ThreadExit);
        }
        let started = std::time::Instant::now();
        let err = match op {
            ProcessOp::Fork(f) => match self.fork(task, vcpu, &pending.regs, &f) {
                Ok(child) => {
                    self.report.trap_ns += started.elapsed().as_nanos() as u64;
                    return Ok(TrapAction::Fork { pending, child });
                }
                Err(e) => e,
            },
            ProcessOp::Exec(program) => match self.exec(task, vcpu, &program) {
                Ok(roots) => {
                    let after = self.mm.resident_bytes();
                    self.report.peak_bytes = self.report.peak_bytes.max(after);
                    self.report.trap_ns += started.elapsed().as_nanos() as u64;
                    return Ok(TrapAction::Exec { roots });
                }
                Err(e) => errno::Errno(e.errno()),
            },
        };
        pending.regs.rax = err.ret();
        write_regs(vcpu, &pending.regs, pending.fast)?;
        Ok(TrapAction::Resume)
    }

    /// End a [`TrapAction::Fork`]: `started` says whether the child runs. Resumes the
    /// parent with the child's id (or `-EAGAIN`), except that a vfork parent first
    /// waits (the returned block) until the child execs or exits.
    pub fn finish_fork(
        &mut self,
        vcpu: &mut VcpuFd,
        mut pending: Pending,
        child: u64,
        vfork: bool,
        lent: Option<LentSpace>,
        started: bool,
    ) -> Result<Option<(Pending, Block)>, VmError> {
        if started && vfork {
            return Ok(Some((pending, Block::Vfork { child, lent })));
        }
        if let Some(slot) = lent {
            self.take_back(&slot);
        }
        pending.regs.rax = if started {
            child
        } else {
            errno::Errno(libc::EAGAIN).ret()
        };
        write_regs(vcpu, &pending.regs, pending.fast)?;
        Ok(None)
    }

    /// Make the child of a fork: a copy of this process's memory and descriptors,
    /// its first thread resuming from the call with RAX 0.
    fn fork(
        &mut self,
        task: &mut Task,
        vcpu: &VcpuFd,
        regs: &kvm_regs,
        f: &outcome::ForkArgs,
    ) -> Result<Box<NewProcess>, errno::Errno> {
        let flag = |c: i32| f.flags & c as u64 != 0;
        // vfork with CLONE_VM (vfork(), posix_spawn): the parent lends the child its
        // address space until the child execs or ends (it waits meanwhile), so what the
        // child writes is the parent's, as on Linux. A parent with other threads (they
        // go on running in it) gives its child a copy instead.
        let share = f.vfork && flag(libc::CLONE_VM) && self.threads.len() <= 1;
        let (child_mm, trap, lent) = if share {
            let hollow = AddressSpace::hollow(self.mm.memory_arc(), self.mm.pool());
            let mm = std::mem::replace(&mut self.mm, hollow);
            (mm, self.trap, Some(LentSpace::default()))
        } else {
            let mut mm = self.mm.fork()?;
            mm.space = self.kernel.new_space();
            for m in &mut mm.maps {
                m.space = mm.space;
            }
            let trap = cpu::build_trap_area(&mut mm, Some(self.trap.stubs))?;
            (mm, trap, None)
        };
        let pid = self.kernel.new_id();
        let id = (pid as u32).to_le_bytes();
        if flag(libc::CLONE_PARENT_SETTID) {
            if !share {
                self.mm.write(GuestVirtAddr(f.ptid), &id)?;
            }
            child_mm.write(GuestVirtAddr(f.ptid), &id)?;
        }
        if flag(libc::CLONE_CHILD_SETTID) {
            child_mm.write(GuestVirtAddr(f.ctid), &id)?;
        }
        let shared: Arc<proc::Shared> = Arc::default();
        let pgid = self.kernel.pgid(self.pid).unwrap_or(self.pid);
        let mut child = Process {
            fds: self.fds.clone(),
            trap,
            path: self.path.clone(),
            report: LinuxReport {
                processes: 1,
                ..Default::default()
            },
            counts: BTreeMap::new(),
            sigactions: self.sigactions.clone(),
            pid,
            trap_slots: 0,
            threads: BTreeMap::from([(pid, None)]),
            signals_for: BTreeMap::new(),
            futexes: Futexes::default(),
            tlb_generation: Arc::default(),
            map_sink: self.map_sink.clone(),
            kernel: self.kernel.clone(),
            shared: shared.clone(),
            initial: false,
            cwd: self.cwd.clone(),
            vfork_parent: f.vfork.then(|| task.waiter.clone()),
            lent: lent.clone(),
            waiters: BTreeMap::new(),
            retired: Vec::new(),
            itimer: Arc::new(itimer::RealTimer::interval_timer()),
            timers: BTreeMap::new(),
            next_timer: 0,
            entropy: self.entropy.fork(),
            limits: self.limits.clone(),
            mm: child_mm,
        };
        child.own_signalfds()?;
        shared.shown().threads.insert(pid, task.comm);
        child.publish();
        self.kernel.add(pid, self.pid, pgid, shared);
        if f.vfork {
            // Woken when the child execs or exits (reset now: that may come first).
            task.waiter.reset();
        }
        let mut regs = *regs;
        regs.rax = 0;
        regs.rip = regs.rcx;
        regs.rflags = regs.r11;
        if f.stack != 0 {
            regs.rsp = f.stack;
        }
        let t = Task {
            fs_base: if flag(libc::CLONE_SETTLS) {
                f.tls
            } else {
                task.fs_base
            },
            sigmask: task.sigmask,
            clear_child_tid: if flag(libc::CLONE_CHILD_CLEARTID) {
                f.ctid
            } else {
                0
            },
            altstack: task.altstack,
            comm: task.comm,
            syscall_mode: task.syscall_mode,
            ..Task::new(pid, child.mm.cr3(), trap)
        };
        if let Some(tx) = &child.map_sink {
            tx.send(GuestEvent::Process(child.record()));
            for m in child.mm.maps.iter().filter(|_| !share) {
                tx.send(GuestEvent::Map(m.clone()));
            }
        }
        if !share {
            child.report.maps = child.mm.maps.clone();
        }
        Ok(Box::new(NewProcess {
            lent,
            process: child,
            thread: NewThread {
                task: t,
                regs,
                fpu: vcpu.get_fpu().ok(),
            },
            vfork: f.vfork,
        }))
    }

    /// Replace this process's program by `program` (execve): a new address space, the
    /// close-on-exec descriptors closed, handled signals back to their defaults; the
    /// vCPU starts at the new program's entry. On an error the old program goes on.
    fn exec(
        &mut self,
        task: &mut Task,
        vcpu: &VcpuFd,
        program: &Program,
    ) -> Result<[u64; 2], LinuxError> {
        let kvm = |op: &'static str| move |source| VmError::Kvm { op, source };
        let oom = |_| LinuxError::OutOfMemory;
        let mut mm = AddressSpace::with_pool(self.mm.memory_arc(), self.mm.pool()).map_err(oom)?;
        mm.space = self.kernel.new_space();
        let random = self.entropy.at_random();
        let (trap, regs) = build_image(
            &mut mm,
            program,
            random,
            Some(self.trap.stubs),
            self.kernel.vdso.as_ref(),
        )?;
        // Past this point nothing fails for the program's reasons.
        let vm_err = |e: VmError| LinuxError::Io {
            path: program.path.clone(),
            source: std::io::Error::other(e.to_string()),
        };
        let mut s = vcpu
            .get_sregs()
            .map_err(kvm("KVM_GET_SREGS"))
            .map_err(vm_err)?;
        cpu::user_sregs(&mut s, mm.cr3(), trap.tss);
        s.fs.base = 0;
        // The new program starts with every FPU component initial (x87, MXCSR, XMM and
        // the AVX upper halves), as after Linux's execve.
        cpu::set_fpu_image(vcpu, &signal::initial_image())
            .map_err(kvm("KVM_SET_XSAVE"))
            .map_err(vm_err)?;
        vcpu.set_sregs(&s)
            .map_err(kvm("KVM_SET_SREGS"))
            .map_err(vm_err)?;
        vcpu.set_regs(&regs)
            .map_err(kvm("KVM_SET_REGS"))
            .map_err(vm_err)?;
        let old = std::mem::replace(&mut self.mm, mm);
        let others = self.threads.keys().any(|&t| t != task.tid);
        if others {
            self.end_other_threads(task);
        }
        match self.lent.take() {
            // A vfork child gives the parent its address space back.
            Some(slot) => *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(old),
            None => {
                if let Some(at) = old.exhausted() {
                    self.mm.note_exhausted(at);
                }
                self.report.maps.extend(old.maps.iter().cloned());
                // The other threads' vCPUs may still run on it until they notice.
                let token = std::mem::replace(&mut task.space_token, Arc::new(()));
                self.retired.push((Arc::downgrade(&token), old));
                drop(token);
                self.free_retired();
            }
        }
        self.trap = trap;
        self.trap_slots = 0;
        self.path = program.path.clone();
        self.fds.close_on_exec();
        // Handlers do not survive the old program; ignored signals stay ignored.
        self.sigactions
            .retain(|_, a| u64::from_le_bytes(a[..8].try_into().unwrap_or_default()) == 1);
        self.futexes = Futexes::default();
        self.report.execs += 1;
        let generation = self
            .tlb_generation
            .load(std::sync::atomic::Ordering::Acquire);
        let fresh = self.main_task();
        task.trap = trap;
        task.cr3 = self.mm.cr3();
        task.tlb_seen = generation;
        task.fs_base = 0;
        task.clear_child_tid = 0;
        task.robust_list = (0, 0);
        task.altstack = (0, 0);
        task.comm = fresh.comm;
        {
            let mut shown = self.shared.shown();
            shown.threads.clear();
            shown.threads.insert(task.tid, task.comm);
            // A new address space: its peak starts anew.
            shown.vm = proc::VmSizes::default();
        }
        self.publish();
        if let Some(tx) = &self.map_sink {
            tx.send(GuestEvent::Process(self.record()));
            for m in &self.mm.maps {
                tx.send(GuestEvent::Map(m.clone()));
            }
        }
        if let Some(w) = self.vfork_parent.take() {
            w.wake();
        }
        Ok(self.mm.roots())
    }

    /// execve from a threaded process, as Linux's de_thread: every other thread ends
    /// (kicked out of the guest, woken from its waits; each notices at its next step,
    /// [`proc::Shared::ended`]) and the caller goes on as the thread group leader, with
    /// the process id as its thread id.
    fn end_other_threads(&mut self, task: &mut Task) {
        use std::sync::atomic::Ordering;
        task.exec_gen = self.shared.execs.fetch_add(1, Ordering::AcqRel) + 1;
        for (&tid, t) in &self.threads {
            if tid != task.tid
                && let Some(t) = t
            {
                crate::kick::kick_thread(*t);
            }
        }
        for (&tid, w) in &self.waiters {
            if tid != task.tid {
                w.wake();
            }
        }
        self.futexes.wake_all();
        self.signals_for.clear();
        self.waiters.clear();
        self.threads.clear();
        self.shared.vcpus().clear();
        // What the ended threads used stays the process's (and the caller's, which
        // goes on as its main thread).
        self.shared.accounts.leave_all();
        task.tid = self.pid;
        self.register_thread(task);
    }

    /// Free the address spaces an execve replaced that no thread runs on any more.
    fn free_retired(&mut self) {
        self.retired.retain(|(token, _)| token.strong_count() > 0);
    }

    /// Service the system call in `regs` and leave the return state in `regs`.
    fn syscall_service(
        &mut self,
        task: &mut Task,
        vcpu: &VcpuFd,
        regs: &mut kvm_regs,
    ) -> Result<Serviced, VmError> {
        let kvm = |op: &'static str| move |source| VmError::Kvm { op, source };
        let nr = regs.rax;
        let args = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9];
        if !self.retired.is_empty() {
            self.free_retired();
        }
        self.report.syscalls += 1;
        *self.counts.entry(nr).or_insert(0) += 1;
        let old_fs = task.fs_base;
        let before = self.mm.resident_bytes();
        let mode = match task.syscall_mode {
            Some(m) => m,
            None => {
                let s = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
                let m = if s.cs.dpl == 3 {
                    cpu::SyscallMode::Ring3
                } else {
                    cpu::SyscallMode::Ring0
                };
                task.syscall_mode = Some(m);
                m
            }
        };
        self.take_signals(task);
        if nr == syscalls::Sysno::rt_sigreturn as u64 {
            let Ok(fpu) = self.sigreturn(task, regs) else {
                return Ok(Serviced::End(TrapAction::Killed {
                    signal: libc::SIGSEGV,
                    reason: "rt_sigreturn with a bad signal frame".into(),
                }));
            };
            cpu::set_fpu_image(vcpu, &fpu).map_err(kvm("KVM_SET_XSAVE"))?;
            self.resume_ret(task, vcpu, regs, mode, old_fs, true)?;
            task.moved = true;
            return Ok(Serviced::Resume);
        }
        let served = match self.syscall(task, nr, args) {
            outcome::Outcome::Return(v) => {
                regs.rax = v;
                if let Some(end) = self.deliver_pending(task, vcpu, regs)? {
                    return Ok(Serviced::End(end));
                }
                Serviced::Resume
            }
            outcome::Outcome::Exit(code) => return Ok(Serviced::End(TrapAction::Exit(code))),
            outcome::Outcome::ThreadExit => return Ok(Serviced::End(TrapAction::ThreadExit)),
            outcome::Outcome::Kill { signal, reason } => {
                return Ok(Serviced::End(TrapAction::Killed { signal, reason }));
            }
            outcome::Outcome::Block(b) => {
                self.interruptible(task, &b);
                Serviced::Block(b)
            }
            outcome::Outcome::Exec(program) => Serviced::Op(ProcessOp::Exec(program)),
            outcome::Outcome::Fork(f) => Serviced::Op(ProcessOp::Fork(f)),
            outcome::Outcome::Clone(c) => {
                // The child returns 0 from the call, in ring 3, on its own stack.
                let mut child = *regs;
                child.rax = 0;
                child.rip = regs.rcx;
                child.rflags = regs.r11;
                if c.stack != 0 {
                    child.rsp = c.stack;
                }
                // Its own TSS and ring-0 stack (vCPUs trap at the same time).
                self.trap_slots += 1;
                let trap = match cpu::build_thread_trap(&mut self.mm, self.trap_slots) {
                    Ok(t) => t,
                    Err(e) => {
                        self.threads.remove(&c.tid);
                        regs.rax = e.ret();
                        return self.resume_ret(task, vcpu, regs, mode, old_fs, false);
                    }
                };
                let task = Task {
                    fs_base: c.tls.unwrap_or(task.fs_base),
                    sigmask: task.sigmask,
                    clear_child_tid: c.clear_tid,
                    syscall_mode: task.syscall_mode,
                    tlb_seen: self
                        .tlb_generation
                        .load(std::sync::atomic::Ordering::Acquire),
                    exec_gen: task.exec_gen,
                    space_token: task.space_token.clone(),
                    // A new thread has its creator's name, as on Linux.
                    comm: task.comm,
                    ..Task::new(c.tid, self.mm.cr3(), trap)
                };
                Serviced::Clone(Box::new(NewThread {
                    task,
                    regs: child,
                    fpu: vcpu.get_fpu().ok(),
                }))
            }
        };
        let after = self.mm.resident_bytes();
        if after > before {
            self.report.peak_bytes = self.report.peak_bytes.max(after);
        }
        self.resume_ret(task, vcpu, regs, mode, old_fs, false)?;
        Ok(served)
    }

    /// Deliver the first deliverable pending signal of `task` as its system call
    /// returns (RCX/R11 hold where and with which flags the program goes on). Some
    /// action when the signal ends the program.
    fn deliver_pending(
        &mut self,
        task: &mut Task,
        vcpu: &VcpuFd,
        regs: &mut kvm_regs,
    ) -> Result<Option<TrapAction>, VmError> {
        // Process-directed signals the mask let in since the call began.
        self.take_signals(task);
        if let Some((info, act)) = self.next_acting_signal(task) {
            let sig = info.signo as u64;
            if act.handler == 0 {
                return Ok(Some(TrapAction::Killed {
                    signal: sig as i32,
                    reason: signal::killed_by(&info, self.pid, self.shared.from_outside()),
                }));
            }
            let mut r = *regs;
            r.rip = regs.rcx;
            r.rflags = regs.r11;
            let info = self.delivering(info);
            let kvm = |op: &'static str| move |source| VmError::Kvm { op, source };
            let fpu = cpu::fpu_image(vcpu).map_err(kvm("KVM_GET_XSAVE"))?;
            if self.setup_frame(task, &mut r, act, info, &fpu).is_err() {
                return Ok(Some(TrapAction::Killed {
                    signal: libc::SIGSEGV,
                    reason: format!("cannot write the frame of signal {sig} on the stack"),
                }));
            }
            // The handler starts with the initial FPU state (fpu__clear_user_states).
            cpu::set_fpu_image(vcpu, &signal::initial_image()).map_err(kvm("KVM_SET_XSAVE"))?;
            *regs = r;
            // Both returns go to RCX with R11's flags: the ring-3 one set by the shim,
            // the ring-0 one by the stub's SYSRETQ.
            regs.rcx = r.rip;
            regs.r11 = r.rflags;
            task.moved = true;
        }
        Ok(None)
    }

    /// The next pending signal that does something (a handler runs, or its default
    /// action ends the process), with its action; ignored ones, and those whose default
    /// is to do nothing, are discarded on the way.
    fn next_acting_signal(&mut self, task: &mut Task) -> Option<(signal::SigInfo, signal::Action)> {
        while let Some(info) = self.next_signal(task) {
            let sig = info.signo as u64;
            let act = self.action(sig);
            // 1: SIG_IGN; 0: SIG_DFL.
            if act.handler == 1 || (act.handler == 0 && !signal::default_terminates(sig)) {
                self.discarded(&info);
                continue;
            }
            return Some((info, act));
        }
        None
    }

    /// Signal instance `info` is about to be delivered: a POSIX timer's carries the
    /// overruns counted meanwhile ([`itimer::RealTimer::delivered`]).
    fn delivering(&mut self, mut info: signal::SigInfo) -> signal::SigInfo {
        if info.code == signal::SI_TIMER
            && let Some(t) = self.timers.get(&u64::from(info.word as u32))
        {
            t.delivered(&mut info);
        }
        info
    }

    /// Signal instance `info` was dropped undelivered (its signal is ignored): a POSIX
    /// timer queues its next expiry anew.
    fn discarded(&mut self, info: &signal::SigInfo) {
        if info.code == signal::SI_TIMER
            && let Some(t) = self.timers.get(&u64::from(info.word as u32))
        {
            t.discarded();
        }
    }

    /// The signals for `task` now: those other threads sent it, and those sent to the
    /// process that it does not block (moved to its queue with their infos).
    fn take_signals(&mut self, task: &mut Task) {
        use std::sync::atomic::Ordering;
        if let Some(sigs) = self.signals_for.remove(&task.tid) {
            for info in task.pending.append(sigs) {
                self.discarded(&info);
            }
        }
        if self.shared.signals.load(Ordering::Relaxed) & !task.sigmask != 0 {
            let sigs = self.shared.take(task.sigmask);
            for info in task.pending.append(sigs) {
                self.discarded(&info);
            }
        }
    }

    /// `sig` sent by the thread to itself (raise, tgkill, SIGPIPE), with `code`.
    pub(crate) fn send_self(&mut self, task: &mut Task, sig: i32, code: i32) {
        task.pending.push(self.info_from_self(sig, code));
    }

    /// What a signal this process sends says about its sender.
    pub(crate) fn info_from_self(&self, sig: i32, code: i32) -> signal::SigInfo {
        signal::SigInfo {
            signo: sig,
            code,
            word: self.pid | (host::ids()[2] << 32),
            ..Default::default()
        }
    }

    /// A signal that came while `task`'s vCPU ran the program (it was kicked out of
    /// the guest: [`proc::Shared::post`], or a tgkill from another thread): delivered
    /// now, at the interrupted instruction, instead of at the next system call (a busy
    /// program may make none). Nothing is done when no signal is deliverable or the
    /// vCPU is not in ring 3 (then it waits for the next system call).
    pub fn deliver_async(
        &mut self,
        task: &mut Task,
        vcpu: &mut VcpuFd,
    ) -> Result<TrapAction, VmError> {
        let kvm = |op: &'static str| move |source| VmError::Kvm { op, source };
        if self.shared.ended(task) {
            return Ok(TrapAction::ThreadExit);
        }
        self.take_signals(task);
        if task.pending.set() & !task.sigmask == 0 {
            return Ok(TrapAction::Resume);
        }
        // Let KVM finish what an exit left half done (see on_trap).
        vcpu.set_kvm_immediate_exit(1);
        let _ = vcpu.run();
        vcpu.set_kvm_immediate_exit(0);
        // An event KVM has yet to deliver belongs at this RIP: setting the registers
        // would drop it or deliver it in the handler. The caller tries again shortly.
        let ev = vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?;
        if ev.exception.injected != 0
            || ev.exception.pending != 0
            || ev.interrupt.injected != 0
            || ev.nmi.injected != 0
        {
            return Ok(TrapAction::Resume);
        }
        let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        let mut regs = vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?;
        if sregs.cs.dpl != 3 && !self.leave_stub(task, &mut regs, &mut sregs, ev.nmi.masked != 0) {
            return Ok(TrapAction::Resume);
        }
        if let Some((info, act)) = self.next_acting_signal(task) {
            let sig = info.signo as u64;
            if act.handler == 0 {
                return Ok(TrapAction::Killed {
                    signal: sig as i32,
                    reason: signal::killed_by(&info, self.pid, self.shared.from_outside()),
                });
            }
            let info = self.delivering(info);
            let mut r = regs;
            let fpu = cpu::fpu_image(vcpu).map_err(kvm("KVM_GET_XSAVE"))?;
            if self.setup_frame(task, &mut r, act, info, &fpu).is_err() {
                return Ok(TrapAction::Killed {
                    signal: libc::SIGSEGV,
                    reason: format!("cannot write the frame of signal {sig} on the stack"),
                });
            }
            cpu::set_fpu_image(vcpu, &signal::initial_image()).map_err(kvm("KVM_SET_XSAVE"))?;
            if sregs.cs.dpl == 3 {
                // (Left a stub: ring 3 from here on.)
                vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
            }
            vcpu.set_regs(&r).map_err(kvm("KVM_SET_REGS"))?;
            task.moved = true;
        }
        Ok(TrapAction::Resume)
    }

    /// A kick that found the vCPU in ring 0 on a trap stub's last instruction, the IRETQ
    /// back to the program (the kick came while the shim served the trap: the emulated
    /// LBR's breakpoint and single-step stops, where its interpreter may run for a while):
    /// `regs` and `sregs` become what the IRETQ would load, the program's context in
    /// ring 3, where its signal can be delivered. (Deferring the signal to the next
    /// system call would wait forever in a program that makes none.) False, changing
    /// nothing, anywhere else in ring 0, or with NMIs blocked (an IRETQ done here would
    /// not unblock them).
    fn leave_stub(
        &self,
        task: &Task,
        regs: &mut kvm_regs,
        sregs: &mut kvm_bindings::kvm_sregs,
        nmi_blocked: bool,
    ) -> bool {
        const IRETQ: [u8; 2] = [0x48, 0xcf];
        if nmi_blocked || sregs.cs.dpl != 0 {
            return false;
        }
        let mut insn = [0u8; 2];
        if self
            .mm
            .memory()
            .read_virt(sregs.cr3, crate::memory::GuestVirtAddr(regs.rip), &mut insn)
            .is_err()
            || insn != IRETQ
        {
            return false;
        }
        let Some(frame_pa) = task.trap.stack_phys_of(regs.rsp, 40) else {
            return false;
        };
        let mut words = [0u64; 5];
        for (i, w) in words.iter_mut().enumerate() {
            match self
                .mm
                .memory()
                .read_u64(GuestPhysAddr(frame_pa.0 + 8 * i as u64))
            {
                Ok(v) => *w = v,
                Err(_) => return false,
            }
        }
        let [rip, cs, rflags, rsp, _ss] = words;
        if cs & 3 != 3 {
            return false;
        }
        regs.rip = rip;
        regs.rflags = rflags;
        regs.rsp = rsp;
        cpu::user_cs_ss(sregs);
        true
    }

    /// A fault from ring 3: if the program handles `sig` (and does not block it), its
    /// handler runs; the stub's IRETQ goes there. False: the default action (the caller
    /// ends the program), as Linux forces for a blocked or ignored synchronous signal.
    #[allow(clippy::too_many_arguments)]
    fn deliver_fault(
        &mut self,
        task: &mut Task,
        vcpu: &VcpuFd,
        regs: &kvm_regs,
        frame: &TrapFrame,
        frame_pa: GuestPhysAddr,
        vector: u8,
        sig: i32,
        cr2: u64,
        pf_code: i32,
    ) -> Result<bool, VmError> {
        let kvm = |op: &'static str| move |source| VmError::Kvm { op, source };
        let sig = sig as u64;
        let act = self.action(sig);
        if act.handler <= 1 || task.sigmask & (1 << (sig - 1)) != 0 {
            return Ok(false);
        }
        let err = frame.error_code.unwrap_or(0);
        let (code, addr) = match vector {
            VEC_PF => (pf_code, cr2),
            VEC_GP => (signal::SI_KERNEL, 0),
            VEC_DE => (1, frame.rip),          // FPE_INTDIV
            VEC_UD => (2, frame.rip),          // ILL_ILLOPN
            VEC_BP | VEC_DB => (1, frame.rip), // TRAP_BRKPT
            _ => (signal::SI_KERNEL, frame.rip),
        };
        let info = signal::SigInfo {
            signo: sig as i32,
            code,
            word: addr,
            trapno: u64::from(vector),
            err,
            cr2: if vector == VEC_PF { cr2 } else { 0 },
            value: 0,
        };
        let mut r = *regs;
        r.rip = frame.rip;
        r.rsp = frame.rsp;
        r.rflags = frame.rflags;
        let fpu = cpu::fpu_image(vcpu).map_err(kvm("KVM_GET_XSAVE"))?;
        if self.setup_frame(task, &mut r, act, info, &fpu).is_err() {
            return Ok(false);
        }
        cpu::set_fpu_image(vcpu, &signal::initial_image()).map_err(kvm("KVM_SET_XSAVE"))?;
        // The stub's IRETQ returns to the handler: rewrite the frame it pops (past the
        // error code) and set the handler's argument registers.
        let skip = if frame.error_code.is_some() { 8 } else { 0 };
        let words = [r.rip, frame.cs, r.rflags, r.rsp, frame.ss];
        for (i, w) in words.iter().enumerate() {
            self.mm
                .memory()
                .write_u64(GuestPhysAddr(frame_pa.0 + skip + 8 * i as u64), *w)
                .map_err(|_| VmError::Kvm {
                    op: "signal frame",
                    source: kvm_ioctls::Error::new(libc::EFAULT),
                })?;
        }
        let mut k = *regs;
        k.rdi = r.rdi;
        k.rsi = r.rsi;
        k.rdx = r.rdx;
        k.rax = 0;
        k.rsp += skip;
        vcpu.set_regs(&k).map_err(kvm("KVM_SET_REGS"))?;
        Ok(true)
    }

    /// A page fault of the program that lazy memory resolves ([`AddressSpace::fault`]):
    /// the page is backed and the program resumes (true); anything else goes the way of
    /// every exception (false). The stub's `out` is left for KVM to finish at the next
    /// KVM_RUN, as a system call's is: RIP is still on it, so KVM steps to the IRETQ
    /// (one round trip less than finishing it first).
    fn demand_fault(&mut self, task: &mut Task, vcpu: &VcpuFd) -> Result<bool, VmError> {
        let kvm = |op: &'static str| move |source| VmError::Kvm { op, source };
        if task.shim_stepped {
            // The frame's RFLAGS needs KVM's TF taken out: the general path does that.
            return Ok(false);
        }
        let regs = vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?;
        let Some(frame_pa) = task.trap.stack_phys_of(regs.rsp, 48) else {
            return Ok(false);
        };
        let mut words = [0u64; 6];
        for (i, w) in words.iter_mut().enumerate() {
            let at = GuestPhysAddr(frame_pa.0 + 8 * i as u64);
            *w = self.mm.memory().read_u64(at).unwrap_or(0);
        }
        let frame = TrapFrame::parse(VEC_PF, &words);
        if !frame.from_user() {
            return Ok(false);
        }
        let sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        let err = frame.error_code.unwrap_or(0);
        if self
            .mm
            .fault(sregs.cr2, err & PF_WRITE != 0, err & PF_FETCH != 0)
            != Fault::Resolved
        {
            return Ok(false);
        }
        self.resume_faulted(task, vcpu, &regs, sregs)?;
        Ok(true)
    }

    /// Run the instruction that faulted again, its page now mapped: the stub's IRETQ
    /// pops the frame past the error code, after a TLB flush if the mapping changed.
    fn resume_faulted(
        &mut self,
        task: &mut Task,
        vcpu: &VcpuFd,
        regs: &kvm_regs,
        mut sregs: kvm_bindings::kvm_sregs,
    ) -> Result<(), VmError> {
        let kvm = |op: &'static str| move |source| VmError::Kvm { op, source };
        let generation = self.publish_flush(task);
        if task.tlb_stale(generation) {
            task.cr3 = self.mm.twin(task.cr3);
            task.tlb_seen = generation;
            sregs.cr3 = task.cr3;
            vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
        }
        let mut k = *regs;
        k.rsp += 8;
        vcpu.set_regs(&k).map_err(kvm("KVM_SET_REGS"))
    }

    /// When this space's translations changed, every vCPU of the process must flush its
    /// TLB before it runs the program again: a new generation, and the others kicked out
    /// of the guest to see it. The generation now.
    fn publish_flush(&mut self, task: &Task) -> u64 {
        if self.mm.flush_needed {
            self.mm.flush_needed = false;
            self.tlb_generation
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            for (&tid, t) in &self.threads {
                if tid != task.tid
                    && let Some(t) = t
                {
                    crate::kick::kick_thread(*t);
                }
            }
        }
        self.tlb_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// What every system call's return needs: TLB and FS base brought up to date,
    /// and the ring-3 return address when `syscall` stayed in ring 3.
    fn resume_ret(
        &mut self,
        task: &mut Task,
        vcpu: &VcpuFd,
        regs: &mut kvm_regs,
        mode: cpu::SyscallMode,
        old_fs: u64,
        full: bool,
    ) -> Result<Serviced, VmError> {
        let kvm = |op: &'static str| move |source| VmError::Kvm { op, source };
        let generation = self.publish_flush(task);
        if task.fs_base != old_fs || task.tlb_stale(generation) {
            // FS.base lives in the segment registers; a TLB flush is a CR3 change (to
            // the twin PML4), which makes KVM reset the vCPU's MMU context.
            let mut s = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
            s.fs.base = task.fs_base;
            if task.tlb_stale(generation) {
                task.cr3 = self.mm.twin(task.cr3);
                task.tlb_seen = generation;
                s.cr3 = task.cr3;
            }
            vcpu.set_sregs(&s).map_err(kvm("KVM_SET_SREGS"))?;
        }
        if full && mode == cpu::SyscallMode::Ring0 {
            // Every register comes from `regs` (rt_sigreturn): not through SYSRETQ,
            // which would load RIP and RFLAGS from RCX and R11, but straight to ring 3.
            let mut s = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
            cpu::user_sregs(&mut s, task.cr3, task.trap.tss);
            s.fs.base = task.fs_base;
            vcpu.set_sregs(&s).map_err(kvm("KVM_SET_SREGS"))?;
        } else if !full && mode == cpu::SyscallMode::Ring3 {
            regs.rip = regs.rcx;
            regs.rflags = regs.r11;
        }
        Ok(Serviced::Resume)
    }
}

/// What servicing a system call left to do.
enum Serviced {
    Resume,
    Block(Block),
    Clone(Box<NewThread>),
    Op(ProcessOp),
    End(TrapAction),
}

/// A system call that makes or replaces an address space, done in a second step
/// ([`Process::finish_process_op`]) so the caller can first take what it placed in the
/// old one out (the emulated LBR's breakpoints: a fork would copy them, an exec would
/// leave them to be "restored" into the new program).
#[derive(Debug)]
pub enum ProcessOp {
    Fork(Box<outcome::ForkArgs>),
    Exec(Box<Program>),
}

/// Set `regs` (a system call's return state) to make system call `nr` again: back
/// onto the `syscall` instruction (RCX is the address after it) with the call's
/// number. In ring 3 the program resumes at RIP (already RCX); through the ring-0 stub
/// SYSRETQ returns to RCX. A signal frame set up now saves this state, so the call
/// starts again when the handler returns. The value for RAX.
fn restart(regs: &mut kvm_regs, nr: u64) -> u64 {
    let back = regs.rcx.wrapping_sub(2);
    if regs.rip == regs.rcx {
        regs.rip = back;
    }
    regs.rcx = back;
    nr
}

/// Write the registers of a resumed system call back (through the run page when `fast`).
///
/// A kick that comes while the call is serviced sets `immediate_exit`, so the next
/// KVM_RUN returns EINTR without entering the guest; the result is not lost: x86
/// `kvm_arch_vcpu_ioctl_run` applies the dirty run-page registers (`sync_regs`, which
/// also clears `kvm_dirty_regs`) and completes the pending `out` before it checks
/// `immediate_exit` (`wants_to_run` in newer kernels), and `store_regs` copies them back
/// to the run page as it returns, where the next exit's reader finds them.
fn write_regs(vcpu: &mut VcpuFd, regs: &kvm_regs, fast: bool) -> Result<(), VmError> {
    if fast {
        vcpu.sync_regs_mut().regs = *regs;
        vcpu.set_sync_dirty_reg(kvm_ioctls::SyncReg::Register);
        Ok(())
    } else {
        vcpu.set_regs(regs).map_err(|source| VmError::Kvm {
            op: "KVM_SET_REGS",
            source,
        })
    }
}

/// Reload CR3 on `task`'s vCPU if another thread changed the page tables since it last
/// did (it was kicked out of the guest for this). `roots` are the twin PML4s.
pub fn catch_up_tlb(
    task: &mut Task,
    vcpu: &VcpuFd,
    generation: u64,
    roots: [u64; 2],
) -> Result<(), VmError> {
    if !task.tlb_stale(generation) {
        return Ok(());
    }
    let kvm = |op: &'static str| move |source| VmError::Kvm { op, source };
    let mut s = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    task.cr3 = if task.cr3 == roots[0] {
        roots[1]
    } else {
        roots[0]
    };
    task.tlb_seen = generation;
    s.cr3 = task.cr3;
    vcpu.set_sregs(&s).map_err(kvm("KVM_SET_SREGS"))
}
