//! A real PostgreSQL cluster from the testkit: it starts, runs SQL, runs beside another, enforces its password,
//! dies on kill9, and leaves no process and no directory behind when dropped.

use std::path::Path;
use std::time::{Duration, Instant};

use vigil_testkit::{Options, Postgres};

/// Whether `pid` names a live process (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_cluster_starts_on_loopback_and_runs_sql() {
    let pg = Postgres::start().unwrap();
    assert!(pg.is_running());
    assert_eq!(pg.url("postgres"), format!("postgres://vigil@127.0.0.1:{}/postgres", pg.port()));
    // A round trip: a table, rows in, rows out, in one psql session.
    let out = pg
        .psql(
            "postgres",
            "CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT NOT NULL);
             INSERT INTO t VALUES (1, 'one'), (2, 'two');
             SELECT id, name FROM t ORDER BY id;",
        )
        .unwrap();
    assert_eq!(out, "1|one\n2|two\n");
    // Over TCP on 127.0.0.1 too, as the server sees it.
    let out = pg.psql_tcp("postgres", "SELECT inet_server_addr(), current_setting('port')", None).unwrap();
    assert_eq!(out.trim(), format!("127.0.0.1|{}", pg.port()));
    // The test defaults: fsync off, the superuser is vigil, UTF8.
    let out = pg.psql("postgres", "SHOW fsync; SELECT current_user; SHOW server_encoding;").unwrap();
    assert_eq!(out, "off\nvigil\nUTF8\n");
    // An SQL error is an error carrying psql's message, and stops the script.
    let err = pg.psql("postgres", "SELECT 1/0; SELECT 'not reached';").unwrap_err().to_string();
    assert!(err.contains("division by zero"), "{err}");
}

#[test]
fn fresh_databases_are_empty_and_distinct() {
    let pg = Postgres::start().unwrap();
    let a = pg.fresh_database().unwrap();
    let b = pg.fresh_database().unwrap();
    assert_ne!(a, b);
    let db = |url: &str| url.rsplit('/').next().unwrap().to_owned();
    pg.psql(&db(&a), "CREATE TABLE only_in_a (x BIGINT)").unwrap();
    let tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'";
    assert_eq!(pg.psql(&db(&a), tables).unwrap().trim(), "1");
    assert_eq!(pg.psql(&db(&b), tables).unwrap().trim(), "0");
    assert!(pg.create_database("no; DROP DATABASE x").is_err());
    // Tests run in parallel: databases created at the same time do not get in each other's way.
    let urls: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6).map(|_| s.spawn(|| pg.fresh_database().unwrap())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: std::collections::BTreeSet<&String> = urls.iter().collect();
    assert_eq!(distinct.len(), 6, "{urls:?}");
}

#[test]
fn two_clusters_run_side_by_side() {
    let one = Postgres::start().unwrap();
    let two = Postgres::start().unwrap();
    assert_ne!(one.port(), two.port());
    assert_ne!(one.dir(), two.dir());
    one.psql("postgres", "CREATE TABLE here (x BIGINT)").unwrap();
    let count = "SELECT count(*) FROM pg_tables WHERE tablename = 'here'";
    assert_eq!(one.psql_tcp("postgres", count, None).unwrap().trim(), "1");
    assert_eq!(two.psql_tcp("postgres", count, None).unwrap().trim(), "0");
}

#[test]
fn a_password_is_required_over_tcp_when_set() {
    let options = Options { password: Some("s3cret pass".to_owned()), ..Options::default() };
    assert!(!format!("{options:?}").contains("s3cret"));
    let pg = Postgres::start_with(options).unwrap();
    assert!(!format!("{pg:?}").contains("s3cret"));
    let err = pg.psql_tcp("postgres", "SELECT 1", None).unwrap_err().to_string();
    assert!(err.contains("password"), "{err}");
    let err = pg.psql_tcp("postgres", "SELECT 1", Some("wrong")).unwrap_err().to_string();
    assert!(err.contains("password authentication failed"), "{err}");
    assert_eq!(pg.psql_tcp("postgres", "SELECT 1", Some("s3cret pass")).unwrap(), "1\n");
    let method = "SELECT auth_method FROM pg_hba_file_rules WHERE type = 'host' AND address = '127.0.0.1'";
    assert!(pg.psql("postgres", method).unwrap().contains("scram-sha-256"));
}

#[test]
fn durable_options_reach_the_server() {
    let options = Options {
        fsync: true,
        max_connections: 37,
        settings: vec![("work_mem".to_owned(), "8MB".to_owned())],
        ..Options::default()
    };
    let pg = Postgres::start_with(options).unwrap();
    if std::env::var_os("VIGIL_PG_TMPDIR").is_none() {
        assert!(!pg.dir().starts_with("/dev/shm"), "a durable cluster on a RAM disk: {}", pg.dir().display());
    }
    let out = pg.psql("postgres", "SHOW fsync; SHOW synchronous_commit; SHOW max_connections; SHOW work_mem;").unwrap();
    assert_eq!(out, "on\non\n37\n8MB\n");
}

#[test]
fn kill9_stops_the_server_and_every_backend_at_once() {
    let pg = Postgres::start().unwrap();
    let backends = pg.psql("postgres", "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid()").unwrap();
    let children: Vec<u32> = backends.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert!(!children.is_empty(), "the server has background processes");
    pg.kill9().unwrap();
    assert!(!pg.is_running());
    assert!(!alive(pg.pid()));
    wait_for("the backends to be gone", || children.iter().all(|p| !alive(*p)));
    assert!(pg.psql_tcp("postgres", "SELECT 1", None).is_err());
    // Dropping a killed cluster still removes its directory.
    let dir = pg.dir().to_owned();
    drop(pg);
    assert!(!dir.exists());
}

#[test]
fn drop_stops_the_server_and_removes_its_directory() {
    let pg = Postgres::start().unwrap();
    let (pid, dir) = (pg.pid(), pg.dir().to_owned());
    assert!(alive(pid));
    assert!(Path::new(&dir).join("data/PG_VERSION").exists());
    drop(pg);
    assert!(!alive(pid), "the postmaster outlived the drop");
    assert!(!dir.exists(), "{} is left behind", dir.display());
}
