-- koyo-job schema, version 9: fleet-wide limits per queue, set by operators at run time.
--
-- `max_running`: at most this many of the queue's jobs run at once, across every worker and
-- host. `rate_limit` per `rate_period_secs`: at most this many of the queue's jobs start in
-- any window of that length (a sliding window, by the database's clock). NULL means no limit.
--
-- Workers claim from a limited queue inside a transaction that first locks the queue's row
-- here, so claimers of one limited queue take turns and each sees the others' claims: the
-- limit holds however many workers claim at once. Starts within the current window are kept
-- in `rate_at`/`rate_n` (when a claim started jobs, and how many: one entry per claim, entries
-- older than the window dropped at each claim). Queues without limits are claimed as before,
-- without touching this table beyond the existing primary-key probe.
--
-- Only columns are added (nullable, or arrays with a constant default): nothing is rewritten.

ALTER TABLE koyo_queues
    ADD COLUMN max_running      integer CHECK (max_running > 0),
    ADD COLUMN rate_limit       integer CHECK (rate_limit > 0),
    ADD COLUMN rate_period_secs float8  CHECK (rate_period_secs > 0 AND rate_period_secs <= 31622400),
    ADD COLUMN rate_at          timestamptz[] NOT NULL DEFAULT '{}',
    ADD COLUMN rate_n           integer[]     NOT NULL DEFAULT '{}',
    ADD COLUMN limited_by       text CHECK (octet_length(limited_by) <= 200),
    ADD CONSTRAINT koyo_queues_rate_check CHECK ((rate_limit IS NULL) = (rate_period_secs IS NULL));
