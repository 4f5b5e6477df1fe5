//! Self-healing: `vigil serve`'s repair supervisor. When an SSH host with an agent registered falls silent, it runs
//! the same bootstrap plan as `vigil bootstrap` on it (probe, reinstall if needed, restart, confirm a new report):
//! [`crate::bootstrap::bootstrap_ssh`] with a [`Ctx`] whose database reads and writes go through the ingest writer.
//!
//! When a host is due ([`due`]):
//! - it has SSH credentials (`transport="ssh"`), `repair` is not `"off"`, and an agent is registered for it (a host
//!   never bootstrapped is not installed by serve);
//! - it is silent: no report for its silence limit (`<alert type="silence" limit="N">`: N times its shortest job
//!   interval) or, without a silence rule, [`SILENT_INTERVALS`] intervals; counted from serve's start at the
//!   earliest, so a restart does not repair a fleet that had no time to reconnect; or someone asked
//!   ([`RepairHandle::request`]: the tunnel manager when its session finds no agent running);
//! - its last attempt is older than `[server] repair_backoff`, doubled after each failure in a row (at most
//!   [`MAX_BACKOFF_FACTOR`] times);
//! - its last attempt was not refused: a host presenting a changed (or unknown) host key is never repaired again by
//!   serve; that is an alert for a person, until a person runs `vigil bootstrap` on it.
//!
//! A repair that finds the agent running with current credentials starts nothing and counts as failed (it cannot
//! make a host that cannot reach the endpoint deliver). At most `[server] repair_parallel` repairs run at once. Each attempt ends in one `alert_events` row (rule
//! `repair`: state `resolved` when repaired, `firing` when it failed or was refused) and the host's `repairs` row,
//! written together; the [`MAIL_AFTER_FAILURES`]th failure in a row, and a refusal, also queue one mail.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::bootstrap::remote::RemoteError;
use crate::bootstrap::{BootstrapError, Ctx, bootstrap_ssh};
use crate::config::{AlertKind, Config, Host, Transport};
use crate::ingest::IngestHandle;
use crate::store::alerts::{self as rows, NewEvent};
use crate::store::repairs::{self, RepairOutcome, RepairRow};
use crate::store::{Store, StoreError};

/// How often silent hosts are looked for.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Without a silence rule, a host is silent after this many of its shortest job interval without a report.
pub const SILENT_INTERVALS: u32 = 3;
/// A host is never judged silent sooner than this, whatever its interval.
pub const MIN_SILENCE: Duration = Duration::from_secs(10);
/// The backoff doubles after each failure in a row, up to this factor.
pub const MAX_BACKOFF_FACTOR: u32 = 16;
/// The failure in a row that is mailed (once per streak).
pub const MAIL_AFTER_FAILURES: u32 = 3;
/// How many requests ([`RepairHandle::request`]) wait at most; more are dropped (the silence check still runs).
const REQUEST_QUEUE: usize = 256;

/// Asks the supervisor to repair a host now (still subject to `repair="off"`, the backoff and refusals). Cloneable;
/// for the tunnel manager, when its session finds no agent running.
#[derive(Debug, Clone)]
pub struct RepairHandle {
    tx: mpsc::Sender<String>,
}

impl RepairHandle {
    /// Queues a repair of `host`; false when the queue is full or the supervisor stopped.
    pub fn request(&self, host: &str) -> bool {
        self.tx.try_send(host.to_owned()).is_ok()
    }
}

/// The supervisor's end of [`RepairHandle`].
#[derive(Debug)]
pub struct Requests {
    rx: mpsc::Receiver<String>,
}

/// A handle and the requests it sends, for [`run`].
pub fn channel() -> (RepairHandle, Requests) {
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
    (RepairHandle { tx }, Requests { rx })
}

/// What the supervisor knows of one candidate host, read on the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostState {
    /// When its current registration was made; `None`: no agent registered.
    pub registered_at_ms: Option<i64>,
    pub last_report_ms: Option<i64>,
    pub last_repair: Option<RepairRow>,
}

