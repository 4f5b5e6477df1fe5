//! `vigil`'s manners as a command: output into a pipe whose reader is gone ends quietly (no panic, no error
//! message), refinery's INFO lines stay out of a command's output, `vigil status` stays readable whatever an agent
//! sends as its version, and an edit of `[server]` is refused until a restart and shown by `vigil status`.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use vigil_schema::proto::{AgentMsg, CONTROL_SEQ, PROTOCOL_VERSION, ServerMsg};
use vigil_tests::client::{Served, VigilSession};
use vigil_tests::wait_for;

const T: Duration = Duration::from_secs(10);

#[test]
fn every_command_ends_quietly_when_its_output_pipe_is_closed() -> Result<()> {
    let s = Served::start(&["alpha"], "5s")?;
    let commands: [&[&str]; 10] = [
        &["status"],
        &["status", "--json"],
        &["alerts"],
        &["alerts", "--json"],
        &["check"],
        &["check", "--verbose"],
        &["host-key"],
        &["runs"],
        &["runs", "--json"],
        &["bootstrap", "--all", "--dry-run"],
    ];
    for args in commands {
        // The reader is gone before the command writes anything: its first write fails with EPIPE.
        let (reader, writer) = std::io::pipe()?;
        drop(reader);
        let out = s.work.vigil(args).stdout(writer).stderr(Stdio::piped()).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!stderr.contains("panicked"), "vigil {args:?} panicked: {stderr}");
        ensure!(!stderr.contains("Broken pipe") && !stderr.contains("failed printing"), "vigil {args:?}: {stderr}");
        // The dry run probes the host (a loopback address where nothing listens): its log line about that is
        // expected; every other command has nothing to say.
        if args[0] != "bootstrap" {
            ensure!(stderr.trim().is_empty(), "vigil {args:?} was not quiet: {stderr}");
        }
        ensure!(matches!(out.status.code(), Some(0 | 141)), "vigil {args:?} exited {:?}: {stderr}", out.status);
    }
    Ok(())
}

#[test]
fn commands_do_not_print_migration_chatter() -> Result<()> {
    let s = Served::start(&["alpha"], "5s")?;
    for args in [&["status"][..], &["alerts"][..]] {
        let out = s.work.vigil(args).env_remove("VIGIL_LOG").output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.success(), "vigil {args:?}: {stderr}");
        ensure!(!stderr.contains("migration"), "vigil {args:?} printed: {stderr}");
    }
    ensure!(!s.log().contains("no migrations to apply"), "serve logged refinery's chatter:\n{}", s.log());
    Ok(())
}

#[test]
fn status_stays_readable_whatever_an_agent_calls_its_version() -> Result<()> {
    let s = Served::start(&["alpha"], "5s")?;
    let creds = s.creds("alpha")?;
    let mut session = VigilSession::open(creds)?;
    // ANSI (clear screen, colour), OSC (window title, ended by BEL), a carriage return, and padding to near the
    // frame limit.
    let version = format!("1.0\u{1b}[2J\u{1b}[31m\u{1b}]0;owned\u{7}\rX{}", "A".repeat(900 * 1024));
    let hello = AgentMsg::Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: version,
        schedule_hash: creds.schedule_hash.clone(),
    };
    session.sender().msg(CONTROL_SEQ, &hello)?;
    // The hello is refused at validation: its version never reaches the agents table.
    match session.next(T)? {
        ServerMsg::Error { message, .. } => ensure!(message.contains("agent_version"), "{message}"),
        other => anyhow::bail!("a hello with escapes was not refused: {other:?}"),
    }
    // The same connection then says hello properly, and that check-in is recorded.
    let clean = AgentMsg::Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: "1.0-clean".into(),
        schedule_hash: creds.schedule_hash.clone(),
    };
    session.sender().msg(CONTROL_SEQ, &clean)?;
    ensure!(matches!(session.next(T)?, ServerMsg::Welcome { .. }), "no welcome: {:?}", session.received);
    wait_for(T, "the check-in to be recorded", || {
        s.count("SELECT count(*) FROM agents WHERE version = '1.0-clean'", []).is_ok_and(|n| n == 1)
    })?;
    ensure!(
        s.count("SELECT count(*) FROM agents WHERE version LIKE '%owned%'", [])? == 0,
        "the dirty version was stored"
    );
    let table = s.status_table()?;
    ensure!(!table.chars().any(|c| c.is_control() && c != '\n'), "raw control characters: {:?}", &table[..200]);
    ensure!(table.lines().all(|l| l.chars().count() < 400), "an unreadable line: {} chars", table.len());
    ensure!(table.contains("alpha"), "{table}");
    let json = s.status_json()?;
    ensure!(json["hosts"][0]["name"] == "alpha");
    session.close();
    Ok(())
}

