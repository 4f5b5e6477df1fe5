//! Alert rules applied to the database, always inside a write transaction of the ingest writer.
//!
//! [`on_report`] runs in the transaction that stores a report: each value rule of the host is stepped with the
//! report's value, a firing silence alert resolves, and security events are recorded. [`check_silence`] runs every
//! few seconds (by serve's silence task): a host with no report for `limit` times its shortest job interval goes silent.
//!
//! Every transition writes the alert's new `alert_state`, one `alert_events` row and, when `[smtp]` is configured
//! and the host has a `mail` address, one `outbox` row: in the same transaction, so a transition is never recorded
//! without its mail nor mailed without being recorded. Without `[smtp]` or a `mail`, events are still recorded (they
//! show in `vigil alerts` and `vigil status`), but no outbox row is written: nothing would ever send it, and turning
//! SMTP on later should not flush a backlog of stale mail. Rules and recipients come from the config in force when
//! the report is stored, so an edit of clients.xml applies to the next report.

use std::collections::HashMap;
use std::time::Duration;

use super::message::{self, AlertMail, HISTORY_LEN};
use super::{Phase, Transition, applies, measure, repeat_due, rule_key, step};
use crate::config::{AlertKind, AlertRule, Config, Host};
use crate::store::alerts::{self as rows, NewEvent, StateRow};
use crate::store::{Incoming, StoreError, Tx};

/// How often serve's silence task runs [`check_silence`] and [`flush_security_digests`].
pub const SILENCE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Where `host`'s mail goes: its `mail`, when SMTP is configured.
fn recipient<'a>(config: &Config, host: &'a Host) -> Option<&'a str> {
    config.smtp.as_ref().and(host.mail.as_deref())
}

/// One transition to record.
struct Change<'a> {
    host: &'a str,
    ip: &'a str,
    rule: &'a AlertRule,
    key: &'a str,
    transition: Transition,
    value: f64,
    mount: Option<&'a str>,
    previous: Option<StateRow>,
    interval_s: Option<u32>,
}

/// Writes the state, the event and (with a recipient) the outbox row of one transition.
fn record(conn: Tx<'_>, c: &Change<'_>, to: Option<&str>, now: i64) -> Result<StateRow, StoreError> {
    let firing_since = c.previous.as_ref().filter(|p| p.firing).map(|p| p.since_ms);
    let state = StateRow {
        firing: c.transition != Transition::Resolve,
        value: Some(c.value),
        limit: c.rule.limit,
        since_ms: match c.transition {
            Transition::Repeat => firing_since.unwrap_or(now),
            _ => now,
        },
        last_mail_ms: now,
    };
    rows::set_state(conn, c.host, c.key, &state, now)?;
    let history = if to.is_some() {
        rows::recent_values(conn, c.host, c.rule.kind, c.rule.mount.as_deref(), HISTORY_LEN)?
    } else {
        Vec::new()
    };
    let mail = AlertMail {
        host: c.host,
        ip: c.ip,
        rule: c.rule,
        transition: c.transition,
        value: c.value,
        mount: c.mount,
        at_ms: now,
        firing_since_ms: firing_since,
        history: &history,
        interval_s: c.interval_s,
    };
    let subject = message::subject(&mail);
    let detail = subject.trim_start_matches("[vigil] ");
    let event = rows::insert_event(
        conn,
        &NewEvent {
            at_ms: now,
            host: c.host,
            ip: c.ip,
            rule: c.key,
            state: c.transition.event_state(),
            value: Some(c.value),
            limit: Some(c.rule.limit),
            detail,
        },
    )?;
    tracing::info!(host = c.host, rule = c.key, "alert {detail}");
    if let Some(to) = to {
        rows::enqueue_mail(conn, Some(event), now, to, &subject, &message::body(&mail))?;
    }
    Ok(state)
}

fn phase_of(state: Option<&StateRow>) -> Phase {
    match state {
        Some(s) if s.firing => Phase::Firing { last_mail_ms: s.last_mail_ms },
        _ => Phase::Ok,
    }
}

