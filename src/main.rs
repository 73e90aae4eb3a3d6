//! `lbrprof`: the command-line front end. Wiring only: each subcommand lives in its own
//! module under `cmd/`, turns its clap arguments into plain option structs and calls the
//! library crates.

mod cli;
mod cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.run() {
        Ok(code) => code,
        Err(err) => {
            if cmd::is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("lbrprof: error: {err:#}");
            ExitCode::from(cmd::exit_code_of(&err))
        }
    }
}
