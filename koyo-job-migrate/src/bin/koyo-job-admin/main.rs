//! `koyo-job-admin`: lets an operator see and steer koyo-job's queue from the command line —
//! queue summary, job list and detail, retry, cancel, delete, prune, workers, periodic schedules —
//! without writing
//! SQL. Its queries and state rules are `koyo_job_migrate::admin`, which the admin web page
//! (`koyo-job-web`) shares, so the two never disagree.
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

use std::ffi::OsString;
use std::process::ExitCode;

use cli::{ConnectError, IoError, UsageError, chain, output, set_once, usage, value};

use koyo_job_migrate::admin::{self, Action, AdminError, FINISHED, JobFilter, STATES};
use tokio_postgres::Client;

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
  delete ID                  delete a job in any state but running
                             (retry, cancel and delete also take a running job whose
                             worker is lost: its heartbeat is older than its lease)
  prune --older-than DURATION [--state S[,S...]]
                             delete done, failed and cancelled jobs (or only the states
                             given) that finished longer ago than DURATION (30s, 15m, 12h,
                             7d), in batches of 1000
  workers                    live workers: host, pid, queues, pool size, heartbeat age and
                             the jobs they are running
  periodic                   the periodic schedules live workers run: schedule, time zone,
                             last slot and its job, next slot
  pause QUEUE                stop every worker claiming the queue's jobs (running jobs finish,
                             enqueueing goes on); stored until resumed
  resume QUEUE               let workers claim the queue's jobs again, at once

States: scheduled, ready, running, done, failed, cancelled.

Options:
  --database-url URL  the database to use (default: the DATABASE_URL environment variable)
  --json              print one JSON document instead of a table
  -h, --help          show this help
  -V, --version       show the version

Exit status: 0 ok, 1 database error, 2 usage error, 3 refused by the job's state,
4 no such job.
";

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
    Jobs(JobFilter),
    Show(i64),
    Apply(i64, Action),
    Prune { older_than_secs: u64, states: Vec<String> },
    Workers,
    Periodic,
    Pause(String),
    Resume(String),
}

/// Why a run failed once the command line was accepted.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Usage(UsageError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Query(AdminError),
    #[error(transparent)]
    Io(#[from] IoError),
}

impl From<UsageError> for CliError {
    fn from(error: UsageError) -> Self {
        CliError::Usage(error)
    }
}

