//! `vigil bootstrap`, collection and `vigil uninstall` on hosts with a minimal userland (issue 14): a login shell
//! that is busybox `ash` with a PATH of busybox applets only (no coreutils, no util-linux), and a host served by
//! dropbear instead of OpenSSH, reporting through the default reverse channel (dropbear's `tcpip-forward`).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result};
use vigil_tests::fleet::{Auth, ClientEntry, Workdir, agent_dir, clients_xml, jobs_toml};
use vigil_tests::net::free_port;
use vigil_tests::paths::{TestDir, set_mode};
use vigil_tests::poll::wait_for;
use vigil_tests::process::{Proc, kill_processes_under, pid_alive};
use vigil_tests::{Dropbear, LocalUser, Sshd, SshdOpts};

const BUSYBOX: &str = "/usr/bin/busybox";

/// Tables every agent fills without log fixtures.
const TABLES: [&str; 5] = ["system_details", "cpu", "memory", "disk_usage", "network"];

/// A fleet of one host and a running `vigil serve`; kills the installed agent on drop.
struct Fleet {
    w: Workdir,
    serve: Option<Proc>,
    name: String,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        kill_processes_under(&agent_dir(&self.name));
        let _ = std::fs::remove_dir_all(agent_dir(&self.name));
        drop(self.serve.take());
    }
}

impl Fleet {
    fn start(entry: ClientEntry, name: &str) -> Result<Self> {
        let w = Workdir::new()?;
        let port = free_port();
        w.write_clients_text(&clients_xml(&[entry]))?;
        w.write_jobs(&jobs_toml(port, &w.data_dir(), None, "1s"))?;
        let serve = Some(Proc::spawn(w.vigil(&["serve"]), w.path(), "serve")?);
        wait_for(Duration::from_secs(20), "serve listening", || vigil_tests::net::port_accepts(port))?;
        Ok(Self { w, serve, name: name.to_owned() })
    }

    fn vigil(&self, args: &[&str]) -> Output {
        self.w.vigil(args).output().expect("run vigil")
    }

    fn count(&self, table: &str) -> i64 {
        let db = rusqlite::Connection::open(self.w.data_dir().join("vigil.db")).expect("open db");
        let sql = format!("SELECT count(*) FROM {table} t JOIN hosts h ON h.id = t.host_id WHERE h.name = ?1");
        db.query_row(&sql, [&self.name], |r| r.get(0)).unwrap_or(0)
    }

