//! `vigil-agent` on the command line: `--once --print` shows exactly what would leave the host (every family, true
//! values), and a missing or broken `--config` stops it at once with a message that says what is wrong.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use vigil_tests::fixtures::utmp_record;
use vigil_tests::{Proc, TestDir, Workdir, bin, free_port};

const FAMILIES: [&str; 9] =
    ["system", "users", "cpu", "memory", "swap", "partitions", "disk_usage", "network", "security_events"];

/// An enrolled agent directory `<work>/agent` (no server running) whose agent.toml points at a utmp fixture with
/// one session and at an auth log.
fn enrolled(work: &Workdir) -> Result<()> {
    work.write_clients_text(
        "<?xml version=\"1.0\"?>\n<clients>\n  <client name=\"h1\" ip=\"127.0.0.1\" username=\"root\" \
         password=\"unused\"/>\n</clients>\n",
    )?;
    work.write_jobs(&vigil_tests::jobs_toml(free_port(), &work.data_dir(), None, "5s"))?;
    let utmp = work.path().join("utmp");
    let mut bytes = utmp_record(7, "carol", "pts/4", "192.0.2.44", 1_700_000_500);
    bytes.extend(utmp_record(6, "LOGIN", "tty1", "", 1_700_000_000));
    std::fs::write(&utmp, bytes)?;
    let auth = work.path().join("auth.log");
    std::fs::write(&auth, "")?;
    let dir = work.path().join("agent");
    let path = |p: &Path| p.to_str().map(str::to_owned).context("utf-8 path");
    let (dir, utmp, auth) = (path(&dir)?, path(&utmp)?, path(&auth)?);
    let out = work.vigil(&["enroll", "h1", "--dir", &dir, "--utmp", &utmp, "--auth-log", &auth]).output()?;
    ensure!(out.status.success(), "enroll: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

fn agent(args: &[&str], cwd: &Path) -> Result<Output> {
    Command::new(bin("vigil-agent")).args(args).current_dir(cwd).output().context("running vigil-agent")
}

fn proc_value(path: &str) -> Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_owned())
}

#[test]
fn once_print_shows_every_family_with_true_values() -> Result<()> {
    let work = Workdir::new()?;
    enrolled(&work)?;
    let config = work.path().join("agent/agent.toml");
    let out = agent(&["--once", "--print", "--config", config.to_str().context("utf-8")?], work.path())?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).context("--print output is not JSON")?;
    ensure!(v["type"] == "report", "{v}");
    let stats = v["stats"].as_object().context("stats")?;
    for f in FAMILIES {
        ensure!(stats.contains_key(f), "family {f} missing: {}", serde_json::to_string_pretty(&v)?);
    }
    ensure!(stats.len() == FAMILIES.len(), "unexpected families: {:?}", stats.keys().collect::<Vec<_>>());

    ensure!(v["stats"]["system"]["hostname"] == proc_value("/proc/sys/kernel/hostname")?.as_str());
    ensure!(v["stats"]["system"]["kernel"] == proc_value("/proc/sys/kernel/osrelease")?.as_str());
    let uptime: f64 = proc_value("/proc/uptime")?.split_whitespace().next().context("uptime")?.parse()?;
    let reported = v["stats"]["system"]["uptime_s"].as_f64().context("uptime_s")?;
    ensure!((reported - uptime).abs() <= 2.0, "uptime {reported} vs /proc/uptime {uptime}");

    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|s| s.split_whitespace().next())
        .context("MemTotal")?
        .parse()?;
    ensure!(v["stats"]["memory"]["total"].as_u64() == Some(kib * 1024), "{}", v["stats"]["memory"]);

    let sessions = v["stats"]["users"]["sessions"].as_array().context("sessions")?;
    ensure!(sessions.len() == 1, "{sessions:?}");
    ensure!(sessions[0]["user"] == "carol" && sessions[0]["terminal"] == "pts/4", "{sessions:?}");
    ensure!(sessions[0]["host"] == "192.0.2.44" && sessions[0]["login_time"] == 1_700_000_500, "{sessions:?}");

    let names = |fam: &str, key: &str| -> Vec<String> {
        v["stats"][fam]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x[key].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    ensure!(names("network", "name").iter().any(|n| n == "lo"), "no lo: {:?}", names("network", "name"));
    ensure!(names("partitions", "mount_point").iter().any(|m| m == "/"), "no / partition");
    ensure!(names("disk_usage", "mount_point").iter().any(|m| m == "/"), "no / usage");
    let cores = v["stats"]["cpu"]["per_core_pct"].as_array().map(Vec::len).unwrap_or(0);
    ensure!(cores >= 1, "no per-core usage");
    let auth = work.path().join("auth.log");
    ensure!(v["stats"]["security_events"]["source"] == auth.to_str().context("utf-8")?, "{}", v["stats"]);
    ensure!(out.stderr.is_empty() || !String::from_utf8_lossy(&out.stderr).contains("panicked"));
    Ok(())
}

