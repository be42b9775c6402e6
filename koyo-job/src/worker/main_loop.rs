//! The main loop: claims jobs into free slots (and ahead of them while a backlog drains),
//! runs the periodic tick, and drives shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::completer::ToCompleter;
use super::give_back::{release_prefetched, release_unfinished};
use super::run::{context_of, run_job};
use super::served;
use super::tick::{Tick, tick};
use super::{Claim, ClaimedJob, RunningJob, Shared};
use crate::error::{Error, QuietLog};
use crate::job::JobId;
use crate::sql;

/// Claims, ticks and finally shuts down.
pub(super) async fn main_loop(
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    listener: Option<JoinHandle<()>>,
    services: [JoinHandle<()>; 2],
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
    let started = Instant::now();
    let mut unserved_checked = false;

    loop {
        if drain_deadline.is_none() && (*stop.borrow() || stop.has_changed().is_err()) {
            let deadline = Instant::now() + shared.settings.shutdown_grace;
            drain_deadline = Some(deadline);
            // Jobs claimed ahead have not started: give them back now, for others to run (within
            // the grace: the database may be what is failing).
            let _ = tokio::time::timeout_at(deadline, release_prefetched(&shared)).await;
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
                match claim(&shared, free, limit).await {
                    Ok((jobs, next_room)) => {
                        if let Some(room) = next_room {
                            // A rate-limited queue has room again then: look at the table.
                            let at = Instant::now() + room;
                            next_due = Some(next_due.map_or(at, |due| due.min(at)));
                        }
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
        // While draining, a tick that hangs must not hold shutdown past the grace.
        let tick_by = wait_drain;
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
                tick(&shared, Tick::Periodic(ticks), tick_by, &mut may_have_work, &mut next_due, &mut tick_log).await;
                ticks += 1;
                if !unserved_checked && started.elapsed() >= served::CHECK_AFTER {
                    unserved_checked = true;
                    served::warn_unserved(shared.registry);
                }
            }
            _ = tokio::time::sleep_until(wait_due), if next_due.is_some() => {
                tick(&shared, Tick::Extra, tick_by, &mut may_have_work, &mut next_due, &mut tick_log).await;
            }
            _ = shared.tick_soon.notified() => {
                tick(&shared, Tick::Extra, tick_by, &mut may_have_work, &mut next_due, &mut tick_log).await;
            }
        }
    }

    // Whatever the database does from here on, shutdown ends by `flush_by` (plus at most a
    // second to remove the worker's row): the completer stops retrying then, and says what it
    // could not write.
    let flush_by = Instant::now() + shared.settings.flush_timeout;
    shared.flush_by.send_replace(Some(flush_by));
    if tokio::time::timeout_at(flush_by, release_unfinished(&shared)).await.is_err() {
        tracing::error!(
            "koyo-job could not give back the unfinished jobs before the flush deadline; they will be \
             rescued after the lease"
        );
    }
    if let Some(listener) = listener {
        listener.abort();
    }
    for service in services {
        service.abort();
    }
    let _ = shared.completions.send(ToCompleter::Flush);
    let abort_completer = completer.abort_handle();
    match tokio::time::timeout_at(flush_by + Duration::from_millis(500), completer).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "koyo-job completer ended abnormally"),
        Err(_) => {
            abort_completer.abort();
            tracing::error!("koyo-job completer did not stop by the flush deadline; stopped it");
        }
    }
    let worker_id = shared.worker_id.load(Ordering::Relaxed);
    let deregister_by = flush_by.max(Instant::now() + Duration::from_secs(1));
    match tokio::time::timeout_at(deregister_by, shared.broker.query(&sql::DEREGISTER_WORKER, &[&worker_id]))
        .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, worker_id, "koyo-job worker could not remove its row; it will expire")
        }
        Err(_) => {
            tracing::warn!(worker_id, "koyo-job worker could not remove its row in time; it will expire")
        }
    }
    tracing::info!(worker_id, "koyo-job worker stopped");
}

pub(super) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// How many jobs to keep prefetched while draining a backlog: enough for the pool to go on
/// through two claim round trips at the pace jobs have been ending (at least one), at most the
/// `prefetch` setting. Short jobs get the whole setting (each claim then also fetches more at
/// once); jobs that take much longer than a round trip get one, so a worker busy with long
/// jobs holds back little work that other workers could start. None until a job has ended
/// (its pace is unknown).
pub(super) fn prefetch_target(shared: &Shared, claim_time: Option<Duration>) -> usize {
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
pub(super) fn record_run_time(shared: &Shared, took: Duration) {
    let took = (took.as_micros() as u64).max(1);
    let _ = shared.run_micros.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
        Some(if avg == 0 { took } else { (avg * 7 + took) / 8 })
    });
}

pub(super) fn prefetched_len(shared: &Shared) -> usize {
    shared.prefetched.lock().unwrap_or_else(|p| p.into_inner()).len()
}

