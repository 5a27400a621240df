// The central promise, in a real browser: headless Chromium (Debian's
// /usr/bin/chromium driven by playwright-core) runs the demo page, whose
// real aws-amplify `events` client talks to the relay on the page's own
// origin. Two pages subscribe and publish to each other; then every place
// page JavaScript could reach — document.cookie, localStorage,
// sessionStorage, every WebSocket frame and every HTTP response body the
// page received (captured through the DevTools protocol) — is searched for
// the access, ID and refresh tokens the browser holds in HTTP-only cookies.
//
// Run by tests/browser.rs (`cargo test`), which passes the relay binary in
// APPSYNC_RELAY_BIN. Chromium: `apt-get install chromium` (.ci/run does it).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, mkdtempSync, existsSync, mkdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startChild, startCognitoLocal, killAll, freePort, waitHttpOk, withDeadline } from './support/processes.mjs';
import { launchBrowser, captureWire, jsVisible, assertNoTokens } from './support/page-probes.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..');
const BIN = process.env.APPSYNC_RELAY_BIN ?? join(repo, 'target', 'debug', 'appsync-relay');
const SCREENSHOT = process.env.APPSYNC_RELAY_SCREENSHOT ?? join(repo, 'target', 'demo-screenshot.png');

after(killAll);

async function waitConnected(page) {
  await page.locator('#status').filter({ hasText: /^connected$/ }).waitFor({ timeout: 20_000 });
}

async function exchangeEvents(pageA, pageB) {
  // B publishes over the WebSocket; A sees it. A publishes over HTTP; B sees it.
  const viaWs = `ws-${Date.now()}`;
  await pageB.fill('#message', viaWs);
  await pageB.click('#publish-ws');
  await pageA.locator('#log').filter({ hasText: viaWs }).waitFor({ timeout: 15_000 });
  const viaHttp = `http-${Date.now()}`;
  await pageA.fill('#message', viaHttp);
  await pageA.click('#publish-http');
  await pageB.locator('#log').filter({ hasText: viaHttp }).waitFor({ timeout: 15_000 });
}

async function checkNoLeaks(context, pages, wires) {
  const jar = await context.cookies();
  const tokenCookie = (suffix) => jar.find((c) => c.name.endsWith(`.${suffix}`));
  const tokens = {};
  for (const suffix of ['accessToken', 'idToken', 'refreshToken']) {
    const c = tokenCookie(suffix);
    assert.ok(c, `no ${suffix} cookie in the jar: ${jar.map((x) => x.name).join(', ')}`);
    assert.equal(c.httpOnly, true, `${suffix} cookie must be HttpOnly`);
    assert.equal(c.secure, true, `${suffix} cookie must be Secure`);
    assert.equal(c.sameSite, 'Strict', `${suffix} cookie must be SameSite=Strict`);
    tokens[suffix] = c.value;
  }
  for (const [i, page] of pages.entries()) {
    const seen = await jsVisible(page);
    assertNoTokens(`page${i}.js`, [seen.cookie, seen.local, seen.session], tokens);
  }
  for (const [i, wire] of wires.entries()) {
    await Promise.all(wire.pending);
    assert.ok(wire.frames.some((f) => f.dir === 'in' && f.data.includes('"data"')), `page${i} captured no data frame`);
    assertNoTokens(`page${i}.websocket`, wire.frames.map((f) => f.data), tokens);
    assert.ok(wire.bodies.length > 0, `page${i} captured no response body`);
    assertNoTokens(`page${i}.responses`, wire.bodies, tokens);
  }
}


/** A throwaway self-signed certificate for localhost (cert.pem, key.pem). */
function selfSignedCert() {
  const dir = mkdtempSync(join(tmpdir(), 'relay-browser-tls-'));
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
  return { cert: join(dir, 'cert.pem'), key: join(dir, 'key.pem') };
}

/**
 * `appsync-relay emulate` trusting cognito-local's pool, and `serve` over
 * TLS in front of it on https://localhost:PORT, with `extra` flags.
 */
