//! The JSON API: each handler reads or changes the queue through `koyo_job::admin` (the
//! queries `koyo-job-admin` uses too) and answers JSON. See the crate documentation for the
//! routes and `docs/operations.md` for every field.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State as Extract};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use koyo_job::admin::{self, Action, AdminError, JobFilter};
use koyo_job::tokio_postgres::Client;
use serde::Serialize;
use serde_json::json;

use crate::{State, csrf};

type Shared = Extract<Arc<State>>;

/// The query string's parameters; a malformed one is a JSON 400 like every other bad input.
pub(crate) struct Params(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<HashMap<String, String>>::from_request_parts(parts, state).await {
            Ok(Query(params)) => Ok(Params(params)),
            Err(rejection) => {
                Err(ApiError::bad_request(format!("bad query string: {}", rejection.body_text())))
            }
        }
    }
}

/// The `{id}` of a job route as given (checked by [`job_id`]); undecodable, it is a JSON 400.
pub(crate) struct RawId(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for RawId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(RawId(id)),
            Err(rejection) => Err(ApiError::bad_request(format!("bad job id: {}", rejection.body_text()))),
        }
    }
}

/// The most characters of a job's rendered arguments the API returns.
const MAX_ARGS_CHARS: usize = 4000;
/// The most jobs one page lists.
const MAX_LIMIT: i64 = 500;

// ---------------------------------------------------------------------------------------------
// Errors

/// An error answer: a status and one sentence, as `{"error": "…"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    /// The sentence the answer carries.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }
}

impl From<AdminError> for ApiError {
    fn from(error: AdminError) -> Self {
        match error {
            AdminError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, error.to_string()),
            AdminError::Refused(why) => ApiError::new(StatusCode::CONFLICT, why),
            AdminError::Invalid(why) => ApiError::bad_request(why),
            // Told the way the runtime tells it: with the server's message.
            AdminError::Database(error) => koyo_job::Error::from(error).into(),
            other => database_error(other.to_string()),
        }
    }
}

impl From<koyo_job::Error> for ApiError {
    fn from(error: koyo_job::Error) -> Self {
        database_error(error.to_string())
    }
}

/// 503 with what went wrong; `koyo_job::Error` includes the server's message, and never the
/// connection's password.
fn database_error(message: String) -> ApiError {
    tracing::warn!(error = %message, "koyo-job admin: a database request failed");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.message })).into_response()
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

pub(crate) type ApiResult<T> = Result<Json<T>, ApiError>;

