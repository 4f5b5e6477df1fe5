//! vigil's server: everything behind the `vigil` binary.
//!
//! Data flows through the modules in this order:
//!
//! - [`config`]: re-export of the `vigil-config` crate: `clients.xml` and `jobs.toml`, read in two stages (raw,
//!   then validated) with located errors; the schedule each host runs.
//! - [`keys`]: the server's SSH host key.
//! - [`endpoint`]: the embedded SSH server agents dial; authenticates agents, speaks the protocol from
//!   `vigil-schema`, opens envelopes and hands reports to ingest.
//! - [`ingest`]: the single writer that groups reports into transactions and acknowledges each after commit.
//! - [`store`]: the SQLite database: migrations, typed tables, queries for the operator views, retention.
//! - [`status`]: the `vigil status` view, read straight from the database.
//! - [`reload`]: watches both config files and publishes each valid edit; the last good config stays otherwise.
//! - [`bootstrap`]: an agent's directory, credentials and registration; one plan per host for installing,
//!   upgrading, starting and removing agents, on this machine (`transport="local"`) or over SSH.
//! - [`alert`]: alert rules evaluated in each report's transaction and periodically for silence; transitions and
//!   their mail are queued in the `outbox` table. [`mail`]: sends the outbox through SMTP (lettre), exactly once.
//! - [`repair`]: self-healing: re-runs the bootstrap plan on SSH hosts that fell silent, with backoff.
//! - [`tunnel`]: the SSH reverse channel: serve's sessions to hosts' sshd with a remote forward their agents dial;
//!   forwarded connections go to the endpoint.
//! - [`web`]: the read-only web dashboard, JSON API and Prometheus `/metrics` on `[web] listen`.
//! - [`serve`]: wires the above into the running daemon and owns every task it spawns.

pub use vigil_config as config;

pub mod alert;
pub mod bootstrap;
pub mod endpoint;
pub mod escape;
pub mod ingest;
pub mod keys;
pub mod lease;
pub mod mail;
pub mod reload;
pub mod repair;
pub mod serve;
pub mod status;
pub mod store;
pub mod tunnel;
pub mod web;
