//! The committed schema documentation follows the migrations: `docs/schema.md` is what the migrations produce, and
//! no migration that may already be applied somewhere has changed (refinery refuses to start on such a database,
//! and a silent edit would leave databases that differ by history).
//!
//! Regenerate after adding a migration: `VIGIL_BLESS=1 cargo test -p vigil-server --test schema_diagram`. Blessing
//! adds new migrations to the checksum list but never rewrites the sum of one already listed.

use std::path::PathBuf;

use vigil_server::store::schema_doc::{er_diagram, migration_sums};

const BLESS: &str = "VIGIL_BLESS=1 cargo test -p vigil-server --test schema_diagram";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn blessing() -> bool {
    std::env::var_os("VIGIL_BLESS").is_some_and(|v| v == "1")
}

#[test]
fn docs_schema_md_is_generated_from_the_migrations() {
    let path = root().join("docs/schema.md");
    let generated = er_diagram().expect("applying the migrations to an in-memory database");
    if blessing() {
        std::fs::write(&path, &generated).expect("writing docs/schema.md");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/schema.md differs from what the migrations produce; regenerate it with `{BLESS}`\n\
         --- generated ---\n{generated}"
    );
}

#[test]
fn applied_migrations_never_change() {
    let path = root().join("server/src/store/migration_checksums.txt");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let listed: Vec<(i32, String, u64)> = committed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "bad line in {}: {l:?}", path.display());
            (f[0].parse().expect("version"), f[1].to_owned(), f[2].parse().expect("checksum"))
        })
        .collect();
    let current = migration_sums();
    for (version, name, sum) in &listed {
        let now = current.iter().find(|m| m.version == *version);
        assert!(now.is_some(), "migration V{version}__{name} was removed; migrations are append-only");
        let now = now.expect("checked above");
        assert!(
            now.name == *name && now.checksum == *sum,
            "migration V{version}__{name} changed after it was committed: add a new migration instead \
             (databases that applied the old one refuse to start)"
        );
    }
    let new: Vec<_> = current.iter().filter(|m| !listed.iter().any(|(v, _, _)| *v == m.version)).collect();
    if new.is_empty() {
        return;
    }
    if blessing() {
        let mut text = committed;
        if text.is_empty() {
            text.push_str("# version name refinery-checksum: one line per migration, appended by\n# ");
            text.push_str(BLESS);
            text.push_str("; never edit a line.\n");
        }
        for m in new {
            text.push_str(&format!("{} {} {}\n", m.version, m.name, m.checksum));
        }
        std::fs::write(&path, text).expect("writing the checksum list");
        return;
    }
    let names: Vec<String> = new.iter().map(|m| format!("V{}__{}", m.version, m.name)).collect();
    panic!("migrations not in the checksum list: {names:?}; record them with `{BLESS}`");
}
