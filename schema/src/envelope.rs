//! The sealed envelope every frame travels in.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! version u8 (=1) | id_len u8 | agent_id [id_len] | seq u64 | iv [16] | ciphertext [16*k, k>=1] | tag [32]
//! ```
//!
//! The ciphertext is AES-256-CBC with PKCS#7 padding under the derived encryption key; the tag is HMAC-SHA256 under
//! the separate MAC key over every byte before it (encrypt-then-MAC). [`open`] checks the tag in constant time before
//! it decrypts anything. The version, agent id and sequence number stay in clear so the server can pick the key
//! ([`peek`]) and discard replays without decrypting, and the tag binds them to the content.

use aes::Aes256;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use hmac::Mac;

use crate::secret::{EnvelopeKeys, hmac_sha256};

/// The only envelope version this build speaks.
pub const VERSION: u8 = 1;
/// Length of the CBC initialisation vector.
pub const IV_LEN: usize = 16;
/// Length of the HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;
/// Longest agent id an envelope can carry.
pub const MAX_AGENT_ID: usize = 64;
/// Default upper bound on a sealed envelope, equal to the frame limit.
pub const MAX_SEALED: usize = crate::frame::DEFAULT_MAX_FRAME;

const BLOCK: usize = 16;

type Enc = cbc::Encryptor<Aes256>;
type Dec = cbc::Decryptor<Aes256>;

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope truncated: {0} bytes is shorter than its header and tag")]
    Truncated(usize),
    #[error("envelope of {size} bytes exceeds the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("unknown envelope version {0}")]
    UnknownVersion(u8),
    #[error("agent id is empty, longer than {MAX_AGENT_ID} bytes, or not printable ASCII")]
    BadAgentId,
    #[error("ciphertext length is not a positive multiple of the block size")]
    BadLength,
    #[error("authentication tag does not match")]
    BadTag,
    #[error("bad padding after decryption")]
    BadPadding,
    #[error("the system random source failed: {0}")]
    Random(getrandom::Error),
}

/// The clear header of an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    pub version: u8,
    pub agent_id: &'a str,
    pub seq: u64,
}

/// An opened envelope: its header and the decrypted plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub agent_id: String,
    pub seq: u64,
    pub plaintext: Vec<u8>,
}

fn valid_agent_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_AGENT_ID && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Seals `plaintext` with a fresh random IV.
pub fn seal(keys: &EnvelopeKeys, agent_id: &str, seq: u64, plaintext: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
    let mut iv = [0u8; IV_LEN];
    getrandom::fill(&mut iv).map_err(EnvelopeError::Random)?;
    seal_with_iv(keys, agent_id, seq, &iv, plaintext)
}

/// Seals with a caller-chosen IV. Only for test vectors: a reused IV leaks plaintext equality.
pub fn seal_with_iv(
    keys: &EnvelopeKeys,
    agent_id: &str,
    seq: u64,
    iv: &[u8; IV_LEN],
    plaintext: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    if !valid_agent_id(agent_id) {
        return Err(EnvelopeError::BadAgentId);
    }
    let padded = (plaintext.len() / BLOCK + 1) * BLOCK;
    let size = 2 + agent_id.len() + 8 + IV_LEN + padded + TAG_LEN;
    if size > MAX_SEALED {
        return Err(EnvelopeError::TooLarge { size, max: MAX_SEALED });
    }
    let mut out = Vec::with_capacity(size);
    out.push(VERSION);
    out.push(agent_id.len() as u8);
    out.extend_from_slice(agent_id.as_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(iv);
    let ct = Enc::new(&keys.enc.into(), &(*iv).into()).encrypt_padded_vec::<Pkcs7>(plaintext);
    out.extend_from_slice(&ct);
    let mut mac = hmac_sha256(&keys.mac);
    mac.update(&out);
    out.extend_from_slice(&mac.finalize().into_bytes());
    Ok(out)
}

/// Reads the clear header without checking the tag: the server uses it to find the agent's key. Nothing in it may
/// be trusted until [`open`] succeeds.
pub fn peek(sealed: &[u8]) -> Result<Header<'_>, EnvelopeError> {
    peek_limited(sealed, MAX_SEALED)
}

fn peek_limited(sealed: &[u8], max: usize) -> Result<Header<'_>, EnvelopeError> {
    if sealed.len() > max {
        return Err(EnvelopeError::TooLarge { size: sealed.len(), max });
    }
    let Some(&version) = sealed.first() else {
        return Err(EnvelopeError::Truncated(0));
    };
    if version != VERSION {
        return Err(EnvelopeError::UnknownVersion(version));
    }
    let id_len = *sealed.get(1).ok_or(EnvelopeError::Truncated(sealed.len()))? as usize;
    let header_len = 2 + id_len + 8;
    if sealed.len() < header_len + IV_LEN + BLOCK + TAG_LEN {
        return Err(EnvelopeError::Truncated(sealed.len()));
    }
    let agent_id = std::str::from_utf8(&sealed[2..2 + id_len]).map_err(|_| EnvelopeError::BadAgentId)?;
    if !valid_agent_id(agent_id) {
        return Err(EnvelopeError::BadAgentId);
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&sealed[2 + id_len..header_len]);
    Ok(Header { version, agent_id, seq: u64::from_be_bytes(seq) })
}

