//! A local HTTP server standing in for Stripe's API, for tests (nothing
//! else on this network reaches Stripe). It answers the calls purser makes
//! the way Stripe's API reference describes them (objects with `id` and
//! `object`, errors as `{"error": {"type", "message"}}`, `Idempotency-Key`
//! replays returning the first answer and refusing another request), and
//! records every request, form fields decoded, for the test to check.
//!
//! Its Checkout page (`/c/pay/<session>`) shows the session as JSON, so a
//! browser test can see where Buy led and what to pay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::{Value, json};

/// One request as the stand-in received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub idempotency_key: Option<String>,
    pub form: Vec<(String, String)>,
}

impl Recorded {
    /// The value of form field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A remembered idempotent request: its fields, and the answer's status and body.
type Replay = (Vec<(String, String)>, u16, Value);

#[derive(Default)]
struct Inner {
    requests: Vec<Recorded>,
    /// Idempotency key → (the request's fields, the answer).
    replays: HashMap<String, Replay>,
    objects: HashMap<String, Value>,
    next: u64,
    /// Answer every API call with this status (a Stripe outage).
    outage: Option<u16>,
    /// Saved cards by customer: (pm id, last4, how charging it goes).
    cards: HashMap<String, (String, String, CardBehavior)>,
}

/// How charging a saved card goes, as Stripe's test cards behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardBehavior {
    /// `pm_card_visa`: succeeds.
    Succeeds,
    /// `pm_card_authenticationRequired`: 402 `authentication_required`.
    NeedsAuthentication,
    /// `pm_card_chargeDeclined`: 402 `card_declined`.
    Declined,
}

#[derive(Clone)]
struct Standin {
    key: String,
    base: String,
    inner: Arc<Mutex<Inner>>,
}

/// The running stand-in (stops with the test process).
#[derive(Clone)]
pub struct StripeStandin {
    /// `http://127.0.0.1:<port>`: `payments.stripe.api_base`.
    pub base: String,
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for StripeStandin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeStandin")
            .field("base", &self.base)
            .finish()
    }
}

