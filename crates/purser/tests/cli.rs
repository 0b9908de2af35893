//! The client commands end to end: the real `purser serve`, and the real
//! `purser` binary as its client.

mod common;

use std::process::Output;

use common::{ADMIN_KEY, ServerProcess};
use serde_json::Value;

/// Runs `purser --url <server> --api-key <admin> <args>`.
fn run(server: &ServerProcess, args: &[&str]) -> Output {
    common::purser()
        .args(["--url", &server.base, "--api-key", ADMIN_KEY])
        .args(args)
        .output()
        .expect("run purser")
}

/// Runs a command that must succeed; returns its stdout as JSON.
fn ok(server: &ServerProcess, args: &[&str]) -> Value {
    let output = run(server, args);
    assert!(
        output.status.success(),
        "purser {args:?} exited with {}:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "purser {args:?} printed no JSON ({error}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

#[test]
fn client_commands_talk_to_a_running_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(&dir.path().join("data"), "server");

    let account = ok(
        &server,
        &[
            "accounts", "create", "cli-acme", "--tier", "starter", "--name", "Acme",
        ],
    );
    assert_eq!(account["id"], "cli-acme");
    assert_eq!(account["name"], "Acme");
    assert_eq!(ok(&server, &["balance", "cli-acme"])["available"], "100");

    let debit = ok(
        &server,
        &[
            "usage",
            "cli-acme",
            "--task",
            "assistant_message",
            "--quantity",
            "3",
        ],
    );
    assert_eq!(debit["object"], "debit");
    assert_eq!(debit["task"], "assistant_message");
    assert_eq!(debit["credits"], "1.5");
    assert_eq!(ok(&server, &["balance", "cli-acme"])["available"], "98.5");

    let list = ok(&server, &["transactions", "cli-acme", "--type", "debit"]);
    let entries = list["data"].as_array().expect("a list");
    assert_eq!(entries.len(), 1, "{list}");
    assert_eq!(entries[0]["debit"], debit["id"]);
    assert_eq!(entries[0]["credits"], "-1.5");

    let refused = run(&server, &["usage", "cli-acme", "--credits", "0.0000001"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(refused.stdout.is_empty(), "{refused:?}");
    let error: Value = serde_json::from_slice(&refused.stderr).expect("the error JSON on stderr");
    assert_eq!(error["error"]["type"], "invalid_request", "{error}");
    assert_eq!(error["error"]["param"], "credits", "{error}");
    assert_eq!(ok(&server, &["balance", "cli-acme"])["available"], "98.5");
}

#[test]
fn holds_purchases_keys_and_retries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start(&dir.path().join("data"), "server");
    ok(
        &server,
        &["accounts", "create", "cli-beta", "--tier", "free"],
    );
    assert_eq!(
        ok(&server, &["accounts", "get", "cli-beta"])["tier"],
        "free"
    );
    let accounts = ok(&server, &["accounts", "list", "--limit", "1"]);
    assert_eq!(accounts["data"][0]["id"], "cli-beta");

    let purchase = ok(
        &server,
        &["purchases", "create", "cli-beta", "--package", "small"],
    );
    let id = purchase["id"].as_str().expect("a purchase id");
    assert_eq!(
        ok(&server, &["purchases", "complete", id])["status"],
        "completed"
    );
    assert_eq!(ok(&server, &["balance", "cli-beta"])["available"], "225");

    let hold = ok(&server, &["holds", "create", "cli-beta", "--credits", "30"]);
    let hold_id = hold["id"].as_str().expect("a hold id");
    let debit = ok(&server, &["holds", "capture", hold_id, "--credits", "10"]);
    assert_eq!(debit["credits"], "10");
    assert_eq!(
        ok(&server, &["holds", "get", hold_id])["status"],
        "captured"
    );
    assert_eq!(ok(&server, &["balance", "cli-beta"])["available"], "215");

    let charge = [
        "usage",
        "cli-beta",
        "--credits",
        "2",
        "--idempotency-key",
        "cli-retry-1",
    ];
    let first = ok(&server, &charge);
    assert_eq!(
        ok(&server, &charge)["id"],
        first["id"],
        "a retry returns the first debit"
    );
    assert_eq!(ok(&server, &["balance", "cli-beta"])["available"], "213");

    // Events and webhook endpoints.
    let events = ok(
        &server,
        &[
            "events",
            "list",
            "--account",
            "cli-beta",
            "--type",
            "purchase.completed",
        ],
    );
    let event_id = events["data"][0]["id"].as_str().expect("an event id");
    assert_eq!(
        ok(&server, &["events", "get", event_id])["type"],
        "purchase.completed"
    );
    let endpoint = ok(
        &server,
        &[
            "webhooks",
            "create",
            "http://127.0.0.1:9/hook",
            "--events",
            "credits.low,purchase.completed",
        ],
    );
    let endpoint_id = endpoint["id"].as_str().expect("an endpoint id");
    assert!(
        endpoint["secret"]
            .as_str()
            .is_some_and(|s| s.starts_with("whsec_"))
    );
    assert_eq!(
        ok(
            &server,
            &["webhooks", "update", endpoint_id, "--status", "disabled"]
        )["status"],
        "disabled"
    );
    assert_eq!(
        ok(&server, &["webhooks", "list"])["data"][0]["id"],
        endpoint_id
    );
    assert!(ok(&server, &["webhooks", "rotate-secret", endpoint_id])["secret"].is_string());
    ok(&server, &["webhooks", "deliveries", endpoint_id]);
    assert_eq!(
        ok(&server, &["webhooks", "delete", endpoint_id])["deleted"],
        true
    );

    let key = ok(&server, &["keys", "create", "--scopes", "read,usage"]);
    assert_eq!(key["scopes"], serde_json::json!(["read", "usage"]));
    let key_id = key["id"].as_str().expect("a key id");
    assert_eq!(ok(&server, &["keys", "revoke", key_id])["id"], key_id);

    let unreachable = common::purser()
        .args(["--url", "http://127.0.0.1:1", "balance", "cli-beta"])
        .output()
        .expect("run purser");
    assert_eq!(unreachable.status.code(), Some(1), "{unreachable:?}");
}
