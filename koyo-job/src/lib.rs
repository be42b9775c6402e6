//! Background jobs for Rust applications, stored in PostgreSQL, with no separate message broker.
//!
//! Turn an `async fn` into a job with [`define_job`]; calling it returns a [`Job`] that, once
//! awaited, is stored in the `koyo_jobs` table and later run, at least once, by a [`Worker`].
//!
//! ```no_run
//! use koyo_job::{define_job, retry, Broker, Worker};
//!
//! #[define_job(queue = "mail", priority = 10)]
//! async fn send_welcome(user_id: i64, email: String) -> Result<(), std::io::Error> {
//!     if email.is_empty() {
//!         retry!(std::time::Duration::from_secs(30), "no address yet");
//!     }
//!     println!("welcome, user {user_id} <{email}>");
//!     Ok(())
//! }
//!
//! # async fn demo() -> Result<(), koyo_job::Error> {
//! let broker = Broker::connect("postgresql://postgres@localhost/app").await?;
//! koyo_job::migrate(&broker).await?;
//! koyo_job::set_current_broker(broker.clone());
//!
//! let worker = Worker::builder(broker).queue("mail").start().await?;
//! let id = send_welcome(42, "a@example.com".into()).await?; // Some(job id)
//! # let _ = id;
//! worker.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Metrics (counters, histograms and queue gauges) go through the `metrics` facade: see the
//! table in `docs/operations.md`. Every job runs inside a `koyo_job.run` tracing span carrying
//! its id, queue, name and attempt.
//!
//! Job definitions are collected at link time: a crate whose jobs a worker must run has to be
//! linked into the worker binary (`use my_jobs as _;` is enough).

mod broker;
mod codec;
mod error;
mod inline;
mod job;
mod middleware;
mod name;
mod registry;
mod sql;
mod telemetry;
mod worker;

#[cfg(feature = "testing")]
pub mod testing;

/// The connection pool koyo-job is built on, re-exported for the same reason.
pub use deadpool_postgres;
/// The PostgreSQL client koyo-job is built on, re-exported so that transactions passed to
/// [`Job::enqueue_in`] come from the same version.
pub use tokio_postgres;

pub use broker::{
    Broker, BrokerOptions, Executor, current_broker, enqueue_many_in, set_current_broker, with_broker,
};
pub use codec::{DecodeError, MAX_ARGS_BYTES};
pub use error::{Error, JobFailure};
pub use inline::run_jobs_inline;
pub use job::{
    IntoDelay, IntoNewJob, Job, JobArgument, JobId, JobOutput, NewJob, complete_in, current_job, schedule_at,
    schedule_in,
};
pub use koyo_job_macros::define_job;
pub use middleware::{JobInfo, Middleware, Next, Outcome};
pub use name::{MAX_JOB_NAME_LEN, MAX_QUEUE_LEN};
pub use registry::{Registry, RegistryError, RenderError};

/// The operator's queries (queue counts, job lists, retry/cancel/delete under the state rules,
/// workers, activity), shared by `koyo-job-admin` and the admin page of `koyo-job-web`, for
/// tools of your own. They take a plain connection: `&*broker.client().await?`.
pub use koyo_job_migrate::admin;
pub use worker::{Backoff, Retention, Worker, WorkerBuilder, WorkerHandle};

/// Creates or upgrades koyo-job's tables (the same as running `koyo-job-migrate`), through a
/// [`Broker`] or a `deadpool_postgres::Pool`. Safe to call from every process at start-up: it
/// is idempotent and serialised by an advisory lock.
pub async fn migrate(db: &impl HasPool) -> Result<koyo_job_migrate::Report, Error> {
    let mut client = db.pool().get().await?;
    Ok(koyo_job_migrate::migrate(&mut client, None).await?)
}

/// Something that holds a connection pool: a [`Broker`], or a `deadpool_postgres::Pool`.
pub trait HasPool {
    /// The pool.
    fn pool(&self) -> &deadpool_postgres::Pool;
}

