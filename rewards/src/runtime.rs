//! Running async I/O rewards from the synchronous [`crate::Reward`] interface.
//!
//! Each async reward owns a multi-thread tokio runtime; `block_on` is called on a scoped
//! helper thread so that a caller that is itself inside a tokio runtime does not panic.

use std::future::Future;

/// Builds the runtime an async reward owns.
pub(crate) fn build(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
}

/// Drives `fut` to completion on `rt` from any thread, inside a tokio context or not.
pub(crate) fn block_on<F>(rt: &tokio::runtime::Runtime, fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| rt.block_on(fut))
            .join()
            // The future's own panics are caught by tokio tasks; a panic here is a bug
            // in this crate, and propagating it is the honest thing to do.
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
