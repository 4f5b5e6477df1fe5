//! The SSH endpoint of the real `vigil serve`, driven over real SSH on 127.0.0.1 by the protocol test client:
//! reports stored once each and acked only after their commit, resent reports acked again but stored once, and
//! every kind of bad peer refused (and counted) while a valid agent on another connection keeps getting acks.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use vigil_schema::proto::{ErrorCode, ServerMsg};
use vigil_schema::secret::AgentSecret;
use vigil_tests::client::{Served, VigilSession, closing_counters, host_ip, load_key, noise, now_ms, sample_report};
use vigil_tests::{ClientKey, TestDir, wait_for};

const T: Duration = Duration::from_secs(10);

/// Rows of `table` belonging to `host`'s reports.
fn rows(s: &Served, table: &str, host: &str) -> Result<i64> {
    s.count(&format!("SELECT count(*) FROM {table} t JOIN hosts h ON h.id = t.host_id WHERE h.name = ?1"), [host])
}

#[test]
fn n_reports_are_stored_with_typed_rows_and_each_is_in_the_database_when_acked() -> Result<()> {
    const N: u64 = 40;
    let s = Served::start(&["alpha"], "5s")?;
    let mut agent = s.session("alpha")?;
    let t0 = now_ms();
    let reports: Vec<_> = (1..=N).map(|seq| sample_report(seq, t0 + seq as i64, 10.0, 20.0, 30.0)).collect();
    agent.sender().reports(&reports)?;

    let mut acked = std::collections::BTreeSet::new();
    while acked.len() < N as usize {
        match agent.next(T)? {
            ServerMsg::Ack { seq } => {
                // The ack is only sent after the commit: the row must be visible to another reader right now.
                ensure!(s.has_report("alpha", seq)?, "report {seq} acked but not in the database");
                ensure!(acked.insert(seq), "report {seq} acked twice");
            }
            ServerMsg::Jobs { .. } => {}
            other => anyhow::bail!("unexpected reply {other:?}"),
        }
    }
    ensure!(acked == (1..=N).collect(), "acks: {acked:?}");

    let n = N as i64;
    ensure!(rows(&s, "reports", "alpha")? == n);
    for table in ["system_details", "cpu", "memory", "swap", "network"] {
        ensure!(rows(&s, table, "alpha")? == n, "{table}: {} rows", rows(&s, table, "alpha")?);
    }
    for table in ["partitions", "disk_usage"] {
        ensure!(rows(&s, table, "alpha")? == 2 * n, "{table}: {} rows", rows(&s, table, "alpha")?);
    }
    // Every statistics row carries the host's ip from clients.xml and points at a report of this agent.
    let agent_id = &s.creds("alpha")?.agent_id;
    let orphans = s.count(
        "SELECT count(*) FROM cpu c LEFT JOIN reports r ON r.id = c.report_id
         WHERE r.agent_id IS NOT ?1 OR c.client_ip IS NOT ?2 OR r.client_ip IS NOT ?2",
        (agent_id, host_ip(0)),
    )?;
    ensure!(orphans == 0, "{orphans} cpu rows with the wrong report or ip");
    let total_pct: f64 = s.db()?.query_row("SELECT total_pct FROM cpu LIMIT 1", [], |r| r.get(0))?;
    ensure!((total_pct - 10.0).abs() < 1e-6, "cpu total {total_pct}");
    let mounts = s.count("SELECT count(DISTINCT mount_point) FROM disk_usage", [])?;
    ensure!(mounts == 2);
    agent.close();
    Ok(())
}

#[test]
fn a_report_sent_twice_is_acked_twice_and_stored_once() -> Result<()> {
    let s = Served::start(&["alpha"], "5s")?;
    let report = sample_report(1, now_ms(), 50.0, 50.0, 50.0);
    let mut agent = s.session("alpha")?;
    agent.send_report(&report)?;
    agent.wait_acks([1], T)?;
    // The same frame content again on the same connection, then again after a reconnect (as the agent resends its
    // spool): each acked, nothing stored twice.
    agent.send_report(&report)?;
    agent.wait_acks([1], T)?;
    agent.close();
    let mut again = s.session("alpha")?;
    again.send_report(&report)?;
    again.wait_acks([1], T)?;
    // A new report still goes through after the duplicates.
    again.send_report(&sample_report(2, now_ms(), 50.0, 50.0, 50.0))?;
    again.wait_acks([2], T)?;
    ensure!(rows(&s, "reports", "alpha")? == 2);
    ensure!(rows(&s, "cpu", "alpha")? == 2);
    ensure!(rows(&s, "disk_usage", "alpha")? == 4);
    ensure!(s.count("SELECT count(*) FROM reports WHERE seq = 1", [])? == 1);
    again.close();
    Ok(())
}

