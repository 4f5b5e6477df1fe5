//! The real `vigil-agent` against a real `vigil serve` over SSH on 127.0.0.1 (issue 4's acceptance).
//!
//! Each test builds its own fleet in a [`Workdir`]: one host `h1` in clients.xml (an SSH entry; an enrolled agent
//! only needs its host to exist), jobs.toml with short intervals, `vigil enroll h1 --dir <work>/agent`, then
//! `vigil serve` and `vigil-agent --config <work>/agent/agent.toml` as [`Proc`]s (logs in the work directory,
//! `VIGIL_LOG=debug`). What the agent delivered is read back from the server's SQLite database; what it holds
//! back is read from its spool directory (`<seq:020>-<carried drops>.env` files and a `state` file holding
//! `next_seq pending_drops`).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use rusqlite::{Connection, params};
use vigil_tests::fixtures::{utmp_record, write_utmp};
use vigil_tests::{Proc, SIGTERM, Workdir, bin, free_port, wait_for, wait_until};

/// The host every test enrolls.
const HOST: &str = "h1";
/// Patience for things that take a few intervals.
const T: Duration = Duration::from_secs(30);

/// A stored security event: kind, user, event source, log path, event time, message.
type EventRow = (String, Option<String>, Option<String>, Option<String>, i64, String);

/// One `[[job]]`: name, collectors, interval.
type JobSpec<'a> = (&'a str, &'a [&'a str], &'a str);

const ALL: &[&str] =
    &["system", "users", "cpu", "memory", "swap", "partitions", "disk_usage", "network", "security_events"];

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A jobs.toml listening on 127.0.0.1:`port` with data in `data_dir` and these jobs (no jitter).
fn jobs_text(port: u16, data_dir: &Path, jobs: &[JobSpec]) -> String {
    let mut out = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nretention_days = 30\n",
        data_dir.display()
    );
    for (name, collectors, interval) in jobs {
        let list: Vec<String> = collectors.iter().map(|c| format!("\"{c}\"")).collect();
        out.push_str(&format!(
            "\n[[job]]\nname = \"{name}\"\ncollectors = [{}]\ninterval = \"{interval}\"\n",
            list.join(", ")
        ));
    }
    out
}

/// One test's fleet: the work directory, the endpoint port, the enrolled agent.
struct Rig {
    work: Workdir,
    port: u16,
    agent_id: String,
    serve_runs: usize,
}

