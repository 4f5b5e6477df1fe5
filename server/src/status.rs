//! The `vigil status` view: one row per host with its latest figures, read straight from the database.
//!
//! Every figure comes from an indexed "latest row for this host" lookup (`ORDER BY ts DESC LIMIT 1` on a
//! `(host_id, ts)` index), so the cost of `vigil status` does not grow with history.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::escape;
use crate::store::repairs::RepairRow;
use crate::store::{MAX_FUTURE_MS, Store, StoreError, UnavailableRow};

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
    /// The offset is beyond [`MAX_FUTURE_MS`] either way: the host's clock is wrong (its samples are filed under
    /// the server's receive time when they claim to come from the future).
    pub clock_wrong: bool,
    pub cpu_pct: Option<f64>,
    pub mem_pct: Option<f64>,
    pub swap_pct: Option<f64>,
    pub fullest_disk: Option<DiskFill>,
    /// Alerts of this host firing now.
    pub alerts: Vec<FiringAlert>,
    /// The last automatic repair `vigil serve` made (or tried) on this host.
    pub last_repair: Option<RepairRow>,
    /// How the host reports: `tunnel`, `direct` or `local` (`None`: not in the config).
    pub reporting: Option<&'static str>,
    /// Its tunnel's recorded state, for a host reporting through one that bootstrap has registered.
    pub tunnel: Option<TunnelStatus>,
    /// The running `vigil serve` node that owns the host (holds its lease): its reverse channel, repairs and
    /// silence. `None` when no live node does.
    pub owner: Option<String>,
    /// The latest run of each command job of this host (a refusal says why the host runs no commands).
    pub commands: Vec<CommandStatus>,
    /// Statistics families the host's agent cannot serve there (on Windows: the Security log, sessions), and why.
    pub unavailable: Vec<UnavailableRow>,
}

/// A `vigil serve` process that used the database, as `vigil status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeStatus {
    #[serde(flatten)]
    pub row: crate::store::nodes::NodeRow,
    /// Not stopped, and its heartbeat is fresh.
    pub running: bool,
}

/// The nodes recorded in `store`, judged at `now_ms`.
pub fn nodes(store: &Store, now_ms: i64) -> Result<Vec<NodeStatus>, StoreError> {
    Ok(store.nodes()?.into_iter().map(|row| NodeStatus { running: row.running(now_ms), row }).collect())
}

/// A host's tunnel, as `vigil status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TunnelStatus {
    /// `pending` (bootstrapped, not held by serve yet), `up`, `down` or `refused`.
    pub state: &'static str,
    /// The forwarded port on the host's loopback its agent dials.
    pub port: Option<u16>,
    /// Why it is down or refused.
    pub error: Option<String>,
    /// Server clock, ms since the epoch.
    pub since_ms: Option<i64>,
}

/// The latest run of one command job, as `vigil status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandStatus {
    pub job: String,
    /// Host clock, ms since the epoch.
    pub started_ms: i64,
    /// `exit 0`, `timed out`, `refused: ...`.
    pub result: String,
    pub ok: bool,
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
    /// The `vigil serve` processes that used this database.
    pub nodes: &'a [NodeStatus],
    pub config_error: Option<&'a str>,
    /// `[server]` settings edited in jobs.toml that the running `vigil serve` applies only after a restart.
    pub restart_needed: Option<&'a str>,
}

/// Builds the view: first the configured `hosts` (name, ip, shortest expected interval in seconds), in their
/// order, then hosts that only the database knows (`in_config: false`), by name.
pub fn collect(
    store: &Store,
    hosts: &[(String, String, Option<u32>)],
    now_ms: i64,
) -> Result<Vec<HostStatus>, StoreError> {
    // Every figure of every host in a few statements (one per kind), then joined here by name.
    let mut known = Known {
        rows: store.host_rows()?,
        firing: HashMap::new(),
        repairs: store.repairs()?.into_iter().map(|r| (r.host.clone(), r)).collect(),
        jobs: HashMap::new(),
    };
    for f in crate::store::alerts::firing(store.view())? {
        known.firing.entry(f.host.clone()).or_default().push(f);
    }
    for (host, job) in store.command_jobs()? {
        known.jobs.entry(host).or_default().push(job);
    }
    let mut out = Vec::with_capacity(hosts.len());
    let mut seen = HashSet::new();
    for (name, ip, interval) in hosts {
        seen.insert(name.as_str());
        out.push(host_status(store, &mut known, name, ip, true, *interval, now_ms)?);
    }
    for (name, ip) in store.known_hosts()? {
        if !seen.contains(name.as_str()) {
            out.push(host_status(store, &mut known, &name, &ip, false, None, now_ms)?);
        }
    }
    Ok(out)
}

