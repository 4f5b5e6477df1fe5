//! Several `vigil serve` nodes from one pair of config files (issue 17): `--node`, `--listen`, `--data-dir` and
//! `--web-listen` override jobs.toml per process, each node keeps its own host key and SQLite database, the read
//! commands find a node's database through `--data-dir`, and a reload keeps every override in force without asking
//! for a restart.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use vigil_tests::client::{AgentCreds, STEP_TIMEOUT, VigilSession, host_ip, now_ms, replace_file, sample_report};
use vigil_tests::{ClientEntry, Proc, Workdir, free_port, port_accepts, wait_for};

const T: Duration = Duration::from_secs(15);

/// One node: its name, ports and data directory, and its serve process.
struct Node {
    name: String,
    port: u16,
    web_port: u16,
    data_dir: PathBuf,
    proc: Proc,
    fingerprint: String,
}

impl Node {
    /// `vigil <args> --data-dir <this node's>`.
    fn vigil(&self, work: &Workdir, args: &[&str]) -> Result<Output> {
        let out = work.vigil(args).arg("--data-dir").arg(&self.data_dir).output().context("running vigil")?;
        ensure!(out.status.success(), "vigil {args:?} for {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
        Ok(out)
    }
}

/// Starts `vigil serve --node NAME --listen 127.0.0.1:P --data-dir DIR --web-listen 127.0.0.1:W` and waits for it.
fn start_node(work: &Workdir, name: &str) -> Result<Node> {
    let (port, web_port) = (free_port(), free_port());
    let data_dir = work.path().join(format!("data-{name}"));
    let (listen, web) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{web_port}"));
    let dir = data_dir.display().to_string();
    let args = ["serve", "--node", name, "--listen", &listen, "--data-dir", &dir, "--web-listen", &web];
    let mut cmd = work.vigil(&args);
    cmd.env("TMPDIR", work.path()).env("VIGIL_LOG", "info,russh=warn");
    let mut proc = Proc::spawn(cmd, work.path(), &format!("serve-{name}"))?;
    let ok = vigil_tests::wait_until(STEP_TIMEOUT, || {
        (proc.stdout().contains("listening on") && proc.stdout().contains("web dashboard")) || !proc.is_running()
    });
    ensure!(ok && proc.is_running(), "node {name} did not start\n{}", proc.logs());
    let out = proc.stdout();
    ensure!(out.contains(&format!("listening on {listen},")), "node {name} does not listen on {listen}: {out}");
    ensure!(out.contains(&format!("web dashboard on http://{web}/")), "node {name}'s dashboard: {out}");
    let fingerprint = out
        .split_whitespace()
        .find(|w| w.starts_with("SHA256:"))
        .with_context(|| format!("no host key in {out:?}"))?
        .trim_end_matches(',')
        .to_owned();
    Ok(Node { name: name.to_owned(), port, web_port, data_dir, proc, fingerprint })
}

/// jobs.toml shared by both nodes: its own listen, data directory and dashboard, which neither node uses.
fn jobs(listen: u16, data_dir: &Path, web: u16, retention_days: u32) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{listen}\"\ndata_dir = \"{}\"\nretention_days = {retention_days}\n\n[web]\n\
         listen = \"127.0.0.1:{web}\"\n\n[[job]]\nname = \"all\"\ncollectors = [\"cpu\", \"memory\"]\n\
         interval = \"5s\"\n",
        data_dir.display()
    )
}

