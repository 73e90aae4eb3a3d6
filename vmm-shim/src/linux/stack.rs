//! The initial process stack, as the Linux ELF loader lays it out
//! (fs/binfmt_elf.c `create_elf_tables`), from the top down:
//!
//! ```text
//! STACK_TOP   8 zero bytes (the end marker: exec's first `bprm->p`)
//!             execfn string ("/path/to/prog\0")
//!             envp strings, argv strings, platform string ("x86_64\0")
//!             16 random bytes (AT_RANDOM)
//!             (padding to 16 bytes)
//!             auxv: (tag, value) pairs ending in AT_NULL
//!             envp[]: pointers, NULL
//!             argv[]: pointers, NULL
//! SP ->       argc
//! ```
//!
//! The builder is pure: it returns the bytes to place just below the top and the initial
//! stack pointer, so it can be tested (and fuzzed) without a VM.

/// What goes on the stack.
#[derive(Clone, Debug, Default)]
pub struct StackSpec {
    pub argv: Vec<Vec<u8>>,
    pub envp: Vec<Vec<u8>>,
    pub execfn: Vec<u8>,
    pub random: [u8; 16],
    /// (tag, value) pairs, without AT_RANDOM/AT_EXECFN/AT_PLATFORM/AT_NULL (added here).
    pub auxv: Vec<(u64, u64)>,
}

/// The laid-out stack: `bytes` go at `[top - bytes.len(), top)`; SP is `sp`.
#[derive(Clone, Debug)]
pub struct Stack {
    pub bytes: Vec<u8>,
    pub sp: u64,
    /// The auxiliary vector's words, to AT_NULL included.
    pub auxv: Vec<u8>,
    /// `[start, end)` of the argument strings and of the environment strings.
    pub args: (u64, u64),
    pub env: (u64, u64),
}