    fn status_row(&self) -> serde_json::Value {
        let out = self.vigil(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let row = v["hosts"].as_array().and_then(|a| a.iter().find(|h| h["name"] == self.name.as_str())).cloned();
        row.unwrap_or_default()
    }

    /// Bootstraps the host, waits for rows in every table and a live status row, bootstraps again (nothing to do:
    /// the host's agent hashed itself and holds its lock), then uninstalls and checks that nothing is left.
    fn install_collect_uninstall(&self, first_args: &[&str]) -> Result<()> {
        let dir = agent_dir(&self.name);
        let mut args = vec!["bootstrap", self.name.as_str()];
        args.extend_from_slice(first_args);
        let out = self.vigil(&args);
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        assert!(t.contains("agent installed") && t.contains("agent started"), "{t}");
        wait_for(Duration::from_secs(30), "rows in every table", || TABLES.iter().all(|t| self.count(t) > 0))
            .with_context(|| TABLES.map(|t| format!("{t}={}", self.count(t))).join(" "))?;
        wait_for(Duration::from_secs(10), "a live status row", || self.status_row()["cpu_pct"].is_number())?;
        // The default reverse channel: the agent reports through a port the host's SSH server forwards.
        wait_for(Duration::from_secs(10), "the tunnel up", || self.status_row()["tunnel"]["state"] == "up")
            .with_context(|| self.status_row().to_string())?;
        let row = self.status_row();
        assert_eq!(row["silent"], false, "{row}");
        assert_eq!(row["reporting"], "tunnel", "{row}");
        let pid = agent_pid(&dir).context("agent.pid")?;
        assert!(pid_alive(pid));

        let out = self.vigil(&["bootstrap", self.name.as_str()]);
        let t = text(&out);
        assert!(out.status.success() && t.contains("already up to date and running"), "{t}");
        assert_eq!(agent_pid(&dir), Some(pid), "nothing restarted");

        let out = self.vigil(&["uninstall", self.name.as_str()]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(!dir.exists(), "the directory is gone");
        wait_for(Duration::from_secs(5), "agent stopped", || !pid_alive(pid))?;
        Ok(())
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn agent_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("agent.pid")).ok()?.trim().parse().ok()
}

/// A userland of busybox applets only: `bin/` holds a symlink per applet (`busybox --list`), and `shell` is a login
/// shell run by busybox itself (no /bin/sh in between) that sets PATH to `bin/` alone and execs `busybox ash`.
struct BusyboxUserland {
    dir: TestDir,
}

impl BusyboxUserland {
    fn new() -> Result<Self> {
        anyhow::ensure!(Path::new(BUSYBOX).is_file(), "{BUSYBOX} is missing: install busybox (scripts/test.sh does)");
        let dir = TestDir::new("busybox")?;
        let bin = dir.join("bin");
        std::fs::create_dir(&bin)?;
        set_mode(&bin, 0o755)?;
        let list = std::process::Command::new(BUSYBOX).arg("--list").output()?;
        for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
            std::os::unix::fs::symlink(BUSYBOX, bin.join(applet))?;
        }
        let shell = dir.join("shell");
        std::fs::write(
            &shell,
            format!("#!{BUSYBOX} ash\nPATH={}\nexport PATH\nexec {BUSYBOX} ash \"$@\"\n", bin.display()),
        )?;
        set_mode(&shell, 0o755)?;
        Ok(Self { dir })
    }

    fn bin(&self) -> PathBuf {
        self.dir.join("bin")
    }

    fn shell(&self) -> PathBuf {
        self.dir.join("shell")
    }
}

#[test]
fn a_busybox_ash_host_with_only_busybox_applets_is_bootstrapped_collected_and_uninstalled() -> Result<()> {
    let h = Sshd::start(SshdOpts::with_passwords())?;
    let user = LocalUser::create()?;
    let bb = BusyboxUserland::new()?;
    user.set_login_shell(&bb.shell())?;
    // What a command over SSH sees: only busybox applets, none of the tools the old commands needed.
    let out = h
        .ssh_with_password(user.name(), user.password())?
        .arg("echo \"$PATH\"; command -v cat; for t in flock sha256sum head setsid; do command -v $t || echo no-$t; done")
        .output()?;
    let seen = text(&out);
    let bin = bb.bin().display().to_string();
    assert_eq!(seen.lines().next(), Some(bin.as_str()), "{seen}");
    assert!(seen.lines().any(|l| l == format!("{bin}/cat")), "{seen}");
    assert!(seen.lines().any(|l| l == "no-flock"), "Debian's busybox has no flock: {seen}");
    assert!(seen.lines().all(|l| !l.starts_with("/usr/") && !l.starts_with("/bin/")), "coreutils leaked: {seen}");

    let name = vigil_tests::fleet::unique_host("bm", "bb");
    let entry = ClientEntry::ssh(&name, &h, user.name(), Auth::Password(user.password().to_owned()));
    let f = Fleet::start(entry, &name)?;
    f.install_collect_uninstall(&["--accept-new-host-key"])?;
    drop(f);
    drop(user);
    Ok(())
}

#[test]
fn a_dropbear_host_pins_its_key_reports_through_the_tunnel_and_is_uninstalled() -> Result<()> {
    let d = Dropbear::start()?;
    let user = LocalUser::create()?;
    let name = vigil_tests::fleet::unique_host("bm", "db");
    let entry = ClientEntry::ssh_port(&name, d.port(), user.name(), Auth::Password(user.password().to_owned()));
    let f = Fleet::start(entry, &name)?;

    // An unknown dropbear host key is refused like an OpenSSH one, naming the fingerprint dropbearkey printed.
    let out = f.vigil(&["bootstrap", name.as_str()]);
    let t = text(&out);
    assert!(!out.status.success() && t.contains("unknown host key"), "{t}");
    assert!(t.contains(d.host_key_fingerprint()), "{t}\n{}", d.logs());
    assert!(!agent_dir(&name).exists(), "nothing may reach the host");

    // Accepted with the flag and recorded; the agent reports through dropbear's remote forward (no channel attr).
    f.install_collect_uninstall(&["--accept-new-host-key"])
        .map_err(|e| e.context(format!("dropbear log:\n{}", d.logs())))?;
    let known = std::fs::read_to_string(f.w.data_dir().join("known_hosts"))?;
    assert!(known.contains(d.host_key_fingerprint()), "{known}");
    drop(f);
    drop(user);
    Ok(())
}