/// Runs `query` on a pooled connection within the router's query timeout. A connection whose
/// query timed out is dropped rather than returned to the pool: its server may hang.
pub(crate) async fn with_client<T>(
    state: &State,
    query: impl AsyncFnOnce(&Client) -> Result<T, AdminError>,
) -> Result<T, ApiError> {
    let client = state.broker.client().await?;
    match tokio::time::timeout(state.query_timeout, query(&client)).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            drop(koyo_job::deadpool_postgres::Object::take(client));
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the database did not answer within {:?}", state.query_timeout),
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Input

fn job_id(raw: &str) -> Result<i64, ApiError> {
    admin::parse_id(raw).ok_or_else(|| {
        ApiError::bad_request(format!(
            "job ids are positive integers below 2^63, not `{}`",
            shorten(raw, 40).escape_debug()
        ))
    })
}

/// `queue`, `state`, `limit`, `before` and the search (`id`, `job`, `error`, `created_after`,
/// `created_before`, `finished_after`, `finished_before`); empty values mean "not given", other
/// parameters are ignored.
pub(crate) fn job_filter(params: &HashMap<String, String>) -> Result<JobFilter, ApiError> {
    let given = |key: &str| params.get(key).map(String::as_str).filter(|v| !v.is_empty());
    let queue = match given("queue") {
        Some(q) if admin::is_queue_name(q) => Some(q.to_owned()),
        Some(q) => {
            return Err(ApiError::bad_request(format!(
                "invalid queue name `{}`: 1 to 64 of ASCII letters, digits and _ . : -",
                shorten(q, 70).escape_debug()
            )));
        }
        None => None,
    };
    let states = given("state").map(|s| admin::parse_states(s, &admin::STATES)).transpose();
    let states = states.map_err(|why| ApiError::bad_request(shorten(&why, 300)))?;
    let limit = match given("limit") {
        None => 50,
        Some(raw) => raw.parse::<i64>().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
            ApiError::bad_request(format!(
                "limit must be a whole number from 1 to {MAX_LIMIT}, not `{}`",
                shorten(raw, 40).escape_debug()
            ))
        })?,
    };
    let before = given("before").map(job_id).transpose()?;
    let id = given("id").map(job_id).transpose()?;
    let bad = |why: String| ApiError::bad_request(shorten(&why, 300));
    let job = given("job").map(admin::parse_job_pattern).transpose().map_err(bad)?;
    let error = given("error").map(admin::parse_error_text).transpose().map_err(bad)?;
    let time = |key: &str| {
        given(key)
            .map(|raw| admin::TimeBound::parse(raw).map_err(|why| bad(format!("{key}: {why}"))))
            .transpose()
    };
    Ok(JobFilter {
        queue,
        states,
        before,
        limit,
        id,
        job,
        error,
        created_after: time("created_after")?,
        created_before: time("created_before")?,
        finished_after: time("finished_after")?,
        finished_before: time("finished_before")?,
    })
}

/// At most `max` characters of `text`.
pub(crate) fn shorten(text: &str, max: usize) -> &str {
    text.char_indices().nth(max).map_or(text, |(end, _)| &text[..end])
}

// ---------------------------------------------------------------------------------------------
// Shared answers

/// The counts per queue read the whole table: one answer serves every viewer for at least this
/// long (and longer on a big table: see [`COST_FACTOR`]).
const QUEUES_TTL: Duration = Duration::from_secs(1);
/// The charts read every job of the hour.
const ACTIVITY_TTL: Duration = Duration::from_secs(10);
/// An answer stays fresh for at least this many times as long as it took to compute, so the
/// page never keeps the database busy more than a tenth of the time, however big the table.
const COST_FACTOR: u32 = 10;

/// The last answer of an expensive route, shared by every viewer of the router: fresh for
/// `max(ttl, COST_FACTOR × the time it took)`. The lock is held while computing, so requests
/// arriving meanwhile wait for that answer instead of running the query again.
#[derive(Default)]
pub(crate) struct SharedAnswer {
    last: tokio::sync::Mutex<Option<Answer>>,
}

struct Answer {
    key: u32,
    body: String,
    fresh_until: Instant,
}

impl SharedAnswer {
    /// Forgets the last answer (after a change the viewer should see at once).
    pub(crate) async fn forget(&self) {
        *self.last.lock().await = None;
    }

