// The whole API over HTTP: each test starts the real app on port 0 with a
// fresh data directory and a test clock, and talks to it through the typed
// client. No sleeps: the test clock moves time, and answers come back only
// once durable.

mod harness;

use harness::{ADMIN_KEY, Server, charge, credits};
use purser_client::{Charge, Cost};
use serde_json::json;

#[tokio::test]
async fn a_charge_burns_budget_then_packages_and_reads_back() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "starter").await;
    let purchase = api
        .post("/v1/accounts/acme/purchases", &json!({"package": "small"}))
        .await
        .unwrap();
    assert_eq!(purchase.status, 201, "{purchase:?}");
    assert_eq!(purchase.str("status"), "pending");
    let completed = api
        .post(
            &format!("/v1/purchases/{}/complete", purchase.str("id")),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(
        (completed.status, completed.str("status")),
        (200, "completed")
    );
    let debit = charge(&api, "acme", Cost::credits("120")).await;
    assert_eq!(debit.status, 201, "{debit:?}");
    let kinds: Vec<&str> = debit.body["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["budget", "package"]);
    assert_eq!(debit.body["balance"]["available"], "180");
    let balance = api.balance("acme").await.unwrap();
    assert_eq!(balance.body["budget"]["used"], "100");
    assert_eq!(balance.body["packages"]["available"], "180");
    assert_eq!(credits(&balance, "available"), "180");
}

#[tokio::test]
async fn a_short_strict_charge_is_402_and_changes_nothing() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "starter").await;
    charge(&api, "acme", Cost::credits("60")).await;
    let before = api.transactions("acme", "").await.unwrap();
    let refused = charge(&api, "acme", Cost::credits("40.5")).await;
    assert_eq!(refused.status, 402);
    assert_eq!(refused.error_type(), Some("insufficient_credits"));
    assert_eq!(refused.body["error"]["available"], "40");
    assert_eq!(refused.body["error"]["required"], "40.5");
    assert_eq!(
        api.transactions("acme", "").await.unwrap(),
        before,
        "nothing written"
    );
    assert_eq!(
        credits(&api.balance("acme").await.unwrap(), "available"),
        "40"
    );
}

#[tokio::test]
async fn idempotent_replays_return_the_first_answer_and_mismatches_are_refused() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "starter").await;
    let body = Charge::new(Cost::task("assistant_message", "3"));
    let first = api.charge("acme", &body, Some("order-1")).await.unwrap();
    assert_eq!(first.status, 201);
    let again = api.charge("acme", &body, Some("order-1")).await.unwrap();
    assert_eq!(again, first, "the same status and body");
    // The same JSON value written differently is the same request.
    let spaced = api
        .send(
            "POST",
            "/v1/accounts/acme/usage",
            Some(br#"{ "quantity": "3",  "task": "assistant_message" }"#.to_vec()),
            Some("order-1"),
        )
        .await
        .unwrap();
    assert_eq!(spaced, first);
    let other = api
        .charge(
            "acme",
            &Charge::new(Cost::task("assistant_message", "4")),
            Some("order-1"),
        )
        .await
        .unwrap();
    assert_eq!(
        (other.status, other.error_type()),
        (409, Some("idempotency_error"))
    );
    let elsewhere = api
        .post_idempotent(
            "/v1/accounts/acme/holds",
            &json!({"credits": "1"}),
            "order-1",
        )
        .await
        .unwrap();
    assert_eq!(elsewhere.status, 409);
    assert_eq!(
        credits(&api.balance("acme").await.unwrap(), "available"),
        "98.5",
        "charged once"
    );
    // A refusal is not remembered: the same key can be used again.
    let short = api
        .charge("acme", &Charge::new(Cost::credits("500")), Some("order-2"))
        .await
        .unwrap();
    assert_eq!(short.status, 402);
    let retried = api
        .charge("acme", &Charge::new(Cost::credits("5")), Some("order-2"))
        .await
        .unwrap();
    assert_eq!(retried.status, 201);
    // Keys survive a restart.
    let dir = server.stop().await;
    let server = Server::start_in(dir, |_| {}).await;
    let replay = server
        .admin()
        .charge("acme", &body, Some("order-1"))
        .await
        .unwrap();
    assert_eq!(replay, first);
    assert_eq!(
        credits(&server.admin().balance("acme").await.unwrap(), "available"),
        "93.5"
    );
}

#[tokio::test]
async fn holds_capture_less_more_release_and_expire() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "starter").await;
    let hold = api
        .post(
            "/v1/accounts/acme/holds",
            &json!({"credits": "40", "ttl_seconds": 600}),
        )
        .await
        .unwrap();
    assert_eq!(
        (hold.status, hold.str("status")),
        (201, "active"),
        "{hold:?}"
    );
    let balance = api.balance("acme").await.unwrap();
    assert_eq!(
        (credits(&balance, "available"), credits(&balance, "held")),
        ("60", "40")
    );
    let capture = api
        .post(
            &format!("/v1/holds/{}/capture", hold.str("id")),
            &json!({"credits": "25"}),
        )
        .await
        .unwrap();
    assert_eq!(
        (capture.status, capture.str("object")),
        (200, "debit"),
        "{capture:?}"
    );
    assert_eq!(capture.body["balance"]["available"], "75");
    let again = api
        .post(&format!("/v1/holds/{}/release", hold.str("id")), &json!({}))
        .await
        .unwrap();
    assert_eq!((again.status, again.error_type()), (409, Some("conflict")));
    let shown = api
        .get(&format!("/v1/holds/{}", hold.str("id")))
        .await
        .unwrap();
    assert_eq!(shown.str("status"), "captured", "{shown:?}");

    let more = api
        .post("/v1/accounts/acme/holds", &json!({"credits": "10"}))
        .await
        .unwrap();
    let over = api
        .post(
            &format!("/v1/holds/{}/capture", more.str("id")),
            &json!({"credits": "15"}),
        )
        .await
        .unwrap();
    assert_eq!(over.status, 200);
    assert_eq!(over.body["balance"]["available"], "60");
    // Held and excess credits from the same grant: one allocation (rule 1).
    let allocations = over.body["allocations"].as_array().unwrap();
    assert_eq!(allocations.len(), 1, "{over:?}");
    assert_eq!(allocations[0]["credits"], "15", "{over:?}");
    let too_much = api
        .post("/v1/accounts/acme/holds", &json!({"credits": "50"}))
        .await
        .unwrap();
    let refused = api
        .post(
            &format!("/v1/holds/{}/capture", too_much.str("id")),
            &json!({"credits": "61"}),
        )
        .await
        .unwrap();
    assert_eq!(refused.status, 402);
    let released = api
        .post(
            &format!("/v1/holds/{}/release", too_much.str("id")),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(
        (released.status, released.str("status")),
        (200, "released"),
        "{released:?}"
    );

    let expiring = api
        .post(
            "/v1/accounts/acme/holds",
            &json!({"credits": "20", "ttl_seconds": 60}),
        )
        .await
        .unwrap();
    assert_eq!(
        credits(&api.balance("acme").await.unwrap(), "available"),
        "40"
    );
    server.advance(60).await;
    assert_eq!(
        credits(&api.balance("acme").await.unwrap(), "available"),
        "60"
    );
    let expired = api
        .get(&format!("/v1/holds/{}", expiring.str("id")))
        .await
        .unwrap();
    assert_eq!(expired.str("status"), "expired");
    let late = api
        .post(
            &format!("/v1/holds/{}/capture", expiring.str("id")),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(late.status, 409);
    let missing = api
        .post("/v1/holds/hold_10000000000009/capture", &json!({}))
        .await
        .unwrap();
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn three_months_later_three_renewals_in_order() {
    let server = Server::start().await;
    let api = server.admin();
    let opened = server.open("acme", "starter").await;
    charge(&api, "acme", Cost::credits("30")).await;
    let first_end = opened.body["balance"]["budget"]["period_end"]
        .as_str()
        .unwrap()
        .to_owned();
    server.advance(3 * 31 * 86_400).await;
    let grants = api.transactions("acme", "?type=grant").await.unwrap();
    let times: Vec<&str> = grants.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["created_at"].as_str().unwrap())
        .collect();
    assert_eq!(
        times.len(),
        4,
        "the first budget and three renewals: {grants:?}"
    );
    assert!(
        times.windows(2).all(|w| w[0] > w[1]),
        "newest first, in order: {times:?}"
    );
    assert_eq!(
        times[2], first_end,
        "the first renewal happened at the first period's end"
    );
    let expiries = api.transactions("acme", "?type=expire").await.unwrap();
    let lost: Vec<&str> = expiries.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["credits"].as_str().unwrap())
        .collect();
    assert_eq!(lost, ["-100", "-100", "-70"]);
    assert_eq!(
        credits(&api.balance("acme").await.unwrap(), "available"),
        "100"
    );
}

