//! The database writer: a dedicated thread owning the [`Store`], fed over a bounded channel (on PostgreSQL, a few
//! such threads on connections of their own, taking turns at the channel).
//!
//! Reports arriving together are grouped into one transaction (group commit sized by load: a writer takes one
//! message, then whatever else is already queued, up to [`IngestOptions::max_batch`]). Each report is answered only
//! after the transaction holding it commits; when a commit fails, nothing in it is acknowledged. Other writes the
//! server needs (registering and touching agents, the config error, pruning) run on the writers too, through
//! [`IngestHandle::exec`]: on SQLite there is only ever one writing connection.
//!
//! Decoding, tag checks and validation happen before [`IngestHandle::submit`], never on these threads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Config;
use crate::store::{Incoming, Outcome, Store, StoreError};

/// Tuning for the writer.
#[derive(Debug, Clone, Copy)]
pub struct IngestOptions {
    /// Messages that may wait in the queue before `submit` waits for room (back-pressure on the endpoint).
    pub queue_capacity: usize,
    /// Most reports committed in one transaction.
    pub max_batch: usize,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions { queue_capacity: 8192, max_batch: 4096 }
    }
}

/// Why a report (or a job) was not carried out. Cloneable: one failed commit answers every report in it (the
/// database error is shared, not copied).
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// The writer has stopped (shutdown, or it died); nothing more is accepted.
    #[error("ingest writer has stopped")]
    Closed,
    /// The disk is full: the report was not stored; the agent should keep it and retry later.
    #[error("storage unavailable: disk full")]
    Unavailable,
    /// Any other database failure; the report was not stored.
    #[error("storage error: {0}")]
    Storage(Arc<StoreError>),
}

/// Equal kinds; two storage errors are equal when they are the same error or say the same.
impl PartialEq for IngestError {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (IngestError::Closed, IngestError::Closed) | (IngestError::Unavailable, IngestError::Unavailable) => true,
            (IngestError::Storage(a), IngestError::Storage(b)) => Arc::ptr_eq(a, b) || a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

impl Eq for IngestError {}

impl From<StoreError> for IngestError {
    fn from(e: StoreError) -> Self {
        if e.is_full() { IngestError::Unavailable } else { IngestError::Storage(Arc::new(e)) }
    }
}

/// Counters of the writer's work, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestStats {
    /// Transactions committed with at least one report.
    pub commits: u64,
    pub stored: u64,
    pub duplicates: u64,
    /// Reports answered with an error.
    pub failed: u64,
    /// The largest batch committed so far.
    pub largest_batch: u64,
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    stored: AtomicU64,
    duplicates: AtomicU64,
    failed: AtomicU64,
    largest_batch: AtomicU64,
}

/// Where a report's answer goes.
enum Reply {
    /// [`IngestHandle::submit`]'s caller, waiting.
    Wait(oneshot::Sender<Result<Outcome, IngestError>>),
    /// A place reserved in the submitter's own queue ([`IngestHandle::submit_to`]).
    Slot(AnswerSlot),
}

/// A report's answer: its sequence number and whether it was stored.
#[derive(Debug)]
pub struct Answered {
    pub seq: u64,
    pub result: Result<Outcome, IngestError>,
}

/// Room reserved in a queue of [`Answered`] for one report's answer, so that the writer hands it over without
/// waiting and without a task per report: the endpoint reserves one per report it submits (the queue's capacity
/// bounds the reports of a connection in flight), and reads its queue in the task that writes acks. A slot dropped
/// unanswered (the writer stopped) answers [`IngestError::Closed`].
#[derive(Debug)]
pub struct AnswerSlot {
    permit: Option<mpsc::OwnedPermit<Answered>>,
    seq: u64,
}

impl AnswerSlot {
    fn new(permit: mpsc::OwnedPermit<Answered>, seq: u64) -> Self {
        AnswerSlot { permit: Some(permit), seq }
    }

    fn send(mut self, result: Result<Outcome, IngestError>) {
        if let Some(permit) = self.permit.take() {
            permit.send(Answered { seq: self.seq, result });
        }
    }
}

impl Drop for AnswerSlot {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            permit.send(Answered { seq: self.seq, result: Err(IngestError::Closed) });
        }
    }
}

type Job = Box<dyn FnOnce(&mut Store) + Send>;

