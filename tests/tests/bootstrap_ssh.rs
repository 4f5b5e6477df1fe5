//! `vigil bootstrap` and `vigil uninstall` over SSH against real OpenSSH sshd hosts (each its own sshd on
//! 127.0.0.1; they share this machine's /tmp, so every test uses host names of its own).

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use anyhow::Result;
use vigil_tests::fleet::AgentCleanup;
use vigil_tests::fleet::{Auth, ClientEntry, Workdir, clients_xml, jobs_toml};
use vigil_tests::net::free_port;
use vigil_tests::poll::wait_for;
use vigil_tests::process::{Proc, kill_processes_under, pid_alive};
use vigil_tests::sshd::{ClientKey, Sshd, SshdOpts};
use vigil_tests::users::LocalUser;

fn unique(label: &str) -> String {
    vigil_tests::fleet::unique_host("bs", label)
}

use vigil_tests::agent_set;
use vigil_tests::fixtures::SystemLogs;
use vigil_tests::fleet::agent_dir;

/// A fleet of sshd hosts and a running `vigil serve`; kills every installed agent on drop.
struct Fleet {
    w: Workdir,
    port: u16,
    serve: Option<Proc>,
    _agents: AgentCleanup,
    env: Vec<(String, String)>,
}

impl Fleet {
    fn new(entries: &[ClientEntry], names: Vec<String>, env: Vec<(String, String)>) -> Result<Self> {
        let w = Workdir::new()?;
        let port = free_port();
        w.write_clients_text(&clients_xml(entries))?;
        w.write_jobs(&jobs_toml(port, &w.data_dir(), None, "1s"))?;
        Ok(Self { w, port, serve: None, _agents: AgentCleanup(names), env })
    }

    /// serve gets the same environment as bootstrap: it logs in to each tunnel host with the same credentials.
    fn serve(&mut self) -> Result<()> {
        let mut cmd = self.w.vigil(&["serve"]);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.serve = Some(Proc::spawn(cmd, self.w.path(), "serve")?);
        let port = self.port;
        wait_for(Duration::from_secs(20), "serve listening", || vigil_tests::net::port_accepts(port))
    }

    fn vigil(&self, args: &[&str], agent_bin: Option<&PathBuf>) -> Output {
        let mut cmd = self.w.vigil(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(b) = agent_bin {
            cmd.env("VIGIL_AGENT_BIN", b);
        }
        cmd.output().expect("run vigil")
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.w.data_dir().join("vigil.db")).expect("open db")
    }

    fn count(&self, table: &str, host: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM {table} t JOIN hosts h ON h.id = t.host_id WHERE h.name = ?1");
        self.db().query_row(&sql, [host], |r| r.get(0)).unwrap_or(0)
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn agent_pid(host: &str) -> Option<u32> {
    std::fs::read_to_string(agent_dir(host).join("agent.pid")).ok()?.trim().parse().ok()
}

/// Live processes whose executable is the agent in `dir`.
fn agents_in(dir: &std::path::Path) -> usize {
    let exe = dir.join("vigil-agent");
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
                .filter(|e| std::fs::read_link(e.path().join("exe")).is_ok_and(|p| p == exe))
                .count()
        })
        .unwrap_or(0)
}

const TABLES: [&str; 9] =
    ["system_details", "sessions", "cpu", "memory", "swap", "partitions", "disk_usage", "network", "security_events"];

