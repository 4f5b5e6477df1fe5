//! The statistics an agent reports, one type per family, and the checks the server runs before storing them.
//!
//! Units: bytes for sizes, percent (0 to 100) for shares, seconds since the Unix epoch for times, bytes per second
//! for rates. Every family is optional in a [`Stats`]: a job fills only the families its collectors produce.

use serde::{Deserialize, Serialize};

/// Host details: what the exercise called "system details".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemInfo {
    pub hostname: String,
    pub os_name: String,
    pub os_version: String,
    pub kernel: String,
    pub arch: String,
    pub uptime_s: u64,
    pub boot_time: i64,
    pub cpu_model: String,
    pub cpu_count: u32,
}

/// One logged-in session (utmp on Unix).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    pub user: String,
    pub terminal: String,
    /// Remote host for network logins, absent for local ones.
    pub host: Option<String>,
    pub login_time: i64,
}

/// Logged-in sessions. `source` names where they were read from; `None` means the host has no session record.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Users {
    pub source: Option<String>,
    pub sessions: Vec<Session>,
}

/// CPU usage since the previous sample, and the load averages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuStats {
    pub total_pct: f32,
    pub per_core_pct: Vec<f32>,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
}

/// Physical memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryStats {
    pub total: u64,
    pub used: u64,
    pub available: u64,
    pub free: u64,
    pub used_pct: f32,
}

/// Swap space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwapStats {
    pub total: u64,
    pub used: u64,
    pub free: u64,
    pub used_pct: f32,
}

/// A mounted file system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub device: String,
    pub mount_point: String,
    pub fs_type: String,
    pub options: String,
}

/// Space (and inodes, where the file system has them) on one mount.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskUsage {
    pub mount_point: String,
    pub total: u64,
    pub used: u64,
    pub free: u64,
    pub used_pct: f32,
    pub inodes_total: Option<u64>,
    pub inodes_used: Option<u64>,
}

/// Counters of one network interface since boot, and rates since the previous sample (absent on the first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetInterface {
    pub name: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    pub rx_bytes_per_s: Option<f64>,
    pub tx_bytes_per_s: Option<f64>,
}

/// What kind of security event was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityEventKind {
    LoginFailed,
    LoginSucceeded,
    Sudo,
    Other,
}

impl SecurityEventKind {
    /// The stored name.
    pub fn name(self) -> &'static str {
        match self {
            Self::LoginFailed => "login_failed",
            Self::LoginSucceeded => "login_succeeded",
            Self::Sudo => "sudo",
            Self::Other => "other",
        }
    }
}

/// One authentication or privilege event from the journal, auth log or Windows Security log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityEvent {
    pub time: i64,
    pub kind: SecurityEventKind,
    pub user: Option<String>,
    pub source: Option<String>,
    pub message: String,
}

/// Security events new since the previous sample. `source` is `None` when the host has no log to read.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityEvents {
    pub source: Option<String>,
    pub events: Vec<SecurityEvent>,
}

/// A family a job asked for that this host cannot serve (on Windows: the Security log closed to the agent, or no
/// session API, as under Wine). The family itself is left out of the [`Stats`], so "not available" never looks like
/// an empty, healthy result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unavailable {
    pub family: crate::job::Collector,
    /// Why, for the operator (`vigil status`).
    pub reason: String,
}

/// The statistics of one collection run. Absent families were not collected by this job.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Users>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<SwapStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<Partition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_usage: Option<Vec<DiskUsage>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Vec<NetInterface>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_events: Option<SecurityEvents>,
    /// The run of a command job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<crate::command::CommandRun>,
    /// Families asked for that the host cannot serve (absent above); older reports have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<Unavailable>,
}

/// One report: the result of one job run on one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Per-agent sequence number, starting at 1; equal to the envelope's.
    pub seq: u64,
    /// The job that produced it.
    pub job: String,
    /// When it was collected, milliseconds since the Unix epoch, by the host's clock.
    pub collected_at_ms: i64,
    /// Reports the agent's spool dropped (oldest first) since its previous report, so loss is never silent.
    #[serde(default)]
    pub dropped: u64,
    pub stats: Stats,
}