/// The alert states of one batch's hosts, read in one statement when the batch's first report is evaluated and
/// kept current as its reports make transitions (see [`rows::states_of`]). Made for one transaction: the rows it
/// holds are those that transaction sees and writes (on PostgreSQL, under the batch's host locks).
#[derive(Debug, Default)]
pub struct BatchStates {
    /// host -> rule -> state, once read.
    loaded: Option<HashMap<String, HashMap<String, StateRow>>>,
}

impl BatchStates {
    /// The state of `host`'s `rule`, reading the states of every host of `batch` on the first call.
    fn get(
        &mut self,
        conn: Tx<'_>,
        batch: &[Incoming],
        host: &str,
        rule: &str,
    ) -> Result<Option<StateRow>, StoreError> {
        let states = match &mut self.loaded {
            Some(states) => states,
            None => {
                let mut hosts: Vec<&str> = batch.iter().map(|inc| inc.host.as_str()).collect();
                hosts.sort_unstable();
                hosts.dedup();
                self.loaded.insert(rows::states_of(conn, &hosts)?)
            }
        };
        Ok(states.get(host).and_then(|rules| rules.get(rule)).cloned())
    }

    fn set(&mut self, host: &str, rule: &str, state: StateRow) {
        if let Some(states) = &mut self.loaded {
            states.entry(host.to_owned()).or_default().insert(rule.to_owned(), state);
        }
    }
}

/// Applies `config`'s rules for the report's host to a report just stored (in the same transaction). `batch` holds
/// every report of the transaction (`inc` among them) and `states` their hosts' alert states: one per transaction.
pub fn on_report(
    conn: Tx<'_>,
    config: &Config,
    batch: &[Incoming],
    states: &mut BatchStates,
    inc: &Incoming,
    now: i64,
) -> Result<(), StoreError> {
    let Some(host) = config.host(&inc.host) else { return Ok(()) };
    let to = recipient(config, host);
    for rule in &host.alerts {
        if !applies(rule, &inc.report.job) {
            continue;
        }
        let key = rule_key(rule);
        let previous = states.get(conn, batch, &host.name, &key)?;
        let (transition, value, mount) = if rule.kind == AlertKind::Silence {
            // A report ends a silence. The value told is how long the host was silent.
            match &previous {
                Some(p) if p.firing => {
                    let silent_s = p.value.unwrap_or(0.0) + (now - p.since_ms).max(0) as f64 / 1000.0;
                    (Transition::Resolve, silent_s, None)
                }
                _ => continue,
            }
        } else {
            let Some(m) = measure(rule, &inc.report.stats) else { continue };
            let Some(t) = step(phase_of(previous.as_ref()), rule, m.value, now) else { continue };
            (t, m.value, m.mount)
        };
        let interval_s =
            (rule.kind == AlertKind::Silence).then(|| config.schedule_for(&host.name).min_interval_s()).flatten();
        let change = Change {
            host: &host.name,
            ip: &inc.ip,
            rule,
            key: &key,
            transition,
            value,
            mount: mount.as_deref(),
            previous,
            interval_s,
        };
        let written = record(conn, &change, to, now)?;
        states.set(&host.name, &key, written);
    }
    if let Some(events) = inc.report.stats.security_events.as_ref().filter(|e| !e.events.is_empty()) {
        let (subject, body) = message::security(&host.name, &inc.ip, now, events);
        let detail = subject.trim_start_matches("[vigil] ");
        let event = rows::insert_event(
            conn,
            &NewEvent {
                at_ms: now,
                host: &host.name,
                ip: &inc.ip,
                rule: "security",
                state: "security",
                value: Some(events.events.len() as f64),
                limit: None,
                detail,
            },
        )?;
        if let Some(to) = to {
            let digest = rows::digest(conn, &host.name)?;
            if digest.is_none_or(|d| now.saturating_sub(d.last_mail_ms) >= digest_ms(config)) {
                // The first security report of a quiet period is mailed at once, in full (with any events still
                // waiting for a digest).
                let after = digest.map_or(0, |d| d.last_event_id);
                let waiting = rows::security_events_after(conn, &host.name, after)?;
                let (subject, body) = match waiting.as_slice() {
                    [only] if only.id == event => (subject, body),
                    _ => message::security_digest(&host.name, &inc.ip, &waiting),
                };
                rows::enqueue_mail(conn, Some(event), now, to, &subject, &body)?;
                let last_event_id = waiting.last().map_or(event, |e| e.id.max(event));
                rows::set_digest(conn, &host.name, rows::DigestRow { last_mail_ms: now, last_event_id })?;
            }
            // Otherwise the event waits: [`flush_security_digests`] mails it with the others once the period is over.
        }
    }
    Ok(())
}