async function startServe(cognito, extra = []) {
  const tls = selfSignedCert();
  const emuPort = await freePort();
  const emulator = startChild('emulate', BIN, ['emulate', '--listen', `127.0.0.1:${emuPort}`, '--cognito-issuer', cognito.issuer,
    '--cognito-jwks-url', cognito.jwksUrl, '--cognito-client-id', cognito.clientId, '--http-host', `127.0.0.1:${emuPort}`]);
  await emulator.waitForLine(/emulator/i, 30_000);
  const [port, admin] = [await freePort(), await freePort()];
  const origin = `https://localhost:${port}`;
  const relay = startChild('serve', BIN, ['serve', '--listen', `127.0.0.1:${port}`, '--admin-listen', `127.0.0.1:${admin}`,
    '--appsync-http-endpoint', `http://127.0.0.1:${emuPort}/event`, '--cognito-user-pool-id', cognito.userPoolId,
    '--cognito-client-id', cognito.clientId, '--cognito-issuer', cognito.issuer, '--cognito-jwks-url', cognito.jwksUrl,
    '--allowed-origin', origin, '--tls-cert', tls.cert, '--tls-key', tls.key, ...extra]);
  await waitHttpOk(relay, `http://127.0.0.1:${admin}/readyz`, 30_000);
  const stop = () => withDeadline(Promise.all([relay.stop(), emulator.stop()]), 15_000, 'children to stop');
  return { origin, admin, stop };
}

/**
 * A browser context holding what the SSR app's sign-in would have set
 * (Amplify's cookies, HTTP-only), with the demo page served on `origin` by
 * the browser's router (`serve` relays only /event*; the page is the SSR
 * app's job).
 */
async function signedInContext(browser, origin, clientId, username, tokens) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const user = encodeURIComponent(username).replace(/%(2[346B]|5E|60|7C)/g, decodeURIComponent);
  const prefix = `CognitoIdentityServiceProvider.${clientId}`;
  const cookie = (name, value) => ({ name, value, domain: 'localhost', path: '/', httpOnly: true, secure: true, sameSite: 'Strict' });
  await context.addCookies([
    cookie(`${prefix}.LastAuthUser`, user),
    cookie(`${prefix}.${user}.accessToken`, tokens.accessToken),
    cookie(`${prefix}.${user}.idToken`, tokens.idToken),
    cookie(`${prefix}.${user}.refreshToken`, tokens.refreshToken),
  ]);
  const page = readFileSync(join(repo, 'src', 'demo', 'index.html'), 'utf8');
  const bundle = readFileSync(join(repo, 'src', 'demo', 'amplify-events.js'), 'utf8');
  await context.route(`${origin}/`, (r) => r.fulfill({ status: 200, contentType: 'text/html', body: page }));
  await context.route(`${origin}/demo/amplify-events.js`, (r) => r.fulfill({ status: 200, contentType: 'text/javascript', body: bundle }));
  return context;
}

// A page handed to Chromium by the test's router does not count as coming
// from localhost, so Chromium would block its WebSocket to localhost as a
// "local network" request. With the page served by a real server on the
// same origin (the demo test) no such flag is needed.
const ROUTED_PAGE_FLAGS = ['--disable-features=LocalNetworkAccessChecks'];

test('demo: two pages exchange events through the relay and no token reaches page JavaScript', async () => {
  const demo = startChild('demo', BIN, ['demo', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--token-lifetime', '300']);
  const [, url] = await demo.waitForLine(/open\s+(https:\/\/\S+)/, 60_000);
  const browser = await launchBrowser();
  try {
    const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1000, height: 860 } });
    const pageA = await context.newPage();
    const wireA = await captureWire(pageA);
    await pageA.goto(url);
    await pageA.fill('#username', 'alice@example.com');
    await Promise.all([pageA.waitForURL(url), pageA.click('#login')]);
    await pageA.click('#connect');
    await waitConnected(pageA);

    const pageB = await context.newPage();
    const wireB = await captureWire(pageB);
    await pageB.goto(url);
    await pageB.click('#connect');
    await waitConnected(pageB);

    await exchangeEvents(pageA, pageB);
    await checkNoLeaks(context, [pageA, pageB], [wireA, wireB]);
    await pageA.screenshot({ path: SCREENSHOT, fullPage: true });
  } finally {
    await browser.close();
  }
});

