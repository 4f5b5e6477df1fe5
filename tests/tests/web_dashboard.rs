//! The web dashboard of a real `vigil serve` fed by a real local agent: the fleet page and the host page load in
//! headless Chromium without a console error and every chart draws data points (screenshots of both pages are left
//! in `<target>/web-screenshots/`), a display name carrying markup shows as text, a host that reported for seconds
//! fills its charts, and a host whose clients.xml entry is in error shows "config error" in its row; an edit of
//! `[web] listen` waits for a restart; `/metrics` passes `promtool check metrics`; `vigil check` refuses a dashboard on a
//! non-loopback address without a token.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use vigil_tests::fleet::{ClientEntry, Workdir, clients_xml, jobs_toml};
use vigil_tests::net::free_port;
use vigil_tests::poll::wait_for;
use vigil_tests::process::{Proc, kill_processes_under};

const CHROMIUM: &str = "/usr/bin/chromium";
const PROMTOOL: &str = "/usr/bin/promtool";

/// `GET path` on 127.0.0.1:`port`: (status, body).
fn get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// The display name clients.xml gives `here`: markup that would change the title and log console errors if it ran.
const HOSTILE_NAME: &str = "Here <script>document.title=\"pwned\";console.error(\"xss\")</script><img src=x onerror=\"console.error('xss2')\">";
/// [`HOSTILE_NAME`] as Chromium serializes it in the DOM when it is text.
const HOSTILE_AS_TEXT: &str =
    "Here &lt;script&gt;document.title=\"pwned\";console.error(\"xss\")&lt;/script&gt;&lt;img";

/// `here`'s entry in clients.xml.
fn here() -> ClientEntry {
    ClientEntry::local("here").attr("display_name", HOSTILE_NAME)
}

/// A serve with one local host `here` (collecting everything every 2 s) and the dashboard on a free port.
struct Dashboard {
    work: Workdir,
    serve: Proc,
    web: u16,
}

impl Dashboard {
    fn start() -> Result<Self> {
        let work = Workdir::new()?;
        let (ssh, web) = (free_port(), free_port());
        work.write_clients_text(&clients_xml(&[here()]))?;
        let jobs = jobs_toml(ssh, &work.data_dir(), None, "2s");
        work.write_jobs(&format!("{jobs}\n[web]\nlisten = \"127.0.0.1:{web}\"\n"))?;
        let mut cmd = work.vigil(&["serve"]);
        cmd.env("TMPDIR", work.path());
        let serve = Proc::spawn(cmd, work.path(), "serve")?;
        let d = Dashboard { work, serve, web };
        wait_for(Duration::from_secs(30), "the dashboard to listen", || vigil_tests::net::port_accepts(web))
            .map_err(|e| e.context(d.serve.logs()))?;
        // Enough reports for every chart to have points (network rates need two samples).
        wait_for(Duration::from_secs(60), "three reports of the local agent", || {
            get(web, "/api/series?host=here&metric=net_rx&from=0&points=100")
                .is_ok_and(|(_, b)| b.matches("\"avg\":[").count() > 0 && !b.contains("\"t\":[]") && b.contains(','))
        })
        .map_err(|e| e.context(d.serve.logs()))?;
        std::thread::sleep(Duration::from_secs(5));
        Ok(d)
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.serve.stop();
        kill_processes_under(self.work.path());
    }
}

/// Where the screenshots go, printed so a person can open them.
fn screenshot_dir() -> Result<PathBuf> {
    let dir = vigil_tests::paths::target_dir().join("web-screenshots");
    std::fs::create_dir_all(&dir)?;
    eprintln!("web dashboard screenshots: {}", dir.display());
    Ok(dir)
}

/// Loads `url` in headless Chromium: the DOM after scripts ran, and Chromium's log (console messages included).
fn chromium(url: &str, profile: &Path, screenshot: &Path) -> Result<(String, String)> {
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1400,2200",
        "--virtual-time-budget=8000",
    ];
    let run = |extra: &str| -> Result<std::process::Output> {
        Command::new(CHROMIUM)
            .args(common)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(extra)
            .arg(url)
            .output()
            .with_context(|| format!("running {CHROMIUM} (install chromium and chromium-driver)"))
    };
    let dom = run("--dump-dom")?;
    ensure!(dom.status.success(), "chromium failed: {}", String::from_utf8_lossy(&dom.stderr));
    let shot = run(&format!("--screenshot={}", screenshot.display()))?;
    ensure!(shot.status.success(), "chromium screenshot failed: {}", String::from_utf8_lossy(&shot.stderr));
    ensure!(std::fs::metadata(screenshot).map(|m| m.len() > 1_000).unwrap_or(false), "no screenshot written");
    let log = String::from_utf8_lossy(&dom.stderr).into_owned() + &String::from_utf8_lossy(&shot.stderr);
    Ok((String::from_utf8_lossy(&dom.stdout).into_owned(), log))
}

