//! The store, the ingest writer and the status view on both engines: real SQLite files in temporary directories and
//! fresh databases on a real PostgreSQL (`vigil_testkit`), read back with raw queries, not through the store.

// The helpers below are not #[test] functions, which clippy.toml's allow-unwrap-in-tests does not cover.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;
use vigil_schema::command::{CommandRun, Metric, RunOutcome};
use vigil_schema::report::*;
use vigil_server::config::{PgTarget, ServerSettings};
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

/// [`incoming`] with a command run of two parsed metrics in its report, so every statistics table gets rows.
fn with_command(mut inc: Incoming) -> Incoming {
    inc.report.stats.command = Some(CommandRun {
        started_ms: inc.report.collected_at_ms - 7,
        duration_ms: 7,
        outcome: RunOutcome::Exited { code: 0 },
        stdout: "queue 3\nworkers{pool=\"a\"} 2\n".into(),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        metrics: vec![
            Metric { name: "queue".into(), labels: Vec::new(), value: 3.0 },
            Metric { name: "workers".into(), labels: vec![("pool".into(), "a".into())], value: 2.0 },
        ],
        parse_errors: Vec::new(),
    });
    inc
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

const FAMILIES: [&str; 9] =
    ["system_details", "sessions", "cpu", "memory", "swap", "partitions", "disk_usage", "network", "security_events"];

/// Every table of rows tied to a report and a host: the nine families and the command tables. Only these tests guard
/// those relations on PostgreSQL, whose statistics tables have no foreign keys there (V18, for ingest speed).
const STATISTICS: [&str; 11] = [
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

/// A fresh, empty database of one engine, and raw reads of it on a connection of their own (not the store's).
#[derive(Debug)]
enum Engine {
    /// A SQLite file (not yet created) in a temporary directory.
    Sqlite(PathBuf),
    /// A new database on this test process's PostgreSQL cluster.
    Postgres(String),
}

/// A value both engines' clients read: `i64`, `f64`, `String`, and their `Option`s for NULL.
trait Cell: rusqlite::types::FromSql + for<'a> postgres::types::FromSql<'a> {}
impl<T: rusqlite::types::FromSql + for<'a> postgres::types::FromSql<'a>> Cell for T {}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Sqlite(_) => "SQLite",
            Engine::Postgres(_) => "PostgreSQL",
        })
    }
}

impl Engine {
    /// The store, read-write (migrations applied).
    fn open(&self) -> Store {
        match self {
            Engine::Sqlite(path) => Store::open(path).unwrap(),
            Engine::Postgres(url) => Store::open_postgres(url, None).unwrap(),
        }
    }

