//! The scheduler: runs each job of the pulled schedule on its interval, at a phase offset fixed per agent and job
//! (within the job's jitter) so a fleet does not fire in lockstep. Each run is collected, sealed and spooled. A
//! command job runs as its own task (the scheduler goes on meanwhile); a command job whose previous run is still
//! going when its tick comes is skipped, not started twice.

use std::cell::RefCell;
use std::collections::HashSet;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use vigil_schema::command::{CommandRun, RunOutcome};
use vigil_schema::job::{Job, Schedule};
use vigil_schema::proto::{AgentMsg, seal_msg};
use vigil_schema::report::{Report, Stats};

use crate::collect::Collectors;
use crate::config::AgentConfig;
use crate::spool::Spool;

/// This agent's fixed offset for `job`, in milliseconds within `[0, jitter]`.
pub fn phase_ms(agent_id: &str, job: &Job) -> u64 {
    let span = u64::from(job.jitter_s) * 1000 + 1;
    let h =
        Sha256::new().chain_update(agent_id.as_bytes()).chain_update(b"/").chain_update(job.name.as_bytes()).finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    u64::from_be_bytes(b) % span
}

/// Why a collected report was not spooled.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("spool: {0}")]
    Spool(std::io::Error),
    #[error("sealing: {0}")]
    Seal(vigil_schema::proto::MsgError),
}

/// Collects, seals and spools one run of `job`. Returns the report's sequence number.
pub fn run_job(
    cfg: &AgentConfig,
    collectors: &mut Collectors,
    spool: &RefCell<Spool>,
    job: &Job,
) -> Result<u64, JobError> {
    let stats = collectors.collect(&job.collectors);
    spool_report(cfg, spool, &job.name, vigil_sys::clock::now_ms(), stats)
}

/// Seals and spools one report of `job`. Returns its sequence number.
fn spool_report(
    cfg: &AgentConfig,
    spool: &RefCell<Spool>,
    job: &str,
    collected_at_ms: i64,
    stats: Stats,
) -> Result<u64, JobError> {
    let (seq, dropped) = spool.borrow_mut().next().map_err(JobError::Spool)?;
    let report = Report { seq, job: job.to_owned(), collected_at_ms, dropped, stats };
    let frame_payload = seal_msg(&cfg.keys, &cfg.agent_id, seq, &AgentMsg::Report(report)).map_err(JobError::Seal)?;
    // Spool the envelope itself (without the frame prefix).
    let sealed = &frame_payload[vigil_schema::frame::PREFIX_LEN..];
    spool.borrow_mut().put(seq, dropped, sealed).map_err(JobError::Spool)?;
    if dropped > 0 {
        tracing::warn!(dropped, "spool was full: oldest reports were dropped; the count travels with report {seq}");
    }
    Ok(seq)
}

/// Runs the schedule until cancelled, rebuilding the timers whenever a new schedule arrives.
pub async fn run(
    cfg: &AgentConfig,
    mut collectors: Collectors,
    spool: &RefCell<Spool>,
    mut schedule_rx: watch::Receiver<Schedule>,
    produced: &Notify,
    cancel: CancellationToken,
) {
    // Finished command runs come back here to be spooled; the set holds the jobs whose run is still going.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, CommandRun)>();
    let mut running: HashSet<String> = HashSet::new();
    let mut refused: HashSet<String> = HashSet::new();
    let spool_run = |job: &str, run: CommandRun| {
        let at = run.started_ms;
        match spool_report(cfg, spool, job, at, Stats { command: Some(run), ..Stats::default() }) {
            Ok(seq) => {
                tracing::debug!(job, seq, "command run spooled");
                produced.notify_one();
            }
            Err(e) => tracing::error!(job, error = %e, "command run not spooled"),
        }
    };
    loop {
        let schedule = schedule_rx.borrow_and_update().clone();
        tracing::info!(jobs = schedule.jobs.len(), hash = %schedule.hash(), "running schedule");
        let start = Instant::now();
        let mut due: Vec<Instant> =
            schedule.jobs.iter().map(|j| start + Duration::from_millis(phase_ms(&cfg.agent_id, j))).collect();
        loop {
            let next = due.iter().enumerate().min_by_key(|(_, t)| **t).map(|(i, t)| (i, *t));
            let sleep = async {
                match next {
                    Some((_, t)) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = schedule_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                Some((job, run)) = done_rx.recv() => {
                    running.remove(&job);
                    spool_run(&job, run);
                }
                _ = sleep => {
                    let Some((i, t)) = next else { continue };
                    let job = &schedule.jobs[i];
                    if let Some(spec) = &job.command {
                        if !cfg.commands {
                            // Said once per job and agent start: the server shows it in `vigil status`.
                            if refused.insert(job.name.clone()) {
                                tracing::warn!(job = %job.name, "{}", crate::command::NOT_ALLOWED);
                                let reason = crate::command::NOT_ALLOWED.to_string();
                                spool_run(&job.name, crate::command::not_run(RunOutcome::Refused { reason }));
                            }
                        } else if running.contains(&job.name) {
                            tracing::warn!(job = %job.name, "previous run still going: this tick is skipped");
                        } else {
                            running.insert(job.name.clone());
                            let (spec, dir, tx, name) = (spec.clone(), cfg.dir.clone(), done_tx.clone(), job.name.clone());
                            tokio::spawn(async move {
                                let run = crate::command::run(&spec, &dir).await;
                                let _ = tx.send((name, run));
                            });
                        }
                    } else {
                    match run_job(cfg, &mut collectors, spool, job) {
                        Ok(seq) => {
                            tracing::debug!(job = %job.name, seq, "collected");
                            produced.notify_one();
                        }
                        Err(e) => tracing::error!(job = %job.name, error = %e, "collection not spooled"),
                    }
                    }
                    // Next tick on the fixed phase grid; ticks missed while the host slept are skipped.
                    let interval = Duration::from_secs(u64::from(job.interval_s.max(1)));
                    let mut n = t + interval;
                    let now = Instant::now();
                    while n <= now {
                        n += interval;
                    }
                    due[i] = n;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_schema::job::Collector;

    #[test]
    fn phase_is_stable_within_jitter_and_differs_between_agents() {
        let job =
            Job { name: "vitals".into(), collectors: vec![Collector::Cpu], interval_s: 10, jitter_s: 5, command: None };
        let a = phase_ms("agent-a", &job);
        assert_eq!(a, phase_ms("agent-a", &job));
        assert!(a <= 5000);
        let phases: std::collections::HashSet<u64> = (0..50).map(|i| phase_ms(&format!("agent-{i}"), &job)).collect();
        assert!(phases.len() > 40, "phases spread across the jitter window");
        let no_jitter = Job { jitter_s: 0, ..job };
        assert_eq!(phase_ms("agent-a", &no_jitter), 0);
    }
}