/// How long `host` may go without a report before it is repaired; `None` when it runs no job.
pub fn silence_limit(config: &Config, host: &Host) -> Option<Duration> {
    let interval = config.schedule_for(&host.name).min_interval_s()?;
    let intervals = host
        .alerts
        .iter()
        .find(|r| r.kind == AlertKind::Silence)
        .map_or(f64::from(SILENT_INTERVALS), |r| r.limit.max(1.0));
    Some(Duration::from_secs_f64(intervals * f64::from(interval)).max(MIN_SILENCE))
}

/// How long after an attempt that left `failures` failures in a row the next may start.
pub fn backoff_after(base: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(MAX_BACKOFF_FACTOR.trailing_zeros());
    base.saturating_mul(factor)
}

/// Whether `host` is repaired now: see the module's list. `asked`: a request skips the silence check.
pub fn due(config: &Config, host: &Host, st: &HostState, started_ms: i64, now: i64, asked: bool) -> bool {
    if host.transport != Transport::Ssh || !host.repair {
        return false;
    }
    let Some(registered) = st.registered_at_ms else { return false };
    if let Some(last) = &st.last_repair {
        let since_attempt = now - last.last_attempt_ms;
        match last.outcome {
            // Refused: only a bootstrap by a person (a new registration) lifts it.
            RepairOutcome::Refused if registered <= last.last_attempt_ms => return false,
            RepairOutcome::Refused => {}
            RepairOutcome::Failed | RepairOutcome::Repaired => {
                let wait = backoff_after(config.server.repair_backoff, last.failures);
                if since_attempt < i64::try_from(wait.as_millis()).unwrap_or(i64::MAX) {
                    return false;
                }
            }
        }
    }
    if asked {
        return true;
    }
    let Some(limit) = silence_limit(config, host) else { return false };
    let quiet_since = st.last_report_ms.unwrap_or(registered).max(registered).max(started_ms);
    now - quiet_since > i64::try_from(limit.as_millis()).unwrap_or(i64::MAX)
}

/// The state of every candidate host (SSH, repair on), in one call on the writer.
fn host_states(store: &mut Store, names: &[String]) -> Result<HashMap<String, HostState>, StoreError> {
    let agents = store.agents()?;
    let mut out = HashMap::new();
    for name in names {
        let registered_at_ms = agents.iter().filter(|a| &a.host == name).map(|a| a.registered_at_ms).max();
        let st = HostState {
            registered_at_ms,
            last_report_ms: rows::last_report_ms(store.view(), name)?,
            last_repair: repairs::repair_of(store.view(), name)?,
        };
        out.insert(name.clone(), st);
    }
    Ok(out)
}

/// Runs the supervisor until `cancel` fires; in-flight repairs are cancelled and awaited. A repair cut short by
/// shutdown leaves what bootstrap leaves when interrupted (staged files, perhaps a new registration); the host stays
/// silent and is repaired again after the restart (the plan is safe to re-run).
pub async fn run(
    ingest: IngestHandle,
    config_rx: watch::Receiver<Arc<Config>>,
    fingerprint: String,
    mut requests: Requests,
    ownership: crate::lease::Ownership,
    cancel: CancellationToken,
) {
    let started_ms = vigil_sys::clock::now_ms();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut tasks: JoinSet<String> = JoinSet::new();
    let mut asked: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(done) = tasks.join_next() => {
                if let Ok(host) = done {
                    in_flight.remove(&host);
                }
                continue;
            }
            Some(host) = requests.rx.recv() => { asked.insert(host); }
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let config = config_rx.borrow().clone();
        let names: Vec<String> = config
            .clients
            .iter()
            .filter(|h| h.transport == Transport::Ssh && h.repair && !in_flight.contains(&h.name))
            // Only the host's owner repairs it (several nodes may share the database).
            .filter(|h| ownership.owns(&h.name))
            .map(|h| h.name.clone())
            .collect();
        if names.is_empty() {
            asked.clear();
            continue;
        }
        let states = match ingest.exec(move |s| host_states(s, &names)).await {
            Ok(Ok(st)) => st,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "repair: cannot read the hosts' state");
                continue;
            }
            Err(_) => break,
        };
        let now = vigil_sys::clock::now_ms();
        for host in &config.clients {
            if in_flight.len() >= config.server.repair_parallel {
                break;
            }
            let Some(st) = states.get(&host.name) else { continue };
            if !due(&config, host, st, started_ms, now, asked.contains(&host.name)) {
                continue;
            }
            in_flight.insert(host.name.clone());
            let why = match st.last_report_ms {
                _ if asked.contains(&host.name) => "repair requested".to_owned(),
                Some(t) => format!("silent for {} s", (now - t).max(0) / 1000),
                None => "no report since it was bootstrapped".to_owned(),
            };
            let span = tracing::info_span!("repair", host = %host.name);
            let job = repair_one(ingest.clone(), config.clone(), host.clone(), fingerprint.clone(), why);
            let cancel = cancel.clone();
            tasks.spawn(
                async move {
                    let name = job.1.clone();
                    tokio::select! {
                        _ = job.0 => {}
                        _ = cancel.cancelled() => tracing::info!("repair cancelled by shutdown"),
                    }
                    name
                }
                .instrument(span),
            );
        }
        asked.clear();
    }
    tasks.shutdown().await;
}