/// Verifies the tag (constant time), then decrypts.
pub fn open(keys: &EnvelopeKeys, sealed: &[u8]) -> Result<Opened, EnvelopeError> {
    let header = peek(sealed)?;
    let header_len = 2 + header.agent_id.len() + 8;
    let (body, tag) = sealed.split_at(sealed.len() - TAG_LEN);
    let mut mac = hmac_sha256(&keys.mac);
    mac.update(body);
    mac.verify_slice(tag).map_err(|_| EnvelopeError::BadTag)?;
    let iv: [u8; IV_LEN] = body[header_len..header_len + IV_LEN].try_into().map_err(|_| EnvelopeError::BadLength)?;
    let ct = &body[header_len + IV_LEN..];
    if ct.is_empty() || ct.len() % BLOCK != 0 {
        return Err(EnvelopeError::BadLength);
    }
    let plaintext = Dec::new(&keys.enc.into(), &iv.into())
        .decrypt_padded_vec::<Pkcs7>(ct)
        .map_err(|_| EnvelopeError::BadPadding)?;
    Ok(Opened { agent_id: header.agent_id.to_owned(), seq: header.seq, plaintext })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::AgentSecret;

    fn keys(b: u8) -> EnvelopeKeys {
        AgentSecret::from_bytes([b; 32]).derive_keys()
    }

    #[test]
    fn round_trip() {
        let k = keys(1);
        for len in [0, 1, 15, 16, 17, 1000] {
            let pt = vec![0x5a; len];
            let sealed = seal(&k, "agent-1", 42, &pt).unwrap();
            let opened = open(&k, &sealed).unwrap();
            assert_eq!(opened, Opened { agent_id: "agent-1".into(), seq: 42, plaintext: pt });
        }
    }

    #[test]
    fn fresh_iv_each_time() {
        let k = keys(1);
        assert_ne!(seal(&k, "a", 1, b"same").unwrap(), seal(&k, "a", 1, b"same").unwrap());
    }

    #[test]
    fn every_bit_flip_is_rejected() {
        let k = keys(2);
        let sealed = seal(&k, "host-a", 7, b"{\"cpu\":12.5,\"memory\":40}").unwrap();
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[i] ^= 1 << bit;
                assert!(open(&k, &bad).is_err(), "flip of byte {i} bit {bit} accepted");
            }
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let k = keys(3);
        let sealed = seal(&k, "host-a", 7, b"hello world, this spans two blocks").unwrap();
        for n in 0..sealed.len() {
            assert!(open(&k, &sealed[..n]).is_err(), "truncation to {n} accepted");
        }
    }

    #[test]
    fn wrong_key_is_a_bad_tag() {
        let sealed = seal(&keys(4), "host-a", 1, b"x").unwrap();
        assert_eq!(open(&keys(5), &sealed), Err(EnvelopeError::BadTag));
    }

    #[test]
    fn bad_padding_under_a_valid_tag_is_reported() {
        // Craft ciphertext whose padding is invalid but whose tag is right: only a key holder can do this.
        let k = keys(6);
        let iv = [0u8; IV_LEN];
        let mut body = vec![VERSION, 1, b'a'];
        body.extend_from_slice(&1u64.to_be_bytes());
        body.extend_from_slice(&iv);
        // Encrypt a block without padding: its last byte (0x00) is not valid PKCS#7.
        let mut block = [0u8; 16];
        let ct = cbc::Encryptor::<Aes256>::new(&k.enc.into(), &iv.into())
            .encrypt_padded::<cbc::cipher::block_padding::NoPadding>(&mut block, 16)
            .unwrap()
            .to_vec();
        body.extend_from_slice(&ct);
        let mut mac = hmac_sha256(&k.mac);
        mac.update(&body);
        body.extend_from_slice(&mac.finalize().into_bytes());
        assert_eq!(open(&k, &body), Err(EnvelopeError::BadPadding));
    }

    #[test]
    fn oversize_is_refused_both_ways() {
        let k = keys(7);
        let big = vec![0u8; MAX_SEALED];
        assert!(matches!(seal(&k, "a", 1, &big), Err(EnvelopeError::TooLarge { .. })));
        let mut huge = vec![0u8; MAX_SEALED + 1];
        huge[0] = VERSION;
        assert!(matches!(open(&k, &huge), Err(EnvelopeError::TooLarge { .. })));
    }

    #[test]
    fn unknown_version_and_bad_ids() {
        let k = keys(8);
        let mut sealed = seal(&k, "a", 1, b"x").unwrap();
        sealed[0] = 2;
        assert_eq!(open(&k, &sealed), Err(EnvelopeError::UnknownVersion(2)));
        assert_eq!(seal(&k, "", 1, b"x"), Err(EnvelopeError::BadAgentId));
        assert_eq!(seal(&k, "has space", 1, b"x"), Err(EnvelopeError::BadAgentId));
        assert_eq!(seal(&k, &"x".repeat(65), 1, b"x"), Err(EnvelopeError::BadAgentId));
    }

    #[test]
    fn peek_reads_the_clear_header() {
        let sealed = seal(&keys(9), "web-01", u64::MAX, b"x").unwrap();
        assert_eq!(peek(&sealed).unwrap(), Header { version: 1, agent_id: "web-01", seq: u64::MAX });
    }
}
