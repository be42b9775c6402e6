//! `koyo-job-admin`: lets an operator see and steer koyo-job's queue from the command line —
//! queue summary, job list and detail, retry, cancel, prune, workers — without writing SQL.
//!
//! A binary of its own rather than subcommands of `koyo-job-migrate`, whose name says it
//! changes the schema; this one changes jobs. It lives in the same package because both are
//! small tools over `tokio-postgres` with the same conventions.
//!
//! Exit status: 0 ok, 1 database or runtime error, 2 usage error, 3 refused by a state rule,
//! 4 no such job. The database URL is never printed, since it usually carries a password.

#[path = "../../cli.rs"]
mod cli;
mod out;
mod sql;

use std::ffi::OsString;
use std::process::ExitCode;

use cli::{ConnectError, IoError, UsageError, chain, output, set_once, usage, value};

use tokio_postgres::{Client, Row};

use sql::Statement;

const USAGE: &str = "\
Shows and steers koyo-job's queue in a PostgreSQL database.

Usage: koyo-job-admin COMMAND [ARGS] [--database-url URL] [--json]

Commands:
  queues                     per queue: jobs in each state, and the lag (age of the oldest
                             ready job, by the database's clock)
  jobs [--queue Q] [--state S[,S...]] [--limit N] [--before ID]
                             jobs newest first; --limit defaults to 50 (at most 1000); page
                             on with --before the last id shown
  show ID                    one job: every column, its arguments as a length in bytes
  retry ID                   make a failed, cancelled or scheduled job ready now (a failed
                             or cancelled job that used all its attempts gets one more)
  cancel ID                  cancel a ready, scheduled or failed job
  prune --older-than DURATION [--state S[,S...]]
                             delete done, failed and cancelled jobs (or only the states
                             given) that finished longer ago than DURATION (30s, 15m, 12h,
                             7d), in batches of 1000
  workers                    live workers: host, pid, queues, pool size, heartbeat age and
                             the jobs they are running

States: scheduled, ready, running, done, failed, cancelled.

Options:
  --database-url URL  the database to use (default: the DATABASE_URL environment variable)
  --json              print one JSON document instead of a table
  -h, --help          show this help
  -V, --version       show the version

Exit status: 0 ok, 1 database error, 2 usage error, 3 refused by the job's state,
4 no such job.
";

/// Every state a job can be in, as stored in `koyo_jobs.status`.
const STATES: &[&str] = &["scheduled", "ready", "running", "done", "failed", "cancelled"];
/// The states of finished jobs, which `prune` may delete.
const FINISHED: &[&str] = &["done", "failed", "cancelled"];
/// The states `retry` accepts.
const RETRYABLE: &[&str] = &["failed", "cancelled", "scheduled"];
/// The states `cancel` accepts.
const CANCELLABLE: &[&str] = &["ready", "scheduled", "failed"];

const DEFAULT_LIMIT: i64 = 50;
const MAX_LIMIT: i64 = 1000;
/// The longest `--older-than` accepted: 100 years.
const MAX_AGE_SECS: u64 = 100 * 365 * 86400;

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Invocation {
    Help,
    Version,
    Run { command: Command, database_url: Option<String>, json: bool },
}

#[derive(Debug, PartialEq)]
enum Command {
    Queues,
    Jobs { queue: Option<String>, states: Option<Vec<String>>, limit: i64, before: Option<i64> },
    Show(i64),
    Retry(i64),
    Cancel(i64),
    Prune { older_than_secs: u64, states: Vec<String> },
    Workers,
}

/// Why a run failed once the command line was accepted.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Usage(UsageError),
    #[error("{0}")]
    Refused(String),
    #[error("no job with id {0}")]
    NotFound(i64),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the query failed")]
    Query(#[source] tokio_postgres::Error),
    #[error(transparent)]
    Io(#[from] IoError),
}

impl From<UsageError> for CliError {
    fn from(error: UsageError) -> Self {
        CliError::Usage(error)
    }
}

impl From<tokio_postgres::Error> for CliError {
    fn from(error: tokio_postgres::Error) -> Self {
        CliError::Query(error)
    }
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Refused(_) => 3,
            CliError::NotFound(_) => 4,
            _ => 1,
        }
    }
}

