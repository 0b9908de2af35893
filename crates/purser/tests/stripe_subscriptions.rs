//! Tiers billed through Stripe subscriptions, from outside: the real
//! `purser serve` on the Stripe stand-in, the portal's forms as a browser
//! posts them, and `customer.subscription.*` events signed by Stripe's own
//! library (`stripe` from npm). The tier follows what Stripe confirms,
//! never the click: subscribe, upgrade (prorated, paid first), downgrade,
//! keep, cancel at period end, and the end moving the account to the free
//! tier; stale and repeated events change nothing.
//!
//! Needs Node.js 20+ and `e2e/node_modules` (`.ci/test` installs them).

mod common;

use std::time::Duration;

use common::ledger::{admin, expect_status};
use common::stripe::*;
use common::stripe_standin::{CardBehavior, StripeStandin};
use purser_client::{Client, NewAccount};
use serde_json::{Value, json};

/// The built-in tiers, each paid one sold through a Stripe Price.
const CATALOG: &str = r#"
[catalog]
currency = "USD"

[[catalog.tiers]]
id = "free"
name = "Free"
monthly_credits = "25"
price = "0"

[[catalog.tiers]]
id = "starter"
name = "Starter"
monthly_credits = "100"
price = "19"
stripe_price = "price_starter"

[[catalog.tiers]]
id = "pro"
name = "Pro"
monthly_credits = "1000"
price = "99"
stripe_price = "price_pro"

[[catalog.tiers]]
id = "business"
name = "Business"
monthly_credits = "5000"
price = "399"
stripe_price = "price_business"

[[catalog.packages]]
id = "small"
name = "200 credits"
credits = "200"
price = "9"
"#;

async fn account(client: &Client, id: &str) -> Value {
    expect_status(
        client.get(&format!("/v1/accounts/{id}")).await,
        200,
        "the account",
    )
    .body
}

/// `customer.subscription.<what>` as Stripe sends it: the subscription as
/// the stand-in holds it now.
fn subscription_event(standin: &StripeStandin, id: &str, what: &str, sub: &str) -> Value {
    json!({
        "id": id,
        "object": "event",
        "type": format!("customer.subscription.{what}"),
        "data": {"object": standin.object(sub).expect("the subscription")},
    })
}

async fn deliver_ok(client: &Client, event: &Value, outcome: &str) {
    let reply = signed(client, event).await;
    assert_eq!(reply.status, 200, "{event}: {reply:?}");
    assert_eq!(reply.body["outcome"], outcome, "{event}: {reply:?}");
}

