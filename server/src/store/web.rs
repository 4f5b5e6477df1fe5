//! The read side of the web dashboard, the JSON API, `/metrics` and `vigil export`: time series bucketed into
//! min/avg/max by SQL (a point budget caps the buckets), each host's latest values, its details, sessions and
//! security events, and rows of a family since a time. Every query is a range or newest-row lookup on a
//! `(host_id, ts)` index.

use serde::Serialize;

use super::alerts::EventRow;
use super::db::{Stmt, Val};
use super::{OptionalExtension, Store, StoreError, params};

/// A metric the series endpoint serves: which table, and the lines it draws (label expression, value expression).
/// Every string here is a constant of this file: no request text reaches the SQL.
#[derive(Debug, Clone, Copy)]
struct MetricDef {
    name: &'static str,
    /// The `FROM` clause; the table's columns are qualified `t.`.
    from: &'static str,
    lines: &'static [(&'static str, &'static str)],
}

const METRICS: [MetricDef; 9] = [
    MetricDef { name: "cpu", from: "cpu t", lines: &[("'total'", "t.total_pct")] },
    MetricDef {
        name: "cpu_cores",
        // One row per core: the stored JSON array unrolled by SQLite's json_each.
        from: "cpu t, json_each(t.per_core_pct) j",
        lines: &[("'core ' || j.key", "j.value")],
    },
    MetricDef {
        name: "load",
        from: "cpu t",
        lines: &[("'load1'", "t.load1"), ("'load5'", "t.load5"), ("'load15'", "t.load15")],
    },
    MetricDef { name: "memory", from: "memory t", lines: &[("'used %'", "t.used_pct")] },
    MetricDef {
        name: "memory_bytes",
        from: "memory t",
        lines: &[("'used'", "t.used"), ("'available'", "t.available")],
    },
    MetricDef { name: "swap", from: "swap t", lines: &[("'used %'", "t.used_pct")] },
    MetricDef { name: "disk", from: "disk_usage t", lines: &[("t.mount_point", "t.used_pct")] },
    MetricDef { name: "net_rx", from: "network t", lines: &[("t.name", "t.rx_bytes_per_s")] },
    MetricDef { name: "net_tx", from: "network t", lines: &[("t.name", "t.tx_bytes_per_s")] },
];

/// The metric names [`Store::series`] knows, in the order the host page draws them.
pub fn metric_names() -> impl Iterator<Item = &'static str> {
    METRICS.iter().map(|m| m.name)
}

/// One time bucket of a line: the minimum, mean and maximum of the samples in it (spikes survive downsampling).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bucket {
    /// Start of the bucket, ms since the epoch.
    pub t_ms: i64,
    pub min: f64,
    pub avg: f64,
    pub max: f64,
}

/// One line of a chart (a mount, an interface, a core, or the metric itself).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    pub label: String,
    /// Buckets holding samples, oldest first (empty buckets are left out).
    pub buckets: Vec<Bucket>,
}

/// A metric of a host over a time range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub bucket_ms: i64,
    pub lines: Vec<Line>,
}

/// Latest values of a host, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latest {
    /// (total percent, load1, load5, load15, per-core percent JSON)
    pub cpu: Option<(f64, f64, f64, f64)>,
    /// (total, used, available, free) bytes
    pub memory: Option<(i64, i64, i64, i64)>,
    /// (total, used, free) bytes
    pub swap: Option<(i64, i64, i64)>,
    /// (mount, total, free) bytes of the latest disk sample
    pub disks: Vec<(String, i64, i64)>,
    /// (interface, rx bytes, tx bytes) counters of the latest network sample
    pub networks: Vec<(String, i64, i64)>,
    /// Receive time (server clock) of the latest report, ms.
    pub last_report_ms: Option<i64>,
}

/// The latest system details of a host.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Details {
    pub hostname: String,
    pub os_name: String,
    pub os_version: String,
    pub kernel: String,
    pub arch: String,
    pub uptime_s: i64,
    pub cpu_model: String,
    pub cpu_count: i64,
}

/// A session of the latest users sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionRow {
    pub user: String,
    pub terminal: String,
    pub remote_host: Option<String>,
    pub login_time: i64,
}

/// A recorded security event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecurityRow {
    pub ts_ms: i64,
    pub kind: String,
    pub user: Option<String>,
    pub message: String,
}

