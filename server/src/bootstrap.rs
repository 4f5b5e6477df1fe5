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
    /// What the operator should know (a noexec temp directory, a server that was not running, ...).
    pub notes: Vec<String>,
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
        f.write_str(&parts.join(", "))?;
        for n in &self.notes {
            write!(f, "; {n}")?;
        }
        Ok(())
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
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
    #[error("{0}")]
    Failed(String),
}

/// The current agent id in an agent directory's agent.toml, if it is readable.
fn installed_config(dir: &Path) -> Option<AgentConfigFile> {
    let text = std::fs::read_to_string(dir.join(layout::CONFIG)).ok()?;
    toml::from_str::<AgentConfigFile>(&text).ok()
}

/// What an installed agent.toml says, as far as deciding whether its credentials still serve.
struct Installed<'a> {
    agent_id: &'a str,
    server_host_key: &'a str,
    server: &'a str,
}

/// Whether an installed agent's credentials can stay: its id is registered for this host, and it pins the current
/// server key and dials the current endpoint. Otherwise bootstrap mints new ones. Local and SSH installs share it.
fn credentials_current(
    registered: &[crate::store::AgentRecord],
    host: &str,
    installed: Option<Installed<'_>>,
    fingerprint: &str,
    endpoint: &str,
) -> bool {
    installed.is_some_and(|i| {
        registered.iter().any(|a| a.agent_id == i.agent_id && a.host == host)
            && i.server_host_key == fingerprint
            && i.server == endpoint
    })
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
    let installed = installed_config(&dir);
    let valid = credentials_current(
        &store.agents()?,
        &host.name,
        installed.as_ref().map(|c| Installed {
            agent_id: &c.agent_id,
            server_host_key: &c.server_host_key,
            server: &c.server,
        }),
        server_fingerprint,
        &crate::provision::endpoint_for(config, host),
    ) && dir.join(layout::KEY).is_file();
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

/// Everything a bootstrap run shares between hosts.
#[derive(Debug)]
pub struct Ctx {
    pub config: std::sync::Arc<Config>,
    pub store: std::sync::Mutex<Store>,
    pub fingerprint: String,
    pub binary_path: std::path::PathBuf,
    pub binary: Vec<u8>,
    pub binary_sha: String,
    pub known: crate::remote::KnownHosts,
    pub new_keys: crate::remote::NewKeys,
    /// Whether `vigil serve` answers on its listen address: then check-in is confirmed, else only the process.
    pub server_up: bool,
    /// How long to wait for a check-in.
    pub checkin_timeout: std::time::Duration,
}

impl Ctx {
    fn store(&self) -> Result<std::sync::MutexGuard<'_, Store>, BootstrapError> {
        self.store.lock().map_err(|_| BootstrapError::Failed("store lock poisoned".into()))
    }
}

/// `key=value` lines of the probe.
fn parse_probe(text: &str) -> std::collections::HashMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect()
}

/// Installs, repairs or upgrades the agent of an SSH host. `step` reports progress.
pub async fn bootstrap_ssh(ctx: &Ctx, host: &Host, step: &(dyn Fn(&str) + Sync)) -> Result<Done, BootstrapError> {
    use crate::remote::Session;

    if host.os == Some(crate::config::Os::Windows) {
        return Err(BootstrapError::Unsupported(
            "Windows: no Windows agent build ships with this server (the commands exist, the binary does not)".into(),
        ));
    }
    step("connecting");
    let s = Session::open(host, &ctx.known, ctx.new_keys).await?;
    let result = install_over(ctx, host, &s, step).await;
    s.close().await;
    result
}

