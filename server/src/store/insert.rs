//! Writing reports: one `reports` row per report and typed rows in each statistic family's table, all in one
//! transaction per batch, with cached prepared statements.

use std::collections::HashMap;

use rusqlite::{OptionalExtension, Transaction, params};
use vigil_schema::command::{CommandRun, RunOutcome};
use vigil_schema::job::Collector;
use vigil_schema::report::{Report, Stats};

use super::StoreError;

/// The tables holding statistics rows, each with `host_id`, `client_ip`, `report_id` and `ts`.
pub(crate) const FAMILY_TABLES: [&str; 11] = [
    "system_details",
    "sessions",
    "cpu",
    "memory",
    "swap",
    "partitions",
    "disk_usage",
    "network",
    "security_events",
    "command_runs",
    "command_metrics",
];

/// A decoded, checked report on its way to the database, with who sent it and when it arrived.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub agent_id: String,
    /// The host's name in clients.xml.
    pub host: String,
    /// The client ip the report is filed under (the host's configured address).
    pub ip: String,
    /// Server clock, milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    pub report: Report,
}

/// What became of one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Newly stored under this `reports.id`.
    Stored { report_id: i64 },
    /// Already stored earlier (same agent and sequence): acknowledge again, store nothing.
    Duplicate,
}

/// SQLite integers are signed: byte counters beyond `i64::MAX` are clamped (no real counter gets there).
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn host_id(
    tx: &Transaction<'_>,
    hosts: &mut HashMap<String, (i64, String)>,
    name: &str,
    ip: &str,
) -> Result<i64, StoreError> {
    if let Some((id, known_ip)) = hosts.get(name)
        && known_ip == ip
    {
        return Ok(*id);
    }
    let mut stmt = tx.prepare_cached(
        "INSERT INTO hosts (name, ip) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET ip = excluded.ip WHERE ip <> excluded.ip",
    )?;
    stmt.execute(params![name, ip])?;
    let mut stmt = tx.prepare_cached("SELECT id FROM hosts WHERE name = ?1")?;
    let id: i64 = stmt.query_row(params![name], |r| r.get(0))?;
    hosts.insert(name.to_owned(), (id, ip.to_owned()));
    Ok(id)
}

/// How far ahead of the server's clock a report's `collected_at` may be and still order its samples. Beyond it the
/// host's clock is wrong (the offset is still recorded in `reports.clock_offset_ms` and flagged by `vigil status`).
pub const MAX_FUTURE_MS: i64 = 10 * 60 * 1000;

/// The time a report's statistics rows are filed (and ordered) under: when it was collected, unless that is more
/// than [`MAX_FUTURE_MS`] after it was received. Then the receive time: a host whose clock runs years ahead cannot
/// pin the "latest" values of `vigil status` or of the alert rules.
pub fn sample_time(collected_at_ms: i64, received_at_ms: i64) -> i64 {
    if collected_at_ms > received_at_ms.saturating_add(MAX_FUTURE_MS) { received_at_ms } else { collected_at_ms }
}

