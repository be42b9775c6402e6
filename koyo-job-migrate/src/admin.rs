//! The operator's queries: what `koyo-job-admin` and the admin web page (`koyo-job-web`) show
//! and change, in one place, so that the command line and the page obey the same state rules.
//!
//! Every function takes a plain [`tokio_postgres::Client`] (a pooled connection derefs to one)
//! and sends each statement unnamed (`query_typed`): one round trip, and no prepared statement
//! left behind, so it works through poolers that cannot keep them. All SQL is static text with
//! `$n` parameters; timestamps come back as RFC 3339 text in UTC (`2026-11-29T03:40:56.123Z`)
//! and ages are measured by the database's clock.
//!
//! The state rules ([`Action::allows`]): a job can be retried when it is failed, cancelled or
//! scheduled; cancelled when ready, scheduled or failed; deleted when it is in any state but
//! running. A running job is touched only when its worker is no longer live — its row is gone or
//! its heartbeat is older than its lease — never while a live worker runs it: the worker's own
//! result would be fenced out anyway, but the operator would have raced a running attempt.

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Row};

/// Every state a job can be in, as stored in `koyo_jobs.status`, in the order of its life.
pub const STATES: [&str; 6] = ["scheduled", "ready", "running", "done", "failed", "cancelled"];
/// The states of finished jobs: what retention and `prune` delete.
pub const FINISHED: [&str; 3] = ["done", "failed", "cancelled"];

/// The most jobs one page lists.
pub const MAX_PAGE: i64 = 1000;

