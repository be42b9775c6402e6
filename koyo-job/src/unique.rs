//! Unique jobs: at most one job with the same key holds it at a time, enforced by a unique
//! index (`koyo_jobs_unique`, schema version 5), never by looking first.
//!
//! A unique job's key is its name plus what makes it unique — a hash of its arguments (the
//! default), its queue, or a key the application chose — and, with [`Unique::per`], the period
//! of the database's clock it was enqueued in. The job holds its key while it is scheduled,
//! ready or running, and in the finished states chosen with [`Unique::while_finished`] (by
//! default none; `done` when a period is set). A second job whose key is held is not stored:
//! the caller gets [`Enqueued::Existing`] with the id of the job that holds it.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

use time::OffsetDateTime;

use crate::broker::{self, Broker, Executor};
use crate::error::Error;
use crate::job::{IntoNewJob, Job, JobArgument, JobId, NewJob};

/// A state a job can be in (the `status` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JobState {
    /// Waiting for its due time.
    Scheduled,
    /// Due, waiting for a worker.
    Ready,
    /// Claimed by a worker.
    Running,
    /// Succeeded.
    Done,
    /// Ran out of attempts, or could not be run.
    Failed,
    /// Cancelled by an operator.
    Cancelled,
}

impl JobState {
    /// Every state, in the order of their bits in `unique_states`.
    pub const ALL: [JobState; 6] = [
        JobState::Scheduled,
        JobState::Ready,
        JobState::Running,
        JobState::Done,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The state's name in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Ready => "ready",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The state's bit in `unique_states`.
    const fn bit(self) -> i16 {
        match self {
            JobState::Scheduled => 1,
            JobState::Ready => 2,
            JobState::Running => 4,
            JobState::Done => 8,
            JobState::Failed => 16,
            JobState::Cancelled => 32,
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The states in which a unique job always holds its key: while it waits or runs.
const WAITING_OR_RUNNING: i16 = 1 | 2 | 4;

/// What makes two jobs of one name the same job.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Scope {
    /// Their arguments are equal (compared as stored bytes).
    Args,
    /// They go to the same queue, whatever their arguments.
    Queue,
    /// The application gave them the same key.
    Key(String),
}

/// How a job is kept unique: what makes two jobs the same, for how long, and what a second one
/// does. Set it on a definition (`#[define_job(unique)]`, `unique = "queue"`, `unique_for =
/// "1h"`) or per call with [`Job::unique`].
///
/// ```no_run
/// use std::time::Duration;
/// use koyo_job::{Enqueued, Unique, define_job};
///
/// #[define_job]
/// async fn refresh_feed(feed_id: i64) {}
///
/// # async fn demo() -> Result<(), koyo_job::Error> {
/// // At most one refresh per feed per hour, however often it is asked for.
/// let once_an_hour = Unique::by_args().per(Duration::from_secs(3600));
/// match refresh_feed(7).unique(once_an_hour).await? {
///     Enqueued::Created(id) => println!("job {id} will refresh it"),
///     Enqueued::Existing(id) => println!("job {id} already does"),
///     other => println!("{other:?}"),
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unique {
    scope: Scope,
    period: Option<Duration>,
    /// Finished states that hold the key too (bits of [`JobState`]); `None`: the default.
    finished: Option<i16>,
    replace: bool,
}

impl Unique {
    /// The longest key [`Unique::by_key`] accepts, in bytes.
    pub const MAX_KEY_BYTES: usize = 1000;

    /// Jobs of the same name with equal arguments are the same job (the default).
    pub fn by_args() -> Unique {
        Unique { scope: Scope::Args, period: None, finished: None, replace: false }
    }

    /// Jobs of the same name on the same queue are the same job, whatever their arguments: at
    /// most one of them waits or runs at a time.
    pub fn by_queue() -> Unique {
        Unique { scope: Scope::Queue, ..Unique::by_args() }
    }

    /// Jobs of the same name given the same `key` are the same job, whatever their arguments.
    /// The key may not be empty, hold a NUL character or exceed [`Unique::MAX_KEY_BYTES`].
    pub fn by_key(key: impl Into<String>) -> Unique {
        Unique { scope: Scope::Key(key.into()), ..Unique::by_args() }
    }

    /// At most one such job per `period` of the database's clock (periods start at the Unix
    /// epoch, and a job belongs to the period it was enqueued in). Unless
    /// [`Unique::while_finished`] says otherwise, a job that finished `done` keeps holding its
    /// key for the rest of its period.
    pub fn per(mut self, period: Duration) -> Unique {
        self.period = Some(period);
        self
    }

    /// Which finished states also hold the key (a job always holds it while it is scheduled,
    /// ready or running): e.g. `[JobState::Done]` for "not again once it succeeded", `[]` for
    /// "again as soon as it finished". Waiting and running states in the list change nothing.
    /// Default: none, or `done` with [`Unique::per`].
    ///
    /// Keys of finished jobs are forgotten when the jobs are pruned ([`crate::Retention`]).
    pub fn while_finished(mut self, states: &[JobState]) -> Unique {
        self.finished = Some(states.iter().fold(0, |bits, s| bits | s.bit()) & !WAITING_OR_RUNNING);
        self
    }

    /// A second job replaces the first instead of being dropped, while the first still waits:
    /// the waiting job takes the new arguments, priority and due time (a debounce: each call
    /// pushes the run back), and the answer is [`Enqueued::Replaced`]. If the first is already
    /// running, it keeps running but gives up its key, and the second is stored as a new job.
    pub fn replace(mut self) -> Unique {
        self.replace = true;
        self
    }

    /// The bits of the states that hold the key.
    pub(crate) fn states(&self) -> i16 {
        let finished = self.finished.unwrap_or(if self.period.is_some() { JobState::Done.bit() } else { 0 });
        WAITING_OR_RUNNING | finished
    }

    /// Checks the options and turns them into what the insert statement takes.
    pub(crate) fn to_row(&self) -> Result<UniqueRow, Error> {
        let (scope, key) = match &self.scope {
            Scope::Args => ("args", None),
            Scope::Queue => ("queue", None),
            Scope::Key(key) => {
                let why = if key.is_empty() {
                    Some("it is empty")
                } else if key.contains('\0') {
                    Some("it holds a NUL character")
                } else if key.len() > Unique::MAX_KEY_BYTES {
                    Some("it is longer than 1000 bytes")
                } else {
                    None
                };
                if let Some(why) = why {
                    return Err(Error::InvalidUniqueKey(why));
                }
                ("key", Some(key.clone()))
            }
        };
        let period = match self.period {
            Some(period) if period < Duration::from_secs(1) => {
                return Err(Error::InvalidUniquePeriod(period));
            }
            period => period.map(|p| p.as_secs_f64()),
        };
        Ok(UniqueRow { scope, key, period, states: self.states(), replace: self.replace })
    }
}

impl Default for Unique {
    fn default() -> Self {
        Unique::by_args()
    }
}

/// A definition's uniqueness, as `#[define_job]` writes it into the job's descriptor.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct UniqueSpec {
    /// `"args"` or `"queue"`.
    pub scope: &'static str,
    /// `unique_for`, in seconds.
    pub period_secs: Option<u64>,
}

impl UniqueSpec {
    pub(crate) fn to_unique(self) -> Unique {
        let unique = if self.scope == "queue" { Unique::by_queue() } else { Unique::by_args() };
        match self.period_secs {
            Some(secs) => unique.per(Duration::from_secs(secs)),
            None => unique,
        }
    }
}

/// Uniqueness as the insert statement takes it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct UniqueRow {
    pub(crate) scope: &'static str,
    pub(crate) key: Option<String>,
    pub(crate) period: Option<f64>,
    pub(crate) states: i16,
    pub(crate) replace: bool,
}

/// What storing a unique job did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
#[non_exhaustive]
pub enum Enqueued {
    /// The job was stored, with this id.
    Created(JobId),
    /// A job with the same key already holds it: this one was not stored. The id is the
    /// existing job's.
    Existing(JobId),
    /// ([`Unique::replace`]) A job with the same key was waiting: it took this one's
    /// arguments, priority and due time.
    Replaced(JobId),
    /// Synchronous mode ([`crate::run_jobs_inline`]) ran the job in place; nothing was stored.
    RanInline,
}

impl Enqueued {
    /// The id of the job that now stands for the call: the new one, the existing one or the
    /// replaced one (`None` in synchronous mode).
    pub fn id(self) -> Option<JobId> {
        match self {
            Enqueued::Created(id) | Enqueued::Existing(id) | Enqueued::Replaced(id) => Some(id),
            Enqueued::RanInline => None,
        }
    }

