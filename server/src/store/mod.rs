//! The database (SQLite, or PostgreSQL for several nodes), and all of vigil's SQL: opening it (a SQLite file 0600 in
//! WAL mode; migrations, advisory-locked on PostgreSQL), agents, the config state and
//! retention here; reports in [`insert`], alert state, history, outbox and security digest in [`alerts`], the last
//! automatic repair of each host in [`repairs`], the status queries in `views`, the dashboard's, API's and
//! export's queries in [`web`], the schema documentation in
//! [`schema_doc`]. Nothing outside this module uses `rusqlite` or `postgres`, except through the typed methods and
//! rows here. Statements are written once for both engines through [`db`].
//!
//! The schema lives only in `migrations/` (SQLite) and `migrations_pg/` (the same schema in PostgreSQL's dialect,
//! same versions and names; `tests/tests/pg_schema.rs` compares them): refinery, embedded, applied on every open,
//! append-only: a change is a new `V<n>__<name>.sql` in both.
//!
//! Writers: while `vigil serve` runs, the daemon writes only through the ingest writer thread. Other processes
//! (`vigil enroll`, `bootstrap`, `uninstall`) write the `agents` table through their own connection; SQLite's WAL
//! serializes them (busy timeout [`BUSY_TIMEOUT`]). `vigil status` and `vigil alerts` open the file read-only.

pub mod alerts;
pub mod db;
mod insert;
mod insert_pg;
pub mod leases;
pub mod nodes;
mod pg_tls;
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

use rusqlite::{Connection, OpenFlags};

pub(crate) use db::params;
pub use db::{Db, Engine, OptionalExtension, Row};

pub use insert::{Incoming, MAX_FUTURE_MS, Outcome, sample_time};

mod embedded {
    refinery::embed_migrations!("src/store/migrations");
}

mod embedded_pg {
    refinery::embed_migrations!("src/store/migrations_pg");
}

/// The advisory lock nodes take around PostgreSQL migrations, so nodes starting together do not race ("vigil" in
/// ASCII).
const MIGRATION_LOCK: i64 = 0x76_6967_696c;

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
    #[error("PostgreSQL: {}", pg_message(.0))]
    Postgres(postgres::Error),
    /// `database_password_env` names a variable that is not set.
    #[error("the environment variable {0} (database_password_env) is not set")]
    NoPassword(String),
    #[error("database migration failed: {0}")]
    Migration(refinery::Error),
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    /// `open_readonly` on a path where no database exists yet.
    #[error("no database at {0} (has `vigil serve` run?)")]
    NotFound(PathBuf),
    /// A query expected a row and found none.
    #[error("no such row")]
    NoRow,
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

