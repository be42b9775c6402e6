-- koyo-job schema, version 7: what operators set per queue at run time. A row exists only for
-- a queue someone changed; a paused queue has `paused_at` set.
--
-- Workers' claims skip a paused queue's jobs (one primary-key probe per queue and claim, before
-- any job row is locked): every worker stops claiming from it as soon as the pause commits.
-- Enqueueing goes on, and running jobs finish. The state lives here, so it survives restarts
-- of workers and of the database.

CREATE TABLE koyo_queues (
    queue      text        PRIMARY KEY CHECK (octet_length(queue) BETWEEN 1 AND 64 AND queue ~ '^[A-Za-z0-9_.:-]+$'),
    paused_at  timestamptz,
    paused_by  text        CHECK (octet_length(paused_by) <= 200),
    updated_at timestamptz NOT NULL DEFAULT now()
);
