//! Every SQL statement the runtime sends, in one place. All are static text with `$n`
//! parameters: no value and no identifier is ever formatted into SQL.
//!
//! Two notification channels carry a queue name as payload (never arguments):
//! `koyo_jobs` says "ready work on this queue", `koyo_jobs_scheduled` says "a job on this
//! queue is scheduled for later, look at your timer".
//!
//! Each statement carries its parameter types, so it can be sent either as a cached named
//! prepared statement or, where named statements cannot be kept (PgBouncer in transaction
//! mode, a caller's own connection), as one unnamed parse-bind-execute round trip.

use tokio_postgres::types::Type;

/// A statement and the types of its parameters.
pub struct Statement {
    pub sql: &'static str,
    pub types: &'static [Type],
}

/// Listens on every channel; sent once on each new listener connection.
pub const LISTEN: &str = "LISTEN koyo_jobs; LISTEN koyo_jobs_scheduled; LISTEN koyo_jobs_cancel";

/// The channel that announces ready jobs.
pub const READY_CHANNEL: &str = "koyo_jobs";
/// The channel that announces jobs scheduled for later.
pub const SCHEDULED_CHANNEL: &str = "koyo_jobs_scheduled";
/// The channel that asks a worker to stop a running job: payload `<worker id> <job id>`.
pub const CANCEL_CHANNEL: &str = "koyo_jobs_cancel";

/// Inserts one job and notifies in the same statement (so inside a transaction the
/// notification is sent at commit). `$6` is an absolute time, or NULL for "now + `$7` seconds"
/// by the database's clock. Jobs due later start `scheduled`.
///
/// Params: queue, job, args, priority, max_attempts, at (nullable), delay_secs.
pub const INSERT_ONE: Statement = Statement {
    sql: "
WITH input AS (
    SELECT COALESCE($6::timestamptz, now() + make_interval(secs => $7::float8)) AS at
), ins AS (
    INSERT INTO koyo_jobs (queue, job, args, priority, max_attempts, scheduled_at, status)
    SELECT $1::text, $2::text, $3::bytea, $4::int2, $5::int4, input.at,
           CASE WHEN input.at > now() THEN 'scheduled' ELSE 'ready' END
    FROM input
    RETURNING id, status
)
SELECT ins.id,
       pg_notify(CASE WHEN ins.status = 'ready' THEN 'koyo_jobs' ELSE 'koyo_jobs_scheduled' END, $1::text)::text
FROM ins",
    types: &[Type::TEXT, Type::TEXT, Type::BYTEA, Type::INT2, Type::INT4, Type::TIMESTAMPTZ, Type::FLOAT8],
};

/// [`INSERT_ONE`] without the notification, for an enqueue the broker commits itself while
/// another enqueue on the same queue is in flight: the broker announces the job afterwards with
/// [`NOTIFY_QUEUES`] (see `Broker::enqueue`). Returns the id and whether the job went to
/// `scheduled` (true) or `ready` (false), which says on which channel to announce it.
///
/// Params: as [`INSERT_ONE`].
pub const INSERT_ONE_QUIET: Statement = Statement {
    sql: "
WITH input AS (
    SELECT COALESCE($6::timestamptz, now() + make_interval(secs => $7::float8)) AS at
)
INSERT INTO koyo_jobs (queue, job, args, priority, max_attempts, scheduled_at, status)
SELECT $1::text, $2::text, $3::bytea, $4::int2, $5::int4, input.at,
       CASE WHEN input.at > now() THEN 'scheduled' ELSE 'ready' END
FROM input
RETURNING id, status = 'scheduled'",
    types: &[Type::TEXT, Type::TEXT, Type::BYTEA, Type::INT2, Type::INT4, Type::TIMESTAMPTZ, Type::FLOAT8],
};

/// Whether a `koyo_queues` row (columns prefixed with `$prefix`: `""` or `"p."`) sets a
/// fleet-wide limit (migration 9): such a queue is claimed by [`CLAIM_LIMITED`], in turns.
macro_rules! has_limits {
    ($prefix:literal) => {
        concat!("(", $prefix, "max_running IS NOT NULL OR ", $prefix, "rate_limit IS NOT NULL)")
    };
}

/// The predicate of the partial unique index `koyo_jobs_unique` (migration 5), over columns
/// prefixed with `$prefix` (`""` or `"j."`): the job holds its unique key in its current state.
macro_rules! holds_unique_key {
    ($prefix:literal) => {
        concat!(
            $prefix,
            "unique_key IS NOT NULL AND (",
            $prefix,
            "unique_states & CASE ",
            $prefix,
            "status WHEN 'scheduled' THEN 1 WHEN 'ready' THEN 2 WHEN 'running' THEN 4 WHEN 'done' THEN 8 \
             WHEN 'failed' THEN 16 ELSE 32 END) <> 0"
        )
    };
}

