//! Scratch PostgreSQL databases for tests: a fresh, empty database per test on whatever server
//! is at hand, dropped when the test ends.
//!
//! Enabled by the `testing` feature. koyo-job's own tests and examples use it, and so can
//! applications testing code that enqueues jobs:
//!
//! ```no_run
//! use koyo_job::testing::TestDatabase;
//!
//! #[tokio::test]
//! async fn signing_up_enqueues_a_welcome_mail() -> Result<(), Box<dyn std::error::Error>> {
//!     let db = TestDatabase::create().await?;
//!     let broker = koyo_job::Broker::connect(&db.url()).await?;
//!     koyo_job::migrate(&broker).await?;
//!     // … run the code under test against `broker` …
//!     Ok(())
//! } // the database is dropped here
//! ```
//!
//! # Which server
//!
//! The server is found once per test process, trying in order:
//!
//! 1. `DATABASE_URL`, if set: databases are created on that server, so its user needs the
//!    `CREATEDB` privilege. It is used as given, and an error if unreachable.
//! 2. A server on this machine, port 5432 (over TCP to `localhost`, then through the usual
//!    socket directories), as user `postgres` or as the OS user (`$USER`), if that user may
//!    create databases.
//! 3. A throwaway cluster, if PostgreSQL's server programs (`initdb`, `postgres`) are on `PATH`
//!    or in `/usr/lib/postgresql/<version>/bin`: created in a temporary directory, listening on
//!    a free port of 127.0.0.1, and stopped and deleted after the test process exits, however it
//!    exits. When the process runs as root it runs as the `postgres` OS user, since PostgreSQL
//!    refuses to run as root.
//!
//! Setting `KOYO_TEST_PRIVATE_CLUSTER=1` skips the first two and always uses a throwaway
//! cluster, for tests that must not share a server.
//!
//! # A server of one's own
//!
//! A test that must stop, restart or crash PostgreSQL cannot do so to a shared server: it starts a
//! [`PrivateCluster`] instead, with [`ShutdownMode`] for the kind of stop.
//!
//! A test of code that runs behind PgBouncer starts a [`PgBouncer`] of its own in front of its
//! database, in session or transaction [`PoolMode`] (it needs Debian's `pgbouncer` package).
//!
//! Connections are made without TLS. Databases are named `koyo_test_<pid>_<n>`; the first use in
//! a process also drops databases of that form left on a local server by processes that no longer
//! run (for example after a crash), and never those of a live process.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use tokio_postgres::config::{Host, SslMode, TargetSessionAttrs};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

mod pgbouncer;
pub use pgbouncer::{PgBouncer, PoolMode};

/// Set to `1` to make every [`TestDatabase`] of the process live on a throwaway cluster.
const PRIVATE_CLUSTER_VAR: &str = "KOYO_TEST_PRIVATE_CLUSTER";

/// The server, found once per process. It holds plain configuration only: every
/// `#[tokio::test]` has its own runtime, and a connection would die with the first one.
static SERVER: OnceCell<Server> = OnceCell::const_new();

/// Numbers the databases of this process.
static NEXT_DATABASE: AtomicU64 = AtomicU64::new(0);

/// A fresh, empty database on the test server, dropped (with any connections still open to it)
/// when this value is dropped.
pub struct TestDatabase {
    name: String,
    config: Config,
    server: &'static Server,
}

impl TestDatabase {
    /// Creates an empty database on the test server, finding or starting that server on first
    /// use (see the [module documentation](self) for where it looks).
    pub async fn create() -> Result<TestDatabase, TestDbError> {
        let server = SERVER.get_or_try_init(discover).await?;
        let admin = connect(&server.admin).await.map_err(TestDbError::Connect)?;

        let mut in_use_retries = 0;
        let mut name = next_name();
        loop {
            // The name is ours (`koyo_test_<digits>_<digits>`), so quoting it cannot break out.
            match admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await {
                Ok(()) => break,
                // Left by an earlier process that had our pid: skip to the next number.
                Err(error) if error.code() == Some(&SqlState::DUPLICATE_DATABASE) => name = next_name(),
                // `template1` is briefly busy while another session is connected to it.
                Err(error) if error.code() == Some(&SqlState::OBJECT_IN_USE) && in_use_retries < 50 => {
                    in_use_retries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(source) => return Err(TestDbError::Create { name, source }),
            }
        }

        let mut config = server.admin.clone();
        config.dbname(&name);
        Ok(TestDatabase { name, config, server })
    }

    /// The connection configuration of this database (without TLS).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// This database as a `postgresql://` URL, for APIs that take one.
    ///
    /// It contains the server's password, if the server has one (only when `DATABASE_URL`
    /// does): do not print it.
    pub fn url(&self) -> String {
        to_url(&self.config)
    }

    /// The database's name, `koyo_test_<pid>_<n>`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `tokio_postgres::Config`'s `Debug` redacts the password.
        f.debug_struct("TestDatabase").field("name", &self.name).field("config", &self.config).finish()
    }
}

impl Drop for TestDatabase {
    /// Drops the database, forcing off any connection still open to it.
    ///
    /// This runs on a thread of its own with its own runtime, since it may be called inside a
    /// runtime (where blocking on another future is forbidden) or after the test's runtime has
    /// shut down. Failures are reported on stderr: a panic in `drop` would abort a test that is
    /// already unwinding.
    fn drop(&mut self) {
        let admin = self.server.admin.clone();
        let name = self.name.clone();
        let dropper = std::thread::Builder::new().name("koyo-test-drop-db".into()).spawn(
            move || -> Result<(), String> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|error| format!("could not start a runtime: {error}"))?;
                runtime.block_on(async {
                    let client = connect(&admin).await.map_err(|error| chain(&error))?;
                    client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .await
                        .map_err(|error| chain(&error))
                })
            },
        );
        let outcome = match dropper {
            Ok(thread) => thread.join().unwrap_or_else(|_| Err("the dropping thread panicked".into())),
            Err(error) => Err(format!("could not start a thread: {error}")),
        };
        if let Err(reason) = outcome {
            eprintln!("koyo_job::testing: could not drop test database {}: {reason}", self.name);
        }
    }
}

