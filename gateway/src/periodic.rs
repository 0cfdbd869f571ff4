//! The periodic-task loop, written once: retention, TLS reload and the tenant directory's
//! refresh each run a step every so often until the gateway shuts down.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Runs `step` at once and then every `every` until `shutdown`. A step that overruns skips
/// the ticks it missed rather than running several back to back.
pub fn spawn<F, Fut>(every: Duration, shutdown: CancellationToken, mut step: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // A step in progress at shutdown is finished (they are short), not cut.
            step().await;
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn runs_at_once_then_every_period_until_shutdown() {
        let runs = Arc::new(AtomicU32::new(0));
        let shutdown = CancellationToken::new();
        let counted = runs.clone();
        let task = spawn(Duration::from_millis(100), shutdown.clone(), move || {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
        // At 0, 100 and 200 ms; a loaded machine may run the last one late.
        let before = runs.load(Ordering::SeqCst);
        assert!((2..=3).contains(&before), "{before} runs in 250 ms");
        shutdown.cancel();
        task.await.unwrap();
        let stopped = runs.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            stopped,
            "nothing after shutdown"
        );
    }
}
