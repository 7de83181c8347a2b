//! The LZMA2 candidate of a frame (bundle-format.md §5.2): which branch-call-jump filter suits
//! its content (by the ELF machine of the executables and libraries in it), whether the
//! candidate is worth its encoding time, and the encoding itself, checked to decode back the way
//! the applier decodes it.

use bundle::lzma::{self, Bcj, Search};
use bundle::{Limits, Method};
use std::io;

/// xz preset of the LZMA2 candidate: 5 is normal mode with a binary-tree match finder and a
/// nice length of 32. Measured on 16 MB of rootfs-up's new ELF files (x86 filter): presets 1 / 3
/// / 4 / 5 / 6 give 4.69 / 4.62 / 4.31 / 4.23 / 4.22 MB in 32 / 79 / 108 / 121 / 170 s (zstd
/// -19: 5.34 MB in 124 s; a loaded two-core machine, so only the ratios mean much).
pub const PRESET: u32 = 5;
/// Largest dictionary the builder uses: 2^24 = 16 MiB (the encoder needs about 10 times its
/// dictionary per thread; the applier accepts up to 2^`max_lzma_dict_log`).
pub const MAX_DICT_LOG: u8 = 24;
/// Frames smaller than this are not tried (a few bytes either way).
pub const MIN_LEN: u64 = 16 << 10;
/// Tried only when the best other candidate is at least 1/`TRY_RATIO` of the input: better
/// compression than that is a good patch, which LZMA2 of the whole input cannot beat.
pub const TRY_RATIO: u64 = 16;
/// Not tried on incompressible input: when the best other candidate is over 95 % of it.
const INCOMPRESSIBLE_PERCENT: u64 = 95;

/// The BCJ filter for a file whose content starts with `head`: `None` if it is not ELF,
/// `Some(Bcj::None)` for an ELF file of a machine without a filter.
pub fn elf_filter(head: &[u8]) -> Option<Bcj> {
    if !head.starts_with(b"\x7fELF") || head.len() < 32 {
        return None;
    }
    let big = head[5] == 2;
    let u16_at = |i: usize| {
        if big {
            u16::from_be_bytes([head[i], head[i + 1]])
        } else {
            u16::from_le_bytes([head[i], head[i + 1]])
        }
    };
    // e_entry: 4 bytes at 24 in a 32-bit file (the only ARM case that matters here).
    let entry_odd = head[if big { 27 } else { 24 }] & 1 == 1;
    let entry_zero = head[24..28].iter().all(|&b| b == 0);
    Some(match u16_at(18) {
        3 | 62 => Bcj::X86,             // EM_386, EM_X86_64
        183 => Bcj::Arm64,              // EM_AARCH64
        243 => Bcj::RiscV,              // EM_RISCV
        2 | 18 | 43 => Bcj::Sparc,      // EM_SPARC, EM_SPARC32PLUS, EM_SPARCV9
        50 => Bcj::Ia64,                // EM_IA_64
        20 | 21 if big => Bcj::PowerPc, // EM_PPC, EM_PPC64 (the filter is big-endian only)
        // EM_ARM: Thumb-2 is what current 32-bit ARM distributions compile to (an odd entry
        // point says Thumb; a library's is often 0); an even entry point says ARM code.
        40 if entry_odd || entry_zero => Bcj::ArmThumb,
        40 => Bcj::Arm,
        _ => Bcj::None,
    })
}

/// A file counts as machine code when its executable sections (`SHF_EXECINSTR`; without
/// section headers, its executable `PT_LOAD` segments) are at least 1/`CODE_FRACTION` of it.
/// Measured on 390 AArch64 ELF files of Debian 12 (coreutils, bash, libc6 with its gconv
/// modules, openssh-client): above a tenth of code the ARM64 filter shrinks every file (by 1-5 %);
/// below, the files are mostly tables and the filter costs 0.4 % over all of them.
pub const CODE_FRACTION: u64 = 10;

