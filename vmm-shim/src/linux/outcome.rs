//! What a system call does to the program ([`Outcome`]): the answer `syscall.rs` gives
//! the trap path in `mod.rs`, which carries it out (resume, block, start a thread or a
//! process, exec, end).

use crate::linux::block::Block;
use crate::linux::program::Program;

/// What a system call does to the program.
#[derive(Debug)]
pub enum Outcome {
    /// Resume with this RAX.
    Return(u64),
    /// exit/exit_group.
    Exit(i32),
    /// End the program with a signal (and a one-line reason).
    Kill { signal: i32, reason: String },
    /// `exit` of a thread while others run.
    ThreadExit,
    /// Block (with the process released); the result comes when it ends.
    Block(Block),
    /// Start a thread (the caller has the registers to give it).
    Clone(Box<CloneArgs>),
    /// Start a process: fork, vfork, or a clone without CLONE_VM.
    Fork(Box<ForkArgs>),
    /// Replace the program (execve): the checked program to load.
    Exec(Box<Program>),
}

/// A new process `fork`, `vfork` or `clone` asked for.
#[derive(Debug)]
pub struct ForkArgs {
    pub flags: u64,
    /// The child's stack pointer (0: the parent's).
    pub stack: u64,
    pub ptid: u64,
    pub ctid: u64,
    pub tls: u64,
    /// The parent waits until the child execs or exits (CLONE_VFORK).
    pub vfork: bool,
}

/// A thread `clone` asked for.
#[derive(Debug)]
pub struct CloneArgs {
    pub tid: u64,
    /// The child's stack pointer (0: the parent's).
    pub stack: u64,
    /// CLONE_SETTLS: the child's FS base.
    pub tls: Option<u64>,
    /// CLONE_CHILD_CLEARTID: where its id is cleared (and woken) when it exits.
    pub clear_tid: u64,
}
