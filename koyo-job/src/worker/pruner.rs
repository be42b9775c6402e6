//! The pruner: deletes finished jobs past their retention.

use std::time::Duration;

use super::builder::Retention;
use crate::broker::Broker;
use crate::error::QuietLog;
use crate::sql;

/// Deletes expired finished jobs every `every`, in batches, until a batch comes back short.
/// While there is nothing to delete it looks less and less often (up to 32 × `every`), so an
/// idle worker costs about one query a second (its tick) and nothing more.
pub(super) async fn prune(broker: Broker, retention: Retention, every: Duration) {
    const BATCH: i64 = 1000;
    if retention == Retention::forever() {
        return;
    }
    let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
    let (done, failed, cancelled) = (secs(retention.done), secs(retention.failed), secs(retention.cancelled));
    let mut log = QuietLog::new("worker", "deleting expired finished jobs");
    // The first look is at start-up; afterwards every `pause`.
    let mut pause = Duration::ZERO;
    loop {
        tokio::time::sleep(pause).await;
        let mut deleted = 0;
        loop {
            match broker.query(&sql::PRUNE, &[&done, &failed, &cancelled, &BATCH]).await {
                Ok(rows) => {
                    deleted += rows.len();
                    if (rows.len() as i64) < BATCH {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    log.error(&e);
                    break;
                }
            }
        }
        // Nothing to delete: look half as often each time, from twice `every` (the start-up
        // look finding nothing is the usual case of a fresh or quiet queue), up to 32 times.
        pause = if deleted > 0 { every } else { (pause * 2).clamp(every * 2, every * 32) };
    }
}