async fn install_over(
    ctx: &Ctx,
    host: &Host,
    s: &crate::remote::Session,
    step: &(dyn Fn(&str) + Sync),
) -> Result<Done, BootstrapError> {
    use crate::bootstrap_cmds::linux;

    step("probing");
    let probe = s.run(&linux::probe(&crate::provision::dir_name(&host.name)), None).await?;
    let kv = parse_probe(&probe.stdout_text());
    let os = kv.get("os").cloned().unwrap_or_default();
    let arch = kv.get("arch").cloned().unwrap_or_default();
    if os != "Linux" {
        let what = if os.is_empty() { "an unknown OS (uname failed: Windows?)".to_owned() } else { os };
        return Err(BootstrapError::Unsupported(format!("{what}: no agent build for it")));
    }
    if arch != std::env::consts::ARCH {
        return Err(BootstrapError::Unsupported(format!(
            "Linux {arch}: no agent build for it (this server ships {})",
            std::env::consts::ARCH
        )));
    }
    if let Some(m) = kv.get("missing") {
        return Err(BootstrapError::Unsupported(format!("the host lacks `{m}` (util-linux/coreutils)")));
    }
    let dir = kv.get("dir").cloned().ok_or_else(|| BootstrapError::Failed("probe gave no directory".into()))?;
    let mut done = Done::default();
    if let Some(t) = kv.get("noexec") {
        done.notes.push(format!("{t} is mounted noexec: installed in {dir} instead"));
    }
    if let Some(t) = kv.get("tmp_unusable") {
        done.notes.push(format!("{t} is not a writable directory: installed in {dir} instead"));
    }
    let free: u64 = kv.get("free_kb").and_then(|v| v.parse().ok()).unwrap_or(0);
    if free < linux::NEED_KB {
        return Err(BootstrapError::Failed(format!("only {free} KiB free for {dir}, {} KiB needed", linux::NEED_KB)));
    }
    let endpoint = crate::provision::endpoint_for(&ctx.config, host);
    let installed = match (kv.get("cfg_agent_id"), kv.get("cfg_server_host_key"), kv.get("cfg_server")) {
        (Some(agent_id), Some(server_host_key), Some(server)) => Some(Installed { agent_id, server_host_key, server }),
        _ => None,
    };
    let creds_ok = credentials_current(&ctx.store()?.agents()?, &host.name, installed, &ctx.fingerprint, &endpoint);
    let running = kv.contains_key("running");
    let mut agent_id = kv.get("cfg_agent_id").cloned().unwrap_or_default();
    // Everything the host receives travels on one stdin, in one command: each exec costs a session on the host.
    let mut parts = Vec::new();
    let mut payload: Vec<u8> = Vec::new();
    let mut add = |name: &str, mode: &'static str, bytes: &[u8]| {
        parts.push(linux::Part { name: name.to_owned(), mode, len: bytes.len() });
        payload.extend_from_slice(bytes);
    };
    if kv.get("agent_sha") != Some(&ctx.binary_sha) {
        add(layout::BINARY, "700", &ctx.binary);
        done.uploaded = true;
    }
    if !creds_ok {
        let files = AgentFiles::new(&ctx.config, host, &ctx.fingerprint, CollectPaths::default())?;
        add(layout::KEY, "600", files.creds.private_key_openssh.as_bytes());
        add(layout::SCHEDULE, "600", files.schedule_json.as_bytes());
        add(layout::CONFIG, "600", files.agent_toml.as_bytes());
        // Registered before the agent starts, so its first check-in is accepted.
        let mut store = ctx.store()?;
        store.remove_agents_of_host(&host.name)?;
        store.register_agent(&files.record(&host.name, now_ms()))?;
        agent_id = files.creds.agent_id.clone();
        done.minted = true;
    }
    let restart = running && (done.uploaded || done.minted);
    let start = !running || restart;
    step(match (done.uploaded, done.minted, start) {
        (true, _, _) => "uploading and starting agent",
        (false, true, _) => "writing credentials and starting agent",
        (false, false, true) => "starting agent",
        (false, false, false) => "checking directory",
    });
    let started_at = now_ms();
    let script = linux::install(&dir, &parts, restart, start);
    s.check(&script, (!payload.is_empty()).then_some(payload.as_slice())).await?;
    done.started = start;
    if ctx.server_up && (done.started || done.minted) {
        step("waiting for check-in");
        let deadline = tokio::time::Instant::now() + ctx.checkin_timeout;
        loop {
            let seen =
                ctx.store()?.agents()?.into_iter().find(|a| a.agent_id == agent_id).and_then(|a| a.last_seen_at_ms);
            if seen.is_some_and(|t| t >= started_at - 1000) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(BootstrapError::Failed(format!(
                    "agent started but did not check in within {} s (can the host reach {endpoint}? see {dir}/agent.log)",
                    ctx.checkin_timeout.as_secs()
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    } else if !ctx.server_up {
        if s.run(&linux::is_running(&dir), None).await?.code != 0 {
            return Err(BootstrapError::Failed(format!("agent is not running; see {dir}/agent.log")));
        }
        done.notes.push("server not running: agent alive, it will check in when the server starts".into());
    }
    Ok(done)
}

/// Stops and removes an SSH host's agent, and forgets its registration.
pub async fn uninstall_ssh(ctx: &Ctx, host: &Host) -> Result<(), BootstrapError> {
    use crate::bootstrap_cmds::linux;
    let s = crate::remote::Session::open(host, &ctx.known, ctx.new_keys).await?;
    let result = async {
        let probe = s.run(&linux::probe(&crate::provision::dir_name(&host.name)), None).await?;
        let kv = parse_probe(&probe.stdout_text());
        let dir = kv.get("dir").cloned().ok_or_else(|| BootstrapError::Failed("probe gave no directory".into()))?;
        // The probe names the directory an install would use now (the home fallback when /tmp is noexec).
        s.check(&linux::uninstall(&dir), None).await?;
        Ok::<_, BootstrapError>(())
    }
    .await;
    s.close().await;
    result?;
    ctx.store()?.remove_agents_of_host(&host.name)?;
    Ok(())
}

/// One host's outcome.
#[derive(Debug)]
pub struct HostResult {
    pub host: String,
    pub result: Result<Done, BootstrapError>,
}

/// Bootstraps `hosts` with at most `parallel` at once, a progress line per host on stderr, and returns every
/// outcome in the hosts' order.
pub async fn run_all(ctx: std::sync::Arc<Ctx>, hosts: Vec<Host>, parallel: usize) -> Vec<HostResult> {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let width = hosts.iter().map(|h| h.name.len()).max().unwrap_or(4);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (i, host) in hosts.into_iter().enumerate() {
        let bar = multi
            .add(ProgressBar::new_spinner().with_style(style.clone()).with_prefix(format!("{:width$}", host.name)));
        bar.set_message("waiting");
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        let ctx = ctx.clone();
        let slots = slots.clone();
        set.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let started = std::time::Instant::now();
            let step = |m: &str| {
                tracing::debug!(host = %host.name, elapsed_ms = started.elapsed().as_millis() as u64, "{m}");
                bar.set_message(m.to_owned());
            };
            let result = match host.transport {
                Transport::Ssh => bootstrap_ssh(&ctx, &host, &step).await,
                Transport::Local => {
                    step("installing locally");
                    let ctx2 = ctx.clone();
                    let host2 = host.clone();
                    tokio::task::spawn_blocking(move || {
                        let mut store = ctx2.store()?;
                        bootstrap_local(&ctx2.config, &host2, &mut store, &ctx2.fingerprint, &ctx2.binary_path)
                    })
                    .await
                    .unwrap_or_else(|e| Err(BootstrapError::Failed(e.to_string())))
                }
            };
            match &result {
                Ok(done) => bar.finish_with_message(format!("ok: {done}")),
                Err(e) => bar.finish_with_message(format!("FAILED: {e}")),
            }
            (i, HostResult { host: host.name.clone(), result })
        });
    }
    let mut out: Vec<(usize, HostResult)> = set.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, host: &str) -> crate::store::AgentRecord {
        crate::store::AgentRecord {
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
    fn credentials_stay_only_when_registered_pinned_and_pointed_right() {
        let reg = [record("web-1", "web")];
        let ok = |id, pin, server| Some(Installed { agent_id: id, server_host_key: pin, server });
        assert!(credentials_current(&reg, "web", ok("web-1", "SHA256:k", "s:1"), "SHA256:k", "s:1"));
        assert!(!credentials_current(&reg, "web", None, "SHA256:k", "s:1"), "nothing installed");
        assert!(!credentials_current(&reg, "db", ok("web-1", "SHA256:k", "s:1"), "SHA256:k", "s:1"), "other host");
        assert!(!credentials_current(&reg, "web", ok("web-2", "SHA256:k", "s:1"), "SHA256:k", "s:1"), "unregistered");
        assert!(!credentials_current(&reg, "web", ok("web-1", "SHA256:old", "s:1"), "SHA256:k", "s:1"), "new key");
        assert!(!credentials_current(&reg, "web", ok("web-1", "SHA256:k", "s:2"), "SHA256:k", "s:1"), "moved");
    }
}
