//! The fingerprint of a request an idempotency key stands for: a key used
//! again with another request is refused.

use purser_core::Fingerprint;
use sha2::{Digest, Sha256};

/// The fingerprint of a request: method, path and the body as a JSON value
/// (keys sorted, so the same object written differently matches).
pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> Fingerprint {
    let canonical = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".to_vec()
    } else {
        serde_json::from_slice::<serde_json::Value>(body)
            .map(|value| serde_json::to_vec(&value).unwrap_or_default())
            .unwrap_or_else(|_| body.to_vec())
    };
    fingerprint_canonical(method, path, &canonical)
}

/// [`fingerprint`] of a body already in canonical form (keys sorted, as
/// `serde_json` writes a parsed object).
pub fn fingerprint_canonical(method: &str, path: &str, canonical: &[u8]) -> Fingerprint {
    let mut hasher = Sha256::new();
    hasher.update(method.as_bytes());
    hasher.update(b"\n");
    hasher.update(path.as_bytes());
    hasher.update(b"\n");
    hasher.update(canonical);
    let digest = hasher.finalize();
    let mut fingerprint = [0; 8];
    fingerprint.copy_from_slice(&digest[..8]);
    fingerprint
}
