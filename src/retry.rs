//! Retrying start-up steps that need the API server, which may not be there yet.

use tokio_util::sync::CancellationToken;

/// Runs `attempt` until it succeeds, waiting 1 s after the first failure and twice as long after
/// each next one (at most 30 s), logging every failure; `None` once `stop` is cancelled.
pub async fn until_it_works<
    T,
    E: std::fmt::Display,
    F: Future<Output = std::result::Result<T, E>>,
>(
    what: &str,
    stop: &CancellationToken,
    mut attempt: impl FnMut() -> F,
) -> Option<T> {
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return None,
            result = attempt() => result,
        };
        match result {
            Ok(value) => return Some(value),
            Err(e) => tracing::error!(error = %e, retry_in = ?wait, "cannot {what} yet; retrying"),
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn start_up_retries_until_it_works_or_stops() {
        let stop = CancellationToken::new();
        let mut attempts = 0;
        let value = until_it_works("count", &stop, || {
            attempts += 1;
            let now = attempts;
            async move { if now < 2 { Err("not yet") } else { Ok(now) } }
        })
        .await;
        assert_eq!(value, Some(2));
        stop.cancel();
        let never = until_it_works("fail", &stop, || async { Err::<(), _>("down") }).await;
        assert_eq!(never, None);
    }
}
