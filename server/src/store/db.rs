//! The two engines behind one connection type: [`Db`] is a SQLite connection or a PostgreSQL client, and every
//! statement of the store is written once, with `?N` placeholders, values passed as [`Val`] and columns read through
//! [`Row::get`]. PostgreSQL gets the statement with `$N` placeholders, prepared once per connection and cached.
//!
//! Values adapt to the column type the engine expects (an integer bound where PostgreSQL infers `double precision`
//! is sent as one), so the store's code does not care which engine runs it. Where the two dialects differ, a
//! statement asks [`Db::engine`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use rusqlite::types::{ToSqlOutput, ValueRef};

use super::StoreError;

/// Which engine a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A value bound to a statement's placeholder.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Val<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// What can be bound as a [`Val`]; [`params!`](crate::store::params) builds the list.
pub trait ToVal {
    fn to_val(&self) -> Val<'_>;
}

macro_rules! int_to_val {
    ($($t:ty),*) => {$(
        impl ToVal for $t {
            fn to_val(&self) -> Val<'_> {
                Val::Int(i64::from(*self))
            }
        }
    )*};
}
int_to_val!(i64, i32, i16, i8, u32, u16, u8, bool);

impl ToVal for u64 {
    /// Bit for bit, as SQLite's driver stores it: sequence numbers past `i64::MAX` stay distinct.
    fn to_val(&self) -> Val<'_> {
        Val::Int(*self as i64)
    }
}
impl ToVal for usize {
    fn to_val(&self) -> Val<'_> {
        Val::Int(i64::try_from(*self).unwrap_or(i64::MAX))
    }
}
impl ToVal for f64 {
    fn to_val(&self) -> Val<'_> {
        Val::Real(*self)
    }
}
impl ToVal for f32 {
    fn to_val(&self) -> Val<'_> {
        Val::Real(f64::from(*self))
    }
}
impl ToVal for str {
    fn to_val(&self) -> Val<'_> {
        Val::Text(self)
    }
}
impl ToVal for String {
    fn to_val(&self) -> Val<'_> {
        Val::Text(self)
    }
}
impl ToVal for [u8] {
    fn to_val(&self) -> Val<'_> {
        Val::Bytes(self)
    }
}
impl ToVal for Vec<u8> {
    fn to_val(&self) -> Val<'_> {
        Val::Bytes(self)
    }
}
impl<T: ToVal + ?Sized> ToVal for &T {
    fn to_val(&self) -> Val<'_> {
        (**self).to_val()
    }
}
impl<T: ToVal> ToVal for Option<T> {
    fn to_val(&self) -> Val<'_> {
        self.as_ref().map_or(Val::Null, ToVal::to_val)
    }
}
impl ToVal for Val<'_> {
    fn to_val(&self) -> Val<'_> {
        *self
    }
}

