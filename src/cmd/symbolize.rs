//! `lbrprof symbolize`: addresses of one ELF file (or of the host kernel) to functions and
//! source lines, printed like `addr2line -f -i -C` so the two can be diffed line by line.
//!
//! Output, per address: for each frame (innermost inlined frame first, containing
//! function last) a function line (`??` when unknown) and a `FILE:LINE` line (`??` for an
//! unknown file, `?` for an unknown line; `??:0` when nothing at all is known).

use std::io::{BufRead, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use lbrprof_symbolizer::{FileOffset, ModuleKey, Svma, Symbolized, Symbolizer, SymbolizerOptions};

/// Symbolize addresses of an ELF file, in the style of `addr2line -f -i -C`.
///
/// ADDRs are hexadecimal (with or without `0x`) and, like addr2line's, are addresses as
/// stated in FILE's ELF headers and DWARF (SVMAs: e.g. the addresses `nm` and `objdump -d`
/// print), not run-time addresses of a PIE or shared library. Use `--file-offsets` for
/// offsets in the file (what perf's MMAP records give after subtracting the mapping start
/// and adding pgoff). With no ADDR, addresses are read from standard input, whitespace
/// separated; output is flushed whenever the input pauses, so it works as a coprocess.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["exe", "kernel"])))]
pub struct Args {
    /// The ELF file (executable, shared library, guest image, debug file) to symbolize.
    #[arg(short = 'e', long = "exe", value_name = "FILE")]
    pub exe: Option<PathBuf>,

    /// Symbolize host kernel addresses through /proc/kallsyms (or --kallsyms).
    #[arg(short = 'k', long)]
    pub kernel: bool,

    /// Kernel symbol table to use instead of /proc/kallsyms (implies --kernel's source).
    #[arg(long, value_name = "FILE")]
    pub kallsyms: Option<PathBuf>,

    /// Also search DIR for separate debug info (DIR/.build-id/xx/rest.debug and
    /// .gnu_debuglink names), before /usr/lib/debug. Repeatable.
    #[arg(long = "debug-dir", value_name = "DIR")]
    pub debug_dirs: Vec<PathBuf>,

    /// Print only the innermost frame, not the chain of inlined callers (addr2line without -i).
    #[arg(long)]
    pub no_inlines: bool,

    /// Print names as they are in the file (mangled), not demangled.
    #[arg(long)]
    pub no_demangle: bool,

    /// The addresses are offsets in FILE, not SVMAs; they are mapped through its program
    /// headers.
    #[arg(long, conflicts_with = "kernel")]
    pub file_offsets: bool,

    /// Print each address (0x%016x) before its frames, like addr2line -a.
    #[arg(short = 'a', long)]
    pub addresses: bool,

    /// Hexadecimal addresses (read from standard input when none are given).
    #[arg(value_name = "ADDR")]
    pub addrs: Vec<String>,
}

/// What the addresses are and which file they belong to.
enum Target {
    Svma(ModuleKey),
    FileOffset(ModuleKey),
    Kernel,
}

fn parse_addr(s: &str) -> anyhow::Result<u64> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(digits, 16)
        .with_context(|| format!("invalid address {s:?} (expected hexadecimal)"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = SymbolizerOptions {
        debug_dirs: args.debug_dirs,
        kallsyms: args.kallsyms,
        demangle: !args.no_demangle,
        inlines: !args.no_inlines,
    };
    let target = match args.exe {
        Some(path) if args.file_offsets => Target::FileOffset(ModuleKey::new(path)),
        Some(path) => Target::Svma(ModuleKey::new(path)),
        None => Target::Kernel,
    };
    let symbolizer = Symbolizer::new(opts);
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut job = Job {
        symbolizer: &symbolizer,
        target: &target,
        print_address: args.addresses,
        warnings_printed: false,
    };

    if !args.addrs.is_empty() {
        let addrs = args
            .addrs
            .iter()
            .map(|a| parse_addr(a))
            .collect::<anyhow::Result<Vec<_>>>()?;
        job.batch(&addrs, &mut out)?;
    } else {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprintln!("lbrprof symbolize: reading addresses from standard input");
        }
        let mut input = std::io::BufReader::with_capacity(1 << 16, stdin.lock());
        let mut line = String::new();
        let mut pending = Vec::new();
        loop {
            line.clear();
            let n = input
                .read_line(&mut line)
                .context("cannot read addresses from standard input")?;
            for word in line.split_whitespace() {
                pending.push(parse_addr(word)?);
            }
            // Flush when the input pauses (or ends), so an interactive caller gets answers.
            if n == 0 || input.buffer().is_empty() || pending.len() >= 1 << 16 {
                job.batch(&pending, &mut out)?;
                pending.clear();
                out.flush().context("cannot write to standard output")?;
            }
            if n == 0 {
                break;
            }
        }
    }
    out.flush().context("cannot write to standard output")?;
    job.print_warnings();
    Ok(ExitCode::SUCCESS)
}

struct Job<'a> {
    symbolizer: &'a Symbolizer,
    target: &'a Target,
    print_address: bool,
    warnings_printed: bool,
}

