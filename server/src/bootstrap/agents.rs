//! The agent set: where `vigil` finds the agent builds it ships (`scripts/dist.sh` makes them), which build a host
//! gets by the OS and architecture its probe reports, and each build's bytes and SHA-256, read once per run.
//!
//! The set is a directory of `<target>/vigil-agent[.exe]`: `VIGIL_AGENTS_DIR`, else `agents/` beside the running
//! `vigil`, else the project's `dist/agents` (where `scripts/dist.sh` writes it). `VIGIL_AGENT_BIN` replaces the
//! build for this machine's own kind of host (tests and debugging). The local transport runs the set's build for this
//! machine, or the `vigil-agent` beside `vigil` when there is no set.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{BootstrapError, sha256_hex};

/// The command that builds the set, named in every refusal.
pub const BUILD_COMMAND: &str = "scripts/dist.sh";

/// One kind of host an agent build serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// Linux x86-64, static (musl): any kernel ≥ 3.2 whatever its libc.
    LinuxX86_64,
    /// Linux ARM aarch64, static (musl).
    LinuxAarch64,
    /// Windows x86-64 (MinGW).
    WindowsX86_64,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::LinuxX86_64, Target::LinuxAarch64, Target::WindowsX86_64];

    /// The Rust target triple: the set's subdirectory.
    pub fn triple(self) -> &'static str {
        match self {
            Target::LinuxX86_64 => "x86_64-unknown-linux-musl",
            Target::LinuxAarch64 => "aarch64-unknown-linux-musl",
            Target::WindowsX86_64 => "x86_64-pc-windows-gnu",
        }
    }

    /// The binary's file name in the set (and on the host).
    pub fn file_name(self) -> &'static str {
        match self {
            Target::WindowsX86_64 => "vigil-agent.exe",
            _ => "vigil-agent",
        }
    }

    /// The build for a host whose probe says `os` (`uname -s`, or `Windows`) and `arch` (`uname -m`, or Windows'
    /// `PROCESSOR_ARCHITECTURE`); `None` when no build serves it.
    pub fn for_host(os: &str, arch: &str) -> Option<Target> {
        match (os, arch.to_ascii_lowercase().as_str()) {
            ("Linux", "x86_64" | "amd64") => Some(Target::LinuxX86_64),
            ("Linux", "aarch64" | "arm64") => Some(Target::LinuxAarch64),
            ("Windows", "amd64" | "x86_64" | "x64") => Some(Target::WindowsX86_64),
            _ => None,
        }
    }

    /// The build for this machine, if the set has one for it.
    pub fn this_machine() -> Option<Target> {
        let os = match std::env::consts::OS {
            "linux" => "Linux",
            "windows" => "Windows",
            other => other,
        };
        Target::for_host(os, std::env::consts::ARCH)
    }

    /// How the kinds of host served are named in a refusal.
    fn served() -> String {
        Target::ALL.map(|t| t.triple()).join(", ")
    }
}

/// One agent build, read into memory.
pub struct Build {
    /// `None`: not from the set (`VIGIL_AGENT_BIN`, or the binary beside `vigil` for the local transport).
    pub target: Option<Target>,
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    /// Lowercase hex SHA-256 of `bytes`: equal to the probe's `agent_sha`, the upload is skipped.
    pub sha: String,
}

impl std::fmt::Debug for Build {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Build")
            .field("target", &self.target)
            .field("path", &self.path)
            .field("len", &self.bytes.len())
            .field("sha", &self.sha)
            .finish()
    }
}

impl Build {
    fn read(target: Option<Target>, path: PathBuf) -> Result<Self, BootstrapError> {
        let bytes = std::fs::read(&path).map_err(|error| BootstrapError::Io { path: path.clone(), error })?;
        Ok(Self { target, sha: sha256_hex(&bytes), path, bytes })
    }
}

/// The directory that holds the set: `VIGIL_AGENTS_DIR`, else `agents/` beside the running `vigil`, else the
/// project's `dist/agents`; `None` when none of them exists (`VIGIL_AGENTS_DIR` is taken as given).
pub fn find_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("VIGIL_AGENTS_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|d| d.join("agents")));
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/agents");
    beside.into_iter().chain([project]).find(|d| d.is_dir())
}

/// The builds a run ships, each read once, on first use.
#[derive(Debug)]
pub struct AgentSet {
    dir: Option<PathBuf>,
    /// `VIGIL_AGENT_BIN`: replaces the build for this machine's kind of host.
    override_bin: Option<PathBuf>,
    read: Mutex<HashMap<Option<Target>, Arc<Build>>>,
}

