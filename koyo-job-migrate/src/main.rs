//! `koyo-job-migrate`: creates or upgrades koyo-job's tables from the command line, a thin shell
//! over the `koyo_job_migrate` library.
//!
//! Exit status: 0 on success, 1 when the database or the connection fails, 2 on a usage error.
//! The database URL is never printed, since it usually carries a password.

use std::ffi::OsString;
use std::fmt;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use koyo_job_migrate::{MigrateError, Report, Status};

const USAGE: &str = "\
Creates or upgrades koyo-job's tables in a PostgreSQL database.

Usage: koyo-job-migrate [up|status] [--database-url URL] [--schema NAME] [--print]

Commands:
  up                  apply every pending migration (the default)
  status              show the database's version and the pending migrations

Options:
  --database-url URL  the database to use (default: the DATABASE_URL environment variable)
  --schema NAME       keep the tables in this PostgreSQL schema, created if missing; the
                      runtime must then connect with it on its search_path, for example with
                      ?options=-csearch_path%3DNAME at the end of its URL
  --print             print the SQL of every migration instead of connecting, for teams that
                      apply it with their own migration tool (run it in one transaction)
  -h, --help          show this help
  -V, --version       show the version
";

/// How long to wait for the server to accept the connection: `connect_timeout` in a URL only
/// bounds opening the socket, not a server that accepts it and then hangs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Invocation {
    Help,
    Version,
    Print { schema: Option<String> },
    Run(Run),
}

#[derive(Debug, PartialEq, Eq)]
struct Run {
    command: Command,
    database_url: Option<String>,
    schema: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Up,
    Status,
}

