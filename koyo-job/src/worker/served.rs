//! Which queues the workers of this process serve, so that jobs defined on a queue none of them
//! serves are pointed out instead of waiting in silence (a job declared `queue = "mail"` and a
//! worker left on the default queue is an easy mistake to make).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use crate::registry::Registry;

/// How long after a worker starts it looks for unserved queues: long enough for an application
/// to start all of its workers, one after the other.
pub(super) const CHECK_AFTER: Duration = Duration::from_secs(2);

/// Queue name → how many running workers of this process serve it.
static SERVED: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

/// Queues already warned about, so each is named once per process.
static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// A worker's entry in [`SERVED`], for as long as the worker lives.
pub(super) struct Serving {
    queues: Vec<String>,
}

impl Serving {
    pub(super) fn new(queues: &[String]) -> Serving {
        let mut served = SERVED.lock().unwrap_or_else(|p| p.into_inner());
        for queue in queues {
            *served.entry(queue.clone()).or_default() += 1;
        }
        Serving { queues: queues.to_vec() }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let mut served = SERVED.lock().unwrap_or_else(|p| p.into_inner());
        for queue in &self.queues {
            if let Some(count) = served.get_mut(queue) {
                *count -= 1;
                if *count == 0 {
                    served.remove(queue);
                }
            }
        }
    }
}

/// Logs, once per queue and process, the jobs of `registry` whose queue no running worker of
/// this process serves.
pub(super) fn warn_unserved(registry: &Registry) {
    let mut unserved: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    {
        let served = SERVED.lock().unwrap_or_else(|p| p.into_inner());
        let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
        for job in registry.jobs() {
            if !served.contains_key(job.queue) && !warned.contains(job.queue) {
                unserved.entry(job.queue).or_default().push(job.name);
            }
        }
        warned.extend(unserved.keys().map(|q| (*q).to_owned()));
    }
    for (queue, mut jobs) in unserved {
        jobs.sort_unstable();
        tracing::warn!(
            queue,
            jobs = ?jobs,
            "koyo-job: jobs defined in this program use a queue that no worker in this process serves; \
             they wait for a worker that does (add it with Worker::builder(..).queue({queue:?}), or run \
             one elsewhere)"
        );
    }
}
