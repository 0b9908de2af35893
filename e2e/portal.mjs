// End-to-end test of the customer portal in headless Chromium: sets up an
// account through the API, then checks what the portal shows against the
// API's balance and drives the billing forms. Run by
// crates/purser/tests/portal_browser.rs against a server started with
// `--payment-provider instant`. Prints `ok …` per step; on a failure prints
// `FAIL …` (expected vs seen), saves failure.png and exits 1.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BASE = required('PURSER_URL');
const ADMIN_KEY = required('PURSER_ADMIN_KEY');
const SHOTS = required('SCREENSHOT_DIR');
const DESKTOP = { width: 1280, height: 900 };
const PHONE = { width: 390, height: 844 };
// Without the networking flags Chromium stalls on a closed network.
const LAUNCH = {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
};
const ACTION_TIMEOUT_MS = 15_000;
const WATCHDOG_MS = 120_000; // below the Rust test's deadline, so the browser is closed here
// Different tasks, so both charts have data; 24 + 4.5 + 7.4 + 6 = 41.9 credits.
const CHARGES = [['transcribe_video', '12'], ['assistant_message', '9'], ['crawl_data', '37'], ['transcribe_video', '3']];
// Each amount element and the balance field its data-value must equal.
const AMOUNTS = {
  'available': (b) => b.available,
  'budget-used': (b) => b.budget.used,
  'budget-granted': (b) => b.budget.granted,
  'budget-available': (b) => b.budget.available,
  'packages-available': (b) => b.packages.available,
  'held': (b) => b.held,
  'debt': (b) => b.debt,
};

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

/** "1025.5" → "1,025.5": the human form of a canonical decimal string. */
function human(decimal) {
  const parts = /^(-?)(\d+)(\.\d+)?$/.exec(decimal);
  check(parts, 'a canonical decimal string', '-?digits(.digits)?', decimal);
  return parts[1] + parts[2].replace(/\B(?=(\d{3})+$)/g, ',') + (parts[3] ?? '');
}
/** Exact arithmetic on decimal strings (at most 6 fractional digits): millionths as a BigInt. */
function micros(decimal) {
  const [, sign, whole, fraction = ''] = /^(-?)(\d+)(?:\.(\d+))?$/.exec(decimal);
  const value = BigInt(whole) * 1_000_000n + BigInt(fraction.padEnd(6, '0'));
  return sign ? -value : value;
}

