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

use koyo_job_migrate::admin::{self, Action, AdminError, BulkTarget, FINISHED, JobFilter, STATES, TimeBound};
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
                             search with --id ID, --job NAME (NAME* for a prefix), --error
                             TEXT (in the last error, ignoring case) and a time range:
                             --created-after/--created-before/--finished-after/
                             --finished-before T (RFC 3339, a date, or 24h, 7d: that long ago)
  count [FILTER]             how many jobs the filter (the options of `jobs`) matches
  show ID                    one job: every column, its arguments as a length in bytes
  retry ID                   make a failed, cancelled or scheduled job ready now (a failed
                             or cancelled job that used all its attempts gets one more)
  cancel ID                  cancel a ready, scheduled or failed job
  delete ID                  delete a job in any state but running
                             (retry, cancel and delete also take a running job whose
                             worker is lost: its heartbeat is older than its lease)
  bulk retry|cancel|delete (FILTER | --ids ID[,ID...])
                             the action on every job the filter (the options of `jobs`,
                             at least one) matches, or on the jobs listed, with the same state
                             rules, in batches of 1000; prints a line per batch, then how many
                             were changed, refused (and why) and gone
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
  limit QUEUE [--max-running N|none] [--rate N/DURATION|none]
                             fleet-wide limits: at most N of the queue's jobs running at
                             once across all workers, at most N starts in any DURATION
                             (e.g. 100/1m); `none` removes a limit, an option left out keeps
                             it; with no option, shows the limits

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

/// What the command line asks for.
#[derive(Debug, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per run
enum Invocation {
    Help,
    Version,
    Run { command: Command, database_url: Option<String>, json: bool },
}