/// Waits until there is room to claim into — a free slot, or (when prefetching) fewer than half
/// of `prefetch` jobs waiting — then up to `linger` more until every slot is free (which also
/// means no prefetched job is left).
pub(super) async fn room_made(shared: &Shared, prefetch: usize, linger: Duration) {
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

/// Claims up to `limit` jobs: first, into at most `free` slots (never ahead of them: a
/// prefetched job would hold a place under the limit without running), from the queues with
/// fleet-wide limits, then the rest from the others. Also answers when a rate-limited queue at
/// its limit has room again.
pub(super) async fn claim(
    shared: &Shared,
    free: usize,
    limit: usize,
) -> Result<(Vec<ClaimedJob>, Option<Duration>), Error> {
    let worker_id = shared.worker_id.load(Ordering::Relaxed);
    let span = tracing::debug_span!("koyo_job.claim", worker_id, limit, claimed = tracing::field::Empty);
    let mut jobs = Vec::new();
    let mut next_room = None;
    // The queues with limits (copied: the lock is not held across the claim), when they may
    // have room; and whether any of this worker's queues is claimed the plain way.
    let (limited, others) = {
        let limited = shared.limited.lock().unwrap_or_else(|p| p.into_inner());
        let others = limited.len() < shared.settings.queues.len();
        let wanted = !limited.is_empty() && free > 0 && !shared.limited_full.load(Ordering::Relaxed);
        (if wanted { limited.clone() } else { Vec::new() }, others)
    };
    if !limited.is_empty() {
        let (claimed, room) =
            claim_limited(shared, &limited, free.min(limit), worker_id).instrument(span.clone()).await?;
        jobs = claimed;
        next_room = room;
    }
    // `CLAIM` leaves limited queues out: with nothing else to claim, it would find nothing.
    if jobs.len() < limit && others {
        let rest = (limit - jobs.len()) as i64;
        let rows = shared
            .broker
            .query(&sql::CLAIM, &[&shared.settings.queues, &rest, &worker_id])
            .instrument(span.clone())
            .await?;
        jobs.extend(rows.into_iter().map(|row| ClaimedJob {
            claim: Claim { id: JobId(row.get(0)), attempt: row.get(4), worker_id },
            queue: row.get(1),
            name: row.get(2),
            args: row.get(3),
            max_attempts: row.get(5),
            waited: Duration::from_secs_f64(row.get::<_, f64>(6).clamp(0.0, 1e9)),
            claimed_at: Instant::now(),
        }));
    }
    span.record("claimed", jobs.len());
    Ok((jobs, next_room))
}

/// Claims from the queues with fleet-wide limits ([`sql::CLAIM_LIMITED`]), in a transaction
/// that first locks their rows ([`sql::LOCK_LIMITED`]). Marks them full when each is at its
/// limit.
async fn claim_limited(
    shared: &Shared,
    queues: &[String],
    limit: usize,
    worker_id: i64,
) -> Result<(Vec<ClaimedJob>, Option<Duration>), Error> {
    let limit = limit as i64;
    let rows = shared
        .broker
        .transaction(&[
            (&sql::LOCK_LIMITED, &[&queues]),
            (&sql::CLAIM_LIMITED, &[&queues, &limit, &worker_id]),
        ])
        .await?;
    let Some(row) = rows.first() else { return Ok((Vec::new(), None)) };
    let ids: Vec<i64> = row.get("ids");
    let names: Vec<String> = row.get("jobs");
    let queue_names: Vec<String> = row.get("queues");
    let args: Vec<Vec<u8>> = row.get("args");
    let attempts: Vec<i32> = row.get("attempts");
    let max_attempts: Vec<i32> = row.get("max_attempts");
    let waited: Vec<f64> = row.get("waited_secs");
    shared.limited_full.store(ids.len() < limit as usize, Ordering::Relaxed);
    let next_room = row
        .get::<_, Option<f64>>("next_room_secs")
        .map(|secs| Duration::from_secs_f64(secs.clamp(0.001, 86_400.0)));
    let claimed_at = Instant::now();
    let jobs = ids
        .into_iter()
        .zip(queue_names)
        .zip(names)
        .zip(args)
        .zip(attempts.into_iter().zip(max_attempts).zip(waited))
        .map(|((((id, queue), name), args), ((attempt, max_attempts), waited))| ClaimedJob {
            claim: Claim { id: JobId(id), attempt, worker_id },
            queue,
            name,
            args,
            max_attempts,
            waited: Duration::from_secs_f64(waited.clamp(0.0, 1e9)),
            claimed_at,
        })
        .collect();
    Ok((jobs, next_room))
}

/// Starts claimed jobs in the slots `permits` holds, prefetched ones (claimed earlier) first;
/// the jobs left over wait in `prefetched`.
pub(super) fn start_jobs(shared: &Arc<Shared>, jobs: Vec<ClaimedJob>, permits: Option<OwnedSemaphorePermit>) {
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
pub(super) fn start_prefetched(shared: &Arc<Shared>) {
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
pub(super) fn spawn_job(
    shared: &Arc<Shared>,
    running: &mut HashMap<JobId, RunningJob>,
    job: ClaimedJob,
    permit: OwnedSemaphorePermit,
) {
    let claim = job.claim;
    let ctx = context_of(&job);
    let handle = tokio::spawn(run_job(shared.clone(), job, ctx.clone(), permit));
    running.insert(claim.id, RunningJob { claim, abort: handle.abort_handle(), ctx });
}
