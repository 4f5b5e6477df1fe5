//! vigil's own known-hosts file: one `[addr]:port SHA256:...` line per host, 0600 in the data directory, and the
//! comparison of a host's key with a pinned or recorded fingerprint. With PostgreSQL (several nodes), the keys are
//! also kept in the database's `known_hosts` table: what one node or a bootstrap accepted, every node knows (read
//! through, cached in the file).
//!
//! russh's OpenSSH-format helpers (`russh::keys::known_hosts`) do not fit: they append without a private mode and
//! store whole keys, while clients.xml pins fingerprints (`host_key="SHA256:..."`), which is what this file records.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::Host;

/// vigil's known-hosts file.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    path: PathBuf,
    lock: Arc<Mutex<()>>,
    /// The shared database (PostgreSQL): connected on first use.
    shared: Option<Arc<Shared>>,
}

/// The database's copy of the known hosts, for nodes sharing a PostgreSQL database.
#[derive(Debug)]
struct Shared {
    server: crate::config::ServerSettings,
    store: Mutex<Option<crate::store::Store>>,
}

impl Shared {
    fn with<R>(&self, f: impl FnOnce(&mut crate::store::Store) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let mut guard = self.store.lock().map_err(|_| StoreError::BadValue("known-hosts lock poisoned".into()))?;
        if guard.is_none() {
            *guard = Some(crate::store::Store::open_server(&self.server)?);
        }
        match guard.as_mut() {
            Some(store) => f(store),
            None => Err(StoreError::BadValue("no database".into())),
        }
    }
}

use crate::store::StoreError;

impl KnownHosts {
    pub fn new(data_dir: &Path) -> Self {
        Self { path: data_dir.join("known_hosts"), lock: Arc::new(Mutex::new(())), shared: None }
    }

    /// The known hosts of the server `[server]` describes: its data directory's file, and the database's table when
    /// the database is PostgreSQL.
    pub fn for_server(server: &crate::config::ServerSettings) -> Self {
        let mut k = Self::new(&server.data_dir);
        if server.postgres.is_some() {
            k.shared = Some(Arc::new(Shared { server: server.clone(), store: Mutex::new(None) }));
        }
        k
    }

    fn key(host: &Host) -> String {
        format!("[{}]:{}", host.ip, host.port)
    }

    /// The recorded fingerprint for a host: the file's, else the database's (then cached in the file).
    pub fn get(&self, host: &Host) -> Option<String> {
        let key = Self::key(host);
        let local = std::fs::read_to_string(&self.path).ok().and_then(|text| {
            text.lines().find_map(|l| {
                let (k, fp) = l.split_once(' ')?;
                (k == key).then(|| fp.trim().to_owned())
            })
        });
        if local.is_some() {
            return local;
        }
        let found = self.shared.as_ref()?.with(|s| s.known_host(&key));
        match found {
            Ok(Some(fp)) => {
                if let Err(e) = self.write_line(&key, &fp) {
                    tracing::warn!(error = %e, "could not cache a known host key");
                }
                Some(fp)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the shared known host keys");
                None
            }
        }
    }

    /// Records (or replaces) a host's fingerprint, in the file and, with PostgreSQL, for every node.
    pub fn record(&self, host: &Host, fingerprint: &str) -> std::io::Result<()> {
        let key = Self::key(host);
        if let Some(shared) = &self.shared {
            shared.with(|s| s.set_known_host(&key, fingerprint)).map_err(std::io::Error::other)?;
        }
        self.write_line(&key, fingerprint)
    }

    /// Sets `key`'s line of the file.
    fn write_line(&self, key: &str, fingerprint: &str) -> std::io::Result<()> {
        let _guard = self.lock.lock().map_err(|_| std::io::Error::other("known-hosts lock poisoned"))?;
        let old = std::fs::read_to_string(&self.path).unwrap_or_default();
        let mut lines: Vec<String> =
            old.lines().filter(|l| !l.starts_with(&format!("{key} "))).map(String::from).collect();
        lines.push(format!("{key} {fingerprint}"));
        let text = lines.join("\n") + "\n";
        vigil_sys::fs::write_private(&self.path, text.as_bytes())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether two `SHA256:...` fingerprints name the same key: OpenSSH prints them unpadded, but one copied from
/// elsewhere may carry base64 `=` padding.
pub fn same_fingerprint(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('=') == b.trim().trim_end_matches('=')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_does_not_matter_but_every_other_character_does() {
        let fp = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s";
        assert!(same_fingerprint(fp, &format!("{fp}=")));
        assert!(same_fingerprint(&format!("{fp}="), fp));
        assert!(same_fingerprint(fp, fp));
        assert!(!same_fingerprint(fp, "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2t"));
        assert!(!same_fingerprint(fp, "SHA256:"));
    }
}