#[derive(Debug, PartialEq)]
enum Command {
    Queues,
    Jobs(JobFilter),
    Count(JobFilter),
    Bulk(Action, BulkTarget),
    Show(i64),
    Apply(i64, Action),
    Prune { older_than_secs: u64, states: Vec<String> },
    Workers,
    Periodic,
    Pause(String),
    Resume(String),
    Limit { queue: String, max_running: Option<Option<i32>>, rate: Option<Option<(i32, f64)>> },
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
            CliError::Query(AdminError::Invalid(_)) => 2,
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
    let mut search: [Option<String>; 7] = Default::default();
    let mut ids = None;
    let mut max_running = None;
    let mut rate = None;

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
            "--ids" => set_once(&mut ids, flag, value(inline_value, &mut args, flag)?)?,
            "--max-running" => set_once(&mut max_running, flag, value(inline_value, &mut args, flag)?)?,
            "--rate" => set_once(&mut rate, flag, value(inline_value, &mut args, flag)?)?,
            flag if SEARCH_FLAGS.contains(&flag) => {
                let slot = SEARCH_FLAGS.iter().position(|f| *f == flag).expect("listed");
                set_once(&mut search[slot], flag, value(inline_value, &mut args, flag)?)?;
            }
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
            "no command given: one of queues, jobs, count, show, retry, cancel, delete, bulk, prune, workers, periodic, pause, resume, limit",
        ));
    };
    let allowed: &[&str] = match name.as_str() {
        // And the search options (SEARCH_FLAGS), below.
        "jobs" => &["--queue", "--state", "--limit", "--before"],
        "count" => &["--queue", "--state"],
        "bulk" => &["--queue", "--state", "--ids"],
        "prune" => &["--older-than", "--state"],
        "limit" => &["--max-running", "--rate"],
        "queues" | "show" | "retry" | "cancel" | "delete" | "workers" | "periodic" | "pause" | "resume" => {
            &[]
        }
        // Not echoed: it may be a URL given without --database-url.
        _ => {
            return Err(usage(
                "unknown command: the commands are queues, jobs, count, show, retry, cancel, delete, bulk, prune, workers, periodic, pause, resume, limit",
            ));
        }
    };
    for (flag, given) in [
        ("--queue", queue.is_some()),
        ("--state", state.is_some()),
        ("--limit", limit.is_some()),
        ("--before", before.is_some()),
        ("--older-than", older_than.is_some()),
        ("--ids", ids.is_some()),
        ("--max-running", max_running.is_some()),
        ("--rate", rate.is_some()),
    ]
    .into_iter()
    .chain(SEARCH_FLAGS.iter().zip(&search).map(|(flag, value)| (*flag, value.is_some())))
    {
        let searches = matches!(name.as_str(), "jobs" | "count" | "bulk") && SEARCH_FLAGS.contains(&flag);
        if given && !allowed.contains(&flag) && !searches {
            return Err(usage(format!("`{name}` does not take {flag}")));
        }
    }
    let bulk_action = if name == "bulk" {
        let raw =
            positional.next().ok_or_else(|| usage("`bulk` needs an action: retry, cancel or delete"))?;
        Some(match raw.as_str() {
            "retry" => Action::Retry,
            "cancel" => Action::Cancel,
            "delete" => Action::Delete,
            other => {
                return Err(usage(format!(
                    "unknown bulk action `{}`: retry, cancel or delete",
                    out::cell(other)
                )));
            }
        })
    } else {
        None
    };

    let takes_id = matches!(name.as_str(), "show" | "retry" | "cancel" | "delete");
    let id = if takes_id {
        let raw = positional.next().ok_or_else(|| usage(format!("`{name}` needs a job id")))?;
        Some(parse_id(&raw, "job id")?)
    } else {
        None
    };
    let takes_queue = matches!(name.as_str(), "pause" | "resume" | "limit");
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
        "limit" => Command::Limit {
            queue: named_queue.unwrap_or_default(),
            max_running: max_running.map(|raw| parse_max_running(&raw)).transpose()?,
            rate: rate.map(|raw| parse_rate(&raw)).transpose()?,
        },
        "show" => Command::Show(id.unwrap_or_default()),
        "retry" => Command::Apply(id.unwrap_or_default(), Action::Retry),
        "cancel" => Command::Apply(id.unwrap_or_default(), Action::Cancel),
        "delete" => Command::Apply(id.unwrap_or_default(), Action::Delete),
        "jobs" | "count" => {
            let mut filter = parse_filter(queue, state, search)?;
            filter.limit = limit.map(|l| parse_limit(&l)).transpose()?.unwrap_or(DEFAULT_LIMIT);
            filter.before = before.map(|b| parse_id(&b, "--before")).transpose()?;
            if name == "jobs" { Command::Jobs(filter) } else { Command::Count(filter) }
        }
        "bulk" => {
            let action = bulk_action.expect("parsed above");
            let filter = parse_filter(queue, state, search)?;
            let target = match ids {
                Some(_) if filter.narrows() => {
                    return Err(usage("`bulk` takes either --ids or filter options, not both"));
                }
                Some(list) => BulkTarget::Ids(parse_ids(&list)?),
                None if filter.narrows() => BulkTarget::Filter(filter),
                None => {
                    return Err(usage(
                        "`bulk` needs --ids or at least one filter option (--queue, --state, --id, --job, --error, or a time); \
                         it never applies to every job at once",
                    ));
                }
            };
            Command::Bulk(action, target)
        }
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

/// The search options of `jobs`, `count` and `bulk`, in the order of the `search` slots.
const SEARCH_FLAGS: [&str; 7] = [
    "--id",
    "--job",
    "--error",
    "--created-after",
    "--created-before",
    "--finished-after",
    "--finished-before",
];

/// A filter from the options shared by `jobs`, `count` and `bulk`.
fn parse_filter(
    queue: Option<String>,
    state: Option<String>,
    search: [Option<String>; 7],
) -> Result<JobFilter, UsageError> {
    let [id, job, error, created_after, created_before, finished_after, finished_before] = search;
    let time = |raw: Option<String>, flag: &str| {
        raw.map(|raw| TimeBound::parse(&raw).map_err(|why| usage(format!("{flag}: {why}")))).transpose()
    };
    Ok(JobFilter {
        queue: queue.map(|q| parse_queue(&q)).transpose()?,
        states: state.map(|s| parse_states(&s, &STATES)).transpose()?,
        id: id.map(|i| parse_id(&i, "--id")).transpose()?,
        job: job.map(|j| admin::parse_job_pattern(&j).map_err(usage)).transpose()?,
        error: error.map(|e| admin::parse_error_text(&e).map_err(usage)).transpose()?,
        created_after: time(created_after, "--created-after")?,
        created_before: time(created_before, "--created-before")?,
        finished_after: time(finished_after, "--finished-after")?,
        finished_before: time(finished_before, "--finished-before")?,
        ..JobFilter::default()
    })
}

