// The dashboard against the real broker, bridge and simulated devices that run-dashboard-test
// started: first the WebSockets listener's rights with MQTT.js (an operator logs in; a device's
// certificate and id get nothing), then the pages in headless chromium through puppeteer-core:
// log in, devices come online, accept them, preauthorize one, create a deployment that finishes
// with device-3's rollback listed as a failure with its reason, abort a second one, read the
// artifact catalog. Screenshots of each page go to TERN_OUT. Exits non-zero on the first failure.
'use strict';

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const mqtt = require('mqtt');
const puppeteer = require('puppeteer-core');

const env = (k) => { const v = process.env[k]; if (!v) throw new Error('missing environment variable ' + k); return v; };
const CERTS = env('TERN_CERTS'), OUT = env('TERN_OUT'), ROOT = env('TERN_ROOT');
const WS = env('TERN_BROKER_WS'), DASH = env('TERN_DASHBOARD_URL'), PASSWORD = env('TERN_OPERATOR_PASSWORD');
const ca = fs.readFileSync(path.join(CERTS, 'ca.crt'));

function step(what) { console.log(new Date().toISOString().slice(11, 19), what); }

/** Connects over the WebSockets listener; resolves with the client, or rejects with the CONNACK error. */
function connect(opts) {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(WS, Object.assign({ protocolVersion: 5, ca, reconnectPeriod: 0, connectTimeout: 10000 }, opts));
    c.once('connect', () => resolve(c));
    c.once('error', (e) => { c.end(true); reject(e); });
    c.once('close', () => reject(new Error('closed before CONNACK')));
  });
}

async function refused(what, opts) {
  try {
    const c = await connect(opts);
    c.end(true);
  } catch (e) {
    step('  refused as it should be: ' + what + ' (' + e.message + ')');
    return;
  }
  assert.fail(what + ' was let in on the WebSockets listener');
}

async function brokerRights() {
  step('WebSockets listener: an operator logs in; device credentials get nothing');
  const alice = await connect({ username: 'alice', password: PASSWORD, clientId: 'test-alice' });
  // An operator may not write what only devices write: the ACL is applied (PUBACK reason 135).
  const denied = await new Promise((resolve) => alice.publish('tern/devices/device-1/status', '{}', { qos: 1 }, (e) => resolve(e)));
  assert.ok(denied, 'an operator published a device status over WebSockets');
  // ...and reads what operators read (the bridge's retained device records).
  alice.end(true);

  const dcert = fs.readFileSync(path.join(CERTS, 'device-1.crt')), dkey = fs.readFileSync(path.join(CERTS, 'device-1.key'));
  await refused("device-1's certificate, no username", { cert: dcert, key: dkey, clientId: 'device-1' });
  await refused("device-1's certificate and id as username", { cert: dcert, key: dkey, username: 'device-1', password: '', clientId: 'device-1' });
  await refused('alice with a wrong password', { username: 'alice', password: PASSWORD + 'x' });
  await refused('tern-bridge (no password: the bridge uses its certificate on the services listener)', { username: 'tern-bridge', password: '' });

  // The dashboard ACL is the services ACL's operator lines, word for word.
  const rules = (file) => fs.readFileSync(path.join(ROOT, file), 'utf8').split('\n')
    .filter((l) => l.startsWith('pattern ') || l.startsWith('user ') || l.startsWith('topic '));
  const services = rules('mosquitto-services.acl');
  const operators = services.slice(0, services.findIndex((l) => l.startsWith('user ')));
  assert.deepEqual(rules('mosquitto-operators.acl'), operators);
}

// ---- the browser ------------------------------------------------------------------------------

async function waitText(page, selector, pattern, timeout = 60000) {
  await page.waitForFunction((sel, src) => {
    const e = document.querySelector(sel);
    return e && new RegExp(src).test(e.textContent);
  }, { timeout, polling: 200 }, selector, pattern.source);
}

/** Finds and clicks in one task of the page: live lists re-render, and an element found in one
 *  call may be replaced before a second call clicks it. */
async function click(page, selector) {
  await page.waitForSelector(selector, { timeout: 20000 });
  await page.$eval(selector, (e) => e.click());
}

async function shot(page, name) {
  const file = path.join(OUT, name);
  await page.screenshot({ path: file, fullPage: true });
  step('  screenshot ' + file);
}

