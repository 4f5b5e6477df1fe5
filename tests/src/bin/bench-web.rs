//! Benchmark: the web dashboard over HTTP on a database holding DAYS of 10-second history for one host (cpu, memory,
//! swap, two disks, one interface per report) and a fleet of HOSTS hosts with an hour of one-minute history each.
//! Measures the host page's series requests (every chart, 1,000-point budget) over 1 day and over 30 days, and the
//! fleet page, ROUNDS times each; prints p50/p95 and the points per chart. BENCHMARKS.md quotes it.
//!
//! Usage: `bench-web [DAYS] [HOSTS] [ROUNDS]` (default 30 days, 1,000 hosts, 20 rounds). The database is built in a
//! temporary directory through `Store::insert_reports` (the ingest path) and removed afterwards.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use vigil_schema::report::Report;
use vigil_server::config::Config;
use vigil_server::store::{Incoming, Store};
use vigil_server::web::WebState;

const METRICS: [&str; 8] = ["cpu", "cpu_cores", "load", "memory", "swap", "disk", "net_rx", "net_tx"];

fn sample(seq: u64, at: i64, i: u64) -> Report {
    let mut r = Report::example(seq, at);
    let wave = ((i % 360) as f32 / 360.0 * std::f32::consts::TAU).sin();
    if let Some(c) = r.stats.cpu.as_mut() {
        c.total_pct = 30.0 + 20.0 * wave + if i.is_multiple_of(997) { 45.0 } else { 0.0 };
    }
    r.stats.system = None;
    r.stats.users = None;
    r.stats.partitions = None;
    r.stats.security_events = None;
    r
}

fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, out))
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> Result<()> {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse()).collect::<Result<_, _>>()?;
    let days = args.first().copied().unwrap_or(30);
    let hosts = args.get(1).copied().unwrap_or(1_000);
    let rounds = args.get(2).copied().unwrap_or(20) as usize;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("data").join("vigil.db");
    let mut store = Store::open(&db)?;
    let now = vigil_sys::clock::now_ms();

    let t = Instant::now();
    let n = days * 8_640;
    let mut batch = Vec::with_capacity(4_096);
    for i in 0..n {
        let at = now - (n - i) as i64 * 10_000;
        let report = sample(i + 1, at, i);
        batch.push(Incoming {
            agent_id: "hist".into(),
            host: "history".into(),
            ip: "10.0.0.1".into(),
            received_at_ms: at,
            report,
        });
        if batch.len() == 4_096 {
            store.insert_reports(&batch)?;
            batch.clear();
        }
    }
    for h in 0..hosts {
        for m in 0..60u64 {
            let at = now - (60 - m) as i64 * 60_000;
            batch.push(Incoming {
                agent_id: format!("a{h}"),
                host: format!("h{h:04}"),
                ip: format!("10.1.{}.{}", h / 250, h % 250 + 1),
                received_at_ms: at,
                report: sample(m + 1, at, m),
            });
            if batch.len() == 4_096 {
                store.insert_reports(&batch)?;
                batch.clear();
            }
        }
    }
    store.insert_reports(&batch)?;
    let rolled_at = Instant::now();
    // What `vigil serve`'s roll-up task does as reports arrive.
    while store.roll_up()? > 0 {}
    let rollup_s = rolled_at.elapsed().as_secs_f64();
    drop(store);
    let size = std::fs::metadata(&db)?.len();
    println!(
        "database: {n} reports of 'history' ({days} d at 10 s), {hosts} hosts x 60 reports; {:.0} MiB; built in {:.0} s \
         (of which rolling up {rollup_s:.0} s)",
        size as f64 / 1_048_576.0,
        t.elapsed().as_secs_f64()
    );

    let mut clients = String::from("<clients>\n<client name=\"history\" ip=\"10.0.0.1\" transport=\"local\"/>\n");
    for h in 0..hosts {
        clients.push_str(&format!(
            "<client name=\"h{h:04}\" ip=\"10.1.{}.{}\" transport=\"local\"/>\n",
            h / 250,
            h % 250 + 1
        ));
    }
    clients.push_str("</clients>\n");
    std::fs::write(dir.path().join("clients.xml"), clients)?;
    std::fs::write(
        dir.path().join("jobs.toml"),
        "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"data\"\n[[job]]\nname = \"all\"\ncollectors = [\"cpu\"]\ninterval = \"10s\"\n",
    )?;
    let config: Config = Config::load(&dir.path().join("clients.xml"), &dir.path().join("jobs.toml"))?.config;
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(config));
    let state = Arc::new(WebState::with_store(vigil_server::store::Store::open_readonly(&db)?, rx, None, None));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    // Never cancelled: the benchmark ends with the process.
    rt.spawn(vigil_server::web::run(listener, state, tokio_util::sync::CancellationToken::new()));

    let now_s = now / 1000 + 1;
    for (label, span) in [("1 day", 86_400), ("30 days", 30 * 86_400)] {
        let mut times = Vec::new();
        let mut most = 0usize;
        for _ in 0..rounds {
            for m in METRICS {
                let path = format!("/api/series?host=history&metric={m}&from={}&to={now_s}&points=1000", now_s - span);
                let t = Instant::now();
                let (code, body) = get(addr, &path)?;
                times.push(t.elapsed().as_secs_f64() * 1000.0);
                if code != 200 {
                    bail!("{path}: {body}");
                }
                let t_len = body
                    .split("\"t\":[")
                    .nth(1)
                    .and_then(|s| s.split(']').next())
                    .map_or(0, |s| if s.is_empty() { 0 } else { s.matches(',').count() + 1 });
                most = most.max(t_len);
            }
        }
        println!(
            "series over {label}: {} requests, p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms; at most {most} points per chart",
            times.len(),
            pct(times.clone(), 0.5),
            pct(times.clone(), 0.95),
            pct(times, 1.0)
        );
    }
    let mut times = Vec::new();
    for _ in 0..rounds.min(10) {
        let t = Instant::now();
        let (code, body) = get(addr, "/api/hosts")?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        if code != 200 {
            bail!("/api/hosts: {body}");
        }
    }
    println!(
        "/api/hosts (the status rows alone), {} hosts: p50 {:.1} ms, p95 {:.1} ms",
        hosts + 1,
        pct(times.clone(), 0.5),
        pct(times, 0.95)
    );
    let mut times = Vec::new();
    for _ in 0..rounds.min(10) {
        let t = Instant::now();
        let (code, body) = get(addr, "/")?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        if code != 200 || body.matches("<tr class=\"host\"").count() != hosts as usize + 1 {
            bail!("fleet page: {code}, {} rows", body.matches("<tr class=\"host\"").count());
        }
    }
    println!(
        "fleet page, {} hosts: {} requests, p50 {:.1} ms, p95 {:.1} ms",
        hosts + 1,
        times.len(),
        pct(times.clone(), 0.5),
        pct(times, 0.95)
    );
    // BENCH_WEB_KEEP=1 keeps the database for a look with sqlite3 (EXPLAIN QUERY PLAN).
    if std::env::var_os("BENCH_WEB_KEEP").is_some() {
        println!("database kept: {}", dir.keep().join("data").join("vigil.db").display());
    }
    Ok(())
}
