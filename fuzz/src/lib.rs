//! Shared pieces of vigil's fuzz targets: the fixed key every envelope target uses, a tag forger that lets inputs
//! reach the code behind the MAC check, the fixed valid config files the config targets pair with the fuzzed one,
//! and the properties checked on every result (what "correct" means beyond "did not panic").
//!
//! The targets themselves (fuzz_targets/*.rs) are thin: they pick bytes apart and call into here.

use std::path::Path;
use std::sync::OnceLock;

use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use serde_json::Value;
use sha2::Sha256;
use vigil_config::{Config, ConfigError, Diagnostic};
use vigil_schema::envelope::{self, IV_LEN, TAG_LEN};
use vigil_schema::proto::ServerMsg;
use vigil_schema::secret::{AgentSecret, EnvelopeKeys};

/// The agent secret of every envelope target (fixed, so crashes reproduce).
pub const SECRET: [u8; 32] = [0x42; 32];

/// The envelope keys derived from [`SECRET`].
pub fn keys() -> &'static EnvelopeKeys {
    static KEYS: OnceLock<EnvelopeKeys> = OnceLock::new();
    KEYS.get_or_init(|| AgentSecret::from_bytes(SECRET).derive_keys())
}

/// The MAC key derived from [`SECRET`], recomputed here the way `AgentSecret::derive_keys` documents it (the crate
/// keeps it private). Only a fuzzer needs it: it lets an input carry a valid tag.
fn mac_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&SECRET).expect("HMAC takes any key length");
        mac.update(b"vigil envelope v1 hmac-sha256");
        mac.update(&[1u8]);
        let mut key = [0u8; 32];
        key.copy_from_slice(&mac.finalize().into_bytes());
        // The recomputed key must be the real one, or the forged inputs would all die at the tag check.
        let sealed = envelope::seal_with_iv(keys(), "k", 1, &[0; IV_LEN], b"probe").expect("seal a probe");
        let mut forged = sealed[..sealed.len() - TAG_LEN].to_vec();
        append_tag(&key, &mut forged);
        assert_eq!(forged, sealed, "the fuzz crate's MAC key derivation drifted from vigil-schema's");
        key
    })
}

fn append_tag(key: &[u8; 32], body: &mut Vec<u8>) {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    body.extend_from_slice(&tag);
}

/// `body` followed by the tag [`keys`] accepts for it: the input reaches decryption and the padding check.
pub fn with_valid_tag(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    append_tag(mac_key(), &mut out);
    out
}

/// Opens `sealed` and checks what must hold whatever the bytes:
/// - `open` never accepts what `peek` refuses, and both agree on the header;
/// - an opened envelope is canonical: sealing its plaintext again with its IV gives back exactly the same bytes (no
///   two different byte strings open to the same message, so nothing about an envelope is malleable).
pub fn check_open(sealed: &[u8]) -> Option<envelope::Opened> {
    let header = envelope::peek(sealed);
    let opened = envelope::open(keys(), sealed).ok()?;
    let header = header.expect("open accepted an envelope that peek refuses");
    assert_eq!((header.agent_id, header.seq), (opened.agent_id.as_str(), opened.seq), "peek and open disagree");
    let iv_at = 2 + opened.agent_id.len() + 8;
    let iv: [u8; IV_LEN] = sealed[iv_at..iv_at + IV_LEN].try_into().expect("an opened envelope holds an IV");
    let again = envelope::seal_with_iv(keys(), &opened.agent_id, opened.seq, &iv, &opened.plaintext)
        .expect("what opens can be sealed again");
    assert_eq!(again, sealed, "an opened envelope is not canonical");
    Some(opened)
}

/// Whether this build's serde_json parses every float exactly (its `float_roundtrip` feature). Without it, a float
/// written with 17 significant digits, as serde_json itself writes some, can come back a unit in the last place off:
/// finding 1 in FUZZING.md. The targets check exact equality as soon as the feature is on.
pub fn exact_floats() -> bool {
    static EXACT: OnceLock<bool> = OnceLock::new();
    *EXACT.get_or_init(|| {
        let text = "93016099.42063919";
        serde_json::from_str::<f64>(text).ok() == text.parse::<f64>().ok()
    })
}

/// Asserts that `back`, decoded from the encoding of `orig`, is `orig`. While serde_json parses floats inexactly
/// ([`exact_floats`]), floats may differ in their last bits (relative 1e-6 covers an f32's last bit); every other
/// value must be identical.
pub fn assert_reencoded<M: Serialize + PartialEq + std::fmt::Debug>(orig: &M, back: &M) {
    if exact_floats() {
        assert_eq!(back, orig, "a value does not survive re-encoding");
        return;
    }
    let a = serde_json::to_value(orig).expect("encode to a value");
    let b = serde_json::to_value(back).expect("encode to a value");
    assert!(close(&a, &b), "a value does not survive re-encoding:\n{orig:?}\n{back:?}");
}

fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-6 * x.abs().max(y.abs()),
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
        }
        _ => a == b,
    }
}

/// A small deterministic generator (xorshift64*), seeded from the input, for choices like chunk sizes.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `1..=max` (`max` >= 1).
    pub fn between_1_and(&mut self, max: usize) -> usize {
        1 + (self.next_u64() % max as u64) as usize
    }
}

