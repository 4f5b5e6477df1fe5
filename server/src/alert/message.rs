//! The text of alert mail: subjects that sort well in a mail client (`[vigil] FIRING ...`, `[vigil] RESOLVED ...`,
//! `[vigil] SECURITY ...`) and plain-text bodies with host, ip, rule, measured value, limit, time and a short
//! recent history. Pure functions: no I/O.

use std::fmt::Write as _;

use vigil_schema::report::SecurityEvents;

use super::{Transition, clear_below};
use crate::config::{AlertKind, AlertRule};
use crate::store::alerts::EventRow;

/// Samples listed under "Recent values".
pub const HISTORY_LEN: usize = 6;

/// Everything an alert mail tells.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertMail<'a> {
    pub host: &'a str,
    pub ip: &'a str,
    pub rule: &'a AlertRule,
    pub transition: Transition,
    /// The measured value; for silence, the seconds without a report.
    pub value: f64,
    /// For disk: the mount measured.
    pub mount: Option<&'a str>,
    pub at_ms: i64,
    /// When the alert started firing (for repeats and resolutions).
    pub firing_since_ms: Option<i64>,
    /// Newest first: (collected time ms, value).
    pub history: &'a [(i64, f64)],
    /// For silence: the host's shortest job interval, seconds.
    pub interval_s: Option<u32>,
}

/// A number without a useless fraction: `90`, `92.5`.
pub fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{v:.0}") } else { format!("{v:.1}") }
}

/// A measured value in the unit of its rule.
pub fn value_text(kind: AlertKind, v: f64) -> String {
    match kind {
        AlertKind::Load => format!("{v:.2}"),
        AlertKind::Silence => format!("{}s", num(v.round())),
        AlertKind::Job => (if v >= 1.0 { "failed" } else { "succeeded" }).to_owned(),
        AlertKind::Metric => num(v),
        _ => format!("{v:.1}%"),
    }
}

/// A limit (or clear threshold) in the unit of its rule.
pub fn limit_text(kind: AlertKind, v: f64) -> String {
    match kind {
        AlertKind::Load => num(v),
        AlertKind::Silence => format!("{} intervals", num(v)),
        AlertKind::Job => "a failed run".to_owned(),
        AlertKind::Metric => num(v),
        _ => format!("{}%", num(v)),
    }
}

/// `cpu`, `disk /data`.
fn rule_label(rule: &AlertRule, mount: Option<&str>) -> String {
    match mount.or(rule.mount.as_deref()) {
        Some(m) if rule.kind == AlertKind::Disk => format!("disk {m}"),
        _ if rule.kind == AlertKind::Job => format!("job {}", rule.job.as_deref().unwrap_or("")),
        _ if rule.kind == AlertKind::Metric => {
            format!("metric {}/{}", rule.job.as_deref().unwrap_or(""), rule.metric.as_deref().unwrap_or(""))
        }
        _ => rule.kind.name().to_owned(),
    }
}

/// Milliseconds since the epoch as `2026-11-26 17:30:05 UTC` (the calendar lives in `vigil_sys::clock`).
pub use vigil_sys::clock::utc;

/// The subject line.
pub fn subject(m: &AlertMail<'_>) -> String {
    let kind = m.rule.kind;
    let label = rule_label(m.rule, m.mount);
    if kind == AlertKind::Silence {
        let interval = m.interval_s.unwrap_or(0);
        return match m.transition {
            Transition::Resolve => {
                format!("[vigil] RESOLVED silence on {} (reporting again after {})", m.host, value_text(kind, m.value))
            }
            t => format!(
                "[vigil] FIRING silence on {} (no report for {} > {} x {interval}s){}",
                m.host,
                value_text(kind, m.value),
                num(m.rule.limit),
                if t == Transition::Repeat { " [repeat]" } else { "" }
            ),
        };
    }
    if kind == AlertKind::Job {
        return match m.transition {
            Transition::Resolve => format!("[vigil] RESOLVED {label} on {} (the run succeeded)", m.host),
            t => format!(
                "[vigil] FIRING {label} on {} (the run failed){}",
                m.host,
                if t == Transition::Repeat { " [repeat]" } else { "" }
            ),
        };
    }
    match m.transition {
        Transition::Resolve => format!(
            "[vigil] RESOLVED {label} on {} ({} < {})",
            m.host,
            value_text(kind, m.value),
            limit_text(kind, clear_below(m.rule))
        ),
        t => format!(
            "[vigil] FIRING {label} on {} ({} > {}){}",
            m.host,
            value_text(kind, m.value),
            limit_text(kind, m.rule.limit),
            if t == Transition::Repeat { " [repeat]" } else { "" }
        ),
    }
}

