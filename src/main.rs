//! `lbrprof`: the command-line front end. Wiring only: each subcommand lives in its own
//! module under `cmd/`, turns its clap arguments into plain option structs and calls the
//! library crates along the data flow capture (`lbrprof-collector`, `lbrprof-vmm`) →
//! data (`lbrprof-data`) → symbolize (`lbrprof-symbolizer`) → aggregate → render
//! (`lbrprof-reports`: `report`, `flamegraph`, `diff`, `annotate` and the symbolizing
//! exports go through its `load`; `info` and `export --perf-data`, which symbolize
//! nothing, visit the data layer's samples in stream order).

mod cli;
mod cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Recordings of Linux programs name the guest's vDSO `[vdso]` and its trap stubs
    // `[lbrprof_shim]`, each with its image's build-id.
    lbrprof_symbolizer::add_pseudo_image(|| &lbrprof_vmm::linux::vdso::image().bytes);
    lbrprof_symbolizer::add_pseudo_image(|| &lbrprof_vmm::linux::trapsyms::image().bytes);
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