#[test]
fn three_hosts_key_password_and_env_password_then_rerun_upgrade_and_repair() -> Result<()> {
    // Host 1: root with a key. Host 2: a non-root user with a password. Host 3: another user, password from env.
    let h1 = Sshd::start(SshdOpts::default())?;
    let h2 = Sshd::start(SshdOpts::with_passwords())?;
    let h3 = Sshd::start(SshdOpts::with_passwords())?;
    let work = tempfile::tempdir()?;
    let key = ClientKey::generate(work.path(), "id_boot")?;
    h1.authorize("root", &key)?;
    let u2 = LocalUser::create()?;
    let u3 = LocalUser::create()?;
    let names = vec![unique("key"), unique("pw"), unique("env")];
    let env_var = format!("VIGIL_TEST_PW_{}", std::process::id());
    let entries = [
        ClientEntry::ssh(&names[0], &h1, "root", Auth::Key(key.private.clone())),
        ClientEntry::ssh(&names[1], &h2, u2.name(), Auth::Password(u2.password().to_owned())),
        ClientEntry::ssh(&names[2], &h3, u3.name(), Auth::PasswordEnv(env_var.clone())),
    ];
    let mut f = Fleet::new(&entries, names.clone(), vec![(env_var, u3.password().to_owned())])?;
    f.serve()?;
    let logs = SystemLogs::install()?;

    let out = f.vigil(&["bootstrap", "--all", "--accept-new-host-key"], None);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("3 succeeded, 0 failed"), "{t}");
    // Each host runs the set's static x86-64 build (not the glibc build beside vigil): same bytes, no interpreter.
    let shipped = std::fs::read(agent_set::build(agent_set::LINUX_X86_64))?;
    for n in &names {
        assert!(std::fs::read(agent_dir(n).join("vigil-agent"))? == shipped, "{n}: not the set's x86-64 build");
        let exe = std::fs::read_link(format!("/proc/{}/exe", agent_pid(n).expect("agent pid")))?;
        assert_eq!(exe, agent_dir(n).join("vigil-agent"));
        assert!(agent_set::is_static_elf(&exe)?, "{n}: the running agent is dynamically linked");
    }
    // A failed login after the agents started: each reports it (agents read the log from where it ended at start).
    logs.failed_login()?;
    // Every statistics table has rows for all three hosts within seconds.
    wait_for(Duration::from_secs(30), "rows in every table for every host", || {
        names.iter().all(|n| TABLES.iter().all(|t| f.count(t, n) > 0))
    })
    .map_err(|e| {
        let counts: Vec<String> = names
            .iter()
            .flat_map(|n| TABLES.iter().map(move |t| (n, t)))
            .map(|(n, t)| format!("{n}.{t}={}", f.count(t, n)))
            .collect();
        e.context(counts.join(" "))
    })?;
    let status = f.vigil(&["status", "--json"], None);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    for n in &names {
        let row = v["hosts"].as_array().and_then(|a| a.iter().find(|h| h["name"] == n.as_str())).cloned();
        let row = row.unwrap_or_else(|| panic!("{n} missing from status: {v}"));
        assert!(row["cpu_pct"].is_number() && row["mem_pct"].is_number(), "{row}");
        assert_eq!(row["silent"], false, "{row}");
    }
    // The non-root user's agent runs as that user, in a 0700 directory of its own.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(agent_dir(&names[1]))?;
    assert_eq!(m.uid(), u2.uid());
    assert_eq!(m.mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(agent_dir(&names[1]).join("agent.toml"))?.mode() & 0o777, 0o600);

    // A second run uploads nothing and restarts nothing.
    let pids: Vec<Option<u32>> = names.iter().map(|n| agent_pid(n)).collect();
    let out = f.vigil(&["bootstrap", "--all"], None);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert_eq!(t.matches("already up to date and running").count(), 3, "{t}");
    assert_eq!(pids, names.iter().map(|n| agent_pid(n)).collect::<Vec<_>>());

    // A new agent binary: upgraded and restarted.
    let newer = work.path().join("vigil-agent");
    let mut bytes = shipped.clone();
    bytes.extend_from_slice(b"\nvigil-test-upgrade\n");
    std::fs::write(&newer, bytes)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&newer, std::fs::Permissions::from_mode(0o755))?;
    let out = f.vigil(&["bootstrap", names[0].as_str()], Some(&newer));
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("agent installed") && t.contains("agent started"), "{t}");
    assert_ne!(agent_pid(&names[0]), pids[0], "restarted");

    // A dead agent: restarted, with the same credentials.
    let pid = agent_pid(&names[2]).expect("agent pid");
    vigil_tests::process::signal_pid(pid, libc::SIGKILL)?;
    wait_for(Duration::from_secs(5), "agent dead", || !pid_alive(pid))?;
    let out = f.vigil(&["bootstrap", names[2].as_str()], None);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("agent started") && !t.contains("new credentials") && !t.contains("agent installed"), "{t}");
    assert!(agent_pid(&names[2]).is_some_and(pid_alive));
    // Never two agents in one directory.
    assert_eq!(agents_in(&agent_dir(&names[2])), 1, "one agent process");
    // Starting a second agent by hand in the same directory is refused by the agent itself.
    let second = std::process::Command::new(agent_dir(&names[2]).join("vigil-agent"))
        .arg("--config")
        .arg(agent_dir(&names[2]).join("agent.toml"))
        .output()?;
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("another agent already runs"));
    drop(u2);
    drop(u3);
    Ok(())
}

