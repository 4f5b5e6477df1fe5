//! Issue 17, the agent's side: an agent in direct mode knows every `vigil serve` node (agent.toml's
//! `fallback_servers`) and delivers through another one when the node it dials is down or dies, without a restart or
//! a re-bootstrap, each report stored once. The real `vigil serve` and `vigil-agent` on 127.0.0.1.
//!
//! Two serve processes never share one SQLite file (not supported): the second case kills node A with SIGKILL and
//! only then starts node B on another port with A's data directory (so the same host key, as the nodes of one
//! cluster present, and the same database).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use vigil_tests::client::{RealAgent, Served};
use vigil_tests::fleet::ALL_COLLECTORS;
use vigil_tests::{SIGKILL, free_port, wait_for};

/// Patience for things that take a few report intervals (or a backoff step) on a loaded machine.
const T: Duration = Duration::from_secs(30);
const HOST: &str = "alpha";

/// Points the enrolled agent of `host` at `server` first, then `fallbacks`, in its agent.toml.
fn point_agent(s: &Served, host: &str, server: &str, fallbacks: &[&str]) -> Result<()> {
    let path = s.agent_dir(host).join("agent.toml");
    let text = std::fs::read_to_string(&path)?;
    let list: Vec<String> = fallbacks.iter().map(|f| format!("\"{f}\"")).collect();
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("server = ") {
            out.push_str(&format!("server = \"{server}\"\nfallback_servers = [{}]\n", list.join(", ")));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    ensure!(out.contains("fallback_servers"), "no server line in {text}");
    std::fs::write(&path, out).context("writing agent.toml")
}

/// Whether the agent logged that it delivers to `addr` (its `connected` line names the server).
fn delivered_to(agent: &RealAgent, addr: &str) -> bool {
    agent.logs().lines().any(|l| l.contains("delivering to this server") && l.contains(addr))
}

/// Reports stored more than once for (agent, seq): none, whatever node stored them.
fn stored_twice(s: &Served, host: &str) -> Result<i64> {
    s.count(
        "SELECT count(*) FROM (SELECT seq FROM reports WHERE agent_id = ?1 GROUP BY agent_id, seq HAVING count(*) > 1)",
        [&s.creds(host)?.agent_id],
    )
}

#[test]
fn an_agent_whose_server_is_down_delivers_to_its_fallback() -> Result<()> {
    let s = Served::start(&[HOST], "1s")?;
    // Nothing listens on `dead`: every dial there is refused.
    let dead = format!("127.0.0.1:{}", free_port());
    point_agent(&s, HOST, &dead, &[&s.addr()])?;
    let mut agent = s.spawn_agent(HOST)?;
    wait_for(T, "three reports stored through the fallback", || s.stored_seqs(HOST).is_ok_and(|v| v.len() >= 3))
        .with_context(|| format!("{}\n{}", agent.logs(), s.logs()))?;
    ensure!(delivered_to(&agent, &s.addr()), "the agent did not log the node it delivers to\n{}", agent.logs());
    ensure!(
        agent.logs().lines().any(|l| l.contains("session ended") && l.contains(&dead)),
        "the dead server was not tried first\n{}",
        agent.logs()
    );
    agent.terminate()?;
    let d = s.verify_exactly_once(HOST)?;
    ensure!(d.stored >= 3, "{d:?}");
    ensure!(stored_twice(&s, HOST)? == 0);
    Ok(())
}

#[test]
fn when_its_node_dies_the_agent_delivers_through_the_other_without_a_restart() -> Result<()> {
    let mut s = Served::start(&[HOST], "1s")?;
    let node_a = s.addr();
    let port_b = free_port();
    let node_b = format!("127.0.0.1:{port_b}");
    point_agent(&s, HOST, &node_a, &[&node_b])?;
    let mut agent = s.spawn_agent(HOST)?;
    wait_for(T, "reports stored through node A", || s.stored_seqs(HOST).is_ok_and(|v| v.len() >= 2))
        .with_context(|| format!("{}\n{}", agent.logs(), s.logs()))?;
    ensure!(delivered_to(&agent, &node_a), "{}", agent.logs());
    let pid = agent.proc().pid();

    // Node A dies without a goodbye.
    let serve = s.serve()?;
    serve.signal(SIGKILL)?;
    let status = serve.wait_exit(Duration::from_secs(10))?;
    ensure!(status.code().is_none(), "serve exited by itself ({status:?}) instead of being killed");
    let last_by_a = s.stored_seqs(HOST)?.last().copied().unwrap_or(0);

    // Node B: A's data directory (host key and database), its own port.
    let fingerprint_a = s.fingerprint.clone();
    s.port = port_b;
    s.set_jobs(&s.jobs_text("1s", ALL_COLLECTORS))?;
    s.start_serve()?;
    ensure!(s.fingerprint == fingerprint_a, "node B presents another host key: {} vs {fingerprint_a}", s.fingerprint);
    ensure!(s.addr() == node_b);

    wait_for(T, "new reports stored through node B", || {
        s.stored_seqs(HOST).is_ok_and(|v| v.iter().filter(|&&q| q > last_by_a).count() >= 3)
    })
    .with_context(|| format!("{}\n{}", agent.logs(), s.logs()))?;
    ensure!(delivered_to(&agent, &node_b), "the agent did not log the node it delivers to now\n{}", agent.logs());
    ensure!(agent.is_running() && agent.proc().pid() == pid, "the agent was restarted\n{}", agent.logs());

    agent.terminate()?;
    // Reports A stored but had not acknowledged when it died were sent again to B: stored once all the same.
    let d = s.verify_exactly_once(HOST)?;
    ensure!(stored_twice(&s, HOST)? == 0, "{d:?}");
    Ok(())
}
