//! The vigil protocol on one authenticated channel.
//!
//! Reads frames, checks each envelope (agent id bound to the SSH key, tag before decryption), answers hello with the
//! host's job list when the agent's schedule hash differs, submits reports to ingest and acks each after its commit,
//! pipelined with a bounded number in flight. Pushes a new job list when the config changes, and closes the session
//! when the host leaves clients.xml.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use tokio::sync::mpsc;
use vigil_schema::envelope::{self, EnvelopeError};
use vigil_schema::frame::FrameDecoder;
use vigil_schema::proto::{AgentMsg, ErrorCode, MsgError, PROTOCOL_VERSION, ServerMsg, open_msg, seal_msg};

use super::Shared;
use super::counters::Counters;
use super::registry::AgentEntry;
use crate::ingest::Answered;
use crate::store::{Incoming, Outcome};
use vigil_sys::clock::now_ms;

fn error(code: ErrorCode, message: impl Into<String>, seq: Option<u64>) -> ServerMsg {
    ServerMsg::Error { code, message: message.into(), seq }
}

/// Replies gathered into one channel write, at most (about two SSH packets of the endpoint's 32 KiB).
const COALESCE_BYTES: usize = 60 * 1024;

/// Why the reader stopped.
enum End {
    Closed,
    /// The agent may not connect any more: its host left clients.xml, or its key is no longer registered.
    Revoked(&'static str),
    Fatal,
}

/// Runs the protocol until the agent closes, the host is revoked, or the server shuts down.
pub async fn run(shared: Arc<Shared>, agent: Arc<AgentEntry>, channel: Channel<Msg>, handle: russh::server::Handle) {
    let (rd, wr) = channel.split();
    let (out_tx, mut out_rx) = mpsc::channel::<ServerMsg>(16);
    // Each report in flight holds a place here for its answer (see `ingest::AnswerSlot`): the capacity bounds them.
    let (answers_tx, mut answers_rx) = mpsc::channel::<Answered>(shared.limits.max_in_flight.max(1));
    let writer_agent = agent.clone();
    let writer_shared = shared.clone();
    let writer = async move {
        let seal = |msg: &ServerMsg| match seal_msg(&writer_agent.keys, &writer_agent.agent_id, msg.seq(), msg) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!(error = %e, "could not seal a reply");
                None
            }
        };
        let reply = |answered: Answered| reply_to(&writer_shared.counters, answered);
        let (mut messages_open, mut answers_open) = (true, true);
        while messages_open || answers_open {
            let first = tokio::select! {
                m = out_rx.recv(), if messages_open => match m {
                    Some(m) => m,
                    None => { messages_open = false; continue }
                },
                a = answers_rx.recv(), if answers_open => match a {
                    Some(a) => reply(a),
                    None => { answers_open = false; continue }
                },
            };
            let mut buf = seal(&first).unwrap_or_default();
            // Every reply already waiting goes out in the same channel write: under load one SSH packet carries
            // many acks instead of one each.
            while buf.len() < COALESCE_BYTES {
                let more = match out_rx.try_recv() {
                    Ok(m) => m,
                    Err(_) => match answers_rx.try_recv() {
                        Ok(a) => reply(a),
                        Err(_) => break,
                    },
                };
                buf.extend(seal(&more).unwrap_or_default());
            }
            if !buf.is_empty() && wr.data_bytes(buf).await.is_err() {
                break;
            }
        }
        let _ = wr.eof().await;
        let _ = wr.close().await;
    };
    let reader = Reader { shared: shared.clone(), agent: agent.clone(), out: out_tx, answers: answers_tx };
    let (end, ()) = tokio::join!(reader.run(rd), writer);
    if let End::Revoked(_) | End::Fatal = end {
        let reason = match end {
            End::Revoked(why) => why,
            _ => "protocol error",
        };
        let _ = handle.disconnect(russh::Disconnect::ByApplication, reason.into(), String::new()).await;
    }
}

/// What the agent is told about a report once ingest has answered.
fn reply_to(counters: &Counters, Answered { seq, result }: Answered) -> ServerMsg {
    match result {
        Ok(Outcome::Stored { .. }) => {
            counters.reports_stored.fetch_add(1, Ordering::Relaxed);
            ServerMsg::Ack { seq }
        }
        Ok(Outcome::Duplicate) => {
            counters.reports_duplicate.fetch_add(1, Ordering::Relaxed);
            ServerMsg::Ack { seq }
        }
        Err(e) => {
            tracing::warn!(seq, error = %e, "report not stored");
            error(ErrorCode::Unavailable, "not stored, retry later", Some(seq))
        }
    }
}