async fn tier_changes(client: &Client, account: &str) -> Vec<Value> {
    let events = expect_status(
        client
            .get(&format!("/v1/events?type=tier.changed&account={account}"))
            .await,
        200,
        "tier.changed events",
    );
    events.body["data"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_is_billed_through_a_stripe_subscription() {
    let standin = StripeStandin::start(STRIPE_KEY);
    let dir = tempfile::tempdir().expect("temp dir");
    let server = stripe_server_with(dir.path(), &standin, CATALOG);
    let client = admin(&server, Duration::from_secs(10));
    expect_status(
        client
            .create_account(&NewAccount {
                id: "team".into(),
                tier: "free".into(),
                name: None,
                anchor: None,
            })
            .await,
        201,
        "an account",
    );
    let catalog = expect_status(client.get("/v1/catalog").await, 200, "the catalog");
    assert_eq!(catalog.body["tiers"][2]["stripe_price"], "price_pro");
    let link = expect_status(
        client
            .post("/v1/accounts/team/portal_sessions", &json!({}))
            .await,
        201,
        "a portal session",
    )
    .str("url")
    .to_owned();

    // Subscribe: Checkout in subscription mode, the tier unchanged until
    // Stripe says the subscription is paid.
    let location = submit_form(&link, "tier", &[("tier", "pro")]).await;
    assert!(
        location.starts_with(&format!("{}/c/pay/cs_test_", standin.base)),
        "Upgrade leads to Stripe's checkout: {location}"
    );
    let made = standin.requests_to("/v1/checkout/sessions");
    assert_eq!(made.len(), 1, "{made:?}");
    for (field, value) in [
        ("mode", "subscription"),
        ("customer", "cus_standin1"),
        ("client_reference_id", "team"),
        ("line_items[0][price]", "price_pro"),
        ("line_items[0][quantity]", "1"),
        ("subscription_data[metadata][account]", "team"),
        ("subscription_data[metadata][tier]", "pro"),
    ] {
        assert_eq!(made[0].field(field), Some(value), "{field} in {made:?}");
    }
    assert!(
        made[0]
            .field("success_url")
            .is_some_and(|url| url.ends_with("/billing?notice=subscription_started")),
        "{made:?}"
    );
    assert!(
        made[0]
            .idempotency_key
            .as_deref()
            .is_some_and(|key| key.starts_with("purser-subscribe-team-pro-")),
        "{made:?}"
    );
    let team = account(&client, "team").await;
    assert_eq!(team["tier"], "free");
    let period_end = team["balance"]["budget"]["period_end"]
        .as_str()
        .and_then(purser_core::Timestamp::parse_rfc3339)
        .expect("the period's end");
    assert_eq!(
        made[0].field("subscription_data[billing_cycle_anchor]"),
        Some(period_end.unix_seconds().to_string().as_str()),
        "Stripe's periods are the account's: {made:?}"
    );
    let session = location.rsplit('/').next().expect("the session id");
    // The session's own completion is not what sets the tier.
    deliver_ok(
        &client,
        &json!({"id": "evt_cs", "object": "event", "type": "checkout.session.completed",
                "data": {"object": {"id": session, "object": "checkout.session", "mode": "subscription",
                                    "payment_status": "paid", "client_reference_id": "team"}}}),
        "ignored",
    )
    .await;
    let sub = standin.complete_subscription_session(session);
    // Paid, its event not come yet: another click finds the subscription
    // at Stripe instead of opening a second Checkout.
    let location = submit_form(&link, "tier", &[("tier", "pro")]).await;
    assert!(
        location.ends_with("notice=tier_change_requested"),
        "{location}"
    );
    assert_eq!(standin.requests_to("/v1/checkout/sessions").len(), 1);
    assert_eq!(account(&client, "team").await["tier"], "free");
    let created = subscription_event(&standin, "evt_sub_1", "created", &sub);
    for _ in 0..3 {
        deliver_ok(&client, &created, "applied").await;
    }
    let team = account(&client, "team").await;
    assert_eq!(team["tier"], "pro", "{team}");
    let granted = |account: &Value| -> f64 {
        account["balance"]["budget"]["granted"]
            .as_str()
            .expect("granted")
            .parse()
            .expect("a number")
    };
    assert!(
        granted(&team) > 999.0 && granted(&team) < 1_000.0,
        "25 + 975 prorated to the period left, as Stripe prorates the first invoice to the anchor: {team}"
    );
    let changes = tier_changes(&client, "team").await;
    assert_eq!(changes.len(), 1, "applied once: {changes:?}");
    assert_eq!(changes[0]["data"]["source"], "portal", "{changes:?}");
    assert_eq!(changes[0]["actor"]["type"], "provider", "{changes:?}");
    assert_eq!(changes[0]["actor"]["id"], "evt_sub_1", "{changes:?}");
    let billing = page_text(&format!("{link}/billing")).await;
    assert!(
        billing.contains("data-testid=\"subscription\"") && billing.contains("renewing on"),
        "the billing page shows the subscription"
    );

    // An upgrade on a declined card: its invoice is not paid, so Stripe
    // keeps it as a pending update, and the tier stays.
    let customer = "cus_standin1";
    standin.save_card(customer, "0002", CardBehavior::Declined);
    let location = submit_form(&link, "tier", &[("tier", "business")]).await;
    assert!(
        location.ends_with("/billing?notice=tier_change_requested"),
        "{location}"
    );
    let path = format!("/v1/subscriptions/{sub}");
    let subscription = standin.object(&sub).expect("the subscription");
    assert_eq!(
        subscription["items"]["data"][0]["price"]["id"], "price_pro",
        "{subscription}"
    );
    assert!(!subscription["pending_update"].is_null(), "{subscription}");
    deliver_ok(
        &client,
        &subscription_event(&standin, "evt_sub_2", "updated", &sub),
        "applied",
    )
    .await;
    assert_eq!(
        account(&client, "team").await["tier"],
        "pro",
        "an unpaid upgrade changes nothing"
    );

    // Upgrade: the subscription's price changed, invoiced at once and
    // prorated, applied only once paid; the tier follows Stripe's update.
    standin.card_behaves(customer, CardBehavior::Succeeds);
    let location = submit_form(&link, "tier", &[("tier", "business")]).await;
    assert!(
        location.ends_with("/billing?notice=tier_change_requested"),
        "{location}"
    );
    let updates = standin.requests_to(&path);
    let upgrade = updates.last().expect("the price change");
    let item = standin.object(&sub).expect("the subscription")["items"]["data"][0]["id"]
        .as_str()
        .expect("its item")
        .to_owned();
    for (field, value) in [
        ("items[0][id]", item.as_str()),
        ("items[0][price]", "price_business"),
        ("proration_behavior", "always_invoice"),
        ("payment_behavior", "pending_if_incomplete"),
    ] {
        assert_eq!(upgrade.field(field), Some(value), "{field} in {upgrade:?}");
    }
    assert_eq!(
        account(&client, "team").await["tier"],
        "pro",
        "nothing applies before Stripe confirms"
    );
    // A stale copy of the subscription (still on Pro), delivered late.
    let stale = json!({
        "id": "evt_sub_0", "object": "event", "type": "customer.subscription.updated",
        "data": {"object": {"id": sub, "object": "subscription", "status": "active",
                 "metadata": {"account": "team"},
                 "items": {"data": [{"id": item, "price": {"id": "price_pro"}}]}}},
    });
    deliver_ok(&client, &stale, "applied").await;
    let team = account(&client, "team").await;
    assert_eq!(
        team["tier"], "business",
        "an event is read back from Stripe: its current price applies: {team}"
    );
    assert_eq!(
        team["pending_tier"],
        Value::Null,
        "not the stale Pro: {team}"
    );
    deliver_ok(
        &client,
        &subscription_event(&standin, "evt_sub_3", "updated", &sub),
        "applied",
    )
    .await;
    let team = account(&client, "team").await;
    assert_eq!(team["tier"], "business");
    assert!(
        granted(&team) > 4_990.0 && granted(&team) < 5_000.0,
        "prorated, as Stripe prorates the price: {team}"
    );
    assert_eq!(tier_changes(&client, "team").await.len(), 2);

    // Downgrade: not prorated, applied at the next period start.
    let location = submit_form(&link, "tier", &[("tier", "starter")]).await;
    assert!(
        location.ends_with("notice=tier_change_requested"),
        "{location}"
    );
    let downgrade = standin
        .requests_to(&path)
        .last()
        .cloned()
        .expect("a change");
    assert_eq!(downgrade.field("items[0][price]"), Some("price_starter"));
    assert_eq!(downgrade.field("proration_behavior"), Some("none"));
    assert_eq!(downgrade.field("payment_behavior"), None);
    deliver_ok(
        &client,
        &subscription_event(&standin, "evt_sub_4", "updated", &sub),
        "applied",
    )
    .await;
    let team = account(&client, "team").await;
    assert_eq!(team["tier"], "business", "{team}");
    assert_eq!(team["pending_tier"], "starter", "{team}");
    // Keep Business: back to its price (paid for this period already, so
    // nothing to prorate), the downgrade canceled.
    let location = submit_form(&link, "tier", &[("tier", "business"), ("cancel", "1")]).await;
    assert!(
        location.ends_with("notice=tier_change_requested"),
        "{location}"
    );
    let kept = standin
        .requests_to(&path)
        .last()
        .cloned()
        .expect("a change");
    assert_eq!(kept.field("items[0][price]"), Some("price_business"));
    assert_eq!(kept.field("proration_behavior"), Some("none"));
    deliver_ok(
        &client,
        &subscription_event(&standin, "evt_sub_5", "updated", &sub),
        "applied",
    )
    .await;
    let team = account(&client, "team").await;
    assert_eq!(team["pending_tier"], Value::Null, "{team}");

    // The free tier: the subscription ends at its period's end (the
    // account's), and the account is scheduled to move then.
    let location = submit_form(&link, "tier", &[("tier", "free")]).await;
    assert!(
        location.ends_with("notice=subscription_ending"),
        "{location}"
    );
    let ending = standin
        .requests_to(&path)
        .last()
        .cloned()
        .expect("a change");
    assert_eq!(ending.field("cancel_at_period_end"), Some("true"));
    let billing = page_text(&format!("{link}/billing")).await;
    assert!(
        billing.contains("data-ending=\"true\""),
        "the page says it ends"
    );
    deliver_ok(
        &client,
        &subscription_event(&standin, "evt_sub_6", "updated", &sub),
        "applied",
    )
    .await;
    let team = account(&client, "team").await;
    assert_eq!(team["tier"], "business", "paid until the end: {team}");
    assert_eq!(team["pending_tier"], "free", "{team}");
    // Keep Business: the subscription resumes, the move is canceled.
    let location = submit_form(&link, "tier", &[("tier", "business"), ("cancel", "1")]).await;
    assert!(
        location.ends_with("notice=downgrade_canceled"),
        "{location}"
    );
    let resumed = standin
        .requests_to(&path)
        .last()
        .cloned()
        .expect("a change");
    assert_eq!(resumed.field("cancel_at_period_end"), Some("false"));
    assert_eq!(account(&client, "team").await["pending_tier"], Value::Null);
    deliver_ok(
        &client,
        &subscription_event(&standin, "evt_sub_7", "updated", &sub),
        "applied",
    )
    .await;
    assert_eq!(account(&client, "team").await["pending_tier"], Value::Null);
    // Free again, and this time Stripe ends it.
    let _ = submit_form(&link, "tier", &[("tier", "free")]).await;
    standin.end_subscription(&sub);
    let deleted = subscription_event(&standin, "evt_sub_8", "deleted", &sub);
    deliver_ok(&client, &deleted, "applied").await;
    deliver_ok(&client, &deleted, "applied").await;
    let team = account(&client, "team").await;
    assert_eq!(team["tier"], "business", "{team}");
    assert_eq!(
        team["pending_tier"], "free",
        "moves to the free tier at the period end: {team}"
    );
    assert_eq!(
        tier_changes(&client, "team").await.len(),
        2,
        "no tier applied"
    );
    // Forged: refused, nothing changes.
    let forged = deliver(
        &client,
        &subscription_event(&standin, "evt_sub_9", "created", &sub),
        "t=1,v1=00",
    )
    .await;
    assert_eq!(forged.status, 400, "{forged:?}");
    let billing = page_text(&format!("{link}/billing")).await;
    assert!(
        !billing.contains("data-testid=\"subscription\""),
        "an ended subscription is not shown"
    );
    // Keeping Business without a subscription means paying for it again.
    let location = submit_form(&link, "tier", &[("tier", "business"), ("cancel", "1")]).await;
    assert!(location.contains("/c/pay/cs_test_"), "{location}");
    assert_eq!(account(&client, "team").await["pending_tier"], "free");

    // A closed account: Stripe's events are taken, not retried for days,
    // and a form from a page opened before it closed is refused.
    let open_page = page_text(&format!("{link}/billing")).await;
    expect_status(
        client.post("/v1/accounts/team/close", &json!({})).await,
        200,
        "closed",
    );
    deliver_ok(
        &client,
        &subscription_event(&standin, "evt_sub_10", "deleted", &sub),
        "ignored",
    )
    .await;
    let billing = page_text(&format!("{link}/billing")).await;
    assert!(
        !billing.contains("data-testid=\"choose-tier\""),
        "a closed account's plan cannot change"
    );
    let form = form_encode(&[
        ("csrf", &hidden(&open_page, "csrf")),
        ("nonce", &hidden(&open_page, "nonce")),
        ("tier", "pro"),
    ]);
    let refused = browser()
        .post(format!("{link}/tier"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .expect("an answer");
    let location = refused.headers()["location"].to_str().expect("a Location");
    assert!(location.ends_with("error=account_closed"), "{location}");
    let sessions = standin.requests_to("/v1/checkout/sessions").len();
    assert_eq!(sessions, 2, "no Checkout for a closed account");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_changes_can_be_kept_out_of_the_portal() {
    let standin = StripeStandin::start(STRIPE_KEY);
    let dir = tempfile::tempdir().expect("temp dir");
    let server = stripe_server_with(
        dir.path(),
        &standin,
        &format!("[portal]\ntier_changes = false\n{CATALOG}"),
    );
    let client = admin(&server, Duration::from_secs(10));
    expect_status(
        client
            .create_account(&NewAccount {
                id: "fixed".into(),
                tier: "starter".into(),
                name: None,
                anchor: None,
            })
            .await,
        201,
        "an account",
    );
    let link = expect_status(
        client
            .post("/v1/accounts/fixed/portal_sessions", &json!({}))
            .await,
        201,
        "a portal session",
    )
    .str("url")
    .to_owned();
    let billing = page_text(&format!("{link}/billing")).await;
    assert!(billing.contains("data-testid=\"tier-card\""), "plans shown");
    assert!(
        !billing.contains("data-testid=\"choose-tier\""),
        "no way to change them"
    );
    assert!(
        billing.contains("data-testid=\"buy-package\""),
        "packages still sold"
    );
    let location = submit_form(&link, "tier", &[("tier", "pro")]).await;
    assert!(
        location.ends_with("error=tier_changes_disabled"),
        "{location}"
    );
    assert_eq!(account(&client, "fixed").await["tier"], "starter");
    assert!(standin.requests_to("/v1/checkout/sessions").is_empty());

    // A subscription made elsewhere (Stripe's dashboard: no purser
    // metadata, not readable back here) for the customer purser made at
    // the account's first checkout: the account is found by its customer,
    // and the tier still follows Stripe.
    let location = submit_form(&link, "purchases", &[("package", "small")]).await;
    assert!(location.contains("/c/pay/cs_test_"), "{location}");
    let customer = standin.requests_to("/v1/checkout/sessions")[0]
        .field("customer")
        .expect("the customer")
        .to_owned();
    let dashboard = |id: &str, kind: &str, created: i64, status: &str| {
        json!({
            "id": id, "object": "event", "type": kind, "created": created,
            "data": {"object": {"id": "sub_dashboard", "object": "subscription", "status": status,
                     "customer": customer, "created": 1_700_000_000, "metadata": {},
                     "items": {"data": [{"id": "si_dashboard", "price": {"id": "price_pro"}}]}}},
        })
    };
    let made = dashboard(
        "evt_dash_1",
        "customer.subscription.created",
        1_700_000_100,
        "active",
    );
    deliver_ok(&client, &made, "applied").await;
    assert_eq!(account(&client, "fixed").await["tier"], "pro");
    // With no way to read it back, an event older than one applied is
    // stale: a late "canceled" from before changes nothing.
    let stale = dashboard(
        "evt_dash_0",
        "customer.subscription.updated",
        1_700_000_050,
        "canceled",
    );
    deliver_ok(&client, &stale, "ignored").await;
    assert_eq!(account(&client, "fixed").await["pending_tier"], Value::Null);
    let ended = dashboard(
        "evt_dash_2",
        "customer.subscription.deleted",
        1_700_000_200,
        "canceled",
    );
    deliver_ok(&client, &ended, "applied").await;
    assert_eq!(account(&client, "fixed").await["pending_tier"], "free");
}
