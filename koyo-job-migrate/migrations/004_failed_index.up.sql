-- koyo-job schema, version 4: an index of the jobs an operator looks for most, the failed and
-- cancelled ones, newest first.
--
-- The admin page and `koyo-job-admin jobs --state failed` list jobs by id, newest first. Done
-- jobs are the bulk of the table, so without this index a list of the few failed ones reads
-- back through all of them (163 ms with 3,000,000 done rows here, and proportionally more);
-- with it, 0.3 ms. Only rows that are failed or cancelled have an entry, so claiming and
-- completing jobs never touch it.
--
-- Building it reads the table once while writes wait (0.24 s for 3,000,000 rows here).

CREATE INDEX koyo_jobs_failed ON koyo_jobs (id) WHERE status IN ('failed', 'cancelled');