/// The values of a statement's placeholders, in order: `params![a, b]` is `[Val; 2]`.
macro_rules! params {
    () => { [] as [$crate::store::db::Val<'_>; 0] };
    ($($v:expr),+ $(,)?) => { [$($crate::store::db::ToVal::to_val(&$v)),+] };
}
pub(crate) use params;

impl rusqlite::ToSql for Val<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match *self {
            Val::Null => ValueRef::Null,
            Val::Int(i) => ValueRef::Integer(i),
            Val::Real(f) => ValueRef::Real(f),
            Val::Text(s) => ValueRef::Text(s.as_bytes()),
            Val::Bytes(b) => ValueRef::Blob(b),
        }))
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl ToSql for Val<'_> {
    fn to_sql(&self, ty: &Type, out: &mut postgres::types::private::BytesMut) -> Result<IsNull, BoxError> {
        match *self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
                Type::FLOAT8 => (i as f64).to_sql(ty, out),
                Type::BOOL => (i != 0).to_sql(ty, out),
                _ => Err(format!("an integer cannot be bound to {ty}").into()),
            },
            Val::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (f as f32).to_sql(ty, out),
                _ => Err(format!("a real cannot be bound to {ty}").into()),
            },
            Val::Text(s) => s.to_sql(ty, out),
            Val::Bytes(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// One column's value as read, whichever engine read it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// A value the store reads from a column.
pub trait FromCell: Sized {
    fn from_cell(c: Cell<'_>) -> Result<Self, String>;
}

fn wrong(c: Cell<'_>, want: &str) -> String {
    format!("expected {want}, found {c:?}")
}

macro_rules! int_from_cell {
    ($($t:ty),*) => {$(
        impl FromCell for $t {
            fn from_cell(c: Cell<'_>) -> Result<Self, String> {
                match c {
                    Cell::Int(i) => <$t>::try_from(i).map_err(|_| format!("{i} out of range for {}", stringify!($t))),
                    c => Err(wrong(c, "an integer")),
                }
            }
        }
    )*};
}
int_from_cell!(i64, i32, u32, u16, u8, usize);

impl FromCell for u64 {
    /// Bit for bit, the inverse of binding a `u64`.
    fn from_cell(c: Cell<'_>) -> Result<Self, String> {
        match c {
            Cell::Int(i) => Ok(i as u64),
            c => Err(wrong(c, "an integer")),
        }
    }
}
impl FromCell for bool {
    fn from_cell(c: Cell<'_>) -> Result<Self, String> {
        match c {
            Cell::Int(i) => Ok(i != 0),
            c => Err(wrong(c, "a boolean")),
        }
    }
}
impl FromCell for f64 {
    fn from_cell(c: Cell<'_>) -> Result<Self, String> {
        match c {
            Cell::Real(f) => Ok(f),
            Cell::Int(i) => Ok(i as f64),
            c => Err(wrong(c, "a number")),
        }
    }
}
impl FromCell for f32 {
    fn from_cell(c: Cell<'_>) -> Result<Self, String> {
        f64::from_cell(c).map(|f| f as f32)
    }
}
impl FromCell for String {
    fn from_cell(c: Cell<'_>) -> Result<Self, String> {
        match c {
            Cell::Text(s) => Ok(s.to_owned()),
            c => Err(wrong(c, "text")),
        }
    }
}
impl FromCell for Vec<u8> {
    fn from_cell(c: Cell<'_>) -> Result<Self, String> {
        match c {
            Cell::Bytes(b) => Ok(b.to_vec()),
            Cell::Text(s) => Ok(s.as_bytes().to_vec()),
            c => Err(wrong(c, "bytes")),
        }
    }
}
impl<T: FromCell> FromCell for Option<T> {
    fn from_cell(c: Cell<'_>) -> Result<Self, String> {
        match c {
            Cell::Null => Ok(None),
            c => T::from_cell(c).map(Some),
        }
    }
}

/// A result row of either engine.
pub enum Row<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Postgres(&'r postgres::Row),
}

impl std::fmt::Debug for Row<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Row")
    }
}

impl Row<'_> {
    /// Column `i` (from 0) as a `T`.
    pub fn get<T: FromCell>(&self, i: usize) -> Result<T, StoreError> {
        T::from_cell(self.cell(i)?).map_err(|e| StoreError::BadValue(format!("column {i}: {e}")))
    }

    /// Column `i` as it is stored, borrowed from the row.
    pub fn cell(&self, i: usize) -> Result<Cell<'_>, StoreError> {
        match self {
            Row::Sqlite(r) => Ok(match r.get_ref(i)? {
                ValueRef::Null => Cell::Null,
                ValueRef::Integer(i) => Cell::Int(i),
                ValueRef::Real(f) => Cell::Real(f),
                ValueRef::Text(t) => {
                    Cell::Text(std::str::from_utf8(t).map_err(|e| StoreError::BadValue(format!("column {i}: {e}")))?)
                }
                ValueRef::Blob(b) => Cell::Bytes(b),
            }),
            Row::Postgres(r) => pg_cell(r, i),
        }
    }

    /// Text column `i`, borrowed from the row (no copy per row where many rows are read).
    pub fn text(&self, i: usize) -> Result<&str, StoreError> {
        match self.cell(i)? {
            Cell::Text(s) => Ok(s),
            c => Err(StoreError::BadValue(format!("column {i}: {}", wrong(c, "text")))),
        }
    }
}

/// Reads column `i` of a PostgreSQL row as a [`Cell`], by its type.
fn pg_cell(r: &postgres::Row, i: usize) -> Result<Cell<'_>, StoreError> {
    let ty =
        r.columns().get(i).map(|c| c.type_().clone()).ok_or_else(|| StoreError::BadValue(format!("no column {i}")))?;
    fn get<'a, T: FromSql<'a>>(r: &'a postgres::Row, i: usize) -> Result<Option<T>, StoreError> {
        Ok(r.try_get::<_, Option<T>>(i)?)
    }
    let cell = match ty {
        Type::INT8 => get::<i64>(r, i)?.map(Cell::Int),
        Type::INT4 => get::<i32>(r, i)?.map(|v| Cell::Int(v.into())),
        Type::INT2 => get::<i16>(r, i)?.map(|v| Cell::Int(v.into())),
        Type::BOOL => get::<bool>(r, i)?.map(|v| Cell::Int(v.into())),
        Type::FLOAT8 => get::<f64>(r, i)?.map(Cell::Real),
        Type::FLOAT4 => get::<f32>(r, i)?.map(|v| Cell::Real(v.into())),
        Type::BYTEA => get::<&[u8]>(r, i)?.map(Cell::Bytes),
        _ => get::<&str>(r, i)?.map(Cell::Text),
    };
    Ok(cell.unwrap_or(Cell::Null))
}

