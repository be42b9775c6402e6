//! A small headless-Chromium driver for browser tests, speaking the Chrome DevTools Protocol
//! over `--remote-debugging-pipe`: Chromium reads commands from its fd 3 and writes responses
//! and events to its fd 4, each message one JSON text followed by a NUL byte.
//!
//! Every call blocks (with a deadline) and is meant to be made from a test's own thread while
//! the servers it talks to run on runtime worker threads (`#[tokio::test(flavor =
//! "multi_thread")]`).
//!
//! ```no_run
//! # use koyo_job_tests::browser::Browser;
//! # use std::time::Duration;
//! # fn demo() -> Result<(), String> {
//! let Some(browser) = Browser::launch()? else { return Ok(()) }; // no Chromium installed
//! browser.goto("http://127.0.0.1:8080/")?;
//! browser.wait_for("document.querySelector('#ready') !== null", Duration::from_secs(5))?;
//! browser.click("#go")?;
//! assert!(browser.errors().is_empty());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long one DevTools command may take to answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a page load may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// How often [`Browser::wait_for`] looks again.
const POLL: Duration = Duration::from_millis(50);

/// A headless Chromium with one page (tab) attached. Dropping it ends the browser and removes
/// its profile directory.
pub struct Browser {
    child: Child,
    conn: Arc<Connection>,
    /// The DevTools session of our page: page-level commands carry it.
    session: String,
    dir: PathBuf,
}

/// The pipe to Chromium and what the reader thread collected from it.
struct Connection {
    /// Our end of Chromium's fd 3.
    writer: Mutex<std::io::PipeWriter>,
    next_id: AtomicU64,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// Responses not yet taken, by command id.
    responses: HashMap<u64, Value>,
    /// Every `Page.loadEventFired` seen so far (goto waits for the count to grow).
    loads: u64,
    /// The HTTP status of the last document the page received, for goto's errors.
    document_status: Option<i64>,
    /// Uncaught exceptions, console errors and error log entries of the page.
    errors: Vec<String>,
    /// Chromium closed the pipe (it exited or crashed).
    closed: bool,
}

impl Connection {
    fn send(&self, method: &str, params: Value, session: Option<&str>) -> Result<u64, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).map_err(|e| e.to_string())?;
        bytes.push(0);
        let mut writer = self.writer.lock().unwrap();
        writer.write_all(&bytes).map_err(|e| format!("cannot send {method} to Chromium: {e}"))?;
        Ok(id)
    }

    /// Sends a command and waits for its result (Err with the protocol's error message).
    fn call(&self, method: &str, params: Value, session: Option<&str>) -> Result<Value, String> {
        let id = self.send(method, params, session)?;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut state = self.state.lock().unwrap();
        loop {
            if let Some(response) = state.responses.remove(&id) {
                if let Some(error) = response.get("error") {
                    return Err(format!("{method} failed: {error}"));
                }
                return Ok(response.get("result").cloned().unwrap_or(Value::Null));
            }
            if state.closed {
                return Err(format!("Chromium closed the DevTools pipe before answering {method}"));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("Chromium did not answer {method} within {COMMAND_TIMEOUT:?}"));
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    /// The reader thread: splits the pipe's bytes at NULs and files each message.
    fn read_loop(self: Arc<Self>, pipe: std::io::PipeReader) {
        let mut reader = BufReader::new(pipe);
        let mut message = Vec::new();
        loop {
            message.clear();
            match std::io::BufRead::read_until(&mut reader, 0, &mut message) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if message.last() == Some(&0) {
                message.pop();
            }
            let Ok(value) = serde_json::from_slice::<Value>(&message) else { continue };
            self.file(value);
        }
        self.state.lock().unwrap().closed = true;
        self.changed.notify_all();
    }

    fn file(&self, message: Value) {
        if let Some(id) = message.get("id").and_then(Value::as_u64) {
            self.state.lock().unwrap().responses.insert(id, message);
            self.changed.notify_all();
            return;
        }
        let params = &message["params"];
        let error = match message["method"].as_str().unwrap_or_default() {
            "Page.loadEventFired" => {
                self.state.lock().unwrap().loads += 1;
                self.changed.notify_all();
                None
            }
            "Network.responseReceived" if params["type"] == "Document" => {
                self.state.lock().unwrap().document_status = params["response"]["status"].as_i64();
                None
            }
            "Runtime.exceptionThrown" => Some(describe_exception(&params["exceptionDetails"])),
            "Runtime.consoleAPICalled" if matches!(params["type"].as_str(), Some("error" | "assert")) => {
                let args = params["args"].as_array().map(Vec::as_slice).unwrap_or_default();
                let text: Vec<String> = args.iter().map(describe_remote_object).collect();
                Some(format!("console.{}: {}", params["type"].as_str().unwrap_or("error"), text.join(" ")))
            }
            // Errors Chromium itself reports about the page, such as Content-Security-Policy
            // violations. Failed network requests (source "network") are left out: a test may
            // provoke a 403 or 404 on purpose, and the page reports its own failed requests.
            "Log.entryAdded"
                if params["entry"]["level"] == "error" && params["entry"]["source"] != "network" =>
            {
                let entry = &params["entry"];
                Some(format!(
                    "log ({}): {} {}",
                    entry["source"].as_str().unwrap_or("?"),
                    entry["text"].as_str().unwrap_or_default(),
                    entry["url"].as_str().unwrap_or_default()
                ))
            }
            // A dialog would block the page (and every later eval) until answered: dismiss it
            // and remember it, since tests are not expected to open one.
            "Page.javascriptDialogOpening" => {
                let session = message["sessionId"].as_str();
                let _ = self.send("Page.handleJavaScriptDialog", json!({ "accept": false }), session);
                Some(format!("unexpected {} dialog: {}", params["type"], params["message"]))
            }
            _ => None,
        };
        if let Some(error) = error {
            self.state.lock().unwrap().errors.push(error);
        }
    }
}

fn describe_exception(details: &Value) -> String {
    let what = details["exception"]["description"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| details["exception"].get("value").map(Value::to_string))
        .unwrap_or_default();
    format!(
        "{} {what} ({}:{}:{})",
        details["text"].as_str().unwrap_or("exception"),
        details["url"].as_str().unwrap_or("?"),
        details["lineNumber"].as_i64().map_or(0, |l| l + 1),
        details["columnNumber"].as_i64().map_or(0, |c| c + 1)
    )
}

fn describe_remote_object(object: &Value) -> String {
    match object.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(value) => value.to_string(),
        None => object["description"].as_str().unwrap_or("?").to_owned(),
    }
}