/// Why no test database could be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestDbError {
    /// No server was found and none could be started.
    #[error(
        "koyo-job needs PostgreSQL, and none was found: DATABASE_URL is not set, no server accepted a connection \
         on localhost:5432, and PostgreSQL's server programs (initdb and postgres) are not installed. Set \
         DATABASE_URL to a server where you may create databases, or start a server on localhost:5432, or \
         install PostgreSQL's server package (e.g. `apt-get install postgresql`) so that a throwaway cluster \
         can be started."
    )]
    NoServer,
    /// `KOYO_TEST_PRIVATE_CLUSTER` asks for a throwaway cluster, but PostgreSQL's server
    /// programs are not installed.
    #[error(
        "KOYO_TEST_PRIVATE_CLUSTER is set, but PostgreSQL's server programs (initdb and postgres) were not found \
         on PATH or in /usr/lib/postgresql/<version>/bin: install PostgreSQL's server package \
         (e.g. `apt-get install postgresql`)"
    )]
    NoServerPrograms,
    /// `DATABASE_URL` is set but cannot be parsed.
    #[error("DATABASE_URL is not a valid PostgreSQL connection string")]
    InvalidDatabaseUrl(#[source] tokio_postgres::Error),
    /// `DATABASE_URL` is set but its server cannot be used.
    #[error("could not connect to the server named by DATABASE_URL")]
    DatabaseUrl(#[source] tokio_postgres::Error),
    /// A throwaway cluster could not be created or started.
    #[error("could not start a throwaway PostgreSQL cluster: {reason}")]
    Cluster {
        /// What went wrong, with the server's own messages when it printed any.
        reason: String,
        /// The underlying system error, if one.
        #[source]
        source: Option<io::Error>,
    },
    /// PgBouncer is not installed (neither on `PATH` nor as `/usr/sbin/pgbouncer`).
    #[error("PgBouncer is not installed: install Debian's `pgbouncer` package (apt-get install pgbouncer)")]
    NoPgBouncer,
    /// A [`PgBouncer`] could not be started.
    #[error("could not start a private PgBouncer: {reason}")]
    PgBouncer {
        /// What went wrong, with PgBouncer's own messages when it printed any.
        reason: String,
        /// The underlying system error, if one.
        #[source]
        source: Option<io::Error>,
    },
    /// The server was found but refused a connection later.
    #[error("could not connect to the test server")]
    Connect(#[source] tokio_postgres::Error),
    /// `CREATE DATABASE` failed.
    #[error("could not create the test database {name}")]
    Create {
        /// The database's name.
        name: String,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl TestDbError {
    fn cluster(reason: impl Into<String>, source: impl Into<Option<io::Error>>) -> TestDbError {
        TestDbError::Cluster { reason: reason.into(), source: source.into() }
    }
}

/// How to stop a [`PrivateCluster`]'s server: PostgreSQL's three shutdown modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShutdownMode {
    /// `SIGTERM`: no new connections, then waits for every client to disconnect. A connection
    /// pool that never lets go keeps the server up, so [`PrivateCluster::stop`] may time out.
    Smart,
    /// `SIGINT`: ends every session (rolling back open transactions) and stops cleanly, as
    /// `pg_ctl stop` does by default.
    Fast,
    /// `SIGQUIT`: stops at once without a checkpoint, like a crash of the server processes;
    /// the next start runs crash recovery. Committed transactions survive: they were written
    /// out before the commit returned.
    Immediate,
}

impl ShutdownMode {
    fn signal(self) -> &'static str {
        match self {
            ShutdownMode::Smart => "TERM",
            ShutdownMode::Fast => "INT",
            ShutdownMode::Immediate => "QUIT",
        }
    }
}

/// Settings for [`PrivateCluster::start_with`].
#[derive(Clone, Default)]
#[must_use]
pub struct ClusterOptions {
    password: Option<String>,
    settings: Vec<(String, String)>,
}

impl ClusterOptions {
    /// Requires this password of the `postgres` user on TCP connections (`scram-sha-256`
    /// authentication); [`PrivateCluster::config`] and [`PrivateCluster::url`] then carry it.
    /// Without one, the cluster trusts every local connection.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets a server setting (`postgres -c name=value`), e.g. `("log_min_messages", "debug1")`.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }
}

impl fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("settings", &self.settings)
            .finish()
    }
}

/// A PostgreSQL cluster of its own for one test, which the test may stop, restart or crash:
/// for testing code (koyo-job's workers, or your own) against a server that goes away.
///
/// [`TestDatabase`] shares one server between all the tests of a process, so no test may stop
/// it. A `PrivateCluster` is created with `initdb` in a new temporary directory and listens on
/// a free port of 127.0.0.1, which it keeps across restarts, so clients configured with
/// [`PrivateCluster::url`] can reconnect after [`PrivateCluster::restart`].
///
/// ```no_run
/// use koyo_job::testing::{PrivateCluster, ShutdownMode};
///
/// #[tokio::test]
/// async fn workers_survive_a_server_crash() -> Result<(), Box<dyn std::error::Error>> {
///     let mut cluster = PrivateCluster::start().await?;
///     let broker = koyo_job::Broker::connect(&cluster.url()).await?;
///     koyo_job::migrate(&broker).await?;
///     // … start workers, enqueue jobs …
///     cluster.restart(ShutdownMode::Immediate).await?; // a crash, then crash recovery
///     // … check that every job completes …
///     Ok(())
/// } // the server is stopped and its directory deleted here
/// ```
///
/// It needs PostgreSQL's server programs (`initdb`, `postgres`), found as for a throwaway
/// cluster (see the [module documentation](self)); it never uses `DATABASE_URL` or a server on
/// port 5432. When this process runs as root, the server runs as the `postgres` OS user.
///
/// The server is tuned for tests: `fsync` is off (a crash of the *machine* could lose data;
/// a crash or immediate shutdown of the *server* loses no committed transaction, since
/// `synchronous_commit` stays on), and it allows 200 connections.
///
/// Dropping the value stops the server (immediate shutdown) and deletes the directory. If the
/// test process dies first, however it dies, a watchdog process does the same.
pub struct PrivateCluster {
    dir: PathBuf,
    port: u16,
    owner: Owner,
    programs: ServerPrograms,
    settings: Vec<(String, String)>,
    config: Config,
    server: Option<Child>,
    watchdog: Option<ChildStdin>,
    /// Whether the server's processes are stopped with `SIGSTOP` ([`PrivateCluster::pause`]).
    paused: bool,
}

