//! The JSON API behind the pages: `/api/hosts` (the fleet, as `vigil status --json` shows it) and `/api/series`
//! (one metric of one host over a range, bucketed into min/avg/max within a point budget, as uPlot's columns).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::WebState;
use crate::config::Config;
use crate::status::HostStatus;
use crate::store::web::{MAX_POINTS, Series};

/// Points per chart when the request names no budget.
pub const DEFAULT_POINTS: u32 = 600;
/// The range when the request names none: the last hour.
pub const DEFAULT_RANGE_S: i64 = 3_600;

/// The configured hosts as `status::collect` takes them: (name, ip, shortest interval).
pub(super) fn status_hosts(config: &Config) -> Vec<(String, String, Option<u32>)> {
    config
        .clients
        .iter()
        // `schedule_for(name).min_interval_s()` without its lookup by name and its copies: a thousand hosts.
        .map(|h| {
            (h.name.clone(), h.ip.clone(), config.jobs.iter().filter(|j| j.selects(h)).map(|j| j.interval_s).min())
        })
        .collect()
}

#[derive(Debug, Serialize)]
struct HostsBody {
    hosts: Vec<HostStatus>,
    config_error: Option<String>,
}

/// The fleet, one row per host (configured hosts first, then hosts only the database knows).
pub(super) async fn hosts(State(state): State<Arc<WebState>>) -> Response {
    let now = vigil_sys::clock::now_ms();
    let read = state
        .read(move |store, config| {
            let hosts = crate::status::collect(store, &status_hosts(config), now)?;
            Ok(HostsBody { hosts, config_error: store.config_error()? })
        })
        .await;
    match read {
        Ok(body) => Json(body).into_response(),
        Err(resp) => resp,
    }
}

/// `/api/series` parameters: `from` and `to` in Unix seconds (default: the last hour), `points` the most buckets
/// per line (default [`DEFAULT_POINTS`], at most [`MAX_POINTS`]).
#[derive(Debug, Deserialize)]
pub(super) struct SeriesQuery {
    host: String,
    metric: String,
    from: Option<i64>,
    to: Option<i64>,
    points: Option<u32>,
}

/// uPlot's form: one shared time axis (Unix seconds, bucket starts) and per line min, avg and max columns, `null`
/// where a line has no sample in a bucket.
#[derive(Debug, Serialize, PartialEq)]
pub struct SeriesBody {
    pub host: String,
    pub metric: String,
    pub from: i64,
    pub to: i64,
    pub bucket_s: f64,
    pub t: Vec<f64>,
    pub lines: Vec<LineBody>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct LineBody {
    pub label: String,
    pub min: Vec<Option<f64>>,
    pub avg: Vec<Option<f64>>,
    pub max: Vec<Option<f64>>,
}

/// Aligns the lines of `series` on one time axis.
pub fn columns(host: String, metric: String, from: i64, to: i64, series: Series) -> SeriesBody {
    let mut times: Vec<i64> = series.lines.iter().flat_map(|l| l.buckets.iter().map(|b| b.t_ms)).collect();
    times.sort_unstable();
    times.dedup();
    let lines = series
        .lines
        .into_iter()
        .map(|l| {
            let mut body = LineBody {
                label: l.label,
                min: vec![None; times.len()],
                avg: vec![None; times.len()],
                max: vec![None; times.len()],
            };
            for b in l.buckets {
                if let Ok(i) = times.binary_search(&b.t_ms) {
                    (body.min[i], body.avg[i], body.max[i]) = (Some(b.min), Some(b.avg), Some(b.max));
                }
            }
            body
        })
        .collect();
    SeriesBody {
        host,
        metric,
        from,
        to,
        bucket_s: series.bucket_ms as f64 / 1000.0,
        t: times.into_iter().map(|t| t as f64 / 1000.0).collect(),
        lines,
    }
}

pub(super) async fn series(State(state): State<Arc<WebState>>, Query(q): Query<SeriesQuery>) -> Response {
    // The range is half-open in whole seconds: one past now, so a sample of this very second is in it.
    let to = q.to.unwrap_or_else(|| vigil_sys::clock::now_unix() + 1);
    let from = q.from.unwrap_or(to - DEFAULT_RANGE_S);
    if from >= to {
        return (StatusCode::BAD_REQUEST, "`from` must be before `to`\n").into_response();
    }
    let points = q.points.unwrap_or(DEFAULT_POINTS).clamp(1, MAX_POINTS);
    let (host, metric) = (q.host.clone(), q.metric.clone());
    let read = state
        .read(move |store, _| store.series(&host, &metric, from.saturating_mul(1000), to.saturating_mul(1000), points))
        .await;
    match read {
        Ok(Some(s)) => Json(columns(q.host, q.metric, from, to, s)).into_response(),
        Ok(None) => {
            let known: Vec<&str> = crate::store::web::metric_names().collect();
            (StatusCode::NOT_FOUND, format!("unknown metric; known: {}\n", known.join(", "))).into_response()
        }
        Err(resp) => resp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::web::{Bucket, Line};

    #[test]
    fn each_host_expects_its_shortest_job_interval() {
        let clients = "<clients><client name=\"a\" ip=\"10.0.0.1\" transport=\"local\" tags=\"db\"/>\
                       <client name=\"b\" ip=\"10.0.0.2\" transport=\"local\"/></clients>";
        let jobs = "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n[[job]]\nname = \"slow\"\ncollectors = [\"cpu\"]\n\
                    interval = \"60s\"\n[[job]]\nname = \"fast\"\ncollectors = [\"cpu\"]\ninterval = \"5s\"\n\
                    tags = [\"db\"]\n";
        let config = Config::from_sources(std::path::Path::new("c.xml"), clients, std::path::Path::new("j.toml"), jobs)
            .unwrap_or_else(|e| panic!("{e}"))
            .config;
        let hosts = status_hosts(&config);
        for (name, _, interval) in &hosts {
            assert_eq!(*interval, config.schedule_for(name).min_interval_s(), "{name}");
        }
        assert_eq!(hosts.iter().map(|h| h.2).collect::<Vec<_>>(), [Some(5), Some(60)]);
    }

    #[test]
    fn lines_are_aligned_on_one_time_axis_with_gaps_as_null() {
        let b = |t_ms, v| Bucket { t_ms, min: v, avg: v, max: v };
        let s = Series {
            bucket_ms: 10_000,
            lines: vec![
                Line { label: "/".into(), buckets: vec![b(0, 1.0), b(20_000, 3.0)] },
                Line { label: "/var".into(), buckets: vec![b(10_000, 2.0)] },
            ],
        };
        let body = columns("h".into(), "disk".into(), 0, 30, s);
        assert_eq!(body.t, [0.0, 10.0, 20.0]);
        assert_eq!(body.lines[0].avg, [Some(1.0), None, Some(3.0)]);
        assert_eq!(body.lines[1].max, [None, Some(2.0), None]);
        assert_eq!(body.bucket_s, 10.0);
    }
}
