//! SQLite without the server: the raw insert ceiling of this machine on vigil's real schema (fleet-shaped: many
//! hosts interleaved, the server's statements and index shape), the same through the store's `insert_reports`, and
//! a generated history database for timing `vigil status` (1,000 hosts × N days, written straight into the schema).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use rusqlite::{Connection, params};
use serde::Serialize;
use vigil_server::store::{Incoming, Store};

use super::setup::{host_ip, host_name};
use vigil_tests::reports::{Shape, report, rows_of};

/// Rows written and how fast.
#[derive(Debug, Clone, Serialize)]
pub struct Inserted {
    pub what: String,
    pub hosts: usize,
    pub reports: u64,
    pub rows: u64,
    pub per_txn_reports: usize,
    pub secs: f64,
    pub rows_per_s: f64,
    pub reports_per_s: f64,
    pub db_mib: f64,
}

impl Inserted {
    /// The figures of a load that wrote `reports` reports as `rows` rows into the database at `path` in `took`.
    fn measured(
        what: String,
        hosts: usize,
        reports: u64,
        rows: u64,
        per_txn_reports: usize,
        took: std::time::Duration,
        path: &Path,
    ) -> Self {
        let secs = took.as_secs_f64();
        Self {
            what,
            hosts,
            reports,
            rows,
            per_txn_reports,
            secs,
            rows_per_s: rows as f64 / secs,
            reports_per_s: reports as f64 / secs,
            db_mib: file_mib(path),
        }
    }
}

fn file_mib(path: &Path) -> f64 {
    let mut total = 0u64;
    for side in ["", "-wal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(side);
        total += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
    }
    total as f64 / (1024.0 * 1024.0)
}

/// Creates the schema through the store (migrations), and one `hosts` row per host.
fn fresh_db(path: &Path, hosts: usize) -> Result<Connection> {
    for side in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(side);
        let _ = std::fs::remove_file(&p);
    }
    drop(Store::open(path).context("creating the schema")?);
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -32_768)?;
    let tx = conn.transaction()?;
    {
        let mut st = tx.prepare("INSERT INTO hosts (id, name, ip) VALUES (?1, ?2, ?3)")?;
        for h in 0..hosts {
            st.execute(params![h as i64 + 1, host_name(h), host_ip(h)])?;
        }
    }
    tx.commit()?;
    Ok(conn)
}

/// The raw ceiling: vitals-shaped reports (a `reports` row, then cpu, memory and swap rows) from `hosts` hosts
/// interleaved (host 1..N report 1, then host 1..N report 2, ...), with the server's SQL, the server's pragmas (WAL,
/// synchronous=NORMAL, 32 MiB cache) and `per_txn` reports per transaction.
pub fn ceiling_raw(path: &Path, hosts: usize, reports: u64, per_txn: usize) -> Result<Inserted> {
    let mut conn = fresh_db(path, hosts)?;
    let cores = serde_json::to_string(&[12.5f32; 8])?;
    let base = 1_700_000_000_000i64;
    let t = Instant::now();
    let mut done = 0u64;
    while done < reports {
        let tx = conn.transaction()?;
        {
            let mut rep = tx.prepare_cached(
                "INSERT INTO reports (agent_id, seq, host_id, client_ip, job, collected_at_ms, received_at_ms,
                                      clock_offset_ms, dropped)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT (agent_id, seq) DO NOTHING
                 RETURNING id",
            )?;
            let mut cpu = tx.prepare_cached(
                "INSERT INTO cpu (host_id, client_ip, report_id, ts, total_pct, per_core_pct, load1, load5, load15)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut mem = tx.prepare_cached(
                "INSERT INTO memory (host_id, client_ip, report_id, ts, total, used, available, free, used_pct)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut swap = tx.prepare_cached(
                "INSERT INTO swap (host_id, client_ip, report_id, ts, total, used, free, used_pct)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for _ in 0..per_txn {
                if done >= reports {
                    break;
                }
                let h = (done % hosts as u64) as usize;
                let seq = done / hosts as u64 + 1;
                let host = h as i64 + 1;
                let ip = host_ip(h);
                let ts = base + seq as i64 * 10_000 + h as i64;
                let agent = host_name(h);
                let rid: i64 =
                    rep.query_row(params![agent, seq as i64, host, ip, "vitals", ts, ts + 5, 5, 0], |r| r.get(0))?;
                cpu.execute(params![host, ip, rid, ts, 12.5, cores, 0.5, 0.4, 0.3])?;
                mem.execute(params![host, ip, rid, ts, 16i64 << 30, 8i64 << 30, 8i64 << 30, 8i64 << 30, 50.0])?;
                swap.execute(params![host, ip, rid, ts, 4i64 << 30, 1i64 << 30, 3i64 << 30, 25.0])?;
                done += 1;
            }
        }
        tx.commit()?;
    }
    Ok(Inserted::measured("raw SQL, vitals rows".into(), hosts, done, done * 4, per_txn, t.elapsed(), path))
}

