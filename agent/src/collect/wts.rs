//! Logged-on sessions on Windows, from the Remote Desktop Services session API (`wtsapi32.dll`): the `users`
//! family's source there.
//!
//! The pure half (compiled everywhere, so its tests run on Linux): FILETIME to Unix time ([`unix_time`]), the client
//! address of a remote session ([`client_address`]), and one session's report row ([`session`]), which drops the
//! sessions nobody is logged on to (session 0 of the services, the RDP listener).
//!
//! The Windows half (`sessions`, `cfg(windows)`): `WTSEnumerateSessionsW` on the local server, then per session
//! `WTSQuerySessionInformationW` for `WTSSessionInfo` (station name, logon time), `WTSUserName`, `WTSDomainName`
//! and `WTSClientAddress`. Every Windows host has session 0 at least, so an enumeration that lists no session at all
//! (Wine's stub) means the API is not really there: the family is "not available", not "nobody logged on".

use vigil_schema::report::Session;

use super::clean_text;

/// What `source` says in the reports.
#[cfg_attr(not(windows), allow(dead_code))] // read by `users` on Windows only
pub const SOURCE: &str = "wts";
/// `AF_INET` and `AF_INET6` as `WTS_CLIENT_ADDRESS.AddressFamily` gives them.
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 23;
/// 100-ns intervals from 1601-01-01 (FILETIME's epoch) to 1970-01-01.
const FILETIME_UNIX_EPOCH: i64 = 116_444_736_000_000_000;

/// Seconds since the Unix epoch of a FILETIME (100-ns intervals since 1601); `None` for 0 (never) and for times
/// before 1970.
pub fn unix_time(filetime: i64) -> Option<i64> {
    (filetime > FILETIME_UNIX_EPOCH).then(|| (filetime - FILETIME_UNIX_EPOCH) / 10_000_000)
}

/// The address of a remote session's client, from `WTS_CLIENT_ADDRESS`: for IPv4 the four bytes start at offset
/// 2 (the layout of a `sockaddr_in` without its family), for IPv6 the sixteen bytes at offset 0. `None` for a
/// console session (family 0) and anything else.
pub fn client_address(family: u32, address: &[u8; 20]) -> Option<String> {
    match family {
        AF_INET => {
            let ip = std::net::Ipv4Addr::new(address[2], address[3], address[4], address[5]);
            (!ip.is_unspecified()).then(|| ip.to_string())
        }
        AF_INET6 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&address[..16]);
            let ip = std::net::Ipv6Addr::from(b);
            (!ip.is_unspecified()).then(|| ip.to_string())
        }
        _ => None,
    }
}

/// What the session API says of one session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawSession {
    pub user: String,
    pub domain: String,
    /// The window station: `Console`, `RDP-Tcp#3`, `Services`.
    pub station: String,
    /// FILETIME of the logon, 0 when unknown.
    pub logon_filetime: i64,
    pub client: Option<String>,
}

/// The report row of a session, or `None` when nobody is logged on to it (no user name). The user is
/// `DOMAIN\user`, the terminal the window station (`console` when it has none).
pub fn session(raw: &RawSession) -> Option<Session> {
    let user = raw.user.trim();
    if user.is_empty() {
        return None;
    }
    let domain = raw.domain.trim();
    let user = if domain.is_empty() { user.to_owned() } else { format!("{domain}\\{user}") };
    let station = raw.station.trim();
    Some(Session {
        user: clean_text(&user),
        terminal: clean_text(if station.is_empty() { "console" } else { station }),
        host: raw.client.as_deref().map(clean_text).filter(|h| !h.is_empty()),
        login_time: unix_time(raw.logon_filetime).unwrap_or(0),
    })
}

/// The rows of the sessions enumerated, or why the family is not available: an enumeration with no session at all
/// (no session 0 even) is no working session API.
pub fn rows(raw: &[RawSession]) -> Result<Vec<Session>, String> {
    if raw.is_empty() {
        return Err("the session API lists no session, not even session 0 (WTSEnumerateSessionsW is a stub here: \
                    Wine?)"
            .to_owned());
    }
    Ok(raw.iter().filter_map(session).take(vigil_schema::report::limits::MAX_ITEMS).collect())
}