/// Hard bounds a report must stay within; anything larger is refused, not truncated.
pub mod limits {
    /// Longest agent-supplied text (names, paths, hosts, versions), in bytes.
    pub const MAX_TEXT: usize = crate::text::MAX_TEXT;
    /// Longest security event message, in bytes.
    pub const MAX_MESSAGE: usize = 4096;
    pub const MAX_ITEMS: usize = 4096;
    pub const MAX_CORES: usize = 4096;
}

/// Why a report was refused: the field (a path such as `users.sessions.host`) and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid report: {field}: {problem}")]
pub struct ReportError {
    pub field: String,
    pub problem: &'static str,
}

fn err(field: impl Into<String>, problem: &'static str) -> ReportError {
    ReportError { field: field.into(), problem }
}

pub use crate::text::is_forbidden_char;

/// Checks one agent-supplied string: at most `max` bytes, no [forbidden character](is_forbidden_char).
pub fn check_text(field: &str, s: &str, max: usize) -> Result<(), ReportError> {
    if s.len() > max {
        return Err(err(field, "text too long"));
    }
    if s.chars().any(is_forbidden_char) {
        return Err(err(field, "control or bidi-override characters in text"));
    }
    Ok(())
}

fn text(field: &str, s: &str) -> Result<(), ReportError> {
    check_text(field, s, limits::MAX_TEXT)
}

fn opt_text(field: &str, s: Option<&str>) -> Result<(), ReportError> {
    s.map_or(Ok(()), |s| text(field, s))
}

fn pct(field: &str, v: f32) -> Result<(), ReportError> {
    if !v.is_finite() || !(0.0..=100.0).contains(&v) {
        return Err(err(field, "percentage outside 0..=100"));
    }
    Ok(())
}

fn finite_non_negative(field: &str, v: f64) -> Result<(), ReportError> {
    if !v.is_finite() || v < 0.0 {
        return Err(err(field, "not a finite non-negative number"));
    }
    Ok(())
}

fn items<T>(field: &str, v: &[T]) -> Result<(), ReportError> {
    if v.len() > limits::MAX_ITEMS {
        return Err(err(field, "too many items"));
    }
    Ok(())
}

impl Report {
    /// Checks every field against the bounds the store relies on, and every agent-supplied string against
    /// [`check_text`] (the server shows them in terminals, mails and logs).
    pub fn validate(&self) -> Result<(), ReportError> {
        if self.seq == 0 {
            return Err(err("seq", "must start at 1"));
        }
        if self.job.is_empty() {
            return Err(err("job", "empty"));
        }
        text("job", &self.job)?;
        if self.collected_at_ms < 0 {
            return Err(err("collected_at_ms", "before 1970"));
        }
        let s = &self.stats;
        if let Some(sys) = &s.system {
            for (f, v) in [
                ("system.hostname", &sys.hostname),
                ("system.os_name", &sys.os_name),
                ("system.os_version", &sys.os_version),
                ("system.kernel", &sys.kernel),
                ("system.arch", &sys.arch),
                ("system.cpu_model", &sys.cpu_model),
            ] {
                text(f, v)?;
            }
        }
        if let Some(u) = &s.users {
            opt_text("users.source", u.source.as_deref())?;
            items("users.sessions", &u.sessions)?;
            for x in &u.sessions {
                text("users.sessions.user", &x.user)?;
                text("users.sessions.terminal", &x.terminal)?;
                opt_text("users.sessions.host", x.host.as_deref())?;
            }
        }
        self.validate_gauges()?;
        if let Some(p) = &s.partitions {
            items("partitions", p)?;
            for x in p {
                text("partitions.device", &x.device)?;
                text("partitions.mount_point", &x.mount_point)?;
                text("partitions.fs_type", &x.fs_type)?;
                text("partitions.options", &x.options)?;
            }
        }
        if let Some(d) = &s.disk_usage {
            items("disk_usage", d)?;
            for x in d {
                text("disk_usage.mount_point", &x.mount_point)?;
                pct("disk_usage.used_pct", x.used_pct)?;
            }
        }
        if let Some(n) = &s.network {
            items("network", n)?;
            for x in n {
                text("network.name", &x.name)?;
                for v in [x.rx_bytes_per_s, x.tx_bytes_per_s].into_iter().flatten() {
                    finite_non_negative("network.rate", v)?;
                }
            }
        }
        if let Some(e) = &s.security_events {
            opt_text("security_events.source", e.source.as_deref())?;
            items("security_events", &e.events)?;
            for x in &e.events {
                opt_text("security_events.events.user", x.user.as_deref())?;
                opt_text("security_events.events.source", x.source.as_deref())?;
                check_text("security_events.events.message", &x.message, limits::MAX_MESSAGE)?;
            }
        }
        items("unavailable", &s.unavailable)?;
        for u in &s.unavailable {
            text("unavailable.reason", &u.reason)?;
        }
        self.validate_command()
    }

