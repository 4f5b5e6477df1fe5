//! A protocol test client for vigil's SSH endpoint, and a fixture that runs the real `vigil serve` for it.
//!
//! - [`AgentCreds`]: an agent directory written by `vigil enroll` (agent.toml, agent_key, schedule.json).
//! - [`SshConn`]: one real SSH connection (russh over TCP to 127.0.0.1) with the server's host key pinned. It can try
//!   any authentication method and any request (exec, shell, pty, subsystems, port forwarding), so tests can check
//!   what the endpoint refuses.
//! - [`VigilSession`]: an authenticated connection with the `vigil` subsystem open. It sends hello, sealed reports,
//!   raw bytes and forged frames (bad tag, wrong secret, another agent's id, an oversize length), and collects the
//!   server's replies ([`ServerMsg`]: welcome, jobs, ack, error). [`FrameSender`] writes on it from another thread.
//! - [`Served`]: a work directory with SSH-transport hosts in clients.xml, each enrolled with `vigil enroll`, and
//!   `vigil serve` running on a free port; plus readers for its database, its logs and `vigil status`.
//! - [`sample_report`]: a valid report with every statistic family filled.
//! - [`RealAgent`] and [`SpoolView`]: the real `vigil-agent` run from an enrolled directory, and what its spool
//!   holds; [`Served::verify_exactly_once`] checks its reports against the database. [`rss_bytes`]: a process's RSS.
//!
//! The API is blocking (a shared tokio runtime drives the SSH tasks) so tests mix it freely with processes, files
//! and SQLite. Nothing here calls server code: everything crosses a real socket.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use russh::client::{self, Handle, Msg};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use vigil_schema::agent_config::AgentConfigFile;
use vigil_schema::envelope;
use vigil_schema::frame::{self, FrameDecoder};
use vigil_schema::job::Schedule;
use vigil_schema::proto::{AgentMsg, CONTROL_SEQ, PROTOCOL_VERSION, SUBSYSTEM, ServerMsg, open_msg, seal_msg};
use vigil_schema::report::{
    CpuStats, DiskUsage, MemoryStats, NetInterface, Partition, Report, Stats, SwapStats, SystemInfo,
};
use vigil_schema::secret::{AgentSecret, EnvelopeKeys};

use crate::fleet::{ClientEntry, Workdir};
use crate::net::free_port;
use crate::poll::wait_for;
use crate::process::Proc;

/// How long one SSH step (connect, auth, a request's reply) may take before the client gives up.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// The agent version this client announces in its hello (and `vigil status` then shows).
pub const CLIENT_VERSION: &str = "test-client-1.0";

/// The runtime every connection of this process runs on.
fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the test client's runtime: {e}"))
    })
}

/// Runs `fut` on the shared runtime, giving up after `timeout`.
fn block<T>(what: &str, timeout: Duration, fut: impl Future<Output = T>) -> Result<T> {
    rt().block_on(async { tokio::time::timeout(timeout, fut).await })
        .map_err(|_| anyhow::anyhow!("{what}: no answer within {timeout:?}"))
}

// ---------------------------------------------------------------------------------------------------------------
// Credentials

/// What an enrolled agent holds: its id, the server it dials and that server's pinned key, its SSH key and its
/// envelope keys, and the hash of the schedule it was given.
#[derive(Clone)]
pub struct AgentCreds {
    pub dir: PathBuf,
    pub agent_id: String,
    pub server: String,
    pub server_host_key: String,
    pub key: PrivateKey,
    pub keys: EnvelopeKeys,
    pub schedule_hash: String,
}

impl std::fmt::Debug for AgentCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCreds")
            .field("dir", &self.dir)
            .field("agent_id", &self.agent_id)
            .field("server", &self.server)
            .field("server_host_key", &self.server_host_key)
            .finish_non_exhaustive()
    }
}

