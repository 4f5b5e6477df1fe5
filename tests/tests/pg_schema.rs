//! vigil's schema in PostgreSQL's dialect (`server/src/store/migrations_pg/`) is the SQLite schema: the same
//! migration files by version and name, and, once applied to a real PostgreSQL, the same tables, columns (order,
//! compatible types, nullability, defaults, rowid aliases as identity columns), primary keys, unique constraints,
//! CHECK constraints (counted), named indexes and foreign keys as a SQLite database migrated by `Store::open`.
//!
//! Both sides are read from their catalogs (SQLite's `sqlite_master` and pragmas; PostgreSQL's `pg_catalog` and
//! `information_schema`) into one [`Schema`] shape, and the differences listed. A second test removes a column, an
//! index and a default from the PostgreSQL side and checks that each is reported.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use vigil_testkit::Postgres;

/// The migration history table refinery keeps on each side: not part of vigil's schema.
const HISTORY: &str = "refinery_schema_history";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Column {
    name: String,
    /// integer, real, text or blob (PostgreSQL's bigint, double precision, text, bytea); anything else as is.
    ty: String,
    not_null: bool,
    default: Option<String>,
    /// A SQLite rowid alias (`INTEGER PRIMARY KEY`); a PostgreSQL identity column.
    identity: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ForeignKey {
    from: Vec<String>,
    table: String,
    to: Vec<String>,
    on_update: String,
    on_delete: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Table {
    columns: Vec<Column>,
    primary_key: Vec<String>,
    uniques: BTreeSet<Vec<String>>,
    foreign_keys: BTreeSet<ForeignKey>,
    checks: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Index {
    table: String,
    columns: Vec<String>,
    unique: bool,
    partial: bool,
}

#[derive(Debug, Default)]
struct Schema {
    tables: BTreeMap<String, Table>,
    /// Indexes created by name (`CREATE INDEX`), not those behind a PRIMARY KEY or UNIQUE constraint.
    indexes: BTreeMap<String, Index>,
}

fn store_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../server/src/store")
}

/// The `V<n>__<name>.sql` files of a migrations folder, by version: (version, file name, text).
fn migration_files(dir: &Path) -> Vec<(u32, String, String)> {
    let mut files: Vec<(u32, String, String)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let version = name.strip_prefix('V').and_then(|r| r.split_once("__")).and_then(|(v, _)| v.parse().ok());
            let version = version.unwrap_or_else(|| panic!("{name} is not V<n>__<name>.sql"));
            (version, name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

// ---- SQLite, migrated by the server's own Store::open

fn sqlite_schema() -> Schema {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vigil.db");
    drop(vigil_server::store::Store::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let strings = |sql: &str, param: &str| -> Vec<Vec<Option<String>>> {
        let mut st = conn.prepare(sql).unwrap();
        let n = st.column_count();
        st.query_map([param], |r| {
            (0..n)
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => None,
                        rusqlite::types::ValueRef::Integer(v) => Some(v.to_string()),
                        v => Some(v.as_str().map(str::to_owned).unwrap_or_default()),
                    })
                })
                .collect()
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut schema = Schema::default();
    let tables = strings(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> ?1",
        HISTORY,
    );
    for row in &tables {
        let (name, sql) = (s(&row[0]), s(&row[1]));
        let mut table = Table { checks: count_checks(&sql), ..Table::default() };
        let indexes = strings("SELECT name, \"unique\", origin, partial FROM pragma_index_list(?1)", &name);
        let rowid = !indexes.iter().any(|i| s(&i[2]) == "pk");
        let info =
            strings("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1) ORDER BY cid", &name);
        let mut pk: Vec<(u32, String)> = Vec::new();
        for c in &info {
            let pk_pos: u32 = s(&c[4]).parse().unwrap();
            if pk_pos > 0 {
                pk.push((pk_pos, s(&c[0])));
            }
            table.columns.push(Column {
                name: s(&c[0]),
                ty: s(&c[1]).to_lowercase(),
                not_null: s(&c[2]) == "1" || pk_pos > 0,
                default: c[3].clone(),
                identity: false,
            });
        }
        pk.sort();
        table.primary_key = pk.into_iter().map(|(_, c)| c).collect();
        if rowid && table.primary_key.len() == 1 {
            let col = table.columns.iter_mut().find(|c| c.name == table.primary_key[0]).unwrap();
            col.identity = col.ty == "integer";
        }
        for i in &indexes {
            let cols: Vec<String> = strings("SELECT name FROM pragma_index_info(?1) ORDER BY seqno", &s(&i[0]))
                .iter()
                .map(|r| s(&r[0]))
                .collect();
            if s(&i[2]) == "u" {
                table.uniques.insert(cols);
            }
        }
        let mut fks: BTreeMap<String, ForeignKey> = BTreeMap::new();
        for f in strings(
            "SELECT id, \"table\", \"from\", \"to\", on_update, on_delete FROM pragma_foreign_key_list(?1) ORDER BY id, seq",
            &name,
        ) {
            let fk = fks.entry(s(&f[0])).or_insert_with(|| ForeignKey {
                from: Vec::new(),
                table: s(&f[1]),
                to: Vec::new(),
                on_update: s(&f[4]),
                on_delete: s(&f[5]),
            });
            fk.from.push(s(&f[2]));
            fk.to.push(s(&f[3]));
        }
        table.foreign_keys = fks.into_values().collect();
        schema.tables.insert(name, table);
    }
    // Indexes with SQL text are the ones created by name (automatic ones have none).
    for row in strings(
        "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name <> ?1",
        HISTORY,
    ) {
        let (name, table) = (s(&row[0]), s(&row[1]));
        let meta = strings(
            "SELECT il.\"unique\", il.partial FROM sqlite_master m, pragma_index_list(m.tbl_name) il \
             WHERE m.type = 'index' AND il.name = m.name AND m.name = ?1",
            &name,
        );
        let columns =
            strings("SELECT name FROM pragma_index_info(?1) ORDER BY seqno", &name).iter().map(|r| s(&r[0])).collect();
        schema
            .indexes
            .insert(name, Index { table, columns, unique: s(&meta[0][0]) == "1", partial: s(&meta[0][1]) == "1" });
    }
    schema
}

/// CHECK constraints in a CREATE TABLE text (comments removed), counted by keyword.
fn count_checks(sql: &str) -> usize {
    sql.lines()
        .map(|l| l.split("--").next().unwrap_or_default())
        .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.eq_ignore_ascii_case("check"))
        .count()
}

// ---- PostgreSQL, migrated with psql from migrations_pg/

/// Applies the migration files in version order, in one psql session, to a fresh database; returns its name.
fn migrated_pg(pg: &Postgres, files: &[(u32, String, String)]) -> String {
    let url = pg.fresh_database().unwrap();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let script: String = files.iter().map(|(_, name, sql)| format!("-- {name}\n{sql}\n")).collect();
    pg.psql(&db, &script).unwrap_or_else(|e| panic!("applying migrations_pg: {e}"));
    db
}

/// Rows of `sql` as fields split on `|` (at most `n`: the last field keeps any further `|`).
fn pg_rows(pg: &Postgres, db: &str, sql: &str, n: usize) -> Vec<Vec<String>> {
    pg.psql(db, sql).unwrap().lines().map(|l| l.splitn(n, '|').map(str::to_owned).collect()).collect()
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',').filter(|c| !c.is_empty()).map(|c| c.trim_matches('"').to_owned()).collect()
}

fn pg_schema(pg: &Postgres, db: &str) -> Schema {
    let mut schema = Schema::default();
    let columns = pg_rows(
        pg,
        db,
        &format!(
            "SELECT c.table_name, c.column_name, c.data_type, c.is_nullable, c.is_identity, \
                    coalesce(c.column_default, '<none>') \
             FROM information_schema.columns c \
             JOIN information_schema.tables t USING (table_catalog, table_schema, table_name) \
             WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' AND c.table_name <> '{HISTORY}' \
             ORDER BY c.table_name, c.ordinal_position"
        ),
        6,
    );
    for c in columns {
        let ty = match c[2].as_str() {
            "bigint" => "integer".to_owned(),
            "double precision" => "real".to_owned(),
            "text" => "text".to_owned(),
            "bytea" => "blob".to_owned(),
            other => format!("{other} (PostgreSQL)"),
        };
        let default = (c[5] != "<none>").then(|| strip_cast(&c[5]));
        schema.tables.entry(c[0].clone()).or_default().columns.push(Column {
            name: c[1].clone(),
            ty,
            not_null: c[3] == "NO",
            default,
            identity: c[4] == "YES",
        });
    }
    let constraints = pg_rows(
        pg,
        db,
        "SELECT con.conrelid::regclass::text, con.contype, \
                (SELECT string_agg(a.attname, ',' ORDER BY k.n) FROM unnest(con.conkey) WITH ORDINALITY k(attnum, n) \
                 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum), \
                CASE WHEN con.contype = 'f' THEN con.confrelid::regclass::text ELSE '' END, \
                coalesce((SELECT string_agg(a.attname, ',' ORDER BY k.n) \
                          FROM unnest(con.confkey) WITH ORDINALITY k(attnum, n) \
                          JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum), ''), \
                con.confupdtype, con.confdeltype \
         FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace \
         WHERE n.nspname = 'public' AND con.contype IN ('p', 'u', 'f', 'c')",
        7,
    );
    for c in constraints {
        let Some(table) = schema.tables.get_mut(&c[0]) else { continue };
        let cols = split_list(&c[2]);
        match c[1].as_str() {
            "p" => table.primary_key = cols,
            "u" => {
                table.uniques.insert(cols);
            }
            "c" => table.checks += 1,
            _ => {
                table.foreign_keys.insert(ForeignKey {
                    from: cols,
                    table: c[3].clone(),
                    to: split_list(&c[4]),
                    on_update: fk_action(&c[5]),
                    on_delete: fk_action(&c[6]),
                });
            }
        }
    }
    // Named indexes: those that back no PRIMARY KEY / UNIQUE / EXCLUDE constraint.
    let indexes = pg_rows(
        pg,
        db,
        "SELECT i.relname, t.relname, ix.indisunique, ix.indpred IS NOT NULL, \
                (SELECT string_agg(pg_get_indexdef(ix.indexrelid, k, true), ',' ORDER BY k) \
                 FROM generate_series(1, ix.indnkeyatts) k) \
         FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid JOIN pg_class t ON t.oid = ix.indrelid \
         JOIN pg_namespace n ON n.oid = t.relnamespace \
         WHERE n.nspname = 'public' AND NOT EXISTS (SELECT 1 FROM pg_constraint c \
               WHERE c.conindid = ix.indexrelid AND c.contype IN ('p', 'u', 'x'))",
        5,
    );
    for i in indexes {
        if i[1] == HISTORY {
            continue;
        }
        schema.indexes.insert(
            i[0].clone(),
            Index { table: i[1].clone(), columns: split_list(&i[4]), unique: i[2] == "t", partial: i[3] == "t" },
        );
    }
    schema
}

/// `'pending'::text` -> `'pending'`: PostgreSQL shows a default with its cast.
fn strip_cast(default: &str) -> String {
    match default.rsplit_once("::") {
        Some((value, ty)) if ty.chars().all(|c| c.is_ascii_alphabetic() || c == ' ') => value.to_owned(),
        _ => default.to_owned(),
    }
}

/// pg_constraint's action codes in SQLite's words.
fn fk_action(code: &str) -> String {
    match code.trim() {
        "a" => "NO ACTION",
        "r" => "RESTRICT",
        "c" => "CASCADE",
        "n" => "SET NULL",
        "d" => "SET DEFAULT",
        other => other,
    }
    .to_owned()
}

// ---- the comparison

fn differences(sqlite: &Schema, pg: &Schema) -> Vec<String> {
    let mut out = Vec::new();
    let names: BTreeSet<&String> = sqlite.tables.keys().chain(pg.tables.keys()).collect();
    for name in names {
        let (Some(s), Some(p)) = (sqlite.tables.get(name), pg.tables.get(name)) else {
            let side = if sqlite.tables.contains_key(name) { "PostgreSQL" } else { "SQLite" };
            out.push(format!("table {name}: missing in {side}"));
            continue;
        };
        let s_names: Vec<&str> = s.columns.iter().map(|c| c.name.as_str()).collect();
        let p_names: Vec<&str> = p.columns.iter().map(|c| c.name.as_str()).collect();
        if s_names != p_names {
            out.push(format!("table {name}: columns differ:\n  SQLite     {s_names:?}\n  PostgreSQL {p_names:?}"));
        }
        for sc in &s.columns {
            if let Some(pc) = p.columns.iter().find(|c| c.name == sc.name)
                && sc != pc
            {
                out.push(format!("column {name}.{}:\n  SQLite     {sc:?}\n  PostgreSQL {pc:?}", sc.name));
            }
        }
        let mut diff = |what: &str, a: String, b: String| {
            if a != b {
                out.push(format!("table {name}: {what} differ:\n  SQLite     {a}\n  PostgreSQL {b}"));
            }
        };
        diff("primary keys", format!("{:?}", s.primary_key), format!("{:?}", p.primary_key));
        diff("unique constraints", format!("{:?}", s.uniques), format!("{:?}", p.uniques));
        diff("foreign keys", format!("{:?}", s.foreign_keys), format!("{:?}", p.foreign_keys));
        diff("CHECK constraint counts", s.checks.to_string(), p.checks.to_string());
    }
    let names: BTreeSet<&String> = sqlite.indexes.keys().chain(pg.indexes.keys()).collect();
    for name in names {
        match (sqlite.indexes.get(name), pg.indexes.get(name)) {
            (Some(s), Some(p)) if s != p => {
                out.push(format!("index {name}:\n  SQLite     {s:?}\n  PostgreSQL {p:?}"));
            }
            (Some(_), None) => out.push(format!("index {name}: missing in PostgreSQL")),
            (None, Some(_)) => out.push(format!("index {name}: missing in SQLite")),
            _ => {}
        }
    }
    out
}

/// The statistics tables, whose foreign keys PostgreSQL drops (migrations_pg/V18: a row lock on the parent per
/// checked row cost 40% of its ingest throughput).
const UNCHECKED_ON_POSTGRES: [&str; 11] = [
    "system_details",
    "sessions",
    "cpu",
    "memory",
    "swap",
    "partitions",
    "disk_usage",
    "network",
    "security_events",
    "command_runs",
    "command_metrics",
];

#[test]
fn migrations_pg_has_the_same_files_as_migrations() {
    let names = |dir: &str| -> Vec<(u32, String)> {
        migration_files(&store_dir().join(dir)).into_iter().map(|(v, n, _)| (v, n)).collect()
    };
    assert_eq!(names("migrations"), names("migrations_pg"), "refinery must see the same versions and names on both");
}

#[test]
fn the_postgresql_schema_is_the_sqlite_schema() {
    let mut sqlite = sqlite_schema();
    assert!(sqlite.tables.contains_key("reports") && sqlite.indexes.contains_key("cpu_host_ts"), "{sqlite:?}");
    // The one intended difference (migrations_pg/V18): PostgreSQL's statistics tables carry no foreign keys. SQLite
    // declares exactly `host_id -> hosts` and `report_id -> reports` there; nothing else may differ.
    for table in UNCHECKED_ON_POSTGRES {
        let t = sqlite.tables.get_mut(table).unwrap_or_else(|| panic!("no table {table} in SQLite"));
        let fks: Vec<(String, String)> = t.foreign_keys.iter().map(|f| (f.from.join(","), f.table.clone())).collect();
        assert_eq!(
            fks.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect::<BTreeSet<_>>(),
            BTreeSet::from([("host_id", "hosts"), ("report_id", "reports")]),
            "{table}"
        );
        t.foreign_keys.clear();
    }
    let pg = vigil_testkit::shared();
    let db = migrated_pg(pg, &migration_files(&store_dir().join("migrations_pg")));
    let postgres = pg_schema(pg, &db);
    let diff = differences(&sqlite, &postgres);
    assert!(diff.is_empty(), "the PostgreSQL migrations differ from the SQLite schema:\n{}", diff.join("\n"));
    // The rowid aliases became identity columns: an insert without an id gets one.
    let out = pg.psql(&db, "INSERT INTO hosts (name, ip) VALUES ('a', '127.0.0.1') RETURNING id").unwrap();
    assert_eq!(out.trim(), "1");
    assert_eq!(pg.psql(&db, "SELECT id, error FROM config_state").unwrap().trim(), "1|");
}

#[test]
fn a_missing_column_index_or_default_is_reported() {
    let sqlite = sqlite_schema();
    let mut files = migration_files(&store_dir().join("migrations_pg"));
    // A V1 whose memory table lacks `available`.
    let v1 = &mut files.iter_mut().find(|(v, _, _)| *v == 1).unwrap().2;
    let line = "    available BIGINT NOT NULL,\n";
    assert!(v1.contains(line), "V1__init.sql changed: update this test");
    *v1 = v1.replacen(line, "", 1);
    let pg = vigil_testkit::shared();
    let db = migrated_pg(pg, &files);
    pg.psql(
        &db,
        "DROP INDEX cpu_report; ALTER TABLE outbox ALTER COLUMN attempts DROP DEFAULT; \
         ALTER TABLE swap ALTER COLUMN total TYPE integer; ALTER TABLE agents DROP CONSTRAINT agents_host_key;",
    )
    .unwrap();
    let diff = differences(&sqlite, &pg_schema(pg, &db)).join("\n");
    for expected in [
        "table memory: columns differ",
        "index cpu_report: missing in PostgreSQL",
        "column outbox.attempts",
        "column swap.total",
        "table agents: unique constraints differ",
    ] {
        assert!(diff.contains(expected), "{expected:?} not reported in:\n{diff}");
    }
}
