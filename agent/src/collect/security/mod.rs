//! `security_events`: login failures, logins and sudo use, read incrementally from the authentication log.
//!
//! Linux reads `/var/log/auth.log` (Debian, Ubuntu) or `/var/log/secure` (RHEL, Fedora), or the configured path;
//! lines are classified by [`super::auth_log`]. Only lines new since the previous sample are reported:
//! - **Start-up**: a log that exists when the agent starts is read from its end, so a restart does not report
//!   (and mail) old history again. A log that appears later is new and is read from its beginning.
//! - **Rotation** (the path now names another file): the rest of the old file, still open, is read first, then the
//!   new file from its beginning.
//! - **Truncation** (copytruncate: the file is shorter than the read position): reading restarts at 0.
//! - **Bounds**: at most [`MAX_EVENTS`] events and [`MAX_READ`] bytes per sample; what is left is read next time.
//!   A partial last line is left for the next sample. A line longer than [`MAX_READ`] is skipped.
//!
//! With no path configured and neither default file present, the systemd journal is read instead
//! ([`super::journal`], `source` "journal") if the host keeps one. `source` is `None` when there is no log at all
//! (and on platforms other than Linux and Windows).
//!
//! On Windows the Security event log is read instead, by `super::windows_events::EventLogReader` (`source`
//! "eventlog:Security"); the auth-log path is not used there.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use vigil_schema::report::{SecurityEvent, SecurityEvents};

use super::journal::JournalReader;
use super::{auth_log, clean_text, now_unix};

/// Where the log is looked for when no path is configured.
pub const DEFAULT_PATHS: [&str; 2] = ["/var/log/auth.log", "/var/log/secure"];
/// Most events reported per sample.
pub const MAX_EVENTS: usize = 2000;
/// Most bytes read per sample.
pub const MAX_READ: u64 = 4 << 20;

/// Identity of a file across renames: device and inode on Unix.
type FileId = (u64, u64);

/// An open log and the position up to which it has been read.
#[derive(Debug)]
struct Tail {
    path: PathBuf,
    file: File,
    id: FileId,
    offset: u64,
}

/// Follows the authentication log across samples.
#[derive(Debug)]
pub struct SecurityCollector {
    configured: Option<PathBuf>,
    tail: Option<Tail>,
    /// The file that existed at start-up: when (re)opened, it is read from its end.
    startup_file: Option<FileId>,
    /// The journal, used when no path is configured and no auth log file exists.
    journal: Option<JournalReader>,
    warned: bool,
    /// The Security event log, the only source on Windows.
    #[cfg(windows)]
    event_log: super::windows_events::EventLogReader,
}

impl SecurityCollector {
    /// Opens the log at its end (see the module docs). `path` overrides [`DEFAULT_PATHS`].
    pub fn new(path: Option<PathBuf>) -> Self {
        let journal = (cfg!(target_os = "linux") && path.is_none()).then(|| JournalReader::new(now_unix()));
        let mut c = SecurityCollector {
            configured: path,
            tail: None,
            startup_file: None,
            journal,
            warned: false,
            #[cfg(windows)]
            event_log: super::windows_events::EventLogReader::new(),
        };
        if cfg!(target_os = "linux")
            && let Some(path) = c.resolve()
        {
            c.startup_file = std::fs::metadata(&path).ok().map(|m| file_id(&m));
            c.tail = c.open(path);
        }
        c
    }

    /// Reports the events logged since the previous call.
    #[cfg(windows)]
    pub fn collect(&mut self) -> SecurityEvents {
        self.event_log.collect()
    }

    /// Reports the events logged since the previous call.
    #[cfg(not(windows))]
    pub fn collect(&mut self) -> SecurityEvents {
        self.collect_log()
    }

