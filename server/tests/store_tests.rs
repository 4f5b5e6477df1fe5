//! The store, the ingest writer and the status view against real SQLite files in temporary directories.

// The helpers below are not #[test] functions, which clippy.toml's allow-unwrap-in-tests does not cover.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rusqlite::Connection;
use vigil_schema::report::*;
use vigil_server::ingest::{self, IngestOptions};
use vigil_server::status;
use vigil_server::store::{AgentRecord, Incoming, Outcome, Store};

/// A report where every family has at least one row.
pub fn full_report(seq: u64, collected_at_ms: i64) -> Report {
    Report {
        seq,
        job: "everything".into(),
        collected_at_ms,
        dropped: 2,
        stats: Stats {
            system: Some(SystemInfo {
                hostname: "web1".into(),
                os_name: "Debian".into(),
                os_version: "12".into(),
                kernel: "6.1.0".into(),
                arch: "x86_64".into(),
                uptime_s: 3_600,
                boot_time: 1_700_000_000,
                cpu_model: "Xeon".into(),
                cpu_count: 2,
            }),
            users: Some(Users {
                source: Some("/var/run/utmp".into()),
                sessions: vec![
                    Session {
                        user: "alice".into(),
                        terminal: "pts/0".into(),
                        host: Some("10.1.1.1".into()),
                        login_time: 1,
                    },
                    Session { user: "bob".into(), terminal: "tty1".into(), host: None, login_time: 2 },
                ],
            }),
            cpu: Some(CpuStats {
                total_pct: 37.5,
                per_core_pct: vec![25.0, 50.0],
                load1: 0.5,
                load5: 0.25,
                load15: 0.1,
            }),
            memory: Some(MemoryStats { total: 1000, used: 600, available: 400, free: 300, used_pct: 60.0 }),
            swap: Some(SwapStats { total: 500, used: 50, free: 450, used_pct: 10.0 }),
            partitions: Some(vec![Partition {
                device: "/dev/sda1".into(),
                mount_point: "/".into(),
                fs_type: "ext4".into(),
                options: "rw,relatime".into(),
            }]),
            disk_usage: Some(vec![
                DiskUsage {
                    mount_point: "/".into(),
                    total: 100,
                    used: 70,
                    free: 30,
                    used_pct: 70.0,
                    inodes_total: Some(10),
                    inodes_used: Some(3),
                },
                DiskUsage {
                    mount_point: "/boot".into(),
                    total: 10,
                    used: 9,
                    free: 1,
                    used_pct: 90.0,
                    inodes_total: None,
                    inodes_used: None,
                },
            ]),
            network: Some(vec![NetInterface {
                name: "eth0".into(),
                rx_bytes: u64::MAX,
                tx_bytes: 2,
                rx_packets: 3,
                tx_packets: 4,
                rx_errors: 0,
                tx_errors: 0,
                rx_dropped: 0,
                tx_dropped: 0,
                rx_bytes_per_s: Some(1.5),
                tx_bytes_per_s: None,
            }]),
            security_events: Some(SecurityEvents {
                source: Some("/var/log/auth.log".into()),
                events: vec![SecurityEvent {
                    time: 1_700_000_100,
                    kind: SecurityEventKind::LoginFailed,
                    user: Some("root".into()),
                    source: Some("203.0.113.9".into()),
                    message: "Failed password for root".into(),
                }],
            }),
            command: None,
            unavailable: Vec::new(),
        },
    }
}

pub fn incoming(agent: &str, host: &str, seq: u64, received_at_ms: i64) -> Incoming {
    Incoming {
        agent_id: agent.into(),
        host: host.into(),
        ip: "192.0.2.10".into(),
        received_at_ms,
        report: full_report(seq, received_at_ms - 250),
    }
}

fn count(path: &Path, table: &str) -> i64 {
    let c = Connection::open(path).unwrap();
    c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).unwrap()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

const FAMILIES: [&str; 9] =
    ["system_details", "sessions", "cpu", "memory", "swap", "partitions", "disk_usage", "network", "security_events"];

#[test]
fn migrations_apply_on_empty_db_and_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vigil.db");
    let store = Store::open(&path).unwrap();
    let history = store.migration_history().unwrap();
    assert_eq!(history.first(), Some(&(1, "init".to_string())), "{history:?}");
    drop(store);
    // Up to date: opening again applies nothing and keeps the history.
    let store = Store::open(&path).unwrap();
    assert_eq!(store.migration_history().unwrap(), history);
    let ro = Store::open_readonly(&path).unwrap();
    assert_eq!(ro.migration_history().unwrap(), history);
}

