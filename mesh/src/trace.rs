//! Trace ids: one per request entering the mesh, carried by every call it
//! causes, on this node (a task-local while a handler runs) and on others
//! (a field of the call frame), so one request can be followed through the
//! logs of every node it touched.

use std::future::Future;

tokio::task_local! {
    static TRACE: u64;
}

/// A new trace id.
pub(crate) fn fresh() -> u64 {
    rand::random::<u64>() | 1
}

/// The trace of the request being handled, or a new one outside any.
pub(crate) fn current() -> u64 {
    TRACE.try_with(|t| *t).unwrap_or_else(|_| fresh())
}

/// Runs `work` as part of trace `trace`.
pub(crate) async fn scope<F: Future>(trace: u64, work: F) -> F::Output {
    TRACE.scope(trace, work).await
}

/// How a trace id is written in logs.
pub(crate) fn show(trace: u64) -> String {
    format!("{trace:016x}")
}