    /// Reads the auth log (or the journal) from where the previous call stopped.
    #[cfg_attr(windows, allow(dead_code))] // Windows reads the event log instead
    fn collect_log(&mut self) -> SecurityEvents {
        if !cfg!(target_os = "linux") {
            return SecurityEvents::default();
        }
        let now = now_unix();
        let mut events = Vec::new();
        let current = self.resolve();
        let current_id = current.as_ref().and_then(|p| std::fs::metadata(p).ok()).map(|m| file_id(&m));
        let mut source = None;
        if let Some(mut tail) = self.tail.take() {
            source = Some(tail.path.clone());
            let same = current.as_ref() == Some(&tail.path) && current_id == Some(tail.id);
            read_new(&mut tail, !same, now, &mut events);
            if same || events.len() >= MAX_EVENTS {
                // Keep the old file while it still has unread events.
                self.tail = Some(tail);
            }
        }
        if self.tail.is_none()
            && let Some(path) = current
        {
            self.tail = self.open(path);
            if let Some(tail) = self.tail.as_mut() {
                source = Some(tail.path.clone());
                read_new(tail, false, now, &mut events);
            }
        }
        let mut source = source.map(|p| clean_text(&p.to_string_lossy()));
        if self.tail.is_none()
            && source.is_none()
            && let Some(journal) = self.journal.as_mut().filter(|j| j.available())
        {
            if let Err(e) = journal.read(now, &mut events) {
                tracing::warn!("reading the journal failed: {e}");
            }
            source = Some("journal".to_owned());
        }
        SecurityEvents { source, events }
    }

    /// The configured path, or the first default that exists.
    fn resolve(&self) -> Option<PathBuf> {
        match &self.configured {
            Some(p) => p.exists().then(|| p.clone()),
            None => DEFAULT_PATHS.iter().map(PathBuf::from).find(|p| p.exists()),
        }
    }

    /// Opens `path`: at its end if it is the file that existed at start-up, else at its beginning.
    fn open(&mut self, path: PathBuf) -> Option<Tail> {
        let opened = File::open(&path).and_then(|f| f.metadata().map(|m| (f, m)));
        match opened {
            Ok((file, meta)) => {
                let id = file_id(&meta);
                let offset = if Some(id) == self.startup_file { meta.len() } else { 0 };
                Some(Tail { path, file, id, offset })
            }
            Err(e) => {
                if !self.warned {
                    tracing::warn!(path = %path.display(), "cannot read the auth log: {e}");
                    self.warned = true;
                }
                None
            }
        }
    }
}

/// Reads complete lines after `tail.offset` (and, when `to_eof`, a final unterminated line too), classifying them.
fn read_new(tail: &mut Tail, to_eof: bool, now: i64, events: &mut Vec<SecurityEvent>) {
    if let Err(e) = try_read_new(tail, to_eof, now, events) {
        tracing::warn!(path = %tail.path.display(), "reading the auth log failed: {e}");
    }
}