/// One repair of `host` and its record; with the host's name.
fn repair_one(
    ingest: IngestHandle,
    config: Arc<Config>,
    host: Host,
    fingerprint: String,
    why: String,
) -> (impl std::future::Future<Output = ()> + Send, String) {
    let name = host.name.clone();
    let fut = async move {
        tracing::info!(reason = %why, "repairing");
        let result = match Ctx::in_serve(config.clone(), fingerprint, ingest.clone()) {
            Ok(ctx) => bootstrap_ssh(&ctx, &host, &|m: &str| tracing::debug!("{m}")).await,
            Err(e) => Err(e),
        };
        let (outcome, detail) = match &result {
            // Nothing was started: the agent runs with current credentials yet delivers nothing; bootstrap cannot
            // fix that (the host cannot reach the endpoint, or the agent is stuck), so it counts as a failure.
            Ok(done) if !done.started => (
                RepairOutcome::Failed,
                format!(
                    "REPAIR FAILED {} ({why}): the agent runs and is up to date but delivers nothing; can the host \
                     reach {}? (see its agent.log)",
                    host.name,
                    crate::bootstrap::endpoint_for(&config, &host)
                ),
            ),
            Ok(done) => (RepairOutcome::Repaired, format!("REPAIRED {} ({why}): {done}", host.name)),
            Err(e) if refused(e) => (
                RepairOutcome::Refused,
                format!("REPAIR REFUSED {} ({why}): {e}; not retried until a person runs `vigil bootstrap`", host.name),
            ),
            Err(e) => (RepairOutcome::Failed, format!("REPAIR FAILED {} ({why}): {e}", host.name)),
        };
        match outcome {
            RepairOutcome::Repaired => tracing::info!("{detail}"),
            _ => tracing::warn!("{detail}"),
        }
        let record = move |s: &mut Store| s.write_tx(|c| record(c, &config, &host, outcome, &detail));
        match ingest.exec(record).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "repair: cannot record the outcome"),
            Err(e) => tracing::warn!(error = %e, "repair: cannot record the outcome"),
        }
    };
    (fut, name)
}

/// Whether a failure is one serve must not retry: the host's key changed (or was never seen), which a person must
/// check.
fn refused(e: &BootstrapError) -> bool {
    matches!(e, BootstrapError::Remote(RemoteError::HostKeyChanged { .. } | RemoteError::HostKeyUnknown { .. }))
}

