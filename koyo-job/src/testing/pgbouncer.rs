//! A private PgBouncer in front of a test database, for tests of koyo-job behind a connection
//! pooler.

use std::fmt;
use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::Config;
use tokio_postgres::config::Host;

use super::{Owner, TestDbError};

/// How long a started PgBouncer may take to accept a client.
const START_DEADLINE: Duration = Duration::from_secs(15);

/// PgBouncer's `pool_mode`: when a client's server connection goes back to the pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolMode {
    /// When the client disconnects: a client keeps one server connection, with its prepared
    /// statements and `LISTEN`s, as if connected directly.
    Session,
    /// At the end of each transaction (or statement outside one): the next transaction may run
    /// on another server connection, so no session state (named prepared statements, `LISTEN`,
    /// `SET`) carries over.
    Transaction,
}

impl PoolMode {
    fn as_ini(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// A PgBouncer of the test's own, started from Debian's `pgbouncer` package (found on `PATH`
/// or as `/usr/sbin/pgbouncer`), in front of the server a [`Config`] names (a
/// [`TestDatabase`](super::TestDatabase)'s, say): its own configuration in a private temporary
/// directory, a free port of 127.0.0.1 (kept across [`PgBouncer::restart`]) and no Unix
/// socket, so it never meets a system-wide PgBouncer. When this process runs as root it runs as
/// the `postgres` OS user, since PgBouncer refuses to run as root.
///
/// Clients are trusted, and PgBouncer logs in to the server as the client's user, with the
/// target's password if it has one. Every database of the server is reachable through it.
///
/// ```no_run
/// use koyo_job::testing::{PgBouncer, PoolMode, TestDatabase};
/// use koyo_job::{Broker, BrokerOptions};
///
/// #[tokio::test]
/// async fn enqueues_through_pgbouncer() -> Result<(), Box<dyn std::error::Error>> {
///     let db = TestDatabase::create().await?;
///     let bouncer = PgBouncer::start(db.config(), PoolMode::Transaction).await?;
///     let options = BrokerOptions { prepared_statements: false, ..BrokerOptions::default() };
///     let broker = Broker::new(bouncer.config().clone(), options)?;
///     koyo_job::migrate(&broker).await?;
///     // … enqueue, run workers with `.listen(false)` …
///     Ok(())
/// } // PgBouncer is stopped and its directory deleted here
/// ```
///
/// Dropping the value stops PgBouncer and deletes its directory; if the test process dies
/// first, a watchdog process does the same.
pub struct PgBouncer {
    program: PathBuf,
    dir: PathBuf,
    port: u16,
    owner: Owner,
    config: Config,
    process: Option<Child>,
    watchdog: Option<ChildStdin>,
}

impl PgBouncer {
    /// Starts PgBouncer in `mode` in front of the server `target` names, and waits until it
    /// lets a client reach `target`'s database. [`TestDbError::NoPgBouncer`] when PgBouncer is
    /// not installed.
    pub async fn start(target: &Config, mode: PoolMode) -> Result<PgBouncer, TestDbError> {
        PgBouncer::start_with(target, mode, 10).await
    }

    /// Like [`PgBouncer::start`], with at most `server_connections` server connections
    /// (`default_pool_size`, 10 for [`PgBouncer::start`]) per database and user. With one,
    /// every client's transactions take turns on the same server session, so whatever one
    /// client leaves there (a named prepared statement) the next one meets.
    pub async fn start_with(
        target: &Config,
        mode: PoolMode,
        server_connections: usize,
    ) -> Result<PgBouncer, TestDbError> {
        let program = find_pgbouncer().ok_or(TestDbError::NoPgBouncer)?;
        let (dir, owner, watchdog) = tokio::task::spawn_blocking(prepare_dir)
            .await
            .map_err(|error| bouncer_error(format!("setting it up panicked: {error}"), None))??;
        let mut bouncer = PgBouncer {
            program,
            dir,
            port: 0,
            owner,
            config: Config::new(),
            process: None,
            watchdog: Some(watchdog),
        };
        let mut last_failure = String::new();
        // A port found free may be taken before PgBouncer binds it: try a few.
        for _ in 0..3 {
            bouncer.port = super::free_port().map_err(|e| bouncer_error("could not find a free port", e))?;
            bouncer.config = client_config(target, bouncer.port);
            bouncer.write_files(target, mode, server_connections.max(1))?;
            match bouncer.launch().await {
                Ok(()) => return Ok(bouncer),
                Err(failure) => last_failure = failure,
            }
        }
        Err(bouncer_error(last_failure, None))
    }

    /// Connects to the target's database through PgBouncer, as the target's user.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// [`PgBouncer::config`] as a `postgresql://` URL. It contains the target's password, if
    /// it has one: do not print it.
    pub fn url(&self) -> String {
        super::to_url(&self.config)
    }

    /// The TCP port on 127.0.0.1; the same for the life of the value.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the configuration and PgBouncer's log (`pgbouncer.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The end of PgBouncer's log (its last 2,000 bytes), for failure messages.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut log) = fs::File::open(self.dir.join("pgbouncer.log")) {
            let len = log.metadata().map_or(0, |meta| meta.len());
            let _ = log.seek(SeekFrom::Start(len.saturating_sub(2000)));
            let _ = log.read_to_string(&mut text);
        }
        text
    }

