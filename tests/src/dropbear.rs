//! A real dropbear SSH server as a test host (Debian `dropbear-bin`): its own directory and ed25519 host key
//! (`dropbearkey`), listening on 127.0.0.1 at a free port in the foreground (`-F -E`), stopped by PID on drop.
//!
//! dropbear reads each user's `~/.ssh/authorized_keys` and accepts only login shells listed in /etc/shells, so tests
//! log in as a [`LocalUser`](crate::LocalUser) with its password and /bin/sh. Remote forwarding (`tcpip-forward`)
//! is on, as dropbear's default is (`-j`/`-k` would turn it off).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::net::port_accepts;
use crate::service::Service;

/// The dropbear server binary.
pub const DROPBEAR: &str = "/usr/sbin/dropbear";
const DROPBEARKEY: &str = "/usr/bin/dropbearkey";
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A running dropbear server for one test host.
#[derive(Debug)]
pub struct Dropbear {
    svc: Service,
    fingerprint: String,
}

impl Dropbear {
    /// Generates a host key in a fresh directory and starts dropbear on 127.0.0.1 at a free port; returns once it
    /// accepts connections.
    pub fn start() -> Result<Self> {
        for bin in [DROPBEAR, DROPBEARKEY] {
            if !Path::new(bin).is_file() {
                bail!("{bin} is missing: install dropbear-bin (scripts/test.sh does)");
            }
        }
        let svc = Service::new("dropbear")?;
        let out = Command::new(DROPBEARKEY)
            .args(["-t", "ed25519", "-f"])
            .arg(svc.join("host_ed25519"))
            .output()
            .context("running dropbearkey")?;
        if !out.status.success() {
            bail!("dropbearkey failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        // "Fingerprint: SHA256:..." (dropbear 2022.83 prints it after the public key).
        let text = String::from_utf8_lossy(&out.stdout);
        let fingerprint = text
            .split_whitespace()
            .find(|w| w.starts_with("SHA256:"))
            .map(str::to_owned)
            .with_context(|| format!("no SHA256 fingerprint in dropbearkey's output {text:?}"))?;
        let mut d = Self { svc, fingerprint };
        d.launch()?;
        Ok(d)
    }

    fn launch(&mut self) -> Result<()> {
        let mut cmd = Command::new(DROPBEAR);
        cmd.args(["-F", "-E", "-p", &format!("127.0.0.1:{}", self.svc.port()), "-r"])
            .arg(self.svc.join("host_ed25519"))
            .arg("-P")
            .arg(self.svc.join("dropbear.pid"));
        let port = self.svc.port();
        // "Not backgrounding" follows the listen; the connect makes sure (dropbear logs it as an early exit).
        self.svc.launch(cmd, READY_TIMEOUT, |p| p.stderr().contains("Not backgrounding") && port_accepts(port))
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.svc.port()
    }

    /// 127.0.0.1 and the port.
    pub fn addr(&self) -> SocketAddr {
        self.svc.addr()
    }

    /// The server's own directory (host key, pid file, logs).
    pub fn dir(&self) -> &Path {
        self.svc.dir()
    }

    /// The pid file dropbear writes.
    pub fn pid_file(&self) -> PathBuf {
        self.svc.join("dropbear.pid")
    }

    /// The host key's fingerprint, `SHA256:...`, as dropbearkey printed it.
    pub fn host_key_fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// dropbear's log so far, for assertion messages.
    pub fn logs(&self) -> String {
        self.svc.logs()
    }
}
