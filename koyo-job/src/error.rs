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
    InvalidQueue { name: String, why: &'static str },
    /// A job name breaks the naming rule.
    #[error("invalid job name {name:?}: {why}")]
    InvalidJobName { name: String, why: &'static str },
    /// A negative priority.
    #[error("invalid priority {0}: priorities run from 0 (first) to 32767")]
    InvalidPriority(i16),
    /// The encoded arguments are over [`crate::MAX_ARGS_BYTES`].
    #[error(
        "job arguments take {size} bytes, over the limit of {limit} bytes; store large data elsewhere and pass its key"
    )]
    ArgsTooLarge { size: usize, limit: usize },
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
    #[error("database error: {0}")]
    Database(#[from] tokio_postgres::Error),
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
    /// A worker was configured in a way that cannot work.
    #[error("invalid worker configuration: {0}")]
    WorkerConfig(String),
    /// In synchronous mode, the job ran in place and did not succeed.
    #[error("job {job} ran inline and {failure}")]
    Inline { job: &'static str, failure: JobFailure },
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => Error::Database(e),
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
    /// The body called `retry!`, with the delay and reason it gave.
    RetryRequested { delay: Option<std::time::Duration>, reason: Option<String> },
}

impl fmt::Display for JobFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobFailure::Error(msg) => write!(f, "failed: {msg}"),
            JobFailure::Panicked(msg) => write!(f, "panicked: {msg}"),
            JobFailure::TimedOut(after) => write!(f, "timed out after {after:?}"),
            JobFailure::RetryRequested { reason: Some(reason), .. } => {
                write!(f, "asked to be retried: {reason}")
            }
            JobFailure::RetryRequested { reason: None, .. } => write!(f, "asked to be retried"),
        }
    }
}
