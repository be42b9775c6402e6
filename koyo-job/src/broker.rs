//! The broker: where jobs are stored. It owns a connection pool and the connection settings
//! workers use to open their LISTEN connection.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{NoTls, Row};

use crate::error::Error;
use crate::job::{IntoNewJob, JobId, NewJob, RunAt};
use crate::{sql, telemetry};

/// Settings for a [`Broker`]'s connections.
///
/// Build it with struct update syntax:
/// `BrokerOptions { max_connections: 32, ..BrokerOptions::default() }`.
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    /// Most connections the pool opens (default 16). Workers on this broker take connections
    /// from it for claims and completions; each worker also opens one LISTEN connection of
    /// its own, outside the pool.
    pub max_connections: usize,
    /// How long opening a connection may take before it is an error (default 5 s).
    pub connect_timeout: Duration,
    /// How long to wait for a free pooled connection before it is an error (default 10 s).
    pub acquire_timeout: Duration,
    /// How long any one koyo-job statement may take before it is an error and its connection
    /// is discarded (default 30 s). This is what keeps a worker alive when the server hangs.
    pub statement_timeout: Duration,
    /// Whether to keep named prepared statements on pooled connections (default true). Turn it
    /// off behind PgBouncer in transaction mode: every statement is then sent as one unnamed
    /// parse-bind-execute round trip.
    pub prepared_statements: bool,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
            prepared_statements: true,
        }
    }
}

/// Stores jobs in PostgreSQL and hands workers their connections (koyo's broker).
///
/// Cheap to clone: clones share one pool.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    options: BrokerOptions,
    // `tokio_postgres::Config`'s Debug output hides the password, unlike deadpool's config.
    config: tokio_postgres::Config,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Broker {
    /// Connects to the database at `url` (`postgresql://user@host/db` or `key=value` form)
    /// and checks that it answers.
    pub async fn connect(url: &str) -> Result<Broker, Error> {
        let config: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| Error::Config(e.to_string()))?;
        let broker = Broker::new(config, BrokerOptions::default())?;
        drop(broker.client().await?);
        Ok(broker)
    }

    /// Builds a broker from a connection config without connecting yet.
    pub fn new(mut config: tokio_postgres::Config, options: BrokerOptions) -> Result<Broker, Error> {
        if options.max_connections == 0 {
            return Err(Error::Config("max_connections must be at least 1".into()));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        // Half-open sockets (a server that vanished without a FIN) are found by keepalives.
        config.keepalives(true).keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("koyo-job");
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.acquire_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok(Broker { inner: Arc::new(Inner { pool, options, config }) })
    }

    /// The connection pool, for the application's own queries.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The connection settings (the password is hidden from `Debug`).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.inner.config
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<Object, Error> {
        Ok(self.inner.pool.get().await?)
    }

    /// The options this broker was built with.
    pub fn options(&self) -> &BrokerOptions {
        &self.inner.options
    }

    /// Runs one of koyo-job's statements on a pooled connection, within the statement timeout.
    /// A connection whose statement timed out is discarded, not returned to the pool: it may
    /// belong to a server that hangs.
    pub(crate) async fn query(
        &self,
        stmt: &sql::Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        let client = self.client().await?;
        let limit = self.inner.options.statement_timeout;
        let run = async {
            if self.inner.options.prepared_statements {
                let prepared = client.prepare_cached(stmt.sql).await?;
                client.query(&prepared, params).await
            } else {
                query_typed(&client, stmt, params).await
            }
        };
        match tokio::time::timeout(limit, run).await {
            Ok(rows) => Ok(rows?),
            Err(_) => {
                drop(Object::take(client));
                Err(Error::Timeout(limit))
            }
        }
    }

    /// Like [`Broker::query`], for statements that return exactly one row.
    pub(crate) async fn query_one(
        &self,
        stmt: &sql::Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, Error> {
        self.query(stmt, params).await?.into_iter().next().ok_or(Error::NoRow(stmt_name(stmt)))
    }

    /// Stores one job and returns its id. Synchronous mode does not apply.
    pub async fn enqueue(&self, job: impl IntoNewJob) -> Result<JobId, Error> {
        let job = job.into_new_job()?;
        let row = self.query_one(&sql::INSERT_ONE, &insert_one_params(&job).as_refs()).await?;
        telemetry::enqueued([(job.queue, job.name)]);
        Ok(JobId(row.get(0)))
    }

    /// Stores many jobs, of any job types, in one statement and one round trip, and returns
    /// their ids in the same order. Each queue is notified once.
    pub async fn enqueue_many<I>(&self, jobs: I) -> Result<Vec<JobId>, Error>
    where
        I: IntoIterator,
        I::Item: IntoNewJob,
    {
        let batch = Batch::encode(jobs)?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let row = self.query_one(&sql::INSERT_MANY, &batch.params()).await?;
        batch.count_enqueued();
        Ok(batch_ids(&row))
    }
}

/// Stores one job through `client`, which may be inside an open transaction.
pub(crate) async fn enqueue_with<C: Executor + ?Sized>(client: &C, job: NewJob) -> Result<JobId, Error> {
    let rows = query_typed(client.pg_client(), &sql::INSERT_ONE, &insert_one_params(&job).as_refs()).await?;
    let row = rows.first().ok_or(Error::NoRow(stmt_name(&sql::INSERT_ONE)))?;
    telemetry::enqueued([(job.queue, job.name)]);
    Ok(JobId(row.get(0)))
}

/// Sends a statement as one unnamed parse-bind-execute round trip.
pub(crate) async fn query_typed(
    client: &tokio_postgres::Client,
    stmt: &sql::Statement,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let typed: Vec<(&(dyn ToSql + Sync), Type)> =
        params.iter().copied().zip(stmt.types.iter().cloned()).collect();
    client.query_typed(stmt.sql, &typed).await
}

/// The first line of a statement, to name it in errors.
fn stmt_name(stmt: &sql::Statement) -> &'static str {
    stmt.sql.trim_start().lines().next().unwrap_or("")
}