fn main() -> ExitCode {
    let result = parse_args(std::env::args_os().skip(1)).map_err(CliError::from).and_then(execute);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("koyo-job-admin: error: {}", chain(&error));
            if let CliError::Usage(_) = error {
                eprintln!("Run `koyo-job-admin --help` for usage.");
            }
            ExitCode::from(error.exit_code())
        }
    }
}

fn execute(invocation: Invocation) -> Result<(), CliError> {
    match invocation {
        Invocation::Help => Ok(output(USAGE)?),
        Invocation::Version => Ok(output(&format!("koyo-job-admin {}\n", env!("CARGO_PKG_VERSION")))?),
        Invocation::Run { command, database_url, json } => {
            let url = cli::database_url(database_url, std::env::var_os("DATABASE_URL"))?;
            let text = cli::block_on(run_command(command, &url, json))??;
            Ok(output(&text)?)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Command line

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Invocation, UsageError> {
    let mut positional: Vec<String> = Vec::new();
    let mut database_url = None;
    let mut json = false;
    let mut queue = None;
    let mut state = None;
    let mut limit = None;
    let mut before = None;
    let mut older_than = None;

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // A URL is not echoed in messages even when misplaced: it may hold a password.
        let arg = arg.into_string().map_err(|_| usage("arguments must be valid UTF-8"))?;
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        match flag {
            "-h" | "--help" => return Ok(Invocation::Help),
            "-V" | "--version" => return Ok(Invocation::Version),
            "--json" if inline_value.is_some() => return Err(usage("--json takes no value")),
            "--json" => json = true,
            "--database-url" => set_once(&mut database_url, flag, value(inline_value, &mut args, flag)?)?,
            "--queue" => set_once(&mut queue, flag, value(inline_value, &mut args, flag)?)?,
            "--state" => set_once(&mut state, flag, value(inline_value, &mut args, flag)?)?,
            "--limit" => set_once(&mut limit, flag, value(inline_value, &mut args, flag)?)?,
            "--before" => set_once(&mut before, flag, value(inline_value, &mut args, flag)?)?,
            "--older-than" => set_once(&mut older_than, flag, value(inline_value, &mut args, flag)?)?,
            // `-5` is a (bad) job id rather than an option, so that it gets the id's message.
            flag if flag.starts_with('-') && !flag[1..].starts_with(|c: char| c.is_ascii_digit()) => {
                return Err(usage(format!("unknown option `{flag}`")));
            }
            _ => positional.push(arg),
        }
    }

    let mut positional = positional.into_iter();
    let Some(name) = positional.next() else {
        return Err(usage("no command given: one of queues, jobs, show, retry, cancel, prune, workers"));
    };
    let allowed: &[&str] = match name.as_str() {
        "jobs" => &["--queue", "--state", "--limit", "--before"],
        "prune" => &["--older-than", "--state"],
        "queues" | "show" | "retry" | "cancel" | "workers" => &[],
        // Not echoed: it may be a URL given without --database-url.
        _ => {
            return Err(usage(
                "unknown command: the commands are queues, jobs, show, retry, cancel, prune, workers",
            ));
        }
    };
    for (flag, given) in [
        ("--queue", queue.is_some()),
        ("--state", state.is_some()),
        ("--limit", limit.is_some()),
        ("--before", before.is_some()),
        ("--older-than", older_than.is_some()),
    ] {
        if given && !allowed.contains(&flag) {
            return Err(usage(format!("`{name}` does not take {flag}")));
        }
    }

    let takes_id = matches!(name.as_str(), "show" | "retry" | "cancel");
    let id = if takes_id {
        let raw = positional.next().ok_or_else(|| usage(format!("`{name}` needs a job id")))?;
        Some(parse_id(&raw, "job id")?)
    } else {
        None
    };
    if positional.next().is_some() {
        return Err(usage(format!(
            "unexpected argument after `{name}` (a database URL goes after --database-url)"
        )));
    }

    let command = match name.as_str() {
        "queues" => Command::Queues,
        "workers" => Command::Workers,
        "show" => Command::Show(id.unwrap_or_default()),
        "retry" => Command::Retry(id.unwrap_or_default()),
        "cancel" => Command::Cancel(id.unwrap_or_default()),
        "jobs" => Command::Jobs {
            queue: queue.map(|q| parse_queue(&q)).transpose()?,
            states: state.map(|s| parse_states(&s, STATES)).transpose()?,
            limit: limit.map(|l| parse_limit(&l)).transpose()?.unwrap_or(DEFAULT_LIMIT),
            before: before.map(|b| parse_id(&b, "--before")).transpose()?,
        },
        _ => Command::Prune {
            older_than_secs: parse_duration(
                &older_than.ok_or_else(|| usage("`prune` needs --older-than DURATION (e.g. 7d)"))?,
            )?,
            states: match state {
                Some(s) => parse_states(&s, FINISHED)?,
                None => FINISHED.iter().map(|s| (*s).to_owned()).collect(),
            },
        },
    };
    Ok(Invocation::Run { command, database_url, json })
}

/// A job id: a positive 64-bit integer, digits only.
fn parse_id(raw: &str, what: &str) -> Result<i64, UsageError> {
    let bad = || usage(format!("{what} must be a positive integer below 2^63, not `{}`", out::cell(raw)));
    if raw.is_empty() || raw.len() > 19 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(bad()),
    }
}

fn parse_limit(raw: &str) -> Result<i64, UsageError> {
    match raw.parse::<i64>() {
        Ok(limit) if (1..=MAX_LIMIT).contains(&limit) && raw.bytes().all(|b| b.is_ascii_digit()) => Ok(limit),
        _ => Err(usage(format!(
            "--limit must be a whole number from 1 to {MAX_LIMIT}, not `{}`",
            out::cell(raw)
        ))),
    }
}

/// A queue name as the schema admits it: 1–64 of ASCII letters, digits and `_ . : -`.
fn parse_queue(raw: &str) -> Result<String, UsageError> {
    let valid = (1..=64).contains(&raw.len())
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if valid {
        Ok(raw.to_owned())
    } else {
        Err(usage(format!(
            "invalid queue name `{}`: 1 to 64 of ASCII letters, digits and _ . : -",
            out::cell(raw)
        )))
    }
}

/// A comma-separated list of states, each one of `known`.
fn parse_states(raw: &str, known: &[&str]) -> Result<Vec<String>, UsageError> {
    let mut states: Vec<String> = Vec::new();
    for state in raw.split(',') {
        if !known.contains(&state) {
            return Err(usage(format!(
                "unknown state `{}`: expected one or more of {}, separated by commas",
                out::cell(state),
                known.join(", ")
            )));
        }
        if !states.iter().any(|s| s == state) {
            states.push(state.to_owned());
        }
    }
    Ok(states)
}

/// A duration such as `90s`, `15m`, `12h` or `7d`, in whole seconds; at least one second.
fn parse_duration(raw: &str) -> Result<u64, UsageError> {
    let bad = || {
        usage(format!(
            "invalid duration `{}`: a whole number followed by s, m, h or d (e.g. 30s, 15m, 12h, 7d), from 1s to 100 years",
            out::cell(raw)
        ))
    };
    let split = raw.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = raw.split_at(split);
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    let number: u64 = number.parse().map_err(|_| bad())?;
    match number.checked_mul(unit_secs) {
        Some(secs) if (1..=MAX_AGE_SECS).contains(&secs) => Ok(secs),
        _ => Err(bad()),
    }
}

// ---------------------------------------------------------------------------------------------
// Commands

async fn run_command(command: Command, url: &str, json: bool) -> Result<String, CliError> {
    let client = cli::connect(url).await?;

    match command {
        Command::Queues => queues(&client, json).await,
        Command::Jobs { queue, states, limit, before } => {
            jobs(&client, json, queue.as_deref(), states.as_deref(), limit, before).await
        }
        Command::Show(id) => show(&client, json, id).await,
        Command::Retry(id) => retry(&client, json, id).await,
        Command::Cancel(id) => cancel(&client, json, id).await,
        Command::Prune { older_than_secs, states } => prune(&client, json, older_than_secs, &states).await,
        Command::Workers => workers(&client, json).await,
    }
}

async fn query(
    client: &Client,
    statement: &Statement,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Row>, CliError> {
    let prepared = client.prepare_typed(statement.sql, statement.types).await?;
    Ok(client.query(&prepared, params).await?)
}

async fn queues(client: &Client, json: bool) -> Result<String, CliError> {
    let rows = query(client, &sql::QUEUES, &[]).await?;
    if json {
        let items: Vec<String> = rows
            .iter()
            .map(|row| {
                let mut fields = vec![("queue", out::string(row.get(0)))];
                let counts: Vec<(&str, String)> = STATES
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (*s, row.get::<_, i64>(i + 1).to_string()))
                    .collect();
                fields.push(("counts", out::object(&counts)));
                fields.push(("lag_seconds", out::opt_secs(row.get(7))));
                out::object(&fields)
            })
            .collect();
        return Ok(format!("{}\n", out::object(&[("queues", out::array(&items))])));
    }
    if rows.is_empty() {
        return Ok("no jobs\n".to_owned());
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut cells = vec![out::cell(row.get(0))];
            cells.extend((1..=6).map(|i| row.get::<_, i64>(i).to_string()));
            cells.push(row.get::<_, Option<f64>>(7).map_or_else(|| "-".to_owned(), out::age));
            cells
        })
        .collect();
    Ok(out::table(
        &["QUEUE", "SCHEDULED", "READY", "RUNNING", "DONE", "FAILED", "CANCELLED", "LAG"],
        &[false, true, true, true, true, true, true, true],
        &table,
    ))
}