#[tokio::test]
async fn upgrades_apply_at_once_and_downgrades_wait() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "starter").await;
    let upgraded = api
        .post("/v1/accounts/acme/tier", &json!({"tier": "pro"}))
        .await
        .unwrap();
    assert_eq!(
        (upgraded.status, upgraded.str("tier")),
        (200, "pro"),
        "{upgraded:?}"
    );
    assert_eq!(upgraded.body["balance"]["budget"]["granted"], "1000");
    let downgrade = api
        .post("/v1/accounts/acme/tier", &json!({"tier": "free"}))
        .await
        .unwrap();
    assert_eq!(
        (downgrade.str("tier"), downgrade.str("pending_tier")),
        ("pro", "free")
    );
    let cancel = api
        .post("/v1/accounts/acme/tier", &json!({"tier": "pro"}))
        .await
        .unwrap();
    assert!(cancel.body["pending_tier"].is_null());
    api.post("/v1/accounts/acme/tier", &json!({"tier": "free"}))
        .await
        .unwrap();
    server.advance(32 * 86_400).await;
    let account = api.account("acme").await.unwrap();
    assert_eq!(account.str("tier"), "free");
    assert_eq!(account.body["balance"]["budget"]["granted"], "25");
    // pro rolls over up to 250 of its unused 1000 into the new period.
    assert_eq!(account.body["balance"]["rollover"]["available"], "250");
    let bad = api
        .post("/v1/accounts/acme/tier", &json!({"tier": "gold"}))
        .await
        .unwrap();
    assert_eq!(
        (bad.status, bad.body["error"]["param"].as_str()),
        (400, Some("tier"))
    );
}

#[tokio::test]
async fn recorded_usage_becomes_debt_paid_by_the_next_credits() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "free").await;
    let recorded = api
        .charge(
            "acme",
            &Charge {
                mode: Some("record".into()),
                ..Charge::new(Cost::credits("40"))
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (recorded.status, recorded.str("debt_incurred")),
        (201, "15")
    );
    assert_eq!(recorded.body["balance"]["debt"], "15");
    let grant = api
        .post(
            "/v1/accounts/acme/grants",
            &json!({"credits": "50", "reason": "welcome"}),
        )
        .await
        .unwrap();
    assert_eq!(grant.status, 201, "{grant:?}");
    let balance = api.balance("acme").await.unwrap();
    assert_eq!(
        (credits(&balance, "available"), credits(&balance, "debt")),
        ("35", "0")
    );
    let paid = api.transactions("acme", "?type=debt_paid").await.unwrap();
    assert_eq!(paid.body["data"][0]["allocations"][0]["credits"], "15");
}

#[tokio::test]
async fn member_caps_refuse_strict_charges() {
    let server = Server::start().await;
    let api = server.admin();
    let created = api
        .post(
            "/v1/accounts",
            &json!({"id": "acme", "tier": "pro", "member_monthly_cap": "10"}),
        )
        .await
        .unwrap();
    assert_eq!(created.status, 201);
    let member =
        |credits: &str, mode: &str| json!({"credits": credits, "member": "ann", "mode": mode});
    assert_eq!(
        api.post("/v1/accounts/acme/usage", &member("8", "strict"))
            .await
            .unwrap()
            .status,
        201
    );
    let refused = api
        .post("/v1/accounts/acme/usage", &member("3", "strict"))
        .await
        .unwrap();
    assert_eq!(
        (refused.status, refused.error_type()),
        (402, Some("member_limit_exceeded"))
    );
    assert_eq!(
        api.post("/v1/accounts/acme/usage", &member("3", "record"))
            .await
            .unwrap()
            .status,
        201
    );
    let other = api
        .post(
            "/v1/accounts/acme/usage",
            &json!({"credits": "9", "member": "bob"}),
        )
        .await
        .unwrap();
    assert_eq!(other.status, 201);
}

#[tokio::test]
async fn reversals_give_credits_back() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "starter").await;
    let debit = charge(&api, "acme", Cost::credits("30")).await;
    let path = format!("/v1/debits/{}/reverse", debit.str("id"));
    let partial = api.post(&path, &json!({"credits": "10"})).await.unwrap();
    assert_eq!(
        (partial.status, partial.str("type")),
        (200, "reversal"),
        "{partial:?}"
    );
    assert_eq!(
        credits(&api.balance("acme").await.unwrap(), "available"),
        "80"
    );
    let rest = api.post(&path, &json!({})).await.unwrap();
    assert_eq!(rest.str("reversed"), "20");
    let nothing = api.post(&path, &json!({})).await.unwrap();
    assert_eq!(nothing.status, 409);
    let unknown = api
        .post("/v1/debits/deb_10000000000009/reverse", &json!({}))
        .await
        .unwrap();
    assert_eq!(unknown.status, 404);
    let shown = api
        .get(&format!("/v1/debits/{}", debit.str("id")))
        .await
        .unwrap();
    assert_eq!((shown.status, shown.str("credits")), (200, "-30"));
}

/// The account list reads an index kept by each shard (built on the first
/// list, then kept up): accounts created after a list appear in the next;
/// walking the pages gives every account once, newest instant first, ties
/// by id, across shards.
#[tokio::test]
async fn account_lists_walk_every_account_once_in_order() {
    let server = Server::start().await;
    let api = server.admin();
    let mut expected: Vec<String> = Vec::new();
    for (round, (prefix, count)) in [("b", 7), ("c", 5), ("d", 3)].into_iter().enumerate() {
        if round > 0 {
            server.advance(60).await;
        }
        let mut ids: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
        for id in &ids {
            server.open(id, "free").await;
        }
        // A list between the rounds: the index must take later accounts in.
        let listed = api.get("/v1/accounts?limit=1").await.unwrap();
        assert_eq!(listed.body["data"][0]["id"], json!(ids[ids.len() - 1]));
        ids.reverse();
        ids.extend(expected);
        expected = ids;
    }
    let mut walked: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/v1/accounts?limit=4".to_owned(),
            Some(id) => format!("/v1/accounts?limit=4&starting_after={id}"),
        };
        let page = api.get(&path).await.unwrap();
        assert_eq!(page.status, 200, "{}", page.body);
        let ids: Vec<String> = page.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect();
        walked.extend(ids.iter().cloned());
        if page.body["has_more"] != json!(true) {
            break;
        }
        cursor = ids.last().cloned();
        assert!(walked.len() <= expected.len(), "{walked:?}");
    }
    assert_eq!(walked, expected);
}

#[tokio::test]
async fn lists_paginate_newest_first() {
    let server = Server::start().await;
    let api = server.admin();
    for id in ["a1", "a2", "a3", "a4", "a5"] {
        server.open(id, "free").await;
    }
    // The test clock stands still: all five share one creation instant, and
    // ties are ordered by id, newest (highest) first.
    let first = api.get("/v1/accounts?limit=2").await.unwrap();
    let ids = |reply: &purser_client::Reply| -> Vec<String> {
        reply.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        (ids(&first), first.body["has_more"].as_bool()),
        (vec!["a5".to_string(), "a4".into()], Some(true))
    );
    let second = api
        .get("/v1/accounts?limit=2&starting_after=a4")
        .await
        .unwrap();
    assert_eq!(ids(&second), ["a3", "a2"]);
    let last = api
        .get("/v1/accounts?limit=2&starting_after=a2")
        .await
        .unwrap();
    assert_eq!(
        (ids(&last), last.body["has_more"].as_bool()),
        (vec!["a1".to_string()], Some(false))
    );
    for _ in 0..5 {
        charge(&api, "a1", Cost::credits("1")).await;
    }
    let page = api.transactions("a1", "?limit=3").await.unwrap();
    assert_eq!(page.body["data"].as_array().unwrap().len(), 3);
    let cursor = page.body["data"][2]["id"].as_str().unwrap();
    let next = api
        .transactions("a1", &format!("?limit=10&starting_after={cursor}"))
        .await
        .unwrap();
    assert_eq!(
        next.body["data"].as_array().unwrap().len(),
        4,
        "2 debits, the grant, the opening"
    );
    for _ in 0..3 {
        api.post(
            "/v1/accounts/a2/grants",
            &json!({"credits": "1", "reason": "thanks"}),
        )
        .await
        .unwrap();
    }
    let grants = api.get("/v1/accounts/a2/grants?limit=2").await.unwrap();
    assert_eq!(
        (
            grants.body["data"].as_array().unwrap().len(),
            grants.body["has_more"].as_bool()
        ),
        (2, Some(true))
    );
    let after = grants.body["data"][1]["id"].as_str().unwrap();
    let rest = api
        .get(&format!(
            "/v1/accounts/a2/grants?limit=2&starting_after={after}"
        ))
        .await
        .unwrap();
    assert_eq!(
        (
            rest.body["data"].as_array().unwrap().len(),
            rest.body["has_more"].as_bool()
        ),
        (2, Some(false))
    );
    assert_eq!(api.get("/v1/accounts?limit=0").await.unwrap().status, 400);
    assert_eq!(api.get("/v1/accounts?limit=101").await.unwrap().status, 400);
}

