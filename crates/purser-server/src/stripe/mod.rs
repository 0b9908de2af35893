//! The `stripe` payment provider (API.md "Payments"): a purchase is paid on
//! a Stripe Checkout page, and Stripe's webhook (`api/stripe.rs`) completes
//! it through the same ledger command the operator's API uses.
//!
//! Each account has one Stripe customer, made at its first checkout and
//! kept in the store (setting `stripe.customer.<account>`), so a card saved
//! at checkout (`setup_future_usage=off_session`) serves later payments.
//! Every call to Stripe carries an idempotency key derived from what it is
//! for (`purser-customer-<account>`, `purser-checkout-<purchase>`): a
//! retried request, a customer clicking Pay again, or two nodes racing get
//! the same customer and the same session from Stripe.

pub mod client;
pub mod subscriptions;

use std::sync::Arc;

use purser_core::RechargeFailure;
use purser_engine::Engine;
use purser_portal::payments::{
    Charge, Checkout, CheckoutRequest, PaymentError, PaymentProvider, ProviderFuture, SavedCard,
    Subscription, TierBilling, TierRequest,
};
use serde::{Deserialize, Serialize};

pub use client::{DEFAULT_API_BASE, Form, StripeClient, minor_units};

/// What purser keeps about an account at Stripe.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerRecord {
    /// `cus_…`.
    pub customer: String,
    /// The saved card (`pm_…`) off-session payments use, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_brand: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_last4: Option<String>,
}

/// The store setting that holds an account's [`CustomerRecord`].
fn setting_name(account: &str) -> String {
    format!("stripe.customer.{account}")
}

/// The store setting that names the account of a Stripe customer.
fn customer_setting(customer: &str) -> String {
    format!("stripe.account_of.{customer}")
}

fn store_error(error: impl std::fmt::Debug) -> PaymentError {
    PaymentError {
        code: "unavailable",
        message: format!("the store: {error:?}"),
    }
}

/// The `stripe` provider.
#[derive(Debug)]
pub struct Stripe {
    client: StripeClient,
    engine: Engine,
    /// Serializes making customers on this node (Stripe's idempotency key
    /// covers two nodes).
    making_customer: tokio::sync::Mutex<()>,
    /// Subscription changes and events, one at a time on this node.
    subscriptions: tokio::sync::Mutex<()>,
}

impl Stripe {
    pub fn new(client: StripeClient, engine: Engine) -> Stripe {
        Stripe {
            client,
            engine,
            making_customer: tokio::sync::Mutex::new(()),
            subscriptions: tokio::sync::Mutex::new(()),
        }
    }

    pub fn client(&self) -> &StripeClient {
        &self.client
    }

