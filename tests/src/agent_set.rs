//! The agent set the end-to-end tests ship (what `scripts/dist.sh` builds into `dist/agents`, scripts/test.sh runs
//! it first), and telling a static ELF executable from a dynamically linked one.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::paths::workspace_root;

/// The static x86-64 Linux build: what a test host (this machine) gets.
pub const LINUX_X86_64: &str = "x86_64-unknown-linux-musl";
/// The static ARM aarch64 Linux build.
pub const LINUX_AARCH64: &str = "aarch64-unknown-linux-musl";
/// The Windows x86-64 build.
pub const WINDOWS_X86_64: &str = "x86_64-pc-windows-gnu";

/// The agent set: `VIGIL_AGENTS_DIR` if the test run has it, else the project's `dist/agents`. Every `vigil` a
/// [`Workdir`](crate::Workdir) runs gets it as its `VIGIL_AGENTS_DIR`.
pub fn agents_dir() -> PathBuf {
    match std::env::var_os("VIGIL_AGENTS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => workspace_root().join("dist").join("agents"),
    }
}

/// The set's build for `target` (`vigil-agent`, or `vigil-agent.exe` for Windows), or an error that says how to build
/// it.
pub fn try_build(target: &str) -> Result<PathBuf> {
    let name = if target.contains("windows") { "vigil-agent.exe" } else { "vigil-agent" };
    let path = agents_dir().join(target).join(name);
    if !path.is_file() {
        bail!("agent build {} not found: run scripts/dist.sh first (scripts/test.sh does)", path.display());
    }
    Ok(path)
}

/// Like [`try_build`], but panics with its message: a missing build is a broken test setup, not a test result.
pub fn build(target: &str) -> PathBuf {
    match try_build(target) {
        Ok(p) => p,
        Err(e) => panic!("{e:#}"),
    }
}

/// Whether the 64-bit ELF executable at `path` is statically linked: it has no program interpreter (`PT_INTERP`),
/// so no dynamic loader or libc of the host is involved.
pub fn is_static_elf(path: &Path) -> Result<bool> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        bail!("{} is not a little-endian 64-bit ELF file", path.display());
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().context("e_phoff")?) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let ty = b.get(at..at + 4).context("program header past the end of the file")?;
        if u32::from_le_bytes(ty.try_into().context("p_type")?) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_is_told_from_a_static_one() {
        // /bin/sh on Debian is dynamically linked (it has an interpreter).
        assert!(!is_static_elf(Path::new("/bin/sh")).unwrap());
        assert!(is_static_elf(Path::new("/etc/hostname")).is_err());
    }
}
