//! vigil's server: everything behind the `vigil` binary.
//!
//! Data flows through the modules in this order:
//!
//! - [`config`]: `clients.xml` and `jobs.toml`, read in two stages (raw, then validated) with located errors; the
//!   schedule each host runs; watching both files for live edits.
//! - [`keys`]: the server's SSH host key and the credentials minted for each agent.
//! - [`endpoint`]: the embedded SSH server agents dial; authenticates agents, speaks the protocol from
//!   `vigil-schema`, opens envelopes and hands reports to ingest.
//! - [`ingest`]: the single writer that groups reports into transactions and acknowledges each after commit.
//! - [`store`]: the SQLite database: migrations, typed tables, queries for the operator views, retention.
//! - [`status`]: the `vigil status` view, read straight from the database.
//! - [`reload`]: watches both config files and publishes each valid edit; the last good config stays otherwise.
//! - [`provision`] and [`bootstrap`]: an agent's directory, credentials and registration; installing, upgrading,
//!   starting and removing agents, on this machine (`transport="local"`) or over SSH ([`remote`], with the
//!   commands in [`bootstrap_cmds`]).
//! - [`alert`]: alert rules evaluated in each report's transaction and periodically for silence; transitions and
//!   their mail are queued in the `outbox` table. [`mail`]: sends the outbox through SMTP (lettre), exactly once.
//! - [`serve`]: wires the above into the running daemon and owns every task it spawns.

pub mod alert;
pub mod bootstrap;
pub mod bootstrap_cmds;
pub mod config;
pub mod endpoint;
pub mod escape;
pub mod ingest;
pub mod keys;
pub mod mail;
pub mod provision;
pub mod reload;
pub mod remote;
pub mod serve;
pub mod status;
pub mod store;
