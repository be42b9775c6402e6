//! `koyo-job-migrate`: creates or upgrades koyo-job's tables from the command line, a thin shell
//! over the `koyo_job_migrate` library.
//!
//! Exit status: 0 on success, 1 when the database or the connection fails, 2 on a usage error.
//! The database URL is never printed, since it usually carries a password.

mod cli;

use std::ffi::OsString;
use std::process::ExitCode;

use cli::{ConnectError, IoError, UsageError, chain, output, set_once, value};
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

/// Why a run failed once the command line was accepted.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Usage(UsageError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Migrate(MigrateError),
    #[error(transparent)]
    Io(#[from] IoError),
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
        Invocation::Help => Ok(output(USAGE)?),
        Invocation::Version => Ok(output(&format!("koyo-job-migrate {}\n", env!("CARGO_PKG_VERSION")))?),
        Invocation::Print { schema } => Ok(output(&koyo_job_migrate::script(schema.as_deref())?)?),
        Invocation::Run(run) => {
            let url = cli::database_url(run.database_url, std::env::var_os("DATABASE_URL"))?;
            let message = cli::block_on(run_command(run.command, &url, run.schema.as_deref()))??;
            Ok(output(&message)?)
        }
    }
}

async fn run_command(command: Command, url: &str, schema: Option<&str>) -> Result<String, CliError> {
    let mut client = cli::connect(url).await?;

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
