//! Alerts through the ingest writer, as `vigil serve` wires them: rules come from the config published on a watch
//! channel (an edit applies to the next report), transitions and their mail commit with the report, duplicates do
//! not re-evaluate, and the state survives reopening the database.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;
use vigil_schema::report::{CpuStats, MemoryStats, Report, Stats};
use vigil_server::config::Config;
use vigil_server::ingest::{self, IngestOptions};
use vigil_server::store::{Incoming, Outcome, Store};

const JOBS: &str = "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"data\"\n\n\
    [smtp]\nhost = \"127.0.0.1\"\nport = 2525\ntls = \"none\"\nfrom = \"vigil@example.org\"\n\n\
    [[job]]\nname = \"v\"\ncollectors = [\"cpu\", \"memory\"]\ninterval = \"10s\"\n";

fn config(mail: &str, cpu_limit: &str) -> Arc<Config> {
    let clients = format!(
        "<clients>\n<defaults><alert type=\"memory\" limit=\"80%\"/></defaults>\n\
         <client name=\"web\" ip=\"10.0.0.1\" username=\"u\" mail=\"{mail}\"><alert type=\"cpu\" limit=\"{cpu_limit}\"/></client>\n\
         </clients>"
    );
    let loaded = Config::from_sources(Path::new("c.xml"), &clients, Path::new("j.toml"), JOBS).expect("valid config");
    Arc::new(loaded.config)
}

fn report(seq: u64, cpu: f32, mem: f32) -> Incoming {
    Incoming {
        agent_id: "agent-web".into(),
        host: "web".into(),
        ip: "10.0.0.1".into(),
        received_at_ms: vigil_server::store::now_ms(),
        report: Report {
            seq,
            job: "v".into(),
            collected_at_ms: vigil_server::store::now_ms(),
            dropped: 0,
            stats: Stats {
                cpu: Some(CpuStats { total_pct: cpu, per_core_pct: vec![cpu], load1: 0.1, load5: 0.1, load15: 0.1 }),
                memory: Some(MemoryStats { total: 100, used: 0, available: 0, free: 0, used_pct: mem }),
                ..Stats::default()
            },
        },
    }
}

#[test]
fn alerts_follow_the_published_config_and_commit_with_their_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("vigil.db");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (config_tx, config_rx) = watch::channel(config("first@example.org", "90%"));
    let (handle, writer) = ingest::spawn(Store::open(&db).expect("open"), IngestOptions::default()).expect("spawn");
    rt.block_on(async {
        handle.set_alert_config(config_rx).await.expect("set config");
        // Over the host's cpu limit and the default memory limit: two alerts, two mails.
        assert!(matches!(handle.submit(report(1, 95.0, 85.0)).await, Ok(Outcome::Stored { .. })));
        // The same report again is a duplicate: nothing new.
        assert_eq!(handle.submit(report(1, 95.0, 85.0)).await, Ok(Outcome::Duplicate));
        // Edit: a higher cpu limit and a new address. Still above the clear threshold (99 - 5): no transition.
        config_tx.send(config("second@example.org", "99%")).expect("publish");
        handle.submit(report(2, 96.0, 85.0)).await.expect("stored");
        // Down: both resolve, mailed to the new address.
        handle.submit(report(3, 10.0, 10.0)).await.expect("stored");
    });
    drop(handle);
    drop(writer.join().expect("writer"));

    let store = Store::open_readonly(&db).expect("reopen");
    let mail = store.pending_mail().expect("outbox");
    let got: Vec<(&str, &str)> = mail.iter().map(|m| (m.recipient.as_str(), m.subject.as_str())).collect();
    assert_eq!(
        got,
        [
            ("first@example.org", "[vigil] FIRING cpu on web (95.0% > 90%)"),
            ("first@example.org", "[vigil] FIRING memory on web (85.0% > 80%)"),
            ("second@example.org", "[vigil] RESOLVED cpu on web (10.0% < 94%)"),
            ("second@example.org", "[vigil] RESOLVED memory on web (10.0% < 75%)"),
        ]
    );
    let events = store.alert_events_since(0).expect("events");
    let states: Vec<(&str, &str)> = events.iter().map(|e| (e.rule.as_str(), e.state.as_str())).collect();
    assert_eq!(states, [("cpu", "firing"), ("memory", "firing"), ("cpu", "resolved"), ("memory", "resolved")]);
    assert_eq!(store.outbox_counts().expect("counts").pending, 4);
}

#[test]
fn without_smtp_alerts_are_recorded_but_no_mail_is_queued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("vigil.db");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut cfg = (*config("ops@example.org", "90%")).clone();
    cfg.smtp = None;
    let (_tx, rx) = watch::channel(Arc::new(cfg));
    let (handle, writer) = ingest::spawn(Store::open(&db).expect("open"), IngestOptions::default()).expect("spawn");
    rt.block_on(async {
        handle.set_alert_config(rx).await.expect("set config");
        handle.submit(report(1, 95.0, 10.0)).await.expect("stored");
    });
    drop(handle);
    drop(writer.join().expect("writer"));
    let store = Store::open_readonly(&db).expect("reopen");
    assert!(store.pending_mail().expect("outbox").is_empty());
    assert_eq!(store.alert_events_since(0).expect("events").len(), 1);
}

