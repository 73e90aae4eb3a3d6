//! `lbrprof symbolize`: addresses of one ELF file (or of the host kernel) to functions and
//! source lines, printed like `llvm-symbolizer --output-style=GNU -f -i -C` (the default)
//! or `addr2line -f -i -C` (`--style gnu`), so either can be diffed line by line.
//!
//! Output, per address: for each frame (innermost inlined frame first, containing
//! function last) a function line (`??` when unknown) and a `FILE:LINE` line (`??` for an
//! unknown file; an unknown line is `0` in LLVM style, `?` in binutils style; `??:0` when
//! nothing at all is known), with ` (discriminator N)` after the line when the line row
//! has one.

use std::io::{BufRead, BufWriter, IoSlice, IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use lbrprof_symbolizer::{
    FileOffset, FrameRef, ModuleKey, NameStyle, Svma, SymFrame, SymbolChoice, Symbolized,
    Symbolizer, SymbolizerOptions,
};

/// Symbolize addresses of an ELF file, in the style of `llvm-symbolizer` or `addr2line`.
///
/// ADDRs are hexadecimal (with or without `0x`) and, like addr2line's, are addresses as
/// stated in FILE's ELF headers and DWARF (SVMAs: e.g. the addresses `nm` and `objdump -d`
/// print), not run-time addresses of a PIE or shared library. Use `--file-offsets` for
/// offsets in the file (what perf's MMAP records give after subtracting the mapping start
/// and adding pgoff). With no ADDR, addresses are read from standard input, whitespace
/// separated; output is flushed whenever the input pauses, so it works as a coprocess.
#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("target")
        .required(true)
        .multiple(true)
        .args(["exe", "kernel", "kallsyms"])
))]
pub struct Args {
    /// The ELF file (executable, shared library, guest image, debug file) to symbolize.
    #[arg(
        short = 'e',
        long = "exe",
        value_name = "FILE",
        conflicts_with_all = ["kernel", "kallsyms"]
    )]
    pub exe: Option<PathBuf>,

    /// Symbolize host kernel addresses through /proc/kallsyms (or --kallsyms).
    #[arg(short = 'k', long)]
    pub kernel: bool,

    /// Symbolize host kernel addresses through FILE (a saved /proc/kallsyms) instead of
    /// /proc/kallsyms; implies --kernel.
    #[arg(long, value_name = "FILE")]
    pub kallsyms: Option<PathBuf>,

    /// Also search DIR for separate debug info (DIR/.build-id/xx/rest.debug and
    /// .gnu_debuglink names), before /usr/lib/debug. Repeatable. Without it, debug info is
    /// still found beside the binary (.gnu_debuglink, .dwo, .dwp), in /usr/lib/debug and in
    /// the debuginfod cache ($DEBUGINFOD_CACHE_PATH or ~/.cache/debuginfod_client).
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
    #[arg(long, conflicts_with_all = ["kernel", "kallsyms"])]
    pub file_offsets: bool,

    /// Print each address (0x%016x) before its frames, like addr2line -a.
    #[arg(short = 'a', long)]
    pub addresses: bool,

    /// Instead of the frames alone, say where FILE's debug info was looked for and what was
    /// found (separate debug files, dwz supplementary file, split DWARF), then, for each
    /// ADDR, the symbol covering it and its frames.
    #[arg(long, requires = "exe", conflicts_with = "file_offsets")]
    pub explain: bool,

    /// Whose conventions to follow. llvm: as llvm-symbolizer --output-style=GNU (the
    /// containing function named by FILE's own symbol table, .symtab or else .dynsym, never
    /// a separate debug file's; of aliases, the largest symbol, then the last in the table;
    /// LLVM's demangling; unknown lines are 0). gnu: as binutils addr2line -f -i -C (DWARF
    /// names, completed from the fullest symbol table, as perf; unknown lines ?).
    #[arg(long, value_enum, default_value_t = Style::Llvm)]
    pub style: Style,

    /// Hexadecimal addresses (read from standard input when none are given).
    #[arg(value_name = "ADDR")]
    pub addrs: Vec<String>,
}

/// `--style`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Style {
    Llvm,
    Gnu,
}

/// What the addresses are and which file they belong to.
enum Target {
    Svma(ModuleKey),
    FileOffset(ModuleKey),
    Kernel,
}

