use super::*;

#[test]
fn registers_are_found_by_their_bit_in_the_mask() {
    // perf's --call-graph dwarf mask on x86-64: AX..R15 without the segment registers.
    let mask = 0xff_0fffu64;
    let values: Vec<u64> = (0..mask.count_ones() as u64).map(|i| 100 + i).collect();
    let r = Regs::from_perf(mask, &values).unwrap();
    // BP, SP, IP are bits 6, 7, 8: the 7th, 8th, 9th values.
    assert_eq!(
        r,
        Regs {
            ip: 108,
            sp: 107,
            bp: 106
        }
    );
    let r = Regs::from_perf(abi::SAMPLE_REGS_USER, &[1, 2, 3]).unwrap();
    assert_eq!(
        r,
        Regs {
            ip: 3,
            sp: 2,
            bp: 1
        }
    );
    assert_eq!(Regs::from_perf(abi::SAMPLE_REGS_USER, &[1, 2]), None);
    assert_eq!(Regs::from_perf(1 << abi::PERF_REG_X86_SP, &[1]), None);
}

fn info_with_loads(loads: Vec<(u64, u64, u64)>) -> ObjectInfo {
    ObjectInfo {
        build_id: None,
        loads,
        text: None,
        got: None,
        eh_frame: None,
        eh_frame_hdr: None,
        debug_frame: None,
    }
}

#[test]
fn bias_follows_the_segment_that_holds_the_mapping() {
    // A PIE's text segment: file offset 0x1040, stated address 0x2040, mapped from
    // the page-aligned offset 0x1000 at 0x5555_5555_6000.
    let info = info_with_loads(vec![(0, 0x800, 0), (0x1040, 0x3000, 0x2040)]);
    let bias = info.bias(0x5555_5555_6000, 0x1000);
    // File offset 0x1040 is at 0x5555_5555_6040 and says 0x2040.
    assert_eq!(0x2040u64.wrapping_add(bias), 0x5555_5555_6040);
    // A non-PIE executable mapped where it says: no bias.
    let info = info_with_loads(vec![(0x1000, 0x500, 0x401000)]);
    assert_eq!(info.bias(0x401000, 0x1000), 0);
    // No segment: assume addresses follow file offsets.
    assert_eq!(info_with_loads(vec![]).bias(0x7000, 0x1000), 0x6000);
}

#[test]
fn unknown_processes_and_files_give_the_ip_only() {
    let mut u = Unwinder::new();
    let mut out = Vec::new();
    let regs = Regs {
        ip: 0x1234,
        sp: 0x8000,
        bp: 0x8010,
    };
    assert_eq!(u.unwind(7, regs, &[], &mut out), Outcome::UnknownProcess);
    assert_eq!(out, [0x1234]);
    u.add_mapping(7, 0x1000, 0x1000, 0, "/nonexistent/lib.so", None);
    u.add_mapping(7, 0x3000, 0x1000, 0, "[vdso]", None);
    assert_eq!(u.stats().unusable_mappings, 1);
    out.clear();
    // Known process, no CFI, an empty stack copy: the walk stops after the IP.
    assert_eq!(u.unwind(7, regs, &[], &mut out), Outcome::Truncated);
    assert_eq!(out, [0x1234]);
    // A fork copies the mappings; an exec drops them.
    u.fork(7, 8);
    assert!(u.processes.contains_key(&8));
    u.exec(8);
    assert!(!u.processes.contains_key(&8));
}

#[test]
fn a_mapping_with_another_build_id_is_not_used() {
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();
    let mut u = Unwinder::new();
    u.add_mapping(1, 0x1000, 0x1000, 0, exe, Some(&[1, 2, 3, 4]));
    assert_eq!(u.stats().unusable_mappings, 1);
    assert!(u.processes[&1].ranges.is_empty());
    u.add_mapping(1, 0x1000, 0x1000, 0, exe, None);
    assert_eq!(u.processes[&1].ranges.len(), 1);
    // A new mapping over it replaces it.
    u.add_mapping(1, 0x1800, 0x1000, 0, exe, None);
    assert_eq!(
        u.processes[&1].ranges.iter().collect::<Vec<_>>(),
        [(&0x1800, &0x2800)]
    );
}