/// The store's own ceiling: `Store::insert_reports` on decoded reports of `shape`, fleet-interleaved, `batch` per
/// transaction (the ingest writer commits up to 1,024): no SSH, no envelopes, no JSON.
pub fn ceiling_store(path: &Path, hosts: usize, reports: u64, batch: usize, shape: Shape) -> Result<Inserted> {
    drop(fresh_db(path, 0)?);
    let mut store = Store::open(path)?;
    let base = 1_700_000_000_000i64;
    let names: Vec<String> = (0..hosts).map(host_name).collect();
    let ips: Vec<String> = (0..hosts).map(host_ip).collect();
    let make = |i: u64| {
        let h = (i % hosts as u64) as usize;
        let seq = i / hosts as u64 + 1;
        let ts = base + seq as i64 * 10_000 + h as i64;
        Incoming {
            agent_id: names[h].clone(),
            host: names[h].clone(),
            ip: ips[h].clone(),
            received_at_ms: ts + 5,
            report: report(shape, h, seq, ts),
        }
    };
    let per_report = rows_of(&make(0).report);
    let t = Instant::now();
    let mut done = 0u64;
    while done < reports {
        let n = (batch as u64).min(reports - done);
        let items: Vec<Incoming> = (done..done + n).map(make).collect();
        store.insert_reports(&items)?;
        done += n;
    }
    let what = format!("Store::insert_reports, {shape:?}").to_lowercase();
    Ok(Inserted::measured(what, hosts, done, done * per_report, batch, t.elapsed(), path))
}

