//! The read side of command jobs: runs for `vigil runs` and `vigil status`, newest first, as typed rows.

use super::params;

use super::{Store, StoreError};

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub host: Option<String>,
    pub job: Option<String>,
    /// Only runs filed at or after this time (ms since the epoch).
    pub since_ms: i64,
    /// At most this many rows.
    pub limit: u32,
}

/// One stored command run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunRow {
    pub host: String,
    pub job: String,
    pub started_ms: i64,
    pub duration_ms: i64,
    /// `exited`, `signaled`, `timed_out`, `failed_to_start` or `refused`.
    pub outcome: String,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    /// Why it failed to start or was refused.
    pub detail: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub parse_errors: Vec<String>,
    /// Values parsed from the output: name, labels (JSON object text), value.
    pub metrics: Vec<MetricRow>,
}

/// One parsed value of a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MetricRow {
    pub name: String,
    pub labels: serde_json::Value,
    pub value: f64,
}

impl RunRow {
    /// Whether the run succeeded (exit 0).
    pub fn succeeded(&self) -> bool {
        self.outcome == "exited" && self.exit_code == Some(0)
    }

    /// `exit 0`, `signal 9`, `timed out`, `refused: ...`.
    pub fn describe(&self) -> String {
        match self.outcome.as_str() {
            "exited" => format!("exit {}", self.exit_code.unwrap_or(-1)),
            "signaled" => format!("signal {}", self.signal.unwrap_or(0)),
            "timed_out" => "timed out".into(),
            other => format!("{}: {}", other.replace('_', " "), self.detail.as_deref().unwrap_or("")),
        }
    }
}

const RUNS: &str =
    "SELECT r.id, h.name, r.job, r.started_ms, r.duration_ms, r.outcome, r.exit_code, r.signal, r.detail,
            r.stdout, r.stderr, r.stdout_truncated, r.stderr_truncated, r.parse_errors, r.report_id
     FROM command_runs r JOIN hosts h ON h.id = r.host_id
     WHERE r.ts >= ?1 AND (CAST(?2 AS TEXT) IS NULL OR h.name = ?2) AND (CAST(?3 AS TEXT) IS NULL OR r.job = ?3)
     ORDER BY r.ts DESC, r.id DESC LIMIT ?4";
const METRICS: &str = "SELECT name, labels, value FROM command_metrics WHERE report_id = ?1 ORDER BY id";

const JOBS_OF_HOST: &str = "SELECT DISTINCT r.job FROM command_runs r JOIN hosts h ON h.id = r.host_id
     WHERE h.name = ?1 ORDER BY r.job";

const ALL_JOBS: &str = "SELECT DISTINCT h.name, r.job FROM command_runs r JOIN hosts h ON h.id = r.host_id
     ORDER BY h.name, r.job";
impl Store {
    /// The command jobs `host` has runs of, by name.
    pub fn command_jobs_of(&self, host: &str) -> Result<Vec<String>, StoreError> {
        let stmt = self.conn.stmt(JOBS_OF_HOST)?;
        let jobs = stmt.query_map(params![host], |r| r.get(0))?;
        Ok(jobs)
    }