enum Msg {
    Report(Box<Incoming>, Reply),
    Exec(Job),
    /// From now on, evaluate alert rules of the config in force in each report's transaction.
    Alerts(watch::Receiver<Arc<Config>>),
    Shutdown,
}

/// A cheap, cloneable way to reach the writer. The writer exits once every handle is dropped (or after
/// [`IngestHandle::shutdown`]), committing what was queued first.
#[derive(Debug, Clone)]
pub struct IngestHandle {
    tx: mpsc::Sender<Msg>,
    counters: Arc<Counters>,
    /// Set by `shutdown`: later calls are refused here, before reaching the queue.
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Report(inc, _) => write!(f, "Report({}, seq {})", inc.agent_id, inc.report.seq),
            Msg::Exec(_) => f.write_str("Exec"),
            Msg::Alerts(_) => f.write_str("Alerts"),
            Msg::Shutdown => f.write_str("Shutdown"),
        }
    }
}

/// Starts the writer thread. Joining the handle returns the store once the writer has finished.
pub fn spawn(store: Store, opts: IngestOptions) -> std::io::Result<(IngestHandle, JoinHandle<Store>)> {
    spawn_writers(store, Vec::new(), opts)
}

/// [`spawn`], with more writers on connections of their own (`helpers`), taking turns at the queue: while one
/// commits a batch, the next takes the next batch. For PostgreSQL, whose transactions run side by side (a host's
/// reports are still stored by one transaction at a time: see the host locks of `store::insert_pg`); an SQLite
/// file has one writer at a time, so it gets none. Joining the handle waits for every writer and returns `store`.
pub fn spawn_writers(
    store: Store,
    helpers: Vec<Store>,
    opts: IngestOptions,
) -> std::io::Result<(IngestHandle, JoinHandle<Store>)> {
    let (tx, rx) = mpsc::channel(opts.queue_capacity.max(1));
    let counters = Arc::new(Counters::default());
    let queue = Arc::new(Mutex::new(rx));
    let alerts = Arc::new(Mutex::new(None));
    let writer = |store| Writer {
        store,
        queue: Arc::clone(&queue),
        max_batch: opts.max_batch.max(1),
        counters: Arc::clone(&counters),
        alerts: Arc::clone(&alerts),
    };
    let mut threads = Vec::with_capacity(helpers.len());
    for (i, helper) in helpers.into_iter().enumerate() {
        let w = writer(helper);
        let thread = std::thread::Builder::new().name(format!("vigil-ingest-{}", i + 1)).spawn(move || w.run());
        match thread {
            Ok(t) => threads.push(t),
            Err(e) => {
                // The helpers started so far stop once the queue is closed and dropped.
                queue.lock().unwrap_or_else(PoisonError::into_inner).close();
                return Err(e);
            }
        }
    }
    let main = writer(store);
    let join = std::thread::Builder::new().name("vigil-ingest".into()).spawn(move || {
        let store = main.run();
        for t in threads {
            if t.join().is_err() {
                tracing::error!("an ingest writer panicked");
            }
        }
        store
    })?;
    Ok((IngestHandle { tx, counters, closed: Arc::new(AtomicBool::new(false)) }, join))
}

impl IngestHandle {
    /// Queues a report and waits until the transaction holding it has committed (or failed).
    pub async fn submit(&self, inc: Incoming) -> Result<Outcome, IngestError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(IngestError::Closed);
        }
        let (reply, answer) = oneshot::channel();
        self.tx.send(Msg::Report(Box::new(inc), Reply::Wait(reply))).await.map_err(|_| IngestError::Closed)?;
        answer.await.map_err(|_| IngestError::Closed)?
    }

    /// Queues a report whose answer goes into the place `permit` reserved once the transaction holding it has
    /// committed (or failed). Returns once the report is queued; a writer that has stopped answers
    /// [`IngestError::Closed`] there.
    pub async fn submit_to(&self, inc: Incoming, permit: mpsc::OwnedPermit<Answered>) {
        let slot = AnswerSlot::new(permit, inc.report.seq);
        if self.closed.load(Ordering::Acquire) {
            return slot.send(Err(IngestError::Closed));
        }
        // A refused send drops the message, and with it the slot: it answers `Closed`.
        let _ = self.tx.send(Msg::Report(Box::new(inc), Reply::Slot(slot))).await;
    }

    /// Runs `f` on the writer thread, between transactions, and returns its result.
    pub async fn exec<F, R>(&self, f: F) -> Result<R, IngestError>
    where
        F: FnOnce(&mut Store) -> R + Send + 'static,
        R: Send + 'static,
    {
        if self.closed.load(Ordering::Acquire) {
            return Err(IngestError::Closed);
        }
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |store| {
            let _ = reply.send(f(store));
        });
        self.tx.send(Msg::Exec(job)).await.map_err(|_| IngestError::Closed)?;
        answer.await.map_err(|_| IngestError::Closed)
    }

    /// Makes the writer evaluate the alert rules of the config in force (read from `config` for every batch) in the
    /// transaction of each stored report: see `crate::alert`. Without this call reports are only stored.
    pub async fn set_alert_config(&self, config: watch::Receiver<Arc<Config>>) -> Result<(), IngestError> {
        self.tx.send(Msg::Alerts(config)).await.map_err(|_| IngestError::Closed)
    }

    /// Asks the writer to stop taking new work: what is already queued is committed and answered; calls made after
    /// this returns get [`IngestError::Closed`]. Join the thread to wait for the end.
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        let _ = self.tx.send(Msg::Shutdown).await;
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> IngestStats {
        let c = &self.counters;
        IngestStats {
            commits: c.commits.load(Ordering::Relaxed),
            stored: c.stored.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            largest_batch: c.largest_batch.load(Ordering::Relaxed),
        }
    }
}

