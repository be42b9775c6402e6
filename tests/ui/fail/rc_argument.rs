use std::rc::Rc;

use koyo_job::define_job;

// Neither storable (serde's `rc` feature is off) nor `Send`: one error for each.
#[define_job]
async fn greet(name: Rc<String>, times: u32) {
    let _ = (name, times);
}

fn main() {}
