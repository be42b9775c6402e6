-- koyo-job schema, version 5: unique jobs.
--
-- A unique job carries a key (`unique_key`: the job's name and what makes it unique — a hash
-- of its arguments, its queue, or a key the application chose — and, for "at most one per
-- period", the period it was enqueued in) and the set of states in which it holds that key
-- (`unique_states`, a bitmask: scheduled 1, ready 2, running 4, done 8, failed 16,
-- cancelled 32). The partial unique index below has an entry for every job that holds its key
-- in its current state, so a second job with a held key cannot exist: whoever inserts it, and
-- however many insert at once, the index decides (never a look-then-insert). A job leaves the
-- index by moving to a state that does not hold its key; the runtime only allows state sets
-- that always hold the key while the job waits or runs, so no worker transition can collide.
--
-- Jobs that are not unique have NULL in both columns: no index entry, nothing more to write,
-- and the hot statements (claim, complete) are unchanged. Adding two NULL columns rewrites
-- nothing; building the index reads the table once while writes wait (no row has a key yet).

ALTER TABLE koyo_jobs
    ADD COLUMN unique_key text CHECK (octet_length(unique_key) <= 2000),
    ADD COLUMN unique_states smallint CHECK (unique_states BETWEEN 7 AND 63 AND unique_states & 7 = 7);

CREATE UNIQUE INDEX koyo_jobs_unique ON koyo_jobs (unique_key)
    WHERE unique_key IS NOT NULL
      AND (unique_states & CASE status WHEN 'scheduled' THEN 1 WHEN 'ready' THEN 2 WHEN 'running' THEN 4
                                       WHEN 'done' THEN 8 WHEN 'failed' THEN 16 ELSE 32 END) <> 0;
