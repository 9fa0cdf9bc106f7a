//! The connection task: keeps one [`Session`] alive, reconnecting with
//! capped, jittered exponential backoff, and says in `status.json` why it is
//! disconnected.

use std::time::Duration;

use backon::BackoffBuilder as _;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::dial::ConnectionConfig;
use crate::session::{Ended, Session, SessionError};

/// A session that lasted this long counts as healthy for the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// Runs until `shutdown`, or until the journal cannot record what the
/// agent accepted or answered: that is not a connection problem that
/// reconnecting fixes, so it ends the agent (the service manager restarts
/// it, and the journal is opened afresh) rather than redial for ever.
pub async fn run(
    session: &Session,
    c: &ConnectionConfig,
    shutdown: &CancellationToken,
) -> Result<(), crate::intake::IntakeError> {
    let builder = backon::ExponentialBuilder::default()
        .with_min_delay(c.min_backoff)
        .with_max_delay(c.max_backoff)
        .with_jitter()
        .without_max_times();
    let mut backoff = builder.build();
    while !shutdown.is_cancelled() {
        let mut connected = false;
        let began = tokio::time::Instant::now();
        let result = session.run(shutdown, &mut connected).await;
        // Start the backoff over only after a session that stayed up a while: a
        // control plane that welcomes and then breaks the session at once must
        // not be redialled in a tight loop.
        if connected && began.elapsed() >= HEALTHY_SESSION {
            backoff = builder.build();
        }
        let error = match result {
            Ok(Ended::Shutdown) => return Ok(()),
            Err(SessionError::Intake(e)) => return Err(e),
            Ok(Ended::ByControlPlane) => "control plane closed the session".to_string(),
            Err(SessionError::Connect(e)) if e.is_certificate_rejected() => format!(
                "{}: the control plane's certificate does not chain to a CA this agent trusts (sha256 {}); \
                 if the control plane finished a CA rotation (`byoc-control ca finish`) while this agent was \
                 not connected, enroll the agent again with a new token",
                byoc_errors::chain(&e),
                session.credentials.trusted_cas().join(", ")
            ),
            Err(e) => byoc_errors::chain(&e),
        };
        let wait = capped(backoff.next(), c.max_backoff);
        warn!(error = %error, retry_in_ms = wait.as_millis() as u64, "disconnected from the control plane");
        let now = session.clock.now_ms();
        session.status.update(|s| {
            s.connection = "disconnected".into();
            s.since_unix_ms = now;
            s.last_error = Some(error.clone());
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
    Ok(())
}

/// The next wait, never above `max`: the backoff's jitter is added on top
/// of its delay, so without this a `max_backoff` of 5 s gave waits of 9.6 s.
fn capped(next: Option<Duration>, max: Duration) -> Duration {
    next.unwrap_or(max).min(max)
}

#[cfg(test)]
mod tests {
    use backon::BackoffBuilder as _;
    use std::time::Duration;

    #[test]
    fn max_backoff_is_a_cap_even_with_jitter() {
        let max = Duration::from_secs(5);
        let mut b = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(max)
            .with_jitter()
            .without_max_times()
            .build();
        let waits: Vec<Duration> = (0..200).map(|_| super::capped(b.next(), max)).collect();
        assert!(waits.iter().all(|w| *w <= max), "{waits:?}");
        assert!(waits.contains(&max), "the cap is reached: {waits:?}");
    }
}
