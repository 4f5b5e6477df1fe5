//! Files the collectors read, made by tests: glibc utmp records.

use std::path::Path;

use anyhow::{Context, Result};

/// One glibc `struct utmp` record (the layout's one home is `vigil_sys::utmp`). Type 7 is a user session.
pub use vigil_sys::utmp::record as utmp_record;

/// A utmp file: a boot record, two sessions (`user1` remote, `bob` on a console), a dead process.
pub fn write_utmp(path: &Path, user1: &str) -> Result<()> {
    let mut bytes = utmp_record(2, "reboot", "~", "6.1.0", 1_700_000_000);
    bytes.extend(utmp_record(7, user1, "pts/0", "203.0.113.7", 1_700_000_100));
    bytes.extend(utmp_record(7, "bob", "tty2", "", 1_700_000_200));
    bytes.extend(utmp_record(8, "gone", "pts/3", "198.51.100.1", 1_700_000_300));
    std::fs::write(path, bytes).context("writing the utmp fixture")
}

/// The machine's own session record and auth log, which bootstrapped agents read from their default paths. This
/// container has neither: [`SystemLogs::install`] creates them (a session in utmp, an empty auth log that
/// [`SystemLogs::failed_login`] appends to) and drop removes what it created.
#[derive(Debug)]
pub struct SystemLogs {
    created: Vec<std::path::PathBuf>,
}

impl SystemLogs {
    pub const UTMP: &str = "/var/run/utmp";
    pub const AUTH: &str = "/var/log/auth.log";

    pub fn install() -> Result<Self> {
        let mut created = Vec::new();
        if !Path::new(Self::UTMP).exists() {
            write_utmp(Path::new(Self::UTMP), "alice")?;
            created.push(Self::UTMP.into());
        }
        if !Path::new(Self::AUTH).exists() {
            std::fs::write(Self::AUTH, "")?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(Self::AUTH, std::fs::Permissions::from_mode(0o644))?;
            created.push(Self::AUTH.into());
        }
        Ok(Self { created })
    }

    /// Appends one failed SSH login to the auth log.
    pub fn failed_login(&self) -> Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(Self::AUTH)?;
        writeln!(
            f,
            "Nov 26 09:14:01 vm sshd[4242]: Failed password for invalid user mallory from 198.51.100.23 port 50000 ssh2"
        )?;
        Ok(())
    }
}

impl Drop for SystemLogs {
    fn drop(&mut self) {
        for p in &self.created {
            let _ = std::fs::remove_file(p);
        }
    }
}
