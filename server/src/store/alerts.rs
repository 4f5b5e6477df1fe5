//! The alert tables of migration V2: `alert_state` (one row per host and rule that ever fired), `alert_events` (the
//! history `vigil alerts` lists) and `outbox` (mail waiting for the mailer).
//!
//! Functions take a [`Tx`] so they run inside the caller's transaction: the
//! ingest writer evaluates rules in the transaction that stores the report, so a report, the transition it caused
//! and the mail telling about it commit together or not at all. Deciding transitions is `crate::alert`'s job; this
//! module only reads and writes rows.

use std::collections::HashMap;

use serde::Serialize;

use super::{Engine, OptionalExtension, Row, Store, StoreError, Tx, params};
use crate::config::AlertKind;

/// The stored state of one (host, rule).
#[derive(Debug, Clone, PartialEq)]
pub struct StateRow {
    pub firing: bool,
    /// The value that caused the last transition (or repeat).
    pub value: Option<f64>,
    pub limit: f64,
    /// When the alert started firing (or resolved).
    pub since_ms: i64,
    /// When the last mail about it was queued.
    pub last_mail_ms: i64,
}

/// A row of `alert_events` to write.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent<'a> {
    pub at_ms: i64,
    pub host: &'a str,
    pub ip: &'a str,
    /// The rule key (`cpu`, `disk:/data`, `security`, ...).
    pub rule: &'a str,
    /// `firing`, `repeat`, `resolved`, `security` or `cleared`.
    pub state: &'a str,
    pub value: Option<f64>,
    pub limit: Option<f64>,
    /// One line for `vigil alerts`.
    pub detail: &'a str,
}

/// A stored alert event, as `vigil alerts` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    pub id: i64,
    pub at_ms: i64,
    pub host: String,
    pub ip: String,
    pub rule: String,
    pub state: String,
    pub value: Option<f64>,
    pub limit: Option<f64>,
    pub detail: String,
}

/// An alert that is firing now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FiringRow {
    pub host: String,
    pub rule: String,
    pub value: Option<f64>,
    pub limit: f64,
    pub since_ms: i64,
}

/// A mail waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub created_ms: i64,
    pub recipient: String,
    pub subject: String,
    pub body: String,
    pub attempts: i64,
}

/// Counts of the outbox by status, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutboxCounts {
    pub pending: i64,
    pub sent: i64,
    pub failed: i64,
}

/// A [`StateRow`] from the columns `state, value, limit_value, since_ms, last_mail_ms` starting at `at`.
fn state_row(r: &Row<'_>, at: usize) -> Result<StateRow, StoreError> {
    Ok(StateRow {
        firing: r.get::<String>(at)? == "firing",
        value: r.get(at + 1)?,
        limit: r.get(at + 2)?,
        since_ms: r.get(at + 3)?,
        last_mail_ms: r.get(at + 4)?,
    })
}

/// The state of `host`'s `rule`, if it ever fired.
pub fn state(conn: Tx<'_>, host: &str, rule: &str) -> Result<Option<StateRow>, StoreError> {
    let stmt = conn.0.stmt(
        "SELECT state, value, limit_value, since_ms, last_mail_ms FROM alert_state WHERE host = ?1 AND rule = ?2",
    )?;
    stmt.query_row(params![host, rule], |r| state_row(r, 0)).optional()
}

/// The states of every rule that ever fired on any of `hosts`, by host and rule, in one statement: the ingest
/// writer reads them once per batch (on PostgreSQL under the batch's host locks) instead of once per report and rule,
/// which on PostgreSQL is a round trip each.
pub fn states_of(conn: Tx<'_>, hosts: &[&str]) -> Result<HashMap<String, HashMap<String, StateRow>>, StoreError> {
    let list = match serde_json::to_string(hosts) {
        Ok(list) => list,
        Err(e) => return Err(StoreError::BadValue(format!("host list: {e}"))),
    };
    let sql = match conn.0.engine() {
        Engine::Sqlite => {
            "SELECT host, rule, state, value, limit_value, since_ms, last_mail_ms FROM alert_state
             WHERE host IN (SELECT value FROM json_each(?1))"
        }
        Engine::Postgres => {
            "SELECT host, rule, state, value, limit_value, since_ms, last_mail_ms FROM alert_state
             WHERE host IN (SELECT json_array_elements_text(?1::json))"
        }
    };
    let mut states: HashMap<String, HashMap<String, StateRow>> = HashMap::new();
    conn.0.stmt(sql)?.for_each(params![list], |r| -> Result<(), StoreError> {
        states.entry(r.get(0)?).or_default().insert(r.get(1)?, state_row(r, 2)?);
        Ok(())
    })?;
    Ok(states)
}