impl PrivateCluster {
    /// Creates a cluster in a new temporary directory and starts its server on a free port.
    pub async fn start() -> Result<PrivateCluster, TestDbError> {
        PrivateCluster::start_with(ClusterOptions::default()).await
    }

    /// Like [`PrivateCluster::start`], with a password or server settings.
    pub async fn start_with(options: ClusterOptions) -> Result<PrivateCluster, TestDbError> {
        let programs = find_server_programs().ok_or_else(|| {
            TestDbError::cluster(
                "PostgreSQL's server programs (initdb and postgres) were not found on PATH or in \
                 /usr/lib/postgresql/<version>/bin: install PostgreSQL's server package \
                 (e.g. `apt-get install postgresql`)",
                None,
            )
        })?;
        let (dir, owner, watchdog, programs) =
            prepare_cluster_off_thread(programs, options.password.clone()).await?;
        let mut settings = settings(&[("synchronous_commit", "on")]);
        settings.extend(options.settings);
        let password = options.password.as_deref().map(str::as_bytes);
        let (server, config) = launch(&programs, &dir, owner, None, &settings, password).await?;
        let port = config.get_ports()[0];
        Ok(PrivateCluster {
            dir,
            port,
            owner,
            programs,
            settings,
            config,
            server: Some(server),
            watchdog: Some(watchdog),
            paused: false,
        })
    }

    /// Starts a streaming standby of this cluster's server: a new cluster, copied from this one
    /// with `pg_basebackup -R` (which makes it follow this server over a replication
    /// connection), in its own directory and on its own free port, with this cluster's server
    /// settings and then `options`' (later ones win: a primary started with
    /// `synchronous_standby_names` can give its standby `("synchronous_standby_names", "")`).
    /// Returns once the standby accepts (read-only) connections. It stays a standby until
    /// [`PrivateCluster::promote`]. Needs `pg_basebackup` next to `postgres`; a cluster with a
    /// password is not supported.
    pub async fn start_standby(&self, options: ClusterOptions) -> Result<PrivateCluster, TestDbError> {
        if self.config.get_password().is_some() || options.password.is_some() {
            return Err(TestDbError::cluster(
                "start_standby: clusters with a password are not supported",
                None,
            ));
        }
        let programs =
            ServerPrograms { initdb: self.programs.initdb.clone(), postgres: self.programs.postgres.clone() };
        let port = self.port;
        let (dir, owner, watchdog, programs) = tokio::task::spawn_blocking(move || {
            let (dir, owner, watchdog) = make_cluster_dir()?;
            // Next to `postgres`, or next to what it links to (a link on PATH), or on PATH.
            let basebackup = [Some(programs.postgres.clone()), fs::canonicalize(&programs.postgres).ok()]
                .into_iter()
                .flatten()
                .map(|postgres| postgres.with_file_name("pg_basebackup"))
                .find(|path| is_executable(path))
                .unwrap_or_else(|| PathBuf::from("pg_basebackup"));
            let mut command = Command::new(&basebackup);
            command
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-D"])
                .arg(dir.join("data"))
                .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
                .current_dir(&dir)
                .stdin(Stdio::null());
            run_as(&mut command, owner);
            let output = command.output().map_err(|error| {
                TestDbError::cluster(format!("could not run {}", basebackup.display()), error)
            })?;
            if !output.status.success() {
                return Err(TestDbError::cluster(
                    format!(
                        "{} exited with {}: {}",
                        basebackup.display(),
                        output.status,
                        String::from_utf8_lossy(&output.stderr).trim()
                    ),
                    None,
                ));
            }
            Ok((dir, owner, watchdog, programs))
        })
        .await
        .map_err(|error| TestDbError::cluster(format!("setting up the standby panicked: {error}"), None))??;
        let mut settings = self.settings.clone();
        settings.extend(options.settings);
        let (server, config) = launch(&programs, &dir, owner, None, &settings, None).await?;
        let port = config.get_ports()[0];
        Ok(PrivateCluster {
            dir,
            port,
            owner,
            programs,
            settings,
            config,
            server: Some(server),
            watchdog: Some(watchdog),
            paused: false,
        })
    }

    /// Promotes this standby to a primary (`pg_promote`), and returns once it accepts writes.
    pub async fn promote(&self) -> Result<(), TestDbError> {
        let client = connect(&self.config).await.map_err(TestDbError::Connect)?;
        let promoted: bool =
            client.query_one("SELECT pg_promote(true, 60)", &[]).await.map_err(TestDbError::Connect)?.get(0);
        if promoted {
            Ok(())
        } else {
            Err(TestDbError::cluster(
                format!("the standby was not promoted within 60 s: {}", self.log_tail()),
                None,
            ))
        }
    }