#[tokio::test]
async fn usage_summaries_group_by_task_day_member_and_kind() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "starter").await;
    let post = |body: serde_json::Value| {
        let api = api.clone();
        async move { api.post("/v1/accounts/acme/usage", &body).await.unwrap() }
    };
    post(json!({"task": "assistant_message", "quantity": "4", "member": "ann"})).await;
    post(json!({"task": "transcribe_video", "quantity": "10", "member": "bob"})).await;
    post(json!({"credits": "3"})).await;
    let by = |group: &str| {
        let api = api.clone();
        let group = group.to_owned();
        async move {
            let reply = api
                .get(&format!("/v1/accounts/acme/usage/summary?group_by={group}"))
                .await
                .unwrap();
            reply.body["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|row| {
                    format!(
                        "{}={}x{}",
                        row["key"].as_str().unwrap_or("-"),
                        row["credits"].as_str().unwrap(),
                        row["count"]
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        by("task").await,
        ["-=3x1", "assistant_message=2x1", "transcribe_video=20x1"]
    );
    assert_eq!(by("member").await, ["-=3x1", "ann=2x1", "bob=20x1"]);
    assert_eq!(by("kind").await, ["budget=25x3"]);
    assert_eq!(by("day").await.len(), 1);
    let bad = api
        .get("/v1/accounts/acme/usage/summary?group_by=colour")
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn scopes_are_enforced() {
    let server = Server::start().await;
    server.open("acme", "starter").await;
    let anonymous = server.admin().with_key("sk_wrong");
    assert_eq!(anonymous.balance("acme").await.unwrap().status, 401);
    let no_header = reqwest_like_get(&server.base, "/v1/accounts/acme").await;
    assert_eq!(no_header, 401);
    let usage = server.key(&["usage"]).await;
    assert_eq!(charge(&usage, "acme", Cost::credits("1")).await.status, 201);
    assert_eq!(usage.balance("acme").await.unwrap().status, 200);
    let forbidden = usage
        .post("/v1/accounts", &json!({"id": "x", "tier": "free"}))
        .await
        .unwrap();
    assert_eq!(
        (forbidden.status, forbidden.error_type()),
        (403, Some("permission_error"))
    );
    assert_eq!(usage.get("/v1/accounts").await.unwrap().status, 403);
    let created = server
        .admin()
        .post("/v1/api_keys", &json!({"scopes": ["read"]}))
        .await
        .unwrap();
    let read = server.admin().with_key(created.str("secret"));
    assert_eq!(read.account("acme").await.unwrap().status, 200);
    assert_eq!(charge(&read, "acme", Cost::credits("1")).await.status, 403);
    let keys = server.admin().get("/v1/api_keys").await.unwrap();
    assert!(
        keys.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k.get("secret").is_none())
    );
    let revoked = server
        .admin()
        .post(
            &format!("/v1/api_keys/{}/revoke", created.str("id")),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(
        (revoked.status, revoked.body["revoked_at"].is_string()),
        (200, true)
    );
    assert_eq!(
        read.account("acme").await.unwrap().status,
        401,
        "a revoked key no longer works"
    );
    assert_eq!(
        usage.balance("acme").await.unwrap().status,
        200,
        "other keys still do"
    );
}

async fn reqwest_like_get(base: &str, path: &str) -> u16 {
    let client = purser_client::Client::new(base, "");
    client.get(path).await.unwrap().status
}

#[tokio::test]
async fn bad_input_gets_the_contract_errors() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "starter").await;
    let cases: &[(&str, &[u8], u16, Option<&str>)] = &[
        (
            "/v1/accounts/acme/usage",
            br#"{"credits": "-1"}"#,
            400,
            Some("credits"),
        ),
        (
            "/v1/accounts/acme/usage",
            br#"{"credits": "0"}"#,
            400,
            Some("credits"),
        ),
        (
            "/v1/accounts/acme/usage",
            br#"{"credits": "1.0000001"}"#,
            400,
            Some("credits"),
        ),
        (
            "/v1/accounts/acme/usage",
            br#"{"credits": "1.0000000"}"#,
            400,
            Some("credits"),
        ),
        (
            "/v1/accounts/acme/usage",
            br#"{"credits": "1e3"}"#,
            400,
            Some("credits"),
        ),
        (
            "/v1/accounts/acme/usage",
            br#"{"credits": "1000000000001"}"#,
            400,
            Some("credits"),
        ),
        (
            "/v1/accounts/acme/usage",
            br#"{"credits": 1.0000001}"#,
            400,
            Some("credits"),
        ),
        (
            "/v1/accounts/acme/usage",
            br#"{"credits": true}"#,
            400,
            Some("credits"),
        ),
        (
            "/v1/accounts/acme/usage",
            br#"{"credits": "1", "colour": "red"}"#,
            400,
            Some("colour"),
        ),
        ("/v1/accounts/acme/usage", br#"{"credits": "1""#, 400, None),
        ("/v1/accounts/acme/usage", br#"[1, 2]"#, 400, None),
        (
            "/v1/accounts/acme/usage",
            br#"{"task": "teleport", "quantity": "1"}"#,
            400,
            Some("task"),
        ),
        (
            "/v1/accounts/acme/usage",
            br#"{"task": "assistant_message", "quantity": "-2"}"#,
            400,
            Some("quantity"),
        ),
        (
            "/v1/accounts/acme/usage",
            br#"{"task": "assistant_message"}"#,
            400,
            Some("quantity"),
        ),
        ("/v1/accounts/acme/usage", br#"{}"#, 400, None),
        (
            "/v1/accounts/nobody/usage",
            br#"{"credits": "1"}"#,
            404,
            None,
        ),
        (
            "/v1/accounts/bad%20id/usage",
            br#"{"credits": "1"}"#,
            404,
            None,
        ),
        (
            "/v1/accounts",
            br#"{"id": "acme", "tier": "starter"}"#,
            409,
            None,
        ),
        (
            "/v1/accounts",
            br#"{"id": "new", "tier": "gold"}"#,
            400,
            Some("tier"),
        ),
        (
            "/v1/accounts",
            br#"{"id": "bad id!", "tier": "free"}"#,
            400,
            Some("id"),
        ),
        (
            "/v1/accounts/acme/holds",
            br#"{"credits": "1", "ttl_seconds": 86401}"#,
            400,
            Some("ttl_seconds"),
        ),
        (
            "/v1/accounts/acme/purchases",
            br#"{"package": "huge"}"#,
            400,
            Some("package"),
        ),
        ("/v1/nowhere", br#"{}"#, 404, None),
    ];
    for (path, body, status, param) in cases {
        let reply = api
            .send("POST", path, Some(body.to_vec()), None)
            .await
            .unwrap();
        assert_eq!(
            reply.status,
            *status,
            "{path} {}: {reply:?}",
            String::from_utf8_lossy(body)
        );
        assert!(
            reply.body["error"]["type"].is_string() && reply.body["error"]["message"].is_string(),
            "{reply:?}"
        );
        if let Some(param) = param {
            assert_eq!(
                reply.body["error"]["param"].as_str(),
                Some(*param),
                "{path}: {reply:?}"
            );
        }
    }
    let huge = vec![b' '; 1024 * 1024 + 1];
    let reply = api
        .send("POST", "/v1/accounts/acme/usage", Some(huge), None)
        .await
        .unwrap();
    assert_eq!(
        (reply.status, reply.error_type()),
        (413, Some("payload_too_large"))
    );
    assert_eq!(
        credits(&api.balance("acme").await.unwrap(), "available"),
        "100",
        "nothing was charged"
    );
}

#[tokio::test]
async fn two_hundred_concurrent_charges_against_one_hundred_credits() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "starter").await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            charge(&api, "acme", Cost::credits("1")).await.status
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 100);
    assert_eq!(statuses.iter().filter(|s| **s == 402).count(), 100);
    assert_eq!(
        credits(&api.balance("acme").await.unwrap(), "available"),
        "0"
    );
}

#[tokio::test]
async fn batches_apply_each_item_on_its_own() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "free").await;
    server.open("beta", "free").await;
    let items = json!({"items": [
        {"account": "acme", "idempotency_key": "b1", "credits": "5"},
        {"account": "beta", "idempotency_key": "b2", "task": "assistant_message", "quantity": "2"},
        {"account": "acme", "idempotency_key": "b3", "credits": "50"},
        {"account": "nobody", "idempotency_key": "b4", "credits": "1"},
        {"account": "acme", "idempotency_key": "b5", "credits": "-1"},
    ]});
    let reply = api.post("/v1/usage/batch", &items).await.unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    let statuses: Vec<u64> = reply.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 201, 402, 404, 400]);
    assert_eq!(reply.body["results"][0]["debit"]["credits"], "5");
    let again = api.post("/v1/usage/batch", &items).await.unwrap();
    assert_eq!(
        again.body["results"][0], reply.body["results"][0],
        "replayed by key"
    );
    assert_eq!(
        credits(&api.balance("acme").await.unwrap(), "available"),
        "20"
    );
    // A batch item and a single charge share one key space.
    let single = api
        .post_idempotent("/v1/accounts/acme/usage", &json!({"credits": "5"}), "b1")
        .await
        .unwrap();
    assert_eq!(single.body, reply.body["results"][0]["debit"]);
}

