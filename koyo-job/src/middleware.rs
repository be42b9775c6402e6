//! Middleware: code that wraps every job run (logging, metrics, tracing context, …).

use std::future::Future;
use std::pin::Pin;

use crate::error::JobFailure;
use crate::job::JobId;

/// How one run of a job ended, as middleware sees it.
pub type Outcome = Result<(), JobFailure>;

/// What middleware learns about the job it wraps.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct JobInfo {
    /// The job's id.
    pub id: JobId,
    /// The queue it was claimed from.
    pub queue: String,
    /// The stored job name.
    pub name: String,
    /// This attempt, starting at 1.
    pub attempt: i32,
    /// The job's attempt limit.
    pub max_attempts: i32,
}

/// The rest of the chain: the next middleware, and finally the job body.
#[must_use = "the job only runs when `next.run()` is awaited"]
pub struct Next {
    pub(crate) fut: Pin<Box<dyn Future<Output = Outcome> + Send>>,
}

impl Next {
    /// Runs the rest of the chain and returns its outcome.
    pub async fn run(self) -> Outcome {
        self.fut.await
    }
}

/// Wraps every job run of a worker. Runs in the job's task, in the order added (the first
/// added is the outermost).
///
/// Any `Fn(JobInfo, Next) -> impl Future<Output = Outcome>` is a middleware:
///
/// ```
/// use koyo_job::{JobInfo, Next};
///
/// let timing = |job: JobInfo, next: Next| async move {
///     let start = std::time::Instant::now();
///     let outcome = next.run().await;
///     println!("{} #{} took {:?}: {:?}", job.name, job.id, start.elapsed(), outcome);
///     outcome
/// };
/// # fn takes(_: impl koyo_job::Middleware) {}
/// # takes(timing);
/// ```
pub trait Middleware: Send + Sync + 'static {
    /// Runs around one job: call `next.run().await` to run it.
    fn wrap(&self, job: JobInfo, next: Next) -> Pin<Box<dyn Future<Output = Outcome> + Send>>;
}

impl<F, Fut> Middleware for F
where
    F: Fn(JobInfo, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn wrap(&self, job: JobInfo, next: Next) -> Pin<Box<dyn Future<Output = Outcome> + Send>> {
        Box::pin(self(job, next))
    }
}
