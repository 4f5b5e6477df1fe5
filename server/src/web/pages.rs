//! The HTML pages, rendered on the server with maud (which escapes every interpolated string): `/` the fleet, with
//! CPU and memory sparklines as inline SVG; `/hosts/<name>` a host's charts (drawn by `assets/app.js` with uPlot
//! from `/api/series`), details, sessions, security events and alert history; `/alerts` the alert history and mail
//! state. No inline script: data reaches the script through `data-` attributes only.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use super::WebState;
use crate::status::HostStatus;
use crate::store::web::Series;

/// Points of a fleet-page sparkline: 5-minute buckets over the hour, read from the roll-ups, so a thousand hosts
/// cost the same whether they report every 10 seconds or every minute.
const SPARK_POINTS: u32 = 12;
/// Ranges of the host page's picker: (label, seconds).
const RANGES: [(&str, i64); 5] = [("1h", 3_600), ("6h", 21_600), ("24h", 86_400), ("7d", 604_800), ("30d", 2_592_000)];
/// The charts of the host page: (metric, title, unit).
const CHARTS: [(&str, &str, &str); 8] = [
    ("cpu", "CPU", "%"),
    ("cpu_cores", "CPU per core", "%"),
    ("load", "Load", ""),
    ("memory", "Memory", "%"),
    ("swap", "Swap", "%"),
    ("disk", "Disk usage", "%"),
    ("net_rx", "Network received", "B/s"),
    ("net_tx", "Network sent", "B/s"),
];

fn page(title: &str, kind: &str, refresh: Option<u32>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(s) = refresh { meta http-equiv="refresh" content=(s); }
                title { (title) " · vigil" }
                link rel="stylesheet" href="/assets/uPlot.min.css";
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/uPlot.iife.min.js" defer {}
                script src="/assets/app.js" defer {}
            }
            body data-page=(kind) {
                nav { a href="/" { "vigil" } " · " a href="/" { "fleet" } " · " a href="/alerts" { "alerts" } " · " a href="/metrics" { "metrics" } }
                main { (body) }
            }
        }
    }
}

/// A host's state as the fleet page names it; `config_error`: its `<client>` holds an error of the pending
/// (rejected) clients.xml edit.
fn state_of(h: &HostStatus, config_error: bool) -> &'static str {
    if config_error {
        "config error"
    } else if h.last_seen_ms.is_none() {
        "never seen"
    } else if h.silent {
        "silent"
    } else if !h.alerts.is_empty() {
        "firing"
    } else {
        "ok"
    }
}

fn ago(ms: Option<i64>, now_ms: i64) -> String {
    match ms {
        None => "never".into(),
        Some(t) => {
            let s = (now_ms - t).max(0) / 1000;
            match s {
                s if s < 120 => format!("{s}s ago"),
                s if s < 7_200 => format!("{}m ago", s / 60),
                s if s < 172_800 => format!("{}h ago", s / 3_600),
                s => format!("{}d ago", s / 86_400),
            }
        }
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}%"))
}

