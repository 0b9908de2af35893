//! API keys: stored as SHA-256 hashes of high-entropy secrets, compared in
//! constant time, with scopes `admin`, `usage` and `read`.

use purser_engine::Actor;
use std::sync::RwLock;

use axum::http::HeaderMap;
use purser_store::ApiKeyRecord;
use sha2::{Digest, Sha256};

use purser_wire::ApiError;

/// What an endpoint needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Configuration and corrections: only `admin`.
    Admin,
    /// Charges and holds: `usage` or `admin`.
    Usage,
    /// GETs: `read` or `admin`.
    Read,
    /// Balances: `read`, `usage` or `admin`.
    Balance,
    /// Any valid key: checked before a request's body is read.
    Any,
}

pub const SCOPES: [&str; 3] = ["admin", "usage", "read"];

#[derive(Debug)]
struct Key {
    hash: [u8; 32],
    scopes: Vec<String>,
    revoked: bool,
    id: String,
}

#[derive(Debug, Default)]
pub struct Keys {
    keys: RwLock<Vec<Key>>,
}

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A new secret: `sk_` and 32 random bytes in hex.
pub fn generate_secret() -> String {
    format!("sk_{}", random_hex(32))
}

pub fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).expect("the operating system provides randomness");
    hex::encode(buffer)
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Keys {
    pub fn load(records: &[ApiKeyRecord]) -> Keys {
        let keys = Keys::default();
        for record in records {
            keys.add(record);
        }
        keys
    }

    pub fn add(&self, record: &ApiKeyRecord) {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        keys.push(Key {
            hash: record.secret_hash,
            scopes: record.scopes.clone(),
            revoked: record.revoked_at.is_some(),
            id: record.id.clone(),
        });
    }

    pub fn revoke(&self, id: &str) {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        for key in keys.iter_mut().filter(|key| key.id == id) {
            key.revoked = true;
        }
    }

    pub fn contains_secret(&self, secret: &str) -> bool {
        let hash = hash_secret(secret);
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.iter().any(|key| constant_time_eq(&key.hash, &hash))
    }

    /// Checks the `Authorization: Bearer` header against the keys and scopes.
    /// The key's actor when it may do what `need` says.
    pub fn authorize(&self, headers: &HeaderMap, need: Need) -> Result<Actor, ApiError> {
        let secret = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(ApiError::unauthenticated)?;
        let hash = hash_secret(secret);
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        // Compare with every key, in constant time each, so timing says nothing.
        let mut found: Option<&Key> = None;
        for key in keys.iter() {
            if constant_time_eq(&key.hash, &hash) {
                found = Some(key);
            }
        }
        let key = found
            .filter(|key| !key.revoked)
            .ok_or_else(ApiError::unauthenticated)?;
        let has = |scope: &str| key.scopes.iter().any(|s| s == scope);
        let allowed = has("admin")
            || match need {
                Need::Admin => false,
                Need::Usage => has("usage"),
                Need::Read => has("read"),
                Need::Balance => has("read") || has("usage"),
                Need::Any => true,
            };
        if allowed {
            Ok(Actor::ApiKey(key.id.as_str().into()))
        } else {
            Err(ApiError::forbidden(match need {
                Need::Admin => "admin",
                Need::Usage => "usage",
                Need::Read | Need::Balance | Need::Any => "read",
            }))
        }
    }
}
