//! Push: one persistent SSH connection to the server's endpoint, its host key pinned, key auth, the `vigil`
//! subsystem; hello with the schedule hash, spooled reports sent pipelined, each deleted on its ack. Reconnects
//! with exponential backoff and jitter, cycling through `server` and `fallback_servers` ([`Rotation`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use russh::ChannelMsg;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use vigil_schema::frame::{self, FrameDecoder};
use vigil_schema::job::Schedule;
use vigil_schema::proto::{
    AgentMsg, CONTROL_SEQ, ErrorCode, PROTOCOL_VERSION, SUBSYSTEM, ServerMsg, open_msg, seal_msg,
};

use vigil_sys::backoff::{Backoff, jittered};

use crate::config::AgentConfig;
use crate::spool::Spool;

/// Reports sent and not yet acknowledged, at most.
const WINDOW: usize = 64;
/// Backlog (reports older than this connection) sent per second, at most, so a drain after an outage is gentle
/// while fresh reports go out at once.
const BACKLOG_PER_SECOND: u32 = 200;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why a session with the server ended.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("connect to {server}: {cause}")]
    Connect { server: String, cause: russh::Error },
    #[error("connect to {0}: timed out")]
    ConnectTimeout(String),
    #[error("server host key {seen} does not match the pinned {pinned}; refusing to send")]
    HostKeyMismatch { seen: String, pinned: String },
    #[error("the server refused this agent's key")]
    AuthRefused,
    #[error("the server refused the vigil subsystem")]
    SubsystemRefused,
    #[error("the server revoked this agent: {0}")]
    Revoked(String),
    #[error("ssh: {0}")]
    Ssh(russh::Error),
    #[error("sealing: {0}")]
    Seal(vigil_schema::proto::MsgError),
    #[error("framing: {0}")]
    Frame(vigil_schema::frame::FrameError),
    #[error("the server refused this agent's protocol: {0}")]
    Version(String),
}

impl From<russh::Error> for PushError {
    fn from(e: russh::Error) -> Self {
        Self::Ssh(e)
    }
}

struct Client {
    pinned: String,
    seen: Arc<std::sync::Mutex<Option<String>>>,
}

impl russh::client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else { return Ok(false) };
        let fp = key.fingerprint(HashAlg::Sha256).to_string();
        let ok = fp == self.pinned;
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(fp);
        }
        Ok(ok)
    }
}

/// Keeps a session with one of the server's nodes up until cancelled.
pub async fn run(
    cfg: &AgentConfig,
    spool: &RefCell<Spool>,
    schedule_tx: &watch::Sender<Schedule>,
    produced: &Notify,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), MAX_BACKOFF);
    let mut rotation = Rotation::new(&cfg.server, &cfg.fallback_servers);
    loop {
        let server = rotation.current().to_owned();
        let started = Instant::now();
        let welcomed = std::cell::Cell::new(false);
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = session(cfg, &server, spool, schedule_tx, produced, &cancel, &welcomed) => r,
        };
        match &result {
            Ok(()) if cancel.is_cancelled() => return,
            Ok(()) => tracing::info!(%server, "server closed the session"),
            Err(e @ PushError::HostKeyMismatch { .. }) => tracing::error!(%server, error = %e, "refusing the server"),
            Err(e) => tracing::warn!(%server, error = %e, "session ended"),
        }
        // A session the server welcomed proves it is up again: the next failure starts from the shortest wait (a
        // server restarted several times in a row must not leave its agents sleeping a minute). One that ended
        // before the welcome keeps backing off, unless it lasted long.
        if welcomed.get() || started.elapsed() > Duration::from_secs(30) {
            backoff.reset();
        }
        let ended = match result {
            Err(PushError::Revoked(_)) => Ended::Revoked,
            _ if welcomed.get() => Ended::Worked,
            Err(PushError::HostKeyMismatch { .. }) => Ended::WrongKey,
            _ => Ended::Failed,
        };
        // Jittered in [step/2, step]; the longest step after a revocation or a round of host key mismatches.
        let wait = match rotation.after(ended) {
            Pause::None => continue,
            Pause::Backoff => backoff.next_wait(),
            Pause::Longest => jittered(backoff.max()),
        };
        tracing::debug!(?wait, "reconnecting later");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// How a session on one address ended, as far as [`Rotation`] is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The server welcomed the agent; the session ended later.
    Worked,
    /// No working session: refused, timed out, or closed before the welcome.
    Failed,
    /// The address presented another host key than the pinned one.
    WrongKey,
    /// The server revoked this agent. The nodes share one registry: the others would say the same.
    Revoked,
}