async fn jobs(
    client: &Client,
    json: bool,
    queue: Option<&str>,
    states: Option<&[String]>,
    limit: i64,
    before: Option<i64>,
) -> Result<String, CliError> {
    // One row more than asked tells whether there is a next page.
    let mut rows = query(client, &sql::LIST_JOBS, &[&queue, &states, &before, &(limit + 1)]).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next: Option<i64> = if more { rows.last().map(|row| row.get(0)) } else { None };

    if json {
        let items: Vec<String> = rows
            .iter()
            .map(|row| {
                out::object(&[
                    ("id", row.get::<_, i64>(0).to_string()),
                    ("queue", out::string(row.get(1))),
                    ("job", out::string(row.get(2))),
                    ("status", out::string(row.get(3))),
                    ("priority", row.get::<_, i16>(4).to_string()),
                    ("attempts", row.get::<_, i32>(5).to_string()),
                    ("max_attempts", row.get::<_, i32>(6).to_string()),
                    ("scheduled_at", out::string(row.get(7))),
                    ("finished_at", out::opt_string(row.get(8))),
                    ("last_error", out::opt_string(row.get(9))),
                ])
            })
            .collect();
        let next = next.map_or_else(|| "null".to_owned(), |id| id.to_string());
        return Ok(format!("{}\n", out::object(&[("jobs", out::array(&items)), ("next_before", next)])));
    }
    if rows.is_empty() {
        return Ok("no jobs\n".to_owned());
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                row.get::<_, i64>(0).to_string(),
                out::cell(row.get(1)),
                out::cell(row.get(3)),
                format!("{}/{}", row.get::<_, i32>(5), row.get::<_, i32>(6)),
                row.get::<_, i16>(4).to_string(),
                out::cell(row.get(7)),
                out::cell(row.get(2)),
            ]
        })
        .collect();
    let mut text = out::table(
        &["ID", "QUEUE", "STATE", "ATTEMPTS", "PRIORITY", "SCHEDULED_AT", "JOB"],
        &[true, false, false, true, true, false, false],
        &table,
    );
    if let Some(next) = next {
        text.push_str(&format!("more: add --before {next}\n"));
    }
    Ok(text)
}

