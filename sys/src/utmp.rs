//! The binary utmp file's layout (glibc's `struct utmp`, 384 bytes on Linux x86_64 and aarch64), in one place: the
//! agent reads records with [`records`], tests write them with [`record`].
//!
//! Layout (offsets in bytes): `ut_type` i16 at 0, `ut_pid` i32 at 4, `ut_line` [32] at 8, `ut_id` [4] at 40,
//! `ut_user` [32] at 44, `ut_host` [256] at 76, `ut_exit` at 332, `ut_session` i32 at 336, `ut_tv.tv_sec` i32 at
//! 340, `ut_tv.tv_usec` i32 at 344, `ut_addr_v6` at 348, reserved to 384. Integers are in the host's byte order;
//! text fields are NUL-padded and not necessarily NUL-terminated.

/// Size of one record.
pub const RECORD_LEN: usize = 384;
/// `ut_type` of a logged-in user's session.
pub const USER_PROCESS: i16 = 7;

const TYPE: usize = 0;
const LINE: (usize, usize) = (8, 32);
const USER: (usize, usize) = (44, 32);
const HOST: (usize, usize) = (76, 256);
const TV_SEC: usize = 340;

/// The fields of one record that vigil uses, text as raw bytes up to the first NUL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRecord<'a> {
    pub ut_type: i16,
    pub line: &'a [u8],
    pub user: &'a [u8],
    pub host: &'a [u8],
    /// glibc stores the login time as a signed 32-bit value.
    pub tv_sec: i32,
}

/// Every whole record in `bytes`, in file order; a trailing partial record is ignored.
pub fn records(bytes: &[u8]) -> impl Iterator<Item = RawRecord<'_>> {
    bytes.chunks_exact(RECORD_LEN).map(|rec| RawRecord {
        ut_type: i16::from_ne_bytes([rec[TYPE], rec[TYPE + 1]]),
        line: field(rec, LINE),
        user: field(rec, USER),
        host: field(rec, HOST),
        tv_sec: i32::from_ne_bytes([rec[TV_SEC], rec[TV_SEC + 1], rec[TV_SEC + 2], rec[TV_SEC + 3]]),
    })
}

fn field(rec: &[u8], (at, len): (usize, usize)) -> &[u8] {
    let raw = &rec[at..at + len];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(len);
    &raw[..end]
}

/// One record laid out as glibc writes it (text longer than its field is cut to the field's width).
pub fn record(ut_type: i16, user: &str, line: &str, host: &str, tv_sec: i32) -> Vec<u8> {
    let mut r = vec![0u8; RECORD_LEN];
    r[TYPE..TYPE + 2].copy_from_slice(&ut_type.to_ne_bytes());
    for ((at, len), text) in [(LINE, line), (USER, user), (HOST, host)] {
        let n = text.len().min(len);
        r[at..at + n].copy_from_slice(&text.as_bytes()[..n]);
    }
    r[TV_SEC..TV_SEC + 4].copy_from_slice(&tv_sec.to_ne_bytes());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_records_read_back() {
        let mut bytes = record(USER_PROCESS, "alice", "pts/0", "203.0.113.7", 1_700_000_100);
        bytes.extend(record(8, &"u".repeat(40), "tty1", "", -1));
        bytes.extend_from_slice(&[7, 0, 1]);
        let got: Vec<_> = records(&bytes).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            RawRecord {
                ut_type: USER_PROCESS,
                line: b"pts/0",
                user: b"alice",
                host: b"203.0.113.7",
                tv_sec: 1_700_000_100
            }
        );
        assert_eq!((got[1].ut_type, got[1].user.len(), got[1].host, got[1].tv_sec), (8, 32, &b""[..], -1));
        // The offsets glibc uses.
        assert!(
            bytes[44] == b'a'
                && bytes[8..13] == *b"pts/0"
                && bytes[76] == b'2'
                && bytes[340..344] == 1_700_000_100i32.to_ne_bytes()
        );
    }
}