/// A PostgreSQL error as one line: the server's message (with its detail) when it sent one.
fn pg_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_owned(),
        },
        // Not the server's answer (connecting, TLS, I/O): the causes say what went wrong ("invalid peer
        // certificate: UnknownIssuer"), the top error only where ("error performing TLS handshake").
        None => {
            let mut message = e.to_string();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                let text = c.to_string();
                if !message.contains(&text) {
                    message = format!("{message}: {text}");
                }
                cause = c.source();
            }
            message
        }
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        match e.code() {
            Some(c) if *c == postgres::error::SqlState::DISK_FULL => StoreError::Full,
            _ => StoreError::Postgres(e),
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
pub struct Tx<'c>(&'c Db);

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
    conn: Db,
    /// The SQLite file, or the PostgreSQL URL (which never holds a password).
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
        conn.set_prepared_statement_cache_capacity(128);
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
        Ok(Store { conn: Db::Sqlite(conn), path: path.to_path_buf(), hosts: HashMap::new() })
    }

    /// Connects to the PostgreSQL database at `url` (which holds no password: `password` comes from the environment
    /// variable the config names) and applies pending migrations under an advisory lock, so nodes starting together
    /// apply each migration once.
    pub fn open_postgres(url: &str, password: Option<&str>) -> Result<Store, StoreError> {
        Self::open_postgres_as(url, password, false)
    }

    /// [`Store::open_postgres`]; with `read_only`, every session of the store (the first, and each one a lost
    /// connection is replaced by) starts with `default_transaction_read_only` on, so nothing it runs can write.
    /// Pending migrations are still applied at open, in a transaction that lifts it.
    fn open_postgres_as(url: &str, password: Option<&str>, read_only: bool) -> Result<Store, StoreError> {
        let (client_url, root_cert) = crate::config::database::split_root_cert(url);
        let mut config: postgres::Config =
            client_url.parse().map_err(|e: postgres::Error| StoreError::BadValue(format!("database URL: {e}")))?;
        let tls = match config.get_ssl_mode() {
            postgres::config::SslMode::Require => Some(pg_tls::connector(root_cert.as_deref())?),
            _ if root_cert.is_some() => {
                return Err(StoreError::BadValue("database URL: sslrootcert needs sslmode=require".into()));
            }
            _ => None,
        };
        if let Some(pw) = password {
            config.password(pw);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(db::PG_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("vigil");
        }
        if read_only {
            let options = format!("{} -c default_transaction_read_only=on", config.get_options().unwrap_or(""));
            config.options(options.trim_start());
        }
        // Server notices ("relation already exists, skipping" from migrations) are not worth an operator's attention.
        config.notice_callback(|n| tracing::debug!(notice = n.message(), "PostgreSQL notice"));
        let link = db::PgLink::connect(config, tls)?;
        let conn = Db::Postgres(Box::new(std::cell::RefCell::new(link)));
        conn.with_pg(|client| {
            client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])?;
            if read_only {
                client.batch_execute("SET default_transaction_read_only = off")?;
            }
            let report = embedded_pg::migrations::runner().run(client);
            if read_only {
                client.batch_execute("RESET default_transaction_read_only")?;
            }
            client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])?;
            for m in report?.applied_migrations() {
                tracing::info!(version = m.version(), name = m.name(), "database migration applied");
            }
            Ok(())
        })?;
        Ok(Store { conn, path: PathBuf::from(url), hosts: HashMap::new() })
    }

    /// Opens the database `[server]` names, read-write: the SQLite file, or PostgreSQL with the password from the
    /// variable `database_password_env` names.
    pub fn open_server(server: &crate::config::ServerSettings) -> Result<Store, StoreError> {
        match &server.postgres {
            Some(pg) => Self::open_pg_target(pg, false),
            None => Self::open(&server.database),
        }
    }

    /// Opens the database `[server]` names for reading (`vigil status` and the other views, the dashboard). On
    /// PostgreSQL the session is read-only.
    pub fn open_server_readonly(server: &crate::config::ServerSettings) -> Result<Store, StoreError> {
        match &server.postgres {
            Some(pg) => Self::open_pg_target(pg, true),
            None => Self::open_readonly(&server.database),
        }
    }

    fn open_pg_target(pg: &crate::config::PgTarget, read_only: bool) -> Result<Store, StoreError> {
        let password = match &pg.password_env {
            Some(var) => Some(std::env::var(var).map_err(|_| StoreError::NoPassword(var.clone()))?),
            None => None,
        };
        Self::open_postgres_as(&pg.url, password.as_deref(), read_only)
    }

    /// Which engine this store runs on.
    pub fn engine(&self) -> Engine {
        self.conn.engine()
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
        Ok(Store { conn: Db::Sqlite(conn), path: path.to_path_buf(), hosts: HashMap::new() })
    }

    /// The database file's path (for PostgreSQL, its URL).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database outside a transaction, for reads through [`alerts`].
    pub fn view(&self) -> Tx<'_> {
        Tx(&self.conn)
    }

    /// The connection, for the store's own tests.
    #[cfg(test)]
    pub(crate) fn conn(&self) -> &Db {
        &self.conn
    }

    /// Applied migrations, oldest first: (version, name). Empty on a database never migrated.
    pub fn migration_history(&self) -> Result<Vec<(i32, String)>, StoreError> {
        let exists = match self.engine() {
            Engine::Sqlite => {
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table'
                               AND name = 'refinery_schema_history')"
            }
            Engine::Postgres => "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
        };
        if !self.conn.query_row(exists, params![], |r| r.get::<bool>(0))? {
            return Ok(Vec::new());
        }
        self.conn.query_map("SELECT version, name FROM refinery_schema_history ORDER BY version", params![], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
    }

    /// Stores an agent's credentials, replacing any agent registered for the same host (or with the same id).
    pub fn register_agent(&mut self, a: &AgentRecord) -> Result<(), StoreError> {
        self.conn.transaction(|tx| {
            tx.execute("DELETE FROM agents WHERE host = ?1 OR agent_id = ?2", params![a.host, a.agent_id])?;
            tx.execute(
                "INSERT INTO agents (agent_id, host, public_key, secret_hex, version, registered_at_ms,
                                     last_seen_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    a.agent_id,
                    a.host,
                    a.public_key,
                    a.secret_hex,
                    a.version,
                    a.registered_at_ms,
                    a.last_seen_at_ms
                ],
            )?;
            Ok(())
        })
    }

    /// Whether a report of `agent_id` received at or after `since_ms` is stored (bootstrap's confirmation that an
    /// agent delivers under the credentials it was just given).
    pub fn report_stored_since(&self, agent_id: &str, since_ms: i64) -> Result<bool, StoreError> {
        let found = self.conn.query_opt(
            "SELECT 1 FROM reports WHERE agent_id = ?1 AND received_at_ms >= ?2 LIMIT 1",
            params![agent_id, since_ms],
            |r| r.get::<i64>(0),
        )?;
        Ok(found.is_some())
    }

    /// Every registered agent, ordered by host name.
    pub fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.conn.query_map(
            "SELECT agent_id, host, public_key, secret_hex, version, registered_at_ms, last_seen_at_ms
             FROM agents ORDER BY host",
            params![],
            |r| {
                Ok(AgentRecord {
                    agent_id: r.get(0)?,
                    host: r.get(1)?,
                    public_key: r.get(2)?,
                    secret_hex: r.get(3)?,
                    version: r.get(4)?,
                    registered_at_ms: r.get(5)?,
                    last_seen_at_ms: r.get(6)?,
                })
            },
        )
    }

    /// Forgets the agent credentials of `host` (its history stays). Returns how many were removed.
    pub fn remove_agents_of_host(&mut self, host: &str) -> Result<usize, StoreError> {
        self.remove_tunnel(host)?;
        self.conn.execute("DELETE FROM agents WHERE host = ?1", params![host])
    }

    /// Records that an agent connected (or reported) at `seen_at_ms`, running `version`. Never moves back in time.
    pub fn touch_agent(&mut self, agent_id: &str, version: &str, seen_at_ms: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE agents SET version = ?2,
                 last_seen_at_ms = CASE WHEN last_seen_at_ms > ?3 THEN last_seen_at_ms ELSE ?3 END
             WHERE agent_id = ?1",
            params![agent_id, version, seen_at_ms],
        )?;
        Ok(())
    }

    /// Stores a batch of reports in ONE transaction; a report already stored (same agent and sequence) is a
    /// [`Outcome::Duplicate`] and adds no row. Nothing is stored when this returns an error.
    pub fn insert_reports(&mut self, batch: &[Incoming]) -> Result<Vec<Outcome>, StoreError> {
        self.insert_reports_with(batch, |_, _| Ok(()))
    }

    /// Like [`Store::insert_reports`], and calls `hook` inside the same transaction after each newly stored report
    /// (not for duplicates). A hook error rolls the whole batch back.
    ///
    /// SQLite stores report by report through cached statements; PostgreSQL, where every statement is a round trip,
    /// stores the whole batch with one statement per table ([`insert_pg`]).
    pub fn insert_reports_with(
        &mut self,
        batch: &[Incoming],
        mut hook: impl FnMut(Tx<'_>, &Incoming) -> Result<(), StoreError>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let hosts = &mut self.hosts;
        let result = self.conn.transaction(|tx| {
            let out = match tx.engine() {
                Engine::Sqlite => {
                    batch.iter().map(|inc| insert::insert_one(tx, hosts, inc)).collect::<Result<Vec<_>, _>>()?
                }
                Engine::Postgres => insert_pg::insert_batch(tx, hosts, batch)?,
            };
            for (inc, outcome) in batch.iter().zip(&out) {
                if matches!(outcome, Outcome::Stored { .. }) {
                    hook(Tx(tx), inc)?;
                }
            }
            Ok(out)
        });
        if result.is_err() {
            // Host ids cached during the failed transaction may have been rolled back.
            self.hosts.clear();
        }
        result
    }

    /// Records the pending config error `vigil status` shows (`None` once the config is good again).
    pub fn set_config_error(&mut self, err: Option<&str>) -> Result<(), StoreError> {
        self.set_config_state("error", err)
    }

    /// Records the hosts the pending config error is about (their `<client>` holds a diagnostic), for the web
    /// dashboard's "config error" state; empty when none is.
    pub fn set_config_error_hosts(&mut self, hosts: &[String]) -> Result<(), StoreError> {
        let hosts = (!hosts.is_empty()).then(|| hosts.join("\n"));
        self.set_config_state("error_hosts", hosts.as_deref())
    }

    /// Sets one column of the single `config_state` row.
    fn set_config_state(&mut self, column: &'static str, value: Option<&str>) -> Result<(), StoreError> {
        self.conn.execute(
            &format!(
                "INSERT INTO config_state (id, {column}, updated_at_ms) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET {column} = excluded.{column}, updated_at_ms = excluded.updated_at_ms"
            ),
            params![value, now_ms()],
        )?;
        Ok(())
    }

    /// One column of the single `config_state` row.
    fn config_state(&self, column: &'static str) -> Result<Option<String>, StoreError> {
        let v = self.conn.query_opt(&format!("SELECT {column} FROM config_state WHERE id = 1"), params![], |r| {
            r.get::<Option<String>>(0)
        })?;
        Ok(v.flatten())
    }

    /// The hosts the pending config error is about.
    pub fn config_error_hosts(&self) -> Result<Vec<String>, StoreError> {
        let hosts = self.config_state("error_hosts")?;
        Ok(hosts.map(|h| h.lines().map(str::to_owned).collect()).unwrap_or_default())
    }

    /// Records the `[server]` settings edited in the files that the running `vigil serve` cannot apply (`None` when
    /// the files match what it runs with), for `vigil status`.
    pub fn set_restart_needed(&mut self, keys: Option<&str>) -> Result<(), StoreError> {
        self.set_config_state("restart_needed", keys)
    }

    /// The `[server]` settings waiting for a restart of `vigil serve`, if any: e.g. `listen, database`.
    pub fn restart_needed(&self) -> Result<Option<String>, StoreError> {
        self.config_state("restart_needed")
    }

    /// The pending config error recorded by `vigil serve`, if any.
    pub fn config_error(&self) -> Result<Option<String>, StoreError> {
        self.config_state("error")
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
        self.conn.transaction(|tx| {
            let ids: Vec<i64> = tx.query_map(
                "SELECT id FROM reports WHERE received_at_ms < ?1 ORDER BY received_at_ms LIMIT ?2",
                params![older_than_ms, limit],
                |r| r.get(0),
            )?;
            // Children before their report (PostgreSQL's statistics tables have no foreign key to hold the order:
            // migrations_pg/V18). SQLite: cached statements in-process; PostgreSQL: one statement per table, not one
            // round trip per report and table.
            let tables = insert::FAMILY_TABLES.iter().copied().chain(["reports"]);
            if tx.sqlite().is_some() {
                for table in tables {
                    let key = if table == "reports" { "id" } else { "report_id" };
                    let sql = format!("DELETE FROM {table} WHERE {key} = ?1");
                    for id in &ids {
                        tx.execute(&sql, params![id])?;
                    }
                }
            } else {
                for table in tables {
                    let key = if table == "reports" { "id" } else { "report_id" };
                    tx.with_pg_statement(&format!("DELETE FROM {table} WHERE {key} = ANY($1)"), |client, stmt| {
                        client.execute(stmt, &[&ids])?;
                        Ok(())
                    })?;
                }
            }
            Ok(ids.len())
        })
    }

    /// Caps the database at `pages` pages so a test can see the disk-full path.
    #[cfg(test)]
    pub(crate) fn limit_pages(&mut self, pages: i64) -> Result<(), StoreError> {
        let conn = self.conn.sqlite().ok_or_else(|| StoreError::BadValue("not SQLite".into()))?;
        let _: i64 = conn.pragma_update_and_check(None, "max_page_count", pages, |r| r.get(0))?;
        Ok(())
    }
}
/// Milliseconds since the Unix epoch, by this machine's clock (re-exported for callers outside the store).
pub use vigil_sys::clock::now_ms;

