use std::marker::PhantomData;

use koyo_job::define_job;
use serde::{Deserialize, Serialize};

// Storable, but not `Send`: the job's future could not go to a worker thread.
#[derive(Serialize, Deserialize)]
struct Handle {
    id: u64,
    not_send: PhantomData<*const ()>,
}

#[define_job]
async fn close(handle: Handle) {
    let _ = handle.id;
}

// The future is not `Send` either, which is not reported again; the return type still is.
#[define_job]
async fn reopen(handle: Handle) -> u8 {
    let _ = handle.id;
    0
}

fn main() {}
