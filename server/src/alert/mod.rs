//! Alerts: the rules of clients.xml applied to every stored report and, for silence, to the clock.
//!
//! - this file: the pure part. What a rule measures in a report ([`measure`]), the key a rule's state is stored
//!   under ([`rule_key`]), and the state machine ([`step`]): ok → firing when the value goes over the limit; firing
//!   → resolved once it falls below `limit - clear_margin` (hysteresis, so a value hovering at the limit does not
//!   flood a mailbox); while firing, a repeat mail every `repeat_minutes` when the rule asks for one.
//! - [`evaluate`]: the same applied to the database, inside the ingest writer's transaction: a transition writes
//!   its `alert_state`, an `alert_events` row and (when `[smtp]` is configured and the host has a `mail`) an
//!   `outbox` row, all in the transaction that stored the report. Also the periodic silence check and security
//!   event mail.
//! - [`message`]: the mail text (subject and plain-text body).
//! - [`history`]: the `vigil alerts` view.
//!
//! Sending is `crate::mail`'s job: this module only queues.

pub mod evaluate;
pub mod history;
pub mod message;

use vigil_schema::report::Stats;

use crate::config::{AlertKind, AlertRule};

pub use evaluate::{BatchStates, Owner, SILENCE_CHECK_EVERY, check_silence, flush_security_digests, on_report};

/// The key a rule's state is stored under: the kind's name, or `disk:<mount>` for a disk rule on one mount.
pub fn rule_key(rule: &AlertRule) -> String {
    match (&rule.kind, &rule.mount) {
        (AlertKind::Disk, Some(m)) => format!("disk:{m}"),
        (AlertKind::Job, _) => format!("job:{}", rule.job.as_deref().unwrap_or("")),
        (AlertKind::Metric, _) => {
            format!("metric:{}:{}", rule.job.as_deref().unwrap_or(""), rule.metric.as_deref().unwrap_or(""))
        }
        (k, _) => k.name().to_owned(),
    }
}

/// What a rule measured in one report.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub value: f64,
    /// For disk rules: the mount the value is from.
    pub mount: Option<String>,
}

/// The value `rule` watches in `stats`: cpu total, memory and swap used percent, disk used percent of the rule's
/// mount (or the fullest mount), load1; for a job rule 1 when the run failed and 0 when it succeeded (a refusal is
/// neither); for a metric rule the first value of that name the run's output gave. `None` when the report does not
/// carry it (or for silence). Job and metric rules see only reports of their job ([`applies`]).
pub fn measure(rule: &AlertRule, stats: &Stats) -> Option<Measured> {
    let plain = |v: f64| v.is_finite().then_some(Measured { value: v, mount: None });
    match rule.kind {
        AlertKind::Cpu => stats.cpu.as_ref().and_then(|c| plain(f64::from(c.total_pct))),
        AlertKind::Load => stats.cpu.as_ref().and_then(|c| plain(c.load1)),
        AlertKind::Memory => stats.memory.as_ref().and_then(|m| plain(f64::from(m.used_pct))),
        AlertKind::Swap => stats.swap.as_ref().and_then(|s| plain(f64::from(s.used_pct))),
        AlertKind::Silence => None,
        AlertKind::Job => {
            let run = stats.command.as_ref()?;
            let failed = run.outcome.is_failure();
            (failed || run.outcome.is_success()).then_some(Measured { value: f64::from(u8::from(failed)), mount: None })
        }
        AlertKind::Metric => {
            let name = rule.metric.as_deref()?;
            let m = stats.command.as_ref()?.metrics.iter().find(|m| m.name == name)?;
            plain(m.value)
        }
        AlertKind::Disk => {
            let disks = stats.disk_usage.as_ref()?;
            disks
                .iter()
                .filter(|d| rule.mount.as_ref().is_none_or(|m| *m == d.mount_point))
                .filter(|d| d.used_pct.is_finite())
                .max_by(|a, b| a.used_pct.total_cmp(&b.used_pct))
                .map(|d| Measured { value: f64::from(d.used_pct), mount: Some(d.mount_point.clone()) })
        }
    }
}