/// Lay out `spec` below `top` (16-byte aligned). None if it would not fit in `limit` bytes.
pub fn build(spec: &StackSpec, top: u64, limit: u64) -> Option<Stack> {
    use crate::linux::abi::{AT_EXECFN, AT_NULL, AT_PLATFORM, AT_RANDOM};
    // Strings, from the top down, below Linux's 8-byte end marker. (Code that reads a
    // byte past the last string's NUL finds zeros there, as natively: glibc 2.36's
    // `glibc.cpu.hwcaps` parser does, for a GLIBC_TUNABLES that is the last variable.)
    let mut strings: Vec<u8> = vec![0; 8];
    let mut place = |s: &[u8]| -> u64 {
        strings.splice(0..0, s.iter().copied().chain([0]));
        strings.len() as u64 // distance from top to the string start
    };
    let execfn = place(&spec.execfn);
    let envs: Vec<u64> = spec.envp.iter().rev().map(|e| place(e)).collect();
    let args: Vec<u64> = spec.argv.iter().rev().map(|a| place(a)).collect();
    let platform = place(b"x86_64");
    let random = {
        strings.splice(0..0, spec.random.iter().copied());
        strings.len() as u64
    };
    if strings.len() as u64 >= top {
        return None;
    }
    let at = |dist: u64| top - dist;
    let mut aux = spec.auxv.clone();
    aux.push((AT_RANDOM, at(random)));
    aux.push((AT_EXECFN, at(execfn)));
    aux.push((AT_PLATFORM, at(platform)));
    aux.push((AT_NULL, 0));
    let aux_len = aux.len();
    let words = 1 + args.len() + 1 + envs.len() + 1 + 2 * aux_len;
    let strings_len = strings.len() as u64;
    let table_len = 8 * words as u64;
    let total = strings_len.checked_add(table_len)?.checked_add(16)?;
    if total > limit || total > top {
        return None;
    }
    // SP: below the strings and tables, 16-byte aligned.
    let sp = (top - strings_len - table_len) & !15;
    let mut table: Vec<u64> = Vec::with_capacity(words);
    table.push(spec.argv.len() as u64);
    table.extend(args.iter().rev().map(|&d| at(d)));
    table.push(0);
    table.extend(envs.iter().rev().map(|&d| at(d)));
    table.push(0);
    for (k, v) in aux {
        table.push(k);
        table.push(v);
    }
    let len = (top - sp) as usize;
    let mut bytes = vec![0u8; len];
    for (i, w) in table.iter().enumerate() {
        bytes[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
    }
    let s = len - strings.len();
    bytes[s..].copy_from_slice(&strings);
    let auxv_at = 8 * (words - 2 * aux_len);
    let auxv = bytes[auxv_at..8 * words].to_vec();
    // The strings lie in order: argv's (the first lowest), then envp's, then execfn.
    let span = |dists: &[u64], end: u64| match dists.last() {
        Some(&first) => (at(first), end),
        None => (end, end),
    };
    let env = span(&envs, at(execfn));
    let args = span(&args, env.0);
    Some(Stack {
        bytes,
        sp,
        auxv,
        args,
        env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::abi::{AT_EXECFN, AT_NULL, AT_PAGESZ, AT_RANDOM};

    #[test]
    fn the_top_eight_bytes_are_zero_and_execfn_ends_just_below() {
        let spec = StackSpec {
            argv: vec![b"prog".to_vec()],
            envp: vec![b"GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F".to_vec()],
            execfn: b"/bin/prog".to_vec(),
            ..Default::default()
        };
        let top = 0x7fff_ffff_f000;
        let st = build(&spec, top, 1 << 20).unwrap();
        let n = st.bytes.len();
        assert_eq!(&st.bytes[n - 8..], &[0; 8]);
        assert_eq!(&st.bytes[n - 8 - 10..n - 8], b"/bin/prog\0");
        // The last environment string runs into execfn, as on Linux.
        let env_end = n - 8 - 10;
        assert_eq!(&st.bytes[env_end - 8..env_end], b"AVX512F\0");
    }

    fn word(st: &Stack, top: u64, va: u64) -> u64 {
        let off = (va - (top - st.bytes.len() as u64)) as usize;
        u64::from_le_bytes(st.bytes[off..off + 8].try_into().unwrap())
    }

    fn cstr(st: &Stack, top: u64, va: u64) -> Vec<u8> {
        let off = (va - (top - st.bytes.len() as u64)) as usize;
        st.bytes[off..]
            .iter()
            .take_while(|&&b| b != 0)
            .copied()
            .collect()
    }

    #[test]
    fn argv_envp_and_auxv_are_where_the_abi_says() {
        let top = 0x7fff_0000;
        let spec = StackSpec {
            argv: vec![b"prog".to_vec(), b"a b".to_vec()],
            envp: vec![b"X=1".to_vec()],
            execfn: b"/bin/prog".to_vec(),
            random: [7; 16],
            auxv: vec![(AT_PAGESZ, 4096)],
        };
        let st = build(&spec, top, 1 << 20).unwrap();
        assert_eq!(st.sp % 16, 0);
        assert_eq!(word(&st, top, st.sp), 2);
        assert_eq!(cstr(&st, top, word(&st, top, st.sp + 8)), b"prog");
        assert_eq!(cstr(&st, top, word(&st, top, st.sp + 16)), b"a b");
        assert_eq!(word(&st, top, st.sp + 24), 0);
        assert_eq!(cstr(&st, top, word(&st, top, st.sp + 32)), b"X=1");
        assert_eq!(word(&st, top, st.sp + 40), 0);
        let mut aux = std::collections::BTreeMap::new();
        let mut p = st.sp + 48;
        loop {
            let (k, v) = (word(&st, top, p), word(&st, top, p + 8));
            aux.insert(k, v);
            p += 16;
            if k == AT_NULL {
                break;
            }
        }
        assert_eq!(aux[&AT_PAGESZ], 4096);
        assert_eq!(cstr(&st, top, aux[&AT_EXECFN]), b"/bin/prog");
        let r = aux[&AT_RANDOM];
        let off = (r - (top - st.bytes.len() as u64)) as usize;
        assert_eq!(&st.bytes[off..off + 16], &[7; 16]);
        // What /proc/PID/auxv, cmdline and environ show.
        let from = |va: u64| (va - (top - st.bytes.len() as u64)) as usize;
        assert_eq!(st.auxv, st.bytes[from(st.sp + 48)..from(p)]);
        assert_eq!(&st.bytes[from(st.args.0)..from(st.args.1)], b"prog\0a b\0");
        assert_eq!(&st.bytes[from(st.env.0)..from(st.env.1)], b"X=1\0");
    }

    #[test]
    fn a_stack_that_does_not_fit_is_refused() {
        let spec = StackSpec {
            argv: vec![vec![b'a'; 5000]],
            ..Default::default()
        };
        assert!(build(&spec, 0x10_0000, 4096).is_none());
        assert!(build(&spec, 100, 1 << 20).is_none());
        assert!(build(&spec, 0x10_0000, 1 << 20).is_some());
    }
}