    /// Stops PgBouncer at once (`SIGTERM`, an immediate shutdown: every client connection and
    /// every server connection is closed, transactions in flight roll back), then starts it
    /// again on the same port and waits until it accepts clients.
    pub async fn restart(&mut self) -> Result<(), TestDbError> {
        self.stop();
        let mut last_failure = String::new();
        // The port may take a moment to be released.
        for attempt in 0..5 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            match self.launch().await {
                Ok(()) => return Ok(()),
                Err(failure) => last_failure = failure,
            }
        }
        Err(bouncer_error(last_failure, None))
    }

    /// Writes `pgbouncer.ini` and `userlist.txt` for `target`, listening on `self.port`, with
    /// `servers` server connections at most.
    fn write_files(&self, target: &Config, mode: PoolMode, servers: usize) -> Result<(), TestDbError> {
        let (host, port) = server_address(target)?;
        let mut server = format!("host={} port={port}", ini_value(&host));
        if let Some(password) = target.get_password() {
            let password = String::from_utf8(password.to_vec())
                .map_err(|_| bouncer_error("the target's password is not UTF-8", None))?;
            server.push_str(&format!(" password={}", ini_value(&password)));
        }
        let user = target.get_user().unwrap_or("postgres");
        let ini = format!(
            "[databases]\n\
             * = {server}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/userlist.txt\n\
             pool_mode = {mode}\n\
             max_client_conn = 500\n\
             default_pool_size = {servers}\n\
             log_connections = 0\n\
             log_disconnections = 0\n",
            port = self.port,
            dir = self.dir.display(),
            mode = mode.as_ini(),
        );
        // Only PgBouncer's user reads them (the directory is its own, mode 0700).
        write_private(&self.dir.join("pgbouncer.ini"), &ini, self.owner)?;
        let userlist = format!("\"{}\" \"\"\n", user.replace('"', "\"\""));
        write_private(&self.dir.join("userlist.txt"), &userlist, self.owner)
    }

    /// Starts PgBouncer and waits until a client gets through it to the target database;
    /// otherwise says why (its log).
    async fn launch(&mut self) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("pgbouncer.log"))
            .and_then(|log| Ok((log.try_clone()?, log)))
            .map_err(|error| format!("could not open its log file: {error}"))?;
        let mut command = Command::new(&self.program);
        command
            .arg(self.dir.join("pgbouncer.ini"))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.0)
            .stderr(log.1)
            .process_group(0);
        super::run_as(&mut command, self.owner);
        let mut child =
            command.spawn().map_err(|error| format!("could not run {}: {error}", self.program.display()))?;
        fs::write(self.dir.join("server.pid"), child.id().to_string())
            .map_err(|error| format!("could not record its pid: {error}"))?;
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("pgbouncer exited with {status}: {}", self.log_tail()));
            }
            if started.elapsed() > START_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "pgbouncer did not let a client through within {} s: {}",
                    START_DEADLINE.as_secs(),
                    self.log_tail()
                ));
            }
            let probe = async {
                let client = super::connect(&self.config).await?;
                client.simple_query("SELECT 1").await
            };
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), probe).await {
                self.process = Some(child);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops PgBouncer (`SIGTERM`) and waits until it exits (killing it after 10 s).
    fn stop(&mut self) {
        let Some(mut process) = self.process.take() else { return };
        if matches!(process.try_wait(), Ok(None)) {
            let _ = super::signal(process.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(process.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(process.try_wait(), Ok(None)) {
                let _ = process.kill();
            }
        }
        let _ = process.wait();
        // Its pid may be reused by now: the watchdog must not signal it.
        let _ = fs::remove_file(self.dir.join("server.pid"));
    }
}

impl fmt::Debug for PgBouncer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `tokio_postgres::Config`'s `Debug` redacts the password.
        f.debug_struct("PgBouncer")
            .field("dir", &self.dir)
            .field("port", &self.port)
            .field("running", &self.process.is_some())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for PgBouncer {
    /// Stops PgBouncer and deletes its directory (blocking, briefly).
    fn drop(&mut self) {
        self.stop();
        if let Err(error) = fs::remove_dir_all(&self.dir) {
            eprintln!("koyo_job::testing: could not delete {}: {error}", self.dir.display());
        }
        // Closing the pipe lets the watchdog go; it finds nothing left to do.
        drop(self.watchdog.take());
    }
}

fn bouncer_error(reason: impl Into<String>, source: impl Into<Option<std::io::Error>>) -> TestDbError {
    TestDbError::PgBouncer { reason: reason.into(), source: source.into() }
}

/// `pgbouncer` on `PATH`, else Debian's `/usr/sbin/pgbouncer` (`/usr/sbin` is not on every
/// user's `PATH`).
fn find_pgbouncer() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("pgbouncer"));
    on_path.chain([PathBuf::from("/usr/sbin/pgbouncer")]).find(|path| super::is_executable(path))
}