/// What the database holds of every host, read once per view.
struct Known {
    rows: HashMap<String, crate::store::HostRow>,
    firing: HashMap<String, Vec<crate::store::alerts::FiringRow>>,
    repairs: HashMap<String, RepairRow>,
    jobs: HashMap<String, Vec<String>>,
}

fn host_status(
    store: &Store,
    known: &mut Known,
    name: &str,
    ip: &str,
    in_config: bool,
    interval_s: Option<u32>,
    now_ms: i64,
) -> Result<HostStatus, StoreError> {
    let row = known.rows.remove(name).unwrap_or_default();
    let alerts = known
        .firing
        .remove(name)
        .unwrap_or_default()
        .into_iter()
        .map(|f| FiringAlert { rule: f.rule, value: f.value, limit: f.limit, since_ms: f.since_ms })
        .collect();
    let last_seen_ms = match (row.agent_seen_ms, row.last_report_ms) {
        (Some(a), Some(r)) => Some(a.max(r)),
        (a, r) => a.or(r),
    };
    // Stored as received - collected; shown as how far the host's clock is ahead.
    let clock_offset_ms = row.report_offset_ms.map(|o| -o);
    let mut status = HostStatus {
        name: name.to_owned(),
        ip: ip.to_owned(),
        in_config,
        agent_version: row.agent_version,
        last_seen_ms,
        seconds_since: None,
        silent: true,
        clock_offset_ms,
        clock_wrong: clock_offset_ms.is_some_and(|o| o.abs() > MAX_FUTURE_MS),
        cpu_pct: row.cpu_pct,
        mem_pct: row.mem_pct,
        swap_pct: row.swap_pct,
        fullest_disk: row.fullest_disk.map(|(mount, pct)| DiskFill { mount, pct }),
        alerts,
        last_repair: known.repairs.remove(name),
        reporting: None,
        tunnel: None,
        owner: None,
        commands: command_status(store, name, &known.jobs.remove(name).unwrap_or_default())?,
        unavailable: store.unavailable_of(name)?,
    };
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

/// Fills in how each configured host reports and its tunnel's state (the `tunnels` table).
/// A tunnel recorded `up` counts only while a serve runs (`serve_running`): after a crash nobody holds it.
pub fn add_channels(
    rows: &mut [HostStatus],
    store: &Store,
    config: &crate::config::Config,
    serve_running: bool,
) -> Result<(), StoreError> {
    let tunnels = store.tunnels()?;
    let (leases, now) = store.leases()?;
    for row in rows.iter_mut() {
        row.owner = leases.iter().find(|l| l.host == row.name && l.expires_at_ms >= now).map(|l| l.node.clone());
        let Some(host) = config.clients.iter().find(|h| h.name == row.name) else { continue };
        let reporting = config.reporting(host);
        row.reporting = Some(reporting.as_str());
        if reporting == crate::config::Reporting::Tunnel
            && let Some(t) = tunnels.iter().find(|t| t.host == row.name)
        {
            let orphaned = t.state == crate::store::TunnelState::Up && !serve_running;
            row.tunnel = Some(TunnelStatus {
                state: if orphaned { crate::store::TunnelState::Down.as_str() } else { t.state.as_str() },
                port: t.port,
                error: if orphaned { Some("vigil serve is not running".into()) } else { t.error.clone() },
                since_ms: t.since_ms,
            });
        }
    }
    Ok(())
}

/// The CHANNEL cell: how the host reports, and its tunnel's state; with several nodes, which one owns the host.
fn channel_cell(h: &HostStatus, several_nodes: bool) -> String {
    let channel = match (h.reporting, &h.tunnel) {
        (None, _) => "-".into(),
        (Some("tunnel"), None) => "tunnel (not bootstrapped)".into(),
        (Some(r), Some(t)) => format!("{r} {}", t.state),
        (Some(r), None) => r.into(),
    };
    match (&h.owner, several_nodes) {
        (Some(node), true) => format!("{channel} @{}", escape::cell(node)),
        (None, true) if h.in_config => format!("{channel} @none"),
        _ => channel,
    }
}

/// The latest run of each of `host`'s command `jobs`.
fn command_status(store: &Store, host: &str, jobs: &[String]) -> Result<Vec<CommandStatus>, StoreError> {
    let mut out = Vec::new();
    for job in jobs {
        let filter =
            crate::store::RunFilter { host: Some(host.to_owned()), job: Some(job.clone()), since_ms: 0, limit: 1 };
        for r in store.command_runs(&filter)? {
            out.push(CommandStatus { ok: r.succeeded(), result: r.describe(), job: r.job, started_ms: r.started_ms });
        }
    }
    Ok(out)
}

/// The pending config error `vigil serve` recorded, if any.
pub fn config_error(store: &Store) -> Result<Option<String>, StoreError> {
    store.config_error()
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}%"))
}