/// A command line that cannot be run; exit status 2.
#[derive(Debug, PartialEq, Eq)]
struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a run failed once the command line was accepted.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Usage(UsageError),
    #[error("could not connect to the database")]
    Connect(#[source] tokio_postgres::Error),
    #[error("timed out after {} s waiting for the database to accept the connection", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout,
    #[error(transparent)]
    Migrate(MigrateError),
    #[error("could not start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("could not write to stdout")]
    Stdout(#[source] std::io::Error),
}

impl From<UsageError> for CliError {
    fn from(error: UsageError) -> Self {
        CliError::Usage(error)
    }
}

impl From<MigrateError> for CliError {
    fn from(error: MigrateError) -> Self {
        match error {
            MigrateError::InvalidSchema { .. } => CliError::Usage(UsageError(error.to_string())),
            error => CliError::Migrate(error),
        }
    }
}

fn main() -> ExitCode {
    let result = parse_args(std::env::args_os().skip(1)).map_err(CliError::from).and_then(execute);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("koyo-job-migrate: error: {}", chain(&error));
            if let CliError::Usage(_) = error {
                eprintln!("Run `koyo-job-migrate --help` for usage.");
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn execute(invocation: Invocation) -> Result<(), CliError> {
    match invocation {
        Invocation::Help => output(USAGE),
        Invocation::Version => output(&format!("koyo-job-migrate {}\n", env!("CARGO_PKG_VERSION"))),
        Invocation::Print { schema } => output(&koyo_job_migrate::script(schema.as_deref())?),
        Invocation::Run(run) => {
            let url = database_url(run.database_url, std::env::var_os("DATABASE_URL"))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(CliError::Runtime)?;
            let message = runtime.block_on(run_command(run.command, &url, run.schema.as_deref()))?;
            output(&message)
        }
    }
}

/// Writes to stdout without panicking when the reader went away (`koyo-job-migrate --print | head`).
fn output(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Stdout(error)),
        _ => Ok(()),
    }
}

/// Picks the URL from the flag, then from `DATABASE_URL`.
fn database_url(flag: Option<String>, env: Option<OsString>) -> Result<String, UsageError> {
    if let Some(url) = flag {
        return Ok(url);
    }
    match env.filter(|value| !value.is_empty()).map(OsString::into_string) {
        Some(Ok(url)) => Ok(url),
        Some(Err(_)) => Err(UsageError("DATABASE_URL is not valid UTF-8".into())),
        None => Err(UsageError(
            "no database given: pass --database-url URL or set the DATABASE_URL environment variable".into(),
        )),
    }
}

async fn run_command(command: Command, url: &str, schema: Option<&str>) -> Result<String, CliError> {
    let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
    let (mut client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| CliError::ConnectTimeout)?
        .map_err(CliError::Connect)?;
    // A broken connection also fails the pending query, which reports it with context.
    tokio::spawn(async move {
        let _ = connection.await;
    });

    Ok(match command {
        Command::Up => describe_report(&koyo_job_migrate::migrate(&mut client, schema).await?),
        Command::Status => describe_status(&koyo_job_migrate::status(&client, schema).await?),
    })
}

fn describe_report(report: &Report) -> String {
    if report.applied.is_empty() {
        format!("already at version {}\n", report.version)
    } else {
        format!("applied {} migration(s); schema is at version {}\n", report.applied.len(), report.version)
    }
}

fn describe_status(status: &Status) -> String {
    let current = match status.version {
        None => "none (koyo-job's tables do not exist yet)".to_owned(),
        Some(version) if status.is_too_new() => {
            format!("{version} (newer than this build knows: upgrade koyo-job-migrate)")
        }
        Some(version) => version.to_string(),
    };
    let pending = if status.pending.is_empty() {
        "none".to_owned()
    } else {
        let versions: Vec<String> = status.pending.iter().map(i32::to_string).collect();
        versions.join(", ")
    };
    format!("current version: {current}\nlatest version:  {}\npending:         {pending}\n", status.latest)
}

/// The error and its causes on one line. tokio-postgres's errors print only their kind and keep
/// the server's message in `source()`, so the whole chain is needed to be useful.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Invocation, UsageError> {
    let mut command = None;
    let mut database_url = None;
    let mut schema = None;
    let mut print = false;

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // A URL is not echoed in messages even when misplaced: it may hold a password.
        let arg = arg.into_string().map_err(|_| UsageError("arguments must be valid UTF-8".into()))?;
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        match flag {
            "-h" | "--help" => return Ok(Invocation::Help),
            "-V" | "--version" => return Ok(Invocation::Version),
            "--print" if inline_value.is_some() => return Err(UsageError("--print takes no value".into())),
            "--print" => print = true,
            "--database-url" => {
                set_once(&mut database_url, "--database-url", value(inline_value, &mut args, flag)?)?
            }
            "--schema" => set_once(&mut schema, "--schema", value(inline_value, &mut args, flag)?)?,
            "up" | "status" => {
                let parsed = if flag == "up" { Command::Up } else { Command::Status };
                if command.replace(parsed).is_some() {
                    return Err(UsageError("give at most one command: `up` or `status`".into()));
                }
            }
            flag if flag.starts_with('-') => {
                return Err(UsageError(format!("unknown option `{flag}`")));
            }
            _ => {
                return Err(UsageError(
                    "unexpected argument: the only commands are `up` and `status` (a database URL goes after --database-url)"
                        .into(),
                ));
            }
        }
    }

    if print {
        if command == Some(Command::Status) {
            return Err(UsageError("--print cannot be combined with `status`".into()));
        }
        return Ok(Invocation::Print { schema });
    }
    Ok(Invocation::Run(Run { command: command.unwrap_or(Command::Up), database_url, schema }))
}

/// The value of an option given as `--flag value` or `--flag=value`.
fn value(
    inline: Option<String>,
    rest: &mut impl Iterator<Item = OsString>,
    flag: &str,
) -> Result<String, UsageError> {
    let value = match inline {
        Some(value) => value,
        None => rest
            .next()
            .ok_or_else(|| UsageError(format!("{flag} needs a value")))?
            .into_string()
            .map_err(|_| UsageError(format!("the value of {flag} must be valid UTF-8")))?,
    };
    if value.is_empty() {
        return Err(UsageError(format!("{flag} needs a non-empty value")));
    }
    Ok(value)
}