/// This process's executable mappings, as `/proc/self/maps` lists them, and the mapping
/// that holds `addr`.
fn self_maps(u: &mut Unwinder, pid: u32, addr: u64) -> Range<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mut holding = 0..0;
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (a, b) = f[0].split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        if (a..b).contains(&addr) {
            holding = a..b;
        }
        if f[1].contains('x') && f.len() > 5 {
            let off = u64::from_str_radix(f[2], 16).unwrap();
            u.add_mapping(pid, a, b - a, off, f[5], None);
        }
    }
    holding
}

#[inline(never)]
fn level3(depth: u32) -> (Regs, Vec<u8>, Vec<u64>) {
    if depth > 0 {
        let r = level3(depth - 1);
        return std::hint::black_box(r);
    }
    let (ip, sp, bp): (u64, u64, u64);
    // SAFETY: reads three registers into outputs; no memory is touched.
    unsafe {
        std::arch::asm!(
            "lea {ip}, [rip]",
            "mov {sp}, rsp",
            "mov {bp}, rbp",
            ip = out(reg) ip,
            sp = out(reg) sp,
            bp = out(reg) bp,
        );
    }
    capture(Regs { ip, sp, bp })
}

/// Unwind from `regs` (taken by a caller, whose frames stay alive meanwhile).
#[inline(never)]
fn capture(regs: Regs) -> (Regs, Vec<u8>, Vec<u64>) {
    let sp = regs.sp;
    let mut u = Unwinder::new();
    let stack_map = self_maps(&mut u, 1, sp);
    let len = (stack_map.end - sp).min(64 * 1024) as usize;
    // SAFETY: [sp, sp + len) lies inside this thread's stack mapping (from /proc/self/maps),
    // and the frames above sp (this function's callers) stay alive during the copy.
    let stack = unsafe { std::slice::from_raw_parts(sp as *const u8, len) }.to_vec();
    let mut out = Vec::new();
    u.unwind(1, regs, &stack, &mut out);
    (regs, stack, out)
}

#[inline(never)]
fn level2() -> (Regs, Vec<u8>, Vec<u64>) {
    std::hint::black_box(level3(std::hint::black_box(3)))
}

#[inline(never)]
fn level1() -> (Regs, Vec<u8>, Vec<u64>) {
    std::hint::black_box(level2())
}

#[test]
fn unwinds_its_own_stack_with_cfi() {
    let (regs, stack, frames) = level1();
    assert!(!stack.is_empty());
    assert_eq!(frames[0], regs.ip);
    // The callers' return addresses are in level3 (three recursive calls), level2 and
    // level1, in that order, and the walk goes on past them into the test harness. Each
    // frame belongs to the nearest of these functions that starts below it.
    let funcs = [
        (level1 as *const () as usize as u64, 1),
        (level2 as *const () as usize as u64, 2),
        (level3 as *const () as usize as u64, 3),
    ];
    let owner = |f: u64| {
        funcs
            .iter()
            .filter(|(start, _)| *start <= f && f - *start < 0x1000)
            .max_by_key(|(start, _)| *start)
            .map_or(0, |(_, n)| *n)
    };
    let owners: Vec<u32> = frames.iter().map(|&f| owner(f)).collect();
    assert_eq!(owners[..6], [3, 3, 3, 3, 2, 1], "{frames:x?}");
    assert!(frames.len() > 6, "{frames:x?}");
}

#[test]
fn the_vdso_is_unwound_with_its_own_cfi() {
    let Some(image) = vdso::image() else {
        eprintln!("skipped: this process has no vDSO");
        return;
    };
    let info = ObjectInfo::parse(Buf::Owned(image.into())).expect("the vDSO is an ELF image");
    assert!(info.eh_frame.is_some(), "the vDSO has .eh_frame");
    let mut u = Unwinder::new();
    u.add_mapping(3, 0x7fff_0000_0000, 0x2000, 0, "[vdso]", None);
    assert_eq!(u.processes[&3].ranges.len(), 1);
    // Another kernel's vDSO (another build-id) is not used.
    u.add_mapping(4, 0x7fff_0000_0000, 0x2000, 0, "[vdso]", Some(&[9; 20]));
    assert!(u.processes[&4].ranges.is_empty());
}
