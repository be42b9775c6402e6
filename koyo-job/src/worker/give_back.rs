//! Giving jobs back at shutdown: prefetched jobs that never started, and running jobs the
//! shutdown grace did not see finish.

use std::sync::atomic::Ordering;

use super::{Claim, Shared};
use crate::error::Error;
use crate::sql;

/// At shutdown: gives back the prefetched jobs, which have not started, at once (their
/// attempt not counted). If that fails they are no longer held, so the next tick gives them
/// back; without one, they are rescued after the lease.
pub(super) async fn release_prefetched(shared: &Shared) {
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
pub(super) async fn give_back(
    shared: &Shared,
    reason: Option<&str>,
    claims: &[Claim],
) -> Result<usize, Error> {
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
pub(super) async fn release_unfinished(shared: &Shared) {
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