    /// A value kept in the store setting `name`, if there is one.
    async fn load<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        name: String,
    ) -> Result<Option<T>, PaymentError> {
        let text = self
            .engine
            .query(move |store| store.setting(&name))
            .await
            .map_err(store_error)?;
        text.map(|text| serde_json::from_str(&text).map_err(store_error))
            .transpose()
    }

    /// Keeps `value` in the store setting `name`.
    async fn keep<T: Serialize>(&self, name: String, value: &T) -> Result<(), PaymentError> {
        let text = serde_json::to_string(value).expect("JSON");
        self.engine
            .query(move |store| store.set_setting(&name, &text))
            .await
            .map_err(store_error)
    }

    /// The account's record, if it has a Stripe customer yet.
    pub async fn record(&self, account: &str) -> Result<Option<CustomerRecord>, PaymentError> {
        self.load(setting_name(account)).await
    }

    /// Keeps the account's record.
    pub async fn save(&self, account: &str, record: &CustomerRecord) -> Result<(), PaymentError> {
        self.keep(setting_name(account), record).await
    }

    /// The account's Stripe customer: the kept one, or a new one.
    pub async fn customer(&self, account: &str) -> Result<CustomerRecord, PaymentError> {
        if let Some(record) = self.record(account).await? {
            return Ok(record);
        }
        let _making = self.making_customer.lock().await;
        if let Some(record) = self.record(account).await? {
            return Ok(record);
        }
        let form = Form::new()
            .field("description", format!("purser account {account}"))
            .field("metadata[purser_account]", account);
        let created = self
            .client
            .post(
                "/v1/customers",
                &form,
                &format!("purser-customer-{account}"),
            )
            .await?;
        let Some(customer) = created["id"].as_str() else {
            return Err(PaymentError {
                code: "payment_provider_error",
                message: "Stripe made a customer without an id".into(),
            });
        };
        let record = CustomerRecord {
            customer: customer.to_owned(),
            ..CustomerRecord::default()
        };
        // Which account a customer is, for Stripe's events that name only
        // the customer (kept first: the record is what says it is made).
        self.keep(customer_setting(customer), &account).await?;
        self.save(account, &record).await?;
        Ok(record)
    }

    /// The account whose Stripe customer `customer` is, if purser made it.
    pub async fn account_of_customer(
        &self,
        customer: &str,
    ) -> Result<Option<String>, PaymentError> {
        self.load(customer_setting(customer)).await
    }

    async fn create_session(&self, request: &CheckoutRequest) -> Result<Checkout, PaymentError> {
        let currency = request.currency.to_ascii_lowercase();
        let Some(amount) = minor_units(request.price, &currency) else {
            return Err(PaymentError {
                code: "payment_provider_error",
                message: format!(
                    "the price {} {} is not a whole number of the currency's minor units",
                    request.price, request.currency
                ),
            });
        };
        // The purchase's session, once made: the same page every time, and
        // the one a cancellation expires.
        if let Some(session) = self.session(&request.purchase).await? {
            return Ok(Checkout::Redirect(session.url));
        }
        let customer = self.customer(&request.account).await?;
        let form = Form::new()
            .field("mode", "payment")
            .field("customer", customer.customer)
            .field("client_reference_id", &request.purchase)
            .field("success_url", &request.success_url)
            .field("cancel_url", &request.cancel_url)
            .field("line_items[0][quantity]", "1")
            .field("line_items[0][price_data][currency]", &currency)
            .field("line_items[0][price_data][unit_amount]", amount.to_string())
            .field(
                "line_items[0][price_data][product_data][name]",
                &request.package_name,
            )
            .field("metadata[purchase_id]", &request.purchase)
            .field("metadata[account]", &request.account)
            .field("metadata[package]", &request.package)
            .field(
                "payment_intent_data[metadata][purchase_id]",
                &request.purchase,
            )
            .field("payment_intent_data[metadata][account]", &request.account)
            .field("payment_intent_data[setup_future_usage]", "off_session");
        let session = self
            .client
            .post(
                "/v1/checkout/sessions",
                &form,
                &format!("purser-checkout-{}", request.purchase),
            )
            .await?;
        match (session["id"].as_str(), session["url"].as_str()) {
            (Some(id), Some(url)) if url.starts_with("https://") || url.starts_with("http://") => {
                let kept = Session {
                    id: id.to_owned(),
                    url: url.to_owned(),
                };
                self.keep(session_setting(&request.purchase), &kept).await?;
                Ok(Checkout::Redirect(kept.url))
            }
            _ => Err(PaymentError {
                code: "payment_provider_error",
                message: "Stripe made a Checkout Session without a URL".into(),
            }),
        }
    }
}

/// A purchase's Checkout Session, kept in the store (setting
/// `stripe.checkout.<purchase>`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Session {
    id: String,
    url: String,
}

fn session_setting(purchase: &str) -> String {
    format!("stripe.checkout.{purchase}")
}

impl Stripe {
    async fn session(&self, purchase: &str) -> Result<Option<Session>, PaymentError> {
        self.load(session_setting(purchase)).await
    }