async fn show(client: &Client, json: bool, id: i64) -> Result<String, CliError> {
    let rows = query(client, &sql::SHOW_JOB, &[&id]).await?;
    let row = rows.first().ok_or(CliError::NotFound(id))?;
    let id: i64 = row.get(0);
    let queue: &str = row.get(1);
    let job: &str = row.get(2);
    let status: &str = row.get(3);
    let priority: i16 = row.get(4);
    let attempts: i32 = row.get(5);
    let max_attempts: i32 = row.get(6);
    let args_bytes: i64 = row.get(7);
    let created_at: &str = row.get(8);
    let scheduled_at: &str = row.get(9);
    let started_at: Option<&str> = row.get(10);
    let finished_at: Option<&str> = row.get(11);
    let worker_id: Option<i64> = row.get(12);
    let last_error: Option<&str> = row.get(13);

    if json {
        return Ok(format!(
            "{}\n",
            out::object(&[
                ("id", id.to_string()),
                ("queue", out::string(queue)),
                ("job", out::string(job)),
                ("status", out::string(status)),
                ("priority", priority.to_string()),
                ("attempts", attempts.to_string()),
                ("max_attempts", max_attempts.to_string()),
                ("args_bytes", args_bytes.to_string()),
                ("created_at", out::string(created_at)),
                ("scheduled_at", out::string(scheduled_at)),
                ("started_at", out::opt_string(started_at)),
                ("finished_at", out::opt_string(finished_at)),
                ("worker_id", worker_id.map_or_else(|| "null".to_owned(), |w| w.to_string())),
                ("last_error", out::opt_string(last_error)),
            ])
        ));
    }
    let none = || "-".to_owned();
    let mut text = String::new();
    for (key, value) in [
        ("id", id.to_string()),
        ("queue", out::cell(queue)),
        ("job", out::cell(job)),
        ("status", out::cell(status)),
        ("priority", priority.to_string()),
        ("attempts", format!("{attempts} of {max_attempts}")),
        (
            "args",
            format!(
                "{args_bytes} bytes (bincode; decoding them needs the job's Rust types, which this binary does not have)"
            ),
        ),
        ("created_at", out::cell(created_at)),
        ("scheduled_at", out::cell(scheduled_at)),
        ("started_at", started_at.map_or_else(none, out::cell)),
        ("finished_at", finished_at.map_or_else(none, out::cell)),
        ("worker_id", worker_id.map_or_else(none, |w| w.to_string())),
    ] {
        text.push_str(&format!("{key:<13}{value}\n"));
    }
    match last_error {
        None => text.push_str("last_error   -\n"),
        Some(error) => {
            text.push_str("last_error\n");
            for line in error.lines() {
                text.push_str(&format!("  {}\n", out::cell(line)));
            }
        }
    }
    Ok(text)
}

