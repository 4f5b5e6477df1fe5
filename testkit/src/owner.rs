//! Who runs a cluster: this process's own user, or, when this process is root (which `initdb` and `postgres`
//! refuse), the `postgres` account that Debian's package creates; and giving that user the files it must own.

use std::io;
use std::path::Path;
use std::process::Command;

/// The account a cluster's programs run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// This process's user (not root).
    Me,
    /// Another account (`postgres`), switched to in the child before exec.
    Account { uid: u32, gid: u32 },
}

impl Owner {
    /// `Me` unless this process is root; then the `postgres` account, or an error when there is none.
    pub(crate) fn for_this_process() -> io::Result<Owner> {
        if effective_uid() != 0 {
            return Ok(Owner::Me);
        }
        let passwd = std::fs::read_to_string("/etc/passwd")?;
        account(&passwd, "postgres").ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "running as root, and PostgreSQL refuses root: there is no `postgres` account to run it as \
                 (Debian's `postgresql` package creates it)",
            )
        })
    }

    /// Makes `cmd` run as this owner (std drops root's supplementary groups with the uid).
    pub(crate) fn apply(self, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        if let Owner::Account { uid, gid } = self {
            cmd.uid(uid).gid(gid);
        }
    }

    /// Gives `path` to this owner.
    pub(crate) fn give(self, path: &Path) -> io::Result<()> {
        match self {
            Owner::Me => Ok(()),
            Owner::Account { uid, gid } => std::os::unix::fs::chown(path, Some(uid), Some(gid)),
        }
    }
}

/// The uid and gid of `name` in an /etc/passwd text.
fn account(passwd: &str, name: &str) -> Option<Owner> {
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let (_password, uid, gid) = (f.next()?, f.next()?.parse().ok()?, f.next()?.parse().ok()?);
        Some(Owner::Account { uid, gid })
    })
}

#[allow(unsafe_code)]
fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory of ours and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_is_read_from_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\npostgresx:x:5:5::/:/bin/false\npostgres:x:101:104::/var/lib/postgresql:/bin/bash\n";
        assert_eq!(account(passwd, "postgres"), Some(Owner::Account { uid: 101, gid: 104 }));
        assert_eq!(account(passwd, "nobody"), None);
        assert_eq!(account("postgres:x:notanumber:1::/:/bin/sh", "postgres"), None);
    }
}
