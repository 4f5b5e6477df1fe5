//! Reports into the database: any bytes that decode as a `Report` and pass `validate()` must be stored by the real
//! `Store` (a SQLite file in a temporary directory). The server acknowledges only what it stored and answers
//! "retry later" otherwise, so a valid report the store refuses would be retried by its agent forever.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use vigil_schema::report::Report;
use vigil_server::store::{Incoming, Outcome, Store};

/// Reports stored before the database is thrown away and recreated, so it stays small and fast.
const RECYCLE_AFTER: u32 = 5_000;

struct Db {
    dir: PathBuf,
    store: Option<Store>,
    stored: u32,
    next_seq: u64,
}

static DB: Mutex<Option<Db>> = Mutex::new(None);

fn fresh(dir: &Path) -> Store {
    let path = dir.join("vigil.db");
    for side in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(side);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    Store::open(&path).expect("open the fuzz database")
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut report) = serde_json::from_slice::<Report>(data) else { return };
    if report.validate().is_err() {
        return;
    }
    let mut guard = DB.lock().unwrap_or_else(|e| e.into_inner());
    let db = guard.get_or_insert_with(|| {
        let base = std::env::var_os("VIGIL_FUZZ_DB_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
        let dir = base.join(format!("vigil-fuzz-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz database directory");
        Db { store: Some(fresh(&dir)), dir, stored: 0, next_seq: 1 }
    });
    if db.stored >= RECYCLE_AFTER {
        db.store = None;
        db.store = Some(fresh(&db.dir));
        db.stored = 0;
    }
    // A fresh sequence each time (as a real agent sends), so the report is stored, not a duplicate.
    let seq = report.seq;
    report.seq = db.next_seq;
    db.next_seq += 1;
    let incoming = Incoming {
        agent_id: "agent-1".into(),
        host: "web-1".into(),
        ip: "10.0.0.1".into(),
        received_at_ms: 1_700_000_000_000,
        report,
    };
    let store = db.store.as_mut().expect("the store is open");
    match store.insert_reports(std::slice::from_ref(&incoming)) {
        Ok(outcomes) => assert!(matches!(outcomes[..], [Outcome::Stored { .. }]), "{outcomes:?}"),
        Err(e) => panic!("a valid report (seq {seq}) was refused by the store: {e}"),
    }
    db.stored += 1;
});