/// JavaScript's truthiness of a JSON value (`undefined` arrives as null).
fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// At most `max` characters of `text`, marked when cut.
fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// A fresh, empty directory under the system's temporary directory.
fn fresh_temp_dir() -> Result<PathBuf, String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let dir = std::env::temp_dir().join(format!(
        "koyo-browser-{}-{}-{}",
        std::process::id(),
        nanos.as_nanos(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

impl Browser {
    /// Starts Chromium (`$CHROMIUM`, else `/usr/bin/chromium`) with a fresh profile and opens
    /// one blank page. `Ok(None)` when no Chromium is installed.
    pub fn launch() -> Result<Option<Browser>, String> {
        let program =
            std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
        if !program.is_file() {
            return Ok(None);
        }
        let dir = fresh_temp_dir()?;
        match Browser::start(&program, &dir) {
            Ok(browser) => Ok(Some(browser)),
            Err(e) => {
                let log = std::fs::read_to_string(dir.join("chromium.log")).unwrap_or_default();
                let _ = std::fs::remove_dir_all(&dir);
                Err(format!("{e}\nChromium's output:\n{}", truncate(&log, 4000)))
            }
        }
    }

    fn start(program: &Path, dir: &Path) -> Result<Browser, String> {
        // Two pipes: Chromium reads our commands from the first, writes to us on the second.
        // Both ends are close-on-exec; the child gets its own ends as fds 3 and 4 below.
        let (command_read, command_write) = std::io::pipe().map_err(|e| e.to_string())?;
        let (event_read, event_write) = std::io::pipe().map_err(|e| e.to_string())?;
        let (child_in, child_out) = (command_read.as_raw_fd(), event_write.as_raw_fd());
        let log = std::fs::File::create(dir.join("chromium.log")).map_err(|e| e.to_string())?;

        let mut command = Command::new(program);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", dir.join("profile").display()))
            .args(["--window-size=1400,1000", "about:blank"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            // Its own process group, so that Drop can end Chromium's helper processes too.
            .process_group(0);
        // SAFETY: runs in the forked child before exec, and only makes async-signal-safe
        // system calls (fcntl, dup2, close) on fds that the parent keeps open until spawn()
        // returns.
        unsafe {
            command.pre_exec(move || {
                // First copy both ends to fds >= 5, so that neither dup2 below can overwrite
                // the other (a pipe end may well be fd 3 or 4 itself).
                let read = libc::fcntl(child_in, libc::F_DUPFD, 5);
                let write = libc::fcntl(child_out, libc::F_DUPFD, 5);
                // dup2 gives fds 3 and 4 without close-on-exec: Chromium inherits them.
                if read < 0 || write < 0 || libc::dup2(read, 3) < 0 || libc::dup2(write, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The temporary copies would leak into Chromium: close them.
                libc::close(read);
                libc::close(write);
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        // Chromium's ends now live in Chromium only: close ours, so that its exit ends the
        // reader thread's stream.
        drop((command_read, event_write));

        let conn = Arc::new(Connection {
            writer: Mutex::new(command_write),
            next_id: AtomicU64::new(1),
            state: Mutex::default(),
            changed: Condvar::new(),
        });
        let reader = conn.clone();
        std::thread::Builder::new()
            .name("chromium-devtools".into())
            .spawn(move || reader.read_loop(event_read))
            .map_err(|e| e.to_string())?;
        let mut browser = Browser { child, conn, session: String::new(), dir: dir.to_owned() };

        let target = browser.conn.call("Target.createTarget", json!({ "url": "about:blank" }), None)?;
        let target_id = target["targetId"].as_str().ok_or("Target.createTarget returned no targetId")?;
        let attached = browser.conn.call(
            "Target.attachToTarget",
            json!({ "targetId": target_id, "flatten": true }),
            None,
        )?;
        browser.session =
            attached["sessionId"].as_str().ok_or("Target.attachToTarget returned no sessionId")?.to_owned();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable", "Network.enable"] {
            browser.page_call(domain, json!({}))?;
        }
        Ok(browser)
    }

    /// Sends a command to our page's session.
    fn page_call(&self, method: &str, params: Value) -> Result<Value, String> {
        self.conn.call(method, params, Some(&self.session))
    }

    /// Opens `url` and waits for its load event (30 s at most); Err if it cannot be loaded or
    /// its server answers with an HTTP error status. A change of the hash alone (same
    /// document) returns once the navigation is done.
    pub fn goto(&self, url: &str) -> Result<(), String> {
        let loads_before = {
            let mut state = self.conn.state.lock().unwrap();
            state.document_status = None;
            state.loads
        };
        let result = self.page_call("Page.navigate", json!({ "url": url }))?;
        let status = || self.conn.state.lock().unwrap().document_status;
        if let Some(error) = result["errorText"].as_str() {
            let status = status().map(|s| format!(" (HTTP status {s})")).unwrap_or_default();
            return Err(format!("cannot open {url}: {error}{status}"));
        }
        if result.get("loaderId").is_none() {
            return Ok(()); // same-document navigation: no load event follows
        }
        let deadline = Instant::now() + LOAD_TIMEOUT;
        let mut state = self.conn.state.lock().unwrap();
        while state.loads == loads_before {
            let now = Instant::now();
            if state.closed || now >= deadline {
                return Err(format!("{url} did not finish loading within {LOAD_TIMEOUT:?}"));
            }
            state = self.conn.changed.wait_timeout(state, deadline - now).unwrap().0;
        }
        match state.document_status {
            Some(s) if s >= 400 => Err(format!("cannot open {url}: the server answered HTTP status {s}")),
            _ => Ok(()),
        }
    }

    /// Evaluates `js` in the page (awaiting it if it is a promise) and returns its value as
    /// JSON (`undefined` as null). A thrown exception comes back as Err with its message.
    pub fn eval(&self, js: &str) -> Result<Value, String> {
        let result = self.page_call(
            "Runtime.evaluate",
            json!({ "expression": js, "returnByValue": true, "awaitPromise": true, "userGesture": true }),
        )?;
        if let Some(details) = result.get("exceptionDetails") {
            return Err(format!("{js}: {}", describe_exception(details)));
        }
        Ok(result["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// Evaluates `js` every 50 ms until its value is truthy and returns that value; after
    /// `timeout`, Err with the last value (or error) and the start of the page's text.
    pub fn wait_for(&self, js: &str, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            // While a page is loading, evaluation may fail: look again.
            let last = match self.eval(js) {
                Ok(value) if truthy(&value) => return Ok(value),
                Ok(value) => format!("value {value}"),
                Err(e) => format!("error {e}"),
            };
            if Instant::now() >= deadline {
                let text = self.eval("document.body ? document.body.innerText : '(no body)'");
                let text =
                    text.map_or_else(|e| e, |t| t.as_str().map_or_else(|| t.to_string(), str::to_owned));
                return Err(format!(
                    "timed out after {timeout:?} waiting for `{js}`: last {last}\n--- page text ---\n{}",
                    truncate(&text, 3000)
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Clicks the first element matching the CSS `selector` (with `element.click()`);
    /// Err if there is none.
    pub fn click(&self, selector: &str) -> Result<(), String> {
        let selector_js = serde_json::to_string(selector).unwrap();
        let found = self.eval(&format!(
            "(() => {{ const el = document.querySelector({selector_js}); \
             if (!el) return false; el.scrollIntoView({{block: 'center'}}); el.click(); return true; }})()"
        ))?;
        if found != Value::Bool(true) {
            return Err(format!("no element matches {selector}"));
        }
        Ok(())
    }

    /// Saves a PNG of the top of the page, at most `max_height` CSS pixels high, at `path`.
    pub fn screenshot_png(&self, path: &Path, max_height: f64) -> Result<(), String> {
        let metrics = self.page_call("Page.getLayoutMetrics", json!({}))?;
        let size = &metrics["cssContentSize"];
        let width = size["width"].as_f64().unwrap_or(1400.0).max(1.0);
        let height = size["height"].as_f64().unwrap_or(1000.0).clamp(1.0, max_height.max(1.0));
        let shot = self.page_call(
            "Page.captureScreenshot",
            json!({
                "format": "png",
                "captureBeyondViewport": true,
                "clip": { "x": 0, "y": 0, "width": width, "height": height, "scale": 1 }
            }),
        )?;
        let data = shot["data"].as_str().ok_or("Page.captureScreenshot returned no data")?;
        let png = decode_base64(data)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(path, png).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// The page's uncaught exceptions, `console.error`/`console.assert` messages and
    /// Chromium's error log entries about it (such as Content-Security-Policy violations),
    /// oldest first. Failed network requests are not included.
    pub fn errors(&self) -> Vec<String> {
        self.conn.state.lock().unwrap().errors.clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask politely (Chromium then saves nothing and exits), then end the whole process
        // group, helpers included, whatever happened.
        let _ = self.conn.send("Browser.close", json!({}), None);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: kill(2) on the process group this Browser created (its id is the child's pid).
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.wait();
        // Helpers may still be writing for a moment after the kill.
        for _ in 0..50 {
            if std::fs::remove_dir_all(&self.dir).is_ok() || !self.dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Decodes standard base64 (with or without padding; whitespace is ignored).
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut bits, mut count) = (0u32, 0u32);
    for (at, c) in text.bytes().enumerate() {
        if c.is_ascii_whitespace() {
            continue;
        }
        if c == b'=' {
            // Padding ends the data; only more padding may follow.
            if text.as_bytes()[at..].iter().any(|&c| c != b'=' && !c.is_ascii_whitespace()) {
                return Err(format!("base64: data after the padding at byte {at}"));
            }
            break;
        }
        let v = value(c).ok_or_else(|| format!("base64: invalid byte {c:#04x} at {at}"))?;
        bits = (bits << 6) | v;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    if count >= 6 {
        return Err("base64: truncated (a lone final character)".to_owned());
    }
    Ok(out)
}

/// Launches a browser for a test, or says why there is none: panics when Chromium is
/// missing and `KOYO_REQUIRE_BROWSER` is set, else prints a "skipped" line and returns None.
pub fn browser_or_skip(test: &str) -> Option<Browser> {
    match Browser::launch() {
        Ok(Some(browser)) => Some(browser),
        Ok(None) if std::env::var_os("KOYO_REQUIRE_BROWSER").is_some() => panic!(
            "{test}: no Chromium found (looked at $CHROMIUM, else /usr/bin/chromium) and \
             KOYO_REQUIRE_BROWSER is set: install Debian's `chromium` package (apt-get install chromium)"
        ),
        Ok(None) => {
            eprintln!(
                "{test}: skipped: no Chromium found (apt-get install chromium; CI sets KOYO_REQUIRE_BROWSER=1)"
            );
            None
        }
        Err(e) => panic!("{test}: Chromium is installed but would not start: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn base64_decodes_what_the_standard_encodes() {
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(decode_base64("Zg==").unwrap(), b"f");
        assert_eq!(decode_base64("Zm8=").unwrap(), b"fo");
        assert_eq!(decode_base64("Zm9v").unwrap(), b"foo");
        assert_eq!(decode_base64("Zm9vYg").unwrap(), b"foob");
        assert_eq!(decode_base64("Zm9v\nYmFy").unwrap(), b"foobar");
        assert_eq!(decode_base64("iVBORw0KGgo=").unwrap(), b"\x89PNG\r\n\x1a\n");
        assert_eq!(decode_base64("+/+/").unwrap(), [0xfb, 0xff, 0xbf]);
        assert!(decode_base64("Zm9v!").is_err());
        assert!(decode_base64("Zg==Zg").is_err());
        assert!(decode_base64("Zm9vY").is_err());
    }

    /// Serves `page` at `/` (and a 404 elsewhere) on a thread; returns the base URL.
    fn serve(page: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request_line = String::new();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                // Skip the headers.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let (status, body) = if request_line.starts_with("GET / ") {
                    ("200 OK", page)
                } else {
                    ("404 Not Found", "no such page")
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        format!("http://127.0.0.1:{port}/")
    }

    const PAGE: &str = r#"<!doctype html>
<html><head><title>driver test</title></head>
<body>
<h1 id="title">Hello</h1>
<button id="later" onclick="setTimeout(() => { document.getElementById('title').textContent = 'Clicked'; }, 300)">later</button>
<button id="boom" onclick="throw new Error('boom on purpose')">boom</button>
<button id="complain" onclick="console.error('complaint', 42)">complain</button>
</body></html>"#;

    #[test]
    fn drives_a_page() {
        let Some(browser) = browser_or_skip("drives_a_page") else { return };
        let base = serve(PAGE);
        browser.goto(&base).unwrap();
        assert_eq!(browser.eval("document.title").unwrap(), json!("driver test"));
        assert_eq!(browser.eval("1 + 2").unwrap(), json!(3));
        assert_eq!(browser.eval("Promise.resolve({a: [1, 'x']})").unwrap(), json!({"a": [1, "x"]}));
        assert_eq!(browser.eval("undefined").unwrap(), Value::Null);
        let err = browser.eval("null.nope").unwrap_err();
        assert!(err.contains("TypeError"), "{err}");
        let err = browser.eval("Promise.reject(new Error('rejected here'))").unwrap_err();
        assert!(err.contains("rejected here"), "{err}");

        // A change that happens later is waited for.
        browser.click("#later").unwrap();
        let text = browser
            .wait_for(
                "document.getElementById('title').textContent === 'Clicked' && 'yes'",
                Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(text, json!("yes"));

        // A wait that never succeeds says what it saw.
        let err = browser.wait_for("document.title === 'other'", Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("last value false") && err.contains("Clicked"), "{err}");
        assert!(browser.click("#missing").unwrap_err().contains("#missing"));
        assert!(browser.errors().is_empty(), "{:?}", browser.errors());

        // Errors of the page are collected; a failed request is not one of them.
        browser.eval("fetch('/nothing-here').then(r => r.status)").unwrap();
        browser.click("#boom").unwrap();
        browser.click("#complain").unwrap();
        browser.wait_for("true", Duration::from_secs(1)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while browser.errors().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        let errors = browser.errors();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("boom on purpose"), "{errors:?}");
        assert!(errors[1].contains("console.error: complaint 42"), "{errors:?}");

        // The hash alone changes without a load.
        browser.goto(&format!("{base}#part")).unwrap();
        assert_eq!(browser.eval("location.hash").unwrap(), json!("#part"));

        let path = browser.dir.join("shot.png");
        browser.screenshot_png(&path, 4000.0).unwrap();
        let png = std::fs::read(&path).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000, "{} bytes", png.len());

        let err = browser.goto(&format!("{base}missing")).unwrap_err();
        assert!(err.contains("HTTP status 404"), "{err}");
        let err = browser.goto("http://127.0.0.1:9/").unwrap_err();
        assert!(err.contains("ERR_"), "{err}");
    }

    #[test]
    fn reports_content_security_policy_violations() {
        let Some(browser) = browser_or_skip("reports_content_security_policy_violations") else { return };
        let base = serve(
            r#"<!doctype html><html><head>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'">
</head><body><p id="p">text</p><script>document.title = 'ran';</script></body></html>"#,
        );
        browser.goto(&base).unwrap();
        browser.wait_for("document.readyState === 'complete'", Duration::from_secs(5)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while browser.errors().is_empty() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        let errors = browser.errors();
        assert!(errors.iter().any(|e| e.contains("Content Security Policy")), "{errors:?}");
        assert_ne!(browser.eval("document.title").unwrap(), json!("ran"));
    }
}
