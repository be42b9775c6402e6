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
#[cfg(doctest)]
mod doc_snippets;
mod error;
mod inline;
mod job;
mod middleware;
mod name;
mod registry;
mod sql;
mod telemetry;
mod text;
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
pub use codec::{DecodeError, MAX_ARGS_BYTES, MAX_ARGS_DEPTH};
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
    pub use crate::codec::DecodeError;
    pub use crate::job::{
        ArgumentCheck, DeserializableArgument, IntoDelay, JobArgument, JobContext, JobDescriptor, JobFuture,
        JobOutput, LacksBoth, LacksDeserialize, LacksSerialize, Registration, SendableArgument,
        SerializableArgument, Storable, StorableArgument,
    };
    pub use inventory;

    use crate::codec;
    use crate::job::{Job, RetryRequest};
    use std::future::Future;
    use std::marker::PhantomData;

    /// Checks that one argument type is `Send + 'static`, so the error points at that argument.
    /// (Whether it can be stored is checked by [`ArgumentCheck`].)
    pub const fn assert_sendable<T: SendableArgument>() {}

    /// A job's argument tuple `A`, for autoref specialisation in the generated code:
    /// `(&Args::<A>::NEW).job(…)` and `.decode(…)` resolve to [`Stored`] when `A` is a
    /// [`JobArgument`] and to [`Unstored`] otherwise, `.spawnable(…)` to [`Spawned`] when `A` is
    /// `Send + 'static` and to [`Unspawned`] otherwise. The `Un…` impls are only ever picked in a
    /// build that fails (never run): they keep the expansion compiling when an argument type is
    /// wrong, so that it is reported once, by that argument's own check, and not again by every
    /// use of the whole tuple.
    pub struct Args<A>(PhantomData<A>);

    /// A job's `run` before its arguments are encoded: see [`Job`].
    type RunArgs<A> = fn(A, JobContext) -> JobFuture;

    impl<A> Args<A> {
        pub const NEW: Self = Args(PhantomData);
    }

    /// See [`Args`].
    pub trait Stored<A> {
        /// Builds the value a job stub returns.
        fn job(&self, descriptor: &'static JobDescriptor, run: RunArgs<A>, args: A) -> Job<A>;
        /// Decodes the stored arguments.
        fn decode(&self, bytes: &[u8]) -> Result<A, DecodeError>;
    }

    impl<A: JobArgument> Stored<A> for Args<A> {
        fn job(&self, descriptor: &'static JobDescriptor, run: RunArgs<A>, args: A) -> Job<A> {
            Job::new(descriptor, run, args)
        }
        fn decode(&self, bytes: &[u8]) -> Result<A, DecodeError> {
            codec::decode(bytes)
        }
    }

    /// See [`Args`].
    pub trait Unstored<A> {
        fn job(&self, descriptor: &'static JobDescriptor, run: RunArgs<A>, args: A) -> Job<A>;
        fn decode(&self, bytes: &[u8]) -> Result<A, DecodeError>;
    }

    impl<A> Unstored<A> for &Args<A> {
        fn job(&self, _: &'static JobDescriptor, _: RunArgs<A>, _: A) -> Job<A> {
            unreachable!("an argument type of this job cannot be stored, and the build failed")
        }
        fn decode(&self, _: &[u8]) -> Result<A, DecodeError> {
            unreachable!("an argument type of this job cannot be stored, and the build failed")
        }
    }

    /// See [`Args`]: the body's future as it is.
    pub trait Spawned<A> {
        fn spawnable<F: Future>(&self, body: F) -> F;
    }

    impl<A: Send + 'static> Spawned<A> for Args<A> {
        fn spawnable<F: Future>(&self, body: F) -> F {
            body
        }
    }

    /// See [`Args`]. With an argument that is not `Send`, the body's future cannot be either,
    /// which that argument's check has reported already: [`box_body`] gets a stand-in with the
    /// same output instead, so that the return type is still checked but `Send` not again.
    pub trait Unspawned<A> {
        fn spawnable<F: Future>(&self, body: F) -> std::future::Pending<F::Output>;
    }

    impl<A> Unspawned<A> for &Args<A> {
        fn spawnable<F: Future>(&self, _: F) -> std::future::Pending<F::Output> {
            std::future::pending()
        }
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
