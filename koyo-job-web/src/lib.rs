//! koyo-job's admin page and JSON API (work in progress).