/// The unique key of a job, computed by the database: the job's name, then what makes it
/// unique — its arguments (a SHA-256 of their bytes), its queue or the application's key — and,
/// for "at most one per period", the period's length and number by the database's clock.
/// Uses the parameters of [`INSERT_UNIQUE`].
macro_rules! unique_key {
    () => {
        "$2::text || CASE $8::text WHEN 'args' THEN ' args:' || encode(sha256($3::bytea), 'hex') \
                                 WHEN 'queue' THEN ' queue:' || $1::text \
                                 ELSE ' key:' || $9::text END \
                 || COALESCE(' per:' || $10::float8 || 's#' || floor(EXTRACT(EPOCH FROM now()) / $10::float8)::int8, '')"
    };
}

/// The start of both unique inserts, up to their `ON CONFLICT` clause: the due time and key,
/// and the row to insert. Uses the parameters of [`INSERT_UNIQUE`].
macro_rules! unique_insert {
    () => {
        concat!(
            "
WITH input AS (
    SELECT COALESCE($6::timestamptz, now() + make_interval(secs => $7::float8)) AS at, ",
            unique_key!(),
            " AS key
), ins AS (
    INSERT INTO koyo_jobs (queue, job, args, priority, max_attempts, scheduled_at, status, unique_key, unique_states)
    SELECT $1::text, $2::text, $3::bytea, $4::int2, $5::int4, input.at,
           CASE WHEN input.at > now() THEN 'scheduled' ELSE 'ready' END, input.key, $11::int2
    FROM input"
        )
    };
}

/// What both unique inserts return: one row, always — the new (or replaced) job's id, or else
/// the id and state of the job that holds the key (none if it committed after this
/// statement's snapshot, or left the key meanwhile: the caller then asks again), and the key.
macro_rules! unique_answer {
    () => {
        "
), notified AS (
    SELECT pg_notify(CASE WHEN status = 'ready' THEN 'koyo_jobs' ELSE 'koyo_jobs_scheduled' END, $1::text)
    FROM ins
)
SELECT (SELECT id FROM ins) AS id, (SELECT created FROM ins) AS created,
       (SELECT count(*) FROM notified) AS notified, input.key, holder.id AS holder, holder.status AS holder_status
FROM input
LEFT JOIN LATERAL (
    SELECT j.id, j.status FROM koyo_jobs AS j
    WHERE NOT EXISTS (SELECT 1 FROM ins) AND j.unique_key = input.key AND "
    };
}

/// Inserts one unique job unless a job holding the same key exists (`ON CONFLICT DO NOTHING`
/// on the unique index: concurrent inserts of one key store exactly one row), and notifies in
/// the same statement. See `unique_answer!` for what it returns.
///
/// Params: as [`INSERT_ONE`], then scope (`args`, `queue` or `key`), key (for `key`), period
/// in seconds (nullable), states holding the key (bits).
pub const INSERT_UNIQUE: Statement = Statement {
    sql: concat!(
        unique_insert!(),
        "
    ON CONFLICT DO NOTHING
    RETURNING id, status, true AS created",
        unique_answer!(),
        holds_unique_key!("j."),
        "
) AS holder ON true"
    ),
    types: UNIQUE_TYPES,
};

/// [`INSERT_UNIQUE`] in replace mode: a job holding the key that still waits takes this one's
/// arguments, priority, attempts limit and due time (`created` is then false); one that runs is
/// left alone (the caller detaches it with [`DETACH_UNIQUE`] and asks again).
///
/// Params: as [`INSERT_UNIQUE`].
pub const INSERT_UNIQUE_REPLACE: Statement = Statement {
    sql: concat!(
        unique_insert!(),
        "
    ON CONFLICT (unique_key) WHERE ",
        holds_unique_key!(""),
        "
    DO UPDATE SET args = EXCLUDED.args, priority = EXCLUDED.priority, max_attempts = EXCLUDED.max_attempts,
                  scheduled_at = EXCLUDED.scheduled_at, status = EXCLUDED.status
    WHERE koyo_jobs.status IN ('scheduled', 'ready')
    RETURNING id, status, xmax = 0 AS created",
        unique_answer!(),
        holds_unique_key!("j."),
        "
) AS holder ON true"
    ),
    types: UNIQUE_TYPES,
};

const UNIQUE_TYPES: &[Type] = &[
    Type::TEXT,
    Type::TEXT,
    Type::BYTEA,
    Type::INT2,
    Type::INT4,
    Type::TIMESTAMPTZ,
    Type::FLOAT8,
    Type::TEXT,
    Type::TEXT,
    Type::FLOAT8,
    Type::INT2,
];

/// Takes the unique key from a running job, so that a replacing job can be stored beside it
/// (replace mode: the running one was already too far along to take the new arguments).
///
/// Params: job id, its key.
pub const DETACH_UNIQUE: Statement = Statement {
    sql: "UPDATE koyo_jobs SET unique_key = NULL WHERE id = $1 AND unique_key = $2 AND status = 'running'",
    types: &[Type::INT8, Type::TEXT],
};