/// What went wrong with an operator's request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// No job has this id (it may have been pruned).
    #[error("no job with id {0}")]
    NotFound(i64),
    /// The job's state does not allow the action; the message says why and what would.
    #[error("{0}")]
    Refused(String),
    /// koyo-job's tables are not in the database: it was never migrated (or the connection's
    /// `search_path` does not lead to them).
    #[error(
        "koyo-job's tables are missing from this database ({0}): create them with `koyo-job-migrate` \
         (or koyo_job::migrate(&broker) in the application)"
    )]
    SchemaMissing(String),
    /// The database was migrated by an older koyo-job than this one.
    #[error(
        "the database's koyo-job schema is out of date ({0}): upgrade it with `koyo-job-migrate` \
         (or koyo_job::migrate(&broker) in the application)"
    )]
    SchemaOutdated(String),
    /// The database refused or failed the query.
    #[error("the query failed")]
    Database(#[source] tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for AdminError {
    fn from(error: tokio_postgres::Error) -> Self {
        match crate::schema_problem(&error) {
            Some(crate::SchemaProblem::Missing(detail)) => AdminError::SchemaMissing(detail),
            Some(crate::SchemaProblem::Outdated(detail)) => AdminError::SchemaOutdated(detail),
            None => AdminError::Database(error),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Input checks shared by the command line and the web API

/// Whether `name` is a queue name the schema admits: 1–64 of ASCII letters, digits and `_ . : -`.
#[doc(hidden)] // for the command line and the web API of this workspace, not public API
pub fn is_queue_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Parses a comma-separated list of states, each one of `known`, dropping repeats. The error
/// names the offending part (with control characters escaped) and what is expected.
#[doc(hidden)] // for the command line and the web API of this workspace, not public API
pub fn parse_states(raw: &str, known: &[&str]) -> Result<Vec<String>, String> {
    let mut states: Vec<String> = Vec::new();
    for state in raw.split(',') {
        if !known.contains(&state) {
            return Err(format!(
                "unknown state `{}`: expected one or more of {}, separated by commas",
                state.escape_debug(),
                known.join(", ")
            ));
        }
        if !states.iter().any(|s| s == state) {
            states.push(state.to_owned());
        }
    }
    Ok(states)
}

/// Parses a job id: a positive 64-bit integer, digits only.
#[doc(hidden)] // for the command line and the web API of this workspace, not public API
pub fn parse_id(raw: &str) -> Option<i64> {
    if raw.is_empty() || raw.len() > 19 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse::<i64>().ok().filter(|id| *id > 0)
}

// ---------------------------------------------------------------------------------------------
// Queues

/// One queue: its jobs in each state, and its lag.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct QueueCounts {
    /// The queue's name.
    pub queue: String,
    /// Jobs waiting for their due time.
    pub scheduled: i64,
    /// Jobs due and waiting for a worker.
    pub ready: i64,
    /// Jobs claimed by a worker (running, or held ahead of a free slot).
    pub running: i64,
    /// Jobs that succeeded (until retention deletes them).
    pub done: i64,
    /// Jobs that ran out of attempts or could not be decoded.
    pub failed: i64,
    /// Jobs an operator cancelled.
    pub cancelled: i64,
    /// Seconds since the oldest ready job fell due; `None` when no job is ready.
    pub lag_secs: Option<f64>,
    /// When an operator paused the queue (RFC 3339, UTC); `None` while it runs.
    pub paused_at: Option<String>,
    /// Who paused it, as they said.
    pub paused_by: Option<String>,
}

impl QueueCounts {
    /// The counts in the order of [`STATES`].
    pub fn by_state(&self) -> [(&'static str, i64); 6] {
        let counts = [self.scheduled, self.ready, self.running, self.done, self.failed, self.cancelled];
        std::array::from_fn(|i| (STATES[i], counts[i]))
    }
}

/// Renders a timestamp column as RFC 3339 in UTC with milliseconds.
macro_rules! utc {
    ($column:literal) => {
        concat!("to_char(", $column, " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
    };
}

/// Per queue: jobs in each state and the lag. Reads the whole table once: an operator's query,
/// not a hot path.
/// Paused queues are listed even without jobs.
const QUEUES: &str = concat!(
    "
WITH counts AS (
    SELECT queue,
           count(*) FILTER (WHERE status = 'scheduled') AS scheduled,
           count(*) FILTER (WHERE status = 'ready') AS ready,
           count(*) FILTER (WHERE status = 'running') AS running,
           count(*) FILTER (WHERE status = 'done') AS done,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
           -- GREATEST ignores NULLs, so the CASE keeps the lag of a queue with no ready job NULL rather than 0.
           CASE WHEN count(*) FILTER (WHERE status = 'ready') > 0
                THEN GREATEST(0, EXTRACT(EPOCH FROM now() - min(scheduled_at) FILTER (WHERE status = 'ready')))
           END::float8 AS lag
    FROM koyo_jobs
    GROUP BY queue
)
SELECT queue, COALESCE(c.scheduled, 0), COALESCE(c.ready, 0), COALESCE(c.running, 0), COALESCE(c.done, 0),
       COALESCE(c.failed, 0), COALESCE(c.cancelled, 0), c.lag, ",
    utc!("p.paused_at"),
    ", p.paused_by
FROM counts AS c FULL JOIN (SELECT * FROM koyo_queues WHERE paused_at IS NOT NULL) AS p USING (queue)
ORDER BY queue"
);

/// Every queue that has jobs, by name.
pub async fn queues(client: &Client) -> Result<Vec<QueueCounts>, AdminError> {
    let rows = client.query_typed(QUEUES, &[]).await?;
    Ok(rows
        .iter()
        .map(|row| QueueCounts {
            queue: row.get(0),
            scheduled: row.get(1),
            ready: row.get(2),
            running: row.get(3),
            done: row.get(4),
            failed: row.get(5),
            cancelled: row.get(6),
            lag_secs: row.get(7),
            paused_at: row.get(8),
            paused_by: row.get(9),
        })
        .collect())
}

/// Pauses a queue (or changes who it says paused it): every worker stops claiming its jobs as
/// soon as this commits, running jobs finish, enqueueing goes on. Stored, so it outlasts
/// restarts. `by` says who, for the others (at most 200 bytes, no NUL). Returns when it was
/// paused (RFC 3339, UTC): the first pause's time if it already was.
pub async fn pause(client: &Client, queue: &str, by: &str) -> Result<String, AdminError> {
    check_queue_and_by(queue, by)?;
    let row = client.query_typed(PAUSE, &[(&queue, Type::TEXT), (&by, Type::TEXT)]).await?;
    Ok(row.first().map(|r| r.get(0)).unwrap_or_default())
}

/// Resumes a paused queue and wakes the workers that serve it. Returns whether it was paused.
pub async fn resume(client: &Client, queue: &str) -> Result<bool, AdminError> {
    check_queue_and_by(queue, "")?;
    let rows = client.query_typed(RESUME, &[(&queue, Type::TEXT)]).await?;
    Ok(!rows.is_empty())
}

fn check_queue_and_by(queue: &str, by: &str) -> Result<(), AdminError> {
    if !is_queue_name(queue) {
        return Err(AdminError::Refused(format!(
            "`{}` is not a queue name: 1 to 64 of ASCII letters, digits, `_`, `.`, `:` and `-`",
            queue.escape_debug()
        )));
    }
    check_by(by)
}

/// Who acts, as stored beside a pause or a cancel: at most 200 bytes, without NUL.
fn check_by(by: &str) -> Result<(), AdminError> {
    if by.len() > 200 || by.contains('\0') {
        return Err(AdminError::Refused("who acts is said in at most 200 bytes, without NUL".into()));
    }
    Ok(())
}

const PAUSE: &str = concat!(
    "
INSERT INTO koyo_queues AS k (queue, paused_at, paused_by) VALUES ($1::text, now(), NULLIF($2::text, ''))
ON CONFLICT (queue) DO UPDATE
SET paused_at = COALESCE(k.paused_at, now()), paused_by = EXCLUDED.paused_by, updated_at = now()
RETURNING ",
    utc!("paused_at")
);

/// Clears the pause and wakes the queue's workers (its ready jobs were waiting) in one statement.
const RESUME: &str = "
WITH upd AS (
    UPDATE koyo_queues SET paused_at = NULL, paused_by = NULL, updated_at = now()
    WHERE queue = $1::text AND paused_at IS NOT NULL
    RETURNING queue
)
SELECT queue, pg_notify('koyo_jobs', queue)::text FROM upd";

// ---------------------------------------------------------------------------------------------
// Jobs

/// Which jobs to list: newest first, `limit` of them with ids below `before`.
#[derive(Clone, Debug, PartialEq)]
pub struct JobFilter {
    /// Only this queue's jobs; `None` lists every queue.
    pub queue: Option<String>,
    /// `None` (or empty) lists every state.
    pub states: Option<Vec<String>>,
    /// Only jobs with a smaller id (older ones): the previous page's [`JobPage::next_before`].
    pub before: Option<i64>,
    /// 1 to [`MAX_PAGE`]; clamped.
    pub limit: i64,
}

impl Default for JobFilter {
    fn default() -> Self {
        JobFilter { queue: None, states: None, before: None, limit: 50 }
    }
}

/// A job as listed.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct JobSummary {
    /// The job's id.
    pub id: i64,
    /// Its queue.
    pub queue: String,
    /// Its stored name, which workers look its definition up by.
    pub job: String,
    /// Its state, one of [`STATES`].
    pub status: String,
    /// Its priority: lower runs first.
    pub priority: i16,
    /// Attempts started so far (counted when claimed).
    pub attempts: i32,
    /// Attempts allowed before it ends `failed`.
    pub max_attempts: i32,
    /// When it is or was due (RFC 3339, UTC).
    pub scheduled_at: String,
    /// When it became `done`, `failed` or `cancelled` (RFC 3339, UTC).
    pub finished_at: Option<String>,
    /// Why its latest unsuccessful attempt ended, or why it was put back.
    pub last_error: Option<String>,
}

/// One page of jobs, and the `before` of the next (older) page if there is one.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct JobPage {
    /// The jobs, newest first.
    pub jobs: Vec<JobSummary>,
    /// The [`JobFilter::before`] of the next, older page; `None` when this page is the last.
    pub next_before: Option<i64>,
}

/// Whether the job `j` runs on a live worker: its row exists and its heartbeat is within its lease.
macro_rules! on_live_worker {
    () => {
        "EXISTS (SELECT 1 FROM koyo_workers AS w WHERE w.id = j.worker_id
                AND w.heartbeat_at >= now() - make_interval(secs => w.lease_secs))"
    };
}

const LIST_JOBS: &str = concat!(
    "
SELECT id, queue, job, status, priority, attempts, max_attempts, ",
    utc!("scheduled_at"),
    ", ",
    utc!("finished_at"),
    ", last_error
FROM koyo_jobs
WHERE ($1::text IS NULL OR queue = $1::text)
  AND ($2::text[] IS NULL OR status = ANY($2::text[]))
  AND ($3::int8 IS NULL OR id < $3::int8)
ORDER BY id DESC
LIMIT $4::int8"
);

/// Lists jobs newest first (by id, which follows enqueue order).
pub async fn jobs(client: &Client, filter: &JobFilter) -> Result<JobPage, AdminError> {
    let limit = filter.limit.clamp(1, MAX_PAGE);
    let states = filter.states.as_ref().filter(|s| !s.is_empty());
    // One row more than asked tells whether there is a next page.
    let params: [(&(dyn ToSql + Sync), Type); 4] = [
        (&filter.queue, Type::TEXT),
        (&states, Type::TEXT_ARRAY),
        (&filter.before, Type::INT8),
        (&(limit + 1), Type::INT8),
    ];
    let rows = client.query_typed(LIST_JOBS, &params).await?;
    let more = rows.len() as i64 > limit;
    let jobs: Vec<JobSummary> = rows
        .iter()
        .take(limit as usize)
        .map(|row| JobSummary {
            id: row.get(0),
            queue: row.get(1),
            job: row.get(2),
            status: row.get(3),
            priority: row.get(4),
            attempts: row.get(5),
            max_attempts: row.get(6),
            scheduled_at: row.get(7),
            finished_at: row.get(8),
            last_error: row.get(9),
        })
        .collect();
    let next_before = if more { jobs.last().map(|j| j.id) } else { None };
    Ok(JobPage { jobs, next_before })
}

/// One job, whole.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct JobDetail {
    /// The job's id.
    pub id: i64,
    /// Its queue.
    pub queue: String,
    /// Its stored name, which workers look its definition up by.
    pub job: String,
    /// Its state, one of [`STATES`].
    pub status: String,
    /// Its priority: lower runs first.
    pub priority: i16,
    /// Attempts started so far (counted when claimed).
    pub attempts: i32,
    /// Attempts allowed before it ends `failed`.
    pub max_attempts: i32,
    /// When it was enqueued (RFC 3339, UTC, database clock).
    pub created_at: String,
    /// When it is or was due (RFC 3339, UTC).
    pub scheduled_at: String,
    /// When its latest attempt started (RFC 3339, UTC).
    pub started_at: Option<String>,
    /// When it became `done`, `failed` or `cancelled` (RFC 3339, UTC).
    pub finished_at: Option<String>,
    /// The worker of its latest attempt ([`WorkerInfo::id`]); always set while it runs.
    pub worker_id: Option<i64>,
    /// Whether the job is running on a live worker (which no action may disturb).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub on_live_worker: bool,
    /// Why its latest unsuccessful attempt ended, or why it was put back.
    pub last_error: Option<String>,
    /// The stored arguments (bincode; decoding them needs the job's Rust types).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub args: Vec<u8>,
    /// A unique job's key (its name and what makes it unique), while it has one.
    pub unique_key: Option<String>,
    /// Who asked to cancel it while it ran, if anyone did.
    pub cancel_requested_by: Option<String>,
}

