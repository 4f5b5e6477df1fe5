//! An agent's credentials: the one place they are minted ([`AgentFiles::mint`]), rendered into the files an agent
//! directory holds ([`AgentFiles::parts`]), registered with the server ([`register`]), and judged still current
//! ([`current`]). `vigil enroll`, local installs and SSH installs all go through here.

use std::path::Path;

use russh::keys::ssh_key::LineEnding;
use vigil_schema::agent_config::{AgentConfigFile, CollectPaths, SecretHex};
use vigil_schema::job::Schedule;
use vigil_schema::secret::AgentSecret;
use zeroize::Zeroizing;

use super::{BootstrapError, endpoint_for, fallback_endpoints_for, layout};
use crate::config::{Config, Host};
use crate::keys::KeyError;
use crate::store::{AgentRecord, Store};

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
        let key = crate::keys::generate_ed25519()?;
        let mut suffix = [0u8; 6];
        getrandom::fill(&mut suffix).map_err(|e| KeyError::Random(e.to_string()))?;
        let prefix: String = host.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(40).collect();
        let agent_id = format!("{prefix}-{}", vigil_schema::to_hex(&suffix));
        let private_key_openssh = key.to_openssh(LineEnding::LF).map_err(|e| KeyError::Encode(e.to_string()))?;
        let public_key_openssh = key.public_key().to_openssh().map_err(|e| KeyError::Encode(e.to_string()))?;
        let secret = AgentSecret::generate().map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self { agent_id, private_key_openssh, public_key_openssh, secret })
    }
}

/// Everything written into a new agent's directory, besides the binary.
#[derive(Debug)]
pub struct AgentFiles {
    pub creds: AgentCredentials,
    pub agent_toml: Zeroizing<String>,
    pub schedule_json: String,
}

impl AgentFiles {
    /// Mints credentials for `host` and renders its files. `previous` are the envelope secrets of the credentials
    /// these replace (the old agent.toml's `secret`), so the agent can re-seal the reports still in its spool.
    pub fn mint(
        config: &Config,
        host: &Host,
        server_fingerprint: &str,
        collect: CollectPaths,
        previous: Vec<SecretHex>,
    ) -> Result<Self, BootstrapError> {
        let creds = AgentCredentials::mint(&host.name)?;
        let file = AgentConfigFile {
            agent_id: creds.agent_id.clone(),
            server: endpoint_for(config, host),
            fallback_servers: fallback_endpoints_for(config, host),
            server_host_key: server_fingerprint.to_owned(),
            key_file: layout::KEY.into(),
            secret: SecretHex(creds.secret.to_hex()),
            previous_secrets: previous,
            spool_dir: "spool".into(),
            spool_max_bytes: vigil_schema::agent_config::DEFAULT_SPOOL_MAX_BYTES,
            spool_max_reports: vigil_schema::agent_config::DEFAULT_SPOOL_MAX_REPORTS,
            schedule_file: layout::SCHEDULE.into(),
            collect,
            commands: host.commands,
        };
        let agent_toml = Zeroizing::new(toml::to_string(&file).map_err(|e| BootstrapError::Encode(e.to_string()))?);
        let schedule: Schedule = config.schedule_for(&host.name);
        let schedule_json = serde_json::to_string(&schedule).map_err(|e| BootstrapError::Encode(e.to_string()))?;
        Ok(Self { creds, agent_toml, schedule_json })
    }