/// The valid agent sends one more report and must get its ack, and the row, every time.
struct Good {
    session: VigilSession,
    seq: u64,
}

impl Good {
    fn round(&mut self, s: &Served, after: &str) -> Result<()> {
        self.seq += 1;
        self.session.send_report(&sample_report(self.seq, now_ms(), 5.0, 5.0, 5.0))?;
        self.session.wait_acks([self.seq], T).map_err(|e| e.context(format!("valid agent after {after}")))?;
        ensure!(s.has_report("good", self.seq)?, "report {} acked but missing", self.seq);
        Ok(())
    }
}

fn expect_error(session: &mut VigilSession, code: ErrorCode, what: &str) -> Result<String> {
    match session.wait_error(T)? {
        ServerMsg::Error { code: c, message, .. } if c == code => Ok(message),
        other => anyhow::bail!("{what}: expected a {code:?} error, got {other:?}"),
    }
}

/// Sends random bytes instead of SSH to `addr` and requires the peer to close the connection (end of file or a
/// reset) within `within`. A connection still open when the read times out is a failure, not a pass.
fn garbage_is_answered_by_a_close(addr: &str, within: Duration) -> Result<()> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(within))?;
    tcp.write_all(&noise(4096, 11))?;
    let mut sink = Vec::new();
    match tcp.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            anyhow::bail!("the connection is still open {within:?} after garbage ({} bytes received)", sink.len())
        }
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => {}
        Err(e) => return Err(e.into()),
    }
    ensure!(sink.len() < 4096, "the server kept talking to a peer that sent garbage");
    Ok(())
}

/// Negative control for [`garbage_is_answered_by_a_close`]: against a peer that accepts and holds the connection
/// open (what a server that ignored garbage would do) the check fails.
#[test]
fn the_garbage_check_fails_against_a_peer_that_keeps_the_connection_open() -> Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?.to_string();
    let holder = std::thread::spawn(move || listener.accept().map(|(conn, _)| conn));
    let verdict = garbage_is_answered_by_a_close(&addr, Duration::from_secs(1));
    let _held = holder.join().map_err(|_| anyhow::anyhow!("the holding peer panicked"))??;
    ensure!(verdict.is_err(), "the check passed although the peer never closed the connection");
    Ok(())
}

