//! The customer portal in a real browser: `e2e/portal.mjs` drives headless
//! Chromium (through `playwright-core`) against the real `purser serve`,
//! started with the instant payment provider. It checks every amount the
//! credits page shows against the API's balance, upgrades the tier, buys a
//! package, schedules and cancels a downgrade, checks that the pages fit a
//! phone's width, and saves screenshots to `target/portal-screenshots/`.
//! `e2e/portal-stripe.mjs` buys a package through Stripe Checkout (a local
//! stand-in for Stripe's API, webhooks signed by Stripe's own library).
//!
//! Needs `/usr/bin/chromium`, Node.js 20+ and `e2e/node_modules` (`.ci/run`
//! installs them); without them the test fails with the command to run.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{ADMIN_KEY, ServerProcess};

const CHROMIUM: &str = "/usr/bin/chromium";
/// Longer than the script's own 120 s watchdog, which closes the browser.
const SCRIPT_DEADLINE: Duration = Duration::from_secs(180);
/// How long the script gets to close the browser after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

#[test]
fn portal_pages_show_the_balance_and_drive_billing_in_chromium() {
    let root = workspace_root();
    require_browser_tools(&root);
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start_with(
        &dir.path().join("data"),
        "server",
        &["--payment-provider", "instant"],
    );
    run_script(&root, dir.path(), &server, "e2e/portal.mjs", &[]);
}

/// With the `stripe` provider (against the local stand-in for Stripe's
/// API): Buy leads to the checkout page, Stripe's signed webhook completes
/// the purchase, and the pages show it paid and the credits there.
#[test]
fn buying_in_chromium_goes_through_stripe_checkout() {
    const SECRET: &str = "whsec_browser_0123456789abcdef";
    const KEY: &str = "sk_test_browser_0123456789";
    let root = workspace_root();
    require_browser_tools(&root);
    let standin = common::stripe_standin::StripeStandin::start(KEY);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("purser.toml");
    std::fs::write(
        &config,
        format!(
            "[payments]\nprovider = \"stripe\"\n\n[payments.stripe]\napi_base = \"{}\"\n",
            standin.base
        ),
    )
    .expect("write the configuration");
    let server = ServerProcess::start_with_env(
        &dir.path().join("data"),
        "server",
        &["--config", config.to_str().expect("a UTF-8 path")],
        &[
            ("PURSER_STRIPE_WEBHOOK_SECRET", SECRET),
            ("PURSER_STRIPE_SECRET_KEY", KEY),
        ],
    );
    run_script(
        &root,
        dir.path(),
        &server,
        "e2e/portal-stripe.mjs",
        &[
            ("STRIPE_WEBHOOK_SECRET", SECRET),
            ("STRIPE_BASE", standin.base.as_str()),
        ],
    );
    assert_eq!(standin.requests_to("/v1/checkout/sessions").len(), 1);
}

/// Runs a browser script against `server`; fails with its output and the
/// server's log unless it succeeds in time.
fn run_script(root: &Path, dir: &Path, server: &ServerProcess, script: &str, env: &[(&str, &str)]) {
    let screenshots = root.join("target/portal-screenshots");
    std::fs::create_dir_all(&screenshots).expect("create target/portal-screenshots");
    let name = Path::new(script)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("script");
    let stdout = dir.join(format!("{name}.stdout"));
    let stderr = dir.join(format!("{name}.stderr"));
    let mut child = Command::new("node")
        .arg(script)
        .current_dir(root)
        .env("PURSER_URL", &server.base)
        .env("PURSER_ADMIN_KEY", ADMIN_KEY)
        .env("SCREENSHOT_DIR", &screenshots)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(File::create(&stdout).expect("create the script's stdout file"))
        .stderr(File::create(&stderr).expect("create the script's stderr file"))
        .spawn()
        .unwrap_or_else(|error| {
            panic!("\n\n*** cannot run `node` ({error}): this test needs Node.js 20 or newer on PATH\n\n")
        });
    let status = wait_with_deadline(&mut child);

    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    println!("{}", read(&stdout));
    assert!(
        status.is_some_and(|status| status.success()),
        "{script} {}\n--- script stdout ---\n{}\n--- script stderr ---\n{}\n--- server log ---\n{}",
        match status {
            Some(status) => format!("exited with {status}"),
            None => format!("did not finish within {SCRIPT_DEADLINE:?}"),
        },
        read(&stdout),
        read(&stderr),
        server.log_text()
    );
}

/// The workspace root: `e2e/` lives there.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// Fails, never skips, when the browser or the script's dependencies are
/// missing: a portal that is not tested must not look like one that passed.
fn require_browser_tools(root: &Path) {
    assert!(
        Path::new(CHROMIUM).exists(),
        "\n\n*** {CHROMIUM} is missing: the portal browser test needs it. Install it with:\n\
         ***     apt-get update && apt-get install -y --no-install-recommends chromium\n\n"
    );
    assert!(
        root.join("e2e/node_modules/playwright-core").exists(),
        "\n\n*** e2e/node_modules/playwright-core is missing: the portal browser test needs it.\n\
         *** Install it with (from {}):\n\
         ***     npm ci --prefix e2e\n\n",
        root.display()
    );
}

/// The script's exit status, or `None` if it ran past the deadline; then it
/// gets SIGTERM (Playwright closes the browser on it), then SIGKILL.
fn wait_with_deadline(child: &mut Child) -> Option<ExitStatus> {
    let deadline = Instant::now() + SCRIPT_DEADLINE;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("poll the script") {
            return Some(status);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let grace = Instant::now() + TERM_GRACE;
    while Instant::now() < grace {
        if child.try_wait().expect("poll the script").is_some() {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