    async fn get_or_compute<T: Serialize>(
        &self,
        key: u32,
        ttl: Duration,
        compute: impl AsyncFnOnce() -> Result<T, ApiError>,
    ) -> Result<Response, ApiError> {
        let mut last = self.last.lock().await;
        let body = match last.as_ref().filter(|a| a.key == key && Instant::now() < a.fresh_until) {
            Some(answer) => answer.body.clone(),
            None => {
                let started = Instant::now();
                let body = serde_json::to_string(&compute().await?).expect("plain data serializes");
                let fresh_until = Instant::now() + ttl.max(started.elapsed() * COST_FACTOR);
                *last = Some(Answer { key, body: body.clone(), fresh_until });
                body
            }
        };
        Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

pub(crate) async fn queues(Extract(state): Shared) -> Result<Response, ApiError> {
    state
        .queues
        .get_or_compute(0, QUEUES_TTL, async || {
            Ok(json!({ "queues": with_client(&state, async |c| admin::queues(c).await).await? }))
        })
        .await
}

pub(crate) async fn jobs(Extract(state): Shared, Params(params): Params) -> ApiResult<admin::JobPage> {
    let filter = job_filter(&params)?;
    with_client(&state, async |c| admin::jobs(c, &filter).await).await.map(Json)
}

/// `GET api/jobs/count?…`: how many jobs the filter matches (paging ignored), e.g. before a
/// bulk action on it.
pub(crate) async fn count(Extract(state): Shared, Params(params): Params) -> ApiResult<serde_json::Value> {
    let filter = job_filter(&params)?;
    let count = with_client(&state, async |c| admin::count(c, &filter).await).await?;
    Ok(Json(json!({ "count": count })))
}

/// A job as `admin::job` reads it (its raw arguments left out), with them decoded for display
/// and the actions its state allows.
#[derive(Serialize)]
pub(crate) struct JobDetailBody {
    #[serde(flatten)]
    job: admin::JobDetail,
    args: ArgsJson,
    actions: ActionsJson,
}

#[derive(Serialize)]
struct ArgsJson {
    bytes: usize,
    display: Option<String>,
    note: Option<String>,
}

#[derive(Serialize)]
struct ActionsJson {
    retry: bool,
    cancel: bool,
    delete: bool,
}

pub(crate) async fn job(Extract(state): Shared, RawId(id): RawId) -> ApiResult<JobDetailBody> {
    let id = job_id(&id)?;
    detail(&state, id).await.map(Json)
}

async fn detail(state: &State, id: i64) -> Result<JobDetailBody, ApiError> {
    let job = with_client(state, async |c| admin::job(c, id).await).await?.ok_or(AdminError::NotFound(id))?;
    let allowed = |action| !state.read_only && job.allows(action);
    let actions = ActionsJson {
        retry: allowed(Action::Retry),
        cancel: allowed(Action::Cancel),
        delete: allowed(Action::Delete),
    };
    Ok(JobDetailBody { args: render_args(&job.job, &job.args), actions, job })
}

/// The arguments through this binary's definition of the job, truncated; or why not.
fn render_args(job: &str, bytes: &[u8]) -> ArgsJson {
    let rendered = koyo_job::Registry::global()
        .map_err(|e| format!("the job definitions of this program are inconsistent: {e}"))
        .and_then(|registry| registry.render_args(job, bytes).map_err(|e| e.to_string()));
    match rendered {
        Ok(text) if text.is_empty() => {
            ArgsJson { bytes: bytes.len(), display: None, note: Some("no arguments".into()) }
        }
        Ok(text) => {
            let shown = shorten(&text, MAX_ARGS_CHARS);
            let display = if shown.len() < text.len() {
                format!("{shown}… ({} more characters)", text[shown.len()..].chars().count())
            } else {
                text
            };
            ArgsJson { bytes: bytes.len(), display: Some(display), note: None }
        }
        Err(why) => ArgsJson { bytes: bytes.len(), display: None, note: Some(why) },
    }
}

pub(crate) async fn workers(Extract(state): Shared) -> ApiResult<serde_json::Value> {
    Ok(Json(json!({ "workers": with_client(&state, async |c| admin::workers(c).await).await? })))
}

pub(crate) async fn periodic(Extract(state): Shared) -> ApiResult<serde_json::Value> {
    Ok(Json(json!({ "periodic": with_client(&state, async |c| admin::periodic(c).await).await? })))
}

pub(crate) async fn activity(Extract(state): Shared, Params(params): Params) -> Result<Response, ApiError> {
    if let Some(raw) = params.get("range").map(String::as_str).filter(|r| !r.is_empty()) {
        let &(_, buckets, step) =
            admin::ACTIVITY_RANGES.iter().find(|(name, ..)| *name == raw).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "range must be one of 1h, 24h and 7d, not `{}`",
                    shorten(raw, 40).escape_debug()
                ))
            })?;
        return state
            .activity
            .get_or_compute(step * 10_000 + buckets, ACTIVITY_TTL, async || {
                with_client(&state, async |c| admin::activity_buckets(c, buckets, step).await).await
            })
            .await;
    }
    let minutes = match params.get("minutes").map(String::as_str).filter(|m| !m.is_empty()) {
        None => 60,
        Some(raw) => raw.parse::<u32>().ok().filter(|m| (1..=1440).contains(m)).ok_or_else(|| {
            ApiError::bad_request(format!(
                "minutes must be a whole number from 1 to 1440, not `{}`",
                shorten(raw, 40).escape_debug()
            ))
        })?,
    };
    state
        .activity
        .get_or_compute(minutes, ACTIVITY_TTL, async || {
            with_client(&state, async |c| admin::activity(c, minutes).await).await
        })
        .await
}

