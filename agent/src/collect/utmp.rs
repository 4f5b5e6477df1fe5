//! Sessions from the binary utmp file: its `USER_PROCESS` records (layout in [`vigil_sys::utmp`]), text cleaned
//! for the report.

use vigil_schema::report::{Session, limits};
use vigil_sys::utmp::{RawRecord, USER_PROCESS, records};

use super::clean_text;

/// Parses every whole record in `bytes` (a trailing partial record is ignored) and returns the user sessions,
/// at most [`limits::MAX_ITEMS`].
pub fn parse(bytes: &[u8]) -> Vec<Session> {
    records(bytes).filter_map(session).take(limits::MAX_ITEMS).collect()
}

fn session(rec: RawRecord<'_>) -> Option<Session> {
    if rec.ut_type != USER_PROCESS {
        return None;
    }
    let user = text(rec.user);
    if user.is_empty() {
        return None;
    }
    let host = text(rec.host);
    Some(Session {
        user,
        terminal: text(rec.line),
        host: (!host.is_empty()).then_some(host),
        // glibc stores the time as a signed 32-bit value; read it as unsigned so dates after 2038 stay right.
        login_time: i64::from(rec.tv_sec.cast_unsigned()),
    })
}

/// A text field, cleaned for the report.
fn text(raw: &[u8]) -> String {
    clean_text(&String::from_utf8_lossy(raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_sys::utmp::{RECORD_LEN, record};

    #[test]
    fn glibc_written_fixture_has_two_sessions() {
        // Written by glibc's updwtmp() (tests/fixtures/make_utmp.c): a boot record, two user sessions, a login
        // prompt and a dead process.
        let bytes = include_bytes!("../../tests/fixtures/utmp-two-sessions");
        assert_eq!(bytes.len(), 5 * RECORD_LEN);
        let s = parse(bytes);
        assert_eq!(
            s,
            vec![
                Session {
                    user: "alice".into(),
                    terminal: "pts/0".into(),
                    host: Some("203.0.113.7".into()),
                    login_time: 1_700_000_100
                },
                Session { user: "bob".into(), terminal: "tty2".into(), host: None, login_time: 1_700_000_200 },
            ]
        );
    }

    #[test]
    fn full_width_fields_and_junk_are_handled() {
        let user = "u".repeat(32); // no NUL terminator
        let mut bytes = record(USER_PROCESS, &user, "pts/9", "evil\x1bhost", -1);
        bytes.extend_from_slice(&[7, 0, 1]); // trailing partial record
        let s = parse(&bytes);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].user, user);
        assert_eq!(s[0].host.as_deref(), Some("evil host"));
        assert_eq!(s[0].login_time, i64::from(u32::MAX));
        assert!(parse(&record(USER_PROCESS, "", "pts/1", "", 5)).is_empty(), "a session needs a user");
        assert!(parse(&[]).is_empty());
    }
}