    /// The files, in the order they are written: name in the agent directory, mode, contents.
    pub fn parts(&self) -> [(&'static str, u32, &[u8]); 3] {
        [
            (layout::KEY, 0o600, self.creds.private_key_openssh.as_bytes()),
            (layout::SCHEDULE, 0o600, self.schedule_json.as_bytes()),
            (layout::CONFIG, 0o600, self.agent_toml.as_bytes()),
        ]
    }

    /// The row the server keeps: public key and envelope secret.
    pub fn record(&self, host: &str, now_ms: i64) -> AgentRecord {
        AgentRecord {
            agent_id: self.creds.agent_id.clone(),
            host: host.to_owned(),
            public_key: self.creds.public_key_openssh.clone(),
            secret_hex: self.creds.secret.to_hex(),
            version: None,
            registered_at_ms: now_ms,
            last_seen_at_ms: None,
        }
    }
}

/// Registers `files` for `host`, replacing the host's earlier registration in one transaction (the endpoint drops
/// the old key's sessions when it sees the table change). Returns the new row and the one it replaced.
pub fn register(
    store: &mut Store,
    files: &AgentFiles,
    host: &str,
) -> Result<(AgentRecord, Option<AgentRecord>), BootstrapError> {
    register_record(store, files.record(host, vigil_sys::clock::now_ms()), host)
}

/// [`register`] with the row already made ([`AgentFiles::record`]): what runs on `vigil serve`'s writer.
pub fn register_record(
    store: &mut Store,
    new: AgentRecord,
    host: &str,
) -> Result<(AgentRecord, Option<AgentRecord>), BootstrapError> {
    let old = store.agents()?.into_iter().find(|a| a.host == host);
    store.register_agent(&new)?;
    Ok((new, old))
}

/// Puts back the registration `register` replaced (or removes the new one when there was none): an install that
/// failed after registering must leave the old agent able to deliver.
pub fn unregister(store: &mut Store, host: &str, old: Option<&AgentRecord>) -> Result<(), BootstrapError> {
    match old {
        Some(old) => store.register_agent(old)?,
        None => {
            store.remove_agents_of_host(host)?;
        }
    }
    Ok(())
}

/// Writes `files` into `dir` (created 0700), each file 0600, atomically: `vigil enroll`.
pub fn write_into(dir: &Path, files: &AgentFiles) -> Result<(), BootstrapError> {
    vigil_sys::fs::private_dir(dir).map_err(|error| BootstrapError::Io { path: dir.to_owned(), error })?;
    for (name, _mode, bytes) in files.parts() {
        let path = dir.join(name);
        vigil_sys::fs::write_private(&path, bytes).map_err(|error| BootstrapError::Io { path, error })?;
    }
    Ok(())
}

/// What an installed agent.toml says, as far as deciding whether its credentials still serve.
#[derive(Debug, Clone, Default)]
pub struct Installed {
    pub agent_id: String,
    pub server_host_key: String,
    pub server: String,
    /// Its `fallback_servers` (the other nodes' endpoints).
    pub fallback_servers: Vec<String>,
    /// Its envelope secret, when it could be read: it becomes the new agent.toml's `previous_secrets`.
    pub secret: Option<SecretHex>,
    /// Whether the private key file is there.
    pub key_present: bool,
    /// Whether its agent.toml allows command jobs (`commands = true`).
    pub commands: bool,
}

impl Installed {
    /// Reads an agent.toml's text (the key file's presence is the caller's to say).
    pub fn parse(text: &str, key_present: bool) -> Option<Self> {
        let c = toml::from_str::<AgentConfigFile>(text).ok()?;
        Some(Self {
            agent_id: c.agent_id.clone(),
            server_host_key: c.server_host_key.clone(),
            server: c.server.clone(),
            fallback_servers: c.fallback_servers.clone(),
            secret: Some(c.secret.clone()),
            key_present,
            commands: c.commands,
        })
    }

