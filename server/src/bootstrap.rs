//! `vigil bootstrap`: installs (or repairs, or upgrades) an agent on each host, once.
//!
//! For `transport="local"` hosts the install happens on this machine without SSH; `vigil serve` also calls it to
//! start local agents that are not running. Running it again is safe: same binary, nothing copied; new binary,
//! upgrade and restart; dead agent, restarted; one agent per directory (the agent's own lock guarantees it).

use std::path::Path;

use vigil_schema::agent_config::{AgentConfigFile, CollectPaths};

use crate::config::{Config, Host, Transport};
use crate::provision::{AgentFiles, ProvisionError, layout, local};
use crate::store::Store;
use crate::store::now_ms;

/// What a bootstrap did to one host.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Done {
    pub minted: bool,
    pub uploaded: bool,
    pub started: bool,
}

impl std::fmt::Display for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.minted {
            parts.push("new credentials");
        }
        if self.uploaded {
            parts.push("agent installed");
        }
        if self.started {
            parts.push("agent started");
        }
        if parts.is_empty() {
            parts.push("already up to date and running");
        }
        f.write_str(&parts.join(", "))
    }
}

/// Why one host could not be bootstrapped.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Unsupported(String),
}

/// The current agent id in an agent directory's agent.toml, if it is readable.
fn installed_agent_id(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(layout::CONFIG)).ok()?;
    toml::from_str::<AgentConfigFile>(&text).ok().map(|c| c.agent_id)
}

/// Bootstraps one host. Only local hosts are supported by this build; SSH hosts are refused with a clear error.
pub fn bootstrap_host(
    config: &Config,
    host: &Host,
    store: &mut Store,
    server_fingerprint: &str,
    binary: &Path,
) -> Result<Done, BootstrapError> {
    match host.transport {
        Transport::Local => bootstrap_local(config, host, store, server_fingerprint, binary),
        Transport::Ssh => Err(BootstrapError::Unsupported(format!(
            "{}: bootstrap over SSH is not available in this build (only transport=\"local\")",
            host.name
        ))),
    }
}

/// Installs or repairs the agent of a local host.
pub fn bootstrap_local(
    config: &Config,
    host: &Host,
    store: &mut Store,
    server_fingerprint: &str,
    binary: &Path,
) -> Result<Done, BootstrapError> {
    let dir = local::agent_dir(&host.name);
    local::ensure_dir(&dir)?;
    let mut done = Done { uploaded: local::install_binary(&dir, binary)?, ..Done::default() };
    let registered = store.agents()?;
    let current = installed_agent_id(&dir);
    let pinned_ok = std::fs::read_to_string(dir.join(layout::CONFIG))
        .ok()
        .and_then(|t| toml::from_str::<AgentConfigFile>(&t).ok())
        .is_some_and(|c| {
            c.server_host_key == server_fingerprint && c.server == crate::provision::endpoint_for(config, host)
        });
    let valid = current.as_ref().is_some_and(|id| registered.iter().any(|a| &a.agent_id == id && a.host == host.name))
        && dir.join(layout::KEY).is_file()
        && pinned_ok;
    if !valid {
        let files = AgentFiles::new(config, host, server_fingerprint, CollectPaths::default())?;
        local::stop(&dir)?;
        store.remove_agents_of_host(&host.name)?;
        store.register_agent(&files.record(&host.name, now_ms()))?;
        local::write_private(&dir, layout::KEY, files.creds.private_key_openssh.as_bytes())?;
        local::write_private(&dir, layout::SCHEDULE, files.schedule_json.as_bytes())?;
        local::write_private(&dir, layout::CONFIG, files.agent_toml.as_bytes())?;
        done.minted = true;
    }
    if done.uploaded && local::is_running(&dir) {
        local::stop(&dir)?;
    }
    if !local::is_running(&dir) {
        local::start(&dir)?;
        done.started = true;
    }
    Ok(done)
}

/// Stops a local agent, removes its directory and its registration.
pub fn uninstall_local(host: &str, store: &mut Store) -> Result<(), BootstrapError> {
    let dir = local::agent_dir(host);
    if dir.exists() {
        local::stop(&dir)?;
        std::fs::remove_dir_all(&dir).map_err(|source| ProvisionError::Io { path: dir.clone(), source })?;
    }
    store.remove_agents_of_host(host)?;
    Ok(())
}
