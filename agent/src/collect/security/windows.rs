//! The Security event log (Windows): logons, failed logons and explicit-credential use from the Security event log.
//!
//! The pure half (compiled everywhere, so its tests run on Linux): the XPath query, parsing an event rendered as XML
//! ([`parse_event_xml`]) and turning it into a [`SecurityEvent`] ([`to_security_event`]), which also drops the noise
//! that would otherwise fill every report (service and machine-account logons); the record cursor ([`Cursor`]) and
//! the bounded scan of a sample ([`scan`]).
//!
//! The Windows half (`EventLogReader`, `cfg(windows)`) reads channel `Security` with the Event Log API
//! (`EvtQuery`, `EvtNext`, `EvtRender`) and remembers the last `EventRecordID` seen between samples:
//! - **Start-up**: the reader starts after the newest record, so a restart does not report old history again.
//! - **Log cleared** (the newest record ID is below the remembered one): reading restarts from the first record.
//! - **Bounds**: at most [`MAX_EVENTS`] events and [`MAX_SCANNED`] records per sample; the rest comes next
//!   time.
//! - **No access** (the agent is neither an administrator nor in "Event Log Readers"): `source` is `None` and the
//!   reason is logged once.
//!
//! Event IDs read ([`EVENT_IDS`]): 4624 (logon, [`SecurityEventKind::LoginSucceeded`]), 4625 (failed logon,
//! [`SecurityEventKind::LoginFailed`]), 4648 (logon with explicit credentials, e.g. `runas`: Windows' `sudo`,
//! [`SecurityEventKind::Sudo`]), 4672 (special privileges assigned to a logon: an administrator's logon,
//! [`SecurityEventKind::Sudo`]; the services' own, which come with every service start, are dropped), 4720 (a user
//! account was created) and 4732 (a member was added to a security-enabled local group, such as Administrators),
//! both [`SecurityEventKind::Other`].

use serde::Deserialize;
use vigil_schema::report::{SecurityEvent, SecurityEventKind};

use vigil_sys::clock::days_from_civil;

use super::{MAX_EVENTS, clean_text};
#[cfg(windows)]
pub use reader::EventLogReader;

/// What `source` says in the reports.
pub const SOURCE: &str = "eventlog:Security";
/// The event IDs queried.
pub const EVENT_IDS: [u32; 6] = [4624, 4625, 4648, 4672, 4720, 4732];
/// Most records looked at per sample, reported or filtered out.
pub const MAX_SCANNED: usize = 20_000;

/// The XPath query for the events of interest recorded after record `after`.
pub fn query(after: u64) -> String {
    let ids: Vec<String> = EVENT_IDS.iter().map(|id| format!("EventID={id}")).collect();
    format!("*[System[({}) and EventRecordID>{after}]]", ids.join(" or "))
}

/// Why a rendered event could not be read.
#[derive(Debug, thiserror::Error)]
#[error("unreadable event XML: {0}")]
pub struct ParseError(quick_xml::DeError);

impl From<quick_xml::DeError> for ParseError {
    fn from(e: quick_xml::DeError) -> Self {
        Self(e)
    }
}

/// The parts of an event used here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedEvent {
    pub event_id: u32,
    pub record_id: u64,
    /// `TimeCreated/@SystemTime`, seconds since the Unix epoch; `None` if absent or unreadable.
    pub time: Option<i64>,
    /// `EventData/Data` as (`Name`, text) pairs, in document order.
    pub data: Vec<(String, String)>,
}

impl RenderedEvent {
    /// The text of the `Data` element named `name`, trimmed; `None` when absent, empty or `-` (Windows' "none").
    pub fn field(&self, name: &str) -> Option<&str> {
        self.data.iter().find(|(n, _)| n == name).map(|(_, v)| v.trim()).filter(|v| !v.is_empty() && *v != "-")
    }
}

#[derive(Debug, Deserialize)]
struct XmlEvent {
    #[serde(rename = "System")]
    system: XmlSystem,
    #[serde(rename = "EventData", default)]
    event_data: Option<XmlEventData>,
}

#[derive(Debug, Deserialize)]
struct XmlSystem {
    #[serde(rename = "EventID")]
    event_id: XmlText<u32>,
    #[serde(rename = "EventRecordID")]
    record_id: u64,
    #[serde(rename = "TimeCreated", default)]
    time_created: Option<XmlTimeCreated>,
}

/// An element's text, whatever attributes it carries (`<EventID Qualifiers='0'>4624</EventID>`).
#[derive(Debug, Deserialize)]
struct XmlText<T> {
    #[serde(rename = "$text")]
    text: T,
}

#[derive(Debug, Deserialize)]
struct XmlTimeCreated {
    #[serde(rename = "@SystemTime", default)]
    system_time: Option<String>,
}

#[derive(Debug, Deserialize)]
struct XmlEventData {
    #[serde(rename = "Data", default)]
    data: Vec<XmlData>,
}

#[derive(Debug, Deserialize)]
struct XmlData {
    #[serde(rename = "@Name", default)]
    name: String,
    #[serde(rename = "$text", default)]
    value: String,
}

