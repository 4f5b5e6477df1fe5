//! The `vigil status` view: one row per host with its latest figures, read straight from the database.
//!
//! Every figure comes from an indexed "latest row for this host" lookup (`ORDER BY ts DESC LIMIT 1` on a
//! `(host_id, ts)` index), so the cost of `vigil status` does not grow with history.

use std::collections::HashSet;
use std::fmt::Write as _;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::store::{Store, StoreError};

/// A host is "silent" when nothing was heard for more than this many times its expected interval.
pub const SILENT_AFTER_INTERVALS: i64 = 3;

/// The fullest mounted file system of a host's latest disk usage sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskFill {
    pub mount: String,
    pub pct: f64,
}

/// One row of `vigil status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostStatus {
    pub name: String,
    pub ip: String,
    /// False for a host with history in the database that is no longer in clients.xml.
    pub in_config: bool,
    pub agent_version: Option<String>,
    /// Latest contact (agent connection or report received), server clock, ms since the epoch.
    pub last_seen_ms: Option<i64>,
    pub seconds_since: Option<i64>,
    /// Never seen, or overdue by more than [`SILENT_AFTER_INTERVALS`] times its shortest schedule interval.
    pub silent: bool,
    /// Host clock minus server clock of the latest report, ms (negative: the host's clock is behind).
    pub clock_offset_ms: Option<i64>,
    pub cpu_pct: Option<f64>,
    pub mem_pct: Option<f64>,
    pub swap_pct: Option<f64>,
    pub fullest_disk: Option<DiskFill>,
    /// Alerts of this host firing now.
    pub alerts: Vec<FiringAlert>,
}

/// An alert firing now, as `vigil status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FiringAlert {
    /// The rule key: `cpu`, `memory`, `swap`, `load`, `silence`, `disk` or `disk:<mount>`.
    pub rule: String,
    /// The value that fired it (seconds without a report for silence).
    pub value: Option<f64>,
    pub limit: f64,
    /// Server clock, ms since the epoch.
    pub since_ms: i64,
}

/// The whole view, as `vigil status --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusView<'a> {
    pub hosts: &'a [HostStatus],
    pub config_error: Option<&'a str>,
}

const HOST_BY_NAME: &str = "SELECT id, ip FROM hosts WHERE name = ?1";
const AGENT_OF_HOST: &str = "SELECT version, last_seen_at_ms FROM agents WHERE host = ?1";
const LATEST_REPORT: &str = "SELECT received_at_ms, clock_offset_ms FROM reports WHERE host_id = ?1
     ORDER BY received_at_ms DESC, id DESC LIMIT 1";
const LATEST_CPU: &str = "SELECT total_pct FROM cpu WHERE host_id = ?1 ORDER BY ts DESC, id DESC LIMIT 1";
const LATEST_MEMORY: &str = "SELECT used_pct FROM memory WHERE host_id = ?1 ORDER BY ts DESC, id DESC LIMIT 1";
const LATEST_SWAP: &str = "SELECT used_pct FROM swap WHERE host_id = ?1 ORDER BY ts DESC, id DESC LIMIT 1";
// A bare column next to max() comes from the row holding the maximum (SQLite); no sort needed.
const FULLEST_DISK: &str = "SELECT mount_point, max(used_pct) FROM disk_usage
     WHERE report_id = (SELECT report_id FROM disk_usage WHERE host_id = ?1 ORDER BY ts DESC, id DESC LIMIT 1)";
const ALL_HOSTS: &str = "SELECT name, ip FROM hosts ORDER BY name";

/// The per-host queries of the view, for the query-plan test.
#[cfg(test)]
const PER_HOST_QUERIES: [&str; 7] =
    [HOST_BY_NAME, AGENT_OF_HOST, LATEST_REPORT, LATEST_CPU, LATEST_MEMORY, LATEST_SWAP, FULLEST_DISK];

/// Builds the view: first the configured `hosts` (name, ip, shortest expected interval in seconds), in their
/// order, then hosts that only the database knows (`in_config: false`), by name.
pub fn collect(
    store: &Store,
    hosts: &[(String, String, Option<u32>)],
    now_ms: i64,
) -> Result<Vec<HostStatus>, StoreError> {
    let mut out = Vec::with_capacity(hosts.len());
    let mut seen = HashSet::new();
    for (name, ip, interval) in hosts {
        seen.insert(name.as_str());
        out.push(host_status(store, name, ip, true, *interval, now_ms)?);
    }
    let known: Vec<(String, String)> = {
        let mut stmt = store.conn().prepare_cached(ALL_HOSTS)?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
    };
    for (name, ip) in known {
        if !seen.contains(name.as_str()) {
            out.push(host_status(store, &name, &ip, false, None, now_ms)?);
        }
    }
    Ok(out)
}