#[test]
fn readonly_open_on_missing_db_is_not_found_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.db");
    let err = Store::open_readonly(&path).unwrap_err();
    assert!(matches!(err, vigil_server::store::StoreError::NotFound(_)), "{err:?}");
    assert!(!path.exists());
}

#[test]
fn readonly_open_migrates_an_unmigrated_file_then_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    Connection::open(&path).unwrap().execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
    let ro = Store::open_readonly(&path).unwrap();
    assert!(!ro.migration_history().unwrap().is_empty());
    assert_eq!(status::config_error(&ro).unwrap(), None);
}

#[test]
fn files_are_owner_only_and_missing_dir_is_created_0700() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let path = data.join("vigil.db");
    let mut store = Store::open(&path).unwrap();
    store.insert_reports(&[incoming("a", "web1", 1, 10_000)]).unwrap();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&path), 0o600);
    for side in ["vigil.db-wal", "vigil.db-shm"] {
        let p = data.join(side);
        assert!(p.exists(), "{side} exists while open in WAL mode");
        assert_eq!(mode(&p), 0o600, "{side}");
    }
    // A pre-existing file with loose permissions is tightened.
    let loose = dir.path().join("loose.db");
    std::fs::write(&loose, b"").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(Store::open(&loose).unwrap());
    assert_eq!(mode(&loose), 0o600);
}

#[test]
fn full_report_fills_every_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    let mut store = Store::open(&path).unwrap();
    let out = store.insert_reports(&[incoming("agent-1", "web1", 7, 50_000)]).unwrap();
    let Outcome::Stored { report_id } = out[0] else { panic!("{out:?}") };
    let c = Connection::open(&path).unwrap();
    let (seq, job, collected, received, offset, dropped, ip): (i64, String, i64, i64, i64, i64, String) = c
        .query_row(
            "SELECT seq, job, collected_at_ms, received_at_ms, clock_offset_ms, dropped, client_ip FROM reports WHERE id = ?1",
            [report_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
        )
        .unwrap();
    assert_eq!((seq, job.as_str(), collected, received, offset, dropped), (7, "everything", 49_750, 50_000, 250, 2));
    assert_eq!(ip, "192.0.2.10");
    let expected = [1, 2, 1, 1, 1, 1, 2, 1, 1];
    for (table, n) in FAMILIES.iter().zip(expected) {
        assert_eq!(count(&path, table), n, "{table}");
        let (host, ip, rid, ts): (String, String, i64, i64) = c
            .query_row(
                &format!("SELECT h.name, t.client_ip, t.report_id, t.ts FROM {table} t JOIN hosts h ON h.id = t.host_id LIMIT 1"),
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!((host.as_str(), ip.as_str(), rid, ts), ("web1", "192.0.2.10", report_id, 49_750), "{table}");
    }
    let cores: String = c.query_row("SELECT per_core_pct FROM cpu", [], |r| r.get(0)).unwrap();
    assert_eq!(serde_json::from_str::<Vec<f32>>(&cores).unwrap(), vec![25.0, 50.0]);
    let rx: i64 = c.query_row("SELECT rx_bytes FROM network", [], |r| r.get(0)).unwrap();
    assert_eq!(rx, i64::MAX, "u64 counters beyond i64 are clamped");
    let kind: String = c.query_row("SELECT kind FROM security_events", [], |r| r.get(0)).unwrap();
    assert_eq!(kind, "login_failed");
    let remote: Option<String> =
        c.query_row("SELECT remote_host FROM sessions WHERE user = 'bob'", [], |r| r.get(0)).unwrap();
    assert_eq!(remote, None);
}

#[test]
fn same_agent_and_seq_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    let mut store = Store::open(&path).unwrap();
    let first = store.insert_reports(&[incoming("a", "web1", 1, 10_000)]).unwrap();
    assert!(matches!(first[..], [Outcome::Stored { .. }]));
    let again = store.insert_reports(&[incoming("a", "web1", 1, 11_000)]).unwrap();
    assert_eq!(again, vec![Outcome::Duplicate]);
    // Within one batch too; another agent's seq 1 is a different report.
    let mixed = store.insert_reports(&[incoming("b", "db1", 1, 12_000), incoming("b", "db1", 1, 12_000)]).unwrap();
    assert!(matches!(mixed[..], [Outcome::Stored { .. }, Outcome::Duplicate]), "{mixed:?}");
    assert_eq!(count(&path, "reports"), 2);
    assert_eq!(count(&path, "cpu"), 2);
    assert_eq!(count(&path, "hosts"), 2);
}