impl AgentCreds {
    /// Reads `<dir>/agent.toml`, the key file it names and the schedule file.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("agent.toml");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let file: AgentConfigFile = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let key_path = dir.join(&file.key_file);
        let key = load_key(&key_path)?;
        let secret = AgentSecret::from_hex(&file.secret.0).context("agent.toml: envelope secret")?;
        let schedule_path = dir.join(&file.schedule_file);
        let schedule: Schedule = serde_json::from_str(
            &std::fs::read_to_string(&schedule_path).with_context(|| format!("reading {}", schedule_path.display()))?,
        )
        .with_context(|| format!("parsing {}", schedule_path.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            agent_id: file.agent_id.clone(),
            server: file.server.clone(),
            server_host_key: file.server_host_key.clone(),
            key,
            keys: secret.derive_keys(),
            schedule_hash: schedule.hash(),
        })
    }
}

/// Reads an OpenSSH private key file.
pub fn load_key(path: &Path) -> Result<PrivateKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    PrivateKey::from_openssh(text.as_bytes()).with_context(|| format!("{}: not an OpenSSH private key", path.display()))
}

// ---------------------------------------------------------------------------------------------------------------
// SSH connection

/// Accepts exactly the pinned server key.
struct Pinned {
    fingerprint: String,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else { return Ok(false) };
        Ok(key.fingerprint(HashAlg::Sha256).to_string() == self.fingerprint)
    }
}

/// One SSH connection to the endpoint, authenticated or not.
pub struct SshConn {
    handle: Handle<Pinned>,
}

impl std::fmt::Debug for SshConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshConn").field("closed", &self.handle.is_closed()).finish()
    }
}

impl SshConn {
    /// Connects to `addr` (`host:port`) and completes the key exchange, accepting only the server key with
    /// `fingerprint` (`SHA256:...`).
    pub fn connect(addr: &str, fingerprint: &str) -> Result<Self> {
        let config = Arc::new(client::Config { nodelay: true, ..Default::default() });
        let handler = Pinned { fingerprint: fingerprint.to_owned() };
        let handle = block("ssh connect", STEP_TIMEOUT, client::connect(config, addr.to_owned(), handler))?
            .with_context(|| format!("ssh connect to {addr}"))?;
        Ok(Self { handle })
    }

    /// Public-key authentication as `user`; true when accepted.
    pub fn auth_key(&mut self, user: &str, key: &PrivateKey) -> Result<bool> {
        let key = PrivateKeyWithHashAlg::new(Arc::new(key.clone()), None);
        let r = block("publickey auth", STEP_TIMEOUT, self.handle.authenticate_publickey(user, key))?
            .context("publickey auth")?;
        Ok(r.success())
    }

    /// Password authentication as `user`; true when accepted.
    pub fn auth_password(&mut self, user: &str, password: &str) -> Result<bool> {
        let r = block("password auth", STEP_TIMEOUT, self.handle.authenticate_password(user, password))?
            .context("password auth")?;
        Ok(r.success())
    }

    /// The "none" method; true when accepted.
    pub fn auth_none(&mut self, user: &str) -> Result<bool> {
        let r = block("none auth", STEP_TIMEOUT, self.handle.authenticate_none(user))?.context("none auth")?;
        Ok(r.success())
    }

    /// Opens a session channel; an error when refused.
    pub fn session(&self) -> Result<RawChannel> {
        let ch = block("channel open", STEP_TIMEOUT, self.handle.channel_open_session())?.context("channel open")?;
        Ok(RawChannel { ch })
    }

    /// Opens a direct-tcpip channel (local port forwarding); true when the server accepted it.
    pub fn direct_tcpip(&self, host: &str, port: u32) -> Result<bool> {
        let r = block("direct-tcpip", STEP_TIMEOUT, self.handle.channel_open_direct_tcpip(host, port, "127.0.0.1", 1))?;
        Ok(r.is_ok())
    }

    /// Asks for a remote port forward; true when granted, false when refused.
    pub fn tcpip_forward(&self, address: &str, port: u32) -> Result<bool> {
        match block("tcpip-forward", STEP_TIMEOUT, self.handle.tcpip_forward(address, port))? {
            Ok(_) => Ok(true),
            Err(russh::Error::RequestDenied) => Ok(false),
            Err(e) => Err(e).context("tcpip-forward"),
        }
    }