fn set_once(slot: &mut Option<String>, flag: &str, value: String) -> Result<(), UsageError> {
    if slot.replace(value).is_some() {
        return Err(UsageError(format!("{flag} given more than once")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Invocation, UsageError> {
        parse_args(args.iter().map(OsString::from))
    }

    fn run(command: Command, database_url: Option<&str>, schema: Option<&str>) -> Invocation {
        Invocation::Run(Run {
            command,
            database_url: database_url.map(Into::into),
            schema: schema.map(Into::into),
        })
    }

    #[test]
    fn no_arguments_means_up_with_the_url_from_the_environment() {
        assert_eq!(parse(&[]).unwrap(), run(Command::Up, None, None));
    }

    #[test]
    fn commands_and_options_parse_in_any_order() {
        assert_eq!(
            parse(&["--schema", "jobs", "status", "--database-url", "postgresql://h/db"]).unwrap(),
            run(Command::Status, Some("postgresql://h/db"), Some("jobs"))
        );
        assert_eq!(
            parse(&["up", "--database-url=postgresql://u:p@h/db?a=b", "--schema=jobs"]).unwrap(),
            run(Command::Up, Some("postgresql://u:p@h/db?a=b"), Some("jobs"))
        );
    }

    #[test]
    fn print_needs_no_database() {
        assert_eq!(parse(&["--print"]).unwrap(), Invocation::Print { schema: None });
        assert_eq!(
            parse(&["up", "--print", "--schema", "jobs"]).unwrap(),
            Invocation::Print { schema: Some("jobs".into()) }
        );
    }

    #[test]
    fn help_and_version_end_parsing() {
        assert_eq!(parse(&["status", "--bogus", "--help"]).unwrap_err().0, "unknown option `--bogus`");
        assert_eq!(parse(&["status", "-h", "--bogus"]).unwrap(), Invocation::Help);
        assert_eq!(parse(&["--version"]).unwrap(), Invocation::Version);
    }

    #[test]
    fn misuse_is_a_usage_error() {
        for args in [
            &["up", "status"][..],
            &["--schema"],
            &["--schema="],
            &["--database-url", "a", "--database-url", "b"],
            &["--print", "status"],
            &["--print=yes"],
            &["--frobnicate"],
            &["down"],
        ] {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
    }

    #[test]
    fn usage_errors_never_echo_a_url() {
        let secret = "postgresql://user:hunter2@db/app";
        for args in
            [&[secret][..], &["--database-url", "a", "--database-url", secret], &["--database_url", secret]]
        {
            let message = parse(args).unwrap_err().0;
            assert!(!message.contains("hunter2"), "{message}");
        }
        let message = parse(&[&format!("--databaseurl={secret}")]).unwrap_err().0;
        assert_eq!(message, "unknown option `--databaseurl`");
    }

    #[test]
    fn the_flag_wins_over_database_url_and_an_empty_variable_counts_as_unset() {
        assert_eq!(database_url(Some("a".into()), Some("b".into())).unwrap(), "a");
        assert_eq!(database_url(None, Some("b".into())).unwrap(), "b");
        let missing = database_url(None, Some("".into())).unwrap_err().0;
        assert!(missing.contains("DATABASE_URL"), "{missing}");
    }

    #[test]
    fn reports_read_as_sentences() {
        let applied = Report { applied: vec![1], version: 1 };
        assert_eq!(describe_report(&applied), "applied 1 migration(s); schema is at version 1\n");
        let nothing = Report { applied: vec![], version: 1 };
        assert_eq!(describe_report(&nothing), "already at version 1\n");
    }

    #[test]
    fn status_shows_current_latest_and_pending() {
        let fresh = Status { version: None, latest: 1, pending: vec![1] };
        let text = describe_status(&fresh);
        assert!(text.starts_with("current version: none"), "{text}");
        assert!(text.contains("pending:         1\n"), "{text}");

        let too_new = Status { version: Some(999), latest: 1, pending: vec![] };
        assert!(describe_status(&too_new).contains("999 (newer than this build knows"));
    }

    #[test]
    fn an_invalid_schema_is_a_usage_error() {
        let error = CliError::from(koyo_job_migrate::script(Some("Bad")).unwrap_err());
        assert!(matches!(error, CliError::Usage(_)));
    }
}
