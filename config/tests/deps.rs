//! Architecture invariant, checked: `vigil-config` pulls in no async runtime, SSH, database, mail or file-watching
//! crate, so what only reads config (the fuzz targets, tools) builds without them. Runs `cargo tree` on the real
//! workspace.

use std::path::Path;
use std::process::Command;

const FORBIDDEN: &[&str] =
    &["tokio", "russh", "rusqlite", "libsqlite3-sys", "refinery", "lettre", "notify", "aws-lc-sys", "sysinfo"];

/// The crate names in a package's normal (non-dev, non-build) dependency tree.
fn deps_of(package: &str) -> Vec<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(cargo)
        .current_dir(root)
        .args(["tree", "--offline", "-p", package, "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("cargo tree prints UTF-8");
    text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect()
}

#[test]
fn config_depends_on_no_runtime_ssh_database_or_mail_crate() {
    let deps = deps_of("vigil-config");
    assert_eq!(deps.first().map(String::as_str), Some("vigil-config"), "unexpected cargo tree output: {deps:?}");
    assert!(deps.iter().any(|d| d == "quick-xml"), "the XML parser is missing from {deps:?}");
    let bad: Vec<&String> = deps.iter().filter(|d| FORBIDDEN.contains(&d.as_str())).collect();
    assert!(bad.is_empty(), "vigil-config depends on {bad:?}; keep the runtime in vigil-server");
}

#[test]
fn the_check_sees_runtimes_where_they_are() {
    // The server links tokio, russh and SQLite: if this listing missed them, the check above would prove nothing.
    let deps = deps_of("vigil-server");
    for needed in ["tokio", "russh", "libsqlite3-sys", "vigil-config"] {
        assert!(deps.iter().any(|d| d == needed), "{needed} missing from {deps:?}");
    }
}