#[cfg(windows)]
pub use api::sessions;

/// The session API side (Windows only).
#[cfg(windows)]
#[allow(unsafe_code)] // FFI to wtsapi32.dll; every call's contract is stated at the call
mod api {
    use std::io;

    use vigil_schema::report::Session;
    use windows_sys::Win32::System::RemoteDesktop::{
        WTS_CLIENT_ADDRESS, WTS_CURRENT_SERVER_HANDLE, WTS_INFO_CLASS, WTS_SESSION_INFOW, WTSClientAddress,
        WTSDomainName, WTSEnumerateSessionsW, WTSFreeMemory, WTSINFOW, WTSQuerySessionInformationW, WTSSessionInfo,
        WTSUserName,
    };

    use super::{RawSession, client_address, rows};

    /// Memory the session API allocated, freed with `WTSFreeMemory` on drop.
    struct WtsMemory<T>(*mut T);

    impl<T> Drop for WtsMemory<T> {
        fn drop(&mut self) {
            if !self.0.is_null() {
                // SAFETY: the pointer came from WTSEnumerateSessionsW or WTSQuerySessionInformationW, is owned by
                // this value and freed once.
                unsafe { WTSFreeMemory(self.0.cast()) };
            }
        }
    }

    /// One piece of information on session `id`: the buffer and its length in bytes.
    fn query(id: u32, class: WTS_INFO_CLASS) -> Option<(WtsMemory<u16>, usize)> {
        let (mut buf, mut bytes) = (std::ptr::null_mut(), 0u32);
        // SAFETY: `buf` and `bytes` are valid out pointers; the server handle is the local server's constant.
        let ok = unsafe { WTSQuerySessionInformationW(WTS_CURRENT_SERVER_HANDLE, id, class, &mut buf, &mut bytes) };
        let mem = WtsMemory(buf);
        (ok != 0 && !buf.is_null()).then_some((mem, bytes as usize))
    }

    /// A string piece of information (NUL-terminated UTF-16).
    fn query_string(id: u32, class: WTS_INFO_CLASS) -> String {
        let Some((mem, bytes)) = query(id, class) else { return String::new() };
        // SAFETY: the API returned a buffer of `bytes` bytes holding UTF-16 text.
        let text = unsafe { std::slice::from_raw_parts(mem.0, bytes / 2) };
        let end = text.iter().position(|&c| c == 0).unwrap_or(text.len());
        String::from_utf16_lossy(&text[..end])
    }

    /// A fixed-size structure piece of information, copied out.
    fn query_struct<T: Copy>(id: u32, class: WTS_INFO_CLASS) -> Option<T> {
        let (mem, bytes) = query(id, class)?;
        // SAFETY: the buffer holds at least size_of::<T>() bytes (checked); read_unaligned copes with any alignment.
        (bytes >= size_of::<T>()).then(|| unsafe { std::ptr::read_unaligned(mem.0.cast::<T>()) })
    }

    fn station_of(info: &WTSINFOW) -> String {
        let end = info.WinStationName.iter().position(|&c| c == 0).unwrap_or(info.WinStationName.len());
        String::from_utf16_lossy(&info.WinStationName[..end])
    }