/// Writes the state of `host`'s `rule`.
pub fn set_state(conn: Tx<'_>, host: &str, rule: &str, s: &StateRow, now_ms: i64) -> Result<(), StoreError> {
    let stmt = conn.0.stmt(
        "INSERT INTO alert_state (host, rule, state, value, limit_value, since_ms, last_mail_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (host, rule) DO UPDATE SET state = excluded.state, value = excluded.value,
             limit_value = excluded.limit_value, since_ms = excluded.since_ms, last_mail_ms = excluded.last_mail_ms,
             updated_ms = excluded.updated_ms",
    )?;
    let state = if s.firing { "firing" } else { "resolved" };
    stmt.execute(params![host, rule, state, s.value, s.limit, s.since_ms, s.last_mail_ms, now_ms])?;
    Ok(())
}

/// Appends an event; returns its id.
pub fn insert_event(conn: Tx<'_>, e: &NewEvent<'_>) -> Result<i64, StoreError> {
    let stmt = conn.0.stmt(
        "INSERT INTO alert_events (at_ms, host, ip, rule, state, value, limit_value, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
    )?;
    stmt.query_row(params![e.at_ms, e.host, e.ip, e.rule, e.state, e.value, e.limit, e.detail], |r| r.get(0))
}

/// Queues a mail; returns the outbox id.
pub fn enqueue_mail(
    conn: Tx<'_>,
    event_id: Option<i64>,
    created_ms: i64,
    recipient: &str,
    subject: &str,
    body: &str,
) -> Result<i64, StoreError> {
    let stmt = conn.0.stmt(
        "INSERT INTO outbox (event_id, created_ms, recipient, subject, body, next_attempt_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?2) RETURNING id",
    )?;
    stmt.query_row(params![event_id, created_ms, recipient, subject, body], |r| r.get(0))
}

/// Pending mail whose next attempt is due at `now_ms`, oldest first, at most `limit`.
pub fn due_mail(conn: Tx<'_>, now_ms: i64, limit: usize) -> Result<Vec<OutboxRow>, StoreError> {
    let stmt = conn.0.stmt(
        "SELECT id, created_ms, recipient, subject, body, attempts FROM outbox
         WHERE status = 'pending' AND next_attempt_ms <= ?1 ORDER BY id LIMIT ?2",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    stmt.query_map(params![now_ms, limit], outbox_row)
}

/// The columns `id, created_ms, recipient, subject, body, attempts` of `outbox` as an [`OutboxRow`].
fn outbox_row(r: &Row<'_>) -> Result<OutboxRow, StoreError> {
    Ok(OutboxRow {
        id: r.get(0)?,
        created_ms: r.get(1)?,
        recipient: r.get(2)?,
        subject: r.get(3)?,
        body: r.get(4)?,
        attempts: r.get(5)?,
    })
}

/// Claims, for `node`, up to `limit` pending mails due now (by the database's clock) that no other node holds a live
/// claim on, oldest first: the claim lasts `claim_ms`. Nodes sharing a PostgreSQL database skip each other's locked
/// rows (`FOR UPDATE SKIP LOCKED`); SQLite has one writer at a time.
pub fn claim_mail(conn: Tx<'_>, node: &str, limit: usize, claim_ms: i64) -> Result<Vec<OutboxRow>, StoreError> {
    let now = super::leases::db_now(conn.0)?;
    let lock = match conn.0.engine() {
        super::Engine::Postgres => "FOR UPDATE SKIP LOCKED",
        super::Engine::Sqlite => "",
    };
    let sql = format!(
        "UPDATE outbox SET claimed_by = ?1, claimed_until_ms = ?3
         WHERE id IN (SELECT id FROM outbox WHERE status = 'pending' AND next_attempt_ms <= ?2
                      AND (claimed_until_ms IS NULL OR claimed_until_ms < ?2 OR claimed_by = ?1)
                      ORDER BY id LIMIT ?4 {lock})
         RETURNING id, created_ms, recipient, subject, body, attempts"
    );
    let mut rows = conn.0.query_map(&sql, params![node, now, now + claim_ms, limit], outbox_row)?;
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

/// Marks a mail sent (the SMTP server accepted it).
pub fn mark_sent(conn: Tx<'_>, id: i64, now_ms: i64) -> Result<(), StoreError> {
    conn.0
        .stmt(
            "UPDATE outbox SET status = 'sent', sent_ms = ?2, attempts = attempts + 1, claimed_by = NULL,
                 claimed_until_ms = NULL
             WHERE id = ?1",
        )?
        .execute(params![id, now_ms])?;
    Ok(())
}

/// Records a failed attempt: retried at `retry_at_ms`, or never again when `None` (refused for good).
pub fn mark_attempt_failed(conn: Tx<'_>, id: i64, error: &str, retry_at_ms: Option<i64>) -> Result<(), StoreError> {
    let stmt = conn.0.stmt(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, claimed_by = NULL, claimed_until_ms = NULL,
             status = CASE WHEN CAST(?3 AS BIGINT) IS NULL THEN 'failed' ELSE status END,
             next_attempt_ms = coalesce(?3, next_attempt_ms)
         WHERE id = ?1",
    )?;
    stmt.execute(params![id, error, retry_at_ms])?;
    Ok(())
}

/// How many mails are pending, sent and failed.
pub fn outbox_counts(conn: Tx<'_>) -> Result<OutboxCounts, StoreError> {
    let mut c = OutboxCounts::default();
    let stmt = conn.0.stmt("SELECT status, count(*) FROM outbox GROUP BY status")?;
    let rows = stmt.query_map(params![], |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?)))?;
    for (status, n) in rows {
        match status.as_str() {
            "pending" => c.pending = n,
            "sent" => c.sent = n,
            _ => c.failed = n,
        }
    }
    Ok(c)
}

