//! Benchmark: how long the surviving `vigil serve` node takes to own every host of a node that died, with N hosts
//! shared by two nodes on one real PostgreSQL (durable: fsync and synchronous_commit on). Side by side, in the same
//! run: the same handover after a clean stop (SIGTERM releases the leases at once), the baseline.
//!
//! Usage: `bench-takeover [HOSTS] [ROUNDS]` (default 1,000 hosts, 3 rounds). Uses target/release/vigil when built,
//! else target/debug (`BENCH_DEBUG=1` forces debug). The hosts are enrolled-style SSH hosts that never connect: the
//! measure is the lease protocol (node death noticed through expiry, hosts taken), not the tunnels. Prints a table;
//! BENCHMARKS.md quotes it.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use vigil_tests::fleet::{ClientEntry, Workdir, clients_xml, jobs_toml};
use vigil_tests::net::{free_port, port_accepts};
use vigil_tests::paths::built_in;
use vigil_tests::poll::wait_for;
use vigil_tests::process::Proc;

/// Leases of `node` that have not expired, by the database's clock.
fn owned(pg: &vigil_testkit::Postgres, db: &str, node: &str) -> usize {
    let sql = format!(
        "SELECT count(*) FROM leases WHERE node = '{node}'
         AND expires_at_ms > CAST(extract(epoch FROM clock_timestamp()) * 1000 AS BIGINT)"
    );
    pg.psql(db, &sql).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn start(w: &Workdir, vigil: &std::path::Path, node: &str) -> Result<Proc> {
    let port = free_port();
    let data = w.path().join(format!("node-{node}"));
    let mut cmd = std::process::Command::new(vigil);
    cmd.current_dir(w.path()).env("RUST_LOG", "warn").args([
        "serve",
        "--node",
        node,
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        &data.display().to_string(),
    ]);
    let p = Proc::spawn(cmd, w.path(), node)?;
    wait_for(Duration::from_secs(60), "node listening", || port_accepts(port))?;
    Ok(p)
}

/// One round: a owns everything, b joins and takes its half, then a stops (`signal`); returns how long b took to
/// own every host.
fn round(
    w: &Workdir,
    vigil: &std::path::Path,
    pg: &vigil_testkit::Postgres,
    db: &str,
    n: usize,
    signal: i32,
) -> Result<Duration> {
    pg.psql(db, "DELETE FROM leases; DELETE FROM nodes;")?;
    let mut a = start(w, vigil, "a")?;
    wait_for(Duration::from_secs(60), "a owns every host", || owned(pg, db, "a") == n)?;
    let mut b = start(w, vigil, "b")?;
    wait_for(Duration::from_secs(60), "the hosts shared", || {
        owned(pg, db, "b") == n / 2 && owned(pg, db, "a") == n - n / 2
    })?;
    a.signal(signal)?;
    let t0 = Instant::now();
    while owned(pg, db, "b") < n {
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("b owns {} of {n} after 120 s", owned(pg, db, "b"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = t0.elapsed();
    a.wait_exit(Duration::from_secs(20)).ok();
    b.signal(libc::SIGTERM)?;
    b.wait_exit(Duration::from_secs(20)).ok();
    Ok(took)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let profiles: &[&str] = if std::env::var_os("BENCH_DEBUG").is_some() { &["debug"] } else { &["release", "debug"] };
    let vigil = built_in(profiles, "vigil")?;
    let pg = vigil_testkit::Postgres::start_with(vigil_testkit::Options { fsync: true, ..Default::default() })?;
    let url = pg.create_database("takeover")?;
    drop(vigil_server::store::Store::open_postgres(&url, None)?); // the schema, before the first round clears it
    let w = Workdir::new()?;
    let hosts: Vec<ClientEntry> = (0..n)
        .map(|i| ClientEntry::enrolled(&format!("t{i:05}"), format!("10.9.{}.{}", i / 250, i % 250 + 1)))
        .collect();
    w.write_clients_text(&clients_xml(&hosts))?;
    let jobs = jobs_toml(free_port(), &w.data_dir(), None, "10s").replacen(
        "retention_days = 30\n",
        &format!("retention_days = 30\ndatabase = \"{url}\"\n"),
        1,
    );
    w.write_jobs(&jobs)?;
    println!("{n} hosts, 2 nodes, PostgreSQL (fsync on), {}", vigil.display());
    println!("{:<28} {:>10} {:>10} {:>10}", "handover", "min s", "median s", "max s");
    for (label, sig) in [("clean stop (SIGTERM)", libc::SIGTERM), ("node killed (SIGKILL)", libc::SIGKILL)] {
        let mut times: Vec<f64> = (0..rounds)
            .map(|_| round(&w, &vigil, &pg, "takeover", n, sig).map(|d| d.as_secs_f64()))
            .collect::<Result<_>>()?;
        times.sort_by(f64::total_cmp);
        println!("{label:<28} {:>10.2} {:>10.2} {:>10.2}", times[0], times[times.len() / 2], times[times.len() - 1]);
    }
    Ok(())
}