    /// Whether the connection is gone (closed by either side).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Waits up to `timeout` for the server to close the connection; true when it did.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let handle = &mut self.handle;
        block("connection close", timeout, handle).is_ok()
    }

    /// Sends a disconnect and waits briefly for the session to wind down.
    pub fn close(mut self) {
        let handle = &mut self.handle;
        let _ = rt().block_on(async {
            let _ = handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
            tokio::time::timeout(Duration::from_secs(2), handle).await
        });
    }
}

/// A session channel on which requests are tried one by one.
pub struct RawChannel {
    ch: russh::Channel<Msg>,
}

impl std::fmt::Debug for RawChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawChannel").field("id", &self.ch.id()).finish()
    }
}

impl RawChannel {
    /// `exec`; true when the server said yes.
    pub fn exec(&mut self, command: &str) -> Result<bool> {
        block("exec", STEP_TIMEOUT, self.ch.exec(true, command))?.context("exec")?;
        self.reply("exec")
    }

    /// `shell`; true when the server said yes.
    pub fn shell(&mut self) -> Result<bool> {
        block("shell", STEP_TIMEOUT, self.ch.request_shell(true))?.context("shell")?;
        self.reply("shell")
    }

    /// `pty-req`; true when the server said yes.
    pub fn pty(&mut self) -> Result<bool> {
        block("pty", STEP_TIMEOUT, self.ch.request_pty(true, "xterm", 80, 24, 0, 0, &[]))?.context("pty")?;
        self.reply("pty")
    }

    /// `subsystem NAME`; true when the server said yes.
    pub fn subsystem(&mut self, name: &str) -> Result<bool> {
        block("subsystem", STEP_TIMEOUT, self.ch.request_subsystem(true, name))?.context("subsystem")?;
        self.reply("subsystem")
    }

