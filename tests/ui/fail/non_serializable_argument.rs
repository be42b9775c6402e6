use koyo_job::define_job;

struct Invoice {
    total: i64,
}

#[define_job]
async fn send_invoice(customer: String, invoice: Invoice) {
    let _ = (customer, invoice.total);
}

fn main() {}