impl JobDetail {
    /// Whether the state rules allow `action` on this job as it was read.
    pub fn allows(&self, action: Action) -> bool {
        action.allows(&self.status, self.on_live_worker)
    }
}

const SHOW_JOB: &str = concat!(
    "
SELECT id, queue, job, status, priority, attempts, max_attempts, ",
    utc!("created_at"),
    ", ",
    utc!("scheduled_at"),
    ", ",
    utc!("started_at"),
    ", ",
    utc!("finished_at"),
    ", worker_id, status = 'running' AND ",
    on_live_worker!(),
    ", last_error, args, unique_key, cancel_requested_by
FROM koyo_jobs AS j
WHERE id = $1::int8"
);

/// The job with this id, if there is one.
pub async fn job(client: &Client, id: i64) -> Result<Option<JobDetail>, AdminError> {
    let rows = client.query_typed(SHOW_JOB, &[(&id, Type::INT8)]).await?;
    Ok(rows.first().map(|row| JobDetail {
        id: row.get(0),
        queue: row.get(1),
        job: row.get(2),
        status: row.get(3),
        priority: row.get(4),
        attempts: row.get(5),
        max_attempts: row.get(6),
        created_at: row.get(7),
        scheduled_at: row.get(8),
        started_at: row.get(9),
        finished_at: row.get(10),
        worker_id: row.get(11),
        on_live_worker: row.get(12),
        last_error: row.get(13),
        args: row.get(14),
        unique_key: row.get(15),
        cancel_requested_by: row.get(16),
    }))
}

