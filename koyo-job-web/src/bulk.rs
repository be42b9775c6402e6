//! Bulk actions over the JSON API: `POST api/bulk` checks the request, counts the jobs and
//! answers at once (202) with an operation id; the batches run in a background task, one
//! pooled connection and one query time-out per batch; `GET api/bulk/{id}` reports progress.
//!
//! Operations are kept in this process's memory (the last [`KEPT`]), not in the database: a
//! bulk action is a sequence of independent batches whose effect is in the jobs' rows, and
//! running it again with the same filter finishes an interrupted one, so a record that
//! outlived the process would add a table and nothing an operator needs. Behind a load
//! balancer, progress is answered by the replica that runs the operation.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use koyo_job::admin::{self, Action, BulkProgress, BulkRun, BulkTarget};
use serde::Serialize;
use serde_json::Value;

use crate::State;
use crate::api::{ApiError, ApiResult, RawId, changes_permitted, job_filter, shorten, with_client};

/// How many operations the router remembers; the oldest finished one is forgotten first.
const KEPT: usize = 100;

/// The bulk operations this router started.
#[derive(Default)]
pub(crate) struct BulkOps {
    inner: Mutex<Ops>,
}

#[derive(Default)]
struct Ops {
    next: u64,
    all: BTreeMap<u64, BulkStatus>,
}

/// One operation as `GET api/bulk/{id}` answers it.
#[derive(Clone, Serialize)]
pub(crate) struct BulkStatus {
    id: u64,
    action: &'static str,
    /// `running`, `finished` or `failed`.
    state: &'static str,
    /// Why it stopped, when it failed: the batches before stay done.
    error: Option<String>,
    #[serde(flatten)]
    progress: BulkProgress,
}

impl BulkOps {
    fn insert(&self, action: Action, progress: BulkProgress) -> u64 {
        let mut ops = self.inner.lock().expect("not poisoned");
        ops.next += 1;
        let id = ops.next;
        let state = if progress.finished { "finished" } else { "running" };
        ops.all.insert(id, BulkStatus { id, action: action.verb(), state, error: None, progress });
        while ops.all.len() > KEPT {
            let oldest = ops.all.iter().find(|(_, op)| op.state != "running").map(|(id, _)| *id);
            match oldest {
                Some(oldest) => ops.all.remove(&oldest),
                None => break,
            };
        }
        id
    }

    fn update(&self, id: u64, progress: &BulkProgress, error: Option<String>) {
        let mut ops = self.inner.lock().expect("not poisoned");
        if let Some(op) = ops.all.get_mut(&id) {
            op.progress = progress.clone();
            op.state = match (&error, progress.finished) {
                (Some(_), _) => "failed",
                (None, true) => "finished",
                (None, false) => "running",
            };
            op.error = error;
        }
    }

    fn get(&self, id: u64) -> Option<BulkStatus> {
        self.inner.lock().expect("not poisoned").all.get(&id).cloned()
    }

    fn running(&self) -> usize {
        self.inner.lock().expect("not poisoned").all.values().filter(|op| op.state == "running").count()
    }
}

/// The most operations that may run at once in one router.
const MAX_RUNNING: usize = 4;

/// `POST api/bulk`: `{"action": "retry", "filter": {"queue": "mail", "state": "failed"}}` (the
/// filter's keys and values as `GET api/jobs` takes them, at least one) or `{"action":
/// "delete", "ids": [3, 5]}`. Answers 202 with the operation as `GET api/bulk/{id}` does.
pub(crate) async fn start(
    Extract(state): Extract<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    changes_permitted(&state, &headers)?;
    let (action, target) = request(&body)?;
    if state.bulk.running() >= MAX_RUNNING {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("{MAX_RUNNING} bulk actions are running already; wait until one ends"),
        ));
    }
    let mut run = BulkRun::new(action, target, "the admin page")?;
    with_client(&state, async |c| run.start(c).await.map(|_| ())).await?;
    let id = state.bulk.insert(action, run.progress().clone());
    tracing::info!(
        bulk.id = id,
        total = run.progress().total,
        "koyo-job admin: bulk {} started",
        action.verb()
    );
    let task_state = state.clone();
    tokio::spawn(async move { run_batches(task_state, id, run).await });
    let status = state.bulk.get(id).expect("just inserted");
    Ok((StatusCode::ACCEPTED, Json(status)).into_response())
}

/// Runs the batches, each on a pooled connection within the query time-out, and records the
/// progress after each; stops at the first failure (the batches before stay done).
async fn run_batches(state: Arc<State>, id: u64, mut run: BulkRun) {
    while !run.progress().finished {
        if let Err(error) = with_client(&state, async |c| run.step(c).await).await {
            let message = error.message().to_owned();
            tracing::warn!(bulk.id = id, error = %message, "koyo-job admin: bulk action stopped");
            state.bulk.update(id, run.progress(), Some(message));
            state.queues.forget().await;
            return;
        }
        state.bulk.update(id, run.progress(), None);
    }
    let p = run.progress();
    tracing::info!(
        bulk.id = id,
        applied = p.applied,
        refused = p.refused,
        missing = p.missing,
        "koyo-job admin: bulk {} finished",
        run.action().verb()
    );
    state.queues.forget().await;
}