/// Deletes alert events and finished (sent or failed) mail older than `older_than_ms`; pending mail and the
/// events it refers to stay. Returns the number of rows deleted.
pub fn prune(conn: Tx<'_>, older_than_ms: i64) -> Result<usize, StoreError> {
    let mail = conn
        .0
        .stmt("DELETE FROM outbox WHERE status <> 'pending' AND created_ms < ?1")?
        .execute(params![older_than_ms])?;
    let events = conn
        .0
        .stmt(
            "DELETE FROM alert_events WHERE at_ms < ?1 AND id NOT IN (SELECT event_id FROM outbox
             WHERE event_id IS NOT NULL)",
        )?
        .execute(params![older_than_ms])?;
    Ok(mail + events)
}

/// The columns `id, at_ms, host, ip, rule, state, value, limit_value, detail` of `alert_events` as an [`EventRow`].
pub(super) fn event_row(r: &Row<'_>) -> Result<EventRow, StoreError> {
    Ok(EventRow {
        id: r.get(0)?,
        at_ms: r.get(1)?,
        host: r.get(2)?,
        ip: r.get(3)?,
        rule: r.get(4)?,
        state: r.get(5)?,
        value: r.get(6)?,
        limit: r.get(7)?,
        detail: r.get(8)?,
    })
}

/// Events at or after `since_ms`, oldest first.
pub fn events_since(conn: Tx<'_>, since_ms: i64) -> Result<Vec<EventRow>, StoreError> {
    let stmt = conn.0.stmt(
        "SELECT id, at_ms, host, ip, rule, state, value, limit_value, detail FROM alert_events
         WHERE at_ms >= ?1 ORDER BY at_ms, id",
    )?;
    let rows = stmt.query_map(params![since_ms], event_row)?;
    Ok(rows)
}

/// The columns `host, rule, value, limit_value, since_ms` of `alert_state` as a [`FiringRow`].
fn firing_row(r: &Row<'_>) -> Result<FiringRow, StoreError> {
    Ok(FiringRow { host: r.get(0)?, rule: r.get(1)?, value: r.get(2)?, limit: r.get(3)?, since_ms: r.get(4)? })
}

/// Where a host's security mail digest stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DigestRow {
    /// When its last security mail was queued (server clock).
    pub last_mail_ms: i64,
    /// The newest security event that mail covered.
    pub last_event_id: i64,
}

