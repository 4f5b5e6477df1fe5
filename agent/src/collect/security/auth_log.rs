//! The syslog-format authentication log (`/var/log/auth.log` on Debian and Ubuntu, `/var/log/secure` on RHEL and
//! Fedora, or the configured path): tailing it ([`AuthLog`]) and parsing its lines ([`parse_line`]).
//!
//! Only lines new since the previous sample are reported:
//! - **Start-up**: a log that exists when the agent starts is read from its end, so a restart does not report
//!   (and mail) old history again. A log that appears later is new and is read from its beginning.
//! - **Rotation** (the path now names another file): the rest of the old file, still open, is read first, then the
//!   new file from its beginning.
//! - **Truncation** (copytruncate: the file is shorter than the read position): reading restarts at 0.
//! - **Bounds**: at most [`MAX_EVENTS`] events and [`MAX_READ`] bytes per sample; what is left is read next time.
//!   A partial last line is left for the next sample. A line longer than [`MAX_READ`] is skipped.
//!
//! Both timestamp styles are read: the traditional `Nov 26 09:14:01` (no year: the current year is assumed, or the
//! previous one if that would put the line more than a day in the future; the time is taken as UTC) and rsyslog's
//! RFC 3339 `2026-11-26T09:14:01.118311+00:00`. Messages are classified by [`super::event`]; every other line
//! (session opened/closed, cron, ...) is not an event.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use vigil_schema::report::SecurityEvent;
use vigil_sys::clock::{civil_from_days, days_from_civil};

use super::{DEFAULT_PATHS, MAX_EVENTS, MAX_READ, clean_text, event};

/// Follows the authentication log across samples.
#[derive(Debug)]
pub struct AuthLog {
    configured: Option<PathBuf>,
    tail: Option<Tail>,
    /// The file that existed at start-up: when (re)opened, it is read from its end.
    startup_file: Option<FileId>,
    warned: bool,
}

impl AuthLog {
    /// Opens the log at its end (see the module docs). `path` overrides [`DEFAULT_PATHS`].
    pub fn new(path: Option<PathBuf>) -> Self {
        let mut log = AuthLog { configured: path, tail: None, startup_file: None, warned: false };
        if cfg!(target_os = "linux")
            && let Some(path) = log.resolve()
        {
            log.startup_file = std::fs::metadata(&path).ok().map(|m| file_id(&m));
            log.tail = log.open(path);
        }
        log
    }

    /// Appends the events logged since the previous call; returns the path read (cleaned for the report), or
    /// `None` when there is no log.
    pub fn read(&mut self, now: i64, events: &mut Vec<SecurityEvent>) -> Option<String> {
        let current = self.resolve();
        let current_id = current.as_ref().and_then(|p| std::fs::metadata(p).ok()).map(|m| file_id(&m));
        let mut source = None;
        if let Some(mut tail) = self.tail.take() {
            source = Some(tail.path.clone());
            let same = current.as_ref() == Some(&tail.path) && current_id == Some(tail.id);
            read_new(&mut tail, !same, now, events);
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
                read_new(tail, false, now, events);
            }
        }
        source.map(|p| clean_text(&p.to_string_lossy()))
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
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the auth log");
                    self.warned = true;
                }
                None
            }
        }
    }
}

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