async function api(method, route, body) {
  const response = await fetch(new URL(route, BASE), {
    method,
    headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Failure(`${method} ${route} answered ${response.status}: ${text}`);
  return JSON.parse(text);
}

/** Clicks `target` (a link or a form's button) and waits for the page it leads to. */
async function follow(page, target, what) {
  check(await target.count() === 1, `exactly one ${what}`, 1, await target.count());
  const [response] = await Promise.all([page.waitForNavigation(), target.click()]);
  check(response?.status() === 200, `the page after ${what}`, 'HTTP 200', response?.status());
}

async function checkNoOverflow(page, what) {
  const { scrollWidth, innerWidth } = await page.evaluate(() => (
    { scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth }));
  check(scrollWidth <= innerWidth, `${what} at ${PHONE.width}px wide: document scrollWidth <= innerWidth (no horizontal overflow)`, `<= ${innerWidth}`, scrollWidth);
}

async function screenshots(page, name) {
  await page.setViewportSize(DESKTOP);
  await page.screenshot({ path: join(SHOTS, `${name}-desktop.png`), fullPage: true });
  await page.setViewportSize(PHONE);
  await page.screenshot({ path: join(SHOTS, `${name}-phone.png`), fullPage: true });
  await checkNoOverflow(page, `the ${name} page`);
  await page.setViewportSize(DESKTOP);
  ok(`${name} page: screenshots ${name}-desktop.png, ${name}-phone.png; no horizontal overflow on a phone`);
}

/** The credits page shows exactly what the API's balance says. */
async function checkCreditsPage(page, balance, catalog) {
  for (const [testid, field] of Object.entries(AMOUNTS)) {
    const element = page.locator(`[data-testid=${testid}]`);
    check(await element.count() === 1, `number of [data-testid=${testid}] elements`, 1, await element.count());
    const value = await element.getAttribute('data-value');
    check(value === field(balance), `[data-testid=${testid}] data-value (the API balance)`, field(balance), value);
    const text = (await element.textContent()).replace(/\s+/g, ' ').trim();
    check(text === human(value), `[data-testid=${testid}] text`, human(value), text);
  }
  const tierName = catalog.tiers.find((tier) => tier.id === balance.tier)?.name;
  const shownTier = (await page.locator('[data-testid=tier-name]').textContent()).trim();
  check(shownTier === tierName, '[data-testid=tier-name]', tierName, shownTier);
  const renews = await page.locator('time[data-testid=renews-at]').getAttribute('datetime');
  check(Date.parse(renews) === Date.parse(balance.budget.period_end), 'time[data-testid=renews-at] datetime (budget.period_end)', balance.budget.period_end, renews);
  const forecast = (await page.locator('[data-testid=forecast]').textContent()).trim();
  check(forecast.length > 0, '[data-testid=forecast] text', 'non-empty', forecast);
  for (const chart of ['chart-by-task', 'chart-by-day']) {
    const shapes = await page.locator(`svg[data-testid=${chart}]`).locator('rect, path, circle, line, polyline, polygon').count();
    check(shapes > 0, `shapes in svg[data-testid=${chart}]`, '> 0', shapes);
  }
  const rows = await page.locator('table[data-testid=transactions] tbody tr').count();
  check(rows >= CHARGES.length, 'rows in table[data-testid=transactions]', `>= ${CHARGES.length}`, rows);
  ok(`credits page matches the API: available ${balance.available}, budget ${balance.budget.used} used of ${balance.budget.granted}, packages ${balance.packages.available}, tier ${shownTier}, ${rows} transactions`);
}

async function checkNotice(page, action) {
  const notice = page.locator('[data-testid=notice]');
  await notice.waitFor({ state: 'visible' });
  ok(`${action}: notice "${(await notice.textContent()).replace(/\s+/g, ' ').trim()}"`);
}

async function run(page, pageErrors) {
  const account = `portal-e2e-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  const balance = () => api('GET', `/v1/accounts/${account}/balance`);
  const catalog = await api('GET', '/v1/catalog');
  await api('POST', '/v1/accounts', { id: account, tier: 'starter' });
  for (const [task, quantity] of CHARGES) await api('POST', `/v1/accounts/${account}/usage`, { task, quantity });
  const session = await api('POST', `/v1/accounts/${account}/portal_sessions`, {});
  check(typeof session.url === 'string', 'portal session url', 'a string', session.url);
  ok(`account ${account} on starter with ${CHARGES.length} charges; portal session created`);

  const response = await page.goto(new URL(session.url, BASE).href);
  check(response?.status() === 200, 'the portal session URL', 'HTTP 200', response?.status());
  await checkCreditsPage(page, await balance(), catalog);
  const csv = page.locator('a[data-testid=export-csv]');
  const download = await page.context().request.get(new URL(await csv.getAttribute('href'), page.url()).href);
  check(download.status() === 200, 'the export-csv link', 'HTTP 200', download.status());
  ok(`export-csv link answers 200 (${download.headers()['content-type']})`);
  await screenshots(page, 'credits');

  await follow(page, page.locator('a[data-testid=nav-billing]'), 'a[data-testid=nav-billing]');
  await screenshots(page, 'billing');
  let focused = false;
  for (let presses = 0; presses < 100 && !focused; presses++) {
    await page.keyboard.press('Tab');
    focused = await page.evaluate(() => document.activeElement?.matches('button[data-testid=choose-tier]') ?? false);
  }
  check(focused, 'keyboard focus on a button[data-testid=choose-tier] within 100 Tab presses', true, focused);
  ok('Tab reaches a choose-tier button');

  await follow(page, page.locator('[data-testid=tier-card][data-tier=pro] button[data-testid=choose-tier]'), 'choose-tier in the pro card');
  await checkNotice(page, 'upgrade to pro');
  const current = page.locator('[data-testid=tier-card][data-current=true]');
  const currentTiers = await current.evaluateAll((cards) => cards.map((card) => card.dataset.tier));
  check(show(currentTiers) === show(['pro']), 'the data-tier of the tier cards with data-current=true', ['pro'], currentTiers);
  const upgraded = await balance();
  check(upgraded.tier === 'pro' && upgraded.budget.granted === '1000', 'API balance tier and budget.granted after the upgrade', ['pro', '1000'], [upgraded.tier, upgraded.budget.granted]);
  ok('upgrade to pro: pro card is current; API tier pro, budget.granted 1000');
  await follow(page, page.locator('a[data-testid=nav-credits]'), 'a[data-testid=nav-credits]');
  await checkCreditsPage(page, upgraded, catalog);

  await follow(page, page.locator('a[data-testid=nav-billing]'), 'a[data-testid=nav-billing]');
  const small = catalog.packages.find((pack) => pack.id === 'small');
  await follow(page, page.locator('[data-testid=package-card][data-package=small] button[data-testid=buy-package]'), 'buy-package in the small card');
  await checkNotice(page, 'buy the small package');
  const status = (await page.locator('table[data-testid=purchases] tbody tr').first().locator('[data-testid=purchase-status]').getAttribute('data-status'));
  check(status === 'completed', 'status of the first purchase row', 'completed', status);
  const bought = await balance();
  const gained = micros(bought.packages.available) - micros(upgraded.packages.available);
  check(gained === micros(small.credits), 'API packages.available increase after buying small', small.credits, `${upgraded.packages.available} -> ${bought.packages.available}`);
  ok(`bought small: purchase completed; packages.available ${upgraded.packages.available} -> ${bought.packages.available}`);
  await follow(page, page.locator('a[data-testid=nav-credits]'), 'a[data-testid=nav-credits]');
  await checkCreditsPage(page, bought, catalog);

  await follow(page, page.locator('a[data-testid=nav-billing]'), 'a[data-testid=nav-billing]');
  await follow(page, page.locator('[data-testid=tier-card][data-tier=starter] button[data-testid=choose-tier]'), 'choose-tier in the starter card');
  await checkNotice(page, 'downgrade to starter');
  await page.locator('[data-testid=pending-tier]').waitFor({ state: 'visible' });
  const scheduled = await balance();
  check(scheduled.tier === 'pro' && scheduled.pending_tier === 'starter', 'API tier and pending_tier after choosing starter', ['pro', 'starter'], [scheduled.tier, scheduled.pending_tier]);
  ok('downgrade to starter is scheduled: pending-tier shown, API pending_tier starter');
  await follow(page, page.locator('button[data-testid=cancel-downgrade]'), 'button[data-testid=cancel-downgrade]');
  await checkNotice(page, 'cancel the downgrade');
  const pendingShown = await page.locator('[data-testid=pending-tier]').count();
  const kept = await balance();
  check(pendingShown === 0 && kept.pending_tier === null, '[data-testid=pending-tier] count and API pending_tier after cancel-downgrade', [0, null], [pendingShown, kept.pending_tier]);
  ok('downgrade canceled: no pending tier');

  check(pageErrors.length === 0, 'uncaught page errors and HTTP 5xx answers', [], pageErrors);
}

mkdirSync(SHOTS, { recursive: true });
const watchdog = setTimeout(() => { console.error(`FAIL: not done within ${WATCHDOG_MS} ms`); process.exit(1); }, WATCHDOG_MS);
const browser = await chromium.launch(LAUNCH);
let page;
try {
  page = await browser.newPage({ viewport: DESKTOP });
  page.setDefaultTimeout(ACTION_TIMEOUT_MS);
  const pageErrors = [];
  // The downgrade button asks for confirmation: a person would say yes.
  page.on('dialog', (dialog) => dialog.accept());
  page.on('pageerror', (error) => pageErrors.push(`uncaught: ${error.message}`));
  page.on('response', (answer) => { if (answer.status() >= 500) pageErrors.push(`${answer.status()} ${answer.url()}`); });
  await run(page, pageErrors);
  console.log(`ok all portal checks passed; screenshots in ${SHOTS}`);
} catch (error) {
  process.exitCode = 1;
  console.error(`FAIL: ${error instanceof Failure ? error.message : error.stack}`);
  if (page) {
    console.error(`  at ${page.url()}`);
    await page.screenshot({ path: join(SHOTS, 'failure.png'), fullPage: true }).catch(() => {});
    console.error(`  screenshot: ${join(SHOTS, 'failure.png')}`);
  }
} finally {
  await browser.close();
  clearTimeout(watchdog);
}
process.exit(process.exitCode ?? 0);
