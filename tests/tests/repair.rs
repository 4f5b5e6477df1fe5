//! Self-healing (issue 13): `vigil serve` repairs SSH hosts that fell silent by re-running the bootstrap plan, with
//! no command. Real OpenSSH sshd hosts on 127.0.0.1 (they share this machine's /tmp, so every test uses host names
//! of its own), a real SMTP server, the built binaries.

use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use vigil_tests::fleet::AgentCleanup;
use vigil_tests::fleet::{Auth, ClientEntry, Workdir, clients_xml, jobs_toml};
use vigil_tests::net::{free_port, port_accepts};
use vigil_tests::poll::wait_for;
use vigil_tests::process::{Proc, pid_alive, signal_pid};
use vigil_tests::smtp::Smtp;
use vigil_tests::sshd::{ClientKey, Sshd, SshdOpts};

fn unique(label: &str) -> String {
    vigil_tests::fleet::unique_host("rp", label)
}

use vigil_tests::fleet::agent_dir;

/// A fleet of sshd hosts and a running `vigil serve`; kills every installed agent on drop.
struct Fleet {
    w: Workdir,
    _serve: Proc,
    _agents: AgentCleanup,
}

impl Fleet {
    /// Writes the config (jobs every second, `repair_backoff` as given) and starts serve.
    fn start(entries: &[ClientEntry], names: &[String], smtp: Option<u16>, backoff: &str) -> Result<Self> {
        let w = Workdir::new()?;
        let port = free_port();
        w.write_clients_text(&clients_xml(entries))?;
        let jobs = jobs_toml(port, &w.data_dir(), smtp, "1s")
            .replace("retention_days = 30\n", &format!("retention_days = 30\nrepair_backoff = \"{backoff}\"\n"));
        w.write_jobs(&jobs)?;
        let serve = w.spawn_vigil(&["serve"], "serve")?;
        wait_for(Duration::from_secs(20), "serve listening", || port_accepts(port))?;
        Ok(Self { w, _serve: serve, _agents: AgentCleanup(names.to_vec()) })
    }

    fn vigil(&self, args: &[&str]) -> Output {
        self.w.vigil(args).output().expect("run vigil")
    }

    fn reports(&self, host: &str) -> i64 {
        let Ok(db) = rusqlite::Connection::open(self.w.data_dir().join("vigil.db")) else { return 0 };
        db.query_row("SELECT count(*) FROM reports r JOIN hosts h ON h.id = r.host_id WHERE h.name = ?1", [host], |r| {
            r.get(0)
        })
        .unwrap_or(0)
    }

    /// Reports of `host` sealed by an agent other than those in `old` (a reinstalled agent has a new id).
    fn reports_from_new_agents(&self, host: &str, old: &[String]) -> i64 {
        self.agent_ids(host).iter().filter(|(id, _)| !old.contains(id)).map(|(_, n)| n).sum()
    }

    /// The agent ids that reported for `host`, with their report counts.
    fn agent_ids(&self, host: &str) -> Vec<(String, i64)> {
        let Ok(db) = rusqlite::Connection::open(self.w.data_dir().join("vigil.db")) else { return Vec::new() };
        let Ok(mut stmt) = db.prepare(
            "SELECT r.agent_id, count(*) FROM reports r JOIN hosts h ON h.id = r.host_id WHERE h.name = ?1
             GROUP BY r.agent_id",
        ) else {
            return Vec::new();
        };
        stmt.query_map([host], |r| Ok((r.get(0)?, r.get(1)?))).map(|rows| rows.flatten().collect()).unwrap_or_default()
    }

