//! The PostgreSQL side of the ingest benchmark (issue 17): a durable cluster (fsync, synchronous_commit and
//! full_page_writes on, as production runs) started through vigil-testkit on a free loopback port and held for the
//! length of the benchmark, and the CPU time of a postmaster together with its backends.

use std::io::Write;

use anyhow::{Context, Result, bail};
use vigil_testkit::{Options, Postgres};

/// Connections the benchmark cluster allows: serve's pool and the script's `psql` calls need far fewer than this.
const MAX_CONNECTIONS: u32 = 100;

/// Clock ticks per second of /proc times (USER_HZ, 100 on Linux for every architecture vigil targets).
const USER_HZ: f64 = 100.0;

/// `name=value,name=value` as server settings (`-c name=value`), in order.
pub fn parse_settings(text: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some((name, value)) = item.split_once('=') else { bail!("setting {item:?} is not name=value") };
        let valid = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !valid(name.trim()) || !valid(value.trim()) {
            bail!("setting {item:?}: name and value may hold letters, digits, '_', '.' and '-' only");
        }
        out.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    Ok(out)
}

/// Starts a durable cluster with `settings`, prints `READY <url of database postgres> <postmaster pid> <dir>` on
/// stdout, and holds it until SIGTERM, SIGINT or the end of stdin; then stops it by PID (testkit's drop: SIGINT,
/// then SIGKILL) and removes its directory. Should this process die first, testkit's watchdog stops the cluster.
pub fn hold_cluster(settings: Vec<(String, String)>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    // Signal handlers before the cluster exists: a SIGTERM during the start then still ends in the drop below.
    let mut term = rt
        .block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) })
        .context("SIGTERM handler")?;
    let pg =
        Postgres::start_with(Options { fsync: true, max_connections: MAX_CONNECTIONS, settings, ..Options::default() })
            .context("starting PostgreSQL")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY {} {} {}", pg.url("postgres"), pg.pid(), pg.dir().display())?;
        out.flush()?;
    }
    rt.block_on(async {
        // std's stdin in a thread of its own (tokio's needs a feature the workspace does not enable).
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut sink = std::io::sink();
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut sink);
            let _ = closed_tx.send(());
        });
        let stdin_closed = async {
            let _ = closed_rx.await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            () = stdin_closed => {}
        }
    });
    let running = pg.is_running();
    drop(pg);
    if !running {
        bail!("PostgreSQL had stopped before the end of the benchmark");
    }
    Ok(())
}

/// CPU seconds (user + system) of the postmaster `pid` and every process it started: its own time, its reaped
/// children's (`cutime`/`cstime`: backends that have exited) and each live child's.
pub fn tree_cpu_s(pid: u32) -> Option<f64> {
    let mut total = stat_fields(pid).map(|f| f[11] + f[12] + f[13] + f[14])?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Some(f) = stat_fields(child)
            && f[1] as u32 == pid
        {
            total += f[11] + f[12];
        }
    }
    Some(total / USER_HZ)
}

/// The numeric fields of /proc/PID/stat after the command name (index 0 is the state, shown as 0; 1 the parent).
fn stat_fields(pid: u32) -> Option<Vec<f64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<f64> = rest.split_whitespace().map(|w| w.parse().unwrap_or(0.0)).collect();
    (f.len() > 14).then_some(f)
}

/// Summed proportional set size (`Pss` of /proc/PID/smaps_rollup: shared memory split between its users) of the
/// postmaster `pid` and its children, KiB.
pub fn tree_pss_kib(pid: u32) -> Option<u64> {
    let pss = |p: u32| -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok()?;
        text.lines().find_map(|l| l.strip_prefix("Pss:")?.trim().strip_suffix("kB")?.trim().parse().ok())
    };
    let mut total = pss(pid)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if stat_fields(child).is_some_and(|f| f[1] as u32 == pid) {
            total += pss(child).unwrap_or(0);
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_refuse_what_could_break_a_command_line() {
        let s = parse_settings("synchronous_commit=off, shared_buffers=256MB").unwrap();
        assert_eq!(s, [("synchronous_commit".into(), "off".into()), ("shared_buffers".into(), "256MB".into())]);
        assert!(parse_settings("").unwrap().is_empty());
        assert!(parse_settings("fsync").is_err());
        assert!(parse_settings("a=b c").is_err());
        assert!(parse_settings("a='x'").is_err());
    }

    #[test]
    fn a_process_tree_counts_its_children() {
        let me = std::process::id();
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert!(tree_cpu_s(me).unwrap() >= 0.0);
        let pss = tree_pss_kib(me).unwrap();
        assert!(pss > 0);
        assert!(tree_cpu_s(u32::MAX).is_none());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_held_cluster_is_durable_and_answers() {
        // The same start the benchmark's `vigil-loadgen postgres` makes, checked through psql.
        let pg = Postgres::start_with(Options { fsync: true, ..Options::default() }).unwrap();
        assert_eq!(pg.psql("postgres", "SHOW fsync").unwrap().trim(), "on");
        assert_eq!(pg.psql("postgres", "SHOW synchronous_commit").unwrap().trim(), "on");
        assert!(tree_cpu_s(pg.pid()).unwrap() > 0.0);
        assert!(tree_pss_kib(pg.pid()).unwrap() > 0);
    }
}
