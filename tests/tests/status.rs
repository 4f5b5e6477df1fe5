//! `vigil status` against the database the real `vigil serve` filled over real SSH: a row per host with its ip,
//! agent version, last contact, silence and latest figures, as JSON and as a table, and the same answer once serve
//! is down (status reads the database directly).

use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::Value;
use vigil_tests::client::{CLIENT_VERSION, Served, host_ip, now_ms, sample_report};

const T: Duration = Duration::from_secs(10);

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn close(v: &Value, want: f64) -> bool {
    f(v).is_some_and(|x| (x - want).abs() < 1e-3)
}

/// The row of `name`.
fn host<'a>(status: &'a Value, name: &str) -> Result<&'a Value> {
    status["hosts"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["name"] == name))
        .ok_or_else(|| anyhow::anyhow!("no row for {name} in {status:#}"))
}

/// Checks the reporting host's row after its two reports.
fn check_reporting(row: &Value, before_ms: i64, after_ms: i64) -> Result<()> {
    ensure!(row["ip"] == host_ip(0).as_str(), "ip: {row:#}");
    ensure!(row["in_config"] == true, "{row:#}");
    ensure!(row["agent_version"] == CLIENT_VERSION, "agent version from the hello: {row:#}");
    let seen = row["last_seen_ms"].as_i64().unwrap_or(0);
    ensure!((before_ms..=after_ms).contains(&seen), "last_seen_ms {seen} outside [{before_ms}, {after_ms}]");
    ensure!(row["silent"] == false, "a host that just reported is not silent: {row:#}");
    // The latest report, not the first: 42.5% CPU, 63% memory, swap 12.5%, fullest disk /data at 91.5%.
    ensure!(close(&row["cpu_pct"], 42.5), "cpu: {row:#}");
    ensure!(close(&row["mem_pct"], 63.0), "memory: {row:#}");
    ensure!(close(&row["swap_pct"], 12.5), "swap: {row:#}");
    ensure!(row["fullest_disk"]["mount"] == "/data" && close(&row["fullest_disk"]["pct"], 91.5), "disk: {row:#}");
    // The reports were stamped 5 s in the past by the host's clock: its clock is about 5 s behind.
    let offset = row["clock_offset_ms"].as_i64().unwrap_or(0);
    ensure!((-20_000..=-4_000).contains(&offset), "clock offset {offset} ms");
    Ok(())
}

#[test]
fn status_json_shows_each_host_with_its_latest_figures_and_works_while_serve_is_down() -> Result<()> {
    let mut s = Served::start(&["alpha", "quiet"], "5s")?;
    // Before any report: both hosts listed, never seen, silent, no figures.
    let status = s.status_json()?;
    ensure!(status["config_error"].is_null(), "{status:#}");
    for name in ["alpha", "quiet"] {
        let row = host(&status, name)?;
        ensure!(row["last_seen_ms"].is_null() && row["silent"] == true && row["cpu_pct"].is_null(), "{row:#}");
    }

    let before = now_ms();
    let mut agent = s.session("alpha")?;
    agent.send_report(&sample_report(1, before - 6_000, 10.0, 20.0, 50.0))?;
    agent.send_report(&sample_report(2, before - 5_000, 42.5, 63.0, 91.5))?;
    agent.wait_acks([1, 2], T)?;
    let after = now_ms();

    let status = s.status_json()?;
    let hosts = status["hosts"].as_array().map(Vec::len).unwrap_or(0);
    ensure!(hosts == 2, "{status:#}");
    ensure!(status["hosts"][0]["name"] == "alpha", "rows follow clients.xml: {status:#}");
    check_reporting(host(&status, "alpha")?, before, after)?;
    let quiet = host(&status, "quiet")?;
    ensure!(quiet["ip"] == host_ip(1).as_str(), "{quiet:#}");
    ensure!(quiet["silent"] == true && quiet["last_seen_ms"].is_null(), "{quiet:#}");
    ensure!(quiet["cpu_pct"].is_null() && quiet["fullest_disk"].is_null(), "{quiet:#}");

    let table = s.status_table()?;
    let alpha_line = table.lines().find(|l| l.starts_with("alpha")).unwrap_or_default();
    for cell in [host_ip(0).as_str(), CLIENT_VERSION, "ok", "42.5%", "63.0%", "12.5%", "/data 91.5%"] {
        ensure!(alpha_line.contains(cell), "{cell:?} missing from {alpha_line:?}\n{table}");
    }
    let quiet_line = table.lines().find(|l| l.starts_with("quiet")).unwrap_or_default();
    ensure!(quiet_line.contains("SILENT") && quiet_line.contains("never"), "{table}");
    agent.close();

    // serve down: the same view from the database alone.
    let code = s.terminate(Duration::from_secs(20))?;
    ensure!(code == Some(0), "serve exited with {code:?}\n{}", s.logs());
    let down = s.status_json()?;
    check_reporting(host(&down, "alpha")?, before, after)?;
    ensure!(host(&down, "quiet")?["silent"] == true);
    ensure!(s.status_table()?.lines().any(|l| l.starts_with("alpha") && l.contains("42.5%")));
    Ok(())
}

#[test]
fn a_host_gone_from_clients_xml_keeps_its_history_in_status() -> Result<()> {
    let s = Served::start(&["alpha", "old"], "5s")?;
    let mut agent = s.session("old")?;
    agent.send_report(&sample_report(1, now_ms(), 33.0, 44.0, 55.0))?;
    agent.wait_acks([1], T)?;
    agent.close();
    s.set_clients(&["alpha"])?;
    // Once serve applied the edit, status (reading the new clients.xml) lists the old host after the configured
    // ones, marked as no longer configured, with its figures.
    let status = s.wait_status(T, "the old host to be listed as not in config", |v| {
        v["hosts"].as_array().is_some_and(|h| h.len() == 2 && h[1]["name"] == "old" && h[1]["in_config"] == false)
    })?;
    let old = host(&status, "old")?;
    ensure!(close(&old["cpu_pct"], 33.0) && close(&old["mem_pct"], 44.0), "{old:#}");
    ensure!(status["hosts"][0]["name"] == "alpha" && status["hosts"][0]["in_config"] == true, "{status:#}");
    ensure!(s.status_table()?.lines().any(|l| l.starts_with("old") && l.contains("not in config")));
    Ok(())
}