/// Bytes of `elf` in executable sections (or, without section headers, executable segments);
/// 0 if it does not parse.
fn code_bytes(elf: &[u8]) -> u64 {
    goblin::elf::Elf::parse(elf).map_or(0, |e| code_bytes_of(&e))
}

/// [`code_bytes`] of a parsed file.
fn code_bytes_of(e: &goblin::elf::Elf) -> u64 {
    let sections: u64 = e
        .section_headers
        .iter()
        .filter(|s| s.is_executable() && s.sh_type != goblin::elf::section_header::SHT_NOBITS)
        .map(|s| s.sh_size)
        .sum();
    if !e.section_headers.is_empty() {
        return sections;
    }
    e.program_headers
        .iter()
        .filter(|p| p.p_type == goblin::elf::program_header::PT_LOAD && p.is_executable())
        .map(|p| p.p_filesz)
        .sum()
}

/// The filter for a frame holding `parts` (the contents of its files, in order): the filter of
/// the ELF files of machine code ([`CODE_FRACTION`]) that make up at least half of its bytes,
/// else none.
pub fn frame_filter<'a>(parts: impl Iterator<Item = &'a [u8]>) -> Bcj {
    choose(parts.map(|p| (code_filter(p), p.len() as u64)))
}

/// What a part of an ELF file holds, for solid grouping (by its section's type and name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// The ELF and program headers, the section header table, and bytes of no section.
    Headers,
    /// `.rodata*`.
    ReadOnly,
    /// `.eh_frame`, `.eh_frame_hdr`, `.gcc_except_table`, `.ARM.exidx`/`.ARM.extab`.
    Unwind,
    /// Symbol tables, their hash tables and symbol versions.
    Symbols,
    /// String tables.
    Strings,
    /// Relocations.
    Relocations,
    /// `.debug*` (unstripped files).
    Debug,
    /// Every other section: `.data`, `.data.rel.ro`, `.dynamic`, `.got`, notes, ...
    Data,
}

/// The content class of a part of a file for solid grouping: machine code of one filter, one
/// kind of other ELF content ([`Part`]), or anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Other,
    Elf(Part),
    Code(Bcj),
}

impl Class {
    /// The filter of a frame of this class.
    pub fn filter(self) -> Bcj {
        match self {
            Class::Code(f) => f,
            _ => Bcj::None,
        }
    }
}

/// How the file at `path` of `size` bytes goes into solid frames: `(offset, len, class)`
/// tiling it in order ([`elf_parts`] for an ELF file; one part of [`Class::Other`] for anything
/// else, including a file that cannot be read or whose size changed, which its read reports).
pub fn classify(path: &std::path::Path, size: u64) -> Vec<(u64, u64, Class)> {
    use std::io::Read;
    let whole = vec![(0, size, Class::Other)];
    let Ok(mut f) = std::fs::File::open(path) else { return whole };
    let mut head = [0u8; 64];
    let Ok(n) = f.read(&mut head) else { return whole };
    if elf_filter(&head[..n]).is_none() {
        return whole;
    }
    let mut all = head[..n].to_vec();
    if f.read_to_end(&mut all).is_err() || all.len() as u64 != size {
        return whole;
    }
    elf_parts(&all)
}

/// Parts shorter than this join the part before them (or, the first, the one after): a piece
/// costs about 20 bytes of manifest.
const MIN_PART: u64 = 512;

/// The part a section's bytes belong to.
fn part_of(name: &str, sh_type: u32) -> Part {
    use goblin::elf::section_header as sh;
    match sh_type {
        sh::SHT_SYMTAB
        | sh::SHT_DYNSYM
        | sh::SHT_HASH
        | sh::SHT_GNU_HASH
        | sh::SHT_GNU_VERSYM
        | sh::SHT_GNU_VERDEF
        | sh::SHT_GNU_VERNEED => Part::Symbols,
        sh::SHT_STRTAB => Part::Strings,
        // SHT_RELR (19) is newer than goblin's constants.
        sh::SHT_RELA | sh::SHT_REL | 19 => Part::Relocations,
        _ if name.starts_with(".rodata") => Part::ReadOnly,
        _ if name.starts_with(".eh_frame") || name == ".gcc_except_table" || name.starts_with(".ARM.ex") => {
            Part::Unwind
        }
        _ if name.starts_with(".debug") || name.starts_with(".zdebug") => Part::Debug,
        _ => Part::Data,
    }
}

