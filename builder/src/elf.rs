//! SONAME and DT_NEEDED of ELF files, so that [`crate::plan`] can place shared libraries before
//! the programs that load them (a program started mid-commit then finds its libraries).
//! Anything that does not parse is simply not ELF for ordering purposes.

use crate::plan::ElfInfo;
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Files larger than this are not parsed (ordering only; nothing breaks if skipped).
pub const MAX_ELF_BYTES: u64 = 512 << 20;

/// Parse ELF bytes; `None` if not ELF or malformed.
pub fn parse(bytes: &[u8]) -> Option<ElfInfo> {
    if !bytes.starts_with(b"\x7fELF") {
        return None;
    }
    let elf = goblin::elf::Elf::parse(bytes).ok()?;
    Some(ElfInfo {
        soname: elf.soname.map(|s| s.as_bytes().to_vec()),
        needed: elf.libraries.iter().map(|s| s.as_bytes().to_vec()).collect(),
    })
}

/// Read and parse `path` if it starts with the ELF magic; I/O errors count as "not ELF".
pub fn inspect(path: &Path) -> Option<ElfInfo> {
    let mut f = File::open(path).ok()?;
    let mut magic = [0u8; 4];
    f.read_exact(&mut magic).ok()?;
    if &magic != b"\x7fELF" {
        return None;
    }
    let len = f.metadata().ok()?.len();
    if len > MAX_ELF_BYTES {
        return None;
    }
    let mut bytes = magic.to_vec();
    f.take(len).read_to_end(&mut bytes).ok()?;
    parse(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_elf_and_garbage() {
        assert_eq!(parse(b"#!/bin/sh\n"), None);
        assert_eq!(parse(b"\x7fELF\x02\x01\x01garbage"), None);
    }

    #[test]
    fn own_test_binary_parses() {
        // The test executable itself is ELF on Linux; it needs at least libc.
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        if let Some(info) = inspect(&exe) {
            assert!(info.needed.iter().any(|n| n.starts_with(b"libc.so")) || info.needed.is_empty());
        }
    }
}
