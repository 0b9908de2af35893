// The customer portal over HTTP: sessions, pages, actions, and every way a
// request without the right to an account is refused (expired, forged or
// foreign tokens, missing or foreign CSRF tokens, a foreign Origin).

mod harness;

use harness::{Server, charge};
use purser_client::Cost;
use purser_portal::session::{Session, Signer};
use serde_json::{Value, json};

/// A browser-like client: no redirects followed, forms posted as forms.
fn browser() -> reqwest::Client {
    purser_client::http_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Page {
    /// The value of the first `name="…" value="…"` hidden input.
    fn hidden(&self, name: &str) -> String {
        let marker = format!(r#"name="{name}" value=""#);
        let start = self.body.find(&marker).unwrap_or_else(|| {
            panic!("no hidden {name} in the page:\n{}", self.body);
        }) + marker.len();
        let end = self.body[start..].find('"').unwrap() + start;
        self.body[start..end].to_owned()
    }

    /// The `data-value` of the element with `data-testid`.
    fn value(&self, test_id: &str) -> String {
        let marker = format!(r#"data-testid="{test_id}" data-value=""#);
        let start = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no {test_id} in the page:\n{}", self.body))
            + marker.len();
        let end = self.body[start..].find('"').unwrap() + start;
        self.body[start..end].to_owned()
    }

    fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn get(url: &str) -> Page {
    let response = browser().get(url).send().await.unwrap();
    Page {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

/// Posts a form (`fields` already URL-safe) with an optional `Origin`.
async fn post_form(url: &str, fields: &[(&str, &str)], origin: Option<&str>) -> Page {
    let body = fields
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut request = browser()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    let response = request.send().await.unwrap();
    Page {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

async fn session(server: &Server, account: &str) -> Value {
    let reply = server
        .admin()
        .post(
            &format!("/v1/accounts/{account}/portal_sessions"),
            &json!({"return_url": "https://app.example/settings"}),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 201, "{reply:?}");
    reply.body
}

fn url(session: &Value) -> String {
    session["url"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_portal_session_opens_the_credits_and_billing_pages_of_its_account() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "starter").await;
    charge(&api, "acme", Cost::task("transcribe_video", "12")).await;
    charge(&api, "acme", Cost::task("assistant_message", "3")).await;
    let session = session(&server, "acme").await;
    assert_eq!(session["object"], "portal_session");
    assert_eq!(session["account"], "acme");
    assert!(session["id"].as_str().unwrap().starts_with("ps_"));
    let now = server.admin().get("/v1/test_clock").await.unwrap();
    let expected_expiry = purser_core::Timestamp::parse_rfc3339(now.str("now"))
        .unwrap()
        .checked_add_seconds(3_600)
        .unwrap()
        .to_string();
    assert_eq!(session["expires_at"], expected_expiry.as_str());
    let link = url(&session);
    assert!(
        link.starts_with(&format!("{}/portal/", server.base)),
        "{link}"
    );

    let page = get(&link).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let balance = api.balance("acme").await.unwrap().body;
    assert_eq!(
        page.value("available"),
        balance["available"].as_str().unwrap()
    );
    assert_eq!(page.value("budget-used"), "25.5");
    assert_eq!(page.value("budget-granted"), "100");
    assert_eq!(page.value("packages-available"), "0");
    assert!(page.body.contains("Transcribe video"), "{}", page.body);
    assert!(page.body.contains(r#"data-testid="chart-by-day""#));
    assert!(page.body.contains("https://app.example/settings"));
    // Hardened like a page holding a bearer token should be; no API key in it.
    let header = |name: &str| page.headers.get(name).unwrap().to_str().unwrap().to_owned();
    assert!(header("content-security-policy").contains("default-src 'none'"));
    assert!(header("content-security-policy").contains("frame-ancestors 'none'"));
    assert_eq!(header("cache-control"), "no-store");
    assert_eq!(header("x-frame-options"), "DENY");
    assert!(!page.body.contains(harness::ADMIN_KEY));

    let billing = get(&format!("{link}/billing")).await;
    assert_eq!(billing.status, 200);
    assert!(
        billing
            .body
            .contains(r#"data-tier="starter" data-current="true""#)
    );
    assert!(
        billing
            .body
            .contains("stays pending until your payment is confirmed")
    );

    let css = get(&format!("{}/portal/assets/portal.css", server.base)).await;
    assert_eq!(css.status, 200);
    assert!(
        css.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
}

#[tokio::test]
async fn creating_a_session_checks_the_key_the_account_and_the_return_url() {
    let server = Server::start().await;
    server.open("acme", "starter").await;
    let api = server.admin();
    let missing = api
        .post("/v1/accounts/ghost/portal_sessions", &json!({}))
        .await
        .unwrap();
    assert_eq!(missing.status, 404, "{missing:?}");
    for bad in ["javascript:alert(1)", "/relative", "ftp://x.example", ""] {
        let reply = api
            .post(
                "/v1/accounts/acme/portal_sessions",
                &json!({"return_url": bad}),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 400, "{bad}: {reply:?}");
        assert_eq!(reply.body["error"]["param"], "return_url");
    }
    let unknown = api
        .post("/v1/accounts/acme/portal_sessions", &json!({"ttl": 5}))
        .await
        .unwrap();
    assert_eq!(unknown.status, 400);
    let anonymous = api
        .with_key("sk_nope")
        .post("/v1/accounts/acme/portal_sessions", &json!({}))
        .await
        .unwrap();
    assert_eq!(anonymous.status, 401);
    let reader = server.key(&["read"]).await;
    let forbidden = reader
        .post("/v1/accounts/acme/portal_sessions", &json!({}))
        .await
        .unwrap();
    assert_eq!(forbidden.status, 403);
    // Without a return URL the page has no back link.
    let plain = api
        .post("/v1/accounts/acme/portal_sessions", &json!({}))
        .await
        .unwrap();
    assert_eq!(plain.status, 201);
    assert_eq!(plain.body["return_url"], Value::Null);
    let page = get(plain.str("url")).await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("Back to the app"));
}

#[tokio::test]
async fn expired_forged_and_foreign_tokens_are_refused() {
    let server = Server::start().await;
    server.open("acme", "starter").await;
    server.open("globex", "starter").await;
    let acme = url(&session(&server, "acme").await);
    let globex = url(&session(&server, "globex").await);
    let (base, acme_token) = acme.rsplit_once('/').unwrap();
    let (_, globex_token) = globex.rsplit_once('/').unwrap();
    let (acme_payload, acme_signature) = acme_token.split_once('.').unwrap();
    let (globex_payload, _) = globex_token.split_once('.').unwrap();

    // A changed signature, another account's payload under this signature,
    // a token signed with another key, and garbage: all 401, no account shown.
    let flipped = {
        let mut bytes = acme_signature.as_bytes().to_vec();
        bytes[3] = if bytes[3] == b'A' { b'B' } else { b'A' };
        String::from_utf8(bytes).unwrap()
    };
    let foreign_key = Signer::new([9; 32]).sign(&Session {
        account: purser_core::AccountId::parse("acme").unwrap(),
        expires_at: purser_core::Timestamp::NEVER,
        nonce: [1; 16],
        return_url: None,
    });
    for token in [
        format!("{acme_payload}.{flipped}"),
        format!("{globex_payload}.{acme_signature}"),
        foreign_key,
        "not-a-token".to_owned(),
        format!("{acme_payload}."),
    ] {
        for path in ["", "/billing", "/transactions.csv"] {
            let page = get(&format!("{base}/{token}{path}")).await;
            assert_eq!(page.status, 401, "{token}{path}: {}", page.body);
            assert!(page.body.contains("not valid"), "{}", page.body);
        }
    }

    // A purchase of globex, cancelled through acme's session: not found, untouched.
    let purchase = server
        .admin()
        .post(
            "/v1/accounts/globex/purchases",
            &json!({"package": "small"}),
        )
        .await
        .unwrap();
    let acme_page = get(&format!("{acme}/billing")).await;
    let csrf = acme_page.hidden("csrf");
    let refused = post_form(
        &format!("{acme}/purchases/{}/cancel", purchase.str("id")),
        &[("csrf", &csrf)],
        None,
    )
    .await;
    assert_eq!(refused.status, 404, "{}", refused.body);
    let still = server
        .admin()
        .get(&format!("/v1/purchases/{}", purchase.str("id")))
        .await
        .unwrap();
    assert_eq!(still.str("status"), "pending");

    // An hour later the link has expired: pages and actions alike.
    server.advance(3_600).await;
    let expired = get(&acme).await;
    assert_eq!(expired.status, 401);
    assert!(expired.body.contains("expired"), "{}", expired.body);
    let late = post_form(
        &format!("{acme}/tier"),
        &[("csrf", &csrf), ("tier", "pro")],
        None,
    )
    .await;
    assert_eq!(late.status, 401);
    let account = server.admin().get("/v1/accounts/acme").await.unwrap();
    assert_eq!(account.str("tier"), "starter");
}

#[tokio::test]
async fn forms_need_the_sessions_csrf_token_and_our_origin() {
    let server = Server::start().await;
    server.open("acme", "starter").await;
    server.open("globex", "starter").await;
    let acme = url(&session(&server, "acme").await);
    let globex = url(&session(&server, "globex").await);
    let acme_csrf = get(&format!("{acme}/billing")).await.hidden("csrf");
    let globex_csrf = get(&format!("{globex}/billing")).await.hidden("csrf");
    // A second session of the same account has its own CSRF token.
    let acme_again = url(&session(&server, "acme").await);
    let other_session_csrf = get(&format!("{acme_again}/billing")).await.hidden("csrf");
    assert_ne!(acme_csrf, other_session_csrf);

    let tier = format!("{acme}/tier");
    for (csrf, origin) in [
        (None, None),
        (Some(""), None),
        (Some(globex_csrf.as_str()), None),
        (Some(other_session_csrf.as_str()), None),
        (Some("AAAA"), None),
        (Some(acme_csrf.as_str()), Some("https://evil.example")),
        (Some(acme_csrf.as_str()), Some("null")),
    ] {
        let mut fields = vec![("tier", "pro")];
        if let Some(csrf) = csrf {
            fields.push(("csrf", csrf));
        }
        let refused = post_form(&tier, &fields, origin).await;
        assert_eq!(refused.status, 403, "{csrf:?} {origin:?}: {}", refused.body);
    }
    let account = server.admin().get("/v1/accounts/acme").await.unwrap();
    assert_eq!(account.str("tier"), "starter");

    // With the right token (and our own origin) the upgrade applies at once.
    let done = post_form(
        &tier,
        &[("csrf", &acme_csrf), ("tier", "pro")],
        Some(&server.base),
    )
    .await;
    assert_eq!(done.status, 303, "{}", done.body);
    assert!(done.location().ends_with("/billing?notice=tier_changed"));
    let balance = server.admin().balance("acme").await.unwrap();
    assert_eq!(balance.body["tier"], "pro");
    assert_eq!(balance.body["budget"]["granted"], "1000");
    let page = get(&format!("{}{}", server.base, done.location())).await;
    assert!(page.body.contains(r#"data-testid="notice""#));
    assert!(page.body.contains(r#"data-tier="pro" data-current="true""#));
    // An unknown tier changes nothing and says so.
    let unknown = post_form(&tier, &[("csrf", &acme_csrf), ("tier", "platinum")], None).await;
    assert!(unknown.location().ends_with("error=unknown_tier"));
    // A body that is not a form is refused without a 5xx.
    let garbage = browser()
        .post(&tier)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(garbage.status().is_client_error());
}

#[tokio::test]
async fn a_downgrade_waits_for_the_next_period_and_can_be_kept_from_happening() {
    let server = Server::start().await;
    server.open("acme", "pro").await;
    let link = url(&session(&server, "acme").await);
    let csrf = get(&format!("{link}/billing")).await.hidden("csrf");
    let scheduled = post_form(
        &format!("{link}/tier"),
        &[("csrf", &csrf), ("tier", "starter")],
        None,
    )
    .await;
    assert!(scheduled.location().ends_with("notice=downgrade_scheduled"));
    let account = server.admin().get("/v1/accounts/acme").await.unwrap();
    assert_eq!(
        (account.str("tier"), account.str("pending_tier")),
        ("pro", "starter")
    );
    let billing = get(&format!("{link}/billing")).await;
    assert!(billing.body.contains(r#"data-testid="pending-tier""#));
    assert!(billing.body.contains(r#"data-testid="cancel-downgrade""#));
    let kept = post_form(
        &format!("{link}/tier"),
        &[("csrf", &csrf), ("tier", "pro"), ("cancel", "1")],
        None,
    )
    .await;
    assert!(kept.location().ends_with("notice=downgrade_canceled"));
    let account = server.admin().get("/v1/accounts/acme").await.unwrap();
    assert_eq!(account.body["pending_tier"], Value::Null);
}

#[tokio::test]
async fn a_manual_purchase_stays_pending_until_the_operator_confirms_it() {
    let server = Server::start().await;
    server.open("acme", "starter").await;
    let link = url(&session(&server, "acme").await);
    let billing = get(&format!("{link}/billing")).await;
    let (csrf, nonce) = (billing.hidden("csrf"), billing.hidden("nonce"));
    let form = [
        ("csrf", csrf.as_str()),
        ("nonce", &nonce),
        ("package", "small"),
    ];
    let bought = post_form(&format!("{link}/purchases"), &form, None).await;
    assert!(bought.location().ends_with("notice=purchase_pending"));
    // The same form sent again (a double click) buys once.
    let again = post_form(&format!("{link}/purchases"), &form, None).await;
    assert!(again.location().ends_with("notice=purchase_pending"));
    let purchases = server
        .admin()
        .get("/v1/accounts/acme/purchases")
        .await
        .unwrap();
    let data = purchases.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{purchases:?}");
    assert_eq!(data[0]["status"], "pending");
    assert_eq!(
        server.admin().balance("acme").await.unwrap().body["packages"]["available"],
        "0"
    );
    let page = get(&format!("{link}/billing")).await;
    assert!(page.body.contains(
        r#"data-testid="purchase-status" data-status="pending">Waiting for confirmation<"#
    ));
    // The operator's backend confirms the payment through the API.
    let id = data[0]["id"].as_str().unwrap();
    let completed = server
        .admin()
        .post(&format!("/v1/purchases/{id}/complete"), &json!({}))
        .await
        .unwrap();
    assert_eq!(completed.status, 200);
    let page = get(&format!("{link}/billing")).await;
    assert!(
        page.body
            .contains(r#"data-testid="purchase-status" data-status="completed">Paid<"#)
    );
    let credits = get(&link).await;
    assert_eq!(credits.value("packages-available"), "200");
    // A pending purchase can be cancelled by the customer.
    let form = [("csrf", csrf.as_str()), ("package", "medium")];
    post_form(&format!("{link}/purchases"), &form, None).await;
    let purchases = server
        .admin()
        .get("/v1/accounts/acme/purchases")
        .await
        .unwrap();
    let pending = purchases.body["data"][0]["id"].as_str().unwrap().to_owned();
    let cancel = post_form(
        &format!("{link}/purchases/{pending}/cancel"),
        &[("csrf", &csrf)],
        None,
    )
    .await;
    assert!(cancel.location().ends_with("notice=purchase_canceled"));
    let canceled = server
        .admin()
        .get(&format!("/v1/purchases/{pending}"))
        .await
        .unwrap();
    assert_eq!(canceled.str("status"), "canceled");
}

#[tokio::test]
async fn an_instant_purchase_completes_at_once() {
    let server = Server::start_with(|config| {
        config.payment_provider = "instant".into();
    })
    .await;
    server.open("acme", "starter").await;
    let link = url(&session(&server, "acme").await);
    let csrf = get(&format!("{link}/billing")).await.hidden("csrf");
    let bought = post_form(
        &format!("{link}/purchases"),
        &[("csrf", &csrf), ("package", "medium")],
        None,
    )
    .await;
    assert_eq!(bought.status, 303);
    assert!(bought.location().ends_with("notice=purchase_completed"));
    let balance = server.admin().balance("acme").await.unwrap();
    assert_eq!(balance.body["packages"]["available"], "500");
    assert_eq!(balance.body["available"], "600");
    let page = get(&link).await;
    assert_eq!(page.value("available"), "600");
}

#[tokio::test]
async fn the_csv_export_holds_every_transaction_and_the_forecast_reads_the_burn_rate() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "business").await;
    // 1,500 charges through the batch API: the export streams past its
    // 1,000-entry steps.
    for round in 0..3 {
        let items: Vec<Value> = (0..500)
            .map(|i| json!({"account": "acme", "idempotency_key": format!("k{round}-{i}"), "credits": "0.5"}))
            .collect();
        let reply = api
            .post("/v1/usage/batch", &json!({"items": items}))
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
    }
    let link = url(&session(&server, "acme").await);
    let response = browser()
        .get(format!("{link}/transactions.csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("acme-transactions.csv")
    );
    let csv = response.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("id,created_at,type,description,credits"));
    // account_created + budget grant + 1,500 charges.
    assert_eq!(lines.len(), 1 + 1_502, "{}", &csv[..500]);
    assert_eq!(
        lines.iter().filter(|l| l.contains(",debit,")).count(),
        1_500
    );
    let ids: std::collections::HashSet<&str> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(ids.len(), 1_502, "every transaction once");

    // 750 credits spent at creation; a day later another 250: 1,000 over a
    // day → 1,000 a day, and 4,000 left → the budget runs out in 4 days.
    server.advance(86_400).await;
    charge(&api, "acme", Cost::credits("250")).await;
    let now = api.get("/v1/test_clock").await.unwrap();
    let now = purser_core::Timestamp::parse_rfc3339(now.str("now")).unwrap();
    let runs_out = purser_portal::format::date(now.checked_add_seconds(4 * 86_400).unwrap());
    // (The first link has expired by now: a new session.)
    let link = url(&session(&server, "acme").await);
    let page = get(&link).await;
    let forecast_start = page.body.find(r#"data-testid="forecast""#).unwrap();
    let forecast = &page.body[forecast_start..forecast_start + 300];
    assert!(
        forecast.contains(&format!("budget runs out on {runs_out}")),
        "{forecast}"
    );
    assert!(forecast.contains("about 1,000 credits a day"), "{forecast}");
    // Paging: the second page starts where the first ended.
    let older = page.body.find("?after=txn_").expect("an older page");
    let cursor: String = page.body[older + 7..]
        .chars()
        .take_while(|c| *c != '"')
        .collect();
    let second = get(&format!("{link}?after={cursor}")).await;
    assert_eq!(second.status, 200);
    assert!(second.body.contains("Newest"));
}

#[tokio::test]
async fn a_form_without_a_valid_link_is_refused_before_its_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start().await;
    let address = server.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    // A forged token and a declared megabyte that is never sent: the refusal
    // comes at once.
    let request = "POST /portal/forged.token/purchases HTTP/1.1\r\nHost: test\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000000\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 512];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("refused without waiting for the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

#[tokio::test]
async fn portal_changes_are_told_as_the_customers_and_alerts_show_on_the_credits_page() {
    let server = Server::start().await;
    let api = server.admin();
    server.open("acme", "starter").await;
    let opened = session(&server, "acme").await;
    let link = url(&opened);
    let page = get(&link).await;
    assert!(!page.body.contains(r#"data-testid="alerts""#));
    // starter: 100 a month, alert at 20.
    charge(&api, "acme", Cost::credits("85")).await;
    let page = get(&link).await;
    assert!(
        page.body.contains(r#"data-testid="alerts""#),
        "{}",
        page.body
    );
    assert!(page.body.contains("fell below"), "{}", page.body);
    // An upgrade in the portal: the operator can bill it from its event.
    let csrf = get(&format!("{link}/billing")).await.hidden("csrf");
    let upgraded = post_form(
        &format!("{link}/tier"),
        &[("csrf", &csrf), ("tier", "pro")],
        None,
    )
    .await;
    assert_eq!(upgraded.status, 303, "{}", upgraded.body);
    let events = api.get("/v1/events?type=tier.changed").await.unwrap();
    let event = &events.body["data"][0];
    assert_eq!(event["data"]["source"], "portal", "{event}");
    assert_eq!(event["data"]["from"], "starter");
    assert_eq!(event["data"]["to"], "pro");
    assert_eq!(event["actor"]["type"], "portal");
    assert_eq!(event["actor"]["id"], opened["id"]);
}

/// Portal forms are paced per account: past the burst, a form is sent
/// back to the billing page with `error=rate_limited` and does nothing;
/// the operator's API is not paced by it, and another account has its own
/// turns.
#[tokio::test]
async fn portal_forms_are_paced_per_account() {
    let server = Server::start_with(|config| {
        config.portal_actions_per_minute = 1;
        config.portal_actions_burst = 2;
    })
    .await;
    server.open("acme", "starter").await;
    server.open("globex", "starter").await;
    let link = url(&session(&server, "acme").await);
    let billing = get(&format!("{link}/billing")).await;
    let csrf = billing.hidden("csrf");
    let mut outcomes = Vec::new();
    for nonce in ["n1", "n2", "n3"] {
        let form = [
            ("csrf", csrf.as_str()),
            ("nonce", nonce),
            ("package", "small"),
        ];
        let page = post_form(&format!("{link}/purchases"), &form, None).await;
        assert_eq!(page.status, 303);
        outcomes.push(page.location().rsplit('?').next().unwrap_or("").to_owned());
    }
    assert_eq!(
        outcomes,
        [
            "notice=purchase_pending",
            "notice=purchase_pending",
            "error=rate_limited"
        ]
    );
    let purchases = server
        .admin()
        .get("/v1/accounts/acme/purchases")
        .await
        .unwrap();
    assert_eq!(purchases.body["data"].as_array().unwrap().len(), 2);
    let page = get(&format!("{link}/billing?error=rate_limited")).await;
    assert!(page.body.contains("We are busy right now"), "{}", page.body);
    // The API is not paced by the portal's turns.
    let bought = server
        .admin()
        .create_purchase("acme", "small")
        .await
        .unwrap();
    assert_eq!(bought.status, 201, "{bought:?}");
    // Another account's customer has turns of their own.
    let other = url(&session(&server, "globex").await);
    let billing = get(&format!("{other}/billing")).await;
    let form = [
        ("csrf", billing.hidden("csrf")),
        ("nonce", "g1".to_owned()),
        ("package", "small".to_owned()),
    ];
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let page = post_form(&format!("{other}/purchases"), &form, None).await;
    assert!(page.location().ends_with("notice=purchase_pending"));
}
