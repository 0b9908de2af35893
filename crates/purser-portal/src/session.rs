//! Portal session tokens: signed (HMAC-SHA256), expiring, and bound to one
//! account. Stateless: the token carries what it grants, and the signing key
//! (kept in the store's settings) is the only secret. Forms carry a CSRF
//! token derived from the session's nonce with the same key.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use purser_core::{AccountId, Timestamp};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Where the signing key is kept in the store's settings.
pub const SIGNING_KEY_SETTING: &str = "portal_signing_key";

const VERSION: u8 = 1;
/// Domain separation: a session signature can never be a CSRF token.
const SESSION_DOMAIN: &[u8] = b"purser-portal-session-v1\0";
const CSRF_DOMAIN: &[u8] = b"purser-portal-csrf-v1\0";
/// The longest `return_url` a session carries.
pub const MAX_RETURN_URL: usize = 2_048;

/// What a valid token grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub account: AccountId,
    pub expires_at: Timestamp,
    /// Random per session: makes every token unique and keys its CSRF token.
    pub nonce: [u8; 16],
    pub return_url: Option<String>,
}

/// Why a token was refused. The page shown says only "invalid" or
/// "expired": nothing that helps forge one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    Malformed,
    BadSignature,
    Expired,
}

/// Signs and checks tokens with one key.
#[derive(Clone)]
pub struct Signer {
    key: [u8; 32],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)")
    }
}

impl Signer {
    pub fn new(key: [u8; 32]) -> Signer {
        Signer { key }
    }

    /// A key from its stored hex form.
    pub fn from_hex(text: &str) -> Option<Signer> {
        let bytes = hex::decode(text.trim()).ok()?;
        Some(Signer::new(bytes.try_into().ok()?))
    }

    fn mac(&self, domain: &[u8], parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(domain);
        for part in parts {
            mac.update(part);
        }
        mac
    }

    /// The token for `session`: `base64url(payload).base64url(signature)`.
    pub fn sign(&self, session: &Session) -> String {
        let payload = encode(session);
        let signature = self
            .mac(SESSION_DOMAIN, &[&payload])
            .finalize()
            .into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    /// The session a token grants at `now`: its signature checked (in
    /// constant time) before anything in it is believed.
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<Session, Refused> {
        if token.len() > 4 * MAX_RETURN_URL {
            return Err(Refused::Malformed);
        }
        let (payload, signature) = token.split_once('.').ok_or(Refused::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| Refused::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| Refused::Malformed)?;
        self.mac(SESSION_DOMAIN, &[&payload])
            .verify_slice(&signature)
            .map_err(|_| Refused::BadSignature)?;
        let session = decode(&payload).ok_or(Refused::Malformed)?;
        if now >= session.expires_at {
            return Err(Refused::Expired);
        }
        Ok(session)
    }

    /// The CSRF token of a session's forms.
    pub fn csrf(&self, session: &Session) -> String {
        URL_SAFE_NO_PAD.encode(
            self.mac(CSRF_DOMAIN, &[&session.nonce])
                .finalize()
                .into_bytes(),
        )
    }

    /// Whether `given` is the session's CSRF token (constant time).
    pub fn check_csrf(&self, session: &Session, given: &str) -> bool {
        let Ok(given) = URL_SAFE_NO_PAD.decode(given) else {
            return false;
        };
        self.mac(CSRF_DOMAIN, &[&session.nonce])
            .verify_slice(&given)
            .is_ok()
    }
}

/// `version, expires_at (i64 BE), nonce, account (u8 length + bytes),
/// return_url (u16 length + bytes, absent when 0)`.
fn encode(session: &Session) -> Vec<u8> {
    let account = session.account.as_str().as_bytes();
    let url = session.return_url.as_deref().unwrap_or("").as_bytes();
    let mut out = Vec::with_capacity(1 + 8 + 16 + 1 + account.len() + 2 + url.len());
    out.push(VERSION);
    out.extend_from_slice(&session.expires_at.micros().to_be_bytes());
    out.extend_from_slice(&session.nonce);
    out.push(account.len() as u8);
    out.extend_from_slice(account);
    out.extend_from_slice(&(url.len() as u16).to_be_bytes());
    out.extend_from_slice(url);
    out
}

fn decode(bytes: &[u8]) -> Option<Session> {
    let (&version, rest) = bytes.split_first()?;
    if version != VERSION {
        return None;
    }
    let (expires, rest) = rest.split_first_chunk::<8>()?;
    let (nonce, rest) = rest.split_first_chunk::<16>()?;
    let (&length, rest) = rest.split_first()?;
    let (account, rest) = rest.split_at_checked(usize::from(length))?;
    let (url_length, rest) = rest.split_first_chunk::<2>()?;
    let (url, rest) = rest.split_at_checked(usize::from(u16::from_be_bytes(*url_length)))?;
    if !rest.is_empty() {
        return None;
    }
    let account = AccountId::parse(std::str::from_utf8(account).ok()?).ok()?;
    let url = std::str::from_utf8(url).ok()?;
    Some(Session {
        account,
        expires_at: Timestamp::from_micros(i64::from_be_bytes(*expires)),
        nonce: *nonce,
        return_url: (!url.is_empty()).then(|| url.to_owned()),
    })
}

/// Whether `url` may be a session's `return_url`: an absolute http(s) URL
/// of printable ASCII, so a link back can never be `javascript:`.
pub fn valid_return_url(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"));
    url.len() <= MAX_RETURN_URL
        && rest.is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        && url.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            account: AccountId::parse("acme").unwrap(),
            expires_at: Timestamp::from_micros(2_000_000),
            nonce: [7; 16],
            return_url: Some("https://app.example/settings".into()),
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let signer = Signer::new([1; 32]);
        let token = signer.sign(&session());
        assert_eq!(
            signer.verify(&token, Timestamp::from_micros(1_999_999)),
            Ok(session())
        );
        assert_eq!(
            signer.verify(&token, Timestamp::from_micros(2_000_000)),
            Err(Refused::Expired)
        );
    }

