//! Tiers sold through Stripe subscriptions (API.md "Payments", tier
//! changes): a tier with a `stripe_price` chosen in the portal is paid for
//! before it applies.
//!
//! - No subscription yet: a Checkout Session in subscription mode; the tier
//!   applies when Stripe tells of the subscription
//!   (`customer.subscription.created`).
//! - A subscription: its price is changed. An upgrade is invoiced at once,
//!   prorated, and changes only once that invoice is paid
//!   (`payment_behavior=pending_if_incomplete`); a downgrade is not
//!   prorated and, like any downgrade, applies at the next period start.
//!   The tier follows `customer.subscription.updated`.
//! - A tier without a price (the free tier): the subscription is canceled
//!   at the end of its period; `customer.subscription.deleted` then moves
//!   the account to the catalog's free tier (at its own period end, as any
//!   downgrade).
//!
//! Stripe may deliver events late, twice or out of order, so an event is
//! only a prompt: the subscription is read back from Stripe and its
//! current state applied. Events are applied one at a time on a node, so
//! an older read never lands after a newer one. What purser knows of it is
//! kept in the store (setting `stripe.subscription.<account>`).

use purser_core::{Actor, Command, Proration, TierId};
use purser_engine::IdempotencyKey;
use purser_portal::payments::{PaymentError, Subscription, TierBilling, TierRequest};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Form, Stripe, client};

/// What purser keeps of an account's Stripe subscription.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    /// `sub_…`.
    pub id: String,
    /// Stripe's status: `active`, `trialing`, `past_due`, `incomplete`,
    /// `incomplete_expired`, `unpaid`, `canceled`, `paused`.
    pub status: String,
    /// The subscription item (`si_…`) whose price is the tier.
    pub item: String,
    /// Its price (`price_…`).
    pub price: String,
    #[serde(default)]
    pub cancel_at_period_end: bool,
    /// The current billing period's end (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_period_end: Option<i64>,
}

impl SubscriptionRecord {
    /// The record of a subscription object as Stripe renders it; `None`
    /// without an id or a priced item.
    pub fn from_stripe(object: &Value) -> Option<SubscriptionRecord> {
        let item = &object["items"]["data"][0];
        Some(SubscriptionRecord {
            id: object["id"].as_str()?.to_owned(),
            status: object["status"].as_str()?.to_owned(),
            item: item["id"].as_str()?.to_owned(),
            price: item["price"]["id"].as_str()?.to_owned(),
            cancel_at_period_end: object["cancel_at_period_end"].as_bool().unwrap_or(false),
            // Newer API versions keep the period on the item.
            current_period_end: object["current_period_end"]
                .as_i64()
                .or_else(|| item["current_period_end"].as_i64()),
        })
    }

    /// Paid for, or still being collected: the tier is its price's.
    pub fn live(&self) -> bool {
        matches!(self.status.as_str(), "active" | "trialing" | "past_due")
    }

    /// Over: canceled, or given up after failed payments.
    pub fn ended(&self) -> bool {
        matches!(self.status.as_str(), "canceled" | "unpaid")
    }
}

fn setting_name(account: &str) -> String {
    format!("stripe.subscription.{account}")
}

fn provider_error(message: impl Into<String>) -> PaymentError {
    PaymentError {
        code: "payment_provider_error",
        message: message.into(),
    }
}

/// What a subscription event came to.
#[derive(Debug)]
pub enum SubscriptionOutcome {
    /// Nothing to apply (why, for the log and Stripe's dashboard).
    Ignored(&'static str),
    /// A tier change ran: the ledger's answer (status, body).
    Applied(u16, Vec<u8>),
}

impl Stripe {
    /// The account's subscription record, if Stripe ever told of one.
    pub async fn subscription_record(
        &self,
        account: &str,
    ) -> Result<Option<SubscriptionRecord>, PaymentError> {
        self.load(setting_name(account)).await
    }

    async fn keep_subscription(
        &self,
        account: &str,
        record: &SubscriptionRecord,
    ) -> Result<(), PaymentError> {
        self.keep(setting_name(account), record).await
    }

    /// `POST /v1/subscriptions/{id}` with `form`; the record of the answer.
    async fn update_subscription(
        &self,
        id: &str,
        form: &Form,
        key: &str,
    ) -> Result<SubscriptionRecord, PaymentError> {
        let answer = self
            .client
            .post(
                &format!("/v1/subscriptions/{}", client::encode(id)),
                form,
                key,
            )
            .await?;
        SubscriptionRecord::from_stripe(&answer)
            .ok_or_else(|| provider_error("Stripe answered a subscription without a priced item"))
    }

