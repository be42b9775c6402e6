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
//!
//! [`jobs`], [`count`] and [`bulk`] share one [`JobFilter`] (queue, states, id, job name, error
//! text, time ranges). [`bulk`] applies an action to every job of a filter or a list of ids
//! through the single actions' own statements, in batches of [`BULK_BATCH`], reporting
//! [`BulkProgress`] after each.

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
    /// A filter, a selection or who acts is not acceptable; the message says why.
    #[error("{0}")]
    Invalid(String),
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
    /// The queue's fleet-wide limits (none by default).
    pub limits: QueueLimits,
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
    ", p.paused_by, p.max_running, p.rate_limit, p.rate_period_secs
FROM counts AS c
FULL JOIN (SELECT * FROM koyo_queues
           WHERE paused_at IS NOT NULL OR max_running IS NOT NULL OR rate_limit IS NOT NULL) AS p USING (queue)
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
            limits: QueueLimits::from_row(row, 10),
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

/// A queue's fleet-wide limits: at most `max_running` of its jobs run at once across every
/// worker and host, and at most `rate_limit` of them start in any window of `rate_period_secs`
/// seconds. `None` is no limit. Workers enforce them inside the claim, so concurrent claimers
/// never exceed them. With the `serde` feature it reads from JSON as the admin API takes it: a
/// missing field is no limit, an unknown one an error.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct QueueLimits {
    /// At most this many of the queue's jobs running at once (1 to 1,000,000).
    pub max_running: Option<i32>,
    /// At most this many starts per `rate_period_secs` (1 to 1,000,000); set both or neither.
    pub rate_limit: Option<i32>,
    /// The rate limit's window, in seconds (0.001 to 366 days).
    pub rate_period_secs: Option<f64>,
}

impl QueueLimits {
    /// The limits in a row's columns `first`, `first + 1` and `first + 2` (`max_running`,
    /// `rate_limit`, `rate_period_secs`).
    fn from_row(row: &Row, first: usize) -> QueueLimits {
        QueueLimits {
            max_running: row.get(first),
            rate_limit: row.get(first + 1),
            rate_period_secs: row.get(first + 2),
        }
    }

    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.max_running.is_some() || self.rate_limit.is_some()
    }

    fn check(&self) -> Result<(), AdminError> {
        const MAX: i32 = 1_000_000;
        let refuse = |what: &str| Err(AdminError::Invalid(what.to_owned()));
        if self.max_running.is_some_and(|n| !(1..=MAX).contains(&n)) {
            return refuse("max_running is a number of jobs from 1 to 1000000 (or none, for no limit)");
        }
        if self.rate_limit.is_some_and(|n| !(1..=MAX).contains(&n)) {
            return refuse("rate_limit is a number of starts from 1 to 1000000 (or none, for no limit)");
        }
        if self.rate_period_secs.is_some_and(|p| !(p.is_finite() && (0.001..=31_622_400.0).contains(&p))) {
            return refuse("rate_period_secs is a number of seconds from 0.001 to 31622400 (366 days)");
        }
        if self.rate_limit.is_some() != self.rate_period_secs.is_some() {
            return refuse(
                "a rate limit needs both rate_limit and rate_period_secs (or neither, for no limit)",
            );
        }
        Ok(())
    }
}

/// Sets (or, with [`QueueLimits::default`], clears) a queue's fleet-wide limits, and tells the
/// workers that serve it: they apply the new limits at their next claim. `by` says who (at most
/// 200 bytes, no NUL). Returns the limits now stored.
pub async fn set_limits(
    client: &Client,
    queue: &str,
    limits: &QueueLimits,
    by: &str,
) -> Result<QueueLimits, AdminError> {
    check_queue_and_by(queue, by)?;
    limits.check()?;
    let rows = client
        .query_typed(
            SET_LIMITS,
            &[
                (&queue, Type::TEXT),
                (&limits.max_running, Type::INT4),
                (&limits.rate_limit, Type::INT4),
                (&limits.rate_period_secs, Type::FLOAT8),
                (&by, Type::TEXT),
            ],
        )
        .await?;
    let row = rows.first().ok_or_else(|| AdminError::Refused("the limits were not stored".into()))?;
    Ok(QueueLimits::from_row(row, 0))
}

/// A queue's fleet-wide limits as stored (none for a queue no operator limited).
pub async fn limits(client: &Client, queue: &str) -> Result<QueueLimits, AdminError> {
    check_queue_and_by(queue, "")?;
    let rows = client
        .query_typed(
            "SELECT max_running, rate_limit, rate_period_secs FROM koyo_queues WHERE queue = $1",
            &[(&queue, Type::TEXT)],
        )
        .await?;
    Ok(rows.first().map(|row| QueueLimits::from_row(row, 0)).unwrap_or_default())
}

/// Stores a queue's limits and, in the same statement, tells its workers: `koyo_jobs_scheduled`
/// makes them look at the table (and learn which queues are limited), `koyo_jobs` makes them
/// claim (a raised or removed limit may let jobs start).
const SET_LIMITS: &str = "
WITH up AS (
    INSERT INTO koyo_queues AS k (queue, max_running, rate_limit, rate_period_secs, limited_by)
    VALUES ($1::text, $2::int4, $3::int4, $4::float8, NULLIF($5::text, ''))
    ON CONFLICT (queue) DO UPDATE
    SET max_running = EXCLUDED.max_running, rate_limit = EXCLUDED.rate_limit,
        rate_period_secs = EXCLUDED.rate_period_secs, limited_by = EXCLUDED.limited_by, updated_at = now()
    RETURNING max_running, rate_limit, rate_period_secs, queue
)
SELECT max_running, rate_limit, rate_period_secs,
       pg_notify('koyo_jobs_scheduled', queue)::text, pg_notify('koyo_jobs', queue)::text
FROM up";

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

