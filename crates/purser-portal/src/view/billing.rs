//! The billing page: the plan, upgrades and downgrades, packages to buy,
//! and the account's purchases.

use maud::{Markup, html};
use purser_core::Catalog;
use serde_json::Value;

use super::*;

/// The billing page's inputs.
#[derive(Debug)]
pub struct Billing<'a> {
    pub frame: Frame<'a>,
    pub account: &'a Value,
    pub catalog: &'a Catalog,
    pub purchases: Vec<Value>,
    pub provider: &'static str,
    pub now: Timestamp,
    /// The card auto-recharge charges, if the provider keeps one.
    pub card: Option<crate::payments::SavedCard>,
    /// The subscription the provider bills the tier with, if any.
    pub subscription: Option<crate::payments::Subscription>,
    /// `portal.tier_changes`: whether the plans can be chosen here.
    pub tier_changes: bool,
}

pub fn billing(view: &Billing<'_>) -> Markup {
    let frame = &view.frame;
    let account = view.account;
    let current = account["tier"].as_str().unwrap_or("");
    let pending = account["pending_tier"].as_str();
    let period_end = time(&account["balance"]["budget"]["period_end"]).unwrap_or(view.now);
    let catalog = view.catalog;
    let currency = catalog.currency();
    let current_credits = catalog
        .tier(current)
        .map(|t| i128::from(t.monthly_credits.micros()));
    let name_of = |id: &str| {
        catalog
            .tier(id)
            .map_or_else(|| id.to_owned(), |t| t.name.clone())
    };
    let can_change = !frame.closed;
    let can_change_tier = can_change && view.tier_changes;
    let subscription = view.subscription.as_ref();
    let billed_until = subscription
        .and_then(|s| s.period_end)
        .and_then(|seconds| seconds.checked_mul(1_000_000))
        .map(Timestamp::from_micros);
    let content = html! {
        div.heading {
            h1 { "Billing" }
            p.sub {
                "You are on the " strong { (frame.tier_name) } " plan. Your budget renews on "
                time datetime=(period_end.to_string()) { (format::date(period_end)) } "."
            }
        }
        @if let Some(subscription) = subscription {
            div.banner.info data-testid="subscription" data-status=(subscription.status)
                data-ending=[subscription.ending.then_some("true")] {
                p {
                    @let plan = subscription.tier.as_deref().map(name_of);
                    @if subscription.ending {
                        "Your subscription"
                        @if let Some(plan) = &plan { " to " strong { (plan) } }
                        " ends"
                        @if let Some(end) = billed_until {
                            " on " time datetime=(end.to_string()) { (format::date(end)) }
                        }
                        ". You then move to the free plan."
                    } @else if subscription.status == "past_due" {
                        "Your last subscription payment failed. Update your card at the payment provider to keep your plan."
                    } @else {
                        "Your plan"
                        @if let Some(plan) = &plan { " " strong { (plan) } }
                        " is billed as a subscription"
                        @if let Some(end) = billed_until {
                            ", renewing on " time datetime=(end.to_string()) { (format::date(end)) }
                        }
                        "."
                    }
                }
            }
        }
        @if let Some(tier) = pending {
            div.banner.info data-testid="pending-tier" data-tier=(tier) {
                p {
                    "Your plan changes to " strong { (name_of(tier)) } " on "
                    time datetime=(period_end.to_string()) { (format::date(period_end)) }
                    ". Until then you keep " (frame.tier_name) "."
                }
                @if can_change_tier {
                    form method="post" action=(frame.href("tier")) {
                        (frame.form_fields())
                        input type="hidden" name="tier" value=(current);
                        input type="hidden" name="cancel" value="1";
                        button.button.ghost type="submit" data-testid="cancel-downgrade" { "Keep " (frame.tier_name) }
                    }
                }
            }
        }
        section aria-labelledby="plans-title" {
            h2 #plans-title .section { "Plans" }
            div.plans {
                @for tier in catalog.tiers() {
                    @let id = tier.id.as_str();
                    @let is_current = id == current;
                    @let credits = i128::from(tier.monthly_credits.micros());
                    @let upgrade = current_credits.is_none_or(|c| credits >= c);
                    article.card.plan.current[is_current] data-testid="tier-card" data-tier=(id)
                        data-current=[is_current.then_some("true")] {
                        h3 { (tier.name) }
                        p.price { (format::price(&tier.price.to_string(), currency)) span.unit { " / month" } }
                        ul.features {
                            li { strong { (format::credits(credits)) } " credits every month" }
                            @if tier.rollover_cap.micros() > 0 {
                                li { "Unused budget rolls over, up to " (format::credits(i128::from(tier.rollover_cap.micros()))) }
                            }
                            @if let Some(cap) = tier.member_monthly_cap {
                                li { "Up to " (format::credits(i128::from(cap.micros()))) " per member a month" }
                            }
                        }
                        @if is_current {
                            p.tag { "Current plan" }
                        } @else if pending == Some(id) {
                            p.tag { "Starts " (format::date(period_end)) }
                        } @else if can_change_tier {
                            form method="post" action=(frame.href("tier")) {
                                (frame.form_fields())
                                input type="hidden" name="tier" value=(id);
                                @if upgrade {
                                    button.button type="submit" data-testid="choose-tier" { "Upgrade to " (tier.name) }
                                    @if view.provider == "stripe" && tier.stripe_price.is_some() {
                                        p.hint { "Paid through Stripe: applies as soon as the payment is confirmed." }
                                    } @else {
                                        p.hint { "Applies now" @if let Some(c) = current_credits { ": +" (format::credits(credits - c)) " credits this period" } "." }
                                    }
                                } @else {
                                    button.button.ghost type="submit" data-testid="choose-tier" data-confirm=(format!("Downgrade to {} on {}?", tier.name, format::date(period_end))) { "Downgrade to " (tier.name) }
                                    p.hint { "Takes effect on " (format::date(period_end)) ", when your budget renews." }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="packages-title" {
            h2 #packages-title .section { "Credit packages" }
            p.sub {
                "Package credits never expire and are used once your monthly budget is spent. "
                @if view.provider == "manual" {
                    "A purchase stays pending until your payment is confirmed; the credits are added then."
                } @else if view.provider == "instant" {
                    "Demo payments: purchases complete at once."
                } @else if view.provider == "stripe" {
                    "You pay on Stripe's secure checkout page; the credits are added as soon as Stripe confirms the payment."
                }
            }
            div.plans {
                @for package in catalog.packages() {
                    article.card.plan data-testid="package-card" data-package=(package.id.as_str()) {
                        h3 { (package.name) }
                        p.price { (format::price(&package.price.to_string(), currency)) }
                        @let credits = format::credits(i128::from(package.credits.micros()));
                        ul.features {
                            @if !package.name.contains(&credits) {
                                li { strong { (credits) } " credits" }
                            }
                            li { "Never expire" }
                            li { "Used after your monthly budget" }
                        }
                        @if can_change {
                            form method="post" action=(frame.href("purchases")) {
                                (frame.form_fields())
                                input type="hidden" name="package" value=(package.id.as_str());
                                button.button type="submit" data-testid="buy-package" { "Buy for " (format::price(&package.price.to_string(), currency)) }
                            }
                        }
                    }
                }
            }
        }
        (auto_recharge(view, can_change))
        section aria-labelledby="history-title" {
            h2 #history-title .section { "Purchase history" }
            @if view.purchases.is_empty() {
                p.empty { "No purchases yet." }
            } @else {
                div.scroll {
                    table.tx data-testid="purchases" {
                        thead {
                            tr {
                                th scope="col" { "Date" }
                                th scope="col" { "Package" }
                                th.r scope="col" { "Credits" }
                                th.r scope="col" { "Price" }
                                th scope="col" { "Status" }
                                th scope="col" { span.sr { "Actions" } }
                            }
                        }
                        tbody {
                            @for purchase in &view.purchases {
                                @let status = purchase["status"].as_str().unwrap_or("");
                                @let package = purchase["package"].as_str().unwrap_or("");
                                tr {
                                    td.nowrap { (when(&purchase["created_at"])) }
                                    td { (catalog.package(package).map_or(package, |p| p.name.as_str())) }
                                    td.r.num { (format::group(amount_of(&purchase["credits"]))) }
                                    td.r.num { (format::price(amount_of(&purchase["price"]), currency)) }
                                    td {
                                        span class=(format!("status {status}")) data-testid="purchase-status" data-status=(status) { (status_text(status, view.provider)) }
                                    }
                                    td {
                                        @if status == "pending" && can_change {
                                            @if let Some(id) = purchase["id"].as_str() {
                                                @if view.provider == "stripe" {
                                                    form.inline method="post" action=(frame.href(&format!("purchases/{id}/pay"))) {
                                                        (frame.form_fields())
                                                        button.link type="submit" data-testid="pay-purchase" { "Pay" }
                                                    }
                                                }
                                                form.inline method="post" action=(frame.href(&format!("purchases/{id}/cancel"))) {
                                                    (frame.form_fields())
                                                    button.link type="submit" { "Cancel" }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(frame, "Billing", content)
}

/// A purchase's status as the customer reads it: what is being waited for,
/// and what a failure or refund means for the credits.
fn status_text(status: &str, provider: &str) -> &'static str {
    match (status, provider) {
        ("pending", "manual") => "Waiting for confirmation",
        ("pending", _) => "Waiting for payment",
        ("completed", _) => "Paid",
        ("failed", _) => "Payment failed (not charged; no credits added)",
        ("canceled", _) => "Canceled",
        ("refunded", _) => "Refunded (unused credits removed)",
        _ => "Unknown",
    }
}

/// Auto-recharge: whether it is on, what it buys below which balance, the
/// card it charges, and a form to switch it on (choosing both) or off.
fn auto_recharge(view: &Billing<'_>, can_change: bool) -> Markup {
    let frame = &view.frame;
    let setting = &view.account["auto_recharge"];
    let enabled = setting["enabled"].as_bool().unwrap_or(false);
    let catalog = view.catalog;
    let currency = catalog.currency();
    let chosen = setting["package"].as_str();
    let threshold = setting["threshold"].as_str().unwrap_or("");
    let package_name = |id: &str| {
        catalog
            .package(id)
            .map_or(id, |p| p.name.as_str())
            .to_owned()
    };
    html! {
        section aria-labelledby="recharge-title" data-testid="auto-recharge" data-enabled=(enabled) {
            h2 #recharge-title .section { "Auto-recharge" }
            p.sub {
                @if enabled {
                    "On: when your balance falls below " strong { (format::group(threshold)) } " credits, we buy "
                    strong { (package_name(chosen.unwrap_or(""))) } " for you."
                } @else if setting["failures"].as_u64().unwrap_or(0) >= 3 {
                    "Off: the last three payments failed. Check your card, then switch it on again."
                } @else {
                    "Off. Switch it on to buy a package automatically when your balance runs low."
                }
            }
            @if view.provider == "stripe" {
                p data-testid="saved-card" {
                    @match &view.card {
                        Some(card) => { "Charged to your saved " (card.brand) " card ending in " strong { (card.last4) } "." }
                        None => { "No saved card yet: your first package purchase saves the card you pay with." }
                    }
                }
            }
            @if can_change {
                form.inline method="post" action=(frame.href("auto_recharge")) {
                    (frame.form_fields())
                    @if enabled {
                        input type="hidden" name="enabled" value="false";
                        button.button type="submit" data-testid="recharge-off" { "Switch auto-recharge off" }
                    } @else {
                        input type="hidden" name="enabled" value="true";
                        label {
                            "Below "
                            input type="text" inputmode="decimal" name="threshold" required
                                value=(if threshold.is_empty() { "100" } else { threshold }) size="8";
                            " credits, buy "
                        }
                        select name="package" aria-label="Package" {
                            @for package in catalog.packages() {
                                option value=(package.id.as_str()) selected[chosen == Some(package.id.as_str())] {
                                    (package.name) " (" (format::price(&package.price.to_string(), currency)) ")"
                                }
                            }
                        }
                        " "
                        button.button type="submit" data-testid="recharge-on" { "Switch auto-recharge on" }
                    }
                }
            }
        }
    }
}
