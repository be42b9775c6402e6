//! The errors koyo-job returns.

use std::fmt;

use crate::codec::DecodeError;

/// Everything that can go wrong when storing jobs or running workers.
///
/// Messages never contain connection strings or passwords.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A job was awaited with no current broker set (see [`crate::set_current_broker`]).
    #[error(
        "no current broker: call koyo_job::set_current_broker(broker) at start-up, wrap the code in \
         koyo_job::with_broker(broker, ..), or use job.enqueue_on(&broker)"
    )]
    NoCurrentBroker,
    /// A queue name breaks the naming rule.
    #[error("invalid queue name {name:?}: {why}")]
    InvalidQueue {
        /// The name given.
        name: String,
        /// Which part of the rule it breaks.
        why: &'static str,
    },
    /// A job name breaks the naming rule.
    #[error("invalid job name {name:?}: {why}")]
    InvalidJobName {
        /// The name given.
        name: String,
        /// Which part of the rule it breaks.
        why: &'static str,
    },
    /// A negative priority.
    #[error("invalid priority {0}: priorities run from 0 (first) to 32767")]
    InvalidPriority(i16),
    /// The encoded arguments are over [`crate::MAX_ARGS_BYTES`].
    #[error(
        "job arguments take {size} bytes, over the limit of {limit} bytes; store large data elsewhere and pass its key"
    )]
    ArgsTooLarge {
        /// The encoded size in bytes.
        size: usize,
        /// [`crate::MAX_ARGS_BYTES`].
        limit: usize,
    },
    /// The arguments nest deeper than [`crate::MAX_ARGS_DEPTH`] levels, which no worker would
    /// decode.
    #[error(
        "job arguments nest more than {limit} levels deep, deeper than workers decode (so that no \
         stored row can overflow their stack); flatten the value, or store it elsewhere and pass its key"
    )]
    ArgsTooDeep {
        /// [`crate::MAX_ARGS_DEPTH`].
        limit: usize,
    },
    /// A unique job's key ([`crate::Unique::by_key`]) cannot be used.
    #[error("invalid unique key: {0}")]
    InvalidUniqueKey(&'static str),
    /// A unique job's period ([`crate::Unique::per`]) is shorter than a second.
    #[error("invalid unique period {0:?}: it must be at least one second")]
    InvalidUniquePeriod(std::time::Duration),
    /// A unique key changed hands so often while a job was being stored that no answer held
    /// still (it never happens without a storm of inserts and finishes of the same key).
    #[error("the unique key of a {job} job changed hands too often while it was being stored; try again")]
    UniqueContended {
        /// The job's stored name.
        job: &'static str,
    },
    /// The arguments could not be serialized.
    #[error("job arguments could not be serialized: {0}")]
    Serialize(String),
    /// The arguments serialize into bytes their own type cannot read back.
    #[error(
        "job arguments serialize into bytes their type cannot decode ({0}); bincode cannot store \
         untagged or flattened serde types"
    )]
    Unrepresentable(String),
    /// Stored argument bytes could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The database rejected a statement or the connection failed.
    #[error("database error: {}", describe(.0))]
    Database(tokio_postgres::Error),
    /// koyo-job's tables are not in the database (or not on the connection's `search_path`).
    #[error(
        "koyo-job's tables are missing from this database ({detail}): create them with the \
         `koyo-job-migrate` command, or call koyo_job::migrate(&broker) at start-up"
    )]
    SchemaMissing {
        /// What showed it (the server's message).
        detail: String,
    },
    /// The database's koyo-job schema is older than this build needs.
    #[error(
        "the database's koyo-job schema is out of date ({detail}): upgrade it with the \
         `koyo-job-migrate` command, or call koyo_job::migrate(&broker) at start-up"
    )]
    SchemaOutdated {
        /// What showed it: the versions, or the server's message.
        detail: String,
    },
    /// A named prepared statement was missing from the server connection (SQLSTATE 26000),
    /// already there (42P05), or another statement under its name: the connection goes through
    /// a pooler in transaction mode (PgBouncer's `pool_mode = transaction`), which hands each
    /// transaction a server connection of its choosing. The broker discards the connection and
    /// sends its statements unnamed from then on; this error reaches callers only if that too
    /// fails.
    #[error(
        "database error: {}: this looks like a transaction-mode connection pooler (PgBouncer), which          keeps no prepared statement between transactions: set `prepared_statements: false` in          BrokerOptions and `listen(false)` on workers",
        describe(.0)
    )]
    TransactionPooler(#[source] tokio_postgres::Error),
    /// The database is read-only: a hot standby, or `default_transaction_read_only` is on.
    #[error(
        "the database is read-only (a hot standby, or default_transaction_read_only is on): jobs \
         cannot be stored or claimed there; connect to the primary, e.g. with \
         target_session_attrs=read-write"
    )]
    ReadOnly(#[source] tokio_postgres::Error),
    /// A statement took longer than the broker's statement timeout; its connection was dropped.
    #[error("the database did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// A statement was abandoned: its server stopped answering and another host of a multi-host
    /// URL took over (a failover). Its connection was dropped; the statement may or may not
    /// have been committed on the old server, and so on the new one.
    #[error(
        "the database server stopped answering and another host took over (failover); the statement \
         was abandoned and may or may not have taken effect"
    )]
    FailedOver,
    /// A statement that always returns a row returned none.
    #[error("the statement starting {0:?} returned no row")]
    NoRow(&'static str),
    /// No connection could be had from the pool in time.
    #[error("could not get a database connection: {0}")]
    Pool(String),
    /// The database URL could not be parsed.
    #[error("invalid database configuration: {0}")]
    Config(String),
    /// Migrating the schema failed.
    #[error(transparent)]
    Migrate(#[from] koyo_job_migrate::MigrateError),
    /// Two job definitions use the same name, or another registry problem.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// A periodic job's schedule (defined on the job) cannot be used, e.g. its time zone is
    /// unknown on this machine.
    #[error("the periodic schedule of {name} cannot be used: {source}")]
    Schedule {
        /// The schedule's name.
        name: String,
        /// Why.
        #[source]
        source: crate::ScheduleError,
    },
    /// A schedule given at run time cannot be used (see [`crate::Schedule::parse`]).
    #[error(transparent)]
    InvalidSchedule(#[from] crate::ScheduleError),
    /// A worker was configured in a way that cannot work.
    #[error("invalid worker configuration: {0}")]
    WorkerConfig(String),
    /// `complete_in` was called outside a job body.
    #[error("koyo_job::complete_in can only be called from a job body")]
    NotInJob,
    /// This attempt no longer owns its job: another worker took it over after this one missed
    /// its heartbeats. Nothing was written.
    #[error("job {id} was taken over by another worker (this attempt's lease was lost)")]
    LeaseLost {
        /// The job.
        id: crate::job::JobId,
    },
    /// In synchronous mode, the job ran in place and did not succeed.
    #[error("job {job} ran inline and {failure}")]
    Inline {
        /// The job's stored name.
        job: &'static str,
        /// How its run ended.
        failure: JobFailure,
    },
}

impl Error {
    /// The SQLSTATE code of a database error, if this is one.
    pub(crate) fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Database(e) | Error::ReadOnly(e) | Error::TransactionPooler(e) => {
                e.code().map(|code| code.code())
            }
            _ => None,
        }
    }

    /// Whether the database refused the statement's data itself (SQLSTATE class 22, data
    /// exception, or 23, integrity constraint violation): sending the same statement again
    /// would fail again, unlike a lost connection or a time-out.
    pub(crate) fn is_permanent(&self) -> bool {
        self.sqlstate().is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
    }
}