/// An inline SVG sparkline of a series' averages over `[from, to)`, 0-100 %. Empty when there is no data. The
/// coordinates are whole numbers on a 1000 x 200 grid: a thousand rows of sparklines format no floats.
fn sparkline(s: Option<&Series>, from_ms: i64, to_ms: i64) -> Markup {
    let Some(line) = s.and_then(|s| s.lines.first()) else { return html! { span.nodata { "-" } } };
    let span = (to_ms - from_ms).max(1);
    let mut points = String::with_capacity(line.buckets.len() * 9);
    for b in &line.buckets {
        let x = (b.t_ms - from_ms).clamp(0, span) * 1000 / span;
        let y = 200 - (b.avg.clamp(0.0, 100.0) * 2.0).round() as i64;
        if line.buckets.len() == 1 {
            // One bucket alone would draw nothing: a short level stroke shows it.
            let _ = write!(points, "{},{y} ", (x - 20).max(0));
        }
        let _ = write!(points, "{x},{y} ");
    }
    html! {
        svg.spark viewBox="0 0 1000 200" width="100" height="20" preserveAspectRatio="none" data-points=(line.buckets.len()) {
            polyline points=(points.trim_end()) fill="none" stroke="currentColor" stroke-width="1.5" vector-effect="non-scaling-stroke" {}
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct FleetQuery {
    sort: Option<String>,
}

/// One fleet row: the host, its display name from clients.xml, and its last hour of CPU and memory.
struct FleetRow {
    host: HostStatus,
    display: Option<String>,
    cpu: Option<Series>,
    mem: Option<Series>,
}

pub(super) async fn fleet(State(state): State<Arc<WebState>>, Query(q): Query<FleetQuery>) -> Response {
    let now = vigil_sys::clock::now_ms();
    let from = now - 3_600_000;
    let read = state
        .read(move |store, config| {
            let hosts = crate::status::collect(store, &super::api::status_hosts(config), now)?;
            let displays: std::collections::HashMap<&str, &str> =
                config.clients.iter().filter_map(|h| Some((h.name.as_str(), h.display_name.as_deref()?))).collect();
            // The sparklines of all hosts in one statement per metric.
            let mut cpu = store.series_of_all("cpu", from, now, SPARK_POINTS)?.unwrap_or_default();
            let mut mem = store.series_of_all("memory", from, now, SPARK_POINTS)?.unwrap_or_default();
            let rows = hosts
                .into_iter()
                .map(|host| FleetRow {
                    cpu: cpu.remove(&host.name),
                    mem: mem.remove(&host.name),
                    display: displays.get(host.name.as_str()).map(|d| (*d).to_owned()),
                    host,
                })
                .collect::<Vec<_>>();
            Ok((rows, store.config_error()?, store.config_error_hosts()?))
        })
        .await;
    let (mut rows, config_error, error_hosts) = match read {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let sort = q.sort.as_deref().unwrap_or("state");
    let key = |r: &FleetRow| -> f64 {
        match sort {
            "cpu" => -r.host.cpu_pct.unwrap_or(-1.0),
            "mem" => -r.host.mem_pct.unwrap_or(-1.0),
            "disk" => -r.host.fullest_disk.as_ref().map_or(-1.0, |d| d.pct),
            "seen" => r.host.last_seen_ms.map_or(f64::MAX, |t| -(t as f64)),
            _ => 0.0,
        }
    };
    let state = |h: &HostStatus| state_of(h, error_hosts.contains(&h.name));
    let rank = |h: &HostStatus| match state(h) {
        "firing" => 0,
        "config error" => 1,
        "silent" => 2,
        "never seen" => 3,
        _ => 4,
    };
    match sort {
        "name" => rows.sort_by(|a, b| a.host.name.cmp(&b.host.name)),
        "state" => rows.sort_by(|a, b| rank(&a.host).cmp(&rank(&b.host)).then(a.host.name.cmp(&b.host.name))),
        _ => rows.sort_by(|a, b| key(a).total_cmp(&key(b)).then(a.host.name.cmp(&b.host.name))),
    }
    let header = [
        ("name", "Host"),
        ("state", "State"),
        ("seen", "Last seen"),
        ("cpu", "CPU"),
        ("mem", "Memory"),
        ("disk", "Fullest disk"),
    ];
    let body = html! {
        h1 { "Fleet" }
        @if let Some(e) = &config_error { p.error { "config error (serve runs the last good config): " (e) } }
        table #fleet {
            thead { tr {
                @for (key, label) in header {
                    th { a href={ "/?sort=" (key) } class=[(sort == key).then_some("sorted")] { (label) } }
                }
                th { "CPU, last hour" } th { "Memory, last hour" } th { "Firing" }
            } }
            tbody {
                @for r in &rows {
                    @let h = &r.host;
                    tr.host data-host=(h.name) data-state=(state(h)) {
                        td { (host_title(&h.name, r.display.as_deref(), true)) }
                        td class={ "state " (state(h).replace(' ', "-")) } { (state(h)) }
                        td { (ago(h.last_seen_ms, now)) }
                        td.num { (pct(h.cpu_pct)) }
                        td.num { (pct(h.mem_pct)) }
                        td { @if let Some(d) = &h.fullest_disk { (d.mount) " " (format!("{:.1}%", d.pct)) } @else { "-" } }
                        td { (sparkline(r.cpu.as_ref(), from, now)) }
                        td { (sparkline(r.mem.as_ref(), from, now)) }
                        td { @for a in &h.alerts { span.alert { (a.rule) } " " } }
                    }
                }
            }
        }
        @if rows.is_empty() { p { "(no hosts)" } }
    };
    page("fleet", "fleet", Some(30), body).into_response()
}

/// The `display_name` clients.xml gives host `name`, if any.
fn display_name(config: &crate::config::Config, name: &str) -> Option<String> {
    config.clients.iter().find(|h| h.name == name).and_then(|h| h.display_name.clone())
}

/// A host as the pages title it: its display name (any text, escaped like everything else) followed by its name,
/// or its name alone; a link to its page when `link`.
fn host_title(name: &str, display: Option<&str>, link: bool) -> Markup {
    html! {
        @if link {
            a href={ "/hosts/" (urlencode(name)) } { (display.unwrap_or(name)) }
        } @else {
            (display.unwrap_or(name))
        }
        @if display.is_some() { " " span.hostname { (name) } }
    }
}

/// Percent-encodes a path segment (host names come from clients.xml and may hold anything).
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[derive(Debug, Deserialize)]
pub(super) struct RangeQuery {
    range: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
}

pub(super) async fn host(
    State(state): State<Arc<WebState>>,
    Path(name): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Response {
    // One past now: the charts' half-open range holds this very second's samples.
    let now_s = vigil_sys::clock::now_unix() + 1;
    let (from, to, picked) = match (q.from, q.to) {
        (Some(f), Some(t)) if f < t => (f, t, None),
        _ => {
            let (label, secs) =
                RANGES.iter().copied().find(|(l, _)| Some(*l) == q.range.as_deref()).unwrap_or(RANGES[0]);
            (now_s - secs, now_s, Some(label))
        }
    };
    let host = name.clone();
    let now_ms = vigil_sys::clock::now_ms();
    let default_range = picked.is_some() && q.range.is_none();
    let read = state
        .read(move |store, config| {
            let known =
                config.clients.iter().any(|h| h.name == host) || store.known_hosts()?.iter().any(|(n, _)| *n == host);
            if !known {
                return Ok(None);
            }
            // The default window fits a host younger than it: one that has reported for a minute fills the charts
            // instead of drawing a sliver at their right edge. Its first sample ever counts, so a host that was
            // silent for most of the hour still shows the gap.
            let fitted = if default_range {
                store.first_sample_since(&host, i64::MIN)?.and_then(|first| fit(from, to, first))
            } else {
                None
            };
            let hosts: Vec<_> = super::api::status_hosts(config).into_iter().filter(|h| h.0 == host).collect();
            let status = crate::status::collect(store, &hosts, now_ms)?.into_iter().find(|h| h.name == host);
            Ok(Some((
                (display_name(config, &host), store.config_error_hosts()?.contains(&host)),
                fitted,
                status,
                store.details(&host)?,
                store.sessions(&host)?,
                store.security_events(&host, 50)?,
                store.recent_alert_events(Some(&host), 50)?,
            )))
        })
        .await;
    let ((display, in_error), fitted, status, details, sessions, security, events) = match read {
        Ok(Some(r)) => r,
        Ok(None) => {
            let body =
                html! { h1 { "Unknown host" } p { "No host " code { (name) } " in clients.xml or the database." } };
            return (axum::http::StatusCode::NOT_FOUND, page("unknown host", "error", None, body)).into_response();
        }
        Err(resp) => return resp,
    };
    let (from, picked) = match fitted {
        Some(f) => (f, None),
        None => (from, picked),
    };
    let body = html! {
        h1 { (host_title(&name, display.as_deref(), false)) " " @if let Some(s) = &status { span class={ "state " (state_of(s, in_error).replace(' ', "-")) } { (state_of(s, in_error)) } } }
        p.ranges {
            @for (label, _) in RANGES {
                a href={ "?range=" (label) } class=[(picked == Some(label)).then_some("sorted")] { (label) } " "
            }
            @if fitted.is_some() { span #fitted { "showing all " (span_text(to - from)) " of data since its first sample" } " " }
            span.hint { "drag across a chart to zoom; double-click to reset" }
        }
        div #charts data-host=(name) data-from=(from) data-to=(to) {
            @for (metric, title, unit) in CHARTS {
                section.chart data-metric=(metric) data-unit=(unit) { h2 { (title) } div.plot {} }
            }
        }
        h2 { "System" }
        @if let Some(d) = &details {
            table.kv {
                tr { th { "hostname" } td { (d.hostname) } }
                tr { th { "os" } td { (d.os_name) " " (d.os_version) } }
                tr { th { "kernel" } td { (d.kernel) " (" (d.arch) ")" } }
                tr { th { "cpu" } td { (d.cpu_model) " × " (d.cpu_count) } }
                tr { th { "uptime" } td { (d.uptime_s / 86_400) "d " ((d.uptime_s % 86_400) / 3_600) "h" } }
            }
        } @else { p { "no system details reported yet" } }
        h2 { "Sessions" }
        table #sessions { tr { th { "user" } th { "terminal" } th { "from" } th { "since" } }
            @for s in &sessions { tr { td { (s.user) } td { (s.terminal) } td { (s.remote_host.as_deref().unwrap_or("-")) } td { (crate::alert::message::utc(s.login_time * 1000)) } } }
        }
        h2 { "Security events" }
        table #security { tr { th { "time" } th { "kind" } th { "user" } th { "message" } }
            @for e in &security { tr { td { (crate::alert::message::utc(e.ts_ms)) } td { (e.kind) } td { (e.user.as_deref().unwrap_or("-")) } td { (e.message) } } }
        }
        h2 { "Alert history" }
        (events_table(&events))
    };
    page(display.as_deref().unwrap_or(&name), "host", None, body).into_response()
}

/// The start of a chart window `[from, to)` (seconds) fitted to data whose first sample is at `first_ms`: a tenth
/// of the data's span (at least 10 s) before it, when that is well inside the window; `None` keeps the window.
fn fit(from: i64, to: i64, first_ms: i64) -> Option<i64> {
    let first = first_ms.div_euclid(1000);
    let pad = ((to - first) / 10).max(10);
    let start = first - pad;
    // Data filling most of the window already reads well.
    (start > from + (to - from) / 4).then_some(start)
}

/// A window length as the page names it: `90s`, `15m`, `5h`.
fn span_text(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3_600),
    }
}

