//! Creates and upgrades koyo-job's tables in PostgreSQL: the library behind both
//! `koyo_job::migrate` and the `koyo-job-migrate` command.
//!
//! The schema is a list of numbered migrations ([`MIGRATIONS`]), each one SQL file. [`migrate`]
//! applies the ones a database lacks and records them in `koyo_job_migrations`; it is
//! idempotent and safe to run from many processes at once, so applications may call it at every
//! start-up.
//!
//! ```no_run
//! use koyo_job_migrate::tokio_postgres;
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let (mut client, connection) =
//!         tokio_postgres::connect("postgresql://postgres@localhost/app", tokio_postgres::NoTls).await?;
//!     tokio::spawn(connection);
//!
//!     let report = koyo_job_migrate::migrate(&mut client, None).await?;
//!     println!("applied {:?}; schema is at version {}", report.applied, report.version);
//!     Ok(())
//! }
//! ```
//!
//! Applications usually call it through `koyo_job::migrate(&broker)`; operators run the
//! `koyo-job-migrate` command this package installs (`cargo install --locked koyo-job-migrate`),
//! with `koyo-job-admin`, the operator's CLI, beside it.
//!
//! # Keeping the tables in their own PostgreSQL schema
//!
//! Pass `Some("jobs")` as `schema` to create the tables in the schema `jobs` (created if needed)
//! instead of the first schema of the connection's `search_path`. The runtime names its tables
//! without a schema, so it must then connect with that schema on its `search_path`, for example
//! with `?options=-csearch_path%3Djobs` at the end of the connection URL.
//!
//! # Using another migration tool
//!
//! [`script`] returns all of the SQL as one script (`koyo-job-migrate --print`), including the
//! rows of `koyo_job_migrations`, so that a later [`migrate`] finds nothing to do.

#![warn(missing_docs)]

pub mod admin;

/// The PostgreSQL client this library is built on, re-exported so that the clients passed to
/// [`migrate`], [`status`] and [`admin`]'s queries come from the same version.
pub use tokio_postgres;

use std::fmt;

use tokio_postgres::types::Type;
use tokio_postgres::{Client, IsolationLevel};

/// One step of koyo-job's schema: a numbered SQL script applied at most once per database.
#[derive(Clone, Copy)]
pub struct Migration {
    /// Its number; migrations apply in increasing order and are recorded by this number.
    pub version: i32,
    /// A short name, stored beside the version (`jobs` for `001_jobs.up.sql`).
    pub name: &'static str,
    /// The statements, run in the migration transaction.
    pub sql: &'static str,
}

impl fmt::Debug for Migration {
    // The SQL is long and adds nothing to a debug print; the file name identifies it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("version", &self.version)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Migration {
    /// The migration's file stem, `001_jobs`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:03}_{}", self.version, self.name)
    }
}

/// Every migration this build knows, in the order they apply.
pub static MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "jobs", sql: include_str!("../migrations/001_jobs.up.sql") },
    Migration {
        version: 2,
        name: "worker_lease",
        sql: include_str!("../migrations/002_worker_lease.up.sql"),
    },
    Migration {
        version: 3,
        name: "cheap_name_checks",
        sql: include_str!("../migrations/003_cheap_name_checks.up.sql"),
    },
    Migration {
        version: 4,
        name: "failed_index",
        sql: include_str!("../migrations/004_failed_index.up.sql"),
    },
    Migration { version: 5, name: "unique_jobs", sql: include_str!("../migrations/005_unique_jobs.up.sql") },
    Migration { version: 6, name: "periodic", sql: include_str!("../migrations/006_periodic.up.sql") },
    Migration { version: 7, name: "queues", sql: include_str!("../migrations/007_queues.up.sql") },
    Migration {
        version: 8,
        name: "cancel_running",
        sql: include_str!("../migrations/008_cancel_running.up.sql"),
    },
    Migration {
        version: 9,
        name: "queue_limits",
        sql: include_str!("../migrations/009_queue_limits.up.sql"),
    },
    Migration {
        version: 10,
        name: "attempt_history",
        sql: include_str!("../migrations/010_attempt_history.up.sql"),
    },
    Migration { version: 11, name: "fillfactor", sql: include_str!("../migrations/011_fillfactor.up.sql") },
];

/// The key of the transaction-level advisory lock that serialises migrations ("koyo_job" in
/// ASCII): fixed, so that every process and every version of koyo-job takes the same lock.
const LOCK_KEY: i64 = 0x6b6f_796f_5f6a_6f62;

const CREATE_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS koyo_job_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// What one call of [`migrate`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The versions this call applied, in order; empty when the database was up to date.
    pub applied: Vec<i32>,
    /// The database's schema version after the call.
    pub version: i32,
}