#[test]
fn bad_peers_are_refused_and_counted_while_a_valid_agent_keeps_getting_acks() -> Result<()> {
    let mut s = Served::start(&["good", "evil"], "5s")?;
    let good_creds = s.creds("good")?.clone();
    let evil_creds = s.creds("evil")?.clone();
    let mut good = Good { session: s.session("good")?, seq: 0 };
    good.round(&s, "start")?;

    // Forged tag: a frame of evil's own, one bit of its tag flipped.
    let mut evil = s.session("evil")?;
    evil.sender().forged_tag(&sample_report(1, now_ms(), 1.0, 1.0, 1.0))?;
    let msg = expect_error(&mut evil, ErrorCode::BadFrame, "forged tag")?;
    ensure!(msg.contains("tag"), "{msg}");
    good.round(&s, "forged tag")?;

    // Wrong secret: evil's id, sealed with keys from another secret.
    let wrong = AgentSecret::from_bytes([0x5a; 32]).derive_keys();
    evil.sender().with_keys(&wrong, &sample_report(2, now_ms(), 1.0, 1.0, 1.0))?;
    expect_error(&mut evil, ErrorCode::BadFrame, "wrong secret")?;
    good.round(&s, "wrong secret")?;

    // Another agent's id (a replay of good's frame on evil's connection), even sealed with good's real keys.
    evil.sender().as_agent(&good_creds.agent_id, &good_creds.keys, &sample_report(9_999, now_ms(), 1.0, 1.0, 1.0))?;
    expect_error(&mut evil, ErrorCode::BadFrame, "foreign agent id")?;
    good.round(&s, "foreign agent id")?;

    // Malformed JSON under a valid tag, an invalid report, and a report before hello.
    evil.sender().sealed_plaintext(0, b"{\"type\":\"hello\", not json")?;
    expect_error(&mut evil, ErrorCode::BadMessage, "malformed JSON")?;
    let mut invalid = sample_report(3, now_ms(), 1.0, 1.0, 1.0);
    if let Some(cpu) = invalid.stats.cpu.as_mut() {
        cpu.total_pct = 150.0;
    }
    evil.send_report(&invalid)?;
    match evil.wait_error(T)? {
        ServerMsg::Error { code: ErrorCode::BadReport, seq: Some(3), .. } => {}
        other => anyhow::bail!("invalid report: {other:?}"),
    }
    let mut early = VigilSession::open(&evil_creds)?;
    early.send_report(&sample_report(4, now_ms(), 1.0, 1.0, 1.0))?;
    expect_error(&mut early, ErrorCode::BadMessage, "report before hello")?;
    early.close();
    good.round(&s, "malformed messages")?;

    // Random bytes in a well-formed frame.
    let mut junk = noise(200, 7);
    junk[0] = 0xee; // not the envelope version, whatever the seed gives
    evil.sender().announce(200, &junk)?;
    expect_error(&mut evil, ErrorCode::BadFrame, "random frame")?;
    good.round(&s, "random frame")?;
    // Nothing evil sent was stored, and the connection that only misbehaved so far still works for real reports.
    evil.send_report(&sample_report(5, now_ms(), 1.0, 1.0, 1.0))?;
    evil.wait_acks([5], T)?;
    ensure!(rows(&s, "reports", "evil")? == 1, "evil has {} reports", rows(&s, "reports", "evil")?);
    ensure!(!s.has_report("good", 9_999)?);
    evil.close();

    // A frame announcing 2 MiB: refused on its prefix, then the connection is closed.
    let mut big = s.session("evil")?;
    big.sender().announce(2 << 20, &noise(1024, 3))?;
    expect_error(&mut big, ErrorCode::BadFrame, "2 MiB frame")?;
    ensure!(big.wait_closed(T)?, "the server kept a connection that announced a 2 MiB frame");
    good.round(&s, "2 MiB frame")?;

    // Random bytes instead of SSH: the server drops the connection (well before the 20 s authentication deadline).
    garbage_is_answered_by_a_close(&s.addr(), T)?;
    good.round(&s, "random bytes over TCP")?;

    // Unknown key: refused.
    let dir = TestDir::new("keys")?;
    let stranger = load_key(&ClientKey::generate(dir.path(), "stranger")?.private)?;
    let mut c = s.connect()?;
    ensure!(!c.auth_key(&good_creds.agent_id, &stranger)?, "an unknown key was accepted");
    c.close();
    // A known key under another agent's id: refused.
    let mut c = s.connect()?;
    ensure!(!c.auth_key(&good_creds.agent_id, &evil_creds.key)?, "evil's key was accepted as good");
    c.close();
    // Password and none: refused, even with the agent id as user.
    let mut c = s.connect()?;
    ensure!(!c.auth_password(&good_creds.agent_id, "hunter2")?, "a password was accepted");
    ensure!(!c.auth_none(&good_creds.agent_id)?, "auth none was accepted");
    c.close();
    good.round(&s, "refused authentication")?;

    // Exec, shell, pty, another subsystem, port forwarding: refused on an authenticated connection.
    let mut c = s.connect()?;
    ensure!(c.auth_key(&evil_creds.agent_id, &evil_creds.key)?);
    let mut ch = c.session()?;
    ensure!(!ch.exec("id")?, "exec was allowed");
    ensure!(!ch.shell()?, "shell was allowed");
    ensure!(!ch.pty()?, "pty was allowed");
    ensure!(!ch.subsystem("sftp")?, "sftp was allowed");
    ensure!(!c.tcpip_forward("127.0.0.1", 0)?, "a remote forward was granted");
    ensure!(!c.direct_tcpip("127.0.0.1", u32::from(s.port))?, "a local forward was opened");
    c.close();
    good.round(&s, "exec/shell/forward requests")?;

    // The valid agent's history is exactly what it sent.
    ensure!(rows(&s, "reports", "good")? == good.seq as i64);
    good.session.close();

    // The endpoint counted every refusal: its closing summary on SIGTERM.
    let code = s.terminate(Duration::from_secs(20))?;
    let log = s.log();
    ensure!(code == Some(0), "serve exited with {code:?}\n{}", s.logs());
    let counters = closing_counters(&log).ok_or_else(|| anyhow::anyhow!("no closing summary\n{}", s.logs()))?;
    let get = |k: &str| counters.get(k).copied().unwrap_or(0);
    ensure!(get("bad_tags") == 2, "bad_tags (forged tag, wrong secret): {counters:?}");
    ensure!(get("bad_frames") == 3, "bad_frames (foreign id, random frame, 2 MiB): {counters:?}");
    ensure!(get("bad_messages") == 2, "bad_messages (malformed JSON, report before hello): {counters:?}");
    ensure!(get("bad_reports") == 1, "bad_reports: {counters:?}");
    ensure!(get("auth_rejected") == 3, "auth_rejected (unknown key, foreign key, password): {counters:?}");
    ensure!(get("requests_refused") == 6, "requests_refused (exec, shell, pty, sftp, both forwards): {counters:?}");
    ensure!(get("reports_stored") == good.seq + 1, "reports_stored: {counters:?}");
    for line in ["bad envelope tag", "authentication refused", "request refused: exec"] {
        ensure!(log.contains(line), "no log line with {line:?}\n{log}");
    }
    Ok(())
}

