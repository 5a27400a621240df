// The Next.js example (examples/nextjs: App Router, @aws-amplify/adapter-nextjs
// server-side auth, aws-amplify `events`) behind the relay, against MiniStack
// as Cognito and AppSync Events, in Debian's headless Chromium:
//
// * two users sign in through Cognito managed login (MiniStack's Hosted UI
//   form, reached over TLS), the adapter's callback stores the tokens in
//   cookies that must be HttpOnly, and the server-rendered page shows who is
//   signed in (the adapter read and verified the cookies);
// * each page sees the other's cards live: one published by the browser over
//   the relayed WebSocket, one by a server action over HTTP through the relay;
// * no token (from the cookie jar) is in document.cookie, Web Storage, any
//   WebSocket frame or any response body the pages received (CDP capture);
// * after the access token expired the socket still works, the next
//   server-rendered page reads the session from the cookies the relay
//   rewrote, and the app never called Cognito to refresh on its own;
// * sign-out (the adapter's route, through the relay) closes the user's open
//   socket with 4401 within 1 s, and neither the signed-out browser nor a
//   replay of its old cookies can reconnect; the other user is unaffected.
//
// The stack is examples/nextjs/dev/stack.mjs (the same one run-local.sh
// starts). Needs the example built (`bash tests/run.sh --install-only`),
// MiniStack (target/ministack-venv or MINISTACK_BIN), /usr/bin/chromium and
// openssl. Run by tests/nextjs.rs (`cargo test --test nextjs`).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { killAll, sleep, startChild } from './support/processes.mjs';
import { assertNoTokens, captureWire, jsVisible, launchBrowser } from './support/page-probes.mjs';
import { startStack } from '../../examples/nextjs/dev/stack.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..');
const SCREENSHOT = process.env.APPSYNC_RELAY_NEXTJS_SCREENSHOT ?? join(repo, 'target', 'nextjs-screenshot.png');
// MiniStack accepts token lifetimes in seconds (real Cognito's minimum is
// 5 minutes), so the expiry is waited out rather than faked.
const TOKEN_SECONDS = 30;
const ECHO = !!process.env.APPSYNC_RELAY_TEST_ECHO;

let stack;
let browser;
after(async () => {
  await browser?.close().catch(() => {});
  await stack?.stop();
  await killAll();
});

const jwtPayload = (t) => JSON.parse(Buffer.from(t.split('.')[1], 'base64url').toString('utf8'));

/** Records every WebSocket the page opens, with its close code, in window.__sockets. */
function socketProbe() {
  const Native = window.WebSocket;
  const log = [];
  Object.defineProperty(window, '__sockets', { value: log });
  window.WebSocket = class extends Native {
    constructor(url, protocols) {
      super(url, protocols);
      const entry = { url: String(url), openedAt: null, closedAt: null, code: null, reason: null };
      log.push(entry);
      this.addEventListener('open', () => (entry.openedAt = Date.now()));
      this.addEventListener('close', (e) => Object.assign(entry, { closedAt: Date.now(), code: e.code, reason: e.reason }));
    }
  };
}

/** A browser context for one user, with the socket probe and a wire capture per page. */
async function userContext(user) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 820 } });
  await context.addInitScript(socketProbe);
  const pages = [];
  const wires = [];
  if (process.env.APPSYNC_RELAY_TEST_WIRE) {
    // Every response with the names of the cookies it set (never values).
    context.on('response', async (r) => {
      const set = (await r.headersArray().catch(() => []))
        .filter((h) => h.name.toLowerCase() === 'set-cookie')
        .map((h) => h.value.split('=')[0]);
      console.error(`[${user.username}] ${r.request().method()} ${r.url().split('?')[0]} ${r.status()} ${set.join(' ')}`);
    });
  }
  const open = async () => {
    const page = await context.newPage();
    page.on('pageerror', (e) => console.error(`[${user.username} pageerror]`, e.message));
    if (ECHO) page.on('console', (m) => console.error(`[${user.username} console]`, m.text()));
    wires.push(await captureWire(page));
    pages.push(page);
    return page;
  };
  return { user, context, pages, wires, open };
}

