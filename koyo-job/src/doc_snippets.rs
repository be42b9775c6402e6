//! The guides' Rust snippets as doc-tests, so that they compile against the real API and cannot
//! drift from it: `cargo test -p koyo-job --doc` builds every ```` ```rust ```` block of these
//! Markdown files (```` ```rust,no_run ```` ones are compiled but not run, as they need a
//! server). Blocks in other languages (`toml`, `sh`, `text`) are left alone.
//!
//! Compiled only when rustdoc collects doc-tests (`cfg(doctest)`): nothing here is part of the
//! crate. `docs/operations.md`, whose snippet mounts the admin router, is tested the same way
//! by `koyo-job-web`, which can depend on axum.
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