/// `GET api/bulk/{id}`.
pub(crate) async fn status(Extract(state): Extract<Arc<State>>, RawId(raw): RawId) -> ApiResult<BulkStatus> {
    let id =
        raw.parse::<u64>().ok().filter(|_| raw.bytes().all(|b| b.is_ascii_digit())).ok_or_else(|| {
            ApiError::bad_request(format!(
                "bulk operation ids are whole numbers, not `{}`",
                shorten(&raw, 40).escape_debug()
            ))
        })?;
    state.bulk.get(id).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no bulk operation {id} in this process (the last {KEPT} are kept, in memory)"),
        )
    })
}

/// Reads the request body; every mistake is a 400 that says what is expected.
fn request(body: &[u8]) -> Result<(Action, BulkTarget), ApiError> {
    let bad = |why: String| ApiError::bad_request(why);
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "the body must be JSON like {{\"action\":\"retry\",\"filter\":{{\"queue\":\"mail\",\"state\":\"failed\"}}}} \
             or {{\"action\":\"delete\",\"ids\":[3,5]}}: {e}"
        ))
    })?;
    let Value::Object(fields) = value else {
        return Err(bad("the body must be a JSON object with `action` and `filter` or `ids`".into()));
    };
    if let Some(key) = fields.keys().find(|k| !matches!(k.as_str(), "action" | "filter" | "ids")) {
        return Err(bad(format!(
            "unknown field `{}`: a bulk request has action, and filter or ids",
            shorten(key, 40)
        )));
    }
    let action = match fields.get("action").and_then(Value::as_str) {
        Some("retry") => Action::Retry,
        Some("cancel") => Action::Cancel,
        Some("delete") => Action::Delete,
        _ => return Err(bad("`action` must be \"retry\", \"cancel\" or \"delete\"".into())),
    };
    let target = match (fields.get("filter"), fields.get("ids")) {
        (Some(Value::Object(filter)), None) => {
            let mut params = HashMap::new();
            for (key, value) in filter {
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Null => continue,
                    _ => return Err(bad(format!("filter `{}` must be a string", shorten(key, 40)))),
                };
                if matches!(key.as_str(), "before" | "limit") {
                    return Err(bad(format!("filter `{key}` pages a list; a bulk action takes every match")));
                }
                params.insert(key.clone(), text);
            }
            let filter = job_filter(&params)?;
            if !filter.narrows() {
                return Err(bad(format!(
                    "a bulk {} needs at least one criterion (queue, state, id, job, error or a time); \
                     it never applies to every job at once",
                    action.verb()
                )));
            }
            BulkTarget::Filter(filter)
        }
        (None, Some(Value::Array(ids))) => {
            let ids = ids
                .iter()
                .map(|id| id.as_i64().filter(|id| *id > 0))
                .collect::<Option<Vec<i64>>>()
                .ok_or_else(|| bad("`ids` must be an array of positive job ids".into()))?;
            if ids.is_empty() || ids.len() > admin::MAX_SELECTION {
                return Err(bad(format!(
                    "`ids` names 1 to {} jobs, not {}; use a filter for more",
                    admin::MAX_SELECTION,
                    ids.len()
                )));
            }
            BulkTarget::Ids(ids)
        }
        _ => return Err(bad("give either `filter` (an object) or `ids` (an array of job ids)".into())),
    };
    Ok((action, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_mistakes_say_why() {
        let (action, target) =
            request(br#"{"action":"retry","filter":{"queue":"mail","state":"failed"}}"#).unwrap();
        assert_eq!(action, Action::Retry);
        let BulkTarget::Filter(filter) = target else { panic!("a filter") };
        assert_eq!((filter.queue.as_deref(), filter.states), (Some("mail"), Some(vec!["failed".to_owned()])));
        let (_, target) = request(br#"{"action":"delete","ids":[5,3]}"#).unwrap();
        assert_eq!(target, BulkTarget::Ids(vec![5, 3]));
        for (body, says) in [
            (&b"nope"[..], "must be JSON"),
            (b"[1]", "JSON object"),
            (br#"{"action":"frob","ids":[1]}"#, "`action` must be"),
            (br#"{"action":"retry"}"#, "either `filter`"),
            (br#"{"action":"retry","ids":[1],"filter":{"queue":"a"}}"#, "either `filter`"),
            (br#"{"action":"retry","ids":[0]}"#, "positive job ids"),
            (br#"{"action":"retry","ids":[]}"#, "1 to"),
            (br#"{"action":"retry","filter":{}}"#, "at least one criterion"),
            (br#"{"action":"retry","filter":{"state":"bogus"}}"#, "unknown state"),
            (br#"{"action":"retry","filter":{"created_after":"yesterday"}}"#, "is not a time"),
            (br#"{"action":"retry","filter":{"limit":"5"}}"#, "pages a list"),
            (br#"{"action":"retry","filter":{"queue":"a"},"x":1}"#, "unknown field"),
        ] {
            let error =
                request(body).err().unwrap_or_else(|| panic!("{} accepted", String::from_utf8_lossy(body)));
            assert!(error.message().contains(says), "{}: {}", String::from_utf8_lossy(body), error.message());
        }
    }
}
