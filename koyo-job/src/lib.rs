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
//! table in the repository's `docs/operations.md`. Every job runs inside a `koyo_job.run`
//! tracing span carrying its id, queue, name and attempt.
//!
//! Job definitions are collected at link time: a crate whose jobs a worker must run has to be
//! linked into the worker binary (`use my_jobs as _;` is enough).
//!
//! The feature `testing` adds `koyo_job::testing`: a fresh database per test on a PostgreSQL
//! server it finds or starts, and a private server a test can crash and restart. The tables are
//! created by [`migrate`] or by the `koyo-job-migrate` command (package `koyo-job-migrate`); the
//! admin page is the crate `koyo-job-web`.

#![warn(missing_docs)]
// docs.rs builds with `--cfg docsrs` on nightly: items of the `testing` feature say they need it.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod broker;
mod codec;
mod error;
mod hosts;
mod inline;
mod job;
mod middleware;
mod name;
mod periodic;
mod registry;
mod schedule;
mod sql;
mod telemetry;
mod text;
mod unique;
mod worker;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

// The crates whose types appear in koyo-job's API, re-exported so that an application can name
// exactly the versions koyo-job was built with (see "Public surface" in docs/architecture.md).

/// The connection pool koyo-job is built on, re-exported so that the pool and connections
/// [`Broker::pool`] and [`Broker::client`] hand out are types of the version you name.
pub use deadpool_postgres;
/// The serialization framework job arguments go through ([`JobArgument`] is `Serialize +
/// DeserializeOwned`), re-exported to name the version koyo-job uses. To derive its traits
/// through this path, add `#[serde(crate = "koyo_job::serde")]` to the type.
pub use serde;
/// The date and time library of [`schedule_at`] and [`Job::at`] (`OffsetDateTime`) and of
/// `retry!`'s `time::Duration` delays, re-exported so that the values you pass come from the
/// same version.
pub use time;
/// The PostgreSQL client koyo-job is built on, re-exported so that transactions passed to
/// [`Job::enqueue_in`] and the configuration [`Broker::new`] takes come from the same version.
pub use tokio_postgres;

pub use broker::{
    Broker, BrokerOptions, Executor, current_broker, enqueue_each_in, enqueue_many_in, set_current_broker,
    with_broker,
};
pub use codec::{DecodeError, MAX_ARGS_BYTES, MAX_ARGS_DEPTH};
pub use error::{Error, JobFailure};
pub use inline::run_jobs_inline;
pub use job::{
    IntoDelay, IntoNewJob, Job, JobArgument, JobId, JobOutput, NewJob, cancelled, complete_in, current_job,
    is_cancelled, schedule_at, schedule_in,
};
pub use koyo_job_macros::define_job;
pub use middleware::{JobInfo, Middleware, Next, Outcome};
pub use name::{MAX_JOB_NAME_LEN, MAX_QUEUE_LEN};
pub use periodic::{Missed, Periodic};
pub use registry::{Registry, RegistryError, RenderError};
pub use schedule::{Schedule, ScheduleError};
pub use unique::{Enqueued, JobState, Schedulable, Unique, UniqueJob};

/// The operator's queries (queue counts, job lists, retry/cancel/delete under the state rules,
/// workers, activity), shared by `koyo-job-admin` and the admin page of `koyo-job-web`, for
/// tools of your own. They take a plain connection: `&*broker.client().await?`.
pub use koyo_job_migrate::admin;
pub use worker::{Backoff, Retention, Worker, WorkerBuilder, WorkerHandle};

/// The schema's migrations (the library behind the `koyo-job-migrate` command): the
/// [`Report`](migrations::Report) [`migrate`] returns, the
/// [`MigrateError`](migrations::MigrateError) in [`Error::Migrate`], a database's
/// [`status`](migrations::status), the SQL as one [`script`](migrations::script) for another
/// migration tool, and [`migrate`](migrations::migrate) on a plain connection, which can put
/// the tables in a PostgreSQL schema of their own.
pub mod migrations {
    pub use koyo_job_migrate::{
        MIGRATIONS, MigrateError, Migration, Report, Status, latest_version, migrate, script, status,
    };
}

/// Creates or upgrades koyo-job's tables (the same as running `koyo-job-migrate`), through a
/// [`Broker`] or a `deadpool_postgres::Pool`. Safe to call from every process at start-up: it
/// is idempotent and serialised by an advisory lock. It sends no named prepared statement,
/// whatever [`BrokerOptions::prepared_statements`] says, so it works behind PgBouncer in any
/// pool mode.
pub async fn migrate(db: &impl HasPool) -> Result<migrations::Report, Error> {
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
    pub use crate::periodic::PeriodicSpec;
    pub use crate::unique::UniqueSpec;
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
