//! Every SQL statement `koyo-job-admin` sends, in one place. All are static text with `$n`
//! parameters: no value and no identifier is ever formatted into SQL. Timestamps are rendered
//! by the server as RFC 3339 text in UTC, and ages are measured by the server's clock.

use tokio_postgres::types::Type;

/// A statement and the types of its parameters.
pub struct Statement {
    pub sql: &'static str,
    pub types: &'static [Type],
}

/// Per queue: jobs in each state, and the lag (seconds since the oldest ready job fell due,
/// NULL when none is ready). Reads the whole table once: an operator's query, not a hot path.
///
/// Columns: queue, scheduled, ready, running, done, failed, cancelled, lag_secs.
pub const QUEUES: Statement = Statement {
    sql: "
SELECT queue,
       count(*) FILTER (WHERE status = 'scheduled'),
       count(*) FILTER (WHERE status = 'ready'),
       count(*) FILTER (WHERE status = 'running'),
       count(*) FILTER (WHERE status = 'done'),
       count(*) FILTER (WHERE status = 'failed'),
       count(*) FILTER (WHERE status = 'cancelled'),
       -- GREATEST ignores NULLs, so the CASE keeps the lag of a queue with no ready job NULL rather than 0.
       CASE WHEN count(*) FILTER (WHERE status = 'ready') > 0
            THEN GREATEST(0, EXTRACT(EPOCH FROM now() - min(scheduled_at) FILTER (WHERE status = 'ready')))
       END::float8
FROM koyo_jobs
GROUP BY queue
ORDER BY queue",
    types: &[],
};

/// Jobs newest first, filtered, paged by id.
///
/// Params: queue (nullable), states (nullable), before id (nullable), limit.
/// Columns: id, queue, job, status, priority, attempts, max_attempts, scheduled_at (text),
/// finished_at (text, nullable), last_error (nullable).
pub const LIST_JOBS: Statement = Statement {
    sql: "
SELECT id, queue, job, status, priority, attempts, max_attempts,
       to_char(scheduled_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
       to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
       last_error
FROM koyo_jobs
WHERE ($1::text IS NULL OR queue = $1::text)
  AND ($2::text[] IS NULL OR status = ANY($2::text[]))
  AND ($3::int8 IS NULL OR id < $3::int8)
ORDER BY id DESC
LIMIT $4::int8",
    types: &[Type::TEXT, Type::TEXT_ARRAY, Type::INT8, Type::INT8],
};

/// One job, every column but the arguments, which are given as their length in bytes.
///
/// Params: id.
/// Columns: id, queue, job, status, priority, attempts, max_attempts, args_bytes, created_at,
/// scheduled_at, started_at, finished_at (text, the last two nullable), worker_id (nullable),
/// last_error (nullable).
pub const SHOW_JOB: Statement = Statement {
    sql: "
SELECT id, queue, job, status, priority, attempts, max_attempts, octet_length(args)::int8,
       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
       to_char(scheduled_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
       to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
       to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
       worker_id, last_error
FROM koyo_jobs
WHERE id = $1::int8",
    types: &[Type::INT8],
};

/// The state of one job; tells "not found" from "refused" after a conditional update matched
/// nothing.
///
/// Params: id. Columns: status.
pub const JOB_STATUS: Statement =
    Statement { sql: "SELECT status FROM koyo_jobs WHERE id = $1::int8", types: &[Type::INT8] };

/// Makes a job ready now, if its state is one of `$2`, and notifies its queue in the same
/// statement. A failed or cancelled job is no longer finished, and gets one more attempt if it
/// had used all of them (the `SET` expressions read the row as it was before the update).
///
/// Params: id, allowed states. Columns: id, queue, attempts, max_attempts.
pub const RETRY: Statement = Statement {
    sql: "
WITH upd AS (
    UPDATE koyo_jobs
    SET status = 'ready',
        scheduled_at = now(),
        finished_at = CASE WHEN status IN ('failed', 'cancelled') THEN NULL ELSE finished_at END,
        max_attempts = CASE WHEN status IN ('failed', 'cancelled') AND attempts >= max_attempts
                            THEN attempts + 1 ELSE max_attempts END
    WHERE id = $1::int8 AND status = ANY($2::text[])
    RETURNING id, queue, attempts, max_attempts
)
SELECT id, queue, attempts, max_attempts, pg_notify('koyo_jobs', queue)::text FROM upd",
    types: &[Type::INT8, Type::TEXT_ARRAY],
};

/// Cancels a job, if its state is one of `$2`.
///
/// Params: id, allowed states. Columns: id, queue.
pub const CANCEL: Statement = Statement {
    sql: "
UPDATE koyo_jobs
SET status = 'cancelled', finished_at = now()
WHERE id = $1::int8 AND status = ANY($2::text[])
RETURNING id, queue",
    types: &[Type::INT8, Type::TEXT_ARRAY],
};

/// Deletes at most 1,000 finished jobs in the states `$1` that finished more than `$2` seconds
/// ago (database clock), skipping rows another transaction holds. The repeated
/// `status IN (…)` lets the planner use the partial index `koyo_jobs_finished`.
///
/// Params: states, age in seconds. Returns the number of rows deleted.
pub const PRUNE_BATCH: Statement = Statement {
    sql: "
WITH doomed AS (
    SELECT id FROM koyo_jobs
    WHERE status IN ('done', 'failed', 'cancelled')
      AND status = ANY($1::text[])
      AND finished_at < now() - make_interval(secs => $2::float8)
    ORDER BY finished_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
)
DELETE FROM koyo_jobs j USING doomed d WHERE j.id = d.id",
    types: &[Type::TEXT_ARRAY, Type::FLOAT8],
};

/// The size of one prune batch, as in [`PRUNE_BATCH`].
pub const PRUNE_BATCH_SIZE: u64 = 1000;

/// Workers with their heartbeat age (seconds, database clock) and the jobs they are running.
///
/// Columns: id, hostname, pid, queues, pool_size, started_at (text), heartbeat_age_secs,
/// running.
pub const WORKERS: Statement = Statement {
    sql: "
SELECT w.id, w.hostname, w.pid, w.queues, w.pool_size,
       to_char(w.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
       GREATEST(0, EXTRACT(EPOCH FROM now() - w.heartbeat_at))::float8,
       (SELECT count(*) FROM koyo_jobs j WHERE j.worker_id = w.id AND j.status = 'running')
FROM koyo_workers w
ORDER BY w.id",
    types: &[],
};
