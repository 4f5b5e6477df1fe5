//! The server's own SSH host key (loaded, or created on first use) and the private-file helpers key material is
//! written with. An agent's credentials are minted in [`crate::bootstrap::credentials`].
//!
//! Every file written here is created with mode 0600 before any byte of key material goes into it.

use std::path::{Path, PathBuf};

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use zeroize::Zeroizing;

/// File name of the server's host key inside the data directory.
pub const HOST_KEY_FILE: &str = "host_key";

/// Why key material could not be read, made or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path}: not an OpenSSH private key: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("the system random source failed: {0}")]
    Random(String),
    #[error("could not encode a key: {0}")]
    Encode(String),
    /// The shared key of several nodes could not be read from or written to the database.
    #[error("the server key in the database: {0}")]
    Store(String),
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
    vigil_sys::fs::write_private(path, contents).map_err(|error| KeyError::Io { path: path.to_owned(), error })
}

/// Creates `dir` (and parents) with mode 0700, or tightens an existing one to 0700.
pub fn ensure_private_dir(dir: &Path) -> Result<(), KeyError> {
    vigil_sys::fs::private_dir(dir).map_err(|error| KeyError::Io { path: dir.to_owned(), error })
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

/// The host key's fingerprint, creating the key on first use (so a bootstrap before the first `vigil serve` pins the
/// key serve will load): what bootstrap pins in agent configs.
pub fn host_key_fingerprint(data_dir: &Path) -> Result<String, KeyError> {
    Ok(fingerprint(load_or_create_host_key(data_dir)?.public_key()))
}

/// The host key this server presents. With SQLite, the key file of `data_dir`. With PostgreSQL, the key every node
/// of the database presents (so agents that pinned it reach whichever node holds their host): the database's, or,
/// the first time, this node's own key offered to it (the first node to offer wins). The data dir's key file is
/// made the shared key, so `vigil fingerprint` and `vigil bootstrap` there agree with the serving nodes.
pub fn server_host_key(server: &crate::config::ServerSettings) -> Result<PrivateKey, KeyError> {
    let local = load_or_create_host_key(&server.data_dir)?;
    if server.postgres.is_none() {
        return Ok(local);
    }
    let store_err = |e: crate::store::StoreError| KeyError::Store(e.to_string());
    let mut store = crate::store::Store::open_server(server).map_err(store_err)?;
    let offer = Zeroizing::new(local.to_openssh(LineEnding::LF).map_err(|e| KeyError::Encode(e.to_string()))?);
    let shared = Zeroizing::new(store.shared_server_key(&offer).map_err(store_err)?);
    if shared.as_str() == offer.as_str() {
        return Ok(local);
    }
    let path = server.data_dir.join(HOST_KEY_FILE);
    let key = PrivateKey::from_openssh(shared.as_bytes())
        .map_err(|e| KeyError::Parse { path: "the database's server_key".into(), message: e.to_string() })?;
    write_private(&path, shared.as_bytes())?;
    Ok(key)
}

/// The fingerprint of [`server_host_key`].
pub fn server_fingerprint(server: &crate::config::ServerSettings) -> Result<String, KeyError> {
    Ok(fingerprint(server_host_key(server)?.public_key()))
}

/// Reads an OpenSSH private key file.
pub fn load_private_key(path: &Path) -> Result<PrivateKey, KeyError> {
    let text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|error| KeyError::Io { path: path.to_owned(), error })?);
    PrivateKey::from_openssh(text.as_bytes())
        .map_err(|e| KeyError::Parse { path: path.to_owned(), message: e.to_string() })
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
}
