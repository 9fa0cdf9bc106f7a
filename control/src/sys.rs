//! The system's clock and random generator, as the control plane uses them.

use std::time::{SystemTime, UNIX_EPOCH};

use tonic::Status;

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The system's random generator failed: nothing that needs a secret or a
/// unique id can be made (fail closed: an all-zero token would be guessable).
#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed")]
pub struct RngUnavailable;

impl From<RngUnavailable> for Status {
    fn from(e: RngUnavailable) -> Self {
        Status::internal(e.to_string())
    }
}

pub fn random_hex(bytes: usize) -> Result<String, RngUnavailable> {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| RngUnavailable)?;
    Ok(hex::encode(buf))
}
