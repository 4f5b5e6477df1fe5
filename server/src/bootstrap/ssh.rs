//! Bootstrap over SSH: probe the host ([`Inspection`]), decide the [`Plan`], and execute it with the commands of the
//! host's [`Platform`] (POSIX shell, or PowerShell on Windows) on one logged-in [`Session`]; confirm a start in the
//! database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use vigil_schema::agent_config::{CollectPaths, SecretHex};

use super::agents::Build;
use super::commands::linux;
use super::credentials::{self, AgentFiles, Installed};
use super::plan::{Confirm, Inputs, Inspection, Plan, Step};
use super::platform::{self, Platform};
use super::remote::{LOOPBACK, NewKeys, RemoteError, Session};
use super::{BootstrapError, Ctx, Done, dir_name, endpoint_for, fallback_endpoints_for, layout};
use crate::config::{Host, Os, Reporting};
use crate::store::{AgentRecord, Store};

/// `key=value` lines of the probe.
fn parse_probe(text: &str) -> HashMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect()
}

/// Turns the probe's answer into an [`Inspection`], refusing hosts these commands do not serve (the agent build is
/// chosen by [`super::agents::AgentSet::for_host`]).
fn inspection(mut kv: HashMap<String, String>) -> Result<Inspection, BootstrapError> {
    let os = kv.remove("os").unwrap_or_default();
    if os != "Linux" {
        let what = if os.is_empty() { "an unknown OS (uname failed: Windows?)".to_owned() } else { os };
        return Err(BootstrapError::Unsupported(format!("{what}: no agent build for it")));
    }
    let dir = kv.remove("dir").ok_or_else(|| BootstrapError::Failed("probe gave no directory".into()))?;
    let mut notes = Vec::new();
    if let Some(t) = kv.get("noexec") {
        notes.push(format!("{t} is mounted noexec: installed in {dir} instead"));
    }
    if let Some(t) = kv.get("tmp_unusable") {
        notes.push(format!("{t} is not a writable directory: installed in {dir} instead"));
    }
    // No `df` on the host: the space is not checked (a full disk still fails the staging cleanly).
    match kv.get("free_kb").map(|v| v.parse::<u64>()) {
        Some(Ok(free)) if free < linux::NEED_KB => {
            let need = linux::NEED_KB;
            return Err(BootstrapError::Failed(format!("only {free} KiB free for {dir}, {need} KiB needed")));
        }
        Some(Ok(_)) => {}
        _ => notes.push(format!("free space for {dir} unknown (no df on the host)")),
    }
    let secret = kv.remove("cfg_secret").map(SecretHex);
    let installed = match (kv.remove("cfg_agent_id"), kv.remove("cfg_server_host_key"), kv.remove("cfg_server")) {
        (Some(agent_id), Some(server_host_key), Some(server)) => {
            let (key_present, commands) = (kv.contains_key("key"), kv.contains_key("cfg_commands"));
            let fallback_servers = Installed::probed_fallbacks(kv.get("cfg_fallback_servers").map(String::as_str));
            Some(Installed { agent_id, server_host_key, server, fallback_servers, secret, key_present, commands })
        }
        _ => None,
    };
    Ok(Inspection { dir, agent_sha: kv.remove("agent_sha"), installed, running: kv.contains_key("running"), notes })
}

/// Whether the POSIX probe ran: it names the OS. cmd.exe (Windows OpenSSH's default shell) prints nothing of it,
/// and PowerShell as the default shell prints `os=` with nothing after it (`$(uname -s)` fails there).
fn posix_answered(kv: &HashMap<String, String>) -> bool {
    kv.get("os").is_some_and(|os| !os.is_empty())
}

/// Probes the host with the command set clients.xml names (`os="windows"`), else the POSIX one, and when that gets
/// no `os=` answer (cmd.exe cannot run it), the PowerShell one: the platform found and the probe's answer.
async fn probe(host: &Host, s: &Session) -> Result<(Platform, HashMap<String, String>), BootstrapError> {
    let name = dir_name(&host.name);
    if host.os != Some(Os::Windows) {
        let kv = parse_probe(&s.run(&linux::probe(&name), None).await?.stdout_text());
        if posix_answered(&kv) {
            return Ok((Platform::Linux, kv));
        }
        let win = parse_probe(&s.run(&Platform::Windows.probe(&name), None).await?.stdout_text());
        return Ok(if win.get("os").map(String::as_str) == Some("Windows") {
            (Platform::Windows, win)
        } else {
            (Platform::Linux, kv)
        });
    }
    let kv = parse_probe(&s.check(&Platform::Windows.probe(&name), None).await?.stdout_text());
    Ok((Platform::Windows, kv))
}

