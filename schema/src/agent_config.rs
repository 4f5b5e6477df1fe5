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

/// `agent.toml`. Relative paths are resolved against the file's directory. Unknown keys are refused. Read by a
/// hand-written [`Deserialize`] ([`FileVisitor`]): the derived one (which also reads a struct from a sequence) cost the
/// static agent 12 kB more once `fallback_servers` was added, over its size budget (scripts/dist.sh).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentConfigFile {
    /// The agent's id, also its SSH user name and the envelope's clear id.
    pub agent_id: String,
    /// `host:port` of the server's SSH endpoint.
    pub server: String,
    /// `host:port` of the other `vigil serve` nodes (issue 17), tried in order after `server` when it cannot be
    /// reached. They present the same host key (`server_host_key`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallback_servers: Vec<String>,
    /// The server's pinned host-key fingerprint, `SHA256:...`.
    pub server_host_key: String,
    /// The agent's ed25519 private key (OpenSSH format), 0600.
    pub key_file: String,
    /// The 32-byte envelope secret, hex.
    pub secret: SecretHex,
    /// Envelope secrets this agent had before its credentials were replaced (hex, like `secret`): reports still
    /// spooled under them are re-sealed under `secret` at start. Written by bootstrap when it could read them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub previous_secrets: Vec<SecretHex>,
    /// Where sealed reports wait for their ack (default `spool`).
    pub spool_dir: String,
    /// Default [`DEFAULT_SPOOL_MAX_BYTES`].
    pub spool_max_bytes: u64,
    /// Default [`DEFAULT_SPOOL_MAX_REPORTS`].
    pub spool_max_reports: u64,
    /// The schedule the agent runs until it pulls a newer one; rewritten on every pull (default `schedule.json`).
    pub schedule_file: String,
    /// Overrides for collector sources (tests and unusual hosts).
    pub collect: CollectPaths,
    /// The host opted in to command jobs (`<client commands="allow">`); without it the agent refuses them.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub commands: bool,
}

/// The keys [`AgentConfigFile`] knows, for the unknown-key error.
const FIELDS: &[&str] = &[
    "agent_id",
    "server",
    "fallback_servers",
    "server_host_key",
    "key_file",
    "secret",
    "previous_secrets",
    "spool_dir",
    "spool_max_bytes",
    "spool_max_reports",
    "schedule_file",
    "collect",
    "commands",
];

impl<'de> Deserialize<'de> for AgentConfigFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FileVisitor)
    }
}

/// Reads `agent.toml`'s table: the required keys, the rest defaulted as documented on [`AgentConfigFile`].
struct FileVisitor;

impl<'de> serde::de::Visitor<'de> for FileVisitor {
    type Value = AgentConfigFile;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the agent.toml table")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<AgentConfigFile, A::Error> {
        use serde::de::Error;
        let (mut agent_id, mut server, mut server_host_key, mut key_file, mut secret) = (None, None, None, None, None);
        let mut c = AgentConfigFile {
            agent_id: String::new(),
            server: String::new(),
            fallback_servers: Vec::new(),
            server_host_key: String::new(),
            key_file: String::new(),
            secret: SecretHex(String::new()),
            previous_secrets: Vec::new(),
            spool_dir: default_spool_dir(),
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            spool_max_reports: DEFAULT_SPOOL_MAX_REPORTS,
            schedule_file: default_schedule_file(),
            collect: CollectPaths::default(),
            commands: false,
        };
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "agent_id" => agent_id = Some(map.next_value()?),
                "server" => server = Some(map.next_value()?),
                "fallback_servers" => c.fallback_servers = map.next_value()?,
                "server_host_key" => server_host_key = Some(map.next_value()?),
                "key_file" => key_file = Some(map.next_value()?),
                "secret" => secret = Some(map.next_value()?),
                "previous_secrets" => c.previous_secrets = map.next_value()?,
                "spool_dir" => c.spool_dir = map.next_value()?,
                "spool_max_bytes" => c.spool_max_bytes = map.next_value()?,
                "spool_max_reports" => c.spool_max_reports = map.next_value()?,
                "schedule_file" => c.schedule_file = map.next_value()?,
                "collect" => c.collect = map.next_value()?,
                "commands" => c.commands = map.next_value()?,
                other => return Err(A::Error::unknown_field(other, FIELDS)),
            }
        }
        c.agent_id = agent_id.ok_or_else(|| A::Error::missing_field("agent_id"))?;
        c.server = server.ok_or_else(|| A::Error::missing_field("server"))?;
        c.server_host_key = server_host_key.ok_or_else(|| A::Error::missing_field("server_host_key"))?;
        c.key_file = key_file.ok_or_else(|| A::Error::missing_field("key_file"))?;
        c.secret = secret.ok_or_else(|| A::Error::missing_field("secret"))?;
        Ok(c)
    }
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

    const REQUIRED: &str =
        "agent_id = \"a\"\nserver = \"s:1\"\nserver_host_key = \"SHA256:x\"\nkey_file = \"k\"\nsecret = \"ab\"\n";

    #[test]
    fn absent_keys_take_their_defaults_and_every_key_round_trips() {
        let c: AgentConfigFile = toml::from_str(REQUIRED).unwrap();
        assert_eq!((c.spool_dir.as_str(), c.schedule_file.as_str()), ("spool", "schedule.json"));
        assert_eq!((c.spool_max_bytes, c.spool_max_reports), (DEFAULT_SPOOL_MAX_BYTES, DEFAULT_SPOOL_MAX_REPORTS));
        assert_eq!(c.collect, CollectPaths::default());
        assert!(!c.commands && c.previous_secrets.is_empty() && c.fallback_servers.is_empty());
        let full = AgentConfigFile {
            agent_id: "a".into(),
            server: "s:1".into(),
            fallback_servers: vec!["t:2".into()],
            server_host_key: "SHA256:x".into(),
            key_file: "k".into(),
            secret: SecretHex("ab".into()),
            previous_secrets: vec![SecretHex("cd".into())],
            spool_dir: "sp".into(),
            spool_max_bytes: 7,
            spool_max_reports: 8,
            schedule_file: "sch.json".into(),
            collect: CollectPaths { utmp: Some("u".into()), auth_log: Some("l".into()) },
            commands: true,
        };
        let again: AgentConfigFile = toml::from_str(&toml::to_string(&full).unwrap()).unwrap();
        assert_eq!(again, full);
    }

    #[test]
    fn unknown_keys_and_missing_required_keys_are_refused() {
        let e = toml::from_str::<AgentConfigFile>(&format!("{REQUIRED}sever = \"typo:1\"\n")).unwrap_err();
        assert!(e.to_string().contains("unknown field `sever`"), "{e}");
        for key in ["agent_id", "server", "server_host_key", "key_file", "secret"] {
            let text: String =
                REQUIRED.lines().filter(|l| !l.starts_with(&format!("{key} "))).map(|l| format!("{l}\n")).collect();
            let e = toml::from_str::<AgentConfigFile>(&text).unwrap_err();
            assert!(e.to_string().contains(&format!("missing field `{key}`")), "{key}: {e}");
        }
        let e = toml::from_str::<AgentConfigFile>(&format!("{REQUIRED}[collect]\nwtmp = \"w\"\n")).unwrap_err();
        assert!(e.to_string().contains("unknown field `wtmp`"), "{e}");
    }
}
