//! The listener: a dedicated LISTEN connection whose notifications wake the main loop.

use std::future::poll_fn;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_postgres::AsyncMessage;

use super::Shared;
use crate::error::{Error, QuietLog};
use crate::sql;

/// Keeps a LISTEN connection open and turns notifications for this worker's queues into
/// wake-ups. Reconnects with backoff; after every (re)connect the worker claims at once, to
/// catch up on anything announced while it was away.
pub(super) async fn listen(shared: Arc<Shared>) {
    let mut pause = Duration::from_millis(100);
    let mut log = QuietLog::new("worker", "listening for notifications");
    loop {
        let started = Instant::now();
        if let Err(e) = listen_once(&shared).await {
            log.error(&e);
        }
        if started.elapsed() > Duration::from_secs(30) {
            pause = Duration::from_millis(100);
        }
        let jitter = pause
            .mul_f64(std::collections::hash_map::RandomState::new().hash_one(0) as f64 / u64::MAX as f64);
        tokio::time::sleep(pause + jitter / 2).await;
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

pub(super) async fn listen_once(shared: &Arc<Shared>) -> Result<(), Error> {
    // As the pool does: with several hosts, host by host, each start-up within connect_timeout
    // (tokio-postgres's own bounds only the TCP connect, and a hung server stalls the handshake).
    let limit = shared.broker.options().connect_timeout;
    let (client, mut connection) = shared.broker.open_connection().await?;
    let opened = std::time::Instant::now();
    // After a failover this connection may sit on a server that no longer answers: nothing
    // would ever arrive, so reconnect as soon as the broker distrusts it.
    let hosts = shared.broker.hosts();
    let mut failovers = hosts.subscribe();
    // The task that reads the connection acts on each notification itself: a wake-up reaches
    // the main loop with no other task in between (a hop measured in the pickup latency).
    let driven = shared.clone();
    let mut driver = tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    notified(&driven, &n);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    });
    let _abort_driver = AbortOnDrop(driver.abort_handle());
    tokio::time::timeout(limit, client.batch_execute(sql::LISTEN))
        .await
        .map_err(|_| Error::Timeout(limit))??;
    shared.wake.notify_one();
    shared.tick_soon.notify_one();
    // Until the connection ends, or a failover leaves it on a server the broker distrusts.
    let ended = loop {
        tokio::select! {
            ended = &mut driver => break ended,
            changed = failovers.changed(), if hosts.several() => {
                if changed.is_ok() && !hosts.trusts(opened) {
                    tracing::info!("koyo-job worker reconnects its LISTEN connection after a failover");
                    return Ok(());
                }
            }
        }
    };
    drop(client);
    match ended {
        Ok(result) => Ok(result?),
        Err(_) => Ok(()),
    }
}

/// Turns one notification into a wake-up of the main loop, a tick, or a cancel.
fn notified(shared: &Shared, n: &tokio_postgres::Notification) {
    if n.channel() == sql::CANCEL_CHANNEL {
        // `<worker id> <job id>`: only this worker's jobs.
        let mut ids = n.payload().split(' ').map(str::parse::<i64>);
        if let (Some(Ok(worker)), Some(Ok(job))) = (ids.next(), ids.next())
            && worker == shared.worker_id.load(std::sync::atomic::Ordering::Relaxed)
        {
            shared.cancel_running(job);
        }
        return;
    }
    if !shared.settings.queues.iter().any(|q| q == n.payload()) {
        return;
    }
    match n.channel() {
        sql::READY_CHANNEL => {
            // A limited queue got a ready job: claim from the limited queues again.
            if shared.limited.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|q| q == n.payload()) {
                shared.limited_full.store(false, std::sync::atomic::Ordering::Relaxed);
            }
            shared.wake.notify_one()
        }
        sql::SCHEDULED_CHANNEL => shared.tick_soon.notify_one(),
        _ => {}
    }
}

pub(super) struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
