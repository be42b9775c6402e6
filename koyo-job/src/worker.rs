//! Workers: claim jobs from their queues, run them, and write down how each attempt ended.
//!
//! A worker is three tasks: the main loop (claims, heartbeats, promotion of scheduled jobs,
//! shutdown), the listener (a dedicated LISTEN connection that turns notifications into wake-ups)
//! and the completer (writes attempt results in batches). Each job runs in a task of its own.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::poll_fn;
use std::hash::BuildHasher;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::Instrument;

use crate::broker::Broker;
use crate::error::{Error, JobFailure, QuietLog};
use crate::job::{JobContext, JobFuture, JobId};
use crate::middleware::{JobInfo, Middleware, Next, Outcome};
use crate::name;
use crate::registry::Registry;
use crate::{sql, telemetry};

/// How long a job waits before its next attempt: exponential in the attempt number, capped,
/// with ±25 % jitter so jobs that failed together do not retry together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// `base` after the first attempt, doubling after each further one, never over `max`.
    pub fn exponential(base: Duration, max: Duration) -> Self {
        Backoff { base, max: max.max(base) }
    }

    /// The delay after `attempt` (1-based) failed.
    pub fn delay(&self, attempt: i32) -> Duration {
        let doublings = attempt.saturating_sub(1).clamp(0, 32) as u32;
        let nominal = self.base.saturating_mul(1 << doublings.min(31)).min(self.max);
        let unit = std::collections::hash_map::RandomState::new().hash_one(attempt) as f64 / u64::MAX as f64;
        nominal.mul_f64(0.75 + 0.5 * unit).min(self.max)
    }
}

impl Default for Backoff {
    /// 1 s, 2 s, 4 s, … up to one hour.
    fn default() -> Self {
        Backoff::exponential(Duration::from_secs(1), Duration::from_secs(3600))
    }
}

/// How long finished jobs are kept before workers delete them. `None` keeps them forever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Jobs that succeeded (default one day).
    pub done: Option<Duration>,
    /// Jobs that ran out of attempts or could not be decoded (default one week).
    pub failed: Option<Duration>,
    /// Jobs an operator cancelled (default one week).
    pub cancelled: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        let day = Duration::from_secs(86_400);
        Retention { done: Some(day), failed: Some(day * 7), cancelled: Some(day * 7) }
    }
}

impl Retention {
    /// Keeps every finished job forever (as koyo does).
    pub fn forever() -> Self {
        Retention { done: None, failed: None, cancelled: None }
    }
}

/// Starts workers. See [`Worker::builder`].
#[derive(Debug)]
pub struct Worker;

impl Worker {
    /// A worker on `broker` with koyo's defaults: queue `"default"`, 8 jobs at once.
    pub fn builder(broker: Broker) -> WorkerBuilder {
        WorkerBuilder {
            broker,
            settings: Settings {
                queues: Vec::new(),
                pool_size: 8,
                poll_interval: Duration::from_secs(1),
                lease: Duration::from_secs(30),
                shutdown_grace: Duration::from_secs(60),
                backoff: Backoff::default(),
                job_timeout: None,
                unknown_job_delay: Duration::from_secs(60),
                retention: Retention::default(),
                prune_interval: Duration::from_secs(30),
                listen: true,
                prefetch: None,
            },
            middleware: Vec::new(),
        }
    }
}

/// Configures and starts a worker.
#[must_use = "a worker does nothing until `start` is awaited"]
pub struct WorkerBuilder {
    broker: Broker,
    settings: Settings,
    middleware: Vec<Arc<dyn Middleware>>,
}

/// A worker's settings, as configured on its builder.
#[derive(Clone, Debug)]
struct Settings {
    queues: Vec<String>,
    pool_size: usize,
    poll_interval: Duration,
    lease: Duration,
    shutdown_grace: Duration,
    backoff: Backoff,
    job_timeout: Option<Duration>,
    unknown_job_delay: Duration,
    retention: Retention,
    prune_interval: Duration,
    listen: bool,
    /// Jobs claimed ahead of free slots while draining a backlog; `None`: four times `pool_size`.
    prefetch: Option<usize>,
}

