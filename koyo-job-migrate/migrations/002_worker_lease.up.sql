-- koyo-job schema, version 2: each worker records its lease, so that anyone reading
-- koyo_workers (the admin page, koyo-job-admin) can tell a live worker from one whose
-- heartbeat has stopped, without knowing how the worker was configured.
--
-- Rows of workers started before this version get the default lease (30 s); they are
-- replaced as those workers restart.

ALTER TABLE koyo_workers
    ADD COLUMN lease_secs float8 NOT NULL DEFAULT 30 CHECK (lease_secs > 0);