/// Which jobs to list (newest first, `limit` of them with ids below `before`), count, or act on
/// in bulk ([`bulk`]). Every criterion left `None` matches every job; the rest must all match.
#[derive(Clone, Debug, PartialEq)]
pub struct JobFilter {
    /// Only this queue's jobs; `None` lists every queue.
    pub queue: Option<String>,
    /// `None` (or empty) lists every state.
    pub states: Option<Vec<String>>,
    /// Only jobs with a smaller id (older ones): the previous page's [`JobPage::next_before`].
    /// Paging only: counts and bulk actions ignore it.
    pub before: Option<i64>,
    /// 1 to [`MAX_PAGE`]; clamped. Paging only.
    pub limit: i64,
    /// Only the job with this id.
    pub id: Option<i64>,
    /// Only jobs with this stored name, or, when it ends with `*`, whose name starts with what
    /// comes before the `*` (checked by [`parse_job_pattern`]).
    pub job: Option<String>,
    /// Only jobs whose last error contains this text, ignoring case (at most 200 characters,
    /// taken literally: `%` and `_` are not wildcards). Not indexed: combine it with a state
    /// (`failed` has an index) on a big table.
    pub error: Option<String>,
    /// Only jobs enqueued at or after this time.
    pub created_after: Option<TimeBound>,
    /// Only jobs enqueued before this time.
    pub created_before: Option<TimeBound>,
    /// Only jobs that finished (done, failed or cancelled) at or after this time.
    pub finished_after: Option<TimeBound>,
    /// Only jobs that finished before this time.
    pub finished_before: Option<TimeBound>,
}

impl Default for JobFilter {
    fn default() -> Self {
        JobFilter {
            queue: None,
            states: None,
            before: None,
            limit: 50,
            id: None,
            job: None,
            error: None,
            created_after: None,
            created_before: None,
            finished_after: None,
            finished_before: None,
        }
    }
}

impl JobFilter {
    /// Whether any criterion narrows the jobs down (paging aside): a bulk action on a filter
    /// needs one, so that "everything" is never one click away.
    pub fn narrows(&self) -> bool {
        self.queue.is_some()
            || self.states.as_ref().is_some_and(|s| !s.is_empty())
            || self.id.is_some()
            || self.job.is_some()
            || self.error.is_some()
            || self.created_after.is_some()
            || self.created_before.is_some()
            || self.finished_after.is_some()
            || self.finished_before.is_some()
    }
}

/// One end of a time range in a [`JobFilter`].
#[derive(Clone, Debug, PartialEq)]
pub enum TimeBound {
    /// An instant, RFC 3339 (`2026-12-05T10:00:00Z`, `2026-12-05T11:00:00.250+01:00`) or a UTC
    /// date (`2026-12-05`, its midnight), as checked by [`TimeBound::parse`].
    At(String),
    /// This many seconds before now, by the database's clock.
    Ago(u64),
}

impl TimeBound {
    /// Reads an RFC 3339 time, a date (`YYYY-MM-DD`, midnight UTC), or a duration before now: a
    /// whole number followed by `s`, `m`, `h` or `d` (`90s`, `15m`, `24h`, `7d`, at most 100
    /// years). The error says what is expected.
    pub fn parse(raw: &str) -> Result<TimeBound, String> {
        if let Some(secs) = parse_ago(raw) {
            return Ok(TimeBound::Ago(secs));
        }
        if is_rfc3339(raw) {
            return Ok(TimeBound::At(raw.to_owned()));
        }
        if raw.len() == 10 && is_rfc3339(&format!("{raw}T00:00:00Z")) {
            return Ok(TimeBound::At(format!("{raw}T00:00:00Z")));
        }
        Err(format!(
            "`{}` is not a time: give an RFC 3339 time (2026-12-05T10:00:00Z), a date (2026-12-05) \
             or how long ago (90s, 15m, 24h, 7d)",
            raw.chars().take(60).collect::<String>().escape_debug()
        ))
    }

    /// The two parameters of a bound in the filter's SQL: the instant as text, or the seconds
    /// before now.
    fn params(bound: &Option<TimeBound>) -> (Option<String>, Option<f64>) {
        match bound {
            Some(TimeBound::At(at)) => (Some(at.clone()), None),
            Some(TimeBound::Ago(secs)) => (None, Some(*secs as f64)),
            None => (None, None),
        }
    }
}

