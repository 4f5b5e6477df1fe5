//! Throwaway local user accounts (useradd, chpasswd, userdel; the tests run as root) for password logins and
//! installs as a non-root user. Removed on drop, after their leftover processes are killed by PID.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// useradd and userdel lock /etc/passwd; one at a time within this process, with retries against other processes.
static ACCOUNTS: Mutex<()> = Mutex::new(());
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A local account with a home directory and a random password.
#[derive(Debug)]
pub struct LocalUser {
    name: String,
    password: String,
    uid: u32,
    home: PathBuf,
}

impl LocalUser {
    /// Creates `vt<pid>x<n>` with a home under /home, shell /bin/sh and a fresh random password.
    pub fn create() -> Result<Self> {
        let name = format!("vt{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let password = random_password()?;
        {
            let _guard = ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner());
            run_retrying(Command::new("useradd").args(["-m", "-s", "/bin/sh", &name]), "useradd")?;
        }
        let user = Self { uid: 0, home: PathBuf::from("/home").join(&name), name, password };
        let mut child = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running chpasswd")?;
        if let Some(mut stdin) = child.stdin.take() {
            writeln!(stdin, "{}:{}", user.name, user.password).context("writing to chpasswd")?;
        }
        let out = child.wait_with_output().context("waiting for chpasswd")?;
        if !out.status.success() {
            bail!("chpasswd for {} failed: {}", user.name, String::from_utf8_lossy(&out.stderr));
        }
        let id = Command::new("id").args(["-u", &user.name]).output().context("running id -u")?;
        let mut user = user;
        user.uid = String::from_utf8_lossy(&id.stdout).trim().parse().context("parsing id -u")?;
        if user.uid == 0 {
            bail!("{} was created with uid 0", user.name);
        }
        Ok(user)
    }

    /// The login name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The account's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The numeric user id.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Makes `shell` the account's login shell (`usermod -s`); sshd runs it as `shell -c COMMAND`.
    pub fn set_login_shell(&self, shell: &Path) -> Result<()> {
        let _guard = ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner());
        let shell = shell.to_str().context("a login shell path must be UTF-8")?;
        run_retrying(Command::new("usermod").args(["-s", shell, &self.name]), "usermod")
    }

    /// PIDs of processes running as this user.
    pub fn pids(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let status = std::fs::read_to_string(e.path().join("status")).ok()?;
                let uid_line = status.lines().find(|l| l.starts_with("Uid:"))?;
                let real: u32 = uid_line.split_whitespace().nth(1)?.parse().ok()?;
                (real == self.uid).then_some(pid)
            })
            .collect()
    }
}

impl Drop for LocalUser {
    fn drop(&mut self) {
        // uid 0 means "not known yet" (creation failed half way): kill nothing, still remove the account.
        for pid in if self.uid == 0 { Vec::new() } else { self.pids() } {
            let _ = crate::process::signal_pid(pid, crate::process::SIGKILL);
        }
        let _guard = ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner());
        let _ = run_retrying(Command::new("userdel").args(["-r", "-f", &self.name]), "userdel");
    }
}

fn run_retrying(cmd: &mut Command, what: &str) -> Result<()> {
    let mut last = String::new();
    for attempt in 0..20 {
        let out = cmd.output().with_context(|| format!("running {what}"))?;
        if out.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        // Exit 10 (useradd/userdel): cannot lock or update the password file; another process holds it.
        if out.status.code() != Some(10) && !last.contains("lock") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50 * (attempt + 1)));
    }
    bail!("{what} failed: {last}")
}

fn random_password() -> Result<String> {
    let mut bytes = [0u8; 12];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).context("reading /dev/urandom")?;
    Ok(format!("Vt-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_exists_until_dropped() {
        let user = LocalUser::create().unwrap();
        assert_ne!(user.uid(), 0);
        assert!(user.home().is_dir());
        let shadow = std::fs::read_to_string("/etc/shadow").unwrap();
        let line = shadow.lines().find(|l| l.starts_with(&format!("{}:", user.name()))).unwrap();
        assert!(line.split(':').nth(1).is_some_and(|h| h.starts_with('$')), "password not set");
        let (name, home) = (user.name().to_owned(), user.home().to_path_buf());
        drop(user);
        assert!(!std::fs::read_to_string("/etc/passwd").unwrap().contains(&format!("{name}:")));
        assert!(!home.exists());
    }
}