/// Makes the private directory (given to the `postgres` OS user when we are root) and starts
/// its watchdog (blocking).
fn prepare_dir() -> Result<(PathBuf, Owner, ChildStdin), TestDbError> {
    let dir = super::make_private_dir()?;
    let uid = fs::metadata(&dir).map_err(|e| bouncer_error("could not inspect its directory", e))?.uid();
    let owner = if uid == 0 {
        let owner = super::postgres_os_user()?;
        std::os::unix::fs::chown(&dir, Some(owner.0), Some(owner.1))
            .map_err(|e| bouncer_error("could not give its directory to the postgres user", e))?;
        Some(owner)
    } else {
        None
    };
    // The same watchdog as a private cluster's: it stops the process named in `server.pid`
    // and deletes the directory once this process is gone.
    let watchdog = Command::new("sh")
        .arg("-c")
        .arg(super::WATCHDOG_SCRIPT)
        .arg("koyo-test-pgbouncer-watchdog")
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| bouncer_error("could not start its watchdog with sh", e))?
        .stdin
        .take()
        .ok_or_else(|| bouncer_error("the watchdog has no stdin", None))?;
    Ok((dir, owner, watchdog))
}

/// Writes `text` to `path`, readable by `owner` (or us) only.
fn write_private(path: &Path, text: &str, owner: Owner) -> Result<(), TestDbError> {
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        let mut file =
            fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)?;
        file.write_all(text.as_bytes())?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
        }
        Ok(())
    };
    write().map_err(|error| bouncer_error(format!("could not write {}", path.display()), error))
}

/// Where `target`'s server listens: its first host and port (a socket directory for a Unix
/// socket, which PgBouncer takes as a host starting with `/`).
fn server_address(target: &Config) -> Result<(String, u16), TestDbError> {
    let host = match target.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = target.get_ports().first().copied().unwrap_or(5432);
    Ok((host, port))
}

/// A value for a PgBouncer connection string, quoted when it needs to be.
fn ini_value(value: &str) -> String {
    if !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c)) {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// `target`'s user, password and database, at PgBouncer's address.
fn client_config(target: &Config, port: u16) -> Config {
    let mut config = Config::new();
    config.host("127.0.0.1").port(port).connect_timeout(Duration::from_secs(5));
    if let Some(user) = target.get_user() {
        config.user(user);
    }
    if let Some(password) = target.get_password() {
        config.password(password);
    }
    if let Some(dbname) = target.get_dbname() {
        config.dbname(dbname);
    }
    config
}
