//! Payment providers: what happens after a customer buys a package in the
//! portal. The purchase itself is always a ledger command (`pending` first);
//! a provider decides how it gets paid. `manual` leaves it to the operator's
//! backend (`POST /v1/purchases/{id}/complete` once paid); `instant`
//! confirms at once (demos and tests). A real provider (Stripe Checkout, …)
//! answers [`Checkout::Redirect`] to its hosted page and completes the
//! purchase from its webhook through the same API call.

use std::sync::Arc;

use purser_core::Credits;

/// The purchase a checkout is for.
#[derive(Clone, Debug)]
pub struct CheckoutRequest<'a> {
    pub account: &'a str,
    /// `pur_…`: the id the provider must hand back when payment succeeds.
    pub purchase: &'a str,
    pub package: &'a str,
    pub package_name: &'a str,
    pub credits: Credits,
    pub price: Credits,
    pub currency: &'a str,
    /// Where the customer returns after paying (the billing page).
    pub return_url: &'a str,
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

/// A way to take payment for purchases made in the portal.
pub trait PaymentProvider: Send + Sync + std::fmt::Debug {
    /// The name in the configuration (`manual`, `instant`, …).
    fn name(&self) -> &'static str;
    fn checkout(&self, request: &CheckoutRequest<'_>) -> Checkout;
}

/// The operator's backend confirms each purchase (the default).
#[derive(Debug)]
pub struct Manual;

impl PaymentProvider for Manual {
    fn name(&self) -> &'static str {
        "manual"
    }
    fn checkout(&self, _: &CheckoutRequest<'_>) -> Checkout {
        Checkout::AwaitingConfirmation
    }
}

/// Every purchase is paid at once: for demos and tests, never production.
#[derive(Debug)]
pub struct Instant;

impl PaymentProvider for Instant {
    fn name(&self) -> &'static str {
        "instant"
    }
    fn checkout(&self, _: &CheckoutRequest<'_>) -> Checkout {
        Checkout::Confirmed
    }
}

/// The names `payments.provider` accepts.
pub const PROVIDERS: [&str; 2] = ["manual", "instant"];

/// The provider a configuration names, if it is one.
pub fn provider(name: &str) -> Option<Arc<dyn PaymentProvider>> {
    match name {
        "manual" => Some(Arc::new(Manual)),
        "instant" => Some(Arc::new(Instant)),
        _ => None,
    }
}