/// The security digest of `host`, if it was ever mailed.
pub fn digest(conn: Tx<'_>, host: &str) -> Result<Option<DigestRow>, StoreError> {
    let stmt = conn.0.stmt("SELECT last_mail_ms, last_event_id FROM security_digest WHERE host = ?1")?;
    stmt.query_row(params![host], |r| Ok(DigestRow { last_mail_ms: r.get(0)?, last_event_id: r.get(1)? })).optional()
}

/// Records that a security mail of `host` was queued.
pub fn set_digest(conn: Tx<'_>, host: &str, d: DigestRow) -> Result<(), StoreError> {
    conn.0
        .stmt(
            "INSERT INTO security_digest (host, last_mail_ms, last_event_id) VALUES (?1, ?2, ?3)
         ON CONFLICT (host) DO UPDATE SET last_mail_ms = excluded.last_mail_ms,
             last_event_id = excluded.last_event_id",
        )?
        .execute(params![host, d.last_mail_ms, d.last_event_id])?;
    Ok(())
}

/// Security events of `host` after event `after_id` (not mailed yet), oldest first.
pub fn security_events_after(conn: Tx<'_>, host: &str, after_id: i64) -> Result<Vec<EventRow>, StoreError> {
    let stmt = conn.0.stmt(
        "SELECT id, at_ms, host, ip, rule, state, value, limit_value, detail FROM alert_events
         WHERE host = ?1 AND rule = 'security' AND id > ?2 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![host, after_id], event_row)?;
    Ok(rows)
}

/// Hosts whose security events wait for a digest mail: (host, digest).
pub fn digests_waiting(conn: Tx<'_>) -> Result<Vec<(String, DigestRow)>, StoreError> {
    let stmt = conn.0.stmt(
        "SELECT d.host, d.last_mail_ms, d.last_event_id FROM security_digest d WHERE EXISTS
             (SELECT 1 FROM alert_events e WHERE e.host = d.host AND e.rule = 'security' AND e.id > d.last_event_id)
         ORDER BY d.host",
    )?;
    let rows = stmt
        .query_map(params![], |r| Ok((r.get(0)?, DigestRow { last_mail_ms: r.get(1)?, last_event_id: r.get(2)? })))?;
    Ok(rows)
}

/// Alerts firing now, by host then rule.
pub fn firing(conn: Tx<'_>) -> Result<Vec<FiringRow>, StoreError> {
    let stmt = conn.0.stmt(
        "SELECT host, rule, value, limit_value, since_ms FROM alert_state WHERE state = 'firing' ORDER BY host, rule",
    )?;
    let rows = stmt.query_map(params![], firing_row)?;
    Ok(rows)
}

/// Alerts of `host` firing now, by rule (a primary-key lookup).
pub fn firing_of(conn: Tx<'_>, host: &str) -> Result<Vec<FiringRow>, StoreError> {
    let stmt = conn.0.stmt(
        "SELECT host, rule, value, limit_value, since_ms FROM alert_state WHERE host = ?1 AND state = 'firing'
         ORDER BY rule",
    )?;
    let rows = stmt.query_map(params![host], firing_row)?;
    Ok(rows)
}

/// When the latest report of `host` arrived (server clock), if it ever reported.
pub fn last_report_ms(conn: Tx<'_>, host: &str) -> Result<Option<i64>, StoreError> {
    // One index probe on (host_id, received_at_ms) on both engines; a join ordered by time made PostgreSQL walk
    // the whole received-time index for a host that never reported (BENCHMARKS.md, "PostgreSQL: ingest").
    conn.0.query_row(
        "SELECT max(received_at_ms) FROM reports WHERE host_id = (SELECT id FROM hosts WHERE name = ?1)",
        params![host],
        |r| r.get(0),
    )
}