/// Rewrites the `server_host_key` line of `host`'s agent.toml to pin `pin`.
fn pin_host_key(s: &Served, host: &str, pin: &str) -> Result<()> {
    let path = s.agent_dir(host).join("agent.toml");
    let text = std::fs::read_to_string(&path)?;
    ensure!(text.lines().any(|l| l.starts_with("server_host_key")), "no server_host_key in {text}");
    let edited: Vec<String> = text
        .lines()
        .map(|l| if l.starts_with("server_host_key") { format!("server_host_key = \"{pin}\"") } else { l.to_owned() })
        .collect();
    std::fs::write(&path, edited.join("\n") + "\n")?;
    Ok(())
}

#[test]
fn an_agent_pinning_another_host_key_does_not_connect() -> Result<()> {
    // The real vigil-agent, enrolled by `vigil enroll`, with its pinned host key replaced by another one.
    let s = Served::start(&["alpha"], "1s")?;
    ensure!(s.creds("alpha")?.server_host_key == s.fingerprint, "the enrolled pin is not the key serve printed");
    let wrong_pin = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    pin_host_key(&s, "alpha", wrong_pin)?;
    let mut agent = s.spawn_agent("alpha")?;
    wait_for(T, "the mismatch in the agent's log", || agent.logs().contains("does not match the pinned"))
        .with_context(|| format!("{}\n{}", agent.logs(), s.logs()))?;
    wait_for(T, "three reports made", || agent.produced() >= 3).with_context(|| agent.logs())?;
    // Nothing reached the server: no report stored, no authentication, the reports are kept in the spool.
    ensure!(s.stored_seqs("alpha")?.is_empty(), "reports stored despite the wrong pin: {:?}", s.stored_seqs("alpha")?);
    let agent_id = &s.creds("alpha")?.agent_id;
    let seen =
        s.count("SELECT count(*) FROM agents WHERE agent_id = ?1 AND last_seen_at_ms IS NOT NULL", [agent_id])?;
    ensure!(seen == 0, "the server saw the agent despite the wrong pin\n{}", s.logs());
    ensure!(agent.spool()?.spooled.len() >= 3, "the reports are not kept for later: {:?}", agent.spool()?);
    agent.terminate()?;

    // Positive control: the same agent with the right pin delivers what it kept.
    pin_host_key(&s, "alpha", &s.fingerprint)?;
    let mut agent = s.spawn_agent("alpha")?;
    wait_for(Duration::from_secs(30), "the spooled reports to arrive", || {
        s.stored_seqs("alpha").is_ok_and(|v| v.len() >= 3)
    })
    .with_context(|| format!("{}\n{}", agent.logs(), s.logs()))?;
    agent.terminate()?;
    Ok(())
}
