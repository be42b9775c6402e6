//! The broker: where jobs are stored. It owns a connection pool and the connection settings
//! workers use to open their LISTEN connection.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures_util::future::try_join_all;
use tokio_postgres::Row;
use tokio_postgres::types::{ToSql, Type};

use crate::error::{Error, QuietLog};
use crate::hosts::{Hosts, Opened};
use crate::job::{IntoNewJob, JobId, NewJob, RunAt};
use crate::unique::Enqueued;
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
    /// How long opening a connection to one host may take before it is an error (default 5 s):
    /// the TCP connect, the start-up handshake, authentication, and with several hosts the
    /// `target_session_attrs` check. With a multi-host URL (`host=a,b …`) each host gets this
    /// long before the next is tried, so one attempt takes at most this times the number of
    /// hosts; and a statement on a multi-host broker that waits this long makes the broker look
    /// for another writable host (see "Failover" in `docs/operations.md`).
    pub connect_timeout: Duration,
    /// How long to wait for a free pooled connection before it is an error (default 10 s).
    pub acquire_timeout: Duration,
    /// How long any one koyo-job statement may take before it is an error and its connection
    /// is discarded (default 30 s). This is what keeps a worker alive when the server hangs.
    pub statement_timeout: Duration,
    /// Whether to keep named prepared statements on pooled connections (default true). Turn it
    /// off behind PgBouncer in transaction mode: every statement is then sent as one unnamed
    /// parse-bind-execute round trip. Left on there, the broker turns it off by itself at the
    /// first statement the pooler loses, with a warning ([`Broker::uses_prepared_statements`]).
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
    /// The enqueues this broker commits itself: how many are in flight per queue, and which
    /// queues wait for a trailing notification.
    announcer: Arc<Announcer>,
    /// Whether statements go as cached named prepared statements: `options.prepared_statements`,
    /// until a statement lost on a pooled connection shows a transaction-mode pooler.
    named: AtomicBool,
    /// The config's hosts: how connections are opened, and which are still trusted.
    hosts: Arc<Hosts>,
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
        let hosts = Arc::new(Hosts::new(&config, options.connect_timeout));
        let manager = Manager::from_connect(
            config.clone(),
            Connector(hosts.clone()),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let trusted = hosts.clone();
        let pool = Pool::builder(manager)
            .max_size(options.max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.acquire_timeout))
            .create_timeout(Some(hosts.attempt_bound()))
            .recycle_timeout(Some(options.connect_timeout))
            // After a failover, connections opened before it are closed rather than handed out.
            .pre_recycle(Hook::sync_fn(move |_, metrics| {
                if trusted.trusts(metrics.created) {
                    Ok(())
                } else {
                    Err(HookError::message("opened before a failover"))
                }
            }))
            .build()
            .map_err(|e| Error::Config(e.to_string()))?;
        let named = AtomicBool::new(options.prepared_statements);
        Ok(Broker {
            inner: Arc::new(Inner { pool, options, config, announcer: Arc::default(), named, hosts }),
        })
    }

    /// Opens a connection of its own (outside the pool) as the pool does: host by host with a
    /// multi-host config, within `connect_timeout` per host.
    pub(crate) async fn open_connection(&self) -> Result<Opened, Error> {
        let limit = self.inner.hosts.attempt_bound();
        match tokio::time::timeout(limit, self.inner.hosts.open()).await {
            Ok(opened) => Ok(opened?),
            Err(_) => Err(Error::Timeout(limit)),
        }
    }

    /// The config's hosts, for connections kept outside the pool (the worker's listener).
    pub(crate) fn hosts(&self) -> &Hosts {
        &self.inner.hosts
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

    /// Whether this broker sends its statements as named prepared statements: what
    /// [`BrokerOptions::prepared_statements`] says, until the broker finds its connections go
    /// through a pooler in transaction mode (a prepared statement vanished, or one of the same
    /// name was already there). It then logs a warning, discards the connection, sends the
    /// statement again unnamed (it had not run) and sends every later one unnamed.
    pub fn uses_prepared_statements(&self) -> bool {
        self.inner.named.load(Ordering::Relaxed)
    }

    /// Runs one of koyo-job's statements on a pooled connection, within the statement timeout.
    /// A connection whose statement timed out is discarded, not returned to the pool: it may
    /// belong to a server that hangs. With several hosts, a statement refused because its
    /// server turned read-only (a standby now) is sent once more, on a connection to the
    /// writable host: the server refused it before running anything.
    pub(crate) async fn query(
        &self,
        stmt: &sql::Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        self.send(Work::Statement(stmt, params)).await
    }

    /// Runs koyo-job's statements in order, in one transaction on a pooled connection, within
    /// the statement timeout (as [`Broker::query`]); returns the last one's rows.
    pub(crate) async fn transaction(
        &self,
        stmts: &[(&sql::Statement, &[&(dyn ToSql + Sync)])],
    ) -> Result<Vec<Row>, Error> {
        self.send(Work::Transaction(stmts)).await
    }

    /// Sends `work`, once more when the server refused it before running anything: a named
    /// statement lost on a transaction-mode pooler (sent again unnamed), or a read-only server
    /// with several hosts (sent to the writable one). A transaction refused so was rolled back.
    async fn send(&self, work: Work<'_>) -> Result<Vec<Row>, Error> {
        let mut named = self.uses_prepared_statements();
        let mut moved = !self.inner.hosts.several();
        loop {
            let mut client = self.client().await?;
            let opened = Object::metrics(&client).created;
            let done = self.bounded(opened, work.run(&mut client, named)).await;
            match self.settle(done, client) {
                Err(symptom @ Error::TransactionPooler(_)) if named => named = self.stop_naming(&symptom),
                Err(Error::ReadOnly(_)) if !moved => moved = true,
                answer => return answer,
            }
        }
    }

    /// Stops sending named prepared statements after `symptom` showed they are lost on a
    /// transaction-mode pooler ([`Error::TransactionPooler`]), saying so once: the server
    /// refused the statement before running it, so the caller sends it again unnamed. Returns
    /// `false`, whether to name statements from now on.
    fn stop_naming(&self, symptom: &Error) -> bool {
        if self.inner.named.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                error = %symptom,
                database = self.inner.config.get_dbname().unwrap_or_default(),
                "koyo-job broker: named prepared statements are lost between transactions on these \
                 connections, as behind PgBouncer in pool_mode = transaction; this broker sends \
                 unnamed statements from now on. Set `prepared_statements: false` in BrokerOptions \
                 and `listen(false)` on workers (notifications do not cross such a pooler)"
            );
        }
        false
    }

    /// Runs `work` on a pooled connection within the statement timeout; past it, the connection
    /// is discarded (it may still be executing) and the answer is [`Error::Timeout`]. A
    /// connection that showed a transaction-mode pooler ([`Error::TransactionPooler`]) is
    /// discarded too: its cache names prepared statements the server side does not have; and
    /// so is one abandoned after a failover ([`Broker::bounded`]), found read-only (SQLSTATE
    /// 25006) or broken.
    async fn within_timeout<T>(
        &self,
        work: impl AsyncFnOnce(&mut Object) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut client = self.client().await?;
        let opened = Object::metrics(&client).created;
        let done = self.bounded(opened, work(&mut client)).await;
        self.settle(done, client)
    }

    /// Awaits `work`, done on a connection opened at `opened`, within the statement timeout.
    /// With several hosts it also gives up, with [`Error::FailedOver`], as soon as another host
    /// takes over ([`Hosts::stale`]: a statement waiting `connect_timeout` makes the broker
    /// look for one), rather than wait out the statement timeout on a server that hangs.
    async fn bounded<T>(
        &self,
        opened: std::time::Instant,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<Result<T, Error>, tokio::time::error::Elapsed> {
        tokio::select! {
            done = tokio::time::timeout(self.inner.options.statement_timeout, work) => done,
            () = self.inner.hosts.stale(opened) => Ok(Err(Error::FailedOver)),
        }
    }

    /// The answer of work done on `client` within the statement timeout, discarding the
    /// connection as [`Broker::within_timeout`] says.
    fn settle<T>(
        &self,
        done: Result<Result<T, Error>, tokio::time::error::Elapsed>,
        client: Object,
    ) -> Result<T, Error> {
        match done {
            Ok(Err(error @ (Error::TransactionPooler(_) | Error::FailedOver))) => {
                drop(Object::take(client));
                Err(error)
            }
            // Its server is read-only now (a standby): with several hosts, so are the other
            // connections opened before; the next ones are opened on the writable host.
            Ok(Err(error @ Error::ReadOnly(_))) => {
                if self.inner.hosts.several() {
                    self.inner.hosts.distrust_older();
                }
                drop(Object::take(client));
                Err(error)
            }
            Ok(Err(Error::Database(error))) if connection_lost(&error) => {
                drop(Object::take(client));
                Err(Error::Database(error))
            }
            Ok(answer) => answer,
            Err(_) => {
                drop(Object::take(client));
                Err(Error::Timeout(self.inner.options.statement_timeout))
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
    ///
    /// Workers are woken promptly, but concurrent enqueues on one queue share notifications
    /// (one enqueue notifies in its own commit; others in flight at the same time are announced
    /// by one trailing notification): the call may return just before the notification for its
    /// job is sent.
    pub async fn enqueue(&self, job: impl IntoNewJob) -> Result<JobId, Error> {
        let job = job.into_new_job()?;
        if job.unique.is_some() {
            // A unique job's id is the one that holds its key, new or not.
            return Ok(stored_id(self.enqueue_unique(job).await?));
        }
        let params = insert_one_params(&job);
        let mut flight = InFlight::start(self, &job);
        let id = if flight.inline {
            self.query_one(&sql::INSERT_ONE, &params.as_refs()).await?.get(0)
        } else {
            let row = self.query_one(&sql::INSERT_ONE_QUIET, &params.as_refs()).await?;
            flight.scheduled = Some(row.get(1));
            row.get(0)
        };
        // Committed: announce it (unless it announced itself) before anything else can fail.
        drop(flight);
        telemetry::enqueued([(job.queue, job.name)]);
        Ok(JobId(id))
    }

    /// Stores many jobs, of any job types, in one statement and one round trip, and returns
    /// their ids in the same order. Each queue is notified once.
    ///
    /// Unique jobs among them ([`crate::UniqueJob`]) are stored one by one after the others, in
    /// one transaction with them; for each, the id is that of the job that holds its key, new
    /// or not. [`Broker::enqueue_each`] says which.
    pub async fn enqueue_many<I>(&self, jobs: I) -> Result<Vec<JobId>, Error>
    where
        I: IntoIterator,
        I::Item: IntoNewJob,
    {
        let jobs = encode_all(jobs)?;
        if jobs.iter().any(|job| job.unique.is_some()) {
            return Ok(self.enqueue_each(jobs).await?.into_iter().map(stored_id).collect());
        }
        self.insert_many(jobs).await
    }

    /// Stores jobs none of which is unique, in one statement ([`sql::INSERT_MANY`]).
    async fn insert_many(&self, jobs: Vec<NewJob>) -> Result<Vec<JobId>, Error> {
        let batch = Batch::from_jobs(jobs);
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let row = self.query_one(&sql::INSERT_MANY, &batch.params()).await?;
        batch.count_enqueued();
        Ok(batch_ids(&row))
    }

    /// Stores one unique job, unless a job holding its key exists; says which happened.
    pub(crate) async fn enqueue_unique(&self, job: NewJob) -> Result<Enqueued, Error> {
        self.within_timeout(async |client| insert_unique(client, &job).await).await
    }

    /// Stores many jobs like [`Broker::enqueue_many`], in one transaction, and says for each
    /// whether it was stored ([`Enqueued::Created`]) or, for a unique job, which job already
    /// holds its key ([`Enqueued::Existing`], or [`Enqueued::Replaced`] in replace mode).
    pub async fn enqueue_each<I>(&self, jobs: I) -> Result<Vec<Enqueued>, Error>
    where
        I: IntoIterator,
        I::Item: IntoNewJob,
    {
        let jobs = encode_all(jobs)?;
        if jobs.iter().all(|job| job.unique.is_none()) {
            // One statement stores them all: no transaction needed.
            return Ok(self.insert_many(jobs).await?.into_iter().map(Enqueued::Created).collect());
        }
        self.within_timeout(async |client| {
            let tx = client.transaction().await?;
            let answers = enqueue_each_on(tx.pg_client(), jobs).await?;
            tx.commit().await?;
            Ok(answers)
        })
        .await
    }
}

fn encode_all<I>(jobs: I) -> Result<Vec<NewJob>, Error>
where
    I: IntoIterator,
    I::Item: IntoNewJob,
{
    jobs.into_iter().map(IntoNewJob::into_new_job).collect()
}

/// The id of a job the database stored or found (never in synchronous mode, which the broker's
/// own calls do not use).
fn stored_id(answer: Enqueued) -> JobId {
    answer.id().expect("a stored job has an id")
}

/// Stores `jobs` through `client` (inside a transaction the caller commits): the plain ones in
/// one statement, then each unique one. Answers in input order.
async fn enqueue_each_on(client: &tokio_postgres::Client, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, Error> {
    let mut answers: Vec<Option<Enqueued>> = vec![None; jobs.len()];
    let (mut unique, mut plain, mut plain_at) = (Vec::new(), Vec::new(), Vec::new());
    for (at, job) in jobs.into_iter().enumerate() {
        if job.unique.is_some() {
            unique.push((at, job));
        } else {
            plain_at.push(at);
            plain.push(job);
        }
    }
    let batch = Batch::from_jobs(plain);
    if !batch.is_empty() {
        let rows = query_typed(client, &sql::INSERT_MANY, &batch.params()).await?;
        batch.count_enqueued();
        let ids = rows.first().map(batch_ids).unwrap_or_default();
        for (at, id) in plain_at.into_iter().zip(ids) {
            answers[at] = Some(Enqueued::Created(id));
        }
    }
    for (at, job) in unique {
        answers[at] = Some(insert_unique(client, &job).await?);
    }
    Ok(answers.into_iter().map(|a| a.expect("every job answered")).collect())
}

/// Stores one unique job through `client` ([`sql::INSERT_UNIQUE`], or
/// [`sql::INSERT_UNIQUE_REPLACE`] in replace mode) and turns the statement's answer into an
/// [`Enqueued`]. The statement is sent again when its answer cannot settle the question: the
/// job holding the key committed after the statement's snapshot (so it conflicted but could
/// not be seen), or, in replace mode, it was already running (it is detached first). Always
/// sent unnamed: unique inserts are not the hot path, and this way they work behind PgBouncer.
async fn insert_unique(client: &tokio_postgres::Client, job: &NewJob) -> Result<Enqueued, Error> {
    const TRIES: usize = 20;
    let unique = job.unique.as_ref().expect("a unique job");
    let stmt = if unique.replace { &sql::INSERT_UNIQUE_REPLACE } else { &sql::INSERT_UNIQUE };
    let (at, delay) = split_run_at(job.run_at);
    let params: [&(dyn ToSql + Sync); 11] = [
        &job.queue,
        &job.name,
        &job.args,
        &job.priority,
        &job.max_attempts,
        &at,
        &delay,
        &unique.scope,
        &unique.key,
        &unique.period,
        &unique.states,
    ];
    for _ in 0..TRIES {
        let rows = query_typed(client, stmt, &params).await?;
        let row = rows.first().ok_or(Error::NoRow(stmt_name(stmt)))?;
        let id: Option<i64> = row.get("id");
        let holder: Option<i64> = row.get("holder");
        match (id, row.get::<_, Option<bool>>("created")) {
            (Some(id), Some(false)) => return Ok(Enqueued::Replaced(JobId(id))),
            (Some(id), _) => {
                telemetry::enqueued([(job.queue, job.name)]);
                return Ok(Enqueued::Created(JobId(id)));
            }
            (None, _) => {}
        }
        match (holder, row.get::<_, Option<String>>("holder_status").as_deref()) {
            (Some(holder), Some("running")) if unique.replace => {
                let key: String = row.get("key");
                query_typed(client, &sql::DETACH_UNIQUE, &[&holder, &key]).await?;
            }
            (Some(holder), _) => return Ok(Enqueued::Existing(JobId(holder))),
            (None, _) => {}
        }
    }
    Err(Error::UniqueContended { job: job.name })
}

// ---------------------------------------------------------------------------------------------
// One notification for many concurrent enqueues.
//
// A commit that carries a NOTIFY takes a cluster-wide lock and holds it through its WAL flush,
// so concurrent notifying commits run one at a time (16 clients: INSERT + pg_notify 2.4–2.7k
// transactions/s where the same INSERT alone runs 10–13k). For the enqueues the broker commits
// itself, concurrent ones share notifications:
//
// - an enqueue on a queue where none of this broker's enqueues is in flight sends `INSERT_ONE`,
//   which notifies in its own commit: a lone enqueuer pays nothing more than before;
// - one that starts while another on the same queue is in flight sends `INSERT_ONE_QUIET`, and
//   when it ends (committed, failed or cancelled: the commit may have happened even then) it
//   marks its (channel, queue) pending and returns;
// - one notifier task per broker (started when a mark finds none running; it ends when nothing
//   is pending) sends `NOTIFY_QUEUES` for every pending pair, then again for pairs marked
//   meanwhile: at most one such statement is in flight, and under load each carries the marks
//   of many enqueues.
//
// Why every committed job still wakes a listening worker promptly: a quiet insert B is marked
// only after its statement returned, so B had committed, or never will, before the notifier
// takes the mark; the notification that carries it is sent by a later commit, and a worker
// that claims on it sees B. Often B is covered sooner: if an inline-notifying enqueue A on the
// same queue and channel commits after B, A's own notification already covers B; if A commits
// before B, B's trailing notification does. A failed `NOTIFY_QUEUES` is retried with backoff
// (logged, rate-limited), its marks kept; workers also poll, so a job is never lost, at worst
// found at the next poll. That is also the fallback in the one case where the mark can come
// before the commit: a quiet insert whose call timed out or was cancelled while the server was
// still executing it, and which then commits.
//
// Transactional enqueue (`enqueue_in`, `enqueue_many_in`) is not part of this: there the
// notification must be sent by the caller's commit, so it stays in the statement.
// `enqueue_many` already notifies once per queue per batch.

/// Per broker: enqueues in flight per queue, and the pairs waiting for a trailing notification.
#[derive(Default)]
struct Announcer {
    state: Mutex<AnnounceState>,
}

#[derive(Default)]
struct AnnounceState {
    /// This broker's `enqueue` calls in flight, per queue.
    in_flight: HashMap<&'static str, usize>,
    /// (scheduled channel?, queue) of quiet inserts not announced yet.
    pending: BTreeSet<(bool, &'static str)>,
    /// Whether a notifier task runs (it keeps taking `pending` until it finds it empty).
    notifier: bool,
}

impl Announcer {
    fn lock(&self) -> std::sync::MutexGuard<'_, AnnounceState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One `Broker::enqueue` in flight on its queue. Dropping it (after the statement returned, or
/// when the call is cancelled or fails) ends the flight and, for a quiet insert, marks its queue
/// for the notifier.
struct InFlight<'a> {
    broker: &'a Broker,
    queue: &'static str,
    /// Whether this enqueue notifies in its own statement (no other was in flight).
    inline: bool,
    /// Where the quiet insert put the job, once known: `scheduled` (true) or `ready`.
    scheduled: Option<bool>,
    /// Whether the job may be due later (and so be announced on the scheduled channel).
    maybe_scheduled: bool,
}

impl<'a> InFlight<'a> {
    fn start(broker: &'a Broker, job: &NewJob) -> InFlight<'a> {
        let mut state = broker.inner.announcer.lock();
        let count = state.in_flight.entry(job.queue).or_insert(0);
        *count += 1;
        InFlight {
            broker,
            queue: job.queue,
            inline: *count == 1,
            scheduled: None,
            maybe_scheduled: job.run_at != RunAt::Now,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let announcer = &self.broker.inner.announcer;
        let mut state = announcer.lock();
        match state.in_flight.get_mut(self.queue) {
            Some(count) if *count > 1 => *count -= 1,
            _ => {
                state.in_flight.remove(self.queue);
            }
        }
        if self.inline {
            return;
        }
        match self.scheduled {
            Some(scheduled) => {
                state.pending.insert((scheduled, self.queue));
            }
            // Failed or cancelled: it may have committed all the same; an extra notification
            // costs a worker one empty claim at most.
            None => {
                state.pending.insert((false, self.queue));
                if self.maybe_scheduled {
                    state.pending.insert((true, self.queue));
                }
            }
        }
        if !state.notifier
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            state.notifier = true;
            runtime.spawn(announce(self.broker.clone(), announcer.clone()));
        }
    }
}

/// Whether the connection itself failed (closed, or a socket error), rather than a statement.
fn connection_lost(error: &tokio_postgres::Error) -> bool {
    error.is_closed() || std::error::Error::source(error).is_some_and(|cause| cause.is::<std::io::Error>())
}

/// Opens the pool's connections through [`Hosts::open`].
struct Connector(Arc<Hosts>);

type Connecting<'a> = std::pin::Pin<
    Box<
        dyn Future<
                Output = Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
            > + Send
            + 'a,
    >,
>;

impl deadpool_postgres::Connect for Connector {
    fn connect(&self, _: &tokio_postgres::Config) -> Connecting<'_> {
        Box::pin(async move {
            let (client, connection) = self.0.open().await?;
            let opened = std::time::Instant::now();
            let task = tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::warn!(%error, "koyo-job pooled connection failed");
                }
            });
            self.0.track(opened, task.abort_handle());
            Ok((client, task))
        })
    }
}

/// Clears the "notifier running" flag if the notifier task ends other than by finding nothing
/// pending (its runtime shut down, or the broker was dropped while it waited to retry), so that
/// the next mark starts a new one.
struct NotifierRunning {
    announcer: Arc<Announcer>,
    armed: bool,
}

impl Drop for NotifierRunning {
    fn drop(&mut self) {
        if self.armed {
            self.announcer.lock().notifier = false;
        }
    }
}

/// The notifier: sends one `NOTIFY_QUEUES` for everything pending, repeats while more was
/// marked meanwhile, and ends when nothing is pending. It holds the broker (and so its pool)
/// only while it has something to send; while it waits to retry after an error it holds it
/// weakly, and ends if the broker was dropped meanwhile.
async fn announce(broker: Broker, announcer: Arc<Announcer>) {
    let mut running = NotifierRunning { announcer: announcer.clone(), armed: true };
    let mut broker = broker;
    let mut pause = RETRY_FIRST;
    // Workers also poll, so a failed notification delays jobs; it loses none.
    let mut log = QuietLog::new("broker", "notifying workers of enqueued jobs");
    loop {
        let batch: Vec<(bool, &'static str)> = {
            let mut state = announcer.lock();
            if state.pending.is_empty() {
                state.notifier = false;
                running.armed = false;
                return;
            }
            std::mem::take(&mut state.pending).into_iter().collect()
        };
        let channels: Vec<&str> =
            batch.iter().map(|(s, _)| if *s { sql::SCHEDULED_CHANNEL } else { sql::READY_CHANNEL }).collect();
        let queues: Vec<&str> = batch.iter().map(|(_, q)| *q).collect();
        match broker.query(&sql::NOTIFY_QUEUES, &[&channels, &queues]).await {
            Ok(_) => pause = RETRY_FIRST,
            Err(error) => {
                announcer.lock().pending.extend(batch);
                log.error(&error);
                let weak = Arc::downgrade(&broker.inner);
                drop(broker);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
                match weak.upgrade() {
                    Some(inner) => broker = Broker { inner },
                    None => return,
                }
            }
        }
    }
}

const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Stores one job through `client`, which may be inside an open transaction.
pub(crate) async fn enqueue_with<C: Executor + ?Sized>(client: &C, job: NewJob) -> Result<JobId, Error> {
    if job.unique.is_some() {
        return Ok(stored_id(enqueue_unique_with(client, job).await?));
    }
    let rows = query_typed(client.pg_client(), &sql::INSERT_ONE, &insert_one_params(&job).as_refs()).await?;
    let row = rows.first().ok_or(Error::NoRow(stmt_name(&sql::INSERT_ONE)))?;
    telemetry::enqueued([(job.queue, job.name)]);
    Ok(JobId(row.get(0)))
}

/// Stores one unique job through `client`, which may be inside an open transaction (a
/// rollback then frees the key).
pub(crate) async fn enqueue_unique_with<C: Executor + ?Sized>(
    client: &C,
    job: NewJob,
) -> Result<Enqueued, Error> {
    insert_unique(client.pg_client(), &job).await
}

/// Runs one statement on `client`: as a cached named prepared statement if `named`, else
/// unnamed.
/// What [`Broker::send`] sends: one statement, or several in one transaction.
#[derive(Clone, Copy)]
enum Work<'a> {
    Statement(&'a sql::Statement, &'a [&'a (dyn ToSql + Sync)]),
    Transaction(&'a [(&'a sql::Statement, &'a [&'a (dyn ToSql + Sync)])]),
}