/// Whether `rule` looks at a report of `job`: job and metric rules only at their own job's reports.
pub fn applies(rule: &AlertRule, job: &str) -> bool {
    !matches!(rule.kind, AlertKind::Job | AlertKind::Metric) || rule.job.as_deref() == Some(job)
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Never fired, or resolved.
    Ok,
    /// Firing; the last mail about it was queued at `last_mail_ms`.
    Firing { last_mail_ms: i64 },
}

/// What a new value does to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// ok → firing.
    Fire,
    /// Still firing, and the repeat interval has passed since the last mail.
    Repeat,
    /// firing → resolved.
    Resolve,
}

impl Transition {
    /// The `alert_events.state` it is recorded as.
    pub fn event_state(self) -> &'static str {
        match self {
            Transition::Fire => "firing",
            Transition::Repeat => "repeat",
            Transition::Resolve => "resolved",
        }
    }
}

/// The value below which a firing alert resolves.
pub fn clear_below(rule: &AlertRule) -> f64 {
    rule.limit - rule.clear_margin
}

/// The state machine: what `value`, measured at `now_ms`, does to an alert of `rule` in `phase`. Fires above the
/// limit; resolves only below `limit - clear_margin`; repeats while firing every `repeat_minutes`, if set.
pub fn step(phase: Phase, rule: &AlertRule, value: f64, now_ms: i64) -> Option<Transition> {
    match phase {
        Phase::Ok => (value > rule.limit).then_some(Transition::Fire),
        Phase::Firing { .. } if value < clear_below(rule) => Some(Transition::Resolve),
        Phase::Firing { last_mail_ms } => repeat_due(rule, last_mail_ms, now_ms).then_some(Transition::Repeat),
    }
}