impl StripeStandin {
    /// Starts on a port of its own, taking `secret_key` as the only key.
    pub fn start(secret_key: &str) -> StripeStandin {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the stand-in");
        listener.set_nonblocking(true).expect("nonblocking");
        let base = format!("http://{}", listener.local_addr().expect("its address"));
        let inner = Arc::new(Mutex::new(Inner::default()));
        let standin = Standin {
            key: secret_key.to_owned(),
            base: base.clone(),
            inner: inner.clone(),
        };
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let app = Router::new()
                    .route("/v1/customers", post(create_customer))
                    .route("/v1/checkout/sessions", post(create_session))
                    .route("/v1/checkout/sessions/{id}/expire", post(expire_session))
                    .route("/v1/payment_methods", get(list_payment_methods))
                    .route("/v1/payment_intents", post(create_payment_intent))
                    .route("/v1/refunds", post(create_refund))
                    .route("/v1/customers/{id}", get(read_object))
                    .route("/v1/subscriptions", get(list_subscriptions))
                    .route("/v1/payment_intents/{id}", get(read_object))
                    .route(
                        "/v1/subscriptions/{id}",
                        get(read_object).post(update_subscription),
                    )
                    .route("/c/pay/{id}", get(checkout_page))
                    .with_state(standin);
                axum::serve(listener, app)
                    .await
                    .expect("the stand-in serves");
            });
        });
        StripeStandin { base, inner }
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// The requests to `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|request| request.path == path)
            .collect()
    }

    /// An object the stand-in made (a customer, a session…).
    pub fn object(&self, id: &str) -> Option<Value> {
        self.inner.lock().unwrap().objects.get(id).cloned()
    }

    /// Saves a card (`last4`) on `customer`, as a Checkout with
    /// `setup_future_usage` does, charged the way `behavior` says.
    pub fn save_card(&self, customer: &str, last4: &str, behavior: CardBehavior) {
        let mut inner = self.inner.lock().unwrap();
        inner.next += 1;
        let id = format!("pm_standin{}", inner.next);
        inner
            .cards
            .insert(customer.to_owned(), (id, last4.to_owned(), behavior));
    }

    /// Marks a session paid (its customer went through the page).
    pub fn complete_session(&self, id: &str) {
        if let Some(session) = self.inner.lock().unwrap().objects.get_mut(id) {
            session["status"] = json!("complete");
            session["payment_status"] = json!("paid");
        }
    }

    /// Marks a subscription-mode session paid and makes its subscription
    /// (active, with the session's price, and the metadata of
    /// `subscription_data`), as Checkout does; answers the subscription's id.
    pub fn complete_subscription_session(&self, id: &str) -> String {
        let mut inner = self.inner.lock().unwrap();
        let session = inner.objects.get(id).cloned().expect("the session");
        assert_eq!(session["mode"], "subscription", "a subscription session");
        inner.next += 1;
        let subscription = format!("sub_standin{}", inner.next);
        let item = format!("si_standin{}", inner.next);
        let created = 1_800_000_000 + inner.next;
        inner.objects.insert(
            subscription.clone(),
            json!({
                "id": subscription,
                "object": "subscription",
                "customer": session["customer"],
                "status": "active",
                "cancel_at_period_end": false,
                "created": created,
                // Anchored where the Checkout said, else a month on.
                "current_period_end": session["billing_cycle_anchor"]
                    .as_str()
                    .and_then(|anchor| anchor.parse::<i64>().ok())
                    .unwrap_or(1_900_000_000),
                "items": {"object": "list", "data": [
                    {"id": item, "object": "subscription_item", "quantity": 1,
                     "price": {"id": session["line_items_price"], "object": "price"}}
                ]},
                "metadata": session["subscription_metadata"],
            }),
        );
        let session = inner.objects.get_mut(id).expect("the session");
        session["status"] = json!("complete");
        session["payment_status"] = json!("paid");
        session["subscription"] = json!(subscription);
        subscription
    }

    /// Ends a subscription now, as Stripe does at the end of a period it
    /// was canceled for (or when the dashboard cancels it).
    pub fn end_subscription(&self, id: &str) {
        if let Some(subscription) = self.inner.lock().unwrap().objects.get_mut(id) {
            subscription["status"] = json!("canceled");
        }
    }

    /// Changes how the customer's saved card is charged.
    pub fn card_behaves(&self, customer: &str, behavior: CardBehavior) {
        if let Some(card) = self.inner.lock().unwrap().cards.get_mut(customer) {
            card.2 = behavior;
        }
    }

    /// From now on every API call is answered `status` (`None`: normally).
    pub fn set_outage(&self, status: Option<u16>) {
        self.inner.lock().unwrap().outage = status;
    }
}

fn stripe_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"type": kind, "message": message}})),
    )
        .into_response()
}

/// Stripe's 401, unless the request carries the stand-in's key.
fn unauthorized(standin: &Standin, headers: &HeaderMap) -> Option<Response> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    (bearer != format!("Bearer {}", standin.key)).then(|| {
        stripe_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "Invalid API Key provided",
        )
    })
}

/// Records a GET, checks the key and the outage; the state to answer from,
/// or the refusal.
fn begin_get<'a>(
    standin: &'a Standin,
    headers: &HeaderMap,
    path: &str,
    query: Vec<(String, String)>,
) -> Result<std::sync::MutexGuard<'a, Inner>, Box<Response>> {
    let mut inner = standin.inner.lock().unwrap();
    inner.requests.push(Recorded {
        method: "GET".into(),
        path: path.into(),
        idempotency_key: None,
        form: query,
    });
    if let Some(refusal) = unauthorized(standin, headers) {
        return Err(Box::new(refusal));
    }
    if let Some(status) = inner.outage {
        return Err(Box::new(stripe_error(
            StatusCode::from_u16(status).unwrap(),
            "api_error",
            "the stand-in is down",
        )));
    }
    Ok(inner)
}

