//! Tiers sold through Stripe subscriptions (API.md "Payments", tier
//! changes): a tier with a `stripe_price` chosen in the portal is paid for
//! before it applies.
//!
//! - No subscription yet (none kept, none live at Stripe): a Checkout
//!   Session in subscription mode, its billing cycle anchored at the end of
//!   the account's period (the first invoice prorated to it), so Stripe's
//!   periods are purser's; the tier applies when Stripe tells of the
//!   subscription (`customer.subscription.created`). A paid tier is never
//!   kept or chosen without one: "keep" after a subscription ended
//!   subscribes again.
//! - A subscription: its price is changed. An upgrade is invoiced at once,
//!   prorated, and changes only once that invoice is paid
//!   (`payment_behavior=pending_if_incomplete`); a downgrade is not
//!   prorated and, like any downgrade, applies at the next period start.
//!   The tier follows `customer.subscription.updated`.
//! - The free tier: the subscription is canceled at the end of its period.
//!   Once Stripe says so (`cancel_at_period_end`), the account is scheduled
//!   to move to the catalog's free tier at its period end (the same
//!   instant, anchored); choosing a paid tier again resumes it. An ended
//!   subscription (`customer.subscription.deleted`, `unpaid`, `paused`)
//!   moves the account to the free tier, as a downgrade.
//!
//! An upgrade's budget grows prorated (`Proration::Prorated`), as Stripe
//! prorates the price.
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
    /// When it was made (Unix seconds): of two live ones, the newer counts.
    #[serde(default)]
    pub created: i64,
    /// The `created` of the newest Stripe event applied for it: an event's
    /// own copy (used when the subscription cannot be read back) older
    /// than that is stale.
    #[serde(default)]
    pub event_at: i64,
}

impl SubscriptionRecord {
    /// The record of a subscription object as Stripe renders it: its item
    /// whose price is a tier's (`is_tier`), else its first; `None` without
    /// an id or a priced item.
    pub fn from_stripe(
        object: &Value,
        is_tier: impl Fn(&str) -> bool,
    ) -> Option<SubscriptionRecord> {
        let items = object["items"]["data"].as_array()?;
        let item = items
            .iter()
            .find(|item| price_of(item).is_some_and(&is_tier))
            .or_else(|| items.first())?;
        Some(SubscriptionRecord {
            id: object["id"].as_str()?.to_owned(),
            status: object["status"].as_str()?.to_owned(),
            item: item["id"].as_str()?.to_owned(),
            price: price_of(item)?.to_owned(),
            cancel_at_period_end: object["cancel_at_period_end"].as_bool().unwrap_or(false),
            // Newer API versions keep the period on the item.
            current_period_end: object["current_period_end"]
                .as_i64()
                .or_else(|| item["current_period_end"].as_i64()),
            created: object["created"].as_i64().unwrap_or(0),
            event_at: 0,
        })
    }

    /// Paid for, or still being collected: the tier is its price's.
    pub fn live(&self) -> bool {
        matches!(self.status.as_str(), "active" | "trialing" | "past_due")
    }

    /// Over: canceled, given up after failed payments, or paused (a trial
    /// ended without a card).
    pub fn ended(&self) -> bool {
        matches!(self.status.as_str(), "canceled" | "unpaid" | "paused")
    }
}

fn setting_name(account: &str) -> String {
    format!("stripe.subscription.{account}")
}

