//! An axum application with koyo-job's admin page, its logs through `tracing`, and its metrics
//! for Prometheus: the operations side of koyo-job in one program.
//!
//! ```text
//! cargo run --example admin                      # serves http://127.0.0.1:3000 until Ctrl-C
//! cargo run --example admin -- --exit-after 5    # a self-check: serve 5 s, read its own
//!                                                # /metrics and admin API, then stop
//! ```
//!
//! Open http://127.0.0.1:3000/admin/jobs (user `admin`, password printed at start-up). A
//! producer enqueues a few jobs a second into three queues; some fail, some retry, so the
//! page has something to show. Prometheus can scrape http://127.0.0.1:3000/metrics.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use koyo_job::{Backoff, Worker, define_job, retry};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[define_job(queue = "mail", priority = 10)]
async fn send_welcome(user_id: i64, email: String) -> Result<(), String> {
    tracing::info!(user_id, %email, "sending a welcome mail"); // inside the job's span
    tokio::time::sleep(Duration::from_millis(20 + (user_id % 7) as u64 * 15)).await;
    if user_id % 13 == 0 {
        return Err(format!("mailbox {email} does not exist"));
    }
    Ok(())
}

#[define_job(queue = "billing", max_attempts = 3)]
async fn charge_invoice(invoice: u64, cents: u32) -> Result<(), String> {
    tokio::time::sleep(Duration::from_millis(60)).await;
    if invoice.is_multiple_of(5) && koyo_job::current_job().is_some_and(|job| job.attempt < 2) {
        retry!(Duration::from_secs(2), "payment provider busy");
    }
    if invoice.is_multiple_of(17) {
        return Err(format!("card declined for invoice {invoice} ({cents} cents)"));
    }
    Ok(())
}

#[define_job(queue = "reports")]
async fn build_report(name: String, rows: Vec<u32>) {
    tokio::time::sleep(Duration::from_millis(200 + rows.len() as u64)).await;
    tracing::debug!(%name, "report built");
}

/// The example's stand-in for an application's own authentication: HTTP Basic with user
/// `admin`. The admin router has no authentication of its own; always put it behind yours.
async fn require_admin(password: String, request: Request, next: Next) -> Response {
    let expected = format!("Basic {}", base64(&format!("admin:{password}")));
    match request.headers().get(header::AUTHORIZATION) {
        Some(given) if given.as_bytes() == expected.as_bytes() => next.run(request).await,
        _ => (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Basic realm=\"koyo-job admin\"")], "")
            .into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let exit_after = parse_exit_after()?;

    // Logs: job spans (`koyo_job.run` with id, queue, name, attempt) wrap whatever jobs log.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,koyo_job=info".into()),
        )
        .init();

    // Metrics: koyo-job reports through the `metrics` facade; this recorder renders them in
    // Prometheus' text format, served below at /metrics.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });

    let (_db, broker) = koyo_job_examples::scratch_broker().await?;
    let worker = Worker::builder(broker.clone())
        .queues(["mail", "billing", "reports"])
        .pool_size(8)
        .backoff(Backoff::exponential(Duration::from_secs(1), Duration::from_secs(30)))
        .start()
        .await?;

    // Something to look at: a few jobs a second.
    let producer = {
        let broker = broker.clone();
        tokio::spawn(async move {
            for n in 1_u64.. {
                let stored = async {
                    send_welcome(n as i64, format!("user{n}@example.com")).enqueue_on(&broker).await?;
                    if n % 2 == 0 {
                        charge_invoice(n, (n % 100) as u32 * 125).enqueue_on(&broker).await?;
                    }
                    if n % 10 == 0 {
                        build_report(format!("daily-{n}"), (0..(n % 50) as u32).collect())
                            .enqueue_on(&broker)
                            .await?;
                    }
                    Ok::<_, koyo_job::Error>(())
                };
                if let Err(error) = stored.await {
                    tracing::warn!(%error, "could not enqueue");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let password = admin_password();
    let admin = koyo_job_web::Admin::new(broker.clone())
        .mount("/admin/jobs")
        .layer(middleware::from_fn(move |request, next| require_admin(password.clone(), request, next)));
    let metrics = Router::new().route("/metrics", get(move || async move { prometheus.render() }));
    let app = Router::new()
        .route(
            "/",
            get(|| async { "koyo-job example: the admin page is at /admin/jobs, metrics at /metrics\n" }),
        )
        .merge(admin)
        .merge(metrics);

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(if exit_after.is_some() { 0 } else { 3000 });
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let address = listener.local_addr()?;
    println!("admin page: http://{address}/admin/jobs  (user admin, password {})", admin_password());
    println!("metrics:    http://{address}/metrics");

    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    match exit_after {
        Some(after) => {
            tokio::time::sleep(after).await;
            self_check(address).await?;
        }
        None => tokio::signal::ctrl_c().await?,
    }
    producer.abort();
    server.abort();
    worker.shutdown().await;
    Ok(())
}

/// `ADMIN_PASSWORD`, or a demo password made up at start-up.
fn admin_password() -> String {
    std::env::var("ADMIN_PASSWORD").unwrap_or_else(|_| format!("demo-{}", std::process::id()))
}

/// Reads this program's own /metrics and admin API, and says what it found: the wiring works.
async fn self_check(address: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let metrics = http_get(address, "/metrics", None).await?;
    let completed = metrics.lines().filter(|l| l.starts_with("koyo_job_completed_total")).count();
    if completed == 0 {
        return Err(format!("no koyo_job_completed_total in /metrics:\n{metrics}").into());
    }
    let credentials = format!("admin:{}", admin_password());
    let denied = http_get(address, "/admin/jobs/api/queues", None).await?;
    if !denied.starts_with("HTTP/1.1 401") {
        return Err(format!("the admin API answered without credentials:\n{denied}").into());
    }
    let queues = http_get(address, "/admin/jobs/api/queues", Some(&credentials)).await?;
    if !queues.contains("\"queue\":\"mail\"") {
        return Err(format!("the admin API did not list the mail queue:\n{queues}").into());
    }
    println!(
        "self-check: /metrics has {completed} koyo_job_completed_total series; the admin API needs credentials and lists the queues"
    );
    Ok(())
}

/// A bare HTTP/1.1 GET, enough for the self-check.
async fn http_get(
    address: SocketAddr,
    path: &str,
    basic: Option<&str>,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let auth = basic.map(|c| format!("Authorization: Basic {}\r\n", base64(c))).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn parse_exit_after() -> Result<Option<Duration>, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(None),
        [flag, secs] if flag == "--exit-after" => secs
            .parse::<u64>()
            .map(|s| Some(Duration::from_secs(s)))
            .map_err(|_| format!("--exit-after takes whole seconds, not {secs:?}")),
        _ => Err("usage: admin [--exit-after SECONDS]".into()),
    }
}
