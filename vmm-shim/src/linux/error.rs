//! Why a Linux program cannot be started ([`LinuxError`]).

use std::path::{Path, PathBuf};

/// Why a program cannot be started. [`LinuxError::exit_code`] is what a shell would
/// return (127 not found, 126 found but not executable).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinuxError {
    #[error("{}: command not found", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: cannot execute: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: is a directory", path.display())]
    Directory { path: PathBuf },
    #[error("{}: permission denied (not executable)", path.display())]
    NotExecutable { path: PathBuf },
    #[error("{}: cannot execute: not an ELF program or a #! script", path.display())]
    NotElf { path: PathBuf },
    #[error("{}: cannot execute: {what}", path.display())]
    WrongArch { path: PathBuf, what: String },
    #[error("{}: cannot execute: {why}", path.display())]
    BadElf { path: PathBuf, why: String },
    #[error("{}: cannot execute: its interpreter {} was not found", path.display(), interp.display())]
    InterpreterMissing { path: PathBuf, interp: PathBuf },
    #[error("the program does not fit in guest memory (raise --vm-mem)")]
    OutOfMemory,
    #[error("the initial stack (arguments and environment) is too large")]
    ArgsTooLong,
}

impl LinuxError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> LinuxError {
        match source.kind() {
            std::io::ErrorKind::NotFound => LinuxError::NotFound {
                path: path.to_owned(),
            },
            std::io::ErrorKind::PermissionDenied => LinuxError::NotExecutable {
                path: path.to_owned(),
            },
            _ => LinuxError::Io {
                path: path.to_owned(),
                source,
            },
        }
    }

    /// The errno an execve that fails this way returns.
    pub fn errno(&self) -> i32 {
        match self {
            LinuxError::NotFound { .. } | LinuxError::InterpreterMissing { .. } => libc::ENOENT,
            LinuxError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            LinuxError::Directory { .. } | LinuxError::NotExecutable { .. } => libc::EACCES,
            LinuxError::NotElf { .. }
            | LinuxError::WrongArch { .. }
            | LinuxError::BadElf { .. } => libc::ENOEXEC,
            LinuxError::OutOfMemory => libc::ENOMEM,
            LinuxError::ArgsTooLong => libc::E2BIG,
        }
    }

    /// The shell's status for this failure: 127 when the program or its interpreter is
    /// missing, 126 when it exists but cannot be executed.
    pub fn exit_code(&self) -> u8 {
        match self {
            LinuxError::NotFound { .. } | LinuxError::InterpreterMissing { .. } => 127,
            _ => 126,
        }
    }
}
