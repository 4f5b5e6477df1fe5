//! Smoke run of the fleet load generator (`vigil-loadgen`, issue 7): a few simulated agents over real SSH against
//! the real `vigil serve`, for a couple of seconds, as fast as acks allow ("vitals") and at a set rate ("full").
//! Checks that every agent connects, reports are acked without errors, the figures add up, and the database holds
//! exactly the rows the generator counts per report (counted in the database, table by table). Keeps the benchmark's
//! tool from rotting. The same against PostgreSQL (issue 17): the generator's own durable cluster
//! (`vigil-loadgen postgres`), agents registered there, serve storing there, and the cluster gone once released.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use vigil_tests::{Proc, TestDir, bin, free_port, wait_until};

const AGENTS: usize = 6;

fn loadgen(args: &[&str]) -> Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil-loadgen")).args(args).output().context("running vigil-loadgen")?;
    ensure!(
        out.status.success(),
        "vigil-loadgen {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The JSON summary (last line) of a `vigil-loadgen run`.
fn run(dir: &str, extra: &[&str]) -> Result<serde_json::Value> {
    let agents = AGENTS.to_string();
    let mut args = vec!["run", "--dir", dir, "--agents", &agents, "--warmup", "0.5", "--duration", "2"];
    args.extend_from_slice(extra);
    let out = loadgen(&args)?;
    ensure!(out.starts_with(&format!("READY {AGENTS}\n")), "{out}");
    serde_json::from_str(out.lines().last().context("no summary")?).with_context(|| out.clone())
}

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

/// Every table that holds a row per statistic of a report, beside `reports` itself.
const STAT_TABLES: [&str; 9] =
    ["system_details", "sessions", "cpu", "memory", "swap", "partitions", "disk_usage", "network", "security_events"];

/// The reports of `job` in the database, and the rows they became: their `reports` rows plus every statistics row
/// that points at one of them.
fn db_rows(db: &rusqlite::Connection, job: &str) -> Result<(f64, f64)> {
    let count = |sql: &str| -> Result<f64> { Ok(db.query_row(sql, [job], |r| r.get::<_, i64>(0))? as f64) };
    let reports = count("SELECT count(*) FROM reports WHERE job = ?1")?;
    let mut rows = reports;
    for table in STAT_TABLES {
        rows +=
            count(&format!("SELECT count(*) FROM {table} t JOIN reports r ON r.id = t.report_id WHERE r.job = ?1"))?;
    }
    Ok((reports, rows))
}

#[test]
fn the_load_generator_drives_a_real_server_over_ssh() -> Result<()> {
    let work = TestDir::new("loadgen")?;
    let dir = work.path().display().to_string();
    let port = free_port();
    let setup = loadgen(&["setup", "--dir", &dir, "--agents", &AGENTS.to_string(), "--port", &port.to_string()])?;
    ensure!(setup.contains("SHA256:"), "{setup}");

    let mut cmd = Command::new(bin("vigil"));
    cmd.arg("serve")
        .arg("--clients")
        .arg(work.join("clients.xml"))
        .arg("--jobs")
        .arg(work.join("jobs.toml"))
        .env("VIGIL_LOG", "info,russh=warn");
    let mut serve = Proc::spawn(cmd, work.path(), "serve")?;
    ensure!(
        wait_until(Duration::from_secs(15), || serve.stdout().contains("listening on")),
        "serve did not start\n{}",
        serve.logs()
    );
    let pid = serve.pid().to_string();

    let vitals = run(&dir, &["--mode", "vitals", "--window", "8", "--server-pid", &pid])?;
    ensure!(num(&vitals, "connected") == AGENTS as f64 && num(&vitals, "errors") == 0.0, "{vitals}");
    ensure!(num(&vitals, "acked") > 50.0, "too few acks: {vitals}");
    ensure!(num(&vitals, "p50_ms") > 0.0 && num(&vitals, "p99_ms") >= num(&vitals, "p50_ms"), "{vitals}");
    ensure!(num(&vitals, "max_ms") >= num(&vitals, "p99_ms"), "{vitals}");
    ensure!(num(&vitals, "server_rss_kib") > 0.0 && num(&vitals, "server_cpu") > 0.0, "{vitals}");

    // 30 reports/s for 2 s: about 60 acks, never more than offered.
    let full = run(&dir, &["--mode", "full", "--rate", "30"])?;
    ensure!(num(&full, "errors") == 0.0, "{full}");
    let acked = num(&full, "acked");
    ensure!((40.0..=70.0).contains(&acked), "rate 30/s for 2 s gave {acked} acks: {full}");

    serve.signal(vigil_tests::SIGTERM)?;
    ensure!(serve.wait_exit(Duration::from_secs(20))?.success(), "serve exit\n{}", serve.logs());
    ensure!(serve.stderr().contains("bad_tags=0"), "{}", serve.logs());

    // Every stored report has exactly the rows the generator counts for its shape.
    let db = rusqlite::Connection::open(work.join("data/vigil.db"))?;
    let q = |sql: &str| -> Result<f64> { Ok(db.query_row(sql, [], |r| r.get::<_, i64>(0))? as f64) };
    let reports = q("SELECT count(*) FROM reports")?;
    let full_reports = q("SELECT count(*) FROM reports WHERE job = 'full'")?;
    ensure!(reports >= num(&vitals, "acked") + acked, "{reports} stored, fewer than acked");
    ensure!(full_reports >= acked, "{full_reports} full reports stored, {acked} acked");
    ensure!(q("SELECT count(*) FROM cpu")? == reports, "cpu rows");
    ensure!(q("SELECT count(*) FROM network")? == 10.0 * full_reports, "network rows");
    ensure!(q("SELECT count(*) FROM security_events")? == 2.0 * full_reports, "event rows");
    ensure!(q("SELECT count(DISTINCT host_id) FROM reports")? == AGENTS as f64, "every agent reported");

    // The generator's row figure (rows per report times acked reports) against the rows the database really holds:
    // every statistics table counted, per stored report of each shape.
    for (summary, job, per_report) in [(&vitals, "vitals", 4.0), (&full, "full", 39.0)] {
        let (stored, rows) = db_rows(&db, job)?;
        ensure!(stored >= num(summary, "acked") && stored > 0.0, "{job}: {stored} stored: {summary}");
        ensure!(rows == per_report * stored, "{job}: {rows} rows in the database for {stored} reports");
        ensure!(
            num(summary, "rows") == rows / stored * num(summary, "acked"),
            "{job}: the generator counts {} rows for {} acks, the database {} per report",
            num(summary, "rows"),
            num(summary, "acked"),
            rows / stored
        );
    }
    Ok(())
}

/// `sql` through psql on the database at `url`, unaligned output.
fn psql(url: &str, sql: &str) -> Result<String> {
    let psql = &vigil_testkit::programs()?.psql;
    let out = Command::new(psql).args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", url, "-c", sql]).output()?;
    ensure!(out.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn the_load_generator_drives_a_server_storing_into_postgresql() -> Result<()> {
    let work = TestDir::new("loadgen-pg")?;
    let dir = work.path().display().to_string();
    // The benchmark's cluster: held while our end of its stdin is open.
    let mut holder = Command::new(env!("CARGO_BIN_EXE_vigil-loadgen"))
        .arg("postgres")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting vigil-loadgen postgres")?;
    let mut ready = String::new();
    BufReader::new(holder.stdout.take().context("stdout")?).read_line(&mut ready)?;
    let fields: Vec<&str> = ready.split_whitespace().collect();
    ensure!(fields.len() == 4 && fields[0] == "READY", "{ready:?}");
    let (admin, pg_pid, pg_dir) = (fields[1].to_owned(), fields[2].to_owned(), std::path::PathBuf::from(fields[3]));
    ensure!(admin.starts_with("postgres://vigil@127.0.0.1:") && admin.ends_with("/postgres"), "{admin}");
    ensure!(psql(&admin, "SHOW fsync")? == "on" && psql(&admin, "SHOW synchronous_commit")? == "on", "not durable");
    psql(&admin, "CREATE DATABASE vigil")?;
    let url = admin.replace("/postgres", "/vigil");

    let port = free_port().to_string();
    let agents = AGENTS.to_string();
    loadgen(&["setup", "--dir", &dir, "--agents", &agents, "--port", &port, "--database", &url])?;
    ensure!(!work.join("data/vigil.db").exists(), "setup wrote a SQLite database");
    ensure!(psql(&url, "SELECT count(*) FROM agents")? == agents, "agents not registered in PostgreSQL");

    let mut cmd = Command::new(bin("vigil"));
    cmd.arg("serve").arg("--clients").arg(work.join("clients.xml")).arg("--jobs").arg(work.join("jobs.toml"));
    cmd.env("VIGIL_LOG", "info,russh=warn");
    let mut serve = Proc::spawn(cmd, work.path(), "serve")?;
    ensure!(
        wait_until(Duration::from_secs(30), || serve.stdout().contains("listening on")),
        "serve did not start\n{}",
        serve.logs()
    );
    let pid = serve.pid().to_string();
    let vitals = run(&dir, &["--mode", "vitals", "--window", "8", "--server-pid", &pid, "--db-pid", &pg_pid])?;
    ensure!(num(&vitals, "connected") == AGENTS as f64 && num(&vitals, "errors") == 0.0, "{vitals}");
    ensure!(num(&vitals, "acked") > 20.0, "too few acks: {vitals}");
    ensure!(num(&vitals, "db_cpu") > 0.0 && num(&vitals, "db_pss_kib") > 0.0, "no PostgreSQL figures: {vitals}");
    serve.signal(vigil_tests::SIGTERM)?;
    ensure!(serve.wait_exit(Duration::from_secs(20))?.success(), "serve exit\n{}", serve.logs());

    let reports: f64 = psql(&url, "SELECT count(*) FROM reports")?.parse()?;
    ensure!(reports >= num(&vitals, "acked"), "{reports} stored in PostgreSQL, {} acked", num(&vitals, "acked"));
    for table in ["cpu", "memory", "swap"] {
        ensure!(psql(&url, &format!("SELECT count(*) FROM {table}"))?.parse::<f64>()? == reports, "{table} rows");
    }

    // Released: the cluster is stopped by PID and its directory removed.
    drop(holder.stdin.take());
    ensure!(holder.wait()?.success(), "vigil-loadgen postgres failed");
    ensure!(!pg_dir.exists(), "{} left behind", pg_dir.display());
    ensure!(!std::path::Path::new(&format!("/proc/{pg_pid}")).exists(), "postmaster {pg_pid} still runs");
    Ok(())
}
