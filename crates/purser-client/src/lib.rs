//! purser-client: a typed HTTP client for the purser API (API.md).
//!
//! Requests are typed; answers come back as a status and the JSON body, so
//! callers (the CLI, the tests, `purser bench`) see exactly what the server
//! said, errors included. It holds no logic.

use serde::Serialize;
use serde_json::Value;

/// Why a request got no answer.
/// A reqwest client builder with rustls's ring provider installed (the
/// workspace builds reqwest with rustls and no default provider).
pub fn http_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("the answer was not JSON (status {status}): {text}")]
    NotJson { status: u16, text: String },
}

/// A status and a JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The error code of an error answer.
    pub fn error_code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }

    /// The error type of an error answer.
    pub fn error_type(&self) -> Option<&str> {
        self.body["error"]["type"].as_str()
    }

    /// A string field of the body.
    pub fn str(&self, field: &str) -> &str {
        self.body[field].as_str().unwrap_or_default()
    }
}

/// What a charge or hold costs.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Cost {
    Credits { credits: String },
    Task { task: String, quantity: String },
}

impl Cost {
    pub fn credits(credits: impl Into<String>) -> Cost {
        Cost::Credits {
            credits: credits.into(),
        }
    }

    pub fn task(task: impl Into<String>, quantity: impl Into<String>) -> Cost {
        Cost::Task {
            task: task.into(),
            quantity: quantity.into(),
        }
    }
}

/// `POST /v1/accounts/{id}/usage`.
#[derive(Clone, Debug, Serialize)]
pub struct Charge {
    #[serde(flatten)]
    pub cost: Cost,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl Charge {
    pub fn new(cost: Cost) -> Charge {
        Charge {
            cost,
            member: None,
            mode: None,
        }
    }
}

/// `POST /v1/accounts`.
#[derive(Clone, Debug, Serialize)]
pub struct NewAccount {
    pub id: String,
    pub tier: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
}

/// `POST /v1/accounts/{id}/tier`.
#[derive(Clone, Debug, Serialize)]
pub struct TierChange {
    pub tier: String,
    /// `full` (the default), `prorated` or `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proration: Option<String>,
}

/// `POST /v1/accounts/{id}/grants`: operator credits.
#[derive(Clone, Debug, Serialize)]
pub struct NewGrant {
    pub credits: String,
    pub reason: String,
    /// `promo` (the default) or `package`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// `POST /v1/accounts/{id}/holds`.
#[derive(Clone, Debug, Serialize)]
pub struct NewHold {
    #[serde(flatten)]
    pub cost: Cost,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<i64>,
}

/// `POST /v1/holds/{id}/capture`: the actual amount, or (neither) the whole hold.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Capture {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credits: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<String>,
}

/// `POST /v1/debits/{id}/reverse`: part of the debit, or (none) all not yet reversed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Reversal {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credits: Option<String>,
}

/// `POST /v1/api_keys`.
#[derive(Clone, Debug, Serialize)]
pub struct NewApiKey {
    /// Among `admin`, `usage`, `read`.
    pub scopes: Vec<String>,
}

/// What can happen to a purchase after it is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurchaseAction {
    Complete,
    Fail,
    Cancel,
    Refund,
}

impl PurchaseAction {
    /// The last segment of the action's path.
    pub fn as_str(self) -> &'static str {
        match self {
            PurchaseAction::Complete => "complete",
            PurchaseAction::Fail => "fail",
            PurchaseAction::Cancel => "cancel",
            PurchaseAction::Refund => "refund",
        }
    }
}

/// A list's query: `limit`, `starting_after` and filters such as `type`.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pairs: Vec<(String, String)>,
}

impl ListQuery {
    pub fn new() -> ListQuery {
        ListQuery::default()
    }

    /// Adds `name=value` when there is a value.
    pub fn with(mut self, name: &str, value: Option<impl ToString>) -> ListQuery {
        if let Some(value) = value {
            self.pairs.push((name.to_owned(), value.to_string()));
        }
        self
    }

