//! Alerts and mail end to end: the real `vigil serve`, reports sent over real SSH by the protocol test client, and a
//! real SMTP server (aiosmtpd) receiving the mail.
//!
//! A report over a limit gives exactly one mail to that host's address with the right content; a value hovering at
//! the limit gives one firing and one resolved mail; a host that stops reporting gets a silence alert after the
//! configured intervals and a recovery mail on return; a mail raised while SMTP is down arrives once SMTP is back,
//! exactly once, across a serve restart; editing a limit or a mail address in clients.xml applies without restart;
//! security events are mailed with every report that carries them; a report whose alert mail cannot be queued
//! leaves neither the report nor the alert behind (one transaction).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use vigil_schema::proto::{ErrorCode, ServerMsg};
use vigil_schema::report::{SecurityEvent, SecurityEventKind, SecurityEvents};
use vigil_tests::client::{Served, VigilSession, now_ms, replace_file, sample_report};
use vigil_tests::fleet::{ALL_COLLECTORS, ClientEntry, clients_xml};
use vigil_tests::smtp::{Mail, Smtp};
use vigil_tests::wait_for;

const T: Duration = Duration::from_secs(20);
/// How long "no further mail" is watched: several mailer polls (1 s) and silence checks (2 s).
const QUIET: Duration = Duration::from_secs(4);

/// jobs.toml for `s` with every collector every `interval` and `[smtp]` on `smtp_port`.
fn jobs_with_smtp(s: &Served, interval: &str, smtp_port: u16) -> String {
    format!(
        "{}\n[smtp]\nhost = \"127.0.0.1\"\nport = {smtp_port}\ntls = \"none\"\nfrom = \"vigil@example.org\"\n",
        s.jobs_text(interval, ALL_COLLECTORS)
    )
}

/// Starts serve for `hosts`, then restarts it on a config with SMTP and the entries `entry` makes of each host.
fn start(
    hosts: &[&str],
    interval: &str,
    smtp: &Smtp,
    entry: impl Fn(&str, ClientEntry) -> ClientEntry,
) -> Result<Served> {
    let mut s = Served::start(hosts, interval)?;
    ensure!(s.terminate(T)? == Some(0), "serve did not stop cleanly\n{}", s.logs());
    s.work.write_jobs(&jobs_with_smtp(&s, interval, smtp.port()))?;
    write_clients(&s, hosts, &entry)?;
    s.start_serve()?;
    Ok(s)
}

fn write_clients(s: &Served, hosts: &[&str], entry: &impl Fn(&str, ClientEntry) -> ClientEntry) -> Result<()> {
    let entries: Vec<ClientEntry> = s.entries(hosts).into_iter().zip(hosts).map(|(e, h)| entry(h, e)).collect();
    replace_file(&s.work.clients_path(), &clients_xml(&entries))
}

/// Rewrites clients.xml while serving and waits until serve applied it.
fn edit_clients(s: &Served, hosts: &[&str], entry: impl Fn(&str, ClientEntry) -> ClientEntry) -> Result<()> {
    let applied = |s: &Served| s.log().matches("configuration reloaded").count();
    let before = applied(s);
    write_clients(s, hosts, &entry)?;
    wait_for(T, "serve to apply the edited clients.xml", || applied(s) > before).map_err(|e| e.context(s.logs()))
}

fn send(session: &mut VigilSession, seq: u64, cpu: f32) -> Result<()> {
    session.send_report(&sample_report(seq, now_ms(), cpu, 30.0, 40.0))?;
    session.wait_acks([seq], T)
}

/// Waits for exactly `n` mails: at least `n` within [`T`], and no more during [`QUIET`] after.
fn exactly(smtp: &Smtp, s: &Served, n: usize) -> Result<Vec<Mail>> {
    smtp.wait_for_messages(n, T).map_err(|e| e.context(format!("{}\n{}", s.logs(), smtp.logs())))?;
    std::thread::sleep(QUIET);
    let got = smtp.messages()?;
    let subjects: Vec<_> = got.iter().map(Mail::subject).collect();
    ensure!(got.len() == n, "expected exactly {n} mails, got {}: {subjects:?}", got.len());
    Ok(got)
}

fn subject(m: &Mail) -> String {
    m.subject().unwrap_or_default()
}

fn to(m: &Mail) -> String {
    m.header("To").unwrap_or_default()
}

