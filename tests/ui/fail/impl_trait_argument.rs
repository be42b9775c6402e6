use koyo_job::define_job;

#[define_job]
async fn greet(name: impl Into<String>) {
    let _ = name.into();
}

fn main() {}
