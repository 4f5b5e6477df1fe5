//! The vigil protocol over a real SSH connection: [`VigilSession`] (hello, sealed reports, raw bytes and forged
//! frames; the server's replies as [`Event`]s) and [`FrameSender`], which writes on it from another thread.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use russh::client::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use vigil_schema::envelope;
use vigil_schema::frame::{self, FrameDecoder};
use vigil_schema::proto::{AgentMsg, CONTROL_SEQ, PROTOCOL_VERSION, SUBSYSTEM, ServerMsg, open_msg, seal_msg};
use vigil_schema::report::Report;
use vigil_schema::secret::EnvelopeKeys;

use super::{AgentCreds, CLIENT_VERSION, STEP_TIMEOUT, SshConn, block, rt};

/// What [`VigilSession::recv`] saw.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Msg(ServerMsg),
    /// The server closed the channel or the connection.
    Closed,
    Timeout,
}

/// Writes frames on a vigil channel; cloneable, so one thread can send while another reads.
#[derive(Clone)]
pub struct FrameSender {
    wr: Arc<ChannelWriteHalf<Msg>>,
    agent_id: String,
    keys: EnvelopeKeys,
}

impl std::fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSender").field("agent_id", &self.agent_id).finish_non_exhaustive()
    }
}

impl FrameSender {
    /// Writes bytes as they are.
    pub fn raw(&self, bytes: &[u8]) -> Result<()> {
        let data = bytes.to_vec();
        block("write", STEP_TIMEOUT, self.wr.data_bytes(data))?.context("writing to the vigil channel")
    }

    /// Seals `msg` with this agent's keys at `seq` and writes the frame.
    pub fn msg<M: serde::Serialize>(&self, seq: u64, msg: &M) -> Result<()> {
        self.raw(&seal_msg(&self.keys, &self.agent_id, seq, msg).context("sealing")?)
    }

    /// A hello announcing `schedule_hash`.
    pub fn hello(&self, schedule_hash: &str) -> Result<()> {
        let hello = AgentMsg::Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: CLIENT_VERSION.into(),
            schedule_hash: schedule_hash.into(),
        };
        self.msg(CONTROL_SEQ, &hello)
    }

    /// One report, sealed at its own sequence number.
    pub fn report(&self, report: &Report) -> Result<()> {
        self.msg(report.seq, &AgentMsg::Report(report.clone()))
    }

    /// Several reports in one write (pipelined).
    pub fn reports(&self, reports: &[Report]) -> Result<()> {
        let mut bytes = Vec::new();
        for r in reports {
            bytes.extend(seal_msg(&self.keys, &self.agent_id, r.seq, &AgentMsg::Report(r.clone())).context("sealing")?);
        }
        self.raw(&bytes)
    }

    /// A report whose tag has one bit flipped.
    pub fn forged_tag(&self, report: &Report) -> Result<()> {
        let json = serde_json::to_vec(&AgentMsg::Report(report.clone()))?;
        let mut sealed = envelope::seal(&self.keys, &self.agent_id, report.seq, &json).context("sealing")?;
        if let Some(last) = sealed.last_mut() {
            *last ^= 0x01;
        }
        self.raw(&frame::encode(&sealed))
    }

    /// A report under this agent's id but sealed with other keys (a wrong secret).
    pub fn with_keys(&self, keys: &EnvelopeKeys, report: &Report) -> Result<()> {
        self.raw(&seal_msg(keys, &self.agent_id, report.seq, &AgentMsg::Report(report.clone())).context("sealing")?)
    }

    /// A report under another agent's id, sealed with `keys`.
    pub fn as_agent(&self, agent_id: &str, keys: &EnvelopeKeys, report: &Report) -> Result<()> {
        self.raw(&seal_msg(keys, agent_id, report.seq, &AgentMsg::Report(report.clone())).context("sealing")?)
    }

    /// A correctly sealed envelope holding `plaintext` (e.g. malformed JSON).
    pub fn sealed_plaintext(&self, seq: u64, plaintext: &[u8]) -> Result<()> {
        let sealed = envelope::seal(&self.keys, &self.agent_id, seq, plaintext).context("sealing")?;
        self.raw(&frame::encode(&sealed))
    }

    /// A length prefix announcing `len` bytes, followed by `body` (the rest need never come).
    pub fn announce(&self, len: u32, body: &[u8]) -> Result<()> {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(body);
        self.raw(&bytes)
    }
}

/// An authenticated connection with the `vigil` subsystem open.
pub struct VigilSession {
    conn: SshConn,
    rd: ChannelReadHalf,
    sender: FrameSender,
    decoder: FrameDecoder,
    queue: VecDeque<ServerMsg>,
    /// Every message received so far, in order.
    pub received: Vec<ServerMsg>,
    closed: bool,
}

