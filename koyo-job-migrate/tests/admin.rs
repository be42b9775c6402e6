//! The `koyo-job-admin` command against a real, freshly migrated database: every command, its
//! table and `--json` output, the state rules of retry and cancel, and every exit status.

use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use koyo_job::testing::TestDatabase;
use koyo_job::tokio_postgres::{AsyncMessage, Client, NoTls};

const PASSWORD: &str = "hunter2-not-to-be-shown";

/// A migrated scratch database and a client on it.
struct Fixture {
    db: TestDatabase,
    client: Client,
}

impl Fixture {
    async fn new() -> Fixture {
        let db = TestDatabase::create().await.unwrap();
        let (mut client, connection) = db.config().connect(NoTls).await.unwrap();
        tokio::spawn(connection);
        koyo_job_migrate::migrate(&mut client, None).await.unwrap();
        Fixture { db, client }
    }

    /// Runs the command against this database, the URL given by flag.
    fn run(&self, args: &[&str]) -> Output {
        let url = self.db.url();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--database-url", &url]);
        run(&all, None)
    }

    /// Inserts a job; `due_in` and `finished_ago` are seconds.
    #[allow(clippy::too_many_arguments)]
    async fn job(
        &self,
        queue: &str,
        status: &str,
        attempts: i32,
        max_attempts: i32,
        due_in: f64,
        finished_ago: Option<f64>,
        worker_id: Option<i64>,
        last_error: Option<&str>,
    ) -> i64 {
        self.client
            .query_one(
                "INSERT INTO koyo_jobs (queue, job, args, status, attempts, max_attempts, scheduled_at,
                                        started_at, finished_at, worker_id, last_error)
                 VALUES ($1, 'app.send_mail', '\\x0102030405'::bytea, $2, $3, $4,
                         now() + make_interval(secs => $5), CASE WHEN $3 > 0 THEN now() END,
                         now() - make_interval(secs => $6), $7, $8)
                 RETURNING id",
                &[&queue, &status, &attempts, &max_attempts, &due_in, &finished_ago, &worker_id, &last_error],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn worker(&self, hostname: &str, pid: i32, queues: &[&str]) -> i64 {
        let queues: Vec<String> = queues.iter().map(|q| (*q).to_owned()).collect();
        self.client
            .query_one(
                "INSERT INTO koyo_workers (hostname, pid, queues, pool_size, heartbeat_at)
                 VALUES ($1, $2, $3, 8, now() - interval '3 seconds') RETURNING id",
                &[&hostname, &pid, &queues],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// `(status, attempts, max_attempts, finished_at IS NULL, scheduled_at <= now())` of a job.
    async fn state(&self, id: i64) -> (String, i32, i32, bool, bool) {
        let row = self
            .client
            .query_one(
                "SELECT status, attempts, max_attempts, finished_at IS NULL, scheduled_at <= now()
                 FROM koyo_jobs WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
    }

    async fn count(&self) -> i64 {
        self.client.query_one("SELECT count(*) FROM koyo_jobs", &[]).await.unwrap().get(0)
    }
}

/// Runs the command with `args`, without inheriting `DATABASE_URL` unless `database_url` says so.
fn run(args: &[&str], database_url: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_koyo-job-admin"));
    command.args(args).env_remove("DATABASE_URL");
    if let Some(url) = database_url {
        command.env("DATABASE_URL", url);
    }
    command.output().expect("run koyo-job-admin")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn ok(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(0), "stdout: {}\nstderr: {}", stdout(output), stderr(output));
    stdout(output)
}

#[track_caller]
fn fails(output: &Output, code: i32, message: &str) {
    assert_eq!(output.status.code(), Some(code), "stdout: {}\nstderr: {}", stdout(output), stderr(output));
    assert!(stderr(output).contains(message), "{}", stderr(output));
    assert!(!stderr(output).contains("panicked"), "{}", stderr(output));
}

/// Parses the command's stdout as one JSON document.
#[track_caller]
fn json(output: &Output) -> Json {
    let text = ok(output);
    let mut parser = Parser { text: text.trim_end().as_bytes(), at: 0 };
    let value = parser.value();
    assert_eq!(parser.at, parser.text.len(), "trailing text in {text}");
    value
}

// A minimal JSON reader, enough to check the hand-written output parses back exactly.

#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    #[track_caller]
    fn get(&self, key: &str) -> &Json {
        match self {
            Json::Object(fields) => {
                &fields.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("no {key} in {self:?}")).1
            }
            _ => panic!("not an object: {self:?}"),
        }
    }

    #[track_caller]
    fn num(&self) -> f64 {
        match self {
            Json::Number(n) => *n,
            _ => panic!("not a number: {self:?}"),
        }
    }

    #[track_caller]
    fn str(&self) -> &str {
        match self {
            Json::String(s) => s,
            _ => panic!("not a string: {self:?}"),
        }
    }

    #[track_caller]
    fn items(&self) -> &[Json] {
        match self {
            Json::Array(items) => items,
            _ => panic!("not an array: {self:?}"),
        }
    }
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> u8 {
        *self.text.get(self.at).unwrap_or_else(|| panic!("unexpected end of JSON"))
    }

    fn eat(&mut self, byte: u8) {
        assert_eq!(self.peek() as char, byte as char, "at byte {}", self.at);
        self.at += 1;
    }

    fn literal(&mut self, word: &str, value: Json) -> Json {
        assert!(self.text[self.at..].starts_with(word.as_bytes()), "at byte {}", self.at);
        self.at += word.len();
        value
    }

    fn value(&mut self) -> Json {
        match self.peek() {
            b'n' => self.literal("null", Json::Null),
            b't' => self.literal("true", Json::Bool(true)),
            b'f' => self.literal("false", Json::Bool(false)),
            b'"' => Json::String(self.string()),
            b'[' => {
                self.eat(b'[');
                let mut items = Vec::new();
                if self.peek() != b']' {
                    loop {
                        items.push(self.value());
                        if self.peek() == b',' {
                            self.eat(b',');
                        } else {
                            break;
                        }
                    }
                }
                self.eat(b']');
                Json::Array(items)
            }
            b'{' => {
                self.eat(b'{');
                let mut fields = Vec::new();
                if self.peek() != b'}' {
                    loop {
                        let key = self.string();
                        self.eat(b':');
                        fields.push((key, self.value()));
                        if self.peek() == b',' {
                            self.eat(b',');
                        } else {
                            break;
                        }
                    }
                }
                self.eat(b'}');
                Json::Object(fields)
            }
            _ => {
                let start = self.at;
                while self.at < self.text.len()
                    && matches!(self.text[self.at], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    self.at += 1;
                }
                let number = std::str::from_utf8(&self.text[start..self.at]).unwrap();
                Json::Number(
                    number.parse().unwrap_or_else(|_| panic!("bad number {number:?} at byte {start}")),
                )
            }
        }
    }

    fn string(&mut self) -> String {
        self.eat(b'"');
        let mut bytes = Vec::new();
        loop {
            let byte = self.peek();
            self.at += 1;
            match byte {
                b'"' => break,
                b'\\' => {
                    let escape = self.peek();
                    self.at += 1;
                    let c = match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'u' => {
                            let hex = std::str::from_utf8(&self.text[self.at..self.at + 4]).unwrap();
                            self.at += 4;
                            char::from_u32(u32::from_str_radix(hex, 16).unwrap()).expect("no surrogates here")
                        }
                        other => panic!("bad escape \\{}", other as char),
                    };
                    bytes.extend_from_slice(c.to_string().as_bytes());
                }
                byte => {
                    assert!(byte >= 0x20, "raw control character {byte:#x} in a JSON string");
                    bytes.push(byte);
                }
            }
        }
        String::from_utf8(bytes).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn queues_counts_jobs_per_state_and_measures_the_lag() {
    let f = Fixture::new().await;
    assert_eq!(ok(&f.run(&["queues"])), "no jobs\n");
    assert_eq!(json(&f.run(&["queues", "--json"])).get("queues").items().len(), 0);

    let worker = f.worker("host-a", 10, &["mail"]).await;
    f.job("mail", "ready", 0, 20, -120.0, None, None, None).await;
    f.job("mail", "ready", 0, 20, -5.0, None, None, None).await;
    f.job("mail", "running", 1, 20, -5.0, None, Some(worker), None).await;
    f.job("mail", "failed", 20, 20, -5.0, Some(1.0), None, None).await;
    f.job("reports", "scheduled", 0, 20, 3600.0, None, None, None).await;
    f.job("reports", "done", 1, 20, -5.0, Some(1.0), None, None).await;

    let table = ok(&f.run(&["queues"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("QUEUE"), "{table}");
    let mail: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&mail[..7], ["mail", "0", "2", "1", "0", "1", "0"], "{table}");
    assert!(mail[7].starts_with("2m0"), "lag of the oldest ready job: {table}");
    let reports: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(reports, ["reports", "1", "0", "0", "1", "0", "0", "-", "-"], "{table}");

    let doc = json(&f.run(&["queues", "--json"]));
    let queues = doc.get("queues").items();
    assert_eq!(queues[0].get("queue").str(), "mail");
    assert_eq!(queues[0].get("counts").get("ready").num(), 2.0);
    assert_eq!(queues[0].get("counts").get("running").num(), 1.0);
    let lag = queues[0].get("lag_seconds").num();
    assert!((119.0..300.0).contains(&lag), "{lag}");
    assert_eq!(queues[1].get("queue").str(), "reports");
    assert_eq!(queues[1].get("counts").get("scheduled").num(), 1.0);
    assert_eq!(queues[1].get("lag_seconds"), &Json::Null);
}

#[tokio::test]
async fn jobs_lists_newest_first_with_filters_and_cursor_paging() {
    let f = Fixture::new().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let queue = if i % 2 == 0 { "mail" } else { "reports" };
        let status = if i < 3 { "ready" } else { "failed" };
        let finished = (status == "failed").then_some(1.0);
        ids.push(f.job(queue, status, 0, 20, -1.0, finished, None, None).await);
    }

    let table = ok(&f.run(&["jobs"]));
    let listed: Vec<i64> =
        table.lines().skip(1).map(|l| l.split_whitespace().next().unwrap().parse().unwrap()).collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first, "{table}");
    assert!(table.starts_with("ID  QUEUE") || table.trim_start().starts_with("ID"), "{table}");
    assert!(table.contains("app.send_mail") && !table.contains("more:"), "{table}");

    // Filters: queue, one or more states.
    let doc = json(&f.run(&["jobs", "--queue", "mail", "--json"]));
    let got: Vec<f64> = doc.get("jobs").items().iter().map(|j| j.get("id").num()).collect();
    assert_eq!(got, [ids[4] as f64, ids[2] as f64, ids[0] as f64]);
    let doc = json(&f.run(&["jobs", "--state", "failed", "--json"]));
    assert_eq!(doc.get("jobs").items().len(), 2);
    assert!(doc.get("jobs").items().iter().all(|j| j.get("status").str() == "failed"));
    let doc = json(&f.run(&["jobs", "--state=failed,ready", "--queue=reports", "--json"]));
    assert_eq!(doc.get("jobs").items().len(), 2);
    let first = &doc.get("jobs").items()[0];
    for field in
        ["queue", "job", "priority", "attempts", "max_attempts", "scheduled_at", "finished_at", "last_error"]
    {
        first.get(field);
    }

    // Paging: two at a time, following the cursor.
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut args = vec!["jobs", "--limit", "2", "--json"];
        if let Some(before) = &before {
            args.extend(["--before", before.as_str()]);
        }
        let doc = json(&f.run(&args));
        seen.extend(doc.get("jobs").items().iter().map(|j| j.get("id").num() as i64));
        match doc.get("next_before") {
            Json::Null => break,
            next => before = Some((next.num() as i64).to_string()),
        }
    }
    assert_eq!(seen, newest_first);
    let table = ok(&f.run(&["jobs", "--limit", "2"]));
    assert!(table.ends_with(&format!("more: add --before {}\n", ids[3])), "{table}");

    let none = ok(&f.run(&["jobs", "--queue", "nothing-here"]));
    assert_eq!(none, "no jobs\n");
}

#[tokio::test]
async fn show_gives_every_column_but_the_arguments_and_escapes_the_error() {
    let f = Fixture::new().await;
    let error = "boom: \"quoted\" \\ back\nline two\ttab \u{1}\u{1b}[31m é";
    let id = f.job("mail", "failed", 20, 20, -1.0, Some(1.0), None, Some(error)).await;

    let text = ok(&f.run(&["show", &id.to_string()]));
    assert!(text.contains(&format!("id           {id}\n")), "{text}");
    assert!(text.contains("queue        mail\n"), "{text}");
    assert!(text.contains("status       failed\n"), "{text}");
    assert!(text.contains("attempts     20 of 20\n"), "{text}");
    assert!(
        text.contains("args         5 bytes (bincode; decoding them needs the job's Rust types"),
        "{text}"
    );
    assert!(text.contains("  line two\\ttab \\u{1}\\u{1b}[31m é\n"), "{text}");
    assert!(!text.contains('\u{1b}'), "a terminal escape reached the terminal: {text}");

    let doc = json(&f.run(&["show", &id.to_string(), "--json"]));
    assert_eq!(doc.get("id").num(), id as f64);
    assert_eq!(doc.get("job").str(), "app.send_mail");
    assert_eq!(doc.get("args_bytes").num(), 5.0);
    assert_eq!(doc.get("last_error").str(), error);
    assert_eq!(doc.get("worker_id"), &Json::Null);
    assert!(doc.get("finished_at").str().ends_with('Z'));
    assert!(doc.get("created_at").str().contains('T'));

    fails(&f.run(&["show", "999999"]), 4, "no job with id 999999");
    fails(&f.run(&["show", "9223372036854775807", "--json"]), 4, "no job with id");
}

#[tokio::test]
async fn show_prints_the_attempts_oldest_first_and_jobs_their_duration() {
    let f = Fixture::new().await;
    let worker = f.worker("host-b", 77, &["mail"]).await;
    let id = f.job("mail", "failed", 3, 3, -1.0, Some(1.0), Some(worker), Some("final boom")).await;
    f.client
        .execute(
            "UPDATE koyo_jobs SET started_at = finished_at - interval '1500 milliseconds', attempt_log_dropped = 2,
                 attempt_log = jsonb_build_array(
                     jsonb_build_object('attempt', 1, 'worker_id', $2::int8, 'hostname', 'host-b',
                                        'started_at', now() - interval '70 seconds',
                                        'ended_at', now() - interval '65 seconds',
                                        'outcome', 'retry', 'error', E'first line\nsecond line \x1b[31m'),
                     jsonb_build_object('attempt', 2, 'worker_id', 12, 'hostname', NULL,
                                        'started_at', now() - interval '40 seconds',
                                        'ended_at', now() - interval '10 seconds',
                                        'outcome', 'lost', 'error', 'worker 12 was lost during attempt 2'))
             WHERE id = $1",
            &[&id, &worker],
        )
        .await
        .unwrap();

    let text = ok(&f.run(&["show", &id.to_string()]));
    let history = &text[text.find("history").unwrap_or_else(|| panic!("no history in {text}"))..];
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines[0], "history      (2 earlier attempt(s) not kept)", "{text}");
    assert!(lines[1].trim_start().starts_with("ATTEMPT  OUTCOME  WORKER"), "{text}");
    let rows: Vec<Vec<&str>> = lines[2..].iter().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 3, "{text}");
    let w = worker.to_string();
    assert_eq!(rows[0][..4], ["1", "retry", w.as_str(), "(host-b)"], "{text}");
    assert_eq!(rows[0][6..], ["5.0s", "first", "line"], "only the first line of an error: {text}");
    assert_eq!(rows[1][..3], ["2", "lost", "12"], "{text}");
    assert_eq!(rows[1][5], "30.0s", "{text}");
    assert_eq!(rows[2][..4], ["3", "failed", w.as_str(), "(host-b)"], "{text}");
    assert_eq!(rows[2][6..], ["1.5s", "final", "boom"], "{text}");
    assert!(!text.contains('\u{1b}'), "{text}");

    let doc = json(&f.run(&["show", &id.to_string(), "--json"]));
    assert_eq!(doc.get("history_dropped").num(), 2.0);
    let attempts = doc.get("history").items();
    let outcomes: Vec<(f64, &str)> =
        attempts.iter().map(|a| (a.get("attempt").num(), a.get("outcome").str())).collect();
    assert_eq!(outcomes, [(1.0, "retry"), (2.0, "lost"), (3.0, "failed")]);
    assert_eq!(attempts[0].get("error").str(), "first line\nsecond line \u{1b}[31m");
    assert_eq!(attempts[1].get("hostname"), &Json::Null);
    assert_eq!(attempts[2].get("duration_secs").num(), 1.5);
    assert!(attempts[2].get("ended_at").str().ends_with('Z'));

    // A job that never ran has no attempts and no duration.
    let waiting = f.job("mail", "ready", 0, 3, -1.0, None, None, None).await;
    let text = ok(&f.run(&["show", &waiting.to_string()]));
    assert!(text.ends_with("history\n  not started yet\n"), "{text}");
    let table = ok(&f.run(&["jobs"]));
    assert!(table.lines().next().unwrap().contains("ATTEMPTS  DURATION"), "{table}");
    let listed = json(&f.run(&["jobs", "--json"]));
    let durations: Vec<(f64, &Json)> =
        listed.get("jobs").items().iter().map(|j| (j.get("id").num(), j.get("duration_secs"))).collect();
    assert_eq!(durations, [(waiting as f64, &Json::Null), (id as f64, &Json::Number(1.5))]);
}