/// Stores one report and its statistics rows. Over 100 lines because it is a table: one INSERT per statistics
/// family, each with its column list; splitting it would only scatter the table.
pub(super) fn insert_one(
    tx: &Transaction<'_>,
    hosts: &mut HashMap<String, (i64, String)>,
    inc: &Incoming,
) -> Result<Outcome, StoreError> {
    let host = host_id(tx, hosts, &inc.host, &inc.ip)?;
    let r = &inc.report;
    let ts = sample_time(r.collected_at_ms, inc.received_at_ms);
    let ip = inc.ip.as_str();
    let report_id: Option<i64> = tx
        .prepare_cached(
            "INSERT INTO reports (agent_id, seq, host_id, client_ip, job, collected_at_ms, received_at_ms,
                                  clock_offset_ms, dropped)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (agent_id, seq) DO NOTHING
             RETURNING id",
        )?
        .query_row(
            params![
                inc.agent_id,
                // Bit-for-bit: keeps every u64 sequence distinct (and positive ones, i.e. all real ones, unchanged).
                r.seq as i64,
                host,
                ip,
                r.job,
                r.collected_at_ms,
                inc.received_at_ms,
                inc.received_at_ms.saturating_sub(r.collected_at_ms),
                int(r.dropped),
            ],
            |row| row.get(0),
        )
        .optional()?;
    let Some(rid) = report_id else {
        return Ok(Outcome::Duplicate);
    };
    let s = &r.stats;

    if let Some(x) = &s.system {
        tx.prepare_cached(
            "INSERT INTO system_details (host_id, client_ip, report_id, ts, hostname, os_name, os_version, kernel,
                                         arch, uptime_s, boot_time, cpu_model, cpu_count)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?
        .execute(params![
            host,
            ip,
            rid,
            ts,
            x.hostname,
            x.os_name,
            x.os_version,
            x.kernel,
            x.arch,
            int(x.uptime_s),
            x.boot_time,
            x.cpu_model,
            x.cpu_count
        ])?;
    }
    if let Some(u) = &s.users {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO sessions (host_id, client_ip, report_id, ts, source, user, terminal, remote_host, login_time)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for x in &u.sessions {
            stmt.execute(params![host, ip, rid, ts, u.source, x.user, x.terminal, x.host, x.login_time])?;
        }
    }
    if let Some(c) = &s.cpu {
        let cores = serde_json::to_string(&c.per_core_pct).map_err(|e| StoreError::BadValue(e.to_string()))?;
        tx.prepare_cached(
            "INSERT INTO cpu (host_id, client_ip, report_id, ts, total_pct, per_core_pct, load1, load5, load15)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![host, ip, rid, ts, f64::from(c.total_pct), cores, c.load1, c.load5, c.load15])?;
    }
    if let Some(m) = &s.memory {
        tx.prepare_cached(
            "INSERT INTO memory (host_id, client_ip, report_id, ts, total, used, available, free, used_pct)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            host,
            ip,
            rid,
            ts,
            int(m.total),
            int(m.used),
            int(m.available),
            int(m.free),
            f64::from(m.used_pct)
        ])?;
    }
    if let Some(m) = &s.swap {
        tx.prepare_cached(
            "INSERT INTO swap (host_id, client_ip, report_id, ts, total, used, free, used_pct)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![host, ip, rid, ts, int(m.total), int(m.used), int(m.free), f64::from(m.used_pct)])?;
    }
    if let Some(p) = &s.partitions {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO partitions (host_id, client_ip, report_id, ts, device, mount_point, fs_type, options)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for x in p {
            stmt.execute(params![host, ip, rid, ts, x.device, x.mount_point, x.fs_type, x.options])?;
        }
    }
    if let Some(d) = &s.disk_usage {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO disk_usage (host_id, client_ip, report_id, ts, mount_point, total, used, free, used_pct,
                                     inodes_total, inodes_used)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        for x in d {
            stmt.execute(params![
                host,
                ip,
                rid,
                ts,
                x.mount_point,
                int(x.total),
                int(x.used),
                int(x.free),
                f64::from(x.used_pct),
                x.inodes_total.map(int),
                x.inodes_used.map(int)
            ])?;
        }
    }
    if let Some(n) = &s.network {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO network (host_id, client_ip, report_id, ts, name, rx_bytes, tx_bytes, rx_packets,
                                  tx_packets, rx_errors, tx_errors, rx_dropped, tx_dropped, rx_bytes_per_s,
                                  tx_bytes_per_s)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )?;
        for x in n {
            stmt.execute(params![
                host,
                ip,
                rid,
                ts,
                x.name,
                int(x.rx_bytes),
                int(x.tx_bytes),
                int(x.rx_packets),
                int(x.tx_packets),
                int(x.rx_errors),
                int(x.tx_errors),
                int(x.rx_dropped),
                int(x.tx_dropped),
                x.rx_bytes_per_s,
                x.tx_bytes_per_s
            ])?;
        }
    }
    if let Some(e) = &s.security_events {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO security_events (host_id, client_ip, report_id, ts, source, event_time, kind, user,
                                          event_source, message)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for x in &e.events {
            stmt.execute(params![host, ip, rid, ts, e.source, x.time, x.kind.name(), x.user, x.source, x.message])?;
        }
    }
    if let Some(run) = &s.command {
        insert_command(tx, [host, rid, ts], ip, &r.job, run)?;
    }
    record_unavailable(tx, host, ts, s)?;
    Ok(Outcome::Stored { report_id: rid })
}

