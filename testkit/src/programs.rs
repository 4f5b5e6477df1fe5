//! Where PostgreSQL's programs are: `$VIGIL_PG_BINDIR`, else `pg_config --bindir`, else the newest
//! `/usr/lib/postgresql/<version>/bin` (Debian's layout), else `PATH`; looked up once per process.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// What to install when PostgreSQL is missing.
const INSTALL_HINT: &str = "install Debian's `postgresql` package (apt-get install postgresql) or set VIGIL_PG_BINDIR";

/// The PostgreSQL programs the testkit runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Programs {
    /// Creates a cluster's data directory.
    pub initdb: PathBuf,
    /// The server.
    pub postgres: PathBuf,
    /// The interactive client, used to run SQL.
    pub psql: PathBuf,
}

/// PostgreSQL's programs, found on the first call. The error names the package to install.
pub fn programs() -> io::Result<&'static Programs> {
    static FOUND: OnceLock<Result<Programs, String>> = OnceLock::new();
    FOUND.get_or_init(find).as_ref().map_err(|e| io::Error::new(io::ErrorKind::NotFound, e.clone()))
}

fn find() -> Result<Programs, String> {
    let dir = match std::env::var_os("VIGIL_PG_BINDIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if !d.join("initdb").is_file() {
                return Err(format!("VIGIL_PG_BINDIR={} has no initdb", d.display()));
            }
            Some(d)
        }
        _ => from_pg_config().or_else(newest_debian_bindir),
    };
    let tool = |name: &str| -> Result<PathBuf, String> {
        dir.as_ref()
            .map(|d| d.join(name))
            .filter(|p| p.is_file())
            .or_else(|| in_path(name))
            .ok_or_else(|| format!("PostgreSQL's `{name}` was not found: {INSTALL_HINT}"))
    };
    Ok(Programs { initdb: tool("initdb")?, postgres: tool("postgres")?, psql: tool("psql")? })
}

/// `pg_config --bindir`, when it names a directory with initdb in it.
fn from_pg_config() -> Option<PathBuf> {
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    dir.join("initdb").is_file().then_some(dir)
}

/// The `/usr/lib/postgresql/<version>/bin` with the highest version that has initdb.
fn newest_debian_bindir() -> Option<PathBuf> {
    newest_bindir_in(Path::new("/usr/lib/postgresql"))
}

fn newest_bindir_in(root: &Path) -> Option<PathBuf> {
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let version = version_key(&e.file_name())?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
}

/// "15" -> [15], "9.6" -> [9, 6]; None for a name that is not a version.
fn version_key(name: &OsStr) -> Option<Vec<u32>> {
    name.to_str()?.split('.').map(|p| p.parse().ok()).collect()
}

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_version_wins_numerically() {
        let root = tempfile::tempdir().unwrap();
        for v in ["9.6", "15", "16", "100-not-a-version"] {
            std::fs::create_dir_all(root.path().join(v).join("bin")).unwrap();
            std::fs::write(root.path().join(v).join("bin/initdb"), "").unwrap();
        }
        // A newer version without initdb (only the client installed) does not count.
        std::fs::create_dir_all(root.path().join("17/bin")).unwrap();
        assert_eq!(newest_bindir_in(root.path()), Some(root.path().join("16/bin")));
    }

    #[test]
    fn the_programs_of_this_machine_are_found() {
        let p = programs().unwrap();
        for path in [&p.initdb, &p.postgres, &p.psql] {
            assert!(path.is_file(), "{}", path.display());
        }
    }
}
