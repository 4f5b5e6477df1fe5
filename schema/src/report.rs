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
    pub const MAX_TEXT: usize = 512;
    pub const MAX_ITEMS: usize = 4096;
    pub const MAX_CORES: usize = 4096;
}

/// Why a report was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid report: {field}: {problem}")]
pub struct ReportError {
    pub field: String,
    pub problem: &'static str,
}

fn err(field: impl Into<String>, problem: &'static str) -> ReportError {
    ReportError { field: field.into(), problem }
}

fn text(field: &str, s: &str) -> Result<(), ReportError> {
    if s.len() > limits::MAX_TEXT {
        return Err(err(field, "text too long"));
    }
    if s.chars().any(|c| c.is_control() && c != '\t') {
        return Err(err(field, "control characters in text"));
    }
    Ok(())
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
    /// Checks every field against the bounds the store relies on.
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
            items("users.sessions", &u.sessions)?;
            for x in &u.sessions {
                text("users.user", &x.user)?;
                text("users.terminal", &x.terminal)?;
                text("users.host", x.host.as_deref().unwrap_or(""))?;
            }
        }
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
            items("security_events", &e.events)?;
            for x in &e.events {
                text("security_events.user", x.user.as_deref().unwrap_or(""))?;
                text("security_events.source", x.source.as_deref().unwrap_or(""))?;
                if x.message.len() > 4 * limits::MAX_TEXT {
                    return Err(err("security_events.message", "text too long"));
                }
            }
        }
        Ok(())
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
    fn unknown_fields_are_refused() {
        let json = r#"{"seq":1,"job":"j","collected_at_ms":1,"stats":{},"extra":1}"#;
        assert!(serde_json::from_str::<Report>(json).is_err());
    }
}
