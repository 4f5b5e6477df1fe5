//! The agent set `scripts/dist.sh` builds: three files of the right kind (as `file` reports them), each within the
//! size limit, and the ARM aarch64 build running under qemu-user and reading this machine's statistics.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use vigil_tests::agent_set::{LINUX_AARCH64, LINUX_X86_64, WINDOWS_X86_64, build, is_static_elf};

/// The size limit of one stripped agent (issue 14; BENCHMARKS.md "The agent set").
const MAX_BYTES: u64 = 2_500_000;

/// Every family a Linux agent reports.
const LINUX_FAMILIES: [&str; 9] =
    ["system", "users", "cpu", "memory", "swap", "partitions", "disk_usage", "network", "security_events"];

/// What Debian's `file` says about `path`.
fn file_kind(path: &Path) -> Result<String> {
    let out = Command::new("file").arg("-b").arg(path).output().context("running file (Debian package file)")?;
    ensure!(out.status.success(), "file {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn the_set_holds_a_static_x86_64_and_aarch64_linux_agent_and_a_pe32_plus_windows_agent_each_within_the_limit()
-> Result<()> {
    let expect: [(&str, &[&str]); 3] = [
        (LINUX_X86_64, &["ELF 64-bit LSB executable", "x86-64", "statically linked", "stripped"]),
        (LINUX_AARCH64, &["ELF 64-bit LSB executable", "ARM aarch64", "statically linked", "stripped"]),
        (WINDOWS_X86_64, &["PE32+ executable", "x86-64", "MS Windows"]),
    ];
    for (target, words) in expect {
        let path = build(target);
        let kind = file_kind(&path)?;
        for w in words {
            ensure!(kind.contains(w), "{target}: `file` says {kind:?}, expected {w:?}");
        }
        ensure!(!kind.contains("not stripped") && !kind.contains("dynamically linked"), "{target}: {kind}");
        let len = std::fs::metadata(&path)?.len();
        let max = MAX_BYTES;
        ensure!(len <= max, "{target}: {len} bytes, over the {max}-byte limit");
    }
    // The same, read from the ELF program headers: no interpreter, so no host libc is needed.
    for target in [LINUX_X86_64, LINUX_AARCH64] {
        ensure!(is_static_elf(&build(target))?, "{target} has a program interpreter");
    }
    Ok(())
}

/// qemu-user for aarch64: Debian's `qemu-user-static` (binfmt may not be registered in a container, so it is run
/// directly).
fn qemu_aarch64() -> Result<&'static str> {
    ["/usr/bin/qemu-aarch64-static", "/usr/bin/qemu-aarch64"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .context("qemu-aarch64 not found: apt-get install qemu-user-static (scripts/test.sh does)")
}

#[test]
fn the_aarch64_agent_runs_under_qemu_and_reports_every_linux_family_with_this_machines_memory() -> Result<()> {
    let agent = build(LINUX_AARCH64);
    let work = tempfile::tempdir()?;
    let out = Command::new(qemu_aarch64()?)
        .arg(&agent)
        .args(["--once", "--print"])
        .current_dir(work.path())
        .output()
        .context("running the aarch64 agent under qemu")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "exit {:?}: {stderr}", out.status);
    let v: Value = serde_json::from_slice(&out.stdout).context("--print output is not JSON")?;
    ensure!(v["type"] == "report", "{v}");
    let stats = v["stats"].as_object().context("stats")?;
    for f in LINUX_FAMILIES {
        ensure!(stats.contains_key(f), "family {f} missing: {}", serde_json::to_string_pretty(&v)?);
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|s| s.split_whitespace().next())
        .context("MemTotal")?
        .parse()?;
    ensure!(v["stats"]["memory"]["total"].as_u64() == Some(kib * 1024), "{}", v["stats"]["memory"]);
    // qemu-user answers uname(2) for the emulated machine: the agent saw itself run as aarch64.
    ensure!(v["stats"]["system"]["arch"] == "aarch64", "{}", v["stats"]["system"]);
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    ensure!(v["stats"]["system"]["hostname"] == hostname.trim(), "{}", v["stats"]["system"]);
    ensure!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}