#[test]
fn host_keys_unknown_refused_without_the_flag_and_changed_always_refused() -> Result<()> {
    let mut h = Sshd::start(SshdOpts::default())?;
    let work = tempfile::tempdir()?;
    let key = ClientKey::generate(work.path(), "id_hk")?;
    h.authorize("root", &key)?;
    let name = unique("hk");
    let mut f =
        Fleet::new(&[ClientEntry::ssh(&name, &h, "root", Auth::Key(key.private.clone()))], vec![name.clone()], vec![])?;
    f.serve()?;

    // Unknown key, no flag: refused, nothing installed.
    let out = f.vigil(&["bootstrap", name.as_str()], None);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("unknown host key") && t.contains("--accept-new-host-key"), "{t}");
    assert!(!agent_dir(&name).exists(), "nothing may reach the host");

    // Accepted once with the flag, and recorded.
    let first = h.host_key_fingerprint()?;
    let out = f.vigil(&["bootstrap", name.as_str(), "--accept-new-host-key"], None);
    assert!(out.status.success(), "{}", text(&out));
    let known = std::fs::read_to_string(f.w.data_dir().join("known_hosts"))?;
    assert!(known.contains(&first), "{known}");
    kill_processes_under(&agent_dir(&name));
    std::fs::remove_dir_all(agent_dir(&name))?;

    // The host's key changes: refused even with the flag, both fingerprints shown, nothing uploaded.
    h.regenerate_host_key()?;
    let second = h.host_key_fingerprint()?;
    assert_ne!(first, second);
    let out = f.vigil(&["bootstrap", name.as_str(), "--accept-new-host-key"], None);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("HOST KEY CHANGED") && t.contains(&first) && t.contains(&second), "{t}");
    assert!(!agent_dir(&name).exists(), "nothing uploaded after a key change");

    // A key pinned in clients.xml wins over the known-hosts file: pinning the new key lets it through.
    f.w.write_clients_text(&clients_xml(&[
        ClientEntry::ssh(&name, &h, "root", Auth::Key(key.private.clone())).attr("host_key", second.clone())
    ]))?;
    let out = f.vigil(&["bootstrap", name.as_str()], None);
    assert!(out.status.success(), "{}", text(&out));
    Ok(())
}

#[test]
fn failures_are_summarised_with_reasons_while_the_others_succeed() -> Result<()> {
    let good = Sshd::start(SshdOpts::default())?;
    let pw = Sshd::start(SshdOpts::with_passwords())?;
    let work = tempfile::tempdir()?;
    let key = ClientKey::generate(work.path(), "id_f")?;
    good.authorize("root", &key)?;
    let user = LocalUser::create()?;
    let names = vec![unique("ok"), unique("down"), unique("badpw")];
    let dead_port = free_port();
    let entries = [
        ClientEntry::ssh(&names[0], &good, "root", Auth::Key(key.private.clone())),
        ClientEntry::ssh(&names[1], &good, "root", Auth::Key(key.private.clone())).attr("port", dead_port.to_string()),
        ClientEntry::ssh(&names[2], &pw, user.name(), Auth::Password("not-the-password".into())),
    ];
    let mut f = Fleet::new(&entries, names.clone(), vec![])?;
    f.serve()?;
    let out = f.vigil(&["bootstrap", "--all", "--accept-new-host-key", "--parallel", "3"], None);
    let t = text(&out);
    assert!(!out.status.success(), "exit code must say not all succeeded: {t}");
    assert!(t.contains("1 succeeded, 2 failed"), "{t}");
    let line = |n: &str| {
        t.lines().find(|l| l.contains(n) && (l.contains("ok ") || l.contains("FAILED"))).unwrap_or("").to_owned()
    };
    assert!(line(&names[0]).contains("ok"), "{t}");
    assert!(line(&names[1]).contains("FAILED") && line(&names[1]).contains("cannot reach"), "{t}");
    assert!(
        line(&names[2]).contains("FAILED")
            && line(&names[2]).contains("authentication")
            && line(&names[2]).contains("password"),
        "{t}"
    );
    assert!(!t.contains("not-the-password"), "a password must never be printed: {t}");
    Ok(())
}

