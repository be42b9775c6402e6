//! Connecting to one of several hosts (a multi-host URL: `host=a,b … target_session_attrs=read-write`),
//! each bounded on its own, and noticing when the writable one changes.
//!
//! tokio-postgres tries the hosts of a multi-host config in order, but its `connect_timeout`
//! bounds only each TCP connect: a server that accepts connections and never answers (stopped
//! with `SIGSTOP`, a frozen VM) holds the start-up handshake of the first host for ever, and the
//! next host is never tried. So the broker opens connections host by host itself, each within
//! [`crate::BrokerOptions::connect_timeout`] (TCP connect, start-up, authentication and the
//! `target_session_attrs` check), starting with the host that last took a connection.
//!
//! When a connection opens on another host than the one before (a failover), connections opened
//! before are *distrusted*: the pool discards them instead of handing them out, statements still
//! waiting on them are abandoned, and the worker's listener reconnects. A statement that waits
//! longer than `connect_timeout` makes the broker *probe* the other hosts for a writable one,
//! since a hung server shows itself no other way. With a single host none of this applies:
//! connections are opened as tokio-postgres opens them, and the whole attempt is bounded.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio_postgres::config::{Host, LoadBalanceHosts, TargetSessionAttrs};
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Client, Config, Connection, NoTls, Socket};

/// A connection as tokio-postgres opens it.
pub(crate) type Opened = (Client, Connection<Socket, NoTlsStream>);

/// The hosts of a broker's config, and which one takes connections now.
pub(crate) struct Hosts {
    /// One config per host, in the config's order (the config itself for a single host).
    each: Vec<Config>,
    /// Bounds each host's connection start-up.
    per_host: Duration,
    /// `load_balance_hosts=random`: start at a random host, and remember none.
    random: bool,
    /// The host that last took a connection: tried first.
    preferred: AtomicUsize,
    /// Connections opened at or before this instant are distrusted (a failover happened after
    /// them). Subscribers hear of every change.
    distrust: watch::Sender<Option<Instant>>,
    /// When the last probe for another writable host started; locked while one runs.
    probe: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    /// The host the broker last logged as taking connections, to log each move once.
    logged: Mutex<Option<usize>>,
    /// The tasks driving the pool's connections (with several hosts), with when each was
    /// opened: distrusting a connection also closes it, so that statements waiting on it (the
    /// application's too, in job bodies) fail at once instead of waiting on a server that hangs.
    tasks: Mutex<Vec<(Instant, AbortHandle)>>,
}