/// Records the request, checks the key, replays an idempotent one; else
/// makes the object with `make` and remembers the answer.
fn handle(
    standin: &Standin,
    headers: &HeaderMap,
    path: &str,
    form: Vec<(String, String)>,
    make: impl FnOnce(&mut Inner, &HashMap<String, String>) -> Result<Value, Box<Response>>,
) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut inner = standin.inner.lock().unwrap();
    inner.requests.push(Recorded {
        method: "POST".into(),
        path: path.into(),
        idempotency_key: key.clone(),
        form: form.clone(),
    });
    if let Some(refusal) = unauthorized(standin, headers) {
        return refusal;
    }
    if let Some(status) = inner.outage {
        return stripe_error(
            StatusCode::from_u16(status).unwrap(),
            "api_error",
            "the stand-in is down",
        );
    }
    if let Some((fields, status, answer)) = key.as_ref().and_then(|key| inner.replays.get(key)) {
        if *fields != form {
            return stripe_error(
                StatusCode::BAD_REQUEST,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same parameters they were first used with.",
            );
        }
        return (StatusCode::from_u16(*status).unwrap(), Json(answer.clone())).into_response();
    }
    let fields: HashMap<String, String> = form.iter().cloned().collect();
    match make(&mut inner, &fields) {
        Ok(object) => {
            let id = object["id"].as_str().unwrap_or_default().to_owned();
            inner.objects.insert(id, object.clone());
            if let Some(key) = key {
                inner.replays.insert(key, (form, 200, object.clone()));
            }
            Json(object).into_response()
        }
        Err(response) => *response,
    }
}

fn metadata(fields: &HashMap<String, String>, prefix: &str) -> Value {
    let mut out = serde_json::Map::new();
    for (name, value) in fields {
        if let Some(key) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('['))
            .and_then(|rest| rest.strip_suffix(']'))
        {
            out.insert(key.to_owned(), Value::String(value.clone()));
        }
    }
    Value::Object(out)
}

async fn create_customer(
    State(standin): State<Standin>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    handle(
        &standin,
        &headers,
        "/v1/customers",
        form,
        |inner, fields| {
            inner.next += 1;
            Ok(json!({
                "id": format!("cus_standin{}", inner.next),
                "object": "customer",
                "description": fields.get("description"),
                "metadata": metadata(fields, "metadata"),
            }))
        },
    )
}

async fn create_session(
    State(standin): State<Standin>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let base = standin.base.clone();
    handle(
        &standin,
        &headers,
        "/v1/checkout/sessions",
        form,
        |inner, fields| {
            let field = |name: &str| fields.get(name).cloned();
            let (Some(mode), Some(success_url)) = (field("mode"), field("success_url")) else {
                return Err(Box::new(stripe_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "Missing required param: mode or success_url.",
                )));
            };
            let quantity: i64 = field("line_items[0][quantity]")
                .and_then(|q| q.parse().ok())
                .unwrap_or(1);
            let unit: Option<i64> =
                field("line_items[0][price_data][unit_amount]").and_then(|a| a.parse().ok());
            if let Some(customer) = field("customer").filter(|c| !inner.objects.contains_key(c)) {
                return Err(Box::new(stripe_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    &format!("No such customer: '{customer}'"),
                )));
            }
            inner.next += 1;
            let id = format!("cs_test_standin{}", inner.next);
            Ok(json!({
                "id": id,
                "object": "checkout.session",
                "mode": mode,
                "status": "open",
                "payment_status": "unpaid",
                "customer": field("customer"),
                "client_reference_id": field("client_reference_id"),
                "currency": field("line_items[0][price_data][currency]"),
                "amount_total": unit.map(|unit| unit * quantity),
                "metadata": metadata(fields, "metadata"),
                // Subscription mode: what the subscription is made with.
                "line_items_price": field("line_items[0][price]"),
                "subscription_metadata": metadata(fields, "subscription_data[metadata]"),
                "billing_cycle_anchor": field("subscription_data[billing_cycle_anchor]"),
                "success_url": success_url,
                "cancel_url": field("cancel_url"),
                "url": format!("{base}/c/pay/{id}"),
            }))
        },
    )
}