struct Reader {
    shared: Arc<Shared>,
    agent: Arc<AgentEntry>,
    out: mpsc::Sender<ServerMsg>,
    /// Where ingest answers this connection's reports.
    answers: mpsc::Sender<Answered>,
}

impl Reader {
    async fn send(&self, msg: ServerMsg) {
        let _ = self.out.send(msg).await;
    }

    async fn run(self, mut rd: russh::ChannelReadHalf) -> End {
        let shared = self.shared.clone();
        let cancel = shared.cancel.clone();
        let mut config_rx = shared.config.clone();
        let mut registry_rx = shared.watch_registry();
        let mut decoder = FrameDecoder::default();
        let mut state = State { hello: false, agent_hash: None, errors: 0 };
        let end = loop {
            tokio::select! {
                _ = cancel.cancelled() => break End::Closed,
                changed = config_rx.changed() => {
                    if changed.is_err() {
                        break End::Closed;
                    }
                    let cfg = config_rx.borrow_and_update().clone();
                    if cfg.host(&self.agent.host).is_none() {
                        tracing::info!("host left clients.xml; closing its session");
                        self.send(error(ErrorCode::Unknown, "host removed from clients.xml", None)).await;
                        break End::Revoked("host removed from clients.xml");
                    }
                    if state.hello {
                        self.push_jobs_if_changed(&mut state, &cfg).await;
                    }
                }
                changed = registry_rx.changed() => {
                    if changed.is_err() {
                        break End::Closed;
                    }
                    if !registry_rx.borrow_and_update().allows(&self.agent) {
                        tracing::info!("agent key no longer registered; closing its session");
                        self.send(error(ErrorCode::Unknown, "agent credentials revoked", None)).await;
                        break End::Revoked("agent credentials revoked");
                    }
                }
                msg = rd.wait() => match msg {
                    Some(ChannelMsg::Data { data }) => {
                        if let Err(e) = decoder.push(&data) {
                            Counters::bump(&shared.counters.bad_frames);
                            tracing::info!(error = %e, "unusable byte stream");
                            self.send(error(ErrorCode::BadFrame, e.to_string(), None)).await;
                            break End::Fatal;
                        }
                        loop {
                            match decoder.next_frame() {
                                Ok(Some(frame)) => {
                                    self.frame(&frame, &mut state).await;
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    Counters::bump(&shared.counters.bad_frames);
                                    self.send(error(ErrorCode::BadFrame, e.to_string(), None)).await;
                                    state.errors = u32::MAX;
                                    break;
                                }
                            }
                        }
                        if state.errors >= shared.limits.max_errors {
                            tracing::info!("too many refused frames; closing");
                            break End::Fatal;
                        }
                    }
                    Some(ChannelMsg::Eof | ChannelMsg::Close) | None => break End::Closed,
                    Some(_) => {}
                },
            }
        };
        // Every report read so far still gets its answer before the channel closes: the writer runs until the last
        // answer slot is used.
        end
    }

    async fn push_jobs_if_changed(&self, state: &mut State, cfg: &crate::config::Config) {
        let schedule = cfg.schedule_for(&self.agent.host);
        let hash = schedule.hash();
        if state.agent_hash.as_deref() != Some(hash.as_str()) {
            tracing::info!(%hash, jobs = schedule.jobs.len(), "sending job list");
            state.agent_hash = Some(hash.clone());
            self.send(ServerMsg::Jobs { hash, schedule }).await;
        }
    }

    fn refuse(
        &self,
        state: &mut State,
        counter: &std::sync::atomic::AtomicU64,
        what: &str,
        detail: &dyn std::fmt::Display,
    ) {
        state.errors = state.errors.saturating_add(1);
        if let Some(n) = Counters::bump(counter) {
            tracing::warn!(count = n, error = %detail, "{what}");
        }
    }