impl Hosts {
    /// `config` already has the broker's settings (keepalives, application name). A config with
    /// several hosts and no `target_session_attrs` gets `read-write`: koyo-job writes with every
    /// statement, so a host that cannot is no use to it.
    pub(crate) fn new(config: &Config, per_host: Duration) -> Hosts {
        let count = config.get_hosts().len().max(config.get_hostaddrs().len());
        let each = if count > 1 {
            (0..count).map(|i| single_host(config, i)).collect()
        } else {
            vec![config.clone()]
        };
        Hosts {
            each,
            per_host,
            random: config.get_load_balance_hosts() == LoadBalanceHosts::Random,
            preferred: AtomicUsize::new(0),
            distrust: watch::Sender::new(None),
            probe: tokio::sync::Mutex::new(None),
            logged: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Whether the config names more than one host.
    pub(crate) fn several(&self) -> bool {
        self.each.len() > 1
    }

    /// The most one connection attempt takes: `connect_timeout` for each host.
    pub(crate) fn attempt_bound(&self) -> Duration {
        self.per_host.saturating_mul(self.each.len() as u32)
    }

    /// Opens a connection: with one host, as tokio-postgres does (the caller bounds it); with
    /// several, host by host from the preferred one, each within `connect_timeout` except the
    /// last tried, which the caller bounds (with [`Hosts::attempt_bound`] overall, it has at
    /// least `connect_timeout` too). The first host that completes the start-up and the
    /// `target_session_attrs` check becomes the preferred one.
    pub(crate) async fn open(&self) -> Result<Opened, tokio_postgres::Error> {
        if !self.several() {
            return self.each[0].connect(NoTls).await;
        }
        let order = self.order();
        let (&last, first) = order.split_last().unwrap_or((&0, &[]));
        for &i in first {
            match tokio::time::timeout(self.per_host, self.each[i].connect(NoTls)).await {
                Ok(Ok(opened)) => {
                    self.took(i);
                    return Ok(opened);
                }
                Ok(Err(error)) => tracing::debug!(
                    host = %self.describe(i),
                    error = %error,
                    "koyo-job could not connect to this host; trying the next"
                ),
                Err(_) => tracing::debug!(
                    host = %self.describe(i),
                    timeout = ?self.per_host,
                    "koyo-job got no answer from this host within connect_timeout; trying the next"
                ),
            }
        }
        let opened = self.each[last].connect(NoTls).await?;
        self.took(last);
        Ok(opened)
    }

    /// The preferred host first, then the others in the config's order (from a random host,
    /// in order, with `load_balance_hosts=random`).
    fn order(&self) -> Vec<usize> {
        let n = self.each.len();
        if self.random {
            let start = (RandomState::new().hash_one(0) % n as u64) as usize;
            return (0..n).map(|k| (start + k) % n).collect();
        }
        let first = self.preferred.load(Ordering::Relaxed).min(n - 1);
        std::iter::once(first).chain((0..n).filter(|&i| i != first)).collect()
    }

    /// Host `i` took a connection: prefer it from now on; if another host took the last one,
    /// a failover happened, and every connection opened before is distrusted.
    fn took(&self, i: usize) {
        if self.random {
            return;
        }
        let before = self.preferred.swap(i, Ordering::Relaxed);
        if before != i {
            self.distrust_older();
        }
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if *logged != Some(i) {
            if logged.is_some() || i != 0 {
                tracing::warn!(
                    host = %self.describe(i),
                    "koyo-job now connects to this host: the one before did not answer or is read-only; \
                     connections opened before are dropped"
                );
            }
            *logged = Some(i);
        }
    }

    /// Distrusts every connection opened until now: the pool's are closed (statements waiting
    /// on them fail) and discarded, koyo-job's statements waiting on them are abandoned, and
    /// listeners reconnect.
    pub(crate) fn distrust_older(&self) {
        let now = Instant::now();
        self.distrust.send_replace(Some(now));
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|(opened, task)| {
            if *opened <= now {
                task.abort();
            }
            *opened > now && !task.is_finished()
        });
    }

    /// Remembers the task driving a pooled connection opened at `opened`, to close it when the
    /// connection is distrusted (with several hosts; with one, connections are never distrusted).
    pub(crate) fn track(&self, opened: Instant, task: AbortHandle) {
        if self.several() {
            let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
            tasks.retain(|(_, task)| !task.is_finished());
            tasks.push((opened, task));
        }
    }

    /// Whether a connection opened at `created` may still be used.
    pub(crate) fn trusts(&self, created: Instant) -> bool {
        self.distrust.borrow().is_none_or(|before| created > before)
    }

    /// Hears of every change of [`Hosts::trusts`].
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<Instant>> {
        self.distrust.subscribe()
    }

    /// Resolves once a connection opened at `created` is distrusted (never with one host, nor
    /// with `load_balance_hosts=random`, where no host is the current one). A
    /// statement outstanding that long is suspect: from `connect_timeout` on, the broker probes
    /// the other hosts for a writable one every `connect_timeout` (one probe at a time per
    /// broker), which distrusts this connection if one is found.
    pub(crate) async fn stale(&self, created: Instant) {
        if !self.several() || self.random {
            return std::future::pending().await;
        }
        let mut changes = self.subscribe();
        let mut probe_at = tokio::time::Instant::now() + self.per_host;
        loop {
            if !self.trusts(created) {
                return;
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return std::future::pending().await;
                    }
                }
                _ = tokio::time::sleep_until(probe_at) => {
                    self.look_elsewhere().await;
                    probe_at = tokio::time::Instant::now() + self.per_host / 4;
                }
            }
        }
    }

    /// Tries the hosts other than the preferred one, each within `connect_timeout`, and makes
    /// the first that takes a connection (passing the `target_session_attrs` check) the
    /// preferred one. Does nothing if a probe runs, or one started less than `connect_timeout`
    /// ago.
    async fn look_elsewhere(&self) {
        let Ok(mut last) = self.probe.try_lock() else { return };
        let now = tokio::time::Instant::now();
        if last.is_some_and(|at| now < at + self.per_host) {
            return;
        }
        *last = Some(now);
        let current = self.preferred.load(Ordering::Relaxed);
        for i in (0..self.each.len()).filter(|&i| i != current) {
            if let Ok(Ok(opened)) = tokio::time::timeout(self.per_host, self.each[i].connect(NoTls)).await {
                drop(opened);
                self.took(i);
                return;
            }
        }
    }

    /// Host `i` for logs: its name or socket directory, and port (never the user or password).
    fn describe(&self, i: usize) -> String {
        let config = &self.each[i];
        let host = match (config.get_hostaddrs().first(), config.get_hosts().first()) {
            (Some(addr), _) => addr.to_string(),
            (None, Some(Host::Tcp(name))) => name.clone(),
            (None, Some(Host::Unix(path))) => path.display().to_string(),
            (None, None) => "?".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        format!("{host}:{port}")
    }
}