async fn checkout_page(State(standin): State<Standin>, Path(id): Path<String>) -> Response {
    let session = standin.inner.lock().unwrap().objects.get(&id).cloned();
    match session {
        Some(session) => Html(format!(
            "<!doctype html><title>Stripe Checkout (stand-in)</title><h1>Pay</h1><pre id=\"session\">{}</pre>",
            serde_json::to_string(&session)
                .unwrap()
                .replace('&', "&amp;")
                .replace('<', "&lt;")
        ))
        .into_response(),
        None => (StatusCode::NOT_FOUND, "no such session").into_response(),
    }
}

async fn list_payment_methods(
    State(standin): State<Standin>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>>,
) -> Response {
    let inner = match begin_get(&standin, &headers, "/v1/payment_methods", query.clone()) {
        Ok(inner) => inner,
        Err(refusal) => return *refusal,
    };
    let customer = query
        .iter()
        .find(|(name, _)| name == "customer")
        .map(|(_, value)| value.clone())
        .unwrap_or_default();
    let data: Vec<Value> = inner
        .cards
        .get(&customer)
        .map(|(id, last4, _)| {
            json!({"id": id, "object": "payment_method", "type": "card", "customer": customer,
                   "card": {"brand": "visa", "last4": last4}})
        })
        .into_iter()
        .collect();
    Json(json!({"object": "list", "url": "/v1/payment_methods", "has_more": false, "data": data}))
        .into_response()
}

async fn create_payment_intent(
    State(standin): State<Standin>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    handle(
        &standin,
        &headers,
        "/v1/payment_intents",
        form,
        |inner, fields| {
            let field = |name: &str| fields.get(name).cloned();
            let customer = field("customer").unwrap_or_default();
            let Some((card, _, behavior)) = inner.cards.get(&customer).cloned() else {
                return Err(Box::new(stripe_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "No such PaymentMethod",
                )));
            };
            if field("payment_method").as_deref() != Some(card.as_str()) {
                return Err(Box::new(stripe_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "The payment method is not attached to this customer",
                )));
            }
            let code = match behavior {
                CardBehavior::Succeeds => None,
                CardBehavior::NeedsAuthentication => Some("authentication_required"),
                CardBehavior::Declined => Some("card_declined"),
            };
            if let Some(code) = code {
                return Err(Box::new(
                    (
                        StatusCode::PAYMENT_REQUIRED,
                        Json(json!({"error": {"type": "card_error", "code": code,
                        "message": "Your card was declined."}})),
                    )
                        .into_response(),
                ));
            }
            inner.next += 1;
            let amount: i64 = field("amount").and_then(|a| a.parse().ok()).unwrap_or(0);
            Ok(json!({
                "id": format!("pi_standin{}", inner.next),
                "object": "payment_intent",
                "status": "succeeded",
                "amount": amount,
                "amount_received": amount,
                "currency": field("currency"),
                "customer": customer,
                "payment_method": card,
                "metadata": metadata(fields, "metadata"),
            }))
        },
    )
}

async fn expire_session(
    State(standin): State<Standin>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let path = format!("/v1/checkout/sessions/{id}/expire");
    handle(&standin, &headers, &path, form, |inner, _| {
        let Some(session) = inner.objects.get_mut(&id) else {
            return Err(Box::new(stripe_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                &format!("No such checkout.session: '{id}'"),
            )));
        };
        if session["status"] != "open" {
            return Err(Box::new(stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "Only Checkout Sessions with a status of `open` can be expired.",
            )));
        }
        session["status"] = json!("expired");
        Ok(session.clone())
    })
}

