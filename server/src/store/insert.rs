//! Writing reports: one `reports` row per report and typed rows in each statistic family's table, all in one
//! transaction per batch. Each table's columns are declared once ([`Table`]); [`family_rows`] turns a report into
//! rows, which SQLite inserts one by one through cached statements and PostgreSQL in bulk (`insert_pg`).

use std::collections::HashMap;

use vigil_schema::command::{CommandRun, RunOutcome};
use vigil_schema::job::Collector;
use vigil_schema::report::{Report, Stats};

use super::db::Val;
use super::{Db, StoreError, params};

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

/// Database integers are signed: byte counters beyond `i64::MAX` are clamped (no real counter gets there).
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn host_id(
    tx: &Db,
    hosts: &mut HashMap<String, (i64, String)>,
    name: &str,
    ip: &str,
) -> Result<i64, StoreError> {
    if let Some((id, known_ip)) = hosts.get(name)
        && known_ip == ip
    {
        return Ok(*id);
    }
    tx.execute(
        "INSERT INTO hosts (name, ip) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET ip = excluded.ip WHERE hosts.ip <> excluded.ip",
        params![name, ip],
    )?;
    let id: i64 = tx.query_row("SELECT id FROM hosts WHERE name = ?1", params![name], |r| r.get(0))?;
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

/// A statistics table as the insert paths see it: its name and columns, each with its PostgreSQL array type.
#[derive(Debug)]
pub(super) struct Table {
    pub name: &'static str,
    /// (column, PostgreSQL type of the column) in the order [`family_rows`] gives values.
    pub columns: &'static [(&'static str, &'static str)],
}

const KEY: [(&str, &str); 4] = [("host_id", "int8"), ("client_ip", "text"), ("report_id", "int8"), ("ts", "int8")];

macro_rules! table {
    ($name:literal, $($col:literal : $ty:literal),+ $(,)?) => {
        Table { name: $name, columns: &[KEY[0], KEY[1], KEY[2], KEY[3], $(($col, $ty)),+] }
    };
}

pub(super) const SYSTEM: Table = table!("system_details", "hostname": "text", "os_name": "text",
    "os_version": "text", "kernel": "text", "arch": "text", "uptime_s": "int8", "boot_time": "int8",
    "cpu_model": "text", "cpu_count": "int8");
pub(super) const SESSIONS: Table = table!("sessions", "source": "text", "\"user\"": "text", "terminal": "text",
    "remote_host": "text", "login_time": "int8");
pub(super) const CPU: Table = table!("cpu", "total_pct": "float8", "per_core_pct": "text", "load1": "float8",
    "load5": "float8", "load15": "float8");
pub(super) const MEMORY: Table = table!("memory", "total": "int8", "used": "int8", "available": "int8",
    "free": "int8", "used_pct": "float8");
pub(super) const SWAP: Table = table!("swap", "total": "int8", "used": "int8", "free": "int8", "used_pct": "float8");
pub(super) const PARTITIONS: Table = table!("partitions", "device": "text", "mount_point": "text",
    "fs_type": "text", "options": "text");
pub(super) const DISK_USAGE: Table = table!("disk_usage", "mount_point": "text", "total": "int8", "used": "int8",
    "free": "int8", "used_pct": "float8", "inodes_total": "int8", "inodes_used": "int8");
pub(super) const NETWORK: Table = table!("network", "name": "text", "rx_bytes": "int8", "tx_bytes": "int8",
    "rx_packets": "int8", "tx_packets": "int8", "rx_errors": "int8", "tx_errors": "int8", "rx_dropped": "int8",
    "tx_dropped": "int8", "rx_bytes_per_s": "float8", "tx_bytes_per_s": "float8");
pub(super) const SECURITY: Table = table!("security_events", "source": "text", "event_time": "int8",
    "kind": "text", "\"user\"": "text", "event_source": "text", "message": "text");
/// The statistics tables [`family_rows`] fills (command runs have their own path, [`insert_command`]).
pub(super) const STAT_TABLES: [&Table; 9] =
    [&SYSTEM, &SESSIONS, &CPU, &MEMORY, &SWAP, &PARTITIONS, &DISK_USAGE, &NETWORK, &SECURITY];

impl Table {
    /// `INSERT INTO name (columns) VALUES (?1, ...)`: one row.
    pub(super) fn insert_sql(&self) -> String {
        let cols: Vec<&str> = self.columns.iter().map(|(c, _)| *c).collect();
        let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
        format!("INSERT INTO {} ({}) VALUES ({})", self.name, cols.join(", "), marks.join(", "))
    }
}

/// The SQL of each table's one-row insert, made once.
fn insert_sql(t: &Table) -> &'static str {
    static SQL: std::sync::OnceLock<HashMap<&'static str, String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| STAT_TABLES.iter().map(|t| (t.name, t.insert_sql())).collect());
    all.get(t.name).map_or("", String::as_str)
}

