use koyo_job::define_job;

#[define_job]
async unsafe fn unsafe_job() {}

#[define_job]
async extern "C" fn extern_job() {}

fn main() {}
