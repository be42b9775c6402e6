//! Procedural macros for [koyo-job](https://docs.rs/koyo-job). Use them through that crate
//! (`koyo_job::define_job`): the code they generate refers to it.
//!
//! ```
//! use koyo_job::define_job;
//!
//! #[define_job(queue = "mail")]
//! async fn send_welcome(user_id: i64) -> Result<(), std::io::Error> {
//!     println!("welcome, user {user_id}"); // runs on a worker
//!     Ok(())
//! }
//!
//! async fn signup() -> Result<(), koyo_job::Error> {
//!     send_welcome(42).await?; // stores the job; a worker serving "mail" runs it
//!     Ok(())
//! }
//! ```
//!
//! The stages live in their own modules: `args` reads the attribute's options, `model` checks
//! the function, `retry` rewrites `retry!` in its body, `expand` writes the stub, and
//! `fallback` writes a stand-in when there were errors.

#![warn(missing_docs)]

mod args;
mod errors;
mod expand;
mod fallback;
mod model;
mod retry;
mod spans;

use proc_macro::TokenStream;

/// Turns an `async fn` into a background job.
///
/// The function keeps its name and arguments, but calling it no longer runs the body: it returns
/// a [`Job`](https://docs.rs/koyo-job/latest/koyo_job/struct.Job.html) that, once awaited (or
/// enqueued on a broker or in a transaction), is stored in PostgreSQL and later run by a worker.
/// The arguments are serialized with the job, so they must be owned, serde-serializable types.
///
/// ```no_run
/// use koyo_job::{define_job, retry};
///
/// #[define_job(queue = "mail", priority = 10, max_attempts = 5, timeout = "30s")]
/// async fn send_welcome(user_id: i64, email: String) -> Result<(), std::io::Error> {
///     if email.is_empty() {
///         retry!(std::time::Duration::from_secs(60), "no address yet");
///     }
///     Ok(())
/// }
///
/// # async fn demo() -> Result<(), koyo_job::Error> {
/// // Stores the job; a worker listening on the "mail" queue runs it.
/// send_welcome(42, "a@example.com".into()).await?;
/// # Ok(()) }
/// ```
///
/// # Options
///
/// All optional, in any order:
///
/// | option | default | meaning |
/// |---|---|---|
/// | `queue = "mail"` | `"default"` | the queue the job is stored on; 1 to 64 ASCII letters, digits, `_`, `.`, `:`, `-` |
/// | `priority = 10` | `50` | 0 to 32767; lower runs first |
/// | `name = "billing.send_invoice"` | `module_path!()::fn_name` | the name stored with each job, which workers look the definition up by; set it to keep stored jobs runnable across a rename or a move; up to 200 of the same characters |
/// | `max_attempts = 5` | `20` | attempts before the job ends `failed`, at least 1 |
/// | `timeout = "30s"` | none | how long one attempt may run: a whole number of `ms`, `s`, `m` or `h` |
/// | `crate = "my_app::jobs"` | `::koyo_job` | where koyo-job is, for crates that re-export it |
///
/// # The function
///
/// It must be a free `async fn` without generics whose arguments are plain names with owned
/// types (at most 16), and it returns `()` or `Result<(), E>` with `E: Display`. Its future must
/// be `Send`. Inside its body — not in closures, `async` blocks or nested functions within it —
/// `retry!` ends the attempt and schedules another; the body is also the only place the job's
/// hidden context exists. Any macro named `retry!` in the body is taken to be koyo-job's.
#[proc_macro_attribute]
pub fn define_job(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::define_job(args.into(), item.into()).into()
}