impl From<AdminError> for CliError {
    fn from(error: AdminError) -> Self {
        CliError::Query(error)
    }
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Query(AdminError::Refused(_)) => 3,
            CliError::Query(AdminError::NotFound(_)) => 4,
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
        return Err(usage(
            "no command given: one of queues, jobs, show, retry, cancel, delete, prune, workers, periodic, pause, resume",
        ));
    };
    let allowed: &[&str] = match name.as_str() {
        "jobs" => &["--queue", "--state", "--limit", "--before"],
        "prune" => &["--older-than", "--state"],
        "queues" | "show" | "retry" | "cancel" | "delete" | "workers" | "periodic" | "pause" | "resume" => {
            &[]
        }
        // Not echoed: it may be a URL given without --database-url.
        _ => {
            return Err(usage(
                "unknown command: the commands are queues, jobs, show, retry, cancel, delete, prune, workers, periodic, pause, resume",
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

    let takes_id = matches!(name.as_str(), "show" | "retry" | "cancel" | "delete");
    let id = if takes_id {
        let raw = positional.next().ok_or_else(|| usage(format!("`{name}` needs a job id")))?;
        Some(parse_id(&raw, "job id")?)
    } else {
        None
    };
    let takes_queue = matches!(name.as_str(), "pause" | "resume");
    let named_queue = if takes_queue {
        let raw = positional.next().ok_or_else(|| usage(format!("`{name}` needs a queue name")))?;
        Some(parse_queue(&raw)?)
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
        "periodic" => Command::Periodic,
        "pause" => Command::Pause(named_queue.unwrap_or_default()),
        "resume" => Command::Resume(named_queue.unwrap_or_default()),
        "show" => Command::Show(id.unwrap_or_default()),
        "retry" => Command::Apply(id.unwrap_or_default(), Action::Retry),
        "cancel" => Command::Apply(id.unwrap_or_default(), Action::Cancel),
        "delete" => Command::Apply(id.unwrap_or_default(), Action::Delete),
        "jobs" => Command::Jobs(JobFilter {
            queue: queue.map(|q| parse_queue(&q)).transpose()?,
            states: state.map(|s| parse_states(&s, &STATES)).transpose()?,
            limit: limit.map(|l| parse_limit(&l)).transpose()?.unwrap_or(DEFAULT_LIMIT),
            before: before.map(|b| parse_id(&b, "--before")).transpose()?,
        }),
        _ => Command::Prune {
            older_than_secs: parse_duration(
                &older_than.ok_or_else(|| usage("`prune` needs --older-than DURATION (e.g. 7d)"))?,
            )?,
            states: match state {
                Some(s) => parse_states(&s, &FINISHED)?,
                None => FINISHED.iter().map(|s| (*s).to_owned()).collect(),
            },
        },
    };
    Ok(Invocation::Run { command, database_url, json })
}

/// A job id: a positive 64-bit integer, digits only.
fn parse_id(raw: &str, what: &str) -> Result<i64, UsageError> {
    admin::parse_id(raw).ok_or_else(|| {
        usage(format!("{what} must be a positive integer below 2^63, not `{}`", out::cell(raw)))
    })
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
    if admin::is_queue_name(raw) {
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
    admin::parse_states(raw, known).map_err(usage)
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
        Command::Jobs(filter) => jobs(&client, json, &filter).await,
        Command::Show(id) => show(&client, json, id).await,
        Command::Apply(id, action) => apply(&client, json, id, action).await,
        Command::Prune { older_than_secs, states } => prune(&client, json, older_than_secs, &states).await,
        Command::Workers => workers(&client, json).await,
        Command::Periodic => periodic(&client, json).await,
        Command::Pause(queue) => pause(&client, json, &queue).await,
        Command::Resume(queue) => resume(&client, json, &queue).await,
    }
}

async fn queues(client: &Client, json: bool) -> Result<String, CliError> {
    let queues = admin::queues(client).await?;
    if json {
        let items: Vec<String> = queues
            .iter()
            .map(|q| {
                let counts: Vec<(&str, String)> =
                    q.by_state().iter().map(|(state, n)| (*state, n.to_string())).collect();
                out::object(&[
                    ("queue", out::string(&q.queue)),
                    ("counts", out::object(&counts)),
                    ("lag_seconds", out::opt_secs(q.lag_secs)),
                    ("paused_at", out::opt_string(q.paused_at.as_deref())),
                    ("paused_by", out::opt_string(q.paused_by.as_deref())),
                ])
            })
            .collect();
        return Ok(format!("{}\n", out::object(&[("queues", out::array(&items))])));
    }
    if queues.is_empty() {
        return Ok("no jobs\n".to_owned());
    }
    let table: Vec<Vec<String>> = queues
        .iter()
        .map(|q| {
            let name = if q.paused_at.is_some() { format!("{} (paused)", q.queue) } else { q.queue.clone() };
            let mut cells = vec![out::cell(&name)];
            cells.extend(q.by_state().iter().map(|(_, n)| n.to_string()));
            cells.push(q.lag_secs.map_or_else(|| "-".to_owned(), out::age));
            cells
        })
        .collect();
    Ok(out::table(
        &["QUEUE", "SCHEDULED", "READY", "RUNNING", "DONE", "FAILED", "CANCELLED", "LAG"],
        &[false, true, true, true, true, true, true, true],
        &table,
    ))
}

/// Who acts, as stored with a pause or a cancel: `$USER (koyo-job-admin)`.
fn operator() -> String {
    let user: String =
        std::env::var("USER").unwrap_or_default().chars().filter(|c| !c.is_control()).take(64).collect();
    if user.is_empty() { "koyo-job-admin".to_owned() } else { format!("{user} (koyo-job-admin)") }
}

async fn pause(client: &Client, json: bool, queue: &str) -> Result<String, CliError> {
    let since = admin::pause(client, queue, &operator()).await?;
    if json {
        return Ok(format!(
            "{}\n",
            out::object(&[("queue", out::string(queue)), ("paused_at", out::string(&since))])
        ));
    }
    Ok(format!(
        "paused {} (since {since}): workers claim none of its jobs until `resume`\n",
        out::cell(queue)
    ))
}

async fn resume(client: &Client, json: bool, queue: &str) -> Result<String, CliError> {
    let was_paused = admin::resume(client, queue).await?;
    if json {
        return Ok(format!(
            "{}\n",
            out::object(&[("queue", out::string(queue)), ("was_paused", was_paused.to_string())])
        ));
    }
    Ok(if was_paused {
        format!("resumed {}\n", out::cell(queue))
    } else {
        format!("{} was not paused\n", out::cell(queue))
    })
}

async fn jobs(client: &Client, json: bool, filter: &JobFilter) -> Result<String, CliError> {
    let page = admin::jobs(client, filter).await?;
    if json {
        let items: Vec<String> = page
            .jobs
            .iter()
            .map(|j| {
                out::object(&[
                    ("id", j.id.to_string()),
                    ("queue", out::string(&j.queue)),
                    ("job", out::string(&j.job)),
                    ("status", out::string(&j.status)),
                    ("priority", j.priority.to_string()),
                    ("attempts", j.attempts.to_string()),
                    ("max_attempts", j.max_attempts.to_string()),
                    ("scheduled_at", out::string(&j.scheduled_at)),
                    ("finished_at", out::opt_string(j.finished_at.as_deref())),
                    ("last_error", out::opt_string(j.last_error.as_deref())),
                ])
            })
            .collect();
        let next = page.next_before.map_or_else(|| "null".to_owned(), |id| id.to_string());
        return Ok(format!("{}\n", out::object(&[("jobs", out::array(&items)), ("next_before", next)])));
    }
    if page.jobs.is_empty() {
        return Ok("no jobs\n".to_owned());
    }
    let table: Vec<Vec<String>> = page
        .jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                out::cell(&j.queue),
                out::cell(&j.status),
                format!("{}/{}", j.attempts, j.max_attempts),
                j.priority.to_string(),
                out::cell(&j.scheduled_at),
                out::cell(&j.job),
            ]
        })
        .collect();
    let mut text = out::table(
        &["ID", "QUEUE", "STATE", "ATTEMPTS", "PRIORITY", "SCHEDULED_AT", "JOB"],
        &[true, false, false, true, true, false, false],
        &table,
    );
    if let Some(next) = page.next_before {
        text.push_str(&format!("more: add --before {next}\n"));
    }
    Ok(text)
}

