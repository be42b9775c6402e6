-- koyo-job schema, version 8: cancelling a running job.
--
-- An operator's cancel of a job that runs on a live worker cannot change its state (the worker
-- owns it until it writes the attempt's end); it records the request instead, and who made it.
-- The worker that runs the job learns of it by a notification on `koyo_jobs_cancel` (payload
-- `<worker id> <job id>`) or at its next tick, stops the body, and writes the job `cancelled`,
-- fenced like every other result. Two nullable columns: nothing is rewritten, and claiming and
-- completing jobs do not read them.

ALTER TABLE koyo_jobs
    ADD COLUMN cancel_requested_at timestamptz,
    ADD COLUMN cancel_requested_by text CHECK (octet_length(cancel_requested_by) <= 200);