/// Fails on any error the page's scripts recorded or Chromium logged from the console.
fn no_console_errors(dom: &str, log: &str) -> Result<()> {
    ensure!(dom.contains("data-js-errors=\"[]\""), "the page recorded script errors (or its script never ran):\n{dom}");
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught") || l.contains("Refused to"))
        .filter(|l| !l.contains("INFO:CONSOLE") || l.contains("rror") || l.contains("Refused"))
        .collect();
    ensure!(bad.is_empty(), "console errors:\n{}", bad.join("\n"));
    Ok(())
}

#[test]
fn fleet_and_host_pages_draw_every_chart_in_chromium_without_console_errors() -> Result<()> {
    if !Path::new(CHROMIUM).exists() {
        bail!("{CHROMIUM} is missing: apt-get install chromium chromium-driver (scripts/test.sh does)");
    }
    let d = Dashboard::start()?;
    let shots = screenshot_dir()?;
    let profile = tempfile::tempdir()?;

    let (dom, log) = chromium(&format!("http://127.0.0.1:{}/", d.web), profile.path(), &shots.join("fleet.png"))?;
    no_console_errors(&dom, &log)?;
    ensure!(dom.contains("data-host=\"here\""), "no row for the host:\n{dom}");
    ensure!(dom.contains("data-state=\"ok\""), "the reporting host is not ok:\n{dom}");
    let sparks: Vec<usize> = dom
        .split("class=\"spark\"")
        .skip(1)
        .filter_map(|s| s.split("data-points=\"").nth(1)?.split('"').next()?.parse().ok())
        .collect();
    ensure!(sparks.len() == 2 && sparks.iter().all(|&n| n >= 1), "CPU and memory sparklines: {sparks:?}\n{dom}");
    // The display name is shown as text: its markup never ran (no console error above, the title is the page's).
    ensure!(dom.contains(HOSTILE_AS_TEXT), "the display name is not shown as text:\n{dom}");
    ensure!(!dom.contains("<script>document") && !dom.contains("<img src=\"x\""), "markup injected:\n{dom}");
    ensure!(dom.contains("<title>fleet · vigil</title>"), "the title changed:\n{dom}");

    let (dom, log) =
        chromium(&format!("http://127.0.0.1:{}/hosts/here", d.web), profile.path(), &shots.join("host.png"))?;
    no_console_errors(&dom, &log)?;
    ensure!(dom.contains("data-charts-done=\"1\""), "the charts did not finish:\n{dom}");
    ensure!(dom.contains(&format!("<h1>{HOSTILE_AS_TEXT}")), "the display name is not the heading, as text:\n{dom}");
    ensure!(!dom.contains("<script>document") && !dom.contains("pwned</title>"), "markup injected:\n{dom}");
    // The host reported for seconds: the default hour is fitted to its data, not drawn as a sliver at the edge.
    ensure!(dom.contains("id=\"fitted\""), "the default window was not fitted to young data:\n{dom}");
    let attr = |name: &str| -> Option<i64> { dom.split(&format!("{name}=\"")).nth(1)?.split('"').next()?.parse().ok() };
    let (from, to) = (attr("data-from").context("data-from")?, attr("data-to").context("data-to")?);
    ensure!(to - from < 600, "a window of {} s for seconds of data", to - from);
    let charts: Vec<&str> = dom.split("<section class=\"chart\"").skip(1).collect();
    ensure!(charts.len() == 8, "eight charts: {}", charts.len());
    for c in charts {
        let head = c.split('>').next().unwrap_or_default();
        let points: usize =
            head.split("data-points=\"").nth(1).and_then(|s| s.split('"').next()?.parse().ok()).unwrap_or(0);
        ensure!(points > 0 && c.contains("<canvas"), "a chart drew no points: {head}");
    }
    Ok(())
}

