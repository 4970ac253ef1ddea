//! Deadlines for io_uring work. A pending tokio-uring read is never dropped (that would lose
//! bytes), so a deadline does not cancel the work: it runs an action that makes the work
//! finish on its own, such as shutting a socket down, and then waits for it.

use std::future::Future;
use std::time::Duration;

/// Runs `work` to completion. If `limit` passes first, calls `on_expiry` (which must make
/// `work` complete soon) and reports `true` alongside the output.
pub async fn with_deadline<F: Future>(
    limit: Option<Duration>,
    work: F,
    on_expiry: impl FnOnce(),
) -> (F::Output, bool) {
    let Some(limit) = limit else {
        return (work.await, false);
    };
    tokio::pin!(work);
    tokio::select! {
        biased;
        out = &mut work => (out, false),
        _ = tokio::time::sleep(limit) => {
            on_expiry();
            (work.await, true)
        }
    }
}
