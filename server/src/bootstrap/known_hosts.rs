//! vigil's own known-hosts file: one `[addr]:port SHA256:...` line per host, 0600 in the data directory, and the
//! comparison of a host's key with a pinned or recorded fingerprint.
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
}

impl KnownHosts {
    pub fn new(data_dir: &Path) -> Self {
        Self { path: data_dir.join("known_hosts"), lock: Arc::new(Mutex::new(())) }
    }

    fn key(host: &Host) -> String {
        format!("[{}]:{}", host.ip, host.port)
    }

    /// The recorded fingerprint for a host.
    pub fn get(&self, host: &Host) -> Option<String> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let key = Self::key(host);
        text.lines().find_map(|l| {
            let (k, fp) = l.split_once(' ')?;
            (k == key).then(|| fp.trim().to_owned())
        })
    }

    /// Records (or replaces) a host's fingerprint.
    pub fn record(&self, host: &Host, fingerprint: &str) -> std::io::Result<()> {
        let _guard = self.lock.lock().map_err(|_| std::io::Error::other("known-hosts lock poisoned"))?;
        let key = Self::key(host);
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