    #[test]
    fn another_key_or_any_changed_byte_is_refused() {
        let signer = Signer::new([1; 32]);
        let token = signer.sign(&session());
        let now = Timestamp::from_micros(0);
        assert_eq!(
            Signer::new([2; 32]).verify(&token, now),
            Err(Refused::BadSignature)
        );
        // Re-sign a payload naming another account with the wrong key: refused.
        let mut other = session();
        other.account = AccountId::parse("globex").unwrap();
        let forged = Signer::new([2; 32]).sign(&other);
        let (payload, _) = forged.split_once('.').unwrap();
        let (_, signature) = token.split_once('.').unwrap();
        assert_eq!(
            signer.verify(&format!("{payload}.{signature}"), now),
            Err(Refused::BadSignature)
        );
        for index in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).unwrap();
            if changed != token {
                assert!(signer.verify(&changed, now).is_err(), "byte {index}");
            }
        }
        for bad in ["", ".", "abc", "a.b.c", "!!!.???"] {
            assert!(signer.verify(bad, now).is_err());
        }
    }

    #[test]
    fn csrf_tokens_belong_to_their_session() {
        let signer = Signer::new([1; 32]);
        let csrf = signer.csrf(&session());
        assert!(signer.check_csrf(&session(), &csrf));
        let mut other = session();
        other.nonce = [8; 16];
        assert!(!signer.check_csrf(&other, &csrf));
        assert!(!signer.check_csrf(&session(), ""));
        assert!(!signer.check_csrf(&session(), "not base64!"));
    }

    #[test]
    fn return_urls_are_absolute_http() {
        assert!(valid_return_url("https://app.example/settings?tab=billing"));
        assert!(valid_return_url("http://localhost:3000/"));
        for bad in [
            "javascript:alert(1)",
            "//evil.example",
            "/settings",
            "https://",
            "https:///x",
            "https://a b",
            "data:text/html,hi",
        ] {
            assert!(!valid_return_url(bad), "{bad}");
        }
    }
}
