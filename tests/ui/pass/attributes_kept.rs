#![deny(warnings)]

use koyo_job::define_job;

/// Doc comments stay on the stub.
#[define_job]
#[allow(unused_variables)]
#[deprecated = "use `send_welcome_v2`"]
async fn send_welcome(user_id: i64) {}

#[define_job]
async fn inner_attributes(mut count: u32, #[allow(unused_variables)] note: String) {
    #![allow(unused_assignments)]
    count += 1;
    let mut last = 0;
    last = count;
    let _ = last;
}

#[define_job]
#[cfg(any())]
async fn compiled_out(value: NotAType) {}

fn main() {
    #[allow(deprecated)]
    let _ = send_welcome(1);
    let _ = inner_attributes(0, String::new());
}
