#![deny(warnings)]

// Names the expansion uses internally do not collide with the user's.
use koyo_job::{define_job, retry};
use serde::{Deserialize, Serialize};

fn run() -> i64 {
    1
}

#[allow(non_upper_case_globals)]
static DESCRIPTOR: i64 = 2;

fn body() -> i64 {
    3
}

#[derive(Serialize, Deserialize)]
struct Probe(u8);

#[derive(Serialize, Deserialize)]
enum Stored {
    Yes,
}

type JobContext = String;

#[define_job]
async fn uses_module_items(ctx: i64, args: String, bytes: Vec<u8>, arg0: bool) {
    assert_eq!(run() + DESCRIPTOR + body(), 6);
    let _ = (ctx, args, bytes, arg0);
    if ctx < 0 {
        retry!();
    }
}

#[define_job]
async fn run_encoded(run: i64, job: String, probe: Probe, stored: Stored, context: JobContext) {
    let _ = (run, job, probe.0, context);
    let Stored::Yes = stored;
}

fn main() {
    let _ = uses_module_items(1, String::new(), Vec::new(), true);
    let _ = run_encoded(1, String::new(), Probe(0), Stored::Yes, JobContext::new());
}