/// Parses an event rendered with `EvtRenderEventXml`.
pub fn parse_event_xml(xml: &str) -> Result<RenderedEvent, ParseError> {
    let ev: XmlEvent = quick_xml::de::from_str(xml)?;
    Ok(RenderedEvent {
        event_id: ev.system.event_id.text,
        record_id: ev.system.record_id,
        time: ev.system.time_created.and_then(|t| t.system_time).and_then(|t| parse_system_time(&t)),
        data: ev.event_data.map(|d| d.data.into_iter().map(|d| (d.name, d.value)).collect()).unwrap_or_default(),
    })
}

/// Seconds since the Unix epoch of an event's `SystemTime` (`2026-11-26T10:00:00.1234567Z`; the fraction is
/// dropped). `None` unless it is a valid UTC timestamp in this form.
pub fn parse_system_time(s: &str) -> Option<i64> {
    let s = s.trim().strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-');
    let (year, month, day) = (d.next()?.parse::<i64>().ok()?, d.next()?.parse::<u32>().ok()?, d.next()?);
    let day = day.parse::<u32>().ok()?;
    let whole = time.split_once('.').map_or(time, |(w, _)| w);
    let mut t = whole.splitn(3, ':').map(|x| x.parse::<i64>().ok());
    let (h, m, sec) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 || h < 0 || m < 0 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec.max(0))
}

/// Well-known security principals that log on all the time: SYSTEM, LOCAL SERVICE, NETWORK SERVICE, and the
/// per-session Window Manager (`DWM-n`) and Font Driver Host (`UMFD-n`) accounts.
fn is_service_sid(sid: Option<&str>) -> bool {
    let Some(sid) = sid else { return false };
    matches!(sid, "S-1-5-18" | "S-1-5-19" | "S-1-5-20") || sid.starts_with("S-1-5-90-") || sid.starts_with("S-1-5-96-")
}

/// The name of a logon type (the `LogonType` field).
pub fn logon_type_name(t: u32) -> &'static str {
    match t {
        0 => "System",
        2 => "Interactive",
        3 => "Network",
        4 => "Batch",
        5 => "Service",
        7 => "Unlock",
        8 => "NetworkCleartext",
        9 => "NewCredentials",
        10 => "RemoteInteractive",
        11 => "CachedInteractive",
        12 => "CachedRemoteInteractive",
        13 => "CachedUnlock",
        _ => "unknown",
    }
}

/// Why a logon failed, from its NTSTATUS (`SubStatus`, else `Status`), for the common cases.
pub fn failure_reason(status: &str) -> Option<&'static str> {
    let code = u32::from_str_radix(status.trim().trim_start_matches("0x").trim_start_matches("0X"), 16).ok()?;
    Some(match code {
        0xC000_0064 => "unknown user name",
        0xC000_006A => "wrong password",
        0xC000_006D => "bad user name or password",
        0xC000_006E => "account restriction",
        0xC000_006F => "outside the allowed logon hours",
        0xC000_0070 => "workstation not allowed",
        0xC000_0071 => "password expired",
        0xC000_0072 => "account disabled",
        0xC000_0133 => "clock skew too large",
        0xC000_015B => "logon type not granted",
        0xC000_0193 => "account expired",
        0xC000_0224 => "password must change",
        0xC000_0234 => "account locked out",
        _ => return None,
    })
}

/// `DOMAIN\user`, or `user` when the domain is absent.
fn account(ev: &RenderedEvent, domain: &str, user: &str) -> Option<String> {
    let user = ev.field(user)?;
    Some(match ev.field(domain) {
        Some(d) => format!("{d}\\{user}"),
        None => user.to_owned(),
    })
}

/// `DOMAIN\user` of a person: `None` for a service principal (by `sid`) or a machine account (`NAME$`).
fn person(ev: &RenderedEvent, sid: &str, domain: &str, user: &str) -> Option<String> {
    let name = account(ev, domain, user)?;
    (!is_service_sid(ev.field(sid)) && !name.ends_with('$')).then_some(name)
}

