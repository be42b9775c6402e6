use koyo_job::define_job;

#[define_job(queue = "mail'; drop table koyo_jobs; --")]
async fn quote() {}

#[define_job(queue = "mail;")]
async fn semicolon() {}

#[define_job(queue = "")]
async fn empty() {}

#[define_job(queue = "mél")]
async fn non_ascii() {}

#[define_job(name = "billing send invoice")]
async fn bad_job_name() {}

fn main() {}