/// Several writers on PostgreSQL (as `vigil serve` runs them there), each on its own connection and taking small
/// batches so that they overlap: every report is stored once though each is submitted twice at the same time, and
/// each host's alert fires, and is mailed, once.
#[test]
fn writers_side_by_side_on_postgresql_store_each_report_once_and_fire_each_alert_once() {
    const HOSTS: usize = 12;
    const REPORTS: u64 = 30;
    const STRAGGLERS: u64 = 20;
    let url = vigil_testkit::fresh_database();
    let open = || Store::open_postgres(&url, None).expect("open");
    let clients: String = (0..HOSTS)
        .map(|h| format!("<client name=\"h{h}\" ip=\"10.0.1.{h}\" username=\"u\" mail=\"ops@example.org\"><alert type=\"cpu\" limit=\"90%\"/></client>\n"))
        .collect();
    let clients = format!("<clients>\n{clients}</clients>");
    let cfg = Config::from_sources(Path::new("c.xml"), &clients, Path::new("j.toml"), JOBS).expect("valid config");
    let (_config_tx, config_rx) = watch::channel(Arc::new(cfg.config));
    let opts = IngestOptions { max_batch: 4, ..IngestOptions::default() };
    let (handle, writer) = ingest::spawn_writers(open(), vec![open(), open()], opts).expect("spawn");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let outcomes = rt.block_on(async {
        handle.set_alert_config(config_rx).await.expect("set config");
        // Two jobs held at once prove two writers at work: each waits (10 s at most) for the other to start.
        let (a_tx, a_rx) = std::sync::mpsc::channel();
        let (b_tx, b_rx) = std::sync::mpsc::channel();
        let wait = std::time::Duration::from_secs(10);
        let a = handle.exec(move |_| a_tx.send(()).is_ok() && b_rx.recv_timeout(wait).is_ok());
        let b = handle.exec(move |_| b_tx.send(()).is_ok() && a_rx.recv_timeout(wait).is_ok());
        assert_eq!(tokio::join!(a, b), (Ok(true), Ok(true)), "two writers run side by side");
        // A job queued right behind a report, with nothing after it, still runs: the writer that takes both does
        // the job after its commit without waiting for the queue (where the other writer waits for a message).
        for seq in 1..=STRAGGLERS {
            let mut r = report(REPORTS + seq, 95.0, 10.0);
            (r.agent_id, r.host, r.ip) = ("agent-h0".into(), "h0".into(), "10.0.1.0".into());
            let both = async { tokio::join!(handle.submit(r), handle.exec(|_| ())) };
            let (stored, ran) = tokio::time::timeout(std::time::Duration::from_secs(10), both).await.expect("done");
            assert!(matches!(stored, Ok(Outcome::Stored { .. })) && ran.is_ok(), "{stored:?} {ran:?}");
        }

        let mut tasks = tokio::task::JoinSet::new();
        for h in 0..HOSTS {
            for _copy in 0..2 {
                let handle = handle.clone();
                tasks.spawn(async move {
                    let mut got = Vec::new();
                    for seq in 1..=REPORTS {
                        let mut r = report(seq, 95.0, 10.0);
                        (r.agent_id, r.host, r.ip) = (format!("agent-h{h}"), format!("h{h}"), format!("10.0.1.{h}"));
                        got.push((h, seq, handle.submit(r).await.expect("stored")));
                    }
                    got
                });
            }
        }
        let mut all = Vec::new();
        while let Some(got) = tasks.join_next().await {
            all.extend(got.expect("task"));
        }
        all
    });
    for h in 0..HOSTS {
        for seq in 1..=REPORTS {
            let of: Vec<_> = outcomes.iter().filter(|(oh, os, _)| (*oh, *os) == (h, seq)).map(|(_, _, o)| o).collect();
            let stored = of.iter().filter(|o| matches!(o, Outcome::Stored { .. })).count();
            assert_eq!((of.len(), stored), (2, 1), "host {h} seq {seq}: {of:?}");
        }
    }
    let stats = handle.stats();
    assert!(stats.commits >= (HOSTS as u64 * REPORTS * 2) / 4, "batches of at most 4: {stats:?}");
    drop(handle);
    drop(writer.join().expect("writer"));

    let mut c = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    let n: i64 = c.query_one("SELECT count(*) FROM reports", &[]).expect("count").get(0);
    assert_eq!(n, (HOSTS as u64 * REPORTS + STRAGGLERS) as i64);
    let store = open();
    let events = store.alert_events_since(0).expect("events");
    let mut fired: Vec<(&str, &str)> = events.iter().map(|e| (e.host.as_str(), e.state.as_str())).collect();
    fired.sort_unstable();
    let hosts: Vec<String> = (0..HOSTS).map(|h| format!("h{h}")).collect();
    let mut expected: Vec<(&str, &str)> = hosts.iter().map(|h| (h.as_str(), "firing")).collect();
    expected.sort_unstable();
    assert_eq!(fired, expected);
    assert_eq!(store.pending_mail().expect("outbox").len(), HOSTS);
}
