//! Compile-time behaviour of `#[define_job]` and `retry!`: what is accepted, and the error for
//! each kind of misuse (snapshots in `ui/fail/*.stderr`; regenerate with `TRYBUILD=overwrite`).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/fail/*.rs");
    t.pass("ui/pass/*.rs");
}
