//! Shared helpers for Keel's integration tests live in `tests/tests/common`.