    /// `fallback_servers` from a probe's `cfg_fallback_servers` line: agent.toml's value as written (a TOML array of
    /// strings), empty when the file has none. An unreadable value is kept as one entry, which matches no endpoint
    /// list (it starts with `[`), so the credentials are renewed.
    pub fn probed_fallbacks(raw: Option<&str>) -> Vec<String> {
        #[derive(serde::Deserialize)]
        struct Line {
            v: Vec<String>,
        }
        match raw {
            None => Vec::new(),
            Some(raw) => toml::from_str::<Line>(&format!("v = {raw}")).map_or_else(|_| vec![raw.to_owned()], |l| l.v),
        }
    }
}

/// Whether an installed agent's credentials can stay: its id is registered for this host, its key file is there,
/// it pins the current server key and dials the current endpoint and fallback endpoints (the same list, in the same
/// order), and its command opt-in is the host's (`commands="allow"`). Otherwise bootstrap mints new ones. Local and
/// SSH installs share it.
pub fn current(
    registered: &[AgentRecord],
    host: &str,
    installed: Option<&Installed>,
    fingerprint: &str,
    endpoint: &str,
    fallbacks: &[String],
    commands: bool,
) -> bool {
    installed.is_some_and(|i| {
        registered.iter().any(|a| a.agent_id == i.agent_id && a.host == host)
            && i.key_present
            && i.server_host_key == fingerprint
            && i.server == endpoint
            && i.fallback_servers == fallbacks
            && i.commands == commands
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, host: &str) -> AgentRecord {
        AgentRecord {
            agent_id: id.into(),
            host: host.into(),
            public_key: String::new(),
            secret_hex: String::new(),
            version: None,
            registered_at_ms: 0,
            last_seen_at_ms: None,
        }
    }

    #[test]
    fn credentials_stay_only_when_registered_pinned_keyed_and_pointed_right() {
        let reg = [record("web-1", "web")];
        let ok = |id: &str, pin: &str, server: &str, key_present| Installed {
            agent_id: id.into(),
            server_host_key: pin.into(),
            server: server.into(),
            fallback_servers: Vec::new(),
            secret: None,
            key_present,
            commands: false,
        };
        let yes = |i: Installed, host| current(&reg, host, Some(&i), "SHA256:k", "s:1", &[], false);
        assert!(yes(ok("web-1", "SHA256:k", "s:1", true), "web"));
        assert!(!current(&reg, "web", None, "SHA256:k", "s:1", &[], false), "nothing installed");
        let allowed = Installed { commands: true, ..ok("web-1", "SHA256:k", "s:1", true) };
        assert!(!current(&reg, "web", Some(&allowed), "SHA256:k", "s:1", &[], false), "opt-in withdrawn");
        assert!(current(&reg, "web", Some(&allowed), "SHA256:k", "s:1", &[], true));
        assert!(!yes(ok("web-1", "SHA256:k", "s:1", true), "db"), "other host");
        assert!(!yes(ok("web-2", "SHA256:k", "s:1", true), "web"), "unregistered");
        assert!(!yes(ok("web-1", "SHA256:old", "s:1", true), "web"), "new server key");
        assert!(!yes(ok("web-1", "SHA256:k", "s:2", true), "web"), "moved");
        assert!(!yes(ok("web-1", "SHA256:k", "s:1", false), "web"), "key file missing");
    }

    #[test]
    fn credentials_stay_only_when_the_fallback_endpoints_are_the_same_list() {
        let reg = [record("web-1", "web")];
        let with = |list: &[&str]| Installed {
            agent_id: "web-1".into(),
            server_host_key: "SHA256:k".into(),
            server: "s:1".into(),
            fallback_servers: list.iter().map(|s| (*s).to_owned()).collect(),
            secret: None,
            key_present: true,
            commands: false,
        };
        let nodes = ["s:2".to_owned(), "s:3".to_owned()];
        let judge = |i: Installed, list: &[String]| current(&reg, "web", Some(&i), "SHA256:k", "s:1", list, false);
        assert!(judge(with(&["s:2", "s:3"]), &nodes));
        assert!(judge(with(&[]), &[]));
        assert!(!judge(with(&[]), &nodes), "a node was added");
        assert!(!judge(with(&["s:2", "s:3"]), &[]), "the nodes were removed");
        assert!(!judge(with(&["s:2"]), &nodes), "one missing");
        assert!(!judge(with(&["s:3", "s:2"]), &nodes), "another order");
    }

    #[test]
    fn a_probed_fallback_list_is_read_from_its_toml_line() {
        assert!(Installed::probed_fallbacks(None).is_empty(), "no line: no fallbacks");
        assert_eq!(Installed::probed_fallbacks(Some(r#"["s:2", "s:3"]"#)), ["s:2", "s:3"]);
        assert_eq!(Installed::probed_fallbacks(Some("[]")), Vec::<String>::new());
        let odd = Installed::probed_fallbacks(Some("[\"s:2\""));
        assert!(odd != ["s:2"] && !odd.is_empty(), "unreadable: matches no list");
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
        let parsed = russh::keys::PrivateKey::from_openssh(a.private_key_openssh.as_bytes()).unwrap();
        assert_eq!(parsed.public_key().to_openssh().unwrap(), a.public_key_openssh);
    }

    #[test]
    fn an_installed_config_yields_its_secret_for_previous_secrets() {
        let text = "agent_id = \"a-1\"\nserver = \"s:1\"\nserver_host_key = \"SHA256:k\"\nkey_file = \"agent_key\"\n\
                    secret = \"00ff\"\n";
        let i = Installed::parse(text, true).unwrap();
        assert_eq!(i.agent_id, "a-1");
        assert_eq!(i.secret, Some(SecretHex("00ff".into())));
        assert!(i.fallback_servers.is_empty());
        let with = Installed::parse(&format!("{text}fallback_servers = [\"s:2\"]\n"), true).unwrap();
        assert_eq!(with.fallback_servers, ["s:2"]);
        assert!(!format!("{i:?}").contains("00ff"), "the secret stays out of Debug");
    }
}
