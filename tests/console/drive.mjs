// Drives the Keybrake console in Debian's headless Chromium (playwright-core,
// never a downloaded browser) the way an operator would: log in, issue keys
// from the form, charge through the gateway with the vault key shown once,
// watch the charge reach the audit table and the spend bar, page a key's
// records with the cursor and filter them by key and time, revoke every key
// under the prefix after the confirmation, and see the next call refused.
//
// Run by tests/console/test_console.py, which reads the JSON summary printed
// last and checks the gateway's side (the upstream's record, the audit API).
// Environment: KEYBRAKE_URL (the gateway), KEYBRAKE_ADMIN_KEY, CONSOLE_PREFIX
// (a label prefix of this run's own), SCREENSHOT_DIR, CHROMIUM (default
// /usr/bin/chromium).
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { chromium } from "playwright-core";

const base = process.env.KEYBRAKE_URL;
const adminKey = process.env.KEYBRAKE_ADMIN_KEY;
const prefix = process.env.CONSOLE_PREFIX;
const shots = process.env.SCREENSHOT_DIR;
assert.ok(base && adminKey && prefix && shots, "KEYBRAKE_URL, KEYBRAKE_ADMIN_KEY, CONSOLE_PREFIX, SCREENSHOT_DIR");
fs.mkdirSync(shots, { recursive: true });

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "keybrake-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1440, height: 900 },
});
const page = context.pages()[0] || (await context.newPage());
page.setDefaultTimeout(15000);

// Anything the browser complains about (a CSP violation, a script error, a
// stylesheet, script or fetch that failed) fails the run. Pages answered with
// 4xx on purpose (a refused login or form) are documents and do not count.
const complaints = [];
page.on("console", (m) => {
  if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) complaints.push(m.text());
});
page.on("pageerror", (e) => complaints.push(String(e)));
page.on("response", (r) => {
  if (r.request().resourceType() !== "document" && r.status() >= 400) complaints.push(`${r.status()} ${r.url()}`);
});

const visited = [];
let vaultKey = "";
let shot = 0;