/// Collects the payloads of `koyo_jobs` notifications on a connection of its own.
async fn listen(f: &Fixture) -> (Client, Arc<Mutex<Vec<String>>>) {
    let (client, mut connection) = f.db.config().connect(NoTls).await.unwrap();
    let payloads = Arc::new(Mutex::new(Vec::new()));
    let sink = payloads.clone();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notification(n) = message
                && n.channel() == "koyo_jobs"
            {
                sink.lock().unwrap().push(n.payload().to_owned());
            }
        }
    });
    client.batch_execute("LISTEN koyo_jobs").await.unwrap();
    (client, payloads)
}

async fn wait_for(payloads: &Mutex<Vec<String>>, count: usize) -> Vec<String> {
    for _ in 0..100 {
        if payloads.lock().unwrap().len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    payloads.lock().unwrap().clone()
}

#[tokio::test]
async fn retry_makes_failed_cancelled_and_scheduled_jobs_ready_and_notifies() {
    let f = Fixture::new().await;
    let (_listener, payloads) = listen(&f).await;
    let worker = f.worker("host-a", 10, &["mail"]).await;
    let failed = f.job("mail", "failed", 20, 20, -60.0, Some(30.0), None, Some("boom")).await;
    let cancelled = f.job("reports", "cancelled", 1, 20, -60.0, Some(30.0), None, None).await;
    let scheduled = f.job("later", "scheduled", 0, 20, 3600.0, None, None, None).await;
    let running = f.job("mail", "running", 1, 20, -1.0, None, Some(worker), None).await;
    let done = f.job("mail", "done", 1, 20, -1.0, Some(1.0), None, None).await;
    let ready = f.job("mail", "ready", 0, 20, -1.0, None, None, None).await;

    let text = ok(&f.run(&["retry", &failed.to_string()]));
    assert_eq!(text, format!("job {failed} is ready on queue mail (20 of 21 attempts used)\n"));
    assert_eq!(f.state(failed).await, ("ready".into(), 20, 21, true, true));

    let doc = json(&f.run(&["retry", &cancelled.to_string(), "--json"]));
    assert_eq!(doc.get("status").str(), "ready");
    assert_eq!(doc.get("max_attempts").num(), 20.0);
    assert_eq!(f.state(cancelled).await, ("ready".into(), 1, 20, true, true));

    ok(&f.run(&["retry", &scheduled.to_string()]));
    assert_eq!(f.state(scheduled).await, ("ready".into(), 0, 20, true, true));

    let mut notified = wait_for(&payloads, 3).await;
    notified.sort();
    assert_eq!(notified, ["later", "mail", "reports"]);

    fails(&f.run(&["retry", &running.to_string()]), 3, "a live worker is running it");
    fails(&f.run(&["retry", &done.to_string()]), 3, "it succeeded");
    fails(&f.run(&["retry", &ready.to_string()]), 3, "already ready");
    fails(&f.run(&["retry", &failed.to_string()]), 3, "already ready");
    fails(&f.run(&["retry", "424242"]), 4, "no job with id 424242");
    assert_eq!(f.state(running).await.0, "running");
    assert_eq!(f.state(done).await.0, "done");
}

#[tokio::test]
async fn cancel_finishes_waiting_and_failed_jobs_and_refuses_the_rest() {
    let f = Fixture::new().await;
    let worker = f.worker("host-a", 10, &["mail"]).await;
    let ready = f.job("mail", "ready", 0, 20, -1.0, None, None, None).await;
    let scheduled = f.job("mail", "scheduled", 0, 20, 3600.0, None, None, None).await;
    let failed = f.job("mail", "failed", 20, 20, -1.0, Some(100.0), None, None).await;
    let running = f.job("mail", "running", 1, 20, -1.0, None, Some(worker), None).await;
    let done = f.job("mail", "done", 1, 20, -1.0, Some(1.0), None, None).await;

    assert_eq!(
        ok(&f.run(&["cancel", &ready.to_string()])),
        format!("job {ready} on queue mail is cancelled\n")
    );
    assert_eq!(f.state(ready).await, ("cancelled".into(), 0, 20, false, true));
    let doc = json(&f.run(&["cancel", &scheduled.to_string(), "--json"]));
    assert_eq!(doc.get("status").str(), "cancelled");
    assert_eq!(doc.get("id").num(), scheduled as f64);
    assert_eq!(f.state(scheduled).await.0, "cancelled");
    ok(&f.run(&["cancel", &failed.to_string()]));
    let recent: bool = f
        .client
        .query_one(
            "SELECT finished_at > now() - interval '1 minute' FROM koyo_jobs WHERE id = $1",
            &[&failed],
        )
        .await
        .unwrap()
        .get(0);
    assert!(recent, "finished_at is the time of the cancel");

    // A live worker's job: the cancel asks that worker to stop it; the row stays running.
    let asked = ok(&f.run(&["cancel", &running.to_string()]));
    assert!(asked.contains("its worker was asked to stop it"), "{asked}");
    let by: Option<String> = f
        .client
        .query_one("SELECT cancel_requested_by FROM koyo_jobs WHERE id = $1", &[&running])
        .await
        .unwrap()
        .get(0);
    assert!(by.is_some_and(|by| by.contains("koyo-job-admin")));
    let shown = ok(&f.run(&["show", &running.to_string()]));
    assert!(shown.contains("cancel_by    ") && shown.contains("koyo-job-admin"), "{shown}");
    assert!(!ok(&f.run(&["show", &done.to_string()])).contains("cancel_by"), "shown only when set");
    fails(&f.run(&["cancel", &done.to_string()]), 3, "already succeeded");
    fails(&f.run(&["cancel", &ready.to_string()]), 3, "already cancelled");
    fails(&f.run(&["cancel", "424242", "--json"]), 4, "no job with id 424242");
    assert_eq!(f.state(running).await.0, "running");
    assert_eq!(f.state(done).await.0, "done");
}

#[tokio::test]
async fn prune_deletes_old_finished_jobs_in_batches() {
    let f = Fixture::new().await;
    let day = 86400.0;
    let old_done = f.job("mail", "done", 1, 20, -3.0 * day, Some(2.0 * day), None, None).await;
    let old_failed = f.job("mail", "failed", 20, 20, -3.0 * day, Some(2.0 * day), None, None).await;
    let old_cancelled = f.job("mail", "cancelled", 0, 20, -3.0 * day, Some(2.0 * day), None, None).await;
    let new_done = f.job("mail", "done", 1, 20, -3.0 * day, Some(3600.0), None, None).await;
    let old_ready = f.job("mail", "ready", 0, 20, -3.0 * day, None, None, None).await;

    assert_eq!(ok(&f.run(&["prune", "--older-than", "1d", "--state", "done"])), "deleted 1 job(s)\n");
    assert_eq!(f.count().await, 4);
    let doc = json(&f.run(&["prune", "--older-than=24h", "--json", "--state", "failed,cancelled"]));
    assert_eq!(doc.get("deleted").num(), 2.0);
    assert_eq!(ok(&f.run(&["prune", "--older-than", "1d"])), "deleted 0 job(s)\n");
    let left: Vec<i64> = f
        .client
        .query("SELECT id FROM koyo_jobs ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, [new_done, old_ready]);
    let _ = (old_done, old_failed, old_cancelled);

    // More than one batch of 1,000.
    f.client
        .execute(
            "INSERT INTO koyo_jobs (queue, job, args, status, finished_at)
             SELECT 'bulk', 'app.x', '\\x00', 'done', now() - interval '2 days' FROM generate_series(1, 2500)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(ok(&f.run(&["prune", "--older-than", "30m"])), "deleted 2501 job(s)\n");
    assert_eq!(f.count().await, 1);
}

#[tokio::test]
async fn workers_lists_live_workers_with_their_running_jobs() {
    let f = Fixture::new().await;
    assert_eq!(ok(&f.run(&["workers"])), "no live workers\n");
    assert_eq!(json(&f.run(&["workers", "--json"])).get("workers").items().len(), 0);

    let a = f.worker("host-a", 4242, &["mail", "default"]).await;
    let b = f.worker("host-\"b\"", 7, &["reports"]).await;
    f.job("mail", "running", 1, 20, -1.0, None, Some(a), None).await;
    f.job("default", "running", 1, 20, -1.0, None, Some(a), None).await;
    f.job("mail", "done", 1, 20, -1.0, Some(1.0), Some(a), None).await;

    let table = ok(&f.run(&["workers"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].trim_start().starts_with("ID  HOST"), "{table}");
    let first: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(first[..5], [a.to_string().as_str(), "host-a", "4242", "mail,default", "8"], "{table}");
    assert!(first[5].ends_with('s'), "heartbeat age: {table}");
    assert_eq!(first[6], "2", "{table}");
    assert!(lines[2].ends_with(" 0"), "{table}");

    let doc = json(&f.run(&["workers", "--json"]));
    let workers = doc.get("workers").items();
    assert_eq!(workers.len(), 2);
    assert_eq!(workers[0].get("id").num(), a as f64);
    assert_eq!(
        workers[0].get("queues").items(),
        [Json::String("mail".into()), Json::String("default".into())]
    );
    assert_eq!(workers[0].get("running").num(), 2.0);
    assert_eq!(workers[0].get("pool_size").num(), 8.0);
    assert!(workers[0].get("heartbeat_age_seconds").num() >= 3.0);
    assert_eq!(workers[1].get("id").num(), b as f64);
    assert_eq!(workers[1].get("hostname").str(), "host-\"b\"");
    assert_eq!(workers[1].get("pid").num(), 7.0);
    assert!(workers[1].get("started_at").str().ends_with('Z'));
}

#[tokio::test]
async fn periodic_lists_the_schedules_live_workers_run_the_next_first() {
    let f = Fixture::new().await;
    let worker = f.worker("host-a", 7, &["reports"]).await;
    f.client
        .batch_execute(&format!(
            "INSERT INTO koyo_periodic (name, job, queue, schedule, time_zone, missed, last_slot, last_job_id,
                                        next_slot, seen_at, seen_by) VALUES
               ('nightly', 'app.report', 'reports', '0 3 * * *', 'Europe/Berlin', 'run_latest',
                '2026-12-05 02:00:00+00', 41, '2026-12-06 02:00:00+00', now(), {worker}),
               ('minutely', 'app.tick', 'reports', '@every 1m', 'UTC', 'skip',
                NULL, NULL, '2026-12-05 10:01:00+00', now() - interval '10 seconds', NULL),
               ('removed', 'app.old', 'reports', '@hourly', 'UTC', 'run_latest',
                NULL, NULL, NULL, now() - interval '2 hours', 999)"
        ))
        .await
        .unwrap();
    let doc = json(&f.run(&["periodic", "--json"]));
    let items = doc.get("periodic").items();
    let names: Vec<&str> = items.iter().map(|p| p.get("name").str()).collect();
    assert_eq!(names, ["minutely", "nightly"], "a schedule no live worker looked at lately is not listed");
    let nightly = &items[1];
    assert_eq!(nightly.get("schedule").str(), "0 3 * * *");
    assert_eq!(nightly.get("time_zone").str(), "Europe/Berlin");
    assert_eq!(nightly.get("last_slot").str(), "2026-12-05T02:00:00.000Z");
    assert_eq!(nightly.get("last_job_id").num(), 41.0);
    assert_eq!(nightly.get("next_slot").str(), "2026-12-06T02:00:00.000Z");
    let table = ok(&f.run(&["periodic"]));
    assert!(table.contains("NEXT SLOT") && table.contains("2026-12-05T02:00:00.000Z (job 41)"), "{table}");
}

#[tokio::test]
async fn pause_and_resume_a_queue_shown_in_queues() {
    let f = Fixture::new().await;
    f.job("mail", "ready", 0, 20, 0.0, None, None, None).await;
    let paused = ok(&f.run(&["pause", "mail"]));
    assert!(paused.starts_with("paused mail (since "), "{paused}");
    let table = ok(&f.run(&["queues"]));
    assert!(table.contains("mail (paused)"), "{table}");
    let doc = json(&f.run(&["queues", "--json"]));
    let mail = &doc.get("queues").items()[0];
    assert!(mail.get("paused_at").str().ends_with('Z'));
    assert!(mail.get("paused_by").str().contains("koyo-job-admin"));
    // A queue without jobs can be paused too, and is listed.
    ok(&f.run(&["pause", "reports"]));
    assert_eq!(json(&f.run(&["queues", "--json"])).get("queues").items().len(), 2);
    assert_eq!(ok(&f.run(&["resume", "mail"])), "resumed mail\n");
    assert_eq!(ok(&f.run(&["resume", "mail"])), "mail was not paused\n");
    assert!(!ok(&f.run(&["queues"])).contains("mail (paused)"));
    fails(&f.run(&["pause", "no spaces"]), 2, "invalid queue name");
    fails(&f.run(&["pause"]), 2, "`pause` needs a queue name");
}

#[tokio::test]
async fn the_url_may_come_from_database_url() {
    let f = Fixture::new().await;
    let output = run(&["queues", "--json"], Some(&f.db.url()));
    assert_eq!(json(&output).get("queues").items().len(), 0);
}

#[tokio::test]
async fn a_database_that_was_never_migrated_is_named_as_such_with_the_fix() {
    let db = TestDatabase::create().await.unwrap();
    for command in ["queues", "jobs", "workers"] {
        let output = run(&[command], Some(&db.url()));
        fails(&output, 1, "koyo-job's tables are missing from this database");
        assert!(stderr(&output).contains("koyo-job-migrate"), "{}", stderr(&output));
    }
}

#[test]
fn bad_command_lines_are_usage_errors() {
    let url = "postgresql://nobody@127.0.0.1:1/none";
    for (args, message) in [
        (&["show", "abc"][..], "job id must be a positive integer"),
        (&["show", "-5"], "job id must be a positive integer"),
        (&["retry", "0"], "job id must be a positive integer"),
        (&["cancel", "99999999999999999999"], "job id must be a positive integer"),
        (&["show"], "needs a job id"),
        (&["jobs", "--before", "abc"], "--before must be a positive integer"),
        (&["jobs", "--state", "bogus"], "unknown state `bogus`"),
        (&["jobs", "--state", "ready,,done"], "unknown state ``"),
        (&["jobs", "--limit", "5000"], "--limit must be a whole number from 1 to 1000"),
        (&["jobs", "--queue", "no spaces"], "invalid queue name"),
        (&["prune", "--older-than", "7"], "invalid duration `7`"),
        (&["prune", "--older-than", "1w"], "invalid duration"),
        (&["prune", "--older-than", "0d"], "invalid duration"),
        (&["prune", "--older-than", "-1d"], "invalid duration `-1d`"),
        (&["prune", "--older-than", "99999999999999999999d"], "invalid duration"),
        (&["prune", "--older-than", "1d", "--state", "running"], "unknown state `running`"),
        (&["prune"], "needs --older-than"),
        (&["queues", "--limit", "3"], "`queues` does not take --limit"),
        (&["frobnicate"], "unknown command"),
        (&[], "no command given"),
        (&["queues", "--frobnicate"], "unknown option `--frobnicate`"),
    ] {
        // Every usage error is found before connecting: the URL points nowhere.
        fails(&run(args, Some(url)), 2, message);
    }
}

#[test]
fn a_missing_database_url_is_a_usage_error() {
    fails(&run(&["queues"], None), 2, "DATABASE_URL");
}

#[test]
fn help_and_version_need_no_database() {
    let help = ok(&run(&["--help"], None));
    assert!(help.contains("Exit status: 0 ok"), "{help}");
    assert!(ok(&run(&["-V"], None)).starts_with("koyo-job-admin "));
}

#[tokio::test]
async fn database_failures_exit_1_without_showing_the_password() {
    let db = TestDatabase::create().await.unwrap();
    let port = db.config().get_ports()[0];
    for url in [
        format!("postgresql://postgres:{PASSWORD}@127.0.0.1:1/{}", db.name()),
        format!("postgresql://no_such_role:{PASSWORD}@127.0.0.1:{port}/{}", db.name()),
    ] {
        let output = run(&["queues"], Some(&url));
        fails(&output, 1, "could not connect to the database");
        assert!(!format!("{}{}", stdout(&output), stderr(&output)).contains(PASSWORD));
    }
    // Connected, but the schema is missing.
    let output = run(&["jobs"], Some(&db.url()));
    fails(&output, 1, "koyo_jobs");
}

#[test]
fn a_url_given_as_a_command_is_not_echoed() {
    let url = format!("postgresql://postgres:{PASSWORD}@127.0.0.1/db");
    for args in [&[url.as_str()][..], &["queues", &url]] {
        let output = run(args, None);
        assert_eq!(output.status.code(), Some(2));
        assert!(!stderr(&output).contains(PASSWORD), "{}", stderr(&output));
    }
}

#[tokio::test]
async fn delete_removes_any_job_but_one_a_live_worker_runs() {
    let f = Fixture::new().await;
    let live = f.worker("host-a", 10, &["mail"]).await;
    let running = f.job("mail", "running", 1, 20, -1.0, None, Some(live), None).await;
    let done = f.job("mail", "done", 1, 20, -1.0, Some(1.0), None, None).await;
    let ready = f.job("mail", "ready", 0, 20, -1.0, None, None, None).await;

    assert_eq!(ok(&f.run(&["delete", &done.to_string()])), format!("job {done} on queue mail is deleted\n"));
    let doc = json(&f.run(&["delete", &ready.to_string(), "--json"]));
    assert_eq!(doc.get("id").num(), ready as f64);
    assert_eq!(doc.get("status"), &Json::Null);
    fails(&f.run(&["delete", &running.to_string()]), 3, "a live worker is running it");
    fails(&f.run(&["delete", &done.to_string()]), 4, &format!("no job with id {done}"));
    assert_eq!(f.count().await, 1);
    assert_eq!(f.state(running).await.0, "running");
}

#[tokio::test]
async fn a_job_whose_worker_is_lost_can_be_retried_cancelled_or_deleted() {
    let f = Fixture::new().await;
    // One worker past its lease (heartbeat 3 s ago, lease 1 s), and jobs of a worker whose row is gone.
    let lost = f.worker("host-a", 10, &["mail"]).await;
    f.client.execute("UPDATE koyo_workers SET lease_secs = 1 WHERE id = $1", &[&lost]).await.unwrap();
    let of_lost = f.job("mail", "running", 20, 20, -1.0, None, Some(lost), None).await;
    let of_gone = f.job("mail", "running", 1, 20, -1.0, None, Some(987654), None).await;
    let third = f.job("mail", "running", 1, 20, -1.0, None, Some(lost), None).await;

    let workers = json(&f.run(&["workers", "--json"]));
    assert_eq!(workers.get("workers").items()[0].get("live"), &Json::Bool(false));
    assert!(ok(&f.run(&["workers"])).contains("(lost)"));

    // The lost attempt stays counted, and a job that used all its attempts gets one more.
    ok(&f.run(&["retry", &of_lost.to_string()]));
    assert_eq!(f.state(of_lost).await, ("ready".into(), 20, 21, true, true));
    ok(&f.run(&["cancel", &of_gone.to_string()]));
    assert_eq!(f.state(of_gone).await.0, "cancelled");
    ok(&f.run(&["delete", &third.to_string()]));
    assert_eq!(f.count().await, 2);
}

#[tokio::test]
async fn limit_sets_shows_and_clears_a_queue_s_fleet_wide_limits() {
    let f = Fixture::new().await;
    f.job("mail", "ready", 0, 20, 0.0, None, None, None).await;
    assert_eq!(ok(&f.run(&["limit", "mail"])), "mail: no limits\n");
    assert_eq!(ok(&f.run(&["limit", "mail", "--max-running", "5"])), "mail: at most 5 running\n");
    // An option left out keeps its limit.
    let both = ok(&f.run(&["limit", "mail", "--rate", "100/1m"]));
    assert!(both.starts_with("mail: at most 5 running, at most 100 starts per 1m"), "{both}");
    let table = ok(&f.run(&["queues"]));
    assert!(
        table.contains("LIMITS") && table.contains("at most 5 running, at most 100 starts per"),
        "{table}"
    );
    let doc = json(&f.run(&["queues", "--json"]));
    let mail = &doc.get("queues").items()[0];
    assert_eq!(mail.get("max_running").num(), 5.0);
    assert_eq!(mail.get("rate_limit").num(), 100.0);
    assert_eq!(mail.get("rate_period_secs").num(), 60.0);
    let doc = json(&f.run(&["limit", "mail", "--max-running", "none", "--json"]));
    assert_eq!(doc.get("max_running"), &Json::Null);
    assert_eq!(doc.get("rate_limit").num(), 100.0);
    assert_eq!(ok(&f.run(&["limit", "mail", "--rate", "none"])), "mail: no limits\n");
    for (args, message) in [
        (&["limit", "mail", "--max-running", "0"][..], "invalid --max-running"),
        (&["limit", "mail", "--max-running", "many"], "invalid --max-running"),
        (&["limit", "mail", "--rate", "10"], "invalid --rate"),
        (&["limit", "mail", "--rate", "0/1m"], "invalid --rate"),
        (&["limit", "mail", "--rate", "10/0s"], "invalid --rate"),
        (&["limit", "mail", "--rate", "10/400d"], "invalid --rate"),
        (&["limit", "no spaces", "--max-running", "1"], "invalid queue name"),
        (&["limit"], "`limit` needs a queue name"),
        (&["pause", "mail", "--max-running", "1"], "`pause` does not take --max-running"),
    ] {
        fails(&f.run(args), 2, message);
    }
    assert_eq!(ok(&f.run(&["limit", "mail"])), "mail: no limits\n");
}
