#![deny(warnings)]

use koyo_job::define_job;

#[define_job]
async fn log_visit(path: String) {
    if path.is_empty() {
        return;
    }
    tokio::task::yield_now().await;
}

#[define_job]
async fn explicit_unit(path: String) -> () {
    let _ = path;
}

fn main() {
    let _ = log_visit("/".into());
    let _ = explicit_unit("/".into());
}
