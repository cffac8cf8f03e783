//! Live run telemetry: Prometheus metrics (names in [`names`], values in [`RunMetrics`]) and
//! the HTTP endpoint serving them (`/metrics`, `/healthz`, `/status`).

pub mod gpu;
pub mod names;
pub mod run_metrics;
pub mod server;

pub use run_metrics::RunMetrics;
pub use server::{serve, MetricsServer};
