//! Key material: the per-agent envelope secret and the keys derived from it.
//!
//! These types never print their bytes (`Debug` is redacted), are not `Serialize`, and wipe themselves on drop.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of an agent's envelope secret in bytes.
pub const SECRET_LEN: usize = 32;

/// The 32-byte secret unique to each agent, from which its encryption and MAC keys are derived.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct AgentSecret([u8; SECRET_LEN]);

/// Why a secret could not be read from text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("a secret must be {SECRET_LEN} bytes written as {} hex digits", SECRET_LEN * 2)]
    BadLength,
    #[error("a secret must be written in hex digits")]
    NotHex,
    #[error("the system random source failed: {0}")]
    Random(getrandom::Error),
}

impl AgentSecret {
    /// Wraps raw bytes.
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        Self(bytes)
    }

    /// A fresh secret from the operating system's random source.
    pub fn generate() -> Result<Self, SecretError> {
        let mut bytes = [0u8; SECRET_LEN];
        getrandom::fill(&mut bytes).map_err(SecretError::Random)?;
        Ok(Self(bytes))
    }

    /// Parses the hex form written in agent.toml and the server's key store.
    pub fn from_hex(text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        if text.len() != SECRET_LEN * 2 {
            return Err(SecretError::BadLength);
        }
        let mut bytes = [0u8; SECRET_LEN];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| SecretError::NotHex)?;
        Ok(Self(bytes))
    }

    /// The hex form, for writing into a 0600 file. Callers must not log it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Derives the separate encryption and MAC keys (HKDF-Expand style, one HMAC-SHA256 block per label).
    pub fn derive_keys(&self) -> EnvelopeKeys {
        EnvelopeKeys {
            enc: self.expand(b"vigil envelope v1 aes-256-cbc"),
            mac: self.expand(b"vigil envelope v1 hmac-sha256"),
        }
    }

    fn expand(&self, label: &[u8]) -> [u8; 32] {
        let mut mac = hmac_sha256(&self.0);
        mac.update(label);
        mac.update(&[1u8]);
        let out = mac.finalize().into_bytes();
        let mut key = [0u8; 32];
        key.copy_from_slice(&out);
        key
    }
}

/// HMAC-SHA256 keyed with a 32-byte key. HMAC pads a key shorter than the hash's 64-byte block with zeros, so
/// keying with the padded block is the same MAC and uses the fixed-size constructor, which cannot fail.
pub(crate) fn hmac_sha256(key: &[u8; 32]) -> Hmac<Sha256> {
    let mut block = [0u8; 64];
    block[..32].copy_from_slice(key);
    let mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
    block.zeroize();
    mac
}

impl fmt::Debug for AgentSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentSecret(<redacted>)")
    }
}

/// The two keys an envelope uses, derived from an [`AgentSecret`].
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct EnvelopeKeys {
    pub(crate) enc: [u8; 32],
    pub(crate) mac: [u8; 32],
}

impl fmt::Debug for EnvelopeKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnvelopeKeys(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = AgentSecret::from_bytes([0xab; 32]);
        let printed = format!("{s:?} {:?}", s.derive_keys());
        assert!(!printed.contains("ab"), "{printed}");
        assert!(!printed.contains("171"), "{printed}");
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let s = AgentSecret::generate().unwrap();
        assert!(AgentSecret::from_hex(&s.to_hex()).unwrap() == s);
        assert_eq!(AgentSecret::from_hex("abcd"), Err(SecretError::BadLength));
        assert_eq!(AgentSecret::from_hex(&"zz".repeat(32)), Err(SecretError::NotHex));
    }

    #[test]
    fn padded_key_is_the_same_mac_as_the_short_key() {
        let key = [0x42u8; 32];
        let mut padded = hmac_sha256(&key);
        let mut short = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
        padded.update(b"label");
        short.update(b"label");
        assert_eq!(padded.finalize().into_bytes(), short.finalize().into_bytes());
    }

    #[test]
    fn keys_are_distinct() {
        let k = AgentSecret::from_bytes([7; 32]).derive_keys();
        assert_ne!(k.enc, k.mac);
        assert_ne!(k.enc, [7; 32]);
    }
}
