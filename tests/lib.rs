//! End-to-end tests live in this package's `e2e` test targets.