/// Addresses per lookup batch when reading a regular file (bounded memory, good locality).
/// A batch's distinct addresses are rendered before any is written, so this also bounds
/// that text: ~60 MiB for 256 Ki distinct addresses of a Rust debug build; less with
/// repeats, or where neighbouring addresses share their frames (see [`Job::batch`]).
const BIG_BATCH: usize = 1 << 18;

/// The debuginfod client's cache, where `debuginfod-find` and gdb leave what they
/// downloaded: `$DEBUGINFOD_CACHE_PATH`, else `$XDG_CACHE_HOME/debuginfod_client`, else
/// `~/.cache/debuginfod_client` (libdebuginfod's order).
/// perf's build-id cache, `$HOME/.debug` (where `perf record` and `perf buildid-cache`
/// keep copies of binaries and kernel symbol tables).
pub fn build_id_cache() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".debug"))
}

pub fn debuginfod_cache() -> Option<PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("DEBUGINFOD_CACHE_PATH")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("debuginfod_client")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/debuginfod_client")))
}

fn parse_addr(s: &str) -> anyhow::Result<u64> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(digits, 16)
        .with_context(|| format!("invalid address {s:?} (expected hexadecimal)"))
}

/// [`parse_addr`] for a word of input: plain hex digits (with or without `0x`) are parsed
/// here, anything else as [`parse_addr`] does (which gives the error).
fn parse_addr_bytes(word: &[u8]) -> anyhow::Result<u64> {
    let digits = match word {
        [b'0', b'x' | b'X', rest @ ..] => rest,
        _ => word,
    };
    if (1..=16).contains(&digits.len()) {
        let mut value = 0u64;
        for &b in digits {
            let nibble = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return parse_addr(&String::from_utf8_lossy(word)),
            };
            value = value << 4 | u64::from(nibble);
        }
        return Ok(value);
    }
    parse_addr(&String::from_utf8_lossy(word))
}

/// Addresses read from a byte stream, whitespace separated, a buffer at a time: the
/// buffer is split into words in place (bytes, not lines or a String: no UTF-8 check, no
/// copy, hex parsed by hand); only a word cut by the end of a read is kept over.
#[derive(Default)]
struct Words {
    /// The start of a word the previous read ended in.
    partial: Vec<u8>,
}

impl Words {
    /// Parses what one read of `input` gives into `out`; false at the end of the input
    /// (the last word, if any, parsed). The outer error is reading's, the inner a bad
    /// address.
    fn read(
        &mut self,
        input: &mut impl BufRead,
        out: &mut Vec<u64>,
    ) -> std::io::Result<anyhow::Result<bool>> {
        let buf = input.fill_buf()?;
        let n = buf.len();
        if n == 0 {
            let last = std::mem::take(&mut self.partial);
            return Ok(Self::parse_all(&last, out).map(|()| false));
        }
        let mut rest = buf;
        if !self.partial.is_empty() {
            let end = rest
                .iter()
                .position(u8::is_ascii_whitespace)
                .unwrap_or(rest.len());
            self.partial.extend_from_slice(&rest[..end]);
            rest = &rest[end..];
            if !rest.is_empty() {
                let word = std::mem::take(&mut self.partial);
                if let Err(e) = Self::parse_all(&word, out) {
                    return Ok(Err(e));
                }
            }
        }
        // Words up to the last whitespace are whole; the rest may go on in the next read.
        let whole = rest
            .iter()
            .rposition(u8::is_ascii_whitespace)
            .map_or(0, |i| i + 1);
        self.partial.extend_from_slice(&rest[whole..]);
        let parsed = Self::parse_all(&rest[..whole], out);
        input.consume(n);
        Ok(parsed.map(|()| true))
    }