/// An ELF file's parts for solid grouping, `(offset, len, class)` tiling it in order: each
/// section's bytes (and the padding after it) are of its kind — executable sections
/// (`SHF_EXECINSTR`) are [`Class::Code`] of the machine's filter, the others
/// [`Class::Elf`] of their [`Part`]; the headers before the first section and the section
/// header table after the last are [`Part::Headers`]. Neighbours of one class are merged,
/// parts under [`MIN_PART`] bytes joined to their neighbour. Without section headers (or if
/// it does not parse), the whole file is one part: code if it is machine code
/// ([`CODE_FRACTION`]), else [`Part::Data`].
///
/// Why: a BCJ filter helps only on instructions, and the rest of an executable compresses best
/// beside the same kind of bytes of other files — read-only data with read-only data, symbol
/// tables with symbol tables — not between two stretches of code. On rootfs-up's 74.7 MB of
/// distinct x86-64 ELF files (xz preset 5, 16 MiB dictionary): whole files behind the x86
/// filter 14.87 MB; code behind the filter and the rest without, two streams, 14.60 MB; code
/// and seven kinds of the rest, eight streams, 14.46 MB.
pub fn elf_parts(elf: &[u8]) -> Vec<(u64, u64, Class)> {
    let size = elf.len() as u64;
    let Some(machine) = elf_filter(elf) else { return vec![(0, size, Class::Other)] };
    let Ok(e) = goblin::elf::Elf::parse(elf) else { return vec![(0, size, Class::Elf(Part::Data))] };
    if e.section_headers.is_empty() {
        let code = code_bytes_of(&e).saturating_mul(CODE_FRACTION) >= size;
        return vec![(0, size, if code { Class::Code(machine) } else { Class::Elf(Part::Data) })];
    }
    let mut secs: Vec<(u64, u64, Class)> = e
        .section_headers
        .iter()
        .filter(|s| s.sh_type != goblin::elf::section_header::SHT_NOBITS && s.sh_size > 0)
        .filter_map(|s| {
            let end = s.sh_offset.checked_add(s.sh_size)?.min(size);
            let class = if s.is_executable() {
                Class::Code(machine)
            } else {
                Class::Elf(part_of(e.shdr_strtab.get_at(s.sh_name).unwrap_or(""), s.sh_type))
            };
            (s.sh_offset < end).then_some((s.sh_offset, end, class))
        })
        .collect();
    secs.sort_by_key(|s| (s.0, s.1));
    let mut runs: Vec<(u64, u64, Class)> = Vec::new();
    let push = |runs: &mut Vec<(u64, u64, Class)>, start: u64, end: u64, class: Class| match runs.last_mut() {
        Some(last) if last.2 == class => last.1 = end,
        _ => runs.push((start, end, class)),
    };
    let mut at = 0u64;
    for (start, end, class) in secs {
        if end <= at {
            continue; // inside (or overlapping) an earlier section
        }
        let start = start.max(at);
        if start > at {
            let gap = runs.last().map_or(Class::Elf(Part::Headers), |r| r.2);
            push(&mut runs, at, start, gap);
        }
        push(&mut runs, start, end, class);
        at = end;
    }
    if size > at {
        push(&mut runs, at, size, Class::Elf(Part::Headers));
    }
    // Small parts join a neighbour, then neighbours of one class merge.
    let mut out: Vec<(u64, u64, Class)> = Vec::new();
    for (start, end, class) in runs {
        let first = out.len() == 1;
        match out.last_mut() {
            Some(last) if end - start < MIN_PART || last.2 == class => last.1 = end,
            Some(last) if first && last.1 - last.0 < MIN_PART => {
                *last = (last.0, end, class);
            }
            _ => out.push((start, end, class)),
        }
    }
    out.into_iter().map(|(s, e, c)| (s, e - s, c)).collect()
}

