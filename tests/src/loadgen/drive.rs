//! Driving N simulated agents over real SSH: each agent its own russh connection (public-key auth with its own key,
//! the `vigil` subsystem, hello), then sealed reports at a set rate or as fast as acks allow, with at most `window`
//! reports awaiting their ack. Counts acked reports and rows in a measured window after a warm-up, and the latency
//! from writing a report to reading its ack.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use russh::client::{self, Handle};
use russh::keys::PrivateKeyWithHashAlg;
use russh::{ChannelMsg, ChannelReadHalf};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use vigil_schema::frame::FrameDecoder;
use vigil_schema::proto::{AgentMsg, CONTROL_SEQ, PROTOCOL_VERSION, SUBSYSTEM, ServerMsg, open_msg, seal_msg};
use vigil_tests::client::Pinned;

use super::setup::Agent;
use vigil_tests::reports::{Shape, report, rows_of};

/// The agent version the load generator announces.
pub const LOADGEN_VERSION: &str = "vigil-loadgen-1.0";

/// How long connecting (TCP, key exchange, auth, subsystem, welcome) may take per agent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Connection attempts per agent before it counts as failed.
const CONNECT_ATTEMPTS: u32 = 5;
/// How long stopping agents wait for the acks of reports still in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOpts {
    /// `127.0.0.1:PORT` of `vigil serve`.
    pub addr: String,
    /// The server's host key, `SHA256:...`.
    pub fingerprint: String,
    pub shape: Shape,
    /// Reports per second offered by all agents together; 0 = as fast as acks allow.
    pub rate: f64,
    /// Reports of one agent awaiting their ack at once.
    pub window: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Connection set-ups at once (the server refuses more than 64 unauthenticated connections from one address).
    pub connect_concurrency: usize,
    /// Connect, say hello, then send nothing for `duration` (for memory per idle connection).
    pub idle: bool,
    /// The server's pid, to sample its CPU time and memory around the measured window.
    pub server_pid: Option<u32>,
    /// The PostgreSQL postmaster's pid, when serve stores there: its CPU time (backends included) and memory.
    pub db_pid: Option<u32>,
}

/// The outcome of a run, printed as one JSON line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub mode: String,
    pub agents: usize,
    pub connected: usize,
    pub connect_failures: usize,
    /// Refused or failed connection attempts that a retry then fixed (or not).
    pub connect_retries: u64,
    pub connect_s: f64,
    pub offered_rate: f64,
    pub window: usize,
    pub measured_s: f64,
    pub acked: u64,
    pub rows: u64,
    pub errors: u64,
    /// Rate mode: ticks where the agent's window was full, so the report was not offered.
    pub window_full: u64,
    pub reports_per_s: f64,
    pub rows_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// CPU seconds per measured second of this process (all threads).
    pub loadgen_cpu: f64,
    /// CPU seconds per measured second of the server, when its pid was given.
    pub server_cpu: Option<f64>,
    /// Seconds per measured second the server's threads (summed) spent runnable but waiting for a CPU
    /// (/proc/PID/task/*/schedstat): above zero, the server was short of CPU rather than of work.
    pub server_runq_wait: Option<f64>,
    /// Busy CPU seconds per measured second of the whole machine (anything beyond server + loadgen is other work).
    pub machine_cpu: f64,
    /// Server VmRSS at the end of the measured window (idle: with every agent connected), KiB.
    pub server_rss_kib: Option<u64>,
    pub server_hwm_kib: Option<u64>,
    /// CPU seconds per measured second of PostgreSQL (postmaster and backends), when its pid was given.
    pub db_cpu: Option<f64>,
    /// PostgreSQL's summed proportional set size at the end of the measured window, KiB.
    pub db_pss_kib: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Running,
    Stopping,
}

/// Counters every agent task shares.
#[derive(Debug, Default)]
struct Shared {
    acked: AtomicU64,
    rows: AtomicU64,
    errors: AtomicU64,
    window_full: AtomicU64,
    connected: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    measuring: AtomicBool,
    /// Agents in the run (the offered rate is spread over them).
    agents: usize,
    rows_per_report: u64,
}

/// One connected agent, welcomed.
struct Conn {
    handle: Handle<Pinned>,
    rd: ChannelReadHalf,
    wr: russh::ChannelWriteHalf<client::Msg>,
    decoder: FrameDecoder,
}