    fn parse_all(bytes: &[u8], out: &mut Vec<u64>) -> anyhow::Result<()> {
        for word in bytes
            .split(u8::is_ascii_whitespace)
            .filter(|w| !w.is_empty())
        {
            out.push(parse_addr_bytes(word)?);
        }
        Ok(())
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let opts = SymbolizerOptions {
        debug_dirs: args.debug_dirs,
        debuginfod_cache: debuginfod_cache(),
        build_id_cache: build_id_cache(),
        kallsyms: args.kallsyms,
        demangle: !args.no_demangle,
        inlines: !args.no_inlines,
        style: match args.style {
            Style::Llvm => NameStyle::Llvm,
            Style::Gnu => NameStyle::Gnu,
        },
        // llvm-symbolizer names functions from the file's own symbols only; binutils, like
        // perf (and so `report`), from the fullest table there is.
        symbols: match args.style {
            Style::Llvm => SymbolChoice::Llvm,
            Style::Gnu => SymbolChoice::Perf,
        },
    };
    // A path that does not exist is a typo, not a module to warn about: fail early.
    // So is a file that is not an ELF at all (addr2line: "file format not recognized").
    if let Some(path) = &args.exe {
        use std::io::Read;
        let mut magic = Vec::with_capacity(4);
        std::fs::File::open(path)
            .and_then(|f| f.take(4).read_to_end(&mut magic))
            .with_context(|| format!("cannot open {}", path.display()))?;
        if magic != b"\x7fELF" {
            anyhow::bail!("{} is not an ELF file", path.display());
        }
    }
    if args.explain {
        let Some(path) = args.exe else {
            anyhow::bail!("--explain needs the file: -e FILE");
        };
        let addrs = args
            .addrs
            .iter()
            .map(|a| parse_addr(a).map(Svma))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let symbolizer = Symbolizer::new(opts);
        let mut out = std::io::stdout().lock();
        for line in symbolizer.explain(&ModuleKey::new(path), &addrs) {
            writeln!(out, "{line}").context("cannot write to standard output")?;
        }
        for w in symbolizer.take_warnings() {
            eprintln!("lbrprof: warning: {w}");
        }
        return Ok(ExitCode::SUCCESS);
    }
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
        unknown_line: match args.style {
            Style::Llvm => b":0\n",
            Style::Gnu => b":?\n",
        },
        text: Vec::new(),
        ranges: Vec::new(),
        address_lines: Vec::new(),
    };

    let mut last = Vec::new();
    if !args.addrs.is_empty() {
        let addrs = args
            .addrs
            .iter()
            .map(|a| parse_addr(a))
            .collect::<anyhow::Result<Vec<_>>>()?;
        last = job.batch(&addrs, &mut out)?;
    } else {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprintln!("lbrprof symbolize: reading addresses from standard input");
        }
        // From a regular file, nobody waits for early answers: take big batches (looked up
        // in address order, see Symbolizer). From a pipe or terminal, answer after each read.
        let from_file = stdin
            .as_fd()
            .try_clone_to_owned()
            .ok()
            .and_then(|fd| std::fs::File::from(fd).metadata().ok())
            .is_some_and(|m| m.is_file());
        let mut input = std::io::BufReader::with_capacity(1 << 16, stdin.lock());
        let mut words = Words::default();
        let mut pending = Vec::new();
        loop {
            let more = words
                .read(&mut input, &mut pending)
                .context("cannot read addresses from standard input")??;
            // Flush when the input pauses (what one read gave is all there is for now) or
            // ends, so an interactive caller gets answers.
            if !more || !from_file || pending.len() >= BIG_BATCH {
                last = job.batch(&pending, &mut out)?;
                pending.clear();
                out.flush().context("cannot write to standard output")?;
            }
            if !more {
                break;
            }
        }
    }
    out.flush().context("cannot write to standard output")?;
    job.print_warnings();
    // The process ends here: unmapping files and freeing the parsed DWARF and the last
    // results piece by piece would only add exit time (~20% on a large binary).
    std::mem::forget(symbolizer);
    std::mem::forget(last);
    Ok(ExitCode::SUCCESS)
}

struct Job<'a> {
    symbolizer: &'a Symbolizer,
    target: &'a Target,
    print_address: bool,
    /// How a frame with a file but no line ends.
    unknown_line: &'static [u8],
    /// A batch's rendered frames, `ranges` of it per distinct address in address order,
    /// and the `-a` lines of one `writev`; kept from batch to batch so their pages are
    /// touched once.
    text: Vec<u8>,
    ranges: Vec<(usize, usize)>,
    address_lines: Vec<u8>,
}