/// A batch sent with an `Idempotency-Key` of its own: a replay answers
/// every item as the first time (an item refused for lack of credits is
/// refused again, even once credits came) and charges nothing again, also
/// after a restart; the key with another batch is 409; without the header
/// each item is judged again.
#[tokio::test]
async fn a_batch_under_its_own_key_replays_its_first_answer() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "free").await;
    let items = json!({"items": [
        {"account": "acme", "idempotency_key": "k1", "credits": "5"},
        {"account": "acme", "idempotency_key": "k2", "credits": "30"},
        {"account": "nobody", "idempotency_key": "k3", "credits": "1"},
        {"account": "acme", "idempotency_key": "k4", "credits": "-1"},
    ]});
    let first = api
        .post_idempotent("/v1/usage/batch", &items, "batch-1")
        .await
        .unwrap();
    assert_eq!(first.status, 200, "{first:?}");
    let statuses = |reply: &purser_client::Reply| -> Vec<u64> {
        reply.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(statuses(&first), [201, 402, 404, 400]);
    let granted = api
        .post(
            "/v1/accounts/acme/grants",
            &json!({"credits": "100", "kind": "promo", "reason": "test"}),
        )
        .await
        .unwrap();
    assert_eq!(granted.status, 201, "{granted:?}");
    let again = api
        .post_idempotent("/v1/usage/batch", &items, "batch-1")
        .await
        .unwrap();
    assert_eq!(again, first, "the replay answers as the first time");
    assert_eq!(
        credits(&api.balance("acme").await.unwrap(), "available"),
        "120",
        "nothing charged again"
    );
    let other = json!({"items": [{"account": "acme", "idempotency_key": "k9", "credits": "1"}]});
    let reused = api
        .post_idempotent("/v1/usage/batch", &other, "batch-1")
        .await
        .unwrap();
    assert_eq!(
        (reused.status, reused.error_code()),
        (409, Some("idempotency_key_reused")),
        "{reused:?}"
    );
    let dir = server.stop().await;
    let server = Server::start_in(dir, |_| {}).await;
    let api = server.admin();
    let after = api
        .post_idempotent("/v1/usage/batch", &items, "batch-1")
        .await
        .unwrap();
    assert_eq!(after, first, "after a restart");
    // Without the batch's key, the refused item is judged again.
    let fresh = api.post("/v1/usage/batch", &items).await.unwrap();
    assert_eq!(statuses(&fresh), [201, 201, 404, 400]);
    assert_eq!(fresh.body["results"][0], first.body["results"][0]);
    assert_eq!(
        credits(&api.balance("acme").await.unwrap(), "available"),
        "90"
    );
}

#[tokio::test]
async fn remembered_debits_replay_the_same_answer_after_a_restart() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "pro").await;
    // A pending tier and a member: every part of the answer is remembered.
    let downgrade = api
        .post("/v1/accounts/acme/tier", &json!({"tier": "free"}))
        .await
        .unwrap();
    assert_eq!(downgrade.str("pending_tier"), "free");
    let keyed = json!({"task": "assistant_message", "quantity": "3", "member": "ann",
                       "metadata": {"job": "j-1"}});
    let charged = api
        .post_idempotent("/v1/accounts/acme/usage", &keyed, "k-charge")
        .await
        .unwrap();
    assert_eq!(charged.status, 201);
    let hold = api
        .post("/v1/accounts/acme/holds", &json!({"credits": "10"}))
        .await
        .unwrap();
    let capture_path = format!("/v1/holds/{}/capture", hold.str("id"));
    let captured = api
        .post_idempotent(&capture_path, &json!({"credits": "4"}), "k-capture")
        .await
        .unwrap();
    assert_eq!(captured.status, 200);
    let items = json!({"items": [
        {"account": "acme", "idempotency_key": "k-item", "credits": "0.000001", "mode": "record"},
    ]});
    let batched = api.post("/v1/usage/batch", &items).await.unwrap();
    assert_eq!(batched.body["results"][0]["status"], 201);
    // Later charges change the balance: replays still show the first one.
    assert_eq!(charge(&api, "acme", Cost::credits("1")).await.status, 201);
    let dir = server.stop().await;
    let server = Server::start_in(dir, |_| {}).await;
    let api = server.admin();
    let again = api
        .post_idempotent("/v1/accounts/acme/usage", &keyed, "k-charge")
        .await
        .unwrap();
    assert_eq!(again, charged);
    let again = api
        .post_idempotent(&capture_path, &json!({"credits": "4"}), "k-capture")
        .await
        .unwrap();
    assert_eq!(again, captured);
    let again = api.post("/v1/usage/batch", &items).await.unwrap();
    assert_eq!(again.body, batched.body);
    assert_eq!(
        credits(&api.balance("acme").await.unwrap(), "held"),
        "0",
        "the capture ran once"
    );
}

#[tokio::test]
async fn state_survives_a_restart() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "starter").await;
    charge(&api, "acme", Cost::credits("12.345678")).await;
    let hold = api
        .post("/v1/accounts/acme/holds", &json!({"credits": "10"}))
        .await
        .unwrap();
    let before = api.account("acme").await.unwrap();
    let dir = server.stop().await;
    let server = Server::start_in(dir, |_| {}).await;
    let api = server.admin();
    assert_eq!(api.account("acme").await.unwrap(), before);
    let capture = api
        .post(&format!("/v1/holds/{}/capture", hold.str("id")), &json!({}))
        .await
        .unwrap();
    assert_eq!(capture.status, 200);
    assert_eq!(
        credits(&api.balance("acme").await.unwrap(), "available"),
        "77.654322"
    );
}