async fn create_refund(
    State(standin): State<Standin>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    handle(&standin, &headers, "/v1/refunds", form, |inner, fields| {
        let Some(intent) = fields.get("payment_intent").cloned() else {
            return Err(Box::new(stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "Missing required param: payment_intent.",
            )));
        };
        inner.next += 1;
        Ok(
            json!({"id": format!("re_standin{}", inner.next), "object": "refund",
                  "payment_intent": intent, "status": "succeeded"}),
        )
    })
}

/// `GET /v1/customers/{id}`, `GET /v1/subscriptions/{id}`: an object the
/// stand-in made, or Stripe's 404 `resource_missing`.
async fn read_object(
    State(standin): State<Standin>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    Path(id): Path<String>,
) -> Response {
    let inner = match begin_get(&standin, &headers, uri.path(), Vec::new()) {
        Ok(inner) => inner,
        Err(refusal) => return *refusal,
    };
    match inner.objects.get(&id) {
        Some(object) => Json(object.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(
                json!({"error": {"type": "invalid_request_error", "code": "resource_missing",
                                  "message": format!("No such object: '{id}'")}}),
            ),
        )
            .into_response(),
    }
}

/// `POST /v1/subscriptions/{id}`: a price change of its item (an upgrade
/// with `payment_behavior=pending_if_incomplete` on a declined card stays
/// a `pending_update`), or `cancel_at_period_end`.
async fn update_subscription(
    State(standin): State<Standin>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let path = format!("/v1/subscriptions/{id}");
    handle(&standin, &headers, &path, form, |inner, fields| {
        let Some(subscription) = inner.objects.get(&id).cloned() else {
            return Err(Box::new(stripe_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                &format!("No such subscription: '{id}'"),
            )));
        };
        if subscription["status"] == "canceled" {
            return Err(Box::new(stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "A canceled subscription can only update its cancellation_details and metadata.",
            )));
        }
        let mut updated = subscription.clone();
        if let Some(cancel) = fields.get("cancel_at_period_end") {
            updated["cancel_at_period_end"] = json!(cancel == "true");
        }
        if let Some(price) = fields.get("items[0][price]") {
            if fields.get("items[0][id]").map(String::as_str)
                != subscription["items"]["data"][0]["id"].as_str()
            {
                return Err(Box::new(stripe_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "items[0][id] is not an item of this subscription",
                )));
            }
            let customer = subscription["customer"].as_str().unwrap_or_default();
            let declined = inner
                .cards
                .get(customer)
                .is_some_and(|card| card.2 != CardBehavior::Succeeds);
            if declined
                && fields.get("payment_behavior").map(String::as_str)
                    == Some("pending_if_incomplete")
            {
                updated["pending_update"] = json!({"subscription_items": [{"price": price}]});
            } else {
                updated["items"]["data"][0]["price"]["id"] = json!(price);
                updated["pending_update"] = Value::Null;
            }
        }
        Ok(updated)
    })
}

/// `GET /v1/subscriptions?customer=…&status=all`: the customer's
/// subscriptions, newest first.
async fn list_subscriptions(
    State(standin): State<Standin>,
    headers: HeaderMap,
    axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>>,
) -> Response {
    let inner = match begin_get(&standin, &headers, "/v1/subscriptions", query.clone()) {
        Ok(inner) => inner,
        Err(refusal) => return *refusal,
    };
    let customer = query
        .iter()
        .find(|(name, _)| name == "customer")
        .map(|(_, value)| value.clone());
    let mut data: Vec<Value> = inner
        .objects
        .values()
        .filter(|object| object["object"] == "subscription")
        .filter(|object| customer.is_none() || object["customer"].as_str() == customer.as_deref())
        .cloned()
        .collect();
    data.sort_by_key(|object| std::cmp::Reverse(object["created"].as_i64()));
    Json(json!({"object": "list", "url": "/v1/subscriptions", "has_more": false, "data": data}))
        .into_response()
}
