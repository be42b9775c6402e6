//! koyo-job's admin page and JSON API: an [`axum::Router`] that lets an operator see and steer
//! the queue — queues with counts and lag, jobs with their arguments and last error, retry,
//! cancel and delete, live workers, and charts of the last hour — without writing SQL.
//!
//! Mount it under a path of your choice, behind your own authentication: the router has none
//! of its own, and anyone who reaches it can retry, cancel and delete jobs.
//!
//! ```no_run
//! use koyo_job::Broker;
//! use koyo_job_web::Admin;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let broker = Broker::connect("postgresql://app@localhost/app").await?;
//!     let admin = Admin::new(broker).mount("/admin/jobs");
//!     let app = axum::Router::new().merge(admin); // + your authentication layer
//!
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await?; // the page: http://127.0.0.1:3000/admin/jobs
//!     Ok(())
//! }
//! ```
//!
//! [`Admin::router`] gives the router alone, to `nest` yourself.
//!
//! A crate of its own rather than a feature of `koyo-job`, so an application that does not
//! serve the page compiles no HTTP stack, and the page can follow axum's major versions
//! without touching the job runtime.
//!
//! The page is one HTML file, one script and one stylesheet, compiled into the crate: no Node
//! build, no files to deploy, nothing fetched from elsewhere (a strict Content-Security-Policy
//! forbids it). Arguments are shown through the job definitions linked into the serving
//! binary ([`koyo_job::Registry::render_args`]), so mount the router in a program that defines
//! the jobs — usually the application itself.
//!
//! Routes (relative to the mount point; every API answer is JSON, errors are
//! `{"error": "…"}` with status 400, 403, 404, 405, 409 or 503):
//!
//! | method and path | what |
//! |---|---|
//! | `GET /` | the page |
//! | `GET /assets/app.js`, `GET /assets/app.css` | its script and stylesheet |
//! | `GET /api/queues` | per queue: jobs in each state, and lag |
//! | `GET /api/jobs?queue=&state=a,b&limit=&before=` | jobs newest first, cursor-paged; searched by `id`, `job`, `error` and time (`created_after`, …) |
//! | `GET /api/jobs/count?…` | how many jobs a filter matches |
//! | `POST /api/bulk` | retry, cancel or delete every job of a filter or a selection, in batches |
//! | `GET /api/bulk/{id}` | a bulk action's progress |
//! | `GET /api/jobs/{id}` | one job, its arguments decoded, and the actions its state allows |
//! | `POST /api/jobs/{id}/retry` | make it ready now |
//! | `POST /api/jobs/{id}/cancel` | cancel it |
//! | `DELETE /api/jobs/{id}` | delete it |
//! | `POST /api/queues/{queue}/pause`, `…/resume` | stop or restart claims from a queue |
//! | `POST /api/queues/{queue}/limits` | set its fleet-wide limits: `{"max_running": n, "rate_limit": n, "rate_period_secs": s}` (null: none) |
//! | `GET /api/workers` | workers with heartbeat age, lease and jobs in flight |
//! | `GET /api/activity?minutes=60` (or `range=24h`, `7d`) | per queue and bucket: completed, failed, ready backlog |
//! | `GET /api/csrf` | the token mutating requests must carry |
//!
//! Mutating requests must carry the header `x-koyo-csrf` with the router's token (the page
//! reads it from a meta tag; scripts from `GET /api/csrf`) and must not be cross-site: a
//! browser cannot send a custom header to another origin without that origin's consent, and
//! the router never gives it.

#![warn(missing_docs)]

mod api;
mod bulk;
mod csrf;
mod page;

/// The axum this router is built with. The application's `axum` must be the same major version
/// (0.8) for [`Admin::mount`]'s router to merge into its own; this re-export names it.
pub use axum;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use koyo_job::Broker;

/// Builds the admin router: see the [crate documentation](crate).
#[derive(Clone, Debug)]
pub struct Admin {
    broker: Broker,
    read_only: bool,
    csrf_token: Option<String>,
    query_timeout: Duration,
}