/** The session cookies in the browser's jar, checked for the attributes they must have. */
async function sessionCookies(context) {
  const jar = await context.cookies();
  const find = (suffix) => jar.find((c) => c.name.startsWith(`CognitoIdentityServiceProvider.${stack.clientId}.`) && c.name.endsWith(`.${suffix}`));
  const out = {};
  for (const suffix of ['accessToken', 'idToken', 'refreshToken', 'LastAuthUser']) {
    const c = find(suffix);
    assert.ok(c, `no ${suffix} cookie in the jar: ${jar.map((x) => x.name).join(', ')}`);
    assert.equal(c.httpOnly, true, `${suffix} cookie must be HttpOnly`);
    assert.equal(c.secure, true, `${suffix} cookie must be Secure`);
    assert.equal(c.sameSite, 'Strict', `${suffix} cookie must be SameSite=Strict`);
    out[suffix] = c.value;
  }
  return { tokens: { access: out.accessToken, id: out.idToken, refresh: out.refreshToken }, jar };
}

async function waitSubscribed(page) {
  await page.locator('#board[data-subscribed="true"]').waitFor({ timeout: 20_000 });
  await page.locator('#status[data-state="Connected"]').waitFor({ timeout: 20_000 });
}

/** Signs in through the app's sign-in link and MiniStack's managed-login form. */
async function signIn(page, { username, password }) {
  await page.goto(`${stack.appOrigin}/`);
  await Promise.all([page.waitForURL((u) => u.host === stack.cognitoDomain, { timeout: 15_000 }), page.click('#sign-in')]);
  assert.match(new URL(page.url()).pathname, /^\/oauth2\/authorize$/, 'the sign-in link leads to managed login');
  await page.fill('#username', username);
  await page.fill('#password', password);
  // → /login → 302 to /api/auth/sign-in-callback (code exchange, cookies) → /
  await Promise.all([page.waitForURL(`${stack.appOrigin}/`, { timeout: 20_000 }), page.click('button[type=submit]')]);
  await page.locator('#user').filter({ hasText: new RegExp(`^${username}$`) }).waitFor({ timeout: 10_000 });
}

async function post(page, how, text) {
  await page.fill('#card-text', text);
  await page.click(how === 'ws' ? '#post-ws' : '#post-http');
}

const seesCard = (page, text) => page.locator('#cards .card .text').filter({ hasText: text }).waitFor({ timeout: 15_000 });

async function metric(name, labels) {
  const text = await (await fetch(`${stack.adminUrl}/metrics`)).text();
  const re = new RegExp(`^appsync_relay_${name}\\{${labels.replace(/[{}]/g, '')}\\} (\\d+)`, 'm');
  const m = text.match(re);
  return m ? Number(m[1]) : 0;
}

/** Fails with the children's output appended, so a broken run explains itself. */
async function explained(fn) {
  try {
    return await fn();
  } catch (e) {
    if (stack) {
      const tail = (c) => c.output().split('\n').slice(-40).join('\n');
      e.message += `\n--- relay ---\n${tail(stack.children.relay)}\n--- next ---\n${tail(stack.children.next)}`;
    }
    throw e;
  }
}