/// A history database for `vigil status`: `hosts` hosts with `days` days of vitals reports every `vitals_s`
/// seconds (reports, cpu, memory, swap rows) and disk reports every `disks_s` seconds (a reports row and two
/// disk_usage rows), ending now. Written host by host in time order with journaling off (a one-off bulk load), then
/// switched to WAL as the server runs it. Also writes clients.xml and jobs.toml for those hosts into `dir`.
pub fn history(dir: &Path, hosts: usize, days: u32, vitals_s: u32, disks_s: u32) -> Result<Inserted> {
    use vigil_tests::fleet::{ClientEntry, clients_xml};
    std::fs::create_dir_all(dir.join("data"))?;
    let entries: Vec<ClientEntry> = (0..hosts).map(|i| ClientEntry::enrolled(&host_name(i), host_ip(i))).collect();
    std::fs::write(dir.join("clients.xml"), clients_xml(&entries))?;
    std::fs::write(
        dir.join("jobs.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"{}\"\nretention_days = 31\n\n[[job]]\nname = \
             \"vitals\"\ncollectors = [\"cpu\", \"memory\", \"swap\"]\ninterval = \"{vitals_s}s\"\n\n[[job]]\nname \
             = \"disks\"\ncollectors = [\"disk_usage\"]\ninterval = \"{disks_s}s\"\n",
            dir.join("data").display()
        ),
    )?;
    let path = dir.join("data").join("vigil.db");
    let mut conn = fresh_db(&path, hosts)?;
    conn.pragma_update(None, "journal_mode", "OFF")?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.pragma_update(None, "cache_size", -262_144)?;
    let now = vigil_server::store::now_ms();
    let span_ms = i64::from(days) * 86_400_000;
    let vitals_ms = i64::from(vitals_s) * 1000;
    let disks_every = (disks_s / vitals_s.max(1)).max(1) as u64;
    let cores = serde_json::to_string(&[12.5f32; 8])?;
    let t = Instant::now();
    let (mut reports, mut rows) = (0u64, 0u64);
    for h in 0..hosts {
        let host = h as i64 + 1;
        let ip = host_ip(h);
        let agent = host_name(h);
        let tx = conn.transaction()?;
        {
            let mut rep = tx.prepare_cached(
                "INSERT INTO reports (agent_id, seq, host_id, client_ip, job, collected_at_ms, received_at_ms,
                                      clock_offset_ms, dropped) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 0)",
            )?;
            let mut cpu = tx.prepare_cached(
                "INSERT INTO cpu (host_id, client_ip, report_id, ts, total_pct, per_core_pct, load1, load5, load15)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0.5, 0.4, 0.3)",
            )?;
            let mut mem = tx.prepare_cached(
                "INSERT INTO memory (host_id, client_ip, report_id, ts, total, used, available, free, used_pct)
                 VALUES (?1, ?2, ?3, ?4, 17179869184, ?5, ?6, ?6, ?7)",
            )?;
            let mut swap = tx.prepare_cached(
                "INSERT INTO swap (host_id, client_ip, report_id, ts, total, used, free, used_pct)
                 VALUES (?1, ?2, ?3, ?4, 4294967296, 1073741824, 3221225472, 25.0)",
            )?;
            let mut disk = tx.prepare_cached(
                "INSERT INTO disk_usage (host_id, client_ip, report_id, ts, mount_point, total, used, free, used_pct,
                                         inodes_total, inodes_used)
                 VALUES (?1, ?2, ?3, ?4, ?5, 536870912000, ?6, ?7, ?8, 32000000, 120000)",
            )?;
            let mut seq = 0i64;
            let mut ts = now - span_ms;
            let mut tick = 0u64;
            while ts <= now {
                seq += 1;
                let pct = ((h as u64 * 7 + tick) % 100) as f64;
                rep.execute(params![agent, seq, host, ip, "vitals", ts, ts + 3, 3])?;
                let rid = tx.last_insert_rowid();
                cpu.execute(params![host, ip, rid, ts, pct, cores])?;
                let used = (16i64 << 30) / 100 * pct as i64;
                mem.execute(params![host, ip, rid, ts, used, (16i64 << 30) - used, pct])?;
                swap.execute(params![host, ip, rid, ts])?;
                reports += 1;
                rows += 4;
                if tick.is_multiple_of(disks_every) {
                    seq += 1;
                    rep.execute(params![agent, seq, host, ip, "disks", ts, ts + 3, 3])?;
                    let rid = tx.last_insert_rowid();
                    for (m, p) in [("/", 40.0), ("/data", pct)] {
                        let used = (500i64 << 30) / 100 * p as i64;
                        disk.execute(params![host, ip, rid, ts, m, used, (500i64 << 30) - used, p])?;
                    }
                    reports += 1;
                    rows += 3;
                }
                tick += 1;
                ts += vitals_ms;
            }
        }
        tx.commit()?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch("ANALYZE")?;
    drop(conn);
    let what = format!("history {hosts} hosts x {days} d, vitals every {vitals_s} s, disks every {disks_s} s");
    let per_txn = (reports / hosts.max(1) as u64) as usize;
    Ok(Inserted::measured(what, hosts, reports, rows, per_txn, t.elapsed(), &path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(path: &Path, table: &str) -> i64 {
        let c = Connection::open(path).unwrap();
        c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn the_raw_ceiling_writes_what_it_counts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.db");
        let r = ceiling_raw(&p, 10, 95, 20).unwrap();
        assert_eq!(r.rows, 380);
        assert_eq!(count(&p, "reports"), 95);
        assert_eq!(count(&p, "swap"), 95);
        assert_eq!(count(&p, "hosts"), 10);
    }

    #[test]
    fn the_store_ceiling_writes_what_it_counts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.db");
        let r = ceiling_store(&p, 7, 30, 8, Shape::Full).unwrap();
        assert_eq!(r.reports, 30);
        assert_eq!(count(&p, "reports"), 30);
        assert_eq!(count(&p, "network"), 300);
    }

    #[test]
    fn history_spans_the_days_and_status_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let r = history(dir.path(), 3, 1, 3600, 7200).unwrap();
        let db = dir.path().join("data/vigil.db");
        // 25 hourly vitals reports per host (both ends included), a disks report every other one.
        assert_eq!(count(&db, "cpu"), 3 * 25);
        assert_eq!(count(&db, "disk_usage"), 3 * 13 * 2);
        assert_eq!(r.rows, (count(&db, "cpu") * 4 + count(&db, "disk_usage") / 2 * 3) as u64);
        let store = Store::open_readonly(&db).unwrap();
        let mode: String = Connection::open(&db).unwrap().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        drop(store);
    }
}