#[test]
fn hosts_are_upserted_by_name_with_new_ip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    let mut store = Store::open(&path).unwrap();
    store.insert_reports(&[incoming("a", "web1", 1, 10_000)]).unwrap();
    let mut moved = incoming("a", "web1", 2, 11_000);
    moved.ip = "192.0.2.99".into();
    store.insert_reports(&[moved]).unwrap();
    let c = Connection::open(&path).unwrap();
    let (n, ip): (i64, String) =
        c.query_row("SELECT count(*), max(ip) FROM hosts", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!((n, ip.as_str()), (1, "192.0.2.99"));
}

fn agent(id: &str, host: &str) -> AgentRecord {
    AgentRecord {
        agent_id: id.into(),
        host: host.into(),
        public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample vigil-agent".into(),
        secret_hex: "00ff".repeat(16),
        version: None,
        registered_at_ms: 1_000,
        last_seen_at_ms: None,
    }
}

#[test]
fn agents_register_replace_touch_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("v.db")).unwrap();
    store.register_agent(&agent("a1", "web1")).unwrap();
    store.register_agent(&agent("b1", "db1")).unwrap();
    store.register_agent(&agent("a2", "web1")).unwrap(); // re-bootstrap replaces web1's agent
    let ids: Vec<_> = store.agents().unwrap().into_iter().map(|a| a.agent_id).collect();
    assert_eq!(ids, vec!["b1", "a2"]);

    store.touch_agent("a2", "0.1.0", 5_000).unwrap();
    store.touch_agent("a2", "0.1.1", 4_000).unwrap(); // late touch does not move last seen back
    let a2 = store.agents().unwrap().into_iter().find(|a| a.agent_id == "a2").unwrap();
    assert_eq!((a2.version.as_deref(), a2.last_seen_at_ms), (Some("0.1.1"), Some(5_000)));

    assert_eq!(store.remove_agents_of_host("web1").unwrap(), 1);
    assert_eq!(store.remove_agents_of_host("web1").unwrap(), 0);
    assert_eq!(store.agents().unwrap().len(), 1);
}

#[test]
fn concurrent_submits_are_all_acked_and_present() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    let store = Store::open(&path).unwrap();
    let (handle, join) = ingest::spawn(store, IngestOptions { queue_capacity: 64, max_batch: 256 }).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let outcomes = rt.block_on(async {
        let mut tasks = Vec::new();
        for agent_n in 0..8u64 {
            for seq in 1..=50u64 {
                let h = handle.clone();
                let inc = incoming(&format!("agent-{agent_n}"), &format!("host-{agent_n}"), seq, 100_000 + seq as i64);
                tasks.push(tokio::spawn(async move { h.submit(inc).await.unwrap() }));
            }
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        // Resending one is acked again without a second row.
        out.push(handle.submit(incoming("agent-0", "host-0", 1, 200_000)).await.unwrap());
        let seen = handle.exec(|s: &mut Store| s.agents().map(|a| a.len())).await.unwrap().unwrap();
        assert_eq!(seen, 0);
        out
    });
    assert_eq!(outcomes.iter().filter(|o| matches!(o, Outcome::Stored { .. })).count(), 400);
    assert_eq!(outcomes.last(), Some(&Outcome::Duplicate));
    let stats = handle.stats();
    assert_eq!((stats.stored, stats.duplicates, stats.failed), (400, 1, 0));
    assert!(stats.commits < 401, "grouped commits: {stats:?}");
    drop(handle);
    join.join().unwrap();
    assert_eq!(count(&path, "reports"), 400);
    assert_eq!(count(&path, "memory"), 400);
}

