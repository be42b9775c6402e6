//! Jobs: the descriptor a `#[define_job]` registers, the value its stub returns, and the
//! context a running job carries.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use crate::broker::{self, Broker, Executor};
use crate::codec;
use crate::error::Error;
use crate::middleware::JobInfo;
use crate::name;

/// The id of a stored job: the `id` column of `koyo_jobs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The future a job body becomes once its arguments are decoded.
pub type JobFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>>;

/// What `#[define_job]` registers for each job: its stored name, defaults and entry points.
///
/// Built as a `static` by the macro; not meant to be written by hand.
#[doc(hidden)]
pub struct JobDescriptor {
    pub name: &'static str,
    pub queue: &'static str,
    pub priority: i16,
    pub max_attempts: i32,
    pub timeout: Option<Duration>,
    /// Uniqueness from the definition (`unique`, `unique_for`), if any.
    pub unique: Option<crate::unique::UniqueSpec>,
    /// The schedule from the definition (`cron`, `every`), if any.
    pub periodic: Option<crate::periodic::PeriodicSpec>,
    /// `file:line` of the definition, for duplicate-name errors.
    pub file: &'static str,
    pub line: u32,
    /// Decodes stored argument bytes and returns the body's future.
    pub run: fn(&[u8], JobContext) -> Result<JobFuture, codec::DecodeError>,
    /// Decodes stored argument bytes for display: `name: value` pairs, each value in its
    /// `Debug` form (or a placeholder for a type without `Debug`).
    pub render: fn(&[u8]) -> Result<String, codec::DecodeError>,
}

impl fmt::Debug for JobDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobDescriptor")
            .field("name", &self.name)
            .field("queue", &self.queue)
            .field("priority", &self.priority)
            .field("max_attempts", &self.max_attempts)
            .field("defined_at", &format_args!("{}:{}", self.file, self.line))
            .finish()
    }
}

/// The link-time registration of one job definition (collected with `inventory`).
#[doc(hidden)]
pub struct Registration(pub &'static JobDescriptor);

inventory::collect!(Registration);

/// When a job becomes due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunAt {
    Now,
    At(OffsetDateTime),
    /// Relative to the database's clock at insert time.
    In(Duration),
}

/// A job call that has not been stored yet: the value a `#[define_job]` stub returns.
///
/// Await it to store the job on the current broker (or, in [synchronous mode](crate::run_jobs_inline), to
/// run it in place); or send it somewhere explicit with [`Job::enqueue_on`] or [`Job::enqueue_in`].
/// Nothing happens until one of those is awaited.
#[must_use = "a job is stored only when the value is awaited or passed to a broker"]
pub struct Job<A> {
    descriptor: &'static JobDescriptor,
    run: fn(A, JobContext) -> JobFuture,
    args: A,
    run_at: RunAt,
    priority: Option<i16>,
}

impl<A> fmt::Debug for Job<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.descriptor.name)
            .field("queue", &self.descriptor.queue)
            .field("run_at", &self.run_at)
            .field("priority", &self.priority.unwrap_or(self.descriptor.priority))
            .finish_non_exhaustive()
    }
}

impl<A: JobArgument> Job<A> {
    #[doc(hidden)]
    pub fn new(descriptor: &'static JobDescriptor, run: fn(A, JobContext) -> JobFuture, args: A) -> Self {
        Job { descriptor, run, args, run_at: RunAt::Now, priority: None }
    }

