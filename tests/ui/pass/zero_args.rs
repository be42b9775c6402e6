#![deny(warnings)]

use koyo_job::define_job;

#[define_job(queue = "maintenance")]
async fn vacuum() {}

fn main() {
    let job: koyo_job::Job<()> = vacuum();
    assert_eq!(job.queue(), "maintenance");
}
