//! Parsing of the binary utmp file (glibc's `struct utmp`, 384 bytes on Linux x86_64 and aarch64) into sessions.
//!
//! Only `USER_PROCESS` records are sessions. Layout (offsets in bytes): `ut_type` i16 at 0, `ut_pid` i32 at 4,
//! `ut_line` [32] at 8, `ut_id` [4] at 40, `ut_user` [32] at 44, `ut_host` [256] at 76, `ut_exit` at 332,
//! `ut_session` i32 at 336, `ut_tv.tv_sec` i32 at 340, `ut_tv.tv_usec` i32 at 344, `ut_addr_v6` at 348,
//! reserved to 384. Integers are in the host's byte order.

use vigil_schema::report::{Session, limits};

use super::clean_text;

/// Size of one record.
pub const RECORD_LEN: usize = 384;
/// `ut_type` of a logged-in user's session.
pub const USER_PROCESS: i16 = 7;

const TYPE: usize = 0;
const LINE: (usize, usize) = (8, 32);
const USER: (usize, usize) = (44, 32);
const HOST: (usize, usize) = (76, 256);
const TV_SEC: usize = 340;

/// Parses every whole record in `bytes` (a trailing partial record is ignored) and returns the user sessions,
/// at most [`limits::MAX_ITEMS`].
pub fn parse(bytes: &[u8]) -> Vec<Session> {
    bytes.chunks_exact(RECORD_LEN).filter_map(parse_record).take(limits::MAX_ITEMS).collect()
}

fn parse_record(rec: &[u8]) -> Option<Session> {
    let ut_type = i16::from_ne_bytes([rec[TYPE], rec[TYPE + 1]]);
    if ut_type != USER_PROCESS {
        return None;
    }
    let user = field(rec, USER);
    if user.is_empty() {
        return None;
    }
    let host = field(rec, HOST);
    let tv_sec = i32::from_ne_bytes([rec[TV_SEC], rec[TV_SEC + 1], rec[TV_SEC + 2], rec[TV_SEC + 3]]);
    Some(Session {
        user,
        terminal: field(rec, LINE),
        host: (!host.is_empty()).then_some(host),
        // glibc stores the time as a signed 32-bit value; read it as unsigned so dates after 2038 stay right.
        login_time: i64::from(tv_sec as u32),
    })
}

/// A NUL-padded (not necessarily NUL-terminated) text field, cleaned for the report.
fn field(rec: &[u8], (at, len): (usize, usize)) -> String {
    let raw = &rec[at..at + len];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(len);
    clean_text(&String::from_utf8_lossy(&raw[..end]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
pub(crate) mod tests {
    use super::*;

    /// Builds one record the way glibc lays it out.
    pub(crate) fn record(ut_type: i16, user: &str, line: &str, host: &str, tv_sec: i32) -> Vec<u8> {
        let mut r = vec![0u8; RECORD_LEN];
        r[TYPE..TYPE + 2].copy_from_slice(&ut_type.to_ne_bytes());
        r[LINE.0..LINE.0 + line.len()].copy_from_slice(line.as_bytes());
        r[USER.0..USER.0 + user.len()].copy_from_slice(user.as_bytes());
        r[HOST.0..HOST.0 + host.len()].copy_from_slice(host.as_bytes());
        r[TV_SEC..TV_SEC + 4].copy_from_slice(&tv_sec.to_ne_bytes());
        r
    }

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
