//! Webhooks from outside: the real `purser serve` delivers its outbox to a
//! receiver (`e2e/webhook-receiver.mjs`) that verifies every delivery with
//! the `standardwebhooks` package from npm (the specification's reference
//! library, not purser's code): signatures before and after a secret
//! rotation (both then), the same `webhook-id` on every retry, per-account
//! order, a receiver that fails and then recovers, 410 disabling the
//! endpoint, and `kill -9` with deliveries pending (nothing lost).
//!
//! Needs Node.js 20+ and `e2e/node_modules` (`.ci/test` installs them);
//! without them the test fails with the command to run.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ServerProcess;
use common::ledger::{admin, expect_status};
use purser_client::{Charge, Client, Cost, NewAccount};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(30);

/// The receiver process, stopped on drop.
struct Receiver {
    child: Child,
    client: Client,
    url: String,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the workspace root")
        .to_path_buf()
}

impl Receiver {
    fn start(dir: &Path) -> Receiver {
        let root = workspace_root();
        assert!(
            root.join("e2e/node_modules/standardwebhooks").exists(),
            "\n\n*** e2e/node_modules is missing: run `npm ci --prefix e2e` (bash .ci/test does)\n\n"
        );
        let port_file = dir.join("receiver.port");
        let child = Command::new("node")
            .arg("e2e/webhook-receiver.mjs")
            .arg(&port_file)
            .current_dir(&root)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "\n\n*** cannot run `node` ({error}): this test needs Node.js 20 or newer\n\n"
                )
            });
        let started = Instant::now();
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let Ok(port) = text.trim().parse::<u16>()
            {
                break port;
            }
            assert!(started.elapsed() < DEADLINE, "the receiver did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        let url = format!("http://127.0.0.1:{port}");
        Receiver {
            child,
            client: Client::new(&url, "-"),
            url,
        }
    }

    async fn secrets(&self, secrets: &[&str]) {
        let reply = self
            .client
            .post("/_secrets", &json!({ "secrets": secrets }))
            .await
            .expect("tell the receiver its secrets");
        assert_eq!(reply.status, 200);
    }

    async fn answer(&self, status: u16) {
        let reply = self
            .client
            .post("/_answer", &json!({ "status": status }))
            .await
            .expect("tell the receiver how to answer");
        assert_eq!(reply.status, 200);
    }

    async fn log(&self) -> Vec<Value> {
        let reply = self
            .client
            .get("/_log")
            .await
            .expect("read the receiver's log");
        reply.body.as_array().cloned().unwrap_or_default()
    }

    /// Waits until `done` holds of the log; panics with the log if it does not.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let log = self.log().await;
            if done(&log) {
                return log;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{what}: not within {DEADLINE:?}; the receiver got:\n{}",
                serde_json::to_string_pretty(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Ids of the deliveries the receiver answered 2xx.
fn delivered(log: &[Value]) -> HashSet<String> {
    log.iter()
        .filter(|d| (200..300).contains(&d["answered"].as_u64().unwrap_or(0)))
        .filter_map(|d| d["id"].as_str().map(str::to_owned))
        .collect()
}

fn start_server(dir: &Path) -> ServerProcess {
    let config = dir.join("purser.toml");
    std::fs::write(
        &config,
        "[webhooks]\nretry_schedule_seconds = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n",
    )
    .expect("write purser.toml");
    ServerProcess::start_with(
        &dir.join("data"),
        "server",
        &["--config", config.to_str().expect("utf-8 path")],
    )
}

async fn all_event_ids(client: &Client) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/v1/events?limit=100".to_owned(),
            Some(after) => format!("/v1/events?limit=100&starting_after={after}"),
        };
        let page = expect_status(client.get(&path).await, 200, "list events");
        let data = page.body["data"].as_array().cloned().unwrap_or_default();
        ids.extend(
            data.iter()
                .filter_map(|e| e["id"].as_str().map(str::to_owned)),
        );
        cursor = ids.last().cloned();
        if page.body["has_more"] != json!(true) {
            return ids;
        }
    }
}