// ---------------------------------------------------------------------------------------------
// Actions

/// What an operator can do to one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make it ready now. A failed or cancelled job that used all its attempts gets one more.
    Retry,
    /// Mark it cancelled: it will not run (again).
    Cancel,
    /// Remove its row.
    Delete,
}

impl Action {
    /// The verb, as in messages and on the command line.
    pub fn verb(self) -> &'static str {
        match self {
            Action::Retry => "retry",
            Action::Cancel => "cancel",
            Action::Delete => "delete",
        }
    }

    /// The states this action accepts (and `running`, when the job's worker is no longer live).
    pub fn states(self) -> &'static [&'static str] {
        match self {
            Action::Retry => &["failed", "cancelled", "scheduled"],
            Action::Cancel => &["ready", "scheduled", "failed"],
            Action::Delete => &["scheduled", "ready", "done", "failed", "cancelled"],
        }
    }

    /// Whether the state rules allow this action on a job in `status`. A job running on a live
    /// worker can only be cancelled: the cancel then asks that worker to stop it.
    pub fn allows(self, status: &str, on_live_worker: bool) -> bool {
        self.states().contains(&status)
            || (status == "running" && (!on_live_worker || self == Action::Cancel))
    }

    fn statement(self) -> &'static str {
        match self {
            Action::Retry => RETRY,
            Action::Cancel => CANCEL,
            Action::Delete => DELETE,
        }
    }
}

/// The `WHERE` of every action: the job, in one of the states `$2`, or running on a worker that
/// is no longer live. An `UPDATE`/`DELETE` re-checks it on the newest row version if a worker
/// changed the row meanwhile, so the rule holds however the two race.
macro_rules! actionable {
    () => {
        concat!(
            "j.id = $1::int8 AND (j.status = ANY($2::text[]) OR (j.status = 'running' AND NOT ",
            on_live_worker!(),
            "))"
        )
    };
}