    /// Whether a new job was stored.
    pub fn is_created(self) -> bool {
        matches!(self, Enqueued::Created(_))
    }
}

/// A job call with uniqueness options: what [`Job::unique`] returns, and what the stub of a
/// `#[define_job(unique …)]` returns. Await it (or use [`UniqueJob::enqueue_on`] /
/// [`UniqueJob::enqueue_in`]) to learn whether it was stored or another job already holds its
/// key.
#[must_use = "a job is stored only when the value is awaited or passed to a broker"]
pub struct UniqueJob<A> {
    job: Job<A>,
    unique: Unique,
}

impl<A> fmt::Debug for UniqueJob<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UniqueJob").field("job", &self.job).field("unique", &self.unique).finish()
    }
}

impl<A> UniqueJob<A> {
    pub(crate) fn new(job: Job<A>, unique: Unique) -> Self {
        UniqueJob { job, unique }
    }
}

impl<A: JobArgument> UniqueJob<A> {
    /// Other uniqueness options for this call (e.g. [`Unique::by_key`] on a job defined unique
    /// by its arguments).
    pub fn unique(mut self, unique: Unique) -> Self {
        self.unique = unique;
        self
    }

    /// The stored job name.
    pub fn name(&self) -> &'static str {
        self.job.name()
    }

    /// The queue this job is stored on.
    pub fn queue(&self) -> &'static str {
        self.job.queue()
    }

    /// Another priority for this call.
    pub fn with_priority(mut self, priority: i16) -> Self {
        self.job = self.job.with_priority(priority);
        self
    }

    /// Runs no earlier than `when`.
    pub fn at(mut self, when: OffsetDateTime) -> Self {
        self.job = self.job.at(when);
        self
    }

    /// Runs no earlier than `delay` from now (by the database's clock).
    pub fn after(mut self, delay: Duration) -> Self {
        self.job = self.job.after(delay);
        self
    }

    /// Stores the job through `broker`, unless another holds its key.
    pub async fn enqueue_on(self, broker: &Broker) -> Result<Enqueued, Error> {
        broker.enqueue_unique(self.into_new_job()?).await
    }

    /// Stores the job inside the caller's open transaction, unless another holds its key. A
    /// rolled-back transaction leaves no job, and frees the key.
    pub async fn enqueue_in<C: Executor + ?Sized>(self, client: &C) -> Result<Enqueued, Error> {
        broker::enqueue_unique_with(client, self.into_new_job()?).await
    }
}

