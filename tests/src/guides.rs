//! The Rust snippets of the Markdown guides and of the published crates' READMEs, as doc-tests
//! of this package: `cargo test -p koyo-job-tests --doc` compiles every ```` ```rust ```` block
//! of the files below (```` ```rust,no_run ```` ones are compiled but not run, as they need a
//! server), so that they follow the real API. Blocks in other languages (`toml`, `sh`, `text`)
//! are left alone.
//!
//! They are tested here rather than in the crates they describe because these files lie outside
//! those crates' packages (`cargo package` would leave them behind), and because the snippets
//! need what a published crate must not depend on: `koyo-job`'s `testing` feature, a
//! multi-threaded runtime, and axum's server for the admin page's. This package is never
//! published, and its doc-tests see its dev-dependencies (`koyo-job-web`, axum).
//!
//! Compiled only when rustdoc collects doc-tests (`cfg(doctest)`).
//!
//! A snippet that shows a `#[tokio::test]` ends with one hidden line that makes the test's body
//! compile in a doc-test: rustc drops `#[test]` functions outside `cargo test` builds, unchecked,
//! so that line points `tokio::test` at `tokio::main`, which keeps the function and its body.

/// `README.md`.
#[doc = include_str!("../../README.md")]
pub struct Readme;

/// `docs/getting-started.md`.
#[doc = include_str!("../../docs/getting-started.md")]
pub struct GettingStarted;

/// `docs/concepts.md`.
#[doc = include_str!("../../docs/concepts.md")]
pub struct Concepts;

/// `docs/testing.md`.
#[doc = include_str!("../../docs/testing.md")]
pub struct Testing;

/// `docs/operations.md`, whose snippet mounts the admin router.
#[doc = include_str!("../../docs/operations.md")]
pub struct Operations;

/// `koyo-job/README.md`, the README of the `koyo-job` package.
#[doc = include_str!("../../koyo-job/README.md")]
pub struct KoyoJobReadme;

/// `koyo-job-macros/README.md`.
#[doc = include_str!("../../koyo-job-macros/README.md")]
pub struct KoyoJobMacrosReadme;

/// `koyo-job-migrate/README.md`.
#[doc = include_str!("../../koyo-job-migrate/README.md")]
pub struct KoyoJobMigrateReadme;

/// `koyo-job-web/README.md`.
#[doc = include_str!("../../koyo-job-web/README.md")]
pub struct KoyoJobWebReadme;
