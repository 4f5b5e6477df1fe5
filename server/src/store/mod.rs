//! The SQLite database, and all of vigil's SQL: opening it (0600, WAL, migrations), agents, the config state and
//! retention here; reports in [`insert`], alert state, history, outbox and security digest in [`alerts`], the last
//! automatic repair of each host in [`repairs`], the status queries in `views`, the dashboard's, API's and
//! export's queries in [`web`], the schema documentation in
//! [`schema_doc`]. Nothing outside this module uses `rusqlite`, except through the typed methods and rows here.
//!
//! The schema lives only in `migrations/` (refinery, embedded, applied on every [`Store::open`], append-only: a change
//! is a new `V<n>__<name>.sql`).
//!
//! Writers: while `vigil serve` runs, the daemon writes only through the ingest writer thread. Other processes
//! (`vigil enroll`, `bootstrap`, `uninstall`) write the `agents` table through their own connection; SQLite's WAL
//! serializes them (busy timeout [`BUSY_TIMEOUT`]). `vigil status` and `vigil alerts` open the file read-only.

pub mod alerts;
mod insert;
pub mod nodes;
pub mod repairs;
mod runs;
pub mod schema_doc;
mod tunnels;
mod views;
#[cfg(test)]
pub(crate) use views::vitals as test_vitals_report;
pub mod web;

pub use runs::{MetricRow, RunFilter, RunRow};
pub use tunnels::{TunnelRow, TunnelState};
pub use views::{HostRow, UnavailableRow};

use std::collections::HashMap;
use std::fs::{OpenOptions, Permissions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

pub use insert::{Incoming, MAX_FUTURE_MS, Outcome, sample_time};

mod embedded {
    refinery::embed_migrations!("src/store/migrations");
}

/// How long a statement waits for another connection's lock before failing with "busy".
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Reports deleted per transaction while pruning, so a large prune does not hold one huge transaction.
const PRUNE_CHUNK: usize = 2_000;

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk (or the database's page limit) is full: nothing was written; try again later.
    #[error("database is full")]
    Full,
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    #[error("database migration failed: {0}")]
    Migration(refinery::Error),
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    /// `open_readonly` on a path where no database exists yet.
    #[error("no database at {0} (has `vigil serve` run?)")]
    NotFound(PathBuf),
    /// A value read back from the database does not fit its Rust type.
    #[error("bad stored value: {0}")]
    BadValue(String),
}

impl StoreError {
    /// True when the failure is a full disk: the caller should answer "unavailable, retry later".
    pub fn is_full(&self) -> bool {
        matches!(self, StoreError::Full)
    }
}

impl From<refinery::Error> for StoreError {
    fn from(e: refinery::Error) -> Self {
        StoreError::Migration(e)
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            StoreError::Full
        } else {
            StoreError::Sqlite(e)
        }
    }
}

/// An agent's credentials and liveness as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub agent_id: String,
    pub host: String,
    /// The agent's SSH public key, OpenSSH one-line form.
    pub public_key: String,
    /// The envelope secret, hex. Redacted in `Debug`.
    pub secret_hex: String,
    pub version: Option<String>,
    pub registered_at_ms: i64,
    pub last_seen_at_ms: Option<i64>,
}

impl std::fmt::Debug for AgentRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRecord")
            .field("agent_id", &self.agent_id)
            .field("host", &self.host)
            .field("public_key", &self.public_key)
            .field("secret_hex", &"<redacted>")
            .field("version", &self.version)
            .field("registered_at_ms", &self.registered_at_ms)
            .field("last_seen_at_ms", &self.last_seen_at_ms)
            .finish()
    }
}

/// The database inside one of the store's transactions (or, from [`Store::view`], outside any): what the functions
/// of [`alerts`] run on, so alert evaluation and the mailer share the ingest writer's transaction without ever
/// holding the connection itself.
#[derive(Clone, Copy)]
pub struct Tx<'c>(&'c Connection);

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tx")
    }
}

/// What one retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub reports: u64,
    /// Alert events and finished outbox rows.
    pub alert_rows: usize,
}

