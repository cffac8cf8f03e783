//! End-to-end tests live in this directory as `[[test]]` targets.