/// The event as a report entry, or `None` for an event ID not read here and for noise: logons of type System or
/// Service, and logons or credential use by service principals and machine accounts (`NAME$`). Failed logons are
/// never filtered. `now` stands in for a missing time.
pub fn to_security_event(ev: &RenderedEvent, now: i64) -> Option<SecurityEvent> {
    let logon_type = ev.field("LogonType").and_then(|t| t.parse::<u32>().ok());
    let logon = logon_type.map(|t| format!(", logon type {t} ({})", logon_type_name(t))).unwrap_or_default();
    let ip = ev.field("IpAddress").map(clean_text);
    let from = ip.as_ref().map(|ip| format!(" from {ip}")).unwrap_or_default();
    let (kind, user, message) = match ev.event_id {
        4624 => {
            let user = account(ev, "TargetDomainName", "TargetUserName")?;
            if matches!(logon_type, Some(0 | 5)) || is_service_sid(ev.field("TargetUserSid")) || user.ends_with('$') {
                return None;
            }
            let elevated = if ev.field("ElevatedToken") == Some("%%1842") { ", elevated" } else { "" };
            (SecurityEventKind::LoginSucceeded, user.clone(), format!("4624 logon of {user}{from}{logon}{elevated}"))
        }
        4625 => {
            let user = account(ev, "TargetDomainName", "TargetUserName").unwrap_or_else(|| "-".to_owned());
            let status = ev.field("SubStatus").filter(|s| failure_reason(s).is_some()).or(ev.field("Status"));
            let reason = match status {
                Some(s) => format!(": {} ({s})", failure_reason(s).unwrap_or("failed")),
                None => String::new(),
            };
            (SecurityEventKind::LoginFailed, user.clone(), format!("4625 failed logon of {user}{from}{logon}{reason}"))
        }
        4648 => {
            let subject = account(ev, "SubjectDomainName", "SubjectUserName")?;
            if is_service_sid(ev.field("SubjectUserSid")) || subject.ends_with('$') {
                return None;
            }
            let target = account(ev, "TargetDomainName", "TargetUserName").unwrap_or_else(|| "-".to_owned());
            let server = ev.field("TargetServerName").map(|s| format!(" on {s}")).unwrap_or_default();
            let process = ev.field("ProcessName").map(|p| format!(" by {p}")).unwrap_or_default();
            let message = format!("4648 {subject} used the credentials of {target}{server}{process}");
            (SecurityEventKind::Sudo, subject, message)
        }
        4672 => {
            let subject = person(ev, "SubjectUserSid", "SubjectDomainName", "SubjectUserName")?;
            let privileges = ev.field("PrivilegeList").map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "));
            let privileges = privileges.map(|p| format!(": {p}")).unwrap_or_default();
            (
                SecurityEventKind::Sudo,
                subject.clone(),
                format!("4672 special privileges assigned to {subject}{privileges}"),
            )
        }
        4720 => {
            let subject = account(ev, "SubjectDomainName", "SubjectUserName").unwrap_or_else(|| "-".to_owned());
            let target = account(ev, "TargetDomainName", "TargetUserName").unwrap_or_else(|| "-".to_owned());
            (SecurityEventKind::Other, subject.clone(), format!("4720 {subject} created the user account {target}"))
        }
        4732 => {
            let subject = account(ev, "SubjectDomainName", "SubjectUserName").unwrap_or_else(|| "-".to_owned());
            let member = ev.field("MemberName").or(ev.field("MemberSid")).unwrap_or("-");
            let group = account(ev, "TargetDomainName", "TargetUserName").unwrap_or_else(|| "-".to_owned());
            let message = format!("4732 {subject} added {member} to the group {group}");
            (SecurityEventKind::Other, subject, message)
        }
        _ => return None,
    };
    Some(SecurityEvent {
        time: ev.time.unwrap_or(now),
        kind,
        user: Some(clean_text(&user)),
        source: ip,
        message: clean_text(&message),
    })
}

/// Where the next read starts: the last record looked at, kept between samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// `None` until the log could be read once.
    last: Option<u64>,
}

impl Cursor {
    /// Starts a sample, given the newest record ID now in the log: the record after which to read, or `None` when
    /// there is nothing to read. The first time, the cursor moves to `newest` (history is not reported); when the
    /// log was cleared (`newest` below the cursor) reading restarts from its first record.
    pub fn begin(&mut self, newest: u64) -> Option<u64> {
        let last = match self.last {
            None => newest,
            Some(last) if newest < last => {
                tracing::info!("the Security event log was cleared; reading it from its start");
                0
            }
            Some(last) => last,
        };
        self.last = Some(last);
        (last < newest).then_some(last)
    }

    /// Records that `record_id` was looked at.
    pub fn advance(&mut self, record_id: u64) {
        self.last = Some(self.last.map_or(record_id, |l| l.max(record_id)));
    }

    /// The last record looked at.
    pub fn last(&self) -> Option<u64> {
        self.last
    }
}

/// Takes `records` (oldest first) until the log ends or a bound is hit ([`MAX_SCANNED`] records,
/// [`MAX_EVENTS`] events): every record moves the cursor, the ones of interest
/// are pushed onto `events`. A record not taken is read again next time; an error stops the scan where it occurred.
pub fn scan<E>(
    cursor: &mut Cursor,
    records: impl IntoIterator<Item = Result<RenderedEvent, E>>,
    now: i64,
    events: &mut Vec<SecurityEvent>,
) -> Result<(), E> {
    let mut scanned = 0;
    if events.len() >= MAX_EVENTS {
        return Ok(());
    }
    for record in records {
        let ev = record?;
        cursor.advance(ev.record_id);
        scanned += 1;
        if let Some(e) = to_security_event(&ev, now) {
            events.push(e);
        }
        if scanned >= MAX_SCANNED || events.len() >= MAX_EVENTS {
            break;
        }
    }
    Ok(())
}

/// The Event Log API side (Windows only).
#[cfg(windows)]
#[allow(unsafe_code)] // FFI to wevtapi.dll; every call's contract is stated at the call
mod reader {
    use std::io;

    use vigil_schema::report::{SecurityEvent, SecurityEvents};
    use windows_sys::Win32::Foundation::{ERROR_INSUFFICIENT_BUFFER, ERROR_NO_MORE_ITEMS, ERROR_TIMEOUT};
    use windows_sys::Win32::System::EventLog::{
        EVT_HANDLE, EvtClose, EvtNext, EvtQuery, EvtQueryChannelPath, EvtQueryForwardDirection,
        EvtQueryReverseDirection, EvtRender, EvtRenderEventXml,
    };

    use super::{Cursor, ParseError, RenderedEvent, SOURCE, parse_event_xml, query, scan};
    use vigil_sys::clock::now_unix;

    /// The event log channel read.
    const CHANNEL: &str = "Security";
    /// Events fetched per `EvtNext` call.
    const BATCH: usize = 64;
    /// Longest one `EvtNext` call may wait, in milliseconds.
    const NEXT_TIMEOUT_MS: u32 = 5_000;

