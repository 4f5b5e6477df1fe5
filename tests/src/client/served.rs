//! [`Served`]: a work directory with SSH-transport hosts in clients.xml, each enrolled with `vigil enroll`, and the
//! real `vigil serve` running on a free port; plus readers for its database, its logs and `vigil status`, and
//! [`replace_file`], the editor-style save its reload tests use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use super::{AgentCreds, Delivery, RealAgent, STEP_TIMEOUT, SpoolView, SshConn, VigilSession};
use crate::fleet::{ClientEntry, Workdir};
use crate::net::free_port;
use crate::poll::wait_for;
use crate::process::Proc;

/// Writes `text` to a temporary file beside `path` and renames it over `path`, as editors save.
pub fn replace_file(path: &Path, text: &str) -> Result<()> {
    let name = path.file_name().context("a file path")?.to_string_lossy().into_owned();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming over {}", path.display()))
}

/// The `ip` clients.xml gives the `i`th host of a [`Served`]: a loopback address where no sshd listens. Tests send
/// traffic to this machine only: whatever in vigil dials a host (bootstrap, a dry run's probe, a tunnel, a repair)
/// is refused at once, and nothing leaves the machine.
pub fn host_ip(i: usize) -> String {
    format!("127.0.2.{}", i + 1)
}

/// A work directory with `hosts` (SSH transport, so serve starts no local agents) enrolled, and `vigil serve`
/// running on a free loopback port.
#[derive(Debug)]
pub struct Served {
    pub work: Workdir,
    pub port: u16,
    /// The endpoint's host key, as `vigil serve` printed it.
    pub fingerprint: String,
    pub hosts: Vec<String>,
    creds: BTreeMap<String, AgentCreds>,
    serve: Option<Proc>,
    starts: u32,
}

impl Served {
    /// Writes the config (every collector every `interval`), enrolls every host, starts `vigil serve` and waits for
    /// its "listening" line.
    pub fn start(hosts: &[&str], interval: &str) -> Result<Self> {
        Ok(Self::start_with(hosts, interval, |_| Ok(()))?.0)
    }

    /// Like [`start`](Self::start), but runs `setup` on the empty work directory first (before the data directory
    /// exists), e.g. to mount a small file system on [`Workdir::data_dir`]; returns what `setup` returned.
    pub fn start_with<T>(
        hosts: &[&str],
        interval: &str,
        setup: impl FnOnce(&Workdir) -> Result<T>,
    ) -> Result<(Self, T)> {
        let work = Workdir::new()?;
        let prepared = setup(&work)?;
        let port = free_port();
        let hosts: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
        let mut s =
            Self { work, port, fingerprint: String::new(), hosts, creds: BTreeMap::new(), serve: None, starts: 0 };
        s.work.write_clients(&s.entries(&s.hosts.iter().map(String::as_str).collect::<Vec<_>>()))?;
        s.work.write_jobs(&s.jobs_text(interval, crate::fleet::ALL_COLLECTORS))?;
        for h in s.hosts.clone() {
            let dir = s.work.path().join("agents").join(&h);
            let dir_arg = dir.display().to_string();
            let out = s.work.vigil(&["enroll", &h, "--dir", &dir_arg]).output().context("running vigil enroll")?;
            ensure!(out.status.success(), "vigil enroll {h}: {}", String::from_utf8_lossy(&out.stderr));
            s.creds.insert(h.clone(), AgentCreds::load(&dir)?);
        }
        s.start_serve()?;
        Ok((s, prepared))
    }

    /// The clients.xml entries for `names` (each keeps its ip from its position in [`hosts`](Self::hosts)).
    pub fn entries(&self, names: &[&str]) -> Vec<ClientEntry> {
        names
            .iter()
            .map(|n| {
                let i = self.hosts.iter().position(|h| h == n).unwrap_or(self.hosts.len());
                ClientEntry::enrolled(n, host_ip(i))
            })
            .collect()
    }