struct Writer {
    store: Store,
    /// Shared by every writer: each takes a message (a report and those queued behind it: a batch) in turn.
    queue: Arc<Mutex<mpsc::Receiver<Msg>>>,
    max_batch: usize,
    counters: Arc<Counters>,
    /// The config whose alert rules are evaluated with each report, once set (for every writer).
    alerts: Arc<Mutex<Option<watch::Receiver<Arc<Config>>>>>,
}

/// What a writer does next: taken from the queue under its lock, done once the lock is released. Nothing a writer
/// holds waits for the lock again, so no message can be stranded behind a writer waiting for the queue.
enum Work {
    /// Reports to commit together, with the config whose alert rules apply to them (as it was when they were
    /// taken), then the job queued right behind them, if any.
    Batch {
        batch: Vec<(Incoming, Reply)>,
        alerts: Option<Arc<Config>>,
        then: Option<Job>,
    },
    Exec(Job),
    /// The message needed nothing beyond the lock (shutdown, the alert config).
    Done,
}

impl Writer {
    fn run(mut self) -> Store {
        loop {
            let work = {
                let mut rx = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(msg) = rx.blocking_recv() else { break };
                self.take(msg, &mut rx)
            };
            match work {
                Work::Batch { batch, alerts, then } => {
                    self.commit(batch, alerts.as_deref());
                    if let Some(job) = then {
                        job(&mut self.store);
                    }
                }
                Work::Exec(job) => job(&mut self.store),
                Work::Done => {}
            }
        }
        self.store
    }

    /// What `msg` asks for; a report brings along the reports queued behind it (a batch), up to the job or config
    /// that ends it. Runs under the queue's lock (`rx`): only quick work here.
    fn take(&self, msg: Msg, rx: &mut mpsc::Receiver<Msg>) -> Work {
        match msg {
            Msg::Report(inc, reply) => {
                let mut batch = vec![(*inc, reply)];
                let (mut then, mut new_alerts) = (None, None);
                while batch.len() < self.max_batch {
                    match rx.try_recv() {
                        Ok(Msg::Report(inc, reply)) => batch.push((*inc, reply)),
                        Ok(Msg::Exec(job)) => {
                            then = Some(job);
                            break;
                        }
                        Ok(Msg::Alerts(config)) => {
                            new_alerts = Some(config);
                            break;
                        }
                        Ok(Msg::Shutdown) => rx.close(),
                        Err(_) => break,
                    }
                }
                let alerts = self.alerts_in_force();
                if let Some(config) = new_alerts {
                    self.set_alerts(config);
                }
                Work::Batch { batch, alerts, then }
            }
            Msg::Exec(job) => Work::Exec(job),
            Msg::Alerts(config) => {
                self.set_alerts(config);
                Work::Done
            }
            // Queued messages stay receivable after close; recv returns None once they are drained.
            Msg::Shutdown => {
                rx.close();
                Work::Done
            }
        }
    }

    /// From now on (for every writer), evaluate the alert rules of the config `config` publishes.
    fn set_alerts(&self, config: watch::Receiver<Arc<Config>>) {
        *self.alerts.lock().unwrap_or_else(PoisonError::into_inner) = Some(config);
    }

