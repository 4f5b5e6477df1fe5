//! A real OpenSSH `sshd` as a test host: its own directory, config, ed25519 host key, pid file and authorized keys,
//! listening on 127.0.0.1 at a free port, stopped by PID on drop.
//!
//! Authorized keys live in `<dir>/authorized_keys/<user>` (`AuthorizedKeysFile` with `%u`), so a test authorizes a
//! key for root or a [`LocalUser`](crate::LocalUser) without touching anyone's home. `StrictModes no` lets sshd use
//! files under /tmp; `UsePAM no` keeps logins independent of the machine's PAM setup.
//!
//! Stopping sshd ends the listener only: sessions call setsid(), so a process a login left running (an agent started
//! detached by `vigil bootstrap`) outlives it. Tests remove those with `vigil uninstall` or
//! [`kill_processes_under`](crate::kill_processes_under) on the install directory.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::paths::set_mode;
use crate::service::Service;

/// The sshd binary, by absolute path: sshd re-executes itself and refuses a relative one.
pub const SSHD: &str = "/usr/sbin/sshd";
const SSH: &str = "/usr/bin/ssh";
const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// sshd's `PermitRootLogin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootLogin {
    Yes,
    ProhibitPassword,
    No,
}

impl RootLogin {
    fn as_str(self) -> &'static str {
        match self {
            RootLogin::Yes => "yes",
            RootLogin::ProhibitPassword => "prohibit-password",
            RootLogin::No => "no",
        }
    }
}

/// How to configure a test sshd.
#[derive(Debug, Clone)]
pub struct SshdOpts {
    /// `PasswordAuthentication yes` when true.
    pub password_auth: bool,
    /// `PermitRootLogin`.
    pub root_login: RootLogin,
    /// Extra lines appended verbatim to sshd_config.
    pub extra_config: Vec<String>,
}

impl Default for SshdOpts {
    /// Keys only, root allowed with a key.
    fn default() -> Self {
        Self { password_auth: false, root_login: RootLogin::ProhibitPassword, extra_config: Vec::new() }
    }
}

impl SshdOpts {
    /// Password logins on (root included), keys still accepted.
    pub fn with_passwords() -> Self {
        Self { password_auth: true, root_login: RootLogin::Yes, extra_config: Vec::new() }
    }
}

/// An ed25519 key pair for a client, written without a passphrase.
#[derive(Debug, Clone)]
pub struct ClientKey {
    /// The private key file (mode 0600).
    pub private: PathBuf,
    /// The public key line, `ssh-ed25519 AAAA... comment`.
    pub public: String,
}

impl ClientKey {
    /// Generates `<dir>/<name>` and `<dir>/<name>.pub` with ssh-keygen.
    pub fn generate(dir: &Path, name: &str) -> Result<Self> {
        let private = dir.join(name);
        keygen(&private, name)?;
        let public = read_trimmed(&private.with_extension("pub"))?;
        Ok(Self { private, public })
    }

    /// The key's "SHA256:..." fingerprint.
    pub fn fingerprint(&self) -> Result<String> {
        fingerprint(&self.private.with_extension("pub"))
    }
}

/// A running OpenSSH server for one test host.
#[derive(Debug)]
pub struct Sshd {
    opts: SshdOpts,
    svc: Service,
}

impl Sshd {
    /// Writes a config and host key into a fresh directory and starts sshd on 127.0.0.1 at a free port; returns once
    /// it is listening.
    pub fn start(opts: SshdOpts) -> Result<Self> {
        std::fs::create_dir_all("/run/sshd").context("mkdir -p /run/sshd (sshd's privilege separation directory)")?;
        if !Path::new(SSHD).is_file() {
            bail!("{SSHD} is missing: install openssh-server (scripts/test.sh does)");
        }
        let svc = Service::new("sshd")?;
        std::fs::create_dir(svc.join("authorized_keys")).context("creating authorized_keys/")?;
        set_mode(&svc.join("authorized_keys"), 0o755)?;
        keygen(&svc.join("host_ed25519"), "vigil-test-host")?;
        let mut sshd = Self { opts, svc };
        sshd.write_config()?;
        sshd.launch()?;
        Ok(sshd)
    }

    fn config_path(&self) -> PathBuf {
        self.svc.join("sshd_config")
    }