/// The latest `n` samples (collected time, value) of a host's metric, newest first. For disk, `mount` picks one
/// mount point; `None` takes the fullest mount of each report. Silence has no samples.
pub fn recent_values(
    conn: Tx<'_>,
    host: &str,
    kind: AlertKind,
    mount: Option<&str>,
    n: usize,
) -> Result<Vec<(i64, f64)>, StoreError> {
    let host_id: Option<i64> =
        conn.0.stmt("SELECT id FROM hosts WHERE name = ?1")?.query_row(params![host], |r| r.get(0)).optional()?;
    let Some(host_id) = host_id else { return Ok(Vec::new()) };
    let limit = i64::try_from(n).unwrap_or(i64::MAX);
    let simple = |sql: &str| -> Result<Vec<(i64, f64)>, StoreError> {
        let stmt = conn.0.stmt(sql)?;
        let rows = stmt.query_map(params![host_id, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows)
    };
    match kind {
        AlertKind::Cpu => simple("SELECT ts, total_pct FROM cpu WHERE host_id = ?1 ORDER BY ts DESC, id DESC LIMIT ?2"),
        AlertKind::Load => simple("SELECT ts, load1 FROM cpu WHERE host_id = ?1 ORDER BY ts DESC, id DESC LIMIT ?2"),
        AlertKind::Memory => {
            simple("SELECT ts, used_pct FROM memory WHERE host_id = ?1 ORDER BY ts DESC, id DESC LIMIT ?2")
        }
        AlertKind::Swap => {
            simple("SELECT ts, used_pct FROM swap WHERE host_id = ?1 ORDER BY ts DESC, id DESC LIMIT ?2")
        }
        AlertKind::Silence | AlertKind::Job | AlertKind::Metric => Ok(Vec::new()),
        AlertKind::Disk => {
            // A bounded window of the newest rows (a report has a handful of mounts), grouped here by report.
            let stmt = conn.0.stmt(
                "SELECT report_id, ts, mount_point, used_pct FROM disk_usage WHERE host_id = ?1
                 ORDER BY ts DESC, id DESC LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![host_id, limit.saturating_mul(32)], |r| {
                Ok((r.get::<i64>(0)?, r.get::<i64>(1)?, r.get::<String>(2)?, r.get::<f64>(3)?))
            })?;
            let mut out: Vec<(i64, i64, f64)> = Vec::new();
            for (report, ts, mp, pct) in rows {
                if mount.is_some_and(|m| m != mp) {
                    continue;
                }
                match out.last_mut() {
                    Some(last) if last.0 == report => last.2 = last.2.max(pct),
                    _ => out.push((report, ts, pct)),
                }
            }
            Ok(out.into_iter().take(n).map(|(_, ts, v)| (ts, v)).collect())
        }
    }
}

impl Store {
    /// Alerts of `host` firing now, by rule (for `vigil status`).
    pub fn firing_of(&self, host: &str) -> Result<Vec<FiringRow>, StoreError> {
        firing_of(self.view(), host)
    }

    /// Alert events at or after `since_ms`, oldest first (for `vigil alerts`).
    pub fn alert_events_since(&self, since_ms: i64) -> Result<Vec<EventRow>, StoreError> {
        events_since(self.view(), since_ms)
    }

    /// Mail not sent yet (pending), oldest first: for operators and tests.
    pub fn pending_mail(&self) -> Result<Vec<OutboxRow>, StoreError> {
        due_mail(self.view(), i64::MAX, usize::MAX >> 1)
    }

    /// Outbox counts by status (for `vigil alerts` and tests).
    pub fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        outbox_counts(self.view())
    }

    /// Runs `f` in one immediate transaction, committed when it returns `Ok`.
    pub fn write_tx<R>(&mut self, f: impl FnOnce(Tx<'_>) -> Result<R, StoreError>) -> Result<R, StoreError> {
        self.conn.transaction(|db| f(Tx(db)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_updates() {
        crate::store::each_engine(|s| {
            assert_eq!(state(s.view(), "h", "cpu").unwrap(), None);
            let row = StateRow { firing: true, value: Some(93.0), limit: 90.0, since_ms: 5, last_mail_ms: 5 };
            s.write_tx(|c| set_state(c, "h", "cpu", &row, 5)).unwrap();
            assert_eq!(state(s.view(), "h", "cpu").unwrap(), Some(row.clone()));
            let resolved = StateRow { firing: false, value: Some(50.0), since_ms: 9, ..row };
            s.write_tx(|c| set_state(c, "h", "cpu", &resolved, 9)).unwrap();
            assert_eq!(state(s.view(), "h", "cpu").unwrap(), Some(resolved));
            assert!(firing(s.view()).unwrap().is_empty());
            assert!(firing_of(s.view(), "h").unwrap().is_empty());
            s.write_tx(|c| set_state(c, "h", "memory", &StateRow { firing: true, ..resolved_copy() }, 9)).unwrap();
            assert_eq!(firing_of(s.view(), "h").unwrap().len(), 1);
            assert!(firing_of(s.view(), "other").unwrap().is_empty());
        });
    }

    fn resolved_copy() -> StateRow {
        StateRow { firing: false, value: None, limit: 1.0, since_ms: 1, last_mail_ms: 1 }
    }

    #[test]
    fn outbox_lifecycle() {
        crate::store::each_engine(|s| {
            let id = s
                .write_tx(|c| {
                    let ev = NewEvent {
                        at_ms: 10,
                        host: "h",
                        ip: "1.2.3.4",
                        rule: "cpu",
                        state: "firing",
                        value: Some(1.0),
                        limit: Some(0.5),
                        detail: "d",
                    };
                    let e = insert_event(c, &ev)?;
                    enqueue_mail(c, Some(e), 10, "ops@x", "subj", "body")
                })
                .unwrap();
            assert_eq!(due_mail(s.view(), 9, 10).unwrap().len(), 0, "not due before it was created");
            let due = due_mail(s.view(), 10, 10).unwrap();
            assert_eq!(due.len(), 1);
            assert_eq!(due[0].recipient, "ops@x");
            s.write_tx(|c| mark_attempt_failed(c, id, "refused", Some(100))).unwrap();
            assert!(due_mail(s.view(), 50, 10).unwrap().is_empty(), "backing off");
            assert_eq!(due_mail(s.view(), 100, 10).unwrap()[0].attempts, 1);
            s.write_tx(|c| mark_sent(c, id, 101)).unwrap();
            assert!(due_mail(s.view(), 1_000, 10).unwrap().is_empty());
            assert_eq!(outbox_counts(s.view()).unwrap(), OutboxCounts { pending: 0, sent: 1, failed: 0 });
            let id2 = s.write_tx(|c| enqueue_mail(c, None, 10, "bad", "s", "b")).unwrap();
            s.write_tx(|c| mark_attempt_failed(c, id2, "bad address", None)).unwrap();
            assert!(due_mail(s.view(), 1_000, 10).unwrap().is_empty(), "a failed mail is not retried");
            assert_eq!(outbox_counts(s.view()).unwrap().failed, 1);
            assert_eq!(events_since(s.view(), 0).unwrap().len(), 1);
            assert!(events_since(s.view(), 11).unwrap().is_empty());

            // Pruning keeps pending mail (and its event), drops finished mail and old events.
            let pending = s.write_tx(|c| enqueue_mail(c, None, 10, "ops@x", "later", "b")).unwrap();
            assert_eq!(s.write_tx(|c| prune(c, 11)).unwrap(), 3, "two finished mails and the event");
            assert_eq!(s.pending_mail().unwrap().iter().map(|r| r.id).collect::<Vec<_>>(), [pending]);
            assert!(events_since(s.view(), 0).unwrap().is_empty());
        });
    }

    #[test]
    fn each_mail_is_claimed_by_one_node_until_its_claim_expires() {
        crate::store::each_engine(|s| {
            let ids: Vec<i64> =
                (0..3).map(|i| s.write_tx(|c| enqueue_mail(c, None, i, "ops@x", "s", "b")).unwrap()).collect();
            let a = s.write_tx(|c| claim_mail(c, "a", 2, 60_000)).unwrap();
            assert_eq!(a.iter().map(|r| r.id).collect::<Vec<_>>(), ids[..2]);
            let b = s.write_tx(|c| claim_mail(c, "b", 10, 60_000)).unwrap();
            assert_eq!(b.iter().map(|r| r.id).collect::<Vec<_>>(), ids[2..], "b gets only what a did not claim");
            s.write_tx(|c| mark_sent(c, ids[0], 5)).unwrap();
            assert!(s.write_tx(|c| claim_mail(c, "b", 10, 60_000)).unwrap().iter().all(|r| r.id == ids[2]));
            // a dies holding ids[1]: once its claim expires, another node sends it.
            let a2 = s.write_tx(|c| claim_mail(c, "a", 10, -1)).unwrap();
            assert_eq!(a2.iter().map(|r| r.id).collect::<Vec<_>>(), [ids[1]], "a may renew its own claim");
            let c = s.write_tx(|c| claim_mail(c, "c", 10, 60_000)).unwrap();
            assert_eq!(c.iter().map(|r| r.id).collect::<Vec<_>>(), [ids[1]], "an expired claim is taken");
        });
    }
}
