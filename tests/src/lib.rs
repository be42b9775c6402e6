//! Shared fixtures for koyo-job's integration tests: a fresh migrated database per test, a
//! ledger table jobs write to, and polling with a deadline.
//!
//! Jobs run in worker tasks, which do not see the test's task-locals, so a job finds its
//! test's database through a key passed as its first argument ([`broker_for`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use koyo_job::testing::TestDatabase;
use koyo_job::{Broker, BrokerOptions, JobId, Worker, WorkerBuilder};

pub mod browser;
/// The guides' and the READMEs' snippets, as this package's doc-tests.
#[cfg(doctest)]
mod guides;

/// One test's world: its own database, a broker on it, and the key its jobs use.
pub struct Env {
    pub broker: Broker,
    pub key: String,
    // Dropped last: drops the database.
    pub db: TestDatabase,
}

fn brokers() -> &'static Mutex<HashMap<String, Broker>> {
    static BROKERS: OnceLock<Mutex<HashMap<String, Broker>>> = OnceLock::new();
    BROKERS.get_or_init(Default::default)
}

/// The broker of the test whose key is `key` (for use inside job bodies).
pub fn broker_for(key: &str) -> Broker {
    brokers().lock().unwrap().get(key).cloned().unwrap_or_else(|| panic!("no test database for key {key}"))
}

/// A fresh database with koyo-job's tables and a `ledger` table.
pub async fn env() -> Env {
    let db = TestDatabase::create().await.expect("a PostgreSQL server for tests");
    let broker = Broker::new(db.config().clone(), BrokerOptions::default()).expect("broker");
    koyo_job::migrate(&broker).await.expect("migrate");
    broker
        .client()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE ledger (
                seq      bigserial PRIMARY KEY,
                job_id   bigint,
                attempt  int,
                label    text NOT NULL,
                at       timestamptz NOT NULL DEFAULT clock_timestamp()
            )",
        )
        .await
        .unwrap();
    let key = db.name().to_owned();
    brokers().lock().unwrap().insert(key.clone(), broker.clone());
    Env { broker, key, db }
}

impl Env {
    /// A worker builder with test-friendly timings (fast polls, short lease and backoff).
    pub fn worker(&self) -> WorkerBuilder {
        Worker::builder(self.broker.clone())
            .poll_interval(Duration::from_millis(100))
            .lease(Duration::from_secs(2))
            .shutdown_grace(Duration::from_secs(5))
            .backoff(koyo_job::Backoff::exponential(Duration::from_millis(50), Duration::from_millis(200)))
    }

