//! The listener: a dedicated LISTEN connection whose notifications wake the main loop.

use std::future::poll_fn;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_postgres::{AsyncMessage, NoTls};

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

pub(super) async fn listen_once(shared: &Shared) -> Result<(), Error> {
    // connect_timeout covers only the TCP connect; a hung server also stalls the start-up
    // handshake, so bound the whole of it.
    let limit = shared.broker.options().connect_timeout;
    let (client, mut connection) = tokio::time::timeout(limit, shared.broker.config().connect(NoTls))
        .await
        .map_err(|_| Error::Timeout(limit))??;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n).is_err() {
                        return Ok(());
                    }
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
    while let Some(n) = rx.recv().await {
        if n.channel() == sql::CANCEL_CHANNEL {
            // `<worker id> <job id>`: only this worker's jobs.
            let mut ids = n.payload().split(' ').map(str::parse::<i64>);
            if let (Some(Ok(worker)), Some(Ok(job))) = (ids.next(), ids.next())
                && worker == shared.worker_id.load(std::sync::atomic::Ordering::Relaxed)
            {
                shared.cancel_running(job);
            }
            continue;
        }
        if !shared.settings.queues.iter().any(|q| q == n.payload()) {
            continue;
        }
        match n.channel() {
            sql::READY_CHANNEL => shared.wake.notify_one(),
            sql::SCHEDULED_CHANNEL => shared.tick_soon.notify_one(),
            _ => {}
        }
    }
    drop(client);
    match driver.await {
        Ok(result) => Ok(result?),
        Err(_) => Ok(()),
    }
}

pub(super) struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