/// tokio-postgres's errors display only their kind ("db error", "error connecting to server"):
/// add the server's message, or the underlying cause. Neither holds connection settings.
fn describe(error: &tokio_postgres::Error) -> String {
    match (error.as_db_error(), std::error::Error::source(error)) {
        (Some(db), _) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        (None, Some(cause)) => format!("{error}: {cause}"),
        (None, None) => error.to_string(),
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        use koyo_job_migrate::SchemaProblem;
        if e.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION) {
            return Error::ReadOnly(e);
        }
        if lost_statement(&e) {
            return Error::TransactionPooler(e);
        }
        // koyo-job's statements name only its own tables.
        match koyo_job_migrate::schema_problem(&e) {
            Some(SchemaProblem::Missing(detail)) => Error::SchemaMissing { detail },
            Some(SchemaProblem::Outdated(detail)) => Error::SchemaOutdated { detail },
            None => Error::Database(e),
        }
    }
}

/// Whether the server answered as it does when a connection's named prepared statements are not
/// the ones it prepared: "prepared statement … does not exist" (26000), "… already exists"
/// (42P05), or a Bind whose parameters do not fit the statement of that name (08P01). koyo-job
/// sends no `PREPARE`, `EXECUTE` or `DEALLOCATE` of its own, so this is a pooler's doing.
fn lost_statement(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    let Some(db) = error.as_db_error() else { return false };
    match db.code() {
        &SqlState::INVALID_SQL_STATEMENT_NAME | &SqlState::DUPLICATE_PSTATEMENT => true,
        &SqlState::PROTOCOL_VIOLATION => db.message().contains("prepared statement"),
        _ => false,
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => Error::from(e),
            other => Error::Pool(other.to_string()),
        }
    }
}