async fn connect(agent: &Agent, opts: &RunOpts) -> Result<Conn> {
    let config = Arc::new(client::Config { nodelay: true, ..Default::default() });
    let pinned = Pinned { fingerprint: opts.fingerprint.clone() };
    let mut handle = client::connect(config, opts.addr.clone(), pinned).await.context("ssh connect")?;
    let key = PrivateKeyWithHashAlg::new(Arc::new(agent.key.clone()), None);
    let auth = handle.authenticate_publickey(agent.agent_id.clone(), key).await.context("publickey auth")?;
    if !auth.success() {
        bail!("the server refused the key of {}", agent.agent_id);
    }
    let mut ch = handle.channel_open_session().await.context("channel open")?;
    ch.request_subsystem(true, SUBSYSTEM).await.context("subsystem request")?;
    loop {
        match ch.wait().await {
            Some(ChannelMsg::Success) => break,
            Some(ChannelMsg::Failure | ChannelMsg::Close | ChannelMsg::Eof) | None => bail!("subsystem refused"),
            Some(_) => {}
        }
    }
    let (rd, wr) = ch.split();
    let hello = AgentMsg::Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: LOADGEN_VERSION.into(),
        schedule_hash: String::new(),
    };
    wr.data_bytes(seal_msg(&agent.keys, &agent.agent_id, CONTROL_SEQ, &hello)?).await.context("writing hello")?;
    let mut conn = Conn { handle, rd, wr, decoder: FrameDecoder::default() };
    loop {
        for m in conn.read(agent).await? {
            match m {
                ServerMsg::Welcome { .. } => return Ok(conn),
                ServerMsg::Error { code, message, .. } => bail!("hello refused: {code:?}: {message}"),
                _ => {}
            }
        }
    }
}

impl Conn {
    /// The next server messages (at least one), or an error when the channel closed.
    async fn read(&mut self, agent: &Agent) -> Result<Vec<ServerMsg>> {
        loop {
            match self.rd.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    self.decoder.push(&data).context("server frame stream")?;
                    let mut out = Vec::new();
                    while let Some(f) = self.decoder.next_frame().context("server frame stream")? {
                        let (_, m) = open_msg::<ServerMsg>(&agent.keys, &f).context("opening a server frame")?;
                        out.push(m);
                    }
                    if !out.is_empty() {
                        return Ok(out);
                    }
                }
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => bail!("the server closed the channel"),
                Some(_) => {}
            }
        }
    }

    async fn close(self) {
        let _ = self.wr.eof().await;
        let _ = self.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.handle).await;
    }
}

