//! Where separate debug info lives, in the order gdb and binutils look:
//!
//! 1. by build-id: `DIR/.build-id/xx/rest.debug` for each `--debug-dir` DIR, then
//!    `/usr/lib/debug`;
//! 2. by `.gnu_debuglink` NAME: next to the binary (`BINDIR/NAME`, `BINDIR/.debug/NAME`),
//!    then `DIR/NAME` and `DIR/BINDIR/NAME` for each `--debug-dir` DIR and `/usr/lib/debug`.
//!
//! This module only produces candidate paths; [`crate::module`] validates each candidate
//! (build-id equality, or the debuglink CRC when the binary has no build-id).

use std::path::{Path, PathBuf};

/// The system-wide debug directory of Debian/Fedora `-dbgsym`/`-debuginfo` packages.
pub(crate) const SYSTEM_DEBUG_DIR: &str = "/usr/lib/debug";

fn all_dirs(debug_dirs: &[PathBuf]) -> impl Iterator<Item = PathBuf> + '_ {
    debug_dirs
        .iter()
        .cloned()
        .chain(std::iter::once(PathBuf::from(SYSTEM_DEBUG_DIR)))
}

/// `.build-id/xx/rest{suffix}` under each debug directory.
pub(crate) fn by_build_id(build_id: &[u8], debug_dirs: &[PathBuf], suffix: &str) -> Vec<PathBuf> {
    if build_id.len() < 2 {
        return Vec::new();
    }
    let hex = crate::error::hex(build_id);
    let (head, rest) = hex.split_at(2);
    all_dirs(debug_dirs)
        .map(|d| {
            d.join(".build-id")
                .join(head)
                .join(format!("{rest}{suffix}"))
        })
        .collect()
}

/// Copies of a *binary* (not its debug file: a debug file's program headers no longer
/// describe the loaded file) with this build-id, for a module whose recorded file is gone
/// or was rebuilt: `DIR/.build-id/xx/rest` and perf's `DIR/.build-id/xx/rest/elf` for each
/// `--debug-dir` DIR, then perf's build-id cache `cache` (`~/.debug`). (The debuginfod
/// client cache's `ID/executable` is the caller's to add.)
pub(crate) fn binaries_by_build_id(
    build_id: &[u8],
    debug_dirs: &[PathBuf],
    cache: Option<&Path>,
) -> Vec<PathBuf> {
    if build_id.len() < 2 {
        return Vec::new();
    }
    let hex = crate::error::hex(build_id);
    let (head, rest) = hex.split_at(2);
    let mut out = Vec::new();
    for dir in debug_dirs.iter().map(PathBuf::as_path).chain(cache) {
        let base = dir.join(".build-id").join(head).join(rest);
        out.push(base.join("elf"));
        out.push(base);
    }
    out
}

/// perf's saved copy of the kernel symbol table of the kernel with `build_id`
/// (`perf record` stores `/proc/kallsyms` as `[kernel.kallsyms]/ID/kallsyms` in its
/// build-id cache): under each `--debug-dir` DIR, then perf's build-id cache `cache`
/// (`~/.debug`). Only existing files.
pub fn saved_kallsyms(
    build_id: &[u8],
    debug_dirs: &[PathBuf],
    cache: Option<&Path>,
) -> Option<PathBuf> {
    if build_id.is_empty() {
        return None;
    }
    let hex = crate::error::hex(build_id);
    debug_dirs
        .iter()
        .map(PathBuf::as_path)
        .chain(cache)
        .map(|d| d.join("[kernel.kallsyms]").join(&hex).join("kallsyms"))
        .find(|p| p.is_file())
}

/// Candidates for a `.gnu_debuglink` name of the binary at `binary`.
pub(crate) fn by_debuglink(binary: &Path, link: &Path, debug_dirs: &[PathBuf]) -> Vec<PathBuf> {
    // A debuglink is a plain file name; refuse anything that would escape the directories.
    if link.components().count() != 1 || link.file_name().is_none() {
        return Vec::new();
    }
    let bin_dir = binary
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .or_else(|| binary.parent().map(Path::to_path_buf))
        .unwrap_or_default();
    let mut out = vec![bin_dir.join(link), bin_dir.join(".debug").join(link)];
    let relative_bin_dir = bin_dir.strip_prefix("/").unwrap_or(&bin_dir).to_path_buf();
    for dir in all_dirs(debug_dirs) {
        out.push(dir.join(link));
        out.push(dir.join(&relative_bin_dir).join(link));
    }
    // The binary itself can carry a debuglink to a same-named file; never pick it.
    let me = binary.canonicalize().ok();
    out.retain(|p| p.canonicalize().ok() != me || me.is_none());
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_paths() {
        let c = by_build_id(&[0xab, 0xcd, 0xef], &[PathBuf::from("/d")], ".debug");
        assert_eq!(
            c,
            vec![
                PathBuf::from("/d/.build-id/ab/cdef.debug"),
                PathBuf::from("/usr/lib/debug/.build-id/ab/cdef.debug")
            ]
        );
        assert!(by_build_id(&[1], &[], ".debug").is_empty());
    }

    #[test]
    fn binary_paths_by_build_id() {
        let c = binaries_by_build_id(&[0xab, 0xcd], &[PathBuf::from("/d")], None);
        assert_eq!(c[0], PathBuf::from("/d/.build-id/ab/cd/elf"));
        assert_eq!(c[1], PathBuf::from("/d/.build-id/ab/cd"));
        assert_eq!(c.len(), 2);
        let c = binaries_by_build_id(&[0xab, 0xcd], &[], Some(Path::new("/home/u/.debug")));
        assert_eq!(c[1], PathBuf::from("/home/u/.debug/.build-id/ab/cd"));
        assert!(binaries_by_build_id(&[], &[], None).is_empty());
    }

    #[test]
    fn debuglink_paths_stay_inside_dirs() {
        let c = by_debuglink(
            Path::new("/nonexistent/bin/foo"),
            Path::new("foo.debug"),
            &[],
        );
        assert!(c.contains(&PathBuf::from("/nonexistent/bin/foo.debug")));
        assert!(c.contains(&PathBuf::from("/nonexistent/bin/.debug/foo.debug")));
        assert!(c.contains(&PathBuf::from("/usr/lib/debug/nonexistent/bin/foo.debug")));
        assert!(by_debuglink(Path::new("/bin/foo"), Path::new("../../etc/passwd"), &[]).is_empty());
    }
}
