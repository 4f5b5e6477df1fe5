//! Reports into the database, replayed from the fuzz corpora (what the `report_store` fuzz target checked before it
//! left `fuzz/`, which must build without SQLite): every corpus file that decodes as a `Report` and passes
//! `validate()` must be stored by the real `Store` in a temporary SQLite file. The server acknowledges only what it
//! stored and answers "retry later" otherwise, so a valid report the store refuses would be retried by its agent
//! forever.

use std::path::{Path, PathBuf};

use vigil_schema::report::Report;
use vigil_server::store::{Incoming, Outcome, Store};

/// The corpora replayed: the former `report_store` seeds (one real report per collector) and the `report` target's
/// corpus (the same and whatever fuzzing added).
const CORPORA: [&str; 2] = ["report_store", "report"];

fn corpus_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut files = Vec::new();
    for name in CORPORA {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a corpus entry").path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_valid_corpus_report_is_stored() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = Store::open(&dir.path().join("vigil.db")).expect("open the store");
    let mut stored = 0u64;
    for (i, path) in corpus_files().iter().enumerate() {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let Ok(mut report) = serde_json::from_slice::<Report>(&bytes) else { continue };
        if report.validate().is_err() {
            continue;
        }
        // A fresh sequence each time (as a real agent sends), so the report is stored, not a duplicate.
        report.seq = i as u64 + 1;
        let incoming = Incoming {
            agent_id: "agent-1".into(),
            host: "web-1".into(),
            ip: "10.0.0.1".into(),
            received_at_ms: 1_700_000_000_000,
            report,
        };
        match store.insert_reports(std::slice::from_ref(&incoming)) {
            Ok(outcomes) => {
                assert!(matches!(outcomes[..], [Outcome::Stored { .. }]), "{}: {outcomes:?}", path.display())
            }
            Err(e) => panic!("a valid report ({}) was refused by the store: {e}", path.display()),
        }
        stored += 1;
    }
    // The seeds are real reports, one per collector: if none decoded, this test would prove nothing.
    assert!(stored >= 10, "only {stored} corpus reports were valid");
}