/// The filter of `elf` if it is machine code ([`CODE_FRACTION`]).
fn code_filter(elf: &[u8]) -> Option<Bcj> {
    elf_filter(elf).filter(|_| code_bytes(elf).saturating_mul(CODE_FRACTION) >= elf.len() as u64)
}

/// The filter of at least half of the bytes, from each part's (filter if it is machine code,
/// length).
fn choose(votes: impl Iterator<Item = (Option<Bcj>, u64)>) -> Bcj {
    let mut by_filter = [0u64; Bcj::ALL.len()];
    let mut total = 0u64;
    for (f, len) in votes {
        total += len;
        if let Some(f) = f.filter(|f| *f != Bcj::None) {
            by_filter[f as usize] += len;
        }
    }
    match (0..by_filter.len()).max_by_key(|&i| (by_filter[i], std::cmp::Reverse(i))) {
        Some(i) if by_filter[i] > 0 && by_filter[i] * 2 >= total => Bcj::ALL[i],
        _ => Bcj::None,
    }
}

/// LZMA2 is tried at zstd levels from this one up (the default, 19, and `max`): encoding it
/// costs about as much CPU as zstd -19 (rootfs-up: compress CPU time +84 %), which a `--level
/// fast` build does not want.
pub const MIN_LEVEL: i32 = 10;

/// Whether to try LZMA2 at zstd level `level` on `len` bytes whose best other encoding is `best`
/// bytes.
pub fn worth_trying(level: i32, len: u64, best: u64) -> bool {
    level >= MIN_LEVEL
        && len >= MIN_LEN
        && best.saturating_mul(TRY_RATIO) >= len
        && best * 100 < len * INCOMPRESSIBLE_PERCENT
}

/// Dictionary log of the LZMA2 frame of a bsdiff patch of `len` bytes: [`dict_log`], at most
/// [`BSDIFF_MAX_DICT_LOG`].
pub fn bsdiff_dict_log(len: u64) -> u8 {
    dict_log(len).min(BSDIFF_MAX_DICT_LOG)
}

/// Dictionary log for `len` bytes: the smallest power of two holding them, 2^12..2^[`MAX_DICT_LOG`].
pub fn dict_log(len: u64) -> u8 {
    let ceil = 64 - len.max(1).saturating_sub(1).leading_zeros();
    (ceil as u8).clamp(lzma::MIN_DICT_LOG, MAX_DICT_LOG)
}

/// Encode `data` as an LZMA2 frame behind `filter` at [`PRESET`] with a dictionary of
/// [`dict_log`]. Returns the frame and its method.
pub fn encode(data: &[u8], filter: Bcj) -> io::Result<(Vec<u8>, Method)> {
    let dict_log = dict_log(data.len() as u64);
    let bytes = lzma::encode(
        data,
        lzma::EncodeOptions { filter, dict_log, preset: PRESET, nice_len: None, search: Search::Preset },
    )?;
    Ok((bytes, Method::Lzma { filter, dict_log }))
}

/// Match search of the LZMA2 encoding of a bsdiff patch (a `BsdiffLzma` frame, or the added
/// differences of a `BsdiffSplit` frame, bundle-format.md §5.1) below [`BSDIFF_THOROUGH_LEVEL`]: greedy parsing over hash chains 200 deep with a nice length of
/// 273. A patch is mostly long runs of zero differences and long literal copies, where preset
/// 5's optimal parser over binary trees spends its time skipping. Measured on the 56 patches
/// (95.4 MB) the pyext corpus's build encodes this way (one thread, sizes summed): preset 5 with
/// nice 48 (the setting before) 2.969 MB in 8.7 s; this 3.050 MB (+2.7 %) in 2.5 s; depth 100
/// 3.072 MB in 1.8 s; depth 400 3.026 MB in 4.1 s; normal mode over hash chains with nice 48
/// 3.118 MB in 3.6 s.
const BSDIFF_SEARCH: (u32, Search) = (273, Search::HashChain { fast: true, depth: 200 });
/// From this level (`--level 20` and up, `max`), a patch gets the optimal parser over hash chains
/// with a nice length of 128: on the same patches 2.932 MB in 9.7 s (bt4 with nice 273: 2.936 MB
/// in 22.7 s).
pub const BSDIFF_THOROUGH_LEVEL: i32 = 20;
const BSDIFF_SEARCH_THOROUGH: (u32, Search) = (128, Search::HashChain { fast: false, depth: 0 });

