//! Two `vigil serve` nodes on one real PostgreSQL, four real sshd hosts reporting through the reverse channel, real
//! mail: the nodes share the hosts (leases), one node is killed with SIGKILL, and within 30 s the other holds every
//! host's tunnel and stores its reports; every report produced meanwhile is stored exactly once (no sequence number
//! twice, none missing), and an alert that starts firing during the failover is mailed once through the SMTP server.

use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use vigil_tests::fleet::{AgentCleanup, Auth, ClientEntry, Workdir, clients_xml, jobs_toml, unique_host};
use vigil_tests::net::{free_port, port_accepts};
use vigil_tests::poll::wait_for;
use vigil_tests::process::Proc;
use vigil_tests::smtp::Smtp;
use vigil_tests::sshd::{ClientKey, Sshd, SshdOpts};

/// The test's database on the process's PostgreSQL cluster: its URL and name.
struct Db {
    url: String,
    name: String,
}

impl Db {
    fn fresh() -> Self {
        let url = vigil_testkit::fresh_database();
        let name = url.rsplit('/').next().unwrap_or_default().to_owned();
        Self { url, name }
    }

    fn query(&self, sql: &str) -> String {
        vigil_testkit::shared().psql(&self.name, sql).unwrap_or_else(|e| panic!("psql {sql}: {e}"))
    }

    fn count(&self, sql: &str) -> i64 {
        self.query(sql).trim().parse().unwrap_or(-1)
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// One node: `vigil serve --node NAME --listen 127.0.0.1:PORT --data-dir DIR` from the shared config files.
fn start_node(w: &Workdir, name: &str, port: u16) -> Result<Proc> {
    let dir = w.path().join(format!("node-{name}"));
    let (listen, data) = (format!("127.0.0.1:{port}"), dir.display().to_string());
    let p = w.spawn_vigil(&["serve", "--node", name, "--listen", &listen, "--data-dir", &data], name)?;
    wait_for(Duration::from_secs(30), &format!("node {name} listening"), || port_accepts(port))?;
    Ok(p)
}

/// host -> owner node, from `vigil status --json`.
fn owners(w: &Workdir) -> Vec<(String, Option<String>)> {
    let out = w.vigil(&["status", "--json"]).output().expect("vigil status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["hosts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| (h["name"].as_str().unwrap_or("").to_owned(), h["owner"].as_str().map(str::to_owned)))
                .collect()
        })
        .unwrap_or_default()
}