impl Rig {
    /// clients.xml with host `h1`, jobs.toml with `jobs`; nothing running, nothing enrolled yet.
    fn new(jobs: &[JobSpec]) -> Result<Self> {
        let work = Workdir::new()?;
        work.write_clients_text(&format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clients>\n  \
             <client name=\"{HOST}\" ip=\"127.0.0.1\" username=\"root\" password=\"unused\"/>\n</clients>\n"
        ))?;
        let port = free_port();
        work.write_jobs(&jobs_text(port, &work.data_dir(), jobs))?;
        Ok(Self { work, port, agent_id: String::new(), serve_runs: 0 })
    }

    fn agent_dir(&self) -> PathBuf {
        self.work.path().join("agent")
    }

    fn agent_toml(&self) -> PathBuf {
        self.agent_dir().join("agent.toml")
    }

    fn spool_dir(&self) -> PathBuf {
        self.agent_dir().join("spool")
    }

    /// Replaces jobs.toml the way editors save: a temporary file renamed over it.
    fn rewrite_jobs(&self, jobs: &[JobSpec]) -> Result<()> {
        let tmp = self.work.path().join("jobs.toml.tmp");
        std::fs::write(&tmp, jobs_text(self.port, &self.work.data_dir(), jobs))?;
        std::fs::rename(&tmp, self.work.jobs_path()).context("renaming jobs.toml")
    }

    /// `vigil enroll h1 --dir <work>/agent EXTRA...`; keeps the printed agent id.
    fn enroll(&mut self, extra: &[&str]) -> Result<()> {
        let dir = self.agent_dir();
        let mut args = vec!["enroll", HOST, "--dir", dir.to_str().context("utf-8 path")?];
        args.extend_from_slice(extra);
        let out = self.work.vigil(&args).output().context("running vigil enroll")?;
        ensure!(
            out.status.success(),
            "vigil enroll failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        self.agent_id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(!self.agent_id.is_empty() && self.agent_toml().is_file(), "enroll wrote no agent: {out:?}");
        Ok(())
    }

    /// Applies `edit` to agent.toml's text.
    fn edit_agent_toml(&self, edit: impl FnOnce(&str) -> String) -> Result<()> {
        let text = std::fs::read_to_string(self.agent_toml())?;
        let new = edit(&text);
        ensure!(new != text, "the edit changed nothing in agent.toml:\n{text}");
        std::fs::write(self.agent_toml(), new).context("writing agent.toml")
    }

    /// Starts `vigil serve` and waits for its "listening" line. Returns it and the host-key fingerprint it printed.
    fn start_serve(&mut self) -> Result<(Proc, String)> {
        self.serve_runs += 1;
        let mut serve = self.work.spawn_vigil(&["serve"], &format!("serve{}", self.serve_runs))?;
        let up = wait_until(T, || serve.stdout().contains("listening on") || !serve.is_running());
        ensure!(up && serve.is_running(), "vigil serve did not come up\n{}", serve.logs());
        let out = serve.stdout();
        let fp = out
            .split_whitespace()
            .find(|w| w.starts_with("SHA256:"))
            .map(|w| w.trim_end_matches(',').to_owned())
            .with_context(|| format!("no fingerprint in {out:?}"))?;
        Ok((serve, fp))
    }

    /// Starts the agent (`VIGIL_LOG=debug`, stderr to `<work>/agent.stderr`).
    fn start_agent(&self) -> Result<Proc> {
        let mut cmd = Command::new(bin("vigil-agent"));
        cmd.arg("--config").arg(self.agent_toml()).env("VIGIL_LOG", "debug");
        Proc::spawn(cmd, self.work.path(), "agent")
    }

    fn db(&self) -> Result<Connection> {
        let conn = Connection::open(self.work.data_dir().join("vigil.db")).context("opening vigil.db")?;
        conn.busy_timeout(Duration::from_secs(10))?;
        Ok(conn)
    }

    /// One integer from `sql` with the agent id as `?1`.
    fn query_i64(&self, sql: &str) -> Result<i64> {
        Ok(self.db()?.query_row(sql, params![self.agent_id], |r| r.get(0))?)
    }

    /// The agent's stored report seqs, in order, duplicates kept.
    fn stored_seqs(&self) -> Result<Vec<u64>> {
        let conn = self.db()?;
        let mut stmt = conn.prepare("SELECT seq FROM reports WHERE agent_id = ?1 ORDER BY seq")?;
        let rows = stmt.query_map(params![self.agent_id], |r| r.get::<_, i64>(0))?;
        rows.map(|r| Ok(u64::try_from(r?)?)).collect()
    }

    fn stored_count(&self) -> i64 {
        self.query_i64("SELECT count(*) FROM reports WHERE agent_id = ?1").unwrap_or(-1)
    }

    /// Rows of `table` belonging to this agent's reports.
    fn rows_of(&self, table: &str) -> Result<i64> {
        self.query_i64(&format!(
            "SELECT count(*) FROM {table} t JOIN reports r ON r.id = t.report_id WHERE r.agent_id = ?1"
        ))
    }

    /// The spool's report files: (seq, carried drops).
    fn spool_files(&self) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.spool_dir()) else { return Ok(out) };
        for e in entries {
            let name = e?.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".env") else { continue };
            let (seq, carried) = stem.split_once('-').with_context(|| format!("odd spool file {name}"))?;
            out.push((seq.parse()?, carried.parse()?));
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The spool's `state`: (next seq, drops not yet reported).
    fn spool_state(&self) -> Result<(u64, u64)> {
        let text = std::fs::read_to_string(self.spool_dir().join("state")).context("reading the spool state")?;
        let mut it = text.split_whitespace().map(str::parse::<u64>);
        match (it.next(), it.next()) {
            (Some(Ok(next)), Some(Ok(pending))) => Ok((next, pending)),
            _ => bail!("unreadable spool state {text:?}"),
        }
    }

    /// Reports the agent has made so far (next seq - 1), 0 before the first.
    fn produced(&self) -> u64 {
        self.spool_state().map(|(next, _)| next.saturating_sub(1)).unwrap_or(0)
    }

    /// Everything useful when an assertion fails.
    fn dump(&self, procs: &[&Proc]) -> String {
        let mut s = format!(
            "agent {} stored {} produced {} spool {:?}\n",
            self.agent_id,
            self.stored_count(),
            self.produced(),
            self.spool_files().unwrap_or_default()
        );
        for p in procs {
            let logs = p.logs();
            // The tail is what matters; debug logs are long.
            let tail: String = logs.chars().rev().take(6000).collect::<Vec<_>>().into_iter().rev().collect();
            s.push_str(&tail);
            s.push('\n');
        }
        s
    }
}

