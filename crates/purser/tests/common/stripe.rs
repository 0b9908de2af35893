//! What the Stripe tests share: Stripe's own signer (`stripe` from npm,
//! `webhooks.generateTestHeaderString`), a server on the stand-in, and a
//! browser-like client for the portal's forms.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use purser_client::Client;
use serde_json::Value;

use super::ServerProcess;
use super::stripe_standin::StripeStandin;

pub const SECRET: &str = "whsec_test_purser_0123456789abcdef";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the workspace root")
        .to_path_buf()
}

/// The `Stripe-Signature` header Stripe's library makes for `payload`.
pub fn stripe_header(payload: &[u8], secret: &str, timestamp: Option<i64>) -> String {
    let root = workspace_root();
    assert!(
        root.join("e2e/node_modules/stripe").exists(),
        "\n\n*** e2e/node_modules is missing: run `npm ci --prefix e2e` (bash .ci/test does)\n\n"
    );
    let mut command = Command::new("node");
    command
        .arg("e2e/stripe-sign.mjs")
        .arg(secret)
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    if let Some(timestamp) = timestamp {
        command.arg(timestamp.to_string());
    }
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("\n\n*** cannot run `node` ({error})\n\n"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(payload)
        .expect("write the payload");
    let output = child.wait_with_output().expect("the signer");
    assert!(output.status.success(), "the signer failed");
    String::from_utf8(output.stdout).expect("a header")
}

pub async fn deliver(client: &Client, event: &Value, header: &str) -> purser_client::Reply {
    let body = serde_json::to_vec(event).expect("JSON");
    let http = purser_client::http_builder().build().expect("a client");
    let response = http
        .post(format!("{}/v1/webhooks/stripe", client.base_url()))
        .header("content-type", "application/json")
        .header("stripe-signature", header)
        .body(body)
        .send()
        .await
        .expect("an answer");
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    purser_client::Reply { status, body }
}

pub async fn signed(client: &Client, event: &Value) -> purser_client::Reply {
    let header = stripe_header(&serde_json::to_vec(event).expect("JSON"), SECRET, None);
    deliver(client, event, &header).await
}

pub const STRIPE_KEY: &str = "sk_test_standin_0123456789";

/// A server with the `stripe` provider against the stand-in.
pub fn stripe_server(dir: &Path, standin: &StripeStandin) -> ServerProcess {
    stripe_server_with(dir, standin, "")
}

/// A server with the `stripe` provider against the stand-in, and `more`
/// of `purser.toml` (a catalog…).
pub fn stripe_server_with(dir: &Path, standin: &StripeStandin, more: &str) -> ServerProcess {
    let config = dir.join("purser.toml");
    std::fs::write(
        &config,
        format!(
            "[payments]\nprovider = \"stripe\"\n\n[payments.stripe]\napi_base = \"{}\"\n\n{more}",
            standin.base
        ),
    )
    .expect("write the configuration");
    ServerProcess::start_with_env(
        &dir.join("data"),
        "server",
        &["--config", config.to_str().expect("a UTF-8 path")],
        &[
            ("PURSER_STRIPE_WEBHOOK_SECRET", SECRET),
            ("PURSER_STRIPE_SECRET_KEY", STRIPE_KEY),
        ],
    )
}

/// A browser-like client that does not follow redirects.
pub fn browser() -> reqwest::Client {
    purser_client::http_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a client")
}

pub fn form_encode(fields: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        text.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    fields
        .iter()
        .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of the first hidden input `name` on a page.
pub fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker).expect("the hidden field") + marker.len();
    page[start..start + page[start..].find('"').expect("its end")].to_owned()
}

/// Posts a portal form from the billing page; answers the redirect's target.
pub async fn submit_form(link: &str, action: &str, extra: &[(&str, &str)]) -> String {
    let http = browser();
    let page = http
        .get(format!("{link}/billing"))
        .send()
        .await
        .expect("the billing page")
        .text()
        .await
        .expect("its text");
    let csrf = hidden(&page, "csrf");
    let nonce = hidden(&page, "nonce");
    let mut fields = vec![("csrf", csrf.as_str()), ("nonce", nonce.as_str())];
    fields.extend_from_slice(extra);
    let response = http
        .post(format!("{link}/{action}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_encode(&fields))
        .send()
        .await
        .expect("the form's answer");
    assert_eq!(response.status().as_u16(), 303, "{action}: {response:?}");
    response
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .expect("a Location")
        .to_owned()
}

pub async fn page_text(url: &str) -> String {
    browser()
        .get(url)
        .send()
        .await
        .expect("a page")
        .text()
        .await
        .expect("its text")
}