/// Sends reports from one agent until told to stop; returns its ack latencies (µs) seen while measuring.
async fn agent_task(
    index: usize,
    agent: Agent,
    opts: Arc<RunOpts>,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    mut phase: watch::Receiver<Phase>,
) -> Vec<u32> {
    // Like a real agent, retry a refused connection (the server caps anonymous connections per source address).
    let mut attempt = 0u32;
    let mut conn = loop {
        attempt += 1;
        let conn = {
            let Ok(_permit) = gate.acquire().await else { return Vec::new() };
            tokio::time::timeout(CONNECT_TIMEOUT, connect(&agent, &opts)).await
        };
        let err = match conn {
            Ok(Ok(c)) => break c,
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "connect timed out".to_owned(),
        };
        if attempt >= CONNECT_ATTEMPTS {
            if shared.failed.fetch_add(1, Ordering::Relaxed) < 3 {
                eprintln!("vigil-loadgen: {}: {err} ({attempt} attempts)", agent.agent_id);
            }
            return Vec::new();
        }
        shared.retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
    };
    shared.connected.fetch_add(1, Ordering::Relaxed);
    if phase.wait_for(|p| *p != Phase::Connecting).await.is_err() || opts.idle {
        let _ = phase.wait_for(|p| *p == Phase::Stopping).await;
        conn.close().await;
        return Vec::new();
    }
    let mut latencies = Vec::new();
    let mut inflight: HashMap<u64, Instant> = HashMap::with_capacity(opts.window * 2);
    // Sequence numbers unique across runs with the same agents (the server stores a repeated one only once).
    let mut seq = u64::try_from(vigil_tests::client::now_ms()).unwrap_or(0) * 1000;
    // Rate mode: each agent sends every `period`, agents spread evenly over one period.
    let n = shared.agents.max(1);
    let per_agent = if opts.rate > 0.0 { opts.rate / n as f64 } else { 0.0 };
    let mut ticker = (per_agent > 0.0).then(|| {
        let period = Duration::from_secs_f64(1.0 / per_agent);
        let offset = period.mul_f64((index % n) as f64 / n as f64);
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let mut stopping = false;
    let mut drain_deadline = None;
    loop {
        if !stopping && ticker.is_none() && inflight.len() < opts.window {
            let n = opts.window - inflight.len();
            if send(&mut conn, &agent, opts.shape, index, &mut seq, n, &mut inflight).await.is_err() {
                break;
            }
        }
        if stopping && inflight.is_empty() {
            break;
        }
        let tick = async {
            match ticker.as_mut() {
                Some(t) if !stopping => t.tick().await,
                _ => std::future::pending().await,
            }
        };
        let deadline = async {
            match drain_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = async { let _ = phase.wait_for(|p| *p == Phase::Stopping).await; }, if !stopping => {
                stopping = true;
                drain_deadline = Some(tokio::time::Instant::now() + DRAIN_TIMEOUT);
            }
            _ = deadline => break,
            _ = tick => {
                if inflight.len() < opts.window {
                    if send(&mut conn, &agent, opts.shape, index, &mut seq, 1, &mut inflight).await.is_err() {
                        break;
                    }
                } else {
                    shared.window_full.fetch_add(1, Ordering::Relaxed);
                }
            }
            msgs = conn.read(&agent) => {
                let Ok(msgs) = msgs else {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                };
                let now = Instant::now();
                let measuring = shared.measuring.load(Ordering::Relaxed);
                for m in msgs {
                    match m {
                        ServerMsg::Ack { seq } => {
                            let Some(sent) = inflight.remove(&seq) else { continue };
                            if measuring {
                                shared.acked.fetch_add(1, Ordering::Relaxed);
                                shared.rows.fetch_add(shared.rows_per_report, Ordering::Relaxed);
                                latencies.push(u32::try_from(now.duration_since(sent).as_micros()).unwrap_or(u32::MAX));
                            }
                        }
                        ServerMsg::Error { seq, code, message } => {
                            if shared.errors.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("vigil-loadgen: {}: server error {code:?}: {message}", agent.agent_id);
                            }
                            if let Some(s) = seq {
                                inflight.remove(&s);
                            }
                        }
                        ServerMsg::Welcome { .. } | ServerMsg::Jobs { .. } => {}
                    }
                }
            }
        }
    }
    conn.close().await;
    latencies
}

/// Seals and writes `n` reports in one channel write.
async fn send(
    conn: &mut Conn,
    agent: &Agent,
    shape: Shape,
    index: usize,
    seq: &mut u64,
    n: usize,
    inflight: &mut HashMap<u64, Instant>,
) -> Result<()> {
    let mut bytes = Vec::new();
    let now_ms = vigil_tests::client::now_ms();
    let mut seqs = Vec::with_capacity(n);
    for _ in 0..n {
        *seq += 1;
        let r = report(shape, index, *seq, now_ms);
        bytes.extend(seal_msg(&agent.keys, &agent.agent_id, *seq, &AgentMsg::Report(r))?);
        seqs.push(*seq);
    }
    let sent = Instant::now();
    for s in seqs {
        inflight.insert(s, sent);
    }
    conn.wr.data_bytes(bytes).await.context("writing reports")?;
    Ok(())
}

/// CPU seconds (user + system) this process has used.
fn own_cpu_s() -> f64 {
    proc_cpu_s(std::process::id()).unwrap_or(0.0)
}

/// Clock ticks per second of /proc times (USER_HZ, 100 on Linux for every architecture vigil targets).
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system) of process `pid`, from /proc.
pub fn proc_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / USER_HZ)
}

/// Busy CPU seconds of the whole machine since boot (all but idle and iowait), from /proc/stat.
pub fn machine_busy_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<f64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    let total: f64 = f.iter().take(8).sum();
    Some((total - f.get(3)? - f.get(4)?) / USER_HZ)
}

/// Seconds the threads of `pid` have spent waiting on a run queue (runnable, not running), summed.
pub fn proc_runq_wait_s(pid: u32) -> Option<f64> {
    let mut total = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(t.path().join("schedstat")) else { continue };
        total += text.split_whitespace().nth(1).and_then(|w| w.parse::<u64>().ok()).unwrap_or(0);
    }
    Some(total as f64 / 1e9)
}

/// A `Vm*` field of /proc/PID/status, KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
}