/// The plain-text body.
pub fn body(m: &AlertMail<'_>) -> String {
    let kind = m.rule.kind;
    let label = rule_label(m.rule, m.mount);
    let state = match m.transition {
        Transition::Fire => "FIRING",
        Transition::Repeat => "STILL FIRING",
        Transition::Resolve => "RESOLVED",
    };
    let mut out = String::new();
    let _ = writeln!(out, "{state}: {label} on {}\n", m.host);
    let _ = writeln!(out, "Host:   {}", m.host);
    let _ = writeln!(out, "IP:     {}", m.ip);
    if kind == AlertKind::Silence {
        let interval = m.interval_s.unwrap_or(0);
        let _ = writeln!(
            out,
            "Rule:   silence: no report for more than {} x {interval}s (the host's shortest job interval)",
            num(m.rule.limit)
        );
        let what = if m.transition == Transition::Resolve { "Silent for:" } else { "No report for:" };
        let _ = writeln!(out, "{what} {}", value_text(kind, m.value));
    } else {
        let _ = writeln!(
            out,
            "Rule:   {label} above {} (clears below {})",
            limit_text(kind, m.rule.limit),
            limit_text(kind, clear_below(m.rule))
        );
        let _ = writeln!(out, "Value:  {}", value_text(kind, m.value));
    }
    let _ = writeln!(out, "Limit:  {}", limit_text(kind, m.rule.limit));
    let _ = writeln!(out, "Time:   {}", utc(m.at_ms));
    if let Some(since) = m.firing_since_ms {
        let _ = writeln!(out, "Firing since: {}", utc(since));
    }
    if !m.history.is_empty() {
        let _ = writeln!(out, "\nRecent values (newest first):");
        for (ts, v) in m.history {
            let _ = writeln!(out, "  {}  {}", utc(*ts), value_text(kind, *v));
        }
    }
    out.push_str("\n-- \nvigil\n");
    out
}