fn latest_f64(store: &Store, sql: &str, host_id: i64) -> Result<Option<f64>, StoreError> {
    Ok(store.conn().prepare_cached(sql)?.query_row(params![host_id], |r| r.get(0)).optional()?)
}

fn host_status(
    store: &Store,
    name: &str,
    ip: &str,
    in_config: bool,
    interval_s: Option<u32>,
    now_ms: i64,
) -> Result<HostStatus, StoreError> {
    let conn = store.conn();
    let agent: Option<(Option<String>, Option<i64>)> =
        conn.prepare_cached(AGENT_OF_HOST)?.query_row(params![name], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
    let (agent_version, agent_seen) = agent.unwrap_or((None, None));
    let host_id: Option<i64> = conn.prepare_cached(HOST_BY_NAME)?.query_row(params![name], |r| r.get(0)).optional()?;

    let mut status = HostStatus {
        name: name.to_owned(),
        ip: ip.to_owned(),
        in_config,
        agent_version,
        last_seen_ms: agent_seen,
        seconds_since: None,
        silent: true,
        clock_offset_ms: None,
        cpu_pct: None,
        mem_pct: None,
        swap_pct: None,
        fullest_disk: None,
        alerts: Vec::new(),
    };
    status.alerts = crate::store::alerts::firing_of(conn, name)?
        .into_iter()
        .map(|f| FiringAlert { rule: f.rule, value: f.value, limit: f.limit, since_ms: f.since_ms })
        .collect();
    if let Some(id) = host_id {
        let latest: Option<(i64, i64)> =
            conn.prepare_cached(LATEST_REPORT)?.query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        if let Some((received, offset)) = latest {
            status.last_seen_ms = Some(status.last_seen_ms.map_or(received, |s| s.max(received)));
            // Stored as received - collected; shown as how far the host's clock is ahead.
            status.clock_offset_ms = Some(-offset);
        }
        status.cpu_pct = latest_f64(store, LATEST_CPU, id)?;
        status.mem_pct = latest_f64(store, LATEST_MEMORY, id)?;
        status.swap_pct = latest_f64(store, LATEST_SWAP, id)?;
        // The aggregate yields one row of NULLs when the host never reported disk usage.
        let fullest: Option<(Option<String>, Option<f64>)> =
            conn.prepare_cached(FULLEST_DISK)?.query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        if let Some((Some(mount), Some(pct))) = fullest {
            status.fullest_disk = Some(DiskFill { mount, pct });
        }
    }
    if let Some(seen) = status.last_seen_ms {
        let since_s = now_ms.saturating_sub(seen).max(0) / 1000;
        status.seconds_since = Some(since_s);
        status.silent = match interval_s {
            Some(i) => since_s > SILENT_AFTER_INTERVALS * i64::from(i.max(1)),
            None => false,
        };
    }
    Ok(status)
}

/// The pending config error `vigil serve` recorded, if any.
pub fn config_error(store: &Store) -> Result<Option<String>, StoreError> {
    store.config_error()
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}%"))
}

fn ago(s: Option<i64>) -> String {
    match s {
        None => "never".into(),
        Some(s) if s < 120 => format!("{s}s ago"),
        Some(s) if s < 7_200 => format!("{}m ago", s / 60),
        Some(s) if s < 172_800 => format!("{}h ago", s / 3_600),
        Some(s) => format!("{}d ago", s / 86_400),
    }
}