impl std::fmt::Debug for VigilSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VigilSession")
            .field("agent_id", &self.sender.agent_id)
            .field("received", &self.received.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl VigilSession {
    /// Connects as `creds` (pinning its server key), authenticates with its key and opens the subsystem. No hello.
    pub fn open(creds: &AgentCreds) -> Result<Self> {
        let mut conn = SshConn::connect(&creds.server, &creds.server_host_key)?;
        ensure!(conn.auth_key(&creds.agent_id, &creds.key)?, "the server refused the key of {}", creds.agent_id);
        let mut ch = conn.session()?;
        ensure!(ch.subsystem(SUBSYSTEM)?, "the server refused the vigil subsystem");
        let (rd, wr) = ch.ch.split();
        let sender = FrameSender { wr: Arc::new(wr), agent_id: creds.agent_id.clone(), keys: creds.keys.clone() };
        Ok(Self {
            conn,
            rd,
            sender,
            decoder: FrameDecoder::default(),
            queue: VecDeque::new(),
            received: Vec::new(),
            closed: false,
        })
    }

    /// [`open`](Self::open), then hello with the enrolled schedule's hash, then waits for the welcome.
    pub fn start(creds: &AgentCreds) -> Result<Self> {
        let mut s = Self::open(creds)?;
        s.sender.hello(&creds.schedule_hash)?;
        match s.next(STEP_TIMEOUT)? {
            ServerMsg::Welcome { protocol, .. } if protocol == PROTOCOL_VERSION => Ok(s),
            other => bail!("expected a welcome, got {other:?}"),
        }
    }

    /// A sender for this channel, usable from other threads.
    pub fn sender(&self) -> FrameSender {
        self.sender.clone()
    }

    /// See [`FrameSender::report`].
    pub fn send_report(&self, report: &Report) -> Result<()> {
        self.sender.report(report)
    }

    /// The next message, [`Event::Closed`] once the server closed, or [`Event::Timeout`].
    pub fn recv(&mut self, timeout: Duration) -> Result<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.queue.pop_front() {
                return Ok(Event::Msg(m));
            }
            if self.closed {
                return Ok(Event::Closed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let rd = &mut self.rd;
            let Ok(msg) = rt().block_on(async { tokio::time::timeout(left, rd.wait()).await }) else {
                return Ok(Event::Timeout);
            };
            match msg {
                Some(ChannelMsg::Data { data }) => {
                    self.decoder.push(&data).context("server frame stream")?;
                    while let Some(f) = self.decoder.next_frame().context("server frame stream")? {
                        let (opened, m) =
                            open_msg::<ServerMsg>(&self.sender.keys, &f).context("opening a server frame")?;
                        ensure!(opened.seq == m.seq(), "server frame sequence {} carries {m:?}", opened.seq);
                        self.received.push(m.clone());
                        self.queue.push_back(m);
                    }
                }
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => self.closed = true,
                Some(_) => {}
            }
        }
    }

    /// The next message; an error on close or timeout.
    pub fn next(&mut self, timeout: Duration) -> Result<ServerMsg> {
        match self.recv(timeout)? {
            Event::Msg(m) => Ok(m),
            other => bail!("expected a message from the server, got {other:?}; received so far: {:?}", self.received),
        }
    }

    /// Reads until every seq in `seqs` is acked. An error reply for one of them, a close or the timeout is an
    /// error. Other messages are skipped (they stay in [`received`](Self::received)).
    pub fn wait_acks(&mut self, seqs: impl IntoIterator<Item = u64>, timeout: Duration) -> Result<()> {
        let mut want: std::collections::BTreeSet<u64> = seqs.into_iter().collect();
        let deadline = Instant::now() + timeout;
        while !want.is_empty() {
            match self.recv(deadline.saturating_duration_since(Instant::now()))? {
                Event::Msg(ServerMsg::Ack { seq }) => {
                    want.remove(&seq);
                }
                Event::Msg(ServerMsg::Error { seq: Some(s), code, message }) if want.contains(&s) => {
                    bail!("report {s} refused: {code:?}: {message}")
                }
                Event::Msg(_) => {}
                other => bail!("waiting for acks of {want:?}: {other:?}"),
            }
        }
        Ok(())
    }

    /// Reads until an error reply arrives and returns it; other messages are skipped.
    pub fn wait_error(&mut self, timeout: Duration) -> Result<ServerMsg> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now()))? {
                Event::Msg(m @ ServerMsg::Error { .. }) => return Ok(m),
                Event::Msg(_) => {}
                other => bail!("waiting for an error reply: {other:?}; received: {:?}", self.received),
            }
        }
    }

    /// Reads until the server closes; true if it did within `timeout`.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv(deadline.saturating_duration_since(Instant::now()))? {
                Event::Closed => return Ok(true),
                Event::Timeout => return Ok(false),
                Event::Msg(_) => {}
            }
        }
    }

    /// Whether the SSH connection itself is gone.
    pub fn connection_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// Closes the connection politely.
    pub fn close(self) {
        self.conn.close();
    }
}