/// `--ids 3,5,8`: job ids separated by commas, at most `admin::MAX_SELECTION`.
fn parse_ids(raw: &str) -> Result<Vec<i64>, UsageError> {
    let ids = raw.split(',').map(|id| parse_id(id, "each of --ids")).collect::<Result<Vec<i64>, _>>()?;
    if ids.len() > admin::MAX_SELECTION {
        return Err(usage(format!(
            "--ids lists at most {} jobs; use filter options for more",
            admin::MAX_SELECTION
        )));
    }
    Ok(ids)
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
/// `--max-running`: a number of jobs, or `none`.
fn parse_max_running(raw: &str) -> Result<Option<i32>, UsageError> {
    if raw == "none" {
        return Ok(None);
    }
    match raw.parse::<i32>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(Some(n)),
        _ => Err(usage(format!(
            "invalid --max-running `{}`: a whole number of jobs from 1 to 1000000, or none",
            out::cell(raw)
        ))),
    }
}

/// `--rate`: `N/DURATION` (at most N starts in any DURATION, as `parse_duration` reads it), or
/// `none`.
fn parse_rate(raw: &str) -> Result<Option<(i32, f64)>, UsageError> {
    if raw == "none" {
        return Ok(None);
    }
    let bad = || {
        usage(format!(
            "invalid --rate `{}`: N/DURATION, at most N starts (1 to 1000000) in any DURATION (e.g. 100/1m, 5/1s), or none",
            out::cell(raw)
        ))
    };
    let (n, period) = raw.split_once('/').ok_or_else(bad)?;
    let n = n.parse::<i32>().ok().filter(|n| (1..=1_000_000).contains(n)).ok_or_else(bad)?;
    let period = parse_duration(period).map_err(|_| bad())?;
    if period > 366 * 86400 {
        return Err(bad());
    }
    Ok(Some((n, period as f64)))
}

fn parse_duration(raw: &str) -> Result<u64, UsageError> {
    let bad = || {
        usage(format!(
            "invalid duration `{}`: a whole number followed by s, m, h or d (e.g. 30s, 15m, 12h, 7d), from 1s to 100 years",
            out::cell(raw)
        ))
    };
    admin::parse_ago(raw).ok_or_else(bad)
}

// ---------------------------------------------------------------------------------------------
// Commands

