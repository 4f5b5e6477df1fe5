//! Push: one persistent SSH connection to the server's endpoint, its host key pinned, key auth, the `vigil`
//! subsystem; hello with the schedule hash, spooled reports sent pipelined, each deleted on its ack. Reconnects
//! with exponential backoff and jitter.

use std::cell::RefCell;
use std::collections::BTreeSet;
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

/// Keeps a session with the server up until cancelled.
pub async fn run(
    cfg: &AgentConfig,
    spool: &RefCell<Spool>,
    schedule_tx: &watch::Sender<Schedule>,
    produced: &Notify,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), MAX_BACKOFF);
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            r = session(cfg, spool, schedule_tx, produced, &cancel) => r,
        };
        match &result {
            Ok(()) if cancel.is_cancelled() => return,
            Ok(()) => tracing::info!("server closed the session"),
            Err(e @ PushError::HostKeyMismatch { .. }) => tracing::error!(error = %e, "refusing the server"),
            Err(e) => tracing::warn!(server = %cfg.server, error = %e, "session ended"),
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff.reset();
        }
        let revoked = matches!(result, Err(PushError::Revoked(_) | PushError::HostKeyMismatch { .. }));
        // Jittered in [step/2, step]; the longest step after a revocation or a host key mismatch.
        let step = backoff.next_wait();
        let wait = if revoked { jittered(backoff.max()) } else { step };
        tracing::debug!(?wait, "reconnecting later");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn session(
    cfg: &AgentConfig,
    spool: &RefCell<Spool>,
    schedule_tx: &watch::Sender<Schedule>,
    produced: &Notify,
    cancel: &CancellationToken,
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
    let connect = russh::client::connect(ssh_config, cfg.server.as_str(), client);
    let mut handle = match tokio::time::timeout(Duration::from_secs(15), connect).await {
        Err(_) => return Err(PushError::ConnectTimeout(cfg.server.clone())),
        Ok(Err(e)) => {
            if let Some(fp) = seen.lock().ok().and_then(|s| s.clone())
                && fp != cfg.server_host_key
            {
                return Err(PushError::HostKeyMismatch { seen: fp, pinned: cfg.server_host_key.clone() });
            }
            return Err(PushError::Connect { server: cfg.server.clone(), cause: e });
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
    let mut in_flight: BTreeSet<u64> = BTreeSet::new();
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
                let fresh = s.pending().filter(|q| *q >= backlog_below).filter(|q| !in_flight.contains(q));
                let old = s.pending().filter(|q| *q < backlog_below).filter(|q| !in_flight.contains(q));
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
                in_flight.insert(seq);
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
                        match reply {
                            ServerMsg::Welcome { server_version, .. } => {
                                tracing::info!(server = %cfg.server, %server_version, "connected");
                                welcomed = true;
                            }
                            ServerMsg::Jobs { hash, schedule } => {
                                tracing::info!(%hash, jobs = schedule.jobs.len(), "new job list from the server");
                                if let Err(e) = cfg.save_schedule(&schedule) {
                                    tracing::warn!(error = %e, "could not save the schedule");
                                }
                                schedule_tx.send_replace(schedule);
                            }
                            ServerMsg::Ack { seq } => {
                                spool.borrow_mut().remove(seq);
                                in_flight.remove(&seq);
                            }
                            ServerMsg::Error { code, message, seq } => {
                                match (code, seq) {
                                    (ErrorCode::BadReport, Some(seq)) => {
                                        // It will never be accepted: keeping it would block nothing but waste space.
                                        tracing::error!(seq, "server refused report for good: {message}");
                                        spool.borrow_mut().remove(seq);
                                        in_flight.remove(&seq);
                                    }
                                    (ErrorCode::Unavailable, Some(seq)) => {
                                        tracing::warn!(seq, "server could not store the report, retrying later: {message}");
                                        in_flight.remove(&seq);
                                        retry_after = Some(Instant::now() + Duration::from_secs(5));
                                    }
                                    (ErrorCode::Unknown, _) => break_revoked(&message)?,
                                    (ErrorCode::Version, _) => return Err(PushError::Version(message)),
                                    _ => tracing::warn!(?code, ?seq, "server error: {message}"),
                                }
                            }
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

fn break_revoked(message: &str) -> Result<(), PushError> {
    Err(PushError::Revoked(message.to_owned()))
}