fn vigil_json(s: &Served, args: &[&str]) -> Result<serde_json::Value> {
    let out = s.work.vigil(args).output().context("running vigil")?;
    ensure!(out.status.success(), "vigil {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_report_over_a_limit_mails_that_hosts_address_once_with_the_facts() -> Result<()> {
    let smtp = Smtp::start()?;
    let s = start(&["web-01", "db-01"], "5s", &smtp, |h, e| {
        e.attr("mail", format!("ops-{h}@example.org")).alert("cpu", "90%").alert("memory", "50%")
    })?;
    let mut web = s.session("web-01")?;
    let mut db = s.session("db-01")?;
    send(&mut db, 1, 10.0)?; // within every limit
    send(&mut web, 1, 50.0)?;
    send(&mut web, 2, 93.2)?; // over the cpu limit
    send(&mut web, 3, 95.0)?; // still over: no second mail

    let mails = exactly(&smtp, &s, 1)?;
    let m = &mails[0];
    ensure!(subject(m) == "[vigil] FIRING cpu on web-01 (93.2% > 90%)", "subject {:?}", subject(m));
    ensure!(to(m).contains("ops-web-01@example.org"), "to {:?}", to(m));
    ensure!(m.header("From").is_some_and(|f| f.contains("vigil@example.org")), "{}", m.raw);
    ensure!(m.header("Message-ID").is_some_and(|id| id.starts_with("<vigil.")), "{}", m.raw);
    let body = m.body();
    for want in ["Host:   web-01", "IP:     127.0.2.1", "Value:  93.2%", "Limit:  90%", "clears below 85%", "UTC"] {
        ensure!(body.contains(want), "{want:?} missing from the body:\n{body}");
    }
    // The recent history shows the value before the alert.
    ensure!(body.contains("Recent values") && body.contains("50.0%"), "no history in\n{body}");

    // The views: status shows the firing alert on its host; `vigil alerts` lists the event and the sent mail.
    let status = s.status_json()?;
    let hosts = status["hosts"].as_array().context("hosts")?;
    let web_row = hosts.iter().find(|h| h["name"] == "web-01").context("web-01 row")?;
    ensure!(web_row["alerts"][0]["rule"] == "cpu", "{web_row:#}");
    let db_row = hosts.iter().find(|h| h["name"] == "db-01").context("db-01 row")?;
    ensure!(db_row["alerts"].as_array().is_some_and(Vec::is_empty), "{db_row:#}");
    ensure!(s.status_table()?.contains("firing alerts:"), "{}", s.status_table()?);
    let alerts = vigil_json(&s, &["alerts", "--since", "1h", "--json"])?;
    let events = alerts["events"].as_array().context("events")?;
    ensure!(events.len() == 1 && events[0]["state"] == "firing" && events[0]["host"] == "web-01", "{alerts:#}");
    ensure!(alerts["outbox"]["sent"] == 1 && alerts["outbox"]["pending"] == 0, "{alerts:#}");
    Ok(())
}

#[test]
fn a_value_hovering_at_the_limit_gives_one_firing_and_one_resolved_mail() -> Result<()> {
    let smtp = Smtp::start()?;
    let s = start(&["web-01"], "5s", &smtp, |_, e| e.attr("mail", "ops@example.org").alert("cpu", "90%"))?;
    let mut web = s.session("web-01")?;
    // Default hysteresis for a percentage: 5 points, so only 84 (< 85) resolves.
    let series = [80.0, 91.0, 89.0, 90.5, 88.0, 92.0, 86.0, 90.1, 84.0, 85.5, 89.0, 90.0];
    for (i, v) in series.iter().enumerate() {
        send(&mut web, i as u64 + 1, *v)?;
    }
    let mails = exactly(&smtp, &s, 2)?;
    let subjects: Vec<String> = mails.iter().map(subject).collect();
    ensure!(subjects.contains(&"[vigil] FIRING cpu on web-01 (91.0% > 90%)".to_owned()), "{subjects:?}");
    ensure!(subjects.contains(&"[vigil] RESOLVED cpu on web-01 (84.0% < 85%)".to_owned()), "{subjects:?}");
    Ok(())
}

#[test]
fn a_silent_host_is_alerted_after_the_configured_intervals_and_its_return_is_mailed() -> Result<()> {
    let smtp = Smtp::start()?;
    // Shortest interval 1 s, silence after 3 missed intervals.
    let s = start(&["web-01"], "1s", &smtp, |_, e| e.attr("mail", "ops@example.org").alert("silence", "3"))?;
    let mut web = s.session("web-01")?;
    // Taken before the report is sent, so the time measured is never more than the silence serve saw.
    let last_report = Instant::now();
    send(&mut web, 1, 10.0)?;
    smtp.wait_for_messages(1, T).map_err(|e| e.context(s.logs()))?;
    let silent_for = last_report.elapsed();
    ensure!(silent_for >= Duration::from_secs(3), "silence mailed after only {silent_for:?}");
    let first = smtp.messages()?;
    ensure!(
        subject(&first[0]).starts_with("[vigil] FIRING silence on web-01 (no report for"),
        "{:?}",
        subject(&first[0])
    );
    ensure!(subject(&first[0]).contains("> 3 x 1s"), "{:?}", subject(&first[0]));

    // Back, and reporting on schedule again: one recovery mail, and no new silence.
    send(&mut web, 2, 10.0)?;
    smtp.wait_for_messages(2, T).map_err(|e| e.context(s.logs()))?;
    for seq in 3..15 {
        std::thread::sleep(Duration::from_millis(500));
        send(&mut web, seq, 10.0)?;
    }
    let mails = smtp.messages()?;
    let subjects: Vec<String> = mails.iter().map(subject).collect();
    ensure!(mails.len() == 2, "expected the firing and the resolved mail only: {subjects:?}");
    let resolved = subject(&mails[1]);
    ensure!(resolved.starts_with("[vigil] RESOLVED silence on web-01 (reporting again after"), "{resolved:?}");
    Ok(())
}

#[test]
fn a_mail_raised_while_smtp_is_down_arrives_once_after_smtp_and_serve_restart() -> Result<()> {
    let mut smtp = Smtp::start()?;
    smtp.stop()?;
    let mut s = start(&["web-01"], "5s", &smtp, |_, e| e.attr("mail", "ops@example.org").alert("cpu", "90%"))?;
    let mut web = s.session("web-01")?;
    send(&mut web, 1, 97.0)?;
    // The mailer tried and failed at least once; the mail waits in the outbox.
    wait_for(T, "a failed send attempt", || {
        s.count("SELECT count(*) FROM outbox WHERE status = 'pending' AND attempts >= 1", []).is_ok_and(|n| n == 1)
    })
    .map_err(|e| e.context(s.logs()))?;
    // While SMTP stays down the mailer backs off (1 s doubling) instead of hammering it.
    std::thread::sleep(Duration::from_secs(5));
    let attempts = s.count("SELECT attempts FROM outbox", [])?;
    ensure!((1..=5).contains(&attempts), "{attempts} attempts in about 5 s of SMTP outage");
    web.close();
    ensure!(s.terminate(T)? == Some(0), "serve did not stop cleanly\n{}", s.logs());

    smtp.start_again()?;
    s.start_serve()?;
    let mails = exactly(&smtp, &s, 1)?;
    ensure!(subject(&mails[0]) == "[vigil] FIRING cpu on web-01 (97.0% > 90%)", "{:?}", subject(&mails[0]));
    ensure!(s.count("SELECT count(*) FROM outbox WHERE status = 'sent'", [])? == 1);

    // Another restart sends nothing again.
    ensure!(s.terminate(T)? == Some(0), "serve did not stop cleanly\n{}", s.logs());
    s.start_serve()?;
    exactly(&smtp, &s, 1)?;
    Ok(())
}

#[test]
fn editing_a_limit_or_an_address_while_serving_changes_when_and_to_whom_mail_goes() -> Result<()> {
    let smtp = Smtp::start()?;
    let hosts = ["web-01"];
    let s = start(&hosts, "5s", &smtp, |_, e| e.attr("mail", "first@example.org").alert("cpu", "90%"))?;
    let mut web = s.session("web-01")?;
    send(&mut web, 1, 80.0)?;
    exactly(&smtp, &s, 0)?;

    // A lower limit: the same value now fires, to the first address.
    edit_clients(&s, &hosts, |_, e| e.attr("mail", "first@example.org").alert("cpu", "70%"))?;
    send(&mut web, 2, 80.0)?;
    let mails = exactly(&smtp, &s, 1)?;
    ensure!(subject(&mails[0]) == "[vigil] FIRING cpu on web-01 (80.0% > 70%)", "{:?}", subject(&mails[0]));
    ensure!(to(&mails[0]).contains("first@example.org"), "{:?}", to(&mails[0]));

    // A new address: the recovery goes there.
    edit_clients(&s, &hosts, |_, e| e.attr("mail", "second@example.org").alert("cpu", "70%"))?;
    send(&mut web, 3, 50.0)?;
    let mails = exactly(&smtp, &s, 2)?;
    let resolved = mails.iter().find(|m| subject(m).starts_with("[vigil] RESOLVED")).context("no resolved mail")?;
    ensure!(to(resolved).contains("second@example.org"), "{:?}", to(resolved));
    ensure!(!to(resolved).contains("first@"), "{:?}", to(resolved));
    Ok(())
}

#[test]
/// The first security report of a quiet period is mailed at once; the next, within `[alerts] security_digest`,
/// waits for the digest (one mail per host per period), and both are in the history.
fn security_events_are_mailed_at_once_then_gathered_for_the_digest() -> Result<()> {
    let smtp = Smtp::start()?;
    let s = start(&["web-01"], "5s", &smtp, |_, e| e.attr("mail", "sec@example.org"))?;
    let mut web = s.session("web-01")?;
    let event = |kind, user: &str| SecurityEvent {
        time: now_ms() / 1000,
        kind,
        user: Some(user.to_owned()),
        source: Some("203.0.113.7".into()),
        message: format!("Failed password for {user} from 203.0.113.7"),
    };
    for seq in 1..=2u64 {
        let mut r = sample_report(seq, now_ms(), 1.0, 1.0, 1.0);
        r.stats.security_events = Some(SecurityEvents {
            source: Some("/var/log/auth.log".into()),
            events: vec![event(SecurityEventKind::LoginFailed, "root"), event(SecurityEventKind::LoginFailed, "admin")],
        });
        web.send_report(&r)?;
        web.wait_acks([seq], T)?;
    }
    // A report without events mails nothing.
    send(&mut web, 3, 1.0)?;
    let mails = exactly(&smtp, &s, 1)?;
    ensure!(subject(&mails[0]) == "[vigil] SECURITY web-01: 2 events (2 login_failed)", "{:?}", subject(&mails[0]));
    ensure!(mails[0].body().contains("Failed password for admin from 203.0.113.7"), "{}", mails[0].body());
    let history = s.count("SELECT count(*) FROM alert_events WHERE state = 'security'", [])?;
    ensure!(history == 2, "both security reports are in the history, not only the mailed one: {history}");
    Ok(())
}

#[test]
fn check_test_mail_sends_through_the_configured_server() -> Result<()> {
    let smtp = Smtp::start()?;
    let s = start(&["web-01"], "5s", &smtp, |_, e| e)?;
    let out = s.work.vigil(&["check", "--test-mail", "me@example.org"]).output()?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mails = smtp.wait_for_messages(1, T)?;
    ensure!(subject(&mails[0]) == "[vigil] TEST mail" && to(&mails[0]).contains("me@example.org"), "{}", mails[0].raw);
    Ok(())
}

#[test]
fn a_hung_smtp_server_does_not_hold_up_shutdown_and_the_mail_stays_queued() -> Result<()> {
    // A listener that never accepts: connections complete in the backlog and the greeting never comes.
    let hung = std::net::TcpListener::bind("127.0.0.1:0")?;
    let hung_port = hung.local_addr()?.port();
    let mut s = Served::start(&["web-01"], "5s")?;
    ensure!(s.terminate(T)? == Some(0), "serve did not stop cleanly\n{}", s.logs());
    s.work.write_jobs(&jobs_with_smtp(&s, "5s", hung_port))?;
    write_clients(&s, &["web-01"], &|_, e: ClientEntry| e.attr("mail", "ops@example.org").alert("cpu", "90%"))?;
    s.start_serve()?;
    let mut web = s.session("web-01")?;
    send(&mut web, 1, 99.0)?;
    web.close();
    std::thread::sleep(Duration::from_secs(2)); // the mailer is now waiting on the hung server
    let stopping = Instant::now();
    ensure!(s.terminate(T)? == Some(0), "serve did not stop cleanly\n{}", s.logs());
    let took = stopping.elapsed();
    ensure!(took < Duration::from_secs(9), "shutdown took {took:?} behind a hung SMTP server\n{}", s.logs());
    ensure!(s.count("SELECT count(*) FROM outbox WHERE status = 'pending'", [])? == 1, "the mail is not queued");
    ensure!(s.log().contains("abandoned a mail send in flight"), "the send was not in flight\n{}", s.logs());
    drop(hung);
    Ok(())
}

#[test]
fn starttls_mode_never_falls_back_to_plain_text() -> Result<()> {
    // aiosmtpd here offers no STARTTLS: with tls = "starttls" nothing may be sent, and the mail stays queued.
    let smtp = Smtp::start()?;
    let mut s = Served::start(&["web-01"], "5s")?;
    ensure!(s.terminate(T)? == Some(0), "serve did not stop cleanly\n{}", s.logs());
    let jobs = jobs_with_smtp(&s, "5s", smtp.port()).replace("tls = \"none\"", "tls = \"starttls\"");
    s.work.write_jobs(&jobs)?;
    write_clients(&s, &["web-01"], &|_, e: ClientEntry| e.attr("mail", "ops@example.org").alert("cpu", "90%"))?;
    s.start_serve()?;
    let mut web = s.session("web-01")?;
    send(&mut web, 1, 99.0)?;
    wait_for(T, "a refused attempt", || {
        s.count("SELECT count(*) FROM outbox WHERE status = 'pending' AND attempts >= 1", []).is_ok_and(|n| n == 1)
    })
    .map_err(|e| e.context(s.logs()))?;
    exactly(&smtp, &s, 0)?;
    let err: String = s.db()?.query_row("SELECT last_error FROM outbox", [], |r| r.get(0))?;
    ensure!(err.to_lowercase().contains("tls"), "last error {err:?}");
    Ok(())
}

/// The report, the alert transition it causes (state and event) and the transition's outbox row commit in one
/// transaction. The database is made to refuse outbox rows (a trigger, the last write of that transaction), so the
/// report's commit fails: then none of it may be visible. Were the transition or its mail committed apart from the
/// report, the state or the event would survive the failed mail, or the report its alert.
#[test]
fn a_report_whose_alert_mail_cannot_be_queued_leaves_neither_report_nor_alert_behind() -> Result<()> {
    let smtp = Smtp::start()?;
    let s = start(&["web-01"], "5s", &smtp, |h, e| e.attr("mail", format!("ops-{h}@example.org")).alert("cpu", "90%"))?;
    let mut web = s.session("web-01")?;
    send(&mut web, 1, 50.0)?;
    let db = rusqlite::Connection::open(s.db_path())?;
    db.busy_timeout(T)?;
    db.execute_batch(
        "CREATE TRIGGER test_refuse_mail BEFORE INSERT ON outbox BEGIN SELECT RAISE(ABORT, 'test: outbox refused'); END;",
    )?;

    web.send_report(&sample_report(2, now_ms(), 93.2, 30.0, 40.0))?;
    match web.wait_error(T)? {
        ServerMsg::Error { code: ErrorCode::Unavailable, seq: Some(2), .. } => {}
        other => anyhow::bail!("a report whose transaction failed: expected an unavailable error, got {other:?}"),
    }
    ensure!(s.log().contains("test: outbox refused"), "the injected failure did not happen\n{}", s.logs());
    ensure!(!s.has_report("web-01", 2)?, "the report was stored although its alert's mail was not queued");
    let cpu_rows = s.count("SELECT count(*) FROM cpu", [])?;
    ensure!(cpu_rows == 1, "{cpu_rows} cpu rows: the failed report's statistics stayed");
    ensure!(s.count("SELECT count(*) FROM alert_state", [])? == 0, "the transition's state stayed without its mail");
    ensure!(s.count("SELECT count(*) FROM alert_events", [])? == 0, "the transition's event stayed without its mail");
    ensure!(s.count("SELECT count(*) FROM outbox", [])? == 0, "an outbox row despite the failure");

    // Once outbox rows are taken again, the same report is stored with its state, its event and its one mail.
    db.execute_batch("DROP TRIGGER test_refuse_mail;")?;
    send(&mut web, 2, 93.2)?;
    ensure!(s.has_report("web-01", 2)?);
    ensure!(s.count("SELECT count(*) FROM alert_state WHERE state = 'firing'", [])? == 1);
    let linked = s.count("SELECT count(*) FROM outbox o JOIN alert_events e ON e.id = o.event_id", [])?;
    ensure!(linked == 1, "{linked} outbox rows tied to an event");
    let mails = exactly(&smtp, &s, 1)?;
    ensure!(subject(&mails[0]).starts_with("[vigil] FIRING cpu on web-01"), "{:?}", subject(&mails[0]));
    web.close();
    Ok(())
}
