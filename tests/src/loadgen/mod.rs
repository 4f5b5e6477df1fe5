//! The fleet-scale load generator behind `vigil-loadgen` (issue 7): simulated agents over real SSH against a real
//! `vigil serve`, and the SQLite measurements the benchmark compares the server with.
//!
//! - [`setup`]: a fleet on disk (clients.xml, jobs.toml, host key, agents registered in the database).
//! - The "vitals" and "full" reports and their row counts live in the test crate (`vigil_tests::reports`).
//! - [`drive`]: N agents, each on its own SSH connection, pipelined, measuring acked reports/s, rows/s, latency.
//! - [`pg`]: the durable PostgreSQL cluster of the PostgreSQL runs (issue 17), and its processes' CPU and memory.
//! - [`sql`]: the raw SQLite insert ceiling, the store's ceiling, and a generated history for `vigil status`.

pub mod drive;
pub mod pg;
pub mod setup;
pub mod sql;
