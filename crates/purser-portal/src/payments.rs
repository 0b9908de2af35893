//! Payment providers: what happens after a customer buys a package. The
//! purchase itself is always a ledger command (`pending` first); a provider
//! decides how it gets paid. `manual` leaves it to the operator's backend
//! (`POST /v1/purchases/{id}/complete` once paid); `instant` confirms at once
//! (demos and tests); `stripe` (in `purser-server`, it needs the store and
//! the network) answers [`Checkout::Redirect`] to a Stripe Checkout page and
//! completes the purchase from Stripe's webhook through the same command.
//!
//! A provider may call the network, so [`PaymentProvider::checkout`] is
//! asynchronous: it never blocks a runtime worker.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use purser_core::Credits;

/// The purchase a checkout is for.
#[derive(Clone, Debug)]
pub struct CheckoutRequest {
    pub account: String,
    /// `pur_…`: the id the provider must hand back when payment succeeds.
    pub purchase: String,
    pub package: String,
    pub package_name: String,
    pub credits: Credits,
    pub price: Credits,
    pub currency: String,
    /// Where the customer returns after paying (the billing page).
    pub success_url: String,
    /// Where the customer returns after giving up.
    pub cancel_url: String,
}

impl CheckoutRequest {
    /// The checkout of a purchase as the API renders it: its own price and
    /// credits (a catalog changed since does not change what it costs), the
    /// package's name from the catalog (its id if it left the catalog).
    pub fn for_purchase(
        purchase: &serde_json::Value,
        catalog: &purser_core::Catalog,
        success_url: String,
        cancel_url: String,
    ) -> Option<CheckoutRequest> {
        let amount = |field: &str| {
            purchase[field]
                .as_str()
                .and_then(|text| Credits::parse(text, purser_core::Notation::String).ok())
        };
        let package = purchase["package"].as_str()?;
        Some(CheckoutRequest {
            account: purchase["account"].as_str()?.to_owned(),
            purchase: purchase["id"].as_str()?.to_owned(),
            package: package.to_owned(),
            package_name: catalog
                .package(package)
                .map_or_else(|| package.to_owned(), |p| p.name.clone()),
            credits: amount("credits")?,
            price: amount("price")?,
            currency: catalog.currency().to_owned(),
            success_url,
            cancel_url,
        })
    }
}

/// How a purchase proceeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checkout {
    /// Paid: complete the purchase now.
    Confirmed,
    /// Stays `pending` until the operator confirms payment through the API.
    AwaitingConfirmation,
    /// Send the customer to the provider's page; its webhook completes it.
    Redirect(String),
}

/// The provider could not start a payment. The purchase stays `pending`;
/// the same call again (the same purchase) is safe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PaymentError {
    /// `payment_provider_unavailable` (network, timeout, 5xx) or
    /// `payment_provider_error` (the provider refused the request).
    pub code: &'static str,
    /// For logs and the operator; never shown to a customer verbatim.
    pub message: String,
}

/// How charging a saved payment method went (auto-recharge).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Charge {
    /// Paid: complete the purchase now.
    Confirmed,
    /// Under way; the provider's webhook settles it.
    Processing,
    /// The operator settles it through the API (`manual`).
    AwaitingConfirmation,
    /// Not paid, for this reason: fail the purchase.
    Failed(purser_core::RechargeFailure),
}

/// A saved card, as the portal shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedCard {
    pub brand: String,
    pub last4: String,
}

/// A customer's choice of tier in the portal, for a provider that bills
/// tiers.
#[derive(Clone, Debug)]
pub struct TierRequest {
    pub account: String,
    /// The account's tier now.
    pub current: Arc<purser_core::Tier>,
    /// The tier chosen.
    pub tier: Arc<purser_core::Tier>,
    /// The tier the account is scheduled to move to, if any.
    pub pending: Option<String>,
    /// The end of the account's current period (where a new subscription's
    /// billing cycle is anchored).
    pub period_end: Option<purser_core::Timestamp>,
    /// Where the customer returns after subscribing (the billing page).
    pub success_url: String,
    /// Where the customer returns after giving up.
    pub cancel_url: String,
    /// Tells this choice from an earlier choice of the same tier (the
    /// form's nonce): a resubmitted form is the same request.
    pub attempt: String,
}

/// How a tier change proceeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TierBilling {
    /// The provider does not bill it (or already does): the ledger applies
    /// it now, as without a provider.
    Apply,
    /// Send the customer to subscribe on the provider's page; the tier
    /// applies when the provider confirms the subscription.
    Redirect(String),
    /// The provider is changing the subscription; the tier follows when it
    /// confirms the change.
    Requested,
    /// The subscription ends at the end of its period; the account then
    /// moves to the catalog's free tier.
    Ending,
}