    /// Stops every process of the server (the postmaster, then each of its children: backends,
    /// WAL sender, background processes) with `SIGSTOP`: it still accepts TCP connections (the
    /// kernel does), but answers nothing, like a frozen machine. [`PrivateCluster::resume`] lets
    /// it go on; [`PrivateCluster::stop`] and dropping the cluster resume it first.
    pub fn pause(&mut self) -> Result<(), TestDbError> {
        let pid = self.running_pid()?;
        // The postmaster first, so that it starts no child after the others were found.
        signal(pid, "STOP")
            .map_err(|error| TestDbError::cluster("could not send SIGSTOP to the server", error))?;
        self.paused = true;
        for child in children(pid) {
            signal(child, "STOP")
                .map_err(|error| TestDbError::cluster("could not send SIGSTOP to a server process", error))?;
        }
        Ok(())
    }

    /// Lets a paused server go on (`SIGCONT`).
    pub fn resume(&mut self) -> Result<(), TestDbError> {
        let pid = self.running_pid()?;
        continue_all(pid)
            .map_err(|error| TestDbError::cluster("could not send SIGCONT to the server", error))?;
        self.paused = false;
        Ok(())
    }

    /// The server's pid, if it runs.
    fn running_pid(&mut self) -> Result<u32, TestDbError> {
        if !self.is_running() {
            return Err(TestDbError::cluster("the server is not running", None));
        }
        Ok(self.server.as_ref().map_or(0, Child::id))
    }

    /// Connects to the `postgres` database as the superuser `postgres` (without TLS), with the
    /// password if the cluster has one. Create your own databases and roles through it.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// [`PrivateCluster::config`] as a `postgresql://` URL. It contains the password, if the
    /// cluster has one: do not print it.
    pub fn url(&self) -> String {
        to_url(&self.config)
    }

    /// The TCP port on 127.0.0.1; the same for the life of the cluster.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the cluster (`data/`) and the server's log (`postgres.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The end of the server's log (its last 2,000 bytes), for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir)
    }

    /// Whether the server is running (started, and not stopped or crashed since).
    pub fn is_running(&mut self) -> bool {
        self.server.as_mut().is_some_and(|server| matches!(server.try_wait(), Ok(None)))
    }

    /// Stops the server in `mode` and waits until it has exited (at most 60 s). Clients see
    /// their connections closed; new connections are refused until
    /// [`PrivateCluster::start_again`]. Stopping a stopped server does nothing.
    pub async fn stop(&mut self, mode: ShutdownMode) -> Result<(), TestDbError> {
        let Some(server) = self.server.as_mut() else { return Ok(()) };
        if matches!(server.try_wait(), Ok(None)) {
            signal(server.id(), mode.signal())
                .map_err(|error| TestDbError::cluster("could not signal the server", error))?;
            if self.paused {
                // A stopped process acts on the shutdown signal once it goes on.
                continue_all(server.id())
                    .map_err(|error| TestDbError::cluster("could not resume the server", error))?;
            }
        }
        self.paused = false;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match server.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(10)).await,
                Ok(None) => {
                    return Err(TestDbError::cluster(
                        format!(
                            "the server did not stop within 60 s ({mode:?} shutdown): {}",
                            self.log_tail()
                        ),
                        None,
                    ));
                }
                Err(error) => return Err(TestDbError::cluster("could not wait for the server", error)),
            }
        }
        self.server = None;
        // Its pid may be reused by now: the watchdog must not signal it.
        let _ = fs::remove_file(self.dir.join("server.pid"));
        Ok(())
    }

    /// Starts the stopped server again on the same port and waits until it accepts
    /// connections (after an immediate shutdown, once crash recovery is done).
    pub async fn start_again(&mut self) -> Result<(), TestDbError> {
        if self.is_running() {
            return Err(TestDbError::cluster("start_again: the server is already running", None));
        }
        let password = self.config.get_password().map(<[u8]>::to_vec);
        let (server, _) = launch(
            &self.programs,
            &self.dir,
            self.owner,
            Some(self.port),
            &self.settings,
            password.as_deref(),
        )
        .await?;
        self.server = Some(server);
        Ok(())
    }

    /// Stops the server in `mode`, then starts it again: [`PrivateCluster::stop`] then
    /// [`PrivateCluster::start_again`].
    pub async fn restart(&mut self, mode: ShutdownMode) -> Result<(), TestDbError> {
        self.stop(mode).await?;
        self.start_again().await
    }
}

impl fmt::Debug for PrivateCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `tokio_postgres::Config`'s `Debug` redacts the password.
        f.debug_struct("PrivateCluster")
            .field("dir", &self.dir)
            .field("port", &self.port)
            .field("running", &self.server.is_some())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for PrivateCluster {
    /// Stops the server at once and deletes the cluster's directory (blocking, briefly).
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            if matches!(server.try_wait(), Ok(None)) {
                let _ = signal(server.id(), ShutdownMode::Immediate.signal());
                if self.paused {
                    let _ = continue_all(server.id());
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                while matches!(server.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if matches!(server.try_wait(), Ok(None)) {
                    let _ = server.kill();
                }
            }
            let _ = server.wait();
        }
        let _ = fs::remove_file(self.dir.join("server.pid"));
        if let Err(error) = fs::remove_dir_all(&self.dir) {
            eprintln!("koyo_job::testing: could not delete {}: {error}", self.dir.display());
        }
        // Closing the pipe lets the watchdog go; it finds no server and nothing left to delete.
        drop(self.watchdog.take());
    }
}

