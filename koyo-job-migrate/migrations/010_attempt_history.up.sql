-- koyo-job schema, version 10: attempt history.
--
-- A job's latest attempt is described by its own columns (`attempts`, `started_at`,
-- `finished_at`, `worker_id`, `status`, `last_error`). Before those are reused by a later
-- attempt, the attempt that ended is appended to `attempt_log`: when it failed and the job
-- runs again, when its worker was lost and the job goes back to ready, when a worker gave it
-- back (shutdown, a lost claim reply), when an operator retries a finished job. A job whose
-- first attempt succeeds never writes it: the column stays NULL.
--
-- `attempt_log` is a JSON array, oldest first, of objects with `attempt`, `worker_id`,
-- `hostname`, `started_at`, `ended_at`, `outcome` and `error` (at most 2,048 characters; the
-- whole latest error stays in `last_error`). It keeps the latest 25 entries: appending to a
-- full log drops the oldest and counts it in `attempt_log_dropped` (NULL until one is dropped).
--
-- Two nullable columns: nothing is rewritten, and a row that never writes them stores nothing
-- for them. The constraint is added NOT VALID: every existing row holds NULL, which passes, and
-- every row written from now on is checked, so there is no need to read the table (which would
-- hold its lock for the whole scan).

ALTER TABLE koyo_jobs
    ADD COLUMN attempt_log jsonb,
    ADD COLUMN attempt_log_dropped integer,
    ADD CONSTRAINT koyo_jobs_attempt_log_check
        CHECK (jsonb_typeof(attempt_log) = 'array' AND jsonb_array_length(attempt_log) <= 25
               AND attempt_log_dropped >= 0) NOT VALID;
