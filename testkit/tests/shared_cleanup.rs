//! No PostgreSQL outlives the test process that used [`vigil_testkit::shared`]: this binary runs itself as a child
//! that starts the shared cluster and then exits normally, or is killed with SIGKILL, and checks that the cluster's
//! postmaster and directory are gone within seconds either way (the cluster's watchdog stops and removes them).
//!
//! `harness = false`: `main` is the parent unless `VIGIL_TESTKIT_CHILD` says which child to be.
#![allow(clippy::unwrap_used)] // a test without libtest's harness: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD: &str = "VIGIL_TESTKIT_CHILD";

fn main() {
    match std::env::var(CHILD).as_deref() {
        Ok(mode) => child(mode),
        Err(_) => {
            for mode in ["exit", "sigkill"] {
                parent(mode);
                println!("shared_cleanup: {mode}: ok");
            }
        }
    }
}

/// Uses the shared cluster, says where it is, then exits (or waits to be killed).
fn child(mode: &str) {
    let pg = vigil_testkit::shared();
    let url = vigil_testkit::fresh_database();
    let db = url.rsplit('/').next().unwrap();
    assert_eq!(pg.psql(db, "SELECT 40 + 2").unwrap(), "42\n");
    println!("{} {}", pg.pid(), pg.dir().display());
    if mode == "sigkill" {
        std::thread::sleep(Duration::from_secs(120));
    }
}

fn parent(mode: &str) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe).env(CHILD, mode).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let (pid, dir) = line.trim().split_once(' ').unwrap_or_else(|| panic!("child said {line:?}"));
    let (pid, dir): (u32, PathBuf) = (pid.parse().unwrap(), dir.into());
    assert!(alive(pid) && dir.exists(), "the child's cluster runs while the child does");
    if mode == "sigkill" {
        child.kill().unwrap();
    }
    let status = child.wait().unwrap();
    assert_eq!(status.success(), mode == "exit", "{status}");
    let start = Instant::now();
    while alive(pid) || dir.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{mode}: postmaster {pid} alive: {}, {} exists: {}",
            alive(pid),
            dir.display(),
            dir.exists()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `pid` names a live process (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}
