//! Command jobs end to end (issue 15): `vigil bootstrap` installs real agents on a real OpenSSH sshd host, one host
//! with `commands="allow"` and one without, and `vigil serve` stores what their command jobs did.
//!
//! The allowed host's `echo 42` arrives in `vigil runs --json`; a job sleeping past its timeout (with a background
//! child) is recorded as timed out and leaves no process behind; 10 MB of output is cut at `max_output` without the
//! agent's peak memory growing past the other agent's by more than a small margin; a `metrics` job's values reach
//! the metrics table and its malformed line is reported; the host without the opt-in runs nothing and `vigil
//! status` says why.

use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use vigil_tests::fleet::AgentCleanup;
use vigil_tests::fleet::{Auth, ClientEntry, Workdir, clients_xml};
use vigil_tests::net::free_port;
use vigil_tests::poll::wait_for;
use vigil_tests::process::Proc;
use vigil_tests::sshd::{ClientKey, Sshd, SshdOpts};

const T: Duration = Duration::from_secs(40);
/// The argument that marks the sleeping job's processes (no other process on the machine sleeps this long).
const SLEEP_MARK: &str = "300.5151";

fn unique(label: &str) -> String {
    vigil_tests::fleet::unique_host("cj", label)
}

use vigil_tests::fleet::agent_dir;

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// jobs.toml: the endpoint, then the command jobs (`allowed` names the opted-in host, every job also selects
/// `denied`).
fn jobs(port: u16, w: &Workdir, allowed: &str, denied: &str) -> String {
    let hosts = format!("hosts = [\"{allowed}\", \"{denied}\"]");
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{data}\"\nretention_days = 30\n\n\
         [[job]]\nname = \"answer\"\ncommand = [\"/bin/sh\", \"-c\", \"echo 42\"]\ninterval = \"1s\"\n{hosts}\n\n\
         [[job]]\nname = \"sleeper\"\ncommand = [\"/bin/sh\", \"-c\", \"sleep {SLEEP_MARK} & sleep {SLEEP_MARK}\"]\n\
         interval = \"2s\"\ntimeout = \"2s\"\n{hosts}\n\n\
         [[job]]\nname = \"flood\"\ncommand = [\"/bin/sh\", \"-c\", \"head -c 10000000 /dev/zero | tr '\\\\0' x\"]\n\
         interval = \"2s\"\nmax_output = \"64KiB\"\n{hosts}\n\n\
         [[job]]\nname = \"gauges\"\ncommand = [\"/usr/bin/printf\", \"queue_len{{q=\\\"mail\\\"}} 7\\\\nbroken line\\\\ninodes 12.5\\\\n\"]\n\
         interval = \"2s\"\nparse = \"metrics\"\n{hosts}\n",
        data = w.data_dir().display()
    )
}

/// Live processes whose command line is exactly `argv` (zombies have none).
fn live(argv: &[&str]) -> usize {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten().filter_map(|e| std::fs::read(e.path().join("cmdline")).ok()).filter(|c| *c == want).count()
        })
        .unwrap_or(0)
}

/// `VmHWM` (peak resident set) of the agent installed for `host`, in KiB.
fn agent_hwm_kib(host: &str) -> Result<u64> {
    let pid = std::fs::read_to_string(agent_dir(host).join("agent.pid"))?.trim().to_owned();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).context("no VmHWM")?;
    Ok(line.split_whitespace().nth(1).context("VmHWM value")?.parse()?)
}