impl Work<'_> {
    async fn run(self, client: &mut Object, named: bool) -> Result<Vec<Row>, Error> {
        match self {
            Work::Statement(stmt, params) => run_statement(client, named, stmt, params).await,
            Work::Transaction(stmts) => in_transaction(client, named, stmts).await,
        }
    }
}

async fn run_statement(
    client: &mut Object,
    named: bool,
    stmt: &sql::Statement,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, Error> {
    Ok(if named {
        let statement = client.prepare_cached(stmt.sql).await?;
        client.query(&statement, params).await?
    } else {
        query_typed(client, stmt, params).await?
    })
}

/// See [`Broker::transaction`]. The statements are sent together (pipelined: one round trip
/// besides `BEGIN` and `COMMIT`); the server runs them in order, each with its own snapshot.
async fn in_transaction(
    client: &mut Object,
    prepared: bool,
    stmts: &[(&sql::Statement, &[&(dyn ToSql + Sync)])],
) -> Result<Vec<Row>, Error> {
    let tx = client.transaction().await?;
    let mut answers = if prepared {
        let mut statements = Vec::with_capacity(stmts.len());
        for (stmt, _) in stmts {
            statements.push(tx.prepare_cached(stmt.sql).await?);
        }
        try_join_all(statements.iter().zip(stmts).map(|(statement, (_, params))| tx.query(statement, params)))
            .await?
    } else {
        try_join_all(stmts.iter().map(|(stmt, params)| query_typed(tx.pg_client(), stmt, params))).await?
    };
    tx.commit().await?;
    Ok(answers.pop().unwrap_or_default())
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
    let jobs = encode_all(jobs)?;
    if jobs.iter().any(|job| job.unique.is_some()) {
        return Ok(enqueue_each_in(client, jobs).await?.into_iter().map(stored_id).collect());
    }
    let batch = Batch::from_jobs(jobs);
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let rows = query_typed(client.pg_client(), &sql::INSERT_MANY, &batch.params()).await?;
    batch.count_enqueued();
    Ok(rows.first().map(batch_ids).unwrap_or_default())
}

/// Stores many jobs through `client` like [`enqueue_many_in`], and says for each whether it
/// was stored or which job already holds its unique key (see [`Broker::enqueue_each`]). Inside
/// the caller's transaction, they exist only if it commits.
pub async fn enqueue_each_in<C, I>(client: &C, jobs: I) -> Result<Vec<Enqueued>, Error>
where
    C: Executor + ?Sized,
    I: IntoIterator,
    I::Item: IntoNewJob,
{
    enqueue_each_on(client.pg_client(), encode_all(jobs)?).await
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
    fn from_jobs(jobs: Vec<NewJob>) -> Batch {
        let mut batch = Batch::default();
        for job in jobs {
            let (at, delay) = split_run_at(job.run_at);
            batch.queues.push(job.queue);
            batch.names.push(job.name);
            batch.args.push(job.args);
            batch.priorities.push(job.priority);
            batch.max_attempts.push(job.max_attempts);
            batch.ats.push(at);
            batch.delays.push(delay);
        }
        batch
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(queue: &'static str, run_at: RunAt) -> NewJob {
        NewJob { queue, name: "t", args: Vec::new(), priority: 0, max_attempts: 1, run_at, unique: None }
    }

    fn unreachable_broker() -> Broker {
        // Nothing is sent: the notifier task never runs on this single-threaded runtime.
        let config: tokio_postgres::Config = "host=127.0.0.1 port=1 user=nobody".parse().unwrap();
        Broker::new(config, BrokerOptions::default()).unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn only_the_first_enqueue_in_flight_on_a_queue_notifies_inline() {
        let broker = unreachable_broker();
        let a = InFlight::start(&broker, &job("q", RunAt::Now));
        let other_queue = InFlight::start(&broker, &job("r", RunAt::Now));
        let mut b = InFlight::start(&broker, &job("q", RunAt::Now));
        let c = InFlight::start(&broker, &job("q", RunAt::In(Duration::from_secs(60))));
        assert!(a.inline && other_queue.inline);
        assert!(!b.inline && !c.inline);
        drop(a);
        drop(other_queue);
        // Inline enqueues leave nothing to announce.
        assert!(broker.inner.announcer.lock().pending.is_empty());
        assert!(!broker.inner.announcer.lock().notifier);

        b.scheduled = Some(false);
        drop(b);
        {
            let state = broker.inner.announcer.lock();
            assert_eq!(state.pending.iter().copied().collect::<Vec<_>>(), vec![(false, "q")]);
            assert!(state.notifier, "the first mark starts the notifier");
            assert_eq!(state.in_flight.get("q"), Some(&1));
        }
        // Ended without knowing where its job went (failed, cancelled): both channels, since a
        // job due later may have been stored `scheduled`.
        drop(c);
        let state = broker.inner.announcer.lock();
        assert_eq!(state.pending.iter().copied().collect::<Vec<_>>(), vec![(false, "q"), (true, "q")]);
        assert!(state.in_flight.is_empty());
        drop(state);

        let d = InFlight::start(&broker, &job("q", RunAt::Now));
        assert!(d.inline, "with nothing in flight the next enqueue notifies inline again");
    }
}