/// The statistics rows of one report, each given to `row` with its table, values in the table's column order.
pub(super) fn family_rows(
    [host, rid, ts]: [i64; 3],
    ip: &str,
    s: &Stats,
    mut row: impl FnMut(&'static Table, &[Val<'_>]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    if let Some(x) = &s.system {
        let (name, version, up) = (&x.os_name, &x.os_version, int(x.uptime_s));
        row(
            &SYSTEM,
            &params![
                host,
                ip,
                rid,
                ts,
                x.hostname,
                name,
                version,
                x.kernel,
                x.arch,
                up,
                x.boot_time,
                x.cpu_model,
                x.cpu_count
            ],
        )?;
    }
    if let Some(u) = &s.users {
        for x in &u.sessions {
            row(&SESSIONS, &params![host, ip, rid, ts, u.source, x.user, x.terminal, x.host, x.login_time])?;
        }
    }
    if let Some(c) = &s.cpu {
        let cores = serde_json::to_string(&c.per_core_pct).map_err(|e| StoreError::BadValue(e.to_string()))?;
        row(&CPU, &params![host, ip, rid, ts, c.total_pct, cores, c.load1, c.load5, c.load15])?;
    }
    if let Some(m) = &s.memory {
        row(
            &MEMORY,
            &params![host, ip, rid, ts, int(m.total), int(m.used), int(m.available), int(m.free), m.used_pct],
        )?;
    }
    if let Some(m) = &s.swap {
        row(&SWAP, &params![host, ip, rid, ts, int(m.total), int(m.used), int(m.free), m.used_pct])?;
    }
    for x in s.partitions.iter().flatten() {
        row(&PARTITIONS, &params![host, ip, rid, ts, x.device, x.mount_point, x.fs_type, x.options])?;
    }
    for x in s.disk_usage.iter().flatten() {
        let (it, iu) = (x.inodes_total.map(int), x.inodes_used.map(int));
        row(
            &DISK_USAGE,
            &params![host, ip, rid, ts, x.mount_point, int(x.total), int(x.used), int(x.free), x.used_pct, it, iu],
        )?;
    }
    for x in s.network.iter().flatten() {
        let counters = [x.rx_bytes, x.tx_bytes, x.rx_packets, x.tx_packets, x.rx_errors, x.tx_errors];
        let [rb, tb, rp, tp, re, te] = counters.map(int);
        let (rd, td) = (int(x.rx_dropped), int(x.tx_dropped));
        row(
            &NETWORK,
            &params![host, ip, rid, ts, x.name, rb, tb, rp, tp, re, te, rd, td, x.rx_bytes_per_s, x.tx_bytes_per_s],
        )?;
    }
    if let Some(e) = &s.security_events {
        for x in &e.events {
            row(&SECURITY, &params![host, ip, rid, ts, e.source, x.time, x.kind.name(), x.user, x.source, x.message])?;
        }
    }
    Ok(())
}

