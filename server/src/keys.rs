//! Key material the server owns: its SSH host key, and the credentials minted for each new agent.
//!
//! Every file written here is created with mode 0600 before any byte of key material goes into it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use vigil_schema::secret::AgentSecret;
use zeroize::Zeroizing;

/// File name of the server's host key inside the data directory.
pub const HOST_KEY_FILE: &str = "host_key";

/// Why key material could not be read, made or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not an OpenSSH private key: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("the system random source failed: {0}")]
    Random(String),
    #[error("could not encode a key: {0}")]
    Encode(String),
}

fn random_bytes<const N: usize>() -> Result<Zeroizing<[u8; N]>, KeyError> {
    let mut b = Zeroizing::new([0u8; N]);
    getrandom::fill(b.as_mut()).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(b)
}

/// A fresh ed25519 key.
pub fn generate_ed25519() -> Result<PrivateKey, KeyError> {
    let seed = random_bytes::<32>()?;
    Ok(PrivateKey::from(Ed25519Keypair::from_seed(&seed)))
}

/// The `SHA256:...` fingerprint OpenSSH prints for a public key.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Writes `contents` to `path`, created 0600 (the file is replaced atomically through a temporary sibling).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), KeyError> {
    let io = |source| KeyError::Io { path: path.to_owned(), source };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Creates `dir` (and parents) with mode 0700 when missing.
pub fn ensure_private_dir(dir: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| KeyError::Io { path: dir.to_owned(), source })
}

/// The server's SSH host key: loaded from the data directory, generated there on first start.
pub fn load_or_create_host_key(data_dir: &Path) -> Result<PrivateKey, KeyError> {
    let path = data_dir.join(HOST_KEY_FILE);
    if path.exists() {
        return load_private_key(&path);
    }
    ensure_private_dir(data_dir)?;
    let key = generate_ed25519()?;
    let pem = key.to_openssh(LineEnding::LF).map_err(|e| KeyError::Encode(e.to_string()))?;
    write_private(&path, pem.as_bytes())?;
    Ok(key)
}

/// The host key's fingerprint without generating one: what bootstrap pins in agent configs.
pub fn host_key_fingerprint(data_dir: &Path) -> Result<String, KeyError> {
    Ok(fingerprint(load_or_create_host_key(data_dir)?.public_key()))
}

/// Reads an OpenSSH private key file.
pub fn load_private_key(path: &Path) -> Result<PrivateKey, KeyError> {
    let text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.to_owned(), source })?);
    PrivateKey::from_openssh(text.as_bytes())
        .map_err(|e| KeyError::Parse { path: path.to_owned(), message: e.to_string() })
}

/// Everything minted for one new agent. The private half goes to the host only; the server keeps the public key
/// and the envelope secret.
pub struct AgentCredentials {
    pub agent_id: String,
    pub private_key_openssh: Zeroizing<String>,
    pub public_key_openssh: String,
    pub secret: AgentSecret,
}

impl std::fmt::Debug for AgentCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCredentials")
            .field("agent_id", &self.agent_id)
            .field("public_key_openssh", &self.public_key_openssh)
            .finish_non_exhaustive()
    }
}

impl AgentCredentials {
    /// Mints a fresh id, ed25519 key pair and envelope secret for `host`.
    pub fn mint(host: &str) -> Result<Self, KeyError> {
        let key = generate_ed25519()?;
        let suffix = random_bytes::<6>()?;
        let prefix: String = host.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(40).collect();
        let agent_id = format!("{prefix}-{}", vigil_schema::to_hex(suffix.as_ref()));
        let private_key_openssh = key.to_openssh(LineEnding::LF).map_err(|e| KeyError::Encode(e.to_string()))?;
        let public_key_openssh = key.public_key().to_openssh().map_err(|e| KeyError::Encode(e.to_string()))?;
        let secret = AgentSecret::generate().map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self { agent_id, private_key_openssh, public_key_openssh, secret })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn host_key_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let a = host_key_fingerprint(&data).unwrap();
        let b = host_key_fingerprint(&data).unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with("SHA256:"));
        let mode = std::fs::metadata(data.join(HOST_KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn minted_credentials_are_fresh_and_redacted() {
        let a = AgentCredentials::mint("web-01").unwrap();
        let b = AgentCredentials::mint("web-01").unwrap();
        assert_ne!(a.agent_id, b.agent_id);
        assert!(a.agent_id.starts_with("web-01-"));
        assert!(a.public_key_openssh.starts_with("ssh-ed25519 "));
        let dbg = format!("{a:?}");
        assert!(!dbg.contains("PRIVATE"), "{dbg}");
        assert!(!dbg.contains(&a.secret.to_hex()));
        let parsed = PrivateKey::from_openssh(a.private_key_openssh.as_bytes()).unwrap();
        assert_eq!(parsed.public_key().to_openssh().unwrap(), a.public_key_openssh);
    }
}