    /// The portal's tier change, billed (see the module).
    pub(super) async fn bill_tier(
        &self,
        request: &TierRequest,
    ) -> Result<TierBilling, PaymentError> {
        let _one = self.subscriptions.lock().await;
        let account = request.account.as_str();
        let attempt = &request.attempt;
        let tier = &request.tier;
        let live = self
            .subscription_record(account)
            .await?
            .filter(SubscriptionRecord::live);
        match (live, tier.stripe_price.as_deref()) {
            // Not billed through Stripe, or the tier the account is on
            // (keeping it cancels a scheduled downgrade): the ledger's.
            (None, None) => Ok(TierBilling::Apply),
            (None, Some(_)) if tier.id == request.current.id => Ok(TierBilling::Apply),
            (None, Some(price)) => self.subscribe(request, price).await,
            (Some(subscription), None) => {
                if !subscription.cancel_at_period_end {
                    let form = Form::new().field("cancel_at_period_end", "true");
                    let key = format!("purser-end-{}-{attempt}", subscription.id);
                    let record = self
                        .update_subscription(&subscription.id, &form, &key)
                        .await?;
                    self.keep_subscription(account, &record).await?;
                }
                Ok(TierBilling::Ending)
            }
            (Some(mut subscription), Some(price)) => {
                if subscription.cancel_at_period_end {
                    // Chosen again before it ended: it renews.
                    let form = Form::new().field("cancel_at_period_end", "false");
                    let key = format!("purser-resume-{}-{attempt}", subscription.id);
                    subscription = self
                        .update_subscription(&subscription.id, &form, &key)
                        .await?;
                    self.keep_subscription(account, &subscription).await?;
                }
                if subscription.price == price {
                    return Ok(TierBilling::Apply);
                }
                let upgrade = tier.monthly_credits > request.current.monthly_credits;
                let mut form = Form::new()
                    .field("items[0][id]", &subscription.item)
                    .field("items[0][price]", price)
                    .field(
                        "proration_behavior",
                        if upgrade { "always_invoice" } else { "none" },
                    );
                if upgrade {
                    form = form.field("payment_behavior", "pending_if_incomplete");
                }
                let key = format!(
                    "purser-tier-{}-{}-{attempt}",
                    subscription.id,
                    tier.id.as_str()
                );
                let record = self
                    .update_subscription(&subscription.id, &form, &key)
                    .await?;
                self.keep_subscription(account, &record).await?;
                Ok(TierBilling::Requested)
            }
        }
    }

    /// A Checkout Session in subscription mode for `price`.
    async fn subscribe(
        &self,
        request: &TierRequest,
        price: &str,
    ) -> Result<TierBilling, PaymentError> {
        let account = request.account.as_str();
        let tier = request.tier.id.as_str();
        let customer = self.customer(account).await?;
        let form = Form::new()
            .field("mode", "subscription")
            .field("customer", customer.customer)
            .field("client_reference_id", account)
            .field("success_url", &request.success_url)
            .field("cancel_url", &request.cancel_url)
            .field("line_items[0][price]", price)
            .field("line_items[0][quantity]", "1")
            .field("metadata[account]", account)
            .field("metadata[tier]", tier)
            .field("subscription_data[metadata][account]", account)
            .field("subscription_data[metadata][tier]", tier);
        let session = self
            .client
            .post(
                "/v1/checkout/sessions",
                &form,
                &format!("purser-subscribe-{account}-{tier}-{}", request.attempt),
            )
            .await?;
        match session["url"].as_str() {
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                Ok(TierBilling::Redirect(url.to_owned()))
            }
            _ => Err(provider_error(
                "Stripe made a Checkout Session without a URL",
            )),
        }
    }

    /// The portal's view of the account's subscription.
    pub(super) async fn portal_subscription(
        &self,
        account: &str,
    ) -> Result<Option<Subscription>, PaymentError> {
        let catalog = self.engine.catalog();
        Ok(self
            .subscription_record(account)
            .await?
            .filter(SubscriptionRecord::live)
            .map(|record| Subscription {
                tier: catalog
                    .tier_by_stripe_price(&record.price)
                    .map(|tier| tier.id.as_str().to_owned()),
                period_end: record.current_period_end,
                ending: record.cancel_at_period_end,
                status: record.status,
            }))
    }