/// An account's subscription at the provider, as the portal shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The provider's status: `active`, `trialing`, `past_due`, `canceled`…
    pub status: String,
    /// The tier its price sells, if the catalog has one.
    pub tier: Option<String>,
    /// When the current billing period ends (Unix seconds), if known.
    pub period_end: Option<i64>,
    /// It ends then instead of renewing.
    pub ending: bool,
}

/// What a provider's asynchronous calls return.
pub type ProviderFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, PaymentError>> + Send + 'a>>;

/// A way to take payment for purchases.
pub trait PaymentProvider: Send + Sync + std::fmt::Debug {
    /// The name in the configuration (`manual`, `instant`, `stripe`).
    fn name(&self) -> &'static str;

    /// Starts paying for a pending purchase. Called again for the same
    /// purchase (a retried request, a customer coming back to pay), it
    /// must answer the same way, not start a second payment.
    fn checkout<'a>(&'a self, request: &'a CheckoutRequest) -> ProviderFuture<'a, Checkout>;

    /// Whether this provider takes payment itself (purchases made through
    /// the API get a `checkout_url`).
    fn redirects(&self) -> bool {
        false
    }

    /// Charges the customer's saved payment method for an auto-recharge's
    /// purchase, off-session. Called again for the same purchase (after a
    /// restart), it must not charge twice.
    fn charge_saved<'a>(&'a self, request: &'a CheckoutRequest) -> ProviderFuture<'a, Charge>;

    /// The origins of the provider's checkout pages (the portal's forms
    /// redirect there, so its Content-Security-Policy must allow them).
    fn checkout_origins(&self) -> Vec<String> {
        Vec::new()
    }

    /// Before a pending purchase is canceled: closes what the provider
    /// opened for it (a checkout page), so it cannot be paid after. An
    /// error refuses the cancellation (the payment may be under way).
    fn cancel<'a>(&'a self, _purchase: &'a str) -> ProviderFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    /// The card auto-recharge would charge, if the provider keeps one.
    fn saved_card<'a>(&'a self, _account: &'a str) -> ProviderFuture<'a, Option<SavedCard>> {
        Box::pin(async { Ok(None) })
    }

    /// A tier chosen in the portal: billed through the provider (a
    /// subscription), or applied at once ([`TierBilling::Apply`], the
    /// default: the operator bills tiers, `tier.changed` tells them).
    fn change_tier<'a>(&'a self, _request: &'a TierRequest) -> ProviderFuture<'a, TierBilling> {
        Box::pin(async { Ok(TierBilling::Apply) })
    }

    /// The account's subscription, if the provider bills its tier.
    fn subscription<'a>(&'a self, _account: &'a str) -> ProviderFuture<'a, Option<Subscription>> {
        Box::pin(async { Ok(None) })
    }
}

/// The operator's backend confirms each purchase (the default).
#[derive(Debug)]
pub struct Manual;

impl PaymentProvider for Manual {
    fn name(&self) -> &'static str {
        "manual"
    }
    fn checkout<'a>(&'a self, _: &'a CheckoutRequest) -> ProviderFuture<'a, Checkout> {
        Box::pin(async { Ok(Checkout::AwaitingConfirmation) })
    }
    fn charge_saved<'a>(&'a self, _: &'a CheckoutRequest) -> ProviderFuture<'a, Charge> {
        Box::pin(async { Ok(Charge::AwaitingConfirmation) })
    }
}

/// Every purchase is paid at once: for demos and tests, never production.
#[derive(Debug)]
pub struct Instant;

impl PaymentProvider for Instant {
    fn name(&self) -> &'static str {
        "instant"
    }
    fn checkout<'a>(&'a self, _: &'a CheckoutRequest) -> ProviderFuture<'a, Checkout> {
        Box::pin(async { Ok(Checkout::Confirmed) })
    }
    fn charge_saved<'a>(&'a self, _: &'a CheckoutRequest) -> ProviderFuture<'a, Charge> {
        Box::pin(async { Ok(Charge::Confirmed) })
    }
}

/// The names `payments.provider` accepts.
pub const PROVIDERS: [&str; 3] = ["manual", "instant", "stripe"];

/// The provider a configuration names, if it is one made here (`stripe`
/// is made by the server, which has the store and the network).
pub fn provider(name: &str) -> Option<Arc<dyn PaymentProvider>> {
    match name {
        "manual" => Some(Arc::new(Manual)),
        "instant" => Some(Arc::new(Instant)),
        _ => None,
    }
}
