//! A protocol test client for vigil's SSH endpoint, and a fixture that runs the real `vigil serve` for it.
//!
//! - [`creds`]: [`AgentCreds`], an agent directory written by `vigil enroll` (agent.toml, agent_key, schedule.json).
//! - [`ssh`]: [`SshConn`], one real SSH connection (russh over TCP to 127.0.0.1) with the server's host key pinned. It
//!   can try any authentication method and any request (exec, shell, pty, subsystems, port forwarding), so tests can
//!   check what the endpoint refuses.
//! - [`protocol`]: [`VigilSession`], an authenticated connection with the `vigil` subsystem open. It sends hello,
//!   sealed reports, raw bytes and forged frames (bad tag, wrong secret, another agent's id, an oversize length), and
//!   collects the server's replies (welcome, jobs, ack, error). [`FrameSender`] writes on it from another thread.
//! - [`served`]: [`Served`], a work directory with SSH-transport hosts in clients.xml, each enrolled with `vigil
//!   enroll`, and `vigil serve` running on a free port; plus readers for its database, its logs and `vigil status`.
//! - [`sample_report`] and [`noise`] (re-exported from [`crate::reports`]): the reports and garbage it sends.
//! - [`agent`]: [`RealAgent`] and [`SpoolView`], the real `vigil-agent` run from an enrolled directory, and what its
//!   spool holds; [`Served::verify_exactly_once`] checks its reports against the database.
//! - [`observe`]: [`rss_bytes`], a process's RSS, and [`closing_counters`], the endpoint's closing summary.
//!
//! The API is blocking (a shared tokio runtime, owned here, drives the SSH tasks) so tests mix it freely with
//! processes, files and SQLite. Nothing here calls server code: everything crosses a real socket. Every item is
//! re-exported here, so `vigil_tests::client::X` names it whatever module it lives in.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;

pub mod agent;
pub mod creds;
pub mod observe;
pub mod protocol;
pub mod served;
pub mod ssh;

pub use crate::reports::{noise, sample_report};
pub use agent::{Delivery, RealAgent, SpoolView};
pub use creds::{AgentCreds, load_key};
pub use observe::{closing_counters, rss_bytes};
pub use protocol::{Event, FrameSender, VigilSession};
pub use served::{Served, host_ip, replace_file};
pub use ssh::{Pinned, RawChannel, SshConn};
/// Milliseconds since the Unix epoch (the workspace's one clock, re-exported where tests always found it).
pub use vigil_sys::clock::now_ms;

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
