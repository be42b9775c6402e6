//! Synchronous mode (koyo's `execute-jobs-synchronously?`): jobs awaited inside a scope run in
//! place instead of being stored.

use std::future::Future;

tokio::task_local! {
    static INLINE: bool;
}

/// Runs `fut` with synchronous mode on: every job stub awaited inside it runs its body at once,
/// in the caller's task, with no database; the await yields `Ok(None)` (no job was stored), and
/// a failure, a panic or a `retry!` in the body comes back as [`crate::Error::Inline`].
///
/// Scheduled jobs run at once too. Explicit [`crate::Job::enqueue_on`] and
/// [`crate::Job::enqueue_in`] still store the job. The switch is task-scoped: tasks spawned
/// inside `fut` do not inherit it.
///
/// ```
/// #[koyo_job::define_job]
/// async fn add_one(n: i64) -> Result<(), String> {
///     if n < 0 { return Err("negative".into()) }
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// koyo_job::run_jobs_inline(async {
///     assert_eq!(add_one(1).await.unwrap(), None);
///     assert!(add_one(-1).await.is_err());
/// })
/// .await;
/// # }
/// ```
pub async fn run_jobs_inline<F: Future>(fut: F) -> F::Output {
    INLINE.scope(true, fut).await
}

pub(crate) fn is_on() -> bool {
    INLINE.try_with(|on| *on).unwrap_or(false)
}
