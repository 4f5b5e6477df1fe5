//! The read side of the operator views: the per-host queries of `vigil status`, as typed rows. Every query is an
//! index lookup of the newest row (the query-plan test below holds them to it), so the view costs the same with a
//! year of history as with a day.

use super::{OptionalExtension, params};

use super::{Store, StoreError};

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
// PostgreSQL has no bare column next to max(): the same rows by sorting.
const FULLEST_DISK_PG: &str = "SELECT mount_point, used_pct FROM disk_usage
     WHERE report_id = (SELECT report_id FROM disk_usage WHERE host_id = ?1 ORDER BY ts DESC, id DESC LIMIT 1)
     ORDER BY used_pct DESC, mount_point LIMIT 1";
const ALL_HOSTS: &str = "SELECT name, ip FROM hosts ORDER BY name";
const UNAVAILABLE_OF: &str = "SELECT family, reason, since_ts FROM unavailable_families
     WHERE host_id = (SELECT id FROM hosts WHERE name = ?1) ORDER BY family";

// The same lookups for every host at once: one statement per kind, each an index lookup per host (so the fleet page
// of a thousand hosts runs a handful of statements, not thousands).
const ALL_AGENTS: &str = "SELECT host, version, last_seen_at_ms FROM agents";
const ALL_LATEST: &str = "SELECT h.name,
     (SELECT received_at_ms FROM reports WHERE host_id = h.id ORDER BY received_at_ms DESC, id DESC LIMIT 1),
     (SELECT clock_offset_ms FROM reports WHERE host_id = h.id ORDER BY received_at_ms DESC, id DESC LIMIT 1),
     (SELECT total_pct FROM cpu WHERE host_id = h.id ORDER BY ts DESC, id DESC LIMIT 1),
     (SELECT used_pct FROM memory WHERE host_id = h.id ORDER BY ts DESC, id DESC LIMIT 1),
     (SELECT used_pct FROM swap WHERE host_id = h.id ORDER BY ts DESC, id DESC LIMIT 1)
     FROM hosts h";
const ALL_FULLEST_DISKS: &str = "SELECT h.name, d.mount_point, max(d.used_pct) FROM hosts h JOIN disk_usage d
     ON d.report_id = (SELECT report_id FROM disk_usage WHERE host_id = h.id ORDER BY ts DESC, id DESC LIMIT 1)
     GROUP BY h.id";

const ALL_FULLEST_DISKS_PG: &str = "SELECT DISTINCT ON (h.id) h.name, d.mount_point, d.used_pct
     FROM hosts h JOIN disk_usage d
     ON d.report_id = (SELECT report_id FROM disk_usage WHERE host_id = h.id ORDER BY ts DESC, id DESC LIMIT 1)
     ORDER BY h.id, d.used_pct DESC, d.mount_point";

/// The per-host queries of the view, for the query-plan test.
#[cfg(test)]
const PER_HOST_QUERIES: [&str; 7] =
    [HOST_BY_NAME, AGENT_OF_HOST, LATEST_REPORT, LATEST_CPU, LATEST_MEMORY, LATEST_SWAP, FULLEST_DISK];

/// What the database knows of one host: its agent, its latest report and latest figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostRow {
    pub agent_version: Option<String>,
    /// The agent's latest check-in, server clock.
    pub agent_seen_ms: Option<i64>,
    /// Receive time (server clock) of the latest report.
    pub last_report_ms: Option<i64>,
    /// `received - collected` of the latest report, ms.
    pub report_offset_ms: Option<i64>,
    pub cpu_pct: Option<f64>,
    pub mem_pct: Option<f64>,
    pub swap_pct: Option<f64>,
    /// The fullest mount of the latest disk usage sample: (mount, used percent).
    pub fullest_disk: Option<(String, f64)>,
}

/// A statistics family a host cannot serve, as its reports say (`unavailable_families`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnavailableRow {
    /// The collector's name: `users`, `security_events`, ...
    pub family: String,
    pub reason: String,
    /// Sample time of the first report that said so, ms since the epoch.
    pub since_ms: i64,
}

impl Store {
    /// The families host `name` cannot serve now, by name; none for a host the database does not know.
    pub fn unavailable_of(&self, name: &str) -> Result<Vec<UnavailableRow>, StoreError> {
        let stmt = self.conn.stmt(UNAVAILABLE_OF)?;
        let rows = stmt.query_map(params![name], |r| {
            Ok(UnavailableRow { family: r.get(0)?, reason: r.get(1)?, since_ms: r.get(2)? })
        })?;
        Ok(rows)
    }