#[derive(Serialize)]
pub(crate) struct CsrfBody {
    token: String,
}

pub(crate) async fn csrf(Extract(state): Shared) -> Json<CsrfBody> {
    Json(CsrfBody { token: state.csrf.clone() })
}

// ---------------------------------------------------------------------------------------------
// Changing

pub(crate) async fn retry(state: Shared, headers: HeaderMap, id: RawId) -> ApiResult<JobDetailBody> {
    act(state, headers, id, Action::Retry).await
}

pub(crate) async fn cancel(state: Shared, headers: HeaderMap, id: RawId) -> ApiResult<JobDetailBody> {
    act(state, headers, id, Action::Cancel).await
}

async fn act(
    Extract(state): Shared,
    headers: HeaderMap,
    RawId(id): RawId,
    action: Action,
) -> ApiResult<JobDetailBody> {
    let id = permitted(&state, &headers, &id)?;
    let done = with_client(&state, async |c| admin::apply_as(c, id, action, "the admin page").await).await?;
    tracing::info!(job.id = id, job.queue = %done.queue, "koyo-job admin: {}", past_tense(action));
    state.queues.forget().await;
    detail(&state, id).await.map(Json)
}

#[derive(Serialize)]
pub(crate) struct DeletedBody {
    deleted: i64,
}

pub(crate) async fn delete(
    Extract(state): Shared,
    headers: HeaderMap,
    RawId(id): RawId,
) -> ApiResult<DeletedBody> {
    let id = permitted(&state, &headers, &id)?;
    let done =
        with_client(&state, async |c| admin::apply_as(c, id, Action::Delete, "the admin page").await).await?;
    tracing::info!(job.id = id, job.queue = %done.queue, "koyo-job admin: {}", past_tense(Action::Delete));
    state.queues.forget().await;
    Ok(Json(DeletedBody { deleted: id }))
}

/// The checks every change of a job passes first: read-only mode, CSRF, then the id.
fn permitted(state: &State, headers: &HeaderMap, raw_id: &str) -> Result<i64, ApiError> {
    changes_permitted(state, headers)?;
    job_id(raw_id)
}

/// The checks every change passes first: read-only mode, then CSRF.
pub(crate) fn changes_permitted(state: &State, headers: &HeaderMap) -> Result<(), ApiError> {
    if state.read_only {
        return Err(ApiError::forbidden("this admin page is read-only"));
    }
    csrf::check(headers, &state.csrf)
}

/// The `{queue}` of a queue route, checked against the naming rule.
fn queue_name(raw: &str) -> Result<String, ApiError> {
    if admin::is_queue_name(raw) {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::bad_request(format!(
            "`{}` is not a queue name: 1 to 64 of ASCII letters, digits, `_`, `.`, `:` and `-`",
            shorten(raw, 80).escape_debug()
        )))
    }
}

/// Pauses a queue: no worker claims its jobs until it is resumed.
pub(crate) async fn pause(state: Shared, headers: HeaderMap, queue: RawId) -> ApiResult<serde_json::Value> {
    on_queue(state, headers, queue, true).await
}

