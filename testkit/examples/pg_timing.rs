//! Times the testkit's PostgreSQL (BENCHMARKS.md, "Test PostgreSQL"): `Postgres::start`, `fresh_database`, one
//! `psql` round trip and the drop, for test clusters (fsync off) and a durable one, on the directories `place` picks.
//! Run: `cargo run -p vigil-testkit --example pg_timing` (as root or not).

use std::io;
use std::time::{Duration, Instant};

use vigil_testkit::{Options, Postgres};

fn main() -> io::Result<()> {
    println!("| cluster | directory | start | fresh_database (mean of 10) | psql SELECT 1 (mean of 10) | drop |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for fsync in [false, false, false, true] {
        let t = Instant::now();
        let pg = Postgres::start_with(Options { fsync, ..Options::default() })?;
        let start = t.elapsed();
        let t = Instant::now();
        for _ in 0..10 {
            pg.fresh_database()?;
        }
        let fresh = t.elapsed() / 10;
        let t = Instant::now();
        for _ in 0..10 {
            pg.psql("postgres", "SELECT 1")?;
        }
        let psql = t.elapsed() / 10;
        let dir = pg.dir().parent().map(|p| p.display().to_string()).unwrap_or_default();
        let t = Instant::now();
        drop(pg);
        let stop = t.elapsed();
        let kind = if fsync { "durable (fsync on)" } else { "test (fsync off)" };
        println!("| {kind} | {dir} | {} | {} | {} | {} |", ms(start), ms(fresh), ms(psql), ms(stop));
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}