impl Job<'_> {
    /// Symbolizes and prints one batch; returns the results (kernel only) so the last
    /// batch's can be left to process exit instead of being freed string by string.
    fn batch(&mut self, addrs: &[u64], out: &mut impl Write) -> anyhow::Result<Vec<Symbolized>> {
        if addrs.is_empty() {
            return Ok(Vec::new());
        }
        let print_address = self.print_address;
        let unknown_line = self.unknown_line;
        let mut kept = Vec::new();
        match self.target {
            Target::Svma(_) | Target::FileOffset(_) => {
                // Each distinct address is looked up and rendered once, then its text is
                // written for every occurrence (samples repeat hot addresses many times).
                // Neighbouring addresses mostly have the same frames (same line, same
                // inline chain): a text equal to the previous one is not kept twice, which
                // keeps `text` small (on C++ with deep inlining, 1/8 of the distinct
                // addresses' text) and in cache while it is written.
                let mut order: Vec<(u64, usize)> = addrs.iter().copied().zip(0..).collect();
                sort_by_address(&mut order);
                let mut unique = Vec::new();
                let mut slot = vec![0; addrs.len()];
                for (addr, n) in order {
                    if unique.last() != Some(&addr) {
                        unique.push(addr);
                    }
                    slot[n] = unique.len() - 1;
                }
                let text = &mut self.text;
                let ranges = &mut self.ranges;
                text.clear();
                ranges.clear();
                let mut render = |frames: &[FrameRef<'_>]| -> std::io::Result<()> {
                    let start = text.len();
                    write_addr2line(text, frames, unknown_line)?;
                    if let Some(&(s, e)) = ranges.last()
                        && e == start
                        && text[s..e] == text[start..]
                    {
                        text.truncate(start);
                        ranges.push((s, e));
                    } else {
                        ranges.push((start, text.len()));
                    }
                    Ok(())
                };
                if let Target::Svma(key) = self.target {
                    let svmas: Vec<Svma> = unique.iter().map(|a| Svma(*a)).collect();
                    self.symbolizer.visit_svma(key, &svmas, &mut render)?;
                } else if let Target::FileOffset(key) = self.target {
                    let offsets: Vec<FileOffset> = unique.iter().map(|a| FileOffset(*a)).collect();
                    self.symbolizer.visit_offsets(key, &offsets, &mut render)?;
                }
                // Written straight from `text` (writev) instead of being copied into a
                // buffer, in groups of up to IOV_MAX slices; a group's `-a` lines are
                // rendered into a small buffer used again for the next group, which stays
                // in cache (all lines of a batch would be as large as `text`).
                let (text, ranges) = (&self.text, &self.ranges);
                let address_lines = &mut self.address_lines;
                let per_group = if print_address { IOV_MAX / 2 } else { IOV_MAX };
                for (group, slots) in slot.chunks(per_group).enumerate() {
                    address_lines.clear();
                    if print_address {
                        let first = group * per_group;
                        for addr in &addrs[first..first + slots.len()] {
                            write_address(address_lines, *addr)?;
                        }
                    }
                    let mut slices = Vec::with_capacity(IOV_MAX);
                    for (n, &i) in slots.iter().enumerate() {
                        if print_address {
                            let line = &address_lines[n * ADDRESS_LINE..(n + 1) * ADDRESS_LINE];
                            slices.push(IoSlice::new(line));
                        }
                        let (start, end) = ranges[i];
                        slices.push(IoSlice::new(&text[start..end]));
                    }
                    write_all_vectored(out, &mut slices)?;
                }
            }
            Target::Kernel => {
                let mut next = addrs.iter();
                kept = self.symbolizer.symbolize_kernel(addrs);
                for sym in &kept {
                    let frames: Vec<FrameRef<'_>> = sym.frames.iter().map(frame_ref).collect();
                    if print_address && let Some(addr) = next.next() {
                        write_address(out, *addr)?;
                    }
                    write_addr2line(out, &frames, unknown_line)?;
                }
            }
        }
        // Warnings (e.g. a module without debug info) follow the batch they concern.
        self.print_warnings();
        Ok(kept)
    }

    fn print_warnings(&mut self) {
        for w in self.symbolizer.take_warnings() {
            eprintln!("lbrprof: warning: {w}");
        }
    }
}

/// Bits per digit of [`sort_by_address`].
const RADIX_BITS: u32 = 11;

/// Sorts `(address, position)` pairs by address (stably): a least-significant-digit radix
/// sort over only the bits in which the addresses differ. The addresses of one file span
/// its text, so that is 2 or 3 passes (a 40 MiB text: 26 bits), each a linear scan; a
/// comparison sort of 100 000 pairs took 5% of a run.
fn sort_by_address(pairs: &mut Vec<(u64, usize)>) {
    let Some(&(first, _)) = pairs.first() else {
        return;
    };
    if pairs.len() < 1 << 8 {
        pairs.sort_by_key(|p| p.0);
        return;
    }
    let differ = pairs.iter().fold(0, |acc, p| acc | (p.0 ^ first));
    if differ == 0 {
        return;
    }
    let top = u64::BITS - differ.leading_zeros();
    let mut spare = vec![(0, 0); pairs.len()];
    let mut shift = differ.trailing_zeros();
    while shift < top {
        let digit = |a: u64| ((a >> shift) & ((1 << RADIX_BITS) - 1)) as usize;
        let mut next = [0usize; 1 << RADIX_BITS];
        for p in pairs.iter() {
            next[digit(p.0)] += 1;
        }
        let mut sum = 0;
        for n in &mut next {
            (*n, sum) = (sum, sum + *n);
        }
        for &p in pairs.iter() {
            let d = digit(p.0);
            spare[next[d]] = p;
            next[d] += 1;
        }
        std::mem::swap(pairs, &mut spare);
        shift += RADIX_BITS;
    }
}

