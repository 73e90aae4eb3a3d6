//! `lbrprof generate`: man pages and shell completions from the same clap `Command`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// Write `lbrprof.1` and one `lbrprof-<command>.1` per subcommand into DIR.
    Man {
        #[arg(default_value = "man")]
        dir: PathBuf,
    },
    /// Print a completion script for SHELL on stdout.
    Complete { shell: clap_complete::Shell },
}

/// `cli` is the whole command line's definition (`Cli::command()`), passed in by the
/// dispatcher so that this module needs nothing from `cli.rs`.
pub fn run(args: Args, mut cli: clap::Command) -> anyhow::Result<ExitCode> {
    match args.what {
        What::Man { dir } => write_man_pages(&dir, &cli)?,
        What::Complete { shell } => {
            clap_complete::generate(shell, &mut cli, "lbrprof", &mut std::io::stdout());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Every man page as (file name, contents), rendered from the clap definition `cmd`.
pub fn man_pages(cmd: &clap::Command) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut pages = Vec::new();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
    pages.push(("lbrprof.1".to_string(), buf));
    for sub in cmd.get_subcommands() {
        let name = format!("lbrprof-{}", sub.get_name());
        let sub = sub.clone().name(name.clone()).display_name(name.clone());
        let mut buf = Vec::new();
        clap_mangen::Man::new(sub).render(&mut buf)?;
        pages.push((format!("{name}.1"), buf));
    }
    Ok(pages)
}

fn write_man_pages(dir: &Path, cmd: &clap::Command) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, contents) in man_pages(cmd)? {
        let path = dir.join(name);
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