/// Each agent's (reports, distinct sequence numbers, span of sequence numbers, reported drops).
fn sequences(db: &Db) -> Vec<String> {
    db.query(
        "SELECT a.host || ' ' || count(*) || ' ' || count(DISTINCT r.seq) || ' ' || (max(r.seq) - min(r.seq) + 1)
                || ' ' || coalesce(sum(r.dropped), 0)
         FROM reports r JOIN agents a ON a.agent_id = r.agent_id GROUP BY a.host ORDER BY a.host",
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

#[test]
fn a_killed_node_s_hosts_move_to_the_other_without_loss_or_duplicates() -> Result<()> {
    let sshds: Vec<Sshd> = (0..2).map(|_| Sshd::start(SshdOpts::default())).collect::<Result<_>>()?;
    let work = tempfile::tempdir()?;
    let key = ClientKey::generate(work.path(), "id_failover")?;
    for s in &sshds {
        s.authorize("root", &key)?;
    }
    let names: Vec<String> = (0..4).map(|i| unique_host("fo", &format!("h{i}"))).collect();
    let _agents = AgentCleanup(names.clone());
    let entry = |i: usize| {
        ClientEntry::ssh(&names[i], &sshds[i % 2], "root", Auth::Key(key.private.clone()))
            .attr("mail", "ops@example.com")
    };
    let mut smtp = Smtp::start()?;
    let db = Db::fresh();
    let w = Workdir::new()?;
    w.write_clients_text(&clients_xml(&(0..4).map(entry).collect::<Vec<_>>()))?;
    // The file's listen address is nobody's: each node listens where --listen says.
    let jobs = jobs_toml(free_port(), &w.data_dir(), Some(smtp.port()), "1s").replacen(
        "retention_days = 30\n",
        &format!("retention_days = 30\ndatabase = \"{}\"\n", db.url),
        1,
    );
    w.write_jobs(&jobs)?;

    let (port_a, port_b) = (free_port(), free_port());
    let mut a = start_node(&w, "a", port_a)?;
    let out = w.vigil(&["bootstrap", "--all", "--accept-new-host-key"]).output()?;
    assert!(text(&out).contains("4 succeeded, 0 failed"), "{}", text(&out));
    let b = start_node(&w, "b", port_b)?;
    let logs =
        |p: &Proc| p.logs().lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");

    // The nodes share the hosts: two each, every host reporting.
    wait_for(Duration::from_secs(40), "two hosts owned by each node", || {
        let o = owners(&w);
        let of = |n: &str| o.iter().filter(|(_, owner)| owner.as_deref() == Some(n)).count();
        o.len() == 4 && of("a") == 2 && of("b") == 2
    })
    .with_context(|| format!("{:?}: {}", owners(&w), text(&w.vigil(&["status"]).output().expect("status"))))?;
    let of_a: Vec<String> = owners(&w).into_iter().filter(|(_, o)| o.as_deref() == Some("a")).map(|(h, _)| h).collect();
    let reported_since = |since: &str, host: &str| {
        db.count(&format!(
            "SELECT count(*) FROM reports r JOIN hosts h ON h.id = r.host_id
             WHERE h.name = '{host}' AND r.received_at_ms > {since}"
        ))
    };
    let now_ms = || vigil_sys::clock::now_ms().to_string();
    let t0 = now_ms();
    wait_for(Duration::from_secs(30), "every host reporting while both nodes run", || {
        names.iter().all(|n| reported_since(&t0, n) > 0)
    })
    .with_context(|| format!("a:\n{}\nb:\n{}\n{:?}", logs(&a), logs(&b), owners(&w)))?;

    // SIGKILL a; an alert on one of its hosts starts firing while it is away (memory use is always above 1 %).
    a.signal(libc::SIGKILL)?;
    let killed = Instant::now();
    let killed_ms = now_ms();
    let moved = of_a[0].clone();
    let mut edited: Vec<ClientEntry> = (0..4).map(entry).collect();
    let i = names.iter().position(|n| *n == moved).context("moved host")?;
    edited[i] = entry(i).alert("memory", "1");
    w.write_clients_text(&clients_xml(&edited))?;

    wait_for(Duration::from_secs(30), "b owns every host and stores their reports", || {
        owners(&w).iter().all(|(_, o)| o.as_deref() == Some("b"))
            && names.iter().all(|n| reported_since(&killed_ms, n) > 0)
    })
    .with_context(|| format!("owners {:?}, sequences {:?}\nb:\n{}", owners(&w), sequences(&db), logs(&b)))?;
    let took = killed.elapsed();
    eprintln!("failover: every host reporting through b {:.1} s after a was killed", took.as_secs_f64());

    // Every report produced meanwhile, once: let the spools drain, then no sequence number twice and no gap.
    std::thread::sleep(Duration::from_secs(5));
    let seqs = sequences(&db);
    assert_eq!(seqs.len(), 4, "{seqs:?}");
    for line in &seqs {
        let f: Vec<i64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        let [n, distinct, span, dropped] = f[..] else { bail!("bad line {line}") };
        assert_eq!(n, distinct, "a report stored twice: {line}");
        assert_eq!(span, n + dropped, "a report missing: {line}");
    }

    // The alert: fired by b, mailed once (nothing from a, which is dead, nor a second mail from b).
    let subject = format!("[vigil] FIRING memory on {moved}");
    wait_for(Duration::from_secs(30), "the alert mailed", || {
        smtp.messages().is_ok_and(|m| m.iter().any(|m| m.subject().is_some_and(|s| s.starts_with(&subject))))
    })?;
    std::thread::sleep(Duration::from_secs(8));
    let mails: Vec<String> = smtp.messages()?.iter().filter_map(|m| m.subject()).collect();
    let fired = mails.iter().filter(|s| s.starts_with(&subject)).count();
    assert_eq!(fired, 1, "{mails:?}");
    assert_eq!(db.count("SELECT count(*) FROM outbox WHERE status = 'pending'"), 0);
    smtp.stop()?;
    Ok(())
}
