//! The allow-list of agent keys: agents registered in the store whose host is in the current clients.xml.
//!
//! Rebuilt whenever the config or the agents table changes; an agent whose host left clients.xml is not in it, so
//! its key is refused at once.

use std::collections::HashMap;
use std::sync::Arc;

use russh::keys::PublicKey;
use vigil_schema::secret::{AgentSecret, EnvelopeKeys};

use crate::config::Config;
use crate::store::AgentRecord;

/// One agent allowed to connect.
#[derive(Debug)]
pub struct AgentEntry {
    pub agent_id: String,
    /// The agent's public key, canonical OpenSSH text.
    pub key: String,
    pub host: String,
    pub ip: String,
    pub keys: EnvelopeKeys,
}

/// Public key (canonical OpenSSH form, no comment) to agent.
#[derive(Debug, Default)]
pub struct Registry {
    by_key: HashMap<String, Arc<AgentEntry>>,
}

/// The canonical text of a public key, ignoring its comment.
pub fn key_text(key: &PublicKey) -> Option<String> {
    PublicKey::new(key.key_data().clone(), "").to_openssh().ok()
}

impl Registry {
    /// The agents of `records` whose host is in `config`. Records that do not parse are skipped with a warning.
    pub fn build(records: &[AgentRecord], config: &Config) -> Self {
        let mut by_key = HashMap::new();
        for r in records {
            let Some(host) = config.host(&r.host) else { continue };
            let key = match PublicKey::from_openssh(&r.public_key) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(agent = %r.agent_id, error = %e, "stored public key does not parse");
                    continue;
                }
            };
            let secret = match AgentSecret::from_hex(r.secret_hex.as_str()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(agent = %r.agent_id, error = %e, "stored envelope secret is unusable");
                    continue;
                }
            };
            let Some(text) = key_text(&key) else { continue };
            by_key.insert(
                text.clone(),
                Arc::new(AgentEntry {
                    agent_id: r.agent_id.clone(),
                    key: text,
                    host: r.host.clone(),
                    ip: host.ip.clone(),
                    keys: secret.derive_keys(),
                }),
            );
        }
        Self { by_key }
    }

    /// The agent holding `key`, if allowed.
    pub fn lookup(&self, key: &PublicKey) -> Option<Arc<AgentEntry>> {
        self.by_key.get(&key_text(key)?).cloned()
    }

    /// Whether `agent` (its id with its key) is still allowed: false once its registration was removed or replaced
    /// (uninstall, re-bootstrap with new credentials) or its host left clients.xml.
    pub fn allows(&self, agent: &AgentEntry) -> bool {
        self.by_key.get(&agent.key).is_some_and(|a| a.agent_id == agent.agent_id)
    }

    /// How many agents are allowed.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no agent is allowed.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}