/// The database. Owns one connection; `Send`, not `Sync`: one thread uses it at a time.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// host name -> (id, ip) of rows known to be committed; cleared when a transaction fails.
    hosts: HashMap<String, (i64, String)>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating when missing) the database at `path` read-write and applies pending migrations.
    ///
    /// A missing parent directory is created 0700; the file (and so its `-wal`/`-shm` files, which SQLite creates
    /// with the database's mode) is 0600.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let io = |error| StoreError::Io { path: path.to_path_buf(), error };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.exists()
        {
            vigil_sys::fs::private_dir(parent).map_err(io)?;
        }
        OpenOptions::new().create(true).append(true).mode(0o600).open(path).map_err(io)?;
        std::fs::set_permissions(path, Permissions::from_mode(0o600)).map_err(io)?;

        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::BadValue(format!("journal_mode is {mode}, not wal")));
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "cache_size", -32_768)?; // 32 MiB: index pages stay hot across commits.
        conn.set_prepared_statement_cache_capacity(64);
        let report = embedded::migrations::runner().run(&mut conn)?;
        for m in report.applied_migrations() {
            tracing::info!(path = %path.display(), version = m.version(), name = m.name(), "database migration applied");
        }
        for side in ["-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(side);
            let p = PathBuf::from(p);
            if p.exists() {
                std::fs::set_permissions(&p, Permissions::from_mode(0o600)).map_err(io)?;
            }
        }
        Ok(Store { conn, path: path.to_path_buf(), hosts: HashMap::new() })
    }

    /// Opens an existing database read-only, for `vigil status`.
    ///
    /// When the schema is current nothing is written. When this binary knows newer migrations, they are applied
    /// first through a short read-write open (the same path `vigil serve` takes), then the file is reopened
    /// read-only.
    pub fn open_readonly(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::NotFound(path.to_path_buf()));
        }
        let store = Self::open_ro(path)?;
        let latest_known = embedded::migrations::runner().get_migrations().iter().map(|m| m.version()).max();
        let applied = store.migration_history()?.last().map(|(v, _)| *v);
        if applied < latest_known {
            drop(store);
            drop(Store::open(path)?);
            return Self::open_ro(path);
        }
        Ok(store)
    }

    fn open_ro(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(Store { conn, path: path.to_path_buf(), hosts: HashMap::new() })
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database outside a transaction, for reads through [`alerts`].
    pub fn view(&self) -> Tx<'_> {
        Tx(&self.conn)
    }

    /// The connection, for the store's own tests.
    #[cfg(test)]
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Applied migrations, oldest first: (version, name). Empty on a database never migrated.
    pub fn migration_history(&self) -> Result<Vec<(i32, String)>, StoreError> {
        let exists: bool = self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'refinery_schema_history')",
            [],
            |r| r.get(0),
        )?;
        if !exists {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare("SELECT version, name FROM refinery_schema_history ORDER BY version")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores an agent's credentials, replacing any agent registered for the same host (or with the same id).
    pub fn register_agent(&mut self, a: &AgentRecord) -> Result<(), StoreError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM agents WHERE host = ?1 OR agent_id = ?2", params![a.host, a.agent_id])?;
        tx.execute(
            "INSERT INTO agents (agent_id, host, public_key, secret_hex, version, registered_at_ms, last_seen_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![a.agent_id, a.host, a.public_key, a.secret_hex, a.version, a.registered_at_ms, a.last_seen_at_ms],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Whether a report of `agent_id` received at or after `since_ms` is stored (bootstrap's confirmation that an
    /// agent delivers under the credentials it was just given).
    pub fn report_stored_since(&self, agent_id: &str, since_ms: i64) -> Result<bool, StoreError> {
        let found: Option<i64> = self
            .conn
            .prepare_cached("SELECT 1 FROM reports WHERE agent_id = ?1 AND received_at_ms >= ?2 LIMIT 1")?
            .query_row(params![agent_id, since_ms], |r| r.get(0))
            .optional()?;
        Ok(found.is_some())
    }

    /// Every registered agent, ordered by host name.
    pub fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT agent_id, host, public_key, secret_hex, version, registered_at_ms, last_seen_at_ms
             FROM agents ORDER BY host",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(AgentRecord {
                agent_id: r.get(0)?,
                host: r.get(1)?,
                public_key: r.get(2)?,
                secret_hex: r.get(3)?,
                version: r.get(4)?,
                registered_at_ms: r.get(5)?,
                last_seen_at_ms: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets the agent credentials of `host` (its history stays). Returns how many were removed.
    pub fn remove_agents_of_host(&mut self, host: &str) -> Result<usize, StoreError> {
        self.remove_tunnel(host)?;
        Ok(self.conn.execute("DELETE FROM agents WHERE host = ?1", params![host])?)
    }

    /// Records that an agent connected (or reported) at `seen_at_ms`, running `version`. Never moves back in time.
    pub fn touch_agent(&mut self, agent_id: &str, version: &str, seen_at_ms: i64) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "UPDATE agents SET version = ?2, last_seen_at_ms = max(coalesce(last_seen_at_ms, ?3), ?3)
             WHERE agent_id = ?1",
        )?;
        stmt.execute(params![agent_id, version, seen_at_ms])?;
        Ok(())
    }

    /// Stores a batch of reports in ONE transaction; a report already stored (same agent and sequence) is a
    /// [`Outcome::Duplicate`] and adds no row. Nothing is stored when this returns an error.
    pub fn insert_reports(&mut self, batch: &[Incoming]) -> Result<Vec<Outcome>, StoreError> {
        self.insert_reports_with(batch, |_, _| Ok(()))
    }

    /// Like [`Store::insert_reports`], and calls `hook` inside the same transaction after each newly stored report
    /// (not for duplicates). A hook error rolls the whole batch back.
    pub fn insert_reports_with(
        &mut self,
        batch: &[Incoming],
        mut hook: impl FnMut(Tx<'_>, &Incoming) -> Result<(), StoreError>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let result = (|| {
            let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut out = Vec::with_capacity(batch.len());
            for inc in batch {
                let outcome = insert::insert_one(&tx, &mut self.hosts, inc)?;
                if matches!(outcome, Outcome::Stored { .. }) {
                    hook(Tx(&tx), inc)?;
                }
                out.push(outcome);
            }
            tx.commit()?;
            Ok(out)
        })();
        if result.is_err() {
            // Host ids cached during the failed transaction may have been rolled back.
            self.hosts.clear();
        }
        result
    }

    /// Records the pending config error `vigil status` shows (`None` once the config is good again).
    pub fn set_config_error(&mut self, err: Option<&str>) -> Result<(), StoreError> {
        let now = now_ms();
        self.conn.execute(
            "INSERT INTO config_state (id, error, updated_at_ms) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET error = excluded.error, updated_at_ms = excluded.updated_at_ms",
            params![err, now],
        )?;
        Ok(())
    }

    /// Records the hosts the pending config error is about (their `<client>` holds a diagnostic), for the web
    /// dashboard's "config error" state; empty when none is.
    pub fn set_config_error_hosts(&mut self, hosts: &[String]) -> Result<(), StoreError> {
        let hosts = (!hosts.is_empty()).then(|| hosts.join("\n"));
        self.conn.execute(
            "INSERT INTO config_state (id, error_hosts, updated_at_ms) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET error_hosts = excluded.error_hosts, updated_at_ms = excluded.updated_at_ms",
            params![hosts, now_ms()],
        )?;
        Ok(())
    }

    /// The hosts the pending config error is about.
    pub fn config_error_hosts(&self) -> Result<Vec<String>, StoreError> {
        let hosts: Option<Option<String>> =
            self.conn.query_row("SELECT error_hosts FROM config_state WHERE id = 1", [], |r| r.get(0)).optional()?;
        Ok(hosts.flatten().map(|h| h.lines().map(str::to_owned).collect()).unwrap_or_default())
    }

    /// Records the `[server]` settings edited in the files that the running `vigil serve` cannot apply (`None` when
    /// the files match what it runs with), for `vigil status`.
    pub fn set_restart_needed(&mut self, keys: Option<&str>) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO config_state (id, restart_needed, updated_at_ms) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET restart_needed = excluded.restart_needed,
                 updated_at_ms = excluded.updated_at_ms",
            params![keys, now_ms()],
        )?;
        Ok(())
    }

    /// The `[server]` settings waiting for a restart of `vigil serve`, if any: e.g. `listen, database`.
    pub fn restart_needed(&self) -> Result<Option<String>, StoreError> {
        let keys: Option<Option<String>> =
            self.conn.query_row("SELECT restart_needed FROM config_state WHERE id = 1", [], |r| r.get(0)).optional()?;
        Ok(keys.flatten())
    }

    /// The pending config error recorded by `vigil serve`, if any.
    pub fn config_error(&self) -> Result<Option<String>, StoreError> {
        let err: Option<Option<String>> =
            self.conn.query_row("SELECT error FROM config_state WHERE id = 1", [], |r| r.get(0)).optional()?;
        Ok(err.flatten())
    }

    /// Retention: deletes reports received before `older_than_ms` (server clock) and all their statistics rows, in
    /// chunks of a few thousand reports per transaction, then alert events and finished mail as old (pending mail
    /// and its event stay).
    pub fn prune(&mut self, older_than_ms: i64) -> Result<Pruned, StoreError> {
        let mut reports = 0u64;
        loop {
            let n = self.prune_chunk(older_than_ms, PRUNE_CHUNK)?;
            reports += n as u64;
            if n < PRUNE_CHUNK {
                break;
            }
        }
        let alert_rows = self.write_tx(|c| alerts::prune(c, older_than_ms))?;
        self.prune_rollups(older_than_ms)?;
        Ok(Pruned { reports, alert_rows })
    }

    /// One prune transaction: at most `limit` of the oldest reports before `older_than_ms`.
    fn prune_chunk(&mut self, older_than_ms: i64, limit: usize) -> Result<usize, StoreError> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ids: Vec<i64> = {
            let mut stmt =
                tx.prepare_cached("SELECT id FROM reports WHERE received_at_ms < ?1 ORDER BY received_at_ms LIMIT ?2")?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            stmt.query_map(params![older_than_ms, limit], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        for table in insert::FAMILY_TABLES {
            let mut stmt = tx.prepare_cached(&format!("DELETE FROM {table} WHERE report_id = ?1"))?;
            for id in &ids {
                stmt.execute([id])?;
            }
        }
        {
            let mut stmt = tx.prepare_cached("DELETE FROM reports WHERE id = ?1")?;
            for id in &ids {
                stmt.execute([id])?;
            }
        }
        tx.commit()?;
        Ok(ids.len())
    }

    /// Caps the database at `pages` pages so a test can see the disk-full path.
    #[cfg(test)]
    pub(crate) fn limit_pages(&mut self, pages: i64) -> Result<(), StoreError> {
        let _: i64 = self.conn.pragma_update_and_check(None, "max_page_count", pages, |r| r.get(0))?;
        Ok(())
    }
}

