//! The periodic enqueuer: enqueues the job of each due slot of the worker's periodic schedules.
//!
//! Every worker that knows a schedule runs it; they need not agree on anything but the
//! database. Each look reads the database's time, and for each schedule enqueues the latest
//! slot at or before it that this worker has not handled yet — one job, never one per slot
//! missed — with a unique key made of the schedule's name and the slot, so that the workers
//! that see the same slot store one job between them. It then sleeps until the earliest next
//! slot (by the database's clock, timed locally), at most [`LOOK_EVERY`].
//!
//! Which slots count as handled when the worker starts decides the missed-slot policy: a
//! schedule no worker ran before starts with its next slot (a slot less than [`CURRENT`] old
//! counts as the current one); otherwise slots after the last one any worker enqueued are due,
//! the latest of them at once ([`Missed::RunLatest`]), or only from the current one on
//! ([`Missed::Skip`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;

use super::Shared;
use crate::broker::Broker;
use crate::error::{Error, QuietLog};
use crate::periodic::{Missed, Periodic};
use crate::sql;
use crate::unique::Enqueued;

/// The longest a look waits for the next: rows stay fresh for the admin page, and a changed
/// database clock is noticed.
const LOOK_EVERY: Duration = Duration::from_secs(30);

/// How old a slot may be when a worker starts and still count as the current one.
const CURRENT: time::Duration = time::Duration::seconds(1);

pub(super) async fn run(shared: Arc<Shared>, schedules: Vec<Periodic>) {
    if schedules.is_empty() {
        return;
    }
    let mut log = QuietLog::new("worker", "enqueuing periodic jobs");
    let retry = shared.settings.poll_interval;
    let (started, last_slots) = loop {
        match register(&shared, &schedules).await {
            Ok(registered) => break registered,
            Err(e) => log.error(&e),
        }
        tokio::time::sleep(retry).await;
    };
    let mut handled: Vec<Option<OffsetDateTime>> = schedules
        .iter()
        .zip(last_slots)
        .map(|(schedule, last)| {
            let current = started - CURRENT;
            Some(match (last, schedule.missed_policy()) {
                (None, _) => current,
                (Some(last), Missed::RunLatest) => last,
                (Some(last), _) => last.max(current),
            })
        })
        .collect();
    let mut now = (started, Instant::now());
    loop {
        let next = match look(&shared, &schedules, &mut handled, now.0).await {
            Ok(next) => next,
            Err(e) => {
                log.error(&e);
                None
            }
        };
        let wait = match next {
            Some(next) => Duration::try_from(next - now.0).unwrap_or(Duration::ZERO).min(LOOK_EVERY),
            None => retry.min(LOOK_EVERY),
        };
        tokio::time::sleep_until(now.1 + wait).await;
        now = loop {
            match database_now(&shared.broker).await {
                Ok(db_now) => break (db_now, Instant::now()),
                Err(e) => log.error(&e),
            }
            tokio::time::sleep(retry).await;
        };
    }
}

/// Records the schedules and returns the database's time and, per schedule, the latest slot
/// any worker enqueued.
async fn register(
    shared: &Shared,
    schedules: &[Periodic],
) -> Result<(OffsetDateTime, Vec<Option<OffsetDateTime>>), Error> {
    let mut columns: [Vec<String>; 6] = Default::default();
    for periodic in schedules {
        let job = periodic.job()?;
        let values = [
            periodic.name().to_owned(),
            job.name.to_owned(),
            job.queue.to_owned(),
            periodic.schedule().expression().to_owned(),
            periodic.schedule().time_zone().to_owned(),
            periodic.missed_policy().as_str().to_owned(),
        ];
        for (column, value) in columns.iter_mut().zip(values) {
            column.push(value);
        }
    }
    let worker_id = shared.worker_id.load(Ordering::Relaxed);
    let [names, jobs, queues, expressions, zones, missed] = &columns;
    let row = shared
        .broker
        .query_one(&sql::PERIODIC_REGISTER, &[names, jobs, queues, expressions, zones, missed, &worker_id])
        .await?;
    let returned: Vec<String> = row.get("names");
    let slots: Vec<Option<OffsetDateTime>> = row.get("last_slots");
    let last =
        names.iter().map(|name| returned.iter().position(|n| n == name).and_then(|at| slots[at])).collect();
    Ok((row.get("now"), last))
}

async fn database_now(broker: &Broker) -> Result<OffsetDateTime, Error> {
    Ok(broker.query_one(&sql::NOW, &[]).await?.get(0))
}

/// One look at time `now`: enqueues each schedule's latest unhandled slot, records what it did,
/// and returns the earliest next slot.
async fn look(
    shared: &Shared,
    schedules: &[Periodic],
    handled: &mut [Option<OffsetDateTime>],
    now: OffsetDateTime,
) -> Result<Option<OffsetDateTime>, Error> {
    let (mut names, mut slots, mut ids, mut nexts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (periodic, handled) in schedules.iter().zip(handled.iter_mut()) {
        let schedule = periodic.schedule();
        let due = schedule.latest_at_or_before(now).filter(|slot| handled.is_none_or(|h| *slot > h));
        let mut enqueued = None;
        if let Some(slot) = due {
            let answer = shared.broker.enqueue_unique(periodic.job_for(slot)?).await?;
            *handled = Some(slot);
            if let Enqueued::Created(id) = answer {
                tracing::debug!(schedule = periodic.name(), %slot, job_id = %id, "koyo-job enqueued a periodic job");
            }
            enqueued = answer.id().map(|id| id.0);
        }
        names.push(periodic.name().to_owned());
        slots.push(due.filter(|_| enqueued.is_some()));
        ids.push(enqueued);
        nexts.push(schedule.next_after(now));
    }
    let worker_id = shared.worker_id.load(Ordering::Relaxed);
    shared.broker.query(&sql::PERIODIC_SEEN, &[&names, &slots, &ids, &nexts, &worker_id]).await?;
    Ok(nexts.into_iter().flatten().min())
}
