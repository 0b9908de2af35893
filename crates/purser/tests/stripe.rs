//! Stripe's events from outside: the real `purser serve` takes
//! `POST /v1/webhooks/stripe` with payloads signed by Stripe's own library
//! (`stripe` from npm, `webhooks.generateTestHeaderString`, pinned in
//! `e2e/package.json`): a purchase completed exactly once however often and
//! in whatever order Stripe delivers its events, a wrong amount refused, an
//! expired session, a refund, forged and stale signatures refused.
//!
//! Needs Node.js 20+ and `e2e/node_modules` (`.ci/test` installs them).

mod common;

use std::time::Duration;

use common::ServerProcess;
use common::ledger::{admin, expect_status};
use common::stripe::*;
use common::stripe_standin::StripeStandin;
use purser_client::{Client, NewAccount};
use serde_json::{Value, json};

fn session_event(id: &str, kind: &str, purchase: &str, amount: i64, paid: &str) -> Value {
    json!({
        "id": id,
        "object": "event",
        "type": kind,
        "data": {"object": {
            "id": format!("cs_test_{id}"),
            "object": "checkout.session",
            "client_reference_id": purchase,
            "amount_total": amount,
            "currency": "usd",
            "payment_status": paid,
            "metadata": {"purchase_id": purchase},
        }},
    })
}

async fn buy(client: &Client, account: &str) -> String {
    let purchase = expect_status(
        client
            .post(
                &format!("/v1/accounts/{account}/purchases"),
                &json!({"package": "small"}),
            )
            .await,
        201,
        "a purchase",
    );
    purchase.str("id").to_owned()
}