/// Replaces control characters (from untrusted log lines) so a mail shows them harmlessly.
fn clean(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Subject and body of the mail for one report's security events.
pub fn security(host: &str, ip: &str, at_ms: i64, events: &SecurityEvents) -> (String, String) {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for e in &events.events {
        match counts.iter_mut().find(|(k, _)| *k == e.kind.name()) {
            Some((_, n)) => *n += 1,
            None => counts.push((e.kind.name(), 1)),
        }
    }
    let summary: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let n = events.events.len();
    let subject =
        format!("[vigil] SECURITY {host}: {n} event{} ({})", if n == 1 { "" } else { "s" }, summary.join(", "));
    let mut body = String::new();
    let _ = writeln!(body, "SECURITY: {n} event{} on {host}\n", if n == 1 { "" } else { "s" });
    let _ = writeln!(body, "Host:   {host}");
    let _ = writeln!(body, "IP:     {ip}");
    let _ = writeln!(body, "Time:   {}", utc(at_ms));
    if let Some(src) = &events.source {
        let _ = writeln!(body, "Source: {}", clean(src));
    }
    let _ = writeln!(body, "\nEvents:");
    for e in &events.events {
        let _ = writeln!(
            body,
            "  {}  {:<15}  user={}  from={}\n      {}",
            utc(e.time.saturating_mul(1000)),
            e.kind.name(),
            clean(e.user.as_deref().unwrap_or("-")),
            clean(e.source.as_deref().unwrap_or("-")),
            clean(&e.message)
        );
    }
    body.push_str("\n-- \nvigil\n");
    (subject, body)
}

/// Most events a digest lists one by one; the rest are counted.
pub const DIGEST_LIST: usize = 50;

/// Subject and body of a security digest: the security reports of `host` held back since its last security mail
/// (each as recorded in the alert history), the first [`DIGEST_LIST`] listed and the rest counted.
pub fn security_digest(host: &str, ip: &str, reports: &[EventRow]) -> (String, String) {
    let events: f64 = reports.iter().filter_map(|e| e.value).sum();
    let n = reports.len();
    let subject = format!(
        "[vigil] SECURITY {host}: {n} more security report{} ({} events)",
        if n == 1 { "" } else { "s" },
        num(events)
    );
    let mut body = String::new();
    let _ = writeln!(
        body,
        "SECURITY: {n} security report{} on {host} since the last mail\n",
        if n == 1 { "" } else { "s" }
    );
    let _ = writeln!(body, "Host:   {host}");
    let _ = writeln!(body, "IP:     {ip}");
    if let (Some(first), Some(last)) = (reports.first(), reports.last()) {
        let _ = writeln!(body, "From:   {}\nTo:     {}", utc(first.at_ms), utc(last.at_ms));
    }
    let _ = writeln!(body, "\nReports:");
    for e in reports.iter().take(DIGEST_LIST) {
        let _ = writeln!(body, "  {}  {}", utc(e.at_ms), clean(&e.detail));
    }
    if n > DIGEST_LIST {
        let _ = writeln!(body, "  ... and {} more (see `vigil alerts`)", n - DIGEST_LIST);
    }
    body.push_str("\nEach report's events are in the database (vigil alerts, table security_events).\n-- \nvigil\n");
    (subject, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_schema::report::{SecurityEvent, SecurityEventKind};

    fn rule(kind: AlertKind, limit: f64, clear: f64) -> AlertRule {
        AlertRule { kind, limit, mount: None, clear_margin: clear, repeat_minutes: None, job: None, metric: None }
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_795_714_205_000), "2026-11-26 17:30:05 UTC");
    }

    #[test]
    fn subjects_follow_the_pattern() {
        let r = rule(AlertKind::Cpu, 90.0, 5.0);
        let mut m = AlertMail {
            host: "web-01",
            ip: "10.0.0.1",
            rule: &r,
            transition: Transition::Fire,
            value: 93.2,
            mount: None,
            at_ms: 0,
            firing_since_ms: None,
            history: &[(0, 93.2), (-10_000, 80.0)],
            interval_s: None,
        };
        assert_eq!(subject(&m), "[vigil] FIRING cpu on web-01 (93.2% > 90%)");
        let b = body(&m);
        for want in ["Host:   web-01", "IP:     10.0.0.1", "Value:  93.2%", "Limit:  90%", "clears below 85%", "80.0%"]
        {
            assert!(b.contains(want), "{want} in {b}");
        }
        m.transition = Transition::Resolve;
        m.value = 70.0;
        assert_eq!(subject(&m), "[vigil] RESOLVED cpu on web-01 (70.0% < 85%)");
        let d = AlertRule { mount: Some("/data".into()), ..rule(AlertKind::Disk, 90.0, 5.0) };
        m.rule = &d;
        m.transition = Transition::Repeat;
        m.value = 95.0;
        assert_eq!(subject(&m), "[vigil] FIRING disk /data on web-01 (95.0% > 90%) [repeat]");
        let s = rule(AlertKind::Silence, 3.0, 0.0);
        m.rule = &s;
        m.transition = Transition::Fire;
        m.value = 31.4;
        m.interval_s = Some(10);
        assert_eq!(subject(&m), "[vigil] FIRING silence on web-01 (no report for 31s > 3 x 10s)");
    }

    #[test]
    fn security_mail_groups_and_cleans() {
        let ev = |kind, msg: &str| SecurityEvent {
            time: 1_795_714_205,
            kind,
            user: Some("root".into()),
            source: Some("203.0.113.9".into()),
            message: msg.into(),
        };
        let events = SecurityEvents {
            source: Some("/var/log/auth.log".into()),
            events: vec![
                ev(SecurityEventKind::LoginFailed, "Failed password\u{1b}[31m"),
                ev(SecurityEventKind::LoginFailed, "Failed password"),
                ev(SecurityEventKind::Sudo, "sudo: root"),
            ],
        };
        let (s, b) = security("web-01", "10.0.0.1", 0, &events);
        assert_eq!(s, "[vigil] SECURITY web-01: 3 events (2 login_failed, 1 sudo)");
        assert!(b.contains("Failed password?[31m"), "{b}");
        assert!(b.contains("2026-11-26 17:30:05 UTC"), "{b}");
        assert!(!b.contains('\u{1b}'));
    }
}