/// Makes a job ready now and notifies its queue in the same statement. A failed or cancelled
/// job is no longer finished, and gets one more attempt if it had used all of them (`SET`
/// expressions read the row as it was before the update). A running job whose worker was lost
/// keeps that attempt counted, as a rescue would.
const RETRY: &str = concat!(
    "
WITH upd AS (
    UPDATE koyo_jobs AS j
    SET status = 'ready',
        scheduled_at = now(),
        finished_at = NULL,
        cancel_requested_at = NULL,
        cancel_requested_by = NULL,
        max_attempts = CASE WHEN j.status <> 'scheduled' AND j.attempts >= j.max_attempts
                            THEN j.attempts + 1 ELSE j.max_attempts END
    WHERE ",
    actionable!(),
    "
    RETURNING j.id, j.queue, j.status, j.attempts, j.max_attempts
)
SELECT id, queue, status, attempts, max_attempts, pg_notify('koyo_jobs', queue)::text FROM upd"
);

const CANCEL: &str = concat!(
    "
UPDATE koyo_jobs AS j
SET status = 'cancelled', finished_at = now()
WHERE ",
    actionable!(),
    "
RETURNING j.id, j.queue, j.status, j.attempts, j.max_attempts"
);

const DELETE: &str = concat!(
    "
DELETE FROM koyo_jobs AS j
WHERE ",
    actionable!(),
    "
RETURNING j.id, j.queue, NULL::text, j.attempts, j.max_attempts"
);

/// A job's state, for telling "no such job" from "refused" after an action matched nothing.
const JOB_STATE: &str =
    concat!("SELECT status, ", on_live_worker!(), " FROM koyo_jobs AS j WHERE id = $1::int8");

/// What an action did.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The job's id.
    pub id: i64,
    /// Its queue.
    pub queue: String,
    /// The job's state now; `None` once deleted.
    pub status: Option<String>,
    /// Attempts started so far.
    pub attempts: i32,
    /// Attempts allowed now (a retry of a job that had none left allows one more).
    pub max_attempts: i32,
}

/// Applies `action` to job `id` in one statement, if the state rules allow it.
pub async fn apply(client: &Client, id: i64, action: Action) -> Result<Applied, AdminError> {
    apply_as(client, id, action, "an operator").await
}

/// Like [`apply`], saying who acts: a cancel of a running job stores it, and the job's error
/// then says `cancelled while running, by <by>` (at most 200 bytes, no NUL).
///
/// Cancelling a job that runs on a live worker does not change its state: it asks the worker
/// (a notification, and its next tick) to stop the body, about a second after which the
/// worker writes it `cancelled` — unless the body still succeeds, or had already ended. The
/// answer then still says `running`.
pub async fn apply_as(client: &Client, id: i64, action: Action, by: &str) -> Result<Applied, AdminError> {
    check_by(by)?;
    let states: Vec<&str> = action.states().to_vec();
    let params: [(&(dyn ToSql + Sync), Type); 2] = [(&id, Type::INT8), (&states, Type::TEXT_ARRAY)];
    let rows = match client.query_typed(action.statement(), &params).await {
        Ok(rows) => rows,
        Err(error) if error.as_db_error().and_then(|db| db.constraint()) == Some("koyo_jobs_unique") => {
            return Err(key_held_by_another(client, id, action).await);
        }
        Err(error) => return Err(error.into()),
    };
    let rows = match (rows.is_empty(), action) {
        (true, Action::Cancel) => {
            client.query_typed(CANCEL_RUNNING, &[(&id, Type::INT8), (&by, Type::TEXT)]).await?
        }
        _ => rows,
    };
    match rows.first() {
        Some(row) => Ok(Applied {
            id: row.get(0),
            queue: row.get(1),
            status: row.get(2),
            attempts: row.get(3),
            max_attempts: row.get(4),
        }),
        None => Err(why_not(client, id, action).await),
    }
}

/// Asks the live worker running job `$1` to stop it: records who asked (`$2`) and notifies the
/// worker (`koyo_jobs_cancel`, payload `<worker id> <job id>`). Its next tick finds the request
/// too, should the notification be lost.
const CANCEL_RUNNING: &str = "
WITH upd AS (
    UPDATE koyo_jobs AS j
    SET cancel_requested_at = COALESCE(j.cancel_requested_at, now()), cancel_requested_by = $2::text
    WHERE j.id = $1::int8 AND j.status = 'running'
    RETURNING j.id, j.queue, j.status, j.attempts, j.max_attempts, j.worker_id
)
SELECT id, queue, status, attempts, max_attempts,
       pg_notify('koyo_jobs_cancel', format('%s %s', worker_id, id))::text