impl Job<'_> {
    fn batch(&mut self, addrs: &[u64], out: &mut impl Write) -> anyhow::Result<()> {
        if addrs.is_empty() {
            return Ok(());
        }
        let results = match self.target {
            Target::Svma(key) => {
                let svmas: Vec<Svma> = addrs.iter().map(|a| Svma(*a)).collect();
                self.symbolizer.symbolize_svma(key, &svmas)
            }
            Target::FileOffset(key) => {
                let offsets: Vec<FileOffset> = addrs.iter().map(|a| FileOffset(*a)).collect();
                self.symbolizer.symbolize(key, &offsets)
            }
            Target::Kernel => self.symbolizer.symbolize_kernel(addrs),
        };
        // Warnings go out before the first results, so they are seen next to the cause.
        self.print_warnings();
        for (addr, sym) in addrs.iter().zip(&results) {
            if self.print_address {
                writeln!(out, "0x{addr:016x}")?;
            }
            write_addr2line(out, sym)?;
        }
        Ok(())
    }

    fn print_warnings(&mut self) {
        for w in self.symbolizer.take_warnings() {
            eprintln!("lbrprof: warning: {w}");
        }
        self.warnings_printed = true;
    }
}

/// Writes one result in `addr2line -f -i` form.
fn write_addr2line(out: &mut impl Write, sym: &Symbolized) -> std::io::Result<()> {
    if sym.frames.is_empty() {
        return out.write_all(b"??\n??:0\n");
    }
    for frame in &sym.frames {
        let function = frame.function.as_deref().unwrap_or("??");
        let file = frame.file.as_deref().unwrap_or("??");
        match frame.line {
            Some(line) => writeln!(out, "{function}\n{file}:{line}")?,
            None => writeln!(out, "{function}\n{file}:?")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lbrprof_symbolizer::SymFrame;

    #[test]
    fn addresses_parse_like_addr2line() {
        assert_eq!(parse_addr("0x1f").unwrap(), 0x1f);
        assert_eq!(parse_addr("1f").unwrap(), 0x1f);
        assert_eq!(parse_addr("0XFF").unwrap(), 0xff);
        assert!(parse_addr("zz").is_err());
        assert!(parse_addr("0x").is_err());
    }

    #[test]
    fn unknown_parts_print_like_addr2line() {
        let mut out = Vec::new();
        write_addr2line(&mut out, &Symbolized::unknown()).unwrap();
        let only_function = Symbolized {
            frames: vec![SymFrame {
                function: Some("f".into()),
                ..Default::default()
            }],
        };
        write_addr2line(&mut out, &only_function).unwrap();
        let no_line = Symbolized {
            frames: vec![SymFrame {
                file: Some("crtstuff.c".into()),
                ..Default::default()
            }],
        };
        write_addr2line(&mut out, &no_line).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "??\n??:0\nf\n??:?\n??\ncrtstuff.c:?\n"
        );
    }
}
