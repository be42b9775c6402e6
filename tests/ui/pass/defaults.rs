#![deny(warnings)]

use koyo_job::define_job;

#[define_job]
async fn cleanup() {}

mod billing {
    #[koyo_job::define_job(priority = 0)]
    pub(crate) async fn send_invoice(invoice_id: i64) {
        let _ = invoice_id;
    }
}

fn main() {
    let job = cleanup();
    assert_eq!(job.name(), concat!(module_path!(), "::cleanup"));
    assert_eq!(job.queue(), "default");
    assert_eq!(job.priority(), 50);

    let job = billing::send_invoice(7);
    assert!(job.name().ends_with("::billing::send_invoice"));
    assert_eq!(job.priority(), 0);
}
