-- koyo-job schema, version 3: the same rule for queue and job names, checked without a
-- bounded regular expression.
--
-- PostgreSQL evaluates every CHECK constraint of a row on every UPDATE, and a worker updates
-- each job at least twice (claim, completion). The bounded repetitions of version 1
-- ('^[…]{1,64}$', '^[…]{1,200}$') made its regex engine take about 24 µs per row: measured
-- with perf during a drain, 41 % of the server's CPU went to them. An unbounded class plus a
-- length test is the same rule (the characters are ASCII) at about 0.4 µs.
--
-- The new constraints are added NOT VALID: every existing row already passed the old,
-- equivalent ones, so no full-table scan under an exclusive lock is needed on upgrade. New and
-- updated rows are checked as before.

ALTER TABLE koyo_jobs
    DROP CONSTRAINT koyo_jobs_queue_check,
    DROP CONSTRAINT koyo_jobs_job_check,
    ADD CONSTRAINT koyo_jobs_queue_check
        CHECK (octet_length(queue) BETWEEN 1 AND 64 AND queue ~ '^[A-Za-z0-9_.:-]+$') NOT VALID,
    ADD CONSTRAINT koyo_jobs_job_check
        CHECK (octet_length(job) BETWEEN 1 AND 200 AND job ~ '^[A-Za-z0-9_.:-]+$') NOT VALID;
