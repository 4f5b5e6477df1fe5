//! The schema as documentation, derived from the migrations themselves: a Mermaid `erDiagram` (tables, columns with
//! types, primary and foreign keys) for `docs/schema.md`, and the migrations' checksums, which must never change
//! once applied somewhere. Tests (`server/tests/schema_diagram.rs`) hold the committed files to both.

use std::fmt::Write as _;

use rusqlite::Connection;

use super::{StoreError, embedded};

/// One migration as embedded in this binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationSum {
    pub version: i32,
    pub name: String,
    /// refinery's checksum of the name, version and SQL.
    pub checksum: u64,
}

/// Every embedded migration, oldest first.
pub fn migration_sums() -> Vec<MigrationSum> {
    let mut all: Vec<MigrationSum> = embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| MigrationSum { version: m.version(), name: m.name().to_owned(), checksum: m.checksum() })
        .collect();
    all.sort_by_key(|m| m.version);
    all
}

/// A column as `pragma table_info` describes it.
struct Column {
    name: String,
    ty: String,
    pk: bool,
}

/// `docs/schema.md`: the migrations applied to an in-memory database, read back from `sqlite_master`,
/// `pragma_table_info` and `pragma_foreign_key_list`.
pub fn er_diagram() -> Result<String, StoreError> {
    let mut conn = Connection::open_in_memory()?;
    embedded::migrations::runner().run(&mut conn)?;
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
             AND name <> 'refinery_schema_history' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut entities = String::new();
    let mut relations = String::new();
    for table in &tables {
        let columns: Vec<Column> = conn
            .prepare("SELECT name, type, pk FROM pragma_table_info(?1) ORDER BY cid")?
            .query_map([table], |r| Ok(Column { name: r.get(0)?, ty: r.get(1)?, pk: r.get::<_, i64>(2)? > 0 }))?
            .collect::<Result<_, _>>()?;
        let fks: Vec<(String, String, String)> = conn
            .prepare("SELECT \"table\", \"from\", \"to\" FROM pragma_foreign_key_list(?1) ORDER BY id, seq")?
            .query_map([table], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, Option<String>>(2)?.unwrap_or_default())))?
            .collect::<Result<_, _>>()?;
        let _ = writeln!(entities, "    {table} {{");
        for c in &columns {
            let fk = fks.iter().any(|(_, from, _)| *from == c.name);
            let keys = match (c.pk, fk) {
                (true, true) => " PK, FK",
                (true, false) => " PK",
                (false, true) => " FK",
                (false, false) => "",
            };
            let ty = if c.ty.is_empty() { "ANY".to_owned() } else { c.ty.replace(' ', "_") };
            let _ = writeln!(entities, "        {ty} {}{keys}", c.name);
        }
        let _ = writeln!(entities, "    }}");
        for (parent, from, to) in &fks {
            let to = if to.is_empty() { "rowid" } else { to.as_str() };
            let _ = writeln!(relations, "    {parent} ||--o{{ {table} : \"{from} -> {to}\"");
        }
    }
    Ok(format!(
        "# The database schema\n\n\
         Generated from the migrations in `server/src/store/migrations/` by\n\
         `VIGIL_BLESS=1 cargo test -p vigil-server --test schema_diagram`; do not edit by hand.\n\n\
         ```mermaid\nerDiagram\n{entities}{relations}```\n"
    ))
}