/// What the pusher does before dialling [`Rotation::current`] again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    /// Dial at once.
    None,
    /// The backoff's next step.
    Backoff,
    /// The backoff's longest step.
    Longest,
}

/// The endpoints the pusher dials, `server` then `fallback_servers` (the other nodes, which present the same host
/// key), and where it is among them. It stays on an address while a session there lasts; a session that ends, or
/// cannot start, moves it to the next; only a whole round of failures since the last working session pauses it.
#[derive(Debug)]
struct Rotation {
    /// Never empty: `server` first.
    addrs: Vec<String>,
    /// Always below `addrs.len()`.
    at: usize,
    /// Failed addresses since the last working session or pause.
    failed: usize,
    /// Whether each of those failures was a host key mismatch.
    all_wrong_key: bool,
}

impl Rotation {
    fn new(server: &str, fallbacks: &[String]) -> Self {
        let mut addrs = vec![server.to_owned()];
        for s in fallbacks {
            if !addrs.contains(s) {
                addrs.push(s.clone());
            }
        }
        Self { addrs, at: 0, failed: 0, all_wrong_key: true }
    }

    /// The address to dial now.
    fn current(&self) -> &str {
        // `at` stays below the length (`after` takes it modulo), and the list is never empty.
        &self.addrs[self.at]
    }

    /// Moves to the next address after a session on the current one ended; says how long to pause first. With one
    /// address this is the pusher's behaviour before issue 17: a pause after every session.
    fn after(&mut self, ended: Ended) -> Pause {
        self.at = (self.at + 1) % self.addrs.len();
        let pause = match ended {
            Ended::Worked => Pause::Backoff,
            Ended::Revoked => Pause::Longest,
            Ended::Failed | Ended::WrongKey => {
                self.failed += 1;
                self.all_wrong_key &= ended == Ended::WrongKey;
                if self.failed < self.addrs.len() {
                    return Pause::None;
                }
                if self.all_wrong_key { Pause::Longest } else { Pause::Backoff }
            }
        };
        self.failed = 0;
        self.all_wrong_key = true;
        pause
    }
}

