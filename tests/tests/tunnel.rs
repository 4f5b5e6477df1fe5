//! The SSH reverse channel against real OpenSSH sshd hosts, in the exercise's `<client ip port username password>`
//! form (no channel attribute: tunnel is the default): the agent dials a port sshd forwards on the host's loopback,
//! serve's own listen address is never given to it, serve restarts (SIGTERM, SIGKILL) lose and duplicate nothing,
//! clients.xml edits add and drop tunnels live, and a host whose sshd refuses forwarding gets a clear error and no
//! retry storm.

use std::collections::HashSet;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result};
use vigil_tests::fleet::AgentCleanup;
use vigil_tests::fleet::{Auth, ClientEntry, Workdir, clients_xml, jobs_toml};
use vigil_tests::net::free_port;
use vigil_tests::poll::wait_for;
use vigil_tests::process::Proc;
use vigil_tests::sshd::{ClientKey, SSHD, Sshd, SshdOpts};
use vigil_tests::users::LocalUser;

fn unique(label: &str) -> String {
    vigil_tests::fleet::unique_host("tn", label)
}

use vigil_tests::fixtures::SystemLogs;
use vigil_tests::fleet::agent_dir;

const TABLES: [&str; 9] =
    ["system_details", "sessions", "cpu", "memory", "swap", "partitions", "disk_usage", "network", "security_events"];

/// A work directory, a serve process and the hosts' agents (killed and removed on drop).
struct Fleet {
    w: Workdir,
    port: u16,
    serve: Option<Proc>,
    _agents: AgentCleanup,
}

impl Fleet {
    /// serve listens on a free port, but agents are told `[server] endpoint` = a port where nothing listens: a
    /// direct agent could never deliver.
    fn new(entries: &[ClientEntry], names: Vec<String>) -> Result<Self> {
        let w = Workdir::new()?;
        let port = free_port();
        let dead = free_port();
        w.write_clients_text(&clients_xml(entries))?;
        let jobs = jobs_toml(port, &w.data_dir(), None, "1s").replacen(
            "retention_days = 30\n",
            &format!("retention_days = 30\nendpoint = \"127.0.0.1:{dead}\"\n"),
            1,
        );
        w.write_jobs(&jobs)?;
        Ok(Self { w, port, serve: None, _agents: AgentCleanup(names) })
    }

    fn serve(&mut self) -> Result<()> {
        self.serve = Some(self.w.spawn_vigil(&["serve"], "serve")?);
        let port = self.port;
        wait_for(Duration::from_secs(20), "serve listening", || vigil_tests::net::port_accepts(port))
    }