/// The families `vigil export` writes: (name, table, columns after host and time).
const EXPORT_FAMILIES: [(&str, &str, &[&str]); 9] = [
    (
        "system",
        "system_details",
        &["hostname", "os_name", "os_version", "kernel", "arch", "uptime_s", "boot_time", "cpu_model", "cpu_count"],
    ),
    ("sessions", "sessions", &["source", "user", "terminal", "remote_host", "login_time"]),
    ("cpu", "cpu", &["total_pct", "per_core_pct", "load1", "load5", "load15"]),
    ("memory", "memory", &["total", "used", "available", "free", "used_pct"]),
    ("swap", "swap", &["total", "used", "free", "used_pct"]),
    ("partitions", "partitions", &["device", "mount_point", "fs_type", "options"]),
    ("disk_usage", "disk_usage", &["mount_point", "total", "used", "free", "used_pct", "inodes_total", "inodes_used"]),
    (
        "network",
        "network",
        &[
            "name",
            "rx_bytes",
            "tx_bytes",
            "rx_packets",
            "tx_packets",
            "rx_errors",
            "tx_errors",
            "rx_dropped",
            "tx_dropped",
            "rx_bytes_per_s",
            "tx_bytes_per_s",
        ],
    ),
    ("security_events", "security_events", &["source", "event_time", "kind", "user", "event_source", "message"]),
];

/// The families `vigil export` knows, in its order.
pub fn export_families() -> impl Iterator<Item = &'static str> {
    EXPORT_FAMILIES.iter().map(|f| f.0)
}

/// The columns of an export family after `host` and `ts_ms`; `None` for an unknown family.
pub fn export_columns(family: &str) -> Option<&'static [&'static str]> {
    EXPORT_FAMILIES.iter().find(|f| f.0 == family).map(|f| f.2)
}

/// A value of an exported row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

const HOST_ID: &str = "SELECT id FROM hosts WHERE name = ?1";

/// Width of a roll-up bucket (`rollup_5m`).
pub const ROLLUP_MS: i64 = 300_000;
/// Reports rolled up per [`Store::roll_up`] call, so one call holds the writer briefly.
const ROLLUP_CHUNK: i64 = 20_000;