/// Milliseconds since the Unix epoch, by this machine's clock (re-exported for callers outside the store).
pub use vigil_sys::clock::now_ms;

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_schema::report::{MemoryStats, Report, Stats};

    fn incoming(seq: u64, received_at_ms: i64) -> Incoming {
        Incoming {
            agent_id: "a1".into(),
            host: "web1".into(),
            ip: "10.0.0.1".into(),
            received_at_ms,
            report: Report {
                seq,
                job: "vitals".into(),
                collected_at_ms: received_at_ms - 5,
                dropped: 0,
                stats: Stats {
                    memory: Some(MemoryStats { total: 100, used: 40, available: 60, free: 50, used_pct: 40.0 }),
                    ..Stats::default()
                },
            },
        }
    }

    #[test]
    fn disk_full_is_its_own_error_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("v.db")).unwrap();
        store.insert_reports(&[incoming(1, 1_000)]).unwrap();
        let pages: i64 = store.conn.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        store.limit_pages(pages).unwrap();
        let batch: Vec<_> = (2..2_000).map(|s| incoming(s, 1_000 + s as i64)).collect();
        let err = store.insert_reports(&batch).unwrap_err();
        assert!(err.is_full(), "{err:?}");
        let n: i64 = store.conn.query_row("SELECT count(*) FROM reports", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1, "a failed batch leaves nothing behind");
    }

    #[test]
    fn agent_debug_redacts_the_secret() {
        let a = AgentRecord {
            agent_id: "id".into(),
            host: "h".into(),
            public_key: "ssh-ed25519 AAAA".into(),
            secret_hex: "deadbeefcafe".into(),
            version: None,
            registered_at_ms: 1,
            last_seen_at_ms: None,
        };
        let shown = format!("{a:?}");
        assert!(!shown.contains("deadbeefcafe"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn config_error_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("v.db")).unwrap();
        assert_eq!(store.config_error().unwrap(), None);
        store.set_config_error(Some("clients.xml:3:5: unknown host attribute")).unwrap();
        assert_eq!(store.config_error().unwrap().as_deref(), Some("clients.xml:3:5: unknown host attribute"));
        store.set_config_error(None).unwrap();
        assert_eq!(store.config_error().unwrap(), None);
        assert!(store.config_error_hosts().unwrap().is_empty());
        store.set_config_error_hosts(&["a".into(), "b".into()]).unwrap();
        assert_eq!(store.config_error_hosts().unwrap(), ["a", "b"]);
        store.set_config_error_hosts(&[]).unwrap();
        assert!(store.config_error_hosts().unwrap().is_empty());
    }
}
