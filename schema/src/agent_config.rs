//! The agent's config file (`agent.toml`): written by `vigil bootstrap`, read by `vigil-agent`.
//!
//! It is part of the contract because the server writes what the agent reads. The file is created 0600 and holds
//! the agent's envelope secret; [`AgentConfigFile`]'s `Debug` never prints it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Default bound on the spool's total size.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 << 20;
/// Default bound on the number of spooled reports.
pub const DEFAULT_SPOOL_MAX_REPORTS: u64 = 20_000;

/// The envelope secret as written in the file (hex). Redacted in `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretHex(pub String);

impl fmt::Debug for SecretHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for SecretHex {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// `agent.toml`. Relative paths are resolved against the file's directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfigFile {
    /// The agent's id, also its SSH user name and the envelope's clear id.
    pub agent_id: String,
    /// `host:port` of the server's SSH endpoint.
    pub server: String,
    /// `host:port` of the other `vigil serve` nodes (issue 17), tried in order after `server` when it cannot be
    /// reached. They present the same host key (`server_host_key`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_servers: Vec<String>,
    /// The server's pinned host-key fingerprint, `SHA256:...`.
    pub server_host_key: String,
    /// The agent's ed25519 private key (OpenSSH format), 0600.
    pub key_file: String,
    /// The 32-byte envelope secret, hex.
    pub secret: SecretHex,
    /// Envelope secrets this agent had before its credentials were replaced (hex, like `secret`): reports still
    /// spooled under them are re-sealed under `secret` at start. Written by bootstrap when it could read them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_secrets: Vec<SecretHex>,
    /// Where sealed reports wait for their ack.
    #[serde(default = "default_spool_dir")]
    pub spool_dir: String,
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    #[serde(default = "default_spool_max_reports")]
    pub spool_max_reports: u64,
    /// The schedule the agent runs until it pulls a newer one; rewritten on every pull.
    #[serde(default = "default_schedule_file")]
    pub schedule_file: String,
    /// Overrides for collector sources (tests and unusual hosts).
    #[serde(default)]
    pub collect: CollectPaths,
    /// The host opted in to command jobs (`<client commands="allow">`); without it the agent refuses them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub commands: bool,
}

/// Where collectors read from when not the system default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectPaths {
    pub utmp: Option<String>,
    pub auth_log: Option<String>,
}

fn default_spool_dir() -> String {
    "spool".into()
}
fn default_spool_max_bytes() -> u64 {
    DEFAULT_SPOOL_MAX_BYTES
}
fn default_spool_max_reports() -> u64 {
    DEFAULT_SPOOL_MAX_REPORTS
}
fn default_schedule_file() -> String {
    "schedule.json".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secret() {
        let c = AgentConfigFile {
            agent_id: "a".into(),
            server: "127.0.0.1:7022".into(),
            fallback_servers: Vec::new(),
            server_host_key: "SHA256:x".into(),
            key_file: "agent_key".into(),
            secret: SecretHex("deadbeefcafe".into()),
            previous_secrets: vec![SecretHex("0123456789abba".into())],
            spool_dir: default_spool_dir(),
            spool_max_bytes: 1,
            spool_max_reports: 1,
            schedule_file: default_schedule_file(),
            collect: CollectPaths::default(),
            commands: false,
        };
        let printed = format!("{c:?}");
        assert!(!printed.contains("deadbeef") && !printed.contains("0123456789"), "{printed}");
    }

    #[test]
    fn previous_secrets_are_optional_and_round_trip() {
        let base =
            "agent_id = \"a\"\nserver = \"s:1\"\nserver_host_key = \"SHA256:x\"\nkey_file = \"k\"\nsecret = \"ab\"\n";
        let c: AgentConfigFile = toml::from_str(base).unwrap();
        assert!(c.previous_secrets.is_empty());
        assert!(!toml::to_string(&c).unwrap().contains("previous_secrets"), "an empty list is not written");
        let c: AgentConfigFile = toml::from_str(&format!("{base}previous_secrets = [\"cd\", \"ef\"]\n")).unwrap();
        assert_eq!(c.previous_secrets, [SecretHex("cd".into()), SecretHex("ef".into())]);
        let again: AgentConfigFile = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn fallback_servers_are_optional_and_round_trip() {
        let base =
            "agent_id = \"a\"\nserver = \"s:1\"\nserver_host_key = \"SHA256:x\"\nkey_file = \"k\"\nsecret = \"ab\"\n";
        let c: AgentConfigFile = toml::from_str(base).unwrap();
        assert!(c.fallback_servers.is_empty());
        assert!(!toml::to_string(&c).unwrap().contains("fallback_servers"), "an empty list is not written");
        let c: AgentConfigFile = toml::from_str(&format!("{base}fallback_servers = [\"t:2\", \"u:3\"]\n")).unwrap();
        assert_eq!(c.fallback_servers, ["t:2", "u:3"]);
        let again: AgentConfigFile = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }
}