/// Keeps `unavailable_families` current for the host: the families the report lists as not available are recorded
/// (the first report's time kept), and each family it serves clears its row. A host with no row pays one primary-key
/// lookup.
fn record_unavailable(tx: &Transaction<'_>, host: i64, ts: i64, s: &Stats) -> Result<(), StoreError> {
    if s.unavailable.is_empty() {
        let any: Option<i64> = tx
            .prepare_cached("SELECT 1 FROM unavailable_families WHERE host_id = ?1 LIMIT 1")?
            .query_row(params![host], |r| r.get(0))
            .optional()?;
        if any.is_none() {
            return Ok(());
        }
    }
    let served = [
        (Collector::System, s.system.is_some()),
        (Collector::Users, s.users.is_some()),
        (Collector::Cpu, s.cpu.is_some()),
        (Collector::Memory, s.memory.is_some()),
        (Collector::Swap, s.swap.is_some()),
        (Collector::Partitions, s.partitions.is_some()),
        (Collector::DiskUsage, s.disk_usage.is_some()),
        (Collector::Network, s.network.is_some()),
        (Collector::SecurityEvents, s.security_events.is_some()),
    ];
    let mut clear = tx.prepare_cached("DELETE FROM unavailable_families WHERE host_id = ?1 AND family = ?2")?;
    for (family, present) in served {
        if present {
            clear.execute(params![host, family.name()])?;
        }
    }
    let mut record = tx.prepare_cached(
        "INSERT INTO unavailable_families (host_id, family, reason, since_ts) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (host_id, family) DO UPDATE SET reason = excluded.reason",
    )?;
    for u in &s.unavailable {
        record.execute(params![host, u.family.name(), u.reason, ts])?;
    }
    Ok(())
}

/// A command run's row and its parsed metrics.
fn insert_command(
    tx: &Transaction<'_>,
    [host, rid, ts]: [i64; 3],
    ip: &str,
    job: &str,
    run: &CommandRun,
) -> Result<(), StoreError> {
    let (outcome, code, signal, detail) = match &run.outcome {
        RunOutcome::Exited { code } => ("exited", Some(*code), None, None),
        RunOutcome::Signaled { signal } => ("signaled", None, Some(*signal), None),
        RunOutcome::TimedOut => ("timed_out", None, None, None),
        RunOutcome::FailedToStart { error } => ("failed_to_start", None, None, Some(error.as_str())),
        RunOutcome::Refused { reason } => ("refused", None, None, Some(reason.as_str())),
    };
    let parse_errors = (!run.parse_errors.is_empty()).then(|| run.parse_errors.join("\n"));
    tx.prepare_cached(
        "INSERT INTO command_runs (host_id, client_ip, report_id, ts, job, started_ms, duration_ms, outcome, exit_code,
                                   signal, detail, stdout, stderr, stdout_truncated, stderr_truncated, parse_errors)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
    )?
    .execute(params![
        host,
        ip,
        rid,
        ts,
        job,
        run.started_ms,
        int(run.duration_ms),
        outcome,
        code,
        signal,
        detail,
        run.stdout,
        run.stderr,
        run.stdout_truncated,
        run.stderr_truncated,
        parse_errors
    ])?;
    let mut stmt = tx.prepare_cached(
        "INSERT INTO command_metrics (host_id, client_ip, report_id, ts, job, name, labels, value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for m in &run.metrics {
        let labels: serde_json::Map<String, serde_json::Value> =
            m.labels.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        stmt.execute(params![host, ip, rid, ts, job, m.name, serde_json::Value::Object(labels).to_string(), m.value])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_beyond_i64_are_clamped_not_refused() {
        assert_eq!(int(u64::MAX), i64::MAX);
        assert_eq!(int(42), 42);
    }
}
