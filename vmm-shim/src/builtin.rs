//! The guest images built from `vmm-shim/guest/` and embedded at compile time
//! (`builtin:NAME` on the command line), and writing them out for symbolization.

use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/builtin_images.rs"));

/// The embedded image called `name`.
pub fn image(name: &str) -> Option<&'static [u8]> {
    BUILTIN_IMAGES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| *b)
}

/// The `builtin:NAME` prefix on the command line.
pub const PREFIX: &str = "builtin:";

/// No embedded image has this name.
#[derive(Debug, thiserror::Error)]
#[error("no built-in guest image '{name}' (available: {available})")]
pub struct UnknownBuiltin {
    pub name: String,
    pub available: String,
}

/// Resolve a `builtin:NAME` spec: `Ok(None)` when `spec` is not a builtin (a file path),
/// `Ok(Some((name, bytes)))` for a known image, an error naming the choices otherwise.
pub fn resolve(spec: &str) -> Result<Option<(&'static str, &'static [u8])>, UnknownBuiltin> {
    let Some(name) = spec.strip_prefix(PREFIX) else {
        return Ok(None);
    };
    BUILTIN_IMAGES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, b)| Some((*n, *b)))
        .ok_or_else(|| UnknownBuiltin {
            name: name.to_string(),
            available: names().collect::<Vec<_>>().join(", "),
        })
}

/// Names of all embedded images.
pub fn names() -> impl Iterator<Item = &'static str> {
    BUILTIN_IMAGES.iter().map(|(n, _)| *n)
}

/// Write image `name` to `dir/NAME` (for symbolizers, which need a file with the debug
/// info). Returns the path written. A new `dir` is private (0700) and the file 0600, as
/// the recording it sits beside.
pub fn write_image(name: &str, dir: &Path) -> std::io::Result<PathBuf> {
    let bytes = image(name).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no built-in guest image {name:?}"),
        )
    })?;
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)?
        .write_all(bytes)?;
    Ok(path)
}

/// The GNU build-id note of an ELF image, if it has one.
pub fn build_id(elf: &[u8]) -> Option<Vec<u8>> {
    // Scan for the note header: namesz 4, descsz, type NT_GNU_BUILD_ID (3), "GNU\0".
    let needle = [4u8, 0, 0, 0];
    let mut i = 0;
    while i + 16 <= elf.len() {
        if elf[i..i + 4] == needle
            && elf[i + 8..i + 12] == [3, 0, 0, 0]
            && &elf[i + 12..i + 16] == b"GNU\0"
        {
            let descsz =
                u32::from_le_bytes([elf[i + 4], elf[i + 5], elf[i + 6], elf[i + 7]]) as usize;
            return elf.get(i + 16..i + 16 + descsz).map(<[u8]>::to_vec);
        }
        i += 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::{ImageKind, RamLayout, parse};

    #[test]
    fn every_builtin_is_a_loadable_elf64_with_a_build_id() {
        let names: Vec<_> = names().collect();
        for expected in ["branchy", "calls", "sort", "interp", "msrprobe", "lbrcheck"] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {names:?}"
            );
        }
        for name in names {
            let img = image(name).unwrap();
            let parsed = parse(img, RamLayout::for_ram(64 << 20)).unwrap();
            assert_eq!(parsed.kind, ImageKind::Elf64, "{name}");
            assert_eq!(
                build_id(img).map(|b| b.len()),
                Some(20),
                "{name}: sha1 build-id"
            );
        }
        assert!(image("nope").is_none());
    }

    #[test]
    fn resolve_specs() {
        assert!(resolve("/boot/kernel").unwrap().is_none());
        let (name, bytes) = resolve("builtin:calls").unwrap().unwrap();
        assert_eq!((name, bytes), ("calls", image("calls").unwrap()));
        let err = resolve("builtin:nope").unwrap_err().to_string();
        assert!(
            err.contains("'nope'") && err.contains("available: branchy, calls"),
            "{err}"
        );
    }

    #[test]
    fn write_image_writes_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_image("sort", dir.path()).unwrap();
        assert_eq!(std::fs::read(p).unwrap(), image("sort").unwrap());
        assert!(write_image("nope", dir.path()).is_err());
    }
}