#[test]
fn a_host_whose_client_entry_is_in_error_shows_config_error_in_its_row() -> Result<()> {
    let d = Dashboard::start()?;
    let row_state = |body: &str| -> Option<String> {
        body.split("data-host=\"here\" data-state=\"").nth(1)?.split('"').next().map(str::to_owned)
    };
    let (_, fleet) = get(d.web, "/")?;
    ensure!(row_state(&fleet).as_deref() == Some("ok"), "{fleet}");
    // An edit that breaks `here`'s entry (and only it): serve keeps the last good config and names the host.
    let broken = clients_xml(&[here().attr("port", "many"), ClientEntry::local("there").attr("ip", "127.0.0.2")]);
    d.work.write_clients_text(&broken)?;
    let mut body = String::new();
    wait_for(Duration::from_secs(30), "the row to show the config error", || {
        body = get(d.web, "/").map(|r| r.1).unwrap_or_default();
        row_state(&body).as_deref() == Some("config error")
    })
    .map_err(|e| e.context(format!("{body}\n{}", d.serve.logs())))?;
    ensure!(body.contains("bad port"), "the error itself is shown too:\n{body}");
    let (_, host) = get(d.web, "/hosts/here")?;
    ensure!(host.contains("class=\"state config-error\""), "{host}");
    // Mended: the row is ok again.
    d.work.write_clients_text(&clients_xml(&[here()]))?;
    wait_for(Duration::from_secs(30), "the row to be ok again", || {
        body = get(d.web, "/").map(|r| r.1).unwrap_or_default();
        row_state(&body).as_deref() == Some("ok")
    })
    .map_err(|e| e.context(body.clone()))?;
    Ok(())
}

#[test]
fn an_edit_of_web_listen_waits_for_a_restart_and_is_shown_by_status() -> Result<()> {
    let d = Dashboard::start()?;
    let jobs = std::fs::read_to_string(d.work.jobs_path())?;
    let other = free_port();
    let edited = jobs.replace(&format!("127.0.0.1:{}\"\n", d.web), &format!("127.0.0.1:{other}\"\n"));
    ensure!(edited != jobs, "no [web] listen line in {jobs}");
    d.work.write_jobs(&edited)?;
    wait_for(Duration::from_secs(30), "serve to log the refused edit", || {
        d.serve.logs().contains("restart needed for [web] listen")
    })
    .map_err(|e| e.context(d.serve.logs()))?;
    let status = || -> Result<(serde_json::Value, String)> {
        let json = d.work.vigil(&["status", "--json"]).output()?;
        let table = d.work.vigil(&["status"]).output()?;
        Ok((serde_json::from_slice(&json.stdout)?, String::from_utf8_lossy(&table.stdout).into_owned()))
    };
    let mut shown = (serde_json::Value::Null, String::new());
    wait_for(Duration::from_secs(30), "status to show the restart", || {
        shown = status().unwrap_or_default();
        shown.0["restart_needed"] == "web.listen"
    })
    .map_err(|e| e.context(format!("{shown:?}")))?;
    ensure!(shown.1.contains("restart needed for [web] listen"), "{}", shown.1);
    // The dashboard keeps its socket: still on the old port, not on the new one.
    ensure!(get(d.web, "/")?.0 == 200, "the dashboard left its port");
    ensure!(!vigil_tests::net::port_accepts(other), "the dashboard moved without a restart");
    d.work.write_jobs(&jobs)?;
    wait_for(Duration::from_secs(30), "status to drop the restart", || {
        status().is_ok_and(|(j, _)| j["restart_needed"].is_null())
    })?;
    Ok(())
}

#[test]
fn metrics_pass_promtool_and_follow_node_exporter_names() -> Result<()> {
    if !Path::new(PROMTOOL).exists() {
        bail!("{PROMTOOL} is missing: apt-get install --no-install-recommends prometheus (scripts/test.sh does)");
    }
    let d = Dashboard::start()?;
    let (code, body) = get(d.web, "/metrics")?;
    ensure!(code == 200, "{body}");
    for name in [
        "node_load1{host=\"here\"}",
        "node_memory_MemTotal_bytes{host=\"here\"}",
        "node_memory_MemAvailable_bytes{host=\"here\"}",
        "node_filesystem_size_bytes{host=\"here\",mountpoint=\"/\"}",
        "node_network_receive_bytes_total{host=\"here\",device=",
        "vigil_last_report_timestamp_seconds{host=\"here\"}",
        "vigil_reports_stored_total ",
        "vigil_outbox_mails{status=\"pending\"}",
    ] {
        ensure!(body.contains(name), "{name} missing:\n{body}");
    }
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(body.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // Exit 3 is lint findings only; every one must be node_exporter's own camelCase names.
    match out.status.code() {
        Some(0) => {}
        Some(3) => {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                ensure!(line.contains("camelCase") && line.contains("node_memory_"), "promtool: {line}\n{text}");
            }
        }
        _ => bail!("promtool check metrics failed:\n{text}\n{body}"),
    }
    Ok(())
}