#[test]
fn once_print_with_chosen_collectors_shows_only_those() -> Result<()> {
    let dir = TestDir::new("cli")?;
    // No config at all: --once still runs, with the platform's default sources.
    let out = agent(&["--once", "--print", "--collectors", "cpu,memory"], dir.path())?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let keys: Vec<&String> = v["stats"].as_object().context("stats")?.keys().collect();
    ensure!(keys == ["cpu", "memory"], "{keys:?}");

    let out = agent(&["--once", "--print", "--collectors", "cpu,bogus"], dir.path())?;
    ensure!(!out.status.success(), "an unknown collector was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("bogus") && !err.contains("panicked"), "{err}");
    Ok(())
}

/// Runs the agent as a daemon (no --once) and expects it to give up at once with a message containing `expect`.
fn fails_to_start(config: &Path, cwd: &Path, expect: &[&str]) -> Result<()> {
    let mut cmd = Command::new(bin("vigil-agent"));
    cmd.arg("--config").arg(config).current_dir(cwd);
    let mut p = Proc::spawn(cmd, cwd, "agent")?;
    let status = p.wait_exit(Duration::from_secs(10)).context("the agent kept running on a bad config")?;
    ensure!(!status.success(), "exit {status} on a bad config");
    let err = p.stderr();
    for e in expect {
        ensure!(err.contains(e), "stderr lacks {e:?}: {err}");
    }
    ensure!(!err.contains("panicked"), "{err}");
    Ok(())
}

#[test]
fn a_missing_or_broken_config_exits_non_zero_and_says_why() -> Result<()> {
    let dir = TestDir::new("cli")?;
    let missing = dir.join("missing.toml");
    fails_to_start(&missing, dir.path(), &["missing.toml", "No such file"])?;

    let garbage = dir.join("garbage.toml");
    std::fs::write(&garbage, "agent_id = [unterminated\n")?;
    fails_to_start(&garbage, dir.path(), &["garbage.toml"])?;

    // A real config, then broken in different places.
    let work = Workdir::new()?;
    enrolled(&work)?;
    let config = work.path().join("agent/agent.toml");
    let good = std::fs::read_to_string(&config)?;

    let replace = |key: &str, value: &str| -> String {
        good.lines()
            .map(|l| if l.starts_with(key) { format!("{key} = {value}") } else { l.to_owned() })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    };
    std::fs::write(&config, replace("server_host_key", "\"md5:00\""))?;
    fails_to_start(&config, work.path(), &["agent.toml", "server_host_key"])?;
    std::fs::write(&config, replace("key_file", "\"no_such_key\""))?;
    fails_to_start(&config, work.path(), &["no_such_key"])?;
    std::fs::write(&config, format!("{good}\nsurprise = 1\n"))?;
    fails_to_start(&config, work.path(), &["surprise"])?;
    Ok(())
}
