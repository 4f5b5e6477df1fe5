//! Field readiness of `vigil bootstrap` / `vigil uninstall` against real OpenSSH sshd hosts: the dry run prints the
//! steps the real run executes, "ok" only after a report under the new credentials is stored, a failed upload
//! leaves the old agent registered and delivering, uninstall signals only a verified agent (and `--all`), logins
//! through the operator's ssh-agent and default keys, a padded pinned host key, and the issue-12 acceptance run
//! (spool ≥ 40 reports, server data lost, re-bootstrap, delivery).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use vigil_tests::fleet::{Auth, ClientEntry, Workdir, clients_xml, jobs_toml};
use vigil_tests::net::free_port;
use vigil_tests::poll::wait_for;
use vigil_tests::process::{Proc, kill_processes_under, pid_alive};
use vigil_tests::sshd::{ClientKey, Sshd, SshdOpts};

fn unique(label: &str) -> String {
    vigil_tests::fleet::unique_host("bf", label)
}

fn tmp_agent_dir(host: &str) -> PathBuf {
    PathBuf::from("/tmp").join(format!("vigil-agent-{host}"))
}

/// A fleet: its files, a `vigil serve`, and the agent directories to clean up.
struct Fleet {
    w: Workdir,
    port: u16,
    serve: Option<Proc>,
    dirs: Vec<PathBuf>,
    env: Vec<(String, String)>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for d in &self.dirs {
            kill_processes_under(d);
            if std::fs::symlink_metadata(d).is_ok_and(|m| m.file_type().is_symlink()) {
                let _ = std::fs::remove_file(d);
            } else {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
}

impl Fleet {
    fn new(clients: &str, dirs: Vec<PathBuf>) -> Result<Self> {
        let w = Workdir::new()?;
        let port = free_port();
        w.write_clients_text(clients)?;
        w.write_jobs(&jobs_toml(port, &w.data_dir(), None, "1s"))?;
        Ok(Self { w, port, serve: None, dirs, env: Vec::new() })
    }

    fn serve(&mut self) -> Result<()> {
        self.serve = Some(self.w.spawn_vigil(&["serve"], "serve")?);
        let port = self.port;
        wait_for(Duration::from_secs(20), "serve listening", || vigil_tests::net::port_accepts(port))
    }

    fn stop_serve(&mut self) -> Result<()> {
        if let Some(mut p) = self.serve.take() {
            p.stop()?;
        }
        Ok(())
    }

    fn vigil(&self, args: &[&str]) -> Output {
        let mut cmd = self.w.vigil(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.output().expect("run vigil")
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.w.data_dir().join("vigil.db")).expect("open db")
    }

    fn registered(&self, host: &str) -> Option<String> {
        self.db().query_row("SELECT agent_id FROM agents WHERE host = ?1", [host], |r| r.get(0)).ok()
    }

    fn reports_of(&self, agent_id: &str) -> i64 {
        self.db().query_row("SELECT count(*) FROM reports WHERE agent_id = ?1", [agent_id], |r| r.get(0)).unwrap_or(0)
    }

    fn reports_of_host(&self, host: &str) -> i64 {
        let sql = "SELECT count(*) FROM reports r JOIN hosts h ON h.id = r.host_id WHERE h.name = ?1";
        self.db().query_row(sql, [host], |r| r.get(0)).unwrap_or(0)
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The `step HOST: ...` lines of a bootstrap's output.
fn steps(o: &Output, host: &str) -> Vec<String> {
    let prefix = format!("step {host}: ");
    String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.strip_prefix(&prefix).map(String::from)).collect()
}

fn agent_toml(dir: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(dir.join("agent.toml")).context("agent.toml")?;
    Ok(toml::from_str(&text)?)
}

fn field(t: &toml::Table, key: &str) -> String {
    t.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_owned()
}

fn agent_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("agent.pid")).ok()?.trim().parse().ok()
}

/// One sshd host that lets root in with a fresh key, and its clients.xml entry.
fn root_host(work: &Path, name: &str) -> Result<(Sshd, ClientKey, ClientEntry)> {
    let h = Sshd::start(SshdOpts::default())?;
    let key = ClientKey::generate(work, &format!("id_{name}"))?;
    h.authorize("root", &key)?;
    let entry = ClientEntry::ssh(name, &h, "root", Auth::Key(key.private.clone()));
    Ok((h, key, entry))
}

#[test]
fn the_dry_run_prints_the_steps_the_real_run_executes_and_ok_follows_a_stored_report() -> Result<()> {
    let work = tempfile::tempdir()?;
    let name = unique("plan");
    let (_h, _key, entry) = root_host(work.path(), &name)?;
    let dir = tmp_agent_dir(&name);
    let mut f = Fleet::new(&clients_xml(&[entry]), vec![dir.clone()])?;
    f.serve()?;

    let dry = f.vigil(&["bootstrap", name.as_str(), "--dry-run", "--accept-new-host-key"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(!dir.exists(), "a dry run installs nothing");
    assert!(!f.w.data_dir().join("known_hosts").exists(), "a dry run records no host key");
    assert_eq!(f.registered(&name), None);
    let planned = steps(&dry, &name);
    assert!(planned.len() >= 5, "directory, stage, register, activate, confirm: {}", text(&dry));

    let real = f.vigil(&["bootstrap", name.as_str(), "--accept-new-host-key"]);
    assert!(real.status.success(), "{}", text(&real));
    assert_eq!(steps(&real, &name), planned, "the real run executed exactly the planned steps");
    // "ok" came after a report sealed under the new credentials was stored: it is there the moment bootstrap exits.
    let agent_id = field(&agent_toml(&dir)?, "agent_id");
    assert_eq!(f.registered(&name).as_deref(), Some(agent_id.as_str()));
    assert!(f.reports_of(&agent_id) >= 1, "bootstrap said ok before a report of {agent_id} was stored");

    // A missing agent_key means the credentials are not current: new ones, carrying the old envelope secret.
    let old_secret = field(&agent_toml(&dir)?, "secret");
    std::fs::remove_file(dir.join("agent_key"))?;
    let dry = f.vigil(&["bootstrap", name.as_str(), "--dry-run"]);
    let real = f.vigil(&["bootstrap", name.as_str()]);
    let t = text(&real);
    assert!(real.status.success() && t.contains("new credentials"), "{t}");
    assert_eq!(steps(&real, &name), steps(&dry, &name));
    let new = agent_toml(&dir)?;
    assert_ne!(field(&new, "agent_id"), agent_id);
    let previous: Vec<&str> = new
        .get("previous_secrets")
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(previous, [old_secret.as_str()], "the old secret is handed on for the spool");
    assert!(f.reports_of(&field(&new, "agent_id")) >= 1);
    assert!(!t.contains(&old_secret), "a secret was printed");
    Ok(())
}

/// A tmpfs of `mb` MiB, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mb: u32) -> Result<Self> {
        std::fs::create_dir_all(at)?;
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mb}m,mode=1777"), "tmpfs"])
            .arg(at)
            .status()?;
        anyhow::ensure!(st.success(), "mounting a tmpfs needs root");
        Ok(Self(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        kill_processes_under(&self.0);
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_failed_upload_leaves_the_old_agent_registered_running_and_delivering() -> Result<()> {
    let work = tempfile::tempdir()?;
    // The host's temp directory is a small tmpfs: room for one agent and the probe's 32 MiB margin, not for a
    // second, much larger binary beside it.
    let shipped = vigil_tests::agent_set::build(vigil_tests::agent_set::LINUX_X86_64);
    let agent_len = std::fs::metadata(&shipped)?.len();
    let mb = u32::try_from(agent_len >> 20)? + 32 + 12;
    let tmp = Tmpfs::mount(&work.path().join("hosttmp"), mb)?;
    let h = Sshd::start(SshdOpts {
        extra_config: vec![format!("SetEnv TMPDIR={}", tmp.0.display())],
        ..SshdOpts::default()
    })?;
    let key = ClientKey::generate(work.path(), "id_full")?;
    h.authorize("root", &key)?;
    let name = unique("full");
    let dir = tmp.0.join(format!("vigil-agent-{name}"));
    let entry = ClientEntry::ssh(&name, &h, "root", Auth::Key(key.private.clone()));
    let mut f = Fleet::new(&clients_xml(std::slice::from_ref(&entry)), vec![dir.clone()])?;
    f.serve()?;
    let out = f.vigil(&["bootstrap", name.as_str(), "--accept-new-host-key"]);
    assert!(out.status.success(), "{}", text(&out));
    let old_id = f.registered(&name).context("registered")?;
    let pid = agent_pid(&dir).context("agent runs")?;

    // New credentials (the host now dials the server by another name) and a binary that cannot fit.
    f.w.write_clients_text(&clients_xml(&[entry.attr("endpoint", format!("localhost:{}", f.port))]))?;
    let big = work.path().join("vigil-agent");
    // Larger than the room left (12 MiB over the probe's 32 MiB margin), whatever the shipped agent's size.
    let mut bytes = std::fs::read(&shipped)?;
    bytes.resize(bytes.len() + (60 << 20), 0);
    std::fs::write(&big, bytes)?;
    let out = {
        let mut cmd = f.w.vigil(&["bootstrap", name.as_str()]);
        cmd.env("VIGIL_AGENT_BIN", &big);
        cmd.output()?
    };
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("could not stage"), "{t}");
    assert_eq!(f.registered(&name).as_deref(), Some(old_id.as_str()), "the old registration stays: {t}");
    assert!(pid_alive(pid) && agent_pid(&dir) == Some(pid), "the old agent keeps running");
    assert!(
        std::fs::read_dir(&dir)?.flatten().all(|e| !e.file_name().to_string_lossy().starts_with(".new.")),
        "no staged file is left behind"
    );
    // And it still delivers: its reports keep arriving.
    let before = f.reports_of(&old_id);
    wait_for(Duration::from_secs(15), "the old agent delivers after the failed upgrade", || {
        f.reports_of(&old_id) > before + 2
    })?;
    Ok(())
}

/// A process that holds `dir/agent.lock` like an agent, and a foreign process `agent.pid` names.
struct Impostor {
    holder: Child,
    victim: Child,
}

impl Impostor {
    fn plant(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let victim = Command::new("sleep").arg("60").spawn()?;
        std::fs::write(dir.join("agent.pid"), victim.id().to_string())?;
        let holder = Command::new("flock").arg(dir.join("agent.lock")).args(["sleep", "60"]).spawn()?;
        let lock = dir.join("agent.lock");
        wait_for(Duration::from_secs(5), "lock held", || {
            Command::new("flock").arg("-n").arg(&lock).arg("true").status().is_ok_and(|s| !s.success())
        })?;
        Ok(Self { holder, victim })
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        for c in [&mut self.holder, &mut self.victim] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn uninstall_all_removes_every_agent_and_never_signals_an_unverified_pid() -> Result<()> {
    let work = tempfile::tempdir()?;
    let h = Sshd::start(SshdOpts::default())?;
    let key = ClientKey::generate(work.path(), "id_un")?;
    h.authorize("root", &key)?;
    let [a, b, foreign, linked, local] = ["a", "b", "foreign", "linked", "local"].map(unique);
    let ssh = |n: &str| ClientEntry::ssh(n, &h, "root", Auth::Key(key.private.clone()));
    let entries = [ssh(&a), ssh(&b), ssh(&foreign), ssh(&linked), ClientEntry::local(&local)];
    let elsewhere = work.path().join("elsewhere");
    let dirs = [&a, &b, &foreign, &linked, &local].map(|n| tmp_agent_dir(n));
    // No `vigil serve`: it would start the local host's agent itself (bootstrap confirms by process instead).
    let f = Fleet::new(&clients_xml(&entries), dirs.to_vec())?;

    let out = f.vigil(&["uninstall"]);
    assert!(!out.status.success(), "naming no host and no --all is an error: {}", text(&out));

    let out = f.vigil(&["bootstrap", a.as_str(), b.as_str(), "--accept-new-host-key"]);
    assert!(out.status.success(), "{}", text(&out));
    let pids: Vec<u32> = [&a, &b].iter().map(|n| agent_pid(&tmp_agent_dir(n)).expect("agent pid")).collect();
    // Never bootstrapped, but a directory in the agents' place names a foreign process while something holds its
    // lock; another host's directory is a symlink to such a directory; the local host's likewise.
    let i1 = Impostor::plant(&tmp_agent_dir(&foreign))?;
    let i2 = Impostor::plant(&elsewhere)?;
    std::fs::write(elsewhere.join("precious"), "x")?;
    std::os::unix::fs::symlink(&elsewhere, tmp_agent_dir(&linked))?;
    let i3 = Impostor::plant(&tmp_agent_dir(&local))?;

    let out = f.vigil(&["uninstall", "--all"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    let line = |n: &str| t.lines().find(|l| l.contains(n)).unwrap_or("").to_owned();
    for n in [&a, &b] {
        assert!(line(n).starts_with("ok"), "{t}");
        assert!(!tmp_agent_dir(n).exists(), "{n}: directory left");
        assert_eq!(f.registered(n), None);
    }
    for pid in pids {
        wait_for(Duration::from_secs(5), "agent stopped", || !pid_alive(pid))?;
    }
    for n in [&foreign, &linked, &local] {
        assert!(line(n).starts_with("FAILED"), "{n}: {t}");
    }
    for i in [&i1, &i2, &i3] {
        assert!(pid_alive(i.victim.id()) && pid_alive(i.holder.id()), "an unverified process was signalled: {t}");
    }
    assert!(tmp_agent_dir(&foreign).join("agent.pid").exists(), "a directory still locked by another was removed");
    assert!(elsewhere.join("precious").exists(), "the symlink's target was touched");
    Ok(())
}

/// `ssh-agent -a SOCK`, killed by pid on drop.
struct SshAgent {
    sock: PathBuf,
    pid: u32,
}

impl SshAgent {
    fn start(dir: &Path) -> Result<Self> {
        let sock = dir.join("agent.sock");
        let out = Command::new("/usr/bin/ssh-agent").arg("-a").arg(&sock).arg("-s").output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let pid = text
            .split(';')
            .find_map(|p| p.trim().strip_prefix("SSH_AGENT_PID="))
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("ssh-agent said {text}"))?;
        Ok(Self { sock, pid })
    }

    fn add(&self, key: &Path) -> Result<()> {
        let st = Command::new("/usr/bin/ssh-add").arg(key).env("SSH_AUTH_SOCK", &self.sock).status()?;
        anyhow::ensure!(st.success(), "ssh-add failed");
        Ok(())
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = vigil_tests::process::signal_pid(self.pid, libc::SIGTERM);
    }
}

#[test]
fn a_login_without_credentials_uses_the_ssh_agent_then_default_keys_and_names_what_it_tried() -> Result<()> {
    let work = tempfile::tempdir()?;
    let h = Sshd::start(SshdOpts::default())?;
    let key = ClientKey::generate(work.path(), "id_ed25519")?;
    h.authorize("root", &key)?; // the only key sshd accepts
    let name = unique("login");
    // No key_file, no password: only a username. The host key is pinned with base64 padding.
    let padded = format!("{}=", h.host_key_fingerprint()?);
    // channel="direct": the subject is bootstrap's own login; serve, started before the operator's ssh-agent, could
    // not hold a tunnel with it.
    let xml = ClientEntry::ssh(&name, &h, "root", Auth::Password("x".into()))
        .attr("host_key", padded)
        .attr("channel", "direct")
        .to_xml()
        .replace(" password=\"x\"", "");
    let clients = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clients>\n{xml}</clients>\n");
    let mut f = Fleet::new(&clients, vec![tmp_agent_dir(&name)])?;
    f.serve()?;
    let empty_home = work.path().join("home-empty");
    std::fs::create_dir_all(&empty_home)?;

    // The operator's ssh-agent holds the key.
    let agent = SshAgent::start(work.path())?;
    agent.add(&key.private)?;
    f.env = vec![
        ("SSH_AUTH_SOCK".into(), agent.sock.display().to_string()),
        ("HOME".into(), empty_home.display().to_string()),
    ];
    let out = f.vigil(&["bootstrap", name.as_str()]);
    assert!(out.status.success(), "through ssh-agent: {}", text(&out));

    // No agent: ~/.ssh/id_ed25519.
    let home = work.path().join("home");
    std::fs::create_dir_all(home.join(".ssh"))?;
    std::fs::copy(&key.private, home.join(".ssh/id_ed25519"))?;
    f.env = vec![("HOME".into(), home.display().to_string())];
    let out = f.vigil(&["uninstall", name.as_str()]);
    assert!(out.status.success(), "through the default key: {}", text(&out));

    // Neither: the error names every method tried.
    f.env = vec![("HOME".into(), empty_home.display().to_string())];
    let mut cmd = f.w.vigil(&["bootstrap", name.as_str()]);
    cmd.env_remove("SSH_AUTH_SOCK").env("HOME", &empty_home);
    let out = cmd.output()?;
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("authentication as root failed") && t.contains("ssh-agent") && t.contains("id_ed25519"), "{t}");
    Ok(())
}

#[test]
fn issue_12_spooled_reports_arrive_after_the_server_lost_its_data_and_a_rebootstrap() -> Result<()> {
    let work = tempfile::tempdir()?;
    let name = unique("acc");
    let (_h, _key, entry) = root_host(work.path(), &name)?;
    let dir = tmp_agent_dir(&name);
    let mut f = Fleet::new(&clients_xml(&[entry]), vec![dir.clone()])?;
    f.serve()?;
    let out = f.vigil(&["bootstrap", "--all", "--accept-new-host-key"]);
    assert!(out.status.success(), "{}", text(&out));

    // serve down: the agent spools at least 40 reports.
    f.stop_serve()?;
    wait_for(Duration::from_secs(120), "40 reports spooled", || {
        vigil_tests::client::SpoolView::read(&dir).is_ok_and(|s| s.spooled.len() >= 40)
    })?;
    let spooled = vigil_tests::client::SpoolView::read(&dir)?.spooled.len() as i64;
    // The server's data is lost: database, host key, known hosts.
    std::fs::remove_dir_all(f.w.data_dir())?;
    f.serve()?;
    let out = f.vigil(&["bootstrap", "--all", "--accept-new-host-key"]);
    let ok_at = Instant::now();
    let t = text(&out);
    assert!(out.status.success() && t.contains("new credentials"), "{t}");
    // "ok" came only after the first report under the new credentials was stored.
    let new_id = field(&agent_toml(&dir)?, "agent_id");
    assert!(f.reports_of(&new_id) >= 1, "ok before a report was stored: {t}");
    // The spooled reports follow within 10 s of "ok".
    let bound = Duration::from_secs(10).saturating_sub(ok_at.elapsed());
    wait_for(bound, "the spooled reports delivered within 10 s of ok", || f.reports_of_host(&name) >= spooled)
        .map_err(|e| e.context(format!("{} of {spooled} rows", f.reports_of_host(&name))))?;
    Ok(())
}