    /// Waits for the server's success or failure reply to the last request (false also when the channel closed).
    fn reply(&mut self, what: &str) -> Result<bool> {
        let ch = &mut self.ch;
        block(what, STEP_TIMEOUT, async {
            loop {
                match ch.wait().await {
                    Some(ChannelMsg::Success) => return true,
                    Some(ChannelMsg::Failure | ChannelMsg::Close | ChannelMsg::Eof) | None => return false,
                    Some(_) => {}
                }
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The vigil protocol

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

// ---------------------------------------------------------------------------------------------------------------
// Reports

/// A valid report for `seq`, collected at `collected_at_ms`, with every family the store types: system, cpu (two
/// cores), memory, swap, two partitions, disk usage on `/` at 40% and `/data` at `disk_pct`, one network interface.
pub fn sample_report(seq: u64, collected_at_ms: i64, cpu_pct: f32, mem_pct: f32, disk_pct: f32) -> Report {
    let gib = 1u64 << 30;
    let used = |total: u64, pct: f32| (total as f64 * f64::from(pct) / 100.0) as u64;
    Report {
        seq,
        job: "all".into(),
        collected_at_ms,
        dropped: 0,
        stats: Stats {
            system: Some(SystemInfo {
                hostname: "test-host".into(),
                os_name: "Debian GNU/Linux".into(),
                os_version: "12".into(),
                kernel: "6.1.0".into(),
                arch: "x86_64".into(),
                uptime_s: 1000 + seq,
                boot_time: 1_700_000_000,
                cpu_model: "Test CPU".into(),
                cpu_count: 2,
            }),
            users: None,
            cpu: Some(CpuStats {
                total_pct: cpu_pct,
                per_core_pct: vec![cpu_pct, cpu_pct],
                load1: 0.5,
                load5: 0.25,
                load15: 0.125,
            }),
            memory: Some(MemoryStats {
                total: 8 * gib,
                used: used(8 * gib, mem_pct),
                available: 8 * gib - used(8 * gib, mem_pct),
                free: 8 * gib - used(8 * gib, mem_pct),
                used_pct: mem_pct,
            }),
            swap: Some(SwapStats { total: 2 * gib, used: gib / 4, free: 2 * gib - gib / 4, used_pct: 12.5 }),
            partitions: Some(vec![
                Partition {
                    device: "/dev/sda1".into(),
                    mount_point: "/".into(),
                    fs_type: "ext4".into(),
                    options: "rw".into(),
                },
                Partition {
                    device: "/dev/sdb1".into(),
                    mount_point: "/data".into(),
                    fs_type: "xfs".into(),
                    options: "rw".into(),
                },
            ]),
            disk_usage: Some(vec![
                DiskUsage {
                    mount_point: "/".into(),
                    total: 100 * gib,
                    used: 40 * gib,
                    free: 60 * gib,
                    used_pct: 40.0,
                    inodes_total: Some(1000),
                    inodes_used: Some(10),
                },
                DiskUsage {
                    mount_point: "/data".into(),
                    total: 100 * gib,
                    used: used(100 * gib, disk_pct),
                    free: 100 * gib - used(100 * gib, disk_pct),
                    used_pct: disk_pct,
                    inodes_total: None,
                    inodes_used: None,
                },
            ]),
            network: Some(vec![NetInterface {
                name: "eth0".into(),
                rx_bytes: 1000 * seq,
                tx_bytes: 500 * seq,
                rx_packets: 10 * seq,
                tx_packets: 5 * seq,
                rx_errors: 0,
                tx_errors: 0,
                rx_dropped: 0,
                tx_dropped: 0,
                rx_bytes_per_s: Some(100.0),
                tx_bytes_per_s: None,
            }]),
            security_events: None,
        },
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Deterministic pseudo-random bytes (xorshift64*), for garbage that is the same on every run.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// Serving fixture

/// Writes `text` to a temporary file beside `path` and renames it over `path`, as editors save.
pub fn replace_file(path: &Path, text: &str) -> Result<()> {
    let name = path.file_name().context("a file path")?.to_string_lossy().into_owned();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming over {}", path.display()))
}

/// The `ip` clients.xml gives the `i`th host of a [`Served`] (TEST-NET-1, never dialled).
pub fn host_ip(i: usize) -> String {
    format!("192.0.2.{}", i + 1)
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
                ClientEntry::local(n)
                    .attr("transport", "ssh")
                    .attr("ip", host_ip(i))
                    .attr("port", "22")
                    .attr("username", "vigil")
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

// ---------------------------------------------------------------------------------------------------------------
// Real agents

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

/// The resident set size of process `pid` in bytes (`VmRSS` of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .with_context(|| format!("no VmRSS in {path}"))?
        .parse()
        .context("VmRSS")?;
    Ok(kib * 1024)
}

/// The counters of the endpoint's closing summary line (`endpoint closed: connections=.. auth_rejected=..`) in a
/// serve log, if the line is there.
pub fn closing_counters(log: &str) -> Option<BTreeMap<String, u64>> {
    let line = log.lines().rev().find(|l| l.contains("endpoint closed:"))?;
    let (_, rest) = line.split_once("endpoint closed:")?;
    Some(
        rest.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn sample_reports_are_valid() {
        for (cpu, mem, disk) in [(0.0, 0.0, 0.0), (42.5, 63.0, 91.5), (100.0, 100.0, 100.0)] {
            sample_report(7, now_ms(), cpu, mem, disk).validate().unwrap();
        }
    }

    #[test]
    fn noise_is_deterministic_and_varied() {
        assert_eq!(noise(64, 3), noise(64, 3));
        assert_ne!(noise(64, 3), noise(64, 4));
        let distinct: std::collections::BTreeSet<u8> = noise(256, 9).into_iter().collect();
        assert!(distinct.len() > 100);
    }

    #[test]
    fn closing_counters_parse_the_summary_line() {
        let log = "x\n2026 INFO vigil_server::endpoint: endpoint closed: connections=3 auth_rejected=1 bad_tags=0\n";
        let c = closing_counters(log).unwrap();
        assert_eq!(c["connections"], 3);
        assert_eq!(c["auth_rejected"], 1);
        assert_eq!(c.len(), 3);
        assert!(closing_counters("nothing").is_none());
    }

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

    #[test]
    fn rss_of_this_process_is_plausible() {
        let rss = rss_bytes(std::process::id()).unwrap();
        assert!(rss > 1 << 20 && rss < 1 << 40, "{rss}");
    }

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