/// The length of a `-a` line: `0x`, 16 digits, newline.
const ADDRESS_LINE: usize = 19;
/// Slices per `writev` (Linux's `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Writes all of `slices` (vectored, like the unstable `Write::write_all_vectored`) and
/// empties the list.
fn write_all_vectored(out: &mut impl Write, slices: &mut Vec<IoSlice<'_>>) -> std::io::Result<()> {
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match out.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    slices.clear();
    Ok(())
}

/// Writes `0x%016x` and a newline, as `addr2line -a` does. (By hand: `fmt` machinery
/// was a tenth of the run time on large batches.)
fn write_address(out: &mut impl Write, addr: u64) -> std::io::Result<()> {
    let mut buf = *b"0x0000000000000000\n";
    for (i, b) in buf[2..18].iter_mut().enumerate() {
        let nibble = (addr >> (60 - 4 * i)) & 0xf;
        *b = b"0123456789abcdef"[nibble as usize];
    }
    out.write_all(&buf)
}

fn frame_ref(f: &SymFrame) -> FrameRef<'_> {
    FrameRef {
        function: f.function.as_deref(),
        function_offset: f.function_offset,
        function_size: f.function_size,
        unnamed: f.unnamed,
        file: f.file.as_deref(),
        line: f.line,
        discriminator: None,
    }
}