/// One session: connect, authenticate, hello, then one select loop sending spooled reports and handling replies
/// ([`on_reply`]) until the channel closes or `cancel` fires.
// Over 100 lines: the loop owns the channel halves, the frame decoder, the in-flight window and the backlog token
// bucket together; split into functions they would travel as a half-dozen `&mut` parameters each.
async fn session(
    cfg: &AgentConfig,
    server: &str,
    spool: &RefCell<Spool>,
    schedule_tx: &watch::Sender<Schedule>,
    produced: &Notify,
    cancel: &CancellationToken,
    welcomed_flag: &std::cell::Cell<bool>,
) -> Result<(), PushError> {
    let ssh_config = Arc::new(russh::client::Config {
        inactivity_timeout: Some(Duration::from_secs(120)),
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    });
    let seen = Arc::new(std::sync::Mutex::new(None));
    let client = Client { pinned: cfg.server_host_key.clone(), seen: seen.clone() };
    let connect = russh::client::connect(ssh_config, server, client);
    let mut handle = match tokio::time::timeout(Duration::from_secs(15), connect).await {
        Err(_) => return Err(PushError::ConnectTimeout(server.to_owned())),
        Ok(Err(e)) => {
            if let Some(fp) = seen.lock().ok().and_then(|s| s.clone())
                && fp != cfg.server_host_key
            {
                return Err(PushError::HostKeyMismatch { seen: fp, pinned: cfg.server_host_key.clone() });
            }
            return Err(PushError::Connect { server: server.to_owned(), cause: e });
        }
        Ok(Ok(h)) => h,
    };
    let key = PrivateKeyWithHashAlg::new(Arc::new(cfg.key.0.clone()), None);
    if !handle.authenticate_publickey(cfg.agent_id.clone(), key).await?.success() {
        return Err(PushError::AuthRefused);
    }
    let channel = handle.channel_open_session().await?;
    channel.request_subsystem(true, SUBSYSTEM).await?;
    let (mut rd, wr) = channel.split();
    loop {
        match tokio::time::timeout(Duration::from_secs(15), rd.wait()).await {
            Ok(Some(ChannelMsg::Success)) => break,
            Ok(Some(ChannelMsg::Failure) | None) | Err(_) => return Err(PushError::SubsystemRefused),
            Ok(Some(_)) => {}
        }
    }

    let hello = AgentMsg::Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        schedule_hash: schedule_tx.borrow().hash(),
    };
    let bytes = seal_msg(&cfg.keys, &cfg.agent_id, CONTROL_SEQ, &hello).map_err(PushError::Seal)?;
    wr.data_bytes(bytes).await?;

    // Reports spooled before this connection are backlog, drained at a bounded rate; later ones go out at once.
    let backlog_below = spool.borrow().peek_next_seq();
    // Each report in flight, with when it was sent: its ack's round trip is logged at debug level.
    let mut in_flight: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut retry_after: Option<Instant> = None;
    // Token bucket for the backlog, refilled from elapsed time when it is used: no timer ticks while idle.
    let mut tokens = f64::from(BACKLOG_PER_SECOND);
    let mut refilled = Instant::now();
    let mut backlog_wait: Option<Instant> = None;
    let mut decoder = FrameDecoder::default();
    let mut welcomed = false;
    let result = loop {
        if welcomed && retry_after.is_none_or(|t| Instant::now() >= t) {
            retry_after = None;
            backlog_wait = None;
            let now = Instant::now();
            let rate = f64::from(BACKLOG_PER_SECOND);
            tokens = (tokens + now.duration_since(refilled).as_secs_f64() * rate).min(rate);
            refilled = now;
            // Fresh reports first, then the oldest backlog within the rate budget.
            let candidates: Vec<u64> = {
                let s = spool.borrow();
                let fresh = s.pending().filter(|q| *q >= backlog_below).filter(|q| !in_flight.contains_key(q));
                let old = s.pending().filter(|q| *q < backlog_below).filter(|q| !in_flight.contains_key(q));
                fresh.chain(old).take(WINDOW.saturating_sub(in_flight.len())).collect()
            };
            for seq in candidates {
                if seq < backlog_below {
                    if tokens < 1.0 {
                        // Wake when the next token is due.
                        let due = (1.0 - tokens) / f64::from(BACKLOG_PER_SECOND);
                        backlog_wait = Some(now + Duration::from_secs_f64(due));
                        break;
                    }
                    tokens -= 1.0;
                }
                let Some(sealed) = spool.borrow().read(seq) else { continue };
                wr.data_bytes(frame::encode(&sealed)).await?;
                in_flight.insert(seq, Instant::now());
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => {
                // Give acks of what is in flight a moment, then leave.
                let deadline = Instant::now() + Duration::from_secs(2);
                while !in_flight.is_empty() {
                    let Ok(Some(msg)) = tokio::time::timeout_at(deadline, rd.wait()).await else { break };
                    if let ChannelMsg::Data { data } = msg {
                        let _ = decoder.push(&data);
                        while let Ok(Some(f)) = decoder.next_frame() {
                            if let Ok((_, ServerMsg::Ack { seq })) = open_msg::<ServerMsg>(&cfg.keys, &f) {
                                spool.borrow_mut().remove(seq);
                                in_flight.remove(&seq);
                            }
                        }
                    }
                }
                break Ok(());
            }
            _ = produced.notified() => {}
            _ = sleep_until_some(wake_at(retry_after, backlog_wait)) => {}
            msg = rd.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    decoder.push(&data).map_err(PushError::Frame)?;
                    while let Some(f) = decoder.next_frame().map_err(PushError::Frame)? {
                        let (_, reply) = match open_msg::<ServerMsg>(&cfg.keys, &f) {
                            Ok(x) => x,
                            Err(e) => {
                                tracing::warn!(error = %e, "unreadable frame from the server");
                                continue;
                            }
                        };
                        match on_reply(reply, spool, &mut in_flight)? {
                            Reply::Nothing => {}
                            Reply::Welcomed(server_version) => {
                                tracing::info!(%server, %server_version, "connected: delivering to this server");
                                welcomed = true;
                                welcomed_flag.set(true);
                            }
                            Reply::Jobs { hash, schedule } => {
                                tracing::info!(%hash, jobs = schedule.jobs.len(), "new job list from the server");
                                if let Err(e) = cfg.save_schedule(&schedule) {
                                    tracing::warn!(error = %e, "could not save the schedule");
                                }
                                schedule_tx.send_replace(schedule);
                            }
                            Reply::RetryLater => retry_after = Some(Instant::now() + Duration::from_secs(5)),
                        }
                    }
                }
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => break Ok(()),
                Some(_) => {}
            }
        }
    };
    let _ = handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    // disconnect() only queues the message: wait for the session to wind down.
    let _ = tokio::time::timeout(Duration::from_secs(2), &mut handle).await;
    result
}