async function browser() {
  const b = await puppeteer.launch({
    executablePath: env('TERN_CHROMIUM'),
    headless: true,
    args: ['--no-sandbox', '--ignore-certificate-errors-spki-list=' + env('TERN_SPKI'), '--window-size=1280,900'],
    defaultViewport: { width: 1280, height: 900 },
  });
  try {
    const page = await b.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });

    step('log in');
    const res = await page.goto(DASH + '?broker=' + encodeURIComponent(WS), { waitUntil: 'load' });
    assert.equal(res.status(), 200);
    assert.match(res.headers()['content-type'], /^text\/html/);
    await page.type('#user', 'alice');
    await page.type('#password', 'wrong');
    await page.click('#login-form button[type=submit]');
    await waitText(page, '#login-error', /refused/);
    await page.$eval('#password', (e) => { e.value = ''; });
    await page.type('#password', PASSWORD);
    await page.click('#login-form button[type=submit]');
    await page.waitForSelector('#nav:not([hidden])', { timeout: 20000 });

    step('devices come online (pending admission)');
    for (const id of ['device-1', 'device-2', 'device-3']) {
      await waitText(page, `tr[data-device="${id}"] [data-field=presence]`, /^online$/, 60000);
      await waitText(page, `tr[data-device="${id}"] [data-field=admission]`, /^pending$/);
    }
    step('accept them from their rows');
    for (const id of ['device-1', 'device-2', 'device-3']) {
      await click(page, `tr[data-device="${id}"] button[data-action=accept]`);
      await waitText(page, `tr[data-device="${id}"] [data-field=admission]`, /^accepted$/, 20000);
    }
    step('preauthorize device-9, which never connects');
    await page.type('#preauth-ids', 'device-9');
    await page.type('#preauth-group', 'spare');
    await page.click('#preauth-form button[type=submit]');
    await waitText(page, '#preauth-result', /accepted device-9/);
    await waitText(page, 'tr[data-device="device-9"] [data-field=admission]', /^accepted$/, 20000);

    step('search narrows the list; inventory on click');
    await page.type('#search', 'device-2');
    await page.waitForFunction(() => document.querySelectorAll('#devices tbody tr').length === 1, { timeout: 10000 });
    await page.$eval('#search', (e) => { e.value = ''; e.dispatchEvent(new Event('input')); });
    await page.waitForFunction(() => document.querySelectorAll('#devices tbody tr').length === 4, { timeout: 10000 });
    await click(page, 'tr[data-device="device-1"] td');
    await waitText(page, '#inventory', /device_type/, 20000);
    await shot(page, 'dashboard-fleet.png');

    step('create a deployment to device-1..3 in two phases');
    await page.click('nav a[data-page=deployments]');
    await page.waitForSelector('#page-deployments:not([hidden])', { timeout: 20000 });
    await page.waitForSelector('#c-artifact option[value="release-2"]', { timeout: 20000 });
    await page.select('#c-target', 'devices');
    await page.type('#c-target-value', 'device-1 device-2 device-3');
    await page.$eval('#c-phases', (e) => { e.value = '34,100'; });
    await page.click('#create-form button[type=submit]');
    await waitText(page, '#create-result', /created \S+ for 3 devices/, 20000);
    const first = (await page.$eval('#create-result', (e) => e.textContent)).split(' ')[1];
    const card = `.deployment[data-id="${first}"]`;

    step(`watch ${first} finish`);
    await waitText(page, `${card} [data-field=state]`, /^finished$/, 150000);
    await waitText(page, `${card} .failures li[data-device="device-3"]`, /failure.*health check/, 20000);
    await page.waitForSelector(`${card} .phase[data-phase="1"] .bar span[data-status=success]`, { timeout: 20000 });
    await page.waitForSelector(`${card} .phase[data-phase="2"] .bar span[data-status=failure]`, { timeout: 20000 });
    const failed = await page.$$eval(`${card} .failures li`, (l) => l.map((e) => e.dataset.device));
    assert.deepEqual(failed, ['device-3'], 'only device-3 failed (its rollback)');

    step('create a second deployment (device-9, offline) and abort it');
    await page.$eval('#c-target-value', (e) => { e.value = ''; });
    await page.type('#c-target-value', 'device-9');
    await page.$eval('#c-phases', (e) => { e.value = '100'; });
    await page.click('#create-form button[type=submit]');
    await waitText(page, '#create-result', new RegExp('created (?!' + first + ')\\S+ for 1 devices'), 20000);
    const second = (await page.$eval('#create-result', (e) => e.textContent)).split(' ')[1];
    await waitText(page, `.deployment[data-id="${second}"] [data-field=state]`, /^running$/, 20000);
    await click(page, `.deployment[data-id="${second}"] button[data-action=abort]`);
    await waitText(page, `.deployment[data-id="${second}"] [data-field=state]`, /^aborted$/, 20000);
    await waitText(page, `.deployment[data-id="${second}"] .failures li[data-device="device-9"]`, /aborted by an operator/, 20000);
    await shot(page, 'dashboard-deployments.png');

    step('the artifact catalog');
    await page.click('nav a[data-page=artifacts]');
    await waitText(page, 'tr[data-artifact="release-2"]', /demo-board.*fleet key SHA256:/, 20000);
    await shot(page, 'dashboard-artifacts.png');

    assert.deepEqual(errors, [], 'errors in the page');

    step('static files: content types, hidden files refused');
    const probe = await page.evaluate(async () => {
      const r = {};
      for (const p of ['/app.js', '/style.css', '/vendor/mqtt.min.js', '/.git/config', '/nope.html']) {
        const res = await fetch(p);
        r[p] = [res.status, res.headers.get('content-type'), res.headers.get('x-content-type-options')];
      }
      return r;
    });
    assert.deepEqual(probe['/app.js'], [200, 'text/javascript; charset=utf-8', 'nosniff']);
    assert.equal(probe['/style.css'][1], 'text/css; charset=utf-8');
    assert.equal(probe['/vendor/mqtt.min.js'][0], 200);
    // A browser normalises "..", even as %2e%2e, before it sends: traversal is tested with curl
    // --path-as-is in tests/net (DashboardServerTest).
    assert.equal(probe['/.git/config'][0], 400);
    assert.equal(probe['/nope.html'][0], 404);
  } finally {
    await b.close();
  }
}

(async () => {
  await brokerRights();
  await browser();
  step('dashboard test passed');
})().catch((e) => {
  console.error('dashboard test FAILED:', e && e.stack || e);
  process.exit(1);
});
