//! Metrics, through the `metrics` facade: install any recorder (a Prometheus exporter, …) and
//! these appear. Without one they cost next to nothing.
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `koyo_job_enqueued_total` | counter | `queue`, `job` |
//! | `koyo_job_started_total` | counter | `queue`, `job` |
//! | `koyo_job_completed_total` | counter | `queue`, `job` |
//! | `koyo_job_retried_total` | counter | `queue`, `job` (attempt failed, will run again) |
//! | `koyo_job_failed_total` | counter | `queue`, `job` (ended `failed`) |
//! | `koyo_job_rescued_total` | counter | — (jobs taken back from workers that stopped heartbeating) |
//! | `koyo_job_run_seconds` | histogram | `queue`, `job` |
//! | `koyo_job_wait_seconds` | histogram | `queue`, `job` (due → claimed) |
//! | `koyo_job_queue_ready` | gauge | `queue` (sampled by each worker for its queues) |
//! | `koyo_job_queue_lag_seconds` | gauge | `queue` (age of the oldest ready job; 0 when none) |

use std::time::Duration;

use crate::middleware::JobInfo;

/// Counts jobs stored, per queue and job name.
pub(crate) fn enqueued<'a>(jobs: impl IntoIterator<Item = (&'a str, &'a str)>) {
    for (queue, job) in jobs {
        metrics::counter!("koyo_job_enqueued_total", "queue" => queue.to_owned(), "job" => job.to_owned())
            .increment(1);
    }
}

/// A claimed job starts, `waited` after it was due.
pub(crate) fn started(job: &JobInfo, waited: Duration) {
    let labels = labels(job);
    metrics::counter!("koyo_job_started_total", &labels).increment(1);
    metrics::histogram!("koyo_job_wait_seconds", &labels).record(waited.as_secs_f64());
}

/// How an attempt ended, and how long its body ran.
pub(crate) enum Ended {
    Completed,
    Retried,
    Failed,
    Cancelled,
}

pub(crate) fn ended(job: &JobInfo, how: Ended, ran: Duration) {
    let labels = labels(job);
    metrics::histogram!("koyo_job_run_seconds", &labels).record(ran.as_secs_f64());
    let name = match how {
        Ended::Completed => "koyo_job_completed_total",
        Ended::Retried => "koyo_job_retried_total",
        Ended::Failed => "koyo_job_failed_total",
        Ended::Cancelled => "koyo_job_cancelled_total",
    };
    metrics::counter!(name, &labels).increment(1);
}

pub(crate) fn rescued(jobs: u64) {
    metrics::counter!("koyo_job_rescued_total").increment(jobs);
}

pub(crate) fn queue_depth(queue: &str, ready: i64, lag_secs: Option<f64>) {
    metrics::gauge!("koyo_job_queue_ready", "queue" => queue.to_owned()).set(ready as f64);
    metrics::gauge!("koyo_job_queue_lag_seconds", "queue" => queue.to_owned()).set(lag_secs.unwrap_or(0.0));
}

fn labels(job: &JobInfo) -> [(&'static str, String); 2] {
    [("queue", job.queue.clone()), ("job", job.name.clone())]
}
