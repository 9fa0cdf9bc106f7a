//! The open formats the audit log speaks, so that tools built on them (for
//! example Go's `golang.org/x/mod/sumdb/note` and `.../tlog`) verify it too:
//!
//! - C2SP `signed-note` with Ed25519 keys, and the verifier key form
//!   `<name>+<key id, 8 hex digits>+<base64(0x01 ‖ public key)>`;
//! - C2SP `tlog-checkpoint`: origin line, tree size, base64 root hash;
//! - C2SP `tlog-proof`: an inclusion proof and the checkpoint it is against.

use std::fmt::Write as _;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::merkle::Hash;

const ED25519: u8 = 0x01;
const SIG_PREFIX: &str = "\u{2014} ";
/// The first line of a `tlog-proof`.
pub const PROOF_HEADER: &str = "c2sp.org/tlog-proof@v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(pub String);

fn bad(msg: impl Into<String>) -> FormatError {
    FormatError(msg.into())
}

/// `SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]`.
fn key_id(name: &str, public: &[u8]) -> [u8; 4] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(name.as_bytes());
    ctx.update(b"\n");
    ctx.update(&[ED25519]);
    ctx.update(public);
    let d = ctx.finish();
    let mut id = [0u8; 4];
    id.copy_from_slice(&d.as_ref()[..4]);
    id
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

/// An Ed25519 note signer: the agent's audit key.
pub struct Signer {
    name: String,
    key: Ed25519KeyPair,
    id: [u8; 4],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A new key pair, returned with its PKCS#8 document (to be kept secret).
    pub fn generate(name: &str) -> Result<(Self, Vec<u8>), FormatError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| bad("cannot generate a key"))?;
        let signer = Self::from_pkcs8(name, pkcs8.as_ref())?;
        Ok((signer, pkcs8.as_ref().to_vec()))
    }

    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<Self, FormatError> {
        if !valid_name(name) {
            return Err(bad(format!("{name:?} is not a valid key name (no spaces, no '+')")));
        }
        let key = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| bad("not an Ed25519 PKCS#8 key"))?;
        let id = key_id(name, key.public_key().as_ref());
        Ok(Self {
            name: name.to_string(),
            key,
            id,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key, in the standard form that Go's `note.NewVerifier` reads.
    pub fn verifier_key(&self) -> String {
        let mut data = vec![ED25519];
        data.extend_from_slice(self.key.public_key().as_ref());
        format!("{}+{}+{}", self.name, hex::encode(self.id), B64.encode(data))
    }

    /// Signs `text` (which must end in a newline) into a signed note.
    pub fn sign(&self, text: &str) -> String {
        let sig = self.key.sign(text.as_bytes());
        let mut blob = self.id.to_vec();
        blob.extend_from_slice(sig.as_ref());
        format!("{text}\n{SIG_PREFIX}{} {}\n", self.name, B64.encode(blob))
    }
}

/// A note verifier for one Ed25519 key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    id: [u8; 4],
    public: Vec<u8>,
}

impl Verifier {
    /// Parses `<name>+<hex id>+<base64(0x01 ‖ key)>`, checking the id.
    pub fn parse(vkey: &str) -> Result<Self, FormatError> {
        let vkey = vkey.trim();
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id_hex), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("a verifier key has the form <name>+<key id>+<key>"));
        };
        if !valid_name(name) {
            return Err(bad(format!("{name:?} is not a valid key name")));
        }
        let mut id = [0u8; 4];
        if id_hex.len() != 8 || hex::decode_to_slice(id_hex, &mut id).is_err() {
            return Err(bad("the key id must be 8 hex digits"));
        }
        let data = B64.decode(data).map_err(|_| bad("the key is not base64"))?;
        match data.split_first() {
            Some((&ED25519, public)) if public.len() == 32 => {
                if key_id(name, public) != id {
                    return Err(bad("the key id does not match the key"));
                }
                Ok(Self {
                    name: name.to_string(),
                    id,
                    public: public.to_vec(),
                })
            }
            _ => Err(bad("only Ed25519 verifier keys (type 0x01, 32 bytes) are supported")),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id, 8 hex digits.
    pub fn key_id(&self) -> String {
        hex::encode(self.id)
    }

    /// Verifies a signed note and returns its text. The note must carry a
    /// valid signature by this key; signatures by other keys are ignored.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, FormatError> {
        if note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(bad("a note may contain no control characters but newlines"));
        }
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| bad("no blank line between the text and the signatures"))?;
        let (text, sigs) = (&note[..=split], &note[split + 2..]);
        if !sigs.ends_with('\n') {
            return Err(bad("the signature lines must end in a newline"));
        }
        let mut found = false;
        for line in sigs.lines() {
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or_else(|| bad("a signature line must start with an em dash and a space"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or_else(|| bad("a signature line is '— <name> <base64>'"))?;
            let blob = B64.decode(b64).map_err(|_| bad("a signature is not base64"))?;
            if name != self.name || blob.len() < 4 || blob[..4] != self.id {
                continue; // Another key's signature: ignored, as the spec says.
            }
            UnparsedPublicKey::new(&signature::ED25519, &self.public)
                .verify(text.as_bytes(), &blob[4..])
                .map_err(|_| bad(format!("the signature by {} does not verify", self.name)))?;
            found = true;
        }
        if found {
            Ok(text)
        } else {
            Err(bad(format!("the note is not signed by {}", self.name)))
        }
    }
}

