//! One module per subcommand, the way perf has one `builtin-<cmd>.c` per command.

pub mod annotate;
pub mod demo;
pub mod diff;
pub mod export;
pub mod export_args;
pub mod export_callgrind;
pub mod export_firefox;
pub mod export_perf;
pub mod export_pgo;
pub mod flamegraph;
pub mod generate;
pub mod info;
pub mod lbr_opts;
pub mod linux_prog;
pub mod record;
pub mod record_vm;
pub mod report;
pub mod run;
pub mod symbolize;

use std::fmt;

/// An error that asks for a specific process exit code (errors default to 2). Its message
/// is the wrapped error's full chain, so nothing is printed twice.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub error: anyhow::Error,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Exit {}

/// Make `main` exit with `code` for this error, e.g. 127 for a command that cannot run.
pub fn with_exit(error: anyhow::Error, code: u8) -> anyhow::Error {
    anyhow::Error::new(Exit { code, error })
}

/// The exit code `main` uses for an error that reached it.
pub fn exit_code_of(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|e| e.downcast_ref::<Exit>())
        .map_or(2, |e| e.code)
}

/// Writing to a closed pipe (`lbrprof report | head`) is not an error.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    }) || err
        .chain()
        .filter_map(|e| e.downcast_ref::<Exit>())
        .any(|e| is_broken_pipe(&e.error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_defaults_to_two_and_can_be_chosen() {
        let plain = anyhow::anyhow!("boom");
        assert_eq!(exit_code_of(&plain), 2);
        let coded = with_exit(anyhow::anyhow!("cannot run 'foo'"), 127);
        assert_eq!(exit_code_of(&coded), 127);
        assert_eq!(format!("{coded:#}"), "cannot run 'foo'");
        let wrapped = coded.context("while recording");
        assert_eq!(exit_code_of(&wrapped), 127);
    }
}