/// A subscription item's price id: its `price` object (or, unexpanded, its
/// id), else the legacy `plan`.
fn price_of(item: &Value) -> Option<&str> {
    item["price"]["id"]
        .as_str()
        .or_else(|| item["price"].as_str())
        .or_else(|| item["plan"]["id"].as_str())
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
        self.record_of(&answer)
            .ok_or_else(|| provider_error("Stripe answered a subscription without a priced item"))
    }

    fn record_of(&self, object: &Value) -> Option<SubscriptionRecord> {
        let catalog = self.engine.catalog();
        SubscriptionRecord::from_stripe(object, |price| {
            catalog.tier_by_stripe_price(price).is_some()
        })
    }

    /// The account's live subscription: the one kept, else the newest live
    /// one Stripe has for its customer (made by a Checkout whose event has
    /// not come yet), kept from then on.
    async fn live_subscription(
        &self,
        account: &str,
    ) -> Result<Option<SubscriptionRecord>, PaymentError> {
        if let Some(kept) = self
            .subscription_record(account)
            .await?
            .filter(SubscriptionRecord::live)
        {
            return Ok(Some(kept));
        }
        let Some(customer) = self.record(account).await? else {
            return Ok(None);
        };
        // Best effort: a Stripe that cannot list them now makes the
        // Checkout that follows fail too, or (if it can) leaves two
        // subscriptions to the newer-counts rule.
        let listed = match self
            .client
            .get(&format!(
                "/v1/subscriptions?customer={}&status=all&limit=20",
                client::encode(&customer.customer)
            ))
            .await
        {
            Ok(listed) => listed,
            // Down: the Checkout would fail too; said as it is.
            Err(error) if error.code == "payment_provider_unavailable" => return Err(error),
            Err(error) => {
                tracing::warn!(account, code = error.code, message = %error.message, "could not list the customer's subscriptions at Stripe");
                return Ok(None);
            }
        };
        let newest = listed["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|object| self.record_of(object))
            .filter(SubscriptionRecord::live)
            .max_by_key(|record| record.created);
        if let Some(record) = &newest {
            self.keep_subscription(account, record).await?;
        }
        Ok(newest)
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
        let live = self.live_subscription(account).await?;
        let free = self.engine.catalog().free_tier().map(|t| t.id.clone());
        match (live, tier.stripe_price.as_deref()) {
            // Not billed through Stripe: the ledger's.
            (None, None) => Ok(TierBilling::Apply),
            // The tier the account is on, nothing scheduled: nothing to do.
            (None, Some(_)) if tier.id == request.current.id && request.pending.is_none() => {
                Ok(TierBilling::Apply)
            }
            // A paid tier, chosen or kept: paid for first.
            (None, Some(price)) => self.subscribe(request, price).await,
            (Some(subscription), None) => {
                if free.as_ref() != Some(&tier.id) {
                    return Err(PaymentError {
                        code: "tier_not_billed",
                        message: format!(
                            "{} has no stripe_price: a subscriber can only end the subscription (the free tier)",
                            tier.id.as_str()
                        ),
                    });
                }
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
                    // Stripe bills it already: the account's tier now (its
                    // scheduled change canceled), or a change Stripe has
                    // yet to tell of (applied, prorated, when it does).
                    return Ok(if tier.id == request.current.id {
                        TierBilling::Apply
                    } else {
                        TierBilling::Requested
                    });
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
        // Stripe's periods made purser's: renewals and the end of a
        // canceled subscription fall when the account's period ends (the
        // anchor must be in the future; a test clock's may not be).
        let wall = crate::webhooks::wall_micros() / 1_000_000;
        let form = match request.period_end.map(|end| end.unix_seconds()) {
            Some(end) if end > wall + 60 => {
                form.field("subscription_data[billing_cycle_anchor]", end.to_string())
            }
            _ => form,
        };
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

    /// The purser account a subscription is for: the account whose Stripe
    /// customer it is (kept when purser made the customer), else its
    /// metadata, else its customer's metadata at Stripe.
    async fn account_of(&self, object: &Value) -> Result<Option<String>, PaymentError> {
        let customer = object["customer"].as_str();
        if let Some(customer) = customer
            && let Some(account) = self.account_of_customer(customer).await?
        {
            return Ok(Some(account));
        }
        for name in ["account", "purser_account"] {
            if let Some(account) = object["metadata"][name].as_str() {
                return Ok(Some(account.to_owned()));
            }
        }
        let Some(customer) = customer else {
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
        event_at: i64,
        object: &Value,
    ) -> Result<SubscriptionOutcome, PaymentError> {
        let Some(id) = object["id"].as_str() else {
            return Ok(SubscriptionOutcome::Ignored(
                "the event has no subscription",
            ));
        };
        let _one = self.subscriptions.lock().await;
        let (current, read_back) = match self
            .client
            .get(&format!("/v1/subscriptions/{}", client::encode(id)))
            .await
        {
            Ok(current) => (current, true),
            // Stripe down: it delivers the event again later.
            Err(error) if error.code == "payment_provider_unavailable" => return Err(error),
            // Gone from Stripe, or not to be read: the event's copy is all
            // there is.
            Err(error) => {
                tracing::warn!(event, subscription = id, code = error.code, message = %error.message, "could not read the subscription back from Stripe: the event's copy applies");
                (object.clone(), false)
            }
        };
        let Some(mut record) = self.record_of(&current) else {
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
        let ours = known.as_ref().is_some_and(|known| known.id == record.id);
        let applied_at = known
            .as_ref()
            .filter(|_| ours)
            .map_or(0, |known| known.event_at);
        if !read_back && event_at < applied_at {
            return Ok(SubscriptionOutcome::Ignored(
                "the event is older than one applied, and the subscription cannot be read back",
            ));
        }
        record.event_at = applied_at.max(event_at);
        if let Some(other) = known.as_ref().filter(|k| k.id != record.id && k.live()) {
            // The account has another live subscription: this one counts
            // only if it is live and newer (two Checkouts paid; the older
            // is the operator's to cancel).
            if !record.live() || record.created < other.created {
                return Ok(SubscriptionOutcome::Ignored(
                    "the account has another subscription",
                ));
            }
            tracing::error!(
                account = %account,
                kept = %record.id,
                other = %other.id,
                "an account has two live Stripe subscriptions: the newer sets its tier; cancel the other in Stripe's dashboard"
            );
        }
        let catalog = self.engine.catalog();
        let priced = catalog.tier_by_stripe_price(&record.price);
        // Live and renewing: its price's tier. Ending at its period's end,
        // or ended while billing a tier: the free tier (a downgrade, so at
        // the period's end).
        let to_free = (record.live() && record.cancel_at_period_end)
            || (record.ended() && (priced.is_some() || ours));
        let (tier, proration): (TierId, Proration) = if to_free {
            let Some(free) = catalog.free_tier() else {
                return Ok(SubscriptionOutcome::Ignored("the catalog has no free tier"));
            };
            (free.id.clone(), Proration::None)
        } else if let Some(tier) = priced.filter(|_| record.live()) {
            (tier.id.clone(), Proration::Prorated)
        } else {
            if record.live() {
                tracing::error!(account = %account, subscription = %record.id, price = %record.price, "a subscription's price is no tier's stripe_price: the tier is left as it is");
            }
            // Not paid yet (incomplete), never paid (incomplete_expired),
            // or not a tier's.
            if known.as_ref().is_none_or(|k| !k.live()) {
                self.keep_subscription(&account, &record).await?;
            }
            return Ok(SubscriptionOutcome::Ignored(
                "the subscription bills no tier now",
            ));
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
        if (200..300).contains(&status) {
            self.keep_subscription(&account, &record).await?;
            return Ok(SubscriptionOutcome::Applied(status, body));
        }
        // Refusals that no retry changes: said once, not retried by
        // Stripe for days.
        let code = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|answer| answer["error"]["code"].as_str().map(str::to_owned));
        if matches!(
            code.as_deref(),
            Some("account_closed" | "account_not_found" | "unknown_tier")
        ) {
            tracing::warn!(account = %account, subscription = %record.id, code = ?code, "a Stripe subscription event cannot change this account's tier");
            return Ok(SubscriptionOutcome::Ignored(
                "the account's tier cannot change",
            ));
        }
        Ok(SubscriptionOutcome::Applied(status, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_subscription_is_read_from_stripes_shapes() {
        let is_tier = |price: &str| price == "price_pro";
        let object = json!({
            "id": "sub_1", "status": "active", "cancel_at_period_end": true, "created": 5,
            "items": {"data": [
                {"id": "si_seat", "price": {"id": "price_seats"}},
                {"id": "si_tier", "price": {"id": "price_pro"}, "current_period_end": 99},
            ]},
        });
        let record = SubscriptionRecord::from_stripe(&object, is_tier).unwrap();
        assert_eq!(
            (record.item.as_str(), record.price.as_str()),
            ("si_tier", "price_pro"),
            "the item whose price is a tier's"
        );
        assert_eq!(record.current_period_end, Some(99));
        assert!(record.live() && record.cancel_at_period_end && !record.ended());
        for item in [
            json!({"id": "si", "price": "price_pro"}),
            json!({"id": "si", "plan": {"id": "price_pro"}}),
        ] {
            let object = json!({"id": "sub_2", "status": "canceled", "items": {"data": [item]}});
            let record = SubscriptionRecord::from_stripe(&object, is_tier).unwrap();
            assert_eq!(record.price, "price_pro");
            assert!(record.ended() && !record.live());
        }
        assert!(
            SubscriptionRecord::from_stripe(&json!({"id": "sub_3", "status": "active"}), is_tier)
                .is_none()
        );
    }
}