/// The processes whose parent is `pid` (postgres's children run in process groups of their
/// own, so a signal to the server's group would miss them).
fn children(pid: u32) -> Vec<u32> {
    Command::new("ps")
        .args(["-o", "pid=", "--ppid", &pid.to_string()])
        .stderr(Stdio::null())
        .output()
        .map(|output| {
            String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Sends `SIGCONT` to the children of `pid`, then to `pid` (a paused server goes on).
fn continue_all(pid: u32) -> io::Result<()> {
    for child in children(pid) {
        let _ = signal(child, "CONT");
    }
    signal(pid, "CONT")
}

/// Sends a signal (`INT`, `QUIT`, …) to a process, through `sh`'s `kill` (std has no `kill(2)`).
fn signal(pid: u32, name: &str) -> io::Result<()> {
    let status = Command::new("sh")
        .args(["-c", "kill -s \"$1\" \"$2\"", "sh", name, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("kill -s {name} {pid} failed ({status})")))
    }
}

/// A server where test databases are created.
#[derive(Debug)]
struct Server {
    /// Connects to a database of the server that is never a test database, as a user who may
    /// create databases.
    admin: Config,
    /// Kept open for the life of the process when the server is a throwaway cluster: see
    /// [`WATCHDOG_SCRIPT`].
    _watchdog: Option<ChildStdin>,
}

async fn discover() -> Result<Server, TestDbError> {
    if std::env::var_os(PRIVATE_CLUSTER_VAR).is_some_and(|value| value == "1") {
        let programs = find_server_programs().ok_or(TestDbError::NoServerPrograms)?;
        return start_cluster(programs).await;
    }

    if let Some(url) = std::env::var_os("DATABASE_URL").filter(|url| !url.is_empty()) {
        // The URL itself is never put in a message: it may hold a password.
        let admin: Config = url.to_string_lossy().parse().map_err(TestDbError::InvalidDatabaseUrl)?;
        let client = connect(&admin).await.map_err(TestDbError::DatabaseUrl)?;
        if admin.get_hosts().iter().all(is_local) {
            drop_leftovers(&client).await;
        }
        return Ok(Server { admin, _watchdog: None });
    }

    for admin in local_candidates() {
        let probe = tokio::time::timeout(Duration::from_secs(5), connect(&admin));
        let Ok(Ok(client)) = probe.await else { continue };
        let may_create = client
            .query_one("SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user", &[])
            .await
            .is_ok_and(|row| row.get::<_, bool>(0));
        if may_create {
            drop_leftovers(&client).await;
            return Ok(Server { admin, _watchdog: None });
        }
    }

    match find_server_programs() {
        Some(programs) => start_cluster(programs).await,
        None => Err(TestDbError::NoServer),
    }
}

/// Servers on this machine's default port: over TCP first (the usual CI service container),
/// then through the socket directories of Debian/Ubuntu and of source builds, where peer
/// authentication lets the OS user in without a password.
fn local_candidates() -> Vec<Config> {
    let mut users = vec!["postgres".to_owned()];
    if let Some(user) = ["USER", "LOGNAME"]
        .into_iter()
        .find_map(|var| std::env::var(var).ok().filter(|user| !user.is_empty()))
        && user != "postgres"
    {
        users.push(user);
    }

    let mut hosts = vec![Host::Tcp("localhost".into())];
    for dir in ["/var/run/postgresql", "/tmp"] {
        if Path::new(dir).join(".s.PGSQL.5432").exists() {
            hosts.push(Host::Unix(dir.into()));
        }
    }

    let mut candidates = Vec::new();
    for host in &hosts {
        for user in &users {
            let mut config = Config::new();
            match host {
                Host::Tcp(name) => config.host(name),
                Host::Unix(path) => config.host_path(path),
            };
            config.port(5432).user(user).dbname("postgres").connect_timeout(Duration::from_secs(2));
            candidates.push(config);
        }
    }
    candidates
}

fn is_local(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1"),
    }
}

/// Drops `koyo_test_<pid>_<n>` databases whose process is gone, so crashed runs do not fill the
/// server. Best effort: a plain `DROP DATABASE` (not `FORCE`) fails if anyone is still connected,
/// which protects a live process this machine cannot see (another PID namespace).
async fn drop_leftovers(client: &Client) {
    let Ok(rows) =
        client.query("SELECT datname FROM pg_database WHERE datname LIKE 'koyo_test_%'", &[]).await
    else {
        return;
    };
    let own_pid = std::process::id();
    for row in rows {
        let name: String = row.get(0);
        let Some(pid) = test_database_pid(&name) else { continue };
        if pid != own_pid && !process_is_alive(pid) {
            // `test_database_pid` admitted only digits and underscores, so quoting is safe.
            let _ = client.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\"")).await;
        }
    }
}

fn next_name() -> String {
    let n = NEXT_DATABASE.fetch_add(1, Ordering::Relaxed);
    format!("koyo_test_{}_{n}", std::process::id())
}

/// The pid in a name of the form `koyo_test_<pid>_<n>`, and `None` for any other name.
fn test_database_pid(name: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix("koyo_test_")?.split_once('_')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if digits(pid) && digits(n) { pid.parse().ok() } else { None }
}

/// Whether a process with this pid runs on this machine. When unsure, says yes: the caller
/// would otherwise drop a live process's database.
fn process_is_alive(pid: u32) -> bool {
    if Path::new("/proc/self").exists() {
        return Path::new(&format!("/proc/{pid}")).exists();
    }
    // `kill -0` would report "not permitted" for other users' processes; `ps -p` sees them all.
    Command::new("ps")
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_or(true, |status| status.success())
}

/// Where `initdb` and `postgres` were found.
#[derive(Debug)]
struct ServerPrograms {
    initdb: PathBuf,
    postgres: PathBuf,
}

/// Looks on `PATH`, then in the version directories of Debian/Ubuntu (`/usr/lib/postgresql/15/bin`)
/// and RHEL (`/usr/pgsql-15/bin`), highest version first, then in a source build's default prefix.
fn find_server_programs() -> Option<ServerPrograms> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|path| std::env::split_paths(&path).collect()).unwrap_or_default();

    let mut versioned: Vec<(Vec<u32>, PathBuf)> = Vec::new();
    for (parent, prefix, suffix) in [("/usr/lib/postgresql", "", "bin"), ("/usr", "pgsql-", "bin")] {
        let Ok(entries) = fs::read_dir(parent) else { continue };
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(version) = file_name.to_str().and_then(|name| name.strip_prefix(prefix)) else {
                continue;
            };
            let Ok(numbers) = version.split('.').map(str::parse).collect::<Result<Vec<u32>, _>>() else {
                continue;
            };
            versioned.push((numbers, entry.path().join(suffix)));
        }
    }
    versioned.sort_by(|a, b| b.0.cmp(&a.0));
    dirs.extend(versioned.into_iter().map(|(_, dir)| dir));
    dirs.push("/usr/local/pgsql/bin".into());

    dirs.into_iter().find_map(|dir| {
        let initdb = dir.join("initdb");
        let postgres = dir.join("postgres");
        (is_executable(&initdb) && is_executable(&postgres)).then_some(ServerPrograms { initdb, postgres })
    })
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.mode() & 0o111 != 0)
}