/// Stores many jobs through `client`, which may be inside an open transaction: they exist
/// only if it commits, and workers are notified at commit.
pub async fn enqueue_many_in<C, I>(client: &C, jobs: I) -> Result<Vec<JobId>, Error>
where
    C: Executor + ?Sized,
    I: IntoIterator,
    I::Item: IntoNewJob,
{
    let batch = Batch::encode(jobs)?;
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let rows = query_typed(client.pg_client(), &sql::INSERT_MANY, &batch.params()).await?;
    batch.count_enqueued();
    Ok(rows.first().map(batch_ids).unwrap_or_default())
}

/// A connection koyo-job can store jobs through: a client, or an open transaction, of
/// tokio-postgres or deadpool-postgres. Jobs stored through a transaction exist only if it
/// commits.
pub trait Executor: Sync {
    /// The underlying connection (statements sent on it run inside any open transaction).
    fn pg_client(&self) -> &tokio_postgres::Client;
}

impl Executor for tokio_postgres::Client {
    fn pg_client(&self) -> &tokio_postgres::Client {
        self
    }
}

impl Executor for tokio_postgres::Transaction<'_> {
    fn pg_client(&self) -> &tokio_postgres::Client {
        tokio_postgres::GenericClient::client(self)
    }
}

impl Executor for Object {
    fn pg_client(&self) -> &tokio_postgres::Client {
        self
    }
}

impl Executor for deadpool_postgres::Transaction<'_> {
    fn pg_client(&self) -> &tokio_postgres::Client {
        tokio_postgres::GenericClient::client(&**self)
    }
}

/// The parameters of [`sql::INSERT_ONE`] for one job.
struct InsertOne<'a> {
    job: &'a NewJob,
    at: Option<time::OffsetDateTime>,
    delay: f64,
}

fn insert_one_params(job: &NewJob) -> InsertOne<'_> {
    let (at, delay) = split_run_at(job.run_at);
    InsertOne { job, at, delay }
}

impl InsertOne<'_> {
    fn as_refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.job.queue,
            &self.job.name,
            &self.job.args,
            &self.job.priority,
            &self.job.max_attempts,
            &self.at,
            &self.delay,
        ]
    }
}

fn split_run_at(run_at: RunAt) -> (Option<time::OffsetDateTime>, f64) {
    match run_at {
        RunAt::Now => (None, 0.0),
        RunAt::At(at) => (Some(at), 0.0),
        RunAt::In(delay) => (None, delay.as_secs_f64()),
    }
}

/// Encoded jobs as the parallel arrays [`sql::INSERT_MANY`] takes.
#[derive(Default)]
struct Batch {
    queues: Vec<&'static str>,
    names: Vec<&'static str>,
    args: Vec<Vec<u8>>,
    priorities: Vec<i16>,
    max_attempts: Vec<i32>,
    ats: Vec<Option<time::OffsetDateTime>>,
    delays: Vec<f64>,
}

impl Batch {
    fn encode<I>(jobs: I) -> Result<Batch, Error>
    where
        I: IntoIterator,
        I::Item: IntoNewJob,
    {
        let mut batch = Batch::default();
        for job in jobs {
            let job = job.into_new_job()?;
            let (at, delay) = split_run_at(job.run_at);
            batch.queues.push(job.queue);
            batch.names.push(job.name);
            batch.args.push(job.args);
            batch.priorities.push(job.priority);
            batch.max_attempts.push(job.max_attempts);
            batch.ats.push(at);
            batch.delays.push(delay);
        }
        Ok(batch)
    }

    /// Counts the batch in the enqueue metric (inside a transaction: when stored, even if the
    /// transaction later rolls back).
    fn count_enqueued(&self) {
        telemetry::enqueued(self.queues.iter().copied().zip(self.names.iter().copied()));
    }

    fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.queues,
            &self.names,
            &self.args,
            &self.priorities,
            &self.max_attempts,
            &self.ats,
            &self.delays,
        ]
    }
}

fn batch_ids(row: &tokio_postgres::Row) -> Vec<JobId> {
    row.get::<_, Vec<i64>>(0).into_iter().map(JobId).collect()
}

static DEFAULT_BROKER: RwLock<Option<Broker>> = RwLock::new(None);

tokio::task_local! {
    static TASK_BROKER: Broker;
}

/// Sets the process-wide current broker: the one awaited job stubs store jobs on (koyo's
/// `current-broker`). Replaces any earlier one.
pub fn set_current_broker(broker: Broker) {
    *DEFAULT_BROKER.write().unwrap_or_else(|p| p.into_inner()) = Some(broker);
}

/// The broker awaited job stubs use here: the task-scoped one from [`with_broker`] if any,
/// else the process-wide one from [`set_current_broker`].
pub fn current_broker() -> Option<Broker> {
    TASK_BROKER
        .try_with(Broker::clone)
        .ok()
        .or_else(|| DEFAULT_BROKER.read().unwrap_or_else(|p| p.into_inner()).clone())
}

pub(crate) fn current() -> Result<Broker, Error> {
    current_broker().ok_or(Error::NoCurrentBroker)
}

/// Runs `fut` with `broker` as the current broker for this task (tasks it spawns do not
/// inherit it). Handy in tests, where each test has its own database.
pub async fn with_broker<F: Future>(broker: Broker, fut: F) -> F::Output {
    TASK_BROKER.scope(broker, fut).await
}