/// Largest dictionary of a bsdiff patch's LZMA2 frame: 2^22 = 4 MiB. A patch's matches are
/// mostly near (its differences follow the base, its literals are new code): on those six
/// patches 2, 4 and 16 MiB dictionaries gave the same sizes within 0.1 % (1 MiB: the two
/// OpenBLAS patches 11 % larger), while the encoder needs about 12 times its dictionary (two
/// 25 MB patches at once took the build to 554 MB with 16 MiB) and the applier holds it while
/// decoding.
pub const BSDIFF_MAX_DICT_LOG: u8 = 22;

/// The `BsdiffSplit` frame of a raw bsdiff patch at `level` (bundle-format.md §5.1): its record
/// headers, copied literals and added differences as three LZMA2 streams back to back, each
/// with a dictionary of [`bsdiff_dict_log`] of its own length. The headers and literals are a
/// few percent of a patch: they get the optimal parser (`BSDIFF_SEARCH_THOROUGH`); the
/// differences, mostly runs of zeros, get [`encode_bsdiff`]'s search. Returns the frame, the
/// largest dictionary log, and the (decoded, stored) sizes of the first two streams. Measured
/// on pyext's 56 patches (95.4 MB, the same search for all): one stream 3.050 MB; split 2.87 MB
/// (headers 277 KB, literals 422 KB, differences 2.17 MB) in about the same time; the pyext
/// build's bsdiff frames went from 2.89 to 2.77 MB.
pub fn encode_bsdiff_split(patch: &[u8], level: i32) -> io::Result<(Vec<u8>, u8, lzma::SplitParts)> {
    let [control, diff, copy] = bundle::bspatch::split(patch);
    let thorough = |part: &[u8]| {
        let (nice, search) = BSDIFF_SEARCH_THOROUGH;
        let o = lzma::EncodeOptions {
            filter: Bcj::None,
            dict_log: bsdiff_dict_log(part.len() as u64),
            preset: PRESET,
            nice_len: Some(nice),
            search,
        };
        lzma::encode(part, o)
    };
    let (c, l) = (thorough(&control)?, thorough(&copy)?);
    let d = encode_bsdiff(&diff, level)?;
    let dict_log =
        [&control, &copy, &diff].iter().map(|p| bsdiff_dict_log(p.len() as u64)).max().unwrap_or(lzma::MIN_DICT_LOG);
    let parts = [(control.len() as u64, c.len() as u64), (copy.len() as u64, l.len() as u64)];
    Ok(([c, l, d].concat(), dict_log, parts))
}

/// The LZMA2 frame of a raw bsdiff patch at `level` (no filter, [`PRESET`] with the match
/// search of `BSDIFF_SEARCH` or from [`BSDIFF_THOROUGH_LEVEL`] `BSDIFF_SEARCH_THOROUGH`, a
/// dictionary of [`bsdiff_dict_log`]).
pub fn encode_bsdiff(patch: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let dict_log = bsdiff_dict_log(patch.len() as u64);
    let (nice, search) = if level >= BSDIFF_THOROUGH_LEVEL { BSDIFF_SEARCH_THOROUGH } else { BSDIFF_SEARCH };
    let o = lzma::EncodeOptions { filter: Bcj::None, dict_log, preset: PRESET, nice_len: Some(nice), search };
    lzma::encode(patch, o)
}

