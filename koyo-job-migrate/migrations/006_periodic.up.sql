-- koyo-job schema, version 6: periodic jobs.
--
-- One row per schedule a worker knows (a job defined with `cron = …`/`every = …`, or one
-- added with `WorkerBuilder::periodic`), written by the workers that run it: what it is, the
-- latest slot a job was enqueued for (and that job's id), the next slot, and when a worker last
-- looked at it. Slots themselves are made unique by the jobs' unique keys (version 5); this table
-- only remembers, across restarts, which slot came last (to tell a missed slot from a new
-- schedule) and shows operators what is scheduled.

CREATE TABLE koyo_periodic (
    name        text        PRIMARY KEY CHECK (octet_length(name) BETWEEN 1 AND 200),
    job         text        NOT NULL,
    queue       text        NOT NULL,
    schedule    text        NOT NULL,
    time_zone   text        NOT NULL,
    missed      text        NOT NULL CHECK (missed IN ('run_latest', 'skip')),
    last_slot   timestamptz,
    last_job_id bigint,
    next_slot   timestamptz,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    seen_by     bigint
);
