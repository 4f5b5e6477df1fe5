//! The security mail digest end to end: the real `vigil serve`, a storm of reports with security events over real
//! SSH, and a real SMTP server (aiosmtpd). One mail goes out at once; the rest of the storm waits for the digest
//! (at most one security mail per host per period) and is all in the history.

use std::time::Duration;

use anyhow::{Result, ensure};
use vigil_schema::report::{SecurityEvent, SecurityEventKind, SecurityEvents};
use vigil_tests::client::{Served, now_ms, replace_file, sample_report};
use vigil_tests::fleet::{ALL_COLLECTORS, clients_xml};
use vigil_tests::smtp::{Mail, Smtp};

const T: Duration = Duration::from_secs(20);
/// How long "no further mail" is watched: several mailer polls (1 s) and digest checks (2 s).
const QUIET: Duration = Duration::from_secs(5);

#[test]
fn a_storm_of_security_events_gives_one_mail_and_keeps_every_event() -> Result<()> {
    let smtp = Smtp::start()?;
    let mut s = Served::start(&["web-01"], "5s")?;
    ensure!(s.terminate(T)? == Some(0), "serve did not stop cleanly\n{}", s.logs());
    let jobs = format!(
        "{}\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\nfrom = \"vigil@example.org\"\n",
        s.jobs_text("5s", ALL_COLLECTORS),
        smtp.port()
    );
    s.work.write_jobs(&jobs)?;
    let entries: Vec<_> = s.entries(&["web-01"]).into_iter().map(|e| e.attr("mail", "sec@example.org")).collect();
    replace_file(&s.work.clients_path(), &clients_xml(&entries))?;
    s.start_serve()?;

    let mut web = s.session("web-01")?;
    const STORM: u64 = 30;
    for seq in 1..=STORM {
        let mut r = sample_report(seq, now_ms(), 1.0, 1.0, 1.0);
        r.stats.security_events = Some(SecurityEvents {
            source: Some("/var/log/auth.log".into()),
            events: vec![SecurityEvent {
                time: now_ms() / 1000,
                kind: SecurityEventKind::LoginFailed,
                user: Some(format!("user{seq}")),
                source: Some("203.0.113.7".into()),
                message: format!("Failed password for user{seq} from 203.0.113.7"),
            }],
        });
        web.send_report(&r)?;
    }
    web.wait_acks(1..=STORM, T)?;

    smtp.wait_for_messages(1, T).map_err(|e| e.context(format!("{}\n{}", s.logs(), smtp.logs())))?;
    std::thread::sleep(QUIET);
    let mails = smtp.messages()?;
    let subjects: Vec<_> = mails.iter().map(Mail::subject).collect();
    ensure!(mails.len() == 1, "a storm of {STORM} security reports gave {} mails: {subjects:?}", mails.len());
    // The first report to commit is mailed at once, in full (reports of one connection commit concurrently, so it
    // may be any of the storm's).
    ensure!(mails[0].subject().as_deref() == Some("[vigil] SECURITY web-01: 1 event (1 login_failed)"), "{subjects:?}");
    ensure!(mails[0].body().contains("Failed password for user"), "{}", mails[0].body());
    // Nothing is lost: every report's events are in the history, and the rest wait for the digest.
    let recorded = s.count("SELECT count(*) FROM alert_events WHERE host = 'web-01' AND rule = 'security'", [])?;
    ensure!(recorded == STORM as i64, "{recorded} security events recorded of {STORM}");
    let stored = s.count("SELECT count(*) FROM security_events", [])?;
    ensure!(stored == STORM as i64, "{stored} security events stored of {STORM}");
    let waiting = s.count(
        "SELECT count(*) FROM alert_events e JOIN security_digest d ON d.host = e.host
         WHERE e.rule = 'security' AND e.id > d.last_event_id",
        [],
    )?;
    ensure!(waiting == STORM as i64 - 1, "{waiting} events wait for the digest, expected {}", STORM - 1);
    Ok(())
}
