//! Real services for vigil's tests, shared by every crate's test suite: a throwaway PostgreSQL cluster.
//!
//! - [`Postgres`] (`cluster`): `initdb` and `postgres` from PostgreSQL's own programs in a temporary directory,
//!   listening on a free loopback port, stopped by PID (SIGINT, then SIGKILL) and removed when dropped.
//! - [`shared`] / [`fresh_database`] (`shared`): one cluster per test process, a new database per test.
//! - `watchdog`: a small `sh` beside each cluster that stops it if the test process dies without dropping it (a
//!   `static` is never dropped; a test binary can be killed).
//! - `programs`: where `initdb`, `postgres` and `psql` are. `owner`: as root, the cluster runs as the `postgres`
//!   account (PostgreSQL refuses root). `place`: where its directory goes (a RAM disk for test clusters when there
//!   is room). `signal`: signals by PID.
//!
//! Std, tempfile and libc only: no async runtime and no PostgreSQL client crate, so any crate can use it in its tests.

mod cluster;
mod owner;
mod place;
mod programs;
mod shared;
mod signal;
mod watchdog;

pub use cluster::{Options, Postgres, ServerTls};
pub use programs::{Programs, programs};
pub use shared::{fresh_database, shared};
