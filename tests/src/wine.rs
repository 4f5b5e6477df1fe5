//! Windows binaries under Wine (Debian `wine64`, Wine 8.0) in a throwaway prefix: [`Wine`].
//!
//! Wine 8.0 has no `bcryptprimitives.dll`, which Rust's standard library imports (`ProcessPrng`): [`Wine::new`]
//! builds a test-only shim with the MinGW compiler, a DLL of that name exporting `ProcessPrng` over `RtlGenRandom`
//! (`advapi32!SystemFunction036`), to be put beside the .exe ([`Wine::install`]). The prefix lives in the test's
//! directory; the first run initializes it (20 to 60 s). Mono and Gecko are disabled (`WINEDLLOVERRIDES`), so Wine
//! never offers to download them. On drop the prefix's own wineserver is stopped (`wineserver -k` for that prefix
//! only) and the directory removed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

use crate::TestDir;

/// Debian's 64-bit Wine loader (there is no `wine64` on PATH).
pub const WINE64: &str = "/usr/lib/wine/wine64";
/// Its wineserver.
pub const WINESERVER: &str = "/usr/lib/wine/wineserver";
/// The MinGW cross compiler (Debian `gcc-mingw-w64-x86-64`).
pub const MINGW_GCC: &str = "x86_64-w64-mingw32-gcc";
/// The Rust target of Windows builds run here.
pub const TARGET: &str = "x86_64-pc-windows-gnu";

const SHIM_C: &str = r#"#include <windows.h>
#define SystemFunction036 NTAPI SystemFunction036
#include <ntsecapi.h>
#undef SystemFunction036
BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) { return RtlGenRandom(data, (ULONG)len); }
"#;

const SHIM_DEF: &str = "LIBRARY bcryptprimitives\nEXPORTS\nProcessPrng\n";

/// A Wine prefix and a directory holding the `bcryptprimitives.dll` shim.
#[derive(Debug)]
pub struct Wine {
    dir: TestDir,
}

impl Wine {
    /// Checks that Wine and MinGW are installed and builds the shim.
    pub fn new(label: &str) -> Result<Self> {
        if !Path::new(WINE64).is_file() {
            bail!("{WINE64} not found: apt-get install wine64 (scripts/test.sh does)");
        }
        let dir = TestDir::new(label)?;
        std::fs::create_dir(dir.join("prefix"))?;
        std::fs::write(dir.join("bcp.c"), SHIM_C)?;
        std::fs::write(dir.join("bcp.def"), SHIM_DEF)?;
        let out = Command::new(MINGW_GCC)
            .args(["-shared", "-O2", "-o"])
            .arg(dir.join("bcryptprimitives.dll"))
            .arg(dir.join("bcp.c"))
            .arg(dir.join("bcp.def"))
            .arg("-ladvapi32")
            .output()
            .with_context(|| format!("running {MINGW_GCC}: apt-get install gcc-mingw-w64-x86-64"))?;
        if !out.status.success() {
            bail!("building the bcryptprimitives shim failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Self { dir })
    }

    /// The test directory (the prefix is `prefix/` in it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Copies `exe` and the shim into `<dir>/<name>/`, returning the copied .exe's path.
    pub fn install(&self, exe: &Path, name: &str) -> Result<PathBuf> {
        let app = self.dir.join(name);
        std::fs::create_dir_all(&app)?;
        let file = exe.file_name().context("exe has no file name")?;
        let dest = app.join(file);
        std::fs::copy(exe, &dest).with_context(|| format!("copying {}", exe.display()))?;
        std::fs::copy(self.dir.join("bcryptprimitives.dll"), app.join("bcryptprimitives.dll"))?;
        Ok(dest)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("WINEPREFIX", self.dir.join("prefix"))
            .env("WINEDEBUG", "-all")
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .env("WINEARCH", "win64")
            .env_remove("DISPLAY")
            .stdin(Stdio::null());
        cmd
    }

    /// The command that runs `exe` with `args` under Wine in the exe's directory, for a long-running
    /// [`Proc`](crate::Proc).
    pub fn exe_command(&self, exe: &Path, args: &[&str]) -> Command {
        let mut cmd = self.command(WINE64);
        cmd.arg(exe).args(args);
        if let Some(dir) = exe.parent() {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// Runs `exe` with `args` under Wine and collects its output (the first run also initializes the prefix).
    pub fn run(&self, exe: &Path, args: &[&str]) -> Result<Output> {
        self.exe_command(exe, args).output().with_context(|| format!("running {WINE64} {}", exe.display()))
    }

    /// A Unix path as Windows programs under Wine name it: drive `Z:` is the Unix root.
    pub fn windows_path(path: &Path) -> String {
        format!("Z:{}", path.display()).replace('/', "\\")
    }
}

impl Drop for Wine {
    fn drop(&mut self) {
        // Only this prefix's wineserver: -k addresses the server of WINEPREFIX.
        let _ = self.command(WINESERVER).arg("-k").status();
    }
}