/// Host `i` of a multi-host `config`, with every other setting of it. tokio-postgres has no way
/// to remove hosts from a config, so the config is built anew from its getters (a test below
/// checks that nothing is lost).
fn single_host(config: &Config, i: usize) -> Config {
    let mut one = Config::new();
    if let Some(user) = config.get_user() {
        one.user(user);
    }
    if let Some(password) = config.get_password() {
        one.password(password);
    }
    if let Some(dbname) = config.get_dbname() {
        one.dbname(dbname);
    }
    if let Some(options) = config.get_options() {
        one.options(options);
    }
    if let Some(name) = config.get_application_name() {
        one.application_name(name);
    }
    one.ssl_mode(config.get_ssl_mode()).ssl_negotiation(config.get_ssl_negotiation());
    match config.get_hosts().get(i) {
        Some(Host::Tcp(name)) => {
            one.host(name);
        }
        Some(Host::Unix(path)) => {
            one.host_path(path);
        }
        None => {}
    }
    if let Some(addr) = config.get_hostaddrs().get(i) {
        one.hostaddr(*addr);
    }
    let ports = config.get_ports();
    if let Some(port) = ports.get(i).or(ports.first()) {
        one.port(*port);
    }
    if let Some(timeout) = config.get_connect_timeout() {
        one.connect_timeout(*timeout);
    }
    if let Some(timeout) = config.get_tcp_user_timeout() {
        one.tcp_user_timeout(*timeout);
    }
    one.keepalives(config.get_keepalives()).keepalives_idle(config.get_keepalives_idle());
    if let Some(interval) = config.get_keepalives_interval() {
        one.keepalives_interval(interval);
    }
    if let Some(retries) = config.get_keepalives_retries() {
        one.keepalives_retries(retries);
    }
    let attrs = match config.get_target_session_attrs() {
        TargetSessionAttrs::Any => TargetSessionAttrs::ReadWrite,
        other => other,
    };
    one.target_session_attrs(attrs).channel_binding(config.get_channel_binding());
    one.load_balance_hosts(config.get_load_balance_hosts());
    one
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_host_keeps_every_other_setting() {
        let settings = "user=u password=p dbname=d options='-c x=1' application_name=app sslmode=disable \
                        connect_timeout=3 tcp_user_timeout=4 keepalives=0 keepalives_idle=5 keepalives_interval=6 \
                        keepalives_retries=7 target_session_attrs=read-write channel_binding=disable";
        let config: Config =
            format!("host=a,/run/pg,c hostaddr=10.0.0.1,10.0.0.2,10.0.0.3 port=1,2,3 {settings}")
                .parse()
                .unwrap();
        let hosts = Hosts::new(&config, Duration::from_secs(1));
        assert_eq!(hosts.each.len(), 3);
        // `Config`'s equality compares every field.
        let second: Config = format!("host=/run/pg hostaddr=10.0.0.2 port=2 {settings}").parse().unwrap();
        assert_eq!(hosts.each[1], second);
        assert_eq!(hosts.describe(1), "10.0.0.2:2");

        // One port for all; a multi-host config without target_session_attrs gets read-write.
        let config: Config = "host=a,b port=7".parse().unwrap();
        let hosts = Hosts::new(&config, Duration::from_secs(1));
        assert_eq!(hosts.each[1].get_ports(), &[7]);
        assert_eq!(hosts.each[1].get_target_session_attrs(), TargetSessionAttrs::ReadWrite);
        assert_eq!(hosts.attempt_bound(), Duration::from_secs(2));

        // A single host is left as it is.
        let config: Config = "host=a port=7".parse().unwrap();
        let hosts = Hosts::new(&config, Duration::from_secs(1));
        assert!(!hosts.several());
        assert_eq!(hosts.each[0], config);
    }

    #[test]
    fn the_host_that_last_took_a_connection_is_tried_first_and_a_move_distrusts_older_connections() {
        let config: Config = "host=a,b,c".parse().unwrap();
        let hosts = Hosts::new(&config, Duration::from_secs(1));
        assert_eq!(hosts.order(), vec![0, 1, 2]);
        let before = Instant::now();
        hosts.took(0);
        assert!(hosts.trusts(before), "the first host taking a connection is no move");
        hosts.took(2);
        assert_eq!(hosts.order(), vec![2, 0, 1]);
        assert!(!hosts.trusts(before));
        assert!(hosts.trusts(Instant::now() + Duration::from_millis(1)));
    }
}