    /// The stored name of this job (the `job` column).
    pub fn name(&self) -> &'static str {
        self.descriptor.name
    }

    /// The queue this job is stored on.
    pub fn queue(&self) -> &'static str {
        self.descriptor.queue
    }

    /// This call's priority: the job's default unless overridden with [`Job::with_priority`].
    pub fn priority(&self) -> i16 {
        self.priority.unwrap_or(self.descriptor.priority)
    }

    /// Overrides the priority for this one call (0 runs first; must not be negative).
    pub fn with_priority(mut self, priority: i16) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Runs the job no earlier than `when`. Same as [`schedule_at`].
    pub fn at(mut self, when: OffsetDateTime) -> Self {
        self.run_at = RunAt::At(when);
        self
    }

    /// Runs the job no earlier than `delay` after it is stored, by the database's clock.
    /// Same as [`schedule_in`].
    pub fn after(mut self, delay: Duration) -> Self {
        self.run_at = RunAt::In(delay);
        self
    }

    /// Makes this call unique: it is stored only if no job holding the same key exists (see
    /// [`Unique`](crate::Unique)), and awaiting it says which happened ([`crate::Enqueued`]).
    pub fn unique(self, unique: crate::Unique) -> crate::UniqueJob<A> {
        crate::UniqueJob::new(self, unique)
    }

    /// Encodes the call into a row ready to insert: checks names, priority and argument size.
    pub fn encode(self) -> Result<NewJob, Error> {
        let priority = self.priority();
        if priority < 0 {
            return Err(Error::InvalidPriority(priority));
        }
        name::check_queue(self.descriptor.queue)?;
        name::check_job_name(self.descriptor.name)?;
        let args = codec::encode(&self.args)?;
        // A type can serialize into something its own Deserialize rejects (untagged enums,
        // `deserialize_any`): refuse it now instead of storing a job no worker can decode.
        codec::decode::<A>(&args).map_err(|e| match e {
            codec::DecodeError::TooDeep { limit } => Error::ArgsTooDeep { limit },
            e => Error::Unrepresentable(e.to_string()),
        })?;
        Ok(NewJob {
            queue: self.descriptor.queue,
            name: self.descriptor.name,
            args,
            priority,
            max_attempts: self.descriptor.max_attempts,
            run_at: self.run_at,
            unique: None,
        })
    }

    /// Stores the job on `broker` and returns its id (synchronous mode does not apply).
    pub async fn enqueue_on(self, broker: &Broker) -> Result<JobId, Error> {
        broker.enqueue(self.encode()?).await
    }

    /// Stores the job inside the caller's open transaction (or on any client): the job exists
    /// only if that transaction commits, and workers are notified at commit.
    ///
    /// Works with the clients and transactions of tokio-postgres and deadpool-postgres
    /// (see [`Executor`]).
    pub async fn enqueue_in<C: Executor + ?Sized>(self, client: &C) -> Result<JobId, Error> {
        broker::enqueue_with(client, self.encode()?).await
    }

    /// Runs the body here and now, as synchronous mode does.
    async fn run_inline(self) -> Result<(), Error> {
        let ctx = JobContext::inline();
        let fut = (self.run)(self.args, ctx.clone());
        crate::worker::run_body(fut, &ctx, None)
            .await
            .map_err(|failure| Error::Inline { job: self.descriptor.name, failure })
    }
}

impl<A> Job<A> {
    /// This call made unique as its definition says (`#[define_job(unique …)]`): what the stub
    /// of such a job returns. (No bounds on `A`: in a build where an argument type is wrong,
    /// that argument's own check reports it, and this adds nothing.)
    #[doc(hidden)]
    pub fn unique_as_defined(self) -> crate::UniqueJob<A> {
        let unique = self.descriptor.unique.map(|spec| spec.to_unique()).unwrap_or_default();
        crate::UniqueJob::new(self, unique)
    }
}

impl<A: JobArgument> IntoFuture for Job<A> {
    /// `Some(id)` when stored; `None` when synchronous mode ran the job in place.
    type Output = Result<Option<JobId>, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            if crate::inline::is_on() {
                self.run_inline().await?;
                return Ok(None);
            }
            let broker = broker::current()?;
            Ok(Some(self.enqueue_on(&broker).await?))
        })
    }
}

/// Runs `job` no earlier than `when` (koyo's `schedule-at`).
///
/// ```no_run
/// # #[koyo_job::define_job] async fn say_hello(name: String) {}
/// # async fn demo() -> Result<(), koyo_job::Error> {
/// use koyo_job::schedule_at;
/// let when = time::OffsetDateTime::now_utc() + time::Duration::minutes(5);
/// schedule_at(when, say_hello("Bogdan".into())).await?;
/// # Ok(()) }
/// ```
pub fn schedule_at<J: crate::unique::Schedulable>(when: OffsetDateTime, job: J) -> J {
    job.due_at(when)
}

/// Runs `job` no earlier than `delay` from now, measured by the database's clock.
pub fn schedule_in<J: crate::unique::Schedulable>(delay: Duration, job: J) -> J {
    job.due_in(delay)
}

/// A job encoded for storage, of any job type: what bulk enqueue takes.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub(crate) queue: &'static str,
    pub(crate) name: &'static str,
    pub(crate) args: Vec<u8>,
    pub(crate) priority: i16,
    pub(crate) max_attempts: i32,
    pub(crate) run_at: RunAt,
    /// Set for a unique job.
    pub(crate) unique: Option<crate::unique::UniqueRow>,
}

impl NewJob {
    /// The queue this job goes to.
    pub fn queue(&self) -> &str {
        self.queue
    }