/// A PostgreSQL connection with its prepared statements (by the statement's text as the store writes it).
struct Pg {
    client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
}

/// A connection to the store's database.
pub enum Db {
    Sqlite(rusqlite::Connection),
    Postgres(Box<RefCell<PgLink>>),
}

impl std::fmt::Debug for PgLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLink").field("connected", &self.live.is_some()).finish_non_exhaustive()
    }
}

/// How a PostgreSQL connection is (re)made, and the live one.
pub struct PgLink {
    config: postgres::Config,
    /// `Some` with `sslmode=require`: every connection (the first and each one made again) goes through TLS.
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    live: Option<Pg>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Db({:?})", self.engine())
    }
}

/// `?N` placeholders become PostgreSQL's `$N` (outside quoted text and names).
pub fn pg_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '?') => {
                out.push('$');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// Runs `f`, which blocks on the PostgreSQL client (it drives its own small runtime), where blocking is allowed: on
/// a worker of a multi-threaded tokio runtime through `block_in_place`, elsewhere (the ingest writer's thread, the
/// blocking pool, a plain command) directly.
fn outside_async<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl Drop for PgLink {
    fn drop(&mut self) {
        // The client's runtime must not be dropped on an async worker.
        if let Some(pg) = self.live.take() {
            outside_async(|| drop(pg));
        }
    }
}

impl PgLink {
    /// Connects (a `config` naming several hosts follows `target_session_attrs`, e.g. to a promoted primary).
    pub fn connect(
        config: postgres::Config,
        tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    ) -> Result<PgLink, StoreError> {
        let mut link = PgLink { config, tls, live: None };
        outside_async(|| link.live().map(|_| ()))?;
        Ok(link)
    }

    /// Drops the connection after an error that was not the server's answer to a statement (the connection broke:
    /// reset, closed, cut off): the next statement connects again rather than finding a half-dead client.
    fn forget_if_broken<R>(&mut self, result: &Result<R, StoreError>) {
        // FATAL: the server is ending the session (shutdown, `pg_terminate_backend`, a failover).
        let fatal = |e: &postgres::Error| e.as_db_error().is_none_or(|d| matches!(d.severity(), "FATAL" | "PANIC"));
        if let Err(StoreError::Postgres(e)) = result
            && (e.is_closed() || fatal(e))
        {
            tracing::warn!(error = %e, "the PostgreSQL connection broke; reconnecting at the next statement");
            self.live = None;
        }
    }

    /// The live connection; a closed one (the server restarted, a failover) is replaced by a new one first.
    fn live(&mut self) -> Result<&mut Pg, StoreError> {
        if self.live.as_ref().is_some_and(|pg| pg.client.is_closed()) {
            tracing::warn!("the PostgreSQL connection was lost; reconnecting");
            self.live = None;
        }
        let pg = match self.live.take() {
            Some(pg) => pg,
            None => {
                let client = match &self.tls {
                    Some(tls) => self.config.connect(tls.clone())?,
                    None => self.config.connect(postgres::NoTls)?,
                };
                Pg { client, statements: HashMap::new() }
            }
        };
        Ok(self.live.insert(pg))
    }
}

impl Pg {
    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(&pg_placeholders(sql))?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    fn args<'a>(params: &'a [Val<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
        params.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
    }
}

impl Db {
    /// The engine this connection talks to.
    pub fn engine(&self) -> Engine {
        match self {
            Db::Sqlite(_) => Engine::Sqlite,
            Db::Postgres(_) => Engine::Postgres,
        }
    }

    fn pg<R>(link: &RefCell<PgLink>, f: impl FnOnce(&mut Pg) -> Result<R, StoreError>) -> Result<R, StoreError> {
        outside_async(|| {
            let mut link = link.try_borrow_mut().map_err(|_| StoreError::BadValue("connection in use".into()))?;
            let result = f(link.live()?);
            link.forget_if_broken(&result);
            result
        })
    }

    /// Runs one statement; returns how many rows it changed.
    pub fn execute<'v>(&self, sql: &str, params: impl AsRef<[Val<'v>]>) -> Result<usize, StoreError> {
        let params = params.as_ref();
        match self {
            Db::Sqlite(c) => Ok(c.prepare_cached(sql)?.execute(rusqlite::params_from_iter(params))?),
            Db::Postgres(link) => Self::pg(link, |pg| {
                let s = pg.statement(sql)?;
                let n = pg.client.execute(&s, &Pg::args(params))?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }),
        }
    }

    /// Every row of a query, each mapped by `f`.
    pub fn query_map<'v, T>(
        &self,
        sql: &str,
        params: impl AsRef<[Val<'v>]>,
        mut f: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let params = params.as_ref();
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(f(&Row::Sqlite(r))?);
                }
                Ok(out)
            }
            Db::Postgres(link) => Self::pg(link, |pg| {
                let s = pg.statement(sql)?;
                let rows = pg.client.query(&s, &Pg::args(params))?;
                rows.iter().map(|r| f(&Row::Postgres(r))).collect()
            }),
        }
    }

    /// Hands every row of a query to `f` as it is read (PostgreSQL: as it arrives), so memory stays flat however
    /// many rows there are; an error from `f` stops the query.
    pub fn for_each<'v, E: From<StoreError>>(
        &self,
        sql: &str,
        params: impl AsRef<[Val<'v>]>,
        mut f: impl FnMut(&Row<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let params = params.as_ref();
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql).map_err(StoreError::from)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(params)).map_err(StoreError::from)?;
                while let Some(r) = rows.next().map_err(StoreError::from)? {
                    f(&Row::Sqlite(r))?;
                }
                Ok(())
            }
            Db::Postgres(link) => outside_async(|| {
                let mut link = link.try_borrow_mut().map_err(|_| StoreError::BadValue("connection in use".into()))?;
                let pg = link.live()?;
                let s = pg.statement(sql)?;
                let streamed = (|| {
                    let mut rows = pg.client.query_raw(&s, params.iter()).map_err(StoreError::from)?;
                    while let Some(r) =
                        postgres::fallible_iterator::FallibleIterator::next(&mut rows).map_err(StoreError::from)?
                    {
                        f(&Row::Postgres(&r))?;
                    }
                    Ok::<(), E>(())
                })();
                if streamed.is_err() && pg.client.is_closed() {
                    link.live = None;
                }
                streamed
            }),
        }
    }

    /// The first row of a query mapped by `f`, if there is one.
    pub fn query_opt<'v, T>(
        &self,
        sql: &str,
        params: impl AsRef<[Val<'v>]>,
        f: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let params = params.as_ref();
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
                rows.next()?.map(|r| f(&Row::Sqlite(r))).transpose()
            }
            Db::Postgres(link) => Self::pg(link, |pg| {
                let s = pg.statement(sql)?;
                let rows = pg.client.query(&s, &Pg::args(params))?;
                rows.first().map(|r| f(&Row::Postgres(r))).transpose()
            }),
        }
    }

    /// The first row of a query mapped by `f`; no row is an error.
    pub fn query_row<'v, T>(
        &self,
        sql: &str,
        params: impl AsRef<[Val<'v>]>,
        f: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.query_opt(sql, params, f)?.ok_or(StoreError::NoRow)
    }

    /// A statement to run once or many times (prepared and cached on first use, by either engine).
    pub fn stmt<'d>(&'d self, sql: &'d str) -> Result<Stmt<'d>, StoreError> {
        Ok(Stmt { db: self, sql })
    }

    /// Runs statements without parameters, separated by `;`.
    pub fn batch(&self, sql: &str) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Db::Postgres(link) => Self::pg(link, |pg| Ok(pg.client.batch_execute(sql)?)),
        }
    }

    /// Runs `f` in one transaction: committed when it returns `Ok`, rolled back otherwise. On SQLite the transaction
    /// takes the write lock at once (`BEGIN IMMEDIATE`), so it never fails half way for a lock another writer took.
    pub fn transaction<R>(&self, f: impl FnOnce(&Db) -> Result<R, StoreError>) -> Result<R, StoreError> {
        self.batch(match self.engine() {
            Engine::Sqlite => "BEGIN IMMEDIATE",
            Engine::Postgres => "BEGIN",
        })?;
        match f(self) {
            Ok(r) => match self.batch("COMMIT") {
                Ok(()) => Ok(r),
                Err(e) => {
                    let _ = self.batch("ROLLBACK");
                    Err(e)
                }
            },
            Err(e) => {
                if let Err(rollback) = self.batch("ROLLBACK") {
                    tracing::debug!(error = %rollback, "rollback after a failed transaction");
                }
                Err(e)
            }
        }
    }

    /// The SQLite connection, for what only SQLite has (pragmas, its schema tables).
    pub fn sqlite(&self) -> Option<&rusqlite::Connection> {
        match self {
            Db::Sqlite(c) => Some(c),
            Db::Postgres(_) => None,
        }
    }

    /// Runs `f` on the PostgreSQL client itself (migrations, bulk statements with array parameters).
    pub fn with_pg<R>(&self, f: impl FnOnce(&mut postgres::Client) -> Result<R, StoreError>) -> Result<R, StoreError> {
        match self {
            Db::Sqlite(_) => Err(StoreError::BadValue("not a PostgreSQL database".into())),
            Db::Postgres(link) => Self::pg(link, |pg| f(&mut pg.client)),
        }
    }

    /// Like [`Db::with_pg`], with the statement `sql` prepared (and cached) first.
    pub fn with_pg_statement<R>(
        &self,
        sql: &str,
        f: impl FnOnce(&mut postgres::Client, &postgres::Statement) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        match self {
            Db::Sqlite(_) => Err(StoreError::BadValue("not a PostgreSQL database".into())),
            Db::Postgres(link) => Self::pg(link, |pg| {
                let s = pg.statement(sql)?;
                f(&mut pg.client, &s)
            }),
        }
    }
}