/// Writes one address's frames in `addr2line -f -i` form; `unknown_line` ends a frame
/// whose line is unknown (`:?\n` for binutils, `:0\n` for LLVM).
fn write_addr2line(
    out: &mut impl Write,
    frames: &[FrameRef<'_>],
    unknown_line: &[u8],
) -> std::io::Result<()> {
    if frames.is_empty() {
        return out.write_all(b"??\n??:0\n");
    }
    for frame in frames {
        out.write_all(frame.function.unwrap_or("??").as_bytes())?;
        out.write_all(b"\n")?;
        out.write_all(frame.file.unwrap_or("??").as_bytes())?;
        match frame.line {
            Some(line) => {
                // ":" + up to 10 digits + "\n", filled from the end.
                let mut buf = [0u8; 12];
                let mut i = buf.len() - 1;
                buf[i] = b'\n';
                let mut n = line;
                loop {
                    i -= 1;
                    buf[i] = b'0' + (n % 10) as u8;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                i -= 1;
                buf[i] = b':';
                match frame.discriminator {
                    Some(d) => {
                        out.write_all(&buf[i..buf.len() - 1])?;
                        writeln!(out, " (discriminator {d})")?;
                    }
                    None => out.write_all(&buf[i..])?,
                }
            }
            None => out.write_all(unknown_line)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("symbolize").chain(argv.iter().copied()))
            .map(|c| c.args)
    }

    #[test]
    fn words_cut_by_the_end_of_a_read_are_joined() {
        let text = b"0x10 0x2000\n\n  ab\tcd 0x1234567 fff";
        for capacity in 1..text.len() + 2 {
            let mut input = std::io::BufReader::with_capacity(capacity, &text[..]);
            let mut words = Words::default();
            let mut got = Vec::new();
            while words.read(&mut input, &mut got).unwrap().unwrap() {}
            assert_eq!(
                got,
                [0x10, 0x2000, 0xab, 0xcd, 0x1234567, 0xfff],
                "{capacity}"
            );
        }
        let mut input = std::io::BufReader::with_capacity(4, &b"0x1 0xzz 0x3"[..]);
        let mut words = Words::default();
        let mut got = Vec::new();
        let err = loop {
            match words.read(&mut input, &mut got).unwrap() {
                Ok(true) => {}
                Ok(false) => panic!("no error"),
                Err(e) => break e.to_string(),
            }
        };
        assert!(err.contains("invalid address \"0xzz\""), "{err}");
    }

    #[test]
    fn input_words_parse_as_parse_addr_does() {
        for word in [
            "0",
            "0x0",
            "0X1f",
            "ffffffffffffffff",
            "0xFFFFffff00000001",
            "+ff",
            "12345678abcdefAB",
        ] {
            assert_eq!(
                parse_addr_bytes(word.as_bytes()).unwrap(),
                parse_addr(word).unwrap(),
                "{word}"
            );
        }
        for word in ["0x", "xyz", "0x10000000000000000", "-1", "0x1g"] {
            assert!(parse_addr(word).is_err(), "{word}");
            let e = parse_addr_bytes(word.as_bytes()).unwrap_err().to_string();
            assert!(e.contains("invalid address"), "{word}: {e}");
        }
        assert!(parse_addr_bytes(b"\xff\xfe").is_err());
    }

    #[test]
    fn target_arguments_parse() {
        let a = parse(&["-e", "x", "10", "0x20"]).unwrap();
        assert_eq!(a.exe.as_deref(), Some(std::path::Path::new("x")));
        assert_eq!(a.addrs, ["10", "0x20"]);
        assert!(parse(&["--kallsyms", "k", "ffff"]).unwrap().exe.is_none());
        assert!(parse(&["--kernel", "--kallsyms", "k"]).is_ok());
        assert!(
            parse(&["--debug-dir", "a", "--debug-dir", "b", "-e", "x"])
                .unwrap()
                .debug_dirs
                .len()
                == 2
        );
        assert!(parse(&["10"]).is_err(), "a target is required");
        assert!(parse(&["-e", "x", "--kernel"]).is_err());
        assert!(parse(&["-e", "x", "--kallsyms", "k"]).is_err());
        assert!(parse(&["--kernel", "--file-offsets"]).is_err());
    }

    #[test]
    fn radix_sort_sorts_like_a_stable_sort() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let spans = [0, 1, 0xff, 0x2255, 1 << 26, 1 << 40, u64::MAX];
        for len in [0, 1, 5, 255, 256, 3000, 100_000] {
            for &span in &spans {
                let base = random() & !0xfff;
                let mut pairs: Vec<(u64, usize)> = (0..len)
                    .map(|n| {
                        let offset = if span == u64::MAX {
                            random()
                        } else {
                            random() % (span + 1)
                        };
                        (base.wrapping_add(offset), n)
                    })
                    .collect();
                let mut expected = pairs.clone();
                expected.sort_by_key(|p| p.0);
                sort_by_address(&mut pairs);
                assert!(pairs == expected, "{len} pairs over {span:#x}");
            }
        }
    }

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
        let write = |out: &mut Vec<u8>, s: &Symbolized| {
            let frames: Vec<FrameRef<'_>> = s.frames.iter().map(frame_ref).collect();
            write_addr2line(out, &frames, b":?\n").unwrap();
        };
        write(&mut out, &Symbolized::unknown());
        let only_function = Symbolized {
            frames: vec![SymFrame {
                function: Some("f".into()),
                ..Default::default()
            }],
        };
        write(&mut out, &only_function);
        let no_line = Symbolized {
            frames: vec![SymFrame {
                file: Some("crtstuff.c".into()),
                ..Default::default()
            }],
        };
        write(&mut out, &no_line);
        let with_line = Symbolized {
            frames: vec![SymFrame {
                function: Some("g".into()),
                file: Some("a.c".into()),
                line: Some(u32::MAX),
                ..Default::default()
            }],
        };
        write(&mut out, &with_line);
        write_address(&mut out, 0x1234_abcd).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "??\n??:0\nf\n??:?\n??\ncrtstuff.c:?\ng\na.c:4294967295\n0x000000001234abcd\n"
        );
    }

    /// A writer taking at most 5 bytes per call and failing once with EINTR.
    struct Dribble {
        got: Vec<u8>,
        interrupted: bool,
    }

    impl Write for Dribble {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
            if !self.interrupted {
                self.interrupted = true;
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(5 - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == 5 {
                    break;
                }
            }
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn vectored_writes_survive_short_writes_and_interrupts() {
        let parts: [&[u8]; 4] = [b"0x12\n", b"", b"main\na.c:3\n", b"xyz"];
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut out = Dribble {
            got: Vec::new(),
            interrupted: false,
        };
        write_all_vectored(&mut out, &mut slices).unwrap();
        assert!(slices.is_empty());
        assert_eq!(out.got, b"0x12\nmain\na.c:3\nxyz");
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Ok(0)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut slices = vec![IoSlice::new(b"x")];
        let err = write_all_vectored(&mut Full, &mut slices).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WriteZero);
    }
}