#[test]
fn command_jobs_run_where_allowed_are_bounded_and_stored() -> Result<()> {
    let h = Sshd::start(SshdOpts::default())?;
    let keys = tempfile::tempdir()?;
    let key = ClientKey::generate(keys.path(), "id_cmd")?;
    h.authorize("root", &key)?;
    let (allowed, denied) = (unique("yes"), unique("no"));
    let _cleanup = AgentCleanup(vec![allowed.clone(), denied.clone()]);
    let w = Workdir::new()?;
    let port = free_port();
    w.write_clients_text(&clients_xml(&[
        ClientEntry::ssh(&allowed, &h, "root", Auth::Key(key.private.clone())).attr("commands", "allow"),
        ClientEntry::ssh(&denied, &h, "root", Auth::Key(key.private.clone())),
    ]))?;
    w.write_jobs(&jobs(port, &w, &allowed, &denied))?;
    let _serve: Proc = w.spawn_vigil(&["serve"], "serve")?;
    wait_for(Duration::from_secs(20), "serve listening", || vigil_tests::net::port_accepts(port))?;
    let out = w.vigil(&["bootstrap", "--all", "--accept-new-host-key"]).output()?;
    ensure!(out.status.success(), "bootstrap failed: {}", text(&out));
    let toml = std::fs::read_to_string(agent_dir(&allowed).join("agent.toml"))?;
    ensure!(toml.contains("commands = true"), "the opt-in is written into agent.toml:\n{toml}");
    let toml = std::fs::read_to_string(agent_dir(&denied).join("agent.toml"))?;
    ensure!(!toml.contains("commands"), "no opt-in for the other host:\n{toml}");

    let runs = |args: &[&str]| -> Result<serde_json::Value> {
        let mut all = vec!["runs", "--json"];
        all.extend_from_slice(args);
        let out = w.vigil(&all).output()?;
        ensure!(out.status.success(), "vigil runs failed: {}", text(&out));
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let first = |v: &serde_json::Value| v.as_array().and_then(|a| a.first()).cloned();

    // echo 42: in the store and in `vigil runs --json` within two intervals (1 s each) of bootstrap's return (the
    // agent runs and delivers by then), with a margin of 10 s for a loaded machine.
    wait_for(Duration::from_secs(2 + 10), "the answer job's run within two intervals", || {
        runs(&["--host", &allowed, "--job", "answer"]).ok().and_then(|v| first(&v)).is_some()
    })?;
    let answer = first(&runs(&["--host", &allowed, "--job", "answer"])?).context("a run")?;
    ensure!(answer["stdout"] == "42\n" && answer["outcome"] == "exited" && answer["exit_code"] == 0, "{answer}");

    // The sleeper: timed out, and nothing of it left alive (its background child included).
    wait_for(T, "the sleeper to time out", || {
        runs(&["--host", &allowed, "--job", "sleeper"]).ok().and_then(|v| first(&v)).is_some()
    })?;
    let sleeper = first(&runs(&["--host", &allowed, "--job", "sleeper"])?).context("a run")?;
    ensure!(sleeper["outcome"] == "timed_out", "{sleeper}");
    // A new run may have started meanwhile (every 2 s); between runs nothing of the old ones is alive. The check
    // passes when at some moment no sleeper process exists although several runs have timed out.
    wait_for(T, "no process of a timed-out run alive", || live(&["sleep", SLEEP_MARK]) == 0)?;
    let n_sleeps = runs(&["--host", &allowed, "--job", "sleeper"])?.as_array().map_or(0, Vec::len);
    wait_for(T, "a second sleeper run", || {
        runs(&["--host", &allowed, "--job", "sleeper"]).ok().and_then(|v| v.as_array().map(Vec::len)).unwrap_or(0)
            > n_sleeps
    })?;
    ensure!(
        live(&["sleep", SLEEP_MARK]) <= 2,
        "at most one run's two sleeps exist at a time (no overlap, no leftovers)"
    );

    // 10 MB of output: capped, marked, and the agent's peak memory stays near the other agent's.
    wait_for(T, "the flood job's run", || {
        runs(&["--host", &allowed, "--job", "flood"]).ok().and_then(|v| first(&v)).is_some()
    })?;
    let flood = first(&runs(&["--host", &allowed, "--job", "flood"])?).context("a run")?;
    ensure!(flood["stdout_truncated"] == true, "{}", flood["stdout_truncated"]);
    ensure!(flood["stdout"].as_str().map(str::len) == Some(64 << 10), "stdout is cut at max_output");
    let (busy, idle) = (agent_hwm_kib(&allowed)?, agent_hwm_kib(&denied)?);
    // Holding the 10 MB would add 10,000 KiB at least; the margin covers max_output, the sealed report (a few
    // copies of ~130 KiB) and the task of each run.
    ensure!(busy < idle + 4096, "peak memory {busy} KiB with the flood job vs {idle} KiB without");

    // metrics: parsed values in the metrics table, the malformed line reported, the rest still stored.
    wait_for(T, "the gauges job's run", || {
        runs(&["--host", &allowed, "--job", "gauges"]).ok().and_then(|v| first(&v)).is_some()
    })?;
    let gauges = first(&runs(&["--host", &allowed, "--job", "gauges"])?).context("a run")?;
    ensure!(gauges["parse_errors"] == serde_json::json!(["line 2: value is not a number"]), "{gauges}");
    let db = rusqlite::Connection::open(w.data_dir().join("vigil.db"))?;
    let rows: Vec<(String, String, f64)> = db
        .prepare(
            "SELECT m.name, m.labels, m.value FROM command_metrics m JOIN hosts h ON h.id = m.host_id
             WHERE h.name = ?1 AND m.job = 'gauges' AND m.report_id = (SELECT max(report_id) FROM command_metrics
             WHERE job = 'gauges') ORDER BY m.id",
        )?
        .query_map([&allowed], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    ensure!(
        rows == [("queue_len".to_string(), r#"{"q":"mail"}"#.to_string(), 7.0), ("inodes".into(), "{}".into(), 12.5)],
        "{rows:?}"
    );

    // The host without the opt-in: nothing ran, each job is recorded as refused, and status says why.
    wait_for(T, "the refusals", || {
        runs(&["--host", &denied]).ok().and_then(|v| v.as_array().map(Vec::len)).unwrap_or(0) >= 4
    })?;
    let refused = runs(&["--host", &denied])?;
    for r in refused.as_array().context("array")? {
        ensure!(r["outcome"] == "refused" && r["stdout"] == "", "{r}");
        ensure!(r["detail"].as_str().is_some_and(|d| d.contains("commands=\"allow\"")), "{r}");
    }
    let status = w.vigil(&["status"]).output()?;
    let st = text(&status);
    let line = st.lines().find(|l| l.contains(&denied) && l.contains("answer")).context(st.clone())?;
    ensure!(line.contains("refused: command jobs are not allowed on this host"), "{st}");
    Ok(())
}

#[test]
fn a_failing_job_mails_once_and_its_recovery_once() -> Result<()> {
    let smtp = vigil_tests::smtp::Smtp::start()?;
    let h = Sshd::start(SshdOpts::default())?;
    let keys = tempfile::tempdir()?;
    let key = ClientKey::generate(keys.path(), "id_cmd")?;
    h.authorize("root", &key)?;
    let name = unique("mail");
    let _cleanup = AgentCleanup(vec![name.clone()]);
    let w = Workdir::new()?;
    let port = free_port();
    let client = ClientEntry::ssh(&name, &h, "root", Auth::Key(key.private.clone()))
        .attr("commands", "allow")
        .attr("mail", "ops@example.org")
        .to_xml();
    let client = client.replacen("/>\n", ">\n    <alert type=\"job\" job=\"flaky\"/>\n  </client>\n", 1);
    w.write_clients_text(&format!("<?xml version=\"1.0\"?>\n<clients>\n{client}</clients>\n"))?;
    // The job fails until the file `ok` exists in the agent's directory (its working directory).
    w.write_jobs(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\n\
         tls = \"none\"\nfrom = \"vigil@example.org\"\n\n[[job]]\nname = \"flaky\"\n\
         command = [\"/bin/sh\", \"-c\", \"test -e ok\"]\ninterval = \"1s\"\n",
        w.data_dir().display(),
        smtp.port()
    ))?;
    let serve: Proc = w.spawn_vigil(&["serve"], "serve")?;
    wait_for(Duration::from_secs(20), "serve listening", || vigil_tests::net::port_accepts(port))?;
    let out = w.vigil(&["bootstrap", "--all", "--accept-new-host-key"]).output()?;
    ensure!(out.status.success(), "bootstrap failed: {}", text(&out));

    let logs = || format!("{}\n{}", serve.logs(), smtp.logs());
    smtp.wait_for_messages(1, T).map_err(|e| e.context(logs()))?;
    // Several more failed runs come and go: still one mail.
    std::thread::sleep(Duration::from_secs(4));
    let mails = smtp.messages()?;
    let subjects: Vec<String> = mails.iter().filter_map(|m| m.subject()).collect();
    ensure!(subjects.len() == 1, "one mail while the job keeps failing: {subjects:?}");
    ensure!(subjects[0].contains(&format!("FIRING job flaky on {name}")), "{subjects:?}");

    std::fs::write(agent_dir(&name).join("ok"), b"")?;
    smtp.wait_for_messages(2, T).map_err(|e| e.context(logs()))?;
    std::thread::sleep(Duration::from_secs(4));
    let subjects: Vec<String> = smtp.messages()?.iter().filter_map(|m| m.subject()).collect();
    ensure!(subjects.len() == 2, "one recovery mail, then quiet: {subjects:?}");
    ensure!(subjects.iter().any(|s| s.contains(&format!("RESOLVED job flaky on {name}"))), "{subjects:?}");
    Ok(())
}