/// The human table: a header, a row per host, then the pending config error if there is one.
pub fn render_table(hosts: &[HostStatus], config_error: Option<&str>) -> String {
    let header = ["HOST", "IP", "AGENT", "LAST SEEN", "STATE", "CPU", "MEM", "SWAP", "FULLEST DISK"];
    let rows: Vec<[String; 9]> = hosts
        .iter()
        .map(|h| {
            let state = match (h.silent, h.in_config) {
                (true, true) => "SILENT",
                (false, true) => "ok",
                (_, false) => "not in config",
            };
            [
                h.name.clone(),
                h.ip.clone(),
                h.agent_version.clone().unwrap_or_else(|| "-".into()),
                ago(h.seconds_since),
                state.into(),
                pct(h.cpu_pct),
                pct(h.mem_pct),
                pct(h.swap_pct),
                h.fullest_disk.as_ref().map_or_else(|| "-".into(), |d| format!("{} {:.1}%", d.mount, d.pct)),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.zip(widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let _ = write!(l, "{cell:<w$}");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    if hosts.is_empty() {
        out.push_str("(no hosts)\n");
    }
    let firing: Vec<(&str, &FiringAlert)> =
        hosts.iter().flat_map(|h| h.alerts.iter().map(move |a| (h.name.as_str(), a))).collect();
    if !firing.is_empty() {
        let _ = writeln!(out, "\nfiring alerts:");
        for (host, a) in firing {
            let value = a.value.map_or_else(|| "-".into(), crate::alert::message::num);
            let since = crate::alert::message::utc(a.since_ms);
            let _ = writeln!(
                out,
                "  {host}  {}  value {value}  limit {}  since {since}",
                a.rule,
                crate::alert::message::num(a.limit)
            );
        }
    }
    if let Some(e) = config_error {
        let _ = writeln!(out, "\npending config error (the previous config stays in force):\n{e}");
    }
    out
}

/// The JSON form: `{"hosts": [...], "config_error": null | "..."}`.
pub fn render_json(hosts: &[HostStatus], config_error: Option<&str>) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&StatusView { hosts, config_error })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;
    use crate::store::Incoming;
    use vigil_schema::report::{CpuStats, DiskUsage, MemoryStats, Report, Stats};

    fn report(seq: u64, at: i64, cpu: f32, disks: &[(&str, f32)]) -> Incoming {
        Incoming {
            agent_id: "ag".into(),
            host: "web1".into(),
            ip: "10.0.0.1".into(),
            received_at_ms: at,
            report: Report {
                seq,
                job: "vitals".into(),
                collected_at_ms: at,
                dropped: 0,
                stats: Stats {
                    cpu: Some(CpuStats {
                        total_pct: cpu,
                        per_core_pct: vec![cpu],
                        load1: 0.0,
                        load5: 0.0,
                        load15: 0.0,
                    }),
                    memory: Some(MemoryStats { total: 10, used: 5, available: 5, free: 5, used_pct: 50.0 }),
                    disk_usage: Some(
                        disks
                            .iter()
                            .map(|(m, p)| DiskUsage {
                                mount_point: (*m).into(),
                                total: 100,
                                used: 1,
                                free: 99,
                                used_pct: *p,
                                inodes_total: None,
                                inodes_used: None,
                            })
                            .collect(),
                    ),
                    ..Stats::default()
                },
            },
        }
    }

    #[test]
    fn status_queries_use_indexes_and_never_scan_history() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("v.db")).unwrap();
        // Some history, then ANALYZE, so the planner sees a realistic table and not an empty one.
        let batch: Vec<_> =
            (1..300).map(|s| report(s, 1_000 * s as i64, 10.0, &[("/", 20.0), ("/var", 30.0)])).collect();
        store.insert_reports(&batch).unwrap();
        store.conn().execute_batch("ANALYZE").unwrap();
        for sql in PER_HOST_QUERIES {
            let mut stmt = store.conn().prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let plan: Vec<String> =
                stmt.query_map(params![1], |r| r.get::<_, String>(3)).unwrap().collect::<Result<_, _>>().unwrap();
            for step in &plan {
                assert!(!step.starts_with("SCAN"), "{sql}\nscans: {plan:?}");
                assert!(!step.contains("TEMP B-TREE"), "{sql}\nsorts: {plan:?}");
            }
            assert!(plan.iter().any(|s| s.contains("INDEX")), "{sql}\nno index: {plan:?}");
        }
    }

    #[test]
    fn latest_values_silence_and_unknown_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("v.db")).unwrap();
        store
            .insert_reports(&[
                report(1, 10_000, 90.0, &[("/", 95.0)]),
                report(2, 20_000, 12.5, &[("/", 40.0), ("/data", 81.5)]),
            ])
            .unwrap();
        let hosts =
            vec![("web1".to_string(), "10.0.0.1".to_string(), Some(10)), ("db1".into(), "10.0.0.9".into(), Some(10))];
        let view = collect(&store, &hosts, 45_000).unwrap();
        assert_eq!(view.len(), 2);
        let w = &view[0];
        assert_eq!(w.cpu_pct, Some(12.5));
        assert_eq!(w.mem_pct, Some(50.0));
        assert_eq!(w.fullest_disk, Some(DiskFill { mount: "/data".into(), pct: 81.5 }));
        assert_eq!(w.seconds_since, Some(25));
        assert!(!w.silent, "25 s with a 10 s interval is within 3x");
        assert!(view[1].silent, "never seen");
        let later = collect(&store, &hosts, 51_000).unwrap();
        assert!(later[0].silent, "31 s with a 10 s interval is overdue");
        // Dropped from config: still listed, marked.
        let view = collect(&store, &hosts[1..], 45_000).unwrap();
        assert_eq!(view.len(), 2);
        assert!(!view[1].in_config && view[1].name == "web1");

        let table = render_table(&later, Some("clients.xml:4:2: missing ip"));
        assert!(table.contains("SILENT") && table.contains("/data 81.5%") && table.contains("missing ip"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&render_json(&later, None).unwrap()).unwrap();
        assert_eq!(json["hosts"][0]["fullest_disk"]["mount"], "/data");
        assert_eq!(json["config_error"], serde_json::Value::Null);
    }
}
