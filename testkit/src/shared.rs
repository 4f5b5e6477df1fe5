//! One PostgreSQL cluster per test process, started on first use, and a new database per test on it, so tests
//! never share data and do not pay for an `initdb` each. The cluster's watchdog stops it when the process exits.

use std::sync::OnceLock;

use crate::cluster::Postgres;

/// This process's cluster, started (default [`Options`](crate::Options)) on the first call.
///
/// # Panics
/// When the cluster cannot start (PostgreSQL missing, say): the message says why. Meant for tests.
pub fn shared() -> &'static Postgres {
    static CLUSTER: OnceLock<Postgres> = OnceLock::new();
    CLUSTER.get_or_init(|| Postgres::start().unwrap_or_else(|e| panic!("starting the shared PostgreSQL: {e}")))
}

/// The URL of a brand-new, empty database on the [`shared`] cluster.
///
/// # Panics
/// When the cluster cannot start or the database cannot be created. Meant for tests.
pub fn fresh_database() -> String {
    shared().fresh_database().unwrap_or_else(|e| panic!("creating a database on the shared PostgreSQL: {e}"))
}
