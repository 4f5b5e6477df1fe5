//! Live config on the real `vigil serve`: clients.xml and jobs.toml edited the way editors save (write a temporary
//! file, rename it over the original) while agents are connected over real SSH.
//!
//! A removed host's session is closed and its key refused, and re-adding it restores it; a changed schedule reaches
//! a connected agent as a new job list without reconnecting; an invalid edit keeps the last good config in force
//! and is shown by `vigil status`, as a table and as JSON.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use vigil_schema::job::Collector;
use vigil_schema::proto::{ErrorCode, ServerMsg};
use vigil_tests::client::{Event, Served, VigilSession, now_ms, sample_report};
use vigil_tests::wait_for;

const T: Duration = Duration::from_secs(10);
/// The brief: a valid edit applies within 1 s. The half second on top absorbs a loaded test machine (two cores
/// shared with cargo); this is a bound on correctness, not a speed measurement.
const APPLY_WITHIN: Duration = Duration::from_millis(1500);

/// The config error serve recorded in the database for `vigil status`.
fn recorded_error(s: &Served) -> Result<Option<String>> {
    Ok(s.db()?.query_row("SELECT error FROM config_state WHERE id = 1", [], |r| r.get(0))?)
}

/// Waits until serve has recorded a config error, and returns it.
fn wait_recorded_error(s: &Served) -> Result<String> {
    let mut err = None;
    wait_for(T, "serve to record the config error", || {
        err = recorded_error(s).ok().flatten();
        err.is_some()
    })
    .map_err(|e| e.context(s.logs()))?;
    Ok(err.unwrap_or_default())
}

fn report(session: &mut VigilSession, seq: u64) -> Result<()> {
    session.send_report(&sample_report(seq, now_ms(), 1.0, 1.0, 1.0))?;
    session.wait_acks([seq], T)
}

/// Whether `host`'s key gets through authentication on a new connection.
fn key_accepted(s: &Served, host: &str) -> Result<bool> {
    let creds = s.creds(host)?;
    let mut c = s.connect()?;
    let ok = c.auth_key(&creds.agent_id, &creds.key)?;
    c.close();
    Ok(ok)
}

#[test]
fn a_host_removed_from_clients_xml_is_cut_off_at_once_and_re_adding_it_restores_it() -> Result<()> {
    let s = Served::start(&["keep", "gone"], "5s")?;
    let mut keep = s.session("keep")?;
    let mut gone = s.session("gone")?;
    report(&mut keep, 1)?;
    report(&mut gone, 1)?;

    s.set_clients(&["keep"])?;
    let edited = Instant::now();
    // The removed host's session gets an "unknown" error and is closed.
    let mut revoked = false;
    loop {
        match gone.recv(APPLY_WITHIN.saturating_sub(edited.elapsed()))? {
            Event::Msg(ServerMsg::Error { code: ErrorCode::Unknown, .. }) => revoked = true,
            Event::Msg(_) => {}
            Event::Closed => break,
            Event::Timeout => bail!("session of the removed host still open after {APPLY_WITHIN:?}\n{}", s.logs()),
        }
    }
    ensure!(revoked, "closed without telling the agent why: {:?}", gone.received);
    wait_for(APPLY_WITHIN, "the SSH connection of the removed host to close", || gone.connection_closed())?;
    // Its key is refused on a new connection; the other host is untouched.
    ensure!(!key_accepted(&s, "gone")?, "the removed host's key is still accepted");
    report(&mut keep, 2)?;
    // Its history stays.
    ensure!(s.has_report("gone", 1)?);

    // Back in clients.xml: accepted again within the same bound, and its reports are stored.
    s.set_clients(&["keep", "gone"])?;
    let mut accepted = false;
    wait_for(APPLY_WITHIN, "the re-added host's key to be accepted", || {
        accepted = key_accepted(&s, "gone").unwrap_or(false);
        accepted
    })?;
    let mut back = s.session("gone")?;
    report(&mut back, 2)?;
    ensure!(s.has_report("gone", 2)?);
    report(&mut keep, 3)?;
    ensure!(s.log().contains("configuration reloaded"), "{}", s.logs());
    keep.close();
    back.close();
    Ok(())
}