/// Reads complete lines after `tail.offset` (and, when `to_eof`, a final unterminated line too), classifying them.
fn read_new(tail: &mut Tail, to_eof: bool, now: i64, events: &mut Vec<SecurityEvent>) {
    if let Err(e) = try_read_new(tail, to_eof, now, events) {
        tracing::warn!(path = %tail.path.display(), error = %e, "reading the auth log failed");
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
            if let Some(e) = parse_line(String::from_utf8_lossy(line).trim_end(), now) {
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

/// Turns one log line into an event, or `None` if it is not an authentication or privilege event. `now` (seconds
/// since the epoch) is used for the year of traditional timestamps and when the line has no readable time.
pub fn parse_line(line: &str, now: i64) -> Option<SecurityEvent> {
    let (time, rest) = match parse_timestamp(line, now) {
        Some((t, rest)) => (t, rest),
        None => (now, line),
    };
    // `host program[pid]: message`
    let rest = rest.trim_start();
    let (_host, rest) = rest.split_once(' ')?;
    let (tag, msg) = rest.split_once(": ")?;
    let program = tag.split('[').next().unwrap_or(tag);
    event(time, program, msg, line)
}

/// Reads the leading timestamp; returns seconds since the epoch and the rest of the line.
pub fn parse_timestamp(line: &str, now: i64) -> Option<(i64, &str)> {
    let first = line.split(' ').next()?;
    if first.len() >= 19 && first.as_bytes()[4] == b'-' && first.as_bytes()[10] == b'T' {
        return Some((parse_rfc3339(first)?, &line[first.len()..]));
    }
    // "Nov 26 09:14:01" or "Nov  6 09:14:01": exactly 15 bytes.
    let stamp = line.get(..15)?;
    let month = MONTHS.iter().position(|m| stamp.starts_with(m))? as u32 + 1;
    let day: u32 = stamp.get(4..6)?.trim().parse().ok()?;
    let secs = hms(stamp.get(7..15)?)?;
    let year = civil_from_days(now.div_euclid(86_400)).0;
    let mut t = days_from_civil(year, month, day) * 86_400 + secs;
    if t > now + 86_400 {
        t = days_from_civil(year - 1, month, day) * 86_400 + secs;
    }
    Some((t, &line[15..]))
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// `HH:MM:SS` as seconds into the day.
fn hms(s: &str) -> Option<i64> {
    let mut it = s.split(':');
    let h: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let sec: i64 = it.next()?.parse().ok()?;
    (it.next().is_none() && h < 24 && m < 60 && sec < 61).then_some(h * 3600 + m * 60 + sec)
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)` as seconds since the epoch.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let year: i64 = s.get(0..4)?.parse().ok()?;
    let month: u32 = s.get(5..7)?.parse().ok()?;
    let day: u32 = s.get(8..10)?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let secs = hms(s.get(11..19)?)?;
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        rest = frac.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = rest[1..].split_once(':')?;
            sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60)
        }
    };
    Some(days_from_civil(year, month, day) * 86_400 + secs - offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::security::MAX_MESSAGE;
    use vigil_schema::report::SecurityEventKind::{self, *};
    use vigil_schema::report::limits;

    /// 2026-11-26T12:00:00Z
    const NOW: i64 = 1_795_694_400;

    #[test]
    fn now_is_the_date_the_tests_assume() {
        assert_eq!(civil_from_days(NOW / 86_400), (2026, 11, 26));
    }

    #[test]
    fn timestamps() {
        assert_eq!(parse_timestamp("Nov 26 09:14:01 h x: y", NOW).unwrap(), (NOW - 3 * 3600 + 14 * 60 + 1, " h x: y"));
        // Dec 31 seen on Jan 1st belongs to the previous year.
        let jan1 = days_from_civil(2027, 1, 1) * 86_400 + 60;
        let (t, _) = parse_timestamp("Dec 31 23:59:00 h x: y", jan1).unwrap();
        assert_eq!(t, days_from_civil(2026, 12, 31) * 86_400 + 86_340);
        let (t, _) = parse_timestamp("Nov  6 00:00:00 h x: y", NOW).unwrap();
        assert_eq!(t, days_from_civil(2026, 11, 6) * 86_400);
        assert_eq!(parse_rfc3339("2026-11-26T12:00:00Z"), Some(NOW));
        assert_eq!(parse_rfc3339("2026-11-26T13:00:00.5+01:00"), Some(NOW));
        assert_eq!(parse_rfc3339("2026-11-26T11:30:00-00:30"), Some(NOW));
        assert_eq!(parse_rfc3339("2026-13-26T11:30:00Z"), None);
        assert!(parse_timestamp("garbage", NOW).is_none());
        assert!(parse_timestamp("Foo 26 09:14:01 h x: y", NOW).is_none());
    }

    fn ev(line: &str) -> Option<(SecurityEventKind, Option<String>, Option<String>)> {
        parse_line(line, NOW).map(|e| (e.kind, e.user, e.source))
    }

    fn some(
        kind: SecurityEventKind,
        user: &str,
        source: Option<&str>,
    ) -> Option<(SecurityEventKind, Option<String>, Option<String>)> {
        Some((kind, Some(user.into()), source.map(Into::into)))
    }

    #[test]
    fn classification() {
        assert_eq!(
            ev("Nov 26 09:14:01 web1 sshd[1201]: Failed password for root from 198.51.100.23 port 52144 ssh2"),
            some(LoginFailed, "root", Some("198.51.100.23"))
        );
        assert_eq!(
            ev("Nov 26 09:14:07 web1 sshd[1]: Failed password for invalid user admin from 2001:db8::1 port 5 ssh2"),
            some(LoginFailed, "admin", Some("2001:db8::1"))
        );
        assert_eq!(
            ev("Nov 26 09:14:05 web1 sshd[1201]: Invalid user admin from 198.51.100.23 port 52150"),
            some(LoginFailed, "admin", Some("198.51.100.23"))
        );
        assert_eq!(
            ev("Nov 26 09:15:00 web1 sshd[1300]: pam_unix(sshd:auth): authentication failure; logname= uid=0 \
                euid=0 tty=ssh ruser= rhost=198.51.100.24  user=carol"),
            some(LoginFailed, "carol", Some("198.51.100.24"))
        );
        assert_eq!(
            ev("Nov 26 09:15:00 web1 sudo: pam_unix(sudo:auth): authentication failure; logname=eve uid=1001 \
                euid=0 tty=/dev/pts/1 ruser=eve rhost=  user=eve"),
            some(LoginFailed, "eve", None)
        );
        assert_eq!(
            ev("Nov 26 09:16:11 web1 sshd[1402]: Accepted publickey for alice from 203.0.113.7 port 40022 ssh2: \
                ED25519 SHA256:abc"),
            some(LoginSucceeded, "alice", Some("203.0.113.7"))
        );
        assert_eq!(
            ev("Nov 26 09:17:30 web1 sudo:    alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/id"),
            some(Sudo, "alice", None)
        );
        assert_eq!(
            ev("Nov 26 09:17:30 web1 sshd[9]: message repeated 2 times: [ Failed password for root from 192.0.2.1 \
                port 22 ssh2]"),
            some(LoginFailed, "root", Some("192.0.2.1"))
        );
        for quiet in [
            "Nov 26 09:17:30 web1 sudo: pam_unix(sudo:session): session opened for user root(uid=0) by alice(uid=1000)",
            "Nov 26 09:18:00 web1 CRON[1500]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)",
            "Nov 26 09:18:00 web1 sshd[3]: Received disconnect from 192.0.2.1 port 22:11: bye",
            "Nov 26 09:18:00 web1 kernel: Accepted password for nobody from 1.2.3.4",
            "",
            "garbage",
        ] {
            assert_eq!(ev(quiet), None, "{quiet}");
        }
    }

    #[test]
    fn events_are_bounded_and_clean() {
        let user = "u".repeat(3000);
        let line = format!(
            "Nov 26 09:14:01 h sshd[1]: Failed password for {user}\x07 from 192.0.2.1 port 1 ssh2 {}",
            "x".repeat(5000)
        );
        let e = parse_line(&line, NOW).unwrap();
        assert!(e.message.len() <= MAX_MESSAGE && !e.message.chars().any(char::is_control));
        assert!(e.user.as_ref().unwrap().len() <= limits::MAX_TEXT);
        // What the server refuses never leaves the agent: tabs, C1 controls and bidi overrides become spaces.
        let e = parse_line(
            "Nov 26 09:14:01 h sshd[1]: Failed password for ev\u{202e}il\tx from 192.0.2.1\u{9b} port 1",
            NOW,
        )
        .unwrap();
        assert_eq!((e.user.as_deref(), e.source.as_deref()), (Some("ev il x"), Some("192.0.2.1")));
        let report = vigil_schema::report::Report {
            seq: 1,
            job: "j".into(),
            collected_at_ms: 0,
            dropped: 0,
            stats: vigil_schema::report::Stats {
                security_events: Some(vigil_schema::report::SecurityEvents { source: None, events: vec![e] }),
                ..Default::default()
            },
        };
        report.validate().unwrap();
        let e = parse_line("2026-11-26T09:19:42.118311+00:00 web1 sshd-session[1600]: Accepted password for bob from 2001:db8::5 port 51000 ssh2", NOW).unwrap();
        assert_eq!(e.time, NOW - 2 * 3600 - 40 * 60 - 18);
        assert_eq!(e.kind, LoginSucceeded);
    }
}
