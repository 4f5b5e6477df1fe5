//! `security_events`: login failures, logins and sudo use, new since the previous sample. This module owns the
//! family's bounds and its classification rules; each backend reads one kind of log and imports only from here:
//!
//! - [`auth_log`]: the syslog-format authentication log (`/var/log/auth.log`, `/var/log/secure`, or the configured
//!   path), tailed across rotation and truncation; Linux.
//! - [`journal`]: the systemd journal, when no path is configured and neither default file exists (`source`
//!   "journal").
//! - `windows`: the Security event log, the only source on Windows (`source` "eventlog:Security"); its pure half
//!   (XML parsing, filtering, the cursor) also compiles in tests everywhere. A log the agent cannot read makes the
//!   family "not available" (see [`SecurityCollector::collect`]).
//!
//! `source` is `None` when there is no log at all (and on platforms other than Linux and Windows). The syslog and
//! journal backends classify a message with the same rules ([`event`]).

pub mod auth_log;
pub mod journal;
#[cfg(any(windows, test))]
pub mod windows;

use std::path::PathBuf;

use vigil_schema::report::{SecurityEvent, SecurityEventKind, SecurityEvents, limits};

// The backends take the collectors' text cleaning from here, so they import only from their parent.
use super::{clean, clean_text};
use journal::JournalReader;

/// Where the auth log is looked for when no path is configured.
pub const DEFAULT_PATHS: [&str; 2] = ["/var/log/auth.log", "/var/log/secure"];
/// Most events reported per sample.
pub const MAX_EVENTS: usize = 2000;
/// Most bytes of the auth log read per sample.
pub const MAX_READ: u64 = 4 << 20;
/// Longest message kept, in bytes (the schema's bound on a security event message).
pub const MAX_MESSAGE: usize = limits::MAX_MESSAGE;

/// Follows the host's security log across samples: the auth log, else the journal; the event log on Windows.
#[derive(Debug)]
pub struct SecurityCollector {
    auth_log: auth_log::AuthLog,
    /// The journal, used when no path is configured and no auth log file exists.
    journal: Option<JournalReader>,
    /// The Security event log, the only source on Windows.
    #[cfg(windows)]
    event_log: windows::EventLogReader,
}

impl SecurityCollector {
    /// Opens the log at its end (see [`auth_log`]). `path` overrides [`DEFAULT_PATHS`].
    pub fn new(path: Option<PathBuf>) -> Self {
        let now = vigil_sys::clock::now_unix();
        let journal = (cfg!(target_os = "linux") && path.is_none()).then(|| JournalReader::new(now));
        SecurityCollector {
            auth_log: auth_log::AuthLog::new(path),
            journal,
            #[cfg(windows)]
            event_log: windows::EventLogReader::new(),
        }
    }

    /// Reports the events logged since the previous call; `Err` says why the Security event log cannot be read
    /// (no access, or no Event Log API as under Wine): the family is not available, not empty.
    #[cfg(windows)]
    pub fn collect(&mut self) -> Result<SecurityEvents, String> {
        self.event_log.collect()
    }

    /// Reports the events logged since the previous call (always available: no log at all is `source: None`).
    #[cfg(not(windows))]
    pub fn collect(&mut self) -> Result<SecurityEvents, String> {
        Ok(self.collect_log())
    }

    /// Reads the auth log (or the journal) from where the previous call stopped.
    #[cfg_attr(windows, allow(dead_code))] // Windows reads the event log instead
    fn collect_log(&mut self) -> SecurityEvents {
        if !cfg!(target_os = "linux") {
            return SecurityEvents::default();
        }
        let now = vigil_sys::clock::now_unix();
        let mut events = Vec::new();
        let mut source = self.auth_log.read(now, &mut events);
        if source.is_none()
            && let Some(journal) = self.journal.as_mut().filter(|j| j.available())
        {
            if let Err(e) = journal.read(now, &mut events) {
                tracing::warn!(error = %e, "reading the journal failed");
            }
            source = Some("journal".to_owned());
        }
        SecurityEvents { source, events }
    }
}