/// At most one security mail per host per `[alerts] security_digest` (default 5 minutes): events in between are
/// gathered into one digest mail.
fn digest_ms(config: &Config) -> i64 {
    i64::try_from(config.alerts.security_digest.as_millis()).unwrap_or(i64::MAX)
}

/// Queues the digest mail of every host whose security events waited for `[alerts] security_digest` since its last
/// security mail. A host without a recipient any more gets no mail; its waiting events are marked covered (they
/// stay in the history). Returns the number of mails queued.
pub fn flush_security_digests(
    conn: Tx<'_>,
    config: &Config,
    now: i64,
    owner: Option<&Owner<'_>>,
) -> Result<usize, StoreError> {
    let mut queued = 0;
    for (host, d) in rows::digests_waiting(conn)? {
        if now.saturating_sub(d.last_mail_ms) < digest_ms(config) || !owns(conn, owner, &host)? {
            continue;
        }
        let waiting = rows::security_events_after(conn, &host, d.last_event_id)?;
        let Some(last) = waiting.last().map(|e| e.id) else { continue };
        let configured = config.host(&host);
        match configured.and_then(|h| recipient(config, h)) {
            Some(to) => {
                let ip = configured.map_or("", |h| h.ip.as_str());
                let (subject, body) = message::security_digest(&host, ip, &waiting);
                rows::enqueue_mail(conn, Some(last), now, to, &subject, &body)?;
                rows::set_digest(conn, &host, rows::DigestRow { last_mail_ms: now, last_event_id: last })?;
                queued += 1;
            }
            None => rows::set_digest(conn, &host, rows::DigestRow { last_event_id: last, ..d })?,
        }
    }
    Ok(queued)
}

/// The node whose owned hosts a periodic check looks at (several nodes share the database): its name and its leases'
/// epochs. `None`: every host (a node alone, tests).
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub node: &'a str,
    pub held: &'a std::collections::HashMap<String, i64>,
}

/// Whether the check may act on `host`: no owner given, or the owner's lease on it holds in this transaction.
fn owns(conn: Tx<'_>, owner: Option<&Owner<'_>>, host: &str) -> Result<bool, StoreError> {
    let Some(o) = owner else { return Ok(true) };
    let Some(epoch) = o.held.get(host) else { return Ok(false) };
    crate::store::leases::holds(conn, host, o.node, *epoch)
}