    /// Expires the purchase's open Checkout Session, if it has one; refused
    /// when Stripe says it can no longer be (paid, or being paid).
    async fn expire(&self, purchase: &str) -> Result<(), PaymentError> {
        let Some(session) = self.session(purchase).await? else {
            return Ok(());
        };
        match self
            .client
            .post(
                &format!(
                    "/v1/checkout/sessions/{}/expire",
                    client::encode(&session.id)
                ),
                &Form::new(),
                &format!("purser-expire-{purchase}"),
            )
            .await
        {
            Ok(_)
            | Err(PaymentError {
                code: "payment_provider_missing",
                ..
            }) => Ok(()),
            Err(error) if error.code == "payment_provider_error" => Err(PaymentError {
                code: "payment_in_progress",
                message: format!(
                    "the checkout of {purchase} cannot be closed: {}",
                    error.message
                ),
            }),
            Err(error) => Err(error),
        }
    }

    /// Refunds a payment intent in full (idempotent per intent).
    pub async fn refund(&self, payment_intent: &str) -> Result<(), PaymentError> {
        let form = Form::new()
            .field("payment_intent", payment_intent)
            .field("reason", "requested_by_customer")
            .field("metadata[purser]", "purchase no longer pending");
        self.client
            .post(
                "/v1/refunds",
                &form,
                &format!("purser-refund-{payment_intent}"),
            )
            .await
            .map(|_| ())
    }

    /// The card to charge off-session: the kept one, else the customer's
    /// first card at Stripe (kept from then on); `None` without either.
    async fn card(&self, account: &str) -> Result<Option<CustomerRecord>, PaymentError> {
        let Some(mut record) = self.record(account).await? else {
            return Ok(None);
        };
        if record.payment_method.is_some() {
            return Ok(Some(record));
        }
        let listed = match self
            .client
            .get(&format!(
                "/v1/payment_methods?customer={}&type=card&limit=1",
                client::encode(&record.customer)
            ))
            .await
        {
            Ok(listed) => listed,
            // The customer is gone at Stripe: no card to charge.
            Err(error) if error.code == "payment_provider_missing" => return Ok(None),
            Err(error) => return Err(error),
        };
        let Some(card) = listed["data"].get(0) else {
            return Ok(None);
        };
        record.payment_method = card["id"].as_str().map(str::to_owned);
        record.card_brand = card["card"]["brand"].as_str().map(str::to_owned);
        record.card_last4 = card["card"]["last4"].as_str().map(str::to_owned);
        if record.payment_method.is_none() {
            return Ok(None);
        }
        self.save(account, &record).await?;
        Ok(Some(record))
    }

    /// An off-session payment intent on the saved card, confirmed at once
    /// (its idempotency key is the purchase: a restart does not charge
    /// twice).
    async fn charge_card(&self, request: &CheckoutRequest) -> Result<Charge, PaymentError> {
        let currency = request.currency.to_ascii_lowercase();
        let Some(amount) = minor_units(request.price, &currency) else {
            return Ok(Charge::Failed(RechargeFailure::PaymentFailed));
        };
        let Some(card) = self.card(&request.account).await? else {
            return Ok(Charge::Failed(RechargeFailure::NoPaymentMethod));
        };
        let form = Form::new()
            .field("amount", amount.to_string())
            .field("currency", &currency)
            .field("customer", &card.customer)
            .field("payment_method", card.payment_method.unwrap_or_default())
            .field("off_session", "true")
            .field("confirm", "true")
            .field(
                // Only what the purchase fixes: a retry sends the very same
                // parameters under the same idempotency key.
                "description",
                format!("purser auto-recharge {}", request.package),
            )
            .field("metadata[purchase_id]", &request.purchase)
            .field("metadata[account]", &request.account)
            .field("metadata[auto_recharge]", "true");
        // Charged before (a restart read it again): that payment intent's
        // state, not a second one (Stripe forgets idempotency keys after a
        // day).
        let kept = format!("stripe.recharge.{}", request.purchase);
        if let Some(intent) = self.load::<String>(kept.clone()).await? {
            match self
                .client
                .get(&format!("/v1/payment_intents/{}", client::encode(&intent)))
                .await
            {
                Ok(intent) => return Ok(charge_of(&intent)),
                Err(error) if error.code == "payment_provider_missing" => {}
                Err(error) => return Err(error),
            }
        }
        let answer = self
            .client
            .post(
                "/v1/payment_intents",
                &form,
                &format!("purser-recharge-{}", request.purchase),
            )
            .await;
        match answer {
            Ok(intent) => {
                if let Some(id) = intent["id"].as_str() {
                    self.keep(kept, &id).await?;
                }
                Ok(charge_of(&intent))
            }
            // A declined card is a 402 card_error: said, not retried. Any
            // other refusal is not the customer's: tried again later.
            Err(error) if error.code == "payment_declined" => Ok(Charge::Failed(
                if error.message.contains("authentication_required") {
                    RechargeFailure::ActionRequired
                } else {
                    RechargeFailure::PaymentFailed
                },
            )),
            Err(error) => Err(error),
        }
    }
}