impl Settings {
    /// `COMPLETE`, or `COMPLETE_DELETE` when done jobs are not kept at all.
    fn complete_statement(&self) -> &'static sql::Statement {
        if self.retention.done == Some(Duration::ZERO) { &sql::COMPLETE_DELETE } else { &sql::COMPLETE }
    }

    /// How many claimed jobs may wait in the worker for a free slot.
    fn prefetch(&self) -> usize {
        self.prefetch.unwrap_or(self.pool_size.saturating_mul(4).min(100_000))
    }
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// Adds a queue to serve (default: `"default"` when none is added).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.settings.queues.push(queue.into());
        self
    }

    /// Adds several queues to serve.
    pub fn queues<I: IntoIterator<Item = S>, S: Into<String>>(mut self, queues: I) -> Self {
        self.settings.queues.extend(queues.into_iter().map(Into::into));
        self
    }

    /// How many jobs run at once (default 8).
    pub fn pool_size(mut self, pool_size: usize) -> Self {
        self.settings.pool_size = pool_size;
        self
    }

    /// How often the worker looks at the table even with no notification: heartbeat, rescue,
    /// promotion of due scheduled jobs, and a check for ready jobs whose notification was lost
    /// (default 1 s: one cheap query per second when idle).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.settings.poll_interval = every;
        self
    }

    /// How long a worker may go without a heartbeat before others declare it dead and give its
    /// running jobs back (default 30 s). Heartbeats are sent every poll interval, so this must be
    /// at least three poll intervals.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = lease;
        self
    }

    /// How long shutdown waits for running jobs before giving them back (default 60 s, as koyo).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.settings.shutdown_grace = grace;
        self
    }

    /// The delay between failed attempts (default 1 s doubling to 1 h).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.settings.backoff = backoff;
        self
    }

    /// A time limit for jobs that set none of their own (default: none).
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.settings.job_timeout = Some(timeout);
        self
    }

    /// How long a job this binary does not know is put back before another worker may claim it
    /// (default 60 s).
    pub fn unknown_job_delay(mut self, delay: Duration) -> Self {
        self.settings.unknown_job_delay = delay;
        self
    }

    /// How long finished jobs are kept (default: done one day, failed and cancelled one week).
    /// Every worker deletes expired rows in batches of 1,000, oldest first. With `done` set to
    /// zero, successful jobs are deleted as they complete, in the completion statement itself
    /// (the fastest setting, when no one needs to look at finished jobs).
    pub fn retention(mut self, retention: Retention) -> Self {
        self.settings.retention = retention;
        self
    }

    /// How often the worker deletes expired finished jobs (default 30 s).
    pub fn prune_interval(mut self, every: Duration) -> Self {
        self.settings.prune_interval = every;
        self
    }

    /// Whether to LISTEN for notifications (default true). Turn it off behind PgBouncer in
    /// transaction mode: the worker then finds work by polling alone.
    pub fn listen(mut self, listen: bool) -> Self {
        self.settings.listen = listen;
        self
    }

    /// At most how many jobs beyond its free slots the worker claims ahead while it drains a
    /// backlog (default: four times `pool_size`; 0 turns prefetching off). Prefetched jobs wait in
    /// the worker, already `running` under its name and covered by its heartbeat, so a slot
    /// that frees starts the next job without a round trip, and each claim fetches more jobs at
    /// once. A worker prefetches only while its last claim came back full, and only as many
    /// jobs as its pool runs in about two claim round trips (at least one): short jobs get the
    /// whole setting, long ones one. Shutdown gives prefetched jobs back at once, their attempt
    /// not counted. If the worker dies, they are rescued with its running jobs after the lease,
    /// and the attempt counts (as for any claimed job).
    pub fn prefetch(mut self, jobs: usize) -> Self {
        self.settings.prefetch = Some(jobs);
        self
    }

    /// Wraps every job run. The first added is the outermost.
    pub fn middleware(mut self, middleware: impl Middleware) -> Self {
        self.middleware.push(Arc::new(middleware));
        self
    }

    /// Registers the worker and starts it. Fails if the configuration cannot work, if the job
    /// definitions linked into this binary conflict, or if the database cannot be reached.
    pub async fn start(mut self) -> Result<WorkerHandle, Error> {
        if self.settings.queues.is_empty() {
            self.settings.queues.push("default".to_owned());
        }
        self.settings.queues.sort();
        self.settings.queues.dedup();
        for queue in &self.settings.queues {
            name::check_queue(queue)?;
        }
        if self.settings.pool_size == 0 || self.settings.pool_size > Semaphore::MAX_PERMITS.min(100_000) {
            return Err(Error::WorkerConfig(format!(
                "pool_size must be from 1 to 100000, not {}",
                self.settings.pool_size
            )));
        }
        if self.settings.prefetch() > 100_000 {
            return Err(Error::WorkerConfig(format!(
                "prefetch must be from 0 to 100000, not {}",
                self.settings.prefetch()
            )));
        }
        if self.settings.poll_interval.is_zero() || self.settings.lease < self.settings.poll_interval * 3 {
            return Err(Error::WorkerConfig(format!(
                "the lease ({:?}) must be at least three poll intervals ({:?}), which must not be zero",
                self.settings.lease, self.settings.poll_interval
            )));
        }
        let registry = Registry::global()?;
        let worker_id = register(&self.broker, &self.settings).await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let slots = Arc::new(Semaphore::new(self.settings.pool_size));
        let shared = Arc::new(Shared {
            broker: self.broker,
            registry,
            settings: self.settings,
            middleware: self.middleware,
            worker_id: AtomicI64::new(worker_id),
            slots,
            wake: Notify::new(),
            tick_soon: Notify::new(),
            running: Mutex::new(HashMap::new()),
            prefetched: Mutex::new(VecDeque::new()),
            room: Notify::new(),
            prefetch_target: AtomicUsize::new(0),
            run_micros: AtomicU64::new(0),
            held: Mutex::new(HashSet::new()),
            completions: done_tx,
        });
        let listener = shared.settings.listen.then(|| tokio::spawn(listen(shared.clone())));
        let pruner = tokio::spawn(prune(
            shared.broker.clone(),
            shared.settings.retention,
            shared.settings.prune_interval,
        ));
        let completer = tokio::spawn(complete(shared.clone(), done_rx));
        let main = tokio::spawn(main_loop(shared.clone(), stop_rx, listener, pruner, completer));
        tracing::info!(worker_id, queues = ?shared.settings.queues, pool_size = shared.settings.pool_size, "koyo-job worker started");
        Ok(WorkerHandle { shared, stop: stop_tx, main: Some(main) })
    }
}

/// A running worker. Call [`WorkerHandle::shutdown`] to stop it gracefully; dropping the handle
/// starts the same shutdown in the background.
#[derive(Debug)]
pub struct WorkerHandle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    main: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// This worker's id in `koyo_workers` (it changes if the worker had to register again after
    /// being declared dead).
    pub fn id(&self) -> i64 {
        self.shared.worker_id.load(Ordering::Relaxed)
    }

    /// How many jobs are running now.
    pub fn in_flight(&self) -> usize {
        self.shared.settings.pool_size - self.shared.slots.available_permits()
    }

    /// Stops claiming, waits up to the shutdown grace for running jobs to finish, gives the
    /// rest back to be run elsewhere (their interrupted attempt not counted), writes every
    /// pending result and removes the worker's row.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(main) = self.main.take()
            && let Err(e) = main.await
        {
            tracing::error!(error = %e, "koyo-job worker task ended abnormally");
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.worker_id.load(Ordering::Relaxed))
            .field("queues", &self.settings.queues)
            .field("pool_size", &self.settings.pool_size)
            .finish_non_exhaustive()
    }
}