impl Admin {
    /// An admin router over `broker`'s database, with mutations allowed and a random CSRF token.
    pub fn new(broker: Broker) -> Self {
        let query_timeout = broker.options().statement_timeout;
        Admin { broker, read_only: false, csrf_token: None, query_timeout }
    }

    /// Shows the queue but refuses every change (403): the page hides its buttons.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// The token mutating requests must carry. By default each router makes a random one,
    /// which is right for one process; give every replica of an application behind a load
    /// balancer the same token (at least 16 characters of a secret), so that a page served by
    /// one replica can post to another.
    ///
    /// # Panics
    ///
    /// If the token is shorter than 16 characters or is not printable ASCII (it travels in an
    /// HTTP header).
    pub fn csrf_token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        assert!(
            token.len() >= 16 && token.bytes().all(|b| b.is_ascii_graphic()),
            "the CSRF token must be at least 16 printable ASCII characters"
        );
        self.csrf_token = Some(token);
        self
    }

    /// How long one of the page's queries may take before it is abandoned (and its connection
    /// dropped). Defaults to the broker's statement timeout.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// The router mounted at `path` (e.g. `"/admin/jobs"`), to `merge` into an application's:
    /// the page answers at `path`, and `path/` redirects there (axum's `nest` alone routes only
    /// the first).
    ///
    /// # Panics
    ///
    /// If `path` does not start with `/`, ends with `/`, or is otherwise refused by axum's `nest`.
    pub fn mount(self, path: &str) -> Router {
        assert!(
            path.starts_with('/') && !path.ends_with('/'),
            "mount the admin page at a path like \"/admin/jobs\""
        );
        let target = path.to_owned();
        Router::new()
            .nest(path, self.router())
            .route(
                &format!("{path}/"),
                get(move || async move { axum::response::Redirect::permanent(&target) }),
            )
            .method_not_allowed_fallback(api::method_not_allowed)
    }

    /// The router, to `nest` under a path of your choice; the page answers at that path.
    pub fn router(self) -> Router {
        let state = Arc::new(State {
            csrf: self.csrf_token.unwrap_or_else(csrf::random_token),
            broker: self.broker,
            read_only: self.read_only,
            query_timeout: self.query_timeout,
            queues: api::SharedAnswer::default(),
            activity: api::SharedAnswer::default(),
            bulk: bulk::BulkOps::default(),
        });
        Router::new()
            .route("/", get(page::index))
            .route("/assets/app.js", get(page::script))
            .route("/assets/app.css", get(page::stylesheet))
            .route("/api/queues", get(api::queues))
            .route("/api/jobs", get(api::jobs))
            .route("/api/jobs/count", get(api::count))
            .route("/api/bulk", post(bulk::start))
            .route("/api/bulk/{id}", get(bulk::status))
            .route("/api/jobs/{id}", get(api::job).delete(api::delete))
            .route("/api/jobs/{id}/retry", post(api::retry))
            .route("/api/jobs/{id}/cancel", post(api::cancel))
            .route("/api/queues/{queue}/pause", post(api::pause))
            .route("/api/queues/{queue}/resume", post(api::resume))
            .route("/api/queues/{queue}/limits", post(api::limits))
            .route("/api/workers", get(api::workers))
            .route("/api/periodic", get(api::periodic))
            .route("/api/activity", get(api::activity))
            .route("/api/csrf", get(api::csrf))
            // After every route: it replaces axum's empty 405 on the routes added so far.
            .method_not_allowed_fallback(api::method_not_allowed)
            .fallback(api::not_found)
            .layer(axum::middleware::from_fn(page::headers))
            .with_state(state)
    }
}

/// What every handler shares.
struct State {
    broker: Broker,
    read_only: bool,
    csrf: String,
    query_timeout: Duration,
    /// The last answers of the two routes that read many rows, shared by every viewer.
    queues: api::SharedAnswer,
    activity: api::SharedAnswer,
    /// Bulk actions started through this router, with their progress.
    bulk: bulk::BulkOps,
}
