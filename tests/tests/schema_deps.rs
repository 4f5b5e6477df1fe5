//! Architecture invariant, checked: the shared `vigil-schema` crate pulls in no async runtime, SSH or database crate
//! (the agent links it and must stay small). Runs `cargo tree` on the real workspace.

use std::process::Command;

use anyhow::{Context, Result, ensure};

const FORBIDDEN: &[&str] = &["tokio", "russh", "rusqlite", "libsqlite3-sys", "refinery", "lettre", "sysinfo"];

/// The crate names in a package's normal (non-dev, non-build) dependency tree.
fn deps_of(package: &str) -> Result<Vec<String>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(vigil_tests::workspace_root())
        .args(["tree", "--offline", "-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .output()
        .context("running cargo tree")?;
    ensure!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).context("cargo tree printed non-UTF-8")?;
    Ok(text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect())
}

#[test]
fn schema_depends_on_no_runtime_ssh_or_database_crate() -> Result<()> {
    let deps = deps_of("vigil-schema")?;
    ensure!(deps.first().map(String::as_str) == Some("vigil-schema"), "unexpected cargo tree output: {deps:?}");
    ensure!(deps.iter().any(|d| d == "aes"), "the envelope's aes is missing from {deps:?}");
    let bad: Vec<&String> = deps.iter().filter(|d| FORBIDDEN.contains(&d.as_str())).collect();
    ensure!(bad.is_empty(), "vigil-schema depends on {bad:?}; keep runtimes out of the contract crate");
    Ok(())
}

#[test]
fn the_check_sees_runtimes_where_they_are() -> Result<()> {
    // The agent links tokio and russh: if this listing missed them, the schema check above would prove nothing.
    let deps = deps_of("vigil-agent")?;
    ensure!(deps.iter().any(|d| d == "tokio") && deps.iter().any(|d| d == "russh"), "{deps:?}");
    Ok(())
}