/// A tree head: the body of a `tlog-checkpoint` note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: three lines, each ending in a newline.
    pub fn text(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root))
    }

    /// Parses a checkpoint note's text (extension lines after the third are allowed and ignored).
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("no origin line"))?;
        let size = lines.next().ok_or_else(|| bad("no tree size line"))?;
        if size.is_empty() || (size.len() > 1 && size.starts_with('0')) || !size.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("tree size {size:?} is not a decimal number")));
        }
        let size = size.parse().map_err(|_| bad("tree size out of range"))?;
        let root = lines.next().ok_or_else(|| bad("no root hash line"))?;
        let root = decode_hash(root).ok_or_else(|| bad("the root hash is not 32 bytes of base64"))?;
        Ok(Self {
            origin: origin.to_string(),
            size,
            root,
        })
    }
}

fn decode_hash(s: &str) -> Option<Hash> {
    let v = B64.decode(s).ok()?;
    v.try_into().ok()
}

/// A C2SP `tlog-proof`: entry `index` is in the tree the checkpoint signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlogProof {
    /// Optional, unauthenticated extra data: here, the entry itself.
    pub extra: Option<Vec<u8>>,
    pub index: u64,
    pub proof: Vec<Hash>,
    /// The signed checkpoint note, verbatim.
    pub checkpoint: String,
}

impl TlogProof {
    pub fn to_text(&self) -> String {
        let mut s = format!("{PROOF_HEADER}\n");
        if let Some(extra) = &self.extra {
            let _ = writeln!(s, "extra {}", B64.encode(extra));
        }
        let _ = writeln!(s, "index {}", self.index);
        for h in &self.proof {
            let _ = writeln!(s, "{}", B64.encode(h));
        }
        s.push('\n');
        s.push_str(&self.checkpoint);
        s
    }

    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let (head, checkpoint) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        if lines.next() != Some(PROOF_HEADER) {
            return Err(bad(format!("the first line must be {PROOF_HEADER}")));
        }
        let mut line = lines.next().ok_or_else(|| bad("no index line"))?;
        let mut extra = None;
        if let Some(e) = line.strip_prefix("extra ") {
            extra = Some(B64.decode(e).map_err(|_| bad("extra is not base64"))?);
            line = lines.next().ok_or_else(|| bad("no index line"))?;
        }
        let index = line
            .strip_prefix("index ")
            .filter(|i| !i.is_empty() && (i.len() == 1 || !i.starts_with('0')) && i.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|i| i.parse().ok())
            .ok_or_else(|| bad(format!("{line:?} is not 'index <decimal>'")))?;
        let proof = lines
            .map(|l| decode_hash(l).ok_or_else(|| bad(format!("proof line {l:?} is not a base64 SHA-256 hash"))))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            extra,
            index,
            proof,
            checkpoint: checkpoint.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_sign_and_verify_and_tampering_fails() {
        let (s, pkcs8) = Signer::generate("byoc-agent.example/audit/a1").expect("key");
        let v = Verifier::parse(&s.verifier_key()).expect("vkey");
        let cp = Checkpoint {
            origin: "byoc-agent.example/audit/a1".into(),
            size: 7,
            root: [9; 32],
        };
        let note = s.sign(&cp.text());
        assert_eq!(Checkpoint::parse(v.open(&note).expect("opens")).expect("parses"), cp);
        // The same key reloaded signs the same way (Ed25519 is deterministic).
        let again = Signer::from_pkcs8(s.name(), &pkcs8).expect("reload");
        assert_eq!(again.sign(&cp.text()), note);
        let tampered = note.replacen("\n7\n", "\n8\n", 1);
        assert!(v.open(&tampered).is_err());
        let (other, _) = Signer::generate(s.name()).expect("key");
        assert!(
            Verifier::parse(&other.verifier_key())
                .expect("vkey")
                .open(&note)
                .is_err()
        );
    }

    #[test]
    fn malformed_verifier_keys_and_checkpoints_are_refused() {
        for k in ["", "a+b", "a b+00000000+AQ==", "a+zz+AQ==", "a+00000000+AQ=="] {
            assert!(Verifier::parse(k).is_err(), "{k:?}");
        }
        for t in ["", "o\n", "o\n01\nAA==\n", "o\n1\nnot base64\n", "o\n-1\n"] {
            assert!(Checkpoint::parse(t).is_err(), "{t:?}");
        }
    }

    #[test]
    fn proofs_round_trip() {
        let p = TlogProof {
            extra: Some(b"{\"seq\":3}".to_vec()),
            index: 3,
            proof: vec![[1; 32], [2; 32]],
            checkpoint: "o\n4\nAAAA\n\n\u{2014} o AAAA\n".into(),
        };
        assert_eq!(TlogProof::parse(&p.to_text()).expect("parses"), p);
        assert!(TlogProof::parse("c2sp.org/tlog-proof@v1\nindex 01\n\nx").is_err());
    }
}
