//! Parsing of syslog-format authentication log lines (`/var/log/auth.log`, `/var/log/secure`) into security events.
//!
//! Both timestamp styles are read: the traditional `Nov 26 09:14:01` (no year: the current year is assumed, or the
//! previous one if that would put the line more than a day in the future; the time is taken as UTC) and rsyslog's
//! RFC 3339 `2026-11-26T09:14:01.118311+00:00`. Classification:
//! - sshd `Failed <method> for [invalid user] U from IP`, sshd `Invalid user U from IP`, and any PAM
//!   `authentication failure; ... rhost=IP user=U` line: [`SecurityEventKind::LoginFailed`];
//! - sshd `Accepted <method> for U from IP`: [`SecurityEventKind::LoginSucceeded`];
//! - sudo `U : TTY=... ; USER=... ; COMMAND=...` (also its "incorrect password attempts" form):
//!   [`SecurityEventKind::Sudo`].
//!
//! Every other line (session opened/closed, cron, ...) is not an event. The journal reader ([`super::journal`])
//! classifies its entries with the same rules ([`event`]).

use vigil_schema::report::{SecurityEvent, SecurityEventKind, limits};

use super::{clean, clean_text};

/// Longest message kept, in bytes (the schema allows four times its text bound).
pub const MAX_MESSAGE: usize = 4 * limits::MAX_TEXT;

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

/// Classifies the message `msg` logged by `program` at `time`; `text` is what the event's message shows.
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

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { era * 400 + yoe + 1 } else { era * 400 + yoe }, m, d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;
    use SecurityEventKind::*;

    /// 2026-11-26T12:00:00Z
    const NOW: i64 = 1_795_694_400;

    #[test]
    fn calendar_round_trips() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(NOW / 86_400), (2026, 11, 26));
        for z in [-1000, 0, 59, 60, 11_016, 20_000, 40_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
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
        let e = parse_line("2026-11-26T09:19:42.118311+00:00 web1 sshd-session[1600]: Accepted password for bob from 2001:db8::5 port 51000 ssh2", NOW).unwrap();
        assert_eq!(e.time, NOW - 2 * 3600 - 40 * 60 - 18);
        assert_eq!(e.kind, LoginSucceeded);
    }
}