    async fn frame(&self, frame: &[u8], state: &mut State) {
        let counters = &self.shared.counters;
        // The clear agent id must be this connection's: a frame sealed for another agent (replayed here) is refused
        // before any key is used.
        match envelope::peek(frame) {
            Ok(h) if h.agent_id == self.agent.agent_id => {}
            Ok(_) => {
                self.refuse(state, &counters.bad_frames, "frame for another agent", &"agent id mismatch");
                self.send(error(ErrorCode::BadFrame, "envelope agent id does not match the authenticated agent", None))
                    .await;
                return;
            }
            Err(e) => {
                self.refuse(state, &counters.bad_frames, "unreadable envelope", &e);
                self.send(error(ErrorCode::BadFrame, e.to_string(), None)).await;
                return;
            }
        }
        let (opened, msg) = match open_msg::<AgentMsg>(&self.agent.keys, frame) {
            Ok(x) => x,
            Err(MsgError::Envelope(EnvelopeError::BadTag)) => {
                self.refuse(state, &counters.bad_tags, "bad envelope tag", &"dropped");
                self.send(error(ErrorCode::BadFrame, "authentication tag does not match", None)).await;
                return;
            }
            Err(e @ MsgError::Envelope(_)) => {
                self.refuse(state, &counters.bad_frames, "bad envelope", &e);
                self.send(error(ErrorCode::BadFrame, e.to_string(), None)).await;
                return;
            }
            Err(e) => {
                self.refuse(state, &counters.bad_messages, "bad message", &e);
                self.send(error(ErrorCode::BadMessage, e.to_string(), None)).await;
                return;
            }
        };
        if msg.seq() != opened.seq {
            let e = MsgError::SeqMismatch { inner: msg.seq(), outer: opened.seq };
            self.refuse(state, &counters.bad_messages, "bad message", &e);
            self.send(error(ErrorCode::BadMessage, e.to_string(), None)).await;
            return;
        }
        // A hello's strings reach the agents table and `vigil status`: bounded and free of control characters, as a
        // report's are (reports are checked with their own error code below).
        if matches!(msg, AgentMsg::Hello { .. })
            && let Err(e) = msg.validate()
        {
            self.refuse(state, &counters.bad_messages, "bad hello", &e);
            self.send(error(ErrorCode::BadMessage, e.to_string(), None)).await;
            return;
        }
        match msg {
            AgentMsg::Hello { protocol, agent_version, schedule_hash } => {
                if protocol != PROTOCOL_VERSION {
                    self.refuse(state, &counters.bad_messages, "unsupported protocol", &protocol);
                    self.send(error(
                        ErrorCode::Version,
                        format!("server speaks protocol {PROTOCOL_VERSION}, agent sent {protocol}"),
                        None,
                    ))
                    .await;
                    state.errors = u32::MAX;
                    return;
                }
                state.hello = true;
                state.agent_hash = Some(schedule_hash);
                self.send(ServerMsg::Welcome {
                    protocol: PROTOCOL_VERSION,
                    server_version: env!("CARGO_PKG_VERSION").into(),
                })
                .await;
                let cfg = self.shared.config.borrow().clone();
                self.push_jobs_if_changed(state, &cfg).await;
                let agent_id = self.agent.agent_id.clone();
                let now = now_ms();
                let touched =
                    self.shared.ingest.exec(move |store| store.touch_agent(&agent_id, &agent_version, now)).await;
                match touched {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not record check-in"),
                    Err(e) => tracing::warn!(error = %e, "could not record check-in"),
                }
            }
            AgentMsg::Report(report) => self.report(report, state).await,
        }
    }

    /// A report: checked, then submitted to ingest; its ack (or error) is sent by the writer once the commit is
    /// done, while the reader goes on.
    async fn report(&self, report: vigil_schema::report::Report, state: &mut State) {
        let counters = &self.shared.counters;
        if !state.hello {
            self.refuse(state, &counters.bad_messages, "report before hello", &report.seq);
            self.send(error(ErrorCode::BadMessage, "hello first", Some(report.seq))).await;
            return;
        }
        if let Err(e) = report.validate() {
            self.refuse(state, &counters.bad_reports, "invalid report", &e);
            self.send(error(ErrorCode::BadReport, e.to_string(), Some(report.seq))).await;
            return;
        }
        // Backpressure: at most max_in_flight reports of this connection wait for their commit.
        let Ok(permit) = self.answers.clone().reserve_owned().await else { return };
        let incoming = Incoming {
            agent_id: self.agent.agent_id.clone(),
            host: self.agent.host.clone(),
            ip: self.agent.ip.clone(),
            received_at_ms: now_ms(),
            report,
        };
        self.shared.ingest.submit_to(incoming, permit).await;
    }
}

struct State {
    hello: bool,
    /// The schedule hash the agent runs (from its hello, then from the last job list sent).
    agent_hash: Option<String>,
    errors: u32,
}
