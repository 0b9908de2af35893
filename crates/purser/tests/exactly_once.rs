//! Exactly once under a stalled store, from outside: the real binary on the
//! embedded store, its database write-locked by another process's
//! connection (as `sqlite3` holding `BEGIN IMMEDIATE` would), with a short
//! request timeout. A charge whose answer timed out, or whose client went
//! away, is applied once, and its retry gets its answer; nothing is stuck.

mod common;

use std::time::{Duration, Instant};

use common::ServerProcess;
use common::ledger::{admin, expect_status, open_account};
use purser_client::{Charge, Client, Cost, Reply};
use purser_core::Timestamp;

const ACCOUNT: &str = "stalled";
const RETRY_DEADLINE: Duration = Duration::from_secs(20);

/// Holds the store's write lock from another connection until dropped.
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(data_dir: &std::path::Path) -> WriteLock {
        let connection =
            rusqlite::Connection::open(data_dir.join("purser.db")).expect("open purser.db");
        connection
            .execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        WriteLock(connection)
    }

    fn release(self) {
        self.0
            .execute_batch("ROLLBACK")
            .expect("release the write lock");
    }
}

fn ten() -> Charge {
    Charge::new(Cost::credits("10"))
}

async fn available(client: &Client) -> String {
    let balance = expect_status(client.balance(ACCOUNT).await, 200, "balance");
    balance.str("available").to_owned()
}

