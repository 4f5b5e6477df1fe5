//! `/metrics`: each reporting host's latest values in Prometheus' text exposition format (0.0.4), under
//! node_exporter's names where the meaning is the same and `vigil_` names otherwise, every host series labelled
//! `host`; hosts that went silent drop out. Then vigil's own health: last report time per host, the endpoint's and
//! the writer's counters, the outbox depth.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::WebState;
use crate::store::alerts::OutboxCounts;
use crate::store::web::Latest;

/// One metric family being written: its samples are gathered, then printed under one HELP and TYPE.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

/// The families in the order they are printed.
#[derive(Default)]
struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    fn add(&mut self, name: &'static str, kind: &'static str, help: &'static str, labels: &[(&str, &str)], v: f64) {
        let mut l = String::new();
        for (i, (k, val)) in labels.iter().enumerate() {
            let _ = write!(l, "{}{k}=\"{}\"", if i > 0 { "," } else { "" }, label_value(val));
        }
        let family = match self.families.iter_mut().position(|f| f.name == name) {
            Some(i) => &mut self.families[i],
            None => {
                self.families.push(Family { name, kind, help, samples: Vec::new() });
                let last = self.families.len() - 1;
                &mut self.families[last]
            }
        };
        family.samples.push((l, v));
    }

    fn finish(self) -> String {
        let mut out = String::new();
        for f in self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
            for (labels, v) in f.samples {
                let _ = if labels.is_empty() {
                    writeln!(out, "{} {}", f.name, number(v))
                } else {
                    writeln!(out, "{}{{{labels}}} {}", f.name, number(v))
                };
            }
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped as the format requires.
fn label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

/// vigil's own counters, as `/metrics` shows them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SelfHealth {
    /// (counter name without prefix, value, help)
    pub counters: Vec<(&'static str, u64, &'static str)>,
    pub outbox: OutboxCounts,
}

/// The exposition text: `up` holds the hosts that are reporting (name, latest values); `last_reports` every host's
/// latest report time (ms), silent ones included.
pub fn render(up: &[(String, Latest)], last_reports: &[(String, i64)], health: &SelfHealth) -> String {
    let mut e = Exposition::default();
    for (host, l) in up {
        let h = [("host", host.as_str())];
        if let Some((total, load1, load5, load15)) = l.cpu {
            e.add("vigil_cpu_used_percent", "gauge", "CPU busy, percent of all cores.", &h, total);
            e.add("node_load1", "gauge", "1m load average.", &h, load1);
            e.add("node_load5", "gauge", "5m load average.", &h, load5);
            e.add("node_load15", "gauge", "15m load average.", &h, load15);
        }
        if let Some((total, used, available, free)) = l.memory {
            e.add("node_memory_MemTotal_bytes", "gauge", "Memory information field MemTotal_bytes.", &h, total as f64);
            e.add(
                "node_memory_MemAvailable_bytes",
                "gauge",
                "Memory information field MemAvailable_bytes.",
                &h,
                available as f64,
            );
            e.add("node_memory_MemFree_bytes", "gauge", "Memory information field MemFree_bytes.", &h, free as f64);
            e.add("vigil_memory_used_bytes", "gauge", "Memory in use, bytes.", &h, used as f64);
        }
        if let Some((total, _used, free)) = l.swap {
            e.add(
                "node_memory_SwapTotal_bytes",
                "gauge",
                "Memory information field SwapTotal_bytes.",
                &h,
                total as f64,
            );
            e.add("node_memory_SwapFree_bytes", "gauge", "Memory information field SwapFree_bytes.", &h, free as f64);
        }
        for (mount, total, free) in &l.disks {
            let labels = [("host", host.as_str()), ("mountpoint", mount.as_str())];
            e.add("node_filesystem_size_bytes", "gauge", "Filesystem size in bytes.", &labels, *total as f64);
            e.add("node_filesystem_avail_bytes", "gauge", "Filesystem space available, bytes.", &labels, *free as f64);
        }
        for (dev, rx, tx) in &l.networks {
            let labels = [("host", host.as_str()), ("device", dev.as_str())];
            e.add(
                "node_network_receive_bytes_total",
                "counter",
                "Network device statistic receive_bytes.",
                &labels,
                *rx as f64,
            );
            e.add(
                "node_network_transmit_bytes_total",
                "counter",
                "Network device statistic transmit_bytes.",
                &labels,
                *tx as f64,
            );
        }
    }
    for (host, ms) in last_reports {
        e.add(
            "vigil_last_report_timestamp_seconds",
            "gauge",
            "When the host's latest report was received (server clock), Unix seconds.",
            &[("host", host.as_str())],
            *ms as f64 / 1000.0,
        );
    }
    for (name, v, help) in &health.counters {
        e.add(name, "counter", help, &[], *v as f64);
    }
    e.add(
        "vigil_outbox_mails",
        "gauge",
        "Alert mails in the outbox, by status.",
        &[("status", "pending")],
        health.outbox.pending as f64,
    );
    e.add(
        "vigil_outbox_mails",
        "gauge",
        "Alert mails in the outbox, by status.",
        &[("status", "failed")],
        health.outbox.failed as f64,
    );
    e.finish()
}