/// Runs `f` on a fresh store of each engine: a SQLite file in a temporary directory, and a new database on the
/// test process's PostgreSQL cluster (`vigil_testkit`), so the store's tests hold on both.
#[cfg(test)]
pub(crate) fn each_engine(mut f: impl FnMut(&mut Store)) {
    each_engine_with(|open| f(&mut open()));
}

/// Like [`each_engine`], for tests that need several stores: `f` gets an opener of fresh stores of one engine, then
/// of the other.
#[cfg(test)]
pub(crate) fn each_engine_with(mut f: impl FnMut(&mut dyn FnMut() -> Store)) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut n = 0;
    f(&mut || {
        n += 1;
        Store::open(&dir.path().join(format!("v{n}.db"))).expect("open SQLite")
    });
    f(&mut || Store::open_postgres(&vigil_testkit::fresh_database(), None).expect("open PostgreSQL"));
}

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
        let pages: i64 = store.conn.query_row("PRAGMA page_count", params![], |r| r.get(0)).unwrap();
        store.limit_pages(pages).unwrap();
        let batch: Vec<_> = (2..2_000).map(|s| incoming(s, 1_000 + s as i64)).collect();
        let err = store.insert_reports(&batch).unwrap_err();
        assert!(err.is_full(), "{err:?}");
        let n: i64 = store.conn.query_row("SELECT count(*) FROM reports", params![], |r| r.get(0)).unwrap();
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
        each_engine(|store| {
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
        });
    }

    #[test]
    fn nodes_starting_together_migrate_a_postgresql_database_once() {
        let url = vigil_testkit::fresh_database();
        let opened: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || Store::open_postgres(&url, None).map(|s| s.migration_history()))
            })
            .collect();
        let newest = embedded_pg::migrations::runner().get_migrations().iter().map(|m| m.version()).max();
        for o in opened {
            let history = o.join().unwrap().unwrap().unwrap();
            assert_eq!(history.last().map(|(v, _)| *v), newest, "{history:?}");
        }
    }

    #[test]
    fn a_lost_postgresql_connection_is_made_again_by_the_next_statement() {
        let url = vigil_testkit::fresh_database();
        let mut store = Store::open_postgres(&url, None).unwrap();
        store.insert_reports(&[incoming(1, 1_000)]).unwrap();
        let pid: i32 = store.conn.query_row("SELECT pg_backend_pid()", params![], |r| r.get(0)).unwrap();
        // The server ends the session, as a restart or a failover to a replica does.
        let other = Store::open_postgres(&url, None).unwrap();
        other.conn.query_row("SELECT pg_terminate_backend(?1)", params![pid], |r| r.get::<bool>(0)).unwrap();
        let mut outcome = store.insert_reports(&[incoming(2, 2_000)]);
        if outcome.is_err() {
            // The statement that met the closed connection fails (its batch is resent by the agents); the next
            // one reconnects.
            outcome = store.insert_reports(&[incoming(2, 2_000)]);
        }
        assert!(matches!(outcome.unwrap()[..], [Outcome::Stored { .. }]));
        let again: i32 = store.conn.query_row("SELECT pg_backend_pid()", params![], |r| r.get(0)).unwrap();
        assert_ne!(again, pid, "a new session");
        assert!(store.report_stored_since("a1", 0).unwrap());
    }

    #[test]
    fn a_read_only_postgresql_store_stays_read_only_across_a_reconnect() {
        let url = vigil_testkit::fresh_database();
        let store = Store::open_postgres_as(&url, None, true).unwrap();
        let refused = |store: &Store| {
            let err = store.conn.execute("UPDATE config_state SET error = 'x'", params![]).unwrap_err();
            assert!(err.to_string().contains("read-only transaction"), "{err}");
        };
        refused(&store);
        let pid: i32 = store.conn.query_row("SELECT pg_backend_pid()", params![], |r| r.get(0)).unwrap();
        let other = Store::open_postgres(&url, None).unwrap();
        other.conn.query_row("SELECT pg_terminate_backend(?1)", params![pid], |r| r.get::<bool>(0)).unwrap();
        // The statement that meets the closed connection fails; the next one runs on a new session.
        let _ = store.conn.query_row("SELECT pg_backend_pid()", params![], |r| r.get::<i32>(0));
        let again: i32 = store.conn.query_row("SELECT pg_backend_pid()", params![], |r| r.get(0)).unwrap();
        assert_ne!(again, pid, "a new session");
        refused(&store);
        assert_eq!(other.config_error().unwrap(), None, "nothing was written");
    }

    #[test]
    fn reports_agents_and_prune_on_each_engine() {
        each_engine(|store| {
            let outcomes = store.insert_reports(&[incoming(1, 1_000), incoming(2, 2_000), incoming(1, 1_000)]).unwrap();
            assert!(
                matches!(outcomes[..], [Outcome::Stored { .. }, Outcome::Stored { .. }, Outcome::Duplicate]),
                "{outcomes:?}"
            );
            assert_eq!(store.insert_reports(&[incoming(2, 2_000)]).unwrap(), [Outcome::Duplicate]);
            assert!(store.report_stored_since("a1", 2_000).unwrap());
            assert!(!store.report_stored_since("a1", 2_001).unwrap());
            let a = AgentRecord {
                agent_id: "a1".into(),
                host: "web1".into(),
                public_key: "ssh-ed25519 AAAA".into(),
                secret_hex: "00".into(),
                version: None,
                registered_at_ms: 5,
                last_seen_at_ms: None,
            };
            store.register_agent(&a).unwrap();
            store.touch_agent("a1", "0.2", 50).unwrap();
            store.touch_agent("a1", "0.2", 40).unwrap();
            assert_eq!(store.agents().unwrap()[0].last_seen_at_ms, Some(50), "never moves back");
            assert_eq!(store.prune(1_500).unwrap().reports, 1);
            assert!(store.report_stored_since("a1", 0).unwrap());
            assert_eq!(store.remove_agents_of_host("web1").unwrap(), 1);
            assert!(store.agents().unwrap().is_empty());
            assert!(!store.migration_history().unwrap().is_empty());
        });
    }
}
