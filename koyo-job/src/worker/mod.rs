//! Workers: claim jobs from their queues, run them, and write down how each attempt ended.
//!
//! A worker is a handful of tasks, one file each:
//!
//! - [`builder`]: the settings and the builder that validates them and starts the rest;
//! - [`main_loop`]: claims jobs (in batches, prefetching while a backlog drains), starts them
//!   in free slots, and drives shutdown;
//! - [`run`]: runs one claimed job in a task of its own and turns its end into a verdict;
//! - [`completer`]: writes verdicts in batches, fenced by the claim;
//! - [`listener`]: a dedicated LISTEN connection that turns notifications into wake-ups;
//! - [`tick`]: the periodic look around: heartbeat, rescue of lost workers' jobs, promotion of
//!   due scheduled jobs;
//! - [`pruner`]: deletes finished jobs past their retention;
//! - [`periodic`]: enqueues the due slots of periodic schedules;
//! - [`served`]: which queues this process's workers serve, to warn of jobs that none serves;
//! - [`give_back`]: hands unstarted and unfinished jobs back at shutdown.

mod builder;
mod completer;
mod give_back;
mod listener;
mod main_loop;
mod periodic;
mod pruner;
mod run;
mod served;
mod tick;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use crate::broker::Broker;
use crate::error::Error;
use crate::job::JobId;
use crate::middleware::Middleware;
use crate::registry::Registry;
use crate::{sql, text};

pub use builder::{Backoff, Retention, Worker, WorkerBuilder};
pub(crate) use run::run_body;

use builder::Settings;
use completer::ToCompleter;

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
    /// This worker's queues that have fleet-wide limits, as the last tick saw them: claimed
    /// with [`sql::CLAIM_LIMITED`] (the plain claim leaves them out).
    limited: Mutex<Vec<String>>,
    /// The last limited claim took fewer jobs than it asked for (every limited queue was at its
    /// limit or had no more ready jobs): skip limited claims until a job of one ends here, one
    /// of them gets a ready job (a notification), a tick looks again, or a rate window has room.
    limited_full: AtomicBool,
    /// Set when shutdown starts writing what is left: the completer stops retrying then.
    flush_by: watch::Sender<Option<Instant>>,
    /// This worker's queues in the process-wide count of served queues, while it lives.
    _serving: served::Serving,
}

struct RunningJob {
    claim: Claim,
    abort: AbortHandle,
    /// The attempt's context, through which an operator's cancel reaches the body.
    ctx: crate::job::JobContext,
}

impl Shared {
    /// Passes an operator's cancel of job `id` to its body, if it runs here now (a job still
    /// waiting among the prefetched ones gets it from a later tick, once it has started).
    fn cancel_running(&self, id: i64) {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(job) = running.get(&JobId(id))
            && !job.ctx.is_cancelled()
        {
            tracing::info!(job_id = id, "koyo-job stops a running job an operator cancelled");
            job.ctx.cancel();
        }
    }
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

fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read(path).ok())
        .map(|bytes| text::storable_bytes(bytes.trim_ascii(), text::MAX_HOSTNAME_BYTES))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Refuses to start on a database whose koyo-job schema is missing or older than this build
/// needs. A newer one is let through with a warning: in a rolling deploy the new version
/// migrates while workers of the old one still run, and migrations only add.
async fn check_schema(broker: &Broker) -> Result<(), Error> {
    let found: Option<i32> = broker.query_one(&sql::SCHEMA_VERSION, &[]).await?.get(0);
    let needed = koyo_job_migrate::latest_version();
    match found {
        None => Err(Error::SchemaMissing { detail: "koyo_job_migrations records no version".to_owned() }),
        Some(found) if found < needed => Err(Error::SchemaOutdated {
            detail: format!("it is at version {found}, and this build needs version {needed}"),
        }),
        Some(found) if found > needed => {
            tracing::warn!(
                found,
                known = needed,
                "koyo-job's schema is newer than this build knows; running anyway (upgrade this program)"
            );
            Ok(())
        }
        Some(_) => Ok(()),
    }
}

async fn register(broker: &Broker, settings: &Settings) -> Result<i64, Error> {
    let pid = std::process::id() as i32;
    let (queues, pool_size, lease) =
        (&settings.queues, settings.pool_size as i32, settings.lease.as_secs_f64());
    let row =
        broker.query_one(&sql::REGISTER_WORKER, &[&hostname(), &pid, queues, &pool_size, &lease]).await?;
    Ok(row.get(0))
}