pub(super) async fn handler(State(state): State<Arc<WebState>>) -> Response {
    let mut counters = Vec::new();
    if let Some(h) = &state.health {
        let c = &h.endpoint.counters;
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let s = h.ingest.stats();
        counters = vec![
            ("vigil_reports_stored_total", s.stored, "Reports stored."),
            ("vigil_reports_duplicate_total", s.duplicates, "Reports received again and acknowledged without storing."),
            ("vigil_reports_failed_total", s.failed, "Reports answered with a storage error."),
            ("vigil_ingest_commits_total", s.commits, "Transactions committed by the ingest writer."),
            ("vigil_connections_total", g(&c.connections), "SSH connections accepted."),
            ("vigil_auth_rejected_total", g(&c.auth_rejected), "SSH connections or keys refused."),
            ("vigil_requests_refused_total", g(&c.requests_refused), "SSH requests refused (not the vigil subsystem)."),
            ("vigil_bad_frames_total", g(&c.bad_frames), "Frames refused (size or framing)."),
            ("vigil_bad_tags_total", g(&c.bad_tags), "Envelopes whose tag did not verify."),
            ("vigil_bad_messages_total", g(&c.bad_messages), "Messages that did not parse or validate."),
            ("vigil_bad_reports_total", g(&c.bad_reports), "Reports refused as invalid."),
            ("vigil_timeouts_total", g(&c.timeouts), "Connections closed on a timeout."),
        ];
    }
    let now = vigil_sys::clock::now_ms();
    let read = state
        .read(move |store, config| {
            let hosts = super::api::status_hosts(config);
            let rows = crate::status::collect(store, &hosts, now)?;
            let mut up = Vec::new();
            let mut last = Vec::new();
            for r in rows.iter().filter(|r| r.in_config) {
                let latest = store.latest(&r.name)?;
                if let Some(ms) = latest.last_report_ms {
                    last.push((r.name.clone(), ms));
                }
                if !r.silent && r.last_seen_ms.is_some() {
                    up.push((r.name.clone(), latest));
                }
            }
            Ok((up, last, store.outbox_counts()?))
        })
        .await;
    let (up, last, outbox) = match read {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let body = render(&up, &last, &SelfHealth { counters, outbox });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn each_family_is_declared_once_and_labels_are_escaped() {
        let latest = Latest {
            cpu: Some((12.5, 0.5, 0.25, 0.125)),
            disks: vec![("/".into(), 100, 40), ("/mnt/a\"b\\c".into(), 10, 1)],
            ..Latest::default()
        };
        let up = vec![("web1".to_string(), latest.clone()), ("web2".to_string(), latest)];
        let text = render(&up, &[("web1".into(), 1_700_000_000_500)], &SelfHealth::default());
        assert_eq!(text.matches("# TYPE node_filesystem_size_bytes gauge").count(), 1, "{text}");
        assert!(text.contains("node_load1{host=\"web2\"} 0.5\n"), "{text}");
        assert!(
            text.contains("node_filesystem_avail_bytes{host=\"web1\",mountpoint=\"/mnt/a\\\"b\\\\c\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("vigil_last_report_timestamp_seconds{host=\"web1\"} 1700000000.5\n"), "{text}");
        assert!(text.ends_with('\n'));
    }
}
