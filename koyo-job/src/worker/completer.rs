//! The completer: writes how attempts ended, in batches, each row fenced by its claim.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;

use super::run::Verdict;
use super::{Claim, Shared};
use crate::error::{Error, QuietLog};
use crate::{sql, text};

pub(super) struct Completion {
    pub(super) claim: Claim,
    pub(super) queue: String,
    pub(super) verdict: Verdict,
    /// The body already marked the job done in its own transaction (`complete_in`); if that
    /// committed, this write is expected to find nothing to change.
    pub(super) completed_in_tx: bool,
    /// The verdict's error is a replacement for one the database refused.
    pub(super) replaced: bool,
}

/// What the completer receives.
pub(super) enum ToCompleter {
    Result(Completion),
    /// Write what has queued up, then stop (sent at shutdown).
    Flush,
}

/// Writes attempt results, batching whatever has queued up since the last write. At shutdown
/// (once `shared.flush_by` holds a deadline) it stops retrying at that deadline, and says in
/// one log line which results it could not write.
pub(super) async fn complete(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<ToCompleter>) {
    const MAX_BATCH: usize = 1000;
    let mut writer = Writer {
        shared: &shared,
        log: QuietLog::new("worker", "writing job results"),
        flush_by: shared.flush_by.subscribe(),
        unwritten: Vec::new(),
    };
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
        writer.write(batch).await;
    }
    if !writer.unwritten.is_empty() {
        let ids: Vec<i64> = writer.unwritten.iter().map(|c| c.id.0).collect();
        tracing::error!(
            jobs = ids.len(),
            ?ids,
            "koyo-job could not write these job results before stopping; the jobs stay running \
             until this worker's lease runs out, then are rescued and run again"
        );
    }
}

/// How one write of a batch ended, short of success.
enum Unwritten {
    /// The database refused the rows themselves (SQLSTATE class 22 or 23): the same statement
    /// would fail again.
    Refused(Error),
    /// Shutdown's flush deadline passed before the batch could be written.
    OutOfTime,
}

struct Writer<'a> {
    shared: &'a Shared,
    log: QuietLog,
    /// The shutdown's deadline for writing results, once shutdown has reached that point.
    flush_by: watch::Receiver<Option<Instant>>,
    /// Claims whose result was not written by the flush deadline.
    unwritten: Vec<Claim>,
}