/// What the session does after a server message, beyond the spool bookkeeping [`on_reply`] did.
#[derive(Debug, PartialEq)]
enum Reply {
    Nothing,
    /// The server's version: reports may be sent.
    Welcomed(String),
    /// A new schedule to save and run.
    Jobs {
        hash: String,
        schedule: Schedule,
    },
    /// The server could not store a report now: sending pauses.
    RetryLater,
}

/// Applies a server message to the spool and the set of reports in flight: an ack deletes its report, and so does a
/// permanent `bad_report` refusal (the report can never be accepted: kept, it would be resent forever);
/// `unavailable` leaves the report spooled for a later retry; `unknown` (revoked) and `version` end the session.
fn on_reply(
    reply: ServerMsg,
    spool: &RefCell<Spool>,
    in_flight: &mut BTreeMap<u64, Instant>,
) -> Result<Reply, PushError> {
    Ok(match reply {
        ServerMsg::Welcome { server_version, .. } => Reply::Welcomed(server_version),
        ServerMsg::Jobs { hash, schedule } => Reply::Jobs { hash, schedule },
        ServerMsg::Ack { seq } => {
            spool.borrow_mut().remove(seq);
            if let Some(sent) = in_flight.remove(&seq) {
                // From the send to the ack after the server's commit: the round trip an operator compares between
                // the reverse channel and a direct connection (bench/tunnel_memory.sh reads it).
                let rtt_us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                tracing::debug!(seq, rtt_us, "acked");
            }
            Reply::Nothing
        }
        ServerMsg::Error { code, message, seq } => match (code, seq) {
            (ErrorCode::BadReport, Some(seq)) => {
                tracing::error!(seq, %message, "server refused report for good; deleting it");
                spool.borrow_mut().remove(seq);
                in_flight.remove(&seq);
                Reply::Nothing
            }
            (ErrorCode::Unavailable, Some(seq)) => {
                tracing::warn!(seq, %message, "server could not store the report, retrying later");
                in_flight.remove(&seq);
                Reply::RetryLater
            }
            (ErrorCode::Unknown, _) => return Err(PushError::Revoked(message)),
            (ErrorCode::Version, _) => return Err(PushError::Version(message)),
            _ => {
                tracing::warn!(?code, ?seq, %message, "server error");
                Reply::Nothing
            }
        },
    })
}