#[test]
fn uninstall_leaves_nothing_and_a_dry_run_changes_nothing() -> Result<()> {
    let h = Sshd::start(SshdOpts::default())?;
    let work = tempfile::tempdir()?;
    let key = ClientKey::generate(work.path(), "id_u")?;
    h.authorize("root", &key)?;
    let name = unique("un");
    let mut f =
        Fleet::new(&[ClientEntry::ssh(&name, &h, "root", Auth::Key(key.private.clone()))], vec![name.clone()], vec![])?;
    f.serve()?;

    let out = f.vigil(&["bootstrap", name.as_str(), "--dry-run"], None);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("nothing changed") && t.contains(&format!("vigil-agent-{name}")), "{t}");
    assert!(!agent_dir(&name).exists());
    assert!(!f.w.data_dir().join("known_hosts").exists(), "a dry run does not even record host keys");
    let agents: i64 = f.db().query_row("SELECT count(*) FROM agents", [], |r| r.get(0))?;
    assert_eq!(agents, 0);

    let out = f.vigil(&["bootstrap", name.as_str(), "--accept-new-host-key"], None);
    assert!(out.status.success(), "{}", text(&out));
    let pid = agent_pid(&name).expect("agent runs");
    let out = f.vigil(&["uninstall", name.as_str()], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!agent_dir(&name).exists(), "the directory is gone");
    wait_for(Duration::from_secs(5), "agent stopped", || !pid_alive(pid))?;
    let agents: i64 = f.db().query_row("SELECT count(*) FROM agents", [], |r| r.get(0))?;
    assert_eq!(agents, 0, "the registration is gone");
    Ok(())
}

/// A host whose `uname -m` says `arch` (a wrapper first on the login PATH, set by sshd's `SetEnv`).
fn host_reporting_arch(work: &std::path::Path, arch: &str) -> Result<Sshd> {
    let bin = work.join(format!("uname-{arch}"));
    std::fs::create_dir_all(&bin)?;
    let wrapper = bin.join("uname");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nif [ \"$1\" = -m ]; then echo {arch}; else exec /bin/uname \"$@\"; fi\n"),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    Sshd::start(SshdOpts {
        extra_config: vec![format!("SetEnv PATH={}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", bin.display())],
        ..SshdOpts::default()
    })
}

#[test]
fn a_host_of_an_architecture_without_a_build_is_refused_naming_the_command_that_builds_it() -> Result<()> {
    let work = tempfile::tempdir()?;
    let key = ClientKey::generate(work.path(), "id_arch")?;
    let riscv = host_reporting_arch(work.path(), "riscv64")?;
    let arm = host_reporting_arch(work.path(), "aarch64")?;
    riscv.authorize("root", &key)?;
    arm.authorize("root", &key)?;
    let names = vec![unique("riscv"), unique("arm")];
    let entries = [
        ClientEntry::ssh(&names[0], &riscv, "root", Auth::Key(key.private.clone())),
        ClientEntry::ssh(&names[1], &arm, "root", Auth::Key(key.private.clone())),
    ];
    // A set with the x86-64 build only: the aarch64 host has a known architecture whose build is missing.
    let set = work.path().join("agents");
    let x86 = set.join(agent_set::LINUX_X86_64);
    std::fs::create_dir_all(&x86)?;
    std::fs::copy(agent_set::build(agent_set::LINUX_X86_64), x86.join("vigil-agent"))?;
    let f = Fleet::new(&entries, names.clone(), vec![("VIGIL_AGENTS_DIR".into(), set.display().to_string())])?;
    let out = f.vigil(&["bootstrap", "--all", "--accept-new-host-key"], None);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("0 succeeded, 2 failed"), "{t}");
    let line = |n: &str| t.lines().find(|l| l.contains("FAILED") && l.contains(n)).unwrap_or("").to_owned();
    let (r, a) = (line(&names[0]), line(&names[1]));
    assert!(r.contains("Linux riscv64: no agent build") && r.contains("`scripts/dist.sh`"), "{t}");
    assert!(a.contains("Linux aarch64") && a.contains("aarch64-unknown-linux-musl/vigil-agent is missing"), "{t}");
    assert!(a.contains("`scripts/dist.sh aarch64-unknown-linux-musl`"), "{t}");
    for n in &names {
        assert!(!agent_dir(n).exists(), "{n}: nothing may be installed on a host without a build");
    }
    Ok(())
}