    fn validate_command(&self) -> Result<(), ReportError> {
        use crate::command::{MAX_METRICS, MAX_OUTPUT, MAX_PARSE_ERRORS, RunOutcome, output_char_ok};
        let Some(c) = &self.stats.command else { return Ok(()) };
        for (f, v) in [("command.stdout", &c.stdout), ("command.stderr", &c.stderr)] {
            if v.len() > MAX_OUTPUT as usize {
                return Err(err(f, "text too long"));
            }
            if !v.chars().all(output_char_ok) {
                return Err(err(f, "control or bidi-override characters in text"));
            }
        }
        match &c.outcome {
            RunOutcome::FailedToStart { error: t } | RunOutcome::Refused { reason: t } => text("command.outcome", t)?,
            _ => {}
        }
        if c.metrics.len() > MAX_METRICS {
            return Err(err("command.metrics", "too many items"));
        }
        for m in &c.metrics {
            if m.name.is_empty() {
                return Err(err("command.metrics.name", "empty"));
            }
            text("command.metrics.name", &m.name)?;
            if !m.value.is_finite() {
                return Err(err("command.metrics.value", "not a finite number"));
            }
            items("command.metrics.labels", &m.labels)?;
            for (k, v) in &m.labels {
                text("command.metrics.labels", k)?;
                text("command.metrics.labels", v)?;
            }
        }
        if c.parse_errors.len() > MAX_PARSE_ERRORS {
            return Err(err("command.parse_errors", "too many items"));
        }
        for e in &c.parse_errors {
            text("command.parse_errors", e)?;
        }
        Ok(())
    }

    /// The numeric families: cpu, memory, swap.
    fn validate_gauges(&self) -> Result<(), ReportError> {
        let s = &self.stats;
        if let Some(c) = &s.cpu {
            pct("cpu.total_pct", c.total_pct)?;
            if c.per_core_pct.len() > limits::MAX_CORES {
                return Err(err("cpu.per_core_pct", "too many cores"));
            }
            for v in &c.per_core_pct {
                pct("cpu.per_core_pct", *v)?;
            }
            for (f, v) in [("cpu.load1", c.load1), ("cpu.load5", c.load5), ("cpu.load15", c.load15)] {
                finite_non_negative(f, v)?;
            }
        }
        if let Some(m) = &s.memory {
            pct("memory.used_pct", m.used_pct)?;
            if m.used > m.total {
                return Err(err("memory.used", "more than total"));
            }
        }
        if let Some(m) = &s.swap {
            pct("swap.used_pct", m.used_pct)?;
            if m.used > m.total {
                return Err(err("swap.used", "more than total"));
            }
        }
        Ok(())
    }