    /// The config in force whose rules apply to reports taken now, once alerts are on.
    fn alerts_in_force(&self) -> Option<Arc<Config>> {
        self.alerts.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|rx| rx.borrow().clone())
    }

    /// Stores a batch in one transaction and answers every report in it. If the grouped commit fails for any reason
    /// but a full disk, each report is retried alone so one bad report cannot fail its neighbours.
    fn commit(&mut self, batch: Vec<(Incoming, Reply)>, alerts: Option<&Config>) {
        let (items, replies): (Vec<Incoming>, Vec<Reply>) = batch.into_iter().unzip();
        match self.insert(&items, alerts) {
            Ok(outcomes) => {
                self.note_commit(items.len());
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    self.answer(reply, Ok(outcome));
                }
            }
            Err(e) if e.is_full() || items.len() == 1 => {
                tracing::warn!(reports = items.len(), error = %e, "ingest commit failed; nothing acknowledged");
                let err = IngestError::from(e);
                for reply in replies {
                    self.answer(reply, Err(err.clone()));
                }
            }
            Err(e) => {
                tracing::warn!(reports = items.len(), error = %e, "grouped commit failed; retrying reports one by one");
                for (item, reply) in items.into_iter().zip(replies) {
                    let result = self.insert(std::slice::from_ref(&item), alerts);
                    let answer = match result {
                        Ok(mut o) => {
                            self.note_commit(1);
                            o.pop().ok_or_else(|| {
                                IngestError::Storage(Arc::new(StoreError::BadValue(
                                    "no outcome for a stored report".into(),
                                )))
                            })
                        }
                        Err(e) => Err(IngestError::from(e)),
                    };
                    self.answer(reply, answer);
                }
            }
        }
    }

    /// Stores reports in one transaction, evaluating the alert rules of `alerts` in it.
    fn insert(&mut self, items: &[Incoming], alerts: Option<&Config>) -> Result<Vec<Outcome>, StoreError> {
        match alerts {
            None => self.store.insert_reports(items),
            Some(config) => {
                let now = crate::store::now_ms();
                let mut states = crate::alert::BatchStates::default();
                self.store.insert_reports_with(items, |conn, inc| {
                    crate::alert::on_report(conn, config, items, &mut states, inc, now)
                })
            }
        }
    }

    fn note_commit(&self, n: usize) {
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        self.counters.largest_batch.fetch_max(n as u64, Ordering::Relaxed);
    }

    fn answer(&self, reply: Reply, answer: Result<Outcome, IngestError>) {
        let counter = match &answer {
            Ok(Outcome::Stored { .. }) => &self.counters.stored,
            Ok(Outcome::Duplicate) => &self.counters.duplicates,
            Err(_) => &self.counters.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match reply {
            // The submitter may have given up (connection closed): the report is stored all the same.
            Reply::Wait(tx) => {
                let _ = tx.send(answer);
            }
            Reply::Slot(slot) => slot.send(answer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_schema::report::{Report, Stats, SwapStats};

    fn incoming(seq: u64) -> Incoming {
        Incoming {
            agent_id: "agent-1".into(),
            host: "db1".into(),
            ip: "10.0.0.2".into(),
            received_at_ms: 2_000 + seq as i64,
            report: Report {
                seq,
                job: "vitals".into(),
                collected_at_ms: 1_000 + seq as i64,
                dropped: 0,
                stats: Stats {
                    swap: Some(SwapStats { total: 10, used: 1, free: 9, used_pct: 10.0 }),
                    ..Stats::default()
                },
            },
        }
    }

    #[test]
    fn handle_and_store_cross_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        fn assert_send<T: Send>() {}
        assert_send_sync::<IngestHandle>();
        assert_send::<Store>();
    }

    /// A writer on a fresh SQLite file (kept while the directory lives).
    fn writer() -> (tempfile::TempDir, IngestHandle, JoinHandle<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("v.db")).unwrap();
        let (handle, join) = spawn(store, IngestOptions::default()).unwrap();
        (dir, handle, join)
    }

    fn reports_in(store: &Store) -> i64 {
        store.conn().query_row("SELECT count(*) FROM reports", [], |r| r.get(0)).unwrap()
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn disk_full_answers_every_report_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("v.db")).unwrap();
        store.insert_reports(&[incoming(1)]).unwrap();
        let pages: i64 = store.conn().query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        store.limit_pages(pages).unwrap();
        let (handle, join) = spawn(store, IngestOptions::default()).unwrap();
        let results = rt().block_on(async {
            // Hold the writer so all reports land in one batch: the slack left in the pages of the first report
            // would take a few reports committed alone.
            let gate = handle.exec(|_| std::thread::sleep(std::time::Duration::from_millis(100)));
            let tasks: Vec<_> = (2..600).map(|s| handle.submit(incoming(s))).collect();
            let (_, r) = tokio::join!(gate, futures_join(tasks));
            r
        });
        assert!(results.iter().all(|r| *r == Err(IngestError::Unavailable)), "{:?}", &results[..3]);
        assert_eq!(handle.stats().stored, 0);
        drop(handle);
        let store = join.join().unwrap();
        assert_eq!(reports_in(&store), 1);
    }

    #[test]
    fn one_bad_report_does_not_fail_its_batch() {
        let (_dir, handle, join) = writer();
        let results = rt().block_on(async {
            // Hold the writer so all three land in one batch.
            let gate = handle.exec(|_| std::thread::sleep(std::time::Duration::from_millis(100)));
            let mut bad = incoming(2);
            bad.report.stats.swap.as_mut().unwrap().used_pct = f32::NAN; // NULL into a NOT NULL column
            let tasks = vec![handle.submit(incoming(1)), handle.submit(bad), handle.submit(incoming(3))];
            let (_, r) = tokio::join!(gate, futures_join(tasks));
            r
        });
        assert!(matches!(results[0], Ok(Outcome::Stored { .. })));
        assert!(matches!(results[1], Err(IngestError::Storage(_))), "{:?}", results[1]);
        assert!(matches!(results[2], Ok(Outcome::Stored { .. })));
        drop(handle);
        join.join().unwrap();
    }

    #[test]
    fn shutdown_commits_queued_reports_then_refuses() {
        let (_dir, handle, join) = writer();
        let (before, after) = rt().block_on(async {
            let before = handle.submit(incoming(1)).await;
            handle.shutdown().await;
            (before, handle.submit(incoming(2)).await)
        });
        assert!(matches!(before, Ok(Outcome::Stored { .. })));
        assert_eq!(after, Err(IngestError::Closed));
        let store = join.join().unwrap();
        assert_eq!(reports_in(&store), 1);
    }

    /// `submit_to` answers into the submitter's own queue after the commit, and answers `Closed` when the report
    /// cannot be queued or its slot is dropped unanswered.
    #[test]
    fn answers_go_into_the_reserved_slots() {
        let (_dir, handle, join) = writer();
        let answers = rt().block_on(async {
            let (tx, mut rx) = mpsc::channel::<Answered>(2);
            handle.submit_to(incoming(1), tx.clone().reserve_owned().await.unwrap()).await;
            handle.submit_to(incoming(1), tx.clone().reserve_owned().await.unwrap()).await;
            let mut answers = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap()];
            // Both places are free again once their answers are read.
            assert_eq!(tx.capacity(), 2);
            drop(AnswerSlot::new(tx.clone().reserve_owned().await.unwrap(), 7));
            answers.push(rx.recv().await.unwrap());
            handle.shutdown().await;
            handle.submit_to(incoming(2), tx.clone().reserve_owned().await.unwrap()).await;
            answers.push(rx.recv().await.unwrap());
            answers
        });
        let got: Vec<_> =
            answers.iter().map(|a| (a.seq, a.result.as_ref().map(|o| *o == Outcome::Duplicate))).collect();
        assert_eq!(
            got,
            [(1, Ok(false)), (1, Ok(true)), (7, Err(&IngestError::Closed)), (2, Err(&IngestError::Closed))]
        );
        assert!(matches!(answers[0].result, Ok(Outcome::Stored { .. })));
        let store = join.join().unwrap();
        assert_eq!(reports_in(&store), 1);
    }

    async fn futures_join<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
        let mut set = Vec::with_capacity(fs.len());
        // Poll every future together; each awaits its own commit.
        let mut pinned: Vec<_> = fs.into_iter().map(Box::pin).collect();
        let mut done: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut pending = false;
            for (f, d) in pinned.iter_mut().zip(done.iter_mut()) {
                if d.is_none() {
                    match f.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => *d = Some(v),
                        std::task::Poll::Pending => pending = true,
                    }
                }
            }
            if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
        })
        .await;
        for d in done {
            set.extend(d);
        }
        set
    }
}