fn events_table(events: &[crate::store::alerts::EventRow]) -> Markup {
    html! {
        table.events { tr { th { "time" } th { "host" } th { "rule" } th { "state" } th { "value" } th { "limit" } th { "detail" } }
            @for e in events {
                tr {
                    td { (crate::alert::message::utc(e.at_ms)) }
                    td { a href={ "/hosts/" (urlencode(&e.host)) } { (e.host) } }
                    td { (e.rule) } td { (e.state) }
                    td.num { (e.value.map_or_else(|| "-".into(), crate::alert::message::num)) }
                    td.num { (e.limit.map_or_else(|| "-".into(), crate::alert::message::num)) }
                    td { (e.detail) }
                }
            }
        }
    }
}

pub(super) async fn alerts(State(state): State<Arc<WebState>>) -> Response {
    let read = state.read(|store, _| Ok((store.recent_alert_events(None, 500)?, store.outbox_counts()?))).await;
    let (events, outbox) = match read {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let body = html! {
        h1 { "Alerts" }
        p #mail { "mail: " (outbox.sent) " sent, " (outbox.pending) " pending, " (outbox.failed) " failed" }
        (events_table(&events))
        @if events.is_empty() { p { "(no alert events)" } }
    };
    page("alerts", "alerts", Some(30), body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_window_fits_young_data_and_keeps_old_data() {
        let (from, to) = (10_000, 13_600);
        // A minute of data: the window starts a little before it.
        assert_eq!(fit(from, to, 13_540_000), Some(13_540 - 10));
        assert_eq!(fit(from, to, 13_000_000), Some(13_000 - 60));
        // Data over most of the hour (or older): the hour stays.
        assert_eq!(fit(from, to, 10_500_000), None);
        assert_eq!(fit(from, to, 9_000_000), None);
        assert_eq!(span_text(70), "70s");
        assert_eq!(span_text(600), "10m");
    }
}