/// Where a database stands, as read by [`status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The highest applied version, or `None` when koyo-job's tables were never created.
    pub version: Option<i32>,
    /// The highest version this build knows.
    pub latest: i32,
    /// The versions this build knows that the database lacks, in the order they would apply.
    pub pending: Vec<i32>,
}

impl Status {
    /// Whether the database was migrated by a newer koyo-job than this one, which [`migrate`]
    /// refuses to touch.
    pub fn is_too_new(&self) -> bool {
        self.version.is_some_and(|version| version > self.latest)
    }
}

/// Why migrating, or reading the migration status, failed.
///
/// Messages never contain connection details: the connection is made by the caller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// The `schema` argument is not a plain lowercase PostgreSQL identifier.
    #[error(
        "invalid schema name {name:?}: expected 1 to 63 characters, starting with a lowercase letter or `_`, \
         then lowercase letters, digits or `_`"
    )]
    InvalidSchema {
        /// The rejected name.
        name: String,
    },
    /// The database was migrated by a newer koyo-job; downgrading is never done implicitly.
    #[error(
        "the database's koyo-job schema is at version {found}, newer than the latest this build knows ({known}): \
         upgrade koyo-job rather than running an older one against this database"
    )]
    TooNew {
        /// The highest version recorded in the database.
        found: i32,
        /// The highest version this build knows.
        known: i32,
    },
    /// Starting the migration transaction or taking its advisory lock failed.
    #[error("could not start the migration transaction and take its lock")]
    Lock(#[source] tokio_postgres::Error),
    /// Creating the requested schema, or switching the transaction to it, failed.
    #[error("could not create or select the schema {schema:?}")]
    Schema {
        /// The requested schema.
        schema: String,
        /// The database's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Creating or reading `koyo_job_migrations` failed.
    #[error("could not read the applied versions from koyo_job_migrations")]
    Versions(#[source] tokio_postgres::Error),
    /// One migration failed; nothing of this run was kept.
    #[error("migration {version:03}_{name} failed; no migration of this run was applied")]
    Apply {
        /// The failed migration's version.
        version: i32,
        /// The failed migration's name.
        name: &'static str,
        /// The database's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Committing the applied migrations failed; none of them was kept.
    #[error("could not commit the migrations; none of them was applied")]
    Commit(#[source] tokio_postgres::Error),
}

/// Applies every migration the database lacks, in one transaction, and reports what it did.
///
/// The transaction first takes a fixed advisory lock, so concurrent callers run one after the
/// other and all but the first find nothing to do. Either every pending migration is applied
/// or none is. A database already past the latest version this build knows is left untouched
/// and reported as [`MigrateError::TooNew`].
///
/// With `schema`, the tables are created in that PostgreSQL schema (created if missing); see
/// the [crate documentation](crate#keeping-the-tables-in-their-own-postgresql-schema) for how
/// the runtime then finds them.
///
/// Every statement is sent unnamed (or, for the migration scripts, through the simple
/// protocol): no prepared statement is kept on the connection, which may be a pooler's, such as
/// PgBouncer's in transaction mode. [`status`] and the [`admin`] queries do the same.
pub async fn migrate(client: &mut Client, schema: Option<&str>) -> Result<Report, MigrateError> {
    let schema = schema.map(validate_schema).transpose()?;

    // READ COMMITTED explicitly: each statement after the lock must see what the previous lock
    // holder committed, which a session defaulting to REPEATABLE READ or SERIALIZABLE would hide
    // (its snapshot would date from before the lock was granted).
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await
        .map_err(MigrateError::Lock)?;
    // Every statement goes unnamed (`query_typed`, or the simple protocol for the scripts): no
    // prepared statement is left on the connection, which may be a pooler's (PgBouncer in
    // transaction mode hands each transaction a server connection of its own choosing).
    tx.query_typed("SELECT pg_advisory_xact_lock($1)", &[(&LOCK_KEY, Type::INT8)])
        .await
        .map_err(MigrateError::Lock)?;

    if let Some(schema) = schema {
        let schema_error = |source| MigrateError::Schema { schema: schema.to_owned(), source };
        // The server quotes the identifier (`%I`), so no user input is ever spliced into SQL here.
        let create: String = tx
            .query_typed_one(
                "SELECT format('CREATE SCHEMA IF NOT EXISTS %I', $1::text)",
                &[(&schema, Type::TEXT)],
            )
            .await
            .map_err(schema_error)?
            .get(0);
        tx.batch_execute(&create).await.map_err(schema_error)?;
        tx.query_typed("SELECT set_config('search_path', $1, true)", &[(&schema, Type::TEXT)])
            .await
            .map_err(schema_error)?;
    }

    tx.batch_execute(CREATE_VERSION_TABLE).await.map_err(MigrateError::Versions)?;
    let done: Vec<i32> = tx
        .query_typed("SELECT version FROM koyo_job_migrations ORDER BY version", &[])
        .await
        .map_err(MigrateError::Versions)?
        .iter()
        .map(|row| row.get(0))
        .collect();

    let known = latest_version();
    if let Some(&found) = done.last().filter(|&&found| found > known) {
        return Err(MigrateError::TooNew { found, known });
    }

    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        let apply_error =
            |source| MigrateError::Apply { version: migration.version, name: migration.name, source };
        tx.batch_execute(migration.sql).await.map_err(apply_error)?;
        tx.query_typed(
            "INSERT INTO koyo_job_migrations (version, name) VALUES ($1, $2)",
            &[(&migration.version, Type::INT4), (&migration.name, Type::TEXT)],
        )
        .await
        .map_err(apply_error)?;
        applied.push(migration.version);
    }

    tx.commit().await.map_err(MigrateError::Commit)?;

    let version = done.iter().chain(&applied).copied().max().unwrap_or(0);
    Ok(Report { applied, version })
}

/// Reads which migrations a database has, without changing anything or taking the lock.
///
/// `schema` names the PostgreSQL schema passed to [`migrate`]; with `None` the table is looked
/// up through the connection's `search_path`. A database newer than this build is reported,
/// not rejected: see [`Status::is_too_new`].
pub async fn status(client: &Client, schema: Option<&str>) -> Result<Status, MigrateError> {
    let schema = schema.map(validate_schema).transpose()?;

    // Both the table lookup and the SELECT are built by the server (`to_regclass`, `%s` of a
    // regclass prints a correctly quoted name), so the schema name is never spliced in by us.
    // Unnamed statements only, like `migrate`: `status` runs outside a transaction, where a
    // pooler may send each statement to another server connection.
    let select: Option<String> = client
        .query_typed_opt(
            "SELECT format('SELECT version FROM %s ORDER BY version', t)
               FROM to_regclass(CASE WHEN $1::text IS NULL THEN 'koyo_job_migrations'
                                     ELSE format('%I.koyo_job_migrations', $1::text) END) AS t
              WHERE t IS NOT NULL",
            &[(&schema, Type::TEXT)],
        )
        .await
        .map_err(MigrateError::Versions)?
        .map(|row| row.get(0));

    let done: Vec<i32> = match select {
        Some(select) => client
            .query_typed(&select, &[])
            .await
            .map_err(MigrateError::Versions)?
            .iter()
            .map(|row| row.get(0))
            .collect(),
        None => Vec::new(),
    };

    Ok(Status {
        version: done.last().copied(),
        latest: latest_version(),
        pending: MIGRATIONS.iter().map(|m| m.version).filter(|version| !done.contains(version)).collect(),
    })
}

/// Returns every migration as one SQL script, for teams that apply schema changes with their
/// own migration tool (`koyo-job-migrate --print`).
///
/// The script creates the tables from scratch and records each version in
/// `koyo_job_migrations`, so that [`migrate`] (which applications may call at start-up) later
/// finds nothing to do. It contains no `BEGIN`/`COMMIT`, because most tools wrap each file in a
/// transaction of their own; it must run inside one transaction all the same (`psql -1 -f`),
/// since its lock and its `SET LOCAL` last until the end of the transaction.
pub fn script(schema: Option<&str>) -> Result<String, MigrateError> {
    let schema = schema.map(validate_schema).transpose()?;
    let mut out = format!(
        "-- koyo-job schema, version {latest}, generated by koyo-job-migrate {crate_version}.\n\
         -- Run it in ONE transaction (psql -1 -f FILE, or a migration tool's per-file transaction).\n\n\
         SELECT pg_advisory_xact_lock({LOCK_KEY});\n",
        latest = latest_version(),
        crate_version = env!("CARGO_PKG_VERSION"),
    );
    if let Some(schema) = schema {
        // Quoting by hand is safe only because `validate_schema` admits no quote or other
        // special character; it also keeps keywords such as `user` usable as names.
        out.push_str(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\";\nSET LOCAL search_path TO \"{schema}\";\n"
        ));
    }
    out.push_str(&format!("\n{CREATE_VERSION_TABLE};\n"));
    for migration in MIGRATIONS {
        out.push_str(&format!(
            "\n-- {migration}\n\n{}\n\nINSERT INTO koyo_job_migrations (version, name) VALUES ({}, '{}');\n",
            migration.sql.trim_end(),
            migration.version,
            migration.name,
        ));
    }
    Ok(out)
}

/// What a failed statement says about koyo-job's schema, when the statement named only
/// koyo-job's tables: one of them missing means the database was never migrated (or the
/// connection's `search_path` does not lead to it), a missing column or function that an older
/// koyo-job migrated it. The text is the server's message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchemaProblem {
    /// koyo-job's tables are not there.
    Missing(String),
    /// They are, but older than this build.
    Outdated(String),
}

/// Reads a [`SchemaProblem`] from a database error, for the runtime's errors and the operator's
/// tools alike.
pub fn schema_problem(error: &tokio_postgres::Error) -> Option<SchemaProblem> {
    use tokio_postgres::error::SqlState;
    let message = || error.as_db_error().map(|db| db.message().to_owned()).unwrap_or_default();
    match error.code()? {
        &SqlState::UNDEFINED_TABLE if message().contains("koyo_") => Some(SchemaProblem::Missing(message())),
        &SqlState::UNDEFINED_COLUMN | &SqlState::UNDEFINED_FUNCTION => {
            Some(SchemaProblem::Outdated(message()))
        }
        _ => None,
    }
}

/// The highest schema version this build knows: what a database must be migrated to for
/// this build's runtime to use it.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Accepts only plain lowercase identifiers: PostgreSQL would fold an unquoted name to
/// lowercase anyway, and a narrow alphabet keeps the name safe in `search_path` and in URLs.
fn validate_schema(name: &str) -> Result<&str, MigrateError> {
    let mut chars = name.chars();
    let valid = (1..=63).contains(&name.len())
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid { Ok(name) } else { Err(MigrateError::InvalidSchema { name: name.to_owned() }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, index as i32 + 1, "{migration:?}");
        }
    }

    #[test]
    fn migration_names_are_safe_in_a_quoted_sql_literal() {
        for migration in MIGRATIONS {
            assert!(migration.name.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{migration:?}");
        }
    }

    #[test]
    fn schema_names_that_are_plain_lowercase_identifiers_are_accepted() {
        for name in ["jobs", "_x", "a1_b2", "user", &"a".repeat(63)] {
            assert_eq!(validate_schema(name).unwrap(), name);
        }
    }

    #[test]
    fn schema_names_that_need_quoting_are_rejected() {
        let long = "a".repeat(64);
        for name in
            ["", "Jobs", "1jobs", "jobs-x", "jobs x", "jo\"bs", "jobs;drop", "sch\u{e9}ma", "$user", &long]
        {
            assert!(
                matches!(validate_schema(name), Err(MigrateError::InvalidSchema { .. })),
                "{name:?} was accepted"
            );
        }
    }

    #[test]
    fn script_creates_the_tables_and_records_every_version() {
        let sql = script(None).unwrap();
        assert!(sql.contains("CREATE TABLE koyo_jobs"));
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS koyo_job_migrations"));
        assert!(sql.contains(&format!("pg_advisory_xact_lock({LOCK_KEY})")));
        assert!(sql.contains("VALUES (1, 'jobs')"));
        assert!(!sql.contains("search_path"));
        assert!(!sql.contains("BEGIN"));
    }

    #[test]
    fn script_with_a_schema_creates_and_selects_it_before_any_table() {
        let sql = script(Some("jobs")).unwrap();
        let schema_at = sql.find("CREATE SCHEMA IF NOT EXISTS \"jobs\";").unwrap();
        let path_at = sql.find("SET LOCAL search_path TO \"jobs\";").unwrap();
        let table_at = sql.find("CREATE TABLE").unwrap();
        assert!(schema_at < path_at && path_at < table_at);
    }

    #[test]
    fn script_rejects_an_invalid_schema() {
        assert!(matches!(script(Some("x\"; DROP TABLE y; --")), Err(MigrateError::InvalidSchema { .. })));
    }

    #[test]
    fn the_attempt_log_bounds_agree_between_the_schema_and_its_writers() {
        let pushed = crate::attempt_log_push!("true", "'retry'", "'e'", "now()");
        let max = crate::admin::ATTEMPT_LOG_MAX;
        assert!(pushed.contains(&format!(">= {max} THEN j.attempt_log - 0")), "{pushed}");
        assert!(pushed.contains("2048))"), "{pushed}");
        assert_eq!(crate::admin::ATTEMPT_LOG_ERROR_CHARS, 2048);
        let migration = MIGRATIONS.iter().find(|m| m.name == "attempt_history").unwrap();
        assert!(migration.sql.contains(&format!("jsonb_array_length(attempt_log) <= {max}")));
    }

    #[test]
    fn too_new_status_is_detected() {
        let status =
            Status { version: Some(latest_version() + 1), latest: latest_version(), pending: vec![] };
        assert!(status.is_too_new());
        let status = Status { version: None, latest: latest_version(), pending: vec![1] };
        assert!(!status.is_too_new());
    }
}
