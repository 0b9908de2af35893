// The portal's Buy through Stripe Checkout in headless Chromium: Buy leads
// to the (local stand-in's) checkout page; Stripe's webhook, signed by
// Stripe's own library, completes the purchase; back on the billing page
// the purchase is paid and the credits page shows the package's credits.
// Run by crates/purser/tests/portal_browser.rs against a server with
// `payments.provider = "stripe"` and the stand-in as `payments.stripe.api_base`.
// Prints `ok …` per step; on a failure prints `FAIL …`, saves
// stripe-failure.png and exits 1.
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import Stripe from 'stripe';

const BASE = required('PURSER_URL');
const ADMIN_KEY = required('PURSER_ADMIN_KEY');
const WEBHOOK_SECRET = required('STRIPE_WEBHOOK_SECRET');
const CHECKOUT_BASE = required('STRIPE_BASE');
const SHOTS = required('SCREENSHOT_DIR');
const LAUNCH = {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
};
const WATCHDOG_MS = 120_000;

class Failure extends Error {}
function required(name) {
  const value = process.env[name];
  if (!value) { console.error(`FAIL: environment variable ${name} is not set`); process.exit(1); }
  return value;
}
const show = (value) => JSON.stringify(value);
function check(condition, what, expected, seen) {
  if (!condition) throw new Failure(`${what}: expected ${show(expected)}, saw ${show(seen)}`);
}
const ok = (message) => console.log(`ok ${message}`);

async function api(method, route, body) {
  const response = await fetch(new URL(route, BASE), {
    method,
    headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const answer = await response.json();
  if (!response.ok) throw new Failure(`${method} ${route}: ${response.status} ${show(answer)}`);
  return answer;
}

const browser = await chromium.launch(LAUNCH);
const watchdog = setTimeout(async () => {
  console.error('FAIL: the script ran past its watchdog');
  await browser.close();
  process.exit(1);
}, WATCHDOG_MS);
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
page.setDefaultTimeout(15_000);
try {
  await api('POST', '/v1/accounts', { id: 'stripe-shop', tier: 'starter' });
  const session = await api('POST', '/v1/accounts/stripe-shop/portal_sessions', {});
  await page.goto(`${session.url}/billing`);
  await Promise.all([
    page.waitForURL((url) => url.href.startsWith(`${CHECKOUT_BASE}/c/pay/`)),
    page.locator('[data-testid=package-card][data-package=small] button[data-testid=buy-package]').click(),
  ]);
  const checkout = JSON.parse(await page.locator('#session').textContent());
  check(checkout.mode === 'payment' && checkout.amount_total === 900 && checkout.currency === 'usd',
    'the Checkout Session Buy opened', { mode: 'payment', amount_total: 900, currency: 'usd' },
    { mode: checkout.mode, amount_total: checkout.amount_total, currency: checkout.currency });
  ok(`Buy led to Stripe Checkout ${page.url()} for ${checkout.client_reference_id}`);
  await page.screenshot({ path: join(SHOTS, 'stripe-checkout.png') });

  // The customer pays; Stripe tells purser, signing with its own library.
  const event = {
    id: 'evt_browser_1', object: 'event', type: 'checkout.session.completed',
    data: { object: { ...checkout, status: 'complete', payment_status: 'paid' } },
  };
  const payload = JSON.stringify(event);
  const stripe = new Stripe('sk_test_unused');
  const header = stripe.webhooks.generateTestHeaderString({ payload, secret: WEBHOOK_SECRET });
  const delivered = await fetch(new URL('/v1/webhooks/stripe', BASE), {
    method: 'POST', headers: { 'content-type': 'application/json', 'stripe-signature': header }, body: payload,
  });
  check(delivered.status === 200, 'the webhook answer', 200, delivered.status);
  ok('the signed checkout.session.completed was taken');

  // Back to the success URL: the billing page says so, the purchase is paid.
  await page.goto(checkout.success_url);
  const notice = (await page.locator('[data-testid=notice]').textContent()).trim();
  check(notice.startsWith('Thank you'), 'the notice after paying', 'Thank you…', notice);
  const status = await page.locator('table[data-testid=purchases] tbody tr').first()
    .locator('[data-testid=purchase-status]').getAttribute('data-status');
  check(status === 'completed', 'the purchase row', 'completed', status);
  ok('back on billing: the purchase is paid');
  await page.locator('a[data-testid=nav-credits]').click();
  await page.waitForLoadState();
  const packages = await page.locator('[data-testid=packages-available]').getAttribute('data-value');
  check(packages === '200', 'packages available on the credits page', '200', packages);
  const balance = await api('GET', '/v1/accounts/stripe-shop/balance');
  check(balance.packages.available === '200', 'API packages.available', '200', balance.packages.available);
  ok('the credits page shows the 200 package credits');
  await page.screenshot({ path: join(SHOTS, 'stripe-credits.png') });
} catch (error) {
  console.error(`FAIL ${error instanceof Failure ? error.message : error.stack}`);
  await page.screenshot({ path: join(SHOTS, 'stripe-failure.png') }).catch(() => {});
  clearTimeout(watchdog);
  await browser.close();
  process.exit(1);
}
clearTimeout(watchdog);
await browser.close();