    fn host_key_path(&self) -> PathBuf {
        self.svc.join("host_ed25519")
    }

    fn write_config(&self) -> Result<()> {
        let d = self.svc.dir().display();
        let mut conf = String::new();
        let _ = writeln!(conf, "ListenAddress 127.0.0.1");
        let _ = writeln!(conf, "Port {}", self.svc.port());
        let _ = writeln!(conf, "HostKey {d}/host_ed25519");
        let _ = writeln!(conf, "PidFile {d}/sshd.pid");
        let _ = writeln!(conf, "AuthorizedKeysFile {d}/authorized_keys/%u");
        let _ = writeln!(conf, "StrictModes no");
        let _ = writeln!(conf, "UsePAM no");
        let _ = writeln!(conf, "PermitRootLogin {}", self.opts.root_login.as_str());
        let _ = writeln!(conf, "PubkeyAuthentication yes");
        let _ = writeln!(conf, "PasswordAuthentication {}", if self.opts.password_auth { "yes" } else { "no" });
        let _ = writeln!(conf, "KbdInteractiveAuthentication no");
        let _ = writeln!(conf, "PermitEmptyPasswords no");
        // sshd keeps the first value of a keyword: a test's own AllowTcpForwarding wins over the default here.
        if !self.opts.extra_config.iter().any(|l| l.trim_start().starts_with("AllowTcpForwarding")) {
            let _ = writeln!(conf, "AllowTcpForwarding yes");
        }
        let _ = writeln!(conf, "X11Forwarding no");
        let _ = writeln!(conf, "PrintMotd no");
        let _ = writeln!(conf, "MaxStartups 100:30:200");
        let _ = writeln!(conf, "MaxSessions 50");
        let _ = writeln!(conf, "LogLevel VERBOSE");
        let _ = writeln!(conf, "Subsystem sftp internal-sftp");
        for line in &self.opts.extra_config {
            let _ = writeln!(conf, "{line}");
        }
        std::fs::write(self.config_path(), conf).context("writing sshd_config")
    }

    fn launch(&mut self) -> Result<()> {
        let mut cmd = Command::new(SSHD);
        cmd.arg("-D").arg("-e").arg("-f").arg(self.config_path());
        let ready = format!("Server listening on 127.0.0.1 port {}", self.svc.port());
        self.svc.launch(cmd, READY_TIMEOUT, |p| p.stderr().contains(&ready))
    }

    /// Stops sshd (SIGTERM, then SIGKILL). Established sessions keep running; new connections are refused.
    pub fn stop(&mut self) -> Result<()> {
        self.svc.stop()
    }