/// min, sum, count and max of the samples of one (line, bucket), from roll-ups and raw rows alike.
#[derive(Debug, Clone, Copy)]
struct Agg {
    n: i64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Agg {
    fn add(&mut self, o: Agg) {
        self.n += o.n;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
}

/// The lines of a series as rows arrive: per label, (bucket index, aggregate) in arrival order. Rows are bucketed
/// here rather than by SQL `GROUP BY`, which would sort them first; they come along an index, in time order.
#[derive(Debug, Default)]
struct Acc {
    lines: Vec<(String, Vec<(i64, Agg)>)>,
}

impl Acc {
    fn add(&mut self, label: &str, b: i64, a: Agg) {
        let i = match self.lines.iter().position(|(l, _)| l == label) {
            Some(i) => i,
            None => {
                self.lines.push((label.to_owned(), Vec::new()));
                self.lines.len() - 1
            }
        };
        let buckets = &mut self.lines[i].1;
        match buckets.last_mut() {
            Some((last, agg)) if *last == b => agg.add(a),
            _ => buckets.push((b, a)),
        }
    }

    /// Adds the rows of `stmt` run with `params`: (label, sample time, value), each into bucket
    /// `(time - from_ms) / bucket_ms`.
    fn add_samples(
        &mut self,
        stmt: Stmt<'_>,
        params: &[Val<'_>],
        from_ms: i64,
        bucket_ms: i64,
    ) -> Result<(), StoreError> {
        stmt.for_each(params, |r| {
            let (ts, v): (i64, f64) = (r.get(1)?, r.get(2)?);
            self.add(r.text(0)?, (ts - from_ms) / bucket_ms, Agg { n: 1, sum: v, min: v, max: v });
            Ok::<_, StoreError>(())
        })
    }

    /// The lines by label, each's buckets by time (equal buckets merged, had rows come out of order).
    fn finish(mut self, from_ms: i64, bucket_ms: i64) -> Series {
        self.lines.sort_by(|a, b| a.0.cmp(&b.0));
        let lines = self
            .lines
            .into_iter()
            .map(|(label, mut buckets)| {
                buckets.sort_by_key(|(b, _)| *b);
                let mut merged: Vec<(i64, Agg)> = Vec::with_capacity(buckets.len());
                for (b, a) in buckets {
                    match merged.last_mut() {
                        Some((last, agg)) if *last == b => agg.add(a),
                        _ => merged.push((b, a)),
                    }
                }
                let buckets = merged
                    .into_iter()
                    .map(|(b, a)| Bucket {
                        t_ms: from_ms + b * bucket_ms,
                        min: a.min,
                        avg: a.sum / a.n.max(1) as f64,
                        max: a.max,
                    })
                    .collect();
                Line { label, buckets }
            })
            .collect();
        Series { bucket_ms, lines }
    }
}

/// Reports are rolled up once received this long ago: no transaction that took a lower id is still open by then.
/// Charts read the raw rows of the reports not rolled up yet, so nothing is missing meanwhile.
const ROLLUP_SETTLE_MS: i64 = 60_000;

/// Largest number of buckets a series request may ask for.
pub const MAX_POINTS: u32 = 5_000;

impl Store {
    fn host_id(&self, host: &str) -> Result<Option<i64>, StoreError> {
        self.conn.stmt(HOST_ID)?.query_row(params![host], |r| r.get(0)).optional()
    }

    /// `metric` of `host` over `[from_ms, to_ms)`, in at most `points` buckets per line. `None`: an unknown metric.
    /// A host the database does not know has no lines.
    pub fn series(
        &self,
        host: &str,
        metric: &str,
        from_ms: i64,
        to_ms: i64,
        points: u32,
    ) -> Result<Option<Series>, StoreError> {
        let Some(def) = METRICS.iter().find(|m| m.name == metric) else { return Ok(None) };
        let points = i64::from(points.clamp(1, MAX_POINTS));
        let span = to_ms.saturating_sub(from_ms).max(1);
        // Ceiling division: at most `points` buckets cover the range.
        let bucket_ms = ((span + points - 1) / points).max(1);
        let Some(id) = self.host_id(host)? else { return Ok(Some(Series { bucket_ms, lines: Vec::new() })) };
        let mut acc = Acc::default();
        if bucket_ms >= ROLLUP_MS {
            // Coarse buckets: the roll-ups of the reports already rolled up, plus the raw rows of the newer ones.
            let rolled: i64 = self
                .conn
                .stmt("SELECT last_report_id FROM rollup_state WHERE id = 1")?
                .query_row(params![], |r| r.get(0))?;
            let stmt = self.conn.stmt(
                "SELECT label, bucket_ms, n, sum, min, max FROM rollup_5m
                 WHERE host_id = ?1 AND metric = ?4 AND bucket_ms > CAST(?2 AS BIGINT) - CAST(?5 AS BIGINT) AND bucket_ms < ?3",
            )?;
            stmt.for_each(params![id, from_ms, to_ms, def.name, ROLLUP_MS], |r| {
                // A roll-up bucket straddling `from_ms` counts into the first bucket.
                let b = ((r.get::<i64>(1)? - from_ms) / bucket_ms).max(0);
                acc.add(r.text(0)?, b, Agg { n: r.get(2)?, sum: r.get(3)?, min: r.get(4)?, max: r.get(5)? });
                Ok::<_, StoreError>(())
            })?;
            // The unary `+` keeps the planner off the `(host_id, ts)` index, which would scan the whole range: the
            // reports not rolled up yet are the few newest, found through the `report_id` index.
            for (label, value) in def.lines {
                let sql = format!(
                    "SELECT {label}, t.ts, {value} FROM {from}
                     WHERE t.report_id > ?4 AND +t.host_id = ?1 AND +t.ts >= ?2 AND +t.ts < ?3 AND {value} IS NOT NULL",
                    from = def.from
                );
                acc.add_samples(self.conn.stmt(&sql)?, &params![id, from_ms, to_ms, rolled], from_ms, bucket_ms)?;
            }
        } else {
            for (label, value) in def.lines {
                let sql = format!(
                    "SELECT {label}, t.ts, {value} FROM {from}
                     WHERE t.host_id = ?1 AND t.ts >= ?2 AND t.ts < ?3 AND {value} IS NOT NULL",
                    from = def.from
                );
                acc.add_samples(self.conn.stmt(&sql)?, &params![id, from_ms, to_ms], from_ms, bucket_ms)?;
            }
        }
        Ok(Some(acc.finish(from_ms, bucket_ms)))
    }

    /// `metric` of every host over `[from_ms, to_ms)` in at most `points` buckets per line, keyed by host name, in
    /// a few statements whatever the number of hosts (the fleet page's sparklines). It walks the hosts and reads
    /// each one's rows along an index: with buckets of 5 minutes or more, as [`Store::series`] does, its
    /// `rollup_5m` rows plus the raw rows of the reports not rolled up yet, so the cost does not grow with how
    /// often hosts report; with finer buckets the raw rows, meant for short ranges. `None`: an unknown metric.
    pub fn series_of_all(
        &self,
        metric: &str,
        from_ms: i64,
        to_ms: i64,
        points: u32,
    ) -> Result<Option<std::collections::HashMap<String, Series>>, StoreError> {
        let Some(def) = METRICS.iter().find(|m| m.name == metric) else { return Ok(None) };
        let points = i64::from(points.clamp(1, MAX_POINTS));
        let bucket_ms = ((to_ms.saturating_sub(from_ms).max(1) + points - 1) / points).max(1);
        let mut acc: std::collections::HashMap<i64, Acc> = std::collections::HashMap::new();
        let mut add_rows = |stmt: Stmt<'_>, p: &[Val<'_>]| {
            stmt.for_each(p, |r| {
                let (host, ts, v): (i64, i64, f64) = (r.get(0)?, r.get(2)?, r.get(3)?);
                let a = Agg { n: 1, sum: v, min: v, max: v };
                acc.entry(host).or_default().add(r.text(1)?, (ts - from_ms) / bucket_ms, a);
                Ok::<_, StoreError>(())
            })
        };
        // CROSS JOIN keeps hosts as the outer loop, so each host's rows are one index range.
        if bucket_ms >= ROLLUP_MS {
            let rolled: i64 = self
                .conn
                .stmt("SELECT last_report_id FROM rollup_state WHERE id = 1")?
                .query_row(params![], |r| r.get(0))?;
            for (label, value) in def.lines {
                let sql = format!(
                    "SELECT t.host_id, {label}, t.ts, {value} FROM {from}
                     WHERE t.report_id > ?3 AND +t.ts >= ?1 AND +t.ts < ?2 AND {value} IS NOT NULL",
                    from = def.from
                );
                add_rows(self.conn.stmt(&sql)?, &params![from_ms, to_ms, rolled])?;
            }
            let stmt = self.conn.stmt(
                "SELECT h.id, r.label, r.bucket_ms, r.n, r.sum, r.min, r.max FROM hosts h CROSS JOIN rollup_5m r
                 WHERE r.host_id = h.id AND r.metric = ?3 AND r.bucket_ms > CAST(?1 AS BIGINT) - CAST(?4 AS BIGINT) AND r.bucket_ms < ?2",
            )?;
            stmt.for_each(params![from_ms, to_ms, def.name, ROLLUP_MS], |r| {
                let b = ((r.get::<i64>(2)? - from_ms) / bucket_ms).max(0);
                let a = Agg { n: r.get(3)?, sum: r.get(4)?, min: r.get(5)?, max: r.get(6)? };
                acc.entry(r.get(0)?).or_default().add(r.text(1)?, b, a);
                Ok::<_, StoreError>(())
            })?;
        } else {
            for (label, value) in def.lines {
                let sql = format!(
                    "SELECT h.id, {label}, t.ts, {value} FROM hosts h CROSS JOIN {from}
                     WHERE t.host_id = h.id AND t.ts >= ?1 AND t.ts < ?2 AND {value} IS NOT NULL",
                    from = def.from
                );
                add_rows(self.conn.stmt(&sql)?, &params![from_ms, to_ms])?;
            }
        }
        let names: std::collections::HashMap<i64, String> = self
            .conn
            .stmt("SELECT id, name FROM hosts")?
            .query_map(params![], |r| Ok((r.get(0)?, r.get(1)?)))?
            .into_iter()
            .collect();
        let mut out = std::collections::HashMap::with_capacity(acc.len());
        for (host, lines) in acc {
            if let Some(name) = names.get(&host) {
                out.insert(name.clone(), lines.finish(from_ms, bucket_ms));
            }
        }
        Ok(Some(out))
    }

    /// Every row of `family` sampled at or after `since_ms` (of `host` only, when named), oldest first, handed to
    /// `row` one at a time as (host, ts_ms, cells in [`export_columns`] order): memory stays flat however much is
    /// exported. `Ok(false)`: an unknown family. An error from `row` stops the export and is returned.
    pub fn export<E: From<StoreError>>(
        &self,
        family: &str,
        host: Option<&str>,
        since_ms: i64,
        mut row: impl FnMut(&str, i64, &[Cell]) -> Result<(), E>,
    ) -> Result<bool, E> {
        let Some((_, table, columns)) = EXPORT_FAMILIES.iter().find(|f| f.0 == family) else { return Ok(false) };
        let cols: Vec<String> = columns.iter().map(|c| format!("t.{c}")).collect();
        let sql = format!(
            "SELECT h.name, t.ts, {} FROM {table} t JOIN hosts h ON h.id = t.host_id
             WHERE t.ts >= ?1 AND (CAST(?2 AS TEXT) IS NULL OR h.name = ?2) ORDER BY t.ts, t.id",
            cols.join(", ")
        );
        let stmt = self.conn.stmt(&sql)?;
        let mut cells = Vec::with_capacity(columns.len());
        stmt.for_each(params![since_ms, host], |r| {
            let name: String = r.get(0)?;
            let ts: i64 = r.get(1)?;
            cells.clear();
            for i in 0..columns.len() {
                cells.push(match r.cell(i + 2)? {
                    super::db::Cell::Null => Cell::Null,
                    super::db::Cell::Int(n) => Cell::Int(n),
                    super::db::Cell::Real(x) => Cell::Real(x),
                    super::db::Cell::Text(t) => Cell::Text(t.to_owned()),
                    super::db::Cell::Bytes(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                });
            }
            row(&name, ts, &cells)
        })?;
        Ok(true)
    }

    /// Adds the samples of reports stored since the last call into `rollup_5m`, at most [`ROLLUP_CHUNK`] reports per
    /// call (one transaction). Returns how many reports were rolled up; run it until it returns less than a chunk.
    /// Only the daemon's writer calls it.
    pub fn roll_up(&mut self) -> Result<i64, StoreError> {
        self.write_tx(|tx| {
            let conn = tx.0;
            // Only reports received a while ago: on PostgreSQL ids are handed out before commit, so a lower id may
            // still be filled in by an open transaction (another node's); SQLite's single writer never does that,
            // but one rule for both costs only a minute more of raw rows in the charts. Several nodes on
            // PostgreSQL roll up one at a time (the row lock; SQLite's write transaction already excludes others).
            let lock = if conn.engine() == super::Engine::Postgres { " FOR UPDATE" } else { "" };
            let after: i64 = conn
                .stmt(&format!("SELECT last_report_id FROM rollup_state WHERE id = 1{lock}"))?
                .query_row(params![], |r| r.get(0))?;
            let before = super::now_ms() - ROLLUP_SETTLE_MS;
            let newest: Option<i64> = conn.query_opt(
                "SELECT id FROM reports WHERE id > ?1 AND received_at_ms < ?3 ORDER BY id LIMIT 1 OFFSET ?2",
                params![after, ROLLUP_CHUNK - 1, before],
                |r| r.get(0),
            )?;
            let until: i64 = match newest {
                Some(id) => id,
                None => conn.query_row(
                    "SELECT coalesce(max(id), 0) FROM reports WHERE received_at_ms < ?1",
                    params![before],
                    |r| r.get(0),
                )?,
            };
            if until <= after {
                return Ok(0);
            }
            let (lo, hi) = match conn.engine() {
                super::Engine::Sqlite => ("min", "max"),
                super::Engine::Postgres => ("LEAST", "GREATEST"),
            };
            for def in &METRICS {
                for (label, value) in def.lines {
                    let sql = format!(
                        "INSERT INTO rollup_5m (host_id, metric, label, bucket_ms, n, sum, min, max)
                         SELECT t.host_id, '{name}', {label}, (t.ts / {ROLLUP_MS}) * {ROLLUP_MS}, count(*), sum({value}),
                                min({value}), max({value})
                         FROM {from} WHERE t.report_id > ?1 AND t.report_id <= ?2 AND {value} IS NOT NULL
                         GROUP BY 1, 3, 4
                         ON CONFLICT (host_id, metric, bucket_ms, label) DO UPDATE SET n = rollup_5m.n + excluded.n,
                            sum = rollup_5m.sum + excluded.sum, min = {lo}(rollup_5m.min, excluded.min),
                            max = {hi}(rollup_5m.max, excluded.max)",
                        name = def.name,
                        from = def.from
                    );
                    conn.stmt(&sql)?.execute(params![after, until])?;
                }
            }
            conn.stmt("UPDATE rollup_state SET last_report_id = ?1 WHERE id = 1")?.execute(params![until])?;
            let rolled: i64 = conn
                .stmt("SELECT count(*) FROM reports WHERE id > ?1 AND id <= ?2")?
                .query_row(params![after, until], |r| r.get(0))?;
            Ok(rolled)
        })
    }

    /// Deletes roll-up buckets that end before `older_than_ms` (retention), host by host and metric by metric
    /// along the primary key.
    pub(crate) fn prune_rollups(&mut self, older_than_ms: i64) -> Result<usize, StoreError> {
        self.write_tx(|tx| {
            let conn = tx.0;
            let hosts: Vec<i64> = conn.stmt("SELECT id FROM hosts")?.query_map(params![], |r| r.get(0))?;
            let mut deleted = 0;
            let stmt = conn.stmt("DELETE FROM rollup_5m WHERE host_id = ?1 AND metric = ?2 AND bucket_ms < ?3")?;
            for h in hosts {
                for def in &METRICS {
                    deleted += stmt.execute(params![h, def.name, older_than_ms - ROLLUP_MS])?;
                }
            }
            Ok(deleted)
        })
    }

    /// The newest values of `host` (all empty for a host never seen).
    pub fn latest(&self, host: &str) -> Result<Latest, StoreError> {
        let mut out = Latest::default();
        let Some(id) = self.host_id(host)? else { return Ok(out) };
        let c = &self.conn;
        out.cpu = c
            .stmt(
                "SELECT total_pct, load1, load5, load15 FROM cpu WHERE host_id = ?1 ORDER BY ts DESC, id DESC LIMIT 1",
            )?
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        out.memory = c
            .stmt(
                "SELECT total, used, available, free FROM memory WHERE host_id = ?1 ORDER BY ts DESC, id DESC LIMIT 1",
            )?
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .optional()?;
        out.swap = c
            .stmt("SELECT total, used, free FROM swap WHERE host_id = ?1 ORDER BY ts DESC, id DESC LIMIT 1")?
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        out.disks = c
            .stmt(
                "SELECT mount_point, total, free FROM disk_usage WHERE report_id =
                 (SELECT report_id FROM disk_usage WHERE host_id = ?1 ORDER BY ts DESC, id DESC LIMIT 1)
                 ORDER BY mount_point",
            )?
            .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        out.networks = c
            .stmt(
                "SELECT name, rx_bytes, tx_bytes FROM network WHERE report_id =
                 (SELECT report_id FROM network WHERE host_id = ?1 ORDER BY ts DESC, id DESC LIMIT 1)
                 ORDER BY name",
            )?
            .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        out.last_report_ms = c
            .stmt(
                "SELECT received_at_ms FROM reports WHERE host_id = ?1 ORDER BY received_at_ms DESC, id DESC LIMIT 1",
            )?
            .query_row(params![id], |r| r.get(0))
            .optional()?;
        Ok(out)
    }

    /// When the first sample of `host` at or after `since_ms` was taken (its sample time, as the charts place it):
    /// the first report received since then, one index lookup. `None`: nothing since.
    pub fn first_sample_since(&self, host: &str, since_ms: i64) -> Result<Option<i64>, StoreError> {
        let Some(id) = self.host_id(host)? else { return Ok(None) };
        let first: Option<(i64, i64)> = self
            .conn
            .stmt(
                "SELECT collected_at_ms, received_at_ms FROM reports WHERE host_id = ?1 AND received_at_ms >= ?2
                 ORDER BY received_at_ms, id LIMIT 1",
            )?
            .query_row(params![id, since_ms], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(first.map(|(collected, received)| super::sample_time(collected, received).min(received)))
    }

    /// The newest system details of `host`.
    pub fn details(&self, host: &str) -> Result<Option<Details>, StoreError> {
        let Some(id) = self.host_id(host)? else { return Ok(None) };
        self.conn
            .stmt(
                "SELECT hostname, os_name, os_version, kernel, arch, uptime_s, cpu_model, cpu_count
                 FROM system_details WHERE host_id = ?1 ORDER BY ts DESC, id DESC LIMIT 1",
            )?
            .query_row(params![id], |r| {
                Ok(Details {
                    hostname: r.get(0)?,
                    os_name: r.get(1)?,
                    os_version: r.get(2)?,
                    kernel: r.get(3)?,
                    arch: r.get(4)?,
                    uptime_s: r.get(5)?,
                    cpu_model: r.get(6)?,
                    cpu_count: r.get(7)?,
                })
            })
            .optional()
    }

    /// The sessions of `host`'s newest users sample.
    pub fn sessions(&self, host: &str) -> Result<Vec<SessionRow>, StoreError> {
        let Some(id) = self.host_id(host)? else { return Ok(Vec::new()) };
        self.conn
            .stmt(
                "SELECT user, terminal, remote_host, login_time FROM sessions WHERE report_id =
                 (SELECT report_id FROM sessions WHERE host_id = ?1 ORDER BY ts DESC, id DESC LIMIT 1)
                 ORDER BY login_time",
            )?
            .query_map(params![id], |r| {
                Ok(SessionRow { user: r.get(0)?, terminal: r.get(1)?, remote_host: r.get(2)?, login_time: r.get(3)? })
            })
    }

    /// The `limit` newest alert events, of `host` or of every host, newest first.
    pub fn recent_alert_events(&self, host: Option<&str>, limit: u32) -> Result<Vec<EventRow>, StoreError> {
        let map = super::alerts::event_row;
        const COLUMNS: &str = "SELECT id, at_ms, host, ip, rule, state, value, limit_value, detail FROM alert_events";
        let rows = match host {
            Some(h) => self
                .conn
                .stmt(&format!("{COLUMNS} WHERE host = ?1 ORDER BY id DESC LIMIT ?2"))?
                .query_map(params![h, limit], map)?,
            None => self.conn.stmt(&format!("{COLUMNS} ORDER BY id DESC LIMIT ?1"))?.query_map(params![limit], map)?,
        };
        Ok(rows)
    }

    /// The `limit` newest security events of `host`, newest first.
    pub fn security_events(&self, host: &str, limit: u32) -> Result<Vec<SecurityRow>, StoreError> {
        let Some(id) = self.host_id(host)? else { return Ok(Vec::new()) };
        self.conn
            .stmt(
                "SELECT ts, kind, user, message FROM security_events WHERE host_id = ?1
                 ORDER BY ts DESC, id DESC LIMIT ?2",
            )?
            .query_map(params![id, limit], |r| {
                Ok(SecurityRow { ts_ms: r.get(0)?, kind: r.get(1)?, user: r.get(2)?, message: r.get(3)? })
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;
    use crate::store::Incoming;
    use vigil_schema::report::{Report, Stats};

    fn report(seq: u64, at: i64, cpu: f32) -> Incoming {
        let mut r = Report::example(seq, at);
        r.stats = Stats { cpu: r.stats.cpu.map(|c| vigil_schema::report::CpuStats { total_pct: cpu, ..c }), ..r.stats };
        Incoming { agent_id: "ag".into(), host: "web1".into(), ip: "10.0.0.1".into(), received_at_ms: at, report: r }
    }

    #[test]
    fn a_series_keeps_the_spike_and_stays_within_its_point_budget() {
        crate::store::each_engine_with(|open| {
            let mut store = open();
            // 1,000 samples 10 s apart at 10 %, one spike of 99 % in the middle.
            let batch: Vec<_> = (0..1_000)
                .map(|i| report(i + 1, 1_000_000 + 10_000 * i as i64, if i == 517 { 99.0 } else { 10.0 }))
                .collect();
            store.insert_reports(&batch).unwrap();
            let s = store.series("web1", "cpu", 1_000_000, 1_000_000 + 10_000_000, 50).unwrap().unwrap();
            assert_eq!(s.lines.len(), 1);
            let line = &s.lines[0];
            assert!(line.buckets.len() <= 50 && line.buckets.len() >= 45, "{}", line.buckets.len());
            let top = line.buckets.iter().map(|b| b.max).fold(f64::MIN, f64::max);
            assert_eq!(top, 99.0, "the spike survives downsampling");
            assert!(line.buckets.iter().all(|b| b.min == 10.0));
            assert!(line.buckets.windows(2).all(|w| w[0].t_ms < w[1].t_ms));
            // Lines per label: every core, every mount.
            let cores = store.series("web1", "cpu_cores", 1_000_000, 1_000_000 + 10_000_000, 50).unwrap().unwrap();
            let n = Report::example(1, 0).stats.cpu.unwrap().per_core_pct.len();
            assert_eq!(cores.lines.len(), n);
            assert!(store.series("web1", "nope", 0, 1, 10).unwrap().is_none());
            // Coarse buckets read the roll-ups plus the raw rows not rolled up yet, and answer as the raw rows do: the
            // same reports into a database never rolled up, and into one rolled up after its first 1,500 reports.
            let to = 1_000_000 + 20_000_000;
            let coarse = |s: &Store| s.series("web1", "cpu_cores", 0, to, 10).unwrap().unwrap();
            let later = |r: std::ops::Range<u64>| -> Vec<Incoming> {
                r.map(|i| report(i + 1, 1_000_000 + 10_000 * i as i64, if i == 1_234 { 77.0 } else { 10.0 })).collect()
            };
            store.insert_reports(&later(1_000..1_500)).unwrap();
            store.insert_reports(&later(1_500..1_800)).unwrap();
            let raw = coarse(&store);
            assert!(raw.bucket_ms >= ROLLUP_MS && raw.lines.len() == 2);
            let mut rolled = open();
            rolled.insert_reports(&batch).unwrap();
            rolled.insert_reports(&later(1_000..1_500)).unwrap();
            assert_eq!(rolled.roll_up().unwrap(), 1_500);
            assert_eq!(rolled.roll_up().unwrap(), 0);
            rolled.insert_reports(&later(1_500..1_800)).unwrap();
            let mixed = coarse(&rolled);
            assert_eq!(mixed.lines.len(), raw.lines.len());
            for (m, r) in mixed.lines.iter().zip(&raw.lines) {
                assert_eq!(m.buckets.len(), r.buckets.len(), "{}", m.label);
                for (a, b) in m.buckets.iter().zip(&r.buckets) {
                    assert_eq!((a.t_ms, a.min, a.max), (b.t_ms, b.min, b.max));
                    assert!((a.avg - b.avg).abs() < 1e-9);
                }
            }
            let cpu = rolled.series("web1", "cpu", 0, to, 10).unwrap().unwrap();
            let top = cpu.lines[0].buckets.iter().map(|b| b.max).fold(f64::MIN, f64::max);
            assert_eq!(top, 99.0, "the spike is rolled up");
            assert!(rolled.prune_rollups(i64::MAX / 2).unwrap() > 0);
            assert!(store.series("nobody", "cpu", 0, 1, 10).unwrap().unwrap().lines.is_empty());
            assert_eq!(store.first_sample_since("web1", 1_000_001).unwrap(), Some(1_010_000));
            assert_eq!(store.first_sample_since("web1", i64::MAX / 2).unwrap(), None);
            assert_eq!(store.first_sample_since("nobody", 0).unwrap(), None);
            // Every host at once answers as each host alone.
            let all = store.series_of_all("cpu_cores", 1_000_000, 1_000_000 + 10_000_000, 50).unwrap().unwrap();
            assert_eq!(all.len(), 1);
            assert_eq!(
                all["web1"],
                store.series("web1", "cpu_cores", 1_000_000, 1_000_000 + 10_000_000, 50).unwrap().unwrap()
            );
            assert!(store.series_of_all("nope", 0, 1, 10).unwrap().is_none());
            // Coarse: from the roll-ups plus the raw rows not rolled up yet, as for one host.
            let all = rolled.series_of_all("cpu_cores", 0, to, 10).unwrap().unwrap();
            assert_eq!(all["web1"], coarse(&rolled));
        });
    }
}