struct Shared {
    broker: Broker,
    registry: &'static Registry,
    settings: Settings,
    middleware: Vec<Arc<dyn Middleware>>,
    worker_id: AtomicI64,
    /// One permit per job slot; a job holds one until its body ends.
    slots: Arc<Semaphore>,
    /// Ready work may be waiting: claim.
    wake: Notify,
    /// Something was scheduled: look at the table (promotion, next due time) soon.
    tick_soon: Notify,
    /// Jobs whose body is still running, for giving them back at shutdown.
    running: Mutex<HashMap<JobId, RunningJob>>,
    /// Jobs claimed ahead, waiting for a free slot, in claim order. A job task that ends
    /// starts the first of them in its slot. Lock order: `running`, `prefetched`, `held`.
    prefetched: Mutex<VecDeque<ClaimedJob>>,
    /// A job task took a prefetched job and left fewer than half of `prefetch_target` waiting.
    room: Notify,
    /// How many jobs to keep prefetched now (see [`prefetch_target`]); set by the main loop.
    prefetch_target: AtomicUsize,
    /// Moving average of job run times in microseconds (0: none has ended yet).
    run_micros: AtomicU64,
    /// Ids of the jobs this worker claimed and has not yet written a result for or given back.
    /// The tick gives back jobs the table says this worker holds that are not here: claims
    /// whose reply never arrived (the statement timed out, the connection broke) but which
    /// the server committed.
    held: Mutex<HashSet<i64>>,
    completions: mpsc::UnboundedSender<ToCompleter>,
}

struct RunningJob {
    claim: Claim,
    abort: AbortHandle,
}

/// What fences every write about one attempt: the job, the attempt number and the worker
/// that claimed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Claim {
    id: JobId,
    attempt: i32,
    worker_id: i64,
}

struct ClaimedJob {
    claim: Claim,
    queue: String,
    name: String,
    args: Vec<u8>,
    max_attempts: i32,
    /// How long it was due before this claim.
    waited: Duration,
    /// When the claim came back (a prefetched job may wait in the worker before it starts).
    claimed_at: Instant,
}

/// How an attempt ends in the table.
#[derive(Debug)]
enum Verdict {
    Done,
    /// Back to `ready` (delay 0) or `scheduled`, or to `failed`; `adjust` is -1 when the
    /// attempt must not count.
    Unsuccessful {
        status: &'static str,
        delay: Duration,
        error: String,
        adjust: i32,
    },
}

struct Completion {
    claim: Claim,
    queue: String,
    verdict: Verdict,
    /// The body already marked the job done in its own transaction (`complete_in`); if that
    /// committed, this write is expected to find nothing to change.
    completed_in_tx: bool,
}

fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

async fn register(broker: &Broker, settings: &Settings) -> Result<i64, Error> {
    let pid = std::process::id() as i32;
    let (queues, pool_size, lease) =
        (&settings.queues, settings.pool_size as i32, settings.lease.as_secs_f64());
    let row =
        broker.query_one(&sql::REGISTER_WORKER, &[&hostname(), &pid, queues, &pool_size, &lease]).await?;
    Ok(row.get(0))
}