test('the Next.js example behind the relay, against MiniStack, in headless Chromium', { timeout: 240_000 }, async (t) => {
  const t0 = Date.now();
  stack = await startStack({ startChild, tokenSeconds: TOKEN_SECONDS, relayArgs: ['--jwt-leeway', '0'], log: (m) => console.error(m) });
  browser = await launchBrowser([`--ignore-certificate-errors-spki-list=${stack.certs.spki}`]);
  const [alice, bob] = stack.users;
  const A = await userContext(alice);
  const B = await userContext(bob);
  const seenTokens = {}; // every token the jars ever held, for the leak checks
  const remember = (who, tokens) => {
    for (const [k, v] of Object.entries(tokens)) seenTokens[`${who}.${k}.${Object.keys(seenTokens).length}`] = v;
  };
  const ok = { signedIn: false, exchanged: false, renewed: false };
  let aliceFirst;

  await t.test('both users sign in through Cognito managed login; the session cookies are HttpOnly', () =>
    explained(async () => {
      const pa = await A.open();
      await signIn(pa, alice);
      const pb = await B.open();
      await signIn(pb, bob);
      const a = await sessionCookies(A.context);
      const b = await sessionCookies(B.context);
      aliceFirst = a;
      remember('alice', a.tokens);
      remember('bob', b.tokens);
      assert.equal(jwtPayload(a.tokens.access).username, 'alice');
      assert.equal(jwtPayload(b.tokens.access).username, 'bob');
      assert.equal(jwtPayload(a.tokens.access).exp - jwtPayload(a.tokens.access).iat, TOKEN_SECONDS);
      // Managed login is another host (127.0.0.1): it never got the app's cookies.
      assert.ok(stack.front.log.some((r) => r.path === '/login'), 'the form was not posted to managed login');
      assert.ok(!stack.front.log.some((r) => r.sessionCookie), 'a session cookie was sent to managed login');
      ok.signedIn = true;
    }));

  await t.test('the server-rendered page shows the signed-in user (the adapter read the cookies)', () =>
    explained(async () => {
      assert.ok(ok.signedIn, 'sign-in failed');
      for (const [ctx, name] of [[A, 'alice'], [B, 'bob']]) {
        const page = ctx.pages[0];
        assert.equal(await page.locator('#user').textContent(), name);
        const exp = Number(await page.locator('#session-exp').getAttribute('data-exp'));
        const { tokens } = await sessionCookies(ctx.context);
        assert.equal(exp, jwtPayload(tokens.access).exp, 'the page shows the exp of the token in the cookie');
      }
    }));

  await t.test('each sees the other live: a WebSocket publish from the browser, an HTTP publish from a server action', () =>
    explained(async () => {
      assert.ok(ok.signedIn, 'sign-in failed');
      const [pa, pb] = [A.pages[0], B.pages[0]];
      await Promise.all([waitSubscribed(pa), waitSubscribed(pb)]);
      const viaWs = `from bob over the WebSocket ${Date.now()}`;
      await post(pb, 'ws', viaWs);
      await Promise.all([seesCard(pa, viaWs), seesCard(pb, viaWs)]);
      const viaHttp = `from alice via a server action ${Date.now()}`;
      await post(pa, 'http', viaHttp);
      await Promise.all([seesCard(pb, viaHttp), seesCard(pa, viaHttp)]);
      await pa.locator('#http-status[data-status="200"]').waitFor({ timeout: 5_000 });
      assert.ok((await metric('publish_requests_total', '{outcome="2xx"}')) >= 1, 'the server action did not publish through the relay');
      // Their board is their team's, which the relay's channel policy
      // (examples/nextjs/channel-policy.toml) opens to group "red" only;
      // another team's board is refused by the relay, not AppSync.
      assert.equal(await pa.locator('#board').getAttribute('data-channel'), '/default/teams/red/board');
      const elsewhere = await pa.evaluate(async () => {
        const r = await fetch('/event', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ channel: '/default/teams/blue/board', events: ['{"text":"x"}'] }) });
        return { status: r.status, body: await r.text() };
      });
      assert.equal(elsewhere.status, 403, JSON.stringify(elsewhere));
      assert.match(elsewhere.body, /channel_policy/);
      assert.ok((await metric('policy_decisions_total', '{op="publish",result="denied"}')) >= 1, 'no denial counted');
      mkdirSync(dirname(SCREENSHOT), { recursive: true });
      await pa.screenshot({ path: SCREENSHOT, fullPage: true });
      ok.exchanged = true;
    }));

  await t.test('no token reaches page JavaScript: cookie, storage, WebSocket frames, response bodies', () =>
    explained(async () => {
      assert.ok(ok.exchanged, 'the exchange failed');
      for (const ctx of [A, B]) {
        for (const [i, page] of ctx.pages.entries()) {
          const seen = await jsVisible(page);
          assertNoTokens(`${ctx.user.username}.page${i}.js`, [seen.cookie, seen.local, seen.session], seenTokens);
        }
        for (const [i, wire] of ctx.wires.entries()) {
          await Promise.all(wire.pending);
          assert.ok(wire.frames.some((f) => f.dir === 'in' && f.data.includes('"data"')), `${ctx.user.username}.page${i} captured no data frame`);
          assert.ok(wire.bodies.length > 0, `${ctx.user.username}.page${i} captured no response body`);
          assertNoTokens(`${ctx.user.username}.page${i}.websocket`, wire.frames.map((f) => f.data), seenTokens);
          assertNoTokens(`${ctx.user.username}.page${i}.responses`, wire.bodies, seenTokens);
        }
      }
    }));

  await t.test('after the access token expired: the socket still works, the next page reads the cookies the relay rewrote', () =>
    explained(async () => {
      assert.ok(ok.exchanged, 'the exchange failed');
      const [pa, pb] = [A.pages[0], B.pages[0]];
      const firstExp = Math.max(...[aliceFirst.tokens.access, (await sessionCookies(B.context)).tokens.access].map((x) => jwtPayload(x).exp));
      while (Date.now() / 1000 <= firstExp + 1) await sleep(250);
      assert.ok((await metric('token_refreshes_total', '{phase="connection",result="ok"}')) >= 2, 'the relay did not renew the open sockets');
      // The sockets opened before expiry still carry events both ways.
      const late = `after expiry, from alice ${Date.now()}`;
      await post(pa, 'ws', late);
      await seesCard(pb, late);
      const late2 = `after expiry, from bob ${Date.now()}`;
      await post(pb, 'ws', late2);
      await seesCard(pa, late2);
      for (const s of [pa, pb]) {
        const closed = await s.evaluate(() => window.__sockets.filter((x) => x.closedAt).map((x) => x.code));
        assert.deepEqual(closed, [], 'a socket closed across the expiry');
      }
      // The app's own calls to the Cognito API (it reaches Cognito only
      // through the TLS front, which records every call).
      const appRefreshes = () => stack.front.log.filter((r) => /GetTokensFromRefreshToken|InitiateAuth/.test(r.target)).length;
      // Bob: a server action with the expired cookies. The relay renewed his
      // socket in place and kept the renewed set for his browser's next
      // request (src/relay/token.rs): the action's request reaches the app
      // with live cookies, and its HTTP publish through the relay goes through.
      const late3 = `after expiry, bob via a server action ${Date.now()}`;
      await post(pb, 'http', late3);
      await seesCard(pa, late3);
      await pb.locator('#http-status[data-status="200"]').waitFor({ timeout: 5_000 });
      assert.equal(appRefreshes(), 0, "the app refreshed bob's session itself: the relay's renewal did not reach the server action");
      // Alice: the first server-rendered page after expiry already reads the
      // renewal the relay kept for her (rewritten into the request's cookies
      // and written back as Set-Cookie); the app refreshes nothing, and the new
      // board's handshake has nothing to renew.
      const handshakesBefore = await metric('token_refreshes_total', '{phase="handshake",result="ok"}');
      await pa.reload();
      await pa.locator('#user').filter({ hasText: /^alice$/ }).waitFor({ timeout: 10_000 });
      const firstShown = Number(await pa.locator('#session-exp').getAttribute('data-exp'));
      assert.ok(firstShown > Date.now() / 1000, 'the first page after expiry shows an expired session');
      const { tokens } = await sessionCookies(A.context); // still HttpOnly, Secure, Strict
      remember('alice', tokens);
      remember('bob', (await sessionCookies(B.context)).tokens);
      assert.notEqual(tokens.access, aliceFirst.tokens.access, 'the relay did not rewrite the access-token cookie');
      assert.equal(firstShown, jwtPayload(tokens.access).exp, "the first page after expiry did not read the relay's renewal");
      assert.equal(tokens.refresh, aliceFirst.tokens.refresh, 'MiniStack does not rotate refresh tokens');
      assert.equal(appRefreshes(), 0, "the app refreshed alice's session itself on the first page after expiry");
      await waitSubscribed(pa);
      const handshakeRenewals = (await metric('token_refreshes_total', '{phase="handshake",result="ok"}')) - handshakesBefore;
      assert.equal(handshakeRenewals, 0, "the new board's handshake renewed although its cookies were fresh");
      // The next server-rendered page reads the cookies the relay rewrote,
      // and the app has nothing to refresh.
      const settled = appRefreshes();
      const doc = await pa.reload();
      assert.equal(doc.status(), 200);
      await pa.locator('#user').filter({ hasText: /^alice$/ }).waitFor({ timeout: 10_000 });
      const shown = Number(await pa.locator('#session-exp').getAttribute('data-exp'));
      const jarNow = (await sessionCookies(A.context)).tokens;
      assert.equal(shown, jwtPayload(jarNow.access).exp, 'the page did not read the token the relay wrote');
      assert.equal(appRefreshes(), settled, 'the app refreshed although the cookies were fresh');
      await waitSubscribed(pa);
      ok.renewed = true;
    }));

  let signOutAt;
  let before;
  let oldCookies;
  await t.test("sign-out through the adapter's route closes alice's open socket with 4401 within 1 s", () =>
    explained(async () => {
      assert.ok(ok.signedIn, 'sign-in failed');
      const pa = A.pages[0];
      await waitSubscribed(pa);
      before = await pa.evaluate(() => window.__sockets.findLastIndex((x) => x.openedAt && !x.closedAt));
      assert.ok(before >= 0, "alice's board has no open socket");
      oldCookies = (await A.context.cookies()).filter((c) => c.name.startsWith('CognitoIdentityServiceProvider.'));
      // A second tab of the same browser signs out; the first keeps its socket.
      const tab = await A.open();
      await tab.goto(`${stack.appOrigin}/`);
      tab.on('response', (r) => {
        if (new URL(r.url()).pathname === '/api/auth/sign-out-callback' && r.status() === 302) signOutAt ??= Date.now();
      });
      await Promise.all([tab.waitForURL(`${stack.appOrigin}/`, { timeout: 20_000 }), tab.click('#sign-out')]);
      await tab.locator('#sign-in').waitFor({ timeout: 10_000 });
      assert.ok(signOutAt, 'the sign-out callback never cleared the session');
      const jar = await A.context.cookies();
      assert.deepEqual(jar.filter((c) => c.name.startsWith('CognitoIdentityServiceProvider.')).map((c) => c.name), [], 'sign-out left session cookies');
      let closed;
      while (Date.now() < signOutAt + 1_500) {
        closed = await pa.evaluate((i) => window.__sockets[i], before);
        if (closed.closedAt) break;
        await sleep(50);
      }
      assert.ok(closed.closedAt, `alice's socket was still open ${Date.now() - signOutAt} ms after sign-out`);
      assert.equal(closed.code, 4401, `alice's socket closed with ${closed.code} ${closed.reason}`);
      assert.ok(closed.closedAt - signOutAt <= 1_000, `closed ${closed.closedAt - signOutAt} ms after sign-out`);
      // The first tab's app hears it: its subscription's error callback
      // fires with Amplify's final error (before: nothing; Amplify
      // reconnected 5 s later into a refusal it retried forever) ...
      const shown = pa.locator('#ws-error');
      await shown.waitFor({ timeout: 5_000 });
      assert.match(await shown.innerText(), /UnauthorizedException/);
      // ... and Amplify tries no upgrade for the next 60 s.
      const sockets = await pa.evaluate(() => window.__sockets.length);
      await sleep(60_000);
      assert.equal(await pa.evaluate(() => window.__sockets.length), sockets, "the signed-out tab's Amplify retried the upgrade");
    }));

  await t.test('after sign-out neither the signed-out browser nor a replay of its old cookies can reconnect', () =>
    explained(async () => {
      assert.ok(signOutAt && oldCookies?.length, 'sign-out did not happen');
      // The adapter revoked the refresh token at Cognito (/oauth2/revoke).
      const refresh = oldCookies.find((c) => c.name.endsWith('.refreshToken')).value;
      await assert.rejects(
        stack.cognito('GetTokensFromRefreshToken', { ClientId: stack.clientId, RefreshToken: refresh }),
        /NotAuthorizedException/,
        'the refresh token was not revoked',
      );
      const tryConnect = (page) =>
        page.evaluate(
          (url) =>
            new Promise((resolve) => {
              // A session is over when the relay answers connection_init
              // with connection_error (a refusal in band, which Amplify
              // takes as final), or refuses the upgrade outright.
              const ws = new WebSocket(url, ['aws-appsync-event-ws']);
              const timer = setTimeout(() => resolve({ opened: ws.readyState === 1, code: null }), 5_000);
              ws.onopen = () => ws.send(JSON.stringify({ type: 'connection_init' }));
              ws.onmessage = (m) => {
                const v = JSON.parse(m.data);
                if (v.type === 'connection_ack') {
                  clearTimeout(timer);
                  ws.close();
                  resolve({ opened: true });
                } else if (v.type === 'connection_error') {
                  clearTimeout(timer);
                  resolve({ opened: false, refused: v.errors?.[0]?.errorType, reason: v.errors?.[0]?.message });
                }
              };
              ws.onclose = (e) => {
                clearTimeout(timer);
                resolve({ opened: false, code: e.code });
              };
            }),
          `${stack.appOrigin.replace(/^https/, 'wss')}/event/realtime`,
        );
      // The signed-out browser (no session cookies left).
      const fromSignedOut = await tryConnect(A.pages[0]);
      assert.equal(fromSignedOut.opened, false, 'the signed-out browser reconnected');
      // A copy of the jar taken before sign-out, replayed in a fresh browser.
      const C = await userContext({ username: 'replay' });
      await C.context.addCookies(oldCookies.map(({ name, value, domain, path, httpOnly, secure, sameSite }) => ({ name, value, domain, path, httpOnly, secure, sameSite })));
      const pc = await C.open();
      await pc.goto(`${stack.appOrigin}/`);
      const replayed = await tryConnect(pc);
      assert.equal(replayed.opened, false, 'the pre-sign-out cookies reconnected');
      const publish = await pc.evaluate(async () => {
        const r = await fetch('/event', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ channel: '/default/board', events: ['{"text":"replay"}'] }) });
        return r.status;
      });
      assert.equal(publish, 401, 'the pre-sign-out cookies published');
      await C.context.close();
    }));

  await t.test("bob's session is unaffected by alice's sign-out", () =>
    explained(async () => {
      assert.ok(ok.exchanged, 'the exchange failed');
      const pb = B.pages[0];
      const still = `bob after alice left ${Date.now()}`;
      await post(pb, 'ws', still);
      await seesCard(pb, still);
      const closed = await pb.evaluate(() => window.__sockets.filter((x) => x.closedAt).map((x) => x.code));
      assert.deepEqual(closed, [], "bob's socket closed");
      const { tokens } = await sessionCookies(B.context);
      remember('bob', tokens);
      // Final sweep, sign-in to sign-out: still no token where page JS can see.
      for (const ctx of [A, B]) {
        for (const [i, wire] of ctx.wires.entries()) {
          await Promise.all(wire.pending);
          assertNoTokens(`${ctx.user.username}.page${i}.websocket`, wire.frames.map((f) => f.data), seenTokens);
          assertNoTokens(`${ctx.user.username}.page${i}.responses`, wire.bodies, seenTokens);
        }
        for (const [i, page] of ctx.pages.entries()) {
          const seen = await jsVisible(page);
          assertNoTokens(`${ctx.user.username}.page${i}.js`, [seen.cookie, seen.local, seen.session], seenTokens);
        }
      }
      console.error(`nextjs example test: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    }));
});