/// Why one run of a job did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobFailure {
    /// The body returned an error; its `Display` text.
    Error(String),
    /// The body panicked; the panic message.
    Panicked(String),
    /// The body ran past its timeout and was dropped.
    TimedOut(std::time::Duration),
    /// An operator cancelled the job while it ran.
    Cancelled,
    /// The body called `retry!`, with the delay and reason it gave.
    RetryRequested {
        /// The delay given to `retry!`; `None` for the worker's backoff.
        delay: Option<std::time::Duration>,
        /// The reason given to `retry!`, if any.
        reason: Option<String>,
    },
}

impl fmt::Display for JobFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobFailure::Error(msg) => write!(f, "failed: {msg}"),
            JobFailure::Panicked(msg) => write!(f, "panicked: {msg}"),
            JobFailure::TimedOut(after) => write!(f, "timed out after {after:?}"),
            JobFailure::Cancelled => write!(f, "cancelled while running"),
            JobFailure::RetryRequested { reason: Some(reason), .. } => {
                write!(f, "asked to be retried: {reason}")
            }
            JobFailure::RetryRequested { reason: None, .. } => write!(f, "asked to be retried"),
        }
    }
}

/// Logs a failing database call at most once every 10 s, counting the failures it held back:
/// for the loops that retry on their own (a worker's claims, ticks, writes; the broker's
/// notifier), so that a database outage is reported, not repeated thousands of times.
pub(crate) struct QuietLog {
    component: &'static str,
    what: &'static str,
    last: Option<std::time::Instant>,
    held_back: u64,
}

impl QuietLog {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    /// `component` ("worker", "broker") and what it was doing, for the message.
    pub(crate) fn new(component: &'static str, what: &'static str) -> Self {
        QuietLog { component, what, last: None, held_back: 0 }
    }

    pub(crate) fn error(&mut self, error: &Error) {
        if self.last.is_some_and(|last| last.elapsed() < Self::EVERY) {
            self.held_back += 1;
            return;
        }
        tracing::warn!(
            %error,
            held_back = self.held_back,
            "koyo-job {}: {} failed; retrying",
            self.component,
            self.what
        );
        self.last = Some(std::time::Instant::now());
        self.held_back = 0;
    }
}