#[test]
fn an_acked_report_is_visible_to_another_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    let (handle, join) = ingest::spawn(Store::open(&path).unwrap(), IngestOptions::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for seq in 1..=20 {
        let out = rt.block_on(handle.submit(incoming("a", "web1", seq, 1_000 * seq as i64))).unwrap();
        let Outcome::Stored { report_id } = out else { panic!("{out:?}") };
        let reader = Connection::open(&path).unwrap();
        let found: i64 =
            reader.query_row("SELECT count(*) FROM reports WHERE id = ?1", [report_id], |r| r.get(0)).unwrap();
        assert_eq!(found, 1, "report {seq} acked before it was committed");
    }
    drop(handle);
    join.join().unwrap();
}

#[test]
fn status_shows_latest_values_from_a_readonly_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    let mut store = Store::open(&path).unwrap();
    store.register_agent(&agent("a1", "web1")).unwrap();
    store.touch_agent("a1", "0.3.0", 100_000).unwrap();
    let old = incoming("a1", "web1", 1, 60_000);
    let mut new = incoming("a1", "web1", 2, 90_000);
    new.report.stats.cpu.as_mut().unwrap().total_pct = 5.0;
    new.report.stats.memory.as_mut().unwrap().used_pct = 33.0;
    new.report.stats.swap = None; // swap falls back to the latest report that had it
    store.insert_reports(&[old, new]).unwrap();
    store.set_config_error(Some("jobs.toml:3:1: unknown collector `gpu`")).unwrap();
    let migrations = store.migration_history().unwrap();
    drop(store);

    let ro = Store::open_readonly(&path).unwrap();
    let hosts = [("web1".to_string(), "192.0.2.10".to_string(), Some(30u32))];
    let view = status::collect(&ro, &hosts, 130_000).unwrap();
    assert_eq!(view.len(), 1);
    let h = &view[0];
    assert_eq!(h.agent_version.as_deref(), Some("0.3.0"));
    assert_eq!(h.last_seen_ms, Some(100_000));
    assert_eq!(h.seconds_since, Some(30));
    assert!(!h.silent);
    assert_eq!((h.cpu_pct, h.mem_pct, h.swap_pct), (Some(5.0), Some(33.0), Some(10.0)));
    assert_eq!(h.fullest_disk.as_ref().map(|d| (d.mount.as_str(), d.pct)), Some(("/boot", 90.0)));
    assert_eq!(h.clock_offset_ms, Some(-250));
    let err = status::config_error(&ro).unwrap();
    assert_eq!(err.as_deref(), Some("jobs.toml:3:1: unknown collector `gpu`"));
    let json: serde_json::Value =
        serde_json::from_str(&status::render_json(&view, &[], err.as_deref(), None).unwrap()).unwrap();
    assert_eq!(json["hosts"][0]["name"], "web1");
    assert_eq!(json["hosts"][0]["silent"], false);
    assert_eq!(json["config_error"], "jobs.toml:3:1: unknown collector `gpu`");
    assert!(status::render_table(&view, &[], err.as_deref(), None).contains("unknown collector"));
    // The read-only open wrote nothing.
    assert_eq!(ro.migration_history().unwrap(), migrations);
}

#[test]
fn prune_removes_old_reports_and_their_rows_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    let mut store = Store::open(&path).unwrap();
    let batch: Vec<_> = (1..=5000u64).map(|s| incoming("a", "web1", s, 1_000 * s as i64)).collect();
    store.insert_reports(&batch).unwrap();
    let before: Vec<i64> = FAMILIES.iter().map(|t| count(&path, t)).collect();
    // Reports received before 3000.5 s: seqs 1..=3000.
    assert_eq!(store.prune(3_000_500).unwrap().reports, 3000);
    assert_eq!(count(&path, "reports"), 2000);
    for (t, b) in FAMILIES.iter().zip(before) {
        assert_eq!(count(&path, t) * 5, b * 2, "{t}");
    }
    let c = Connection::open(&path).unwrap();
    let oldest: i64 = c.query_row("SELECT min(received_at_ms) FROM reports", [], |r| r.get(0)).unwrap();
    assert_eq!(oldest, 3_001_000);
    let orphans: i64 = c
        .query_row("SELECT count(*) FROM cpu WHERE report_id NOT IN (SELECT id FROM reports)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(orphans, 0);
    assert_eq!(store.prune(3_000_500).unwrap().reports, 0, "nothing more to prune");
    // A pruned report's resend is stored again (its dedup row is gone): acceptable, the data is past retention.
    assert_eq!(count(&path, "hosts"), 1, "hosts are kept");
}
