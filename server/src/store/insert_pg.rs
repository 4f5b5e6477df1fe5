//! Writing a batch of reports into PostgreSQL with one statement per table, so a batch of thousands of reports costs
//! about a dozen round trips: the `reports` rows as arrays that `unnest` turns back into rows (their ids and the
//! duplicates come back through `RETURNING`), each statistics table's rows with a binary `COPY`. The rows are the
//! same as SQLite's (`insert::family_rows`).

use std::collections::HashMap;

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};

use super::db::Val;
use super::insert::{self, Incoming, Outcome, Table, sample_time};
use super::{Db, StoreError};

/// One column of a table's batch, typed as its PostgreSQL array.
#[derive(Debug)]
enum Column {
    Int(Vec<Option<i64>>),
    Real(Vec<Option<f64>>),
    Text(Vec<Option<String>>),
}

impl Column {
    fn new(pg_type: &str) -> Column {
        match pg_type {
            "int8" => Column::Int(Vec::new()),
            "float8" => Column::Real(Vec::new()),
            _ => Column::Text(Vec::new()),
        }
    }

    fn push(&mut self, v: Val<'_>) -> Result<(), StoreError> {
        match (self, v) {
            (Column::Int(c), Val::Int(i)) => c.push(Some(i)),
            (Column::Int(c), Val::Null) => c.push(None),
            (Column::Real(c), Val::Real(f)) => c.push(Some(f)),
            (Column::Real(c), Val::Int(i)) => c.push(Some(i as f64)),
            (Column::Real(c), Val::Null) => c.push(None),
            (Column::Text(c), Val::Text(s)) => c.push(Some(s.to_owned())),
            (Column::Text(c), Val::Null) => c.push(None),
            (_, v) => return Err(StoreError::BadValue(format!("{v:?} does not fit its column"))),
        }
        Ok(())
    }

    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Column::Int(c) => c,
            Column::Real(c) => c,
            Column::Text(c) => c,
        }
    }

    fn len(&self) -> usize {
        match self {
            Column::Int(c) => c.len(),
            Column::Real(c) => c.len(),
            Column::Text(c) => c.len(),
        }
    }

    /// The value of row `i` (`i < len()`).
    fn at(&self, i: usize) -> &(dyn ToSql + Sync) {
        match self {
            Column::Int(c) => &c[i],
            Column::Real(c) => &c[i],
            Column::Text(c) => &c[i],
        }
    }

    fn pg_type(&self) -> Type {
        match self {
            Column::Int(_) => Type::INT8,
            Column::Real(_) => Type::FLOAT8,
            Column::Text(_) => Type::TEXT,
        }
    }
}

/// The rows of one table gathered for one statement.
#[derive(Debug)]
struct Bulk {
    table: &'static Table,
    columns: Vec<Column>,
}

impl Bulk {
    fn new(table: &'static Table) -> Bulk {
        Bulk { table, columns: table.columns.iter().map(|(_, ty)| Column::new(ty)).collect() }
    }

