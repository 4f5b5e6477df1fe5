//! Readings of a running `vigil serve` from outside: its resident memory ([`rss_bytes`]) and the counters of the
//! endpoint's closing summary line ([`closing_counters`]).

use std::collections::BTreeMap;

use anyhow::{Context, Result};

/// The resident set size of process `pid` in bytes (`VmRSS` of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .with_context(|| format!("no VmRSS in {path}"))?
        .parse()
        .context("VmRSS")?;
    Ok(kib * 1024)
}

/// The counters of the endpoint's closing summary line (`endpoint closed: connections=.. auth_rejected=..`) in a
/// serve log, if the line is there.
pub fn closing_counters(log: &str) -> Option<BTreeMap<String, u64>> {
    let line = log.lines().rev().find(|l| l.contains("endpoint closed:"))?;
    let (_, rest) = line.split_once("endpoint closed:")?;
    Some(
        rest.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_counters_parse_the_summary_line() {
        let log = "x\n2026 INFO vigil_server::endpoint: endpoint closed: connections=3 auth_rejected=1 bad_tags=0\n";
        let c = closing_counters(log).unwrap();
        assert_eq!(c["connections"], 3);
        assert_eq!(c["auth_rejected"], 1);
        assert_eq!(c.len(), 3);
        assert!(closing_counters("nothing").is_none());
    }

    #[test]
    fn rss_of_this_process_is_plausible() {
        let rss = rss_bytes(std::process::id()).unwrap();
        assert!(rss > 1 << 20 && rss < 1 << 40, "{rss}");
    }
}
