//! `vigil-loadgen`: the fleet-scale load generator and SQLite measurements of the ingest benchmark
//! (bench/run-ingest.sh runs it; BENCHMARKS.md "Ingest at fleet scale" quotes it).
//!
//! ```text
//! vigil-loadgen setup   --dir DIR --agents N --port P [--database postgres://USER@127.0.0.1:PORT/DB]
//! vigil-loadgen run     --dir DIR --agents N [--mode vitals|full|idle] [--rate R] [--window W]
//!                       [--warmup S] [--duration S] [--connect C] [--server-pid PID] [--db-pid PID]
//! vigil-loadgen postgres [--settings name=value,...]
//! vigil-loadgen ceiling --db FILE [--hosts H] [--reports R] [--txn T] [--store vitals|full]
//! vigil-loadgen history --dir DIR [--hosts H] [--days D] [--vitals-s S] [--disks-s S]
//! ```
//!
//! `run` connects N agents of a `setup` fleet to the `vigil serve` of that fleet's jobs.toml, prints `READY <n>` on
//! stdout once all are connected, and at the end one JSON line (`drive::Summary`). `ceiling` and `history` print one
//! JSON line (`sql::Inserted`). `postgres` starts a durable PostgreSQL cluster for the PostgreSQL runs, prints
//! `READY <url> <postmaster pid> <dir>` and holds it until SIGTERM, SIGINT or the end of stdin (`pg::hold_cluster`).

#[path = "../loadgen/mod.rs"]
mod loadgen;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use loadgen::drive::{RunOpts, run};
use loadgen::{pg, setup, sql};
use vigil_tests::reports::Shape;

/// `--key value` options after the subcommand.
#[derive(Debug, Default)]
struct Args {
    map: HashMap<String, String>,
}

impl Args {
    fn parse(args: &[String]) -> Result<Self> {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let Some(key) = k.strip_prefix("--") else { bail!("unexpected argument {k:?}") };
            let v = it.next().with_context(|| format!("--{key} needs a value"))?;
            map.insert(key.to_owned(), v.clone());
        }
        Ok(Self { map })
    }

    fn get<T: std::str::FromStr>(&self, key: &str, default: Option<T>) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.map.get(key) {
            Some(v) => v.parse().map_err(|e| anyhow::anyhow!("--{key} {v:?}: {e}")),
            None => default.with_context(|| format!("--{key} is required")),
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        self.get::<String>(key, None).map(PathBuf::from)
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

fn main_inner() -> Result<()> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = argv.split_first() else {
        bail!("usage: vigil-loadgen setup|run|ceiling|history|postgres ...")
    };
    let a = Args::parse(rest)?;
    match cmd.as_str() {
        "setup" => {
            let database = a.map.get("database").map(String::as_str);
            let f = setup::setup(&a.path("dir")?, a.get("agents", None)?, a.get("port", None)?, database)?;
            println!("{} {}", f.dir.display(), f.fingerprint);
        }
        "run" => {
            let dir = a.path("dir")?;
            let n: usize = a.get("agents", None)?;
            let mode: String = a.get("mode", Some("vitals".into()))?;
            let (shape, idle) = match mode.as_str() {
                "idle" => (Shape::Vitals, true),
                m => (m.parse::<Shape>().map_err(anyhow::Error::msg)?, false),
            };
            let opts = RunOpts {
                addr: setup::endpoint(&dir)?,
                fingerprint: setup::fingerprint(&dir)?,
                shape,
                rate: a.get("rate", Some(0.0))?,
                window: a.get("window", Some(32))?,
                warmup: Duration::from_secs_f64(a.get("warmup", Some(3.0))?),
                duration: Duration::from_secs_f64(a.get("duration", Some(10.0))?),
                connect_concurrency: a.get("connect", Some(32))?,
                idle,
                server_pid: a.map.get("server-pid").map(|p| p.parse()).transpose().context("--server-pid")?,
                db_pid: a.map.get("db-pid").map(|p| p.parse()).transpose().context("--db-pid")?,
            };
            let agents = setup::load_agents(&dir, n)?;
            let workers: usize = a.get("threads", Some(2))?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .context("starting the runtime")?;
            let summary = rt.block_on(run(agents, opts, |connected| {
                println!("READY {connected}");
                let _ = std::io::stdout().flush();
            }))?;
            print_json(&summary)?;
        }
        "ceiling" => {
            let db = a.path("db")?;
            let hosts = a.get("hosts", Some(1000))?;
            let reports = a.get("reports", Some(250_000))?;
            let txn = a.get("txn", Some(2500))?;
            let r = match a.map.get("store") {
                Some(shape) => {
                    sql::ceiling_store(&db, hosts, reports, txn, shape.parse().map_err(anyhow::Error::msg)?)?
                }
                None => sql::ceiling_raw(&db, hosts, reports, txn)?,
            };
            print_json(&r)?;
        }
        "history" => {
            let r = sql::history(
                &a.path("dir")?,
                a.get("hosts", Some(1000))?,
                a.get("days", Some(1))?,
                a.get("vitals-s", Some(10))?,
                a.get("disks-s", Some(60))?,
            )?;
            print_json(&r)?;
        }
        "postgres" => pg::hold_cluster(pg::parse_settings(a.map.get("settings").map_or("", String::as_str))?)?,
        other => bail!("unknown command {other:?} (setup, run, ceiling, history, postgres)"),
    }
    Ok(())
}

fn main() -> ExitCode {
    match main_inner() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_with_defaults_and_errors() {
        let a = Args::parse(&["--agents".into(), "12".into(), "--mode".into(), "full".into()]).unwrap();
        assert_eq!(a.get::<usize>("agents", None).unwrap(), 12);
        assert_eq!(a.get::<usize>("window", Some(32)).unwrap(), 32);
        assert!(a.get::<usize>("port", None).is_err());
        assert!(Args::parse(&["--agents".into()]).is_err());
        assert!(Args::parse(&["agents".into(), "1".into()]).is_err());
        let bad = Args::parse(&["--agents".into(), "x".into()]).unwrap();
        assert!(bad.get::<usize>("agents", None).is_err());
    }
}
