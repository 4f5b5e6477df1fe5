//! [`Service`]: one real server process for tests (sshd, aiosmtpd), run from its own temporary directory on a free
//! loopback port, waited for until ready, stopped by PID, and restartable on the same port.
//!
//! The directory is a [`TestDir`], so `VIGIL_KEEP_TEST_DIRS=1` keeps it (config, keys, logs of every run) for a
//! post-mortem. Run `n` logs to `<dir>/<name>.stdout|stderr` (first run) or `<dir>/<name>.<n>.stdout|stderr`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::net::free_port;
use crate::paths::TestDir;
use crate::poll::wait_until;
use crate::process::Proc;

/// A server process on 127.0.0.1, its port and its directory; stopped when dropped.
#[derive(Debug)]
pub struct Service {
    name: String,
    port: u16,
    proc: Option<Proc>,
    /// Runs started so far; the first run is 0.
    runs: u32,
    // Last, so the directory outlives the process that uses it.
    dir: TestDir,
}

impl Service {
    /// A fresh directory (`<tmp>/vigil-test-<name>-...`) and a free port; nothing runs yet.
    pub fn new(name: &str) -> Result<Self> {
        Ok(Self { name: name.to_owned(), port: free_port(), proc: None, runs: 0, dir: TestDir::new(name)? })
    }

    fn log_name(&self, run: u32) -> String {
        if run == 0 { self.name.clone() } else { format!("{}.{run}", self.name) }
    }

    /// Spawns `cmd` (the previous run must be stopped) and waits up to `timeout` for `ready`; an error with the
    /// run's logs when it exits first or is not ready in time.
    pub fn launch(&mut self, cmd: Command, timeout: Duration, ready: impl Fn(&mut Proc) -> bool) -> Result<()> {
        let name = self.log_name(self.runs);
        self.runs += 1;
        let mut proc = Proc::spawn(cmd, self.dir.path(), &name)?;
        wait_until(timeout, || ready(&mut proc) || !proc.is_running());
        if !proc.is_running() || !ready(&mut proc) {
            let logs = proc.logs();
            drop(proc);
            bail!("{} on port {} did not start\n{logs}", self.name, self.port);
        }
        self.proc = Some(proc);
        Ok(())
    }

    /// Stops the process by PID (SIGTERM, then SIGKILL); the port then refuses connections until the next launch.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut proc) = self.proc.take() {
            proc.stop()?;
        }
        Ok(())
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.proc.as_mut().is_some_and(|p| p.is_running())
    }

    /// The process's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// 127.0.0.1 and the port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The service's own directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the directory.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.join(rel)
    }

    /// stderr of every run so far, oldest first, for assertion messages.
    pub fn logs(&self) -> String {
        (0..self.runs)
            .map(|run| std::fs::read_to_string(self.join(format!("{}.stderr", self.log_name(run)))).unwrap_or_default())
            .collect()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::port_accepts;

    fn listener(svc: &Service) -> Command {
        let mut cmd = Command::new("/usr/bin/python3");
        let script = format!(
            "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',{}))\ns.listen()\n\
             print('up',file=sys.stderr,flush=True)\ntime.sleep(1000)",
            svc.port()
        );
        cmd.arg("-c").arg(script);
        cmd
    }

    #[test]
    fn a_service_starts_stops_by_pid_and_restarts_on_its_port() {
        let mut svc = Service::new("svc").unwrap();
        let cmd = listener(&svc);
        svc.launch(cmd, Duration::from_secs(20), |p| p.stderr().contains("up")).unwrap();
        assert!(svc.is_running() && port_accepts(svc.port()));
        let first = svc.pid().unwrap();
        svc.stop().unwrap();
        assert!(!svc.is_running() && svc.pid().is_none());
        let cmd = listener(&svc);
        svc.launch(cmd, Duration::from_secs(20), |p| p.stderr().contains("up")).unwrap();
        assert_ne!(svc.pid().unwrap(), first);
        assert_eq!(svc.logs(), "up\nup\n", "both runs' logs, in order");
        assert!(svc.join("svc.1.stderr").is_file());
    }

    #[test]
    fn a_service_that_exits_at_once_is_an_error_with_its_log() {
        let mut svc = Service::new("svc").unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg("echo broken config >&2; exit 1");
        let err = svc.launch(cmd, Duration::from_secs(20), |_| false).unwrap_err().to_string();
        assert!(err.contains("did not start") && err.contains("broken config"), "{err}");
        assert!(!svc.is_running());
    }
}
