//! The tick: a worker's periodic look at the table, in one round trip — its heartbeat, the
//! rescue of jobs whose worker stopped heartbeating, the promotion of due scheduled jobs, the
//! give-back of claims whose reply was lost, and the queue gauges.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::{Shared, register};
use crate::error::{Error, QuietLog};
use crate::job::JobId;
use crate::{sql, telemetry};

/// Which tick this is: the periodic ones (numbered) also rescue, and every
/// [`Tick::SAMPLE_EVERY`]th samples the queue gauges; the others only look at the table.
#[derive(Clone, Copy)]
pub(super) enum Tick {
    Periodic(u64),
    Extra,
}

impl Tick {
    const SAMPLE_EVERY: u64 = 15;
}

/// One round trip of housekeeping; see [`sql::TICK`].
/// Gives up at `by` (the end of the shutdown grace, while draining), so that a tick on a hung
/// database cannot hold shutdown past it.
pub(super) async fn tick(
    shared: &Shared,
    which: Tick,
    by: Instant,
    may_have_work: &mut bool,
    next_due: &mut Option<Instant>,
    log: &mut QuietLog,
) {
    let (rescue, sample) = match which {
        Tick::Periodic(n) => (true, n % Tick::SAMPLE_EVERY == 0),
        Tick::Extra => (false, false),
    };
    let Ok(answer) = tokio::time::timeout_at(by, try_tick(shared, rescue, sample)).await else {
        return;
    };
    match answer {
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

pub(super) struct TickReport {
    ready: bool,
    promoted: i64,
    rescued: i64,
    next_due_secs: Option<f64>,
}

pub(super) async fn try_tick(shared: &Shared, rescue: bool, sample: bool) -> Result<TickReport, Error> {
    let worker_id = shared.worker_id.load(Ordering::Relaxed);
    let held: Vec<i64> = shared.held.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
    let row = shared
        .broker
        .query_one(&sql::TICK, &[&worker_id, &shared.settings.queues, &rescue, &held, &sample])
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
    let limited: Vec<String> = row.get("limited");
    *shared.limited.lock().unwrap_or_else(|p| p.into_inner()) = limited;
    // Look at the limited queues again at the next claim: their jobs may have ended elsewhere.
    shared.limited_full.store(false, Ordering::Relaxed);
    let cancel: Option<Vec<i64>> = row.get("cancel_ids");
    for id in cancel.unwrap_or_default() {
        shared.cancel_running(id);
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
pub(super) fn stop_jobs_claimed_as(shared: &Shared, worker_id: i64) -> usize {
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