    /// `""` or `?name=value&…`, percent-encoded.
    pub fn to_query_string(&self) -> String {
        let pairs: Vec<String> = self
            .pairs
            .iter()
            .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
            .collect();
        if pairs.is_empty() {
            String::new()
        } else {
            format!("?{}", pairs.join("&"))
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An empty JSON object, the body of actions that take no fields.
fn empty() -> Value {
    Value::Object(serde_json::Map::new())
}

/// A client for one server and API key.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    api_key: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base_url: impl Into<String>, api_key: impl Into<String>) -> Client {
        Client {
            base: base_url.into().trim_end_matches('/').to_owned(),
            api_key: api_key.into(),
            http: http_builder().build().expect("an HTTP client"),
        }
    }

    /// The same server with another key.
    pub fn with_key(&self, api_key: impl Into<String>) -> Client {
        Client {
            base: self.base.clone(),
            api_key: api_key.into(),
            http: self.http.clone(),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Any request: method, path, raw body, optional idempotency key.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        idempotency_key: Option<&str>,
    ) -> Result<Reply, ClientError> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.api_key);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|_| ClientError::NotJson { status, text })?
        };
        Ok(Reply { status, body })
    }

    pub async fn get(&self, path: &str) -> Result<Reply, ClientError> {
        self.send("GET", path, None, None).await
    }

    pub async fn post(&self, path: &str, body: &impl Serialize) -> Result<Reply, ClientError> {
        let body = serde_json::to_vec(body).expect("serializable");
        self.send("POST", path, Some(body), None).await
    }

    pub async fn post_idempotent(
        &self,
        path: &str,
        body: &impl Serialize,
        key: &str,
    ) -> Result<Reply, ClientError> {
        let body = serde_json::to_vec(body).expect("serializable");
        self.send("POST", path, Some(body), Some(key)).await
    }

    pub async fn create_account(&self, account: &NewAccount) -> Result<Reply, ClientError> {
        self.post("/v1/accounts", account).await
    }

    pub async fn account(&self, id: &str) -> Result<Reply, ClientError> {
        self.get(&format!("/v1/accounts/{id}")).await
    }

    pub async fn balance(&self, id: &str) -> Result<Reply, ClientError> {
        self.get(&format!("/v1/accounts/{id}/balance")).await
    }

    pub async fn charge(
        &self,
        id: &str,
        charge: &Charge,
        idempotency_key: Option<&str>,
    ) -> Result<Reply, ClientError> {
        let path = format!("/v1/accounts/{id}/usage");
        match idempotency_key {
            Some(key) => self.post_idempotent(&path, charge, key).await,
            None => self.post(&path, charge).await,
        }
    }

    pub async fn transactions(&self, id: &str, query: &str) -> Result<Reply, ClientError> {
        self.get(&format!("/v1/accounts/{id}/transactions{query}"))
            .await
    }

    /// The same server and key; every request gives up after `timeout`.
    pub fn with_timeout(&self, timeout: std::time::Duration) -> Client {
        let http = http_builder()
            .timeout(timeout)
            .build()
            .unwrap_or_else(|_| self.http.clone());
        Client {
            base: self.base.clone(),
            api_key: self.api_key.clone(),
            http,
        }
    }

    pub async fn accounts(&self, query: &ListQuery) -> Result<Reply, ClientError> {
        self.get(&format!("/v1/accounts{}", query.to_query_string()))
            .await
    }

    pub async fn change_tier(&self, id: &str, change: &TierChange) -> Result<Reply, ClientError> {
        self.post(&format!("/v1/accounts/{}/tier", encode(id)), change)
            .await
    }

    pub async fn grants(&self, id: &str) -> Result<Reply, ClientError> {
        self.get(&format!("/v1/accounts/{}/grants", encode(id)))
            .await
    }

    pub async fn issue_grant(&self, id: &str, grant: &NewGrant) -> Result<Reply, ClientError> {
        self.post(&format!("/v1/accounts/{}/grants", encode(id)), grant)
            .await
    }

    pub async fn void_grant(&self, grant_id: &str) -> Result<Reply, ClientError> {
        self.post(&format!("/v1/grants/{}/void", encode(grant_id)), &empty())
            .await
    }

    pub async fn place_hold(&self, id: &str, hold: &NewHold) -> Result<Reply, ClientError> {
        self.post(&format!("/v1/accounts/{}/holds", encode(id)), hold)
            .await
    }

    pub async fn hold(&self, hold_id: &str) -> Result<Reply, ClientError> {
        self.get(&format!("/v1/holds/{}", encode(hold_id))).await
    }

    pub async fn capture_hold(
        &self,
        hold_id: &str,
        capture: &Capture,
    ) -> Result<Reply, ClientError> {
        self.post(&format!("/v1/holds/{}/capture", encode(hold_id)), capture)
            .await
    }

    pub async fn release_hold(&self, hold_id: &str) -> Result<Reply, ClientError> {
        self.post(&format!("/v1/holds/{}/release", encode(hold_id)), &empty())
            .await
    }

    pub async fn create_purchase(&self, id: &str, package: &str) -> Result<Reply, ClientError> {
        let body = serde_json::json!({ "package": package });
        self.post(&format!("/v1/accounts/{}/purchases", encode(id)), &body)
            .await
    }

    pub async fn purchases(&self, id: &str) -> Result<Reply, ClientError> {
        self.get(&format!("/v1/accounts/{}/purchases", encode(id)))
            .await
    }

    pub async fn purchase_action(
        &self,
        purchase_id: &str,
        action: PurchaseAction,
    ) -> Result<Reply, ClientError> {
        let path = format!("/v1/purchases/{}/{}", encode(purchase_id), action.as_str());
        self.post(&path, &empty()).await
    }

    pub async fn create_api_key(&self, key: &NewApiKey) -> Result<Reply, ClientError> {
        self.post("/v1/api_keys", key).await
    }

    pub async fn api_keys(&self) -> Result<Reply, ClientError> {
        self.get("/v1/api_keys").await
    }

    pub async fn revoke_api_key(&self, key_id: &str) -> Result<Reply, ClientError> {
        self.post(&format!("/v1/api_keys/{}/revoke", encode(key_id)), &empty())
            .await
    }

    pub async fn reverse_debit(
        &self,
        debit_id: &str,
        reversal: &Reversal,
    ) -> Result<Reply, ClientError> {
        self.post(
            &format!("/v1/debits/{}/reverse", encode(debit_id)),
            reversal,
        )
        .await
    }
}