async fn show(client: &Client, json: bool, id: i64) -> Result<String, CliError> {
    let job = admin::job(client, id).await?.ok_or(AdminError::NotFound(id))?;
    if json {
        return Ok(format!(
            "{}\n",
            out::object(&[
                ("id", job.id.to_string()),
                ("queue", out::string(&job.queue)),
                ("job", out::string(&job.job)),
                ("status", out::string(&job.status)),
                ("priority", job.priority.to_string()),
                ("attempts", job.attempts.to_string()),
                ("max_attempts", job.max_attempts.to_string()),
                ("args_bytes", job.args.len().to_string()),
                ("created_at", out::string(&job.created_at)),
                ("scheduled_at", out::string(&job.scheduled_at)),
                ("started_at", out::opt_string(job.started_at.as_deref())),
                ("finished_at", out::opt_string(job.finished_at.as_deref())),
                ("worker_id", job.worker_id.map_or_else(|| "null".to_owned(), |w| w.to_string())),
                ("last_error", out::opt_string(job.last_error.as_deref())),
                ("unique_key", out::opt_string(job.unique_key.as_deref())),
                ("cancel_requested_by", out::opt_string(job.cancel_requested_by.as_deref())),
            ])
        ));
    }
    let none = || "-".to_owned();
    let cell = |s: &String| out::cell(s);
    let mut text = String::new();
    for (key, value) in [
        ("id", job.id.to_string()),
        ("queue", out::cell(&job.queue)),
        ("job", out::cell(&job.job)),
        ("status", out::cell(&job.status)),
        ("priority", job.priority.to_string()),
        ("attempts", format!("{} of {}", job.attempts, job.max_attempts)),
        (
            "args",
            format!(
                "{} bytes (bincode; decoding them needs the job's Rust types, which this binary does not have; \
                 the admin page of koyo-job-web shows them)",
                job.args.len()
            ),
        ),
        ("created_at", out::cell(&job.created_at)),
        ("scheduled_at", out::cell(&job.scheduled_at)),
        ("started_at", job.started_at.as_ref().map_or_else(none, cell)),
        ("finished_at", job.finished_at.as_ref().map_or_else(none, cell)),
        ("worker_id", job.worker_id.map_or_else(none, |w| w.to_string())),
    ] {
        text.push_str(&format!("{key:<13}{value}\n"));
    }
    // Shown only when set: most jobs are not unique, and most are never cancelled while running.
    for (key, value) in [("unique_key", &job.unique_key), ("cancel_by", &job.cancel_requested_by)] {
        if let Some(value) = value {
            text.push_str(&format!("{key:<13}{}\n", out::cell(value)));
        }
    }
    match &job.last_error {
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

async fn apply(client: &Client, json: bool, id: i64, action: Action) -> Result<String, CliError> {
    let done = admin::apply_as(client, id, action, &operator()).await?;
    if json {
        return Ok(format!(
            "{}\n",
            out::object(&[
                ("id", done.id.to_string()),
                ("queue", out::string(&done.queue)),
                ("status", out::opt_string(done.status.as_deref())),
                ("attempts", done.attempts.to_string()),
                ("max_attempts", done.max_attempts.to_string()),
            ])
        ));
    }
    let queue = out::cell(&done.queue);
    Ok(match action {
        Action::Retry => format!(
            "job {id} is ready on queue {queue} ({} of {} attempts used)\n",
            done.attempts, done.max_attempts
        ),
        Action::Cancel if done.status.as_deref() == Some("running") => {
            format!(
                "job {id} on queue {queue} is running: its worker was asked to stop it, and marks it cancelled\n"
            )
        }
        Action::Cancel => format!("job {id} on queue {queue} is cancelled\n"),
        Action::Delete => format!("job {id} on queue {queue} is deleted\n"),
    })
}

async fn prune(
    client: &Client,
    json: bool,
    older_than_secs: u64,
    states: &[String],
) -> Result<String, CliError> {
    let deleted = admin::prune(client, states, older_than_secs as f64).await?;
    if json {
        return Ok(format!("{}\n", out::object(&[("deleted", deleted.to_string())])));
    }
    Ok(format!("deleted {deleted} job(s)\n"))
}

async fn workers(client: &Client, json: bool) -> Result<String, CliError> {
    let workers = admin::workers(client).await?;
    if json {
        let items: Vec<String> = workers
            .iter()
            .map(|w| {
                let queues: Vec<String> = w.queues.iter().map(|q| out::string(q)).collect();
                out::object(&[
                    ("id", w.id.to_string()),
                    ("hostname", out::string(&w.hostname)),
                    ("pid", w.pid.to_string()),
                    ("queues", out::array(&queues)),
                    ("pool_size", w.pool_size.to_string()),
                    ("started_at", out::string(&w.started_at)),
                    ("heartbeat_age_seconds", out::opt_secs(Some(w.heartbeat_age_secs))),
                    ("lease_seconds", out::opt_secs(Some(w.lease_secs))),
                    ("live", w.live.to_string()),
                    ("running", w.running.to_string()),
                ])
            })
            .collect();
        return Ok(format!("{}\n", out::object(&[("workers", out::array(&items))])));
    }
    if workers.is_empty() {
        return Ok("no live workers\n".to_owned());
    }
    let table: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            let mut heartbeat = out::age(w.heartbeat_age_secs);
            if !w.live {
                heartbeat.push_str(" (lost)");
            }
            vec![
                w.id.to_string(),
                out::cell(&w.hostname),
                w.pid.to_string(),
                out::cell(&w.queues.join(",")),
                w.pool_size.to_string(),
                heartbeat,
                w.running.to_string(),
            ]
        })
        .collect();
    Ok(out::table(
        &["ID", "HOST", "PID", "QUEUES", "POOL", "HEARTBEAT", "RUNNING"],
        &[true, false, true, false, true, true, true],
        &table,
    ))
}