/// What a probe decided: the plan, what the host has, its command set, and the agent build it gets.
type Planned = (Plan, Inspection, Platform, Arc<Build>);

/// Probes the host, picks the agent build for its OS and architecture, and decides its plan.
async fn probe_and_plan(ctx: &Ctx, host: &Host, s: &Session) -> Result<Planned, BootstrapError> {
    let (platform, kv) = probe(host, s).await?;
    let field = |k: &str| kv.get(k).map_or("", String::as_str);
    let build = ctx.agents.for_host(field("os"), field("arch"))?;
    let insp = match platform {
        Platform::Linux => inspection(kv)?,
        Platform::Windows => platform::windows_inspection(kv)?,
    };
    let registered = if ctx.writer.is_some() { ctx.with_store(|s| Ok(s.agents()?)).await? } else { ctx.registered()? };
    let endpoint = endpoint_for(&ctx.config, host);
    let fallbacks = fallback_endpoints_for(&ctx.config, host);
    let inputs = Inputs {
        registered: &registered,
        host: &host.name,
        fingerprint: &ctx.fingerprint,
        endpoint: &endpoint,
        fallbacks: &fallbacks,
        commands: host.commands,
        binary_sha: &build.sha,
        server_up: ctx.server_up,
    };
    Ok((Plan::decide(&insp, &inputs), insp, platform, build))
}

/// Installs, repairs or upgrades the agent of an SSH host; with `ctx.dry_run`, only probes and returns the plan's
/// lines. `progress` reports each step.
pub async fn bootstrap_ssh(ctx: &Ctx, host: &Host, progress: &(dyn Fn(&str) + Sync)) -> Result<Done, BootstrapError> {
    progress("connecting");
    let new_keys = match (ctx.dry_run, ctx.new_keys) {
        (true, NewKeys::Accept) => NewKeys::AcceptUnrecorded,
        (_, k) => k,
    };
    let s = Session::open(host, &ctx.known, new_keys).await?;
    let result = async {
        let tunneled = through_tunnel(ctx, host, &s, progress).await?;
        let host = tunneled.as_ref().unwrap_or(host);
        progress("probing");
        let planned = probe_and_plan(ctx, host, &s).await?;
        if ctx.dry_run {
            return Ok(Done { steps: planned.0.lines(), ..Done::default() });
        }
        execute(ctx, host, &s, &planned, progress).await
    }
    .await;
    s.close().await;
    result
}