async fn retry(client: &Client, json: bool, id: i64) -> Result<String, CliError> {
    let allowed: Vec<String> = RETRYABLE.iter().map(|s| (*s).to_owned()).collect();
    let rows = query(client, &sql::RETRY, &[&id, &allowed]).await?;
    let Some(row) = rows.first() else {
        return Err(why_not(client, id, "retry", RETRYABLE).await);
    };
    let queue: &str = row.get(1);
    let attempts: i32 = row.get(2);
    let max_attempts: i32 = row.get(3);
    if json {
        return Ok(format!(
            "{}\n",
            out::object(&[
                ("id", id.to_string()),
                ("queue", out::string(queue)),
                ("status", out::string("ready")),
                ("attempts", attempts.to_string()),
                ("max_attempts", max_attempts.to_string()),
            ])
        ));
    }
    Ok(format!(
        "job {id} is ready on queue {} ({attempts} of {max_attempts} attempts used)\n",
        out::cell(queue)
    ))
}

async fn cancel(client: &Client, json: bool, id: i64) -> Result<String, CliError> {
    let allowed: Vec<String> = CANCELLABLE.iter().map(|s| (*s).to_owned()).collect();
    let rows = query(client, &sql::CANCEL, &[&id, &allowed]).await?;
    let Some(row) = rows.first() else {
        return Err(why_not(client, id, "cancel", CANCELLABLE).await);
    };
    let queue: &str = row.get(1);
    if json {
        return Ok(format!(
            "{}\n",
            out::object(&[
                ("id", id.to_string()),
                ("queue", out::string(queue)),
                ("status", out::string("cancelled")),
            ])
        ));
    }
    Ok(format!("job {id} on queue {} is cancelled\n", out::cell(queue)))
}

