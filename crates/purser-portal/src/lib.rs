//! purser-portal: the credits dashboard and billing settings a customer
//! reaches through a portal session link.
//!
//! Owns portal sessions (signed, expiring tokens), the pages and their
//! charts and forecast, the forms' actions, the CSV export, and the payment
//! providers a purchase is paid through. It works over the engine's
//! interface ([`purser_engine::Engine`]) and the wire's JSON, like the API
//! does; it must not know the API's handlers, and never sees an API key.
//!
//! - The link carries a signed, expiring token granting one account
//!   ([`session`]); every page and every action checks it again, and the
//!   account always comes from the token, never from the URL or a form.
//! - Pages are rendered here from the same reads the API answers with
//!   (the account and purchase JSON of a shard, usage and transactions from
//!   the store), so the numbers a customer sees are the API's.
//! - Forms carry a CSRF token bound to the session and an idempotency nonce
//!   (a double click buys once); the `Origin` of a POST must be ours.
//! - Responses carry a strict Content-Security-Policy (no inline script or
//!   style), `no-store`, a same-origin referrer policy and no framing. No API key is ever
//!   involved: the browser only holds the session token.

// Helpers return the refusal page itself as their error: built at most once
// per request, its size does not matter.
#![allow(clippy::result_large_err)]

mod actions;
pub mod chart;
pub mod export;
pub mod forecast;
pub mod format;
mod pages;
pub mod payments;
pub mod session;
mod view;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use purser_core::{AccountId, Timestamp};
use purser_engine::Engine;
use purser_wire::ApiError;
use purser_wire::objects::PortalSession;

use crate::payments::PaymentProvider;
use session::{Refused, Session, Signer};

/// The portal: the engine it reads and acts through, its settings and its
/// signing key.
#[derive(Debug)]
pub struct Portal {
    pub engine: Engine,
    pub signer: Signer,
    /// The base of links, without a trailing slash; `None`: the request's Host.
    pub public_url: Option<String>,
    pub session_ttl_seconds: i64,
    pub payments: Arc<dyn PaymentProvider>,
    /// `portal.tier_changes`: customers may change their tier here.
    pub tier_changes: bool,
    /// The CSV exports running now.
    pub exports: export::Exports,
}

const CSS: &str = include_str!("assets/portal.css");
const JS: &str = include_str!("assets/portal.js");

/// The portal's route templates (metrics are labelled with them).
pub const ROUTE_PATHS: [&str; 10] = [
    "/portal/{token}",
    "/portal/{token}/billing",
    "/portal/{token}/transactions.csv",
    "/portal/{token}/tier",
    "/portal/{token}/purchases",
    "/portal/{token}/purchases/{id}/cancel",
    "/portal/{token}/purchases/{id}/pay",
    "/portal/{token}/auto_recharge",
    "/portal/assets/portal.css",
    "/portal/assets/portal.js",
];

/// What every handler gets.
type AppState = Arc<Portal>;

/// The portal's pages, actions and assets.
pub fn routes(portal: Arc<Portal>) -> Router {
    let [
        credits,
        billing,
        csv,
        tier,
        purchases,
        cancel,
        pay,
        recharge,
        style,
        script,
    ] = ROUTE_PATHS;
    let csp = content_security_policy(&*portal.payments);
    // Forms: the token is checked before the body is read, and the body
    // is small.
    let forms = Router::new()
        .route(tier, post(actions::change_tier))
        .route(purchases, post(actions::buy))
        .route(cancel, post(actions::cancel_purchase))
        .route(pay, post(actions::pay_purchase))
        .route(recharge, post(actions::set_auto_recharge))
        .route_layer(middleware::from_fn_with_state(portal.clone(), token_first))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES));
    Router::new()
        .route(credits, get(pages::credits_page))
        .route(billing, get(pages::billing_page))
        .route(csv, get(export::export_csv))
        .route(style, get(css))
        .route(script, get(js))
        .merge(forms)
        .layer(middleware::map_response(move |response: Response| {
            let csp = csp.clone();
            async move { security_headers(response, csp) }
        }))
        .with_state(portal)
}

/// The largest form body a portal page sends.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// A form's session token (`/portal/{token}/…`) is verified before its body
/// is read: without a valid link, nothing is buffered.
async fn token_first(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let token = request
        .uri()
        .path()
        .strip_prefix("/portal/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("");
    if let Err(page) = authenticate(&state, token) {
        return page;
    }
    next.run(request).await
}

/// The portal's Content-Security-Policy: nothing from elsewhere, and forms
/// post only here, or (through our redirect) to the payment provider's
/// checkout page.
fn content_security_policy(payments: &dyn PaymentProvider) -> HeaderValue {
    let mut form_action = String::from("'self'");
    for origin in payments.checkout_origins() {
        // Only plain origins: nothing that could end the directive.
        if origin
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":/.-[]".contains(&b))
        {
            form_action.push(' ');
            form_action.push_str(&origin);
        }
    }
    HeaderValue::from_str(&format!(
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
         form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    ))
    .expect("a header value of checked characters")
}