#[test]
fn vigil_check_refuses_a_dashboard_beyond_loopback_without_a_token() -> Result<()> {
    let w = Workdir::new()?;
    w.write_clients_text(&clients_xml(&[ClientEntry::local("here")]))?;
    let jobs = jobs_toml(free_port(), &w.data_dir(), None, "5s");
    w.write_jobs(&format!("{jobs}\n[web]\nlisten = \"0.0.0.0:7080\"\n"))?;
    let out = w.vigil(&["check"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "accepted:\n{text}");
    ensure!(text.contains("not a loopback address") && text.contains("token_env"), "{text}");
    // With a token it passes, and so does loopback without one.
    w.write_jobs(&format!("{jobs}\n[web]\nlisten = \"0.0.0.0:7080\"\ntoken_env = \"VIGIL_WEB_TOKEN\"\n"))?;
    let out = w.vigil(&["check"]).output()?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    w.write_jobs(&format!("{jobs}\n[web]\nlisten = \"[::1]:7080\"\n"))?;
    ensure!(w.vigil(&["check"]).output()?.status.success());
    Ok(())
}

#[test]
fn vigil_export_writes_the_stored_samples_as_csv_and_jsonl() -> Result<()> {
    let d = Dashboard::start()?;
    let out = d.work.vigil(&["export", "--since", "1h", "--family", "cpu", "--format", "csv"]).output()?;
    let csv = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut lines = csv.lines();
    ensure!(lines.next() == Some("host,ts_ms,total_pct,per_core_pct,load1,load5,load15"), "{csv}");
    let rows: Vec<&str> = lines.collect();
    ensure!(rows.len() >= 3 && rows.iter().all(|r| r.starts_with("here,")), "{csv}");
    // A per-core array holds commas: quoted.
    ensure!(rows[0].contains(",\"[") || !rows[0].contains('['), "{csv}");

    let out = d.work.vigil(&["export", "--since", "1h", "--host", "here", "--format", "jsonl"]).output()?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut families = std::collections::BTreeSet::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| line.to_string())?;
        ensure!(v["host"] == "here" && v["ts_ms"].is_i64(), "{line}");
        families.insert(v["family"].as_str().unwrap_or_default().to_string());
    }
    for f in ["cpu", "memory", "disk_usage", "network", "system"] {
        ensure!(families.contains(f), "no {f} rows: {families:?}");
    }
    // Another host's samples: none. CSV without a family: refused with a reason.
    let out = d.work.vigil(&["export", "--since", "1h", "--host", "elsewhere", "--format", "jsonl"]).output()?;
    ensure!(out.status.success() && out.stdout.is_empty());
    let out = d.work.vigil(&["export", "--since", "1h", "--format", "csv"]).output()?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--family"));
    Ok(())
}

#[test]
fn serve_does_not_start_when_the_token_variable_is_unset() -> Result<()> {
    let w = Workdir::new()?;
    w.write_clients_text(&clients_xml(&[ClientEntry::local("here")]))?;
    let jobs = jobs_toml(free_port(), &w.data_dir(), None, "5s");
    let web = free_port();
    w.write_jobs(&format!("{jobs}\n[web]\nlisten = \"127.0.0.1:{web}\"\ntoken_env = \"VIGIL_TEST_UNSET_TOKEN\"\n"))?;
    let mut cmd = w.vigil(&["serve"]);
    cmd.env_remove("VIGIL_TEST_UNSET_TOKEN").env("TMPDIR", w.path());
    let mut serve = Proc::spawn(cmd, w.path(), "serve")?;
    let exit = serve.wait_exit(Duration::from_secs(20));
    kill_processes_under(w.path());
    let exit = exit?;
    ensure!(!exit.success(), "serve started without its token:\n{}", serve.logs());
    ensure!(serve.stderr().contains("VIGIL_TEST_UNSET_TOKEN"), "{}", serve.logs());
    ensure!(!serve.stdout().contains("listening on"), "serve announced itself first:\n{}", serve.logs());
    Ok(())
}