async fn run_command(command: Command, url: &str, json: bool) -> Result<String, CliError> {
    let client = cli::connect(url).await?;

    match command {
        Command::Queues => queues(&client, json).await,
        Command::Jobs(filter) => jobs(&client, json, &filter).await,
        Command::Count(filter) => count(&client, json, &filter).await,
        Command::Bulk(action, target) => bulk(&client, json, action, target).await,
        Command::Show(id) => show(&client, json, id).await,
        Command::Apply(id, action) => apply(&client, json, id, action).await,
        Command::Prune { older_than_secs, states } => prune(&client, json, older_than_secs, &states).await,
        Command::Workers => workers(&client, json).await,
        Command::Periodic => periodic(&client, json).await,
        Command::Pause(queue) => pause(&client, json, &queue).await,
        Command::Resume(queue) => resume(&client, json, &queue).await,
        Command::Limit { queue, max_running, rate } => limit(&client, json, &queue, max_running, rate).await,
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
                    (
                        "max_running",
                        q.limits.max_running.map_or_else(|| "null".to_owned(), |n| n.to_string()),
                    ),
                    ("rate_limit", q.limits.rate_limit.map_or_else(|| "null".to_owned(), |n| n.to_string())),
                    ("rate_period_secs", out::opt_secs(q.limits.rate_period_secs)),
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
            cells.push(if q.limits.any() { describe_limits(&q.limits) } else { "-".to_owned() });
            cells
        })
        .collect();
    Ok(out::table(
        &["QUEUE", "SCHEDULED", "READY", "RUNNING", "DONE", "FAILED", "CANCELLED", "LAG", "LIMITS"],
        &[false, true, true, true, true, true, true, true, false],
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

/// Sets the options given (keeping the others) and prints the queue's limits.
async fn limit(
    client: &Client,
    json: bool,
    queue: &str,
    max_running: Option<Option<i32>>,
    rate: Option<Option<(i32, f64)>>,
) -> Result<String, CliError> {
    let mut limits = admin::limits(client, queue).await?;
    if max_running.is_some() || rate.is_some() {
        if let Some(max_running) = max_running {
            limits.max_running = max_running;
        }
        if let Some(rate) = rate {
            limits.rate_limit = rate.map(|(n, _)| n);
            limits.rate_period_secs = rate.map(|(_, period)| period);
        }
        limits = admin::set_limits(client, queue, &limits, &operator()).await?;
    }
    if json {
        let opt = |n: Option<i32>| n.map_or_else(|| "null".to_owned(), |n| n.to_string());
        return Ok(format!(
            "{}\n",
            out::object(&[
                ("queue", out::string(queue)),
                ("max_running", opt(limits.max_running)),
                ("rate_limit", opt(limits.rate_limit)),
                ("rate_period_secs", out::opt_secs(limits.rate_period_secs)),
            ])
        ));
    }
    Ok(format!("{}: {}\n", out::cell(queue), describe_limits(&limits)))
}

/// `at most 5 running, at most 100 starts per 1m`, or `no limits`.
fn describe_limits(limits: &admin::QueueLimits) -> String {
    let mut parts = Vec::new();
    if let Some(n) = limits.max_running {
        parts.push(format!("at most {n} running"));
    }
    if let (Some(n), Some(period)) = (limits.rate_limit, limits.rate_period_secs) {
        parts.push(format!("at most {n} starts per {}", out::age(period)));
    }
    if parts.is_empty() { "no limits".to_owned() } else { parts.join(", ") }
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
                    ("duration_secs", out::opt_secs(j.duration_secs)),
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
                j.duration_secs.map_or_else(|| "-".to_owned(), out::age),
                j.priority.to_string(),
                out::cell(&j.scheduled_at),
                out::cell(&j.job),
            ]
        })
        .collect();
    let mut text = out::table(
        &["ID", "QUEUE", "STATE", "ATTEMPTS", "DURATION", "PRIORITY", "SCHEDULED_AT", "JOB"],
        &[true, false, false, true, true, true, false, false],
        &table,
    );
    if let Some(next) = page.next_before {
        text.push_str(&format!("more: add --before {next}\n"));
    }
    Ok(text)
}

async fn count(client: &Client, json: bool, filter: &JobFilter) -> Result<String, CliError> {
    let count = admin::count(client, filter).await?;
    if json {
        return Ok(format!("{}\n", out::object(&[("count", count.to_string())])));
    }
    Ok(format!("{count} job(s)\n"))
}

