//! The `[vdso]` pseudo-module. The kernel maps one vDSO image into every process, so this
//! process's copy (read from `/proc/self/mem`) is the one a profiled process had, when the
//! recording was made on this kernel; a recorded build-id is checked like any module's.
//! Images added by the program ([`add_image`]: a VMM's own vDSO, its trap stubs) name
//! `[vdso]` and other bracketed pseudo-modules whose recorded build-id is theirs.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

/// The name perf and `/proc/PID/maps` give the vDSO mapping.
pub(crate) const VDSO: &str = "[vdso]";

/// True for mapping names that are not files (`[heap]`, `[stack]`, `//anon`,
/// `anon_inode:...`): nothing to symbolize and nothing to warn about. `[vdso]` is handled
/// apart.
pub(crate) fn is_pseudo(path: &Path) -> bool {
    let Some(s) = path.to_str() else {
        return false;
    };
    s != VDSO && (s.starts_with('[') || s.starts_with("//anon") || s.starts_with("anon_inode:"))
}

/// Images of pseudo-modules, by what gives them: a VMM's guest vDSO (lbrprof's own, which
/// its recordings name `[vdso]` with the image's build-id) and its guest trap stubs.
static IMAGES: Mutex<Vec<ImageFn>> = Mutex::new(Vec::new());

/// What gives an added image's bytes.
pub type ImageFn = fn() -> &'static [u8];

/// Make `image` (called when first needed) a candidate for `[vdso]` and other bracketed
/// pseudo-modules whose recorded build-id is its own.
pub fn add_image(image: ImageFn) {
    IMAGES.lock().unwrap_or_else(|e| e.into_inner()).push(image);
}

/// The bytes of pseudo-module `path` (`[vdso]`, `[lbrprof_shim]`) recorded with
/// `build_id`, when an added image has that build-id: what a reader of the module's code
/// (by file offset) reads instead of a file.
pub fn pseudo_module_image(path: &Path, build_id: Option<&[u8]>) -> Option<&'static [u8]> {
    let bracketed = path.to_str().is_some_and(|s| s.starts_with('['));
    added_image(build_id.filter(|_| bracketed)?)
}

/// The added image whose build-id is `build_id`.
pub(crate) fn added_image(build_id: &[u8]) -> Option<&'static [u8]> {
    use object::Object;
    let images = IMAGES.lock().unwrap_or_else(|e| e.into_inner()).clone();
    images.into_iter().map(|f| f()).find(|bytes| {
        object::File::parse(*bytes)
            .ok()
            .and_then(|o| o.build_id().ok().flatten().map(|id| id == build_id))
            .unwrap_or(false)
    })
}

/// The bytes of this process's vDSO image.
pub(crate) fn read_own() -> io::Result<Vec<u8>> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let missing = || {
        io::Error::new(
            io::ErrorKind::NotFound,
            "this process has no [vdso] mapping",
        )
    };
    let line = maps
        .lines()
        .find(|l| l.ends_with(VDSO))
        .ok_or_else(missing)?;
    let range = line.split_whitespace().next().ok_or_else(missing)?;
    let (start, end) = range.split_once('-').ok_or_else(missing)?;
    let parse = |s: &str| u64::from_str_radix(s, 16).map_err(|_| missing());
    let (start, end) = (parse(start)?, parse(end)?);
    let len = usize::try_from(end.saturating_sub(start)).map_err(|_| missing())?;
    let mut buf = vec![0; len];
    File::open("/proc/self/mem")?.read_exact_at(&mut buf, start)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_vdso_is_an_elf_image() {
        match read_own() {
            Ok(bytes) => assert_eq!(&bytes[..4], b"\x7fELF"),
            Err(e) => eprintln!("skipped: cannot read the vDSO ({e})"),
        }
    }

    #[test]
    fn pseudo_paths() {
        assert!(is_pseudo(Path::new("[heap]")));
        assert!(is_pseudo(Path::new("//anon")));
        assert!(!is_pseudo(Path::new("[vdso]")));
        assert!(!is_pseudo(Path::new("/usr/lib/libc.so.6")));
    }
}