    /// The stored job name.
    pub fn name(&self) -> &str {
        self.name
    }
}

/// Anything bulk enqueue accepts: a [`Job`] call or an already encoded [`NewJob`].
pub trait IntoNewJob {
    /// Encodes the job for storage.
    fn into_new_job(self) -> Result<NewJob, Error>;
}

impl IntoNewJob for NewJob {
    fn into_new_job(self) -> Result<NewJob, Error> {
        Ok(self)
    }
}

impl<A: JobArgument> IntoNewJob for Job<A> {
    fn into_new_job(self) -> Result<NewJob, Error> {
        self.encode()
    }
}

/// The types a job can take as arguments: anything serde can store and read back, that can be
/// sent to the worker thread that runs the job. A job's arguments are stored as one tuple, which
/// is a `JobArgument` when each of them is.
///
/// `#[define_job]` checks each argument on its own, so a definition with an argument that is not
/// one gets an error at that argument naming what it lacks; this trait's own error shows only
/// where such a job is used.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be job arguments: they must implement `serde::Serialize` and `serde::de::DeserializeOwned`, and be `Send + 'static`",
    label = "not storable as job arguments",
    note = "the errors at the `#[define_job]` function say which argument lacks what"
)]
pub trait JobArgument: Serialize + DeserializeOwned + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Send + 'static> JobArgument for T {}

// What `#[define_job]` checks each argument type with, one trait per cause, so that each gets an
// error of its own wording. `do_not_recommend` makes rustc report the trait below rather than
// serde's (whose error lists every type that does implement it).

/// An argument type with `Serialize` but not `Deserialize`.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a job argument: it implements `serde::Serialize` but not `serde::Deserialize`",
    label = "cannot be read back from the stored job",
    note = "a worker deserializes the arguments to run the job: add `#[derive(serde::Deserialize)]` to `{Self}`, or pass an id and load the value inside the job"
)]
pub trait DeserializableArgument {}

#[diagnostic::do_not_recommend]
impl<T: DeserializeOwned> DeserializableArgument for T {}

/// An argument type with `Deserialize` but not `Serialize`.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a job argument: it implements `serde::Deserialize` but not `serde::Serialize`",
    label = "cannot be stored with the job",
    note = "the arguments are serialized when the job is enqueued: add `#[derive(serde::Serialize)]` to `{Self}`, or pass an id and load the value inside the job"
)]
pub trait SerializableArgument {}

#[diagnostic::do_not_recommend]
impl<T: Serialize + ?Sized> SerializableArgument for T {}

/// An argument type with neither.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a job argument: it implements neither `serde::Serialize` nor `serde::Deserialize`",
    label = "cannot be stored with the job",
    note = "the arguments are serialized when the job is enqueued and deserialized by the worker that runs it",
    note = "for a type of your own, add `#[derive(serde::Serialize, serde::Deserialize)]`; otherwise pass a type serde supports, or an id and load the value inside the job"
)]
pub trait StorableArgument {}

#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned> StorableArgument for T {}

/// An argument type that cannot go to another thread. `do_not_recommend` keeps this headline
/// even when the part that is not `Send` is a field deep inside the type (rustc would otherwise
/// use `Send`'s own, which does not mention the argument).
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a job argument: it is not `Send`",
    label = "not `Send`",
    note = "a job's arguments move into its future, which a worker spawns onto its thread pool, so they must be `Send + 'static`",
    note = "pass owned, thread-safe data instead (a `String` rather than an `Rc<String>`), or an id and load the value inside the job"
)]
pub trait SendableArgument {}

#[diagnostic::do_not_recommend]
impl<T: Send + 'static> SendableArgument for T {}

/// One argument type `T`, checked by autoref specialisation:
/// `(&&&ArgumentCheck::<T>::NEW).check_storable::<T>()` resolves to the first of [`Storable`],
/// [`LacksDeserialize`], [`LacksSerialize`] and [`LacksBoth`] whose impl applies to `T`, and each
/// of the last three has a bound that `T` cannot meet, so a type is reported once, for what it
/// lacks. (The bound is on the method's own parameter, `T` written out again, because rustc
/// then points at the whole type rather than at its first token.) Whether `T` is `Send` is
/// checked separately, with [`SendableArgument`].
#[doc(hidden)]
pub struct ArgumentCheck<T>(PhantomData<T>);

impl<T> ArgumentCheck<T> {
    pub const NEW: Self = ArgumentCheck(PhantomData);
}