/// After a conditional update matched nothing: tells "no such job" from "refused".
async fn why_not(client: &Client, id: i64, verb: &str, allowed: &[&str]) -> CliError {
    let rows = match query(client, &sql::JOB_STATUS, &[&id]).await {
        Ok(rows) => rows,
        Err(error) => return error,
    };
    let Some(row) = rows.first() else {
        return CliError::NotFound(id);
    };
    let status: &str = row.get(0);
    let reason = match (verb, status) {
        (_, "running") => "a worker is running it; wait until the attempt ends",
        ("retry", "ready") => "it is already ready and runs as soon as a worker is free",
        ("retry", "done") => "it succeeded; enqueue a new job to run it again",
        ("cancel", "done") => "it has already succeeded",
        ("cancel", "cancelled") => "it is already cancelled",
        // The job left the state that refused it, or entered an allowed one, meanwhile.
        _ => "its state changed while this command ran; run it again",
    };
    CliError::Refused(format!(
        "cannot {verb} job {id}: it is {status} ({reason}); {verb} accepts only {}",
        allowed.join(", ")
    ))
}

async fn prune(
    client: &Client,
    json: bool,
    older_than_secs: u64,
    states: &[String],
) -> Result<String, CliError> {
    let prepared = client.prepare_typed(sql::PRUNE_BATCH.sql, sql::PRUNE_BATCH.types).await?;
    let age = older_than_secs as f64;
    let mut deleted: u64 = 0;
    loop {
        // Each batch is its own short transaction, so pruning never holds locks for long.
        let batch = client.execute(&prepared, &[&states, &age]).await?;
        deleted += batch;
        if batch < sql::PRUNE_BATCH_SIZE {
            break;
        }
    }
    if json {
        return Ok(format!("{}\n", out::object(&[("deleted", deleted.to_string())])));
    }
    Ok(format!("deleted {deleted} job(s)\n"))
}