/// Whether a firing alert of `rule` last mailed at `last_mail_ms` is due for a repeat mail at `now_ms`.
pub fn repeat_due(rule: &AlertRule, last_mail_ms: i64, now_ms: i64) -> bool {
    rule.repeat_minutes.is_some_and(|m| now_ms.saturating_sub(last_mail_ms) >= i64::from(m) * 60_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_schema::report::{CpuStats, DiskUsage};

    fn rule(kind: AlertKind, limit: f64, clear: f64) -> AlertRule {
        AlertRule { kind, limit, mount: None, clear_margin: clear, repeat_minutes: None, job: None, metric: None }
    }

    /// Runs a series through the state machine; returns the transitions.
    fn run(rule: &AlertRule, values: &[f64]) -> Vec<(usize, Transition)> {
        let mut phase = Phase::Ok;
        let mut out = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let now = i as i64 * 10_000;
            if let Some(t) = step(phase, rule, *v, now) {
                phase = match t {
                    Transition::Resolve => Phase::Ok,
                    _ => Phase::Firing { last_mail_ms: now },
                };
                out.push((i, t));
            }
        }
        out
    }

    #[test]
    fn job_and_metric_rules_measure_their_own_job_only() {
        use vigil_schema::command::{CommandRun, Metric, RunOutcome};
        let ran = |outcome, metrics| Stats {
            command: Some(CommandRun {
                started_ms: 0,
                duration_ms: 0,
                outcome,
                stdout: String::new(),
                stderr: String::new(),
                stdout_truncated: false,
                stderr_truncated: false,
                metrics,
                parse_errors: vec![],
            }),
            ..Stats::default()
        };
        let job = AlertRule { job: Some("backup".into()), ..rule(AlertKind::Job, 0.5, 0.0) };
        let value = |s: &Stats| measure(&job, s).map(|m| m.value);
        assert_eq!(value(&ran(RunOutcome::Exited { code: 0 }, vec![])), Some(0.0));
        assert_eq!(value(&ran(RunOutcome::Exited { code: 2 }, vec![])), Some(1.0));
        assert_eq!(value(&ran(RunOutcome::TimedOut, vec![])), Some(1.0));
        assert_eq!(value(&ran(RunOutcome::Refused { reason: "no".into() }, vec![])), None, "nothing ran");
        assert!(applies(&job, "backup") && !applies(&job, "other"));
        assert_eq!(rule_key(&job), "job:backup");
        // Failing, failing, succeeding: one firing and one resolve.
        assert_eq!(run(&job, &[1.0, 1.0, 0.0, 0.0]), [(0, Transition::Fire), (2, Transition::Resolve)]);

        let metric =
            AlertRule { job: Some("q".into()), metric: Some("len".into()), ..rule(AlertKind::Metric, 10.0, 0.0) };
        let m = |name: &str, value| Metric { name: name.into(), labels: vec![], value };
        let s = ran(RunOutcome::Exited { code: 0 }, vec![m("other", 99.0), m("len", 12.0)]);
        assert_eq!(measure(&metric, &s).map(|m| m.value), Some(12.0));
        assert_eq!(rule_key(&metric), "metric:q:len");
        assert!(!applies(&metric, "other") && applies(&rule(AlertKind::Cpu, 1.0, 0.0), "anything"));
    }

    #[test]
    fn hovering_at_the_limit_fires_once_and_resolves_once() {
        let r = rule(AlertKind::Cpu, 90.0, 5.0);
        let series = [80.0, 91.0, 89.0, 90.5, 88.0, 92.0, 86.0, 90.1, 84.9, 89.0, 91.0];
        assert_eq!(run(&r, &series), vec![(1, Transition::Fire), (8, Transition::Resolve), (10, Transition::Fire)]);
    }

    #[test]
    fn the_limit_itself_does_not_fire_and_zero_margin_resolves_just_below() {
        let r = rule(AlertKind::Memory, 50.0, 0.0);
        assert_eq!(run(&r, &[50.0, 50.1, 50.0, 49.9]), vec![(1, Transition::Fire), (3, Transition::Resolve)]);
    }

    #[test]
    fn repeats_only_after_the_interval_while_firing() {
        let r = AlertRule { repeat_minutes: Some(1), ..rule(AlertKind::Load, 4.0, 0.4) };
        // Samples every 10 s, all above the limit: fire at 0, repeat at 60 s and 120 s.
        let got = run(&r, &[5.0; 13]);
        assert_eq!(got, vec![(0, Transition::Fire), (6, Transition::Repeat), (12, Transition::Repeat)]);
        let once = rule(AlertKind::Load, 4.0, 0.4);
        assert_eq!(run(&once, &[5.0; 13]), vec![(0, Transition::Fire)]);
    }

    #[test]
    fn keys_and_measures() {
        let mut d = rule(AlertKind::Disk, 90.0, 5.0);
        assert_eq!(rule_key(&d), "disk");
        let disk = |m: &str, p: f32| DiskUsage {
            mount_point: m.into(),
            total: 100,
            used: 0,
            free: 0,
            used_pct: p,
            inodes_total: None,
            inodes_used: None,
        };
        let stats = Stats {
            cpu: Some(CpuStats { total_pct: 12.5, per_core_pct: vec![], load1: 3.25, load5: 0.0, load15: 0.0 }),
            disk_usage: Some(vec![disk("/", 40.0), disk("/data", 95.0)]),
            ..Stats::default()
        };
        assert_eq!(measure(&d, &stats), Some(Measured { value: 95.0, mount: Some("/data".into()) }));
        d.mount = Some("/".into());
        assert_eq!(rule_key(&d), "disk:/");
        assert_eq!(measure(&d, &stats).map(|m| m.value), Some(40.0));
        d.mount = Some("/nope".into());
        assert_eq!(measure(&d, &stats), None);
        assert_eq!(measure(&rule(AlertKind::Cpu, 1.0, 0.0), &stats).map(|m| m.value), Some(12.5));
        assert_eq!(measure(&rule(AlertKind::Load, 1.0, 0.0), &stats).map(|m| m.value), Some(3.25));
        assert_eq!(measure(&rule(AlertKind::Memory, 1.0, 0.0), &stats), None);
        assert_eq!(measure(&rule(AlertKind::Silence, 1.0, 0.0), &stats), None);
    }
}