test('cognito-local: the browser path works with tokens from a Cognito we did not write', async () => {
  const cognito = await startCognitoLocal();
  await cognito.provision();
  const username = 'carol+browser@example.com';
  await cognito.createUser(username, 'Passw0rd!');
  const tokens = await cognito.signIn(username, 'Passw0rd!');

  const served = await startServe(cognito);
  const { origin } = served;
  const browser = await launchBrowser(ROUTED_PAGE_FLAGS);
  try {
    const context = await signedInContext(browser, origin, cognito.clientId, username, tokens);
    const pages = [];
    const wires = [];
    for (let i = 0; i < 2; i++) {
      const p = await context.newPage();
      p.on('console', (m) => process.env.APPSYNC_RELAY_TEST_ECHO && console.error('[page]', m.text()));
      p.on('pageerror', (e) => console.error('[pageerror]', e.message));
      wires.push(await captureWire(p));
      await p.goto(`${origin}/`);
      await p.click('#connect');
      await waitConnected(p);
      pages.push(p);
    }
    await exchangeEvents(pages[0], pages[1]);
    await checkNoLeaks(context, pages, wires);
  } finally {
    await browser.close();
    await served.stop();
  }
});

if (!existsSync(dirname(SCREENSHOT))) mkdirSync(dirname(SCREENSHOT), { recursive: true });

test('cookies written on the 101 are stored by Chromium and sent on the next request', async () => {
  const cognito = await startCognitoLocal();
  await cognito.provision();
  // A client whose tokens live 3 s, so the browser's token is already
  // expired when it connects and the handshake has to renew it.
  const client = await cognito.call('CreateUserPoolClient', {
    UserPoolId: cognito.userPoolId, ClientName: 'short', GenerateSecret: false,
    ExplicitAuthFlows: ['ALLOW_USER_PASSWORD_AUTH', 'ALLOW_REFRESH_TOKEN_AUTH'],
    AccessTokenValidity: 3, IdTokenValidity: 3, TokenValidityUnits: { AccessToken: 'seconds', IdToken: 'seconds' },
  });
  cognito.clientId = client.UserPoolClient.ClientId;
  const username = 'dave@example.com';
  await cognito.createUser(username, 'Passw0rd!');
  const tokens = await cognito.signIn(username, 'Passw0rd!');
  const exp = JSON.parse(Buffer.from(tokens.accessToken.split('.')[1], 'base64url')).exp;

  const served = await startServe(cognito, ['--cognito-endpoint', `${cognito.base}/`, '--refresh-api', 'initiate-auth',
    '--refresh-before', '1', '--jwt-leeway', '0']);
  const { origin, admin } = served;
  const refreshes = async () => {
    const text = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text();
    const m = text.match(/appsync_relay_token_refreshes_total\{phase="handshake",result="ok"\} (\d+)/);
    return m ? Number(m[1]) : 0;
  };
  while (Date.now() / 1000 <= exp) await new Promise((r) => setTimeout(r, 100));

  const browser = await launchBrowser(ROUTED_PAGE_FLAGS);
  try {
    const context = await signedInContext(browser, origin, cognito.clientId, username, tokens);
    const p = await context.newPage();
    await p.goto(`${origin}/`);
    await p.click('#connect');
    await waitConnected(p);
    assert.equal(await refreshes(), 1, 'the handshake renewed the expired token');

    // Stored: the jar now holds the renewed token, still HTTP-only.
    const jar = await context.cookies();
    const access = jar.find((c) => c.name.endsWith('.accessToken'));
    assert.notEqual(access.value, tokens.accessToken, 'the cookie from the 101 was not stored');
    assert.equal(access.httpOnly, true);
    assert.equal(access.secure, true);
    assert.equal(access.sameSite, 'Strict');
    // Sent: the next request (an HTTP publish) carries the renewed token, so
    // the relay has nothing to renew.
    await p.fill('#message', 'after-renewal');
    await p.click('#publish-http');
    await p.locator('#log').filter({ hasText: 'after-renewal' }).waitFor({ timeout: 15_000 });
    assert.equal(await refreshes(), 1, 'the next request still carried the expired token');
  } finally {
    await browser.close();
    await served.stop();
  }
});