FROM upd";

/// Another job that holds the same unique key as job `$1` (see the runtime's unique jobs).
const KEY_HOLDER: &str = "
SELECT h.id FROM koyo_jobs AS j JOIN koyo_jobs AS h ON h.unique_key = j.unique_key AND h.id <> j.id
WHERE j.id = $1::int8
  AND (h.unique_states & CASE h.status WHEN 'scheduled' THEN 1 WHEN 'ready' THEN 2 WHEN 'running' THEN 4
                                       WHEN 'done' THEN 8 WHEN 'failed' THEN 16 ELSE 32 END) <> 0
LIMIT 1";

/// After an action was refused by the unique index: the job would hold its unique key again,
/// and another job holds it now.
async fn key_held_by_another(client: &Client, id: i64, action: Action) -> AdminError {
    let holder = match client.query_typed(KEY_HOLDER, &[(&id, Type::INT8)]).await {
        Ok(rows) => rows.first().map(|row| row.get::<_, i64>(0)),
        Err(error) => return AdminError::Database(error),
    };
    let holder = holder.map_or_else(|| "another job".to_owned(), |holder| format!("job {holder}"));
    AdminError::Refused(format!(
        "cannot {} job {id}: it is a unique job, and {holder} holds the same key now; act on that job instead",
        action.verb()
    ))
}

/// After an action matched nothing: tells "no such job" from "refused", and says why.
async fn why_not(client: &Client, id: i64, action: Action) -> AdminError {
    let rows: Vec<Row> = match client.query_typed(JOB_STATE, &[(&id, Type::INT8)]).await {
        Ok(rows) => rows,
        Err(error) => return AdminError::Database(error),
    };
    let Some(row) = rows.first() else {
        return AdminError::NotFound(id);
    };
    let status: String = row.get(0);
    let on_live_worker: bool = row.get(1);
    let verb = action.verb();
    let reason = match (action, status.as_str()) {
        (_, "running") if on_live_worker => {
            "a live worker is running it; wait until the attempt ends, or cancel it"
        }
        (Action::Retry, "ready") => "it is already ready and runs as soon as a worker is free",
        (Action::Retry, "done") => "it succeeded; enqueue a new job to run it again",
        (Action::Cancel, "done") => "it has already succeeded",
        (Action::Cancel, "cancelled") => "it is already cancelled",
        // The job left the state that refused it, or entered an allowed one, meanwhile.
        _ => "its state changed meanwhile; try again",
    };
    AdminError::Refused(format!(
        "cannot {verb} job {id}: it is {status} ({reason}); {verb} accepts only {}, \
         or a running job whose worker is no longer live",
        action.states().join(", ")
    ))
}

// ---------------------------------------------------------------------------------------------
// Pruning

/// Deletes at most 1,000 finished jobs in the states `$1` that finished more than `$2` seconds
/// ago (database clock), skipping rows another transaction holds. The repeated
/// `status IN (…)` lets the planner use the partial index `koyo_jobs_finished`.
const PRUNE_BATCH: &str = "
WITH doomed AS (
    SELECT id FROM koyo_jobs
    WHERE status IN ('done', 'failed', 'cancelled')
      AND status = ANY($1::text[])
      AND finished_at < now() - make_interval(secs => $2::float8)
    ORDER BY finished_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
)
DELETE FROM koyo_jobs j USING doomed d WHERE j.id = d.id";

/// The size of one prune batch.
const PRUNE_BATCH_SIZE: u64 = 1000;