/// What a payment intent's status says of an off-session charge.
fn charge_of(intent: &serde_json::Value) -> Charge {
    match intent["status"].as_str() {
        Some("succeeded") => Charge::Confirmed,
        Some("requires_action" | "requires_confirmation") => {
            Charge::Failed(RechargeFailure::ActionRequired)
        }
        Some("requires_payment_method" | "canceled") => {
            Charge::Failed(RechargeFailure::PaymentFailed)
        }
        _ => Charge::Processing,
    }
}

impl PaymentProvider for Stripe {
    fn name(&self) -> &'static str {
        "stripe"
    }

    fn checkout<'a>(&'a self, request: &'a CheckoutRequest) -> ProviderFuture<'a, Checkout> {
        Box::pin(self.create_session(request))
    }

    fn redirects(&self) -> bool {
        true
    }

    fn charge_saved<'a>(&'a self, request: &'a CheckoutRequest) -> ProviderFuture<'a, Charge> {
        Box::pin(self.charge_card(request))
    }

    fn checkout_origins(&self) -> Vec<String> {
        // Stripe's hosted Checkout; and a stand-in's own, when the API is
        // one (tests).
        let mut origins = vec!["https://checkout.stripe.com".to_owned()];
        let base = self.client.base();
        if base != DEFAULT_API_BASE {
            let start = base.find("://").map_or(0, |at| at + 3);
            let end = base[start..].find('/').map_or(base.len(), |at| start + at);
            origins.push(base[..end].to_owned());
        }
        origins
    }

    fn cancel<'a>(&'a self, purchase: &'a str) -> ProviderFuture<'a, ()> {
        Box::pin(self.expire(purchase))
    }

    fn change_tier<'a>(&'a self, request: &'a TierRequest) -> ProviderFuture<'a, TierBilling> {
        Box::pin(self.bill_tier(request))
    }

    fn subscription<'a>(&'a self, account: &'a str) -> ProviderFuture<'a, Option<Subscription>> {
        Box::pin(self.portal_subscription(account))
    }

    fn saved_card<'a>(&'a self, account: &'a str) -> ProviderFuture<'a, Option<SavedCard>> {
        Box::pin(async move {
            Ok(self.record(account).await?.and_then(|record| {
                Some(SavedCard {
                    brand: record.card_brand?,
                    last4: record.card_last4?,
                })
            }))
        })
    }
}

/// The `stripe` provider, from the environment's keys and `api_base`.
pub fn provider(engine: &Engine, api_base: &str) -> Result<Arc<Stripe>, String> {
    let key = std::env::var("PURSER_STRIPE_SECRET_KEY")
        .ok()
        .filter(|key| !key.is_empty())
        .ok_or("payments.provider = \"stripe\" needs PURSER_STRIPE_SECRET_KEY (sk_test_… or sk_live_…)")?;
    if std::env::var("PURSER_STRIPE_WEBHOOK_SECRET").map_or(true, |s| s.is_empty()) {
        return Err(
            "payments.provider = \"stripe\" needs PURSER_STRIPE_WEBHOOK_SECRET (the whsec_… of the webhook endpoint registered at Stripe): without it no payment would ever complete"
                .into(),
        );
    }
    let client = StripeClient::new(api_base, crate::api::Secret::new(key))?;
    Ok(Arc::new(Stripe::new(client, engine.clone())))
}