fn ago(s: Option<i64>) -> String {
    s.map_or_else(|| "never".into(), |s| format!("{} ago", span(s)))
}

/// A number of seconds in its largest sensible unit: `90s`, `15m`, `5h`, `3d`.
fn span(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

/// The human table: a header, a row per host, then the pending config error if there is one.
pub fn render_table(
    hosts: &[HostStatus],
    nodes: &[NodeStatus],
    config_error: Option<&str>,
    restart_needed: Option<&str>,
) -> String {
    let header = ["HOST", "IP", "AGENT", "LAST SEEN", "STATE", "CPU", "MEM", "SWAP", "FULLEST DISK", "CHANNEL"];
    let several_nodes = nodes.len() > 1;
    let rows: Vec<[String; 10]> = hosts
        .iter()
        .map(|h| {
            let state = match (h.silent, h.in_config) {
                (true, true) => "SILENT",
                (false, true) => "ok",
                (_, false) => "not in config",
            };
            let state = match h.clock_offset_ms.filter(|_| h.clock_wrong) {
                Some(o) => format!("{state}, clock {}{}", if o > 0 { "+" } else { "-" }, span(o.abs() / 1000)),
                None => state.to_owned(),
            };
            [
                escape::cell(&h.name),
                escape::cell(&h.ip),
                h.agent_version.as_deref().map_or_else(|| "-".into(), escape::cell),
                ago(h.seconds_since),
                state,
                pct(h.cpu_pct),
                pct(h.mem_pct),
                pct(h.swap_pct),
                h.fullest_disk
                    .as_ref()
                    .map_or_else(|| "-".into(), |d| format!("{} {:.1}%", escape::cell(&d.mount), d.pct)),
                channel_cell(h, several_nodes),
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
                "  {}  {}  value {value}  limit {}  since {since}",
                escape::cell(host),
                escape::cell(&a.rule),
                crate::alert::message::num(a.limit)
            );
        }
    }
    render_repairs(&mut out, hosts);
    render_tunnels(&mut out, hosts);
    render_nodes(&mut out, nodes);
    render_commands(&mut out, hosts);
    render_unavailable(&mut out, hosts);
    if let Some(keys) = restart_needed {
        let keys: Vec<String> = keys.split(", ").map(crate::reload::restart_key).collect();
        let _ = writeln!(
            out,
            "\nrestart needed for {} (vigil serve runs with the previous values)",
            escape::cell(&keys.join(", "))
        );
    }
    if let Some(e) = config_error {
        let _ =
            writeln!(out, "\npending config error (the previous config stays in force):\n{}", escape::control(e, true));
    }
    out
}

/// The tunnels that are not up, with why.
fn render_tunnels(out: &mut String, hosts: &[HostStatus]) {
    let troubled: Vec<(&str, &TunnelStatus)> = hosts
        .iter()
        .filter_map(|h| h.tunnel.as_ref().filter(|t| t.error.is_some()).map(|t| (h.name.as_str(), t)))
        .collect();
    if !troubled.is_empty() {
        let _ = writeln!(out, "\ntunnels not up:");
        for (host, t) in troubled {
            let since = t.since_ms.map_or_else(|| "-".into(), crate::alert::message::utc);
            let error = t.error.as_deref().map_or_else(String::new, |e| escape::control(e, false));
            let _ = writeln!(out, "  {}  {}  since {since}: {error}", escape::cell(host), t.state);
        }
    }
}

/// The latest run of each command job per host.
fn render_commands(out: &mut String, hosts: &[HostStatus]) {
    let commands: Vec<(&str, &CommandStatus)> =
        hosts.iter().flat_map(|h| h.commands.iter().map(move |c| (h.name.as_str(), c))).collect();
    if !commands.is_empty() {
        let _ = writeln!(out, "\ncommand jobs (latest run):");
        for (host, c) in commands {
            let _ = writeln!(
                out,
                "  {}  {}  {}  at {}",
                escape::cell(host),
                escape::cell(&c.job),
                escape::cell(&c.result),
                crate::alert::message::utc(c.started_ms)
            );
        }
    }
}

/// The statistics families hosts cannot serve, and why: "not available" rather than an empty, healthy family.
fn render_unavailable(out: &mut String, hosts: &[HostStatus]) {
    let rows: Vec<(&str, &UnavailableRow)> =
        hosts.iter().flat_map(|h| h.unavailable.iter().map(move |u| (h.name.as_str(), u))).collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "
not available on the host:"
    );
    for (host, u) in rows {
        let _ = writeln!(
            out,
            "  {}  {}  {}  since {}",
            escape::cell(host),
            escape::cell(&u.family),
            escape::cell(&u.reason),
            crate::alert::message::utc(u.since_ms)
        );
    }
}