/// Announces jobs already committed: one notification per (channel, queue) pair, in one
/// statement and one commit. The commit carries nothing that must survive a crash, so it does
/// not wait for its WAL flush (`synchronous_commit` off for this transaction only): the
/// cluster-wide lock a notifying commit holds is released sooner.
///
/// Params: channels, queues (parallel arrays).
pub const NOTIFY_QUEUES: Statement = Statement {
    sql: "
SELECT count(*)
FROM set_config('synchronous_commit', 'off', true) AS s,
     LATERAL (SELECT pg_notify(c, q) FROM unnest($1::text[], $2::text[]) AS t(c, q)) AS n",
    types: &[Type::TEXT_ARRAY, Type::TEXT_ARRAY],
};

/// Inserts many jobs in one statement from parallel arrays, then sends one notification per
/// distinct queue and state. Returns the new ids in input order.
///
/// Params: queues, jobs, args, priorities, max_attempts, ats (nullable elements), delays.
pub const INSERT_MANY: Statement = Statement {
    sql: "
WITH input AS (
    SELECT q, j, a, p, m, COALESCE(at, now() + make_interval(secs => d)) AS at
    FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int2[], $5::int4[], $6::timestamptz[], $7::float8[])
         AS t(q, j, a, p, m, at, d)
), ins AS (
    INSERT INTO koyo_jobs (queue, job, args, priority, max_attempts, scheduled_at, status)
    SELECT q, j, a, p, m, at, CASE WHEN at > now() THEN 'scheduled' ELSE 'ready' END FROM input
    RETURNING id, queue, status
), notified AS (
    SELECT pg_notify(CASE WHEN status = 'ready' THEN 'koyo_jobs' ELSE 'koyo_jobs_scheduled' END, queue)
    FROM (SELECT DISTINCT queue, status FROM ins) AS d
)
SELECT COALESCE(array_agg(id ORDER BY id), '{}'), (SELECT count(*) FROM notified) FROM ins",
    types: &[
        Type::TEXT_ARRAY,
        Type::TEXT_ARRAY,
        Type::BYTEA_ARRAY,
        Type::INT2_ARRAY,
        Type::INT4_ARRAY,
        Type::TIMESTAMPTZ_ARRAY,
        Type::FLOAT8_ARRAY,
    ],
};

/// The database's schema version, checked when a worker starts. Fails with SQLSTATE 42P01
/// when koyo-job's tables were never created.
pub const SCHEMA_VERSION: Statement =
    Statement { sql: "SELECT max(version) FROM koyo_job_migrations", types: &[] };

/// Registers a worker process. Params: hostname, pid, queues, pool_size, lease in seconds.
pub const REGISTER_WORKER: Statement = Statement {
    sql: "
INSERT INTO koyo_workers (hostname, pid, queues, pool_size, lease_secs)
VALUES ($1, $2, $3, $4, $5) RETURNING id",
    types: &[Type::TEXT, Type::INT4, Type::TEXT_ARRAY, Type::INT4, Type::FLOAT8],
};

/// Removes a worker's row at clean shutdown. Params: worker id.
pub const DEREGISTER_WORKER: Statement =
    Statement { sql: "DELETE FROM koyo_workers WHERE id = $1", types: &[Type::INT8] };