/// For a host reporting through the tunnel: checks that its sshd forwards (a refusal is recorded for `vigil status`
/// and ends the bootstrap with the way out), and returns the host with the endpoint its agent dials, the forwarded
/// port on its loopback: the one recorded before (stable across re-bootstraps and serve restarts), else a free one
/// sshd picked, recorded for `vigil serve`'s tunnel manager.
async fn through_tunnel(
    ctx: &Ctx,
    host: &Host,
    s: &Session,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Option<Host>, BootstrapError> {
    if ctx.config.reporting(host) != Reporting::Tunnel {
        return Ok(None);
    }
    progress("checking port forwarding");
    let learned = match s.learn_forward_port().await {
        Ok(p) => p,
        // dropbear: the port stays forwarded to this session; learn one on a connection of its own, pinned to the
        // key just verified, whose end frees it for serve's tunnel.
        Err(RemoteError::CancelRefused { .. }) => {
            let pinned = Host { host_key: Some(s.fingerprint.clone()), ..host.clone() };
            let once = Session::open(&pinned, &ctx.known, NewKeys::Refuse).await?;
            let port = once.forward(0).await;
            once.close().await;
            port?
        }
        Err(e @ RemoteError::ForwardRefused { .. }) => {
            if !ctx.dry_run && ctx.has_database() {
                let (name, error) = (host.name.clone(), e.to_string());
                ctx.with_store(move |s| Ok(s.set_tunnel_refused(&name, &error, vigil_sys::clock::now_ms())?)).await?;
            }
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    let recorded = if ctx.has_database() {
        let name = host.name.clone();
        ctx.with_store(move |s| Ok(s.tunnel_port(&name)?)).await?
    } else {
        None
    };
    let port = recorded.unwrap_or(learned);
    if !ctx.dry_run {
        let name = host.name.clone();
        ctx.with_store(move |s| Ok(s.set_tunnel_port(&name, port)?)).await?;
    }
    Ok(Some(Host { endpoint: Some(format!("{LOOPBACK}:{port}")), ..host.clone() }))
}

/// Executes `plan` on the host, recording each step as it completes.
async fn execute(
    ctx: &Ctx,
    host: &Host,
    s: &Session,
    (plan, insp, platform, build): &Planned,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Done, BootstrapError> {
    let platform = *platform;
    let dir = &plan.dir;
    let mut done = Done { notes: insp.notes.clone(), ..Done::default() };
    let mut files: Option<AgentFiles> = None;
    let mut registration: Option<(AgentRecord, Option<AgentRecord>)> = None;
    let mut started_at = 0;
    for step in &plan.steps {
        progress(step.progress());
        tracing::debug!(step = %step, "step");
        match *step {
            Step::Stage { binary, credentials } => {
                if credentials {
                    let collect = CollectPaths::default();
                    files =
                        Some(AgentFiles::mint(&ctx.config, host, &ctx.fingerprint, collect, insp.previous_secrets())?);
                }
                // Linux: the binary in an exec of its own, ending on EOF (busybox's `head -c` cannot split one
                // stream), then the binary unpacks the rest and checks every sha256. Windows: one command.
                let mut parts: Vec<platform::File<'_>> = Vec::new();
                if binary {
                    parts.push((platform.binary_name(), "700", &build.bytes[..]));
                }
                if let Some(f) = &files {
                    for (name, _, bytes) in f.parts() {
                        parts.push((name, "600", bytes));
                    }
                }
                for (command, payload) in platform.stage(dir, &parts) {
                    s.check(&command, Some(&payload)).await?;
                }
                done.uploaded = binary;
            }
            Step::Register => {
                let f = files.as_ref().ok_or(BootstrapError::Plan("register before staging"))?;
                let (record, name) = (f.record(&host.name, vigil_sys::clock::now_ms()), host.name.clone());
                registration = Some(ctx.with_store(move |s| credentials::register_record(s, record, &name)).await?);
                done.minted = true;
            }
            Step::Activate { stop, binary, credentials, start } => {
                let mut names = Vec::new();
                if binary {
                    names.push(platform.binary_name().to_owned());
                }
                if credentials {
                    names.extend([layout::KEY, layout::SCHEDULE, layout::CONFIG].map(String::from));
                }
                started_at = vigil_sys::clock::now_ms();
                if let Err(e) = s.check(&platform.activate(dir, &names, stop, start, binary), None).await {
                    if let Some((_, old)) = &registration {
                        let (name, old) = (host.name.clone(), old.clone());
                        ctx.with_store(move |s| credentials::unregister(s, &name, old.as_ref())).await?;
                    }
                    return Err(e.into());
                }
                done.started = start;
            }
            Step::Confirm(how) => {
                let agent_id = match (&registration, &insp.installed) {
                    (Some((new, _)), _) => new.agent_id.clone(),
                    (None, Some(i)) => i.agent_id.clone(),
                    (None, None) => String::new(),
                };
                confirm(ctx, host, s, (platform, dir), how, &agent_id, started_at).await?;
                if how == Confirm::Running {
                    done.notes.push("server not running: agent alive, it will check in when the server starts".into());
                }
            }
        }
        done.steps.push(step.to_string());
    }
    super::finish_steps(plan, &mut done);
    Ok(done)
}

/// Whether a report of `agent_id` received at or after `since_ms` is stored: a report under new credentials can
/// only have been sealed with them (the id is new, and the endpoint opens each envelope with its agent's secret).
pub fn report_stored(store: &Store, agent_id: &str, since_ms: i64) -> Result<bool, BootstrapError> {
    Ok(store.report_stored_since(agent_id, since_ms)?)
}

/// Waits until the start is confirmed as `how` says.
async fn confirm(
    ctx: &Ctx,
    host: &Host,
    s: &Session,
    (platform, dir): (Platform, &str),
    how: Confirm,
    agent_id: &str,
    started_at: i64,
) -> Result<(), BootstrapError> {
    if how == Confirm::Running {
        if s.run(&platform.is_running(dir), None).await?.code != 0 {
            return Err(BootstrapError::Failed(format!("agent is not running; see {dir}/agent.log")));
        }
        return Ok(());
    }
    // A new agent's first report waits for its first job: allow the shortest interval on top.
    let first = ctx.config.schedule_for(&host.name).min_interval_s().unwrap_or(0);
    let timeout = ctx.checkin_timeout + Duration::from_secs(u64::from(first));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = vigil_sys::backoff::Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
    loop {
        let id = agent_id.to_owned();
        let ok = ctx
            .with_store(move |store| {
                Ok(match how {
                    Confirm::NewReport => report_stored(store, &id, started_at - 1000)?,
                    _ => store
                        .agents()?
                        .into_iter()
                        .find(|a| a.agent_id == id)
                        .and_then(|a| a.last_seen_at_ms)
                        .is_some_and(|t| t >= started_at - 1000),
                })
            })
            .await?;
        if ok {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            let what = if how == Confirm::NewReport { "delivered no report" } else { "did not check in" };
            let reach = if ctx.config.reporting(host) == Reporting::Tunnel {
                format!(
                    "is vigil serve running and holding the host's tunnel to {} (`vigil status`)?",
                    endpoint_for(&ctx.config, host)
                )
            } else {
                format!("can the host reach {}?", endpoint_for(&ctx.config, host))
            };
            return Err(BootstrapError::Failed(format!(
                "agent started but {what} within {} s ({reach} see {dir}/agent.log)",
                timeout.as_secs(),
            )));
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

/// Stops and removes an SSH host's agent (verified pid and directory only; on Windows also its Scheduled Task), and
/// forgets its registration.
pub async fn uninstall_ssh(ctx: &Ctx, host: &Host) -> Result<(), BootstrapError> {
    let s = Session::open(host, &ctx.known, ctx.new_keys).await?;
    let result = async {
        let (platform, kv) = probe(host, &s).await?;
        let dir = kv.get("dir").cloned().ok_or_else(|| BootstrapError::Failed("probe gave no directory".into()))?;
        // The probe names the directory an install would use now (the home fallback when /tmp is noexec).
        s.check(&platform.uninstall(&dir), None).await?;
        Ok::<_, BootstrapError>(())
    }
    .await;
    s.close().await;
    result?;
    let name = host.name.clone();
    ctx.with_store(move |s| Ok(s.remove_agents_of_host(&name)?)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_answered_by_cmd_or_powershell_is_no_posix_answer() {
        assert!(posix_answered(&parse_probe("os=Linux\narch=x86_64\n")));
        assert!(!posix_answered(&parse_probe("'T' is not recognized as an internal or external command\n")));
        // PowerShell as DefaultShell: `echo "os=$(uname -s)"` prints the key with an empty value.
        assert!(!posix_answered(&parse_probe("os=\narch=\ndir=/vigil-agent-w\n")));
    }

    #[test]
    fn the_probe_yields_the_old_secret_and_a_missing_key() {
        let kv = parse_probe(
            "os=Linux\narch=x86_64\ndir=/tmp/d\nfree_kb=999999\ncfg_agent_id=a-1\ncfg_server=s:1\n\
             cfg_server_host_key=SHA256:k\ncfg_secret=00ff\nrunning=1\ncfg_fallback_servers=[\"s:2\", \"s:3\"]\n",
        );
        let insp = inspection(kv).unwrap();
        let i = insp.installed.as_ref().unwrap();
        assert!(!i.key_present, "no key=1 line: the key file is missing");
        assert_eq!(i.fallback_servers, ["s:2", "s:3"]);
        assert_eq!(insp.previous_secrets(), [SecretHex("00ff".into())]);
        assert!(insp.running);
        assert!(!format!("{insp:?}").contains("00ff"));
    }

    #[test]
    fn a_host_without_df_is_not_refused_for_space_but_a_full_one_is() {
        let insp = inspection(parse_probe("os=Linux\narch=x86_64\ndir=/tmp/d\n")).unwrap();
        assert!(insp.notes.iter().any(|n| n.contains("free space for /tmp/d unknown")), "{:?}", insp.notes);
        assert!(inspection(parse_probe("os=Linux\narch=x86_64\ndir=/tmp/d\nfree_kb=10\n")).is_err());
    }
}
