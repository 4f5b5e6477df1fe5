//! Child processes for tests: output captured to files, stopped by PID (SIGTERM, then SIGKILL) when dropped.
//!
//! Each [`Proc`] runs in its own process group, so stopping it on drop also stops whatever it started and left in
//! that group (a server's local agents, say). [`Proc::signal`] targets the process alone, for tests of graceful
//! shutdown.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::poll::wait_until;

pub use libc::{SIGHUP, SIGINT, SIGKILL, SIGTERM};

/// How long [`Proc::stop`] waits after SIGTERM before it sends SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(5);

/// A spawned child with stdout and stderr in files, stopped by PID on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdin closed and stdout/stderr written to `<log_dir>/<name>.stdout` and `.stderr`.
    pub fn spawn(mut cmd: Command, log_dir: &Path, name: &str) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let stdout = log_dir.join(format!("{name}.stdout"));
        let stderr = log_dir.join(format!("{name}.stderr"));
        let out = File::create(&stdout).with_context(|| format!("creating {}", stdout.display()))?;
        let err = File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let child = cmd.spawn().with_context(|| format!("spawning {name}: {cmd:?}"))?;
        Ok(Self { name: name.to_owned(), child, status: None, stdout, stderr })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends `sig` (e.g. [`SIGTERM`], [`SIGHUP`]) to the process alone. An error once it has exited and been reaped.
    pub fn signal(&mut self, sig: libc::c_int) -> Result<()> {
        if self.try_status()?.is_some() {
            bail!("{} (pid {}) has already exited", self.name, self.pid());
        }
        // Not reaped yet, so the PID still names our child (or its zombie) and cannot have been reused.
        send_signal(pid_t(self.pid())?, sig).with_context(|| format!("signalling {} (pid {})", self.name, self.pid()))
    }

    /// The exit status if the process has exited (reaping it), without waiting.
    pub fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait().with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.status)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit and returns its status; an error if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut failure = None;
        wait_until(timeout, || match self.try_status() {
            Ok(s) => s.is_some(),
            Err(e) => {
                failure = Some(e);
                true
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        match self.status {
            Some(status) => Ok(status),
            None => bail!("{} (pid {}) still running after {timeout:?}\n{}", self.name, self.pid(), self.logs()),
        }
    }

    /// Stops the process and its group: SIGTERM, up to [`TERM_GRACE`], then SIGKILL. Returns its exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let group = pid_t(self.pid())?;
        if self.try_status()?.is_none() {
            // Negative PID: the whole process group this child leads (its own PID, set at spawn).
            let _ = send_signal(-group, SIGTERM);
            if !wait_until(TERM_GRACE, || self.try_status().map(|s| s.is_some()).unwrap_or(true)) {
                let _ = send_signal(-group, SIGKILL);
            }
        }
        let status = self.child.wait().with_context(|| format!("waiting for {}", self.name))?;
        self.status = Some(status);
        // Anything left in the group (children that outlived the leader) goes too.
        let _ = send_signal(-group, SIGKILL);
        Ok(status)
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Path of the stdout log file.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    /// Path of the stderr log file.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// Both logs, labelled, for assertion messages.
    pub fn logs(&self) -> String {
        format!("--- {} stdout ---\n{}--- {} stderr ---\n{}", self.name, self.stdout(), self.name, self.stderr())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn pid_t(pid: u32) -> Result<libc::pid_t> {
    libc::pid_t::try_from(pid).context("pid out of range")
}

/// Sends `sig` to a process the test started, by PID. Only for processes not owned by a [`Proc`] (those use
/// [`Proc::signal`], which cannot hit a reused PID).
pub fn signal_pid(pid: u32, sig: libc::c_int) -> Result<()> {
    send_signal(pid_t(pid)?, sig).with_context(|| format!("signalling pid {pid}"))
}

/// Sends a signal to a PID (negative: a process group) with kill(2).
#[allow(unsafe_code)]
fn send_signal(pid: libc::pid_t, sig: libc::c_int) -> std::io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Whether a process with this PID exists (a zombie counts until reaped).
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills (SIGKILL, by PID) every process whose executable lies under `dir`, e.g. agents a test installed into a
/// host directory. Returns the PIDs it signalled.
pub fn kill_processes_under(dir: &Path) -> Vec<u32> {
    let mut killed = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return killed;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(exe) = std::fs::read_link(entry.path().join("exe")) else {
            continue;
        };
        // A replaced binary shows as "path (deleted)"; compare the path part.
        let exe = PathBuf::from(exe.to_string_lossy().trim_end_matches(" (deleted)"));
        if exe.starts_with(dir)
            && let Ok(p) = libc::pid_t::try_from(pid)
            && send_signal(p, SIGKILL).is_ok()
        {
            killed.push(pid);
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::TestDir;

    fn sh(dir: &TestDir, name: &str, script: &str) -> Proc {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        Proc::spawn(cmd, dir.path(), name).unwrap()
    }

    #[test]
    fn output_goes_to_files_and_exit_status_is_kept() {
        let dir = TestDir::new("proc").unwrap();
        let mut p = sh(&dir, "echo", "echo out; echo err >&2; exit 3");
        let status = p.wait_exit(Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(3));
        assert_eq!(p.stdout(), "out\n");
        assert_eq!(p.stderr(), "err\n");
        assert!(p.signal(SIGTERM).is_err(), "signalling an exited process must fail");
    }

    #[test]
    fn sigterm_reaches_the_process() {
        let dir = TestDir::new("proc").unwrap();
        let mut p = sh(&dir, "trap", "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done");
        assert!(wait_until(Duration::from_secs(10), || p.stdout().contains("ready")));
        assert!(p.wait_exit(Duration::from_millis(50)).is_err(), "still running");
        p.signal(SIGTERM).unwrap();
        assert_eq!(p.wait_exit(Duration::from_secs(10)).unwrap().code(), Some(7));
        assert!(p.stdout().contains("got-term"));
    }

    #[test]
    fn drop_kills_a_process_that_ignores_sigterm_and_its_children() {
        let dir = TestDir::new("proc").unwrap();
        let child_file = dir.join("child.pid");
        let script = format!("trap '' TERM; sleep 1000 & echo $! > {}; wait", child_file.display());
        let p = sh(&dir, "stubborn", &script);
        let pid = p.pid();
        assert!(wait_until(Duration::from_secs(10), || std::fs::read_to_string(&child_file)
            .is_ok_and(|s| s.ends_with('\n'))));
        let child: u32 = std::fs::read_to_string(&child_file).unwrap().trim().parse().unwrap();
        assert!(running(child));
        drop(p);
        assert!(!running(pid), "the leader survived");
        assert!(wait_until(Duration::from_secs(5), || !running(child)), "its child survived");
    }

    #[test]
    fn kill_processes_under_finds_binaries_by_path() {
        let dir = TestDir::new("proc").unwrap();
        let copy = dir.join("sleeper");
        std::fs::copy("/bin/sleep", &copy).unwrap();
        let mut p = Proc::spawn(
            {
                let mut c = Command::new(&copy);
                c.arg("1000");
                c
            },
            dir.path(),
            "sleeper",
        )
        .unwrap();
        assert!(wait_until(Duration::from_secs(5), || kill_processes_under(dir.path()).contains(&p.pid())));
        assert!(p.wait_exit(Duration::from_secs(5)).is_ok());
    }

    /// Alive and not a zombie (a reparented child may linger as a zombie where PID 1 does not reap).
    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
            .unwrap_or(false)
    }
}