#[test]
fn an_edit_of_server_database_is_refused_and_status_keeps_reading_the_database_in_use() -> Result<()> {
    let s = Served::start(&["alpha"], "5s")?;
    let mut session = s.session("alpha")?;
    session.send_report(&vigil_tests::client::sample_report(1, vigil_tests::client::now_ms(), 42.0, 1.0, 1.0))?;
    session.wait_acks([1], T)?;
    let jobs = std::fs::read_to_string(s.work.jobs_path())?;
    let other = s.work.path().join("elsewhere.db");
    let edited = jobs
        .replace("retention_days = 30", &format!("retention_days = 30\ndatabase = {:?}", other.display().to_string()));
    ensure!(edited != jobs, "no retention line in {jobs}");
    s.set_jobs(&edited)?;
    wait_for(T, "serve to log the refused edit", || s.log().contains("restart needed for [server] database"))
        .map_err(|e| e.context(s.logs()))?;
    let mut json = serde_json::Value::Null;
    wait_for(T, "status to show the restart", || {
        json = s.status_json().unwrap_or_default();
        json["restart_needed"] == "database"
    })
    .map_err(|e| e.context(format!("{json}")))?;
    ensure!(json["hosts"][0]["cpu_pct"] == 42.0, "status does not read the database in use: {json}");
    ensure!(!other.exists(), "the edited database was created without a restart");
    Ok(())
}

#[test]
fn an_edit_of_server_listen_is_refused_until_restart_and_shown_by_status() -> Result<()> {
    let s = Served::start(&["alpha"], "5s")?;
    let jobs = std::fs::read_to_string(s.work.jobs_path())?;
    let other = vigil_tests::free_port();
    let edited = jobs.replace(&format!("127.0.0.1:{}", s.port), &format!("127.0.0.1:{other}"));
    ensure!(edited != jobs, "no listen line in {jobs}");
    // A live-applicable edit in the same save still applies.
    let edited = edited.replace("retention_days = 30", "retention_days = 20");
    s.set_jobs(&edited)?;
    wait_for(T, "serve to log the refused edit", || s.log().contains("restart needed for [server] listen"))
        .map_err(|e| e.context(s.logs()))?;
    // Still serving on the old port, and not on the new one.
    let mut session = s.session("alpha").context("the running endpoint")?;
    ensure!(!vigil_tests::port_accepts(other), "serve listens on the edited port without a restart");
    let mut json = serde_json::Value::Null;
    wait_for(T, "status to show the restart", || {
        json = s.status_json().unwrap_or_default();
        json["restart_needed"] == "listen"
    })
    .map_err(|e| e.context(format!("{json}")))?;
    let table = s.status_table()?;
    ensure!(table.contains("restart needed for [server] listen"), "{table}");
    ensure!(json["config_error"].is_null(), "{json}");
    session.send_report(&vigil_tests::client::sample_report(1, vigil_tests::client::now_ms(), 1.0, 1.0, 1.0))?;
    session.wait_acks([1], T)?;
    // Back to the running value: nothing is pending any more.
    s.set_jobs(&jobs)?;
    wait_for(T, "status to drop the restart", || s.status_json().is_ok_and(|j| j["restart_needed"].is_null()))?;
    Ok(())
}
