//! A small typed client for the few Stripe API calls purser makes
//! (customers, Checkout Sessions, payment methods, payment intents,
//! refunds, subscriptions), over
//! reqwest. Written here rather than taken from `async-stripe`: its stable
//! line is built on hyper 0.14 (ours is hyper 1 through reqwest 0.13) and
//! its hyper-1 line is a pre-release of about 150k generated lines, a heavy
//! build on two cores for a handful of calls.
//!
//! Requests are form-encoded the way Stripe's API reference writes them
//! (`metadata[purchase_id]=…`, `line_items[0][price_data][currency]=…`);
//! every POST carries an `Idempotency-Key`, so a retried call returns the
//! object the first one made. The secret key is sent as a bearer token and
//! kept out of `Debug`.

use std::time::Duration;

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use purser_portal::payments::PaymentError;
use serde_json::Value;

use crate::api::Secret;

/// Stripe's API, unless `payments.stripe.api_base` says otherwise.
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";

/// How long one Stripe call may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Form fields in order; names in Stripe's bracket notation.
#[derive(Debug, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn new() -> Form {
        Form::default()
    }

    /// Adds `name=value`.
    pub fn field(mut self, name: impl Into<String>, value: impl Into<String>) -> Form {
        self.0.push((name.into(), value.into()));
        self
    }

    /// The `application/x-www-form-urlencoded` body.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.extend(utf8_percent_encode(name, NON_ALPHANUMERIC));
            out.push('=');
            out.extend(utf8_percent_encode(value, NON_ALPHANUMERIC));
        }
        out
    }
}

/// The Stripe API under one secret key.
#[derive(Clone, Debug)]
pub struct StripeClient {
    http: reqwest::Client,
    base: String,
    key: Secret,
}

impl StripeClient {
    pub fn new(base: &str, key: Secret) -> Result<StripeClient, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .user_agent(concat!("purser/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("Stripe client: {e}"))?;
        Ok(StripeClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key,
        })
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST {base}{path}` with `form`, under `idempotency_key`.
    pub async fn post(
        &self,
        path: &str,
        form: &Form,
        idempotency_key: &str,
    ) -> Result<Value, PaymentError> {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&*self.key)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("idempotency-key", idempotency_key)
            .body(form.encode());
        answer(path, request.send().await).await
    }

    /// `GET {base}{path}` (the query already in `path`).
    pub async fn get(&self, path: &str) -> Result<Value, PaymentError> {
        let request = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&*self.key);
        answer(path, request.send().await).await
    }
}

/// A Stripe answer as its JSON object, or the error it is.
async fn answer(
    path: &str,
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<Value, PaymentError> {
    let unavailable = |message: String| PaymentError {
        code: "payment_provider_unavailable",
        message,
    };
    let response = sent.map_err(|e| unavailable(format!("Stripe {path}: {e}")))?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .map_err(|e| unavailable(format!("Stripe {path}: unreadable answer ({e})")))?;
    if status.is_success() {
        return Ok(body);
    }
    // The code first (`card_declined`, `authentication_required`…): what
    // callers tell apart.
    let message = format!(
        "Stripe {path} answered {status}: {} ({})",
        body["error"]["code"].as_str().unwrap_or("no_code"),
        body["error"]["message"].as_str().unwrap_or("no message")
    );
    if status.is_server_error() || status.as_u16() == 429 {
        return Err(unavailable(message));
    }
    let code = if status.as_u16() == 402 {
        // A card error: declined, or the bank wants the customer.
        "payment_declined"
    } else if status.as_u16() == 404 || body["error"]["code"] == "resource_missing" {
        "payment_provider_missing"
    } else {
        // A key refused, a request Stripe will not take: not the
        // customer's doing.
        "payment_provider_error"
    };
    Err(PaymentError { code, message })
}

/// `text` percent-encoded for a query string.
pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, NON_ALPHANUMERIC).to_string()
}

/// Currencies Stripe counts in thousandths (three-decimal currencies).
const THREE_DECIMAL: [&str; 5] = ["bhd", "jod", "kwd", "omr", "tnd"];

/// Currencies Stripe counts in whole units (no minor unit).
const ZERO_DECIMAL: [&str; 16] = [
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
    "xaf", "xof", "xpf",
];

/// A catalog price (exact micro-units) in the currency's minor units, as
/// Stripe counts amounts; `None` if it is not a whole number of them.
pub fn minor_units(price: purser_core::Credits, currency: &str) -> Option<u64> {
    let currency = currency.to_ascii_lowercase();
    let per_unit: u128 = if ZERO_DECIMAL.contains(&currency.as_str()) {
        1
    } else if THREE_DECIMAL.contains(&currency.as_str()) {
        1_000
    } else {
        100
    };
    let scaled = u128::from(price.micros()) * per_unit;
    if !scaled.is_multiple_of(1_000_000) {
        return None;
    }
    let minor = u64::try_from(scaled / 1_000_000).ok()?;
    // Stripe takes three-decimal amounts only in whole hundredths.
    if per_unit == 1_000 && !minor.is_multiple_of(10) {
        return None;
    }
    Some(minor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use purser_core::{Credits, Notation};

    fn credits(text: &str) -> Credits {
        Credits::parse(text, Notation::String).unwrap()
    }

    #[test]
    fn forms_encode_brackets_and_text() {
        let form = Form::new().field("metadata[purchase_id]", "pur_1").field(
            "line_items[0][price_data][product_data][name]",
            "Large & 50 %",
        );
        assert_eq!(
            form.encode(),
            "metadata%5Bpurchase%5Fid%5D=pur%5F1&line%5Fitems%5B0%5D%5Bprice%5Fdata%5D%5Bproduct%5Fdata%5D%5Bname%5D=Large%20%26%2050%20%25"
        );
    }

    #[test]
    fn prices_are_counted_in_minor_units() {
        assert_eq!(minor_units(credits("9"), "usd"), Some(900));
        assert_eq!(minor_units(credits("19.99"), "EUR"), Some(1999));
        assert_eq!(minor_units(credits("500"), "jpy"), Some(500));
        assert_eq!(minor_units(credits("0.001"), "usd"), None);
        assert_eq!(minor_units(credits("0.5"), "jpy"), None);
        assert_eq!(minor_units(credits("5"), "KWD"), Some(5_000));
        assert_eq!(minor_units(credits("5.005"), "kwd"), None);
    }
}