/// `90s`, `15m`, `12h`, `7d` in seconds: from 1 s to 100 years. Used by the CLI too.
#[doc(hidden)]
pub fn parse_ago(raw: &str) -> Option<u64> {
    let split = raw.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = raw.split_at(split);
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    let secs = number.parse::<u64>().ok()?.checked_mul(unit_secs)?;
    (1..=100 * 365 * 86400).contains(&secs).then_some(secs)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, with every field in range (the day within its
/// month), so that the database never refuses one.
fn is_rfc3339(raw: &str) -> bool {
    let b = raw.as_bytes();
    let digits = |from: usize, to: usize| b.get(from..to).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let number = |from: usize, to: usize| raw[from..to].parse::<u32>().unwrap_or(u32::MAX);
    if b.len() < 20 || !digits(0, 4) || b[4] != b'-' || !digits(5, 7) || b[7] != b'-' || !digits(8, 10) {
        return false;
    }
    if !matches!(b[10], b'T' | b't' | b' ') || !digits(11, 13) || b[13] != b':' || !digits(14, 16) {
        return false;
    }
    if b[16] != b':' || !digits(17, 19) {
        return false;
    }
    let (year, month) = (number(0, 4), number(5, 7));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    let in_range = (1..=12).contains(&month)
        && (1..=days).contains(&number(8, 10))
        && number(11, 13) < 24
        && number(14, 16) < 60
        && number(17, 19) < 61;
    let mut rest = 19;
    if b[rest] == b'.' {
        let start = rest + 1;
        rest = start + b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        if rest == start || rest - start > 9 {
            return false;
        }
    }
    let zone = &raw[rest..];
    let zone_ok = matches!(zone, "Z" | "z")
        || (zone.len() == 6
            && matches!(zone.as_bytes()[0], b'+' | b'-')
            && digits(rest + 1, rest + 3)
            && zone.as_bytes()[3] == b':'
            && digits(rest + 4, rest + 6)
            && number(rest + 1, rest + 3) < 24
            && number(rest + 4, rest + 6) < 60);
    in_range && zone_ok
}

/// Checks a job-name criterion: a stored name (1–200 of ASCII letters, digits and `_ . : -`),
/// or the start of one followed by `*`.
#[doc(hidden)] // for the command line and the web API of this workspace, not public API
pub fn parse_job_pattern(raw: &str) -> Result<String, String> {
    let name = raw.strip_suffix('*').unwrap_or(raw);
    if (1..=200).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
    {
        Ok(raw.to_owned())
    } else {
        Err(format!(
            "`{}` is not a job name: 1 to 200 of ASCII letters, digits, `_`, `.`, `:` and `-`, \
             optionally followed by `*` to match every name that starts so",
            raw.chars().take(60).collect::<String>().escape_debug()
        ))
    }
}

/// Checks an error-text criterion: 1 to 200 characters, without NUL.
#[doc(hidden)] // for the command line and the web API of this workspace, not public API
pub fn parse_error_text(raw: &str) -> Result<String, String> {
    if raw.is_empty() || raw.chars().count() > 200 || raw.contains('\0') {
        return Err("the error text to search for is 1 to 200 characters, without NUL".to_owned());
    }
    Ok(raw.to_owned())
}

/// A [`JobFilter`]'s criteria as the parameters `$1`–`$14` of [`filter_where!`].
#[derive(Debug)]
struct FilterParams {
    queue: Option<String>,
    states: Option<Vec<String>>,
    id: Option<i64>,
    job_exact: Option<String>,
    job_prefix: Option<String>,
    error: Option<String>,
    times: [(Option<String>, Option<f64>); 4],
}

impl FilterParams {
    fn new(filter: &JobFilter) -> Result<FilterParams, AdminError> {
        let bad = |why: String| AdminError::Invalid(why);
        if let Some(queue) = &filter.queue
            && !is_queue_name(queue)
        {
            return Err(bad(format!(
                "`{}` is not a queue name: 1 to 64 of ASCII letters, digits, `_`, `.`, `:` and `-`",
                queue.escape_debug()
            )));
        }
        if let Some(states) = &filter.states {
            for state in states {
                if !STATES.contains(&state.as_str()) {
                    return Err(bad(format!("unknown state `{}`", state.escape_debug())));
                }
            }
        }
        let job = filter.job.as_deref().map(parse_job_pattern).transpose().map_err(bad)?;
        let error = filter.error.as_deref().map(parse_error_text).transpose().map_err(bad)?;
        let (job_exact, job_prefix) = match job {
            Some(job) => match job.strip_suffix('*') {
                Some(prefix) => (None, Some(prefix.to_owned())),
                None => (Some(job), None),
            },
            None => (None, None),
        };
        Ok(FilterParams {
            queue: filter.queue.clone(),
            states: filter.states.clone().filter(|s| !s.is_empty()),
            id: filter.id,
            job_exact,
            job_prefix,
            error,
            times: [
                TimeBound::params(&filter.created_after),
                TimeBound::params(&filter.created_before),
                TimeBound::params(&filter.finished_after),
                TimeBound::params(&filter.finished_before),
            ],
        })
    }

    /// `$1`–`$14`, in order.
    fn params(&self) -> Vec<(&(dyn ToSql + Sync), Type)> {
        let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![
            (&self.queue, Type::TEXT),
            (&self.states, Type::TEXT_ARRAY),
            (&self.id, Type::INT8),
            (&self.job_exact, Type::TEXT),
            (&self.job_prefix, Type::TEXT),
            (&self.error, Type::TEXT),
        ];
        for (at, ago) in &self.times {
            params.push((at, Type::TEXT));
            params.push((ago, Type::FLOAT8));
        }
        params
    }
}

/// A time bound's value in SQL: the instant `$at`, or `$ago` seconds before now.
macro_rules! bound {
    ($at:literal, $ago:literal) => {
        concat!("COALESCE(", $at, "::text::timestamptz, now() - make_interval(secs => ", $ago, "::float8))")
    };
}

/// The `WHERE` of a [`JobFilter`] on `koyo_jobs AS j`, parameters `$1`–`$14` ([`FilterParams`]).
/// The error text is searched with `strpos` on the lowered text, so nothing in it is a
/// wildcard. Planned with the parameters' values (unnamed statements), a criterion not given
/// folds away, and a state criterion can use the partial indexes.
macro_rules! filter_where {
    () => {
        concat!(
            "($1::text IS NULL OR j.queue = $1::text)
  AND ($2::text[] IS NULL OR j.status = ANY($2::text[]))
  AND ($3::int8 IS NULL OR j.id = $3::int8)
  AND ($4::text IS NULL OR j.job = $4::text)
  AND ($5::text IS NULL OR left(j.job, length($5::text)) = $5::text)
  AND ($6::text IS NULL OR strpos(lower(j.last_error), lower($6::text)) > 0)
  AND (($7::text IS NULL AND $8::float8 IS NULL) OR j.created_at >= ",
            bound!("$7", "$8"),
            ")
  AND (($9::text IS NULL AND $10::float8 IS NULL) OR j.created_at < ",
            bound!("$9", "$10"),
            ")
  AND (($11::text IS NULL AND $12::float8 IS NULL) OR j.finished_at >= ",
            bound!("$11", "$12"),
            ")
  AND (($13::text IS NULL AND $14::float8 IS NULL) OR j.finished_at < ",
            bound!("$13", "$14"),
            ")"
        )
    };
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
    /// How long its latest attempt ran, in seconds: until now while it runs, until it finished
    /// once done, failed or cancelled; `None` for a job waiting to run (again) or that never ran.
    pub duration_secs: Option<f64>,
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

/// Params: the filter's `$1`–`$14`, then `before` and the limit.
const LIST_JOBS: &str = concat!(
    "
SELECT id, queue, job, status, priority, attempts, max_attempts, ",
    utc!("scheduled_at"),
    ", ",
    utc!("finished_at"),
    ", last_error,
       -- The latest attempt's run time. A job cancelled while it waited to run again finished
       -- long after its latest attempt ended: that attempt is the log's last entry.
       CASE WHEN status = 'running' THEN EXTRACT(EPOCH FROM now() - started_at)
            WHEN status IN ('done', 'failed', 'cancelled') AND started_at IS NOT NULL
                 AND (status <> 'cancelled'
                      OR (attempt_log->-1->>'started_at')::timestamptz IS DISTINCT FROM started_at)
            THEN EXTRACT(EPOCH FROM finished_at - started_at) END::float8
FROM koyo_jobs AS j
WHERE ",
    filter_where!(),
    "
  AND ($15::int8 IS NULL OR j.id < $15::int8)
ORDER BY j.id DESC
LIMIT $16::int8"
);

/// Lists jobs newest first (by id, which follows enqueue order). A filter whose criteria few
/// rows meet reads back through the table until it has found a page (or the statement timeout
/// ends it): narrow a search on a big table by state or time.
pub async fn jobs(client: &Client, filter: &JobFilter) -> Result<JobPage, AdminError> {
    let limit = filter.limit.clamp(1, MAX_PAGE);
    let criteria = FilterParams::new(filter)?;
    // One row more than asked tells whether there is a next page.
    let more_than = limit + 1;
    let mut params = criteria.params();
    params.push((&filter.before, Type::INT8));
    params.push((&more_than, Type::INT8));
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
            duration_secs: row.get(10),
        })
        .collect();
    let next_before = if more { jobs.last().map(|j| j.id) } else { None };
    Ok(JobPage { jobs, next_before })
}

/// The most earlier attempts a job's `attempt_log` keeps (the schema's `CHECK` says the same):
/// appending to a full log drops the oldest entry and counts it in `attempt_log_dropped`.
pub const ATTEMPT_LOG_MAX: usize = 25;

/// The most characters of an error an `attempt_log` entry keeps; the latest error is kept whole
/// in `last_error`.
pub const ATTEMPT_LOG_ERROR_CHARS: usize = 2048;

/// The `SET` assignments that append the attempt a job row describes to its `attempt_log`
/// (schema version 10) before a statement reuses the row's columns for another attempt, when
/// `$when` holds: its number, worker (and that worker's host, while its row exists), start,
/// `$ended`, `$outcome` and `$error` (cut to [`ATTEMPT_LOG_ERROR_CHARS`]). A full log (of
/// [`ATTEMPT_LOG_MAX`]) drops its oldest entry and counts it. Over `koyo_jobs AS j`; `SET`
/// expressions read the row as it was before the update. Rows where `$when` does not hold keep
/// both columns as they are, so a statement that ends attempts successfully never writes them.
///
/// Shared by the runtime's statements (`koyo-job/src/sql.rs`) and the operator's retry, so
/// every writer of the log keeps the same shape and bound.
#[doc(hidden)] // for koyo-job's statements, not public API
#[macro_export]
macro_rules! attempt_log_push {
    ($when:literal, $outcome:literal, $error:literal, $ended:literal) => {
        concat!(
            "attempt_log = CASE WHEN ",
            $when,
            "
            THEN CASE WHEN jsonb_array_length(COALESCE(j.attempt_log, '[]')) >= 25 THEN j.attempt_log - 0
                      ELSE COALESCE(j.attempt_log, '[]') END
                 || jsonb_build_array(jsonb_build_object(
                        'attempt', j.attempts, 'worker_id', j.worker_id,
                        'hostname', (SELECT w.hostname FROM koyo_workers AS w WHERE w.id = j.worker_id),
                        'started_at', j.started_at, 'ended_at', ",
            $ended,
            ", 'outcome', ",
            $outcome,
            ", 'error', left(",
            $error,
            ", 2048)))
            ELSE j.attempt_log END,
        attempt_log_dropped = CASE WHEN (",
            $when,
            ") AND jsonb_array_length(COALESCE(j.attempt_log, '[]')) >= 25
                                   THEN COALESCE(j.attempt_log_dropped, 0) + 1 ELSE j.attempt_log_dropped END"
        )
    };
}

/// One attempt of a job, as its timeline shows it ([`JobDetail::history`]).
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Attempt {
    /// Its number (the job's `attempts` when it ran). An attempt that did not count (given back
    /// at shutdown, claimed by a worker that does not know the job) shares its number with the
    /// next one.
    pub attempt: i32,
    /// The worker that ran it.
    pub worker_id: Option<i64>,
    /// That worker's host, when it was known: looked up when the attempt was recorded, or for
    /// the latest attempt while the worker is registered.
    pub hostname: Option<String>,
    /// When it started (RFC 3339, UTC).
    pub started_at: Option<String>,
    /// When it ended (RFC 3339, UTC); `None` while it runs.
    pub ended_at: Option<String>,
    /// How long it ran, in seconds: until it ended, or until now while it runs.
    pub duration_secs: Option<f64>,
    /// How it ended: `running` (not yet), `done`, `failed`, `cancelled`, `retry` (it failed and
    /// the job runs again), `lost` (its worker stopped heartbeating; the job was rescued),
    /// `given back` (its worker gave it back unfinished, at shutdown or after losing the reply
    /// of its claim; the attempt did not count) or `not run` (its worker does not define the
    /// job; the attempt did not count).
    pub outcome: String,
    /// Why it did not succeed: the first 2,048 characters for earlier attempts, the whole
    /// `last_error` for the latest one.
    pub error: Option<String>,
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
    /// Its attempts, oldest first: those recorded in its `attempt_log` (at most
    /// [`ATTEMPT_LOG_MAX`]), then the latest one as its own columns describe it (`running`,
    /// `done`, `failed` or `cancelled`) unless the log already holds it. Empty for a job that
    /// never started.
    pub history: Vec<Attempt>,
    /// Earlier attempts dropped from the front of [`JobDetail::history`] to keep the log bounded.
    pub history_dropped: i32,
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
    ", last_error, args, unique_key, cancel_requested_by,
       COALESCE(attempt_log_dropped, 0),
       h.attempt, h.worker, h.host, h.started, h.ended, h.secs, h.outcome, h.error,
       -- Whether the log's last entry is the attempt the row's columns describe (a job waiting
       -- to run again, or cancelled while it waited).
       COALESCE((attempt_log->-1->>'started_at')::timestamptz = started_at, false),
       (SELECT w.hostname FROM koyo_workers AS w WHERE w.id = j.worker_id),
       EXTRACT(EPOCH FROM COALESCE(finished_at, now()) - started_at)::float8
FROM koyo_jobs AS j
-- The log as parallel arrays, oldest first (NULL when there is none).
LEFT JOIN LATERAL (
    SELECT array_agg((e->>'attempt')::int4 ORDER BY n) AS attempt,
           array_agg((e->>'worker_id')::int8 ORDER BY n) AS worker,
           array_agg(e->>'hostname' ORDER BY n) AS host,
           array_agg(",
    utc!("(e->>'started_at')::timestamptz"),
    " ORDER BY n) AS started,
           array_agg(",
    utc!("(e->>'ended_at')::timestamptz"),
    " ORDER BY n) AS ended,
           array_agg(EXTRACT(EPOCH FROM (e->>'ended_at')::timestamptz - (e->>'started_at')::timestamptz)::float8
                     ORDER BY n) AS secs,
           array_agg(e->>'outcome' ORDER BY n) AS outcome,
           array_agg(e->>'error' ORDER BY n) AS error
    FROM jsonb_array_elements(j.attempt_log) WITH ORDINALITY AS t(e, n)
) AS h ON true
WHERE j.id = $1::int8"
);

/// A job's timeline from a [`SHOW_JOB`] row: the logged attempts, then the latest one from the
/// row's columns when it started, is not waiting to run again, and is not logged already.
fn history(row: &Row) -> Vec<Attempt> {
    let list = |i: usize| row.get::<_, Option<Vec<Option<String>>>>(i).unwrap_or_default();
    let numbers = row.get::<_, Option<Vec<Option<i32>>>>(18).unwrap_or_default();
    let workers = row.get::<_, Option<Vec<Option<i64>>>>(19).unwrap_or_default();
    let (hosts, starts, ends) = (list(20), list(21), list(22));
    let secs = row.get::<_, Option<Vec<Option<f64>>>>(23).unwrap_or_default();
    let (outcomes, errors) = (list(24), list(25));
    let mut history: Vec<Attempt> = (0..numbers.len())
        .map(|i| Attempt {
            attempt: numbers[i].unwrap_or_default(),
            worker_id: workers.get(i).copied().flatten(),
            hostname: hosts.get(i).cloned().flatten(),
            started_at: starts.get(i).cloned().flatten(),
            ended_at: ends.get(i).cloned().flatten(),
            duration_secs: secs.get(i).copied().flatten(),
            outcome: outcomes.get(i).cloned().flatten().unwrap_or_default(),
            error: errors.get(i).cloned().flatten(),
        })
        .collect();
    let status: String = row.get(3);
    let started_at: Option<String> = row.get(9);
    let logged: bool = row.get(26);
    if started_at.is_some()
        && !logged
        && matches!(status.as_str(), "running" | "done" | "failed" | "cancelled")
    {
        let ended = status != "running";
        history.push(Attempt {
            attempt: row.get(5),
            worker_id: row.get(11),
            hostname: row.get(27),
            started_at,
            ended_at: if ended { row.get(10) } else { None },
            duration_secs: row.get(28),
            // The latest error belongs to this attempt only if it did not succeed.
            error: if matches!(status.as_str(), "failed" | "cancelled") { row.get(13) } else { None },
            outcome: status,
        });
    }
    history
}

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
        history_dropped: row.get(17),
        history: history(row),
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

/// The `WHERE` of every action: the jobs `$1` (one id for a single action, a batch for a bulk
/// one), each in one of the states `$2`, or running on a worker that is no longer live. An
/// `UPDATE`/`DELETE` re-checks it on the newest row version if a worker changed the row
/// meanwhile, so the rule holds however the two race.
macro_rules! actionable {
    () => {
        concat!(
            "j.id = ANY($1::int8[]) AND (j.status = ANY($2::text[]) OR (j.status = 'running' AND NOT ",
            on_live_worker!(),
            "))"
        )
    };
}

/// Makes a job ready now and notifies its queue in the same statement. A failed or cancelled
/// job is no longer finished, and gets one more attempt if it had used all of them (`SET`
/// expressions read the row as it was before the update). A running job whose worker was lost
/// keeps that attempt counted, as a rescue would. The job's last attempt goes to its
/// `attempt_log` first (the next attempt reuses the row's columns), unless it is logged already
/// (a scheduled job's, or a job's cancelled while it waited) or the job never started.
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
                            THEN j.attempts + 1 ELSE j.max_attempts END,
        ",
    attempt_log_push!(
        "j.status <> 'scheduled' AND j.started_at IS NOT NULL
              AND j.started_at IS DISTINCT FROM (j.attempt_log->-1->>'started_at')::timestamptz",
        "CASE WHEN j.status = 'running' THEN 'lost' ELSE j.status END",
        "CASE WHEN j.status = 'running'
              THEN format('worker %s was lost during attempt %s (retried by an operator)', j.worker_id, j.attempts)
              ELSE j.last_error END",
        "COALESCE(j.finished_at, now())"
    ),
    "
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
    let ids: &[i64] = &[id];
    let params: [(&(dyn ToSql + Sync), Type); 2] = [(&ids, Type::INT8_ARRAY), (&states, Type::TEXT_ARRAY)];
    let rows = match client.query_typed(action.statement(), &params).await {
        Ok(rows) => rows,
        Err(error) if error.as_db_error().and_then(|db| db.constraint()) == Some("koyo_jobs_unique") => {
            return Err(key_held_by_another(client, id, action).await);
        }
        Err(error) => return Err(error.into()),
    };
    let rows = match (rows.is_empty(), action) {
        (true, Action::Cancel) => {
            client.query_typed(CANCEL_RUNNING, &[(&ids, Type::INT8_ARRAY), (&by, Type::TEXT)]).await?
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

/// Asks the live workers running the jobs `$1` to stop them: records who asked (`$2`) and
/// notifies each worker (`koyo_jobs_cancel`, payload `<worker id> <job id>`). Its next tick
/// finds the request too, should the notification be lost.
const CANCEL_RUNNING: &str = "
WITH upd AS (
    UPDATE koyo_jobs AS j
    SET cancel_requested_at = COALESCE(j.cancel_requested_at, now()), cancel_requested_by = $2::text
    WHERE j.id = ANY($1::int8[]) AND j.status = 'running'
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
    let reason = match refused_because(action, &status, on_live_worker) {
        Some((why, advice)) => format!("{why}{advice}"),
        // The job left the state that refused it, or entered an allowed one, meanwhile.
        None => "its state changed meanwhile; try again".to_owned(),
    };
    AdminError::Refused(format!(
        "cannot {verb} job {id}: it is {status} ({reason}); {verb} accepts only {}, \
         or a running job whose worker is no longer live",
        action.states().join(", ")
    ))
}

// ---------------------------------------------------------------------------------------------
// Bulk actions

/// The most jobs one statement of a bulk action changes.
pub const BULK_BATCH: usize = 1000;
/// The most ids one selection ([`BulkTarget::Ids`]) may name; act on more through a filter.
pub const MAX_SELECTION: usize = 10_000;
/// The most refusals a [`BulkProgress`] lists one by one (it counts them all).
pub const MAX_REFUSALS_LISTED: usize = 100;

/// What a bulk action applies to.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per bulk action: boxing would only burden the caller
pub enum BulkTarget {
    /// Every job the filter matches when the action starts ([`JobFilter::before`] and
    /// [`JobFilter::limit`] are ignored; at least one criterion is required, see
    /// [`JobFilter::narrows`]). Jobs enqueued after it started are left alone.
    Filter(JobFilter),
    /// These jobs (1 to [`MAX_SELECTION`] ids; repeats count once).
    Ids(Vec<i64>),
}

/// A job a bulk action left as it was, and why.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct BulkRefusal {
    /// The job's id.
    pub id: i64,
    /// Its state when it was refused.
    pub status: String,
    /// Why the state rules refused it, in a few words.
    pub why: String,
}

/// How far a bulk action has come; [`bulk`] reports it after every batch.
#[derive(Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct BulkProgress {
    /// Jobs it is to look at: the filter's matches when it started, or the selection's ids.
    pub total: i64,
    /// Of those, how many it has looked at so far.
    pub examined: i64,
    /// Jobs changed: retried, cancelled (or, for a job a live worker runs, its cancel asked
    /// for: see [`BulkProgress::cancel_requested`]) or deleted.
    pub applied: i64,
    /// Of the applied cancels, those of jobs a live worker runs: their worker was asked to
    /// stop them, and marks them cancelled.
    pub cancel_requested: i64,
    /// Jobs the state rules refused (see [`BulkProgress::refusals`]).
    pub refused: i64,
    /// Jobs that no longer existed when their batch came (deleted meanwhile, or, in a
    /// selection, never there).
    pub missing: i64,
    /// Batches done, each at most [`BULK_BATCH`] jobs.
    pub batches: u32,
    /// The first [`MAX_REFUSALS_LISTED`] refusals.
    pub refusals: Vec<BulkRefusal>,
    /// Every job has been looked at.
    pub finished: bool,
}

/// How many jobs a filter matches now ([`JobFilter::before`] and `limit` ignored), and the
/// highest id among them. One statement, bounded by the statement timeout like the list.
const COUNT_JOBS: &str =
    concat!("SELECT count(*), COALESCE(max(j.id), 0) FROM koyo_jobs AS j WHERE ", filter_where!());

/// The next batch of a bulk action on a filter: matching ids above `$15` and at most `$16`
/// (the highest match when it started), in order, `$17` of them.
const BULK_NEXT: &str = concat!(
    "SELECT j.id FROM koyo_jobs AS j WHERE ",
    filter_where!(),
    "
  AND j.id > $15::int8 AND j.id <= $16::int8
ORDER BY j.id
LIMIT $17::int8"
);

/// The state of the jobs of a batch that its action did not change, for the refusals.
const BULK_LEFT: &str = concat!(
    "SELECT j.id, j.status, j.status = 'running' AND ",
    on_live_worker!(),
    " FROM koyo_jobs AS j WHERE j.id = ANY($1::int8[])"
);

/// How many jobs `filter` matches now (its paging fields ignored): what a bulk action on it
/// would look at. Counting reads every matching row (or index entry): one statement, bounded by
/// the statement timeout.
pub async fn count(client: &Client, filter: &JobFilter) -> Result<i64, AdminError> {
    let criteria = FilterParams::new(filter)?;
    let row = client.query_typed(COUNT_JOBS, &criteria.params()).await?;
    Ok(row.first().map_or(0, |row| row.get(0)))
}

/// A bulk action under way, one batch at a time: [`bulk`] runs it to the end; a caller that
/// wants a fresh connection or its own time-out per batch (the web API) drives it with
/// [`BulkRun::start`] and [`BulkRun::step`].
///
/// Each batch is at most [`BULK_BATCH`] jobs, taken in id order after the last batch's, so the
/// run ends and never looks at a job twice. The batch is changed by the single action's own
/// statement (the state rule in its `WHERE`, applied to every id of the batch), each statement
/// its own short transaction: no lock is held from one batch to the next, and a worker waits
/// at most for one batch's statement.
#[derive(Debug)]
pub struct BulkRun {
    action: Action,
    by: String,
    source: Source,
    /// The states the action accepts that the filter also asks for.
    states: Vec<String>,
    /// Whether a job running on a live worker may be asked to stop (a cancel whose filter's
    /// states, if any, include `running`).
    cancel_running: bool,
    progress: BulkProgress,
}

#[derive(Debug)]
enum Source {
    Filter { criteria: Box<FilterParams>, cursor: i64, upper: i64 },
    Ids { ids: Vec<i64>, next: usize },
}

impl BulkRun {
    /// Checks the target and who acts (as stored beside a cancel of a running job: at most 200
    /// bytes, without NUL). Nothing is read yet.
    pub fn new(action: Action, target: BulkTarget, by: &str) -> Result<BulkRun, AdminError> {
        check_by(by)
            .map_err(|_| AdminError::Invalid("who acts is said in at most 200 bytes, without NUL".into()))?;
        let mut states: Vec<String> = action.states().iter().map(|s| (*s).to_owned()).collect();
        let mut cancel_running = action == Action::Cancel;
        let source = match target {
            BulkTarget::Filter(filter) => {
                if !filter.narrows() {
                    return Err(AdminError::Invalid(format!(
                        "a bulk {} needs at least one criterion (queue, state, id, job, error or time); \
                         it never applies to every job at once",
                        action.verb()
                    )));
                }
                if let Some(wanted) = filter.states.as_ref().filter(|s| !s.is_empty()) {
                    states.retain(|s| wanted.contains(s));
                    cancel_running &= wanted.iter().any(|s| s == "running");
                }
                Source::Filter { criteria: Box::new(FilterParams::new(&filter)?), cursor: 0, upper: 0 }
            }
            BulkTarget::Ids(mut ids) => {
                ids.sort_unstable();
                ids.dedup();
                if ids.is_empty() || ids.len() > MAX_SELECTION {
                    return Err(AdminError::Invalid(format!(
                        "a selection names 1 to {MAX_SELECTION} jobs, not {}; use a filter for more",
                        ids.len()
                    )));
                }
                if let Some(bad) = ids.iter().find(|id| **id <= 0) {
                    return Err(AdminError::Invalid(format!("job ids are positive integers, not {bad}")));
                }
                Source::Ids { ids, next: 0 }
            }
        };
        Ok(BulkRun {
            action,
            by: by.to_owned(),
            source,
            states,
            cancel_running,
            progress: BulkProgress::default(),
        })
    }

    /// The action it applies.
    pub fn action(&self) -> Action {
        self.action
    }

    /// How far it has come.
    pub fn progress(&self) -> &BulkProgress {
        &self.progress
    }

    /// Counts what it is to look at (a filter's matches now; jobs enqueued later are left
    /// alone). Call once, before the first [`BulkRun::step`].
    pub async fn start(&mut self, client: &Client) -> Result<&BulkProgress, AdminError> {
        match &mut self.source {
            Source::Filter { criteria, upper, .. } => {
                let rows = client.query_typed(COUNT_JOBS, &criteria.params()).await?;
                let row = rows.first().expect("an aggregate returns one row");
                self.progress.total = row.get(0);
                *upper = row.get(1);
            }
            Source::Ids { ids, .. } => self.progress.total = ids.len() as i64,
        }
        self.progress.finished = self.progress.total == 0;
        Ok(&self.progress)
    }

    /// Applies the action to the next batch of at most [`BULK_BATCH`] jobs, and counts it in
    /// [`BulkRun::progress`]; once every job has been looked at, [`BulkProgress::finished`] is
    /// set and further calls do nothing. When a statement fails, the jobs of that batch that it
    /// would have changed are as they were (a statement is atomic), earlier batches stay done,
    /// and calling `step` again takes the same batch again.
    pub async fn step(&mut self, client: &Client) -> Result<(), AdminError> {
        if self.progress.finished {
            return Ok(());
        }
        let batch: Vec<i64> = match &self.source {
            Source::Filter { criteria, cursor, upper } => {
                let limit = BULK_BATCH as i64;
                let mut params = criteria.params();
                params.push((cursor, Type::INT8));
                params.push((upper, Type::INT8));
                params.push((&limit, Type::INT8));
                let rows = client.query_typed(BULK_NEXT, &params).await?;
                rows.iter().map(|row| row.get(0)).collect()
            }
            Source::Ids { ids, next } => ids[*next..].iter().take(BULK_BATCH).copied().collect(),
        };
        if batch.is_empty() {
            self.progress.finished = true;
            return Ok(());
        }
        let (mut changed, key_held) = self.apply_batch(client, &batch).await?;
        let mut cancel_requested = 0;
        if self.cancel_running {
            let left: Vec<i64> = batch.iter().copied().filter(|id| !changed.contains(id)).collect();
            if !left.is_empty() {
                let params: [(&(dyn ToSql + Sync), Type); 2] =
                    [(&left, Type::INT8_ARRAY), (&self.by, Type::TEXT)];
                let rows = client.query_typed(CANCEL_RUNNING, &params).await?;
                cancel_requested = rows.len() as i64;
                changed.extend(rows.iter().map(|row| row.get::<_, i64>(0)));
            }
        }
        let left: Vec<i64> = batch.iter().copied().filter(|id| !changed.contains(id)).collect();
        let mut refused = Vec::new();
        if !left.is_empty() {
            let rows = client.query_typed(BULK_LEFT, &[(&left, Type::INT8_ARRAY)]).await?;
            self.progress.missing += (left.len() - rows.len()) as i64;
            for row in &rows {
                let (id, status, on_live_worker): (i64, String, bool) = (row.get(0), row.get(1), row.get(2));
                let why = if key_held.contains(&id) {
                    "another job holds its unique key now".to_owned()
                } else {
                    refusal_reason(self.action, &status, on_live_worker)
                };
                refused.push(BulkRefusal { id, status, why });
            }
        }
        // Counted only once the whole batch is through, so a failed step counts nothing twice.
        self.progress.cancel_requested += cancel_requested;
        self.progress.applied += changed.len() as i64;
        self.progress.refused += refused.len() as i64;
        let room = MAX_REFUSALS_LISTED.saturating_sub(self.progress.refusals.len());
        self.progress.refusals.extend(refused.into_iter().take(room));
        self.progress.examined += batch.len() as i64;
        self.progress.batches += 1;
        match &mut self.source {
            // Fewer than a full batch, or the highest match reached: nothing is left.
            Source::Filter { cursor, upper, .. } => {
                *cursor = *batch.last().expect("not empty");
                self.progress.finished = batch.len() < BULK_BATCH || *cursor >= *upper;
            }
            Source::Ids { ids, next } => {
                *next += batch.len();
                self.progress.finished = *next >= ids.len();
            }
        }
        Ok(())
    }

    /// Runs the action's statement on a batch; returns the ids it changed, and those it could
    /// not change because another job holds their unique key. Such a retry fails the whole
    /// statement: the batch is then done one job at a time.
    async fn apply_batch(&self, client: &Client, batch: &[i64]) -> Result<(Vec<i64>, Vec<i64>), AdminError> {
        let statement = self.action.statement();
        let params: [(&(dyn ToSql + Sync), Type); 2] =
            [(&batch, Type::INT8_ARRAY), (&self.states, Type::TEXT_ARRAY)];
        match client.query_typed(statement, &params).await {
            Ok(rows) => return Ok((rows.iter().map(|row| row.get(0)).collect(), Vec::new())),
            Err(error) if is_unique_violation(&error) => {}
            Err(error) => return Err(error.into()),
        }
        let (mut changed, mut key_held) = (Vec::new(), Vec::new());
        for id in batch {
            let one: &[i64] = &[*id];
            let params: [(&(dyn ToSql + Sync), Type); 2] =
                [(&one, Type::INT8_ARRAY), (&self.states, Type::TEXT_ARRAY)];
            match client.query_typed(statement, &params).await {
                Ok(rows) if !rows.is_empty() => changed.push(*id),
                Ok(_) => {}
                Err(error) if is_unique_violation(&error) => key_held.push(*id),
                Err(error) => return Err(error.into()),
            }
        }
        Ok((changed, key_held))
    }
}

fn is_unique_violation(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().and_then(|db| db.constraint()) == Some("koyo_jobs_unique")
}

/// Why `action` refuses a job in `status` (on a live worker's claim or not): the reason, and
/// advice that a single action's message adds to it. `None` for a state the action accepts.
fn refused_because(
    action: Action,
    status: &str,
    on_live_worker: bool,
) -> Option<(&'static str, &'static str)> {
    Some(match (action, status) {
        (_, "running") if on_live_worker => {
            ("a live worker is running it", "; wait until the attempt ends, or cancel it")
        }
        (Action::Retry, "ready") => ("it is already ready", " and runs as soon as a worker is free"),
        (Action::Retry, "done") => ("it succeeded; enqueue a new job to run it again", ""),
        (Action::Cancel, "done") => ("it has already succeeded", ""),
        (Action::Cancel, "cancelled") => ("it is already cancelled", ""),
        _ => return None,
    })
}

/// Why `action` refused a job in `status`, in a few words, for a bulk action's report.
fn refusal_reason(action: Action, status: &str, on_live_worker: bool) -> String {
    refused_because(action, status, on_live_worker)
        .map_or("its state changed meanwhile, or the filter's states exclude it", |(why, _)| why)
        .to_owned()
}

/// Applies `action` to every job of `target` in batches of [`BULK_BATCH`], each batch by the
/// single action's statement (the same state rules, checked per job at the moment of its
/// change), each statement its own short transaction; calls `on_batch` after every batch
/// (the last report has [`BulkProgress::finished`] set, unless nothing matched).
/// `by` says who acts, as for [`apply_as`].
///
/// Stopped midway (an error, a dropped future), the batches done stay done and the rest is
/// untouched: running it again with the same target finishes the work, since the jobs already
/// changed no longer match (a retried job is ready, a deleted one gone) or are refused.
pub async fn bulk(
    client: &Client,
    action: Action,
    target: BulkTarget,
    by: &str,
    mut on_batch: impl FnMut(&BulkProgress),
) -> Result<BulkProgress, AdminError> {
    let mut run = BulkRun::new(action, target, by)?;
    run.start(client).await?;
    while !run.progress.finished {
        let batches = run.progress.batches;
        run.step(client).await?;
        if run.progress.batches > batches {
            on_batch(&run.progress);
        }
    }
    Ok(run.progress)
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
    /// The width of a bucket in seconds: 60 for [`activity`].
    pub step_secs: u32,
    /// Buckets per series.
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
/// Params: buckets, and their width in seconds (the first starts at a multiple of the width
/// since the epoch, so the last holds now). Columns: start (text), queue, status, due, gone,
/// finished (bucket indexes, the last two nullable), count.
const ACTIVITY: &str = concat!(
    "
WITH win AS MATERIALIZED (
    SELECT to_timestamp(floor(date_part('epoch', now()) / $2::int) * $2::int)
           - make_interval(secs => $2::int * ($1::int - 1)) AS start
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
       floor(date_part('epoch', r.scheduled_at - w.start) / $2::int)::int,
       floor(date_part('epoch', r.gone - w.start) / $2::int)::int,
       floor(date_part('epoch', r.finished_at - w.start) / $2::int)::int,
       count(*)
FROM win AS w LEFT JOIN recent AS r ON true
GROUP BY 1, 2, 3, 4, 5, 6
ORDER BY 2, 3"
);

/// Jobs completed and failed per minute and the ready backlog at the end of each minute, per
/// queue, over the last `minutes` minutes (1 to 1440), oldest first.
pub async fn activity(client: &Client, minutes: u32) -> Result<Activity, AdminError> {
    activity_buckets(client, minutes.clamp(1, 1440), 60).await
}

/// The chart ranges the admin page offers: `1h` (60 buckets of a minute), `24h` (96 of 15
/// minutes) and `7d` (84 of 2 hours); the query's cost grows with the jobs finished within
/// the range, not with the number of buckets.
pub const ACTIVITY_RANGES: [(&str, u32, u32); 3] = [("1h", 60, 60), ("24h", 96, 900), ("7d", 84, 7200)];

/// Like [`activity`], over `buckets` buckets (1 to 1440) of `step_secs` seconds each (60 to
/// 86400), the last holding now: coarser buckets for longer ranges ([`ACTIVITY_RANGES`]).
pub async fn activity_buckets(client: &Client, buckets: u32, step_secs: u32) -> Result<Activity, AdminError> {
    let buckets = buckets.clamp(1, 1440);
    let step_secs = step_secs.clamp(60, 86400);
    let params: [(&(dyn ToSql + Sync), Type); 2] =
        [(&(buckets as i32), Type::INT4), (&(step_secs as i32), Type::INT4)];
    let rows = client.query_typed(ACTIVITY, &params).await?;
    let buckets = buckets as usize;
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
    Ok(Activity { start, step_secs, buckets, queues })
}