    fn vigil(&self, args: &[&str]) -> Output {
        self.w.vigil(args).output().expect("run vigil")
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.w.data_dir().join("vigil.db")).expect("open db")
    }

    fn count(&self, table: &str, host: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM {table} t JOIN hosts h ON h.id = t.host_id WHERE h.name = ?1");
        self.db().query_row(&sql, [host], |r| r.get(0)).unwrap_or(0)
    }

    fn tunnel_port(&self, host: &str) -> Option<u16> {
        self.db().query_row("SELECT port FROM tunnels WHERE host = ?1", [host], |r| r.get(0)).ok()
    }

    fn status_json(&self) -> serde_json::Value {
        let out = self.vigil(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}: {}", text(&out)))
    }

    fn tunnel_state(&self, host: &str) -> (String, String) {
        let v = self.status_json();
        let row = v["hosts"].as_array().and_then(|a| a.iter().find(|h| h["name"] == host)).cloned();
        let row = row.unwrap_or_default();
        (row["reporting"].as_str().unwrap_or("").to_owned(), row["tunnel"]["state"].as_str().unwrap_or("").to_owned())
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// One line of /proc/net/tcp: local port, remote port, state, socket inode.
#[derive(Debug)]
struct TcpRow {
    local_port: u16,
    remote_port: u16,
    state: u8,
    inode: u64,
}

fn tcp_rows() -> Vec<TcpRow> {
    let Ok(text) = std::fs::read_to_string("/proc/net/tcp") else { return Vec::new() };
    let port = |s: &str| s.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()).unwrap_or(0);
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(TcpRow {
                local_port: port(f.get(1)?),
                remote_port: port(f.get(2)?),
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

const ESTABLISHED: u8 = 0x01;
const LISTEN: u8 = 0x0A;

/// The socket inodes process `pid` holds.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The processes running `exe`.
fn pids_of(exe: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == std::path::Path::new(exe))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a loopback listener on `port` is held by an sshd process.
fn sshd_listens_on(port: u16) -> bool {
    let listeners: HashSet<u64> =
        tcp_rows().into_iter().filter(|r| r.state == LISTEN && r.local_port == port).map(|r| r.inode).collect();
    !listeners.is_empty() && pids_of(SSHD).into_iter().any(|pid| !socket_inodes(pid).is_disjoint(&listeners))
}

/// The remote ports of the agent's established TCP connections.
fn agent_peer_ports(host: &str) -> Vec<u16> {
    let Some(pid) = std::fs::read_to_string(agent_dir(host).join("agent.pid")).ok().and_then(|s| s.trim().parse().ok())
    else {
        return Vec::new();
    };
    let inodes = socket_inodes(pid);
    tcp_rows()
        .into_iter()
        .filter(|r| r.state == ESTABLISHED && inodes.contains(&r.inode))
        .map(|r| r.remote_port)
        .collect()
}

fn spool_empty(host: &str) -> bool {
    std::fs::read_dir(agent_dir(host).join("spool"))
        .map(|rd| !rd.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".env")))
        .unwrap_or(false)
}

/// (reports, distinct sequence numbers, max - min + 1, dropped) of `host`'s current agent.
fn sequence(f: &Fleet, host: &str) -> (i64, i64, i64, i64) {
    f.db()
        .query_row(
            "SELECT count(*), count(DISTINCT seq), max(seq) - min(seq) + 1, coalesce(sum(dropped), 0) FROM reports
             WHERE agent_id = (SELECT agent_id FROM agents WHERE host = ?1)",
            [host],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap_or((0, 0, 0, 0))
}

#[test]
fn agents_report_through_the_tunnel_across_serve_restarts_and_live_edits() -> Result<()> {
    // Host 1: root with a key. Host 2: a non-root user with a password (the exercise's form).
    let h1 = Sshd::start(SshdOpts::default())?;
    let h2 = Sshd::start(SshdOpts::with_passwords())?;
    let work = tempfile::tempdir()?;
    let key = ClientKey::generate(work.path(), "id_tunnel")?;
    h1.authorize("root", &key)?;
    let u2 = LocalUser::create()?;
    let names = vec![unique("key"), unique("pw")];
    let entries = [
        ClientEntry::ssh(&names[0], &h1, "root", Auth::Key(key.private.clone())),
        ClientEntry::ssh(&names[1], &h2, u2.name(), Auth::Password(u2.password().to_owned())),
    ];
    let mut f = Fleet::new(&entries, names.clone())?;
    f.serve()?;
    let logs = SystemLogs::install()?;

    let out = f.vigil(&["bootstrap", "--all", "--accept-new-host-key"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("2 succeeded, 0 failed"), "{}", text(&out));
    // A failed login after the agents started: each reports it (agents read the log from where it ended at start).
    logs.failed_login()?;

    for n in &names {
        let port = f.tunnel_port(n).with_context(|| format!("{n}: no tunnel port recorded"))?;
        assert_ne!(port, f.port, "the agent is not given serve's listen port");
        let toml = std::fs::read_to_string(agent_dir(n).join("agent.toml"))?;
        assert!(toml.contains(&format!("server = \"127.0.0.1:{port}\"")), "{n}: {toml}");
        // The port is a listener of the host's sshd, and the agent's connection ends there.
        wait_for(Duration::from_secs(10), "the agent connected to sshd's forwarded port", || {
            sshd_listens_on(port) && agent_peer_ports(n).contains(&port)
        })
        .with_context(|| format!("{n}: peers {:?}", agent_peer_ports(n)))?;
        assert!(!agent_peer_ports(n).contains(&f.port), "{n} dials serve's listen port directly");
        assert_eq!(f.tunnel_state(n), ("tunnel".to_owned(), "up".to_owned()), "{n}");
    }
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

    // serve restarted mid-stream, gently and then hard: the agents spool meanwhile; nothing lost, nothing twice.
    let ports: Vec<u16> = names.iter().filter_map(|n| f.tunnel_port(n)).collect();
    for sig in [libc::SIGTERM, libc::SIGKILL] {
        let mut serve = f.serve.take().context("serve")?;
        serve.signal(sig)?;
        serve.wait_exit(Duration::from_secs(20))?;
        // Nobody holds the tunnels now: status says so, also after a SIGKILL left them recorded `up`.
        let table = text(&f.vigil(&["status"]));
        assert!(table.contains("vigil serve on ") && !table.contains(": running"), "{table}");
        let v = f.status_json();
        for n in &names {
            let row = v["hosts"].as_array().and_then(|a| a.iter().find(|h| h["name"] == n.as_str())).cloned();
            let tunnel = row.unwrap_or_default()["tunnel"].clone();
            assert_eq!(tunnel["state"], "down", "{n} after signal {sig}: {table}");
            let error = tunnel["error"].as_str().unwrap_or("");
            // (or, killed right after a restart before its tunnel came back up, the restart's own record)
            let told = ["not running", "stopped", "restarted"].iter().any(|w| error.contains(w));
            assert!(told, "{n}: {error}");
        }
        std::thread::sleep(Duration::from_secs(3));
        f.serve()?;
    }
    let restarted_at = vigil_sys::clock::now_ms();
    for (n, port) in names.iter().zip(&ports) {
        assert_eq!(f.tunnel_port(n), Some(*port), "{n}: the forwarded port is stable across serve restarts");
        wait_for(Duration::from_secs(60), "a report after the restarts and an empty spool", || {
            let newer: i64 = f
                .db()
                .query_row(
                    "SELECT count(*) FROM reports r JOIN hosts h ON h.id = r.host_id
                     WHERE h.name = ?1 AND r.received_at_ms > ?2",
                    rusqlite::params![n, restarted_at],
                    |r| r.get(0),
                )
                .unwrap_or(0);
            newer > 0 && spool_empty(n)
        })
        .with_context(|| format!("{n}: {}", f.serve.as_ref().map(Proc::logs).unwrap_or_default()))?;
        let (count, distinct, span, dropped) = sequence(&f, n);
        assert!(count > 5, "{n}: {count} reports");
        assert_eq!((count, dropped), (distinct, 0), "{n}: every report once, none dropped");
        assert_eq!(span, count, "{n}: no sequence number missing (nothing lost across the restarts)");
    }

    // A live edit drops the second host's tunnel, and adding it back brings the tunnel back.
    let port2 = ports[1];
    f.w.write_clients_text(&clients_xml(&entries[..1]))?;
    wait_for(Duration::from_secs(15), "the dropped host's forward closed", || !sshd_listens_on(port2))?;
    assert!(sshd_listens_on(ports[0]), "the other tunnel stays");
    f.w.write_clients_text(&clients_xml(&entries))?;
    wait_for(Duration::from_secs(15), "the re-added host's forward back", || sshd_listens_on(port2))?;
    let back_at = vigil_sys::clock::now_ms();
    // Removing the host revoked its agent's session when the config reached serve before the forward closed; a
    // revoked agent waits out its longest backoff (30-60 s, jittered) before it dials again.
    wait_for(Duration::from_secs(90), "the re-added host delivers again", || {
        f.db()
            .query_row(
                "SELECT count(*) FROM reports r JOIN hosts h ON h.id = r.host_id WHERE h.name = ?1 AND r.received_at_ms > ?2",
                rusqlite::params![names[1], back_at],
                |r| r.get::<_, i64>(0),
            )
            .unwrap_or(0)
            > 0
    })?;

    let out = f.vigil(&["uninstall", "--all"]);
    assert!(out.status.success(), "{}", text(&out));
    Ok(())
}

#[test]
fn a_host_refusing_forwarding_gets_a_clear_error_no_retry_storm_and_direct_as_the_way_out() -> Result<()> {
    let work = tempfile::tempdir()?;
    let key = ClientKey::generate(work.path(), "id_refuse")?;
    let mut h1 = Sshd::start(SshdOpts::default())?;
    h1.authorize("root", &key)?;
    let h2 = Sshd::start(SshdOpts { extra_config: vec!["AllowTcpForwarding no".into()], ..SshdOpts::default() })?;
    h2.authorize("root", &key)?;
    let names = vec![unique("later"), unique("never")];
    let mut entries = vec![
        ClientEntry::ssh(&names[0], &h1, "root", Auth::Key(key.private.clone())),
        ClientEntry::ssh(&names[1], &h2, "root", Auth::Key(key.private.clone())),
    ];
    let mut f = Fleet::new(&entries, names.clone())?;
    f.serve()?;

    // Refused from the start: bootstrap names the cause and the way out; status shows it.
    let out = f.vigil(&["bootstrap", &names[1], "--accept-new-host-key"]);
    assert!(!out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("AllowTcpForwarding no") && t.contains("channel=\"direct\""), "{t}");
    assert_eq!(f.tunnel_state(&names[1]), ("tunnel".to_owned(), "refused".to_owned()));
    let table = text(&f.vigil(&["status"]));
    assert!(table.contains("tunnel refused") && table.contains("AllowTcpForwarding no"), "{table}");

    // A tunnel that worked, then the host turns forwarding off: serve records the refusal and retries slowly.
    let out = f.vigil(&["bootstrap", &names[0], "--accept-new-host-key"]);
    assert!(out.status.success(), "{}", text(&out));
    h1.reconfigure(vec!["AllowTcpForwarding no".into()])?;
    let mut serve = f.serve.take().context("serve")?;
    serve.stop()?;
    let logins_before = h1.logs().matches("Accepted publickey").count();
    f.serve()?;
    wait_for(Duration::from_secs(15), "the refusal in status", || {
        f.tunnel_state(&names[0]) == ("tunnel".to_owned(), "refused".to_owned())
    })?;
    std::thread::sleep(Duration::from_secs(10));
    let logins = h1.logs().matches("Accepted publickey").count() - logins_before;
    assert!((1..=2).contains(&logins), "{logins} logins in ~10 s: a refused tunnel must not be retried in a storm");

    // The way out: channel="direct" for the host that cannot forward (serve's listen is reachable here).
    entries[1] = entries[1].clone().attr("channel", "direct").attr("endpoint", format!("127.0.0.1:{}", f.port));
    f.w.write_clients_text(&clients_xml(&entries))?;
    let out = f.vigil(&["bootstrap", &names[1]]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(f.tunnel_state(&names[1]).0, "direct");
    let out = f.vigil(&["uninstall", "--all"]);
    assert!(out.status.success(), "{}", text(&out));
    Ok(())
}