/// Claims, ticks and finally shuts down.
async fn main_loop(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    listener: Option<JoinHandle<()>>,
    pruner: JoinHandle<()>,
    completer: JoinHandle<()>,
) {
    let mut may_have_work = true;
    let mut next_tick = Instant::now();
    let mut next_due: Option<Instant> = None;
    let mut claim_log = QuietLog::new("worker", "claiming jobs");
    let mut tick_log = QuietLog::new("worker", "heartbeat");
    let mut retry_at: Option<Instant> = None;
    let mut drain_deadline: Option<Instant> = None;
    // Claim in batches: while draining a backlog (the last claim came back full), claim ahead
    // of the free slots (up to `prefetch` jobs wait in the worker), and wait briefly (up to
    // `LINGER`) for every slot to be free and the prefetched jobs to be taken, so a stream of
    // short jobs is claimed a whole pool and prefetch at a time rather than one by one.
    // Otherwise (an idle or partly busy worker woken by a notification or a tick) claim the
    // free slots at once: no latency is added to a lone job, and no job is held back from
    // other workers.
    const LINGER: Duration = Duration::from_millis(3);
    let pool = shared.settings.pool_size;
    let mut claim_time: Option<Duration> = None;
    let mut lingered = false;
    let mut backlog = false;
    let mut ticks: u64 = 0;

    loop {
        if drain_deadline.is_none() && (*stop.borrow() || stop.has_changed().is_err()) {
            drain_deadline = Some(Instant::now() + shared.settings.shutdown_grace);
            // Jobs claimed ahead have not started: give them back now, for others to run.
            release_prefetched(&shared).await;
        }
        let draining = drain_deadline.is_some();
        if draining && shared.slots.available_permits() == pool {
            break;
        }
        if !draining {
            // Slots freed while the buffer was being refilled.
            start_prefetched(&shared);
        }

        let prefetch = if backlog { prefetch_target(&shared, claim_time) } else { 0 };
        shared.prefetch_target.store(prefetch, Ordering::Relaxed);
        let free = shared.slots.available_permits();
        let ahead = prefetch.saturating_sub(prefetched_len(&shared));
        let want = free + ahead;
        let batch = pool + prefetch;
        let retry_pending = retry_at.is_some_and(|at| at > Instant::now());
        if !draining && may_have_work && want > 0 && (want >= batch || lingered || !backlog) && !retry_pending
        {
            lingered = false;
            let permits =
                if free > 0 { shared.slots.clone().try_acquire_many_owned(free as u32).ok() } else { None };
            let free = permits.as_ref().map_or(0, |p| p.num_permits());
            let limit = free + ahead;
            if limit > 0 {
                let sent = Instant::now();
                match claim(&shared, limit).await {
                    Ok(jobs) => {
                        let took = sent.elapsed();
                        claim_time = Some(claim_time.map_or(took, |avg| (avg * 7 + took) / 8));
                        retry_at = None;
                        may_have_work = jobs.len() == limit;
                        backlog = may_have_work;
                        start_jobs(&shared, jobs, permits);
                    }
                    Err(e) => {
                        claim_log.error(&e);
                        retry_at = Some(Instant::now() + shared.settings.poll_interval);
                    }
                }
                continue;
            }
        }

        let wait_due = next_due.unwrap_or_else(far_future);
        let wait_retry = retry_at.unwrap_or_else(far_future);
        let wait_drain = drain_deadline.unwrap_or_else(far_future);
        tokio::select! {
            _ = stop.changed(), if !draining => {}
            _ = shared.wake.notified() => may_have_work = true,
            _ = room_made(&shared, prefetch, if backlog { LINGER } else { Duration::ZERO }),
                if may_have_work && want < batch && !draining && !retry_pending => {
                lingered = true;
            }
            _ = shared.slots.acquire(), if draining => {}
            _ = tokio::time::sleep_until(wait_retry), if retry_pending => {}
            _ = tokio::time::sleep_until(wait_drain), if draining => break,
            _ = tokio::time::sleep_until(next_tick) => {
                next_tick = Instant::now() + shared.settings.poll_interval;
                tick(&shared, Tick::Periodic(ticks), &mut may_have_work, &mut next_due, &mut tick_log).await;
                ticks += 1;
            }
            _ = tokio::time::sleep_until(wait_due), if next_due.is_some() => {
                tick(&shared, Tick::Extra, &mut may_have_work, &mut next_due, &mut tick_log).await;
            }
            _ = shared.tick_soon.notified() => {
                tick(&shared, Tick::Extra, &mut may_have_work, &mut next_due, &mut tick_log).await;
            }
        }
    }

    release_unfinished(&shared).await;
    if let Some(listener) = listener {
        listener.abort();
    }
    pruner.abort();
    let _ = shared.completions.send(ToCompleter::Flush);
    if let Err(e) = completer.await {
        tracing::error!(error = %e, "koyo-job completer ended abnormally");
    }
    let worker_id = shared.worker_id.load(Ordering::Relaxed);
    if let Err(e) = shared.broker.query(&sql::DEREGISTER_WORKER, &[&worker_id]).await {
        tracing::warn!(error = %e, worker_id, "koyo-job worker could not remove its row; it will expire");
    }
    tracing::info!(worker_id, "koyo-job worker stopped");
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// How many jobs to keep prefetched while draining a backlog: enough for the pool to go on
/// through two claim round trips at the pace jobs have been ending (at least one), at most the
/// `prefetch` setting. Short jobs get the whole setting (each claim then also fetches more at
/// once); jobs that take much longer than a round trip get one, so a worker busy with long
/// jobs holds back little work that other workers could start. None until a job has ended
/// (its pace is unknown).
fn prefetch_target(shared: &Shared, claim_time: Option<Duration>) -> usize {
    let max = shared.settings.prefetch();
    let run_micros = u128::from(shared.run_micros.load(Ordering::Relaxed));
    match claim_time {
        Some(claim) if run_micros > 0 => {
            let pool = shared.settings.pool_size as u128;
            let fit = (2 * pool * claim.as_micros()).div_ceil(run_micros).max(1);
            fit.min(max as u128) as usize
        }
        _ => 0,
    }
}

/// Adds a job's run time to the moving average.
fn record_run_time(shared: &Shared, took: Duration) {
    let took = (took.as_micros() as u64).max(1);
    let _ = shared.run_micros.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
        Some(if avg == 0 { took } else { (avg * 7 + took) / 8 })
    });
}

fn prefetched_len(shared: &Shared) -> usize {
    shared.prefetched.lock().unwrap_or_else(|p| p.into_inner()).len()
}

/// Waits until there is room to claim into — a free slot, or (when prefetching) fewer than half
/// of `prefetch` jobs waiting — then up to `linger` more until every slot is free (which also
/// means no prefetched job is left).
async fn room_made(shared: &Shared, prefetch: usize, linger: Duration) {
    if prefetch == 0 {
        if let Ok(permit) = shared.slots.acquire().await {
            drop(permit);
        }
    } else {
        loop {
            let notified = shared.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if prefetched_len(shared) * 2 < prefetch {
                break;
            }
            notified.await;
        }
    }
    let _ = tokio::time::timeout(linger, shared.slots.acquire_many(shared.settings.pool_size as u32)).await;
}

/// Which tick this is: the periodic ones (numbered) also rescue, and every
/// [`Tick::SAMPLE_EVERY`]th samples the queue gauges; the others only look at the table.
#[derive(Clone, Copy)]
enum Tick {
    Periodic(u64),
    Extra,
}

impl Tick {
    const SAMPLE_EVERY: u64 = 15;
}

/// One round trip of housekeeping; see [`sql::TICK`].
async fn tick(
    shared: &Shared,
    which: Tick,
    may_have_work: &mut bool,
    next_due: &mut Option<Instant>,
    log: &mut QuietLog,
) {
    let (rescue, sample) = match which {
        Tick::Periodic(n) => (true, n % Tick::SAMPLE_EVERY == 0),
        Tick::Extra => (false, false),
    };
    match try_tick(shared, rescue, sample).await {
        Ok(report) => {
            *may_have_work |= report.ready || report.promoted > 0;
            *next_due = report.next_due_secs.map(|secs| {
                // Our timer and the database's clock disagree slightly; never spin.
                Instant::now() + Duration::from_secs_f64(secs.clamp(0.001, 86_400.0))
            });
            if report.rescued > 0 {
                telemetry::rescued(report.rescued as u64);
                tracing::warn!(
                    rescued = report.rescued,
                    "koyo-job gave back jobs of workers that stopped heartbeating"
                );
            }
        }
        Err(e) => log.error(&e),
    }
}

struct TickReport {
    ready: bool,
    promoted: i64,
    rescued: i64,
    next_due_secs: Option<f64>,
}