/// Classifies the message `msg` logged by `program` at `time`; `text` is what the event's message shows. `None` if
/// it is not an authentication or privilege event:
/// - sshd `Failed <method> for [invalid user] U from IP`, sshd `Invalid user U from IP`, and any PAM
///   `authentication failure; ... rhost=IP user=U` line: [`SecurityEventKind::LoginFailed`];
/// - sshd `Accepted <method> for U from IP`: [`SecurityEventKind::LoginSucceeded`];
/// - sudo `U : TTY=... ; USER=... ; COMMAND=...` (also its "incorrect password attempts" form):
///   [`SecurityEventKind::Sudo`].
pub fn event(time: i64, program: &str, msg: &str, text: &str) -> Option<SecurityEvent> {
    let (kind, user, source) = classify(program, msg)?;
    Some(SecurityEvent {
        time,
        kind,
        user: user.map(clean_text).filter(|s| !s.is_empty()),
        source: source.map(clean_text).filter(|s| !s.is_empty()),
        message: clean(text, MAX_MESSAGE),
    })
}

type Classified<'a> = (SecurityEventKind, Option<&'a str>, Option<&'a str>);

fn classify<'a>(program: &str, msg: &'a str) -> Option<Classified<'a>> {
    if program.starts_with("sshd") {
        if let Some(after) = after(msg, "Accepted ") {
            let (user, source) = for_user_from(after)?;
            return Some((SecurityEventKind::LoginSucceeded, user, source));
        }
        if let Some(after) = after(msg, "Failed ") {
            let (user, source) = for_user_from(after)?;
            return Some((SecurityEventKind::LoginFailed, user, source));
        }
        if let Some(after) = after(msg, "Invalid user ") {
            let (user, rest) = after.split_once(" from ").unwrap_or((after, ""));
            return Some((SecurityEventKind::LoginFailed, Some(user.trim()), first_word(rest)));
        }
    }
    if msg.contains("authentication failure;") {
        return Some((SecurityEventKind::LoginFailed, key_value(msg, "user="), key_value(msg, "rhost=")));
    }
    if program == "sudo" && msg.contains("COMMAND=") {
        let user = msg.split(" : ").next().map(str::trim);
        return Some((SecurityEventKind::Sudo, user, None));
    }
    None
}

/// The text after the first occurrence of `pat` (not anchored: rsyslog's "message repeated N times: [ ... ]"
/// wraps the original message).
fn after<'a>(msg: &'a str, pat: &str) -> Option<&'a str> {
    msg.find(pat).map(|i| &msg[i + pat.len()..])
}

/// Parses `<method> for [invalid user ]USER from SOURCE port N ...`.
fn for_user_from(s: &str) -> Option<(Option<&str>, Option<&str>)> {
    let (_method, rest) = s.split_once(" for ")?;
    let rest = rest.strip_prefix("invalid user ").unwrap_or(rest);
    let (user, rest) = rest.split_once(" from ")?;
    Some((Some(user.trim()), first_word(rest)))
}

fn first_word(s: &str) -> Option<&str> {
    s.split_whitespace().next()
}