/// Claims up to `$2` ready jobs of the given queues for worker `$3`, skipping paused queues and
/// queues with fleet-wide limits (see [`CLAIM_LIMITED`]): a
/// locking read per queue (each an ordered scan of the `koyo_jobs_ready` index that stops at the limit), merged in
/// (priority, scheduled_at, id) order. The attempt is counted here, at claim time, so a job that
/// kills its worker every time still runs out of attempts.
///
/// Params: queues, limit, worker id.
pub const CLAIM: Statement = Statement {
    sql: concat!(
        "
WITH picked AS MATERIALIZED (
    SELECT c.id
    -- Paused queues are left out before any of their rows is locked, and so are queues with
    -- fleet-wide limits: those are claimed by `CLAIM_LIMITED`, in turns.
    FROM (SELECT name FROM unnest($1::text[]) AS u(name)
          WHERE NOT EXISTS (SELECT 1 FROM koyo_queues AS p WHERE p.queue = u.name
                            AND (p.paused_at IS NOT NULL OR ",
        has_limits!("p."),
        "))) AS q,
         LATERAL (
             SELECT id, priority, scheduled_at
             FROM koyo_jobs
             WHERE status = 'ready' AND queue = q.name
             ORDER BY priority, scheduled_at, id
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         ) AS c
    -- A worker that was declared dead (it froze past its lease) claims nothing until it has
    -- registered again: checked once, before any row is locked.
    WHERE EXISTS (SELECT 1 FROM koyo_workers WHERE id = $3)
    ORDER BY c.priority, c.scheduled_at, c.id
    LIMIT $2
), claimed AS (
    UPDATE koyo_jobs AS j
    SET status = 'running', attempts = j.attempts + 1, started_at = now(), worker_id = $3
    FROM picked
    WHERE j.id = picked.id
    RETURNING j.id, j.queue, j.job, j.args, j.attempts, j.max_attempts,
              EXTRACT(EPOCH FROM now() - j.scheduled_at)::float8 AS waited_secs,
              j.priority, j.scheduled_at
)
-- In claim order, which `UPDATE … RETURNING` does not keep: the worker starts (and prefetches)
-- jobs in the order it gets them.
SELECT id, queue, job, args, attempts, max_attempts, waited_secs
FROM claimed
ORDER BY priority, scheduled_at, id"
    ),
    types: &[Type::TEXT_ARRAY, Type::INT8, Type::INT8],
};

/// The first statement of a claim from queues with fleet-wide limits (migration 9), in a
/// transaction with [`CLAIM_LIMITED`]: locks the limited queues' rows among `$1`, in name order,
/// so that claimers of one limited queue take turns. [`CLAIM_LIMITED`], the next statement,
/// takes its snapshot after the lock is granted and so sees every claim committed before.
///
/// Params: queues.
pub const LOCK_LIMITED: Statement = Statement {
    sql: concat!(
        "
SELECT queue FROM koyo_queues
WHERE queue = ANY($1::text[]) AND paused_at IS NULL AND ",
        has_limits!(""),
        "
ORDER BY queue
FOR NO KEY UPDATE"
    ),
    types: &[Type::TEXT_ARRAY],
};

/// In the queues with limits among `$1` (locked by [`LOCK_LIMITED`] in the same transaction),
/// claims up to `$2` ready jobs for worker `$3`, as [`CLAIM`] does, but no more per queue than its
/// room: `max_running` less its running jobs (across the fleet), and `rate_limit` less the
/// starts within the last `rate_period_secs`. Records this claim's starts in the queue's
/// window (dropping entries older than the window).
///
/// Returns one row: the claimed jobs as parallel arrays (in claim order), and the seconds until
/// a rate-limited queue at its limit has room again (`next_room_secs`).
///
/// Times are read with `clock_timestamp()` once the lock is held, not `now()` (the transaction's
/// start, before any wait for the lock): a claim that waited its turn records when it claimed,
/// so the starts recorded for a queue (`started_at`, the rate window) are in the order claims
/// took turns.
///
/// Params: queues, limit, worker id.
pub const CLAIM_LIMITED: Statement = Statement {
    sql: concat!(
        "
WITH clock AS MATERIALIZED (
    SELECT clock_timestamp() AS now
), lim AS MATERIALIZED (
    SELECT q.queue, q.rate_period_secs AS period, w.oldest,
           LEAST($2::int8,
                 q.max_running - (SELECT count(*) FROM koyo_jobs AS r WHERE r.status = 'running' AND r.queue = q.queue),
                 q.rate_limit - w.started) AS room
    FROM clock, koyo_queues AS q,
         LATERAL (SELECT COALESCE(sum(s.n), 0) AS started, min(s.at) AS oldest
                  FROM unnest(q.rate_at, q.rate_n) AS s(at, n)
                  WHERE s.at > clock.now - make_interval(secs => q.rate_period_secs)) AS w
    WHERE q.queue = ANY($1::text[]) AND q.paused_at IS NULL AND ",
        has_limits!("q."),
        "
      -- A worker declared dead claims nothing (as in `CLAIM`).
      AND EXISTS (SELECT 1 FROM koyo_workers WHERE id = $3)
), picked AS MATERIALIZED (
    SELECT c.id
    FROM lim,
         LATERAL (
             SELECT id, priority, scheduled_at
             FROM koyo_jobs
             WHERE status = 'ready' AND queue = lim.queue
             ORDER BY priority, scheduled_at, id
             LIMIT GREATEST(lim.room, 0)
             FOR UPDATE SKIP LOCKED
         ) AS c
    ORDER BY c.priority, c.scheduled_at, c.id
    LIMIT $2
), claimed AS (
    UPDATE koyo_jobs AS j
    SET status = 'running', attempts = j.attempts + 1, started_at = clock.now, worker_id = $3
    FROM picked, clock
    WHERE j.id = picked.id
    RETURNING j.id, j.queue, j.job, j.args, j.attempts, j.max_attempts,
              EXTRACT(EPOCH FROM clock.now - j.scheduled_at)::float8 AS waited_secs,
              j.priority, j.scheduled_at
), started AS (
    SELECT queue, count(*)::int4 AS n FROM claimed GROUP BY queue
), windowed AS (
    -- Read by nothing below: PostgreSQL runs a data-modifying CTE all the same.
    UPDATE koyo_queues AS q
    SET rate_at = ARRAY(SELECT s.at FROM unnest(q.rate_at, q.rate_n) WITH ORDINALITY AS s(at, n, i)
                        WHERE s.at > clock.now - make_interval(secs => q.rate_period_secs) ORDER BY s.i) || clock.now,
        rate_n = ARRAY(SELECT s.n FROM unnest(q.rate_at, q.rate_n) WITH ORDINALITY AS s(at, n, i)
                       WHERE s.at > clock.now - make_interval(secs => q.rate_period_secs) ORDER BY s.i) || started.n
    FROM started, clock
    WHERE q.queue = started.queue AND q.rate_limit IS NOT NULL
), took AS (
    SELECT lim.queue, lim.room, lim.period, lim.oldest, COALESCE(started.n, 0) AS n
    FROM lim LEFT JOIN started USING (queue)
)
SELECT COALESCE(array_agg(c.id ORDER BY c.priority, c.scheduled_at, c.id), '{}') AS ids,
       COALESCE(array_agg(c.queue ORDER BY c.priority, c.scheduled_at, c.id), '{}') AS queues,
       COALESCE(array_agg(c.job ORDER BY c.priority, c.scheduled_at, c.id), '{}') AS jobs,
       COALESCE(array_agg(c.args ORDER BY c.priority, c.scheduled_at, c.id), '{}') AS args,
       COALESCE(array_agg(c.attempts ORDER BY c.priority, c.scheduled_at, c.id), '{}') AS attempts,
       COALESCE(array_agg(c.max_attempts ORDER BY c.priority, c.scheduled_at, c.id), '{}') AS max_attempts,
       COALESCE(array_agg(c.waited_secs ORDER BY c.priority, c.scheduled_at, c.id), '{}') AS waited_secs,
       (SELECT EXTRACT(EPOCH FROM min(COALESCE(took.oldest, clock.now) + make_interval(secs => took.period) - clock.now))::float8
        FROM took, clock WHERE took.period IS NOT NULL AND took.room <= took.n) AS next_room_secs
FROM claimed AS c"
    ),
    types: &[Type::TEXT_ARRAY, Type::INT8, Type::INT8],
};

/// Marks finished attempts done. Every row is fenced by id, attempt, worker and state, so a
/// worker that lost its lease changes nothing. Returns the ids actually written.
///
/// The fence compares `(status, worker_id)` as a row on purpose: written as two plain
/// equalities, the planner may pick the `koyo_jobs_running` index (whose statistics lag right
/// after a burst of claims) and scan it once per array element; as a row it always looks rows up
/// by primary key. The same holds for [`FINISH_UNSUCCESSFUL`] and [`RELEASE`].
///
/// The rows are found with `id = ANY($1)` (an index scan of the primary key) and each row's
/// attempt is looked up in `$2` at the same position, rather than joined with
/// `unnest($1, $2)`: with statistics that still say no job is running (taken before a burst of
/// claims), the planner joined a sequential scan of the table, estimated at one row, with the
/// array in a nested loop: 27,000 running rows × 1,000 results, 6 to 9 s for one statement,
/// which let unwritten results pile up and the next statements grow (a drain of 30,000 jobs by
/// one worker process fell to 513 jobs/s). With no join there is no such plan: 13 ms. The
/// price: `array_position` searches the array for each row, so a statement of n results makes
/// about n²/2 comparisons; against the join's good plan, +6 % at 64 results, +22 % at 256 and
/// +53 % at 1,000, the completer's largest batch (16 ms instead of 10.5 ms).
///
/// Params: ids, attempts, worker id.
pub const COMPLETE: Statement = Statement {
    sql: "
UPDATE koyo_jobs AS j
SET status = 'done', finished_at = now()
WHERE j.id = ANY($1::int8[]) AND j.attempts = ($2::int4[])[array_position($1::int8[], j.id)]
  AND (j.status, j.worker_id) IS NOT DISTINCT FROM ('running'::text, $3::int8)
RETURNING j.id",
    types: &[Type::INT8_ARRAY, Type::INT4_ARRAY, Type::INT8],
};

/// Deletes successfully finished attempts instead of keeping them `done`: used when the
/// retention for done jobs is zero. Fenced and planned like [`COMPLETE`]; returns the ids
/// deleted.
///
/// Params: ids, attempts, worker id.
pub const COMPLETE_DELETE: Statement = Statement {
    sql: "
DELETE FROM koyo_jobs AS j
WHERE j.id = ANY($1::int8[]) AND j.attempts = ($2::int4[])[array_position($1::int8[], j.id)]
  AND (j.status, j.worker_id) IS NOT DISTINCT FROM ('running'::text, $3::int8)
RETURNING j.id",
    types: &[Type::INT8_ARRAY, Type::INT4_ARRAY, Type::INT8],
};

/// Ends attempts that did not succeed: each row goes to the state the worker decided
/// (`ready` or `scheduled` again after `delay` seconds, `failed`, or `cancelled` when an
/// operator cancelled it while it ran), with its error message. An attempt after which the job
/// runs again is appended to the job's `attempt_log` (see `koyo_job_migrate::attempt_log_push!`).
/// Fenced like [`COMPLETE`]. Notifies queues that got ready jobs back.
///
/// Params: ids, attempts, new states, delays in seconds, errors, worker id, attempt adjustments
/// (0, or -1 for attempts that do not count).
pub const FINISH_UNSUCCESSFUL: Statement = Statement {
    sql: concat!(
        "
WITH upd AS (
    UPDATE koyo_jobs AS j
    SET status = d.status,
        attempts = j.attempts + d.adjust,
        scheduled_at = CASE WHEN d.status IN ('failed', 'cancelled') THEN j.scheduled_at
                            ELSE now() + make_interval(secs => d.delay) END,
        finished_at = CASE WHEN d.status IN ('failed', 'cancelled') THEN now() END,
        -- A job stopped because an operator cancelled it says who did.
        last_error = CASE WHEN d.status = 'cancelled'
                          THEN format('cancelled while running, by %s', coalesce(j.cancel_requested_by, 'an operator'))
                          ELSE d.error END,
        -- An attempt after which the job runs again goes to the log; a final one stays in the
        -- row's columns.
        ",
        koyo_job_migrate::attempt_log_push!(
            "d.status IN ('ready', 'scheduled')",
            "CASE WHEN d.adjust < 0 THEN 'not run' ELSE 'retry' END",
            "d.error",
            "now()"
        ),
        "
    FROM unnest($1::int8[], $2::int4[], $3::text[], $4::float8[], $5::text[], $7::int4[])
         AS d(id, attempt, status, delay, error, adjust)
    WHERE j.id = d.id AND j.attempts = d.attempt AND (j.status, j.worker_id) IS NOT DISTINCT FROM ('running'::text, $6::int8)
    RETURNING j.id, j.queue, j.status
), notified AS (
    SELECT pg_notify(CASE WHEN status = 'ready' THEN 'koyo_jobs' ELSE 'koyo_jobs_scheduled' END, queue)
    FROM (SELECT DISTINCT queue, status FROM upd WHERE status IN ('ready', 'scheduled')) AS d
)
SELECT COALESCE(array_agg(id), '{}'), (SELECT count(*) FROM notified) FROM upd"
    ),
    types: &[
        Type::INT8_ARRAY,
        Type::INT4_ARRAY,
        Type::TEXT_ARRAY,
        Type::FLOAT8_ARRAY,
        Type::TEXT_ARRAY,
        Type::INT8,
        Type::INT4_ARRAY,
    ],
};

/// Gives jobs back at shutdown: running jobs the grace did not see finish, and prefetched jobs
/// that never started. They become ready again and the attempt counted at claim time is taken
/// back; `last_error` becomes `$4`, or stays as it was when `$4` is NULL (a prefetched job has
/// nothing to report). A running job's interrupted attempt (`$4` given) is appended to its
/// `attempt_log`, as `given back` (or `cancelled`); a prefetched job's claim is simply undone.
/// Fenced like [`COMPLETE`].
///
/// Params: ids, attempts, worker id, reason (nullable).
pub const RELEASE: Statement = Statement {
    sql: concat!(
        "
WITH upd AS (
    UPDATE koyo_jobs AS j
    -- A job an operator asked to cancel ends cancelled rather than running again.
    SET status = CASE WHEN j.cancel_requested_at IS NULL THEN 'ready' ELSE 'cancelled' END,
        finished_at = CASE WHEN j.cancel_requested_at IS NULL THEN NULL ELSE now() END,
        attempts = j.attempts - 1, last_error = coalesce($4::text, j.last_error),
        ",
        koyo_job_migrate::attempt_log_push!(
            "$4::text IS NOT NULL",
            "CASE WHEN j.cancel_requested_at IS NULL THEN 'given back' ELSE 'cancelled' END",
            "$4::text",
            "now()"
        ),
        "
    FROM unnest($1::int8[], $2::int4[]) AS d(id, attempt)
    WHERE j.id = d.id AND j.attempts = d.attempt AND (j.status, j.worker_id) IS NOT DISTINCT FROM ('running'::text, $3::int8)
    RETURNING j.id, j.queue, j.status
), notified AS (
    SELECT pg_notify('koyo_jobs', queue) FROM (SELECT DISTINCT queue FROM upd WHERE status = 'ready') AS d
)
SELECT COALESCE(array_agg(id), '{}'), (SELECT count(*) FROM notified) FROM upd"
    ),
    types: &[Type::INT8_ARRAY, Type::INT4_ARRAY, Type::INT8, Type::TEXT],
};

/// A worker's periodic look around, in one round trip:
/// - heartbeat: refresh this worker's lease (`alive` is false if another worker has already
///   declared it dead, and it must register again);
/// - rescue (when `$3`): delete workers whose heartbeat is older than their own lease (the one
///   each registered: workers of one fleet may be configured differently) and give
///   their running jobs (and running jobs of workers that no longer exist) back to `ready`
///   (the lost attempt appended to the job's `attempt_log`), or `failed` when out of attempts;
/// - promote this worker's due `scheduled` jobs to `ready`;
/// - notify queues that got ready jobs;
/// - give back jobs claimed in this worker's name that it does not hold (`$4`): claims whose
///   reply was lost (a statement timeout, a broken connection) but which the server committed
///   (logged as `given back`);
/// - report whether ready jobs are waiting, and when the next scheduled one is due;
/// - report which of the queues have fleet-wide limits (claimed with [`CLAIM_LIMITED`]);
/// - when `$5`, report each queue's ready count and lag (for the metrics gauges).
///
/// Params: worker id, queues, rescue?, ids of the jobs the worker holds, sample?
pub const TICK: Statement = Statement {
    sql: concat!(
        "
WITH beat AS (
    UPDATE koyo_workers SET heartbeat_at = now() WHERE id = $1 RETURNING id
), dead AS (
    DELETE FROM koyo_workers
    WHERE $3::bool AND id <> $1 AND heartbeat_at < now() - make_interval(secs => lease_secs)
    RETURNING id
), rescued AS (
    UPDATE koyo_jobs AS j
    -- A job an operator asked to cancel ends cancelled rather than running again.
    SET status = CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'
                      WHEN j.attempts >= j.max_attempts THEN 'failed' ELSE 'ready' END,
        finished_at = CASE WHEN j.cancel_requested_at IS NOT NULL OR j.attempts >= j.max_attempts THEN now() END,
        last_error = format('worker %s was lost during attempt %s (its heartbeat stopped)',
                            j.worker_id, j.attempts),
        -- A lost attempt after which the job runs again goes to the log; a final one stays in
        -- the row's columns.
        ",
        koyo_job_migrate::attempt_log_push!(
            "j.cancel_requested_at IS NULL AND j.attempts < j.max_attempts",
            "'lost'",
            "format('worker %s was lost during attempt %s (its heartbeat stopped)', j.worker_id, j.attempts)",
            "now()"
        ),
        "
    WHERE $3::bool AND j.status = 'running'
      AND (j.worker_id IN (SELECT id FROM dead)
           OR NOT EXISTS (SELECT 1 FROM koyo_workers AS w WHERE w.id = j.worker_id))
    RETURNING j.queue, j.status
), orphaned AS (
    -- Jobs claimed in this worker's name that it does not hold ($4): the claim's reply never
    -- reached it (a statement timeout, a broken connection) although the server committed it.
    -- Given back at once, the attempt not counted.
    UPDATE koyo_jobs AS j
    SET status = 'ready', attempts = j.attempts - 1,
        last_error = format('given back by worker %s, which never received its claim (the reply was lost)', $1::int8),
        ",
        koyo_job_migrate::attempt_log_push!(
            "true",
            "'given back'",
            "format('given back by worker %s, which never received its claim (the reply was lost)', $1::int8)",
            "now()"
        ),
        "
    WHERE j.status = 'running' AND j.worker_id = $1 AND NOT (j.id = ANY($4::int8[]))
      -- If this worker was declared dead, the rescue above owns these rows.
      AND EXISTS (SELECT 1 FROM koyo_workers AS w WHERE w.id = $1)
    RETURNING j.queue
), depth AS (
    SELECT q.name, r.ready, r.lag
    FROM unnest($2::text[]) AS q(name),
         LATERAL (SELECT count(*) AS ready, EXTRACT(EPOCH FROM now() - min(scheduled_at))::float8 AS lag
                  FROM koyo_jobs WHERE status = 'ready' AND queue = q.name) AS r
    WHERE $5::bool
), due AS MATERIALIZED (
    SELECT id FROM koyo_jobs
    WHERE status = 'scheduled' AND queue = ANY($2::text[]) AND scheduled_at <= now()
    ORDER BY queue, scheduled_at
    LIMIT 1000
    FOR UPDATE SKIP LOCKED
), promoted AS (
    UPDATE koyo_jobs AS j SET status = 'ready' FROM due WHERE j.id = due.id RETURNING j.queue
)
SELECT
    EXISTS (SELECT 1 FROM beat) AS alive,
    -- Running jobs of this worker an operator asked to cancel (for a worker that missed the
    -- notification, or does not listen): an index probe on `koyo_jobs_running`.
    (SELECT array_agg(id) FROM koyo_jobs
     WHERE status = 'running' AND worker_id = $1 AND cancel_requested_at IS NOT NULL) AS cancel_ids,
    -- This worker's queues with fleet-wide limits, claimed with `CLAIM_LIMITED`.
    (SELECT COALESCE(array_agg(queue), '{}') FROM koyo_queues
     WHERE queue = ANY($2::text[]) AND paused_at IS NULL AND ",
        has_limits!(""),
        ") AS limited,
    (SELECT count(*) FROM rescued) AS rescued,
    (SELECT count(*) FROM promoted) AS promoted,
    (SELECT count(*) FROM orphaned) AS orphaned,
    (SELECT count(*) FROM (
        SELECT pg_notify('koyo_jobs', q)
        FROM (SELECT queue FROM rescued WHERE status = 'ready' UNION SELECT queue FROM promoted
              UNION SELECT queue FROM orphaned) AS u(q)
    ) AS n) AS notified,
    EXISTS (SELECT 1 FROM koyo_jobs WHERE status = 'ready' AND queue = ANY($2::text[])
            AND NOT EXISTS (SELECT 1 FROM koyo_queues AS p WHERE p.queue = koyo_jobs.queue AND p.paused_at IS NOT NULL)) AS ready,
    -- Per queue, so each is a one-entry index probe rather than a scan of all future jobs.
    (SELECT EXTRACT(EPOCH FROM min(n.at) - now())::float8
     FROM unnest($2::text[]) AS q(name),
          LATERAL (SELECT scheduled_at AS at FROM koyo_jobs
                   WHERE status = 'scheduled' AND queue = q.name AND scheduled_at > now()
                   ORDER BY scheduled_at LIMIT 1) AS n) AS next_due_secs,
    -- Queue depth and lag for the metrics gauges, only when asked ($5): a count of the ready
    -- index entries per queue, so it is sampled every so many ticks, not every one.
    (SELECT array_agg(d.name ORDER BY d.name) FROM depth AS d) AS depth_queues,
    (SELECT array_agg(d.ready ORDER BY d.name) FROM depth AS d) AS depth_ready,
    (SELECT array_agg(d.lag ORDER BY d.name) FROM depth AS d) AS depth_lag_secs"
    ),
    types: &[Type::INT8, Type::TEXT_ARRAY, Type::BOOL, Type::INT8_ARRAY, Type::BOOL],
};

/// Deletes up to `$4` finished jobs older than their state's retention (`$1` done, `$2`
/// failed, `$3` cancelled, in seconds; NULL keeps that state forever), oldest first. Small
/// batches and `SKIP LOCKED` keep locks short; several workers may prune at once.
///
/// Params: done, failed, cancelled retention seconds (nullable), limit.
pub const PRUNE: Statement = Statement {
    sql: "
WITH doomed AS MATERIALIZED (
    SELECT id FROM koyo_jobs
    WHERE status IN ('done', 'failed', 'cancelled')
      AND finished_at < now() - make_interval(secs => LEAST($1::float8, $2::float8, $3::float8))
      AND finished_at < now() - make_interval(secs => CASE status WHEN 'done' THEN $1::float8
                                                                  WHEN 'failed' THEN $2::float8
                                                                  ELSE $3::float8 END)
    ORDER BY finished_at
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
DELETE FROM koyo_jobs AS j USING doomed WHERE j.id = doomed.id RETURNING j.id",
    types: &[Type::FLOAT8, Type::FLOAT8, Type::FLOAT8, Type::INT8],
};

/// Records the periodic schedules a worker runs (creating or updating their rows: a changed
/// expression takes over at the next start) and answers, for each, the latest slot any worker
/// enqueued; also the database's time, from which the worker computes slots.
///
/// Params: names, job names, queues, schedules, time zones, missed policies (parallel arrays),
/// worker id.
pub const PERIODIC_REGISTER: Statement = Statement {
    sql: "
WITH up AS (
    INSERT INTO koyo_periodic AS p (name, job, queue, schedule, time_zone, missed, seen_at, seen_by)
    SELECT n, j, q, s, z, m, now(), $7::int8
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) AS t(n, j, q, s, z, m)
    ON CONFLICT (name) DO UPDATE
    SET job = EXCLUDED.job, queue = EXCLUDED.queue, schedule = EXCLUDED.schedule,
        time_zone = EXCLUDED.time_zone, missed = EXCLUDED.missed, seen_at = now(), seen_by = $7::int8
    RETURNING name, last_slot
)
SELECT now() AS now, COALESCE(array_agg(name), '{}') AS names, COALESCE(array_agg(last_slot), '{}') AS last_slots FROM up",
    types: &[
        Type::TEXT_ARRAY,
        Type::TEXT_ARRAY,
        Type::TEXT_ARRAY,
        Type::TEXT_ARRAY,
        Type::TEXT_ARRAY,
        Type::TEXT_ARRAY,
        Type::INT8,
    ],
};

/// The database's time, for a periodic enqueuer's look.
pub const NOW: Statement = Statement { sql: "SELECT now()", types: &[] };

/// After a periodic enqueuer's look: for each schedule, the slot it enqueued (NULL if none) and
/// that slot's job, and the next slot; never moves `last_slot` back.
///
/// Params: names, slots (nullable elements), job ids (nullable elements), next slots (nullable
/// elements), worker id.
pub const PERIODIC_SEEN: Statement = Statement {
    sql: "
UPDATE koyo_periodic AS p
SET last_job_id = CASE WHEN t.slot IS NOT NULL AND t.slot >= COALESCE(p.last_slot, '-infinity')
                       THEN t.job_id ELSE p.last_job_id END,
    last_slot = GREATEST(p.last_slot, t.slot),
    next_slot = t.next_slot, seen_at = now(), seen_by = $5::int8
FROM unnest($1::text[], $2::timestamptz[], $3::int8[], $4::timestamptz[]) AS t(name, slot, job_id, next_slot)
WHERE p.name = t.name",
    types: &[
        Type::TEXT_ARRAY,
        Type::TIMESTAMPTZ_ARRAY,
        Type::INT8_ARRAY,
        Type::TIMESTAMPTZ_ARRAY,
        Type::INT8,
    ],
};
