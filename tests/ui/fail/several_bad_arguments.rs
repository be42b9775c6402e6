use std::cell::RefCell;
use std::rc::Rc;

use koyo_job::define_job;
use serde::Serialize;

struct Invoice;

#[derive(Serialize)]
struct Receipt;

// Each argument is reported at its own type, for each thing it lacks.
#[define_job]
async fn settle(invoice: Invoice, id: i64, receipt: Receipt, notes: Rc<RefCell<Vec<String>>>) {
    let _ = (invoice, id, receipt, notes);
}

fn main() {}