fn try_read_new(tail: &mut Tail, to_eof: bool, now: i64, events: &mut Vec<SecurityEvent>) -> std::io::Result<()> {
    let len = tail.file.metadata()?.len();
    if len < tail.offset {
        tracing::info!(path = %tail.path.display(), "auth log truncated; reading from its start");
        tail.offset = 0;
    }
    while events.len() < MAX_EVENTS && tail.offset < len {
        tail.file.seek(SeekFrom::Start(tail.offset))?;
        let mut buf = Vec::new();
        let got = (&mut tail.file).take(MAX_READ.min(len - tail.offset)).read_to_end(&mut buf)? as u64;
        if got == 0 {
            break;
        }
        let at_eof = tail.offset + got >= len;
        // Whole lines only, except at the end of a file no longer written to (`to_eof`).
        let end = match buf.iter().rposition(|&b| b == b'\n') {
            _ if to_eof && at_eof => buf.len(),
            Some(i) => i + 1,
            None if got >= MAX_READ => {
                // A fragment of an over-long line: skip it.
                tail.offset += got;
                continue;
            }
            None => break,
        };
        for line in buf[..end].split_inclusive(|&b| b == b'\n') {
            tail.offset += line.len() as u64;
            if let Some(e) = auth_log::parse_line(String::from_utf8_lossy(line).trim_end(), now) {
                events.push(e);
                if events.len() >= MAX_EVENTS {
                    return Ok(());
                }
            }
        }
        if end < buf.len() {
            // The rest is a partial line: it is read once it is complete.
            break;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn file_id(m: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(not(unix))]
fn file_id(_m: &std::fs::Metadata) -> FileId {
    (0, 0)
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;
    use std::io::Write;
    use vigil_schema::report::SecurityEventKind::{self, *};

    const FIXTURE: &str = include_str!("../../tests/fixtures/auth.log");

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
        let first = c.collect();
        assert_eq!(first.source.as_deref(), Some(path.to_str().unwrap()));
        assert!(first.events.is_empty(), "history before start-up is not reported: {first:?}");

        append(&path, FIXTURE);
        let got = c.collect();
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
        assert_eq!(got.events[6].time, auth_log::days_from_civil(2026, 11, 26) * 86_400 + 9 * 3600 + 19 * 60 + 42);
        assert!(c.collect().events.is_empty(), "nothing is reported twice");

        append(&path, &line("late"));
        assert_eq!(summary(&c.collect()), [(LoginFailed, Some("late"), Some("192.0.2.1"))]);
    }

    #[test]
    fn missing_log_is_no_source_and_a_new_log_is_read_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secure");
        let mut c = SecurityCollector::new(Some(path.clone()));
        assert_eq!(c.collect(), SecurityEvents { source: None, events: vec![] });
        append(&path, &line("first"));
        assert_eq!(summary(&c.collect()), [(LoginFailed, Some("first"), Some("192.0.2.1"))]);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(c.collect().events, vec![]);
        assert_eq!(c.collect().source, None);
    }

    #[test]
    fn truncation_restarts_at_the_beginning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        append(&path, &line("a").repeat(5));
        let mut c = SecurityCollector::new(Some(path.clone()));
        assert!(c.collect().events.is_empty());
        std::fs::write(&path, line("after-truncate")).unwrap(); // copytruncate, then one new line
        assert_eq!(summary(&c.collect()), [(LoginFailed, Some("after-truncate"), Some("192.0.2.1"))]);
        assert!(c.collect().events.is_empty());
    }

    #[test]
    fn rotation_reads_the_rest_of_the_old_file_then_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        append(&path, &line("before-start"));
        let mut c = SecurityCollector::new(Some(path.clone()));
        append(&path, &line("one"));
        assert_eq!(c.collect().events.len(), 1);
        append(&path, &line("late-in-old"));
        let old = dir.path().join("auth.log.1");
        std::fs::rename(&path, &old).unwrap();
        append(&old, "Nov 26 10:00:00 h sudo: bob : TTY=pts/1 ; PWD=/ ; USER=root ; COMMAND=/bin/true"); // no newline
        append(&path, &line("new-file"));
        let users: Vec<_> = c.collect().events.into_iter().map(|e| e.user.unwrap()).collect();
        assert_eq!(users, ["late-in-old", "bob", "new-file"]);
        assert!(c.collect().events.is_empty());
        append(&path, &line("next"));
        assert_eq!(c.collect().events.len(), 1);
    }

    #[test]
    fn partial_lines_wait_until_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        append(&path, "");
        let mut c = SecurityCollector::new(Some(path.clone()));
        let full = line("split");
        append(&path, &full[..30]);
        assert!(c.collect().events.is_empty());
        append(&path, &full[30..]);
        assert_eq!(summary(&c.collect()), [(LoginFailed, Some("split"), Some("192.0.2.1"))]);
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
        let first = c.collect();
        assert_eq!(first.events.len(), MAX_EVENTS);
        let second = c.collect();
        assert_eq!(second.events.len(), 500);
        assert_eq!(second.events[0].user.as_deref(), Some(format!("u{MAX_EVENTS}").as_str()));
        assert!(c.collect().events.is_empty());
    }
}