    /// Every host that ever reported: (name, ip), by name.
    pub fn known_hosts(&self) -> Result<Vec<(String, String)>, StoreError> {
        let stmt = self.conn.stmt(ALL_HOSTS)?;
        stmt.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?)))
    }

    /// [`Store::host_row`] of every host the database knows (by agent or by report), keyed by name, in four
    /// statements whatever the number of hosts.
    pub fn host_rows(&self) -> Result<std::collections::HashMap<String, HostRow>, StoreError> {
        let conn = &self.conn;
        let mut rows: std::collections::HashMap<String, HostRow> = std::collections::HashMap::new();
        let stmt = conn.stmt(ALL_AGENTS)?;
        for r in stmt.query_map(params![], |r| Ok((r.get::<String>(0)?, r.get(1)?, r.get(2)?)))? {
            let (name, version, seen) = r;
            let row = rows.entry(name).or_default();
            (row.agent_version, row.agent_seen_ms) = (version, seen);
        }
        let stmt = conn.stmt(ALL_LATEST)?;
        let latest = stmt.query_map(params![], |r| {
            Ok((r.get::<String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
        })?;
        for r in latest {
            let (name, received, offset, cpu, mem, swap) = r;
            let row = rows.entry(name).or_default();
            (row.last_report_ms, row.report_offset_ms) = (received, offset);
            (row.cpu_pct, row.mem_pct, row.swap_pct) = (cpu, mem, swap);
        }
        let stmt = conn.stmt(match conn.engine() {
            super::Engine::Sqlite => ALL_FULLEST_DISKS,
            super::Engine::Postgres => ALL_FULLEST_DISKS_PG,
        })?;
        for r in stmt.query_map(params![], |r| Ok((r.get::<String>(0)?, r.get(1)?, r.get(2)?)))? {
            if let (name, Some(mount), Some(pct)) = r {
                rows.entry(name).or_default().fullest_disk = Some((mount, pct));
            }
        }
        Ok(rows)
    }

    /// The view's figures of host `name`; all `None` for a host the database does not know.
    pub fn host_row(&self, name: &str) -> Result<HostRow, StoreError> {
        let conn = &self.conn;
        let mut row = HostRow::default();
        let agent: Option<(Option<String>, Option<i64>)> =
            conn.stmt(AGENT_OF_HOST)?.query_row(params![name], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        (row.agent_version, row.agent_seen_ms) = agent.unwrap_or((None, None));
        let host_id: Option<i64> = conn.stmt(HOST_BY_NAME)?.query_row(params![name], |r| r.get(0)).optional()?;
        let Some(id) = host_id else { return Ok(row) };
        let latest: Option<(i64, i64)> =
            conn.stmt(LATEST_REPORT)?.query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
        if let Some((received, offset)) = latest {
            row.last_report_ms = Some(received);
            row.report_offset_ms = Some(offset);
        }
        let latest_f64 = |sql: &str| -> Result<Option<f64>, StoreError> {
            conn.stmt(sql)?.query_row(params![id], |r| r.get(0)).optional()
        };
        row.cpu_pct = latest_f64(LATEST_CPU)?;
        row.mem_pct = latest_f64(LATEST_MEMORY)?;
        row.swap_pct = latest_f64(LATEST_SWAP)?;
        // The aggregate yields one row of NULLs when the host never reported disk usage.
        let fullest: Option<(Option<String>, Option<f64>)> = conn
            .stmt(match conn.engine() {
                super::Engine::Sqlite => FULLEST_DISK,
                super::Engine::Postgres => FULLEST_DISK_PG,
            })?
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((Some(mount), Some(pct))) = fullest {
            row.fullest_disk = Some((mount, pct));
        }
        Ok(row)
    }
}

/// A vitals report of host `web1` (cpu, memory, the given disks) for the store's and the status view's unit tests.
#[cfg(test)]
pub(crate) fn vitals(seq: u64, at: i64, cpu: f32, disks: &[(&str, f32)]) -> super::Incoming {
    use vigil_schema::report::{CpuStats, DiskUsage, MemoryStats, Report, Stats};
    super::Incoming {
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
                cpu: Some(CpuStats { total_pct: cpu, per_core_pct: vec![cpu], load1: 0.0, load5: 0.0, load15: 0.0 }),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Incoming;

    fn report(seq: u64, at: i64) -> Incoming {
        vitals(seq, at, 10.0, &[("/", 20.0), ("/var", 20.0)])
    }

    #[test]
    fn the_status_rows_read_alike_on_each_engine() {
        crate::store::each_engine(|store| {
            store.insert_reports(&[super::vitals(1, 1_000, 12.5, &[("/", 40.0), ("/data", 91.0)])]).unwrap();
            let all = store.host_rows().unwrap();
            let row = store.host_row("web1").unwrap();
            assert_eq!(all["web1"], row);
            assert_eq!(row.cpu_pct, Some(12.5));
            assert_eq!(row.fullest_disk, Some(("/data".to_owned(), 91.0)));
            assert_eq!(store.known_hosts().unwrap().len(), 1);
            assert!(store.unavailable_of("web1").unwrap().is_empty());
        });
    }

    #[test]
    fn unavailable_families_are_recorded_until_served_again() {
        use vigil_schema::job::Collector;
        use vigil_schema::report::{SecurityEvents, Unavailable, Users};
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("u.db")).unwrap();
        let with = |seq: u64, at: i64, f: &dyn Fn(&mut vigil_schema::report::Stats)| {
            let mut inc = report(seq, at);
            f(&mut inc.report.stats);
            inc
        };
        let not = |family, reason: &str| Unavailable { family, reason: reason.into() };
        store.insert_reports(&[report(1, 1_000)]).unwrap();
        assert_eq!(store.unavailable_of("web1").unwrap(), []);
        let first = with(2, 2_000, &|s| {
            s.unavailable = vec![not(Collector::Users, "no session API"), not(Collector::SecurityEvents, "denied")]
        });
        store.insert_reports(&[first]).unwrap();
        let later = with(3, 3_000, &|s| s.unavailable = vec![not(Collector::SecurityEvents, "still denied")]);
        store.insert_reports(&[later]).unwrap();
        let got = store.unavailable_of("web1").unwrap();
        let got: Vec<_> = got.iter().map(|u| (u.family.as_str(), u.reason.as_str(), u.since_ms)).collect();
        assert_eq!(got, [("security_events", "still denied", 2_000), ("users", "no session API", 2_000)]);
        // The log becomes readable, sessions too: served families clear their rows.
        let served = with(4, 4_000, &|s| {
            s.security_events = Some(SecurityEvents::default());
            s.users = Some(Users::default());
        });
        store.insert_reports(&[served]).unwrap();
        assert_eq!(store.unavailable_of("web1").unwrap(), []);
        assert_eq!(store.unavailable_of("nobody").unwrap(), []);
        let plan_sql = format!("EXPLAIN QUERY PLAN {UNAVAILABLE_OF}");
        let stmt = store.conn().stmt(&plan_sql).unwrap();
        let plan: Vec<String> = stmt.query_map(params!["web1"], |r| r.get::<String>(3)).unwrap();
        assert!(plan.iter().all(|s| !s.starts_with("SCAN") && !s.contains("TEMP B-TREE")), "{plan:?}");
    }

    #[test]
    fn status_queries_use_indexes_and_never_scan_history() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("v.db")).unwrap();
        // Some history, then ANALYZE, so the planner sees a realistic table and not an empty one.
        let batch: Vec<_> = (1..300).map(|s| report(s, 1_000 * s as i64)).collect();
        store.insert_reports(&batch).unwrap();
        store.conn().batch("ANALYZE").unwrap();
        for sql in PER_HOST_QUERIES {
            let plan_sql = format!("EXPLAIN QUERY PLAN {sql}");
            let stmt = store.conn().stmt(&plan_sql).unwrap();
            let plan: Vec<String> = stmt.query_map(params![1], |r| r.get::<String>(3)).unwrap();
            for step in &plan {
                assert!(!step.starts_with("SCAN"), "{sql}\nscans: {plan:?}");
                assert!(!step.contains("TEMP B-TREE"), "{sql}\nsorts: {plan:?}");
            }
            assert!(plan.iter().any(|s| s.contains("INDEX")), "{sql}\nno index: {plan:?}");
        }
        for sql in [ALL_LATEST, ALL_FULLEST_DISKS] {
            let plan_sql = format!("EXPLAIN QUERY PLAN {sql}");
            let stmt = store.conn().stmt(&plan_sql).unwrap();
            let plan: Vec<String> = stmt.query_map(params![], |r| r.get::<String>(3)).unwrap();
            // The outer loop walks the hosts; every lookup inside is an index search, never a scan of history.
            let scans: Vec<&String> = plan.iter().filter(|s| s.starts_with("SCAN") && !s.contains(" h")).collect();
            assert!(scans.is_empty(), "{sql}\nscans: {plan:?}");
        }
        let all = store.host_rows().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all["web1"], store.host_row("web1").unwrap());
        assert!(all["web1"].fullest_disk.is_some() && all["web1"].cpu_pct.is_some());
    }
}