async fn try_tick(shared: &Shared, rescue: bool, sample: bool) -> Result<TickReport, Error> {
    let worker_id = shared.worker_id.load(Ordering::Relaxed);
    let lease = shared.settings.lease.as_secs_f64();
    let held: Vec<i64> = shared.held.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
    let row = shared
        .broker
        .query_one(&sql::TICK, &[&worker_id, &shared.settings.queues, &lease, &rescue, &held, &sample])
        .await?;
    if !row.get::<_, bool>("alive") {
        // Another worker declared us dead (we missed heartbeats) and gave our jobs back; they
        // may already run elsewhere, and their results here would be fenced out: stop them,
        // then carry on under a new identity.
        let stopped = stop_jobs_claimed_as(shared, worker_id);
        let new_id = register(&shared.broker, &shared.settings).await?;
        shared.worker_id.store(new_id, Ordering::Relaxed);
        tracing::warn!(
            old = worker_id,
            new = new_id,
            stopped,
            "koyo-job worker lost its lease and registered again; it stopped the jobs it had lost"
        );
    }
    if sample {
        let queues: Vec<String> = row.get::<_, Option<_>>("depth_queues").unwrap_or_default();
        let ready: Vec<i64> = row.get::<_, Option<_>>("depth_ready").unwrap_or_default();
        let lag: Vec<Option<f64>> = row.get::<_, Option<_>>("depth_lag_secs").unwrap_or_default();
        for ((queue, ready), lag) in queues.iter().zip(ready).zip(lag) {
            telemetry::queue_depth(queue, ready, lag);
        }
    }
    let orphaned: i64 = row.get("orphaned");
    if orphaned > 0 {
        tracing::warn!(
            orphaned,
            "koyo-job gave back jobs claimed in this worker's name whose claim never reached it (reply lost)"
        );
    }
    Ok(TickReport {
        ready: row.get("ready"),
        promoted: row.get("promoted"),
        rescued: row.get("rescued"),
        next_due_secs: row.get("next_due_secs"),
    })
}

/// Stops the bodies of the jobs this worker claimed as `worker_id` (an identity it has lost:
/// the jobs were given back to be run elsewhere). Returns how many were stopped.
fn stop_jobs_claimed_as(shared: &Shared, worker_id: i64) -> usize {
    let mut running = shared.running.lock().unwrap_or_else(|p| p.into_inner());
    let lost: Vec<JobId> =
        running.iter().filter(|(_, job)| job.claim.worker_id == worker_id).map(|(id, _)| *id).collect();
    // Prefetched jobs claimed under that identity were given back too: drop them unstarted.
    let mut prefetched = shared.prefetched.lock().unwrap_or_else(|p| p.into_inner());
    let mut dropped = Vec::new();
    prefetched.retain(|job| {
        let keep = job.claim.worker_id != worker_id;
        if !keep {
            dropped.push(job.claim.id);
        }
        keep
    });
    let mut held = shared.held.lock().unwrap_or_else(|p| p.into_inner());
    for id in &lost {
        if let Some(job) = running.remove(id) {
            job.abort.abort();
        }
        held.remove(&id.0);
    }
    for id in &dropped {
        held.remove(&id.0);
    }
    lost.len() + dropped.len()
}

async fn claim(shared: &Shared, limit: usize) -> Result<Vec<ClaimedJob>, Error> {
    let worker_id = shared.worker_id.load(Ordering::Relaxed);
    let span = tracing::debug_span!("koyo_job.claim", worker_id, limit, claimed = tracing::field::Empty);
    let rows = shared
        .broker
        .query(&sql::CLAIM, &[&shared.settings.queues, &(limit as i64), &worker_id])
        .instrument(span.clone())
        .await?;
    span.record("claimed", rows.len());
    Ok(rows
        .into_iter()
        .map(|row| ClaimedJob {
            claim: Claim { id: JobId(row.get(0)), attempt: row.get(4), worker_id },
            queue: row.get(1),
            name: row.get(2),
            args: row.get(3),
            max_attempts: row.get(5),
            waited: Duration::from_secs_f64(row.get::<_, f64>(6).clamp(0.0, 1e9)),
            claimed_at: Instant::now(),
        })
        .collect())
}

/// Starts claimed jobs in the slots `permits` holds, prefetched ones (claimed earlier) first;
/// the jobs left over wait in `prefetched`.
fn start_jobs(shared: &Arc<Shared>, jobs: Vec<ClaimedJob>, permits: Option<OwnedSemaphorePermit>) {
    shared.held.lock().unwrap_or_else(|p| p.into_inner()).extend(jobs.iter().map(|job| job.claim.id.0));
    let mut running = shared.running.lock().unwrap_or_else(|p| p.into_inner());
    let mut prefetched = shared.prefetched.lock().unwrap_or_else(|p| p.into_inner());
    prefetched.extend(jobs);
    if let Some(mut permits) = permits {
        while let Some(permit) = permits.split(1) {
            let Some(job) = prefetched.pop_front() else { break };
            spawn_job(shared, &mut running, job, permit);
        }
        // Unused permits (fewer jobs than free slots) are returned here.
        drop(permits);
    }
}

/// Starts prefetched jobs in the slots that are free.
fn start_prefetched(shared: &Arc<Shared>) {
    let free = shared.slots.available_permits();
    if free == 0 || prefetched_len(shared) == 0 {
        return;
    }
    if let Ok(permits) = shared.slots.clone().try_acquire_many_owned(free as u32) {
        start_jobs(shared, Vec::new(), Some(permits));
    }
}

/// Spawns a job's task; called with the `running` lock held, so the task (which removes itself
/// from `running` under that lock) cannot end before it has been inserted.
fn spawn_job(
    shared: &Arc<Shared>,
    running: &mut HashMap<JobId, RunningJob>,
    job: ClaimedJob,
    permit: OwnedSemaphorePermit,
) {
    let claim = job.claim;
    let handle = tokio::spawn(run_job(shared.clone(), job, permit));
    running.insert(claim.id, RunningJob { claim, abort: handle.abort_handle() });
}

