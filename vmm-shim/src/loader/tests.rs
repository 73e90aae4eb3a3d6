//! The bad-image table and the happy paths, on images built byte by byte.

use super::*;

const MB: u64 = 1 << 20;

fn layout() -> RamLayout {
    RamLayout {
        load_start: MB,
        ram_end: 16 * MB,
    }
}

struct Seg {
    paddr: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
    flags: u32,
}

fn seg(addr: u64, filesz: u64, memsz: u64) -> Seg {
    Seg {
        paddr: addr,
        vaddr: addr,
        filesz,
        memsz,
        flags: PF_X | 4,
    }
}

/// A minimal ELF64 executable: header, program headers, then each segment's bytes.
fn elf64(machine: u16, e_type: u16, entry: u64, segs: &[Seg]) -> Vec<u8> {
    let phoff = 64u64;
    let data_start = phoff + 56 * segs.len() as u64;
    let mut out = vec![0u8; data_start as usize];
    out[..4].copy_from_slice(&ELFMAG);
    out[4] = ELFCLASS64;
    out[5] = ELFDATA2LSB;
    out[6] = 1;
    out[16..18].copy_from_slice(&e_type.to_le_bytes());
    out[18..20].copy_from_slice(&machine.to_le_bytes());
    out[24..32].copy_from_slice(&entry.to_le_bytes());
    out[32..40].copy_from_slice(&phoff.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
    let mut offset = data_start;
    for (i, s) in segs.iter().enumerate() {
        let ph = (phoff + 56 * i as u64) as usize;
        out[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        out[ph + 4..ph + 8].copy_from_slice(&s.flags.to_le_bytes());
        out[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
        out[ph + 16..ph + 24].copy_from_slice(&s.vaddr.to_le_bytes());
        out[ph + 24..ph + 32].copy_from_slice(&s.paddr.to_le_bytes());
        out[ph + 32..ph + 40].copy_from_slice(&s.filesz.to_le_bytes());
        out[ph + 40..ph + 48].copy_from_slice(&s.memsz.to_le_bytes());
        offset += s.filesz;
    }
    for (i, s) in segs.iter().enumerate() {
        out.extend((0..s.filesz).map(|b| (b as u8) ^ (i as u8)));
    }
    out
}

fn multiboot_header(flags: u32, kludge: Option<[u32; 5]>) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend(MULTIBOOT_HEADER_MAGIC.to_le_bytes());
    h.extend(flags.to_le_bytes());
    h.extend(
        0u32.wrapping_sub(MULTIBOOT_HEADER_MAGIC)
            .wrapping_sub(flags)
            .to_le_bytes(),
    );
    if let Some(k) = kludge {
        for v in k {
            h.extend(v.to_le_bytes());
        }
    }
    h
}

/// A minimal ELF32 i386 executable with one segment holding an optional multiboot header.
fn elf32(
    machine: u16,
    entry: u32,
    paddr: u32,
    filesz: u32,
    memsz: u32,
    mb_flags: Option<u32>,
) -> Vec<u8> {
    let mut out = vec![0u8; 52 + 32];
    out[..4].copy_from_slice(&ELFMAG);
    out[4] = ELFCLASS32;
    out[5] = ELFDATA2LSB;
    out[6] = 1;
    out[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
    out[18..20].copy_from_slice(&machine.to_le_bytes());
    out[24..28].copy_from_slice(&entry.to_le_bytes());
    out[28..32].copy_from_slice(&52u32.to_le_bytes());
    out[40..42].copy_from_slice(&52u16.to_le_bytes());
    out[42..44].copy_from_slice(&32u16.to_le_bytes());
    out[44..46].copy_from_slice(&1u16.to_le_bytes());
    let ph = 52;
    let offset = 84u32;
    out[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
    out[ph + 4..ph + 8].copy_from_slice(&offset.to_le_bytes());
    out[ph + 8..ph + 12].copy_from_slice(&paddr.to_le_bytes());
    out[ph + 12..ph + 16].copy_from_slice(&paddr.to_le_bytes());
    out[ph + 16..ph + 20].copy_from_slice(&filesz.to_le_bytes());
    out[ph + 20..ph + 24].copy_from_slice(&memsz.to_le_bytes());
    out[ph + 24..ph + 28].copy_from_slice(&(PF_X | 4).to_le_bytes());
    let mut body = vec![0x90u8; filesz as usize];
    if let Some(flags) = mb_flags {
        let h = multiboot_header(flags, None);
        body[..h.len()].copy_from_slice(&h);
    }
    out.extend(body);
    out
}

#[test]
fn good_elf64_parses_and_loads() {
    let img = elf64(
        EM_X86_64,
        ET_EXEC,
        2 * MB + 4,
        &[seg(2 * MB, 0x100, 0x2000), seg(3 * MB, 0x10, 0x10)],
    );
    let image = parse(&img, layout()).unwrap();
    assert_eq!(image.kind, ImageKind::Elf64);
    assert_eq!(image.entry, 2 * MB + 4);
    assert_eq!(image.segments.len(), 2);
    assert_eq!(image.extent(), (2 * MB, 3 * MB + 0x10));
    let mem = GuestMemory::new(16 * MB).unwrap();
    mem.write(GuestPhysAddr(2 * MB + 0x100), &[0xff; 16])
        .unwrap();
    image.load(&mem).unwrap();
    let mut b = [0u8; 4];
    mem.read(GuestPhysAddr(2 * MB + 0xfe), &mut b).unwrap();
    assert_eq!(b, [0xfe, 0xff, 0, 0], "file bytes copied, bss zeroed");
    mem.read(GuestPhysAddr(3 * MB), &mut b).unwrap();
    assert_eq!(b, [1, 0, 3, 2], "second segment's bytes");
}

#[test]
fn good_multiboot_elf32_parses() {
    let img = elf32(
        EM_386,
        MB as u32 + 0x20,
        MB as u32,
        0x40,
        0x1000,
        Some(MULTIBOOT_MEMORY_INFO | MULTIBOOT_PAGE_ALIGN),
    );
    let image = parse(&img, layout()).unwrap();
    assert_eq!(image.kind, ImageKind::MultibootElf32);
    assert_eq!(image.multiboot_flags, Some(3));
}

#[test]
fn good_multiboot_aout_kludge_parses() {
    // The header sits at file offset 0 and at address 1 MiB; code follows.
    let load = MB as u32;
    let mut img = multiboot_header(
        MULTIBOOT_AOUT_KLUDGE,
        Some([load, load, load + 0x100, load + 0x3000, load + 0x30]),
    );
    img.resize(0x100, 0x90);
    let image = parse(&img, layout()).unwrap();
    assert_eq!(image.kind, ImageKind::MultibootAout);
    assert_eq!(image.segments[0].file_size, 0x100);
    assert_eq!(image.segments[0].mem_size, 0x3000);
    assert_eq!(image.entry, MB + 0x30);
}

/// The bad-image table: one malformed image per error variant.
#[test]
fn bad_images_each_get_their_own_error() {
    let e = MB * 2;
    let mut truncated = elf64(EM_X86_64, ET_EXEC, e, &[seg(e, 0x100, 0x100)]);
    truncated.truncate(200);
    let mut big_endian = elf64(EM_X86_64, ET_EXEC, e, &[seg(e, 0x10, 0x10)]);
    big_endian[5] = 2;
    let mut bad_sum = elf32(EM_386, MB as u32, MB as u32, 0x40, 0x40, Some(0));
    bad_sum[84 + 8] ^= 1;
    let kludge_above = {
        let l = MB as u32;
        let mut v = multiboot_header(MULTIBOOT_AOUT_KLUDGE, Some([l, l + 0x10, l + 0x20, 0, l]));
        v.resize(0x40, 0);
        v
    };
    type Check = fn(&LoaderError) -> bool;
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        ("empty file", vec![], |e| {
            matches!(e, LoaderError::NotAnImage)
        }),
        ("text file", b"#!/bin/sh\necho hi\n".to_vec(), |e| {
            matches!(e, LoaderError::NotAnImage)
        }),
        ("truncated ELF", truncated, |e| {
            matches!(
                e,
                LoaderError::Truncated {
                    what: "segment",
                    ..
                }
            )
        }),
        (
            "ELF header cut short",
            ELFMAG.iter().copied().chain([2u8, 1, 1]).collect(),
            |e| {
                matches!(
                    e,
                    LoaderError::Truncated {
                        what: "ELF identification",
                        ..
                    }
                )
            },
        ),
        ("big-endian", big_endian, |e| {
            matches!(e, LoaderError::UnsupportedElf(_))
        }),
        (
            "aarch64 ELF",
            elf64(183, ET_EXEC, e, &[seg(e, 0x10, 0x10)]),
            |e| {
                matches!(
                    e,
                    LoaderError::WrongMachine {
                        machine: 183,
                        class: 64,
                        ..
                    }
                )
            },
        ),
        (
            "ELF32 for ARM",
            elf32(40, MB as u32, MB as u32, 0x40, 0x40, Some(0)),
            |e| {
                matches!(
                    e,
                    LoaderError::WrongMachine {
                        machine: 40,
                        class: 32,
                        ..
                    }
                )
            },
        ),
        (
            "PIE",
            elf64(EM_X86_64, ET_DYN, e, &[seg(e, 0x10, 0x10)]),
            |e| matches!(e, LoaderError::NotExecutable { e_type: ET_DYN }),
        ),
        (
            "ELF32 without multiboot",
            elf32(EM_386, MB as u32, MB as u32, 0x40, 0x40, None),
            |e| matches!(e, LoaderError::NoMultibootHeader),
        ),
        ("bad multiboot checksum", bad_sum, |e| {
            matches!(e, LoaderError::BadMultibootChecksum { offset: 84 })
        }),
        (
            "video mode required",
            elf32(
                EM_386,
                MB as u32,
                MB as u32,
                0x40,
                0x40,
                Some(MULTIBOOT_VIDEO_MODE),
            ),
            |e| {
                matches!(
                    e,
                    LoaderError::UnsupportedMultibootFlags { unsupported: 4, .. }
                )
            },
        ),
        ("a.out kludge load above header", kludge_above, |e| {
            matches!(e, LoaderError::BadAoutKludge(_))
        }),
        (
            "higher-half ELF64",
            elf64(
                EM_X86_64,
                ET_EXEC,
                e,
                &[Seg {
                    paddr: e,
                    vaddr: 0xffff_8000_0000_0000 | e,
                    filesz: 0x10,
                    memsz: 0x10,
                    flags: PF_X,
                }],
            ),
            |e| matches!(e, LoaderError::NotIdentityMapped { index: 0, .. }),
        ),
        (
            "filesz > memsz",
            elf64(EM_X86_64, ET_EXEC, e, &[seg(e, 0x20, 0x10)]),
            |e| matches!(e, LoaderError::FileSizeExceedsMemSize { index: 0, .. }),
        ),
        ("no segments", elf64(EM_X86_64, ET_EXEC, e, &[]), |e| {
            matches!(e, LoaderError::NoLoadableSegments)
        }),
        (
            "segment below 1 MiB",
            elf64(EM_X86_64, ET_EXEC, 0x1000, &[seg(0x1000, 0x10, 0x10)]),
            |e| {
                matches!(
                    e,
                    LoaderError::SegmentOutsideRam {
                        index: 0,
                        start: 0x1000,
                        ..
                    }
                )
            },
        ),
        (
            "segment past RAM",
            elf64(
                EM_X86_64,
                ET_EXEC,
                e,
                &[seg(e, 0x10, 0x10), seg(15 * MB, 0x10, 2 * MB)],
            ),
            |e| matches!(e, LoaderError::SegmentOutsideRam { index: 1, .. }),
        ),
        (
            "segment wraps",
            elf64(EM_X86_64, ET_EXEC, e, &[seg(u64::MAX - 4, 0, 0x10)]),
            |e| {
                matches!(
                    e,
                    LoaderError::SegmentOutsideRam {
                        index: 0,
                        end: u64::MAX,
                        ..
                    }
                )
            },
        ),
        (
            "overlapping segments",
            elf64(
                EM_X86_64,
                ET_EXEC,
                e,
                &[seg(e + 0x1000, 0x10, 0x1000), seg(e, 0x10, 0x1001)],
            ),
            |e| {
                matches!(
                    e,
                    LoaderError::SegmentsOverlap {
                        first: 0,
                        second: 1,
                        ..
                    }
                )
            },
        ),
        (
            "entry outside segments",
            elf64(EM_X86_64, ET_EXEC, 5 * MB, &[seg(e, 0x10, 0x10)]),
            |e| matches!(e, LoaderError::EntryOutsideSegments { entry: 0x50_0000 }),
        ),
    ];
    for (name, bytes, expected) in cases {
        match parse(&bytes, layout()) {
            Ok(_) => panic!("{name}: parsed although it is malformed"),
            Err(err) => {
                assert!(expected(&err), "{name}: unexpected error {err:?}");
                let msg = err.to_string();
                assert!(
                    !msg.is_empty() && !msg.contains('\n'),
                    "{name}: message {msg:?}"
                );
            }
        }
    }
}

#[test]
fn never_panics_on_prefixes_and_bit_flips() {
    let img = elf64(EM_X86_64, ET_EXEC, 2 * MB, &[seg(2 * MB, 0x80, 0x100)]);
    for len in 0..img.len() {
        let _ = parse(&img[..len], layout());
    }
    for i in 0..img.len() {
        let mut v = img.clone();
        v[i] ^= 0xa5;
        let _ = parse(&v, layout());
    }
}
