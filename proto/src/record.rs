//! Wire messages kept inside JSON-lines records (the agent's journal, the
//! reference control plane's state): the base64 of their protobuf encoding,
//! so a record stores exactly the bytes that were signed or sent.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// `m`, protobuf-encoded, as base64.
pub fn to_base64<M: prost::Message>(m: &M) -> String {
    B64.encode(m.encode_to_vec())
}

/// Decodes what [`to_base64`] wrote; the error says which layer failed.
pub fn from_base64<M: prost::Message + Default>(text: &str) -> Result<M, String> {
    let bytes = B64.decode(text).map_err(|e| format!("not base64: {e}"))?;
    M::decode(bytes.as_slice()).map_err(|e| format!("not a valid message: {e}"))
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
        assert!(
            super::from_base64::<Operation>("%%")
                .err()
                .unwrap_or_default()
                .starts_with("not base64")
        );
        assert!(
            super::from_base64::<Operation>("/w==")
                .err()
                .unwrap_or_default()
                .starts_with("not a valid message")
        );
    }
}
