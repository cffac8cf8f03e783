//! The HTTP endpoint of a run (axum): `/metrics` (Prometheus text format), `/healthz`, and
//! `/status` (JSON: step, phase, policy version, last metrics; in a data-parallel run, every
//! rank's live phase under `ranks`). It listens on 127.0.0.1 unless
//! the config says otherwise; exposing it is a deliberate choice. It runs on its own thread
//! with a small tokio runtime, so the training loop never waits for a scrape.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::RunMetrics;

/// Reads every rank's live phase (a data-parallel run's `/status` `ranks`).
pub type RankReport = Arc<dyn Fn() -> Value + Send + Sync>;

/// Shared between the loop and the server.
#[derive(Clone)]
struct AppState {
    metrics: Arc<RunMetrics>,
    status: Arc<Mutex<Value>>,
    ranks: Option<RankReport>,
}

/// A running endpoint; dropping it stops the server.
pub struct MetricsServer {
    /// The bound address (the real port when 0 was asked for).
    pub addr: SocketAddr,
    /// What `/status` returns; the loop replaces it after each step.
    pub status: Arc<Mutex<Value>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MetricsServer {
    /// Replaces the `/status` document.
    pub fn set_status(&self, value: Value) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = value;
    }

    /// Sets one key of the `/status` document (an object), keeping the others.
    pub fn patch_status(&self, key: &str, value: Value) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(map) = status.as_object_mut() {
            map.insert(key.to_owned(), value);
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds `listen` (e.g. `127.0.0.1:9464`; port 0 picks a free one) and serves `metrics`
/// (and `ranks` in `/status`, read at each request). A bind failure is returned here, not
/// swallowed by the server thread.
pub fn serve(
    listen: &str,
    metrics: Arc<RunMetrics>,
    ranks: Option<RankReport>,
) -> anyhow::Result<MetricsServer> {
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| anyhow::anyhow!("metrics endpoint: cannot listen on {listen}: {e}"))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let status = Arc::new(Mutex::new(serde_json::json!({"phase": "starting"})));
    let state = AppState {
        metrics,
        status: status.clone(),
        ranks,
    };
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/status", get(status_json))
        .with_state(state);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let thread = std::thread::Builder::new()
        .name("oxrl-metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let shutdown = async {
                    let _ = rx.await;
                };
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await;
            });
        })?;
    Ok(MetricsServer {
        addr,
        status,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn status_json(State(state): State<AppState>) -> Json<Value> {
    let mut status = state
        .status
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let (Some(ranks), Some(map)) = (&state.ranks, status.as_object_mut()) {
        map.insert("ranks".into(), ranks());
    }
    Json(status)
}