impl<A: JobArgument> IntoNewJob for UniqueJob<A> {
    fn into_new_job(self) -> Result<NewJob, Error> {
        let row = self.unique.to_row()?;
        let mut job = self.job.encode()?;
        job.unique = Some(row);
        Ok(job)
    }
}

impl<A: JobArgument> IntoFuture for UniqueJob<A> {
    type Output = Result<Enqueued, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            if crate::inline::is_on() {
                self.job.await?;
                return Ok(Enqueued::RanInline);
            }
            let broker = broker::current()?;
            self.enqueue_on(&broker).await
        })
    }
}

/// A job call that can be given a due time: [`Job`] and [`UniqueJob`], for [`crate::schedule_at`]
/// and [`crate::schedule_in`].
pub trait Schedulable: Sized {
    /// The same call, due no earlier than `when`.
    fn due_at(self, when: OffsetDateTime) -> Self;
    /// The same call, due no earlier than `delay` from now (by the database's clock).
    fn due_in(self, delay: Duration) -> Self;
}

impl<A: JobArgument> Schedulable for Job<A> {
    fn due_at(self, when: OffsetDateTime) -> Self {
        self.at(when)
    }

    fn due_in(self, delay: Duration) -> Self {
        self.after(delay)
    }
}

impl<A: JobArgument> Schedulable for UniqueJob<A> {
    fn due_at(self, when: OffsetDateTime) -> Self {
        self.at(when)
    }

    fn due_in(self, delay: Duration) -> Self {
        self.after(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unique_job_always_holds_its_key_while_it_waits_or_runs() {
        assert_eq!(Unique::by_args().states(), 7);
        assert_eq!(Unique::by_args().while_finished(&[]).states(), 7);
        assert_eq!(Unique::by_args().while_finished(&[JobState::Ready]).states(), 7);
        assert_eq!(Unique::by_args().per(Duration::from_secs(60)).states(), 7 | 8);
        assert_eq!(Unique::by_args().per(Duration::from_secs(60)).while_finished(&[]).states(), 7);
        assert_eq!(
            Unique::by_queue().while_finished(&[JobState::Failed, JobState::Cancelled]).states(),
            7 | 16 | 32
        );
    }

    #[test]
    fn bad_keys_and_periods_are_typed_errors() {
        for key in ["", "a\0b", &"k".repeat(1001)] {
            assert!(matches!(Unique::by_key(key).to_row(), Err(Error::InvalidUniqueKey(_))), "{key:?}");
        }
        assert!(Unique::by_key("k".repeat(1000)).to_row().is_ok());
        let short = Unique::by_args().per(Duration::from_millis(500));
        assert!(matches!(short.to_row(), Err(Error::InvalidUniquePeriod(_))));
    }
}
