//! What the two command-line tools of this package (`koyo-job-migrate`, `koyo-job-admin`)
//! share: option parsing helpers, where the database URL comes from, connecting, and writing
//! output and errors. Included by each binary with `mod cli;` (not part of the library).

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::time::Duration;

use tokio_postgres::Client;

/// How long to wait for the server to accept the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A command line that cannot be run; exit status 2.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn usage(message: impl Into<String>) -> UsageError {
    UsageError(message.into())
}

/// Why the tool could not get a connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("could not connect to the database")]
    Failed(#[source] tokio_postgres::Error),
    #[error("timed out after {} s waiting for the database to accept the connection", CONNECT_TIMEOUT.as_secs())]
    TimedOut,
}

/// Why running the tool failed outside the database: the runtime or stdout.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("could not start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("could not write to stdout")]
    Stdout(#[source] std::io::Error),
}

/// The value of an option given as `--flag value` or `--flag=value`.
pub fn value(
    inline: Option<String>,
    rest: &mut impl Iterator<Item = OsString>,
    flag: &str,
) -> Result<String, UsageError> {
    let value = match inline {
        Some(value) => value,
        None => rest
            .next()
            .ok_or_else(|| usage(format!("{flag} needs a value")))?
            .into_string()
            .map_err(|_| usage(format!("the value of {flag} must be valid UTF-8")))?,
    };
    if value.is_empty() {
        return Err(usage(format!("{flag} needs a non-empty value")));
    }
    Ok(value)
}

/// Stores an option's value, refusing a second one.
pub fn set_once(slot: &mut Option<String>, flag: &str, value: String) -> Result<(), UsageError> {
    if slot.replace(value).is_some() {
        return Err(usage(format!("{flag} given more than once")));
    }
    Ok(())
}

/// Picks the URL from the flag, then from `DATABASE_URL` (an empty variable counts as unset).
pub fn database_url(flag: Option<String>, env: Option<OsString>) -> Result<String, UsageError> {
    if let Some(url) = flag {
        return Ok(url);
    }
    match env.filter(|value| !value.is_empty()).map(OsString::into_string) {
        Some(Ok(url)) => Ok(url),
        Some(Err(_)) => Err(usage("DATABASE_URL is not valid UTF-8")),
        None => Err(usage(
            "no database given: pass --database-url URL or set the DATABASE_URL environment variable",
        )),
    }
}

/// Runs `fut` to completion on a single-threaded runtime.
pub fn block_on<F: Future>(fut: F) -> Result<F::Output, IoError> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(IoError::Runtime)?;
    Ok(runtime.block_on(fut))
}

/// Connects to `url` within [`CONNECT_TIMEOUT`] and drives the connection in the background.
pub async fn connect(url: &str) -> Result<Client, ConnectError> {
    let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| ConnectError::TimedOut)?
        .map_err(ConnectError::Failed)?;
    // A broken connection also fails the pending query, which reports it with context.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Writes to stdout without panicking when the reader went away (`… | head`).
pub fn output(text: &str) -> Result<(), IoError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(IoError::Stdout(error)),
        _ => Ok(()),
    }
}

/// The error and its causes on one line. tokio-postgres's errors print only their kind and keep
/// the server's message in `source()`, so the whole chain is needed to be useful.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_over_database_url_and_an_empty_variable_counts_as_unset() {
        assert_eq!(database_url(Some("a".into()), Some("b".into())).unwrap(), "a");
        assert_eq!(database_url(None, Some("b".into())).unwrap(), "b");
        let missing = database_url(None, Some("".into())).unwrap_err().0;
        assert!(missing.contains("DATABASE_URL"), "{missing}");
    }
}
