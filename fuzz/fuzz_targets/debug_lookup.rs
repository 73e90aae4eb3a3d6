#![no_main]
//! Separate debug-info lookup: the input is split into a binary and a debug file. The
//! debug file is put everywhere the lookup searches for the binary's `.gnu_debuglink`
//! name and build-id (beside it, in `.debug/`, in a debug directory's `.build-id/` tree,
//! in a debuginfod cache), then the module is opened through those paths and
//! addresses are symbolized and explained. Whatever the two files hold (build-id or CRC
//! mismatches, a debug file that is no ELF, a dwz or split-DWARF link to nowhere), the
//! lookup must not panic.

use std::fs;
use std::path::{Path, PathBuf};

use lbrprof_symbolizer::{Module, ModuleKey, Svma, SymbolizerOptions};
use libfuzzer_sys::fuzz_target;
use object::{Object, ObjectSection};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn put(path: &Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        let _ = fs::create_dir_all(dir);
    }
    let _ = fs::write(path, bytes);
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let split = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize % data.len().max(1);
    let (binary, debug) = data[4..].split_at(split.min(data.len() - 4));
    let root = std::env::temp_dir().join(format!("lbrprof-fuzz-debug-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let bin_dir = root.join("bin");
    let debug_dir = root.join("debug");
    let cache = root.join("cache");
    let prog = bin_dir.join("prog");
    put(&prog, binary);
    let mut places: Vec<PathBuf> = vec![prog.with_extension("debug")];
    let mut build_id = None;
    if let Ok(obj) = object::File::parse(binary) {
        if let Ok(Some((name, _))) = obj.gnu_debuglink() {
            // Only plain names: the lookup itself refuses paths that climb out.
            if let Ok(name) = std::str::from_utf8(name)
                && !name.is_empty()
                && !name.contains('/')
            {
                places.push(bin_dir.join(name));
                places.push(bin_dir.join(".debug").join(name));
                places.push(debug_dir.join(name));
            }
        }
        if let Ok(Some(id)) = obj.build_id()
            && id.len() >= 2
        {
            let h = hex(id);
            places.push(debug_dir.join(".build-id").join(&h[..2]).join(format!("{}.debug", &h[2..])));
            places.push(cache.join(&h).join("debuginfo"));
            build_id = Some(id.to_vec());
        }
        let _ = obj.section_by_name(".gnu_debugaltlink").map(|s| s.data());
    }
    for p in &places {
        put(p, debug);
    }
    let opts = SymbolizerOptions {
        debug_dirs: vec![debug_dir],
        debuginfod_cache: Some(cache),
        ..SymbolizerOptions::default()
    };
    for key in [ModuleKey::new(&prog), ModuleKey { path: prog.clone(), build_id }] {
        if let Ok(opened) = Module::open(&key, &opts) {
            let probes = [0u64, 0x1000, 0x401000, 0x1130];
            for &p in &probes {
                let _ = opened.module.symbolize(Svma(p));
            }
            let svmas: Vec<Svma> = probes.iter().map(|&p| Svma(p)).collect();
            let _ = opened.module.explain(&svmas);
            let _ = opened.module.take_warnings();
        }
    }
    let _ = fs::remove_dir_all(&root);
});