    /// A jobs.toml for this server: one job "all" with `collectors` every `interval`.
    pub fn jobs_text(&self, interval: &str, collectors: &[&str]) -> String {
        let list: Vec<String> = collectors.iter().map(|c| format!("\"{c}\"")).collect();
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\nretention_days = 30\n\n[[job]]\nname = \"all\"\n\
             collectors = [{}]\ninterval = \"{interval}\"\n",
            self.port,
            self.work.data_dir().display(),
            list.join(", ")
        )
    }

    /// (Re)starts `vigil serve` and waits until it listens.
    pub fn start_serve(&mut self) -> Result<()> {
        let mut cmd = self.work.vigil(&["serve"]);
        cmd.env("TMPDIR", self.work.path()).env("VIGIL_LOG", "info,russh=warn");
        self.starts += 1;
        let mut p = Proc::spawn(cmd, self.work.path(), &format!("serve-{}", self.starts))?;
        let ok = crate::poll::wait_until(STEP_TIMEOUT, || p.stdout().contains("listening on") || !p.is_running());
        ensure!(ok && p.is_running(), "vigil serve did not start\n{}", p.logs());
        let out = p.stdout();
        self.fingerprint = out
            .split_whitespace()
            .find(|w| w.starts_with("SHA256:"))
            .with_context(|| format!("no host key in {out:?}"))?
            .trim_end_matches(',')
            .to_owned();
        self.serve = Some(p);
        Ok(())
    }

    /// The running (or stopped) serve process.
    pub fn serve(&mut self) -> Result<&mut Proc> {
        self.serve.as_mut().context("vigil serve was not started")
    }

    /// serve's stderr (its log) so far.
    pub fn log(&self) -> String {
        self.serve.as_ref().map(Proc::stderr).unwrap_or_default()
    }

    /// serve's stdout and stderr, for assertion messages.
    pub fn logs(&self) -> String {
        self.serve.as_ref().map(Proc::logs).unwrap_or_default()
    }

    /// SIGTERM to serve; waits for it to exit and returns its exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let p = self.serve()?;
        p.signal(crate::process::SIGTERM)?;
        Ok(p.wait_exit(timeout)?.code())
    }

    /// The credentials enrolled for `host`.
    pub fn creds(&self, host: &str) -> Result<&AgentCreds> {
        self.creds.get(host).with_context(|| format!("{host} was not enrolled"))
    }

    /// A vigil session for `host`, welcomed.
    pub fn session(&self, host: &str) -> Result<VigilSession> {
        VigilSession::start(self.creds(host)?)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// An SSH connection to the endpoint, not authenticated.
    pub fn connect(&self) -> Result<SshConn> {
        SshConn::connect(&self.addr(), &self.fingerprint)
    }

    /// The database file.
    pub fn db_path(&self) -> PathBuf {
        self.work.data_dir().join("vigil.db")
    }

    /// A read-only connection to the database.
    pub fn db(&self) -> Result<rusqlite::Connection> {
        let c = rusqlite::Connection::open_with_flags(self.db_path(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", self.db_path().display()))?;
        c.busy_timeout(Duration::from_secs(5))?;
        Ok(c)
    }

    /// A single integer from `sql` with `params`.
    pub fn count(&self, sql: &str, params: impl rusqlite::Params) -> Result<i64> {
        self.db()?.query_row(sql, params, |r| r.get(0)).with_context(|| sql.to_owned())
    }

    /// Whether the report (`host`'s agent, `seq`) is in the reports table.
    pub fn has_report(&self, host: &str, seq: u64) -> Result<bool> {
        let agent = &self.creds(host)?.agent_id;
        let n = self.count("SELECT count(*) FROM reports WHERE agent_id = ?1 AND seq = ?2", (agent, seq as i64))?;
        Ok(n > 0)
    }

    /// The directory `vigil enroll` wrote for `host` (agent.toml, agent_key, schedule.json; the spool goes here too).
    pub fn agent_dir(&self, host: &str) -> PathBuf {
        self.work.path().join("agents").join(host)
    }

    /// Starts the real `vigil-agent` enrolled for `host` (logs in the work directory as `agent-<host>.*`).
    pub fn spawn_agent(&self, host: &str) -> Result<RealAgent> {
        self.creds(host)?;
        RealAgent::spawn(host, &self.agent_dir(host), self.work.path())
    }

    /// The seqs stored for `host`'s agent, in order, duplicates kept.
    pub fn stored_seqs(&self, host: &str) -> Result<Vec<u64>> {
        let agent = self.creds(host)?.agent_id.clone();
        let db = self.db()?;
        let mut stmt = db.prepare("SELECT seq FROM reports WHERE agent_id = ?1 ORDER BY seq")?;
        let rows = stmt.query_map([&agent], |r| r.get::<_, i64>(0))?;
        rows.map(|r| Ok(u64::try_from(r?)?)).collect()
    }

    /// Checks that every report `host`'s agent issued is accounted for exactly once: each seq in
    /// `1..next_seq` is stored or still spooled, nothing is stored twice or stored that was never issued, each
    /// stored report has exactly one `cpu` row (its statistics were not inserted twice), and no drops were reported.
    /// Call it with the agent stopped, so its spool is still.
    pub fn verify_exactly_once(&self, host: &str) -> Result<Delivery> {
        let spool = SpoolView::read(&self.agent_dir(host))?;
        let stored = self.stored_seqs(host)?;
        let unique: std::collections::BTreeSet<u64> = stored.iter().copied().collect();
        ensure!(unique.len() == stored.len(), "{host}: a report is stored twice: {stored:?}");
        let issued: std::collections::BTreeSet<u64> = (1..spool.next_seq).collect();
        let never_issued: Vec<u64> = unique.difference(&issued).copied().collect();
        ensure!(never_issued.is_empty(), "{host}: stored seqs never issued: {never_issued:?}");
        let lost: Vec<u64> =
            issued.iter().filter(|s| !unique.contains(s) && !spool.spooled.contains(s)).copied().collect();
        ensure!(
            lost.is_empty(),
            "{host}: {} issued reports neither stored nor spooled: {lost:?} (stored {}, spooled {:?}, next {})",
            lost.len(),
            unique.len(),
            spool.spooled,
            spool.next_seq
        );
        let agent = &self.creds(host)?.agent_id;
        let cpu_rows = self
            .count("SELECT count(*) FROM cpu c JOIN reports r ON r.id = c.report_id WHERE r.agent_id = ?1", [agent])?;
        ensure!(cpu_rows == stored.len() as i64, "{host}: {cpu_rows} cpu rows for {} reports", stored.len());
        let dropped = self.count("SELECT coalesce(sum(dropped), 0) FROM reports WHERE agent_id = ?1", [agent])?;
        ensure!(
            dropped == 0 && spool.pending_drops == 0,
            "{host}: drops reported ({dropped} stored, {} pending)",
            spool.pending_drops
        );
        Ok(Delivery { issued: spool.next_seq - 1, stored: unique.len() as u64, spooled: spool.spooled.len() as u64 })
    }

    /// Rewrites clients.xml (temp + rename) to hold `names`.
    pub fn set_clients(&self, names: &[&str]) -> Result<()> {
        replace_file(&self.work.clients_path(), &crate::fleet::clients_xml(&self.entries(names)))
    }

    /// Rewrites jobs.toml (temp + rename).
    pub fn set_jobs(&self, text: &str) -> Result<()> {
        replace_file(&self.work.jobs_path(), text)
    }

    /// `vigil status --json`, parsed.
    pub fn status_json(&self) -> Result<serde_json::Value> {
        let out = self.work.vigil(&["status", "--json"]).output().context("running vigil status --json")?;
        ensure!(out.status.success(), "vigil status --json failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("vigil status --json printed {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// `vigil status` (the table).
    pub fn status_table(&self) -> Result<String> {
        let out = self.work.vigil(&["status"]).output().context("running vigil status")?;
        ensure!(out.status.success(), "vigil status failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until `vigil status --json` satisfies `cond`; returns the last output.
    pub fn wait_status(
        &self,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let mut last: Result<serde_json::Value> = Ok(serde_json::Value::Null);
        let r = wait_for(timeout, what, || {
            last = self.status_json();
            last.as_ref().is_ok_and(&cond)
        });
        match (r, last) {
            (Ok(()), Ok(v)) => Ok(v),
            (Err(e), Ok(v)) => Err(e.context(format!("last status: {v:#}"))),
            (_, Err(e)) => Err(e.context(format!("waiting for {what}"))),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn replace_file_swaps_the_content_and_leaves_no_temp() {
        let dir = crate::paths::TestDir::new("client").unwrap();
        let p = dir.join("jobs.toml");
        std::fs::write(&p, "old").unwrap();
        replace_file(&p, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
