-- koyo-job schema, version 1: the job table, the worker table and their indexes.
--
-- States (see docs/schema.md for every transition):
--   scheduled  waiting for scheduled_at; a worker moves it to ready when due
--   ready      due now; workers claim these
--   running    claimed by worker_id; attempts already counts this attempt
--   done       finished successfully
--   failed     finished unsuccessfully after max_attempts, or could not be run at all
--   cancelled  cancelled by an operator before it finished

CREATE TABLE koyo_workers (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hostname      text        NOT NULL,
    pid           integer     NOT NULL,
    queues        text[]      NOT NULL,
    pool_size     integer     NOT NULL CHECK (pool_size > 0),
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE koyo_jobs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue         text        NOT NULL CHECK (queue ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    job           text        NOT NULL CHECK (job ~ '^[A-Za-z0-9_.:-]{1,200}$'),
    args          bytea       NOT NULL CHECK (octet_length(args) <= 1048576),
    status        text        NOT NULL DEFAULT 'ready'
                  CHECK (status IN ('scheduled', 'ready', 'running', 'done', 'failed', 'cancelled')),
    priority      smallint    NOT NULL DEFAULT 50 CHECK (priority >= 0),
    attempts      integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts  integer     NOT NULL DEFAULT 20 CHECK (max_attempts > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    scheduled_at  timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    worker_id     bigint,
    last_error    text,
    CHECK (status <> 'running' OR worker_id IS NOT NULL)
);

-- Claiming reads only this index: due jobs of a queue in (priority, scheduled_at, id) order.
CREATE INDEX koyo_jobs_ready ON koyo_jobs (queue, priority, scheduled_at, id) WHERE status = 'ready';
-- Promotion of scheduled jobs and the "next due" lookup.
CREATE INDEX koyo_jobs_scheduled ON koyo_jobs (queue, scheduled_at) WHERE status = 'scheduled';
-- Rescue of jobs held by workers that stopped heartbeating.
CREATE INDEX koyo_jobs_running ON koyo_jobs (worker_id) WHERE status = 'running';
-- Retention: pruning finished jobs oldest first.
CREATE INDEX koyo_jobs_finished ON koyo_jobs (finished_at) WHERE status IN ('done', 'failed', 'cancelled');