/// Retries a keyed charge until it is answered with something other than
/// "still running" or "not known yet".
async fn retry_until_answered(client: &Client, key: &str) -> Reply {
    let deadline = Instant::now() + RETRY_DEADLINE;
    loop {
        let reply = client.charge(ACCOUNT, &ten(), Some(key)).await;
        match reply {
            Ok(reply)
                if !matches!(
                    reply.error_code(),
                    Some("idempotency_key_in_use" | "outcome_unknown")
                ) =>
            {
                return reply;
            }
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("{key} was never answered: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_is_applied_once_whatever_became_of_its_first_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let config = dir.path().join("purser.toml");
    std::fs::write(&config, "[limits]\nrequest_timeout_seconds = 1\n").expect("write the config");
    let server = ServerProcess::start_with(
        &data_dir,
        "stalled",
        &["--config", config.to_str().expect("a UTF-8 path")],
    );
    let client = admin(&server, Duration::from_secs(10));
    open_account(&client, ACCOUNT).await;
    let before: i64 = available(&client).await.parse().expect("whole credits");

    // The first attempt outlives its request timeout: 503, outcome unknown.
    let lock = tokio::task::block_in_place(|| WriteLock::take(&data_dir));
    let first = client
        .charge(ACCOUNT, &ten(), Some("timed-out"))
        .await
        .expect("an answer");
    assert_eq!(
        (first.status, first.error_code()),
        (503, Some("outcome_unknown")),
        "{first:?}"
    );
    // Retried while it still waits on the store: the contract's 409.
    let retry = client
        .charge(ACCOUNT, &ten(), Some("timed-out"))
        .await
        .expect("an answer");
    assert_eq!(
        (retry.status, retry.error_code()),
        (409, Some("idempotency_key_in_use")),
        "{retry:?}"
    );
    // Another request whose client hangs up before any answer.
    let impatient = client.with_timeout(Duration::from_millis(200));
    let gone = impatient.charge(ACCOUNT, &ten(), Some("hung-up")).await;
    assert!(
        gone.is_err(),
        "the impatient client got an answer: {gone:?}"
    );
    tokio::task::block_in_place(|| lock.release());

    let timed_out = retry_until_answered(&client, "timed-out").await;
    assert_eq!(timed_out.status, 201, "{timed_out:?}");
    let hung_up = retry_until_answered(&client, "hung-up").await;
    assert_eq!(hung_up.status, 201, "{hung_up:?}");
    assert_ne!(timed_out.str("id"), hung_up.str("id"));
    // Each charged once, and each key keeps answering the same debit.
    let after: i64 = available(&client).await.parse().expect("whole credits");
    assert_eq!(before - after, 20, "two charges of 10, each applied once");
    for (key, first) in [("timed-out", &timed_out), ("hung-up", &hung_up)] {
        let again = client
            .charge(ACCOUNT, &ten(), Some(key))
            .await
            .expect("an answer");
        assert_eq!(
            (again.status, again.str("id")),
            (201, first.str("id")),
            "{key}"
        );
    }
    let debits = expect_status(
        client.transactions(ACCOUNT, "?type=debit").await,
        200,
        "debits",
    );
    assert_eq!(
        debits.body["data"].as_array().map(Vec::len),
        Some(2),
        "{debits:?}"
    );
    assert!(
        server.terminate().success(),
        "SIGTERM drains and exits cleanly"
    );
}

/// Keys past the memory cache, after `kill -9`: the restarted server reads
/// no key at start, yet every retry (sent at once, while it still learns
/// the stored keys) gets its first answer, the same JSON; nothing is
/// charged again, and another request under a remembered key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_keys_answer_from_the_store_after_kill_9() {
    const KEYS: usize = 600;
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let config = dir.path().join("purser.toml");
    std::fs::write(&config, "[idempotency]\ncache_keys = 64\n").expect("write the config");
    let args = ["--config", config.to_str().expect("a UTF-8 path")];
    let server = ServerProcess::start_with(&data_dir, "keys-first", &args);
    let client = admin(&server, Duration::from_secs(10));
    open_account(&client, ACCOUNT).await;
    let one = Charge::new(Cost::credits("0.5"));
    let mut first = Vec::new();
    for n in 0..KEYS {
        let reply = client
            .charge(ACCOUNT, &one, Some(&format!("key-{n}")))
            .await
            .expect("an answer");
        assert_eq!(reply.status, 201, "{reply:?}");
        first.push(reply.body);
    }
    let before = available(&client).await;
    server.kill();

    let server = ServerProcess::start_with(&data_dir, "keys-second", &args);
    let client = admin(&server, Duration::from_secs(10));
    let retries: Vec<_> = (0..KEYS)
        .map(|n| {
            let client = client.clone();
            let one = one.clone();
            tokio::spawn(async move {
                client
                    .charge(ACCOUNT, &one, Some(&format!("key-{n}")))
                    .await
                    .expect("an answer")
            })
        })
        .collect();
    let mut replies = Vec::new();
    for retry in retries {
        replies.push(retry.await.expect("a retry"));
    }
    for (n, reply) in replies.iter().enumerate() {
        assert_eq!(reply.status, 201, "key-{n}: {reply:?}");
        assert_eq!(reply.body, first[n], "key-{n} answered differently");
    }
    assert_eq!(available(&client).await, before, "nothing charged again");
    let other = client
        .charge(ACCOUNT, &ten(), Some("key-0"))
        .await
        .expect("an answer");
    assert_eq!(
        (other.status, other.error_code()),
        (409, Some("idempotency_key_reused")),
        "{other:?}"
    );
    server.stop();
}

/// A remembered debit answers as it first did, whatever became of its
/// account since: its tier changed and a new period began (test clock),
/// the key long out of the memory cache (answered from the store: the
/// memo, the entry and the account's opening entry read back), and again
/// after a restart. The current balance differs from the remembered one,
/// so a replay rendered from the account as it is now would fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_debit_keeps_its_balance_after_the_period_and_tier_change() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let config = dir.path().join("purser.toml");
    std::fs::write(&config, "[idempotency]\ncache_keys = 1\n").expect("write the config");
    let args = [
        "--config",
        config.to_str().expect("a UTF-8 path"),
        "--test-clock",
    ];
    let server = ServerProcess::start_with(&data_dir, "memo-first", &args);
    let client = admin(&server, Duration::from_secs(10));
    // An account whose period ends 6 hours from now (the test clock's),
    // so a renewal comes within the key's 24 hours: anchored a calendar
    // month before that instant, on a day every month has.
    let clock_now = |reply: Reply| {
        Timestamp::parse_rfc3339(reply.body["now"].as_str().expect("now"))
            .expect("an RFC 3339 instant")
    };
    let mut now = clock_now(expect_status(
        client.get("/v1/test_clock").await,
        200,
        "clock",
    ));
    let mut boundary = now.checked_add_seconds(6 * 3600).expect("in range");
    if boundary.to_string()[8..10] > *"27" {
        let later = client
            .post(
                "/v1/test_clock/advance",
                &serde_json::json!({"seconds": 5 * 86_400}),
            )
            .await;
        now = clock_now(expect_status(later, 200, "advance past the month's end"));
        boundary = now.checked_add_seconds(6 * 3600).expect("in range");
    }
    let anchor = purser_core::time::period_start(boundary, -1);
    let account = purser_client::NewAccount {
        id: ACCOUNT.into(),
        tier: "business".into(),
        name: None,
        anchor: Some(anchor.to_string()),
    };
    let opened = expect_status(client.create_account(&account).await, 201, "open");
    assert_eq!(
        opened.body["balance"]["budget"]["period_end"],
        boundary.to_string(),
        "{opened:?}"
    );
    let first = client
        .charge(ACCOUNT, &ten(), Some("the-first"))
        .await
        .expect("an answer");
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.body["balance"]["tier"], "business", "{first:?}");
    // Enough other keys that the first leaves the cache (64 stripes of 1).
    let one = Charge::new(Cost::credits("0.5"));
    for n in 0..300 {
        let reply = client
            .charge(ACCOUNT, &one, Some(&format!("filler-{n}")))
            .await
            .expect("an answer");
        assert_eq!(reply.status, 201, "{reply:?}");
    }
    expect_status(
        client
            .change_tier(
                ACCOUNT,
                &purser_client::TierChange {
                    tier: "pro".into(),
                    proration: Some("none".into()),
                },
            )
            .await,
        200,
        "change the tier",
    );
    expect_status(
        client
            .post_idempotent(
                "/v1/test_clock/advance",
                &serde_json::json!({"seconds": 7 * 3600}),
                "advance-7-hours",
            )
            .await,
        200,
        "advance the test clock",
    );
    let now = expect_status(client.balance(ACCOUNT).await, 200, "the balance now");
    assert_eq!(
        now.body["budget"]["period_start"], first.body["balance"]["budget"]["period_end"],
        "a new period began: {now:?}"
    );
    let again = client
        .charge(ACCOUNT, &ten(), Some("the-first"))
        .await
        .expect("an answer");
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(again.body, first.body, "the replay answered differently");
    server.stop();

    let server = ServerProcess::start_with(&data_dir, "memo-second", &args);
    let client = admin(&server, Duration::from_secs(10));
    let after = client
        .charge(ACCOUNT, &ten(), Some("the-first"))
        .await
        .expect("an answer");
    assert_eq!(
        (after.status, &after.body),
        (201, &first.body),
        "after a restart"
    );
    server.stop();
}