/// The last automatic repair of each host that had one: when, how it ended, and its one line.
fn render_repairs(out: &mut String, hosts: &[HostStatus]) {
    let repaired: Vec<(&str, &RepairRow)> =
        hosts.iter().filter_map(|h| h.last_repair.as_ref().map(|r| (h.name.as_str(), r))).collect();
    if repaired.is_empty() {
        return;
    }
    let _ = writeln!(out, "\nlast repairs:");
    for (host, r) in repaired {
        let streak = if r.failures > 1 { format!(" ({} failures in a row)", r.failures) } else { String::new() };
        let _ = writeln!(
            out,
            "  {}  {}  {}{streak}  {}",
            escape::cell(host),
            crate::alert::message::utc(r.last_attempt_ms),
            r.outcome.as_str(),
            escape::control(&r.detail, false)
        );
    }
}

/// The JSON form: `{"hosts": [...], "config_error": null | "...", "restart_needed": null | "..."}`.
pub fn render_json(
    hosts: &[HostStatus],
    nodes: &[NodeStatus],
    config_error: Option<&str>,
    restart_needed: Option<&str>,
) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(&StatusView { hosts, nodes, config_error, restart_needed })
}

/// One line per `vigil serve` that used the database: running, or when it was last seen.
fn render_nodes(out: &mut String, nodes: &[NodeStatus]) {
    let _ = writeln!(out);
    if nodes.is_empty() {
        let _ = writeln!(out, "vigil serve: has not run on this database");
    }
    for n in nodes {
        let r = &n.row;
        let state = match (n.running, r.stopped_at_ms) {
            (true, _) => format!(
                "running (pid {}, since {}, heartbeat {})",
                r.pid,
                crate::alert::message::utc(r.started_at_ms),
                crate::alert::message::utc(r.heartbeat_ms)
            ),
            (false, Some(at)) => format!("stopped at {}", crate::alert::message::utc(at)),
            (false, None) => {
                format!("not running: no heartbeat since {} (killed?)", crate::alert::message::utc(r.heartbeat_ms))
            }
        };
        let _ = writeln!(out, "vigil serve on {}: {state}", escape::cell(&r.name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Incoming;

    fn report(seq: u64, at: i64, cpu: f32, disks: &[(&str, f32)]) -> Incoming {
        crate::store::test_vitals_report(seq, at, cpu, disks)
    }

    #[test]
    fn a_report_from_the_future_does_not_pin_the_latest_values() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("v.db")).unwrap();
        // The host's clock runs a year ahead for one report, then is fixed.
        let mut future = report(1, 10_000, 99.0, &[("/", 99.0)]);
        future.report.collected_at_ms = 10_000 + 365 * 86_400_000;
        store.insert_reports(&[future, report(2, 20_000, 12.5, &[("/", 40.0)])]).unwrap();
        let hosts = vec![("web1".to_string(), "10.0.0.1".to_string(), Some(10))];
        let view = collect(&store, &hosts, 21_000).unwrap();
        assert_eq!(view[0].cpu_pct, Some(12.5), "the newest report by the server's clock wins");
        assert_eq!(view[0].fullest_disk, Some(DiskFill { mount: "/".into(), pct: 40.0 }));
        assert!(!view[0].clock_wrong, "the latest report's clock is right");

        // While the clock is wrong, status says so.
        let mut ahead = report(3, 30_000, 50.0, &[("/", 41.0)]);
        ahead.report.collected_at_ms = 30_000 + 2 * 3_600_000;
        store.insert_reports(&[ahead]).unwrap();
        let view = collect(&store, &hosts, 31_000).unwrap();
        assert_eq!(view[0].cpu_pct, Some(50.0));
        assert!(view[0].clock_wrong);
        let table = render_table(&view, &[], None, None);
        assert!(table.contains("ok, clock +2h"), "{table}");
    }

    #[test]
    fn status_shows_the_last_repair_of_a_host() {
        use crate::store::repairs::{RepairOutcome, set_repair};
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("v.db")).unwrap();
        store.insert_reports(&[report(1, 10_000, 12.5, &[])]).unwrap();
        let hosts = vec![("web1".to_string(), "10.0.0.1".to_string(), Some(10))];
        assert_eq!(collect(&store, &hosts, 11_000).unwrap()[0].last_repair, None);
        assert!(!render_table(&collect(&store, &hosts, 11_000).unwrap(), &[], None, None).contains("last repairs"));
        let row = RepairRow {
            host: "web1".into(),
            last_attempt_ms: 20_000,
            outcome: RepairOutcome::Failed,
            detail: "REPAIR FAILED web1 (silent for 40 s): cannot reach\x1b[2J".into(),
            failures: 2,
        };
        store.write_tx(|c| set_repair(c, &row)).unwrap();
        let view = collect(&store, &hosts, 21_000).unwrap();
        assert_eq!(view[0].last_repair.as_ref(), Some(&row));
        let table = render_table(&view, &[], None, None);
        assert!(table.contains("last repairs:\n  web1  "), "{table}");
        assert!(table.contains("failed (2 failures in a row)  REPAIR FAILED web1"), "{table}");
        assert!(!table.contains('\x1b'), "{table}");
        let json = render_json(&view, &[], None, None).unwrap();
        assert!(json.contains("\"outcome\": \"failed\""), "{json}");
    }

    #[test]
    fn status_says_which_families_a_host_cannot_serve() {
        use vigil_schema::job::Collector;
        use vigil_schema::report::Unavailable;
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("v.db")).unwrap();
        let mut r = report(1, 10_000, 1.0, &[]);
        r.report.stats.unavailable = vec![Unavailable {
            family: Collector::SecurityEvents,
            reason: "cannot read the Security event log: EvtQuery on Security: access denied\u{1b}[2J".into(),
        }];
        store.insert_reports(&[r]).unwrap();
        let hosts = vec![("web1".to_string(), "10.0.0.1".to_string(), Some(10))];
        let view = collect(&store, &hosts, 11_000).unwrap();
        assert_eq!(view[0].unavailable.len(), 1);
        let table = render_table(&view, &[], None, None);
        assert!(
            table.contains("not available on the host:\n  web1  security_events  cannot read the Security event log"),
            "{table}"
        );
        assert!(!table.contains('\x1b'), "{table}");
        let json = render_json(&view, &[], None, None).unwrap();
        assert!(json.contains("\"family\": \"security_events\""), "{json}");
    }

    #[test]
    fn printed_text_cannot_drive_the_terminal() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("v.db")).unwrap();
        store.insert_reports(&[report(1, 10_000, 1.0, &[("/\u{1b}[31mred", 5.0)])]).unwrap();
        let version = format!("1.0\u{1b}]0;owned\u{7}\u{1b}[2J{}", " ".repeat(1 << 20));
        store
            .register_agent(&crate::store::AgentRecord {
                agent_id: "ag".into(),
                host: "web1".into(),
                public_key: "k".into(),
                secret_hex: "00".into(),
                version: Some(version),
                registered_at_ms: 1,
                last_seen_at_ms: Some(10_000),
            })
            .unwrap();
        let hosts = vec![("web1".to_string(), "10.0.0.1".to_string(), Some(10))];
        let view = collect(&store, &hosts, 11_000).unwrap();
        let table = render_table(&view, &[], Some("bad\u{1b}[2J edit"), None);
        assert!(!table.chars().any(|c| c.is_control() && c != '\n'), "{table:?}");
        assert!(table.lines().all(|l| l.chars().count() < 400), "a line too long to read");
        assert!(table.contains("1.0\\u{1b}]0;owned"), "{table}");
        let json = render_json(&view, &[], None, None).unwrap();
        assert!(!json.chars().any(|c| c.is_control() && c != '\n'), "raw control characters in the JSON");
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

        let table = render_table(&later, &[], Some("clients.xml:4:2: missing ip"), Some("listen"));
        assert!(table.contains("SILENT") && table.contains("/data 81.5%") && table.contains("missing ip"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&render_json(&later, &[], None, None).unwrap()).unwrap();
        assert_eq!(json["hosts"][0]["fullest_disk"]["mount"], "/data");
        assert_eq!(json["config_error"], serde_json::Value::Null);
    }
}