impl AgentSet {
    /// The set as the environment and the file system say (see the module doc).
    pub fn find() -> Self {
        Self::new(find_dir(), std::env::var_os("VIGIL_AGENT_BIN").map(PathBuf::from))
    }

    /// A set in `dir` (`None`: no set), with an optional replacement for this machine's build.
    pub fn new(dir: Option<PathBuf>, override_bin: Option<PathBuf>) -> Self {
        Self { dir, override_bin, read: Mutex::new(HashMap::new()) }
    }

    /// The set's directory, if there is one.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The build for a host whose probe reported `os` and `arch`, or a refusal that says which build is missing and
    /// how to build it.
    pub fn for_host(&self, os: &str, arch: &str) -> Result<Arc<Build>, BootstrapError> {
        let host = match (os, arch) {
            ("", _) => "an unknown OS (uname failed: Windows?)".to_owned(),
            (os, "") => format!("{os} on an unknown architecture"),
            (os, arch) => format!("{os} {arch}"),
        };
        let Some(target) = Target::for_host(os, arch) else {
            return Err(BootstrapError::Unsupported(format!(
                "{host}: no agent build for it (the agent set, built by `{BUILD_COMMAND}`, serves {})",
                Target::served()
            )));
        };
        if Some(target) == Target::this_machine()
            && let Some(p) = &self.override_bin
        {
            return self.read_once(None, || {
                if p.is_file() { Ok(p.clone()) } else { Err(BootstrapError::NoBinary(p.clone())) }
            });
        }
        self.read_once(Some(target), || {
            let Some(dir) = &self.dir else {
                return Err(BootstrapError::Unsupported(format!(
                    "{host}: no agent set found (VIGIL_AGENTS_DIR, agents/ beside vigil, or the project's \
                     dist/agents); build it with `{BUILD_COMMAND}`"
                )));
            };
            let path = dir.join(target.triple()).join(target.file_name());
            if path.is_file() {
                Ok(path)
            } else {
                Err(BootstrapError::Unsupported(format!(
                    "{host}: no agent build for it: {} is missing; build it with `{BUILD_COMMAND} {}`",
                    path.display(),
                    target.triple()
                )))
            }
        })
    }

    /// The build the local transport runs on this machine: `VIGIL_AGENT_BIN`, else the set's build for this machine,
    /// else the `vigil-agent` beside the running `vigil`.
    pub fn local(&self) -> Result<Arc<Build>, BootstrapError> {
        let path = local_path(self.dir.as_deref(), self.override_bin.as_deref())?;
        self.read_once(None, || Ok(path))
    }

    /// Reads the build at the path `locate` gives, once: later calls for the same key return the same bytes.
    fn read_once(
        &self,
        key: Option<Target>,
        locate: impl FnOnce() -> Result<PathBuf, BootstrapError>,
    ) -> Result<Arc<Build>, BootstrapError> {
        let mut read = self.read.lock().map_err(|_| BootstrapError::Failed("agent set lock poisoned".into()))?;
        if let Some(b) = read.get(&key) {
            return Ok(b.clone());
        }
        let build = Arc::new(Build::read(key, locate()?)?);
        read.insert(key, build.clone());
        Ok(build)
    }
}

/// Where the local transport's agent is (see [`AgentSet::local`]).
fn local_path(dir: Option<&Path>, override_bin: Option<&Path>) -> Result<PathBuf, BootstrapError> {
    if let Some(p) = override_bin {
        return if p.is_file() { Ok(p.to_path_buf()) } else { Err(BootstrapError::NoBinary(p.to_path_buf())) };
    }
    if let (Some(dir), Some(t)) = (dir, Target::this_machine()) {
        let p = dir.join(t.triple()).join(t.file_name());
        if p.is_file() {
            return Ok(p);
        }
    }
    let exe =
        std::env::current_exe().map_err(|error| BootstrapError::Io { path: PathBuf::from("/proc/self/exe"), error })?;
    let p = exe.with_file_name(super::layout::BINARY);
    if p.is_file() { Ok(p) } else { Err(BootstrapError::NoBinary(p)) }
}