#[test]
fn two_nodes_share_one_pair_of_config_files_each_with_its_own_listen_data_dir_and_name() -> Result<()> {
    let work = Workdir::new()?;
    work.write_clients(&[ClientEntry::enrolled("alpha", host_ip(0))])?;
    let shared_dir = work.path().join("shared-data");
    let (file_port, file_web) = (free_port(), free_port());
    work.write_jobs(&jobs(file_port, &shared_dir, file_web, 30))?;

    let mut nodes = vec![start_node(&work, "node-a")?, start_node(&work, "node-b")?];
    for n in &nodes {
        ensure!(port_accepts(n.port), "{}'s SSH endpoint refuses TCP on {}", n.name, n.port);
        ensure!(port_accepts(n.web_port), "{}'s dashboard refuses TCP on {}", n.name, n.web_port);
        ensure!(n.data_dir.join("host_key").is_file(), "no host key in {}", n.data_dir.display());
        ensure!(n.data_dir.join("vigil.db").is_file(), "no SQLite database in {}", n.data_dir.display());
        let printed = String::from_utf8(n.vigil(&work, &["host-key"])?.stdout)?;
        ensure!(printed.trim() == n.fingerprint, "host-key --data-dir: {printed} vs {}", n.fingerprint);
    }
    ensure!(nodes[0].fingerprint != nodes[1].fingerprint, "both nodes present one host key");
    ensure!(!port_accepts(file_port) && !port_accepts(file_web), "a node listens on jobs.toml's own addresses");
    ensure!(!shared_dir.exists(), "a node used jobs.toml's data_dir");

    // The agent enrolled into each node's database (`enroll --data-dir`) reports to that node.
    for (i, n) in nodes.iter().enumerate() {
        let dir = work.path().join(format!("agent-{}", n.name));
        let dir_arg = dir.display().to_string();
        n.vigil(&work, &["enroll", "alpha", "--dir", &dir_arg])?;
        let mut creds = AgentCreds::load(&dir)?;
        ensure!(creds.server_host_key == n.fingerprint, "{} enrolled against another key", n.name);
        creds.server = format!("127.0.0.1:{}", n.port);
        let mut session = VigilSession::start(&creds)?;
        let cpu = 11.5 * (i as f32 + 1.0);
        session.send_report(&sample_report(1, now_ms(), cpu, 5.0, 5.0))?;
        session.wait_acks([1], T)?;
        session.close();
    }

    // Each node's data directory is its own: status, alerts, runs and export read it through --data-dir.
    for (i, n) in nodes.iter().enumerate() {
        let json: serde_json::Value = serde_json::from_slice(&n.vigil(&work, &["status", "--json"])?.stdout)?;
        let cpu = 11.5 * (i as f64 + 1.0);
        ensure!(json["hosts"][0]["cpu_pct"] == cpu, "{}'s status: {json}", n.name);
        let names: Vec<&str> =
            json["nodes"].as_array().into_iter().flatten().filter_map(|r| r["name"].as_str()).collect();
        ensure!(names == [n.name.as_str()], "{}'s database records the nodes {names:?}", n.name);
        ensure!(json["nodes"][0]["running"] == true, "{} is not shown running: {json}", n.name);
        for args in [&["alerts", "--json"][..], &["runs", "--json"][..]] {
            n.vigil(&work, args)?;
        }
        let csv = String::from_utf8(
            n.vigil(&work, &["export", "--since", "1h", "--family", "cpu", "--format", "csv"])?.stdout,
        )?;
        ensure!(csv.lines().count() == 2, "{}'s export: {csv}", n.name);
        // The row's own total_pct, found by the header: a substring test would also match the timestamp's digits
        // (ts_ms 1796044742332 "contains" the other node's 23).
        let mut lines = csv.lines().map(|l| l.split(',').collect::<Vec<_>>());
        let (header, row) = (lines.next().unwrap_or_default(), lines.next().unwrap_or_default());
        let total = header.iter().position(|c| *c == "total_pct").and_then(|i| row.get(i).copied());
        ensure!(total == Some(cpu.to_string().as_str()), "{}'s export has the other node's report: {csv}", n.name);
    }

    // An edit of the overridden keys changes nothing for the nodes and asks for no restart; the rest applies.
    let (moved, moved_web) = (free_port(), free_port());
    replace_file(&work.jobs_path(), &jobs(moved, &work.path().join("elsewhere"), moved_web, 20))?;
    for n in &nodes {
        wait_for(T, "the reload", || n.proc.stderr().contains("configuration reloaded"))
            .map_err(|e| e.context(n.proc.logs()))?;
    }
    for n in &mut nodes {
        let log = n.proc.stderr();
        ensure!(!log.contains("restart needed"), "{} asks for a restart:\n{log}", n.name);
        ensure!(n.proc.is_running() && port_accepts(n.port) && port_accepts(n.web_port), "{} moved", n.name);
        let json: serde_json::Value = serde_json::from_slice(&n.vigil(&work, &["status", "--json"])?.stdout)?;
        ensure!(json["restart_needed"].is_null(), "{}: {json}", n.name);
    }
    ensure!(!port_accepts(moved) && !port_accepts(moved_web), "a node followed the file's listen");

    // An edit of a key not overridden is still refused until a restart.
    let other_db = format!("database = \"{}\"\n", work.path().join("other.db").display());
    let text = jobs(moved, &work.path().join("elsewhere"), moved_web, 20)
        .replace("retention_days", &format!("{other_db}retention_days"));
    replace_file(&work.jobs_path(), &text)?;
    for n in &nodes {
        wait_for(T, "the refused edit", || n.proc.stderr().contains("restart needed for [server] database"))
            .map_err(|e| e.context(n.proc.logs()))?;
    }
    Ok(())
}

#[test]
fn serve_refuses_a_bad_node_name_and_a_web_listen_without_a_web_table() -> Result<()> {
    let work = Workdir::new()?;
    work.write_clients(&[ClientEntry::enrolled("alpha", host_ip(0))])?;
    // No [web] table: the dashboard is off.
    let web = free_port();
    let text = jobs(free_port(), &work.path().join("data"), web, 30);
    work.write_jobs(&text.replace(&format!("[web]\nlisten = \"127.0.0.1:{web}\"\n"), ""))?;
    for (args, expected) in [
        (&["serve", "--node", "a b"][..], "node name \"a b\" contains ' '"),
        (&["serve", "--node", ""][..], "node name must not be empty"),
        (&["serve", "--web-listen", "127.0.0.1:1"][..], "--web-listen needs a [web] table in jobs.toml"),
        (&["serve", "--listen", "nowhere"][..], "invalid value 'nowhere' for '--listen <ADDR>'"),
    ] {
        let out = work.vigil(args).env("TMPDIR", work.path()).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success() && stderr.contains(expected), "vigil {args:?}: {stderr}");
    }
    Ok(())
}