impl HasPool for Broker {
    fn pool(&self) -> &deadpool_postgres::Pool {
        Broker::pool(self)
    }
}

impl HasPool for deadpool_postgres::Pool {
    fn pool(&self) -> &deadpool_postgres::Pool {
        self
    }
}

/// Ends the current attempt of a job and runs it again later.
///
/// Only usable directly in the body of a [`define_job`] function, where the attribute rewrites it:
///
/// - `retry!()` — again after the job's backoff for this attempt;
/// - `retry!(delay)` — again after `delay` (`std::time::Duration` or `time::Duration`), measured
///   by the database's clock;
/// - `retry!(delay, reason)` — the same, storing `reason` (anything that displays) in `last_error`.
///
/// The attempt counts toward `max_attempts`; past it the job ends `failed`.
///
/// Anywhere else, including inside a closure or an `async` block within a job body, it fails to
/// compile:
///
/// ```compile_fail
/// fn not_a_job() {
///     koyo_job::retry!();
/// }
/// ```
#[macro_export]
macro_rules! retry {
    ($($anything:tt)*) => {
        ::core::compile_error!(
            "`retry!()` can only be used directly in the body of a `#[define_job]` async fn, not in a closure, an async block or another function"
        )
    };
}

/// Not public API: the items generated code refers to. They may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::codec::{DecodeError, decode as decode_args};
    pub use crate::job::{
        IntoDelay, JobArgument, JobContext, JobDescriptor, JobFuture, JobOutput, Registration,
    };
    pub use inventory;

    use crate::job::{Job, RetryRequest};
    use std::future::Future;

    /// Builds the value a job stub returns.
    pub fn job<A: JobArgument>(
        descriptor: &'static JobDescriptor,
        run: fn(A, JobContext) -> JobFuture,
        args: A,
    ) -> Job<A> {
        Job::new(descriptor, run, args)
    }

    /// Boxes a job body's future; the bounds give readable errors for non-`Send` bodies and
    /// unsupported return types.
    pub fn box_body<F>(body: F) -> JobFuture
    where
        F: Future + Send + 'static,
        F::Output: JobOutput,
    {
        Box::pin(async move { body.await.into_result() })
    }

    /// Shows one decoded argument in a job's [`JobDescriptor::render`]: by autoref
    /// specialisation, `(&ShowArg(&value)).show_arg(&mut out)` writes the value's `Debug` form
    /// when its type has one ([`ShowDebug`]) and a placeholder otherwise ([`ShowOpaque`]).
    pub struct ShowArg<'a, T>(pub &'a T);

    /// See [`ShowArg`].
    pub trait ShowDebug {
        fn show_arg(&self, out: &mut String);
    }

    impl<T: std::fmt::Debug> ShowDebug for ShowArg<'_, T> {
        fn show_arg(&self, out: &mut String) {
            use std::fmt::Write as _;
            let _ = write!(out, "{:?}", self.0);
        }
    }

    /// See [`ShowArg`].
    pub trait ShowOpaque {
        fn show_arg(&self, out: &mut String);
    }

    impl<T> ShowOpaque for &ShowArg<'_, T> {
        fn show_arg(&self, out: &mut String) {
            out.push_str("<no Debug>");
        }
    }

    /// Checks one argument type, so the error points at that argument.
    pub const fn assert_argument<T: JobArgument>() {}

    /// What a rewritten `retry!(…)` evaluates to: records the request and yields the value the
    /// body returns to end the attempt.
    pub fn retry<T: JobOutput>(
        ctx: &JobContext,
        delay: Option<std::time::Duration>,
        reason: Option<String>,
    ) -> T {
        ctx.request_retry(RetryRequest { delay, reason });
        T::retry_placeholder()
    }

    /// Converts `retry!`'s delay argument.
    pub fn delay<D: IntoDelay>(delay: D) -> Option<std::time::Duration> {
        Some(delay.into_delay())
    }

    /// Converts `retry!`'s reason argument.
    pub fn reason<R: std::fmt::Display>(reason: R) -> Option<String> {
        Some(reason.to_string())
    }
}