    /// Why reading the event log failed.
    #[derive(Debug, thiserror::Error)]
    pub enum EventLogError {
        #[error("EvtQuery on {CHANNEL}: {0}")]
        Query(io::Error),
        #[error("EvtNext: {0}")]
        Next(io::Error),
        #[error("EvtRender: {0}")]
        Render(io::Error),
        #[error(transparent)]
        Parse(#[from] ParseError),
    }

    /// An open Event Log API handle, closed on drop.
    #[derive(Debug)]
    struct Handle(EVT_HANDLE);

    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: `self.0` is a handle returned by EvtQuery or EvtNext, owned by this value and closed once.
            unsafe { EvtClose(self.0) };
        }
    }

    fn wide(s: &str) -> Vec<u16> {
        s.encode_utf16().chain(std::iter::once(0)).collect()
    }

    /// Runs `xpath` on the channel in the given direction.
    fn evt_query(xpath: &str, direction: u32) -> Result<Handle, EventLogError> {
        let (channel, xpath) = (wide(CHANNEL), wide(xpath));
        // SAFETY: both strings are NUL-terminated UTF-16 buffers that outlive the call; session 0 is the local
        // computer.
        let h = unsafe { EvtQuery(0, channel.as_ptr(), xpath.as_ptr(), EvtQueryChannelPath | direction) };
        if h != 0 {
            return Ok(Handle(h));
        }
        let e = io::Error::last_os_error();
        Err(EventLogError::Query(match e.raw_os_error() {
            // No handle and no error: the API is a stub (Wine's is).
            Some(0) => io::Error::other("no handle and no error code (the Event Log API is a stub here: Wine?)"),
            _ => e,
        }))
    }

    /// The next at most `max` events of a result set; empty at its end.
    fn evt_next(results: &Handle, max: usize) -> Result<Vec<Handle>, EventLogError> {
        let mut raw: Vec<EVT_HANDLE> = vec![0; max];
        let mut returned = 0u32;
        // SAFETY: `raw` has room for `max` handles, `returned` is a valid out pointer, `results` is an open query.
        let ok = unsafe { EvtNext(results.0, raw.len() as u32, raw.as_mut_ptr(), NEXT_TIMEOUT_MS, 0, &mut returned) };
        if ok == 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error().map(|c| c as u32) {
                Some(ERROR_NO_MORE_ITEMS | ERROR_TIMEOUT) => Ok(Vec::new()),
                _ => Err(EventLogError::Next(e)),
            };
        }
        raw.truncate((returned as usize).min(max));
        Ok(raw.into_iter().map(Handle).collect())
    }

    /// Renders one event as XML, reusing `buf`.
    fn render_xml(event: &Handle, buf: &mut Vec<u16>) -> Result<String, EventLogError> {
        loop {
            let (mut used, mut props) = (0u32, 0u32);
            let bytes = (buf.len() * 2) as u32;
            // SAFETY: `buf` is writable for `bytes` bytes; `used` and `props` are valid out pointers; `event` is an
            // open event handle; context 0 is valid with EvtRenderEventXml.
            let ok = unsafe {
                EvtRender(0, event.0, EvtRenderEventXml, bytes, buf.as_mut_ptr().cast(), &mut used, &mut props)
            };
            if ok != 0 {
                let chars = (used as usize / 2).min(buf.len());
                let text = &buf[..chars];
                let text = text.strip_suffix(&[0]).unwrap_or(text);
                return Ok(String::from_utf16_lossy(text));
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error().map(|c| c as u32) == Some(ERROR_INSUFFICIENT_BUFFER) && used as usize > bytes as usize {
                buf.resize(used as usize / 2 + 1, 0);
                continue;
            }
            return Err(EventLogError::Render(e));
        }
    }

    /// The record ID of the newest event in the channel, 0 when it is empty.
    fn newest_record_id(buf: &mut Vec<u16>) -> Result<u64, EventLogError> {
        let results = evt_query("*", EvtQueryReverseDirection)?;
        match evt_next(&results, 1)?.first() {
            Some(event) => Ok(parse_event_xml(&render_xml(event, buf)?)?.record_id),
            None => Ok(0),
        }
    }

    /// Follows the Security event log across samples.
    #[derive(Debug)]
    pub struct EventLogReader {
        cursor: Cursor,
        buf: Vec<u16>,
        warned: bool,
    }

    impl Default for EventLogReader {
        fn default() -> Self {
            Self::new()
        }
    }

    impl EventLogReader {
        /// A reader whose first sample holds the events recorded from now on.
        pub fn new() -> Self {
            let mut r = EventLogReader { cursor: Cursor::default(), buf: vec![0; 8192], warned: false };
            match newest_record_id(&mut r.buf) {
                Ok(newest) => {
                    r.cursor.begin(newest);
                }
                Err(e) => r.warn(&e),
            }
            r
        }

        fn warn(&mut self, e: &EventLogError) {
            if !self.warned {
                tracing::warn!(
                    error = %e,
                    "cannot read the Security event log (reading it needs an administrator or a member of \"Event Log Readers\")"
                );
                self.warned = true;
            }
        }

        /// Reports the events recorded since the previous call. A read that fails before any event is `Err`:
        /// why the log is not available (no access, or no Event Log API as under Wine); events read before a
        /// failure are reported (the rest comes next time).
        pub fn collect(&mut self) -> Result<SecurityEvents, String> {
            let mut events = Vec::new();
            match self.read(now_unix(), &mut events) {
                Ok(()) => {
                    self.warned = false;
                    Ok(SecurityEvents { source: Some(SOURCE.to_owned()), events })
                }
                Err(e) => {
                    self.warn(&e);
                    if events.is_empty() {
                        return Err(format!("cannot read the Security event log: {e}"));
                    }
                    Ok(SecurityEvents { source: Some(SOURCE.to_owned()), events })
                }
            }
        }

        fn read(&mut self, now: i64, events: &mut Vec<SecurityEvent>) -> Result<(), EventLogError> {
            let newest = newest_record_id(&mut self.buf)?;
            let Some(after) = self.cursor.begin(newest) else { return Ok(()) };
            let records = Records { results: evt_query(&query(after), EvtQueryForwardDirection)?, batch: Vec::new() };
            let buf = &mut self.buf;
            let records = records.map(|event| -> Result<Option<RenderedEvent>, EventLogError> {
                let xml = render_xml(&event?, buf)?;
                match parse_event_xml(&xml) {
                    Ok(ev) => Ok(Some(ev)),
                    Err(e) => {
                        // Skipped: the records after it move the cursor past it.
                        tracing::warn!(error = %e, "skipping an unreadable event");
                        Ok(None)
                    }
                }
            });
            let scanned = scan(&mut self.cursor, records.filter_map(Result::transpose), now, events);
            tracing::debug!(last_record = ?self.cursor.last(), events = events.len(), "read the Security event log");
            scanned
        }
    }

    /// A query's events, fetched [`BATCH`] at a time as they are consumed.
    #[derive(Debug)]
    struct Records {
        results: Handle,
        /// Fetched and not yet consumed, last first.
        batch: Vec<Handle>,
    }

    impl Iterator for Records {
        type Item = Result<Handle, EventLogError>;

        fn next(&mut self) -> Option<Self::Item> {
            if self.batch.is_empty() {
                match evt_next(&self.results, BATCH) {
                    Ok(mut batch) => {
                        batch.reverse();
                        self.batch = batch;
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            self.batch.pop().map(Ok)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    /// An event as `EvtRenderEventXml` renders it (single quotes, namespace, one line).
    fn render(event_id: u32, record_id: u64, data: &[(&str, &str)]) -> String {
        let data: String = data.iter().map(|(n, v)| format!("<Data Name='{n}'>{v}</Data>")).collect();
        format!(
            "<Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System>\
             <Provider Name='Microsoft-Windows-Security-Auditing' Guid='{{54849625-5478-4994-a5ba-3e3b0328c30d}}'/>\
             <EventID>{event_id}</EventID><Version>2</Version><Level>0</Level><Task>12544</Task><Opcode>0</Opcode>\
             <Keywords>0x8020000000000000</Keywords><TimeCreated SystemTime='2026-11-26T09:19:42.1234567Z'/>\
             <EventRecordID>{record_id}</EventRecordID><Correlation ActivityID='{{0d5a1e2c-0000-0000-0000-000000000000}}'/>\
             <Execution ProcessID='788' ThreadID='7412'/><Channel>Security</Channel><Computer>WIN-7K2</Computer>\
             <Security/></System><EventData>{data}</EventData></Event>"
        )
    }

    fn event(event_id: u32, data: &[(&str, &str)]) -> Option<SecurityEvent> {
        to_security_event(&parse_event_xml(&render(event_id, 1, data)).unwrap(), NOW)
    }

    const RDP_LOGON: &[(&str, &str)] = &[
        ("SubjectUserSid", "S-1-5-18"),
        ("SubjectUserName", "WIN-7K2$"),
        ("SubjectDomainName", "WORKGROUP"),
        ("TargetUserSid", "S-1-5-21-1004336348-1177238915-682003330-1001"),
        ("TargetUserName", "alice"),
        ("TargetDomainName", "WIN-7K2"),
        ("LogonType", "10"),
        ("LogonProcessName", "User32 "),
        ("WorkstationName", "WIN-7K2"),
        ("IpAddress", "203.0.113.7"),
        ("IpPort", "0"),
        ("ElevatedToken", "%%1842"),
    ];

    #[test]
    fn query_names_the_event_ids_and_the_last_record() {
        assert_eq!(
            query(41),
            "*[System[(EventID=4624 or EventID=4625 or EventID=4648 or EventID=4672 or EventID=4720 or EventID=4732) \
             and EventRecordID>41]]"
        );
    }

    #[test]
    fn rendered_xml_parses_into_ids_time_and_data() {
        let ev = parse_event_xml(&render(4624, 987_654, RDP_LOGON)).unwrap();
        assert_eq!((ev.event_id, ev.record_id), (4624, 987_654));
        assert_eq!(ev.time, Some(days_from_civil(2026, 11, 26) * 86_400 + 9 * 3600 + 19 * 60 + 42));
        assert_eq!(ev.data.len(), RDP_LOGON.len());
        assert_eq!(ev.field("TargetUserName"), Some("alice"));
        assert_eq!(ev.field("LogonProcessName"), Some("User32"));
        assert_eq!(ev.field("Missing"), None);
    }

    #[test]
    fn qualified_event_ids_escapes_and_empty_data_parse() {
        let xml = "<Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System>\
                   <EventID Qualifiers='16384'>4625</EventID><EventRecordID>7</EventRecordID></System>\
                   <EventData><Data Name='TargetUserName'>a&amp;b&lt;c&gt;&apos;</Data><Data Name='IpAddress'/>\
                   <Data Name='Status'>-</Data></EventData></Event>";
        let ev = parse_event_xml(xml).unwrap();
        assert_eq!((ev.event_id, ev.record_id, ev.time), (4625, 7, None));
        assert_eq!(ev.field("TargetUserName"), Some("a&b<c>'"));
        assert_eq!((ev.field("IpAddress"), ev.field("Status")), (None, None));
        // Without EventData (another provider's event) it still parses, with no data.
        let bare = "<Event><System><EventID>1102</EventID><EventRecordID>8</EventRecordID></System>\
                    <UserData><LogFileCleared/></UserData></Event>";
        assert_eq!(parse_event_xml(bare).unwrap().data, vec![]);
    }

    #[test]
    fn broken_xml_is_an_error() {
        assert!(parse_event_xml("<Event><System><EventID>x</EventID></System></Event>").is_err());
        assert!(parse_event_xml("<Event><System><EventID>4624</EventID></System></Event>").is_err(), "no record ID");
        assert!(parse_event_xml("not xml").is_err());
        assert!(parse_event_xml(&render(4624, 1, RDP_LOGON)[..200]).is_err());
    }

    #[test]
    fn system_time_parses_utc_with_or_without_fraction() {
        let base = days_from_civil(2026, 11, 26) * 86_400;
        assert_eq!(parse_system_time("2026-11-26T00:00:00Z"), Some(base));
        assert_eq!(parse_system_time("2026-11-26T23:59:59.999999900Z"), Some(base + 86_399));
        assert_eq!(parse_system_time("1970-01-01T00:00:00.0Z"), Some(0));
        for bad in ["2026-11-26T10:00:00", "2026-13-01T00:00:00Z", "2026-11-26 10:00:00Z", "2026-11-26T24:00:00Z", ""] {
            assert_eq!(parse_system_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn remote_logon_is_a_login_with_account_address_and_type() {
        let e = event(4624, RDP_LOGON).unwrap();
        assert_eq!(e.kind, SecurityEventKind::LoginSucceeded);
        assert_eq!(e.user.as_deref(), Some("WIN-7K2\\alice"));
        assert_eq!(e.source.as_deref(), Some("203.0.113.7"));
        assert_eq!(
            e.message,
            "4624 logon of WIN-7K2\\alice from 203.0.113.7, logon type 10 (RemoteInteractive), elevated"
        );
        assert_eq!(e.time, days_from_civil(2026, 11, 26) * 86_400 + 9 * 3600 + 19 * 60 + 42);
    }

    #[test]
    fn service_system_and_machine_logons_are_noise() {
        let with = |changes: &[(&str, &str)]| {
            let mut d: Vec<(&str, &str)> = RDP_LOGON.to_vec();
            for (k, v) in changes {
                d.retain(|(n, _)| n != k);
                d.push((k, v));
            }
            event(4624, &d)
        };
        assert!(with(&[]).is_some());
        assert!(with(&[("LogonType", "5")]).is_none(), "service logon");
        assert!(with(&[("LogonType", "0")]).is_none(), "system logon");
        assert!(with(&[("TargetUserSid", "S-1-5-18"), ("TargetUserName", "SYSTEM")]).is_none());
        assert!(with(&[("TargetUserSid", "S-1-5-90-0-1"), ("TargetUserName", "DWM-1")]).is_none());
        assert!(with(&[("TargetUserSid", "S-1-5-96-0-0"), ("TargetUserName", "UMFD-0")]).is_none());
        assert!(with(&[("TargetUserName", "FILESRV$")]).is_none(), "machine account");
        // A network logon of a person stays, and a local one has no source address.
        let net = with(&[("LogonType", "3"), ("IpAddress", "-")]).unwrap();
        assert_eq!((net.source, net.message.contains("logon type 3 (Network)")), (None, true));
    }

    #[test]
    fn failed_logon_says_who_from_where_and_why() {
        let e = event(
            4625,
            &[
                ("SubjectUserSid", "S-1-0-0"),
                ("TargetUserSid", "S-1-0-0"),
                ("TargetUserName", "administrator"),
                ("TargetDomainName", ""),
                ("Status", "0xc000006d"),
                ("FailureReason", "%%2313"),
                ("SubStatus", "0xc000006a"),
                ("LogonType", "3"),
                ("IpAddress", "198.51.100.23"),
                ("IpPort", "51234"),
            ],
        )
        .unwrap();
        assert_eq!(e.kind, SecurityEventKind::LoginFailed);
        assert_eq!((e.user.as_deref(), e.source.as_deref()), (Some("administrator"), Some("198.51.100.23")));
        assert_eq!(
            e.message,
            "4625 failed logon of administrator from 198.51.100.23, logon type 3 (Network): wrong password (0xc000006a)"
        );
        // An unknown sub-status falls back to the status; even a SYSTEM-looking failure is reported.
        let e = event(4625, &[("TargetUserName", "x$"), ("Status", "0xC0000234"), ("SubStatus", "0x0")]).unwrap();
        assert_eq!(e.message, "4625 failed logon of x$: account locked out (0xC0000234)");
        let e = event(4625, &[]).unwrap();
        assert_eq!((e.user.as_deref(), e.message.as_str()), (Some("-"), "4625 failed logon of -"));
    }

    #[test]
    fn explicit_credentials_are_sudo_unless_a_service_uses_them() {
        let runas = [
            ("SubjectUserSid", "S-1-5-21-1-2-3-1001"),
            ("SubjectUserName", "alice"),
            ("SubjectDomainName", "CORP"),
            ("TargetUserName", "Administrator"),
            ("TargetDomainName", "CORP"),
            ("TargetServerName", "localhost"),
            ("ProcessName", "C:\\Windows\\System32\\runas.exe"),
            ("IpAddress", "::1"),
        ];
        let e = event(4648, &runas).unwrap();
        assert_eq!(e.kind, SecurityEventKind::Sudo);
        assert_eq!((e.user.as_deref(), e.source.as_deref()), (Some("CORP\\alice"), Some("::1")));
        assert_eq!(
            e.message,
            "4648 CORP\\alice used the credentials of CORP\\Administrator on localhost by C:\\Windows\\System32\\runas.exe"
        );
        let mut system = runas.to_vec();
        system[0] = ("SubjectUserSid", "S-1-5-18");
        assert!(event(4648, &system).is_none());
    }

    #[test]
    fn special_privileges_of_a_person_are_sudo_and_the_services_are_noise() {
        let admin = [
            ("SubjectUserSid", "S-1-5-21-1-2-3-500"),
            ("SubjectUserName", "Administrator"),
            ("SubjectDomainName", "WIN-7K2"),
            ("SubjectLogonId", "0x3e7a1"),
            ("PrivilegeList", "SeSecurityPrivilege\n\t\t\tSeBackupPrivilege\n\t\t\tSeDebugPrivilege"),
        ];
        let e = event(4672, &admin).unwrap();
        assert_eq!((e.kind, e.user.as_deref()), (SecurityEventKind::Sudo, Some("WIN-7K2\\Administrator")));
        assert_eq!(
            e.message,
            "4672 special privileges assigned to WIN-7K2\\Administrator: SeSecurityPrivilege SeBackupPrivilege \
             SeDebugPrivilege"
        );
        let mut system = admin.to_vec();
        system[0] = ("SubjectUserSid", "S-1-5-18");
        assert!(event(4672, &system).is_none(), "every service start");
        let mut machine = admin.to_vec();
        machine[1] = ("SubjectUserName", "WIN-7K2$");
        assert!(event(4672, &machine).is_none());
    }

    #[test]
    fn account_creation_and_group_membership_are_reported_with_who_did_it() {
        let created = [
            ("TargetUserName", "mallory"),
            ("TargetDomainName", "WIN-7K2"),
            ("TargetSid", "S-1-5-21-1-2-3-1005"),
            ("SubjectUserSid", "S-1-5-21-1-2-3-500"),
            ("SubjectUserName", "Administrator"),
            ("SubjectDomainName", "WIN-7K2"),
        ];
        let e = event(4720, &created).unwrap();
        assert_eq!((e.kind, e.user.as_deref()), (SecurityEventKind::Other, Some("WIN-7K2\\Administrator")));
        assert_eq!(e.message, "4720 WIN-7K2\\Administrator created the user account WIN-7K2\\mallory");
        let added = [
            ("MemberName", "-"),
            ("MemberSid", "S-1-5-21-1-2-3-1005"),
            ("TargetUserName", "Administrators"),
            ("TargetDomainName", "Builtin"),
            ("TargetSid", "S-1-5-32-544"),
            ("SubjectUserSid", "S-1-5-21-1-2-3-500"),
            ("SubjectUserName", "Administrator"),
            ("SubjectDomainName", "WIN-7K2"),
        ];
        let e = event(4732, &added).unwrap();
        assert_eq!(e.kind, SecurityEventKind::Other);
        assert_eq!(
            e.message,
            "4732 WIN-7K2\\Administrator added S-1-5-21-1-2-3-1005 to the group Builtin\\Administrators"
        );
        let mut by_name = added.to_vec();
        by_name[0] = ("MemberName", "CN=Mallory,CN=Users,DC=corp,DC=example");
        assert!(event(4732, &by_name).unwrap().message.contains(" added CN=Mallory,CN=Users,DC=corp,DC=example "));
    }

    #[test]
    fn other_ids_are_not_reported_and_text_is_cleaned_and_bounded() {
        assert!(event(4634, RDP_LOGON).is_none());
        let long = "é".repeat(600);
        let e =
            event(4625, &[("TargetUserName", &format!("ev\u{1b}[31mil{long}")), ("IpAddress", "1.2.3.4\n")]).unwrap();
        let user = e.user.clone().unwrap();
        assert!(user.starts_with("ev [31mil") && user.len() <= vigil_schema::report::limits::MAX_TEXT);
        assert!(e.message.len() <= vigil_schema::report::limits::MAX_TEXT && !e.message.contains('\u{1b}'));
        assert_eq!(e.source.as_deref(), Some("1.2.3.4"));
        // The result passes the schema's validation.
        let stats = vigil_schema::report::Stats {
            security_events: Some(vigil_schema::report::SecurityEvents {
                source: Some(SOURCE.into()),
                events: vec![e],
            }),
            ..Default::default()
        };
        let report = vigil_schema::report::Report { seq: 1, job: "w".into(), collected_at_ms: 0, dropped: 0, stats };
        report.validate().unwrap();
    }

    fn record(record_id: u64, event_id: u32) -> Result<RenderedEvent, &'static str> {
        let user = format!("u{record_id}");
        parse_event_xml(&render(event_id, record_id, &[("TargetUserName", &user), ("LogonType", "2")]))
            .map_err(|_| "xml")
    }

    #[test]
    fn cursor_starts_at_the_newest_record_and_restarts_after_a_clear() {
        let mut c = Cursor::default();
        assert_eq!(c.begin(500), None, "history before start-up is not read");
        assert_eq!(c.last(), Some(500));
        assert_eq!(c.begin(500), None, "nothing new");
        assert_eq!(c.begin(503), Some(500));
        c.advance(502);
        assert_eq!(c.begin(503), Some(502), "the unread record comes next time");
        c.advance(503);
        c.advance(10); // never moves back
        assert_eq!(c.last(), Some(503));
        assert_eq!(c.begin(4), Some(0), "cleared log: read from its start");
        assert_eq!(c.last(), Some(0));
        let mut empty = Cursor::default();
        assert_eq!(empty.begin(0), None);
        assert_eq!(empty.begin(1), Some(0), "the first record of a log that was empty at start-up is new");
    }

    #[test]
    fn scan_moves_the_cursor_over_filtered_records_and_keeps_the_rest() {
        let mut c = Cursor::default();
        c.begin(10);
        let mut events = Vec::new();
        // 4624 of type 2 is reported, 4634 (logoff) is not, but both move the cursor.
        let records = vec![record(11, 4624), record(12, 4634), record(13, 4625)];
        scan(&mut c, records, NOW, &mut events).unwrap();
        assert_eq!(c.last(), Some(13));
        let kinds: Vec<_> = events.iter().map(|e| (e.kind, e.user.clone().unwrap())).collect();
        assert_eq!(
            kinds,
            [(SecurityEventKind::LoginSucceeded, "u11".into()), (SecurityEventKind::LoginFailed, "u13".into())]
        );
        // An error stops the scan after the records before it; the one in error is read again next time.
        let mut events = Vec::new();
        let records = vec![record(14, 4625), Err("EvtNext failed"), record(16, 4625)];
        assert_eq!(scan(&mut c, records, NOW, &mut events), Err("EvtNext failed"));
        assert_eq!((c.last(), events.len()), (Some(14), 1));
    }

    #[test]
    fn scan_stops_at_the_event_bound_without_consuming_more() {
        let mut c = Cursor::default();
        c.begin(0);
        let total = MAX_EVENTS as u64 + 10;
        let mut pulled = 0;
        let records = (1..=total).map(|id| {
            pulled += 1;
            record(id, 4625)
        });
        let mut events = Vec::new();
        scan(&mut c, records, NOW, &mut events).unwrap();
        assert_eq!((events.len(), c.last()), (MAX_EVENTS, Some(MAX_EVENTS as u64)));
        assert_eq!(pulled, MAX_EVENTS, "records after the bound are left in the log");
        assert_eq!(c.begin(total), Some(MAX_EVENTS as u64));
        let mut rest = Vec::new();
        scan(&mut c, (MAX_EVENTS as u64 + 1..=total).map(|id| record(id, 4625)), NOW, &mut rest).unwrap();
        assert_eq!((rest.len(), rest[0].user.as_deref()), (10, Some(format!("u{}", MAX_EVENTS + 1).as_str())));
    }

    #[test]
    fn scan_stops_at_the_record_bound_when_everything_is_noise() {
        let mut c = Cursor::default();
        c.begin(0);
        let mut pulled = 0;
        let noise = (1..).map(|id| {
            pulled += 1;
            record(id, 4634)
        });
        let mut events = Vec::new();
        scan(&mut c, noise, NOW, &mut events).unwrap();
        assert_eq!((events.len(), c.last(), pulled), (0, Some(MAX_SCANNED as u64), MAX_SCANNED));
    }

    /// The real reader, on Windows: whatever access the test has (none, under Wine, or an administrator's), it
    /// neither panics nor reports anything invalid (no access: "not available"), and a second sample repeats
    /// nothing.
    #[cfg(windows)]
    #[test]
    fn the_real_reader_reports_valid_samples_or_no_source() {
        let mut reader = EventLogReader::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2 {
            let got = match reader.collect() {
                Ok(got) => got,
                Err(why) => {
                    assert!(why.contains("Security event log"), "{why}");
                    continue;
                }
            };
            assert_eq!(got.source.as_deref(), Some(SOURCE));
            for e in &got.events {
                assert!(seen.insert((e.time, e.message.clone())), "reported twice: {e:?}");
            }
            let stats = vigil_schema::report::Stats { security_events: Some(got), ..Default::default() };
            let report =
                vigil_schema::report::Report { seq: 1, job: "w".into(), collected_at_ms: 0, dropped: 0, stats };
            report.validate().unwrap();
        }
    }

    #[test]
    fn logon_types_and_failure_codes_have_names() {
        assert_eq!(logon_type_name(10), "RemoteInteractive");
        assert_eq!(logon_type_name(99), "unknown");
        assert_eq!(failure_reason("0xC0000064"), Some("unknown user name"));
        assert_eq!(failure_reason("0xc0000072"), Some("account disabled"));
        assert_eq!(failure_reason("0x0"), None);
        assert_eq!(failure_reason("junk"), None);
    }
}