    fn push(&mut self, values: &[Val<'_>]) -> Result<(), StoreError> {
        if values.len() != self.columns.len() {
            return Err(StoreError::BadValue(format!("{} values for {}", values.len(), self.table.name)));
        }
        self.columns.iter_mut().zip(values).try_for_each(|(c, v)| c.push(*v))
    }

    /// Writes the rows with one binary `COPY`: PostgreSQL then fills heap pages several rows at a time (one WAL
    /// record per page, not per row), the cheapest way in for rows that need no answer back.
    fn write(&self, tx: &Db) -> Result<(), StoreError> {
        let rows = self.columns.first().map_or(0, Column::len);
        if rows == 0 {
            return Ok(());
        }
        if self.columns.iter().any(|c| c.len() != rows) {
            return Err(StoreError::BadValue(format!("ragged columns for {}", self.table.name)));
        }
        let names: Vec<&str> = self.table.columns.iter().map(|(c, _)| *c).collect();
        let types: Vec<Type> = self.columns.iter().map(Column::pg_type).collect();
        let copy = format!("COPY {} ({}) FROM STDIN BINARY", self.table.name, names.join(", "));
        tx.with_pg(|client| {
            let mut writer = BinaryCopyInWriter::new(client.copy_in(&copy)?, &types);
            let mut row: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(self.columns.len());
            for i in 0..rows {
                row.clear();
                row.extend(self.columns.iter().map(|c| c.at(i)));
                writer.write(&row)?;
            }
            writer.finish()?;
            Ok(())
        })
    }
}

/// Stores `batch` (inside the caller's transaction): the reports with one `INSERT ... ON CONFLICT DO NOTHING
/// RETURNING`, which tells the stored from the duplicates, then each table's rows in one statement.
pub(super) fn insert_batch(
    tx: &Db,
    hosts: &mut HashMap<String, (i64, String)>,
    batch: &[Incoming],
) -> Result<Vec<Outcome>, StoreError> {
    lock_hosts(tx, batch)?;
    let host_ids: Vec<i64> =
        batch.iter().map(|inc| insert::host_id(tx, hosts, &inc.host, &inc.ip)).collect::<Result<_, _>>()?;
    let ids = insert_reports(tx, batch, &host_ids)?;
    let mut tables: Vec<Bulk> = insert::STAT_TABLES.iter().map(|t| Bulk::new(t)).collect();
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut stored = Vec::new();
    for ((inc, host), id) in batch.iter().zip(&host_ids).zip(ids) {
        let Some(rid) = id else {
            outcomes.push(Outcome::Duplicate);
            continue;
        };
        let ts = sample_time(inc.report.collected_at_ms, inc.received_at_ms);
        insert::family_rows([*host, rid, ts], &inc.ip, &inc.report.stats, |table, values| {
            let bulk = tables.iter_mut().find(|b| b.table.name == table.name);
            bulk.ok_or_else(|| StoreError::BadValue(format!("no bulk for {}", table.name)))?.push(values)
        })?;
        if let Some(run) = &inc.report.stats.command {
            insert::insert_command(tx, [*host, rid, ts], &inc.ip, &inc.report.job, run)?;
        }
        stored.push((*host, ts, inc));
        outcomes.push(Outcome::Stored { report_id: rid });
    }
    for t in &tables {
        t.write(tx)?;
    }
    record_unavailable(tx, &stored)?;
    Ok(outcomes)
}

/// Takes a transaction-scoped advisory lock per host of the batch (in one order, so two nodes cannot deadlock): the
/// alert state of a host is read and written by one transaction at a time, even when two nodes receive its
/// reports at once (an agent moving between nodes), so a transition is recorded and mailed once.
fn lock_hosts(tx: &Db, batch: &[Incoming]) -> Result<(), StoreError> {
    const SQL: &str = "SELECT count(pg_advisory_xact_lock(k)) FROM
                       (SELECT DISTINCT hashtext(h) AS k FROM unnest($1::text[]) AS h ORDER BY k) AS s";
    let hosts: Vec<&str> = batch.iter().map(|inc| inc.host.as_str()).collect();
    tx.with_pg_statement(SQL, |client, stmt| {
        client.query(stmt, &[&hosts])?;
        Ok(())
    })
}

/// Inserts the `reports` rows; returns each report's new id, `None` for a duplicate (stored before, or earlier in
/// this batch).
fn insert_reports(tx: &Db, batch: &[Incoming], host_ids: &[i64]) -> Result<Vec<Option<i64>>, StoreError> {
    const SQL: &str = "INSERT INTO reports (agent_id, seq, host_id, client_ip, job, collected_at_ms, received_at_ms,
                                           clock_offset_ms, dropped)
                       SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[], $6::int8[],
                                            $7::int8[], $8::int8[], $9::int8[])
                       ON CONFLICT (agent_id, seq) DO NOTHING
                       RETURNING id, agent_id, seq";
    let mut bulk: Vec<Column> =
        ["text", "int8", "int8", "text", "text", "int8", "int8", "int8", "int8"].into_iter().map(Column::new).collect();
    for (inc, host) in batch.iter().zip(host_ids) {
        insert::report_values(inc, *host, |values| bulk.iter_mut().zip(values).try_for_each(|(c, v)| c.push(*v)))?;
    }
    let args: Vec<&(dyn ToSql + Sync)> = bulk.iter().map(Column::as_sql).collect();
    let mut new: HashMap<(String, i64), i64> = tx.with_pg_statement(SQL, |client, stmt| {
        let rows = client.query(stmt, &args)?;
        rows.iter().map(|r| Ok(((r.try_get(1)?, r.try_get(2)?), r.try_get(0)?))).collect()
    })?;
    Ok(batch.iter().map(|inc| new.remove(&(inc.agent_id.clone(), inc.report.seq as i64))).collect())
}

/// `insert::record_unavailable` for the stored reports that list an unavailable family or whose host has a row:
/// one query finds those hosts for the whole batch.
fn record_unavailable(tx: &Db, stored: &[(i64, i64, &Incoming)]) -> Result<(), StoreError> {
    let hosts: Vec<i64> = stored.iter().map(|(h, _, _)| *h).collect();
    const SQL: &str = "SELECT DISTINCT host_id FROM unavailable_families WHERE host_id = ANY($1)";
    let with_rows: Vec<i64> = tx.with_pg_statement(SQL, |client, stmt| {
        let rows = client.query(stmt, &[&hosts])?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    })?;
    for (host, ts, inc) in stored {
        if !inc.report.stats.unavailable.is_empty() || with_rows.contains(host) {
            insert::record_unavailable(tx, *host, *ts, &inc.report.stats)?;
        }
    }
    Ok(())
}