    /// The logged-on sessions of this host, or why the session API cannot give them.
    pub fn sessions() -> Result<Vec<Session>, String> {
        let (mut list, mut count) = (std::ptr::null_mut::<WTS_SESSION_INFOW>(), 0u32);
        // SAFETY: `list` and `count` are valid out pointers; reserved 0 and version 1 as documented.
        let ok = unsafe { WTSEnumerateSessionsW(WTS_CURRENT_SERVER_HANDLE, 0, 1, &mut list, &mut count) };
        if ok == 0 {
            return Err(format!("WTSEnumerateSessionsW: {}", io::Error::last_os_error()));
        }
        let list = WtsMemory(list);
        let entries: &[WTS_SESSION_INFOW] = if list.0.is_null() {
            &[]
        } else {
            // SAFETY: on success the API returns an array of `count` entries, alive until `list` is dropped.
            unsafe { std::slice::from_raw_parts(list.0, count as usize) }
        };
        let raw: Vec<RawSession> = entries
            .iter()
            .map(|e| {
                let info = query_struct::<WTSINFOW>(e.SessionId, WTSSessionInfo);
                let client = query_struct::<WTS_CLIENT_ADDRESS>(e.SessionId, WTSClientAddress);
                RawSession {
                    user: query_string(e.SessionId, WTSUserName),
                    domain: query_string(e.SessionId, WTSDomainName),
                    station: info.as_ref().map(station_of).unwrap_or_default(),
                    logon_filetime: info.map_or(0, |i| i.LogonTime),
                    client: client.and_then(|c| client_address(c.AddressFamily, &c.Address)),
                }
            })
            .collect();
        rows(&raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filetime_converts_to_unix_seconds() {
        assert_eq!(unix_time(FILETIME_UNIX_EPOCH + 10_000_000), Some(1));
        // 2026-11-26T09:19:42Z
        let t = vigil_sys::clock::days_from_civil(2026, 11, 26) * 86_400 + 9 * 3600 + 19 * 60 + 42;
        assert_eq!(unix_time(FILETIME_UNIX_EPOCH + t * 10_000_000 + 1_234_567), Some(t));
        assert_eq!(unix_time(0), None);
        assert_eq!(unix_time(FILETIME_UNIX_EPOCH), None);
    }

    #[test]
    fn client_addresses_are_read_per_family() {
        let mut v4 = [0u8; 20];
        v4[2..6].copy_from_slice(&[203, 0, 113, 7]);
        assert_eq!(client_address(AF_INET, &v4).as_deref(), Some("203.0.113.7"));
        let mut v6 = [0u8; 20];
        v6[..16].copy_from_slice(&"2001:db8::5".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!(client_address(AF_INET6, &v6).as_deref(), Some("2001:db8::5"));
        assert_eq!(client_address(0, &v4), None, "console session");
        assert_eq!(client_address(AF_INET, &[0; 20]), None);
        assert_eq!(client_address(AF_INET6, &[0; 20]), None);
    }

    #[test]
    fn sessions_with_a_user_become_rows_and_the_others_are_dropped() {
        let logon = FILETIME_UNIX_EPOCH + 1_750_000_000 * 10_000_000;
        let raw = [
            RawSession { station: "Services".into(), ..RawSession::default() },
            RawSession {
                user: "alice".into(),
                domain: "WIN-7K2".into(),
                station: "Console".into(),
                logon_filetime: logon,
                client: None,
            },
            RawSession {
                user: "bob\u{1b}[31m".into(),
                domain: String::new(),
                station: "RDP-Tcp#3".into(),
                logon_filetime: 0,
                client: Some("198.51.100.4".into()),
            },
            RawSession { station: "RDP-Tcp".into(), ..RawSession::default() },
        ];
        let got = rows(&raw).unwrap();
        assert_eq!(
            got,
            [
                Session {
                    user: "WIN-7K2\\alice".into(),
                    terminal: "Console".into(),
                    host: None,
                    login_time: 1_750_000_000
                },
                Session {
                    user: "bob [31m".into(),
                    terminal: "RDP-Tcp#3".into(),
                    host: Some("198.51.100.4".into()),
                    login_time: 0
                },
            ]
        );
        // Only the services' session: nobody is logged on, and that is a valid answer.
        assert_eq!(rows(&raw[..1]).unwrap(), []);
    }

    #[test]
    fn no_session_at_all_is_no_session_api() {
        let e = rows(&[]).unwrap_err();
        assert!(e.contains("not even session 0"), "{e}");
    }
}
