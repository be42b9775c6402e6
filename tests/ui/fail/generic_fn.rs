use koyo_job::define_job;

#[define_job]
async fn send<T: serde::Serialize>(value: T) {
    let _ = value;
}

#[define_job]
async fn send_where(value: String)
where
    String: Clone,
{
    let _ = value;
}

fn main() {}
