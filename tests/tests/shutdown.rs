//! Graceful shutdown of the real `vigil serve`: SIGTERM while an agent pipelines hundreds of reports over real SSH.
//! serve exits 0, and every report it acknowledged is in the database afterwards.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use vigil_schema::proto::{ErrorCode, ServerMsg};
use vigil_tests::client::{Event, Served, closing_counters, now_ms, sample_report};
use vigil_tests::port_accepts;

const BURST: u64 = 600;
const BATCH: u64 = 20;

#[test]
fn sigterm_during_a_burst_exits_zero_and_every_acked_report_is_stored() -> Result<()> {
    let mut s = Served::start(&["alpha"], "5s")?;
    let mut agent = s.session("alpha")?;
    let sender = agent.sender();
    // The burst goes out from its own thread, in pipelined batches, while this thread reads acks and pulls the
    // plug part-way through.
    let writer = std::thread::spawn(move || {
        let mut sent = 0;
        for start in (1..=BURST).step_by(BATCH as usize) {
            let batch: Vec<_> = (start..start + BATCH).map(|seq| sample_report(seq, now_ms(), 3.0, 4.0, 5.0)).collect();
            if sender.reports(&batch).is_err() {
                break; // the server is gone
            }
            sent = start + BATCH - 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        sent
    });

    let mut acked = BTreeSet::new();
    let mut unavailable = 0;
    let mut signalled_at = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        ensure!(Instant::now() < deadline, "the session did not end after SIGTERM\n{}", s.logs());
        match agent.recv(Duration::from_secs(20))? {
            Event::Msg(ServerMsg::Ack { seq }) => {
                acked.insert(seq);
            }
            Event::Msg(ServerMsg::Error { code: ErrorCode::Unavailable, .. }) => unavailable += 1,
            Event::Msg(ServerMsg::Error { code, message, seq }) => bail!("error {code:?} {message} for {seq:?}"),
            Event::Msg(_) => {}
            Event::Closed => break,
            Event::Timeout => bail!("no reply for 20 s; {} acked\n{}", acked.len(), s.logs()),
        }
        if signalled_at.is_none() && acked.len() >= 100 {
            s.serve()?.signal(vigil_tests::SIGTERM)?;
            signalled_at = Some(acked.len());
        }
    }
    let sent = writer.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))?;
    let at = signalled_at.ok_or_else(|| anyhow::anyhow!("the session closed before SIGTERM\n{}", s.logs()))?;

    let status = s.serve()?.wait_exit(Duration::from_secs(30))?;
    ensure!(status.code() == Some(0), "serve exited with {status:?}\n{}", s.logs());
    ensure!(!port_accepts(s.port), "the endpoint still accepts connections after exit");

    // Every acked report survived the shutdown, with its rows.
    let agent_id = s.creds("alpha")?.agent_id.clone();
    let db = s.db()?;
    let stored: BTreeSet<u64> = db
        .prepare("SELECT seq FROM reports WHERE agent_id = ?1")?
        .query_map([&agent_id], |r| r.get::<_, i64>(0))?
        .map(|r| r.map(|v| v as u64))
        .collect::<Result<_, _>>()?;
    let lost: Vec<u64> = acked.difference(&stored).copied().collect();
    ensure!(lost.is_empty(), "{} acked reports missing after exit: {lost:?}\n{}", lost.len(), s.logs());
    let cpu_rows: i64 = db.query_row("SELECT count(*) FROM cpu", [], |r| r.get(0))?;
    ensure!(cpu_rows == stored.len() as i64, "{cpu_rows} cpu rows for {} reports", stored.len());
    eprintln!(
        "burst: {sent} sent, SIGTERM after {at} acks, {} acked, {} stored, {unavailable} unavailable",
        acked.len(),
        stored.len()
    );
    // The shutdown happened during the burst, and was graceful: the endpoint's summary, then "stopped".
    ensure!(at < BURST as usize, "SIGTERM came after every ack");
    let log = s.log();
    let counters = closing_counters(&log).ok_or_else(|| anyhow::anyhow!("no closing summary in the log\n{log}"))?;
    ensure!(counters.get("reports_stored").copied() == Some(stored.len() as u64), "{counters:?} vs {}", stored.len());
    ensure!(log.contains("stopped"), "serve did not finish its shutdown sequence\n{log}");
    Ok(())
}