#[tokio::test]
async fn operations_endpoints() {
    let server = Server::start().await;
    let anonymous = purser_client::Client::new(&server.base, "");
    assert_eq!(anonymous.get("/healthz").await.unwrap().status, 200);
    assert_eq!(anonymous.get("/readyz").await.unwrap().status, 200);
    let openapi = anonymous.get("/openapi.json").await.unwrap();
    assert_eq!(openapi.body["openapi"], "3.1.0");
    assert!(openapi.body["paths"]["/v1/accounts/{id}/usage"]["post"].is_object());
    // The document says what is served: metrics are text, and a body with
    // required fields is itself required.
    assert!(
        openapi.body["paths"]["/metrics"]["get"]["responses"]["200"]["content"]["text/plain"]
            .is_object()
    );
    assert_eq!(
        openapi.body["paths"]["/v1/accounts"]["post"]["requestBody"]["required"],
        true
    );
    // A scope named twice is kept once; a field the contract does not name
    // is refused.
    let key = server
        .admin()
        .post("/v1/api_keys", &json!({"scopes": ["read", "read"]}))
        .await
        .unwrap();
    assert_eq!(key.body["scopes"], json!(["read"]), "{key:?}");
    let named = server
        .admin()
        .post("/v1/api_keys", &json!({"scopes": ["read"], "name": {}}))
        .await
        .unwrap();
    assert_eq!(
        (named.status, named.body["error"]["param"].as_str()),
        (400, Some("name"))
    );
    let catalog = server.admin().get("/v1/catalog").await.unwrap();
    assert_eq!(catalog.body["tasks"].as_array().unwrap().len(), 5);
    let clock = server.admin().get("/v1/test_clock").await.unwrap();
    assert_eq!(clock.str("object"), "test_clock");
    let moved = server.advance(3600).await;
    assert!(moved.str("now") > clock.str("now"));
    let metrics = reqwest_text(&server.base, "/metrics").await;
    assert!(
        metrics.contains("purser_commit_duration_seconds_count"),
        "{metrics}"
    );
    assert!(
        metrics.contains("route=\"/v1/test_clock/advance\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("purser_idempotency_keys{held=\"hash\"} ")
            && metrics.contains("purser_idempotency_keys{held=\"answer\"} "),
        "{metrics}"
    );
}

async fn reqwest_text(base: &str, path: &str) -> String {
    let client = purser_client::Client::new(base, "");
    match client.send("GET", path, None, None).await {
        Err(purser_client::ClientError::NotJson { text, .. }) => text,
        other => panic!("expected text: {other:?}"),
    }
}

#[tokio::test]
async fn without_the_test_clock_flag_its_endpoints_are_404() {
    let server = Server::start_with(|config| config.test_clock = false).await;
    assert_eq!(
        server.admin().get("/v1/test_clock").await.unwrap().status,
        404
    );
    let reply = server
        .admin()
        .post("/v1/test_clock/advance", &json!({"seconds": 1}))
        .await
        .unwrap();
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn restarts_replay_only_the_journal_after_the_latest_snapshot() {
    let server = Server::start_with(|config| config.snapshot_every_entries = 10).await;
    let api = server.admin();
    server.open("acme", "pro").await;
    server.open("beta", "pro").await;
    for i in 0..40 {
        let account = if i % 2 == 0 { "acme" } else { "beta" };
        assert_eq!(
            charge(&api, account, Cost::credits("1.5")).await.status,
            201
        );
    }
    let hold = api
        .post("/v1/accounts/acme/holds", &json!({"credits": "7"}))
        .await
        .unwrap();
    let before = (
        api.account("acme").await.unwrap(),
        api.account("beta").await.unwrap(),
    );
    let dir = server.stop().await;
    let server = Server::start_in(dir, |config| config.snapshot_every_entries = 10).await;
    assert!(
        server.replayed < 20,
        "replayed {} of 45 entries",
        server.replayed
    );
    let api = server.admin();
    assert_eq!(
        (
            api.account("acme").await.unwrap(),
            api.account("beta").await.unwrap()
        ),
        before
    );
    let capture = api
        .post(&format!("/v1/holds/{}/capture", hold.str("id")), &json!({}))
        .await
        .unwrap();
    assert_eq!(capture.status, 200, "the hold came back from the snapshot");
    let history = api
        .transactions("acme", "?type=debit&limit=100")
        .await
        .unwrap();
    assert_eq!(
        history.body["data"].as_array().unwrap().len(),
        20,
        "history is complete"
    );
}

#[tokio::test]
async fn grants_purchases_and_accounts_through_their_lifecycles() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "starter").await;
    let grant = api
        .post("/v1/accounts/acme/grants", &json!({"credits": "50", "reason": "outage credit", "expires_at": "2999-01-01T00:00:00Z"}))
        .await
        .unwrap();
    assert_eq!(
        (grant.status, grant.str("kind"), grant.str("status")),
        (201, "promo", "active"),
        "{grant:?}"
    );
    let void = format!("/v1/grants/{}/void", grant.str("id"));
    let voided = api.post(&void, &json!({})).await.unwrap();
    assert_eq!(
        (voided.status, voided.str("status")),
        (200, "voided"),
        "{voided:?}"
    );
    assert_eq!(api.post(&void, &json!({})).await.unwrap().status, 409);
    assert_eq!(
        api.post("/v1/grants/gr_10000000000009/void", &json!({}))
            .await
            .unwrap()
            .status,
        404
    );
    let no_reason = api
        .post("/v1/accounts/acme/grants", &json!({"credits": "5"}))
        .await
        .unwrap();
    assert_eq!(
        (no_reason.status, no_reason.body["error"]["param"].as_str()),
        (400, Some("reason"))
    );

    let small = json!({"package": "small"});
    let buy = || api.post("/v1/accounts/acme/purchases", &small);
    let failed = buy().await.unwrap();
    let fail_path = format!("/v1/purchases/{}/fail", failed.str("id"));
    assert_eq!(
        api.post(&fail_path, &json!({}))
            .await
            .unwrap()
            .str("status"),
        "failed"
    );
    let complete_failed = api
        .post(
            &format!("/v1/purchases/{}/complete", failed.str("id")),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(
        (complete_failed.status, complete_failed.error_type()),
        (409, Some("conflict"))
    );
    let canceled = buy().await.unwrap();
    let cancel = api
        .post(
            &format!("/v1/purchases/{}/cancel", canceled.str("id")),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(cancel.str("status"), "canceled");
    let bought = buy().await.unwrap();
    let complete = format!("/v1/purchases/{}/complete", bought.str("id"));
    assert_eq!(
        api.post(&complete, &json!({})).await.unwrap().str("status"),
        "completed"
    );
    let again = api.post(&complete, &json!({})).await.unwrap();
    assert_eq!(
        (again.status, again.str("status")),
        (200, "completed"),
        "a redelivered confirmation is fine"
    );
    assert_eq!(
        credits(&api.balance("acme").await.unwrap(), "available"),
        "300",
        "granted once"
    );
    charge(&api, "acme", Cost::credits("150")).await;
    let refunded = api
        .post(
            &format!("/v1/purchases/{}/refund", bought.str("id")),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(refunded.str("status"), "refunded");
    assert_eq!(
        credits(&api.balance("acme").await.unwrap(), "available"),
        "0",
        "the unused 150 were voided"
    );
    let shown = api
        .get(&format!("/v1/purchases/{}", bought.str("id")))
        .await
        .unwrap();
    assert_eq!(shown.str("status"), "refunded");
    let listed = api.get("/v1/accounts/acme/purchases").await.unwrap();
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 3);

    let updated = api
        .post(
            "/v1/accounts/acme",
            &json!({"name": "Acme Corp", "metadata": {"crm": "42"}}),
        )
        .await
        .unwrap();
    assert_eq!(
        (
            updated.str("name"),
            updated.body["metadata"]["crm"].as_str()
        ),
        ("Acme Corp", Some("42"))
    );
    let closed = api
        .post("/v1/accounts/acme/close", &json!({}))
        .await
        .unwrap();
    assert_eq!(closed.str("status"), "closed");
    let refused = charge(&api, "acme", Cost::credits("1")).await;
    assert_eq!(
        (refused.status, refused.error_code()),
        (409, Some("account_closed"))
    );
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let server = Server::start().await;
    let api = server.admin();
    for route in purser_server::openapi::ROUTES {
        let path = route.path.replace("{id}", "x");
        let body = (route.method == "post").then(|| b"{}".to_vec());
        let reply = match api
            .send(&route.method.to_uppercase(), &path, body, None)
            .await
        {
            Ok(reply) => reply,
            Err(purser_client::ClientError::NotJson { status, .. }) => purser_client::Reply {
                status,
                body: serde_json::Value::Null,
            },
            Err(error) => panic!("{path}: {error}"),
        };
        assert_ne!(
            reply.status, 405,
            "{} {path} is not routed with that method",
            route.method
        );
        assert_ne!(
            reply.error_code(),
            Some("route_not_found"),
            "{} {path} is not routed",
            route.method
        );
    }
}

/// Sends raw bytes and returns the raw answer (status line, headers, body).
async fn raw_exchange(base: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    // Up to the end of the first answer's body (the server closes or keeps
    // the connection: stop once the declared body has arrived).
    let deadline = std::time::Duration::from_secs(10);
    loop {
        let read = tokio::time::timeout(deadline, stream.read(&mut buffer))
            .await
            .expect("the server answered within 10 s")
            .unwrap();
        answer.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if read == 0 || complete(&text) {
            return text;
        }
    }
}

fn complete(text: &str) -> bool {
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    body.len() >= length
}

#[tokio::test]
async fn the_edge_answers_with_the_contract_errors() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "starter").await;

    // A repeated key is refused, naming it; nothing is charged.
    let reply = api
        .send(
            "POST",
            "/v1/accounts/acme/usage",
            Some(br#"{"credits": "1", "mode": "strict", "mode": "record"}"#.to_vec()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (reply.status, reply.error_code()),
        (400, Some("parameter_invalid"))
    );
    assert_eq!(reply.body["error"]["param"], "mode", "{reply:?}");
    let nested = api
        .send(
            "POST",
            "/v1/accounts/acme/usage",
            Some(br#"{"credits": "1", "metadata": {"a": "1", "a": "2"}}"#.to_vec()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(nested.body["error"]["param"], "a", "{nested:?}");
    assert_eq!(
        api.balance("acme").await.unwrap().str("available"),
        "100",
        "refusals change nothing"
    );

    // `.` and `..` would be path segments of their own.
    for id in [".", ".."] {
        let reply = api
            .post("/v1/accounts", &json!({"id": id, "tier": "starter"}))
            .await
            .unwrap();
        assert_eq!(
            (reply.status, reply.body["error"]["param"].as_str()),
            (400, Some("id"))
        );
    }

    // A path or query that is not UTF-8 once decoded: JSON, not plain text.
    for target in [
        "/v1/accounts/%FF",
        "/v1/accounts?limit=%FF",
        "/portal/%C3%28",
    ] {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {ADMIN_KEY}\r\nConnection: close\r\n\r\n"
        );
        let answer = raw_exchange(&server.base, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
        assert!(answer.contains("application/json"), "{target}: {answer}");
        assert!(
            answer.contains(r#""type":"invalid_request""#),
            "{target}: {answer}"
        );
    }

    // A body is not read before its request is authenticated: the 401 comes
    // without the declared megabyte ever being sent.
    let request = "POST /v1/accounts/acme/usage HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n";
    let answer = raw_exchange(&server.base, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("invalid_api_key"), "{answer}");

    // A chunked body whose framing is broken is a 400, not "too large".
    let request = format!(
        "POST /v1/accounts/acme/usage HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
    );
    let answer = raw_exchange(&server.base, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("malformed_body"), "{answer}");

    // The endpoints open to anyone take HEAD without a key too (load
    // balancers check health so).
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let request = format!("HEAD {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(&server.base, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
    }
    assert_eq!(
        api.balance("acme").await.unwrap().str("available"),
        "100",
        "refusals change nothing"
    );
}

#[tokio::test]
async fn every_post_honours_its_idempotency_key() {
    let server = Server::start().await;
    let api = server.admin();
    let new_key = json!({"scopes": ["read"]});
    let first = api
        .post_idempotent("/v1/api_keys", &new_key, "key-once")
        .await
        .unwrap();
    assert_eq!(first.status, 201, "{first:?}");
    let again = api
        .post_idempotent("/v1/api_keys", &new_key, "key-once")
        .await
        .unwrap();
    assert_eq!(
        (again.status, &again.body),
        (201, &first.body),
        "one key, one answer"
    );
    let other = api
        .post_idempotent("/v1/api_keys", &json!({"scopes": ["usage"]}), "key-once")
        .await
        .unwrap();
    assert_eq!(
        other.error_code(),
        Some("idempotency_key_reused"),
        "{other:?}"
    );
    let keys = api.api_keys().await.unwrap();
    assert_eq!(
        keys.body["data"].as_array().unwrap().len(),
        2,
        "admin + one"
    );

    let id = first.str("id").to_owned();
    let path = format!("/v1/api_keys/{id}/revoke");
    let revoked = api
        .post_idempotent(&path, &json!({}), "revoke-once")
        .await
        .unwrap();
    let replayed = api
        .post_idempotent(&path, &json!({}), "revoke-once")
        .await
        .unwrap();
    assert_eq!(revoked.status, 200, "{revoked:?}");
    assert_eq!(replayed.body, revoked.body);
    // The key is remembered: used for another revocation, it is refused.
    let reused = api
        .post_idempotent("/v1/api_keys/key_other/revoke", &json!({}), "revoke-once")
        .await
        .unwrap();
    assert_eq!(
        reused.error_code(),
        Some("idempotency_key_reused"),
        "{reused:?}"
    );

    let before = api.get("/v1/test_clock").await.unwrap();
    let advance = json!({"seconds": 3600});
    let moved = api
        .post_idempotent("/v1/test_clock/advance", &advance, "tick-once")
        .await
        .unwrap();
    let moved_again = api
        .post_idempotent("/v1/test_clock/advance", &advance, "tick-once")
        .await
        .unwrap();
    assert_eq!(moved_again.body, moved.body, "the clock moved once");
    let after = api.get("/v1/test_clock").await.unwrap();
    assert_eq!(after.body, moved.body);
    assert_ne!(after.body, before.body);
    let long_key = "k".repeat(256);
    let refused = api
        .post_idempotent("/v1/api_keys", &new_key, &long_key)
        .await
        .unwrap();
    assert_eq!(refused.status, 400, "{refused:?}");
}

/// Waits until the server closes `stream` (a read gives 0 bytes or fails);
/// returns what it sent before closing.
async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut sent = Vec::new();
    let mut buffer = [0u8; 1024];
    let deadline = std::time::Duration::from_secs(20);
    loop {
        match tokio::time::timeout(deadline, stream.read(&mut buffer)).await {
            Err(_) => panic!("the server kept the connection open for {deadline:?}"),
            Ok(Ok(0) | Err(_)) => return String::from_utf8_lossy(&sent).into_owned(),
            Ok(Ok(read)) => sent.extend_from_slice(&buffer[..read]),
        }
    }
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed_at_their_timeouts() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start_with(|config| {
        config.header_timeout_seconds = 1;
        config.body_timeout_seconds = 1;
    })
    .await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let connect = || tokio::net::TcpStream::connect(address.clone());

    // Connected, never a byte.
    let mut idle = connect().await.unwrap();
    closed_by_server(&mut idle).await;

    // Headers that never finish (slowloris).
    let mut slow = connect().await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    closed_by_server(&mut slow).await;

    // Kept alive after an answer, then idle.
    let mut kept = connect().await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let answered = closed_by_server(&mut kept).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");

    // A body that stops arriving: 408 with the contract's error.
    let mut trickle = connect().await.unwrap();
    let head = format!(
        "POST /v1/accounts HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"id\""
    );
    trickle.write_all(head.as_bytes()).await.unwrap();
    let answer = closed_by_server(&mut trickle).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");

    // The server still serves.
    assert_eq!(server.admin().get("/v1/catalog").await.unwrap().status, 200);
}

#[tokio::test]
async fn at_the_connection_limit_idle_connections_make_room() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start_with(|config| {
        config.max_connections = 2;
        config.header_timeout_seconds = 10;
        config.body_timeout_seconds = 4;
    })
    .await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let connect = || tokio::net::TcpStream::connect(address.clone());
    // A request in flight: its body arrives slowly.
    let busy = || async {
        let mut stream = connect().await.unwrap();
        let head = format!(
            "POST /v1/accounts HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"id\""
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream
    };
    // A client of its own each time (no pooled connection of an earlier
    // part), waiting at most 1.5 s, well within the timeouts.
    let quick = || {
        purser_client::Client::new(&server.base, ADMIN_KEY)
            .with_timeout(std::time::Duration::from_millis(1_500))
    };

    // One slot taken by a request in flight, one by a connection that sent
    // nothing (for longer than the half second a newcomer is given): a
    // third client is served at once, the idle one closed for it. Without
    // the shedding it would wait for the header timeout.
    let mut first = busy().await;
    let mut idle = connect().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    assert_eq!(quick().get("/healthz").await.unwrap().status, 200);
    assert_eq!(closed_by_server(&mut idle).await, "");
    // The request in flight was let be: it ends at its body timeout, with
    // its answer.
    let answer = closed_by_server(&mut first).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Both slots taken by requests in flight: a third client waits...
    let (mut one, mut two) = (busy().await, busy().await);
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    match quick().get("/healthz").await {
        Err(purser_client::ClientError::Http(error)) if error.is_timeout() => {}
        other => panic!("served beyond the limit, or not waiting: {other:?}"),
    }
    // ...and is served once they end.
    assert_eq!(server.admin().get("/healthz").await.unwrap().status, 200);
    for stream in [&mut one, &mut two] {
        let answer = closed_by_server(stream).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

/// Spent package grants still list (after the live ones, newest first), and
/// pages of grants and purchases follow their cursors to the end, each item
/// once.
#[tokio::test]
async fn spent_grants_and_purchases_page_to_the_end() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "starter").await;
    let mut purchases = Vec::new();
    for _ in 0..7 {
        let purchase = api
            .post("/v1/accounts/acme/purchases", &json!({"package": "small"}))
            .await
            .unwrap();
        let id = purchase.str("id").to_owned();
        let done = api
            .post(&format!("/v1/purchases/{id}/complete"), &json!({}))
            .await
            .unwrap();
        assert_eq!(done.status, 200, "{done:?}");
        purchases.push(id);
    }
    // The budget and six of the seven packages, spent.
    let balance = api.balance("acme").await.unwrap();
    let package = "200";
    let spend = format!(
        "{}",
        balance.body["available"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            - package.parse::<u64>().unwrap()
    );
    assert_eq!(
        charge(&api, "acme", Cost::credits(&spend)).await.status,
        201
    );
    let walk = |path: &'static str| {
        let api = api.clone();
        async move {
            let mut seen: Vec<serde_json::Value> = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let url = match &cursor {
                    None => format!("{path}?limit=2"),
                    Some(after) => format!("{path}?limit=2&starting_after={after}"),
                };
                let page = api.get(&url).await.unwrap();
                assert_eq!(page.status, 200, "{page:?}");
                let data = page.body["data"].as_array().unwrap().clone();
                cursor = data
                    .last()
                    .map(|item| item["id"].as_str().unwrap().to_owned());
                seen.extend(data);
                if page.body["has_more"] != true {
                    return seen;
                }
            }
        }
    };
    let listed = walk("/v1/accounts/acme/purchases").await;
    let ids: Vec<&str> = listed.iter().map(|p| p["id"].as_str().unwrap()).collect();
    let newest_first: Vec<&str> = purchases.iter().rev().map(String::as_str).collect();
    assert_eq!(ids, newest_first);
    let grants = walk("/v1/accounts/acme/grants").await;
    let packages: Vec<(&str, &str)> = grants
        .iter()
        .filter(|g| g["kind"] == "package")
        .map(|g| {
            (
                g["remaining"].as_str().unwrap(),
                g["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(packages.len(), 7, "{grants:?}");
    assert_eq!(packages[0].0, package, "the live package first");
    assert!(
        packages[1..].iter().all(|(remaining, _)| *remaining == "0"),
        "{packages:?}"
    );
    let mut ids: Vec<&str> = grants.iter().map(|g| g["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), grants.len(), "each grant once");
}

/// The events of `GET /v1/events` (all pages), newest first, as `type`
/// (`type:threshold` for `credits.low`).
async fn event_types(api: &purser_client::Client, query: &str) -> Vec<String> {
    let mut types = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after
            .as_ref()
            .map(|id| format!("&starting_after={id}"))
            .unwrap_or_default();
        let page = api
            .get(&format!("/v1/events?limit=2{query}{cursor}"))
            .await
            .unwrap();
        assert_eq!(page.status, 200, "{page:?}");
        let data = page.body["data"].as_array().unwrap().clone();
        for event in &data {
            assert_eq!(event["object"], "event");
            let kind = event["type"].as_str().unwrap();
            types.push(match event["data"]["threshold"].as_str() {
                Some(threshold) => format!("{kind}:{threshold}"),
                None => kind.to_owned(),
            });
        }
        after = data.last().map(|e| e["id"].as_str().unwrap().to_owned());
        if page.body["has_more"] != json!(true) {
            return types;
        }
    }
}

#[tokio::test]
async fn events_tell_each_change_once_and_never_a_refusal_or_a_replay() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "starter").await;
    server.open("beta", "starter").await;
    let key = Some("evt-charge");
    let first = api
        .charge("acme", &Charge::new(Cost::credits("85")), key)
        .await
        .unwrap();
    assert_eq!(first.status, 201);
    let replay = api
        .charge("acme", &Charge::new(Cost::credits("85")), key)
        .await
        .unwrap();
    assert_eq!(replay.body, first.body, "a replay");
    let refused = charge(&api, "acme", Cost::credits("50")).await;
    assert_eq!(refused.status, 402);
    let purchase = api
        .post("/v1/accounts/beta/purchases", &json!({"package": "small"}))
        .await
        .unwrap();
    api.post(
        &format!("/v1/purchases/{}/cancel", purchase.str("id")),
        &json!({}),
    )
    .await
    .unwrap();
    api.post("/v1/accounts/beta/tier", &json!({"tier": "pro"}))
        .await
        .unwrap();
    assert_eq!(
        event_types(&api, "").await,
        [
            "tier.changed",
            "purchase.canceled",
            "purchase.created",
            "credits.low:20",
            "account.created",
            "account.created"
        ]
    );
    assert_eq!(
        event_types(&api, "&account=acme").await,
        ["credits.low:20", "account.created"]
    );
    assert_eq!(
        event_types(&api, "&type=purchase.created").await,
        ["purchase.created"]
    );
    // Every event names its account, sequence and actor, and reads back.
    let listed = api.get("/v1/events?limit=100").await.unwrap();
    for event in listed.body["data"].as_array().unwrap() {
        let id = event["id"].as_str().unwrap();
        assert!(id.starts_with("evt_"), "{id}");
        assert!(event["sequence"].as_u64().unwrap() >= 1);
        assert_eq!(event["actor"]["type"], "api_key", "{event}");
        let got = api.get(&format!("/v1/events/{id}")).await.unwrap();
        assert_eq!(&got.body, event);
    }
    // Transactions record their actor too.
    let transactions = api.transactions("acme", "").await.unwrap();
    for transaction in transactions.body["data"].as_array().unwrap() {
        assert_eq!(transaction["actor"]["type"], "api_key", "{transaction}");
        assert!(
            transaction["actor"]["id"]
                .as_str()
                .unwrap()
                .starts_with("key_")
        );
    }
    // A balance event names the charge that caused it.
    let low = api.get("/v1/events?type=credits.low").await.unwrap();
    assert_eq!(
        low.body["data"][0]["data"]["debit"], first.body["id"],
        "{low:?}"
    );
    let tier = &listed.body["data"][0];
    assert_eq!(tier["data"]["source"], "api");
    assert_eq!(tier["data"]["from"], "starter");
    assert_eq!(tier["data"]["to"], "pro");
    // A time-driven change is the system's.
    server.advance(31 * 86_400).await;
    let renewed = api
        .get("/v1/events?type=budget.renewed&limit=100")
        .await
        .unwrap();
    let renewed = renewed.body["data"].as_array().unwrap().clone();
    assert_eq!(renewed.len(), 2, "{renewed:?}");
    assert!(renewed.iter().all(|e| e["actor"]["type"] == "system"));
    let grants = api
        .transactions("acme", "?type=grant&limit=1")
        .await
        .unwrap();
    assert_eq!(
        grants.body["data"][0]["actor"],
        json!({"type": "system", "id": null})
    );
    // Refusals.
    for (path, code) in [
        ("/v1/events?type=nope", 400),
        ("/v1/events?starting_after=evt_zz", 400),
        ("/v1/events?account=a%20b", 400),
        ("/v1/events?limit=0", 400),
        ("/v1/events/evt_zz", 404),
        ("/v1/events/evt_100000000000009900", 404),
    ] {
        let got = api.get(path).await.unwrap();
        assert_eq!(got.status, code, "{path}: {got:?}");
        assert!(got.body["error"]["type"].is_string(), "{path}: {got:?}");
    }
}

#[tokio::test]
async fn accounts_take_their_own_low_balance_thresholds() {
    let server = Server::start().await;
    let api = server.admin();
    let created = api
        .post(
            "/v1/accounts",
            &json!({"id": "acme", "tier": "starter", "low_balance_thresholds": ["50", 10]}),
        )
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.body["low_balance_thresholds"], json!(["50", "10"]));
    charge(&api, "acme", Cost::credits("95")).await;
    assert_eq!(
        event_types(&api, "&type=credits.low").await,
        ["credits.low:10", "credits.low:50"]
    );
    let cleared = api
        .post(
            "/v1/accounts/acme",
            &json!({"low_balance_thresholds": null}),
        )
        .await
        .unwrap();
    assert_eq!(cleared.status, 200, "{cleared:?}");
    assert_eq!(cleared.body["low_balance_thresholds"], json!(null));
    for (body, what) in [
        (
            json!({"low_balance_thresholds": ["1", "2", "3", "4", "5", "6"]}),
            "six",
        ),
        (json!({"low_balance_thresholds": ["0"]}), "zero"),
        (
            json!({"low_balance_thresholds": ["1.0000001"]}),
            "seven digits",
        ),
        (json!({"low_balance_thresholds": [true]}), "not an amount"),
        (json!({"low_balance_thresholds": "5"}), "not a list"),
    ] {
        let refused = api.post("/v1/accounts/acme", &body).await.unwrap();
        assert_eq!(refused.status, 400, "{what}: {refused:?}");
        assert_eq!(
            refused.body["error"]["param"], "low_balance_thresholds",
            "{what}: {refused:?}"
        );
    }
}

#[tokio::test]
async fn webhook_endpoints_are_managed_and_checked() {
    let server = Server::start().await;
    let api = server.admin();
    let created = api
        .post(
            "/v1/webhook_endpoints",
            &json!({"url": "http://127.0.0.1:9/hook", "events": ["credits.low", "purchase.completed"]}),
        )
        .await
        .unwrap();
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.str("id").to_owned();
    assert!(id.starts_with("we_"));
    assert!(created.str("secret").starts_with("whsec_"));
    assert_eq!(created.str("status"), "enabled");
    let listed = api.get("/v1/webhook_endpoints").await.unwrap();
    assert_eq!(listed.body["data"][0]["id"], json!(id));
    assert!(listed.body["data"][0].get("secret").is_none());
    let updated = api
        .post(
            &format!("/v1/webhook_endpoints/{id}"),
            &json!({"status": "disabled", "description": "later"}),
        )
        .await
        .unwrap();
    assert_eq!((updated.status, updated.str("status")), (200, "disabled"));
    assert_eq!(updated.str("description"), "later");
    let cleared = api
        .post(
            &format!("/v1/webhook_endpoints/{id}"),
            &json!({"description": null}),
        )
        .await
        .unwrap();
    assert_eq!(cleared.body["description"], json!(null), "{cleared:?}");
    api.post(
        &format!("/v1/webhook_endpoints/{id}"),
        &json!({"description": "later"}),
    )
    .await
    .unwrap();
    let rotated = api
        .post(
            &format!("/v1/webhook_endpoints/{id}/rotate_secret"),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(rotated.status, 200);
    assert_ne!(rotated.str("secret"), created.str("secret"));
    // Kept across a restart (they are in the store).
    let server = Server::start_in(server.stop().await, |_| {}).await;
    let api = server.admin();
    let got = api
        .get(&format!("/v1/webhook_endpoints/{id}"))
        .await
        .unwrap();
    assert_eq!((got.status, got.str("description")), (200, "later"));
    let deliveries = api
        .get(&format!("/v1/webhook_endpoints/{id}/deliveries"))
        .await
        .unwrap();
    assert_eq!(deliveries.status, 200);
    // Bad input.
    for (body, param) in [
        (json!({}), "url"),
        (json!({"url": "ftp://example.com"}), "url"),
        (json!({"url": "http://user:pw@example.com/"}), "url"),
        (json!({"url": "example.com"}), "url"),
        (json!({"url": "https://a.example/\n"}), "url"),
        (json!({"url": "https://a.example:0/"}), "url"),
        (
            json!({"url": "http://example.com", "events": ["nope"]}),
            "events",
        ),
        (json!({"url": "http://example.com", "events": []}), "events"),
        (
            json!({"url": "http://example.com", "colour": "red"}),
            "colour",
        ),
    ] {
        let refused = api.post("/v1/webhook_endpoints", &body).await.unwrap();
        assert_eq!(refused.status, 400, "{body}: {refused:?}");
        assert_eq!(
            refused.body["error"]["param"],
            json!(param),
            "{body}: {refused:?}"
        );
    }
    let missing = api.get("/v1/webhook_endpoints/we_nope").await.unwrap();
    assert_eq!(missing.status, 404);
    let deleted = api
        .send("DELETE", &format!("/v1/webhook_endpoints/{id}"), None, None)
        .await
        .unwrap();
    assert_eq!(
        (deleted.status, &deleted.body["deleted"]),
        (200, &json!(true))
    );
    let gone = api
        .get(&format!("/v1/webhook_endpoints/{id}"))
        .await
        .unwrap();
    assert_eq!(gone.status, 404);
    // At most 16.
    for n in 0..16 {
        let made = api
            .post(
                "/v1/webhook_endpoints",
                &json!({"url": format!("http://127.0.0.1:9/{n}")}),
            )
            .await
            .unwrap();
        assert_eq!(made.status, 201);
    }
    let over = api
        .post(
            "/v1/webhook_endpoints",
            &json!({"url": "http://127.0.0.1:9/x"}),
        )
        .await
        .unwrap();
    assert_eq!(over.status, 400, "{over:?}");
    // Listed a page at a time, newest first.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after
            .as_ref()
            .map(|id| format!("&starting_after={id}"))
            .unwrap_or_default();
        let page = api
            .get(&format!("/v1/webhook_endpoints?limit=5{cursor}"))
            .await
            .unwrap();
        assert_eq!(page.status, 200, "{page:?}");
        let data = page.body["data"].as_array().unwrap().clone();
        assert!(data.len() <= 5);
        seen.extend(data.iter().map(|e| e["url"].as_str().unwrap().to_owned()));
        after = data.last().map(|e| e["id"].as_str().unwrap().to_owned());
        if page.body["has_more"] != json!(true) {
            break;
        }
    }
    let expected: Vec<String> = (0..16)
        .rev()
        .map(|n| format!("http://127.0.0.1:9/{n}"))
        .collect();
    assert_eq!(seen, expected);
    for path in [
        "/v1/webhook_endpoints?limit=0",
        "/v1/webhook_endpoints?starting_after=we_nope",
    ] {
        assert_eq!(api.get(path).await.unwrap().status, 400, "{path}");
    }
}

#[tokio::test]
async fn one_accounts_lists_read_in_a_loop_are_paced() {
    // One page a second after a burst of two; a turn more than a second
    // away (half the request timeout) is refused.
    let server = Server::start_with(|config| {
        config.list_reads_per_second = 1;
        config.list_reads_burst = 2;
        config.request_timeout_seconds = 2;
    })
    .await;
    let api = server.admin();
    assert_eq!(server.open("long", "pro").await.status, 201);
    assert_eq!(server.open("other", "pro").await.status, 201);
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let api = api.clone();
        reads.spawn(async move { api.get("/v1/accounts/long/purchases").await.unwrap() });
    }
    let replies = reads.join_all().await;
    let served = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<_> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(served + refused.len(), 6, "{replies:?}");
    assert!(served >= 2, "the burst is served: {replies:?}");
    assert!(
        !refused.is_empty(),
        "turns too far away are refused: {replies:?}"
    );
    for reply in &refused {
        assert_eq!(reply.body["error"]["type"], "rate_limited", "{reply:?}");
        assert_eq!(
            reply.body["error"]["code"], "list_rate_limited",
            "{reply:?}"
        );
    }
    // Another account's lists have their own turns; single objects and
    // writes are not paced.
    for path in [
        "/v1/accounts/other/purchases",
        "/v1/accounts/other/grants",
        "/v1/accounts/long/balance",
    ] {
        assert_eq!(api.get(path).await.unwrap().status, 200, "{path}");
    }
    // An unauthenticated read takes no turn.
    let anonymous = purser_client::http_builder()
        .build()
        .unwrap()
        .get(format!("{}/v1/accounts/other/transactions", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    // Text that is no account id spends no bucket's turns, not even one it
    // spells (the portal's of that account).
    for _ in 0..6 {
        let reply = api
            .get("/v1/accounts/%2Aportal%20other/purchases")
            .await
            .unwrap();
        assert_eq!(reply.status, 404, "{reply:?}");
        let reply = api
            .get("/v1/events?account=%2Aportal%20other")
            .await
            .unwrap();
        assert_eq!(reply.status, 400, "{reply:?}");
    }
    let session = api
        .post("/v1/accounts/other/portal_sessions", &serde_json::json!({}))
        .await
        .unwrap();
    let url = session.body["url"].as_str().unwrap().to_owned();
    let page = purser_client::http_builder()
        .build()
        .unwrap()
        .get(format!("{url}/billing"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        page.status().as_u16(),
        200,
        "the portal's own turns are intact"
    );
}

/// Issue 14: settled purchases and spent grants leave memory for the store
/// and come back when a command needs them: a refund of a purchase whose
/// credits were spent, a reversal that gives credits back to its spent
/// grant, a redelivered cancel. Across restarts (snapshots taken, the
/// journal after them replayed with what the store keeps) every answer and
/// balance stays.
#[tokio::test]
async fn settled_purchases_and_grants_come_back_from_the_store() {
    fn snapshots(config: &mut purser_server::config::Config) {
        config.snapshot_every_entries = 3;
    }
    let server = Server::start_with(snapshots).await;
    let api = server.admin();
    server.open("acme", "starter").await;
    let buy = |api: purser_client::Client| async move {
        let purchase = api
            .post("/v1/accounts/acme/purchases", &json!({"package": "small"}))
            .await
            .unwrap();
        purchase.str("id").to_owned()
    };
    let canceled = buy(api.clone()).await;
    let cancel = api
        .post(&format!("/v1/purchases/{canceled}/cancel"), &json!({}))
        .await
        .unwrap();
    assert_eq!(cancel.status, 200, "{cancel:?}");
    let bought = buy(api.clone()).await;
    let done = api
        .post(&format!("/v1/purchases/{bought}/complete"), &json!({}))
        .await
        .unwrap();
    assert_eq!(done.status, 200);
    let grant = done.str("grant").to_owned();
    // Everything spent: the package grant and its purchase leave memory.
    let available = api.balance("acme").await.unwrap().body["available"]
        .as_str()
        .unwrap()
        .to_owned();
    let debit = charge(&api, "acme", Cost::credits(&available)).await;
    assert_eq!(debit.status, 201, "{debit:?}");
    let server = {
        let dir = server.stop().await;
        Server::start_in(dir, snapshots).await
    };
    let api = server.admin();
    // Read from the store.
    let read = api.get(&format!("/v1/purchases/{canceled}")).await.unwrap();
    assert_eq!((read.status, read.str("status")), (200, "canceled"));
    let again = api
        .post(&format!("/v1/purchases/{canceled}/cancel"), &json!({}))
        .await
        .unwrap();
    assert_eq!((again.status, again.str("status")), (200, "canceled"));
    let complete = api
        .post(&format!("/v1/purchases/{canceled}/complete"), &json!({}))
        .await
        .unwrap();
    assert_eq!(complete.status, 409, "{complete:?}");
    let listed = api.get("/v1/accounts/acme/purchases").await.unwrap();
    let ids: Vec<&str> = listed.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [bought.as_str(), canceled.as_str()]);
    // A reversal gives the spent package grant its credits back.
    let reversed = api
        .post(
            &format!("/v1/debits/{}/reverse", debit.str("id")),
            &json!({"credits": "50"}),
        )
        .await
        .unwrap();
    assert_eq!(reversed.status, 200, "{reversed:?}");
    let grants = api.get("/v1/accounts/acme/grants").await.unwrap();
    let package = grants.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["id"] == grant.as_str())
        .cloned()
        .unwrap();
    assert_eq!(package["remaining"], "50", "{grants:?}");
    // The refund voids what came back.
    let refund = api
        .post(&format!("/v1/purchases/{bought}/refund"), &json!({}))
        .await
        .unwrap();
    assert_eq!((refund.status, refund.str("status")), (200, "refunded"));
    let before = api.balance("acme").await.unwrap().body;
    let server = {
        let dir = server.stop().await;
        Server::start_in(dir, snapshots).await
    };
    let api = server.admin();
    assert_eq!(api.balance("acme").await.unwrap().body, before);
    let read = api.get(&format!("/v1/purchases/{bought}")).await.unwrap();
    assert_eq!(read.str("status"), "refunded");
    let twice = api
        .post(&format!("/v1/purchases/{bought}/refund"), &json!({}))
        .await
        .unwrap();
    assert_eq!((twice.status, twice.str("status")), (200, "refunded"));
    assert_eq!(api.balance("acme").await.unwrap().body, before);
}