/// Writes the attempt's event and the host's `repairs` row, and queues the mail when one is due, in one
/// transaction.
fn record(
    c: crate::store::Tx<'_>,
    config: &Config,
    host: &Host,
    outcome: RepairOutcome,
    detail: &str,
) -> Result<(), StoreError> {
    let now = vigil_sys::clock::now_ms();
    let before = repairs::repair_of(c, &host.name)?.map_or(0, |r| r.failures);
    let failures = match outcome {
        RepairOutcome::Repaired => 0,
        RepairOutcome::Failed | RepairOutcome::Refused => before.saturating_add(1),
    };
    let row = RepairRow { host: host.name.clone(), last_attempt_ms: now, outcome, detail: detail.to_owned(), failures };
    repairs::set_repair(c, &row)?;
    let state = if outcome == RepairOutcome::Repaired { "resolved" } else { "firing" };
    let ev = NewEvent {
        at_ms: now,
        host: &host.name,
        ip: &host.ip,
        rule: "repair",
        state,
        value: None,
        limit: None,
        detail,
    };
    let id = rows::insert_event(c, &ev)?;
    let mail =
        outcome == RepairOutcome::Refused || (outcome == RepairOutcome::Failed && failures == MAIL_AFTER_FAILURES);
    if let (true, Some(_), Some(to)) = (mail, &config.smtp, host.mail.as_deref()) {
        let subject = match outcome {
            RepairOutcome::Refused => format!("[vigil] {}: automatic repair refused (host key)", host.name),
            _ => format!("[vigil] {}: automatic repair failed {failures} times in a row", host.name),
        };
        let body = format!(
            "{detail}\n\nHost: {} ({})\nvigil serve repairs a silent host by re-running `vigil bootstrap` on it. \
             Check the host, then run `vigil bootstrap {}` (see `vigil status` and `vigil alerts`).\n",
            host.name, host.ip, host.name
        );
        rows::enqueue_mail(c, Some(id), now, to, &subject, &body)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    fn config(clients: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("clients.xml");
        let j = dir.path().join("jobs.toml");
        std::fs::write(&c, clients).unwrap();
        std::fs::write(
            &j,
            "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\nrepair_backoff = \"1m\"\n\n[[job]]\nname = \
             \"v\"\ncollectors = [\"cpu\"]\ninterval = \"10s\"\n",
        )
        .unwrap();
        Config::load(&c, &j).unwrap().config
    }

    const CLIENTS: &str = r#"<clients>
  <client name="a" ip="10.0.0.1" username="u"/>
  <client name="b" ip="10.0.0.2" username="u"><alert type="silence" limit="6"/></client>
  <client name="off" ip="10.0.0.3" username="u" repair="off"/>
  <client name="loc" ip="127.0.0.1" transport="local"/>
</clients>"#;

    fn st(registered: i64, report: Option<i64>, last: Option<(i64, RepairOutcome, u32)>) -> HostState {
        HostState {
            registered_at_ms: Some(registered),
            last_report_ms: report,
            last_repair: last.map(|(t, outcome, failures)| RepairRow {
                host: "a".into(),
                last_attempt_ms: t,
                outcome,
                detail: String::new(),
                failures,
            }),
        }
    }

    #[test]
    fn a_host_is_due_after_its_silence_limit_and_only_with_ssh_repair_on_and_a_registration() {
        let c = config(CLIENTS);
        let [a, b, off, loc] = [0, 1, 2, 3].map(|i| &c.clients[i]);
        assert_eq!(silence_limit(&c, a), Some(Duration::from_secs(30)), "3 intervals without a silence rule");
        assert_eq!(silence_limit(&c, b), Some(Duration::from_secs(60)), "the silence rule's limit");
        let quiet = st(0, Some(1_000), None);
        assert!(!due(&c, a, &quiet, 0, 31_000, false), "30 s silent: not yet");
        assert!(due(&c, a, &quiet, 0, 31_001, false));
        assert!(!due(&c, b, &quiet, 0, 31_001, false));
        assert!(!due(&c, off, &quiet, 0, 99_000, false), "repair=\"off\"");
        assert!(!due(&c, off, &quiet, 0, 99_000, true), "repair=\"off\", even when asked");
        assert!(!due(&c, loc, &quiet, 0, 99_000, false), "local hosts are serve's own agents");
        let never = HostState { registered_at_ms: None, last_report_ms: None, last_repair: None };
        assert!(!due(&c, a, &never, 0, 99_000, false), "never bootstrapped");
        assert!(!due(&c, a, &quiet, 20_000, 31_001, false), "silence counts from serve's start");
        assert!(due(&c, a, &st(0, Some(30_000), None), 0, 30_001, true), "asked: no silence needed");
    }

    #[test]
    fn repairs_back_off_doubling_per_failure_and_a_refusal_waits_for_a_person() {
        let c = config(CLIENTS);
        let a = &c.clients[0];
        let failed = |n| st(0, Some(0), Some((100_000, RepairOutcome::Failed, n)));
        assert!(!due(&c, a, &failed(1), 0, 159_999, false), "within the 1m backoff");
        assert!(due(&c, a, &failed(1), 0, 160_000, false));
        assert!(!due(&c, a, &failed(2), 0, 219_999, false), "doubled after a second failure");
        assert!(due(&c, a, &failed(2), 0, 220_000, false));
        assert_eq!(backoff_after(Duration::from_secs(60), 30), Duration::from_secs(60 * 16), "capped");
        assert!(!due(&c, a, &failed(1), 0, 110_000, true), "asking does not skip the backoff");
        let refused = st(0, Some(0), Some((100_000, RepairOutcome::Refused, 1)));
        assert!(!due(&c, a, &refused, 0, 99_000_000, false), "never again on its own");
        let rebootstrapped = st(200_000, Some(0), Some((100_000, RepairOutcome::Refused, 1)));
        assert!(due(&c, a, &rebootstrapped, 0, 99_000_000, false), "a person bootstrapped it since");
    }

    #[tokio::test]
    async fn a_request_repairs_a_host_that_is_not_silent_yet_and_records_the_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("v.db")).unwrap();
        // Nothing listens on this port: the attempt fails at once, which is all this test needs.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let clients = format!(
            "<clients>\n  <client name=\"a\" ip=\"127.0.0.1\" port=\"{closed}\" username=\"u\"/>\n  <client name=\"b\" \
             ip=\"127.0.0.1\" port=\"{closed}\" username=\"u\"/>\n</clients>"
        );
        let c = config(&clients);
        let now = vigil_sys::clock::now_ms();
        for host in ["a", "b"] {
            let rec = crate::store::AgentRecord {
                agent_id: format!("{host}-1"),
                host: host.into(),
                public_key: String::new(),
                secret_hex: String::new(),
                version: None,
                registered_at_ms: now,
                last_seen_at_ms: None,
            };
            store.register_agent(&rec).unwrap();
        }
        let (ingest, writer) = crate::ingest::spawn(store, crate::ingest::IngestOptions::default()).unwrap();
        let (_config_tx, config_rx) = watch::channel(Arc::new(c));
        let (handle, requests) = channel();
        let cancel = CancellationToken::new();
        let owned = crate::lease::fixed("n", &["a"]);
        let task = tokio::spawn(run(ingest.clone(), config_rx, "SHA256:x".into(), requests, owned, cancel.clone()));
        assert!(handle.request("a"));
        let mut recorded = None;
        for _ in 0..200 {
            recorded = ingest.exec(|s| s.repair_of("a")).await.unwrap().unwrap();
            if recorded.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let row = recorded.expect("the requested repair was attempted and recorded");
        assert_eq!(row.outcome, RepairOutcome::Failed);
        assert!(row.detail.contains("repair requested"), "{}", row.detail);
        assert_eq!(ingest.exec(|s| s.repair_of("b")).await.unwrap().unwrap(), None, "b was neither asked nor silent");
        cancel.cancel();
        task.await.unwrap();
        ingest.shutdown().await;
        drop(ingest);
        writer.join().unwrap();
    }

    #[test]
    fn an_attempt_is_an_event_and_the_third_failure_in_a_row_one_mail() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("v.db")).unwrap();
        let mut c = config(&CLIENTS.replace("username=\"u\"/>", "username=\"u\" mail=\"ops@example.com\"/>"));
        c.smtp = Some(crate::config::SmtpSettings {
            host: "127.0.0.1".into(),
            port: 25,
            tls: crate::config::TlsMode::None,
            from: "v@example.com".into(),
            username: None,
            password_env: None,
        });
        let a = c.clients[0].clone();
        for _ in 0..5 {
            s.write_tx(|t| record(t, &c, &a, RepairOutcome::Failed, "REPAIR FAILED a: cannot reach")).unwrap();
        }
        assert_eq!(s.pending_mail().unwrap().len(), 1, "one mail for the streak");
        assert_eq!(s.repair_of("a").unwrap().unwrap().failures, 5);
        s.write_tx(|t| record(t, &c, &a, RepairOutcome::Repaired, "REPAIRED a")).unwrap();
        assert_eq!(s.repair_of("a").unwrap().unwrap().failures, 0);
        let events = s.alert_events_since(0).unwrap();
        assert_eq!(events.len(), 6);
        assert!(events.iter().all(|e| e.rule == "repair"));
        assert_eq!(events[5].state, "resolved");
        assert_eq!(events[0].state, "firing");
    }
}