/// The `q` quantile (0..=1) of sorted microseconds, in milliseconds.
pub fn quantile_ms(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

/// Runs `agents` against the server as `opts` says. `on_ready` is called once every agent has connected (or
/// failed), before the measured phase; the idle mode uses it to announce that memory can be sampled.
pub async fn run(agents: Vec<Agent>, opts: RunOpts, on_ready: impl FnOnce(usize)) -> Result<Summary> {
    let n = agents.len();
    let shared =
        Arc::new(Shared { agents: n, rows_per_report: rows_of(&report(opts.shape, 0, 1, 0)), ..Shared::default() });
    let opts = Arc::new(opts);
    let gate = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, a) in agents.into_iter().enumerate() {
        tasks.spawn(agent_task(i, a, opts.clone(), shared.clone(), gate.clone(), phase_rx.clone()));
    }
    while shared.connected.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) < n as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_s = started.elapsed().as_secs_f64();
    let connected = shared.connected.load(Ordering::Relaxed) as usize;
    on_ready(connected);
    let _ = phase_tx.send(Phase::Running);
    tokio::time::sleep(opts.warmup).await;
    let cpu0 = own_cpu_s();
    let srv0 = opts.server_pid.and_then(proc_cpu_s);
    let machine0 = machine_busy_s().unwrap_or(0.0);
    let wait0 = opts.server_pid.and_then(proc_runq_wait_s);
    let db0 = opts.db_pid.and_then(super::pg::tree_cpu_s);
    shared.measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(opts.duration).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let measured = t0.elapsed().as_secs_f64();
    let cpu1 = own_cpu_s();
    let srv1 = opts.server_pid.and_then(proc_cpu_s);
    let machine1 = machine_busy_s().unwrap_or(0.0);
    let wait1 = opts.server_pid.and_then(proc_runq_wait_s);
    let db1 = opts.db_pid.and_then(super::pg::tree_cpu_s);
    let db_pss_kib = opts.db_pid.and_then(super::pg::tree_pss_kib);
    let rss = opts.server_pid.and_then(|p| proc_status_kib(p, "VmRSS"));
    let hwm = opts.server_pid.and_then(|p| proc_status_kib(p, "VmHWM"));
    let acked = shared.acked.load(Ordering::Relaxed);
    let rows = shared.rows.load(Ordering::Relaxed);
    let _ = phase_tx.send(Phase::Stopping);
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(v) => lat.extend(v),
            Err(e) => {
                eprintln!("vigil-loadgen: an agent task failed: {e}");
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    lat.sort_unstable();
    let mode = if opts.idle { "idle".to_owned() } else { format!("{:?}", opts.shape).to_lowercase() };
    Ok(Summary {
        mode,
        agents: n,
        connected,
        connect_failures: shared.failed.load(Ordering::Relaxed) as usize,
        connect_retries: shared.retries.load(Ordering::Relaxed),
        connect_s,
        offered_rate: opts.rate,
        window: opts.window,
        measured_s: measured,
        acked,
        rows,
        errors: shared.errors.load(Ordering::Relaxed),
        window_full: shared.window_full.load(Ordering::Relaxed),
        reports_per_s: acked as f64 / measured,
        rows_per_s: rows as f64 / measured,
        p50_ms: quantile_ms(&lat, 0.50),
        p99_ms: quantile_ms(&lat, 0.99),
        max_ms: lat.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
        loadgen_cpu: (cpu1 - cpu0) / measured,
        server_cpu: srv0.zip(srv1).map(|(a, b)| (b - a) / measured),
        server_runq_wait: wait0.zip(wait1).map(|(a, b)| (b - a) / measured),
        machine_cpu: (machine1 - machine0) / measured,
        server_rss_kib: rss,
        server_hwm_kib: hwm,
        db_cpu: db0.zip(db1).map(|(a, b)| (b - a) / measured),
        db_pss_kib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_right_sample() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(quantile_ms(&v, 0.0), 1.0);
        assert_eq!(quantile_ms(&v, 0.5), 51.0);
        assert_eq!(quantile_ms(&v, 0.99), 99.0);
        assert_eq!(quantile_ms(&v, 1.0), 100.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn own_process_figures_are_readable() {
        let pid = std::process::id();
        assert!(proc_status_kib(pid, "VmRSS").unwrap() > 0);
        assert!(proc_cpu_s(pid).unwrap() >= 0.0);
        assert!(proc_status_kib(pid, "NoSuchField").is_none());
        assert!(own_cpu_s() >= 0.0);
        assert!(machine_busy_s().unwrap() > 0.0);
        assert!(proc_runq_wait_s(pid).unwrap() >= 0.0);
        assert!(proc_runq_wait_s(u32::MAX).is_none());
    }
}