    /// The `repair` events of `host` in `vigil alerts --json`: (state, detail).
    fn repair_events(&self, host: &str) -> Result<Vec<(String, String)>> {
        let out = self.vigil(&["alerts", "--json"]);
        ensure!(out.status.success(), "vigil alerts: {}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let events = v["events"].as_array().context("events")?;
        Ok(events
            .iter()
            .filter(|e| e["rule"] == "repair" && e["host"] == host)
            .map(|e| (e["state"].as_str().unwrap_or("").to_owned(), e["detail"].as_str().unwrap_or("").to_owned()))
            .collect())
    }

    fn logs(&self) -> String {
        self._serve.logs()
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A host rebooted: its agent killed and its temp directory gone.
fn simulate_reboot(host: &str) -> Result<()> {
    let pid: u32 = std::fs::read_to_string(agent_dir(host).join("agent.pid"))?.trim().parse()?;
    signal_pid(pid, libc::SIGKILL)?;
    wait_for(Duration::from_secs(5), "agent dead", || !pid_alive(pid))?;
    std::fs::remove_dir_all(agent_dir(host))?;
    Ok(())
}

fn sshd_with(key: &ClientKey) -> Result<Sshd> {
    let h = Sshd::start(SshdOpts::default())?;
    h.authorize("root", key)?;
    Ok(h)
}

#[test]
fn a_simulated_reboot_is_repaired_without_any_command_but_not_with_repair_off_nor_a_changed_host_key() -> Result<()> {
    let smtp = Smtp::start()?;
    let work = tempfile::tempdir()?;
    let key = ClientKey::generate(work.path(), "id_repair")?;
    let (healed, off, rekeyed) = (sshd_with(&key)?, sshd_with(&key)?, sshd_with(&key)?);
    let mut rekeyed = rekeyed;
    let names = vec![unique("on"), unique("off"), unique("key")];
    let entry = |i: usize, h: &Sshd| {
        ClientEntry::ssh(&names[i], h, "root", Auth::Key(key.private.clone())).attr("mail", "ops@example.org")
    };
    let entries = [entry(0, &healed), entry(1, &off).attr("repair", "off"), entry(2, &rekeyed)];
    let f = Fleet::start(&entries, &names, Some(smtp.port()), "1s")?;

    let out = f.vigil(&["bootstrap", "--all", "--accept-new-host-key"]);
    ensure!(out.status.success(), "{}", text(&out));
    wait_for(Duration::from_secs(30), "rows from every host", || names.iter().all(|n| f.reports(n) > 0))?;

    // The third host is reinstalled by someone else: a new host key. Then all three "reboot".
    rekeyed.regenerate_host_key()?;
    for n in &names {
        simulate_reboot(n)?;
    }
    let rebooted = Instant::now();
    // The agents that ran before; a reinstalled agent reports under a new id (its credentials went with the directory).
    let old: Vec<Vec<String>> = names.iter().map(|n| f.agent_ids(n).into_iter().map(|(id, _)| id).collect()).collect();

    // Rows resume within 60 s, with no command run, and the repair is an event in `vigil alerts`.
    wait_for(Duration::from_secs(60), "rows again from the repaired host", || {
        f.reports_from_new_agents(&names[0], &old[0]) > 0
    })
    .map_err(|e| e.context(f.logs()))?;
    let resumed = rebooted.elapsed();
    ensure!(resumed < Duration::from_secs(60), "rows resumed after {resumed:?}");
    // The attempt's event is written once the plan's confirmation (that new report) is seen.
    let repaired = |e: &Vec<(String, String)>| e.iter().any(|(state, _)| state == "resolved");
    wait_for(Duration::from_secs(10), "the repair event", || f.repair_events(&names[0]).is_ok_and(|e| repaired(&e)))
        .map_err(|e| e.context(f.logs()))?;
    let events = f.repair_events(&names[0])?;
    ensure!(events.iter().any(|(state, detail)| state == "resolved" && detail.starts_with("REPAIRED")), "{events:?}");
    ensure!(agent_dir(&names[0]).join("vigil-agent").is_file(), "reinstalled");
    let status = f.vigil(&["status"]);
    let table = text(&status);
    ensure!(table.contains("last repairs:") && table.contains("repaired"), "{table}");

    // The changed host key: refused, the event says why, a mail tells a person, and no retry follows.
    wait_for(Duration::from_secs(30), "the refusal event", || f.repair_events(&names[2]).is_ok_and(|e| !e.is_empty()))
        .map_err(|e| e.context(f.logs()))?;
    let refused = f.repair_events(&names[2])?;
    ensure!(refused.len() == 1 && refused[0].0 == "firing", "{refused:?}");
    ensure!(refused[0].1.contains("HOST KEY CHANGED") && refused[0].1.contains("not retried"), "{refused:?}");
    let mails = smtp.wait_for_messages(1, Duration::from_secs(20))?;
    ensure!(mails.iter().any(|m| m.raw.contains("automatic repair refused")), "{mails:?}");

    // Several silence checks (5 s) and backoffs (1 s) later: the refused host was not tried again, the host with
    // repair="off" not touched at all.
    std::thread::sleep(Duration::from_secs(12));
    ensure!(f.repair_events(&names[2])?.len() == 1, "a refused host is not retried: {:?}", f.repair_events(&names[2]));
    ensure!(f.repair_events(&names[1])?.is_empty(), "repair=\"off\"");
    ensure!(!agent_dir(&names[1]).exists() && !agent_dir(&names[2]).exists(), "nothing installed");
    ensure!(f.reports_from_new_agents(&names[1], &old[1]) == 0 && f.reports_from_new_agents(&names[2], &old[2]) == 0);
    Ok(())
}

#[test]
fn a_host_that_cannot_be_repaired_is_tried_once_per_backoff() -> Result<()> {
    let work = tempfile::tempdir()?;
    let key = ClientKey::generate(work.path(), "id_repair")?;
    let mut h = sshd_with(&key)?;
    let name = unique("down");
    let entries = [ClientEntry::ssh(&name, &h, "root", Auth::Key(key.private.clone()))];
    let f = Fleet::start(&entries, std::slice::from_ref(&name), None, "1m")?;
    let out = f.vigil(&["bootstrap", name.as_str(), "--accept-new-host-key"]);
    ensure!(out.status.success(), "{}", text(&out));
    wait_for(Duration::from_secs(30), "rows", || f.reports(&name) > 0)?;

    // The host's sshd goes away with its agent: every repair fails at the connection.
    h.stop()?;
    simulate_reboot(&name)?;
    wait_for(Duration::from_secs(40), "a failed repair", || f.repair_events(&name).is_ok_and(|e| !e.is_empty()))
        .map_err(|e| e.context(f.logs()))?;
    let first = f.repair_events(&name)?;
    ensure!(first[0].0 == "firing" && first[0].1.starts_with("REPAIR FAILED"), "{first:?}");
    // Five silence checks later (5 s each), still one attempt: the next waits for the 1 minute backoff.
    std::thread::sleep(Duration::from_secs(25));
    let events = f.repair_events(&name)?;
    ensure!(events.len() == 1, "one attempt per backoff: {events:?}");
    let status = f.vigil(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    let row = v["hosts"].as_array().and_then(|a| a.iter().find(|x| x["name"] == name.as_str())).cloned();
    let repair = row.context("host in status")?["last_repair"].clone();
    ensure!(repair["outcome"] == "failed" && repair["failures"] == 1, "{repair}");
    Ok(())
}

#[test]
fn repeated_failures_are_mailed_once_per_streak() -> Result<()> {
    let smtp = Smtp::start()?;
    let work = tempfile::tempdir()?;
    let key = ClientKey::generate(work.path(), "id_repair")?;
    let mut h = sshd_with(&key)?;
    let name = unique("mail");
    let entries = [ClientEntry::ssh(&name, &h, "root", Auth::Key(key.private.clone())).attr("mail", "ops@example.org")];
    let f = Fleet::start(&entries, std::slice::from_ref(&name), Some(smtp.port()), "1s")?;
    let out = f.vigil(&["bootstrap", name.as_str(), "--accept-new-host-key"]);
    ensure!(out.status.success(), "{}", text(&out));
    wait_for(Duration::from_secs(30), "rows", || f.reports(&name) > 0)?;

    h.stop()?;
    simulate_reboot(&name)?;
    // With a 1 s backoff (doubling per failure), four failures in a row come within a minute.
    wait_for(Duration::from_secs(90), "four failed repairs", || f.repair_events(&name).is_ok_and(|e| e.len() >= 4))
        .map_err(|e| e.context(f.logs()))?;
    let events = f.repair_events(&name)?;
    ensure!(events.iter().all(|(state, d)| state == "firing" && d.starts_with("REPAIR FAILED")), "{events:?}");
    smtp.wait_for_messages(1, Duration::from_secs(20))?;
    // The mailer polls every second: a second mail (queued with the fourth failure or earlier) would be here too.
    std::thread::sleep(Duration::from_secs(3));
    let mails = smtp.messages()?;
    ensure!(mails.len() == 1, "one mail for the streak: {mails:?}");
    ensure!(mails[0].raw.contains("automatic repair failed 3 times in a row"), "{:?}", mails[0].raw);
    Ok(())
}

#[test]
fn a_tunnel_that_finds_no_agent_asks_for_a_repair_long_before_the_silence_limit() -> Result<()> {
    let work = tempfile::tempdir()?;
    let key = ClientKey::generate(work.path(), "id_repair")?;
    let h = sshd_with(&key)?;
    let name = unique("tun");
    // Silent only after 600 intervals (10 min): within this test only the tunnel's look at the host can ask for the
    // repair. The default channel is the tunnel.
    let entries = [ClientEntry::ssh(&name, &h, "root", Auth::Key(key.private.clone())).alert("silence", "600")];
    let f = Fleet::start(&entries, std::slice::from_ref(&name), None, "1s")?;
    let out = f.vigil(&["bootstrap", name.as_str(), "--accept-new-host-key"]);
    ensure!(out.status.success(), "{}", text(&out));
    let status = text(&f.vigil(&["status"]));
    ensure!(status.contains("tunnel"), "the host reports through its tunnel: {status}");
    wait_for(Duration::from_secs(30), "rows", || f.reports(&name) > 0)?;
    let old: Vec<String> = f.agent_ids(&name).into_iter().map(|(id, _)| id).collect();

    simulate_reboot(&name)?;
    let rebooted = Instant::now();
    // 20 s without a connection through the tunnel, a probe, a repair: well within a minute.
    wait_for(Duration::from_secs(75), "rows again from the repaired host", || {
        f.reports_from_new_agents(&name, &old) > 0
    })
    .map_err(|e| e.context(f.logs()))?;
    ensure!(rebooted.elapsed() < Duration::from_secs(75));
    ensure!(f.logs().contains("no agent runs on the host"), "the tunnel asked: {}", f.logs());
    wait_for(Duration::from_secs(10), "the repair event", || {
        f.repair_events(&name).is_ok_and(|e| e.iter().any(|(state, _)| state == "resolved"))
    })?;
    Ok(())
}