impl Writer<'_> {
    /// Writes a batch. A batch the database refuses is split in halves, and each half written
    /// on its own, so that one bad row holds back no other; a single row it refuses is written
    /// once more with a replacement error that says what happened and, should that be refused
    /// too, logged and left to the tick, which gives the job back. Other failures (the
    /// connection, a time-out) are retried with backoff until they succeed or the flush
    /// deadline passes.
    async fn write(&mut self, batch: Vec<Completion>) {
        let mut todo = vec![batch];
        while let Some(mut part) = todo.pop() {
            if part.is_empty() {
                continue;
            }
            match self.write_retrying(&part).await {
                Ok(()) => {
                    self.forget(&part);
                    self.room_under_limits(&part);
                }
                Err(Unwritten::OutOfTime) => {
                    self.forget(&part);
                    self.unwritten.extend(part.iter().map(|c| c.claim));
                }
                Err(Unwritten::Refused(_)) if part.len() > 1 => {
                    let second = part.split_off(part.len() / 2);
                    todo.push(second);
                    todo.push(part);
                }
                Err(Unwritten::Refused(error)) => {
                    let completion = part.pop().expect("one row");
                    match completion.replacement(&error) {
                        Some(replacement) => {
                            tracing::warn!(
                                job_id = %completion.claim.id, attempt = completion.claim.attempt, %error,
                                "koyo-job could not store a job's result as it was; storing a replacement error instead"
                            );
                            todo.push(vec![replacement]);
                        }
                        None => {
                            tracing::error!(
                                job_id = %completion.claim.id, attempt = completion.claim.attempt, %error,
                                "koyo-job could not store a job's result even with a replacement error; \
                                 the worker gives the job back, to run again"
                            );
                            self.forget(std::slice::from_ref(&completion));
                        }
                    }
                }
            }
        }
    }

    /// Writes `batch`, retrying failures the database may get over. Once shutdown sets the
    /// flush deadline, a write in progress is abandoned when it passes.
    async fn write_retrying(&mut self, batch: &[Completion]) -> Result<(), Unwritten> {
        let mut pause = Duration::from_millis(50);
        // A failover (another host took over) ends the wait: the next try goes to the new host.
        let mut failovers = self.shared.broker.hosts().subscribe();
        loop {
            let attempt = write_batch(self.shared, batch);
            tokio::pin!(attempt);
            let written = loop {
                let deadline = *self.flush_by.borrow_and_update();
                match deadline {
                    Some(by) => match tokio::time::timeout_at(by, &mut attempt).await {
                        Ok(written) => break written,
                        Err(_) => return Err(Unwritten::OutOfTime),
                    },
                    None => tokio::select! {
                        written = &mut attempt => break written,
                        changed = self.flush_by.changed() => if changed.is_err() { break attempt.await },
                    },
                }
            };
            match written {
                Ok(()) => return Ok(()),
                Err(e) if e.is_permanent() => return Err(Unwritten::Refused(e)),
                Err(e) => self.log.error(&e),
            }
            let deadline = *self.flush_by.borrow_and_update();
            if deadline.is_some_and(|by| Instant::now() >= by) {
                return Err(Unwritten::OutOfTime);
            }
            // Wait before the next try, but no longer than the flush deadline (set meanwhile, or
            // already set).
            let wake = Instant::now() + pause;
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.map_or(wake, |by| by.min(wake))) => {}
                _ = self.flush_by.changed() => {}
                Ok(()) = failovers.changed() => {
                    pause = Duration::from_millis(25);
                }
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// A job of a queue with a fleet-wide limit has ended (and that is written): there may be
    /// room under the limit again, so claim from the limited queues at once.
    fn room_under_limits(&self, batch: &[Completion]) {
        let limited = self.shared.limited.lock().unwrap_or_else(|p| p.into_inner());
        if !limited.is_empty() && batch.iter().any(|c| limited.contains(&c.queue)) {
            drop(limited);
            self.shared.limited_full.store(false, std::sync::atomic::Ordering::Relaxed);
            self.shared.wake.notify_one();
        }
    }

    /// The jobs of `batch` are no longer held by this worker: written, given up, or left to the
    /// tick to give back.
    fn forget(&self, batch: &[Completion]) {
        let mut held = self.shared.held.lock().unwrap_or_else(|p| p.into_inner());
        for c in batch {
            held.remove(&c.claim.id.0);
        }
    }
}

impl Completion {
    /// The same end of the attempt with an error text that only says what happened, for a row
    /// the database refused as it was; `None` if this already is such a replacement.
    fn replacement(&self, refused: &Error) -> Option<Completion> {
        if self.replaced {
            return None;
        }
        let (status, delay, adjust, what) = match &self.verdict {
            Verdict::Done => ("failed", Duration::ZERO, 0, "it succeeded, but marking it done"),
            Verdict::Unsuccessful { status, delay, adjust, .. } => {
                (*status, *delay, *adjust, "it did not succeed, and storing its error")
            }
        };
        let error = format!(
            "koyo-job could not store how this attempt ended: {what} was refused by the database ({})",
            refused.sqlstate().unwrap_or("no SQLSTATE")
        );
        Some(Completion {
            claim: self.claim,
            queue: self.queue.clone(),
            verdict: Verdict::Unsuccessful { status, delay, error, adjust },
            completed_in_tx: self.completed_in_tx,
            replaced: true,
        })
    }
}

pub(super) async fn write_batch(shared: &Shared, batch: &[Completion]) -> Result<(), Error> {
    let span = tracing::debug_span!("koyo_job.complete", jobs = batch.len(), written = tracing::field::Empty);
    write_batch_in(shared, batch, &span).instrument(span.clone()).await
}

pub(super) async fn write_batch_in(
    shared: &Shared,
    batch: &[Completion],
    span: &tracing::Span,
) -> Result<(), Error> {
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
                other.errors.push(text::storable(error, text::MAX_ERROR_BYTES));
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
pub(super) struct Unsuccessful<'a> {
    ids: Vec<i64>,
    attempts: Vec<i32>,
    statuses: Vec<&'a str>,
    delays: Vec<f64>,
    errors: Vec<std::borrow::Cow<'a, str>>,
    adjusts: Vec<i32>,
}