    /// The store as `vigil status` opens it: `Store::open_server_readonly` with `[server] database` naming this
    /// database (a read-only file, or a read-only PostgreSQL session).
    fn open_readonly(&self) -> Store {
        let (database, postgres) = match self {
            Engine::Sqlite(path) => (path.clone(), None),
            // Only `url` and `password_env` are read to connect; the other fields are what jobs.toml parsing fills.
            Engine::Postgres(url) => {
                let (hosts, dbname) = url.rsplit_once('@').unwrap().1.split_once('/').unwrap();
                let target = PgTarget {
                    url: url.clone(),
                    user: url.split_once("://").unwrap().1.split_once('@').unwrap().0.into(),
                    hosts: vec![hosts.into()],
                    dbname: dbname.into(),
                    password_env: None,
                };
                (PathBuf::from("unused.db"), Some(target))
            }
        };
        let server = ServerSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            endpoint: "127.0.0.1:0".into(),
            fallback_endpoints: Vec::new(),
            data_dir: database.parent().unwrap_or(Path::new("/")).to_path_buf(),
            database,
            postgres,
            retention_days: 30,
            max_connections_per_agent: 4,
            repair_backoff: Duration::from_secs(60),
            repair_parallel: 1,
            channel: Default::default(),
        };
        Store::open_server_readonly(&server).unwrap()
    }

    /// Runs `sql` (statements separated by `;`) in one session.
    fn execute(&self, sql: &str) {
        match self {
            Engine::Sqlite(path) => Connection::open(path).unwrap().execute_batch(sql).unwrap(),
            Engine::Postgres(url) => {
                postgres::Client::connect(url, postgres::NoTls).unwrap().batch_execute(sql).unwrap()
            }
        }
    }

    /// The columns of the one row `sql` returns, all of type `T`.
    fn row<T: Cell>(&self, sql: &str) -> Vec<T> {
        match self {
            Engine::Sqlite(path) => {
                let c = Connection::open(path).unwrap();
                let mut stmt = c.prepare(sql).unwrap();
                let n = stmt.column_count();
                stmt.query_row([], |r| (0..n).map(|i| r.get(i)).collect()).unwrap()
            }
            Engine::Postgres(url) => {
                let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
                let row = c.query_one(sql, &[]).unwrap();
                (0..row.len()).map(|i| row.get(i)).collect()
            }
        }
    }

    /// The one value `sql` returns.
    fn one<T: Cell>(&self, sql: &str) -> T {
        let mut row = self.row(sql);
        assert_eq!(row.len(), 1, "one column: {sql}");
        row.remove(0)
    }

    fn count(&self, table: &str) -> i64 {
        self.one(&format!("SELECT count(*) FROM {table}"))
    }

    /// The statistics tables holding rows whose report or host is missing, with how many.
    fn orphans(&self) -> Vec<(&'static str, i64)> {
        STATISTICS
            .iter()
            .map(|t| {
                let sql = format!(
                    "SELECT count(*) FROM {t} WHERE report_id NOT IN (SELECT id FROM reports)
                                              OR host_id NOT IN (SELECT id FROM hosts)"
                );
                (*t, self.one(&sql))
            })
            .filter(|(_, n)| *n != 0)
            .collect()
    }
}

/// Runs `f` on a fresh database of each engine, SQLite then PostgreSQL.
fn each_engine(mut f: impl FnMut(&Engine)) {
    let dir = tempfile::tempdir().unwrap();
    for engine in [Engine::Sqlite(dir.path().join("v.db")), Engine::Postgres(vigil_testkit::fresh_database())] {
        // Shown with a failure's message (the test harness prints a failed test's captured output).
        eprintln!("--- on {engine}");
        f(&engine);
    }
}

// The next four tests stay on SQLite: their subject is the SQLite file itself (its migrations as applied by a
// read-write and a read-only open, a missing or unmigrated file, the modes of the file and of its -wal/-shm files).

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
    each_engine(|e| {
        let mut store = e.open();
        let out = store.insert_reports(&[incoming("agent-1", "web1", 7, 50_000)]).unwrap();
        let Outcome::Stored { report_id } = out[0] else { panic!("{out:?}") };
        let report = |columns: &str| format!("SELECT {columns} FROM reports WHERE id = {report_id}");
        let numbers = e.row::<i64>(&report("seq, collected_at_ms, received_at_ms, clock_offset_ms, dropped"));
        assert_eq!(numbers, [7, 49_750, 50_000, 250, 2]);
        assert_eq!(e.row::<String>(&report("job, client_ip")), ["everything", "192.0.2.10"]);
        let expected = [1, 2, 1, 1, 1, 1, 2, 1, 1];
        for (table, n) in FAMILIES.iter().zip(expected) {
            assert_eq!(e.count(table), n, "{table}");
            // Every row of the table carries the host, the address, the report and the sample time.
            let tied = e.one::<i64>(&format!(
                "SELECT count(*) FROM {table} t JOIN hosts h ON h.id = t.host_id
                 WHERE h.name = 'web1' AND t.client_ip = '192.0.2.10' AND t.report_id = {report_id} AND t.ts = 49750"
            ));
            assert_eq!(tied, n, "{table}");
        }
        let cores: String = e.one("SELECT per_core_pct FROM cpu");
        assert_eq!(serde_json::from_str::<Vec<f32>>(&cores).unwrap(), vec![25.0, 50.0]);
        assert_eq!(e.one::<i64>("SELECT rx_bytes FROM network"), i64::MAX, "u64 counters beyond i64 are clamped");
        assert_eq!(e.one::<String>("SELECT kind FROM security_events"), "login_failed");
        let remote: Option<String> = e.one("SELECT remote_host FROM sessions WHERE \"user\" = 'bob'");
        assert_eq!(remote, None);
    });
}

