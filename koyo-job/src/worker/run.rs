//! Running one claimed job: decode its arguments, run its body under its time limit and the
//! middleware, and decide how the attempt ends.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::Instrument;

use super::builder::Backoff;
use super::completer::{Completion, ToCompleter};
use super::main_loop::{record_run_time, spawn_job};
use super::{Claim, ClaimedJob, Shared};
use crate::error::JobFailure;
use crate::job::{JobContext, JobFuture};
use crate::middleware::{JobInfo, Next, Outcome};
use crate::telemetry;

/// How an attempt ends in the table.
#[derive(Debug)]
pub(super) enum Verdict {
    Done,
    /// Back to `ready` (delay 0) or `scheduled`, or to `failed` or `cancelled`; `adjust` is -1
    /// when the attempt must not count.
    Unsuccessful {
        status: &'static str,
        delay: Duration,
        error: String,
        adjust: i32,
    },
}

/// The context of a claimed job's attempt.
pub(super) fn context_of(job: &ClaimedJob) -> JobContext {
    let info = JobInfo {
        id: job.claim.id,
        queue: job.queue.clone(),
        name: job.name.clone(),
        attempt: job.claim.attempt,
        max_attempts: job.max_attempts,
    };
    JobContext::claimed(info, job.claim.worker_id)
}

pub(super) async fn run_job(
    shared: Arc<Shared>,
    job: ClaimedJob,
    ctx: JobContext,
    permit: OwnedSemaphorePermit,
) {
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
            Verdict::Unsuccessful { status: "cancelled", .. } => Some(telemetry::Ended::Cancelled),
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
        replaced: false,
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

/// How long a cancelled job's body may go on before it is dropped.
const CANCEL_GRACE: Duration = Duration::from_secs(1);

/// Runs one attempt and decides how it ends.
pub(super) async fn attempt(shared: &Shared, job: &ClaimedJob, ctx: &JobContext) -> Verdict {
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
    // A cancelled job that did not succeed ends cancelled, whatever made it stop.
    let outcome = match outcome {
        Err(_) if ctx.is_cancelled() => Err(JobFailure::Cancelled),
        outcome => outcome,
    };
    if let Err(failure) = &outcome {
        tracing::debug!(%failure, "koyo-job attempt did not succeed");
    }
    verdict_for(outcome, attempt, job.max_attempts, &shared.settings.backoff)
}

pub(super) fn verdict_for(outcome: Outcome, attempt: i32, max_attempts: i32, backoff: &Backoff) -> Verdict {
    let failure = match outcome {
        Ok(()) => return Verdict::Done,
        Err(failure) => failure,
    };
    let error = failure.to_string();
    if failure == JobFailure::Cancelled {
        return Verdict::Unsuccessful { status: "cancelled", delay: Duration::ZERO, error, adjust: 0 };
    }
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
    // Once an operator cancels the job, the body has `CANCEL_GRACE` to notice
    // (`koyo_job::cancelled`) and end on its own before it is dropped.
    let cancelling = ctx.clone();
    let stopped = async move {
        cancelling.cancellation().await;
        tokio::time::sleep(CANCEL_GRACE).await;
    };
    let caught = AssertUnwindSafe(ctx.scope(async move {
        let timed = async move {
            match timeout {
                Some(limit) => {
                    tokio::time::timeout(limit, body).await.map_err(|_| JobFailure::TimedOut(limit))
                }
                None => Ok(body.await),
            }
        };
        tokio::select! {
            biased;
            result = timed => result,
            () = stopped => Err(JobFailure::Cancelled),
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

pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-string payload".to_owned())
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
        let cancelled = verdict_for(Err(JobFailure::Cancelled), 1, 3, &b);
        assert!(
            matches!(cancelled, Verdict::Unsuccessful { status: "cancelled", adjust: 0, .. }),
            "not retried"
        );
        let later = verdict_for(Err(JobFailure::Panicked("p".into())), 1, 3, &b);
        assert!(matches!(later, Verdict::Unsuccessful { status: "scheduled", .. }));
    }
}