fn security_headers(mut response: Response, csp: HeaderValue) -> Response {
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    // The token is in the URL: it never leaves in a Referer to another site.
    // (`no-referrer` would also make browsers send `Origin: null` on our own
    // form posts, which the origin check refuses.)
    set(headers, header::REFERRER_POLICY, "same-origin");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    response
}

async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

fn html(status: StatusCode, markup: maud::Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// A page that says what went wrong, with nothing to act on.
fn problem(status: StatusCode, title: &str, message: &str) -> Response {
    html(status, view::problem(title, message))
}

/// 429: this account's pages are being loaded faster than they are served.
fn busy() -> Response {
    problem(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests",
        "These pages are being loaded very often just now. Please try again in a moment.",
    )
}

fn unavailable() -> Response {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Temporarily unavailable",
        "Your credits could not be loaded just now. Please try again in a moment.",
    )
}

/// The session a token grants now, or the page refusing it.
fn authenticate(state: &AppState, token: &str) -> Result<Session, Response> {
    state
        .signer
        .verify(token, state.engine.clock().now())
        .map_err(|refused| match refused {
            Refused::Expired => problem(
                StatusCode::UNAUTHORIZED,
                "This link has expired",
                "Billing links work for a limited time. Go back to the app and open billing again.",
            ),
            Refused::Malformed | Refused::BadSignature => problem(
                StatusCode::UNAUTHORIZED,
                "This link is not valid",
                "Open billing again from the app to get a new link.",
            ),
        })
}

/// A POST must come from one of our own pages: the `Origin` (sent by every
/// current browser on a form POST) must be this server's, and the form's
/// CSRF token must be the session's.
fn check_form(
    state: &AppState,
    headers: &HeaderMap,
    session: &Session,
    form: &HashMap<String, String>,
) -> Result<(), Response> {
    let refused = || {
        problem(
            StatusCode::FORBIDDEN,
            "This form could not be accepted",
            "It was sent from another page or has expired. Reload the page and try again.",
        )
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().map_err(|_| refused())?;
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let from_host = origin
            .split_once("://")
            .is_some_and(|(_, rest)| !host.is_empty() && rest == host);
        let from_public = state
            .public_url
            .as_deref()
            .is_some_and(|url| url.starts_with(origin) && origin_of(url) == origin);
        if !(from_host || from_public) {
            return Err(refused());
        }
    }
    match form.get("csrf") {
        Some(csrf) if state.signer.check_csrf(session, csrf) => Ok(()),
        _ => Err(refused()),
    }
}

/// `https://host:port` of a URL.
fn origin_of(url: &str) -> &str {
    let start = url.find("://").map_or(0, |at| at + 3);
    match url[start..].find('/') {
        Some(end) => &url[..start + end],
        None => url,
    }
}

/// Where links point: the configured public URL, else the Host the
/// operator's request came to.
pub fn base_url(state: &Portal, headers: &HeaderMap) -> String {
    if let Some(url) = &state.public_url {
        return url.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}

impl Portal {
    /// A new portal session for an account (`POST
    /// /v1/accounts/{id}/portal_sessions`): the answer's body. `headers` are
    /// the operator's request's, whose Host links point to when no public
    /// URL is configured.
    pub async fn create_session(
        &self,
        id: &str,
        return_url: Option<String>,
        headers: &HeaderMap,
    ) -> Result<Vec<u8>, ApiError> {
        let missing = || ApiError::not_found("account_not_found", "no such account");
        let account = AccountId::parse(id).map_err(|_| missing())?;
        self.engine.handle(&account).await?.ok_or_else(missing)?;
        let now = self.engine.clock().now();
        let expires_at = now
            .checked_add_seconds(self.session_ttl_seconds)
            .unwrap_or(Timestamp::NEVER);
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|_| ApiError::internal("no randomness"))?;
        let session = Session {
            account,
            expires_at,
            nonce,
            return_url: return_url.clone(),
        };
        let url = format!(
            "{}/portal/{}",
            base_url(self, headers),
            self.signer.sign(&session)
        );
        Ok(purser_wire::objects::portal_session(&PortalSession {
            id: &format!("ps_{}", hex::encode(nonce)),
            account: id,
            url: &url,
            return_url: return_url.as_deref(),
            expires_at,
            created_at: now,
        }))
    }
}

/// Random bytes as hex (form nonces).
fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).expect("the operating system provides randomness");
    hex::encode(buffer)
}