async fn open(client: &Client, id: &str) {
    expect_status(
        client
            .create_account(&NewAccount {
                id: id.into(),
                tier: "starter".into(),
                name: None,
                anchor: None,
            })
            .await,
        201,
        "create an account",
    );
}

async fn charge(client: &Client, account: &str, credits: &str) {
    expect_status(
        client
            .charge(account, &Charge::new(Cost::credits(credits)), None)
            .await,
        201,
        "charge",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_ordered_retried_and_survive_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let receiver = Receiver::start(dir.path());
    let server = start_server(dir.path());
    let client = admin(&server, Duration::from_secs(10));

    // An endpoint, its secret shown once.
    let created = expect_status(
        client
            .post(
                "/v1/webhook_endpoints",
                &json!({ "url": receiver.url, "description": "test" }),
            )
            .await,
        201,
        "create an endpoint",
    );
    let endpoint = created.body["id"].as_str().expect("an id").to_owned();
    let secret = created.body["secret"]
        .as_str()
        .expect("a secret")
        .to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(created.body["events"], json!(["*"]));
    let got = expect_status(
        client
            .get(&format!("/v1/webhook_endpoints/{endpoint}"))
            .await,
        200,
        "get the endpoint",
    );
    assert!(got.body.get("secret").is_none(), "the secret is shown once");
    receiver.secrets(&[&secret]).await;

    // Events on two accounts: created, a threshold crossed (starter: 100 a
    // month, 20 by default), the budget used up.
    for account in ["a1", "a2"] {
        open(&client, account).await;
    }
    charge(&client, "a1", "85").await;
    charge(&client, "a2", "30").await;
    charge(&client, "a1", "15").await;
    let ids = all_event_ids(&client).await;
    assert_eq!(ids.len(), 5, "{ids:?}");
    let log = receiver
        .wait_for("every event delivered", |log| {
            delivered(log).len() == ids.len()
        })
        .await;
    for delivery in &log {
        assert_eq!(delivery["verified"][&secret], json!(true), "{delivery}");
        let id = delivery["id"].as_str().expect("webhook-id");
        assert_eq!(delivery["body"]["id"], json!(id));
        let event = expect_status(
            client.get(&format!("/v1/events/{id}")).await,
            200,
            "get the event",
        );
        assert_eq!(delivery["body"]["type"], event.body["type"]);
        assert_eq!(delivery["body"]["data"], event.body["data"]);
        assert_eq!(delivery["body"]["sequence"], event.body["sequence"]);
    }
    let types: Vec<&str> = log
        .iter()
        .filter(|d| d["body"]["account"] == json!("a1"))
        .map(|d| d["body"]["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        types,
        [
            "account.created",
            "credits.low",
            "budget.exhausted",
            "credits.depleted"
        ]
    );

    // The receiver fails for a while: retries carry the same webhook-id,
    // then everything arrives, in order per account.
    receiver.answer(500).await;
    expect_status(
        client
            .post("/v1/accounts/a2/purchases", &json!({ "package": "small" }))
            .await,
        201,
        "buy",
    );
    charge(&client, "a2", "60").await;
    let failing = receiver
        .wait_for("retries", |log| {
            log.iter().filter(|d| d["answered"] == json!(500)).count() >= 3
        })
        .await;
    let retried: HashMap<&str, usize> = failing
        .iter()
        .filter(|d| d["answered"] == json!(500))
        .fold(HashMap::new(), |mut counts, d| {
            *counts.entry(d["id"].as_str().unwrap_or("")).or_default() += 1;
            counts
        });
    assert!(
        retried.values().any(|n| *n >= 2),
        "the same webhook-id retried: {retried:?}"
    );
    receiver.answer(200).await;
    let ids = all_event_ids(&client).await;
    let log = receiver
        .wait_for("everything after the failures", |log| {
            delivered(log).len() == ids.len()
        })
        .await;
    assert!(log.iter().all(|d| d["verified"][&secret] == json!(true)));
    check_order(&log);

    // A rotated secret: both sign for a day.
    let rotated = expect_status(
        client
            .post(
                &format!("/v1/webhook_endpoints/{endpoint}/rotate_secret"),
                &json!({}),
            )
            .await,
        200,
        "rotate",
    );
    let new_secret = rotated.body["secret"]
        .as_str()
        .expect("a new secret")
        .to_owned();
    assert_ne!(new_secret, secret);
    receiver.secrets(&[&secret, &new_secret]).await;
    open(&client, "a3").await;
    let log = receiver
        .wait_for("a delivery after the rotation", |log| {
            log.iter().any(|d| d["body"]["account"] == json!("a3"))
        })
        .await;
    let after = log
        .iter()
        .find(|d| d["body"]["account"] == json!("a3"))
        .expect("a3's event");
    assert_eq!(after["signatures"], json!(2));
    assert_eq!(after["verified"][&secret], json!(true));
    assert_eq!(after["verified"][&new_secret], json!(true));

    // kill -9 with deliveries pending: nothing is lost.
    receiver.answer(503).await;
    for n in 0..5 {
        open(&client, &format!("k{n}")).await;
    }
    receiver
        .wait_for("a failed attempt before the kill", |log| {
            log.iter().any(|d| d["answered"] == json!(503))
        })
        .await;
    let _killed = server.kill();
    let server = start_server(dir.path());
    let client = admin(&server, Duration::from_secs(10));
    receiver.answer(200).await;
    let ids = all_event_ids(&client).await;
    let log = receiver
        .wait_for("every event after kill -9", |log| {
            let got = delivered(log);
            ids.iter().all(|id| got.contains(id))
        })
        .await;
    let after_restart: Vec<&Value> = log
        .iter()
        .filter(|d| {
            d["body"]["account"]
                .as_str()
                .is_some_and(|a| a.starts_with('k'))
        })
        .collect();
    assert!(after_restart.len() >= 5);
    for delivery in after_restart {
        assert_eq!(delivery["verified"][&new_secret], json!(true), "{delivery}");
        assert_eq!(delivery["verified"][&secret], json!(true), "{delivery}");
    }
    check_order(&log);

    // The deliveries were recorded.
    let attempts = expect_status(
        client
            .get(&format!(
                "/v1/webhook_endpoints/{endpoint}/deliveries?limit=100"
            ))
            .await,
        200,
        "deliveries",
    );
    let attempts = attempts.body["data"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!attempts.is_empty());
    assert!(
        attempts
            .iter()
            .all(|a| a["event"].as_str().is_some_and(|e| e.starts_with("evt_")))
    );
    // Kept in the store: the failed attempts made before the kill are there.
    assert!(
        attempts.iter().any(|a| a["status_code"] == json!(503)),
        "{attempts:?}"
    );

    // 410 Gone disables the endpoint.
    receiver.answer(410).await;
    open(&client, "gone").await;
    let started = Instant::now();
    loop {
        let got = expect_status(
            client
                .get(&format!("/v1/webhook_endpoints/{endpoint}"))
                .await,
            200,
            "get the endpoint",
        );
        if got.body["status"] == json!("disabled") {
            assert_eq!(got.body["disabled_reason"], json!("gone"));
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "410 did not disable: {}",
            got.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per account, the first successful delivery of each event comes in
/// `sequence` order, and no event is delivered after a later one of its
/// account was first delivered.
fn check_order(log: &[Value]) {
    let mut last: HashMap<String, (u64, String)> = HashMap::new();
    let mut seen = HashSet::new();
    for delivery in log {
        if !(200..300).contains(&delivery["answered"].as_u64().unwrap_or(0)) {
            continue;
        }
        let id = delivery["id"].as_str().unwrap_or("").to_owned();
        if !seen.insert(id.clone()) {
            continue; // a duplicate (after a restart): allowed, same id
        }
        let account = delivery["body"]["account"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let sequence = delivery["body"]["sequence"].as_u64().expect("a sequence");
        if let Some((before, before_id)) = last.get(&account) {
            assert!(
                *before <= sequence,
                "{account}: {id} (sequence {sequence}) after {before_id} (sequence {before})"
            );
        }
        last.insert(account, (sequence, id));
    }
}

/// A PostgreSQL database of this test's own, dropped with it.
struct Database {
    name: String,
    url: String,
}

fn postgres_admin(sql: String) {
    let url = std::env::var("PURSER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap_or_else(|error| {
            panic!("PostgreSQL is required by this test and is not reachable at {url}: {error}")
        });
        client
            .batch_execute(&sql)
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
    })
    .join()
    .expect("the PostgreSQL admin thread");
}

impl Database {
    fn create() -> Database {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos();
        let name = format!("purser_webhooks_{:x}_{}", nanos, std::process::id());
        postgres_admin(format!("CREATE DATABASE {name}"));
        let base = std::env::var("PURSER_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let url = format!(
            "{}/{name}",
            base.rsplit_once('/').expect("a database URL").0
        );
        Database { name, url }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        postgres_admin(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

async fn wait_ready(server: &ServerProcess) {
    let probe = Client::new(&server.base, common::ADMIN_KEY).with_timeout(Duration::from_secs(1));
    let started = Instant::now();
    loop {
        if probe
            .get("/readyz")
            .await
            .is_ok_and(|reply| reply.status == 200)
        {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "not ready within {DEADLINE:?}:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_a_failover_moves_delivery_to_the_new_writer() {
    let database = tokio::task::block_in_place(Database::create);
    let dir = tempfile::tempdir().expect("temp dir");
    let receiver = Receiver::start(dir.path());
    let a = tokio::task::block_in_place(|| {
        ServerProcess::start_on_database(&database.url, dir.path(), "a")
    });
    wait_ready(&a).await;
    let b = tokio::task::block_in_place(|| {
        ServerProcess::start_on_database(&database.url, dir.path(), "b")
    });
    let a_client = admin(&a, Duration::from_secs(10));
    let created = expect_status(
        a_client
            .post("/v1/webhook_endpoints", &json!({ "url": receiver.url }))
            .await,
        201,
        "create an endpoint on the writer",
    );
    let secret = created.body["secret"]
        .as_str()
        .expect("a secret")
        .to_owned();
    receiver.secrets(&[&secret]).await;
    for account in ["pg-1", "pg-2"] {
        open(&a_client, account).await;
    }
    let before = all_event_ids(&a_client).await;
    receiver
        .wait_for("the writer's deliveries", |log| {
            before.iter().all(|id| delivered(log).contains(id))
        })
        .await;
    // Deliveries pending when the writer dies.
    receiver.answer(503).await;
    open(&a_client, "pg-3").await;
    receiver
        .wait_for("a failed attempt", |log| {
            log.iter().any(|d| d["answered"] == json!(503))
        })
        .await;
    let _killed = tokio::task::block_in_place(|| a.kill());
    wait_ready(&b).await;
    receiver.answer(200).await;
    let b_client = admin(&b, Duration::from_secs(10));
    open(&b_client, "pg-4").await;
    let ids = all_event_ids(&b_client).await;
    assert_eq!(ids.len(), 4, "{ids:?}");
    let log = receiver
        .wait_for("every event, from the new writer", |log| {
            let got = delivered(log);
            ids.iter().all(|id| got.contains(id))
        })
        .await;
    assert!(log.iter().all(|d| d["verified"][&secret] == json!(true)));
    check_order(&log);
    drop(b);
    drop(dir);
    tokio::task::block_in_place(|| drop(database));
}
