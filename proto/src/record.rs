//! Wire messages kept inside JSON-lines records (the agent's journal, the
//! reference control plane's state): the base64 of their protobuf encoding,
//! so a record stores exactly the bytes that were signed or sent.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// `m`, protobuf-encoded, as base64.
pub fn to_base64<M: prost::Message>(m: &M) -> String {
    B64.encode(m.encode_to_vec())
}

/// A stored message that cannot be read back; the variant says which layer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("not base64")]
    Base64(#[source] base64::DecodeError),
    #[error("not a valid message")]
    Message(#[source] prost::DecodeError),
}

/// What is wrong with a JSON-lines record that holds such messages (a line
/// of the agent's journal or of the control plane's state log).
#[derive(Debug, thiserror::Error)]
pub enum Damage {
    #[error("not a valid record")]
    Json(#[from] serde_json::Error),
    #[error("the message it holds")]
    Message(#[from] RecordError),
}

/// Decodes what [`to_base64`] wrote.
pub fn from_base64<M: prost::Message + Default>(text: &str) -> Result<M, RecordError> {
    let bytes = B64.decode(text).map_err(RecordError::Base64)?;
    M::decode(bytes.as_slice()).map_err(RecordError::Message)
}

#[cfg(test)]
mod tests {
    use crate::agent::v1::Operation;

    #[test]
    fn round_trips_and_says_what_is_wrong() {
        let op = Operation {
            id: "op-1".into(),
            sequence: 7,
            ..Default::default()
        };
        let text = super::to_base64(&op);
        assert_eq!(super::from_base64::<Operation>(&text), Ok(op));
        assert!(matches!(
            super::from_base64::<Operation>("%%"),
            Err(super::RecordError::Base64(_))
        ));
        assert!(matches!(
            super::from_base64::<Operation>("/w=="),
            Err(super::RecordError::Message(_))
        ));
    }
}