/// Resumes a paused queue.
pub(crate) async fn resume(state: Shared, headers: HeaderMap, queue: RawId) -> ApiResult<serde_json::Value> {
    on_queue(state, headers, queue, false).await
}

/// Pauses (`pause`) or resumes a queue, after the checks every change passes.
async fn on_queue(
    Extract(state): Shared,
    headers: HeaderMap,
    RawId(raw): RawId,
    pause: bool,
) -> ApiResult<serde_json::Value> {
    changes_permitted(&state, &headers)?;
    let queue = queue_name(&raw)?;
    let body = if pause {
        let since = with_client(&state, async |c| admin::pause(c, &queue, "the admin page").await).await?;
        json!({ "queue": queue, "paused_at": since })
    } else {
        let was_paused = with_client(&state, async |c| admin::resume(c, &queue).await).await?;
        json!({ "queue": queue, "was_paused": was_paused })
    };
    tracing::info!(queue = %queue, "koyo-job admin: queue {}", if pause { "paused" } else { "resumed" });
    state.queues.forget().await;
    Ok(Json(body))
}

/// Sets a queue's fleet-wide limits (the body's fields; null clears one).
pub(crate) async fn limits(
    Extract(state): Shared,
    headers: HeaderMap,
    RawId(raw): RawId,
    body: axum::body::Bytes,
) -> ApiResult<serde_json::Value> {
    changes_permitted(&state, &headers)?;
    let queue = queue_name(&raw)?;
    // An object only: serde would also read a struct from an array of its fields.
    let limits: admin::QueueLimits =
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body)
            .and_then(|object| serde_json::from_value(serde_json::Value::Object(object)))
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "the body must be a JSON object with max_running, rate_limit and rate_period_secs \
                 (each a number or null): {e}"
                ))
            })?;
    let now =
        with_client(&state, async |c| admin::set_limits(c, &queue, &limits, "the admin page").await).await?;
    tracing::info!(queue = %queue, ?now, "koyo-job admin: queue limits set");
    state.queues.forget().await;
    Ok(Json(json!({ "queue": queue, "limits": now })))
}

fn past_tense(action: Action) -> &'static str {
    match action {
        Action::Retry => "job retried",
        Action::Cancel => "job cancelled",
        Action::Delete => "job deleted",
    }
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such page or API route")
}

/// A route asked with a method it does not serve. axum adds the `Allow` header listing the
/// methods it does.
pub(crate) async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on this route (the Allow header lists the methods that are)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(pairs: &[(&str, &str)]) -> Result<JobFilter, ApiError> {
        job_filter(&pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
    }

    #[test]
    fn filters_parse_and_empty_values_mean_all() {
        let f = filter(&[("queue", "mail"), ("state", "failed,ready"), ("limit", "10"), ("before", "99")])
            .unwrap();
        assert_eq!(f.queue.as_deref(), Some("mail"));
        assert_eq!(f.states, Some(vec!["failed".into(), "ready".into()]));
        assert_eq!((f.limit, f.before), (10, Some(99)));
        let all = filter(&[("queue", ""), ("state", ""), ("other", "x")]).unwrap();
        assert_eq!(all, JobFilter::default());
    }

    #[test]
    fn bad_filters_are_refused_with_a_reason() {
        for (pairs, says) in [
            (&[("queue", "no spaces")][..], "invalid queue name"),
            (&[("state", "ready,bogus")], "unknown state `bogus`"),
            (&[("limit", "0")], "limit must be"),
            (&[("limit", "501")], "limit must be"),
            (&[("before", "-3")], "positive integers"),
        ] {
            let error = filter(pairs).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST);
            assert!(error.message.contains(says), "{pairs:?}: {}", error.message);
        }
    }

    #[test]
    fn long_text_is_shortened_on_a_character_boundary() {
        assert_eq!(shorten("héllo", 2), "hé");
        assert_eq!(shorten("hi", 5), "hi");
    }
}