#[test]
fn same_agent_and_seq_is_stored_once() {
    each_engine(|e| {
        let mut store = e.open();
        let first = store.insert_reports(&[incoming("a", "web1", 1, 10_000)]).unwrap();
        assert!(matches!(first[..], [Outcome::Stored { .. }]));
        let again = store.insert_reports(&[incoming("a", "web1", 1, 11_000)]).unwrap();
        assert_eq!(again, vec![Outcome::Duplicate]);
        // Within one batch too; another agent's seq 1 is a different report.
        let mixed = store.insert_reports(&[incoming("b", "db1", 1, 12_000), incoming("b", "db1", 1, 12_000)]).unwrap();
        assert!(matches!(mixed[..], [Outcome::Stored { .. }, Outcome::Duplicate]), "{mixed:?}");
        assert_eq!(e.count("reports"), 2);
        assert_eq!(e.count("cpu"), 2);
        assert_eq!(e.count("hosts"), 2);
    });
}

#[test]
fn hosts_are_upserted_by_name_with_new_ip() {
    each_engine(|e| {
        let mut store = e.open();
        store.insert_reports(&[incoming("a", "web1", 1, 10_000)]).unwrap();
        let mut moved = incoming("a", "web1", 2, 11_000);
        moved.ip = "192.0.2.99".into();
        store.insert_reports(&[moved]).unwrap();
        let (n, ip): (i64, String) = (e.count("hosts"), e.one("SELECT max(ip) FROM hosts"));
        assert_eq!((n, ip.as_str()), (1, "192.0.2.99"));
    });
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
    each_engine(|e| {
        let mut store = e.open();
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
    });
}