/// A statement of [`Db::stmt`], with the shape of a prepared statement.
#[derive(Debug, Clone, Copy)]
pub struct Stmt<'d> {
    db: &'d Db,
    sql: &'d str,
}

impl Stmt<'_> {
    pub fn execute<'v>(&self, params: impl AsRef<[Val<'v>]>) -> Result<usize, StoreError> {
        self.db.execute(self.sql, params)
    }

    /// The first row; none is [`StoreError::NoRow`] (see [`OptionalExtension`]).
    pub fn query_row<'v, T>(
        &self,
        params: impl AsRef<[Val<'v>]>,
        f: impl FnOnce(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.db.query_row(self.sql, params, f)
    }

    pub fn query_map<'v, T>(
        &self,
        params: impl AsRef<[Val<'v>]>,
        f: impl FnMut(&Row<'_>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        self.db.query_map(self.sql, params, f)
    }

    pub fn for_each<'v, E: From<StoreError>>(
        &self,
        params: impl AsRef<[Val<'v>]>,
        f: impl FnMut(&Row<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.db.for_each(self.sql, params, f)
    }
}

/// `query_row(...).optional()`: no row is `None`, other errors stay errors.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>, StoreError>;
}

impl<T> OptionalExtension<T> for Result<T, StoreError> {
    fn optional(self) -> Result<Option<T>, StoreError> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::NoRow) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// How long a PostgreSQL connection attempt may take before it counts as failed.
pub const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        assert_eq!(pg_placeholders("SELECT ?1, '?2', \"a?b\" WHERE x = ?12"), "SELECT $1, '?2', \"a?b\" WHERE x = $12");
    }

    #[test]
    fn values_round_trip_through_sqlite() {
        let db = Db::Sqlite(rusqlite::Connection::open_in_memory().unwrap());
        db.batch("CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n INTEGER)").unwrap();
        let none: Option<i64> = None;
        db.execute("INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)", params![u64::MAX, 1.5f32, "x", vec![1u8, 2], none])
            .unwrap();
        let got = db
            .query_row("SELECT i, r, s, b, n FROM t", params![], |r| {
                Ok((
                    r.get::<u64>(0)?,
                    r.get::<f64>(1)?,
                    r.get::<String>(2)?,
                    r.get::<Vec<u8>>(3)?,
                    r.get::<Option<i64>>(4)?,
                ))
            })
            .unwrap();
        assert_eq!(got, (u64::MAX, 1.5, "x".to_owned(), vec![1, 2], None));
        let err = db.query_row("SELECT s FROM t", params![], |r| r.get::<i64>(0)).unwrap_err();
        assert!(err.to_string().contains("expected an integer"), "{err}");
    }

    #[test]
    fn a_failed_transaction_leaves_nothing() {
        let db = Db::Sqlite(rusqlite::Connection::open_in_memory().unwrap());
        db.batch("CREATE TABLE t (i INTEGER)").unwrap();
        let r: Result<(), _> = db.transaction(|tx| {
            tx.execute("INSERT INTO t VALUES (?1)", params![1])?;
            Err(StoreError::BadValue("stop".into()))
        });
        assert!(r.is_err());
        assert_eq!(db.query_row("SELECT count(*) FROM t", params![], |r| r.get::<i64>(0)).unwrap(), 0);
    }
}