/// How long a throwaway cluster may take to accept connections.
const CLUSTER_START_DEADLINE: Duration = Duration::from_secs(30);

/// What stops the throwaway cluster and deletes its directory once the test process is gone.
///
/// A `static` is never dropped, and a killed process runs no code at all, so the cleanup lives
/// in a separate shell. Its stdin is a pipe whose only writer is this process: the kernel closes
/// it when the process ends, however it ends (even `SIGKILL`), so `read` returns at that moment
/// without polling, and a recycled pid cannot fool it. It then asks postgres for a fast shutdown
/// (`SIGINT`), escalating to an immediate one and then `SIGKILL` if postgres lingers, and removes
/// the directory. It ignores `SIGINT` and `SIGHUP` and runs in its own process group, so a Ctrl-C
/// aimed at the tests does not kill it before it has cleaned up.
const WATCHDOG_SCRIPT: &str = r#"
trap '' HUP INT
read -r _ || true
dir=$1
pid=$(cat "$dir/server.pid" 2>/dev/null || head -n 1 "$dir/data/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ]; then
    kill -INT "$pid" 2>/dev/null
    # A paused server (SIGSTOP) acts on signals once it goes on.
    for child in $(ps -o pid= --ppid "$pid" 2>/dev/null); do kill -CONT "$child" 2>/dev/null; done
    kill -CONT "$pid" 2>/dev/null
    n=0
    while [ -f "$dir/data/postmaster.pid" ] && kill -0 "$pid" 2>/dev/null; do
        n=$((n + 1))
        if [ "$n" -eq 100 ]; then kill -QUIT "$pid" 2>/dev/null; fi
        if [ "$n" -ge 200 ]; then kill -KILL "$pid" 2>/dev/null; break; fi
        sleep 0.1
    done
fi
rm -rf "$dir"
"#;

/// Creates a throwaway cluster in a new temporary directory and starts it on a free port.
///
/// The directory holds `data/` (the cluster), `server.pid`, `postgres.log` and the server's
/// socket. Its watchdog is started first, so even a failure half-way leaves nothing behind.
async fn start_cluster(programs: ServerPrograms) -> Result<Server, TestDbError> {
    let (dir, owner, watchdog, programs) = prepare_cluster_off_thread(programs, None).await?;
    // Durability is pointless for a cluster deleted at exit, and costs time in every test.
    let settings = settings(&[("synchronous_commit", "off")]);
    let (child, admin) = launch(&programs, &dir, owner, None, &settings, None).await?;
    // The `Child` is dropped without waiting on purpose: postgres must outlive this handle, and
    // the watchdog stops it.
    drop(child);
    Ok(Server { admin, _watchdog: Some(watchdog) })
}

/// The server settings every cluster of this module gets, then `extra` (later ones win).
fn settings(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    [
        ("listen_addresses", "127.0.0.1"),
        ("fsync", "off"),
        ("full_page_writes", "off"),
        ("max_connections", "200"),
    ]
    .iter()
    .chain(extra)
    .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
    .collect()
}

/// [`prepare_cluster`] on a blocking thread: initdb takes a second or two, and the runtime's
/// thread may be shared with other tests.
async fn prepare_cluster_off_thread(
    programs: ServerPrograms,
    password: Option<String>,
) -> Result<(PathBuf, Owner, ChildStdin, ServerPrograms), TestDbError> {
    tokio::task::spawn_blocking(move || {
        prepare_cluster(&programs, password.as_deref())
            .map(|(dir, owner, watchdog)| (dir, owner, watchdog, programs))
    })
    .await
    .map_err(|error| TestDbError::cluster(format!("setting it up panicked: {error}"), None))?
}

/// Starts postgres on the cluster in `dir` and waits until it accepts connections: on `port`,
/// or on a free port when `None` (a port found free may be taken before postgres binds it, so a
/// few are tried; a fixed port is tried a few times, as it may take a moment to be released).
/// Returns the server process and a configuration for the `postgres` database as `postgres`.
async fn launch(
    programs: &ServerPrograms,
    dir: &Path,
    owner: Owner,
    port: Option<u16>,
    settings: &[(String, String)],
    password: Option<&[u8]>,
) -> Result<(Child, Config), TestDbError> {
    let mut last_failure = String::new();
    for attempt in 0..3 {
        let port = match port {
            Some(port) => {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                port
            }
            None => free_port().map_err(|error| TestDbError::cluster("could not find a free port", error))?,
        };
        let mut child = spawn_postgres(programs, dir, port, owner, settings)?;
        let mut admin = Config::new();
        admin
            .host("127.0.0.1")
            .port(port)
            .user("postgres")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(2));
        if let Some(password) = password {
            admin.password(password);
        }

        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                last_failure = format!("postgres exited with {status}: {}", log_tail(dir));
                break;
            }
            if started.elapsed() > CLUSTER_START_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                return Err(TestDbError::cluster(
                    format!(
                        "postgres did not accept connections within {} s: {}",
                        CLUSTER_START_DEADLINE.as_secs(),
                        log_tail(dir)
                    ),
                    None,
                ));
            }
            if let Ok(Ok(_client)) = tokio::time::timeout(Duration::from_secs(2), connect(&admin)).await {
                return Ok((child, admin));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Err(TestDbError::cluster(last_failure, None))
}