#[test]
fn concurrent_submits_are_all_acked_and_present() {
    each_engine(|e| {
        let (handle, join) = ingest::spawn(e.open(), IngestOptions { queue_capacity: 64, max_batch: 256 }).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let outcomes = rt.block_on(async {
            let mut tasks = Vec::new();
            for agent_n in 0..8u64 {
                for seq in 1..=50u64 {
                    let h = handle.clone();
                    let inc =
                        incoming(&format!("agent-{agent_n}"), &format!("host-{agent_n}"), seq, 100_000 + seq as i64);
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
        assert_eq!(e.count("reports"), 400);
        assert_eq!(e.count("memory"), 400);
    });
}

#[test]
fn an_acked_report_is_visible_to_another_connection() {
    each_engine(|e| {
        let (handle, join) = ingest::spawn(e.open(), IngestOptions::default()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for seq in 1..=20 {
            let out = rt.block_on(handle.submit(incoming("a", "web1", seq, 1_000 * seq as i64))).unwrap();
            let Outcome::Stored { report_id } = out else { panic!("{out:?}") };
            // A new connection each time, as another process (`vigil status`, another node) reads.
            let found: i64 = e.one(&format!("SELECT count(*) FROM reports WHERE id = {report_id}"));
            assert_eq!(found, 1, "report {seq} acked before it was committed");
        }
        drop(handle);
        join.join().unwrap();
    });
}

#[test]
fn status_shows_latest_values_from_a_readonly_open() {
    each_engine(|e| {
        let mut store = e.open();
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

        let mut ro = e.open_readonly();
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
        // The read-only open wrote nothing, and cannot.
        assert_eq!(ro.migration_history().unwrap(), migrations);
        assert!(ro.set_config_error(None).is_err(), "a write through the read-only open");
        assert_eq!(e.one::<Option<String>>("SELECT error FROM config_state").as_deref(), err.as_deref());
    });
}

#[test]
fn prune_removes_old_reports_and_their_rows_only() {
    each_engine(|e| {
        let mut store = e.open();
        let batch: Vec<_> = (1..=5000u64).map(|s| incoming("a", "web1", s, 1_000 * s as i64)).collect();
        store.insert_reports(&batch).unwrap();
        let before: Vec<i64> = FAMILIES.iter().map(|t| e.count(t)).collect();
        // Reports received before 3000.5 s: seqs 1..=3000.
        assert_eq!(store.prune(3_000_500).unwrap().reports, 3000);
        assert_eq!(e.count("reports"), 2000);
        for (t, b) in FAMILIES.iter().zip(before) {
            assert_eq!(e.count(t) * 5, b * 2, "{t}");
        }
        assert_eq!(e.one::<i64>("SELECT min(received_at_ms) FROM reports"), 3_001_000);
        let orphans = e.orphans();
        assert!(orphans.is_empty(), "statistics rows without their report or host: {orphans:?}");
        assert_eq!(store.prune(3_000_500).unwrap().reports, 0, "nothing more to prune");
        // A pruned report's resend is stored again (its dedup row is gone): acceptable, the data is past retention.
        assert_eq!(e.count("hosts"), 1, "hosts are kept");
    });
}

#[test]
fn no_statistics_row_without_its_report_or_host() {
    each_engine(|e| {
        let mut store = e.open();
        // Two hosts, ten full reports each (every family and a command run with two metrics), interleaved in time.
        let batch: Vec<_> = (1..=10u64)
            .flat_map(|s| {
                let at = 1_000 * s as i64;
                [with_command(incoming("a", "web1", s, at)), with_command(incoming("b", "db1", s, at + 500))]
            })
            .collect();
        store.insert_reports(&batch).unwrap();
        let hosts_of = |t: &str| e.one::<i64>(&format!("SELECT count(DISTINCT host_id) FROM {t}"));
        let before: Vec<i64> = STATISTICS.iter().map(|t| e.count(t)).collect();
        for t in STATISTICS {
            assert_eq!(hosts_of(t), 2, "{t}: rows of both hosts, so the checks below are not vacuous");
        }
        let orphans = e.orphans();
        assert!(orphans.is_empty(), "{orphans:?}");

        // Received before 5.6 s: seqs 1..=5 of each host.
        assert_eq!(store.prune(5_600).unwrap().reports, 10);
        assert_eq!(e.count("reports"), 10);
        assert_eq!(e.count("hosts"), 2);
        for (t, b) in STATISTICS.iter().zip(before) {
            assert_eq!(e.count(t) * 2, b, "{t}: half the rows left");
            assert_eq!(hosts_of(t), 2, "{t}");
        }
        let orphans = e.orphans();
        assert!(orphans.is_empty(), "statistics rows without their report or host: {orphans:?}");

        // The check sees an orphan: a report deleted behind the store's back (foreign keys off for the session:
        // SQLite enforces them only when asked, PostgreSQL's replica role skips their triggers) leaves one in every
        // statistics table.
        let skip_foreign_keys = match e {
            Engine::Sqlite(_) => "PRAGMA foreign_keys = OFF",
            Engine::Postgres(_) => "SET session_replication_role = replica",
        };
        e.execute(&format!(
            "{skip_foreign_keys}; DELETE FROM reports WHERE id = (SELECT max(id) FROM reports WHERE agent_id = 'b')"
        ));
        let rows_of_a_report: Vec<(&str, i64)> =
            STATISTICS.into_iter().zip([1, 2, 1, 1, 1, 1, 2, 1, 1, 1, 2]).collect();
        assert_eq!(e.orphans(), rows_of_a_report);
        // And that report's host deleted so: every row of its five reports (the deleted report's counted once).
        e.execute(&format!("{skip_foreign_keys}; DELETE FROM hosts WHERE name = 'db1'"));
        let rows_of_a_host: Vec<(&str, i64)> = rows_of_a_report.iter().map(|(t, n)| (*t, n * 5)).collect();
        assert_eq!(e.orphans(), rows_of_a_host);
    });
}