/// Stops a process with SIGTERM (graceful) and waits for it.
fn terminate(p: &mut Proc) -> Result<()> {
    p.signal(SIGTERM)?;
    p.wait_exit(Duration::from_secs(15))?;
    Ok(())
}

/// Every collector family arrives as rows in its own table, with true values for this machine.
#[test]
fn rows_for_every_collector_family_arrive() -> Result<()> {
    let mut rig = Rig::new(&[("vitals", ALL, "1s")])?;
    let utmp = rig.work.path().join("utmp");
    write_utmp(&utmp, "alice")?;
    let auth_log = rig.work.path().join("auth.log");
    std::fs::write(&auth_log, "")?;
    // Serve first, then enroll: the running endpoint must accept an agent registered after it started.
    let (serve, _) = rig.start_serve()?;
    rig.enroll(&["--utmp", utmp.to_str().context("utf-8")?, "--auth-log", auth_log.to_str().context("utf-8")?])?;
    let agent = rig.start_agent()?;

    wait_for(T, "the first report", || rig.stored_count() >= 1).with_context(|| rig.dump(&[&agent, &serve]))?;
    // Logged after the agent started, so it is new: it must be reported.
    let line = "2026-11-26T09:14:01.118311+00:00 vm sshd[4242]: Failed password for invalid user mallory from \
                198.51.100.23 port 50522 ssh2\n";
    std::fs::OpenOptions::new().append(true).open(&auth_log)?.write_all(line.as_bytes())?;

    let tables = [
        "system_details",
        "sessions",
        "cpu",
        "memory",
        "swap",
        "partitions",
        "disk_usage",
        "network",
        "security_events",
    ];
    wait_for(T, "rows in every table", || tables.iter().all(|t| rig.rows_of(t).unwrap_or(0) > 0)).with_context(
        || {
            let counts: Vec<String> = tables.iter().map(|t| format!("{t}={:?}", rig.rows_of(t).ok())).collect();
            format!("{}\n{}", counts.join(" "), rig.dump(&[&agent, &serve]))
        },
    )?;

    let conn = rig.db()?;
    let id = &rig.agent_id;
    let one = |sql: &str| -> Result<i64> { Ok(conn.query_row(sql, params![id], |r| r.get(0))?) };
    // Every row belongs to this host.
    let elsewhere =
        one("SELECT count(*) FROM reports r LEFT JOIN hosts h ON h.id = r.host_id WHERE r.agent_id = ?1 AND \
         (h.name IS NULL OR h.name != 'h1')")?;
    ensure!(elsewhere == 0, "{elsewhere} reports not attributed to h1");

    // system: the real hostname and kernel.
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim().to_owned();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim().to_owned();
    let (h, k, cpus): (String, String, i64) = conn.query_row(
        "SELECT s.hostname, s.kernel, s.cpu_count FROM system_details s JOIN reports r ON r.id = s.report_id \
         WHERE r.agent_id = ?1 LIMIT 1",
        params![id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    ensure!(h == hostname && k == kernel, "system_details says {h}/{k}, the machine {hostname}/{kernel}");
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) as i64;
    ensure!(cpus >= nproc, "cpu_count {cpus} < {nproc}");

    // sessions: the two USER_PROCESS records of the fixture, nothing else.
    let mut stmt = conn.prepare(
        "SELECT DISTINCT s.user, s.terminal, s.remote_host, s.login_time FROM sessions s \
         JOIN reports r ON r.id = s.report_id WHERE r.agent_id = ?1 ORDER BY s.user",
    )?;
    let sessions: Vec<(String, String, Option<String>, i64)> = stmt
        .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    ensure!(
        sessions
            == vec![
                ("alice".into(), "pts/0".into(), Some("203.0.113.7".into()), 1_700_000_100),
                ("bob".into(), "tty2".into(), None, 1_700_000_200),
            ],
        "sessions: {sessions:?}"
    );

    // memory: total equals /proc/meminfo's MemTotal.
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let kib: i64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .context("MemTotal")?
        .parse()?;
    let total = one("SELECT m.total FROM memory m JOIN reports r ON r.id = m.report_id WHERE r.agent_id = ?1 LIMIT 1")?;
    ensure!(total == kib * 1024, "memory total {total} != MemTotal {kib} kB");

    // partitions and disk usage include /, network includes lo (with rates: two samples).
    let root_part =
        one("SELECT count(*) FROM partitions p JOIN reports r ON r.id = p.report_id WHERE r.agent_id = ?1 AND \
         p.mount_point = '/'")?;
    let root_usage =
        one("SELECT count(*) FROM disk_usage d JOIN reports r ON r.id = d.report_id WHERE r.agent_id = ?1 AND \
         d.mount_point = '/' AND d.total > 0")?;
    let lo = one("SELECT count(*) FROM network n JOIN reports r ON r.id = n.report_id WHERE r.agent_id = ?1 AND \
         n.name = 'lo' AND n.rx_bytes_per_s IS NOT NULL")?;
    ensure!(root_part > 0 && root_usage > 0 && lo > 0, "partitions / {root_part}, disk_usage / {root_usage}, lo {lo}");
    let cpu_ok = one("SELECT count(*) FROM cpu c JOIN reports r ON r.id = c.report_id WHERE r.agent_id = ?1 AND \
         c.total_pct BETWEEN 0 AND 100 AND json_array_length(c.per_core_pct) >= 1")?;
    ensure!(cpu_ok > 0, "no plausible cpu row");

    // security_events: the failed login appended after start, once, from our log.
    let mut stmt = conn.prepare(
        "SELECT e.kind, e.user, e.event_source, e.source, e.event_time, e.message FROM security_events e \
         JOIN reports r ON r.id = e.report_id WHERE r.agent_id = ?1",
    )?;
    let events: Vec<EventRow> = stmt
        .query_map(params![id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?
        .collect::<rusqlite::Result<_>>()?;
    ensure!(events.len() == 1, "expected exactly the one appended event: {events:?}");
    let (kind, user, from, source, time, message) = &events[0];
    ensure!(kind == "login_failed", "{kind}");
    ensure!(user.as_deref() == Some("mallory") && from.as_deref() == Some("198.51.100.23"), "{events:?}");
    ensure!(source.as_deref() == auth_log.to_str(), "source {source:?}");
    ensure!(*time == 1_795_684_441, "event_time {time}");
    ensure!(message.contains("Failed password"), "{message}");
    Ok(())
}

/// Editing jobs.toml while server and agent run changes what the agent sends within one interval.
#[test]
fn editing_jobs_toml_changes_what_the_agent_sends() -> Result<()> {
    let mut rig = Rig::new(&[("vitals", &["cpu"], "2s")])?;
    rig.enroll(&[])?;
    let (serve, _) = rig.start_serve()?;
    let agent = rig.start_agent()?;
    wait_for(T, "two cpu reports", || rig.rows_of("cpu").unwrap_or(0) >= 2)
        .with_context(|| rig.dump(&[&agent, &serve]))?;
    ensure!(rig.rows_of("memory")? == 0, "memory rows before the edit");

    // collectors [cpu] -> [memory]
    let edited_ms = now_ms();
    rig.rewrite_jobs(&[("vitals", &["memory"], "2s")])?;
    wait_for(T, "a memory report", || rig.rows_of("memory").unwrap_or(0) >= 1)
        .with_context(|| rig.dump(&[&agent, &serve]))?;
    let first_mem = rig.query_i64(
        "SELECT min(r.collected_at_ms) FROM memory m JOIN reports r ON r.id = m.report_id WHERE r.agent_id = ?1",
    )?;
    let delay = first_mem - edited_ms;
    eprintln!("first memory report {delay} ms after the edit");
    ensure!(delay <= 2_000 + 1_000, "first memory report {delay} ms after the edit: more than one 2 s interval");
    // Reports keep carrying memory, and none made after the change carries cpu.
    wait_for(T, "three memory reports", || rig.rows_of("memory").unwrap_or(0) >= 3)
        .with_context(|| rig.dump(&[&agent, &serve]))?;
    let late_cpu = rig.query_i64(&format!(
        "SELECT count(*) FROM cpu c JOIN reports r ON r.id = c.report_id WHERE r.agent_id = ?1 AND \
         r.collected_at_ms >= {first_mem}"
    ))?;
    ensure!(late_cpu == 0, "{late_cpu} cpu rows after the job changed to memory");

    // interval 2s -> 1s: the report rate doubles.
    let edited_ms = now_ms();
    rig.rewrite_jobs(&[("vitals", &["memory"], "1s")])?;
    let window_start = edited_ms + 2_000;
    let window_end = window_start + 5_000;
    wait_for(T, "reports past the window", || {
        rig.query_i64("SELECT max(collected_at_ms) FROM reports WHERE agent_id = ?1").unwrap_or(0) > window_end
    })
    .with_context(|| rig.dump(&[&agent, &serve]))?;
    let in_window = rig.query_i64(&format!(
        "SELECT count(*) FROM reports WHERE agent_id = ?1 AND collected_at_ms > {window_start} AND \
         collected_at_ms <= {window_end}"
    ))?;
    eprintln!("{in_window} reports in the 5 s window at 1 s");
    ensure!(in_window >= 4, "{in_window} reports in 5 s after changing the interval to 1 s\n{}", rig.dump(&[&agent]));
    Ok(())
}

/// The server stops for 30 s; every report made meanwhile arrives exactly once after it returns.
#[test]
fn a_30_second_outage_loses_and_duplicates_nothing() -> Result<()> {
    let mut rig = Rig::new(&[("vitals", &["cpu", "memory"], "1s")])?;
    rig.enroll(&[])?;
    let (mut serve, _) = rig.start_serve()?;
    let mut agent = rig.start_agent()?;
    wait_for(T, "three reports stored", || rig.stored_count() >= 3).with_context(|| rig.dump(&[&agent, &serve]))?;

    terminate(&mut serve)?;
    let at_stop = rig.produced();
    let log_at_stop = agent.stderr().len();
    std::thread::sleep(Duration::from_secs(30));
    // Reconnects back off exponentially (1, 2, 4, ... s with jitter): a handful of attempts, never a hot loop.
    let retries = agent.stderr().get(log_at_stop..).unwrap_or_default().matches("reconnecting later").count();
    ensure!((2..=10).contains(&retries), "{retries} reconnect attempts in 30 s");
    let during = rig.produced() - at_stop;
    ensure!(during >= 25, "only {during} reports made during a 30 s outage at 1 s\n{}", rig.dump(&[&agent]));
    let spooled = rig.spool_files()?.len();
    ensure!(spooled as u64 >= during, "{spooled} spool files for {during} unsent reports");
    ensure!(agent.is_running(), "the agent died during the outage\n{}", agent.logs());

    let (serve2, _) = rig.start_serve()?;
    let target = rig.produced();
    // Backoff may have grown to ~30 s; the drain itself is fast.
    wait_for(Duration::from_secs(90), "the backlog to drain", || {
        rig.stored_seqs().map(|s| s.last().copied().unwrap_or(0) >= target).unwrap_or(false)
            && rig.spool_files().map(|f| f.iter().all(|(seq, _)| *seq > target)).unwrap_or(false)
    })
    .with_context(|| rig.dump(&[&agent, &serve2]))?;
    wait_for(T, "the spool to empty", || rig.spool_files().map(|f| f.is_empty()).unwrap_or(false))
        .with_context(|| rig.dump(&[&agent, &serve2]))?;

    terminate(&mut agent)?;
    let (next, pending) = rig.spool_state()?;
    let seqs = rig.stored_seqs()?;
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    ensure!(unique.len() == seqs.len(), "duplicate seqs stored: {seqs:?}");
    let spool: BTreeSet<u64> = rig.spool_files()?.into_iter().map(|(s, _)| s).collect();
    let all: BTreeSet<u64> = unique.union(&spool).copied().collect();
    let expected: BTreeSet<u64> = (1..next).collect();
    ensure!(all == expected, "stored {unique:?} + spooled {spool:?} != 1..{next}");
    let max = *unique.last().context("nothing stored")?;
    ensure!(unique == (1..=max).collect(), "stored seqs are not contiguous from 1: {unique:?}");
    ensure!(max >= target, "max stored {max} < {target} made before the restart");
    ensure!(pending == 0 && rig.query_i64("SELECT sum(dropped) FROM reports WHERE agent_id = ?1")? == 0, "drops");
    // Each report's rows were stored once too (a replay must not add a second cpu row).
    eprintln!("outage: {during} made while down, {retries} retries, {} stored in all", seqs.len());
    let cpu_rows = rig.rows_of("cpu")?;
    ensure!(cpu_rows == seqs.len() as i64, "{cpu_rows} cpu rows for {} reports", seqs.len());
    Ok(())
}

/// With room for 3 reports and the server down, the oldest are dropped, and the count is reported and stored:
/// every seq is stored, still spooled, or counted as dropped.
#[test]
fn a_tiny_spool_reports_and_stores_its_drop_count() -> Result<()> {
    let mut rig = Rig::new(&[("vitals", &["memory"], "1s")])?;
    rig.enroll(&[])?;
    rig.edit_agent_toml(|t| {
        t.lines()
            .map(|l| if l.starts_with("spool_max_reports") { "spool_max_reports = 3".to_owned() } else { l.to_owned() })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    })?;
    let (mut serve, _) = rig.start_serve()?;
    let mut agent = rig.start_agent()?;
    wait_for(T, "two reports stored", || rig.stored_count() >= 2).with_context(|| rig.dump(&[&agent, &serve]))?;

    terminate(&mut serve)?;
    let at_stop = rig.produced();
    wait_for(T, "ten reports made while the server is down", || rig.produced() >= at_stop + 10)
        .with_context(|| rig.dump(&[&agent]))?;
    let spooled = rig.spool_files()?.len();
    ensure!(spooled <= 3, "{spooled} files in a spool bounded to 3");

    let (serve2, _) = rig.start_serve()?;
    wait_for(Duration::from_secs(90), "the drop count to be stored", || {
        rig.query_i64("SELECT coalesce(sum(dropped), 0) FROM reports WHERE agent_id = ?1").unwrap_or(0) > 0
    })
    .with_context(|| rig.dump(&[&agent, &serve2]))?;
    terminate(&mut agent)?;

    let (next, pending) = rig.spool_state()?;
    let stored = rig.stored_seqs()?;
    let stored_set: BTreeSet<u64> = stored.iter().copied().collect();
    ensure!(stored_set.len() == stored.len(), "duplicate seqs stored");
    let dropped_stored = rig.query_i64("SELECT coalesce(sum(dropped), 0) FROM reports WHERE agent_id = ?1")?;
    let spool = rig.spool_files()?;
    let spool_only: Vec<(u64, u64)> = spool.iter().copied().filter(|(s, _)| !stored_set.contains(s)).collect();
    let carried: u64 = spool_only.iter().map(|(_, c)| c).sum();
    let accounted = stored_set.len() as u64 + spool_only.len() as u64 + dropped_stored as u64 + carried + pending;
    ensure!(
        accounted == next - 1,
        "{} stored + {} spooled + {dropped_stored} dropped (stored) + {carried} (spooled) + {pending} pending != {} \
         made",
        stored_set.len(),
        spool_only.len(),
        next - 1
    );
    ensure!(dropped_stored >= 5, "only {dropped_stored} drops stored for >= 10 reports into a spool of 3");
    // The seqs that never arrived are exactly as many as the drops counted.
    let missing = (1..next).filter(|s| !stored_set.contains(s) && !spool.iter().any(|(x, _)| x == s)).count() as u64;
    ensure!(missing == dropped_stored as u64 + carried + pending, "{missing} seqs missing");
    ensure!(agent.stderr().contains("spool was full"), "the agent did not log the drops");
    eprintln!("tiny spool: {} made, {} stored, {dropped_stored} drops stored", next - 1, stored_set.len());
    Ok(())
}

/// A server whose host key is not the pinned one gets nothing, and the agent's log says why.
#[test]
fn a_host_key_mismatch_is_refused_and_logged() -> Result<()> {
    let mut rig = Rig::new(&[("vitals", &["cpu"], "1s")])?;
    rig.enroll(&[])?;
    let wrong = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    rig.edit_agent_toml(|t| {
        t.lines()
            .map(
                |l| {
                    if l.starts_with("server_host_key") {
                        format!("server_host_key = \"{wrong}\"")
                    } else {
                        l.to_owned()
                    }
                },
            )
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    })?;
    let (serve, real) = rig.start_serve()?;
    let agent = rig.start_agent()?;
    wait_for(T, "the mismatch in the agent's log", || agent.stderr().contains("does not match the pinned"))
        .with_context(|| rig.dump(&[&agent, &serve]))?;
    wait_for(T, "three reports made", || rig.produced() >= 3).with_context(|| rig.dump(&[&agent]))?;

    let log = agent.stderr();
    let line = log.lines().find(|l| l.contains("does not match the pinned")).context("line")?;
    ensure!(line.contains(&real) && line.contains(wrong), "the log line names neither key: {line}");
    ensure!(line.contains("ERROR"), "a refused server is an error: {line}");
    ensure!(rig.stored_count() == 0, "{} reports stored despite the mismatch", rig.stored_count());
    let seen = rig.query_i64("SELECT count(*) FROM agents WHERE agent_id = ?1 AND last_seen_at_ms IS NOT NULL")?;
    ensure!(seen == 0, "the server saw the agent");
    ensure!(rig.spool_files()?.len() >= 3, "reports are not kept for later");
    // Not a hot loop: a refused key backs off a long time.
    let attempts = log.matches("does not match the pinned").count();
    ensure!(attempts <= 2, "{attempts} attempts in a few seconds");
    ensure!(!serve.stderr().contains("agent authenticated"), "the agent went on to authenticate");
    Ok(())
}

/// Spool files are sealed: with the server down, values the reports certainly contain are in none of them.
#[test]
fn spool_files_hold_no_plaintext() -> Result<()> {
    let mut rig = Rig::new(&[("vitals", ALL, "1s")])?;
    let utmp = rig.work.path().join("utmp");
    write_utmp(&utmp, "canaryuser")?;
    // Enrolled, but no server: everything stays in the spool.
    rig.enroll(&["--utmp", utmp.to_str().context("utf-8")?])?;
    let agent = rig.start_agent()?;
    wait_for(T, "three spooled reports", || rig.spool_files().map(|f| f.len() >= 3).unwrap_or(false))
        .with_context(|| rig.dump(&[&agent]))?;

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim().to_owned();
    let needles = ["vitals", "canaryuser", "203.0.113.7", "memory", "disk_usage", "pts/0", kernel.as_str()];
    // Positive control: the same config's report, in clear, does hold them (all but the job name).
    let out =
        Command::new(bin("vigil-agent")).args(["--once", "--print", "--config"]).arg(rig.agent_toml()).output()?;
    let clear = String::from_utf8_lossy(&out.stdout);
    for n in &needles[1..] {
        ensure!(clear.contains(n), "the clear report lacks {n:?}: the check below would prove nothing");
    }
    let mut files = 0;
    for e in std::fs::read_dir(rig.spool_dir())? {
        let path = e?.path();
        let bytes = std::fs::read(&path)?;
        if path.extension().is_some_and(|x| x == "env") {
            files += 1;
            ensure!(bytes.len() > 200, "{} is too small to be a report", path.display());
        }
        for n in &needles {
            ensure!(!contains(&bytes, n.as_bytes()), "{} contains {n:?} in clear", path.display());
        }
    }
    ensure!(files >= 3, "{files} report files");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(rig.spool_dir())?.permissions().mode() & 0o777;
    ensure!(mode == 0o700, "spool dir mode {mode:o}");
    Ok(())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Not a test of the agent: the helpers read what they claim (a broken helper would make the tests above vacuous).
#[test]
fn helpers_write_valid_fixtures() -> Result<()> {
    let rig = Rig::new(&[("a", &["cpu"], "1s"), ("b", ALL, "2s")])?;
    let out = rig.work.vigil(&["check", "-v"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success() && text.contains("2 job(s)"), "{text}");
    let r = utmp_record(7, "u", "pts/1", "h", 5);
    ensure!(r.len() == 384 && r[44] == b'u' && r[8..13] == *b"pts/1" && r[76] == b'h' && r[340] == 5);
    Ok(())
}