    /// The purser account a subscription is for: its metadata, else its
    /// customer's.
    async fn account_of(&self, object: &Value) -> Result<Option<String>, PaymentError> {
        if let Some(account) = object["metadata"]["account"].as_str() {
            return Ok(Some(account.to_owned()));
        }
        let Some(customer) = object["customer"].as_str() else {
            return Ok(None);
        };
        match self
            .client
            .get(&format!("/v1/customers/{}", client::encode(customer)))
            .await
        {
            Ok(customer) => Ok(customer["metadata"]["purser_account"]
                .as_str()
                .map(str::to_owned)),
            Err(error) if error.code == "payment_provider_missing" => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// A `customer.subscription.*` event (`event` its id): the
    /// subscription read back from Stripe, and the account's tier made to
    /// follow it, with the event as the command's idempotency key and
    /// actor. An error is Stripe's to retry.
    pub async fn subscription_changed(
        &self,
        event: &str,
        object: &Value,
    ) -> Result<SubscriptionOutcome, PaymentError> {
        let Some(id) = object["id"].as_str() else {
            return Ok(SubscriptionOutcome::Ignored(
                "the event has no subscription",
            ));
        };
        let _one = self.subscriptions.lock().await;
        let current = match self
            .client
            .get(&format!("/v1/subscriptions/{}", client::encode(id)))
            .await
        {
            Ok(current) => current,
            // Gone from Stripe: the event's copy is all there is.
            Err(error) if error.code == "payment_provider_missing" => object.clone(),
            Err(error) => return Err(error),
        };
        let Some(record) = SubscriptionRecord::from_stripe(&current) else {
            return Ok(SubscriptionOutcome::Ignored(
                "the subscription has no priced item",
            ));
        };
        let Some(account) = self.account_of(&current).await? else {
            return Ok(SubscriptionOutcome::Ignored(
                "the subscription is not a purser account's",
            ));
        };
        let Ok(account_id) = purser_core::AccountId::parse(&account) else {
            return Ok(SubscriptionOutcome::Ignored("no such account"));
        };
        let known = self.subscription_record(&account).await?;
        let another_live = known
            .as_ref()
            .is_some_and(|known| known.id != record.id && known.live());
        if another_live && !record.live() {
            // An older subscription ending, or one that never started:
            // the account's is another one.
            return Ok(SubscriptionOutcome::Ignored(
                "the account has another subscription",
            ));
        }
        if another_live {
            tracing::error!(
                account = %account,
                kept = %record.id,
                other = %known.as_ref().map_or("", |k| k.id.as_str()),
                "an account has two live Stripe subscriptions: the newest sets its tier; cancel the other in Stripe's dashboard"
            );
        }
        // A first payment for this subscription pays a whole period: the
        // budget grows by the whole difference. A price change of a
        // running one is prorated at Stripe, and so in credits.
        let first = !known
            .as_ref()
            .is_some_and(|known| known.id == record.id && known.live());
        let catalog = self.engine.catalog();
        let (tier, proration): (TierId, Proration) = if record.live() {
            let Some(tier) = catalog.tier_by_stripe_price(&record.price) else {
                tracing::error!(account = %account, subscription = %record.id, price = %record.price, "a subscription's price is no tier's stripe_price: the tier is left as it is");
                return Ok(SubscriptionOutcome::Ignored(
                    "the price is no tier's stripe_price",
                ));
            };
            let proration = if first {
                Proration::Full
            } else {
                Proration::Prorated
            };
            (tier.id.clone(), proration)
        } else if record.ended() {
            let Some(free) = catalog.free_tier() else {
                return Ok(SubscriptionOutcome::Ignored("the catalog has no free tier"));
            };
            (free.id.clone(), Proration::None)
        } else {
            // Not paid yet (incomplete), or paused: nothing changes.
            self.keep_subscription(&account, &record).await?;
            return Ok(SubscriptionOutcome::Ignored("the subscription is not paid"));
        };
        let command = Command::ChangeTier {
            account: account_id,
            tier,
            proration,
        };
        let key = IdempotencyKey::new(
            &format!("stripe:{event}"),
            purser_wire::fingerprint("POST", "/v1/webhooks/stripe", event.as_bytes()),
        );
        let outcome = self
            .engine
            .run(command, Some(key), Actor::Provider(event.into()))
            .await;
        let (status, body) = purser_wire::outcome(outcome);
        // Kept once applied: a retry of a failed event still sees this
        // subscription as new (its first period is granted in full).
        if (200..300).contains(&status) {
            self.keep_subscription(&account, &record).await?;
        }
        Ok(SubscriptionOutcome::Applied(status, body))
    }
}
