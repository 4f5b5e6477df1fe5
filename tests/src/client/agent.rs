//! The real `vigil-agent` run from an enrolled directory ([`RealAgent`]), what its spool holds ([`SpoolView`]), and
//! the outcome of checking its reports against the database ([`Delivery`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::Proc;

/// A real `vigil-agent` running from an enrolled directory, stopped by PID on drop.
#[derive(Debug)]
pub struct RealAgent {
    pub host: String,
    pub dir: PathBuf,
    proc: Proc,
}

impl RealAgent {
    /// Runs `vigil-agent --config <dir>/agent.toml` (`VIGIL_LOG=info`), logging to `<log_dir>/agent-<host>.*`.
    pub fn spawn(host: &str, dir: &Path, log_dir: &Path) -> Result<Self> {
        let mut cmd = std::process::Command::new(crate::paths::bin("vigil-agent"));
        cmd.arg("--config").arg(dir.join("agent.toml")).env("VIGIL_LOG", "info");
        let proc = Proc::spawn(cmd, log_dir, &format!("agent-{host}"))?;
        Ok(Self { host: host.to_owned(), dir: dir.to_path_buf(), proc })
    }

    /// The agent process.
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Whether the agent is still running.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// The agent's stdout and stderr (its log), for assertion messages.
    pub fn logs(&self) -> String {
        self.proc.logs()
    }

    /// SIGTERM (the agent waits briefly for the acks of what is in flight), then waits for the exit.
    pub fn terminate(&mut self) -> Result<()> {
        if self.proc.is_running() {
            self.proc.signal(crate::process::SIGTERM)?;
        }
        self.proc.wait_exit(Duration::from_secs(20))?;
        Ok(())
    }

    /// What its spool says now.
    pub fn spool(&self) -> Result<SpoolView> {
        SpoolView::read(&self.dir)
    }

    /// Reports made so far (next seq - 1); 0 before the first or while the state file is being replaced.
    pub fn produced(&self) -> u64 {
        self.spool().map(|s| s.next_seq.saturating_sub(1)).unwrap_or(0)
    }
}

/// An agent's spool directory (`<agent dir>/spool`): `<seq>-<carried drops>.env` files, one per unacknowledged
/// report, and a `state` file holding `next_seq pending_drops`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolView {
    pub next_seq: u64,
    pub pending_drops: u64,
    pub spooled: std::collections::BTreeSet<u64>,
}

impl SpoolView {
    /// Reads `<agent_dir>/spool`; a missing spool (nothing made yet) reads as empty with `next_seq` 1.
    pub fn read(agent_dir: &Path) -> Result<Self> {
        let dir = agent_dir.join("spool");
        let mut view = Self { next_seq: 1, ..Self::default() };
        if !dir.exists() {
            return Ok(view);
        }
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let name = e?.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".env") else { continue };
            let (seq, _) = stem.split_once('-').with_context(|| format!("odd spool file {name}"))?;
            view.spooled.insert(seq.parse().with_context(|| format!("odd spool file {name}"))?);
        }
        if let Ok(text) = std::fs::read_to_string(dir.join("state")) {
            let mut it = text.split_whitespace().map(str::parse::<u64>);
            match (it.next(), it.next()) {
                (Some(Ok(next)), Some(Ok(pending))) => {
                    view.next_seq = next;
                    view.pending_drops = pending;
                }
                _ => bail!("unreadable spool state {text:?}"),
            }
        }
        if let Some(&last) = view.spooled.last() {
            view.next_seq = view.next_seq.max(last + 1);
        }
        Ok(view)
    }
}

/// The outcome of [`Served::verify_exactly_once`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Reports the agent made (`next_seq - 1`).
    pub issued: u64,
    /// Reports in the database, each once.
    pub stored: u64,
    /// Reports still in the spool (made but not yet acknowledged).
    pub spooled: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_view_reads_files_and_state() {
        let dir = crate::paths::TestDir::new("client").unwrap();
        assert_eq!(SpoolView::read(dir.path()).unwrap(), SpoolView { next_seq: 1, ..SpoolView::default() });
        let spool = dir.join("spool");
        std::fs::create_dir(&spool).unwrap();
        std::fs::write(spool.join("00000000000000000004-0.env"), b"x").unwrap();
        std::fs::write(spool.join("00000000000000000007-2.env"), b"x").unwrap();
        std::fs::write(spool.join("00000000000000000008-0.tmp"), b"x").unwrap();
        std::fs::write(spool.join("state"), "6 1\n").unwrap();
        let v = SpoolView::read(dir.path()).unwrap();
        assert_eq!(v.spooled.iter().copied().collect::<Vec<_>>(), vec![4, 7]);
        assert_eq!((v.next_seq, v.pending_drops), (8, 1), "a spooled seq past the state raises next_seq");
        std::fs::write(spool.join("state"), "garbage").unwrap();
        assert!(SpoolView::read(dir.path()).is_err());
    }
}
