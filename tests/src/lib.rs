//! vigil's end-to-end test harness: real processes on real ports, cleaned up by PID.
//!
//! The tests in `tests/tests/*.rs` drive the built binaries (`vigil`, `vigil-agent`) against real components, never
//! mocks. This crate owns the pieces they share:
//!
//! - [`agent_set`]: the agent set `scripts/dist.sh` builds, which every `vigil` run here ships, and a static-ELF
//!   check.
//! - [`paths`]: where the built binaries are ([`bin`]) and a per-test temporary directory ([`TestDir`]).
//! - [`poll`]: waiting for a condition with a deadline ([`wait_until`], [`wait_for`]); no fixed sleeps in tests.
//! - [`net`]: free loopback ports ([`free_port`]) and "is something listening" probes.
//! - [`process`]: [`Proc`], a child whose output goes to files and which is stopped by PID (SIGTERM, then SIGKILL)
//!   when dropped.
//! - [`reports`]: every report the tests send ([`sample_report`](reports::sample_report)) and the load generator's
//!   shapes.
//! - [`rng`]: [`Rng`], seeded pseudo-random numbers for tests that make random choices.
//! - [`service`]: [`Service`], one server process on a free loopback port in its own directory, waited for until
//!   ready, stopped by PID, restartable; what [`Sshd`] and [`Smtp`] are built on.
//! - [`sshd`]: [`Sshd`], a real OpenSSH `sshd` on 127.0.0.1 with its own host key, config and authorized keys, and
//!   [`ClientKey`], an ed25519 key pair for logging in.
//! - [`dropbear`]: [`Dropbear`], a real dropbear SSH server on 127.0.0.1 with its own ed25519 host key, for hosts
//!   not served by OpenSSH.
//! - [`users`]: [`LocalUser`], a throwaway local account with a password, for password and non-root logins.
//! - [`smtp`]: [`Smtp`], a real SMTP server (Debian's aiosmtpd) writing each mail to a maildir.
//! - [`client`]: the protocol test client for vigil's SSH endpoint and [`Served`](client::Served), the real `vigil
//!   serve` it talks to (see its own map).
//! - [`fixtures`]: canned input files for collectors (utmp records).
//! - [`fleet`]: `clients.xml` and `jobs.toml` written for the hosts a test started ([`ClientEntry`],
//!   [`jobs_toml`]) in a [`Workdir`] where `vigil` runs with `--clients` and `--jobs`.
//! - [`wine`]: [`Wine`](wine::Wine), Windows binaries under Wine in a throwaway prefix, with the
//!   `bcryptprimitives.dll` shim Rust's standard library needs there.
//!
//! Everything here needs root and the packages `scripts/test.sh` installs (openssh-server, openssh-client,
//! python3-aiosmtpd, busybox, dropbear-bin); a missing piece is an error that says what to install, never a skipped
//! test.

pub mod agent_set;
pub mod client;
pub mod dropbear;
pub mod fixtures;
pub mod fleet;
pub mod net;
pub mod paths;
pub mod poll;
pub mod process;
pub mod reports;
pub mod rng;
pub mod service;
pub mod smtp;
pub mod sshd;
pub mod users;
pub mod wine;

pub use dropbear::Dropbear;
pub use fleet::{Auth, ClientEntry, Workdir, clients_xml, jobs_toml};
pub use net::{free_port, port_accepts};
pub use paths::{TestDir, bin, try_bin, workspace_root};
pub use poll::{wait_for, wait_until};
pub use process::{Proc, SIGHUP, SIGINT, SIGKILL, SIGTERM, kill_processes_under, pid_alive, signal_pid};
pub use rng::Rng;
pub use service::Service;
pub use smtp::{Mail, Smtp};
pub use sshd::{ClientKey, RootLogin, Sshd, SshdOpts};
pub use users::LocalUser;