async fn periodic(client: &Client, json: bool) -> Result<String, CliError> {
    let schedules = admin::periodic(client).await?;
    if json {
        let items: Vec<String> = schedules
            .iter()
            .map(|p| {
                out::object(&[
                    ("name", out::string(&p.name)),
                    ("job", out::string(&p.job)),
                    ("queue", out::string(&p.queue)),
                    ("schedule", out::string(&p.schedule)),
                    ("time_zone", out::string(&p.time_zone)),
                    ("missed", out::string(&p.missed)),
                    ("last_slot", out::opt_string(p.last_slot.as_deref())),
                    ("last_job_id", p.last_job_id.map_or_else(|| "null".to_owned(), |id| id.to_string())),
                    ("next_slot", out::opt_string(p.next_slot.as_deref())),
                    ("seen_age_seconds", out::opt_secs(Some(p.seen_age_secs))),
                ])
            })
            .collect();
        return Ok(format!("{}\n", out::object(&[("periodic", out::array(&items))])));
    }
    if schedules.is_empty() {
        return Ok("no periodic schedules (none is run by a live worker)\n".to_owned());
    }
    let table: Vec<Vec<String>> = schedules
        .iter()
        .map(|p| {
            let last = match (&p.last_slot, p.last_job_id) {
                (Some(slot), Some(id)) => format!("{slot} (job {id})"),
                (Some(slot), None) => slot.clone(),
                (None, _) => "-".to_owned(),
            };
            vec![
                out::cell(&p.name),
                out::cell(&p.schedule),
                out::cell(&p.time_zone),
                out::cell(&p.queue),
                last,
                p.next_slot.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    Ok(out::table(
        &["NAME", "SCHEDULE", "ZONE", "QUEUE", "LAST SLOT", "NEXT SLOT"],
        &[false, false, false, false, false, false],
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
            Command::Jobs(JobFilter {
                queue: Some("mail".into()),
                states: Some(vec!["failed".into(), "ready".into()]),
                limit: 10,
                before: Some(99)
            })
        );
        assert_eq!(command(&["jobs"]), Command::Jobs(JobFilter::default()));
        assert_eq!(command(&["show", "7"]), Command::Show(7));
        assert_eq!(command(&["retry", "9223372036854775807"]), Command::Apply(i64::MAX, Action::Retry));
        assert_eq!(command(&["cancel", "1"]), Command::Apply(1, Action::Cancel));
        assert_eq!(command(&["delete", "2"]), Command::Apply(2, Action::Delete));
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
