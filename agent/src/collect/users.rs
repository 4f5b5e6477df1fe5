//! `users`: logged-in sessions (user, terminal, remote host, login time) read from utmp on Unix, and from the
//! Remote Desktop Services session API on Windows ([`wts`](super::wts)).
//!
//! `source` is the utmp path read (`None` when there is no utmp: containers), or `wts` on Windows. A Windows host
//! whose session API fails or lists no session at all (not even session 0, as under Wine) cannot serve the family:
//! [`collect`] says why instead of reporting an empty list.

use std::io::Read;
use std::path::{Path, PathBuf};

use vigil_schema::report::{Users, limits};

use super::{clean_text, utmp};
use vigil_sys::utmp::RECORD_LEN;

/// Where utmp is looked for when no path is configured.
pub const DEFAULT_PATHS: [&str; 2] = ["/var/run/utmp", "/run/utmp"];

/// Reads the sessions from the session API; `Err` says why the host cannot serve them.
#[cfg(windows)]
pub fn collect(_path: Option<&Path>) -> Result<Users, String> {
    super::wts::sessions().map(|sessions| Users { source: Some(super::wts::SOURCE.to_owned()), sessions })
}

/// Reads the sessions from `path`, or from the first of [`DEFAULT_PATHS`] that exists (never `Err`).
#[cfg(not(windows))]
pub fn collect(path: Option<&Path>) -> Result<Users, String> {
    Ok(collect_utmp(path))
}

/// The sessions of a utmp file (see [`collect`]); no utmp, or a platform without one, gives no source.
#[cfg_attr(windows, allow(dead_code))] // Windows asks the session API instead
fn collect_utmp(path: Option<&Path>) -> Users {
    if !cfg!(unix) {
        return Users::default();
    }
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => match DEFAULT_PATHS.iter().map(PathBuf::from).find(|p| p.exists()) {
            Some(p) => p,
            None => return Users::default(),
        },
    };
    // Read at most what MAX_ITEMS sessions plus as many other records can take.
    let cap = (2 * limits::MAX_ITEMS * RECORD_LEN) as u64;
    let mut bytes = Vec::new();
    match std::fs::File::open(&path).and_then(|f| f.take(cap).read_to_end(&mut bytes)) {
        Ok(_) => Users { source: Some(clean_text(&path.to_string_lossy())), sessions: utmp::parse(&bytes) },
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot read utmp");
            }
            Users::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_utmp_is_no_source() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(collect_utmp(Some(&dir.path().join("utmp"))), Users { source: None, sessions: vec![] });
    }

    #[test]
    fn glibc_fixture_file_gives_two_sessions() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/utmp-two-sessions");
        let u = collect_utmp(Some(&path));
        assert!(u.source.as_deref().is_some_and(|s| s.ends_with("utmp-two-sessions")));
        let got: Vec<_> = u
            .sessions
            .iter()
            .map(|s| (s.user.as_str(), s.terminal.as_str(), s.host.as_deref(), s.login_time))
            .collect();
        assert_eq!(got, [("alice", "pts/0", Some("203.0.113.7"), 1_700_000_100), ("bob", "tty2", None, 1_700_000_200)]);
    }

    #[test]
    fn default_paths_do_not_fail() {
        let u = collect(None).unwrap();
        if DEFAULT_PATHS.iter().all(|p| !Path::new(p).exists()) {
            assert_eq!(u, Users::default());
        }
    }

    #[cfg(unix)]
    #[test]
    fn written_utmp_is_read() {
        use vigil_sys::utmp::{USER_PROCESS, record};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("utmp");
        let mut bytes = record(USER_PROCESS, "carol", "pts/2", "192.0.2.1", 1_750_000_000);
        bytes.extend(record(8, "gone", "pts/3", "", 1_750_000_001));
        bytes.extend(record(USER_PROCESS, "dan", "tty1", "", 1_750_000_002));
        std::fs::write(&path, bytes).unwrap();
        let u = collect_utmp(Some(&path));
        assert_eq!(u.source.as_deref(), Some(path.to_str().unwrap()));
        let users: Vec<_> = u.sessions.iter().map(|s| (s.user.as_str(), s.host.as_deref(), s.login_time)).collect();
        assert_eq!(users, [("carol", Some("192.0.2.1"), 1_750_000_000), ("dan", None, 1_750_000_002)]);
    }
}