async fn run_job(shared: Arc<Shared>, job: ClaimedJob, permit: OwnedSemaphorePermit) {
    let info = JobInfo {
        id: job.claim.id,
        queue: job.queue.clone(),
        name: job.name.clone(),
        attempt: job.claim.attempt,
        max_attempts: job.max_attempts,
    };
    let ctx = JobContext::claimed(info, job.claim.worker_id);
    // The parent span of everything the job logs.
    let span = tracing::info_span!(
        "koyo_job.run",
        job.id = job.claim.id.0,
        job.queue = %job.queue,
        job.name = %job.name,
        job.attempt = job.claim.attempt,
    );
    if let Some(info) = ctx.info() {
        telemetry::started(info, job.waited + job.claimed_at.elapsed());
    }
    let ran = Instant::now();
    let verdict = attempt(&shared, &job, &ctx).instrument(span).await;
    record_run_time(&shared, ran.elapsed());
    if let Some(info) = ctx.info() {
        let how = match &verdict {
            Verdict::Done => Some(telemetry::Ended::Completed),
            Verdict::Unsuccessful { status: "failed", .. } => Some(telemetry::Ended::Failed),
            // A job this binary does not know was not run: nothing to count.
            Verdict::Unsuccessful { adjust: -1, .. } => None,
            Verdict::Unsuccessful { .. } => Some(telemetry::Ended::Retried),
        };
        if let Some(how) = how {
            telemetry::ended(info, how, ran.elapsed());
        }
    }
    let claim = job.claim;
    // Only our own entry: the same job may have been claimed again since, under a new id.
    let mut running = shared.running.lock().unwrap_or_else(|p| p.into_inner());
    if running.get(&claim.id).is_some_and(|r| r.claim == claim) {
        running.remove(&claim.id);
    }
    // Sent while the slot is still held, so that shutdown (which waits for every slot) cannot
    // flush the completer before this result is queued.
    let _ = shared.completions.send(ToCompleter::Result(Completion {
        claim,
        queue: job.queue,
        verdict,
        completed_in_tx: ctx.completed_in_tx(),
    }));
    // The slot goes to the next prefetched job, if one waits.
    let prefetch = shared.prefetch_target.load(Ordering::Relaxed);
    let mut prefetched = shared.prefetched.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(next) = prefetched.pop_front() {
        if prefetched.len() * 2 < prefetch {
            shared.room.notify_one();
        }
        spawn_job(&shared, &mut running, next, permit);
    } else {
        drop(permit);
    }
}

/// Runs one attempt and decides how it ends.
async fn attempt(shared: &Shared, job: &ClaimedJob, ctx: &JobContext) -> Verdict {
    let Claim { id, attempt, .. } = job.claim;
    let Some(descriptor) = shared.registry.get(&job.name) else {
        tracing::warn!(job_id = %id, job = %job.name, "koyo-job claimed a job this binary does not define; putting it back");
        return Verdict::Unsuccessful {
            status: "scheduled",
            delay: shared.settings.unknown_job_delay,
            error: format!(
                "no job named {:?} is defined in the worker binary that claimed it (worker {}); \
                 it waits for a worker that defines it",
                job.name, job.claim.worker_id
            ),
            adjust: -1,
        };
    };
    let body = match (descriptor.run)(&job.args, ctx.clone()) {
        Ok(body) => body,
        Err(e) => {
            tracing::error!(job_id = %id, job = %job.name, error = %e, "koyo-job cannot decode a job's arguments; failing it");
            return Verdict::Unsuccessful {
                status: "failed",
                delay: Duration::ZERO,
                error: e.to_string(),
                adjust: 0,
            };
        }
    };
    let timeout = descriptor.timeout.or(shared.settings.job_timeout);
    let body_ctx = ctx.clone();
    let mut next = Next { fut: Box::pin(async move { run_body(body, &body_ctx, timeout).await }) };
    if let Some(info) = ctx.info() {
        for middleware in shared.middleware.iter().rev() {
            next = Next { fut: middleware.wrap(info.clone(), next) };
        }
    }
    let outcome: Outcome = AssertUnwindSafe(next.run())
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(JobFailure::Panicked(panic_message(&*panic))));
    if let Err(failure) = &outcome {
        tracing::debug!(%failure, "koyo-job attempt did not succeed");
    }
    verdict_for(outcome, attempt, job.max_attempts, &shared.settings.backoff)
}

fn verdict_for(outcome: Outcome, attempt: i32, max_attempts: i32, backoff: &Backoff) -> Verdict {
    let failure = match outcome {
        Ok(()) => return Verdict::Done,
        Err(failure) => failure,
    };
    let error = failure.to_string();
    if attempt >= max_attempts {
        let error = format!("{error} (attempt {attempt} of {max_attempts}; no attempts left)");
        return Verdict::Unsuccessful { status: "failed", delay: Duration::ZERO, error, adjust: 0 };
    }
    let delay = match failure {
        JobFailure::RetryRequested { delay: Some(delay), .. } => delay,
        _ => backoff.delay(attempt),
    };
    let status = if delay.is_zero() { "ready" } else { "scheduled" };
    Verdict::Unsuccessful { status, delay, error, adjust: 0 }
}

/// Runs a job body with its time limit, turning errors, panics, time-outs and `retry!` into
/// one outcome. Also used by synchronous mode.
pub(crate) async fn run_body(body: JobFuture, ctx: &JobContext, timeout: Option<Duration>) -> Outcome {
    let caught = AssertUnwindSafe(ctx.scope(async move {
        match timeout {
            Some(limit) => tokio::time::timeout(limit, body).await.map_err(|_| JobFailure::TimedOut(limit)),
            None => Ok(body.await),
        }
    }))
    .catch_unwind()
    .await;
    let result = match caught {
        Err(panic) => return Err(JobFailure::Panicked(panic_message(&*panic))),
        Ok(Err(timed_out)) => return Err(timed_out),
        Ok(Ok(result)) => result,
    };
    match (result, ctx.take_retry()) {
        (Err(message), _) => Err(JobFailure::Error(message)),
        (Ok(()), Some(retry)) => Err(JobFailure::RetryRequested { delay: retry.delay, reason: retry.reason }),
        (Ok(()), None) => Ok(()),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-string payload".to_owned())
}

/// What the completer receives.
enum ToCompleter {
    Result(Completion),
    /// Write what has queued up, then stop (sent at shutdown).
    Flush,
}

/// Writes attempt results, batching whatever has queued up since the last write.
async fn complete(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<ToCompleter>) {
    const MAX_BATCH: usize = 1000;
    let mut log = QuietLog::new("worker", "writing job results");
    let mut last = false;
    while !last {
        let Some(first) = rx.recv().await else { break };
        let mut batch = Vec::with_capacity(16);
        for message in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match message {
                ToCompleter::Result(completion) => batch.push(completion),
                ToCompleter::Flush => last = true,
            }
            if batch.len() == MAX_BATCH {
                break;
            }
        }
        write_until_done(&shared, &batch, &mut log, last).await;
    }
}