/// Reads until a job list arrives within `within`; error messages or a close fail the test.
fn next_jobs(session: &mut VigilSession, within: Duration) -> Result<Option<(String, vigil_schema::job::Schedule)>> {
    let start = Instant::now();
    loop {
        match session.recv(within.saturating_sub(start.elapsed()))? {
            Event::Msg(ServerMsg::Jobs { hash, schedule }) => return Ok(Some((hash, schedule))),
            Event::Msg(m @ ServerMsg::Error { .. }) => bail!("unexpected error {m:?}"),
            Event::Msg(_) => {}
            Event::Closed => bail!("the server closed the session"),
            Event::Timeout => return Ok(None),
        }
    }
}

#[test]
fn a_jobs_toml_edit_reaches_a_connected_agent_and_an_invalid_one_is_reported_and_ignored() -> Result<()> {
    let s = Served::start(&["alpha"], "5s")?;
    let mut agent = s.session("alpha")?;
    // The agent runs the schedule it was enrolled with: no job list on hello.
    ensure!(next_jobs(&mut agent, Duration::from_millis(500))?.is_none(), "a job list despite an equal hash");

    // A valid edit: another interval and fewer collectors.
    s.set_jobs(&s.jobs_text("7s", &["memory", "cpu"]))?;
    let (hash, schedule) = next_jobs(&mut agent, APPLY_WITHIN)?
        .ok_or_else(|| anyhow::anyhow!("no job list within {APPLY_WITHIN:?} of the edit\n{}", s.logs()))?;
    ensure!(hash == schedule.hash(), "the job list's hash does not match its schedule");
    ensure!(hash != s.creds("alpha")?.schedule_hash, "same hash after a change");
    ensure!(schedule.jobs.len() == 1, "{schedule:?}");
    let job = &schedule.jobs[0];
    ensure!(job.name == "all" && job.interval_s == 7, "{job:?}");
    ensure!(job.collectors == vec![Collector::Cpu, Collector::Memory], "{:?}", job.collectors);
    report(&mut agent, 1)?;

    // An invalid edit: an unknown collector. serve records the error (with file and line) for `vigil status`,
    // sends no job list, and the session goes on.
    s.set_jobs(&s.jobs_text("3s", &["memory", "cpux"]))?;
    let err = wait_recorded_error(&s)?;
    ensure!(err.contains("cpux"), "the error does not name the bad collector: {err}");
    ensure!(err.contains("jobs.toml"), "the error does not name the file: {err}");
    ensure!(err.contains(":8:") || err.contains("line 8"), "the error has no line: {err}");
    ensure!(next_jobs(&mut agent, Duration::from_millis(500))?.is_none(), "a job list from an invalid edit");
    report(&mut agent, 2)?;
    // The last good config stays in force: a new connection announcing the pre-edit hash still gets the 7 s list.
    let mut fresh = VigilSession::start(s.creds("alpha")?)?;
    let (h2, _) = next_jobs(&mut fresh, T)?.ok_or_else(|| anyhow::anyhow!("no job list for an outdated agent"))?;
    ensure!(h2 == hash, "the invalid edit changed the served schedule");
    fresh.close();

    // Fixing the file applies it and clears the error.
    s.set_jobs(&s.jobs_text("9s", &["memory"]))?;
    let (_, fixed) = next_jobs(&mut agent, APPLY_WITHIN)?
        .ok_or_else(|| anyhow::anyhow!("no job list after the fix\n{}", s.logs()))?;
    ensure!(fixed.jobs[0].interval_s == 9, "{fixed:?}");
    wait_for(T, "the recorded config error to clear", || recorded_error(&s).is_ok_and(|e| e.is_none()))?;
    s.wait_status(T, "the config error to clear", |v| v["config_error"].is_null())?;
    ensure!(!s.status_table()?.contains("pending config error"));
    report(&mut agent, 3)?;
    agent.close();
    Ok(())
}