async function screenshot(name) {
  shot += 1;
  const file = path.join(shots, `${String(shot).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
}

/** After every page: the admin key is never in it; a vault key only on the page that issues it. */
async function checkPage(allowVaultKey = false) {
  const html = await page.content();
  visited.push(page.url());
  assert.ok(!html.includes(adminKey), `the admin key is in ${page.url()}`);
  if (vaultKey && !allowVaultKey) assert.ok(!html.includes(vaultKey), `the vault key is in ${page.url()}`);
}

async function go(url) {
  await page.goto(base + url);
  await checkPage();
}

async function charge(key, amount, idempotencyKey) {
  const headers = { Authorization: `Bearer ${key}`, "Content-Type": "application/x-www-form-urlencoded" };
  if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
  const body = new URLSearchParams({ amount: String(amount), currency: "usd", customer: "cus_console" });
  const r = await fetch(`${base}/stripe/v1/charges`, { method: "POST", headers, body });
  return r.status;
}

async function createKey(label, endpoints, cap) {
  await page.fill("#label", label);
  await page.fill("#allowed_endpoints", endpoints);
  await page.fill("#daily_usd_cap", cap);
  await page.fill("#expires_in_seconds", "3600");
  await Promise.all([page.waitForLoadState("load"), page.click("#create-submit")]);
}

const result = { statuses: {} };
try {
  // 1. Not logged in: the console sends us to the login page; a wrong key is refused.
  await go("/admin/ui/keys");
  assert.match(page.url(), /\/admin\/ui\/login$/);
  await page.fill("#admin_key", "not-the-admin-key-at-all");
  await Promise.all([page.waitForLoadState("load"), page.click("button[type=submit]")]);
  assert.match(await page.textContent("#login-error"), /not the admin key/);
  await screenshot("login-refused");
  await page.fill("#admin_key", adminKey);
  await Promise.all([page.waitForURL(/\/admin\/ui\/keys$/), page.click("button[type=submit]")]);
  await checkPage();

  // 2. Issue a key: first with a scope the API refuses (its own message shows), then right.
  await createKey(`${prefix}-1`, "POST v1/charges", "50");
  const refusal = await page.textContent("#create-error");
  assert.match(refusal, /allowed_endpoints/);
  assert.equal(await page.getAttribute("#create-error", "data-param"), "allowed_endpoints");
  assert.match(await page.getAttribute("#allowed_endpoints", "class"), /invalid/);
  result.refusal = refusal;
  await screenshot("create-refused");
  await createKey(`${prefix}-1`, "POST /v1/charges", "50");
  vaultKey = (await page.textContent("#vault-key")).trim();
  assert.match(vaultKey, /^vk_/);
  const keyId = (await page.textContent("#created-id")).trim();
  await checkPage(true);
  await screenshot("key-issued");
  await page.click("#back-to-keys");
  await createKey(`${prefix}-2`, "POST /v1/charges\nGET /v1/charges/*", "10");
  const vaultKey2 = (await page.textContent("#vault-key")).trim();
  assert.match(vaultKey2, /^vk_/);
  const keyId2 = (await page.textContent("#created-id")).trim();

  // 3. The key list, filtered by the prefix: nothing spent yet.
  await go(`/admin/ui/keys?label_prefix=${encodeURIComponent(prefix)}`);
  const bar = `tr[data-key-id="${keyId}"] svg.spend-bar`;
  assert.equal(await page.getAttribute(bar, "data-spent-micros"), "0");
  assert.equal(await page.locator("#keys tbody tr").count(), 2);
  assert.match(await page.textContent(`tr[data-key-id="${keyId}"] [data-expires]`), /^in (59m|1h)/);
  await screenshot("keys-before-charge");

  // 4. Through the gateway: a charge, its retry (replayed), and one over the $50 cap (denied).
  result.statuses.charge = await charge(vaultKey, 2999, `${prefix}-inv-1`);
  result.statuses.retry = await charge(vaultKey, 2999, `${prefix}-inv-1`);
  result.statuses.over_cap = await charge(vaultKey, 4000, `${prefix}-inv-2`);
  assert.deepEqual([result.statuses.charge, result.statuses.retry, result.statuses.over_cap], [200, 200, 429]);

  // 5. The audit table shows them (the settlement lands a moment after the answer).
  const committed = 'tr[data-stage="outcome"][data-reason="committed"]';
  for (let i = 0; ; i++) {
    await go(`/admin/ui/audit?label_prefix=${encodeURIComponent(prefix)}`);
    if ((await page.locator(committed).count()) > 0) break;
    assert.ok(i < 40, "the committed charge never reached the audit table");
    await page.waitForTimeout(250);
  }
  assert.ok((await page.locator("tr.decision-denied").count()) >= 1, "the denial is highlighted");
  assert.ok((await page.locator("tr.decision-replayed").count()) >= 1, "the replay is highlighted");
  assert.match(await page.textContent(committed), /\$29\.99/);
  await page.waitForSelector("#activity[data-loaded=true]");
  assert.equal(await page.getAttribute("#activity", "data-total-spend-micros"), "29990000");
  assert.ok(Number(await page.getAttribute("#activity", "data-total-denied")) >= 1);
  assert.ok((await page.locator("#chart-spend rect.spend").count()) >= 1, "a spend bar in the chart");
  await screenshot("audit");

  // 6. One record in full.
  await Promise.all([page.waitForLoadState("load"), page.click(`${committed} td:first-child a`)]);
  await checkPage();
  const record = await page.textContent("#record");
  assert.match(record, /committed/);
  assert.match(record, /\/v1\/charges/);
  await screenshot("audit-record");

  // 7. Filter the table to denials.
  await go(`/admin/ui/audit?label_prefix=${encodeURIComponent(prefix)}`);
  await page.selectOption("#audit-decision", "denied");
  await Promise.all([page.waitForLoadState("load"), page.click("#audit-filters button[type=submit]")]);
  await checkPage();
  const rows = page.locator("#audit tbody tr");
  assert.ok((await rows.count()) >= 1);
  assert.equal(await page.locator("#audit tbody tr:not(.decision-denied)").count(), 0);
  await screenshot("audit-denials");

  // 7b. Sixty records of the second key: the table pages with the API's
  // cursor (50 a page), and the key and time filters narrow it.
  // Amounts differ: identical charges would be one operation (content dedup), replayed.
  for (let i = 0; i < 30; i++) assert.equal(await charge(vaultKey2, 10 + i, `${prefix}-page-${i}`), 200);
  for (let i = 0; ; i++) {
    const r = await fetch(`${base}/admin/audit?key_id=${keyId2}&limit=100`, { headers: { Authorization: `Bearer ${adminKey}` } });
    const n = (await r.json()).data.length;
    if (n === 60) break;
    assert.ok(i < 40, `the second key's sixty records never all reached the audit log (${n})`);
    await page.waitForTimeout(250);
  }
  await go("/admin/ui/audit");
  await page.fill("#audit-filters input[name=key_id]", keyId2);
  await Promise.all([page.waitForLoadState("load"), page.click("#audit-filters button[type=submit]")]);
  await checkPage();
  const seqs = async () => (await page.locator("#audit tbody tr").evaluateAll(
    (trs) => trs.map((tr) => [Number(tr.dataset.seq), tr.querySelector("td:nth-child(3) .sub").textContent.trim()])));
  const first = await seqs();
  assert.equal(first.length, 50);
  assert.ok(first.every(([, key]) => key === keyId2), "the key filter shows that key's records only");
  await screenshot("audit-page-1");
  await Promise.all([page.waitForLoadState("load"), page.click("#older")]);
  await checkPage();
  const older = await seqs();
  assert.equal(older.length, 10);
  assert.ok(older.every(([seq, key]) => key === keyId2 && seq < Math.min(...first.map(([s]) => s))), "page 2 is older");
  assert.equal(await page.locator("#older").count(), 0, "no page 3");
  await screenshot("audit-page-2");
  result.paging = { first: first.length, older: older.length };
  const minute = (ms) => new Date(ms).toISOString().slice(0, 16); // a browser's datetime, taken as UTC
  await go(`/admin/ui/audit?key_id=${keyId2}&since=${minute(Date.now() + 3600e3)}`);
  assert.equal(await page.locator("#no-rows").count(), 1, "nothing since an hour from now");
  await go(`/admin/ui/audit?key_id=${keyId2}&since=${minute(Date.now() - 3600e3)}&until=${minute(Date.now() + 3600e3)}`);
  assert.equal(await page.locator("#audit tbody tr").count(), 50, "everything within the hour around now");

  // 8. The spend bar moved.
  await go(`/admin/ui/keys?label_prefix=${encodeURIComponent(prefix)}`);
  assert.equal(await page.getAttribute(bar, "data-spent-micros"), "29990000");
  assert.ok(Number(await page.getAttribute(`${bar} .bar-spent`, "width")) > 0);
  result.bar_width = Number(await page.getAttribute(`${bar} .bar-spent`, "width"));
  await screenshot("keys-after-charge");

  // 9. Revoke every key under the prefix, after the confirmation that counts them.
  await page.fill("#revoke-prefix", prefix);
  await Promise.all([page.waitForLoadState("load"), page.click("#revoke-prefix-form button[type=submit]")]);
  await checkPage();
  assert.equal(await page.getAttribute("#revoke-count", "data-count"), "2");
  result.confirmation = (await page.textContent("#revoke-count")).trim();
  assert.match(result.confirmation, /This will stop 2 keys/);
  await screenshot("revoke-confirm");
  await Promise.all([page.waitForLoadState("load"), page.click("#confirm-revoke")]);
  await checkPage();
  assert.equal(await page.getAttribute("#revoked-count", "data-count"), "2");
  await screenshot("revoked");

  // 10. The next call with the key is refused.
  result.statuses.after_revoke = await charge(vaultKey, 100, `${prefix}-inv-3`);
  assert.equal(result.statuses.after_revoke, 401);
  await go(`/admin/ui/keys?label_prefix=${encodeURIComponent(prefix)}`);
  assert.equal(await page.locator('#keys tbody tr[data-state="revoked"]').count(), 2);
  await screenshot("keys-revoked");

  // 11. Health: storage, the chain, the filter's counters from Envoy.
  await go("/admin/ui/health");
  assert.equal(await page.getAttribute("#storage", "data-ok"), "true");
  assert.equal(await page.getAttribute("#chain", "data-ok"), "true");
  assert.equal(await page.getAttribute("#gateway", "data-state"), "ok");
  assert.ok((await page.locator('tr[data-counter="wasmcustom.keybrake.requests_allowed"]').count()) === 1);
  await screenshot("health");

  // 12. Log out: the console is closed again.
  await Promise.all([page.waitForURL(/\/admin\/ui\/login$/), page.click("form.logout button")]);
  await go("/admin/ui/audit");
  assert.match(page.url(), /\/admin\/ui\/login$/);

  assert.deepEqual(complaints, [], "the browser reported errors");
  result.key_id = keyId;
  result.vault_key = vaultKey;
  result.pages = visited.length;
  result.screenshots = shot;
  console.log(JSON.stringify(result));
} catch (e) {
  await page.screenshot({ path: path.join(shots, "failure.png"), fullPage: true }).catch(() => {});
  console.error(`failed at ${page.url()}: ${e.stack || e}`);
  console.error(`browser complaints: ${JSON.stringify(complaints)}`);
  process.exitCode = 1;
} finally {
  await context.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