async fn purchase(client: &Client, id: &str) -> Value {
    expect_status(
        client.get(&format!("/v1/purchases/{id}")).await,
        200,
        "the purchase",
    )
    .body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_events_settle_purchases_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start_with_env(
        &dir.path().join("data"),
        "server",
        &[],
        &[("PURSER_STRIPE_WEBHOOK_SECRET", SECRET)],
    );
    let client = admin(&server, Duration::from_secs(10));
    expect_status(
        client
            .create_account(&NewAccount {
                id: "shop".into(),
                tier: "starter".into(),
                name: None,
                anchor: None,
            })
            .await,
        201,
        "an account",
    );
    // small: 200 credits for 9 USD, 900 cents.
    let first = buy(&client, "shop").await;
    let completed = session_event("evt_1", "checkout.session.completed", &first, 900, "paid");
    let succeeded = session_event(
        "evt_2",
        "checkout.session.async_payment_succeeded",
        &first,
        900,
        "paid",
    );
    for event in [&completed, &succeeded, &completed, &completed, &succeeded] {
        let reply = signed(&client, event).await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    assert_eq!(purchase(&client, &first).await["status"], "completed");
    let balance = expect_status(client.balance("shop").await, 200, "the balance");
    assert_eq!(
        balance.body["available"], "300",
        "granted once: {balance:?}"
    );
    let events = expect_status(
        client.get("/v1/events?type=purchase.completed").await,
        200,
        "events",
    );
    let data = events.body["data"].as_array().expect("a list");
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["actor"], json!({"type": "provider", "id": "evt_1"}));

    // A wrong amount is refused and changes nothing.
    let second = buy(&client, "shop").await;
    let short = session_event("evt_3", "checkout.session.completed", &second, 100, "paid");
    let reply = signed(&client, &short).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.error_code(), Some("amount_mismatch"));
    assert_eq!(purchase(&client, &second).await["status"], "pending");
    // An unpaid (async) session waits; its expiry fails the purchase.
    let unpaid = session_event(
        "evt_4",
        "checkout.session.completed",
        &second,
        900,
        "unpaid",
    );
    assert_eq!(signed(&client, &unpaid).await.status, 200);
    assert_eq!(purchase(&client, &second).await["status"], "pending");
    let expired = session_event("evt_5", "checkout.session.expired", &second, 900, "unpaid");
    assert_eq!(signed(&client, &expired).await.status, 200);
    assert_eq!(purchase(&client, &second).await["status"], "failed");

    // A partial refund (a third) voids a third of what is left of the
    // package, and the purchase stays completed; redelivered, nothing more.
    let partial = json!({
        "id": "evt_6p",
        "type": "charge.refunded",
        "data": {"object": {
            "object": "charge", "amount": 900, "amount_refunded": 300, "currency": "usd",
            "metadata": {"purchase_id": first},
        }},
    });
    for _ in 0..2 {
        assert_eq!(signed(&client, &partial).await.status, 200);
    }
    let partly = purchase(&client, &first).await;
    assert_eq!(partly["status"], "completed", "{partly}");
    assert_eq!(partly["amount_refunded"], 300, "{partly}");
    let balance = expect_status(client.balance("shop").await, 200, "the balance");
    assert_eq!(
        balance.body["packages"]["available"], "133.333334",
        "{balance:?}"
    );
    // A full refund refunds the purchase (its unused credits voided).
    let refund = json!({
        "id": "evt_6",
        "type": "charge.refunded",
        "data": {"object": {
            "object": "charge", "amount": 900, "amount_refunded": 900, "currency": "usd",
            "metadata": {"purchase_id": first},
        }},
    });
    assert_eq!(signed(&client, &refund).await.status, 200);
    assert_eq!(purchase(&client, &first).await["status"], "refunded");

    // Forged and stale signatures change nothing.
    let third = buy(&client, "shop").await;
    let event = session_event("evt_7", "checkout.session.completed", &third, 900, "paid");
    let body = serde_json::to_vec(&event).expect("JSON");
    let forged = stripe_header(&body, "whsec_someone_else", None);
    let reply = deliver(&client, &event, &forged).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.error_code(), Some("invalid_signature"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    let stale = stripe_header(&body, SECRET, Some(now - 301));
    assert_eq!(deliver(&client, &event, &stale).await.status, 400);
    let tampered = json!({"id": "evt_7", "type": "checkout.session.completed", "data": {"object": {
        "client_reference_id": third, "amount_total": 900, "currency": "usd", "payment_status": "paid"}}});
    let header = stripe_header(&serde_json::to_vec(&tampered).expect("JSON"), SECRET, None);
    let mut other = tampered.clone();
    other["data"]["object"]["amount_total"] = json!(1);
    assert_eq!(deliver(&client, &other, &header).await.status, 400);
    assert_eq!(purchase(&client, &third).await["status"], "pending");
    // Signed properly, it applies.
    assert_eq!(signed(&client, &event).await.status, 200);
    assert_eq!(purchase(&client, &third).await["status"], "completed");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_purchase_is_paid_on_stripe_checkout() {
    let standin = StripeStandin::start(STRIPE_KEY);
    let dir = tempfile::tempdir().expect("temp dir");
    let server = stripe_server(dir.path(), &standin);
    let client = admin(&server, Duration::from_secs(10));
    expect_status(
        client
            .create_account(&NewAccount {
                id: "shop".into(),
                tier: "starter".into(),
                name: None,
                anchor: None,
            })
            .await,
        201,
        "an account",
    );
    let session = expect_status(
        client
            .post("/v1/accounts/shop/portal_sessions", &json!({}))
            .await,
        201,
        "a portal session",
    );
    let link = session.str("url").to_owned();

    // Buy: a Stripe customer for the account, a Checkout Session for the
    // purchase, and the customer sent there.
    let location = submit_form(&link, "purchases", &[("package", "small")]).await;
    assert!(
        location.starts_with(&format!("{}/c/pay/cs_test_", standin.base)),
        "Buy leads to Stripe's checkout: {location}"
    );
    let customers = standin.requests_to("/v1/customers");
    assert_eq!(customers.len(), 1, "{customers:?}");
    assert_eq!(customers[0].field("metadata[purser_account]"), Some("shop"));
    assert_eq!(
        customers[0].idempotency_key.as_deref(),
        Some("purser-customer-shop")
    );
    let sessions = standin.requests_to("/v1/checkout/sessions");
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let made = &sessions[0];
    let purchase_id = made
        .field("client_reference_id")
        .expect("the purchase")
        .to_owned();
    assert!(purchase_id.starts_with("pur_"), "{purchase_id}");
    for (field, value) in [
        ("mode", "payment"),
        ("customer", "cus_standin1"),
        ("metadata[purchase_id]", purchase_id.as_str()),
        (
            "payment_intent_data[metadata][purchase_id]",
            purchase_id.as_str(),
        ),
        ("payment_intent_data[setup_future_usage]", "off_session"),
        ("line_items[0][quantity]", "1"),
        ("line_items[0][price_data][currency]", "usd"),
        ("line_items[0][price_data][unit_amount]", "900"),
    ] {
        assert_eq!(made.field(field), Some(value), "{field} in {made:?}");
    }
    assert_eq!(
        made.idempotency_key.as_deref(),
        Some(format!("purser-checkout-{purchase_id}").as_str())
    );
    let billing = format!("{link}/billing");
    assert!(
        made.field("success_url")
            .is_some_and(|url| url.starts_with(&billing)),
        "{made:?}"
    );
    assert!(page_text(&location).await.contains(&purchase_id));
    let page = page_text(&billing).await;
    assert!(
        page.contains(r#"data-status="pending">Waiting for payment<"#),
        "the billing page says the purchase waits for payment"
    );

    // Pay again (the customer left Stripe's page): the same session.
    let again = submit_form(&link, &format!("purchases/{purchase_id}/pay"), &[]).await;
    assert_eq!(again, location, "the same checkout page");
    assert_eq!(standin.requests_to("/v1/customers").len(), 1);

    // Stripe confirms, three times and out of order: granted once.
    let completed = session_event(
        "evt_c1",
        "checkout.session.completed",
        &purchase_id,
        900,
        "paid",
    );
    let succeeded = session_event(
        "evt_c2",
        "checkout.session.async_payment_succeeded",
        &purchase_id,
        900,
        "paid",
    );
    for event in [&completed, &succeeded, &completed, &completed] {
        let reply = signed(&client, event).await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let balance = expect_status(client.balance("shop").await, 200, "the balance");
    assert_eq!(balance.body["packages"]["available"], "200", "{balance:?}");
    let page = page_text(&billing).await;
    assert!(page.contains(r#"data-status="completed">Paid<"#));

    // Through the API: the answer carries the checkout URL, the same on a
    // retry with the same Idempotency-Key.
    let key = "buy-large-1";
    let bought = client
        .post_idempotent(
            "/v1/accounts/shop/purchases",
            &json!({"package": "small", "success_url": "https://app.example.com/thanks"}),
            key,
        )
        .await
        .expect("an answer");
    assert_eq!(bought.status, 201, "{bought:?}");
    let url = bought.body["checkout_url"]
        .as_str()
        .expect("a checkout_url")
        .to_owned();
    assert!(url.starts_with(&format!("{}/c/pay/", standin.base)));
    let retried = client
        .post_idempotent(
            "/v1/accounts/shop/purchases",
            &json!({"package": "small", "success_url": "https://app.example.com/thanks"}),
            key,
        )
        .await
        .expect("an answer");
    assert_eq!(retried.body["checkout_url"], url.as_str());
    assert_eq!(retried.body["id"], bought.body["id"]);
    let last = standin.requests_to("/v1/checkout/sessions");
    assert_eq!(
        last.last().and_then(|r| r.field("success_url")),
        Some("https://app.example.com/thanks")
    );

    // Stripe down: the purchase waits, the answer says so (503), and the
    // retry with the same key finishes it.
    standin.set_outage(Some(500));
    let key = "buy-during-outage";
    let down = client
        .post_idempotent(
            "/v1/accounts/shop/purchases",
            &json!({"package": "small"}),
            key,
        )
        .await
        .expect("an answer");
    assert_eq!(down.status, 503, "{down:?}");
    assert_eq!(down.error_code(), Some("payment_provider_unavailable"));
    standin.set_outage(None);
    let up = client
        .post_idempotent(
            "/v1/accounts/shop/purchases",
            &json!({"package": "small"}),
            key,
        )
        .await
        .expect("an answer");
    assert_eq!(up.status, 201, "{up:?}");
    assert!(up.body["checkout_url"].is_string());

    // Canceling closes the checkout page first (it cannot be paid after).
    let pending = up.str("id").to_owned();
    let canceled = client
        .post(&format!("/v1/purchases/{pending}/cancel"), &json!({}))
        .await
        .expect("an answer");
    assert_eq!(canceled.status, 200, "{canceled:?}");
    assert_eq!(canceled.body["status"], "canceled");
    let session = up.body["checkout_url"]
        .as_str()
        .and_then(|url| url.rsplit('/').next())
        .expect("the session id")
        .to_owned();
    assert_eq!(
        standin
            .requests_to(&format!("/v1/checkout/sessions/{session}/expire"))
            .len(),
        1
    );
    // Paid anyway as it was closed (the event comes late): the money goes
    // back, the purchase stays canceled, no credits.
    let mut late = session_event(
        "evt_late",
        "checkout.session.completed",
        &pending,
        900,
        "paid",
    );
    late["data"]["object"]["payment_intent"] = json!("pi_late");
    let reply = signed(&client, &late).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["outcome"], "refunded", "{reply:?}");
    let refunds = standin.requests_to("/v1/refunds");
    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0].field("payment_intent"), Some("pi_late"));
    assert_eq!(
        refunds[0].idempotency_key.as_deref(),
        Some("purser-refund-pi_late")
    );
    assert_eq!(purchase(&client, &pending).await["status"], "canceled");
    // A page being paid cannot be closed: the purchase is not canceled.
    let paying = client
        .post("/v1/accounts/shop/purchases", &json!({"package": "small"}))
        .await
        .expect("an answer");
    let paying_session = paying.body["checkout_url"]
        .as_str()
        .and_then(|url| url.rsplit('/').next())
        .expect("the session id")
        .to_owned();
    standin.complete_session(&paying_session);
    let refused = client
        .post(
            &format!("/v1/purchases/{}/cancel", paying.str("id")),
            &json!({}),
        )
        .await
        .expect("an answer");
    assert_eq!(refused.status, 409, "{refused:?}");
    assert_eq!(refused.error_code(), Some("payment_in_progress"));
    assert_eq!(
        purchase(&client, paying.str("id")).await["status"],
        "pending"
    );

    // Pay from another portal link: the same page (kept, not made again
    // with other return URLs under the same idempotency key).
    let other = expect_status(
        client
            .post("/v1/accounts/shop/portal_sessions", &json!({}))
            .await,
        201,
        "another portal session",
    );
    let again = submit_form(
        other.str("url"),
        &format!("purchases/{}/pay", paying.str("id")),
        &[],
    )
    .await;
    assert_eq!(Some(again.as_str()), paying.body["checkout_url"].as_str());
    drop(server);
}

/// Waits (up to 10 s) for an event of `kind` on `account` beyond the
/// `seen` first ones; answers all of them, newest first.
async fn wait_events(client: &Client, kind: &str, account: &str, seen: usize) -> Vec<Value> {
    for _ in 0..200 {
        let events = expect_status(
            client
                .get(&format!(
                    "/v1/events?type={kind}&account={account}&limit=100"
                ))
                .await,
            200,
            "events",
        );
        let data = events.body["data"].as_array().cloned().unwrap_or_default();
        if data.len() > seen {
            return data;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no new {kind} event for {account} within 10 s");
}

async fn spend(client: &Client, account: &str, credits: &str) {
    expect_status(
        client
            .post(
                &format!("/v1/accounts/{account}/usage"),
                &json!({"credits": credits}),
            )
            .await,
        201,
        "a charge",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_recharge_charges_the_saved_card_off_session() {
    use common::stripe_standin::CardBehavior;
    let standin = StripeStandin::start(STRIPE_KEY);
    let dir = tempfile::tempdir().expect("temp dir");
    let server = stripe_server(dir.path(), &standin);
    let client = admin(&server, Duration::from_secs(10));
    // starter: 100 budget credits; below 50, buy small (200 credits, 9 USD).
    expect_status(
        client
            .post(
                "/v1/accounts",
                &json!({"id": "robo", "tier": "starter",
                        "auto_recharge": {"enabled": true, "threshold": "50", "package": "small"}}),
            )
            .await,
        201,
        "an account with auto-recharge",
    );
    // No Stripe customer yet, so no card: told, nothing charged.
    spend(&client, "robo", "60").await;
    let failed = wait_events(&client, "auto_recharge.failed", "robo", 0).await;
    assert_eq!(
        failed[0]["data"]["reason"], "no_payment_method",
        "{failed:?}"
    );
    assert_eq!(failed[0]["data"]["purchase"]["status"], "failed");
    assert!(standin.requests_to("/v1/payment_intents").is_empty());

    // A checkout made the customer and saved a card: the next charge below
    // the threshold is paid off-session.
    let bought = client
        .post("/v1/accounts/robo/purchases", &json!({"package": "small"}))
        .await
        .expect("an answer");
    assert_eq!(bought.status, 201, "{bought:?}");
    standin.save_card("cus_standin1", "4242", CardBehavior::Succeeds);
    spend(&client, "robo", "1").await;
    let succeeded = wait_events(&client, "auto_recharge.succeeded", "robo", 0).await;
    assert_eq!(succeeded[0]["data"]["purchase"]["status"], "completed");
    let intents = standin.requests_to("/v1/payment_intents");
    assert_eq!(intents.len(), 1, "{intents:?}");
    let intent = &intents[0];
    let purchase = succeeded[0]["data"]["purchase"]["id"].as_str().unwrap();
    for (field, value) in [
        ("amount", "900"),
        ("currency", "usd"),
        ("customer", "cus_standin1"),
        ("off_session", "true"),
        ("confirm", "true"),
        ("metadata[purchase_id]", purchase),
        ("metadata[auto_recharge]", "true"),
    ] {
        assert_eq!(intent.field(field), Some(value), "{field} in {intent:?}");
    }
    assert!(
        intent
            .field("payment_method")
            .is_some_and(|pm| pm.starts_with("pm_"))
    );
    assert_eq!(
        intent.idempotency_key.as_deref(),
        Some(format!("purser-recharge-{purchase}").as_str())
    );
    let balance = expect_status(client.balance("robo").await, 200, "the balance");
    assert_eq!(balance.body["available"], "239", "{balance:?}");

    // The bank asks for authentication, then the card is declined twice:
    // three failed payments in a row switch auto-recharge off.
    standin.card_behaves("cus_standin1", CardBehavior::NeedsAuthentication);
    spend(&client, "robo", "190").await; // 49 left
    let failed = wait_events(&client, "auto_recharge.failed", "robo", 1).await;
    assert_eq!(failed[0]["data"]["reason"], "action_required", "{failed:?}");
    standin.card_behaves("cus_standin1", CardBehavior::Declined);
    for seen in [2, 3] {
        spend(&client, "robo", "1").await;
        let failed = wait_events(&client, "auto_recharge.failed", "robo", seen).await;
        assert_eq!(failed[0]["data"]["reason"], "payment_failed", "{failed:?}");
    }
    let account = expect_status(client.account("robo").await, 200, "the account");
    assert_eq!(
        account.body["auto_recharge"]["enabled"], false,
        "three failures switch it off: {account:?}"
    );
    assert_eq!(account.body["auto_recharge"]["failures"], 3);
    let before = standin.requests_to("/v1/payment_intents").len();
    spend(&client, "robo", "1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        standin.requests_to("/v1/payment_intents").len(),
        before,
        "off: no charge"
    );

    // The customer sees it in the portal, with the card, and switches it
    // back on there.
    let session = expect_status(
        client
            .post("/v1/accounts/robo/portal_sessions", &json!({}))
            .await,
        201,
        "a portal session",
    );
    let link = session.str("url").to_owned();
    let page = page_text(&format!("{link}/billing")).await;
    assert!(
        page.contains(r#"data-testid="auto-recharge" data-enabled="false""#),
        "{page}"
    );
    assert!(page.contains("the last three payments failed"), "{page}");
    assert!(page.contains("ending in <strong>4242</strong>"), "{page}");
    standin.card_behaves("cus_standin1", CardBehavior::Succeeds);
    let back = submit_form(
        &link,
        "auto_recharge",
        &[
            ("enabled", "true"),
            ("threshold", "30"),
            ("package", "medium"),
        ],
    )
    .await;
    assert!(back.ends_with("notice=recharge_on"), "{back}");
    let account = expect_status(client.account("robo").await, 200, "the account");
    let setting = &account.body["auto_recharge"];
    assert_eq!(
        (
            &setting["enabled"],
            &setting["threshold"],
            &setting["package"],
            &setting["failures"]
        ),
        (&json!(true), &json!("30"), &json!("medium"), &json!(0)),
        "{account:?}"
    );
    // On again: the next charge below 30 buys medium.
    spend(&client, "robo", "20").await;
    let succeeded = wait_events(&client, "auto_recharge.succeeded", "robo", 1).await;
    assert_eq!(succeeded[0]["data"]["purchase"]["package"], "medium");
    let page = page_text(&format!("{link}/billing")).await;
    assert!(page.contains(r#"data-enabled="true""#));
    let back = submit_form(&link, "auto_recharge", &[("enabled", "false")]).await;
    assert!(back.ends_with("notice=recharge_off"), "{back}");
    let account = expect_status(client.account("robo").await, 200, "the account");
    assert_eq!(account.body["auto_recharge"]["enabled"], false);
    drop(server);
}