/// Deletes the finished jobs in `states` (a subset of [`FINISHED`]) that finished more than
/// `older_than_secs` ago, in batches of 1,000, each its own short transaction so pruning never
/// holds locks for long. Returns how many it deleted.
pub async fn prune(client: &Client, states: &[String], older_than_secs: f64) -> Result<u64, AdminError> {
    let params: [(&(dyn ToSql + Sync), Type); 2] =
        [(&states, Type::TEXT_ARRAY), (&older_than_secs, Type::FLOAT8)];
    let mut deleted = 0;
    loop {
        let batch = client.execute_typed(PRUNE_BATCH, &params).await?;
        deleted += batch;
        if batch < PRUNE_BATCH_SIZE {
            return Ok(deleted);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Workers

/// One registered worker process.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct WorkerInfo {
    /// The worker's id, the `worker_id` of the jobs it claims.
    pub id: i64,
    /// The host it runs on.
    pub hostname: String,
    /// Its process id on that host.
    pub pid: i32,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// How many jobs it runs at once.
    pub pool_size: i32,
    /// When it registered (RFC 3339, UTC).
    pub started_at: String,
    /// Seconds since its last heartbeat (database clock).
    pub heartbeat_age_secs: f64,
    /// How long it may go without a heartbeat before others rescue its jobs.
    pub lease_secs: f64,
    /// Its heartbeat is within its lease. A worker that is not live has stopped or hangs; the
    /// next live worker's tick removes it and gives its jobs back.
    pub live: bool,
    /// Jobs it is running now.
    pub running: i64,
}

const WORKERS: &str = concat!(
    "
SELECT w.id, w.hostname, w.pid, w.queues, w.pool_size, ",
    utc!("w.started_at"),
    ",
       GREATEST(0, EXTRACT(EPOCH FROM now() - w.heartbeat_at))::float8,
       w.lease_secs,
       w.heartbeat_at >= now() - make_interval(secs => w.lease_secs),
       (SELECT count(*) FROM koyo_jobs j WHERE j.worker_id = w.id AND j.status = 'running')
FROM koyo_workers w
ORDER BY w.id"
);

/// Every registered worker, oldest first.
pub async fn workers(client: &Client) -> Result<Vec<WorkerInfo>, AdminError> {
    let rows = client.query_typed(WORKERS, &[]).await?;
    Ok(rows
        .iter()
        .map(|row| WorkerInfo {
            id: row.get(0),
            hostname: row.get(1),
            pid: row.get(2),
            queues: row.get(3),
            pool_size: row.get(4),
            started_at: row.get(5),
            heartbeat_age_secs: row.get(6),
            lease_secs: row.get(7),
            live: row.get(8),
            running: row.get(9),
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Periodic schedules

/// One periodic schedule, as the workers that run it recorded it.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PeriodicInfo {
    /// The schedule's name (for a schedule defined on a job, the job's name).
    pub name: String,
    /// The job each slot enqueues.
    pub job: String,
    /// That job's queue.
    pub queue: String,
    /// The cron expression, shorthand or `@every` interval.
    pub schedule: String,
    /// The IANA time zone its cron fields are read in.
    pub time_zone: String,
    /// What it does about slots missed while no worker ran it: `run_latest` or `skip`.
    pub missed: String,
    /// The latest slot a job was enqueued for (RFC 3339, UTC), if any.
    pub last_slot: Option<String>,
    /// The id of that slot's job (it may since have been pruned).
    pub last_job_id: Option<i64>,
    /// The next slot (RFC 3339, UTC), as the last worker to look computed it.
    pub next_slot: Option<String>,
    /// Seconds since a worker last looked at it (database clock).
    pub seen_age_secs: f64,
    /// The worker that last looked at it.
    pub seen_by: Option<i64>,
}

/// The schedules known to live workers: those a registered worker looked at last, or that a
/// worker looked at within the last minute (a running schedule is looked at every 30 s at
/// least). A schedule removed from every worker's code drops out of the list.
const PERIODIC: &str = concat!(
    "
SELECT p.name, p.job, p.queue, p.schedule, p.time_zone, p.missed,
       CASE WHEN p.last_slot IS NULL THEN NULL ELSE ",
    utc!("p.last_slot"),
    " END, p.last_job_id,
       CASE WHEN p.next_slot IS NULL THEN NULL ELSE ",
    utc!("p.next_slot"),
    " END,
       GREATEST(0, EXTRACT(EPOCH FROM now() - p.seen_at))::float8, p.seen_by
FROM koyo_periodic AS p
WHERE p.seen_at >= now() - interval '1 minute' OR EXISTS (SELECT 1 FROM koyo_workers AS w WHERE w.id = p.seen_by)
ORDER BY p.next_slot NULLS LAST, p.name"
);

/// The periodic schedules known to live workers, the next to run first.
pub async fn periodic(client: &Client) -> Result<Vec<PeriodicInfo>, AdminError> {
    let rows = client.query_typed(PERIODIC, &[]).await?;
    Ok(rows
        .iter()
        .map(|row| PeriodicInfo {
            name: row.get(0),
            job: row.get(1),
            queue: row.get(2),
            schedule: row.get(3),
            time_zone: row.get(4),
            missed: row.get(5),
            last_slot: row.get(6),
            last_job_id: row.get(7),
            next_slot: row.get(8),
            seen_age_secs: row.get(9),
            seen_by: row.get(10),
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Activity (the charts)

/// Per queue and minute: jobs finished done and failed, and the ready backlog, over the last
/// `minutes` minutes, reconstructed from the rows retention keeps.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Activity {
    /// The start of the first minute (RFC 3339, UTC).
    pub start: String,
    /// The width of a bucket in seconds: 60.
    pub step_secs: u32,
    /// Buckets per series (one per minute).
    pub buckets: usize,
    /// One series per queue with activity in the window.
    pub queues: Vec<QueueActivity>,
}

/// One queue's series, oldest minute first, each [`Activity::buckets`] long.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct QueueActivity {
    /// The queue's name.
    pub queue: String,
    /// Jobs that finished `done` in each minute.
    pub completed: Vec<i64>,
    /// Jobs that finished `failed` in each minute.
    pub failed: Vec<i64>,
    /// Jobs that were due but not started at the end of each minute.
    pub backlog: Vec<i64>,
}

/// One statement over the rows that can have been waiting or finished within the window, each
/// branch an index range: jobs finished since the window began (`koyo_jobs_finished`), running
/// jobs, ready jobs and due scheduled ones. Each row is reduced to its minute buckets — when it
/// fell due, when it started (or finished unstarted), when it finished — and counted per
/// distinct combination, so a few hundred groups come back however many rows were read; Rust
/// turns them into series. The cost grows with the backlog and the window's throughput (about a
/// second per million jobs on one core), not with the rows retention keeps from before.
///
/// A job retried within the window counts once, from its latest due time; rows deleted by
/// retention (or completed with zero retention) are not counted.
///
/// Params: minutes. Columns: start (text), queue, status, due, gone, finished (bucket indexes,
/// the last two nullable), count.
const ACTIVITY: &str = concat!(
    "
WITH win AS MATERIALIZED (
    SELECT date_trunc('minute', now()) - make_interval(mins => $1::int - 1) AS start
), recent AS (
    SELECT j.queue, j.status, j.scheduled_at, coalesce(j.started_at, j.finished_at) AS gone, j.finished_at
    FROM koyo_jobs AS j
    WHERE j.status IN ('done', 'failed', 'cancelled') AND j.finished_at >= (SELECT start FROM win)
    UNION ALL
    SELECT j.queue, j.status, j.scheduled_at, j.started_at, NULL FROM koyo_jobs AS j WHERE j.status = 'running'
    UNION ALL
    SELECT j.queue, j.status, j.scheduled_at, NULL, NULL FROM koyo_jobs AS j WHERE j.status = 'ready'
    UNION ALL
    SELECT j.queue, j.status, j.scheduled_at, NULL, NULL FROM koyo_jobs AS j
    WHERE j.status = 'scheduled' AND j.scheduled_at <= now()
)
SELECT ",
    utc!("w.start"),
    ", r.queue, r.status,
       floor(date_part('epoch', r.scheduled_at - w.start) / 60)::int,
       floor(date_part('epoch', r.gone - w.start) / 60)::int,
       floor(date_part('epoch', r.finished_at - w.start) / 60)::int,
       count(*)
FROM win AS w LEFT JOIN recent AS r ON true
GROUP BY 1, 2, 3, 4, 5, 6
ORDER BY 2, 3"
);

/// Jobs completed and failed per minute and the ready backlog at the end of each minute, per
/// queue, over the last `minutes` minutes (1 to 1440), oldest first.
pub async fn activity(client: &Client, minutes: u32) -> Result<Activity, AdminError> {
    let minutes = minutes.clamp(1, 1440);
    let rows = client.query_typed(ACTIVITY, &[(&(minutes as i32), Type::INT4)]).await?;
    let buckets = minutes as usize;
    let mut start = String::new();
    let mut queues: Vec<QueueActivity> = Vec::new();
    for row in &rows {
        start = row.get(0);
        // The LEFT JOIN returns one row of NULLs when nothing happened, for the start alone.
        let Some(queue) = row.get::<_, Option<String>>(1) else { continue };
        let status: String = row.get(2);
        let (due, gone, finished): (i32, Option<i32>, Option<i32>) = (row.get(3), row.get(4), row.get(5));
        let count: i64 = row.get(6);
        if queues.last().is_none_or(|q| q.queue != queue) {
            queues.push(QueueActivity {
                queue,
                completed: vec![0; buckets],
                failed: vec![0; buckets],
                backlog: vec![0; buckets],
            });
        }
        let series = queues.last_mut().expect("pushed above");
        let bucket = |i: Option<i32>| i.and_then(|i| usize::try_from(i).ok()).filter(|i| *i < buckets);
        match (status.as_str(), bucket(finished)) {
            ("done", Some(i)) => series.completed[i] += count,
            ("failed", Some(i)) => series.failed[i] += count,
            _ => {}
        }
        // Waiting from the minute it fell due (or the window's start) until the minute it
        // started: +count then −count, added up below.
        let from = due.max(0);
        if gone.is_none_or(|gone| gone > from) {
            if let Some(i) = bucket(Some(from)) {
                series.backlog[i] += count;
            }
            if let Some(i) = bucket(gone) {
                series.backlog[i] -= count;
            }
        }
    }
    for series in &mut queues {
        let mut level = 0;
        for value in &mut series.backlog {
            level += *value;
            *value = level.max(0);
        }
    }
    Ok(Activity { start, step_secs: 60, buckets, queues })
}