    /// Every (host, command job) that has runs, by host then job: [`Store::command_jobs_of`] of all hosts at once.
    pub fn command_jobs(&self) -> Result<Vec<(String, String)>, StoreError> {
        let stmt = self.conn.stmt(ALL_JOBS)?;
        let jobs = stmt.query_map(params![], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(jobs)
    }

    /// Command runs matching `filter`, newest first, with their parsed metrics.
    pub fn command_runs(&self, filter: &RunFilter) -> Result<Vec<RunRow>, StoreError> {
        let stmt = self.conn.stmt(RUNS)?;
        let rows = stmt.query_map(params![filter.since_ms, filter.host, filter.job, filter.limit], |r| {
            let parse_errors: Option<String> = r.get(13)?;
            Ok((
                r.get::<i64>(14)?,
                RunRow {
                    host: r.get(1)?,
                    job: r.get(2)?,
                    started_ms: r.get(3)?,
                    duration_ms: r.get(4)?,
                    outcome: r.get(5)?,
                    exit_code: r.get(6)?,
                    signal: r.get(7)?,
                    detail: r.get(8)?,
                    stdout: r.get(9)?,
                    stderr: r.get(10)?,
                    stdout_truncated: r.get(11)?,
                    stderr_truncated: r.get(12)?,
                    parse_errors: parse_errors.map(|e| e.lines().map(str::to_owned).collect()).unwrap_or_default(),
                    metrics: Vec::new(),
                },
            ))
        })?;
        let mut out = Vec::new();
        let metrics = self.conn.stmt(METRICS)?;
        for (report_id, mut run) in rows {
            run.metrics = metrics.query_map(params![report_id], |r| {
                let labels: String = r.get(1)?;
                Ok(MetricRow {
                    name: r.get(0)?,
                    labels: serde_json::from_str(&labels).unwrap_or(serde_json::Value::Null),
                    value: r.get(2)?,
                })
            })?;
            out.push(run);
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use vigil_schema::command::{CommandRun, Metric, RunOutcome};
    use vigil_schema::report::{Report, Stats};

    use super::*;
    use crate::store::Incoming;

    fn run(seq: u64, job: &str, at: i64, outcome: RunOutcome) -> Incoming {
        let run = CommandRun {
            started_ms: at,
            duration_ms: 7,
            outcome,
            stdout: format!("out {seq}\n"),
            stderr: String::new(),
            stdout_truncated: seq == 2,
            stderr_truncated: false,
            metrics: vec![Metric { name: "m".into(), labels: vec![("k".into(), "v".into())], value: seq as f64 }],
            parse_errors: vec!["line 2: value is not a number".into()],
        };
        Incoming {
            agent_id: "a1".into(),
            host: "web1".into(),
            ip: "10.0.0.1".into(),
            received_at_ms: at,
            report: Report {
                seq,
                job: job.into(),
                collected_at_ms: at,
                dropped: 0,
                stats: Stats { command: Some(run), ..Stats::default() },
            },
        }
    }

    #[test]
    fn runs_are_listed_newest_first_filtered_and_pruned_with_their_report() {
        crate::store::each_engine(|store| {
            store
                .insert_reports(&[
                    run(1, "a", 1_000, RunOutcome::Exited { code: 0 }),
                    run(2, "a", 2_000, RunOutcome::TimedOut),
                    run(3, "b", 3_000, RunOutcome::Signaled { signal: 9 }),
                ])
                .unwrap();
            let all = store.command_runs(&RunFilter { limit: 10, ..RunFilter::default() }).unwrap();
            let seen: Vec<(&str, String)> = all.iter().map(|r| (r.job.as_str(), r.describe())).collect();
            assert_eq!(seen, [("b", "signal 9".into()), ("a", "timed out".into()), ("a", "exit 0".into())]);
            assert!(all[1].stdout_truncated && all[2].succeeded() && !all[1].succeeded());
            assert_eq!(
                all[0].metrics,
                [MetricRow { name: "m".into(), labels: serde_json::json!({"k": "v"}), value: 3.0 }]
            );
            assert_eq!(all[0].parse_errors, ["line 2: value is not a number"]);
            let a = RunFilter { job: Some("a".into()), since_ms: 1_500, limit: 10, host: Some("web1".into()) };
            assert_eq!(store.command_runs(&a).unwrap().len(), 1);
            assert_eq!(store.command_jobs_of("web1").unwrap(), ["a", "b"]);
            store.prune(2_500).unwrap();
            let left = store.command_runs(&RunFilter { limit: 10, ..RunFilter::default() }).unwrap();
            assert_eq!(left.len(), 1, "retention removed the older runs");
            let metrics: i64 =
                store.conn.query_row("SELECT count(*) FROM command_metrics", params![], |r| r.get(0)).unwrap();
            assert_eq!(metrics, 1, "and their metrics");
        });
    }
}