/// Calls `f` with the `reports` row of `inc`, in the column order of the inserts of both engines.
pub(super) fn report_values<R>(inc: &Incoming, host: i64, f: impl FnOnce(&[Val<'_>]) -> R) -> R {
    let r = &inc.report;
    f(&params![
        inc.agent_id,
        // Bit-for-bit: keeps every u64 sequence distinct (and positive ones, i.e. all real ones, unchanged).
        r.seq,
        host,
        inc.ip,
        r.job,
        r.collected_at_ms,
        inc.received_at_ms,
        inc.received_at_ms.saturating_sub(r.collected_at_ms),
        int(r.dropped),
    ])
}

/// Stores one report and its statistics rows (SQLite: every statement is a cached one, no round trip).
pub(super) fn insert_one(
    tx: &Db,
    hosts: &mut HashMap<String, (i64, String)>,
    inc: &Incoming,
) -> Result<Outcome, StoreError> {
    let host = host_id(tx, hosts, &inc.host, &inc.ip)?;
    let r = &inc.report;
    let ts = sample_time(r.collected_at_ms, inc.received_at_ms);
    let report_id: Option<i64> = report_values(inc, host, |values| {
        tx.query_opt(
            "INSERT INTO reports (agent_id, seq, host_id, client_ip, job, collected_at_ms, received_at_ms,
                                  clock_offset_ms, dropped)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (agent_id, seq) DO NOTHING
             RETURNING id",
            values,
            |row| row.get(0),
        )
    })?;
    let Some(rid) = report_id else {
        return Ok(Outcome::Duplicate);
    };
    family_rows([host, rid, ts], &inc.ip, &r.stats, |table, values| {
        tx.execute(insert_sql(table), values)?;
        Ok(())
    })?;
    if let Some(run) = &r.stats.command {
        insert_command(tx, [host, rid, ts], &inc.ip, &r.job, run)?;
    }
    if !r.stats.unavailable.is_empty()
        || tx
            .query_opt("SELECT 1 FROM unavailable_families WHERE host_id = ?1 LIMIT 1", params![host], |r| {
                r.get::<i64>(0)
            })?
            .is_some()
    {
        record_unavailable(tx, host, ts, &r.stats)?;
    }
    Ok(Outcome::Stored { report_id: rid })
}

/// Keeps `unavailable_families` current for the host: the families the report lists as not available are recorded
/// (the first report's time kept), and each family it serves clears its row. Callers skip it for a host with no row
/// whose report lists none.
pub(super) fn record_unavailable(tx: &Db, host: i64, ts: i64, s: &Stats) -> Result<(), StoreError> {
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
    for (family, present) in served {
        if present {
            tx.execute(
                "DELETE FROM unavailable_families WHERE host_id = ?1 AND family = ?2",
                params![host, family.name()],
            )?;
        }
    }
    for u in &s.unavailable {
        tx.execute(
            "INSERT INTO unavailable_families (host_id, family, reason, since_ts) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (host_id, family) DO UPDATE SET reason = excluded.reason",
            params![host, u.family.name(), u.reason, ts],
        )?;
    }
    Ok(())
}

/// A command run's row and its parsed metrics.
pub(super) fn insert_command(
    tx: &Db,
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
    tx.execute(
        "INSERT INTO command_runs (host_id, client_ip, report_id, ts, job, started_ms, duration_ms, outcome, exit_code,
                                   signal, detail, stdout, stderr, stdout_truncated, stderr_truncated, parse_errors)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        params![
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
        ],
    )?;
    for m in &run.metrics {
        let labels: serde_json::Map<String, serde_json::Value> =
            m.labels.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
        tx.execute(
            "INSERT INTO command_metrics (host_id, client_ip, report_id, ts, job, name, labels, value)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![host, ip, rid, ts, job, m.name, serde_json::Value::Object(labels).to_string(), m.value],
        )?;
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