    /// Runs one query and returns its rows.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn koyo_job::tokio_postgres::types::ToSql + Sync)],
    ) -> Vec<koyo_job::tokio_postgres::Row> {
        self.broker.client().await.unwrap().query(sql, params).await.unwrap()
    }

    /// The row of job `id`.
    pub async fn job(&self, id: JobId) -> JobRow {
        let rows = self
            .query(
                "SELECT queue, job, status, priority, attempts, max_attempts, last_error,
                        scheduled_at, started_at, finished_at
                 FROM koyo_jobs WHERE id = $1",
                &[&id.0],
            )
            .await;
        let r = rows.first().unwrap_or_else(|| panic!("job {id} has no row"));
        JobRow {
            queue: r.get(0),
            name: r.get(1),
            status: r.get(2),
            priority: r.get(3),
            attempts: r.get(4),
            max_attempts: r.get(5),
            last_error: r.get(6),
            scheduled_at: r.get(7),
            started_at: r.get(8),
            finished_at: r.get(9),
        }
    }

    /// Waits until job `id` is in `status`, or panics after `within`.
    pub async fn wait_for_status(&self, id: JobId, status: &str, within: Duration) -> JobRow {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let row = self.job(id).await;
            if row.status == status {
                return row;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("job {id} is still {} (wanted {status}) after {within:?}: {row:?}", row.status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `sql` (returning one bigint) returns `want`, or panics after `within`.
    pub async fn wait_for_count(&self, sql: &str, want: i64, within: Duration) {
        let got = poll_until(within, || async {
            let n: i64 = self.query(sql, &[]).await[0].get(0);
            (n == want).then_some(n)
        })
        .await;
        assert!(got.is_some(), "{sql} never returned {want} within {within:?}");
    }

    /// A worker on `queue` that polls only every 30 s and already listens: from its return on,
    /// a new job starts promptly only through its notification.
    pub async fn listening_worker(&self, queue: &str) -> koyo_job::WorkerHandle {
        let worker = self
            .worker()
            .queue(queue)
            .poll_interval(Duration::from_secs(30))
            .lease(Duration::from_secs(90))
            .start()
            .await
            .expect("worker");
        self.wait_until_listening().await;
        worker
    }

    /// Waits until a worker of this database listens for notifications and has had its
    /// first look at the table, so that from now on only a notification (or a poll) finds
    /// new jobs.
    pub async fn wait_until_listening(&self) {
        self.wait_for_count(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN koyo_jobs%'",
            1,
            Duration::from_secs(10),
        )
        .await;
        self.wait_for_count(
            "SELECT count(*) FROM koyo_workers WHERE heartbeat_at > started_at",
            1,
            Duration::from_secs(10),
        )
        .await;
    }

    /// The labels of the ledger, in the order they were written.
    pub async fn ledger(&self) -> Vec<String> {
        self.query("SELECT label FROM ledger ORDER BY seq", &[]).await.iter().map(|r| r.get(0)).collect()
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `within`.
pub async fn poll_until<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Appends a row to the ledger of the test whose key is `key`.
pub async fn record(key: &str, label: impl Into<String>) {
    let label = label.into();
    broker_for(key)
        .client()
        .await
        .expect("ledger connection")
        .execute("INSERT INTO ledger (label) VALUES ($1)", &[&label])
        .await
        .expect("ledger insert");
}

/// One row of `koyo_jobs`.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub queue: String,
    pub name: String,
    pub status: String,
    pub priority: i16,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub scheduled_at: time::OffsetDateTime,
    pub started_at: Option<time::OffsetDateTime>,
    pub finished_at: Option<time::OffsetDateTime>,
}

/// The chaos suite's fixtures (`tests/tests/chaos_*.rs`): jobs that keep a ledger of every
/// execution, the worker *process* that runs them (`src/bin/chaos_worker.rs`), handles to
/// start, freeze, kill and stop such processes, and checks over the ledger.
///
/// A chaos job finds its database through the current broker of the process running it (the
/// worker program sets it), and its id and attempt through `koyo_job::current_job()`.
pub mod chaos {
    use std::collections::HashMap;
    use std::fmt::Write as _;
    use std::io::{BufRead as _, BufReader};
    use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};
    use std::time::Duration;

    use koyo_job::testing::{PrivateCluster, TestDatabase};
    use koyo_job::tokio_postgres::Row;
    use koyo_job::tokio_postgres::types::{ToSql, Type};
    use koyo_job::{Broker, BrokerOptions, JobId, define_job};
    use time::OffsetDateTime;
    use tokio::sync::watch;

    // ---------------------------------------------------------------------------------------
    // Inside the worker process: job identity, label, ledger.

    /// The running job's id and attempt (`koyo_job::current_job`), or `(0, 0)` outside a job.
    fn current_job() -> (i64, i32) {
        koyo_job::current_job().map_or((0, 0), |job| (job.id.0, job.attempt))
    }

    static LABEL: OnceLock<String> = OnceLock::new();

    /// Names this worker process in the ledger (set once, at start).
    pub fn set_label(label: &str) {
        let _ = LABEL.set(label.to_owned());
    }

    fn label() -> &'static str {
        LABEL.get().map_or("unlabelled", String::as_str)
    }

    /// Ledger writes started by dropped executions and not finished yet.
    static PENDING_WRITES: AtomicUsize = AtomicUsize::new(0);

    /// Waits (at most `within`) for the ledger writes of dropped executions.
    pub async fn wait_for_pending_writes(within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while PENDING_WRITES.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn broker() -> Result<Broker, String> {
        koyo_job::current_broker().ok_or_else(|| "the chaos worker set no current broker".to_owned())
    }

    /// One execution of a job body, as a ledger row: written when the body starts, closed when it
    /// ends (`ok`), or, if the body is dropped (timeout, shutdown), closed as `dropped` with the
    /// time of the drop. A process killed mid-body leaves the row open.
    struct Running {
        seq: i64,
        closed: bool,
        /// The job, attempt and start time of the row: what closes it if `seq` is not enough.
        job_id: i64,
        attempt: i32,
        started: OffsetDateTime,
    }

    impl Running {
        async fn begin(n: i64, job: &str) -> Result<Running, String> {
            let started = OffsetDateTime::now_utc();
            let (job_id, attempt) = current_job();
            let row = broker()?
                .client()
                .await
                .map_err(|e| e.to_string())?
                // Unnamed (`query_typed`), so that the chaos jobs also run behind PgBouncer in
                // transaction mode (tests/tests/pgbouncer.rs).
                .query_typed_one(
                    "INSERT INTO chaos_ledger (n, job_id, attempt, job, worker, pid, started_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq",
                    &[
                        (&n, Type::INT8),
                        (&job_id, Type::INT8),
                        (&attempt, Type::INT4),
                        (&job, Type::TEXT),
                        (&label(), Type::TEXT),
                        (&(std::process::id() as i32), Type::INT4),
                        (&started, Type::TIMESTAMPTZ),
                    ],
                )
                .await
                .map_err(|e| {
                    // The insert may have committed all the same (its answer lost with the
                    // connection): close the row, if there is one, once the database answers.
                    close_later(job_id, attempt, started, "begin-failed", false);
                    e.to_string()
                })?;
            Ok(Running { seq: row.get(0), closed: false, job_id, attempt, started })
        }

        async fn finish(self) -> Result<(), String> {
            self.finish_as("ok").await
        }

        async fn finish_as(mut self, outcome: &str) -> Result<(), String> {
            let ended = OffsetDateTime::now_utc();
            close(self.seq, ended, outcome).await?;
            self.closed = true;
            Ok(())
        }
    }

    /// Closes a ledger row the body's own way (`ok`, …), unless it is closed already: the body
    /// may be dropped (a timeout at this very await) after sending this write, and the drop's
    /// `dropped`, written from another connection, may then reach the database first.
    async fn close(seq: i64, at: OffsetDateTime, outcome: &str) -> Result<(), String> {
        broker()?
            .client()
            .await
            .map_err(|e| e.to_string())?
            .query_typed(
                "UPDATE chaos_ledger SET ended_at = $2, outcome = $3 WHERE seq = $1 AND outcome IS NULL",
                &[(&seq, Type::INT8), (&at, Type::TIMESTAMPTZ), (&outcome, Type::TEXT)],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    impl Drop for Running {
        fn drop(&mut self) {
            if !self.closed {
                // Even over an `ok` its own write sent just before the body was dropped.
                close_later(self.job_id, self.attempt, self.started, "dropped", true);
            }
        }
    }

    /// Closes this process's ledger row for `job_id`'s `attempt` started at `started` (if there
    /// is one; if it is closed already, only when `overwrite`) as ended now, in a task that
    /// retries for up to 20 s while the database does not answer (a restart, a failover): an
    /// execution whose own ledger write failed still gets its end recorded. A pending write
    /// ([`wait_for_pending_writes`]).
    fn close_later(
        job_id: i64,
        attempt: i32,
        started: OffsetDateTime,
        outcome: &'static str,
        overwrite: bool,
    ) {
        let at = OffsetDateTime::now_utc();
        struct Pending;
        impl Drop for Pending {
            fn drop(&mut self) {
                PENDING_WRITES.fetch_sub(1, Ordering::SeqCst);
            }
        }
        PENDING_WRITES.fetch_add(1, Ordering::SeqCst);
        let pending = Pending;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let _pending = pending;
            let pid = std::process::id() as i32;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while tokio::time::Instant::now() < deadline {
                let closed = async {
                    broker()?
                        .client()
                        .await
                        .map_err(|e| e.to_string())?
                        .query_typed(
                            "UPDATE chaos_ledger SET ended_at = $5, outcome = $6
                             WHERE job_id = $1 AND attempt = $2 AND pid = $3 AND started_at = $4
                               AND (ended_at IS NULL OR $7)",
                            &[
                                (&job_id, Type::INT8),
                                (&attempt, Type::INT4),
                                (&pid, Type::INT4),
                                (&started, Type::TIMESTAMPTZ),
                                (&at, Type::TIMESTAMPTZ),
                                (&outcome, Type::TEXT),
                                (&overwrite, Type::BOOL),
                            ],
                        )
                        .await
                        .map_err(|e| e.to_string())
                };
                if tokio::time::timeout(Duration::from_secs(2), closed).await.is_ok_and(|r| r.is_ok()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    /// Works for `work_ms` (asleep), between two ledger writes.
    #[define_job(name = "chaos.ledger", queue = "chaos", max_attempts = 25)]
    pub async fn ledger_job(n: i64, work_ms: u64) -> Result<(), String> {
        let execution = Running::begin(n, "ledger").await?;
        tokio::time::sleep(Duration::from_millis(work_ms)).await;
        execution.finish().await
    }

    /// Writes its ledger row, then kills its process with `std::process::abort()`.
    #[define_job(name = "chaos.abort", queue = "chaos", max_attempts = 3)]
    pub async fn abort_job(n: i64) -> Result<(), String> {
        let _execution = Running::begin(n, "abort").await?;
        std::process::abort();
    }

    /// Ignores its 1 s timeout: spins for `spin_ms`, yielding to the runtime all the time.
    #[define_job(name = "chaos.spin", queue = "chaos", max_attempts = 2, timeout = "1s")]
    pub async fn spin_job(n: i64, spin_ms: u64) -> Result<(), String> {
        let execution = Running::begin(n, "spin").await?;
        let until = std::time::Instant::now() + Duration::from_millis(spin_ms);
        while std::time::Instant::now() < until {
            tokio::task::yield_now().await;
        }
        execution.finish().await
    }

    /// Blocks its thread for `block_ms` (past its 1 s timeout, if longer), then goes on with async
    /// work; but only on attempt `on_attempt` (0: any) in the worker labelled `on_worker` (empty:
    /// any).
    #[define_job(name = "chaos.block", queue = "chaos", max_attempts = 3, timeout = "1s")]
    pub async fn block_job(n: i64, block_ms: u64, on_attempt: i32, on_worker: String) -> Result<(), String> {
        let execution = Running::begin(n, "block").await?;
        if (on_attempt == 0 || current_job().1 == on_attempt)
            && (on_worker.is_empty() || on_worker == label())
        {
            std::thread::sleep(Duration::from_millis(block_ms));
        }
        execution.finish().await
    }

    /// Takes bytes, for rows written straight into the table with corrupt arguments.
    #[define_job(name = "chaos.payload", queue = "chaos")]
    pub async fn payload_job(n: i64, payload: Vec<u8>) -> Result<(), String> {
        let execution = Running::begin(n, "payload").await?;
        let _ = payload;
        execution.finish().await
    }

    /// Waits until its test opens gate `n` (a row in `chaos_gates`), at most two minutes.
    #[define_job(name = "chaos.gate", queue = "gated")]
    pub async fn gate_job(n: i64) -> Result<(), String> {
        let execution = Running::begin(n, "gate").await?;
        let broker = broker()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let open = broker
                .client()
                .await
                .map_err(|e| e.to_string())?
                .query_opt("SELECT 1 FROM chaos_gates WHERE n = $1", &[&n])
                .await
                .map_err(|e| e.to_string())?
                .is_some();
            if open {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("gate {n} never opened"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        execution.finish().await
    }

    /// Ends its attempt with text PostgreSQL cannot store as it is, chosen by `how`: `error` (an
    /// `Err` whose text holds NUL characters), `panic` (a panic message with one), `retry` (a
    /// `retry!` reason with one) or `huge` (a 1 MiB error text); anything else succeeds.
    #[define_job(name = "chaos.bad_text", queue = "chaos", max_attempts = 2)]
    pub async fn bad_text_job(n: i64, how: String) -> Result<(), String> {
        Running::begin(n, "bad_text").await?.finish().await?;
        match how.as_str() {
            "error" => Err("the server said \0 and hung up\0".to_owned()),
            "panic" => panic!("a panic \0 with a NUL"),
            "retry" => koyo_job::retry!(Duration::from_millis(50), "a reason \0 with a NUL"),
            "huge" => Err("e".repeat(1 << 20)),
            _ => Ok(()),
        }
    }

    /// A recursive argument type: one `Link` per level.
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    pub enum Chain {
        End,
        Link(Box<Chain>),
    }

    /// Takes a recursive argument, for rows written straight into the table nested too deeply.
    #[define_job(name = "chaos.deep", queue = "chaos")]
    pub async fn deep_job(n: i64, chain: Chain) -> Result<(), String> {
        let execution = Running::begin(n, "deep").await?;
        let _ = chain;
        execution.finish().await
    }

    /// Works for `work_ms` unless an operator cancels it: then it records `cleaned-up` as its
    /// outcome (the clean-up a job does in the second it is given) and ends with an error.
    #[define_job(name = "chaos.cancellable", queue = "chaos")]
    pub async fn cancellable_job(n: i64, work_ms: u64) -> Result<(), String> {
        let execution = Running::begin(n, "cancellable").await?;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(work_ms)) => execution.finish().await,
            () = koyo_job::cancelled() => {
                execution.finish_as("cleaned-up").await?;
                Err("stopped on request".to_owned())
            }
        }
    }

    /// Enqueued every second by the workers that serve queue `periodic`; records its run.
    #[define_job(name = "chaos.tick", queue = "periodic", every = "1s")]
    pub async fn tick_job() -> Result<(), String> {
        Running::begin(0, "tick").await?.finish().await
    }

    /// Every 4 s on queue `periodic_latest`, running the latest missed slot after an outage.
    #[define_job(name = "chaos.tick_latest", queue = "periodic_latest", every = "4s")]
    pub async fn tick_latest_job() {}

    /// Every 4 s on queue `periodic_skip`, skipping the slots missed in an outage.
    #[define_job(name = "chaos.tick_skip", queue = "periodic_skip", every = "4s", missed = "skip")]
    pub async fn tick_skip_job() {}

    fn noop_runs() -> &'static Mutex<HashMap<i64, u32>> {
        static RUNS: OnceLock<Mutex<HashMap<i64, u32>>> = OnceLock::new();
        RUNS.get_or_init(Default::default)
    }

    /// Counts its runs in the worker process's memory (no database work): see [`noop_report`].
    #[define_job(name = "chaos.noop", queue = "burst")]
    pub async fn noop_job(n: i64) {
        *noop_runs().lock().unwrap().entry(n).or_default() += 1;
    }

    /// `noop-runs total=<runs> distinct=<jobs>`: what this process's no-op jobs did.
    pub fn noop_report() -> String {
        let runs = noop_runs().lock().unwrap();
        format!(
            "noop-runs total={} distinct={}",
            runs.values().map(|&n| u64::from(n)).sum::<u64>(),
            runs.len()
        )
    }

    /// Every chaos job's stored name, for the worker to check that all are linked in.
    pub fn job_names() -> Vec<&'static str> {
        vec![
            ledger_job(0, 0).name(),
            abort_job(0).name(),
            spin_job(0, 0).name(),
            block_job(0, 0, 0, String::new()).name(),
            payload_job(0, vec![]).name(),
            gate_job(0).name(),
            noop_job(0).name(),
            bad_text_job(0, String::new()).name(),
            deep_job(0, Chain::End).name(),
            cancellable_job(0, 0).name(),
            tick_job().name(),
            tick_latest_job().name(),
            tick_skip_job().name(),
        ]
    }

    // ---------------------------------------------------------------------------------------
    // Logs: a minimal `tracing` subscriber that formats every event (and span) as one line.

    /// Where a [`LogCapture`] puts the lines it formats.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum LogTo {
        /// Keeps every line, events and spans, in memory (see [`LogCapture::lines`]).
        Memory,
        /// Prints each event as a line `log …` on stdout, keeping nothing (spans, one per job
        /// run, are not printed).
        Stdout,
    }

    /// A process-wide `tracing` subscriber that formats every event and span as one line.
    pub struct LogCapture {
        lines: Mutex<Vec<String>>,
        to: LogTo,
        next_span: AtomicU64,
    }

    impl LogCapture {
        /// Installs the process-wide subscriber (once; later calls return the first one).
        pub fn install(to: LogTo) -> &'static LogCapture {
            static CAPTURE: OnceLock<&'static LogCapture> = OnceLock::new();
            CAPTURE.get_or_init(|| {
                let capture: &'static LogCapture = Box::leak(Box::new(LogCapture {
                    lines: Mutex::new(Vec::new()),
                    to,
                    next_span: AtomicU64::new(1),
                }));
                tracing::subscriber::set_global_default(Capture(capture))
                    .expect("no other tracing subscriber in this process");
                capture
            })
        }

        /// Every line so far (with [`LogTo::Memory`]).
        pub fn lines(&self) -> Vec<String> {
            self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }

        fn push(&self, line: String, is_event: bool) {
            match self.to {
                LogTo::Memory => self.lines.lock().unwrap_or_else(|p| p.into_inner()).push(line),
                LogTo::Stdout if is_event => println!("log {line}"),
                LogTo::Stdout => {}
            }
        }
    }

    struct Capture(&'static LogCapture);

    struct Fields(String);

    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                let _ = write!(self.0, "{value:?}");
            } else {
                let _ = write!(self.0, " {}={value:?}", field.name());
            }
        }
    }

    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }

        fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            let mut fields = Fields(String::new());
            span.record(&mut fields);
            let meta = span.metadata();
            self.0
                .push(format!("{} {}: span {}{}", meta.level(), meta.target(), meta.name(), fields.0), false);
            tracing::span::Id::from_u64(self.0.next_span.fetch_add(1, Ordering::Relaxed))
        }

        fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
            let mut fields = Fields(String::new());
            values.record(&mut fields);
            self.0.push(format!("span record{}", fields.0), false);
        }

        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

        fn event(&self, event: &tracing::Event<'_>) {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            let meta = event.metadata();
            self.0.push(format!("{} {}: {}", meta.level(), meta.target(), fields.0), true);
        }

        fn enter(&self, _: &tracing::span::Id) {}

        fn exit(&self, _: &tracing::span::Id) {}
    }

    // ---------------------------------------------------------------------------------------
    // In the test: the database, its ledger and its audit trail.

    /// The chaos tables: the ledger of executions, the gates, and (with the audit) every change
    /// of a job's state, attempt or worker.
    const SCHEMA: &str = "
        CREATE TABLE chaos_ledger (
            seq         bigserial PRIMARY KEY,
            n           bigint NOT NULL,
            job_id      bigint NOT NULL,
            attempt     int NOT NULL,
            job         text NOT NULL,
            worker      text NOT NULL,
            pid         int NOT NULL,
            started_at  timestamptz NOT NULL,
            ended_at    timestamptz,
            outcome     text
        );
        CREATE INDEX ON chaos_ledger (job_id);
        CREATE TABLE chaos_gates (n bigint PRIMARY KEY);
        CREATE TABLE chaos_transitions (
            seq          bigserial PRIMARY KEY,
            job_id       bigint NOT NULL,
            old_status   text NOT NULL,
            new_status   text NOT NULL,
            old_attempts int NOT NULL,
            new_attempts int NOT NULL,
            old_worker   bigint,
            new_worker   bigint,
            at           timestamptz NOT NULL DEFAULT clock_timestamp()
        );";

    const AUDIT: &str = "
        CREATE FUNCTION chaos_audit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF OLD.status IS DISTINCT FROM NEW.status OR OLD.attempts IS DISTINCT FROM NEW.attempts
               OR OLD.worker_id IS DISTINCT FROM NEW.worker_id THEN
                INSERT INTO chaos_transitions
                    (job_id, old_status, new_status, old_attempts, new_attempts, old_worker, new_worker)
                VALUES (NEW.id, OLD.status, NEW.status, OLD.attempts, NEW.attempts, OLD.worker_id, NEW.worker_id);
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER chaos_audit AFTER UPDATE ON koyo_jobs FOR EACH ROW EXECUTE FUNCTION chaos_audit();";

    /// A chaos test's database: on the shared test server ([`ChaosDb::create`]) or on a private
    /// cluster ([`ChaosDb::on_cluster`]), migrated, with the chaos tables.
    pub struct ChaosDb {
        pub broker: Broker,
        url: String,
        _db: Option<TestDatabase>,
    }

    impl ChaosDb {
        /// A fresh database on the shared test server, with the audit trigger.
        pub async fn create() -> ChaosDb {
            let db = TestDatabase::create().await.expect("a PostgreSQL server for tests");
            let url = db.url();
            ChaosDb::set_up(url, Some(db), true).await
        }

        /// The database `chaos` on `cluster`, created here; with the audit trigger if `audit`.
        pub async fn on_cluster(cluster: &PrivateCluster, audit: bool) -> ChaosDb {
            let admin = Broker::new(cluster.config().clone(), BrokerOptions::default()).unwrap();
            admin.client().await.unwrap().batch_execute("CREATE DATABASE chaos").await.unwrap();
            let url = {
                // The cluster's URL, pointed at the new database.
                let base = cluster.url();
                let (head, tail) = base.rsplit_once("/postgres").expect("the cluster URL names its database");
                format!("{head}/chaos{tail}")
            };
            ChaosDb::set_up(url, None, audit).await
        }

        async fn set_up(url: String, db: Option<TestDatabase>, audit: bool) -> ChaosDb {
            let config: koyo_job::tokio_postgres::Config = url.parse().unwrap();
            let broker = Broker::new(config, BrokerOptions::default()).unwrap();
            koyo_job::migrate(&broker).await.expect("migrate");
            let client = broker.client().await.unwrap();
            client.batch_execute(SCHEMA).await.unwrap();
            if audit {
                client.batch_execute(AUDIT).await.unwrap();
            }
            ChaosDb { broker, url, _db: db }
        }

        /// The URL worker processes connect with (it may hold a password: never print it).
        pub fn url(&self) -> &str {
            &self.url
        }

        /// Runs one statement; panics on error.
        pub async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<Row> {
            self.try_query(sql, params).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
        }

        /// Runs one statement; errors (a server that is restarting) come back, with their causes.
        pub async fn try_query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, String> {
            let client = self.broker.client().await.map_err(|e| error_chain(&e))?;
            client.query(sql, params).await.map_err(|e| error_chain(&e))
        }

        /// Runs several statements (no parameters); panics on error.
        pub async fn batch(&self, sql: &str) {
            let client = self.broker.client().await.unwrap();
            client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {}", error_chain(&e)));
        }

        /// A query returning one bigint.
        pub async fn count(&self, sql: &str) -> i64 {
            self.query(sql, &[]).await[0].get(0)
        }

        /// Polls a query returning one bigint until `done` accepts its value, at most `within`
        /// (errors count as "not yet"). Returns the last value and whether it was accepted.
        pub async fn wait_count(
            &self,
            sql: &str,
            within: Duration,
            done: impl Fn(i64) -> bool,
        ) -> (i64, bool) {
            let deadline = tokio::time::Instant::now() + within;
            let mut last = -1;
            loop {
                if let Ok(rows) = self.try_query(sql, &[]).await {
                    last = rows[0].get(0);
                    if done(last) {
                        return (last, true);
                    }
                }
                if tokio::time::Instant::now() > deadline {
                    return (last, false);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }

        /// Like [`ChaosDb::wait_count`], panicking with `what` if the deadline passes.
        pub async fn expect_count(
            &self,
            what: &str,
            sql: &str,
            within: Duration,
            done: impl Fn(i64) -> bool,
        ) -> i64 {
            let (n, ok) = self.wait_count(sql, within, done).await;
            assert!(ok, "{what}: still {n} after {within:?} ({sql})");
            n
        }

        /// The state of job `id`.
        pub async fn job(&self, id: JobId) -> JobState {
            let rows = self
                .query(
                    "SELECT status, attempts, max_attempts, worker_id, last_error, finished_at
                     FROM koyo_jobs WHERE id = $1",
                    &[&id.0],
                )
                .await;
            let r = rows.first().unwrap_or_else(|| panic!("job {id} has no row"));
            JobState {
                status: r.get(0),
                attempts: r.get(1),
                max_attempts: r.get(2),
                worker_id: r.get(3),
                last_error: r.get(4),
                finished_at: r.get(5),
            }
        }

        /// Waits until job `id` is in `status`, or panics after `within`.
        pub async fn wait_for_status(&self, id: JobId, status: &str, within: Duration) -> JobState {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                let row = self.job(id).await;
                if row.status == status {
                    return row;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "job {id} is not {status} after {within:?}: {row:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// Every execution in the ledger, in the order they were written.
        pub async fn executions(&self) -> Vec<Execution> {
            self.query(
                "SELECT seq, n, job_id, attempt, job, worker, pid, started_at, ended_at, outcome
                 FROM chaos_ledger ORDER BY seq",
                &[],
            )
            .await
            .iter()
            .map(|r| Execution {
                seq: r.get(0),
                n: r.get(1),
                job_id: r.get(2),
                attempt: r.get(3),
                job: r.get(4),
                worker: r.get(5),
                pid: r.get(6),
                started_at: r.get(7),
                ended_at: r.get(8),
                outcome: r.get(9),
            })
            .collect()
        }

        /// Changes made to jobs after they were `done` (there must be none).
        pub async fn changes_after_done(&self) -> Vec<String> {
            self.query(
                "SELECT format('job %s: %s -> %s, attempts %s -> %s, worker %s -> %s',
                               job_id, old_status, new_status, old_attempts, new_attempts, old_worker, new_worker)
                 FROM chaos_transitions WHERE old_status IN ('done', 'failed') ORDER BY seq",
                &[],
            )
            .await
            .iter()
            .map(|r| r.get(0))
            .collect()
        }

        /// Jobs that ran more often than their row counts attempts (there must be none, unless
        /// executions were released at shutdown, which does not count an attempt).
        pub async fn executions_over_attempts(&self) -> Vec<String> {
            self.query(
                "SELECT format('job %s: %s executions, %s attempts', j.id, count(l.seq), j.attempts)
                 FROM koyo_jobs j JOIN chaos_ledger l ON l.job_id = j.id
                 GROUP BY j.id HAVING count(l.seq) > j.attempts ORDER BY j.id",
                &[],
            )
            .await
            .iter()
            .map(|r| r.get(0))
            .collect()
        }
    }

    /// A job row, as far as the chaos tests look at it.
    #[derive(Clone, Debug, PartialEq)]
    pub struct JobState {
        pub status: String,
        pub attempts: i32,
        pub max_attempts: i32,
        pub worker_id: Option<i64>,
        pub last_error: Option<String>,
        pub finished_at: Option<OffsetDateTime>,
    }

    /// One ledger row: one execution of a job body.
    #[derive(Clone, Debug)]
    pub struct Execution {
        pub seq: i64,
        pub n: i64,
        pub job_id: i64,
        pub attempt: i32,
        pub job: String,
        pub worker: String,
        pub pid: i32,
        pub started_at: OffsetDateTime,
        pub ended_at: Option<OffsetDateTime>,
        pub outcome: Option<String>,
    }

    /// Pairs of executions of the same job that overlapped in time. An execution left open
    /// ends at `killed_at[pid]` when its process was killed, and is taken to run forever
    /// otherwise (so that nothing is missed).
    pub fn overlaps(
        executions: &[Execution],
        killed_at: &HashMap<i32, OffsetDateTime>,
    ) -> Vec<(Execution, Execution)> {
        let end = |e: &Execution| e.ended_at.or_else(|| killed_at.get(&e.pid).copied());
        let mut by_job: HashMap<i64, Vec<&Execution>> = HashMap::new();
        for e in executions {
            by_job.entry(e.job_id).or_default().push(e);
        }
        let mut found = Vec::new();
        for runs in by_job.values_mut() {
            runs.sort_by_key(|e| e.started_at);
            for (i, a) in runs.iter().enumerate() {
                for b in &runs[i + 1..] {
                    if end(a).is_none_or(|end| b.started_at < end) {
                        found.push(((*a).clone(), (*b).clone()));
                    }
                }
            }
        }
        found
    }

    /// The most executions running at once on one worker process, by the ledger.
    pub fn peak_concurrency(executions: &[Execution], pid: i32, killed_at: Option<OffsetDateTime>) -> usize {
        peak_of(executions.iter().filter(|e| e.pid == pid), killed_at)
    }

    /// The most executions running at once across every process, by the ledger (one that did
    /// not end counts as running until now).
    pub fn fleet_peak_concurrency(executions: &[Execution]) -> usize {
        peak_of(executions.iter(), None)
    }

    fn peak_of<'a>(
        executions: impl Iterator<Item = &'a Execution>,
        killed_at: Option<OffsetDateTime>,
    ) -> usize {
        let mut points: Vec<(OffsetDateTime, i32)> = Vec::new();
        for e in executions {
            points.push((e.started_at, 1));
            points.push((e.ended_at.or(killed_at).unwrap_or(OffsetDateTime::now_utc()), -1));
        }
        // Ends before starts at the same instant.
        points.sort();
        let (mut now, mut peak) = (0, 0);
        for (_, delta) in points {
            now += delta;
            peak = peak.max(now);
        }
        peak as usize
    }

    // ---------------------------------------------------------------------------------------
    // In the test: worker processes.

    /// How to run one worker process (see `src/bin/chaos_worker.rs` for the meaning of each).
    #[derive(Clone, Debug)]
    pub struct WorkerArgs {
        pub label: String,
        pub queues: Vec<String>,
        pub pool: usize,
        pub poll_ms: u64,
        pub lease_ms: u64,
        pub grace_ms: u64,
        pub listen: bool,
        pub prepared: bool,
        pub threads: usize,
        pub job_timeout_ms: Option<u64>,
        pub max_connections: Option<usize>,
        pub statement_timeout_ms: Option<u64>,
        pub connect_timeout_ms: Option<u64>,
        pub prefetch: Option<usize>,
        pub flush_ms: Option<u64>,
    }

    impl WorkerArgs {
        /// Queue `chaos`, 4 slots, polls every 100 ms, a 1 s lease, a 2 s grace, LISTEN and
        /// prepared statements on, two runtime threads.
        pub fn new(label: &str) -> WorkerArgs {
            WorkerArgs {
                label: label.to_owned(),
                queues: vec!["chaos".to_owned()],
                pool: 4,
                poll_ms: 100,
                lease_ms: 1000,
                grace_ms: 2000,
                listen: true,
                prepared: true,
                threads: 2,
                job_timeout_ms: None,
                max_connections: None,
                statement_timeout_ms: None,
                connect_timeout_ms: None,
                prefetch: None,
                flush_ms: None,
            }
        }

        pub fn queues(mut self, queues: &[&str]) -> Self {
            self.queues = queues.iter().map(|q| (*q).to_owned()).collect();
            self
        }

        pub fn pool(mut self, pool: usize) -> Self {
            self.pool = pool;
            self
        }

        pub fn poll_ms(mut self, ms: u64) -> Self {
            self.poll_ms = ms;
            self
        }

        pub fn lease_ms(mut self, ms: u64) -> Self {
            self.lease_ms = ms;
            self
        }

        pub fn grace_ms(mut self, ms: u64) -> Self {
            self.grace_ms = ms;
            self
        }

        pub fn listen(mut self, on: bool) -> Self {
            self.listen = on;
            self
        }

        pub fn prepared(mut self, on: bool) -> Self {
            self.prepared = on;
            self
        }

        pub fn threads(mut self, threads: usize) -> Self {
            self.threads = threads;
            self
        }

        pub fn max_connections(mut self, n: usize) -> Self {
            self.max_connections = Some(n);
            self
        }

        pub fn statement_timeout_ms(mut self, ms: u64) -> Self {
            self.statement_timeout_ms = Some(ms);
            self
        }

        /// The broker's connect timeout, per host (default: the broker's default).
        pub fn connect_timeout_ms(mut self, ms: u64) -> Self {
            self.connect_timeout_ms = Some(ms);
            self
        }

        /// The worker's prefetch setting (default: the worker's default).
        pub fn prefetch(mut self, jobs: usize) -> Self {
            self.prefetch = Some(jobs);
            self
        }

        /// How long shutdown may spend writing results after the grace (default: the worker's).
        pub fn flush_ms(mut self, ms: u64) -> Self {
            self.flush_ms = Some(ms);
            self
        }

        fn to_args(&self) -> Vec<String> {
            let mut args = vec![
                format!("--label={}", self.label),
                format!("--queues={}", self.queues.join(",")),
                format!("--pool={}", self.pool),
                format!("--poll-ms={}", self.poll_ms),
                format!("--lease-ms={}", self.lease_ms),
                format!("--grace-ms={}", self.grace_ms),
                format!("--listen={}", self.listen),
                format!("--prepared={}", self.prepared),
                format!("--threads={}", self.threads),
            ];
            if let Some(ms) = self.job_timeout_ms {
                args.push(format!("--job-timeout-ms={ms}"));
            }
            if let Some(jobs) = self.prefetch {
                args.push(format!("--prefetch={jobs}"));
            }
            if let Some(n) = self.max_connections {
                args.push(format!("--max-connections={n}"));
            }
            if let Some(ms) = self.statement_timeout_ms {
                args.push(format!("--statement-timeout-ms={ms}"));
            }
            if let Some(ms) = self.flush_ms {
                args.push(format!("--flush-ms={ms}"));
            }
            if let Some(ms) = self.connect_timeout_ms {
                args.push(format!("--connect-timeout-ms={ms}"));
            }
            args
        }
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`, `KILL`, …) to one process, by pid.
    pub fn send_signal(pid: u32, name: &str) {
        let status = Command::new("sh")
            .args(["-c", "kill -s \"$1\" \"$2\"", "sh", name, &pid.to_string()])
            .status()
            .expect("sh");
        assert!(status.success(), "kill -s {name} {pid}: {status}");
    }

    /// A running `chaos_worker` process. Its output is collected line by line; dropping the
    /// handle kills the process (and so does the end of the test process: the worker exits
    /// when its stdin closes).
    pub struct ChaosWorker {
        label: String,
        child: Child,
        _stdin: ChildStdin,
        lines: Arc<Mutex<Vec<String>>>,
        seen: watch::Receiver<usize>,
        worker_id: i64,
        status: Option<ExitStatus>,
    }

    impl ChaosWorker {
        /// Starts `program` (pass `env!("CARGO_BIN_EXE_chaos_worker")`) on the database at
        /// `url` and waits until it reports that its worker runs.
        pub async fn spawn(program: &str, url: &str, args: WorkerArgs) -> ChaosWorker {
            let mut child = Command::new(program)
                .args(args.to_args())
                // Not on the command line: `ps` would show a password.
                .env("KOYO_CHAOS_URL", url)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start the chaos worker");
            let stdin = child.stdin.take().unwrap();
            let lines: Arc<Mutex<Vec<String>>> = Arc::default();
            let (tx, seen) = watch::channel(0);
            let tx = Arc::new(tx);
            let readers: [(Box<dyn std::io::Read + Send>, &str); 2] = [
                (Box::new(child.stdout.take().unwrap()), ""),
                (Box::new(child.stderr.take().unwrap()), "stderr: "),
            ];
            for (stream, prefix) in readers {
                let (lines, tx, label) = (lines.clone(), tx.clone(), args.label.clone());
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines() {
                        let Ok(line) = line else { break };
                        // Echoed for failing tests (the harness shows it then): the runtime's
                        // warnings and errors, and anything on stderr.
                        let notable =
                            line.contains("koyo_job") && (line.contains("WARN") || line.contains("ERROR"));
                        if notable || !prefix.is_empty() {
                            eprintln!("[{label}] {prefix}{line}");
                        }
                        lines.lock().unwrap().push(format!("{prefix}{line}"));
                        tx.send_modify(|n| *n += 1);
                    }
                });
            }
            let mut worker = ChaosWorker {
                label: args.label.clone(),
                child,
                _stdin: stdin,
                lines,
                seen,
                worker_id: 0,
                status: None,
            };
            let ready = worker.wait_for_line("worker-ready", Duration::from_secs(30)).await;
            let ready =
                ready.unwrap_or_else(|| panic!("worker {} did not start: {:#?}", args.label, worker.lines()));
            worker.worker_id = ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix("id="))
                .and_then(|id| id.parse().ok())
                .expect("worker-ready names the worker id");
            worker
        }

        pub fn label(&self) -> &str {
            &self.label
        }

        pub fn pid(&self) -> u32 {
            self.child.id()
        }

        /// The id it registered with (it changes if the worker must register again).
        pub fn worker_id(&self) -> i64 {
            self.worker_id
        }

        /// Every line the process printed so far (stderr lines start with `stderr: `).
        pub fn lines(&self) -> Vec<String> {
            self.lines.lock().unwrap().clone()
        }

        /// Waits for a printed line containing `needle`, at most `within`.
        pub async fn wait_for_line(&mut self, needle: &str, within: Duration) -> Option<String> {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                if let Some(line) = self.lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
                    return Some(line.clone());
                }
                match tokio::time::timeout_at(deadline, self.seen.changed()).await {
                    Ok(Ok(())) => {}
                    // Output closed: one last look.
                    Ok(Err(_)) => {
                        return self.lines.lock().unwrap().iter().find(|l| l.contains(needle)).cloned();
                    }
                    Err(_) => return None,
                }
            }
        }

        /// Sends `STOP`, `CONT`, `TERM`, … to the process.
        pub fn signal(&self, name: &str) {
            send_signal(self.pid(), name);
        }

        /// Kills the process (`SIGKILL`) and reaps it; returns a time by which it was dead.
        pub fn kill(&mut self) -> OffsetDateTime {
            if self.status.is_none() {
                let _ = self.child.kill();
                self.status = Some(self.child.wait().expect("reap the worker"));
            }
            OffsetDateTime::now_utc()
        }

        /// The exit status, if the process has ended.
        pub fn try_exit(&mut self) -> Option<ExitStatus> {
            if self.status.is_none() {
                self.status = self.child.try_wait().expect("check on the worker");
            }
            self.status
        }

        /// Waits at most `within` for the process to end.
        pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                if let Some(status) = self.try_exit() {
                    return Some(status);
                }
                if tokio::time::Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        /// `SIGTERM`, then waits for a graceful exit (panics if it takes longer than `within`).
        pub async fn terminate(&mut self, within: Duration) -> ExitStatus {
            if self.try_exit().is_none() {
                self.signal("TERM");
            }
            let status = self.wait_exit(within).await;
            status.unwrap_or_else(|| panic!("worker {} did not stop within {within:?}", self.label))
        }

        /// The process's peak resident memory (`VmHWM`), in KiB.
        pub fn peak_rss_kib(&self) -> Option<u64> {
            let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        }
    }

    impl Drop for ChaosWorker {
        fn drop(&mut self) {
            if self.status.is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }

    /// An error and its causes on one line (tokio-postgres's errors display only their kind).
    pub fn error_chain(error: &dyn std::error::Error) -> String {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let _ = write!(text, ": {cause}");
            source = cause.source();
        }
        text
    }

    /// `OffsetDateTime` differences as readable milliseconds.
    pub fn ms(d: time::Duration) -> i64 {
        d.whole_milliseconds() as i64
    }
}