/// Fires silence alerts of hosts with no report for `limit` x their shortest job interval, repeats them when due,
/// and clears (without mail) firing alerts whose rule or host left the config. A host that never reported is not
/// alerted on (`vigil status` shows it as silent); the silence of a host is counted from serve's start at the
/// earliest (`started_ms`), so a server restart does not raise alerts before agents had a chance to reconnect.
/// Returns the number of transitions.
pub fn check_silence(
    conn: Tx<'_>,
    config: &Config,
    started_ms: i64,
    now: i64,
    owner: Option<&Owner<'_>>,
) -> Result<usize, StoreError> {
    let mut changes = 0;
    for host in &config.clients {
        if !host.alerts.iter().any(|r| r.kind == AlertKind::Silence) || !owns(conn, owner, &host.name)? {
            continue;
        }
        for rule in host.alerts.iter().filter(|r| r.kind == AlertKind::Silence) {
            let Some(interval) = config.schedule_for(&host.name).min_interval_s() else { continue };
            let Some(last) = rows::last_report_ms(conn, &host.name)? else { continue };
            let silent_ms = now - last.max(started_ms);
            let key = rule_key(rule);
            let previous = rows::state(conn, &host.name, &key)?;
            let transition = match phase_of(previous.as_ref()) {
                Phase::Ok if silent_ms as f64 > rule.limit * f64::from(interval) * 1000.0 => Transition::Fire,
                Phase::Firing { last_mail_ms } if repeat_due(rule, last_mail_ms, now) => Transition::Repeat,
                _ => continue,
            };
            let change = Change {
                host: &host.name,
                ip: &host.ip,
                rule,
                key: &key,
                transition,
                value: (now - last).max(0) as f64 / 1000.0,
                mount: None,
                previous,
                interval_s: Some(interval),
            };
            record(conn, &change, recipient(config, host), now)?;
            changes += 1;
        }
    }
    for f in rows::firing(conn)? {
        let configured = config.host(&f.host).is_some_and(|h| h.alerts.iter().any(|r| rule_key(r) == f.rule));
        if configured || (config.host(&f.host).is_some() && !owns(conn, owner, &f.host)?) {
            continue;
        }
        let ip = config.host(&f.host).map_or("", |h| h.ip.as_str());
        let state = StateRow { firing: false, value: f.value, limit: f.limit, since_ms: now, last_mail_ms: now };
        rows::set_state(conn, &f.host, &f.rule, &state, now)?;
        let detail = format!("CLEARED {} on {}: the rule is no longer configured", f.rule, f.host);
        let ev = NewEvent {
            at_ms: now,
            host: &f.host,
            ip,
            rule: &f.rule,
            state: "cleared",
            value: f.value,
            limit: Some(f.limit),
            detail: &detail,
        };
        rows::insert_event(conn, &ev)?;
        changes += 1;
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use std::path::Path;
    use vigil_schema::report::{CpuStats, Report, SecurityEvent, SecurityEventKind, SecurityEvents, Stats};

    const JOBS: &str = "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"data\"\n\n\
        [smtp]\nhost = \"127.0.0.1\"\nport = 2525\ntls = \"none\"\nfrom = \"vigil@localhost\"\n\n\
        [[job]]\nname = \"v\"\ncollectors = [\"cpu\"]\ninterval = \"10s\"\n";

    fn config(alerts: &str, jobs: &str) -> Config {
        let clients = format!(
            "<clients><client name=\"web\" ip=\"10.0.0.1\" username=\"u\" mail=\"ops@example.com\">{alerts}</client></clients>"
        );
        Config::from_sources(Path::new("c.xml"), &clients, Path::new("j.toml"), jobs).unwrap().config
    }

    fn report(seq: u64, cpu: f32) -> Incoming {
        Incoming {
            agent_id: "a".into(),
            host: "web".into(),
            ip: "10.0.0.1".into(),
            received_at_ms: 1_000 * seq as i64,
            report: Report {
                seq,
                job: "v".into(),
                collected_at_ms: 1_000 * seq as i64,
                dropped: 0,
                stats: Stats {
                    cpu: Some(CpuStats { total_pct: cpu, per_core_pct: vec![], load1: 0.0, load5: 0.0, load15: 0.0 }),
                    ..Stats::default()
                },
            },
        }
    }

    fn ingest(store: &mut Store, cfg: &Config, inc: Incoming) {
        let now = inc.received_at_ms;
        let batch = [inc];
        let mut states = BatchStates::default();
        store.insert_reports_with(&batch, |c, i| on_report(c, cfg, &batch, &mut states, i, now)).unwrap();
    }

    fn subjects(store: &Store) -> Vec<String> {
        rows::due_mail(store.view(), i64::MAX, 100).unwrap().into_iter().map(|r| r.subject).collect()
    }

    #[test]
    fn a_transition_queues_one_mail_with_history() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("v.db")).unwrap();
        let cfg = config("<alert type=\"cpu\" limit=\"90%\"/>", JOBS);
        for (seq, v) in [(1, 50.0), (2, 93.25), (3, 95.0), (4, 89.0), (5, 84.0)] {
            ingest(&mut store, &cfg, report(seq, v));
        }
        assert_eq!(
            subjects(&store),
            ["[vigil] FIRING cpu on web (93.2% > 90%)", "[vigil] RESOLVED cpu on web (84.0% < 85%)"]
        );
        let mail = &rows::due_mail(store.view(), i64::MAX, 1).unwrap()[0];
        assert_eq!(mail.recipient, "ops@example.com");
        assert!(mail.body.contains("50.0%") && mail.body.contains("IP:     10.0.0.1"), "{}", mail.body);
        assert_eq!(rows::events_since(store.view(), 0).unwrap().len(), 2);
        assert!(rows::firing(store.view()).unwrap().is_empty());
    }

    #[test]
    fn one_batch_sees_its_own_transitions_and_the_states_before_it_on_each_engine() {
        crate::store::each_engine(|store| {
            let client = |name, ip| {
                format!(
                    "<client name=\"{name}\" ip=\"{ip}\" username=\"u\" mail=\"ops@example.com\"><alert type=\"cpu\" limit=\"90%\"/></client>"
                )
            };
            let clients = format!("<clients>{}{}</clients>", client("web", "10.0.0.1"), client("db", "10.0.0.2"));
            let cfg = Config::from_sources(Path::new("c.xml"), &clients, Path::new("j.toml"), JOBS).unwrap().config;
            let mut other = report(1, 99.0);
            other.host = "db".into();
            other.ip = "10.0.0.2".into();
            other.agent_id = "a2".into();
            ingest(store, &cfg, other.clone()); // another host's state, firing before the batch
            // One transaction: web crosses the limit, stays above it, drops below the clear margin; db resolves.
            let mut batch: Vec<Incoming> =
                [(1, 50.0), (2, 95.0), (3, 97.0), (4, 80.0)].map(|(s, v)| report(s, v)).into();
            other.report.seq = 2;
            other.report.stats.cpu.as_mut().unwrap().total_pct = 10.0;
            batch.push(other);
            let now = 5_000;
            let mut states = BatchStates::default();
            store.insert_reports_with(&batch, |c, i| on_report(c, &cfg, &batch, &mut states, i, now)).unwrap();
            assert_eq!(
                subjects(store),
                [
                    "[vigil] FIRING cpu on db (99.0% > 90%)",
                    "[vigil] FIRING cpu on web (95.0% > 90%)",
                    "[vigil] RESOLVED cpu on web (80.0% < 85%)",
                    "[vigil] RESOLVED cpu on db (10.0% < 85%)",
                ],
                "one transition each, in order: the batch read the states once and kept them current"
            );
            assert!(rows::firing(store.view()).unwrap().is_empty());
        });
    }

    #[test]
    fn no_smtp_records_events_but_queues_nothing_and_duplicates_do_not_evaluate() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("v.db")).unwrap();
        let jobs = "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"data\"\n\n\
            [[job]]\nname = \"v\"\ncollectors = [\"cpu\"]\ninterval = \"10s\"\n";
        let cfg = config("<alert type=\"cpu\" limit=\"90%\"/>", jobs);
        assert!(cfg.smtp.is_none());
        ingest(&mut store, &cfg, report(1, 99.0));
        assert!(subjects(&store).is_empty());
        assert_eq!(rows::firing(store.view()).unwrap().len(), 1);
        // The same report again is a duplicate: nothing evaluated.
        ingest(&mut store, &cfg, report(1, 10.0));
        assert_eq!(rows::firing(store.view()).unwrap().len(), 1);
    }

    #[test]
    fn silence_fires_after_the_intervals_and_a_report_resolves_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("v.db")).unwrap();
        let cfg = config("<alert type=\"silence\" limit=\"3\"/>", JOBS);
        let check = |store: &mut Store, now| store.write_tx(|c| check_silence(c, &cfg, 0, now, None)).unwrap();
        assert_eq!(check(&mut store, 1_000_000), 0, "a host that never reported is not alerted on");
        ingest(&mut store, &cfg, report(1, 10.0)); // received at 1 s
        assert_eq!(check(&mut store, 31_000), 0, "30 s is exactly 3 intervals: not yet");
        assert_eq!(check(&mut store, 31_001), 1);
        assert_eq!(check(&mut store, 60_000), 0, "fires once");
        let mut back = report(2, 10.0);
        back.received_at_ms = 61_000;
        ingest(&mut store, &cfg, back);
        let s = subjects(&store);
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(s[0].starts_with("[vigil] FIRING silence on web (no report for 30s > 3 x 10s)"), "{s:?}");
        assert_eq!(s[1], "[vigil] RESOLVED silence on web (reporting again after 60s)");
    }

    #[test]
    fn a_rule_removed_while_firing_is_cleared_without_mail() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("v.db")).unwrap();
        let cfg = config("<alert type=\"cpu\" limit=\"90%\"/>", JOBS);
        ingest(&mut store, &cfg, report(1, 99.0));
        let without = config("", JOBS);
        assert_eq!(store.write_tx(|c| check_silence(c, &without, 0, 5_000, None)).unwrap(), 1);
        assert!(rows::firing(store.view()).unwrap().is_empty());
        assert_eq!(subjects(&store).len(), 1, "only the firing mail");
        assert_eq!(rows::events_since(store.view(), 0).unwrap().last().unwrap().state, "cleared");
    }

    #[test]
    fn security_mail_is_one_per_host_per_digest_period_and_loses_no_event() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("v.db")).unwrap();
        // A period other than the default: the digest follows `[alerts] security_digest`.
        let cfg = config("", &format!("{JOBS}\n[alerts]\nsecurity_digest = \"2m\"\n"));
        const PERIOD: i64 = 120_000;
        assert_eq!(digest_ms(&cfg), PERIOD);
        let ev = SecurityEvent {
            time: 5,
            kind: SecurityEventKind::LoginFailed,
            user: Some("root".into()),
            source: None,
            message: "Failed password for root".into(),
        };
        let with_events = |seq| {
            let mut r = report(seq, 1.0);
            r.report.stats.security_events =
                Some(SecurityEvents { source: None, events: vec![ev.clone(), ev.clone()] });
            r
        };
        // A storm: a report with events every second for 20 s.
        for seq in 1..=20 {
            ingest(&mut store, &cfg, with_events(seq));
        }
        let mut empty = report(21, 1.0);
        empty.report.stats.security_events = Some(SecurityEvents::default());
        ingest(&mut store, &cfg, empty);
        assert_eq!(subjects(&store), ["[vigil] SECURITY web: 2 events (2 login_failed)"], "the first mails at once");
        assert_eq!(rows::events_since(store.view(), 0).unwrap().len(), 20, "every report's events are recorded");

        // Before the period is over, nothing more; after it, one digest of the 19 that waited.
        assert_eq!(store.write_tx(|c| flush_security_digests(c, &cfg, 1_000 + PERIOD - 1, None)).unwrap(), 0);
        assert_eq!(store.write_tx(|c| flush_security_digests(c, &cfg, 1_000 + PERIOD, None)).unwrap(), 1);
        let mail = rows::due_mail(store.view(), i64::MAX, 100).unwrap();
        assert_eq!(mail.len(), 2);
        assert_eq!(mail[1].subject, "[vigil] SECURITY web: 19 more security reports (38 events)");
        assert_eq!(mail[1].body.matches("SECURITY web: 2 events").count(), 19, "{}", mail[1].body);
        assert_eq!(store.write_tx(|c| flush_security_digests(c, &cfg, i64::MAX / 2, None)).unwrap(), 0, "all covered");

        // A report after a quiet period is mailed at once again.
        let mut later = with_events(22);
        later.received_at_ms = 1_000 + 3 * PERIOD;
        ingest(&mut store, &cfg, later);
        assert_eq!(rows::due_mail(store.view(), i64::MAX, 100).unwrap().len(), 3);
    }
}