/// Retries a batch write until it succeeds; fenced-out rows are logged, never retried. At
/// shutdown it gives up after the lease: the jobs will then be rescued and run again.
async fn write_until_done(shared: &Shared, batch: &[Completion], log: &mut QuietLog, last: bool) {
    if batch.is_empty() {
        return;
    }
    let give_up = Instant::now() + shared.settings.lease;
    let mut pause = Duration::from_millis(50);
    loop {
        match write_batch(shared, batch).await {
            Ok(()) => {
                let mut held = shared.held.lock().unwrap_or_else(|p| p.into_inner());
                for c in batch {
                    held.remove(&c.claim.id.0);
                }
                return;
            }
            Err(e) => log.error(&e),
        }
        if last && Instant::now() >= give_up {
            tracing::error!(
                jobs = batch.len(),
                "koyo-job could not write job results before stopping; they will run again"
            );
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

async fn write_batch(shared: &Shared, batch: &[Completion]) -> Result<(), Error> {
    let span = tracing::debug_span!("koyo_job.complete", jobs = batch.len(), written = tracing::field::Empty);
    write_batch_in(shared, batch, &span).instrument(span.clone()).await
}

async fn write_batch_in(shared: &Shared, batch: &[Completion], span: &tracing::Span) -> Result<(), Error> {
    let mut written: Vec<i64> = Vec::with_capacity(batch.len());
    let mut rescheduled = false;
    // A batch normally holds one worker id; after a re-registration it can hold two.
    let mut worker_ids: Vec<i64> = batch.iter().map(|c| c.claim.worker_id).collect();
    worker_ids.sort_unstable();
    worker_ids.dedup();
    for worker_id in worker_ids {
        let mine = || batch.iter().filter(move |c| c.claim.worker_id == worker_id);
        let (done_ids, done_attempts): (Vec<i64>, Vec<i32>) = mine()
            .filter(|c| matches!(c.verdict, Verdict::Done))
            .map(|c| (c.claim.id.0, c.claim.attempt))
            .unzip();
        if !done_ids.is_empty() {
            let rows = shared
                .broker
                .query(shared.settings.complete_statement(), &[&done_ids, &done_attempts, &worker_id])
                .await?;
            written.extend(rows.iter().map(|r| r.get::<_, i64>(0)));
        }
        let mut other = Unsuccessful::default();
        for c in mine() {
            if let Verdict::Unsuccessful { status, delay, error, adjust } = &c.verdict {
                other.ids.push(c.claim.id.0);
                other.attempts.push(c.claim.attempt);
                other.statuses.push(status);
                other.delays.push(delay.as_secs_f64());
                other.errors.push(error);
                other.adjusts.push(*adjust);
                rescheduled |= *status == "scheduled";
            }
        }
        if !other.ids.is_empty() {
            let row = shared
                .broker
                .query_one(
                    &sql::FINISH_UNSUCCESSFUL,
                    &[
                        &other.ids,
                        &other.attempts,
                        &other.statuses,
                        &other.delays,
                        &other.errors,
                        &worker_id,
                        &other.adjusts,
                    ],
                )
                .await?;
            written.extend(row.get::<_, Vec<i64>>(0));
        }
    }
    span.record("written", written.len());
    if written.len() < batch.len() {
        written.sort_unstable();
        for c in batch.iter().filter(|c| written.binary_search(&c.claim.id.0).is_err()) {
            if c.completed_in_tx {
                continue;
            }
            tracing::warn!(
                job_id = %c.claim.id, attempt = c.claim.attempt, queue = %c.queue,
                "koyo-job discarded a result: the job was given to another worker (lease lost)"
            );
        }
    }
    if rescheduled {
        shared.tick_soon.notify_one();
    }
    Ok(())
}

#[derive(Default)]
struct Unsuccessful<'a> {
    ids: Vec<i64>,
    attempts: Vec<i32>,
    statuses: Vec<&'a str>,
    delays: Vec<f64>,
    errors: Vec<&'a str>,
    adjusts: Vec<i32>,
}

/// At shutdown: gives back the prefetched jobs, which have not started, at once (their
/// attempt not counted). If that fails they are no longer held, so the next tick gives them
/// back; without one, they are rescued after the lease.
async fn release_prefetched(shared: &Shared) {
    let waiting: Vec<Claim> = {
        let mut prefetched = shared.prefetched.lock().unwrap_or_else(|p| p.into_inner());
        let mut held = shared.held.lock().unwrap_or_else(|p| p.into_inner());
        prefetched
            .drain(..)
            .map(|job| {
                held.remove(&job.claim.id.0);
                job.claim
            })
            .collect()
    };
    if waiting.is_empty() {
        return;
    }
    match give_back(shared, None, &waiting).await {
        Ok(released) => tracing::debug!(released, "koyo-job gave back prefetched jobs at shutdown"),
        Err(e) => {
            tracing::warn!(error = %e, jobs = waiting.len(), "koyo-job could not give back prefetched jobs at shutdown; they will be given back later")
        }
    }
}

/// Gives jobs back ([`sql::RELEASE`]) with `reason` as their last error (`None` keeps theirs),
/// one statement per worker identity they were claimed under. Returns how many were given back.
async fn give_back(shared: &Shared, reason: Option<&str>, claims: &[Claim]) -> Result<usize, Error> {
    let mut released = 0;
    let worker_ids: std::collections::BTreeSet<i64> = claims.iter().map(|c| c.worker_id).collect();
    for worker_id in worker_ids {
        let (ids, attempts): (Vec<i64>, Vec<i32>) =
            claims.iter().filter(|c| c.worker_id == worker_id).map(|c| (c.id.0, c.attempt)).unzip();
        let row = shared.broker.query_one(&sql::RELEASE, &[&ids, &attempts, &worker_id, &reason]).await?;
        released += row.get::<_, Vec<i64>>(0).len();
    }
    Ok(released)
}

/// At shutdown, after the grace period: stops the jobs still running and gives them back.
async fn release_unfinished(shared: &Shared) {
    release_prefetched(shared).await;
    let unfinished: Vec<Claim> = {
        let mut running = shared.running.lock().unwrap_or_else(|p| p.into_inner());
        running
            .drain()
            .map(|(_, job)| {
                job.abort.abort();
                job.claim
            })
            .collect()
    };
    if unfinished.is_empty() {
        return;
    }
    let worker_id = shared.worker_id.load(Ordering::Relaxed);
    tracing::warn!(jobs = unfinished.len(), "koyo-job shutdown grace is over; giving running jobs back");
    match give_back(shared, Some("released at worker shutdown before it finished"), &unfinished).await {
        Ok(released) => tracing::info!(released, worker_id, "koyo-job released unfinished jobs"),
        Err(e) => {
            tracing::error!(error = %e, "koyo-job could not release unfinished jobs; they will be rescued after the lease")
        }
    }
}

/// Deletes expired finished jobs every `every`, in batches, until a batch comes back short.
/// While there is nothing to delete it looks less and less often (up to 32 × `every`), so an
/// idle worker costs about one query a second (its tick) and nothing more.
async fn prune(broker: Broker, retention: Retention, every: Duration) {
    const BATCH: i64 = 1000;
    if retention == Retention::forever() {
        return;
    }
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let (done, failed, cancelled) = (secs(retention.done), secs(retention.failed), secs(retention.cancelled));
    let mut log = QuietLog::new("worker", "deleting expired finished jobs");
    // The first look is at start-up; afterwards every `pause`.
    let mut pause = Duration::ZERO;
    loop {
        tokio::time::sleep(pause).await;
        let mut deleted = 0;
        loop {
            match broker.query(&sql::PRUNE, &[&done, &failed, &cancelled, &BATCH]).await {
                Ok(rows) => {
                    deleted += rows.len();
                    if (rows.len() as i64) < BATCH {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    log.error(&e);
                    break;
                }
            }
        }
        // Nothing to delete: look half as often each time, from twice `every` (the start-up
        // look finding nothing is the usual case of a fresh or quiet queue), up to 32 times.
        pause = if deleted > 0 { every } else { (pause * 2).clamp(every * 2, every * 32) };
    }
}

/// Keeps a LISTEN connection open and turns notifications for this worker's queues into
/// wake-ups. Reconnects with backoff; after every (re)connect the worker claims at once, to
/// catch up on anything announced while it was away.
async fn listen(shared: Arc<Shared>) {
    let mut pause = Duration::from_millis(100);
    let mut log = QuietLog::new("worker", "listening for notifications");
    loop {
        let started = Instant::now();
        if let Err(e) = listen_once(&shared).await {
            log.error(&e);
        }
        if started.elapsed() > Duration::from_secs(30) {
            pause = Duration::from_millis(100);
        }
        let jitter = pause
            .mul_f64(std::collections::hash_map::RandomState::new().hash_one(0) as f64 / u64::MAX as f64);
        tokio::time::sleep(pause + jitter / 2).await;
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

async fn listen_once(shared: &Shared) -> Result<(), Error> {
    // connect_timeout covers only the TCP connect; a hung server also stalls the start-up
    // handshake, so bound the whole of it.
    let limit = shared.broker.options().connect_timeout;
    let (client, mut connection) = tokio::time::timeout(limit, shared.broker.config().connect(NoTls))
        .await
        .map_err(|_| Error::Timeout(limit))??;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    });
    let _abort_driver = AbortOnDrop(driver.abort_handle());
    tokio::time::timeout(limit, client.batch_execute(sql::LISTEN))
        .await
        .map_err(|_| Error::Timeout(limit))??;
    shared.wake.notify_one();
    shared.tick_soon.notify_one();
    while let Some(n) = rx.recv().await {
        if !shared.settings.queues.iter().any(|q| q == n.payload()) {
            continue;
        }
        match n.channel() {
            sql::READY_CHANNEL => shared.wake.notify_one(),
            sql::SCHEDULED_CHANNEL => shared.tick_soon.notify_one(),
            _ => {}
        }
    }
    drop(client);
    match driver.await {
        Ok(result) => Ok(result?),
        Err(_) => Ok(()),
    }
}

struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60));
        for attempt in 1..=3 {
            let nominal = Duration::from_secs(1 << (attempt - 1));
            let d = b.delay(attempt);
            assert!(d >= nominal.mul_f64(0.75) && d <= nominal.mul_f64(1.25), "attempt {attempt}: {d:?}");
        }
        assert!(b.delay(40) <= Duration::from_secs(60));
        assert!(b.delay(0) <= Duration::from_secs(2));
    }

    #[test]
    fn verdicts_follow_attempts() {
        let b = Backoff::exponential(Duration::from_millis(10), Duration::from_millis(10));
        assert!(matches!(verdict_for(Ok(()), 1, 3, &b), Verdict::Done));
        let failed = verdict_for(Err(JobFailure::Error("boom".into())), 3, 3, &b);
        assert!(
            matches!(failed, Verdict::Unsuccessful { status: "failed", ref error, .. } if error.contains("boom"))
        );
        let retry = verdict_for(
            Err(JobFailure::RetryRequested { delay: Some(Duration::ZERO), reason: None }),
            1,
            3,
            &b,
        );
        assert!(matches!(retry, Verdict::Unsuccessful { status: "ready", .. }));
        let later = verdict_for(Err(JobFailure::Panicked("p".into())), 1, 3, &b);
        assert!(matches!(later, Verdict::Unsuccessful { status: "scheduled", .. }));
    }
}
