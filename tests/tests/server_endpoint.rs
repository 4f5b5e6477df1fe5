//! The endpoint of the real `vigil serve` against registrations changed by other processes and against one key
//! opening many connections: a session whose key is no longer registered is closed within the allow-list's refresh
//! period, and one agent key holds at most `MAX_CONNECTIONS_PER_AGENT` live connections.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use vigil_schema::proto::{ErrorCode, ServerMsg};
use vigil_server::config::jobs::DEFAULT_MAX_CONNECTIONS_PER_AGENT as MAX_CONNECTIONS_PER_AGENT;
use vigil_server::serve::REGISTRY_REFRESH_EVERY;
use vigil_tests::client::{Event, Served, VigilSession, now_ms, sample_report};
use vigil_tests::wait_for;

const T: Duration = Duration::from_secs(10);

/// Re-enrolls `host` into a new directory from another process: new credentials replace the old registration.
fn re_enroll(s: &Served, host: &str) -> Result<()> {
    let dir = s.work.path().join("agents").join(format!("{host}-again"));
    let dir = dir.display().to_string();
    let out = s.work.vigil(&["enroll", host, "--dir", &dir]).output()?;
    ensure!(out.status.success(), "vigil enroll: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

#[test]
fn a_session_whose_key_was_replaced_by_another_process_is_closed_within_the_refresh_period() -> Result<()> {
    let s = Served::start(&["alpha"], "1s")?;
    // The real agent, reporting every second, and a protocol client on a second connection with the same key.
    let agent = s.spawn_agent("alpha")?;
    wait_for(T, "the real agent's first report", || s.stored_seqs("alpha").is_ok_and(|v| !v.is_empty()))
        .map_err(|e| e.context(format!("{}\n{}", agent.logs(), s.logs())))?;
    let mut probe = s.session("alpha")?;
    probe.send_report(&sample_report(1_000_000, now_ms(), 1.0, 1.0, 1.0))?;
    probe.wait_acks([1_000_000], T)?;

    re_enroll(&s, "alpha")?;
    // Within the refresh period (and a margin for a loaded machine), the probe is told and closed.
    let bound = REGISTRY_REFRESH_EVERY * 3;
    let mut told = false;
    loop {
        match probe.recv(bound)? {
            Event::Msg(ServerMsg::Error { code: ErrorCode::Unknown, .. }) => told = true,
            Event::Msg(_) => {}
            Event::Closed => break,
            Event::Timeout => bail!("session with a replaced key still open after {bound:?}\n{}", s.logs()),
        }
    }
    ensure!(told, "closed without telling the agent why: {:?}", probe.received);
    ensure!(s.log().contains("agent key no longer registered"), "{}", s.logs());

    // The real agent is cut off too: nothing more of it is stored.
    let settle = REGISTRY_REFRESH_EVERY + Duration::from_secs(1);
    std::thread::sleep(settle);
    let before = s.stored_seqs("alpha")?.len();
    std::thread::sleep(Duration::from_secs(3));
    let after = s.stored_seqs("alpha")?.len();
    ensure!(after == before, "the revoked agent still got {} reports stored\n{}", after - before, agent.logs());
    Ok(())
}

#[test]
fn one_agent_key_holds_at_most_the_cap_of_live_connections() -> Result<()> {
    let s = Served::start(&["alpha"], "5s")?;
    let creds = s.creds("alpha")?;
    let mut open: Vec<VigilSession> =
        (0..MAX_CONNECTIONS_PER_AGENT).map(|_| VigilSession::open(creds)).collect::<Result<_>>()?;
    // One more with the same key is refused at authentication.
    let mut extra = s.connect()?;
    ensure!(!extra.auth_key(&creds.agent_id, &creds.key)?, "connection {} beyond the cap was accepted", open.len() + 1);
    extra.close();
    open.remove(0).close();
    // A place comes back once a connection ends.
    let mut accepted = false;
    wait_for(T, "a place to come back after a connection ended", || {
        let Ok(mut c) = s.connect() else { return false };
        accepted = c.auth_key(&creds.agent_id, &creds.key).unwrap_or(false);
        c.close();
        accepted
    })?;
    drop(open);
    Ok(())
}