#[test]
fn an_invalid_clients_xml_edit_keeps_every_host_connected_and_is_reported() -> Result<()> {
    let s = Served::start(&["alpha", "beta"], "5s")?;
    let mut alpha = s.session("alpha")?;
    report(&mut alpha, 1)?;
    // A typo'd attribute, and beta gone: neither may apply.
    let good = vigil_tests::clients_xml(&s.entries(&["alpha"]));
    let bad = good.replace("username=", "usernme=");
    ensure!(bad != good);
    vigil_tests::client::replace_file(&s.work.clients_path(), &bad)?;
    let err = wait_recorded_error(&s)?;
    ensure!(err.contains("usernme") && err.contains("clients.xml:3:"), "{err}");
    // beta was not revoked: the old config is still in force.
    let mut beta = s.session("beta")?;
    report(&mut beta, 1)?;
    report(&mut alpha, 2)?;
    beta.close();
    alpha.close();
    Ok(())
}

#[test]
fn vigil_status_shows_a_pending_config_error_while_the_file_is_still_invalid() -> Result<()> {
    let s = Served::start(&["alpha"], "5s")?;
    let mut agent = s.session("alpha")?;
    report(&mut agent, 1)?;
    s.set_jobs(&s.jobs_text("3s", &["memory", "cpux"]))?;
    wait_recorded_error(&s)?;
    // The operator runs `vigil status` now, with the bad file still on disk: the view must come up and say what is
    // wrong, not fail on the file it is supposed to report.
    let status = s.status_json()?;
    let err = status["config_error"].as_str().unwrap_or_default();
    ensure!(err.contains("cpux") && err.contains("jobs.toml"), "{status:#}");
    ensure!(status["hosts"][0]["name"] == "alpha", "{status:#}");
    let table = s.status_table()?;
    ensure!(table.contains("pending config error") && table.contains("cpux") && table.contains("alpha"), "{table}");
    agent.close();
    Ok(())
}

#[test]
fn reading_the_config_files_does_not_reload() -> Result<()> {
    // Reading a watched file raises inotify access events; only changes may reload (a reload reads the files again,
    // so counting reads would loop forever).
    let w = vigil_tests::fleet::Workdir::new()?;
    let port = vigil_tests::net::free_port();
    w.write_clients_text(&vigil_tests::fleet::clients_xml(&[vigil_tests::fleet::ClientEntry::local("here")]))?;
    w.write_jobs(&vigil_tests::fleet::jobs_toml(port, &w.data_dir(), None, "5s"))?;
    let mut cmd = w.vigil(&["serve"]);
    cmd.env("VIGIL_LOG", "vigil_server=debug").env("TMPDIR", w.path());
    let serve = vigil_tests::process::Proc::spawn(cmd, w.path(), "serve")?;
    vigil_tests::poll::wait_for(Duration::from_secs(20), "serve", || vigil_tests::net::port_accepts(port))?;
    for _ in 0..5 {
        std::fs::read_to_string(w.jobs_path())?;
        std::fs::read_to_string(w.clients_path())?;
    }
    std::thread::sleep(Duration::from_secs(2));
    let log = serve.stderr();
    let reloads = log.matches("configuration files touched").count() + log.matches("configuration reloaded").count();
    ensure!(reloads == 0, "reading the files reloaded {reloads} times:\n{log}");

    // Positive control: the watcher was armed all along. A real edit of the same file now reloads, so the silence
    // above means the reads were ignored, not that nothing was watching.
    vigil_tests::client::replace_file(&w.jobs_path(), &vigil_tests::fleet::jobs_toml(port, &w.data_dir(), None, "7s"))?;
    let reloaded = wait_for(T, "a real edit to reload", || serve.stderr().contains("configuration reloaded"));
    vigil_tests::process::kill_processes_under(w.path());
    reloaded.map_err(|e| e.context(serve.stderr()))?;
    Ok(())
}
