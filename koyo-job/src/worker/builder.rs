//! A worker's settings, and the builder that checks them and starts the worker's tasks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc, watch};

use super::{
    Shared, WorkerHandle, check_schema, completer, listener, main_loop, periodic, pruner, register, served,
};
use crate::broker::Broker;
use crate::error::Error;
use crate::middleware::Middleware;
use crate::name;
use crate::periodic::Periodic;
use crate::registry::Registry;
use crate::sql;

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
                flush_timeout: Duration::from_secs(10),
                backoff: Backoff::default(),
                job_timeout: None,
                unknown_job_delay: Duration::from_secs(60),
                retention: Retention::default(),
                prune_interval: Duration::from_secs(30),
                listen: true,
                prefetch: None,
                periodic: Vec::new(),
            },
            middleware: Vec::new(),
        }
    }
}

/// Configures and starts a worker.
#[must_use = "a worker does nothing until `start` is awaited"]
pub struct WorkerBuilder {
    pub(super) broker: Broker,
    pub(super) settings: Settings,
    pub(super) middleware: Vec<Arc<dyn Middleware>>,
}

/// A worker's settings, as configured on its builder.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    pub(super) queues: Vec<String>,
    pub(super) pool_size: usize,
    pub(super) poll_interval: Duration,
    pub(super) lease: Duration,
    pub(super) shutdown_grace: Duration,
    pub(super) flush_timeout: Duration,
    pub(super) backoff: Backoff,
    pub(super) job_timeout: Option<Duration>,
    pub(super) unknown_job_delay: Duration,
    pub(super) retention: Retention,
    pub(super) prune_interval: Duration,
    pub(super) listen: bool,
    /// Jobs claimed ahead of free slots while draining a backlog; `None`: four times `pool_size`,
    /// at least 32.
    pub(super) prefetch: Option<usize>,
    /// Schedules added with [`WorkerBuilder::periodic`].
    pub(super) periodic: Vec<Periodic>,
}

impl Settings {
    /// `COMPLETE`, or `COMPLETE_DELETE` when done jobs are not kept at all.
    pub(super) fn complete_statement(&self) -> &'static sql::Statement {
        if self.retention.done == Some(Duration::ZERO) { &sql::COMPLETE_DELETE } else { &sql::COMPLETE }
    }

    /// How many claimed jobs may wait in the worker for a free slot.
    pub(super) fn prefetch(&self) -> usize {
        // At least 32: a small pool draining short jobs is bound by its claims (one commit
        // each), so it needs jobs ahead as much as a big pool does; how many it really holds
        // still follows the pace of its jobs (`prefetch_target`).
        self.prefetch.unwrap_or(self.pool_size.saturating_mul(4).clamp(32, 100_000))
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

    /// How long shutdown may spend, after the grace, writing the results of finished jobs,
    /// giving unfinished ones back and removing the worker's row (default 10 s). Whatever the
    /// database does, shutdown ends within the grace plus this; what could not be written by
    /// then is named in a log line, and those jobs are rescued after the lease.
    pub fn flush_timeout(mut self, timeout: Duration) -> Self {
        self.settings.flush_timeout = timeout;
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
    /// backlog (default: four times `pool_size`, at least 32; 0 turns prefetching off).
    /// Prefetched jobs wait in the worker, already `running` under its name and covered by its
    /// heartbeat, so a slot that frees starts the next job without a round trip, and each claim
    /// fetches more jobs at once. A worker prefetches only while its last claim came back full,
    /// and only as many jobs as its pool runs in about two claim round trips (at least one):
    /// short jobs get the whole setting, long ones one. Shutdown gives prefetched jobs back at
    /// once, their attempt not counted. If the worker dies, they are rescued with its running jobs
    /// after the lease, and the attempt counts (as for any claimed job).
    pub fn prefetch(mut self, jobs: usize) -> Self {
        self.settings.prefetch = Some(jobs);
        self
    }

    /// Adds a periodic schedule ([`Periodic`]) that this worker enqueues. Schedules defined on
    /// jobs (`#[define_job(cron = …)]`) need no call: a worker runs those of the jobs on its
    /// queues. Several workers, on any hosts, may run the same schedule: each slot still gets
    /// one job.
    pub fn periodic(mut self, periodic: Periodic) -> Self {
        self.settings.periodic.push(periodic);
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
        let schedules = self.schedules(registry)?;
        check_schema(&self.broker).await?;
        let worker_id = register(&self.broker, &self.settings).await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let slots = Arc::new(Semaphore::new(self.settings.pool_size));
        let serving = served::Serving::new(&self.settings.queues);
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
            limited: Mutex::new(Vec::new()),
            limited_full: AtomicBool::new(false),
            completions: done_tx,
            flush_by: watch::channel(None).0,
            _serving: serving,
        });
        let listener = shared.settings.listen.then(|| tokio::spawn(listener::listen(shared.clone())));
        let pruner = tokio::spawn(pruner::prune(
            shared.broker.clone(),
            shared.settings.retention,
            shared.settings.prune_interval,
        ));
        let completer = tokio::spawn(completer::complete(shared.clone(), done_rx));
        let periodic = tokio::spawn(periodic::run(shared.clone(), schedules));
        let main = tokio::spawn(main_loop::main_loop(
            shared.clone(),
            stop_rx,
            listener,
            [pruner, periodic],
            completer,
        ));
        tracing::info!(worker_id, queues = ?shared.settings.queues, pool_size = shared.settings.pool_size, "koyo-job worker started");
        Ok(WorkerHandle { shared, stop: stop_tx, main: Some(main) })
    }
}

impl WorkerBuilder {
    /// The periodic schedules this worker runs: those added to it, and those defined on the
    /// jobs of its queues. Names must differ.
    fn schedules(&self, registry: &Registry) -> Result<Vec<Periodic>, Error> {
        let mut schedules = self.settings.periodic.clone();
        let mut defined: Vec<_> = registry
            .jobs()
            .filter(|job| self.settings.queues.iter().any(|q| q == job.queue))
            .filter_map(Periodic::from_descriptor)
            .collect::<Result<_, _>>()?;
        defined.sort_by(|a, b| a.name().cmp(b.name()));
        schedules.extend(defined);
        for (i, periodic) in schedules.iter().enumerate() {
            periodic.check()?;
            if schedules[..i].iter().any(|p| p.name() == periodic.name()) {
                return Err(Error::WorkerConfig(format!(
                    "two periodic schedules are named {:?}; give each its own name",
                    periodic.name()
                )));
            }
        }
        Ok(schedules)
    }
}