/// [`encode`], checked to decode back to `data` with the applier's decoder under the default
/// limits.
pub fn encode_checked(data: &[u8], filter: Bcj) -> io::Result<(Vec<u8>, Method)> {
    let (bytes, method) = encode(data, filter)?;
    let Method::Lzma { dict_log, .. } = method else {
        return Err(io::Error::other("not an LZMA2 method"));
    };
    let dec = lzma::Decoder::new(&bytes[..], filter, dict_log, data.len() as u64, &Limits::default())?;
    if !crate::delta::reads_back(dec, data)? {
        return Err(io::Error::other("LZMA2 frame does not decode to its input"));
    }
    Ok((bytes, method))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf(class: u8, data: u8, machine: u16, entry: u32) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = class;
        h[5] = data;
        let (m, e) = if data == 2 {
            (machine.to_be_bytes(), entry.to_be_bytes())
        } else {
            (machine.to_le_bytes(), entry.to_le_bytes())
        };
        h[18..20].copy_from_slice(&m);
        h[24..28].copy_from_slice(&e);
        h
    }

    #[test]
    fn filters_by_machine() {
        assert_eq!(elf_filter(&elf(2, 1, 62, 0x1040)), Some(Bcj::X86));
        assert_eq!(elf_filter(&elf(1, 1, 3, 0x1040)), Some(Bcj::X86));
        assert_eq!(elf_filter(&elf(2, 1, 183, 0x1040)), Some(Bcj::Arm64));
        assert_eq!(elf_filter(&elf(1, 1, 40, 0x1041)), Some(Bcj::ArmThumb));
        assert_eq!(elf_filter(&elf(1, 1, 40, 0)), Some(Bcj::ArmThumb));
        assert_eq!(elf_filter(&elf(1, 1, 40, 0x8000)), Some(Bcj::Arm));
        assert_eq!(elf_filter(&elf(2, 2, 21, 0x1000)), Some(Bcj::PowerPc));
        assert_eq!(elf_filter(&elf(2, 1, 21, 0x1000)), Some(Bcj::None)); // ppc64le
        assert_eq!(elf_filter(&elf(2, 2, 43, 0x1000)), Some(Bcj::Sparc));
        assert_eq!(elf_filter(&elf(2, 1, 243, 0x1000)), Some(Bcj::RiscV));
        assert_eq!(elf_filter(&elf(2, 1, 50, 0x1000)), Some(Bcj::Ia64));
        assert_eq!(elf_filter(&elf(2, 1, 258, 0x1000)), Some(Bcj::None)); // LoongArch
        assert_eq!(elf_filter(b"#!/bin/sh\n"), None);
        assert_eq!(elf_filter(b"\x7fELF"), None);
    }

    /// This machine's own programs are ELF of mostly code: they count.
    fn native_program() -> Option<Vec<u8>> {
        let p = std::fs::read("/usr/bin/ls").ok().filter(|b| b.starts_with(b"\x7fELF"))?;
        assert!(code_bytes(&p) * CODE_FRACTION >= p.len() as u64, "ls is not code?");
        Some(p)
    }

    #[test]
    fn a_frame_takes_the_filter_of_most_of_its_bytes() {
        let Some(native) = native_program() else {
            eprintln!("/usr/bin/ls is not ELF here: frame filters not checked");
            return;
        };
        let Some(want) = elf_filter(&native) else { return };
        let text = vec![b'a'; native.len()];
        assert_eq!(frame_filter([&native[..], &text].into_iter()), want);
        assert_eq!(frame_filter([&native[..], &text, &text[..10]].into_iter()), Bcj::None);
        assert_eq!(frame_filter([&text[..]].into_iter()), Bcj::None);
        assert_eq!(frame_filter(std::iter::empty()), Bcj::None);
        // Headers without code (a data-only ELF, or one that does not parse) do not count.
        let x86 = [elf(2, 1, 62, 1), vec![0; 1000]].concat();
        assert_eq!(code_bytes(&x86), 0);
        assert_eq!(frame_filter([&x86[..]].into_iter()), Bcj::None);
    }

    #[test]
    fn native_program_splits_into_parts() {
        let Some(native) = native_program() else { return };
        let Some(machine) = elf_filter(&native) else { return };
        let parts = elf_parts(&native);
        // The parts tile the file, neighbours differ, none is small; the ELF header is not code,
        // and there is code and more than one kind of the rest.
        assert_eq!(parts.iter().map(|p| p.1).sum::<u64>(), native.len() as u64);
        assert!(parts.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0 && w[0].2 != w[1].2), "{parts:?}");
        assert!(parts.iter().all(|p| p.1 >= MIN_PART), "{parts:?}");
        assert_eq!((parts[0].0, parts[0].2), (0, Class::Elf(Part::Headers)));
        assert!(parts.iter().any(|p| p.2 == Class::Code(machine)), "{parts:?}");
        let kinds: std::collections::BTreeSet<Class> = parts.iter().map(|p| p.2).collect();
        assert!(kinds.len() >= 4, "{parts:?}");
        let path = std::env::temp_dir().join(format!("ferry-lzma-class-{}.bin", std::process::id()));
        assert!(std::fs::write(&path, &native).is_ok());
        let got = classify(&path, native.len() as u64);
        // A size that does not match (the file changed): one part, not ELF parts.
        let changed = classify(&path, native.len() as u64 + 1);
        let _ = std::fs::remove_file(&path);
        assert_eq!(got, parts);
        assert_eq!(changed, [(0, native.len() as u64 + 1, Class::Other)]);
    }

    #[test]
    fn elf_parts_of_odd_files() {
        // Not ELF; ELF that does not parse; a header only.
        assert_eq!(elf_parts(b"#!/bin/sh\n"), [(0, 10, Class::Other)]);
        let mut junk = elf(2, 1, 62, 0x1040);
        junk.extend([0xff; 100]);
        junk[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes()); // e_shoff far outside
        junk[0x3c..0x3e].copy_from_slice(&5u16.to_le_bytes()); // e_shnum
        let n = junk.len() as u64;
        assert!(matches!(elf_parts(&junk)[..], [(0, len, Class::Elf(Part::Data) | Class::Other)] if len == n));
        let bare = elf(2, 1, 62, 0x1040);
        assert_eq!(elf_parts(&bare), [(0, 64, Class::Elf(Part::Data))]);
    }

    #[test]
    fn filter_votes_by_machine() {
        let (x86, arm, text) = ((Some(Bcj::X86), 1000), (Some(Bcj::Arm64), 3000), (None, 2000));
        assert_eq!(choose([x86, text].into_iter()), Bcj::None);
        assert_eq!(choose([x86, (None, 500)].into_iter()), Bcj::X86);
        assert_eq!(choose([x86, (None, 1000)].into_iter()), Bcj::X86);
        assert_eq!(choose([x86, arm, text].into_iter()), Bcj::Arm64);
        assert_eq!(choose([(Some(Bcj::None), 100)].into_iter()), Bcj::None);
        assert_eq!(choose(std::iter::empty()), Bcj::None);
    }

    #[test]
    fn when_to_try_and_dictionaries() {
        assert!(worth_trying(19, 1 << 20, 300_000));
        assert!(!worth_trying(3, 1 << 20, 300_000)); // a fast build
        assert!(!worth_trying(19, 1 << 20, 1000)); // a good patch
        assert!(!worth_trying(19, 1 << 20, 1_040_000)); // incompressible
        assert!(!worth_trying(19, 1000, 500)); // small
        assert_eq!(dict_log(0), 12);
        assert_eq!(dict_log(5000), 13);
        assert_eq!(dict_log(1 << 20), 20);
        assert_eq!(dict_log((1 << 20) + 1), 21);
        assert_eq!(dict_log(1 << 40), MAX_DICT_LOG);
    }

    #[test]
    fn encode_checked_roundtrips() -> io::Result<()> {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let (bytes, m) = encode_checked(&data, Bcj::Arm64)?;
        assert_eq!(m, Method::Lzma { filter: Bcj::Arm64, dict_log: 19 });
        assert_eq!(lzma::decode(&bytes, Bcj::Arm64, 19, data.len() as u64, &Limits::default())?, data);
        Ok(())
    }
}