/// The OS user the cluster runs as, when this process is root: `(uid, gid)`.
type Owner = Option<(u32, u32)>;

/// Makes a new private directory for a cluster, gives it to the `postgres` OS user when this
/// process is root, and starts the directory's watchdog (see [`WATCHDOG_SCRIPT`]).
fn make_cluster_dir() -> Result<(PathBuf, Owner, ChildStdin), TestDbError> {
    let dir = make_private_dir()?;

    let owner = if fs::metadata(&dir)
        .map_err(|error| TestDbError::cluster("could not inspect the cluster directory", error))?
        .uid()
        == 0
    {
        let owner = postgres_os_user()?;
        std::os::unix::fs::chown(&dir, Some(owner.0), Some(owner.1)).map_err(|error| {
            TestDbError::cluster("could not give the cluster directory to the postgres user", error)
        })?;
        Some(owner)
    } else {
        None
    };

    let watchdog = Command::new("sh")
        .arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("koyo-test-cluster-watchdog")
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|error| TestDbError::cluster("could not start its watchdog with sh", error))?
        .stdin
        .take()
        .ok_or_else(|| TestDbError::cluster("the watchdog has no stdin", None))?;

    Ok((dir, owner, watchdog))
}

/// Makes the directory, starts its watchdog and runs `initdb` (blocking). With a password, TCP
/// connections must give it (`scram-sha-256`); without one, every connection is trusted.
fn prepare_cluster(
    programs: &ServerPrograms,
    password: Option<&str>,
) -> Result<(PathBuf, Owner, ChildStdin), TestDbError> {
    let (dir, owner, watchdog) = make_cluster_dir()?;

    let mut initdb = Command::new(&programs.initdb);
    initdb
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
        .current_dir(&dir)
        .stdin(Stdio::null());
    // The password goes to initdb in a file (never on a command line, where `ps` shows it)
    // inside the cluster's private directory, removed as soon as initdb is done.
    let password_file = dir.join("initdb.pw");
    match password {
        None => {
            initdb.args(["-A", "trust"]);
        }
        Some(password) => {
            fs::write(&password_file, format!("{password}\n"))
                .map_err(|error| TestDbError::cluster("could not write the password file", error))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&password_file, Some(uid), Some(gid)).map_err(|error| {
                    TestDbError::cluster("could not give the password file to the postgres user", error)
                })?;
            }
            initdb
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                .arg("--pwfile")
                .arg(&password_file);
        }
    }
    run_as(&mut initdb, owner);
    let output = initdb.output();
    let _ = fs::remove_file(&password_file);
    let output = output.map_err(|error| {
        TestDbError::cluster(format!("could not run {}", programs.initdb.display()), error)
    })?;
    if !output.status.success() {
        return Err(TestDbError::cluster(
            format!(
                "{} exited with {}: {}",
                programs.initdb.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            None,
        ));
    }
    Ok((dir, owner, watchdog))
}

/// A new directory `koyo-job-pg-<pid>-<n>` in the temporary directory, readable by its owner only.
///
/// A name is never used twice by one process: the watchdog of a dropped [`PrivateCluster`] may
/// still be about to delete its directory when the next cluster is created.
fn make_private_dir() -> Result<PathBuf, TestDbError> {
    static NEXT_DIR: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    let mut last_error = None;
    for _ in 0..100 {
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("koyo-job-pg-{}-{n}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => last_error = Some(error),
            Err(error) => {
                return Err(TestDbError::cluster(
                    format!("could not create a directory in {}", base.display()),
                    error,
                ));
            }
        }
    }
    Err(TestDbError::cluster(format!("could not create a directory in {}", base.display()), last_error))
}

/// The uid and gid of the `postgres` OS user, asked of `id` so that users from LDAP or other
/// name services are found too.
fn postgres_os_user() -> Result<(u32, u32), TestDbError> {
    let id = |flag: &str| -> Option<u32> {
        let output = Command::new("id").args([flag, "postgres"]).stderr(Stdio::null()).output().ok()?;
        output.status.success().then_some(())?;
        String::from_utf8(output.stdout).ok()?.trim().parse().ok()
    };
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(TestDbError::cluster(
            "this process runs as root, which PostgreSQL refuses, and there is no `postgres` OS user to run it as; \
             create one (`useradd --system postgres`) or set DATABASE_URL",
            None,
        )),
    }
}

/// Runs the command as the cluster's owner when that is not us (we are root). Setting the ids in
/// the child directly, rather than through `runuser`, makes the child's pid postgres's own, which
/// the watchdog signals.
fn run_as(command: &mut Command, owner: Owner) {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

fn spawn_postgres(
    programs: &ServerPrograms,
    dir: &Path,
    port: u16,
    owner: Owner,
    settings: &[(String, String)],
) -> Result<Child, TestDbError> {
    // Appended to, so that a restarted server's log follows the earlier one's.
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("postgres.log"))
        .and_then(|log| Ok((log.try_clone()?, log)))
        .map_err(|error| TestDbError::cluster("could not create its log file", error))?;

    let mut postgres = Command::new(&programs.postgres);
    postgres.arg("-D").arg(dir.join("data")).arg("-p").arg(port.to_string()).arg("-k").arg(dir);
    for (name, value) in settings {
        postgres.arg("-c").arg(format!("{name}={value}"));
    }
    postgres.current_dir(dir).stdin(Stdio::null()).stdout(log.0).stderr(log.1).process_group(0);
    run_as(&mut postgres, owner);
    let child = postgres.spawn().map_err(|error| {
        TestDbError::cluster(format!("could not run {}", programs.postgres.display()), error)
    })?;
    fs::write(dir.join("server.pid"), child.id().to_string())
        .map_err(|error| TestDbError::cluster("could not record the server's pid", error))?;
    Ok(child)
}