async fn workers(client: &Client, json: bool) -> Result<String, CliError> {
    let rows = query(client, &sql::WORKERS, &[]).await?;
    if json {
        let items: Vec<String> = rows
            .iter()
            .map(|row| {
                let queues: Vec<String> =
                    row.get::<_, Vec<String>>(3).iter().map(|q| out::string(q)).collect();
                out::object(&[
                    ("id", row.get::<_, i64>(0).to_string()),
                    ("hostname", out::string(row.get(1))),
                    ("pid", row.get::<_, i32>(2).to_string()),
                    ("queues", out::array(&queues)),
                    ("pool_size", row.get::<_, i32>(4).to_string()),
                    ("started_at", out::string(row.get(5))),
                    ("heartbeat_age_seconds", out::opt_secs(row.get(6))),
                    ("running", row.get::<_, i64>(7).to_string()),
                ])
            })
            .collect();
        return Ok(format!("{}\n", out::object(&[("workers", out::array(&items))])));
    }
    if rows.is_empty() {
        return Ok("no live workers\n".to_owned());
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                row.get::<_, i64>(0).to_string(),
                out::cell(row.get(1)),
                row.get::<_, i32>(2).to_string(),
                out::cell(&row.get::<_, Vec<String>>(3).join(",")),
                row.get::<_, i32>(4).to_string(),
                row.get::<_, Option<f64>>(6).map_or_else(|| "-".to_owned(), out::age),
                row.get::<_, i64>(7).to_string(),
            ]
        })
        .collect();
    Ok(out::table(
        &["ID", "HOST", "PID", "QUEUES", "POOL", "HEARTBEAT", "RUNNING"],
        &[true, false, true, false, true, true, true],
        &table,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Invocation, UsageError> {
        parse_args(args.iter().map(OsString::from))
    }

    fn command(args: &[&str]) -> Command {
        match parse(args).unwrap() {
            Invocation::Run { command, .. } => command,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn commands_parse_with_their_options_in_any_order() {
        assert_eq!(command(&["queues"]), Command::Queues);
        assert_eq!(command(&["workers", "--json"]), Command::Workers);
        assert_eq!(
            command(&[
                "--state",
                "failed,ready,failed",
                "jobs",
                "--queue=mail",
                "--limit",
                "10",
                "--before=99"
            ]),
            Command::Jobs {
                queue: Some("mail".into()),
                states: Some(vec!["failed".into(), "ready".into()]),
                limit: 10,
                before: Some(99)
            }
        );
        assert_eq!(command(&["jobs"]), Command::Jobs { queue: None, states: None, limit: 50, before: None });
        assert_eq!(command(&["show", "7"]), Command::Show(7));
        assert_eq!(command(&["retry", "9223372036854775807"]), Command::Retry(i64::MAX));
        assert_eq!(command(&["cancel", "1"]), Command::Cancel(1));
        assert_eq!(
            command(&["prune", "--older-than", "7d"]),
            Command::Prune {
                older_than_secs: 7 * 86400,
                states: vec!["done".into(), "failed".into(), "cancelled".into()]
            }
        );
        assert_eq!(
            command(&["prune", "--older-than=90s", "--state", "done"]),
            Command::Prune { older_than_secs: 90, states: vec!["done".into()] }
        );
        assert_eq!(
            parse(&["queues", "--json", "--database-url", "postgresql://h/db"]).unwrap(),
            Invocation::Run {
                command: Command::Queues,
                database_url: Some("postgresql://h/db".into()),
                json: true
            }
        );
    }

    #[test]
    fn misuse_is_a_usage_error() {
        for args in [
            &[][..],
            &["frobnicate"],
            &["queues", "extra"],
            &["show"],
            &["show", "abc"],
            &["show", "-5"],
            &["show", "0"],
            &["show", "+5"],
            &["show", "99999999999999999999"],
            &["retry", "1", "2"],
            &["jobs", "--state", "bogus"],
            &["jobs", "--state", "ready,"],
            &["jobs", "--limit", "0"],
            &["jobs", "--limit", "1001"],
            &["jobs", "--limit", "ten"],
            &["jobs", "--before", "-1"],
            &["jobs", "--queue", "bad queue"],
            &["jobs", "--older-than", "1d"],
            &["queues", "--queue", "a"],
            &["prune"],
            &["prune", "--older-than", "7"],
            &["prune", "--older-than", "7y"],
            &["prune", "--older-than", "0s"],
            &["prune", "--older-than", "-1d"],
            &["prune", "--older-than", "99999999999999999d"],
            &["prune", "--older-than", "1d", "--state", "ready"],
            &["queues", "--json=yes"],
            &["queues", "--database-url"],
            &["queues", "--frobnicate"],
        ] {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
    }

    #[test]
    fn usage_errors_never_echo_a_url() {
        let secret = "postgresql://user:hunter2@db/app";
        for args in [&[secret][..], &["queues", secret], &["--database-url", "a", "--database-url", secret]] {
            let message = parse(args).unwrap_err().0;
            assert!(!message.contains("hunter2"), "{message}");
        }
    }

    #[test]
    fn durations_take_one_unit() {
        assert_eq!(parse_duration("30s").unwrap(), 30);
        assert_eq!(parse_duration("15m").unwrap(), 900);
        assert_eq!(parse_duration("12h").unwrap(), 43200);
        assert_eq!(parse_duration("7d").unwrap(), 604800);
        for bad in ["", "d", "1.5h", "1h30m", " 1d", "1D", "1 d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
