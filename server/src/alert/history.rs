//! The `vigil alerts` view: the alert history from the database, as a table or as JSON, and the `--since` argument.

use std::fmt::Write as _;

use serde::Serialize;

use super::message::utc;
use crate::escape;
use crate::store::alerts::{EventRow, OutboxCounts};

/// `--since`: a duration back from now in vigil's one duration grammar ([`crate::config::parse_duration`]: `90s`,
/// `15m`, `2h`, `7d`, `1w`, `1m30s`; a bare number is seconds). Returns milliseconds, or `None` when the text is not
/// such a duration.
pub fn parse_since(text: &str) -> Option<i64> {
    let d = crate::config::parse_duration(text).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// The JSON form of `vigil alerts --json`.
#[derive(Debug, Serialize)]
struct View<'a> {
    events: &'a [EventRow],
    outbox: OutboxCounts,
}

/// `{"events": [...], "outbox": {"pending": n, "sent": n, "failed": n}}`.
pub fn render_json(events: &[EventRow], outbox: OutboxCounts) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&View { events, outbox })
}

/// One line per event, oldest first, then the outbox counts.
pub fn render_table(events: &[EventRow], outbox: OutboxCounts) -> String {
    let mut out = String::new();
    if events.is_empty() {
        out.push_str("(no alerts)\n");
    }
    let rows: Vec<[String; 3]> = events
        .iter()
        .map(|e| [escape::cell(&e.host), escape::cell(&e.state), escape::control(&e.detail, false)])
        .collect();
    let host_w = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(4).max(4);
    for (e, [host, state, detail]) in events.iter().zip(&rows) {
        let _ = writeln!(out, "{}  {host:<host_w$}  {state:<8}  {detail}", utc(e.at_ms));
    }
    let _ = writeln!(out, "\nmail: {} sent, {} pending, {} failed", outbox.sent, outbox.pending, outbox.failed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_durations() {
        assert_eq!(parse_since("90s"), Some(90_000));
        assert_eq!(parse_since("15m"), Some(900_000));
        assert_eq!(parse_since("2h"), Some(7_200_000));
        assert_eq!(parse_since("7d"), Some(604_800_000));
        assert_eq!(parse_since("1w"), Some(604_800_000));
        assert_eq!(parse_since("30"), Some(30_000));
        // The grammar jobs.toml uses: compound durations too.
        assert_eq!(parse_since("1m30s"), Some(90_000));
        assert_eq!(parse_since("1w1d"), Some(691_200_000));
        for bad in ["", "h", "5x", "-5m", "1.5h", "99999999999999999999d", "10 s", "9999999999999999w"] {
            assert_eq!(parse_since(bad), None, "{bad}");
        }
    }

    #[test]
    fn table_lists_events_and_mail_counts() {
        let e = EventRow {
            id: 1,
            at_ms: 0,
            host: "web-01".into(),
            ip: "10.0.0.1".into(),
            rule: "cpu".into(),
            state: "firing".into(),
            value: Some(93.2),
            limit: Some(90.0),
            detail: "FIRING cpu on web-01 (93.2% > 90%)".into(),
        };
        let t = render_table(&[e], OutboxCounts { pending: 1, sent: 2, failed: 0 });
        assert!(t.starts_with("1970-01-01 00:00:00 UTC  web-01  firing    FIRING cpu on web-01"), "{t}");
        assert!(t.contains("mail: 2 sent, 1 pending, 0 failed"), "{t}");
        assert!(render_table(&[], OutboxCounts::default()).starts_with("(no alerts)"));
    }

    #[test]
    fn table_escapes_control_characters() {
        let e = EventRow {
            id: 1,
            at_ms: 0,
            host: "web\u{1b}[2J".into(),
            ip: "10.0.0.1".into(),
            rule: "security".into(),
            state: "security".into(),
            value: None,
            limit: None,
            detail: "login by \u{1b}]0;owned\u{7}root\r\nfrom x".into(),
        };
        let t = render_table(&[e], OutboxCounts::default());
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        assert_eq!(t.lines().count(), 3, "one line per event: {t}");
    }
}