/// The valid clients.xml the jobs.toml target pairs with the fuzzed file: every kind of host the parser knows.
pub const CLIENTS_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<clients>
  <defaults>
    <alert type="silence" limit="3"/>
    <alert type="disk" limit="90%" mount="/"/>
  </defaults>
  <client ip="10.0.0.5" port="22" username="user" password="secret" mail="ops@example.com">
    <alert type="memory" limit="50%"/>
    <alert type="cpu" limit="20%"/>
  </client>
  <client name="web-1" ip="web1.example.com" port="2222" username="vigil" key_file="keys/web1" tags="web, prod"
          host_key="SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU" os="linux" endpoint="vigil.example.com:7022">
    <alert type="load" limit="4" repeat="30"/>
    <alert type="swap" limit="80" clear="10"/>
  </client>
  <client name="db-1" ip="10.0.0.7" username="vigil" password_env="DB1_PASSWORD" tags="db prod" os="windows"/>
  <client name="localhost" ip="127.0.0.1" transport="local" mail="root@localhost" tags="local"/>
</clients>
"#;

/// The valid jobs.toml the clients.xml target pairs with the fuzzed file: selectors by name, glob and tag.
pub const JOBS_TOML: &str = r#"[server]
listen = "127.0.0.1:7022"
endpoint = "vigil.example.com:7022"
data_dir = "vigil-data"
database = "vigil.db"
retention_days = 30
max_connections_per_agent = 8

[smtp]
host = "127.0.0.1"
port = 2525
tls = "none"
from = "vigil@localhost"
username = "vigil"
password_env = "VIGIL_SMTP_PASSWORD"
allow_plaintext_auth = true

[alerts]
security_digest = "10m"

[[job]]
name = "vitals"
collectors = ["cpu", "memory", "swap"]
interval = "10s"
jitter = "2s"

[[job]]
name = "inventory"
collectors = ["system", "users", "partitions"]
interval = "5m"
hosts = ["web-*", "10.0.0.5"]

[[job]]
name = "disks"
collectors = ["disk_usage", "network", "security_events"]
interval = 60
tags = ["db", "local"]
"#;

/// Where diagnostics say the files are (nothing is read from there).
const CLIENTS_PATH: &str = "/etc/vigil/clients.xml";
const JOBS_PATH: &str = "/etc/vigil/jobs.toml";

/// Loads the pair of sources and checks what must hold for any input:
/// - loading does no I/O, so the only error is a non-empty list of diagnostics;
/// - every diagnostic points into the file it names (line and column inside the text, 1-based);
/// - a loaded config answers every question the server asks of it (schedules and their hashes, job selection).
pub fn check_config(clients: &str, jobs: &str) {
    static FIXED: OnceLock<()> = OnceLock::new();
    FIXED.get_or_init(|| {
        let loaded = Config::from_sources(Path::new(CLIENTS_PATH), CLIENTS_XML, Path::new(JOBS_PATH), JOBS_TOML)
            .unwrap_or_else(|e| panic!("the fixed config files no longer load:\n{e}"));
        assert!(loaded.warnings.is_empty(), "the fixed config files warn: {:?}", loaded.warnings);
    });
    match Config::from_sources(Path::new(CLIENTS_PATH), clients, Path::new(JOBS_PATH), jobs) {
        Ok(loaded) => {
            for d in &loaded.warnings {
                check_position(d, clients, jobs);
            }
            let cfg = &loaded.config;
            for host in &cfg.clients {
                let schedule = cfg.schedule_for(&host.name);
                for job in &schedule.jobs {
                    assert!(job.interval_s > 0, "a scheduled job with a zero interval: {job:?}");
                }
                // What the server sends the host's agent must reach it intact.
                let msg = ServerMsg::Jobs { hash: schedule.hash(), schedule };
                let json = serde_json::to_vec(&msg).expect("a job list serializes");
                let back: ServerMsg = serde_json::from_slice(&json).expect("the agent decodes its job list");
                assert_eq!(back, msg, "a job list does not survive the wire");
            }
            for job in &cfg.jobs {
                for host in cfg.hosts_of(job) {
                    assert!(job.selects(host));
                }
            }
            let _ = format!("{cfg:?}");
        }
        Err(ConfigError::Invalid(diags)) => {
            assert!(!diags.is_empty(), "a refused config must say why");
            for d in &diags {
                check_position(d, clients, jobs);
            }
            let _ = ConfigError::Invalid(diags).to_string();
        }
        Err(e @ ConfigError::Io { .. }) => panic!("from_sources did I/O: {e}"),
    }
}

fn check_position(d: &Diagnostic, clients: &str, jobs: &str) {
    let source = if d.file == Path::new(CLIENTS_PATH) {
        clients
    } else if d.file == Path::new(JOBS_PATH) {
        jobs
    } else {
        panic!("diagnostic names a file that was not loaded: {d}");
    };
    assert!(d.line >= 1 && d.column >= 1, "positions count from 1: {d}");
    let lines: Vec<&str> = source.split('\n').collect();
    assert!(d.line <= lines.len(), "line past the end of the file ({} lines): {d}", lines.len());
    let width = lines[d.line - 1].chars().count();
    assert!(d.column <= width + 1, "column past the end of its line ({width} characters): {d}");
}
