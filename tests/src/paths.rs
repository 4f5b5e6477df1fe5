//! Where things are: the workspace, its built binaries, and a temporary directory per test.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    // This crate lives in `<root>/tests`.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo target directory: `CARGO_TARGET_DIR` if set (relative paths are taken from the workspace root), else
/// `<root>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() { dir } else { workspace_root().join(dir) }
        }
        _ => workspace_root().join("target"),
    }
}

/// The first built copy of binary `name` among the cargo `profiles` (e.g. `["release", "debug"]`): what the benchmark
/// binaries run.
pub fn built_in(profiles: &[&str], name: &str) -> Result<PathBuf> {
    profiles
        .iter()
        .map(|p| target_dir().join(p).join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not built (looked in {profiles:?})"))
}

/// The path of a built workspace binary (`vigil`, `vigil-agent`) in the debug profile, or an error that says how to
/// build it.
pub fn try_bin(name: &str) -> Result<PathBuf> {
    let path = target_dir().join("debug").join(name);
    if !path.is_file() {
        bail!("binary {} not found: run cargo build --workspace --bins first (scripts/test.sh does)", path.display());
    }
    Ok(path)
}

/// Like [`try_bin`], but panics with the same message: a missing binary is a broken test setup, not a test result.
pub fn bin(name: &str) -> PathBuf {
    match try_bin(name) {
        Ok(path) => path,
        Err(e) => panic!("{e:#}"),
    }
}

/// A temporary directory for one test (or one service), removed on drop.
///
/// Set `VIGIL_KEEP_TEST_DIRS=1` to keep them for a post-mortem; each kept path is printed.
#[derive(Debug)]
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// A fresh directory `/tmp/vigil-<label>-XXXXXX`, mode 0755 so that sshd can read files in it on behalf of
    /// non-root users.
    pub fn new(label: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("vigil-{label}-"))
            .tempdir()
            .context("creating a temporary directory")?;
        let path = dir.path().to_path_buf();
        set_mode(&path, 0o755)?;
        Ok(Self { dir: Some(dir), path })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("VIGIL_KEEP_TEST_DIRS").is_some_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            eprintln!("keeping test directory {}", dir.keep().display());
        }
    }
}

/// Sets a file's permission bits.
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let err = try_bin("no-such-binary").unwrap_err().to_string();
        assert!(err.contains("run cargo build --workspace --bins first"), "{err}");
    }

    #[test]
    fn test_dirs_are_distinct_readable_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let a = TestDir::new("unit").unwrap();
        let b = TestDir::new("unit").unwrap();
        assert_ne!(a.path(), b.path());
        assert_eq!(std::fs::metadata(a.path()).unwrap().permissions().mode() & 0o777, 0o755);
        let path = a.path().to_path_buf();
        drop(a);
        assert!(!path.exists());
    }
}
