//! Envelope test vectors: `schema/tests/vectors.json` was computed independently of this crate (the `openssl` CLI
//! for AES-256-CBC, Python's hmac/hashlib for key derivation and the tag; see `scripts/gen-vectors.py`). Sealing with
//! the same secret, IV and plaintext must give exactly those bytes, and opening them must give the plaintext back.

use serde::Deserialize;
use vigil_schema::envelope::{self, EnvelopeError, Header, IV_LEN, Opened, TAG_LEN};
use vigil_schema::secret::AgentSecret;

#[derive(Debug, Deserialize)]
struct File {
    vectors: Vec<Vector>,
}

#[derive(Debug, Deserialize)]
struct Vector {
    name: String,
    agent_id: String,
    seq: u64,
    secret: String,
    iv: String,
    plaintext: String,
    ciphertext: String,
    tag: String,
    sealed: String,
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("vectors.json holds valid hex")
}

fn vectors() -> Vec<Vector> {
    let file: File = serde_json::from_str(include_str!("vectors.json")).expect("vectors.json parses");
    file.vectors
}

fn secret(v: &Vector) -> AgentSecret {
    AgentSecret::from_hex(&v.secret).expect("a 32-byte secret")
}

fn iv(v: &Vector) -> [u8; IV_LEN] {
    unhex(&v.iv).try_into().expect("a 16-byte IV")
}

#[test]
fn the_vectors_cover_the_edge_cases() {
    let vs = vectors();
    assert!(vs.len() >= 4);
    let lens: Vec<usize> = vs.iter().map(|v| unhex(&v.plaintext).len()).collect();
    for want in [0, 15, 16, 100] {
        assert!(lens.contains(&want), "no vector with a {want}-byte plaintext: {lens:?}");
    }
    assert!(vs.iter().any(|v| v.seq == u64::MAX));
    assert!(vs.iter().any(|v| v.agent_id.len() == envelope::MAX_AGENT_ID));
    let json = vs.iter().find(|v| unhex(&v.plaintext).len() == 100).expect("the JSON vector");
    serde_json::from_slice::<serde_json::Value>(&unhex(&json.plaintext)).expect("the 100-byte plaintext is JSON");
}

#[test]
fn the_vectors_are_self_consistent() {
    for v in vectors() {
        let mut expect = vec![envelope::VERSION, v.agent_id.len() as u8];
        expect.extend_from_slice(v.agent_id.as_bytes());
        expect.extend_from_slice(&v.seq.to_be_bytes());
        expect.extend(unhex(&v.iv));
        expect.extend(unhex(&v.ciphertext));
        expect.extend(unhex(&v.tag));
        assert_eq!(hex::encode(&expect), v.sealed, "{}", v.name);
        assert_eq!(unhex(&v.tag).len(), TAG_LEN, "{}", v.name);
    }
}

#[test]
fn seal_with_iv_matches_openssl_byte_for_byte() {
    for v in vectors() {
        let keys = secret(&v).derive_keys();
        let sealed = envelope::seal_with_iv(&keys, &v.agent_id, v.seq, &iv(&v), &unhex(&v.plaintext))
            .unwrap_or_else(|e| panic!("{}: seal failed: {e}", v.name));
        assert_eq!(hex::encode(&sealed), v.sealed, "{}", v.name);
    }
}

#[test]
fn open_returns_the_plaintext() {
    for v in vectors() {
        let keys = secret(&v).derive_keys();
        let opened =
            envelope::open(&keys, &unhex(&v.sealed)).unwrap_or_else(|e| panic!("{}: open failed: {e}", v.name));
        assert_eq!(opened, Opened { agent_id: v.agent_id.clone(), seq: v.seq, plaintext: unhex(&v.plaintext) });
        let sealed = unhex(&v.sealed);
        let header = envelope::peek(&sealed).unwrap_or_else(|e| panic!("{}: peek failed: {e}", v.name));
        assert_eq!(header, Header { version: envelope::VERSION, agent_id: &v.agent_id, seq: v.seq });
    }
}

#[test]
fn a_vector_under_another_vectors_secret_is_a_bad_tag() {
    let vs = vectors();
    for (i, v) in vs.iter().enumerate() {
        let other = &vs[(i + 1) % vs.len()];
        assert_ne!(v.secret, other.secret, "vectors {i} and its neighbour share a secret");
        let keys = secret(other).derive_keys();
        assert_eq!(envelope::open(&keys, &unhex(&v.sealed)), Err(EnvelopeError::BadTag), "{}", v.name);
    }
}