    /// A valid report with every family filled (two of each list item), for tests and examples of the wire form:
    /// one home for the "full report" that tests and benchmarks build on.
    pub fn example(seq: u64, collected_at_ms: i64) -> Report {
        let gib = 1u64 << 30;
        let secs = collected_at_ms.div_euclid(1000);
        Report {
            seq,
            job: "all".into(),
            collected_at_ms,
            dropped: 0,
            stats: Stats {
                system: Some(SystemInfo {
                    hostname: "web-01".into(),
                    os_name: "Debian GNU/Linux".into(),
                    os_version: "12".into(),
                    kernel: "6.1.0-18-amd64".into(),
                    arch: "x86_64".into(),
                    uptime_s: 86_400,
                    boot_time: secs - 86_400,
                    cpu_model: "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz".into(),
                    cpu_count: 2,
                }),
                users: Some(Users {
                    source: Some("/var/run/utmp".into()),
                    sessions: vec![
                        Session {
                            user: "alice".into(),
                            terminal: "pts/0".into(),
                            host: Some("203.0.113.7".into()),
                            login_time: secs - 600,
                        },
                        Session { user: "bob".into(), terminal: "tty2".into(), host: None, login_time: secs - 60 },
                    ],
                }),
                cpu: Some(CpuStats {
                    total_pct: 12.5,
                    per_core_pct: vec![10.0, 15.0],
                    load1: 0.5,
                    load5: 0.25,
                    load15: 0.125,
                }),
                memory: Some(MemoryStats {
                    total: 8 * gib,
                    used: 2 * gib,
                    available: 6 * gib,
                    free: 5 * gib,
                    used_pct: 25.0,
                }),
                swap: Some(SwapStats { total: 2 * gib, used: gib / 4, free: 2 * gib - gib / 4, used_pct: 12.5 }),
                partitions: Some(vec![
                    Partition {
                        device: "/dev/sda1".into(),
                        mount_point: "/".into(),
                        fs_type: "ext4".into(),
                        options: "rw,relatime".into(),
                    },
                    Partition {
                        device: "/dev/sdb1".into(),
                        mount_point: "/data".into(),
                        fs_type: "xfs".into(),
                        options: "rw".into(),
                    },
                ]),
                disk_usage: Some(vec![
                    DiskUsage {
                        mount_point: "/".into(),
                        total: 100 * gib,
                        used: 40 * gib,
                        free: 60 * gib,
                        used_pct: 40.0,
                        inodes_total: Some(1_000_000),
                        inodes_used: Some(10_000),
                    },
                    DiskUsage {
                        mount_point: "/data".into(),
                        total: 500 * gib,
                        used: 100 * gib,
                        free: 400 * gib,
                        used_pct: 20.0,
                        inodes_total: None,
                        inodes_used: None,
                    },
                ]),
                network: Some(vec![
                    NetInterface {
                        name: "eth0".into(),
                        rx_bytes: 1_000_000,
                        tx_bytes: 500_000,
                        rx_packets: 1_000,
                        tx_packets: 700,
                        rx_errors: 0,
                        tx_errors: 0,
                        rx_dropped: 1,
                        tx_dropped: 0,
                        rx_bytes_per_s: Some(1_000.0),
                        tx_bytes_per_s: Some(500.0),
                    },
                    NetInterface {
                        name: "lo".into(),
                        rx_bytes: 4_096,
                        tx_bytes: 4_096,
                        rx_packets: 8,
                        tx_packets: 8,
                        rx_errors: 0,
                        tx_errors: 0,
                        rx_dropped: 0,
                        tx_dropped: 0,
                        rx_bytes_per_s: None,
                        tx_bytes_per_s: None,
                    },
                ]),
                security_events: Some(SecurityEvents {
                    source: Some("/var/log/auth.log".into()),
                    events: vec![
                        SecurityEvent {
                            time: secs - 30,
                            kind: SecurityEventKind::LoginFailed,
                            user: Some("root".into()),
                            source: Some("198.51.100.23".into()),
                            message: "web-01 sshd[1201]: Failed password for root from 198.51.100.23 port 52144 ssh2"
                                .into(),
                        },
                        SecurityEvent {
                            time: secs - 20,
                            kind: SecurityEventKind::Sudo,
                            user: Some("alice".into()),
                            source: None,
                            message:
                                "web-01 sudo: alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/id"
                                    .into(),
                        },
                    ],
                }),
                command: None,
                unavailable: Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Report {
        Report {
            seq: 1,
            job: "vitals".into(),
            collected_at_ms: 1_700_000_000_000,
            dropped: 0,
            stats: Stats {
                cpu: Some(CpuStats {
                    total_pct: 12.5,
                    per_core_pct: vec![10.0, 15.0],
                    load1: 0.5,
                    load5: 0.4,
                    load15: 0.3,
                }),
                memory: Some(MemoryStats { total: 100, used: 40, available: 60, free: 50, used_pct: 40.0 }),
                ..Stats::default()
            },
        }
    }

    #[test]
    fn valid_sample_passes_and_round_trips() {
        let r = sample();
        r.validate().unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), r);
        assert!(!json.contains("swap"), "absent families are not serialized: {json}");
        assert!(!json.contains("unavailable"), "nothing unavailable, nothing serialized: {json}");
    }

    #[test]
    fn unavailable_families_round_trip_by_name() {
        let mut r = sample();
        r.stats.unavailable = vec![Unavailable {
            family: crate::job::Collector::SecurityEvents,
            reason: "EvtQuery on Security: access denied".into(),
        }];
        r.validate().unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""unavailable":[{"family":"security_events","reason":"#), "{json}");
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), r);
        r.stats.unavailable = vec![r.stats.unavailable[0].clone(); limits::MAX_ITEMS + 1];
        assert_eq!(r.validate().unwrap_err().field, "unavailable");
    }

    #[test]
    fn bad_values_are_refused() {
        let mut r = sample();
        r.stats.cpu.as_mut().unwrap().total_pct = f32::NAN;
        assert_eq!(r.validate().unwrap_err().field, "cpu.total_pct");
        let mut r = sample();
        r.stats.memory.as_mut().unwrap().used_pct = 150.0;
        assert!(r.validate().is_err());
        let mut r = sample();
        r.seq = 0;
        assert!(r.validate().is_err());
        let mut r = sample();
        r.job = "x".repeat(1000);
        assert!(r.validate().is_err());
        let mut r = sample();
        r.stats.memory.as_mut().unwrap().used = 101;
        assert!(r.validate().is_err());
    }

    #[test]
    fn the_example_is_full_and_valid() {
        let r = Report::example(7, 1_795_694_400_000);
        r.validate().unwrap();
        let s = &r.stats;
        assert!(s.system.is_some() && s.users.is_some() && s.cpu.is_some() && s.memory.is_some() && s.swap.is_some());
        assert!([s.partitions.as_ref().map(Vec::len), s.disk_usage.as_ref().map(Vec::len)] == [Some(2), Some(2)]);
        assert!(s.network.as_ref().is_some_and(|n| n.len() == 2));
        assert!(s.security_events.as_ref().is_some_and(|e| e.events.len() == 2));
        assert_eq!((r.seq, r.collected_at_ms), (7, 1_795_694_400_000));
    }

    type Setter = fn(&mut Report, String);

    /// Every agent-supplied string of the example, by field path, and a way to set it.
    fn string_fields() -> Vec<(&'static str, Setter)> {
        fn sys(r: &mut Report) -> &mut SystemInfo {
            r.stats.system.as_mut().unwrap()
        }
        fn session(r: &mut Report) -> &mut Session {
            &mut r.stats.users.as_mut().unwrap().sessions[1]
        }
        fn event(r: &mut Report) -> &mut SecurityEvent {
            &mut r.stats.security_events.as_mut().unwrap().events[1]
        }
        vec![
            ("job", |r, v| r.job = v),
            ("system.hostname", |r, v| sys(r).hostname = v),
            ("system.os_name", |r, v| sys(r).os_name = v),
            ("system.os_version", |r, v| sys(r).os_version = v),
            ("system.kernel", |r, v| sys(r).kernel = v),
            ("system.arch", |r, v| sys(r).arch = v),
            ("system.cpu_model", |r, v| sys(r).cpu_model = v),
            ("users.source", |r, v| r.stats.users.as_mut().unwrap().source = Some(v)),
            ("users.sessions.user", |r, v| session(r).user = v),
            ("users.sessions.terminal", |r, v| session(r).terminal = v),
            ("users.sessions.host", |r, v| session(r).host = Some(v)),
            ("partitions.device", |r, v| r.stats.partitions.as_mut().unwrap()[1].device = v),
            ("partitions.mount_point", |r, v| r.stats.partitions.as_mut().unwrap()[1].mount_point = v),
            ("partitions.fs_type", |r, v| r.stats.partitions.as_mut().unwrap()[1].fs_type = v),
            ("partitions.options", |r, v| r.stats.partitions.as_mut().unwrap()[1].options = v),
            ("disk_usage.mount_point", |r, v| r.stats.disk_usage.as_mut().unwrap()[1].mount_point = v),
            ("network.name", |r, v| r.stats.network.as_mut().unwrap()[1].name = v),
            ("security_events.source", |r, v| r.stats.security_events.as_mut().unwrap().source = Some(v)),
            ("security_events.events.user", |r, v| event(r).user = Some(v)),
            ("security_events.events.source", |r, v| event(r).source = Some(v)),
            ("security_events.events.message", |r, v| event(r).message = v),
            ("unavailable.reason", |r, v| {
                r.stats.unavailable = vec![Unavailable { family: crate::job::Collector::Users, reason: v }]
            }),
        ]
    }

    #[test]
    fn every_agent_string_refuses_controls_and_bidi_overrides_with_its_path() {
        for (field, set) in string_fields() {
            for bad in
                ["\x1b[2J", "a\nb", "tab\there", "\x7f", "\u{85}", "\u{9b}31m", "evil\u{202E}txt.exe", "\u{2066}x"]
            {
                let mut r = Report::example(1, 1_795_694_400_000);
                set(&mut r, format!("ok {bad} ok"));
                let e = r.validate().expect_err(field);
                assert_eq!((e.field.as_str(), e.problem), (field, "control or bidi-override characters in text"));
            }
            let mut r = Report::example(1, 1_795_694_400_000);
            set(&mut r, "plain ünïcødé 名前".into());
            r.validate().unwrap_or_else(|e| panic!("{field}: {e}"));
        }
    }

    #[test]
    fn every_agent_string_is_bounded() {
        for (field, set) in string_fields() {
            let max = if field == "security_events.events.message" { limits::MAX_MESSAGE } else { limits::MAX_TEXT };
            let mut r = Report::example(1, 1_795_694_400_000);
            set(&mut r, "é".repeat(max / 2));
            r.validate().unwrap_or_else(|e| panic!("{field} at its bound: {e}"));
            set(&mut r, "x".repeat(max + 1));
            let e = r.validate().expect_err(field);
            assert_eq!((e.field.as_str(), e.problem), (field, "text too long"));
        }
    }

    #[test]
    fn forbidden_chars_are_exactly_controls_and_bidi_formatting() {
        for c in
            ['\0', '\t', '\n', '\r', '\x1b', '\x7f', '\u{80}', '\u{9f}', '\u{200e}', '\u{202a}', '\u{202e}', '\u{2069}']
        {
            assert!(is_forbidden_char(c), "{c:?}");
        }
        for c in [' ', 'a', '~', '\u{a0}', 'é', '名', '\u{200d}', '\u{2070}'] {
            assert!(!is_forbidden_char(c), "{c:?}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let json = r#"{"seq":1,"job":"j","collected_at_ms":1,"stats":{},"extra":1}"#;
        assert!(serde_json::from_str::<Report>(json).is_err());
    }

    #[test]
    fn a_command_run_keeps_newlines_but_no_other_controls_and_is_bounded() {
        use crate::command::{CommandRun, MAX_OUTPUT, Metric, RunOutcome};
        let run = CommandRun {
            started_ms: 1,
            duration_ms: 2,
            outcome: RunOutcome::Exited { code: 0 },
            stdout: "42\n\tok\n".into(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            metrics: vec![Metric { name: "m".into(), labels: vec![("a".into(), "b".into())], value: 1.0 }],
            parse_errors: vec!["line 2: value is not a number".into()],
        };
        let mut r = Report { stats: Stats { command: Some(run), ..Stats::default() }, ..Report::example(1, 1) };
        r.validate().unwrap();
        fn cmd(r: &mut Report) -> &mut CommandRun {
            r.stats.command.as_mut().unwrap()
        }
        cmd(&mut r).stdout = "a\x1b[2Jb".into();
        assert_eq!(r.validate().unwrap_err().field, "command.stdout");
        cmd(&mut r).stdout = "x".repeat(MAX_OUTPUT as usize + 1);
        assert_eq!(r.validate().unwrap_err().problem, "text too long");
        cmd(&mut r).stdout = String::new();
        cmd(&mut r).metrics[0].value = f64::NAN;
        assert_eq!(r.validate().unwrap_err().field, "command.metrics.value");
    }
}