/// See [`ArgumentCheck`].
#[doc(hidden)]
pub trait Storable {
    fn check_storable<U>(&self);
}

impl<T: Serialize + DeserializeOwned> Storable for &&&ArgumentCheck<T> {
    fn check_storable<U>(&self) {}
}

/// See [`ArgumentCheck`].
#[doc(hidden)]
pub trait LacksDeserialize {
    fn check_storable<U: DeserializableArgument>(&self);
}

impl<T: Serialize> LacksDeserialize for &&ArgumentCheck<T> {
    fn check_storable<U: DeserializableArgument>(&self) {}
}

/// See [`ArgumentCheck`].
#[doc(hidden)]
pub trait LacksSerialize {
    fn check_storable<U: SerializableArgument>(&self);
}

impl<T: DeserializeOwned> LacksSerialize for &ArgumentCheck<T> {
    fn check_storable<U: SerializableArgument>(&self) {}
}

/// See [`ArgumentCheck`].
#[doc(hidden)]
pub trait LacksBoth {
    fn check_storable<U: StorableArgument>(&self);
}

impl<T> LacksBoth for ArgumentCheck<T> {
    fn check_storable<U: StorableArgument>(&self) {}
}

/// The return types a job body may have: `()` or `Result<(), E>` where `E` displays.
#[diagnostic::on_unimplemented(
    message = "a job must return `()` or `Result<(), E>` where `E: Display`, not `{Self}`",
    label = "not a job result"
)]
pub trait JobOutput: Send + 'static {
    /// The error message, if the body failed.
    fn into_result(self) -> Result<(), String>;
    /// The value `retry!()` returns from the body after recording the retry.
    #[doc(hidden)]
    fn retry_placeholder() -> Self;
}

impl JobOutput for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
    fn retry_placeholder() -> Self {}
}

impl<E: fmt::Display + Send + 'static> JobOutput for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
    fn retry_placeholder() -> Self {
        Ok(())
    }
}

/// A delay `retry!(delay)` accepts: `std::time::Duration` or `time::Duration`.
#[diagnostic::on_unimplemented(
    message = "`retry!` takes a `std::time::Duration` or `time::Duration` as its delay, not `{Self}`"
)]
pub trait IntoDelay {
    /// The delay as a standard duration (negative delays become zero).
    fn into_delay(self) -> Duration;
}

impl IntoDelay for Duration {
    fn into_delay(self) -> Duration {
        self
    }
}

impl IntoDelay for time::Duration {
    fn into_delay(self) -> Duration {
        Duration::try_from(self).unwrap_or(Duration::ZERO)
    }
}

/// A retry requested from inside a job body with `retry!`.
#[derive(Clone, Debug, Default)]
pub(crate) struct RetryRequest {
    pub(crate) delay: Option<Duration>,
    pub(crate) reason: Option<String>,
}

/// The hidden context every job body receives: which attempt this is, and where `retry!` leaves
/// its request. User code cannot name the parameter that holds it.
#[doc(hidden)]
#[derive(Clone)]
pub struct JobContext(Arc<ContextInner>);

struct ContextInner {
    /// The stored job and the worker that claimed this attempt; `None` in synchronous mode.
    claimed: Option<(JobInfo, i64)>,
    retry: Mutex<Option<RetryRequest>>,
    completed_in_tx: AtomicBool,
    /// An operator asked to cancel the job while it runs.
    cancelled: AtomicBool,
    cancel: tokio::sync::Notify,
}

tokio::task_local! {
    /// The job whose body is running in this task.
    static CURRENT_JOB: JobContext;
}

impl JobContext {
    /// The context of an attempt claimed by worker `worker_id`.
    pub(crate) fn claimed(info: JobInfo, worker_id: i64) -> Self {
        Self::with(Some((info, worker_id)))
    }

    /// The context of a job run in synchronous mode.
    pub(crate) fn inline() -> Self {
        Self::with(None)
    }

    fn with(claimed: Option<(JobInfo, i64)>) -> Self {
        JobContext(Arc::new(ContextInner {
            claimed,
            retry: Mutex::new(None),
            completed_in_tx: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            cancel: tokio::sync::Notify::new(),
        }))
    }