/// Runs a bulk action, printing a line per batch as it goes (not with `--json`, which prints
/// the final counts only).
async fn bulk(client: &Client, json: bool, action: Action, target: BulkTarget) -> Result<String, CliError> {
    let verb = past_participle(action);
    let mut failed_output = None;
    let progress = admin::bulk(client, action, target, &operator(), |p| {
        if json || failed_output.is_some() {
            return;
        }
        let line = format!(
            "batch {}: {} of {} looked at, {} {verb}, {} refused, {} gone\n",
            p.batches, p.examined, p.total, p.applied, p.refused, p.missing
        );
        failed_output = output(&line).err();
    })
    .await?;
    if let Some(error) = failed_output {
        return Err(error.into());
    }
    let refusals: Vec<String> = progress
        .refusals
        .iter()
        .map(|r| {
            out::object(&[
                ("id", r.id.to_string()),
                ("status", out::string(&r.status)),
                ("why", out::string(&r.why)),
            ])
        })
        .collect();
    if json {
        return Ok(format!(
            "{}\n",
            out::object(&[
                ("action", out::string(action.verb())),
                ("total", progress.total.to_string()),
                ("applied", progress.applied.to_string()),
                ("cancel_requested", progress.cancel_requested.to_string()),
                ("refused", progress.refused.to_string()),
                ("missing", progress.missing.to_string()),
                ("batches", progress.batches.to_string()),
                ("refusals", out::array(&refusals)),
            ])
        ));
    }
    let mut text = format!(
        "{} job(s) {verb}, {} refused, {} gone, of {} in {} batch(es)\n",
        progress.applied, progress.refused, progress.missing, progress.total, progress.batches
    );
    if progress.cancel_requested > 0 {
        text.push_str(&format!(
            "{} of them running: their workers were asked to stop them, and mark them cancelled\n",
            progress.cancel_requested
        ));
    }
    for r in &progress.refusals {
        text.push_str(&format!("refused job {}: it is {} ({})\n", r.id, out::cell(&r.status), r.why));
    }
    if progress.refused > progress.refusals.len() as i64 {
        text.push_str(&format!("… and {} more refused\n", progress.refused - progress.refusals.len() as i64));
    }
    Ok(text)
}

fn past_participle(action: Action) -> &'static str {
    match action {
        Action::Retry => "retried",
        Action::Cancel => "cancelled",
        Action::Delete => "deleted",
    }
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
                ("history", out::array(&job.history.iter().map(attempt_json).collect::<Vec<_>>())),
                ("history_dropped", job.history_dropped.to_string()),
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
    text.push_str(&history_text(&job.history, job.history_dropped));
    Ok(text)
}

/// One attempt of a job's timeline as JSON.
fn attempt_json(a: &admin::Attempt) -> String {
    out::object(&[
        ("attempt", a.attempt.to_string()),
        ("worker_id", a.worker_id.map_or_else(|| "null".to_owned(), |w| w.to_string())),
        ("hostname", out::opt_string(a.hostname.as_deref())),
        ("started_at", out::opt_string(a.started_at.as_deref())),
        ("ended_at", out::opt_string(a.ended_at.as_deref())),
        ("duration_secs", out::opt_secs(a.duration_secs)),
        ("outcome", out::string(&a.outcome)),
        ("error", out::opt_string(a.error.as_deref())),
    ])
}

/// A job's timeline as an indented table, oldest attempt first; each error's first line, cut.
fn history_text(history: &[admin::Attempt], dropped: i32) -> String {
    let mut text = match dropped {
        0 => "history\n".to_owned(),
        n => format!("history      ({n} earlier attempt(s) not kept)\n"),
    };
    if history.is_empty() {
        text.push_str("  not started yet\n");
        return text;
    }
    let dash = || "-".to_owned();
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|a| {
            let worker = match (a.worker_id, &a.hostname) {
                (Some(id), Some(host)) => format!("{id} ({})", out::cell(host)),
                (Some(id), None) => id.to_string(),
                (None, _) => dash(),
            };
            let first_line = a.error.as_deref().and_then(|e| e.lines().find(|l| !l.trim().is_empty()));
            let error = first_line.map_or_else(dash, |line| {
                let cut: String = line.chars().take(120).collect();
                let more = if cut.len() < line.len() { "…" } else { "" };
                format!("{}{more}", out::cell(&cut))
            });
            vec![
                a.attempt.to_string(),
                out::cell(&a.outcome),
                worker,
                a.started_at.as_deref().map_or_else(dash, out::cell),
                a.ended_at.as_deref().map_or_else(dash, out::cell),
                a.duration_secs.map_or_else(dash, out::age),
                error,
            ]
        })
        .collect();
    let table = out::table(
        &["ATTEMPT", "OUTCOME", "WORKER", "STARTED_AT", "ENDED_AT", "DURATION", "ERROR"],
        &[true, false, false, false, false, true, false],
        &rows,
    );
    for line in table.lines() {
        text.push_str(&format!("  {}\n", line.trim_end()));
    }
    text
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
                before: Some(99),
                ..JobFilter::default()
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