/// The local transport's agent binary, found as [`AgentSet::local`] does (for `vigil serve`'s local agents).
pub fn local_binary() -> Result<PathBuf, BootstrapError> {
    let over = std::env::var_os("VIGIL_AGENT_BIN").map(PathBuf::from);
    local_path(find_dir().as_deref(), over.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_map_to_builds() {
        assert_eq!(Target::for_host("Linux", "x86_64"), Some(Target::LinuxX86_64));
        assert_eq!(Target::for_host("Linux", "aarch64"), Some(Target::LinuxAarch64));
        assert_eq!(Target::for_host("Linux", "arm64"), Some(Target::LinuxAarch64));
        assert_eq!(Target::for_host("Windows", "AMD64"), Some(Target::WindowsX86_64));
        for (os, arch) in [
            ("Linux", "riscv64"),
            ("Linux", "armv7l"),
            ("Linux", "aarch64_be"),
            ("Linux", "i686"),
            ("Darwin", "x86_64"),
            ("FreeBSD", "amd64"),
            ("Windows", "ARM64"),
            ("", ""),
        ] {
            assert_eq!(Target::for_host(os, arch), None, "{os} {arch}");
        }
    }

    fn set_with(targets: &[Target]) -> (tempfile::TempDir, AgentSet) {
        let tmp = tempfile::tempdir().unwrap();
        for t in targets {
            let d = tmp.path().join(t.triple());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(t.file_name()), t.triple()).unwrap();
        }
        let set = AgentSet::new(Some(tmp.path().to_path_buf()), None);
        (tmp, set)
    }

    #[test]
    fn each_host_gets_its_own_build_and_sha() {
        let (_tmp, set) = set_with(&Target::ALL);
        let x = set.for_host("Linux", "x86_64").unwrap();
        let a = set.for_host("Linux", "aarch64").unwrap();
        let w = set.for_host("Windows", "AMD64").unwrap();
        assert_eq!(x.bytes, b"x86_64-unknown-linux-musl");
        assert_eq!(a.bytes, b"aarch64-unknown-linux-musl");
        assert!(w.path.ends_with("x86_64-pc-windows-gnu/vigil-agent.exe"), "{w:?}");
        assert_eq!(a.sha, sha256_hex(b"aarch64-unknown-linux-musl"));
        assert_ne!(x.sha, a.sha);
        assert!(Arc::ptr_eq(&a, &set.for_host("Linux", "arm64").unwrap()), "read once");
        assert!(!format!("{a:?}").contains("aarch64-unknown-linux-musl\""), "Debug shows no bytes");
    }

    #[test]
    fn a_host_without_a_build_is_refused_with_the_command_that_builds_it() {
        let (_tmp, set) = set_with(&[Target::LinuxX86_64]);
        let e = set.for_host("Linux", "aarch64").unwrap_err().to_string();
        assert!(e.contains("Linux aarch64") && e.contains("aarch64-unknown-linux-musl/vigil-agent is missing"), "{e}");
        assert!(e.contains("scripts/dist.sh"), "{e}");
        let e = set.for_host("Linux", "riscv64").unwrap_err().to_string();
        assert!(e.contains("Linux riscv64: no agent build") && e.contains("scripts/dist.sh"), "{e}");
        let e = set.for_host("", "").unwrap_err().to_string();
        assert!(e.contains("unknown OS"), "{e}");
        let none = AgentSet::new(None, None);
        let e = none.for_host("Linux", "x86_64").unwrap_err().to_string();
        assert!(e.contains("no agent set found") && e.contains("scripts/dist.sh"), "{e}");
    }

    #[test]
    fn the_override_replaces_only_this_machines_build() {
        let (tmp, _) = set_with(&Target::ALL);
        let over = tmp.path().join("custom-agent");
        std::fs::write(&over, b"custom").unwrap();
        let set = AgentSet::new(Some(tmp.path().to_path_buf()), Some(over.clone()));
        let here = Target::this_machine().unwrap();
        let os = if here == Target::WindowsX86_64 { "Windows" } else { "Linux" };
        assert_eq!(set.for_host(os, std::env::consts::ARCH).unwrap().bytes, b"custom");
        let other = if here == Target::LinuxAarch64 { "x86_64" } else { "aarch64" };
        assert_ne!(set.for_host("Linux", other).unwrap().bytes, b"custom");
        assert_eq!(set.local().unwrap().path, over);
    }

    #[test]
    fn the_local_agent_comes_from_the_set_when_it_has_one() {
        let (tmp, set) = set_with(&Target::ALL);
        let here = Target::this_machine().unwrap();
        assert_eq!(set.local().unwrap().path, tmp.path().join(here.triple()).join(here.file_name()));
    }
}