/// The value of a `key=value` field (space separated), if not empty.
fn key_value<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.split_whitespace().find_map(|w| w.strip_prefix(key)).map(|v| v.trim_end_matches(';')).filter(|v| !v.is_empty())
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use super::*;
    use std::io::Write;
    use vigil_schema::report::SecurityEventKind::{self, *};

    const FIXTURE: &str = include_str!("../../../tests/fixtures/auth.log");

    fn append(path: &std::path::Path, text: &str) {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn summary(e: &SecurityEvents) -> Vec<(SecurityEventKind, Option<&str>, Option<&str>)> {
        e.events.iter().map(|e| (e.kind, e.user.as_deref(), e.source.as_deref())).collect()
    }

    fn line(user: &str) -> String {
        format!("Nov 26 10:00:00 h sshd[1]: Failed password for {user} from 192.0.2.1 port 22 ssh2\n")
    }

    #[test]
    fn appended_lines_are_reported_once_with_kinds_users_and_sources() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        append(&path, "Nov 25 08:00:00 web1 sshd[1]: Failed password for old from 192.0.2.99 port 1 ssh2\n");
        let mut c = SecurityCollector::new(Some(path.clone()));
        let first = c.collect().unwrap();
        assert_eq!(first.source.as_deref(), Some(path.to_str().unwrap()));
        assert!(first.events.is_empty(), "history before start-up is not reported: {first:?}");

        append(&path, FIXTURE);
        let got = c.collect().unwrap();
        assert_eq!(
            summary(&got),
            [
                (LoginFailed, Some("root"), Some("198.51.100.23")),
                (LoginFailed, Some("admin"), Some("198.51.100.23")),
                (LoginFailed, Some("admin"), Some("198.51.100.23")),
                (LoginFailed, Some("carol"), Some("198.51.100.24")),
                (LoginSucceeded, Some("alice"), Some("203.0.113.7")),
                (Sudo, Some("alice"), None),
                (LoginSucceeded, Some("bob"), Some("2001:db8::5")),
                (LoginFailed, Some("dave"), Some("192.0.2.9")),
            ]
        );
        assert!(got.events[0].message.contains("Failed password for root"));
        assert_eq!(
            got.events[6].time,
            vigil_sys::clock::days_from_civil(2026, 11, 26) * 86_400 + 9 * 3600 + 19 * 60 + 42
        );
        assert!(c.collect().unwrap().events.is_empty(), "nothing is reported twice");

        append(&path, &line("late"));
        assert_eq!(summary(&c.collect().unwrap()), [(LoginFailed, Some("late"), Some("192.0.2.1"))]);
    }

    #[test]
    fn missing_log_is_no_source_and_a_new_log_is_read_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secure");
        let mut c = SecurityCollector::new(Some(path.clone()));
        assert_eq!(c.collect().unwrap(), SecurityEvents { source: None, events: vec![] });
        append(&path, &line("first"));
        assert_eq!(summary(&c.collect().unwrap()), [(LoginFailed, Some("first"), Some("192.0.2.1"))]);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(c.collect().unwrap().events, vec![]);
        assert_eq!(c.collect().unwrap().source, None);
    }

    #[test]
    fn truncation_restarts_at_the_beginning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        append(&path, &line("a").repeat(5));
        let mut c = SecurityCollector::new(Some(path.clone()));
        assert!(c.collect().unwrap().events.is_empty());
        std::fs::write(&path, line("after-truncate")).unwrap(); // copytruncate, then one new line
        assert_eq!(summary(&c.collect().unwrap()), [(LoginFailed, Some("after-truncate"), Some("192.0.2.1"))]);
        assert!(c.collect().unwrap().events.is_empty());
    }

    #[test]
    fn rotation_reads_the_rest_of_the_old_file_then_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        append(&path, &line("before-start"));
        let mut c = SecurityCollector::new(Some(path.clone()));
        append(&path, &line("one"));
        assert_eq!(c.collect().unwrap().events.len(), 1);
        append(&path, &line("late-in-old"));
        let old = dir.path().join("auth.log.1");
        std::fs::rename(&path, &old).unwrap();
        append(&old, "Nov 26 10:00:00 h sudo: bob : TTY=pts/1 ; PWD=/ ; USER=root ; COMMAND=/bin/true"); // no newline
        append(&path, &line("new-file"));
        let users: Vec<_> = c.collect().unwrap().events.into_iter().map(|e| e.user.unwrap()).collect();
        assert_eq!(users, ["late-in-old", "bob", "new-file"]);
        assert!(c.collect().unwrap().events.is_empty());
        append(&path, &line("next"));
        assert_eq!(c.collect().unwrap().events.len(), 1);
    }

    #[test]
    fn partial_lines_wait_until_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        append(&path, "");
        let mut c = SecurityCollector::new(Some(path.clone()));
        let full = line("split");
        append(&path, &full[..30]);
        assert!(c.collect().unwrap().events.is_empty());
        append(&path, &full[30..]);
        assert_eq!(summary(&c.collect().unwrap()), [(LoginFailed, Some("split"), Some("192.0.2.1"))]);
    }

    #[test]
    fn a_flood_is_reported_in_bounded_samples_without_loss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        append(&path, "");
        let mut c = SecurityCollector::new(Some(path.clone()));
        let mut flood = String::new();
        for i in 0..(MAX_EVENTS + 500) {
            flood.push_str(&line(&format!("u{i}")));
            flood.push_str("Nov 26 10:00:00 h CRON[2]: noise\n");
        }
        append(&path, &flood);
        let first = c.collect().unwrap();
        assert_eq!(first.events.len(), MAX_EVENTS);
        let second = c.collect().unwrap();
        assert_eq!(second.events.len(), 500);
        assert_eq!(second.events[0].user.as_deref(), Some(format!("u{MAX_EVENTS}").as_str()));
        assert!(c.collect().unwrap().events.is_empty());
    }
}