/// The earlier of two optional instants.
fn wake_at(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sleeps until `t`, or forever when there is nothing to wake for.
async fn sleep_until_some(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool_with(dir: &std::path::Path, n: u64) -> RefCell<Spool> {
        let mut s = Spool::open(dir, 1 << 20, 100).unwrap();
        for _ in 0..n {
            let (seq, d) = s.next().unwrap();
            s.put(seq, d, b"sealed").unwrap();
        }
        RefCell::new(s)
    }

    fn error(code: ErrorCode, seq: u64) -> ServerMsg {
        ServerMsg::Error { code, message: "no".into(), seq: Some(seq) }
    }

    fn sent(seqs: &[u64]) -> BTreeMap<u64, Instant> {
        seqs.iter().map(|&q| (q, Instant::now())).collect()
    }

    #[test]
    fn a_permanent_bad_report_refusal_deletes_the_spooled_report() {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool_with(dir.path(), 3);
        let mut in_flight = sent(&[1, 2, 3]);
        assert_eq!(on_reply(error(ErrorCode::BadReport, 2), &spool, &mut in_flight).unwrap(), Reply::Nothing);
        assert_eq!(spool.borrow().pending().collect::<Vec<_>>(), [1, 3]);
        assert_eq!(in_flight.keys().copied().collect::<Vec<_>>(), [1, 3]);
        assert!(spool.borrow().read(2).is_none());
        // Deleted on disk too: a restart does not send it again.
        drop(spool);
        assert_eq!(Spool::open(dir.path(), 1 << 20, 100).unwrap().pending().collect::<Vec<_>>(), [1, 3]);
    }

    #[test]
    fn acks_delete_and_unavailable_keeps_the_report_for_later() {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool_with(dir.path(), 2);
        let mut in_flight = sent(&[1, 2]);
        assert_eq!(on_reply(ServerMsg::Ack { seq: 1 }, &spool, &mut in_flight).unwrap(), Reply::Nothing);
        assert_eq!(on_reply(error(ErrorCode::Unavailable, 2), &spool, &mut in_flight).unwrap(), Reply::RetryLater);
        assert_eq!(spool.borrow().pending().collect::<Vec<_>>(), [2]);
        assert!(in_flight.is_empty(), "the retry sends it again");
        // Other errors about a report leave it spooled.
        assert_eq!(on_reply(error(ErrorCode::BadMessage, 2), &spool, &mut in_flight).unwrap(), Reply::Nothing);
        assert_eq!(spool.borrow().pending().collect::<Vec<_>>(), [2]);
        let revoked = on_reply(error(ErrorCode::Unknown, 2), &spool, &mut in_flight);
        assert!(matches!(revoked, Err(PushError::Revoked(_))));
    }

    fn rotation(n: usize) -> Rotation {
        let fallbacks: Vec<String> = (1..n).map(|i| format!("b{i}:1")).collect();
        Rotation::new("a:1", &fallbacks)
    }

    #[test]
    fn the_rotation_lists_server_first_then_the_fallbacks_once_each() {
        let r = Rotation::new("a:1", &["b:2".into(), "a:1".into(), "c:3".into(), "b:2".into()]);
        assert_eq!(r.addrs, ["a:1", "b:2", "c:3"]);
        assert_eq!(r.current(), "a:1");
    }

    #[test]
    fn failures_move_on_at_once_and_a_whole_round_of_them_backs_off() {
        let mut r = rotation(3);
        assert_eq!(r.after(Ended::Failed), Pause::None);
        assert_eq!(r.current(), "b1:1");
        assert_eq!(r.after(Ended::Failed), Pause::None);
        assert_eq!(r.current(), "b2:1");
        assert_eq!(r.after(Ended::Failed), Pause::Backoff, "every address failed: wait");
        assert_eq!(r.current(), "a:1", "then the round starts over from the server");
        assert_eq!(r.after(Ended::Failed), Pause::None, "a new round");
        assert_eq!(r.current(), "b1:1");
    }

    #[test]
    fn a_working_session_that_ends_moves_on_after_the_short_pause_and_starts_a_new_round() {
        let mut r = rotation(2);
        assert_eq!(r.after(Ended::Failed), Pause::None);
        assert_eq!(r.current(), "b1:1");
        // b1 works for a while (the pusher stays on it while the session lasts), then its node dies.
        assert_eq!(r.after(Ended::Worked), Pause::Backoff);
        assert_eq!(r.current(), "a:1");
        assert_eq!(r.after(Ended::Failed), Pause::None, "the earlier failure of a:1 no longer counts");
        assert_eq!(r.current(), "b1:1");
        assert_eq!(r.after(Ended::Failed), Pause::Backoff);
    }

    #[test]
    fn a_wrong_host_key_moves_on_and_only_a_round_of_them_waits_longest() {
        let mut r = rotation(2);
        assert_eq!(r.after(Ended::WrongKey), Pause::None, "the next node may present the pinned key");
        assert_eq!(r.current(), "b1:1");
        assert_eq!(r.after(Ended::WrongKey), Pause::Longest);
        assert_eq!(r.after(Ended::WrongKey), Pause::None);
        assert_eq!(r.after(Ended::Failed), Pause::Backoff, "one node down, not a wrong key everywhere");
        assert_eq!(r.after(Ended::Revoked), Pause::Longest, "the registry is shared: no node would accept it");
        assert_eq!(r.current(), "b1:1");
    }

    #[test]
    fn one_address_pauses_after_every_session_as_before() {
        let mut r = rotation(1);
        for ended in [Ended::Failed, Ended::Worked, Ended::Failed] {
            assert_eq!(r.after(ended), Pause::Backoff);
            assert_eq!(r.current(), "a:1");
        }
        assert_eq!(r.after(Ended::WrongKey), Pause::Longest);
        assert_eq!(r.after(Ended::Revoked), Pause::Longest);
    }
}