/// The end of the server's log, for error messages.
fn log_tail(dir: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut log) = File::open(dir.join("postgres.log")) {
        let len = log.metadata().map_or(0, |meta| meta.len());
        let _ = log.seek(SeekFrom::Start(len.saturating_sub(2000)));
        let _ = log.read_to_string(&mut text);
    }
    match text.trim() {
        "" => "(its log is empty)".to_owned(),
        text => text.to_owned(),
    }
}

async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        // A broken connection fails the pending query, which reports it.
        let _ = connection.await;
    });
    Ok(client)
}

/// An error and its causes on one line: tokio-postgres's errors print only their kind.
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

/// Writes a configuration as a URL that `tokio_postgres` (and libpq) parse back to the same
/// settings, for the options a test server uses.
fn to_url(config: &Config) -> String {
    let mut url = String::from("postgresql://");
    if let Some(user) = config.get_user() {
        url.push_str(&encode(user.as_bytes()));
        if let Some(password) = config.get_password() {
            url.push(':');
            url.push_str(&encode(password));
        }
        url.push('@');
    }

    let ports = config.get_ports();
    for (i, host) in config.get_hosts().iter().enumerate() {
        if i > 0 {
            url.push(',');
        }
        match host {
            Host::Tcp(name) if name.contains(':') => url.push_str(&format!("[{name}]")),
            Host::Tcp(name) => url.push_str(&encode(name.as_bytes())),
            Host::Unix(path) => url.push_str(&encode(path.as_os_str().as_encoded_bytes())),
        }
        if let Some(port) = ports.get(i).or(ports.first()) {
            url.push_str(&format!(":{port}"));
        }
    }

    url.push('/');
    if let Some(dbname) = config.get_dbname() {
        url.push_str(&encode(dbname.as_bytes()));
    }

    let mut params: Vec<(&str, String)> = Vec::new();
    let hostaddrs = config.get_hostaddrs();
    if !hostaddrs.is_empty() {
        let list: Vec<String> = hostaddrs.iter().map(ToString::to_string).collect();
        params.push(("hostaddr", list.join(",")));
    }
    if let Some(options) = config.get_options() {
        params.push(("options", options.to_owned()));
    }
    if let Some(name) = config.get_application_name() {
        params.push(("application_name", name.to_owned()));
    }
    match config.get_ssl_mode() {
        SslMode::Disable => params.push(("sslmode", "disable".into())),
        SslMode::Require => params.push(("sslmode", "require".into())),
        _ => {}
    }
    if let Some(timeout) = config.get_connect_timeout() {
        params.push(("connect_timeout", timeout.as_secs().max(1).to_string()));
    }
    if config.get_target_session_attrs() == TargetSessionAttrs::ReadWrite {
        params.push(("target_session_attrs", "read-write".into()));
    }
    for (i, (key, value)) in params.iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(key);
        url.push('=');
        url.push_str(&encode(value.as_bytes()));
    }
    url
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &byte in bytes {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_this_module_generates_are_recognised_as_test_databases() {
        assert_eq!(test_database_pid("koyo_test_123_0"), Some(123));
        assert_eq!(test_database_pid("koyo_test_9_17"), Some(9));
        for name in [
            "koyo_test_",
            "koyo_test_1",
            "koyo_test_x_1",
            "koyo_test_1_",
            "koyo_test_1_2_3",
            "app",
            "koyo_test_1_\"",
        ] {
            assert_eq!(test_database_pid(name), None, "{name}");
        }
    }

    #[test]
    fn a_url_round_trips_through_tokio_postgres() {
        let mut config = Config::new();
        config
            .user("us er")
            .password("p@ss:/word%")
            .host("127.0.0.1")
            .host_path("/tmp/a dir")
            .port(5432)
            .port(6543)
            .dbname("koyo_test_1_2")
            .options("-csearch_path=jobs")
            .application_name("tests")
            .connect_timeout(Duration::from_secs(3))
            .target_session_attrs(TargetSessionAttrs::ReadWrite);
        let parsed: Config = to_url(&config).parse().unwrap();
        assert_eq!(parsed.get_user(), Some("us er"));
        assert_eq!(parsed.get_password(), Some(&b"p@ss:/word%"[..]));
        assert_eq!(parsed.get_hosts(), config.get_hosts());
        assert_eq!(parsed.get_ports(), &[5432, 6543]);
        assert_eq!(parsed.get_dbname(), Some("koyo_test_1_2"));
        assert_eq!(parsed.get_options(), Some("-csearch_path=jobs"));
        assert_eq!(parsed.get_application_name(), Some("tests"));
        assert_eq!(parsed.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(parsed.get_target_session_attrs(), TargetSessionAttrs::ReadWrite);
    }

    #[test]
    fn an_ipv6_host_is_bracketed() {
        let mut config = Config::new();
        config.host("::1").port(5433).dbname("d");
        assert_eq!(to_url(&config), "postgresql://[::1]:5433/d");
        let parsed: Config = to_url(&config).parse().unwrap();
        assert_eq!(parsed.get_hosts(), config.get_hosts());
    }

    #[test]
    fn debug_output_hides_the_password() {
        let mut admin = Config::new();
        admin.host("127.0.0.1").user("app").password("hunter2").dbname("postgres");
        let server: &'static Server = Box::leak(Box::new(Server { admin, _watchdog: None }));
        let mut config = server.admin.clone();
        config.dbname("koyo_test_1_0");
        let db = TestDatabase { name: "koyo_test_1_0".into(), config, server };
        let debug = format!("{db:?}");
        // Not dropped: there is no server behind this configuration.
        std::mem::forget(db);
        assert!(debug.contains("koyo_test_1_0"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn the_no_server_message_is_one_paragraph_naming_every_way_out() {
        let message = TestDbError::NoServer.to_string();
        assert!(!message.contains('\n'));
        for needle in ["DATABASE_URL", "localhost:5432", "apt-get install postgresql"] {
            assert!(message.contains(needle), "{needle}");
        }
    }
}