    /// Starts sshd again on the same port with the same config and host key.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.launch()
    }

    /// Replaces the extra config lines and restarts sshd with them (same port and host key). Established sessions
    /// keep the old settings.
    pub fn reconfigure(&mut self, extra_config: Vec<String>) -> Result<()> {
        self.opts.extra_config = extra_config;
        self.stop()?;
        self.write_config()?;
        self.launch()
    }

    /// Replaces the host key with a fresh one and restarts: what a reinstalled host looks like to a client.
    pub fn regenerate_host_key(&mut self) -> Result<()> {
        self.stop()?;
        for path in [self.host_key_path(), self.host_key_path().with_extension("pub")] {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        keygen(&self.host_key_path(), "vigil-test-host")?;
        self.launch()
    }

    /// Whether the sshd process is running.
    pub fn is_running(&mut self) -> bool {
        self.svc.is_running()
    }

    /// The listening sshd's PID, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.svc.pid()
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.svc.port()
    }

    /// 127.0.0.1 and the port.
    pub fn addr(&self) -> SocketAddr {
        self.svc.addr()
    }

    /// The host's own directory (config, keys, logs).
    pub fn dir(&self) -> &Path {
        self.svc.dir()
    }

    /// The host key's fingerprint as clients print it: `SHA256:...`.
    pub fn host_key_fingerprint(&self) -> Result<String> {
        fingerprint(&self.host_key_path().with_extension("pub"))
    }

    /// The host's public key, `ssh-ed25519 AAAA...` (no comment).
    pub fn host_public_key(&self) -> Result<String> {
        let line = read_trimmed(&self.host_key_path().with_extension("pub"))?;
        Ok(line.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
    }

    /// A known_hosts line pinning this host: `[127.0.0.1]:PORT ssh-ed25519 AAAA...`.
    pub fn known_hosts_line(&self) -> Result<String> {
        Ok(format!("[127.0.0.1]:{} {}", self.port(), self.host_public_key()?))
    }

    /// Lets `key` log in as `user`.
    pub fn authorize(&self, user: &str, key: &ClientKey) -> Result<()> {
        let path = self.svc.join("authorized_keys").join(user);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(file, "{}", key.public).with_context(|| format!("writing {}", path.display()))?;
        set_mode(&path, 0o644)
    }

    /// The system `ssh` client, set up to log in as `user` with `key` and to trust only this host's key (pinned in
    /// a known_hosts file of its own). Append the remote command and run it.
    pub fn ssh(&self, user: &str, key: &ClientKey) -> Result<Command> {
        let mut cmd = self.ssh_base()?;
        cmd.args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "PasswordAuthentication=no", "-i"])
            .arg(&key.private)
            .arg(format!("{user}@127.0.0.1"));
        Ok(cmd)
    }

    /// The system `ssh` client logging in as `user` with `password` (handed over through SSH_ASKPASS, no key).
    pub fn ssh_with_password(&self, user: &str, password: &str) -> Result<Command> {
        let askpass = self.svc.join("askpass.sh");
        if !askpass.exists() {
            std::fs::write(&askpass, "#!/bin/sh\nprintf '%s\\n' \"$VIGIL_TEST_PASSWORD\"\n")
                .context("writing askpass.sh")?;
            set_mode(&askpass, 0o755)?;
        }
        let mut cmd = self.ssh_base()?;
        cmd.args(["-o", "BatchMode=no", "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password"])
            .args(["-o", "NumberOfPasswordPrompts=1"])
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", "none")
            .env("VIGIL_TEST_PASSWORD", password)
            .arg(format!("{user}@127.0.0.1"));
        Ok(cmd)
    }

    fn ssh_base(&self) -> Result<Command> {
        let known_hosts = self.svc.join("known_hosts");
        std::fs::write(&known_hosts, format!("{}\n", self.known_hosts_line()?)).context("writing known_hosts")?;
        let mut cmd = Command::new(SSH);
        cmd.args(["-F", "/dev/null", "-p", &self.port().to_string()])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes"])
            .args(["-o", "IdentityAgent=none", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
            .stdin(std::process::Stdio::null());
        Ok(cmd)
    }

    /// sshd's log so far (all runs), for assertion messages.
    pub fn logs(&self) -> String {
        self.svc.logs()
    }
}

fn keygen(path: &Path, comment: &str) -> Result<()> {
    let out = Command::new(SSH_KEYGEN)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .output()
        .with_context(|| format!("running {SSH_KEYGEN}: install openssh-client"))?;
    if !out.status.success() {
        bail!("ssh-keygen for {} failed: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
    set_mode(path, 0o600)
}

fn fingerprint(public: &Path) -> Result<String> {
    let out = Command::new(SSH_KEYGEN).arg("-lf").arg(public).output().context("running ssh-keygen -lf")?;
    if !out.status.success() {
        bail!("ssh-keygen -lf {} failed: {}", public.display(), String::from_utf8_lossy(&out.stderr));
    }
    // "256 SHA256:abc... comment (ED25519)"
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .map(str::to_owned)
        .with_context(|| format!("no SHA256 fingerprint in {text:?}"))
}

fn read_trimmed(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::TestDir;

    #[test]
    fn client_keys_are_private_and_fingerprinted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TestDir::new("keys").unwrap();
        let key = ClientKey::generate(dir.path(), "id").unwrap();
        assert!(key.public.starts_with("ssh-ed25519 "), "{}", key.public);
        assert_eq!(std::fs::metadata(&key.private).unwrap().permissions().mode() & 0o777, 0o600);
        let fp = key.fingerprint().unwrap();
        assert!(fp.starts_with("SHA256:") && fp.len() > 40, "{fp}");
    }

    #[test]
    fn root_login_values_are_sshd_keywords() {
        assert_eq!(RootLogin::ProhibitPassword.as_str(), "prohibit-password");
        assert_eq!(RootLogin::Yes.as_str(), "yes");
        assert_eq!(RootLogin::No.as_str(), "no");
    }
}