    /// Marks the attempt cancelled and wakes whatever waits for that (the body's
    /// [`cancelled`], and the worker's grace timer).
    pub(crate) fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        self.0.cancel.notify_waiters();
    }

    /// Whether the attempt was cancelled.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Resolves once the attempt is cancelled (at once if it already is).
    pub(crate) async fn cancellation(&self) {
        loop {
            let notified = self.0.cancel.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }

    /// What middleware and `current_job` see of this attempt.
    pub(crate) fn info(&self) -> Option<&JobInfo> {
        self.0.claimed.as_ref().map(|(info, _)| info)
    }

    /// Runs `fut` (the job's body) with this context as the task's current job.
    pub(crate) async fn scope<F: Future>(&self, fut: F) -> F::Output {
        CURRENT_JOB.scope(self.clone(), fut).await
    }

    /// Whether the body marked the job done through [`complete_in`].
    pub(crate) fn completed_in_tx(&self) -> bool {
        self.0.completed_in_tx.load(Ordering::Relaxed)
    }

    pub(crate) fn take_retry(&self) -> Option<RetryRequest> {
        self.0.retry.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub(crate) fn request_retry(&self, request: RetryRequest) {
        *self.0.retry.lock().unwrap_or_else(|p| p.into_inner()) = Some(request);
    }
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext").field("job", &self.info()).finish()
    }
}

/// Marks the running job done inside the caller's transaction, so that the job's own writes
/// and its completion commit together, or not at all: for effects kept in the same database,
/// the job then happens exactly once.
///
/// Call it from a job body, on the transaction that holds the job's writes, just before
/// committing. It fails with [`Error::LeaseLost`] if this attempt no longer owns the job (another
/// worker took it over after this one stopped heartbeating): roll back then. If the transaction
/// rolls back for any other reason, the attempt ends as the body's result says, as usual. In
/// synchronous mode it does nothing.
///
/// ```no_run
/// # use koyo_job::define_job;
/// #[define_job]
/// async fn credit(account: i64, cents: i64) -> Result<(), koyo_job::Error> {
///     let broker = koyo_job::current_broker().expect("set at start-up");
///     let mut client = broker.client().await?;
///     let tx = client.transaction().await?;
///     tx.execute("UPDATE accounts SET cents = cents + $2 WHERE id = $1", &[&account, &cents]).await?;
///     koyo_job::complete_in(&tx).await?;
///     tx.commit().await?;
///     Ok(())
/// }
/// ```
pub async fn complete_in<C: Executor + ?Sized>(client: &C) -> Result<(), Error> {
    let ctx = CURRENT_JOB.try_with(JobContext::clone).map_err(|_| Error::NotInJob)?;
    let Some((info, worker_id)) = &ctx.0.claimed else {
        return Ok(());
    };
    let id = info.id;
    let rows = broker::query_typed(
        client.pg_client(),
        &crate::sql::COMPLETE,
        &[&vec![id.0], &vec![info.attempt], worker_id],
    )
    .await?;
    if rows.is_empty() {
        return Err(Error::LeaseLost { id });
    }
    ctx.0.completed_in_tx.store(true, Ordering::Relaxed);
    Ok(())
}

/// Resolves when an operator cancels the running job (the admin page, `koyo-job-admin cancel`,
/// [`crate::admin::apply`]); pending for ever outside a job body and in synchronous mode.
///
/// The worker stops the body about a second after the cancel reaches it (at the body's next
/// `.await`, as a time-out does), so a body with something to undo can race its work against
/// this and clean up within that second. The job then ends `cancelled` (if it returns an error
/// or is stopped) or `done` (if it still succeeds).
///
/// ```no_run
/// #[koyo_job::define_job]
/// async fn export(report_id: i64) -> Result<(), String> {
///     tokio::select! {
///         result = write_report(report_id) => result,
///         () = koyo_job::cancelled() => {
///             remove_partial_file(report_id).await;
///             Err("cancelled; the partial file was removed".into())
///         }
///     }
/// }
/// # async fn write_report(_: i64) -> Result<(), String> { Ok(()) }
/// # async fn remove_partial_file(_: i64) {}
/// ```
pub async fn cancelled() {
    match CURRENT_JOB.try_with(JobContext::clone) {
        Ok(ctx) if ctx.0.claimed.is_some() => ctx.cancellation().await,
        _ => std::future::pending().await,
    }
}

/// Whether an operator cancelled the running job (see [`cancelled`]); false outside a job body.
pub fn is_cancelled() -> bool {
    CURRENT_JOB.try_with(JobContext::is_cancelled).unwrap_or(false)
}

/// The stored job whose body is running in this task: its id, queue, name and attempt. `None`
/// outside a job body, in tasks the body spawned, and in synchronous mode.
pub fn current_job() -> Option<JobInfo> {
    CURRENT_JOB.try_with(|ctx| ctx.info().cloned()).ok().flatten()
}
