//! Retries for calls that are safe to repeat: exponential backoff with full jitter, honouring a
//! provider's Retry-After. Only `rate-limited` and `unavailable` are retried; `create` only
//! when the plugin forwards the idempotency key (the key stays the same across attempts).

use std::future::Future;
use std::time::Duration;

use crate::error::{Error, ProviderError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. 1 disables retries.
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// The longest Retry-After honoured; a longer one fails the call instead of stalling it.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    pub fn none() -> Self {
        RetryPolicy {
            attempts: 1,
            ..Default::default()
        }
    }

    /// How long to wait before attempt `attempt + 1`, or None if the error is final.
    fn delay(&self, attempt: u32, err: &Error) -> Option<Duration> {
        if attempt + 1 >= self.attempts {
            return None;
        }
        match err.provider_error()? {
            ProviderError::RateLimited(r) => match r.retry_after_ms {
                Some(ms) => {
                    let d = Duration::from_millis(ms);
                    (d <= self.max_retry_after).then_some(d)
                }
                None => Some(self.backoff(attempt)),
            },
            ProviderError::Unavailable(_) => Some(self.backoff(attempt)),
            _ => None,
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_delay);
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// Runs `f` until it succeeds, fails finally, or attempts run out.
    pub async fn run<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut attempt = 0;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) => match self.delay(attempt, &e) {
                    Some(d) => {
                        tracing::info!(
                            call = what,
                            attempt = attempt + 1,
                            delay_ms = d.as_millis() as u64,
                            "retrying after: {e}"
                        );
                        tokio::time::sleep(d).await;
                        attempt += 1;
                    }
                    None => return Err(e),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::types::RateLimit;

    fn provider(e: ProviderError) -> Error {
        Error::Provider {
            plugin: "p".into(),
            call: "get",
            error: e,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after_and_gives_up_on_final_errors() {
        let policy = RetryPolicy::default();
        let mut n = 0;
        let started = tokio::time::Instant::now();
        let r: Result<u32, _> = policy
            .run("get", || {
                n += 1;
                let k = n;
                async move {
                    if k < 3 {
                        Err(provider(ProviderError::RateLimited(RateLimit {
                            retry_after_ms: Some(1500),
                            message: "slow".into(),
                        })))
                    } else {
                        Ok(k)
                    }
                }
            })
            .await;
        assert_eq!(r.unwrap(), 3);
        assert_eq!(started.elapsed(), Duration::from_millis(3000));

        let mut calls = 0;
        let r: Result<(), _> = policy
            .run("get", || {
                calls += 1;
                async { Err(provider(ProviderError::NotFound("x".into()))) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_after_the_attempt_limit() {
        let policy = RetryPolicy {
            attempts: 3,
            ..Default::default()
        };
        let mut calls = 0;
        let r: Result<(), _> = policy
            .run("get", || {
                calls += 1;
                async { Err(provider(ProviderError::Unavailable("down".into()))) }
            })
            .await;
        assert!(r.is_err());
        assert_eq!(calls, 3);
    }

    #[test]
    fn a_too_long_retry_after_is_final() {
        let policy = RetryPolicy::default();
        let e = provider(ProviderError::RateLimited(RateLimit {
            retry_after_ms: Some(3_600_000),
            message: String::new(),
        }));
        assert_eq!(policy.delay(0, &e), None);
    }
}
