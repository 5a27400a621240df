// Wire compatibility: the real aws-amplify v6 `events` client (Node, with a
// browser-like WebSocket/fetch shim that carries the session cookies and an
// Origin) against `appsync-relay serve`, whose upstream is
// `appsync-relay emulate` verifying real cognito-local tokens.
//
//   node --test tests/node/amplify-node.test.mjs
//
// The relay binary comes from APPSYNC_RELAY_BIN (default
// ../../target/debug/appsync-relay relative to this file); tests/amplify_node.rs
// runs this file from `cargo test`, once per mode. APPSYNC_RELAY_TEST_TLS=1
// serves the relay over HTTPS (`--tls-cert/--tls-key`, a throw-away
// self-signed certificate for 127.0.0.1 made with `openssl`) and Amplify
// dials its own `wss://` URL unchanged; otherwise the relay is plain HTTP and
// the shim rewrites `wss:` to `ws:`. APPSYNC_RELAY_TEST_ECHO=1 echoes the
// children's output, APPSYNC_RELAY_TEST_WIRE=1 prints the frames Amplify
// sent and received.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Amplify } from 'aws-amplify';
import { events } from 'aws-amplify/data';
import { Hub } from 'aws-amplify/utils';
import { amplifyCookieHeader, installBrowserShims, relayEventsConfig } from './support/amplify-env.mjs';
import {
  freePort,
  killAll,
  startChild,
  startCognitoLocal,
  waitHttpListening,
  waitHttpOk,
  withDeadline,
} from './support/processes.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const RELAY_BIN = resolve(here, process.env.APPSYNC_RELAY_BIN || '../../target/debug/appsync-relay');
const CHANNEL = '/default/node';
// Served from one upstream subscription (`--shared-channel /default/shared/*`).
const SHARED_CHANNEL = '/default/shared/prices';
const PASSWORD = 'Passw0rd!';
// `@` and `+` in the username: the cookie names carry it percent-encoded.
const USERNAME = `node+user-${randomBytes(4).toString('hex')}@example.com`;
const READY_MS = 20_000;
const TLS = !!process.env.APPSYNC_RELAY_TEST_TLS;
const MODE = TLS ? 'https/wss' : 'http/ws';

let cognito;
let emulator;
let emulatorAdmin;
let emulatorArgs;
let relay;
let relayArgs;
let origin;
let adminUrl;
let wire;
let peer;
let certDir;

// ---------------------------------------------------------------------------
// fixtures

/** (Re)starts the emulator on its ports; resolves once it answers. */
function startEmulator() {
  emulator = startChild('emulator', RELAY_BIN, emulatorArgs);
  const port = emulatorArgs[emulatorArgs.indexOf('--listen') + 1];
  return waitHttpListening(emulator, `http://${port}/`, READY_MS);
}

function startRelay(args = relayArgs) {
  relay = startChild('relay', RELAY_BIN, args, {
    env: { ...process.env, APPSYNC_RELAY_LOG: process.env.APPSYNC_RELAY_LOG || 'info' },
  });
  return waitHttpOk(relay, `${adminUrl}/readyz`, READY_MS);
}

/** Runs `fn`; on failure appends the wire log and the children's output. */
async function explained(fn) {
  try {
    return await fn();
  } catch (e) {
    let peerWire = '';
    try {
      peerWire = peer ? await withDeadline(peerCall({ op: 'frames' }), 2_000, 'peer frames') : '';
    } catch {
      /* peer gone */
    }
    e.message +=
      `\n--- amplify wire (this client) ---\n${wire?.dump() ?? ''}` +
      `\n--- amplify wire (peer) ---\n${peerWire}` +
      `\n--- relay ---\n${relay?.output() ?? ''}` +
      `\n--- emulator ---\n${emulator?.output() ?? ''}`;
    throw e;
  }
}

let peerSeq = 0;
const peerPending = new Map();
function peerCall(msg) {
  const seq = ++peerSeq;
  return new Promise((resolve, reject) => {
    peerPending.set(seq, { resolve, reject });
    peer.postMessage({ ...msg, seq });
  });
}

/** Subscribes on `channel` and collects what arrives. */
function collector() {
  const received = [];
  const errors = [];
  const waiters = new Set();
  const observer = {
    next: (msg) => {
      received.push(msg);
      for (const w of waiters) w();
    },
    error: (err) => {
      errors.push(err);
      for (const w of waiters) w();
    },
  };
  function waitEvent(predicate, ms, what) {
    return withDeadline(
      new Promise((resolve, reject) => {
        const check = () => {
          if (errors.length) {
            waiters.delete(check);
            reject(new Error(`subscription error: ${JSON.stringify(errors)}`));
            return;
          }
          const hit = received.find((m) => predicate(m.event));
          if (hit) {
            waiters.delete(check);
            resolve(hit);
          }
        };
        waiters.add(check);
        check();
      }),
      ms,
      `${what}; received so far: ${JSON.stringify(received)}`,
    );
  }
  return { observer, received, errors, waitEvent };
}

/**
 * Drops this client's socket, if one is open, so the next `events.connect`
 * dials anew (with the cookies set now). Not `events.closeAll()`: in
 * aws-amplify 6.22.1 that unsubscribes the provider's connection-state
 * monitor for good (`AWSWebSocketProvider.close`), and the process never
 * reconnects after a drop again — which would make every "Amplify
 * reconnects" or "no reconnect follows" assertion after it meaningless.
 * AppSync (the emulator) closes every socket with 4000; call it with no
 * subscription open, so nothing reconnects.
 */
async function freshSocket() {
  const last = wire.frames.findLast((f) => f.kind === 'upgrade');
  if (!last || wire.frames.some((f) => f.kind === 'close' && f.socket === last.socket)) return;
  const closed = await fetch(`${emulatorAdmin}/close-all?code=4000`, { method: 'POST' });
  assert.equal(closed.status, 204);
  await wire.waitFor((f) => f.kind === 'close' && f.socket === last.socket, 5_000, 'the socket dropped');
}

before(async () => {
  assert.ok(existsSync(RELAY_BIN), `relay binary not found at ${RELAY_BIN} (set APPSYNC_RELAY_BIN)`);

  cognito = await startCognitoLocal();
  await cognito.provision();
  await cognito.createUser(USERNAME, PASSWORD);
  const tokens = await cognito.signIn(USERNAME, PASSWORD);

  const emuPort = await freePort();
  const emuAdminPort = await freePort();
  emulatorAdmin = `http://127.0.0.1:${emuAdminPort}`;
  emulatorArgs = [
    'emulate',
    '--listen', `127.0.0.1:${emuPort}`,
    '--admin-listen', `127.0.0.1:${emuAdminPort}`,
    '--cognito-issuer', cognito.issuer,
    '--cognito-jwks-url', cognito.jwksUrl,
    '--cognito-client-id', cognito.clientId,
    '--http-host', `127.0.0.1:${emuPort}`,
  ];
  await startEmulator();

  const relayPort = await freePort();
  const adminPort = await freePort();
  origin = `${TLS ? 'https' : 'http'}://127.0.0.1:${relayPort}`;
  adminUrl = `http://127.0.0.1:${adminPort}`;
  relayArgs = [
    'serve',
    '--listen', `127.0.0.1:${relayPort}`,
    '--admin-listen', `127.0.0.1:${adminPort}`,
    '--appsync-http-endpoint', `http://127.0.0.1:${emuPort}/event`,
    '--cognito-user-pool-id', cognito.userPoolId,
    '--cognito-client-id', cognito.clientId,
    '--cognito-issuer', cognito.issuer,
    '--cognito-jwks-url', cognito.jwksUrl,
    '--allowed-origin', origin,
    // SIGTERM in the reconnect test: give open sockets one second, then 1001.
    '--drain-timeout', '1',
    '--shared-channel', '/default/shared/*',
    '--shared-linger', '1',
  ];
  let ca;
  if (TLS) {
    certDir = mkdtempSync(join(tmpdir(), 'amplify-node-tls-'));
    const cert = join(certDir, 'cert.pem');
    const key = join(certDir, 'key.pem');
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
      '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
      '-keyout', key, '-out', cert,
    ], { stdio: 'pipe', timeout: 10_000 });
    relayArgs.push('--tls-cert', cert, '--tls-key', key);
    ca = readFileSync(cert, 'utf8');
  }
  await startRelay();

  const cookie = amplifyCookieHeader(cognito.clientId, USERNAME, tokens);
  wire = installBrowserShims({ origin, cookie, ca });
  Hub.listen('api', ({ payload }) => {
    if (payload.event === 'ConnectionStateChange') {
      wire.note({ kind: 'state', state: payload.data?.connectionState });
    }
  });
  Amplify.configure(relayEventsConfig(origin));

  peer = new Worker(new URL('./support/amplify-peer.mjs', import.meta.url), { workerData: { origin, cookie, ca } });
  peer.on('message', (msg) => {
    const p = peerPending.get(msg.seq);
    if (!p) return;
    peerPending.delete(msg.seq);
    if (msg.ok) p.resolve(msg.result);
    else p.reject(new Error(`peer ${msg.error}`));
  });
  peer.on('error', (err) => {
    for (const p of peerPending.values()) p.reject(err);
    peerPending.clear();
  });
  await withDeadline(
    new Promise((resolve) => peer.once('message', (m) => m.op === 'ready' && resolve())),
    READY_MS,
    'peer worker to load aws-amplify',
  );
});

after(async () => {
  if (process.env.APPSYNC_RELAY_TEST_WIRE && wire) process.stderr.write(`--- amplify wire ---\n${wire.dump()}\n`);
  try {
    await withDeadline(events.closeAll(), 3_000, 'events.closeAll()').catch(() => {});
    if (peer) await peer.terminate();
  } finally {
    await killAll();
    if (certDir) rmSync(certDir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------
// tests

test(`[${MODE}] subscribe receives a WebSocket publish from another client and an HTTP post; close is clean`, { timeout: 60_000 }, () =>
  explained(async () => {
    const from = wire.frames.length;
    const channel = await withDeadline(events.connect(CHANNEL), 15_000, 'events.connect');
    const inbox = collector();
    const sub = channel.subscribe(inbox.observer);
    await withDeadline(sub.ready, 15_000, 'subscription ready');

    // The handshake Amplify made (its wss:// kept over TLS, rewritten to
    // ws:// over plain HTTP), and the subprotocol the relay selected.
    const upgrade = await wire.waitFor((f) => f.kind === 'upgrade', 1_000, 'upgrade', from);
    assert.equal(upgrade.protocol, 'aws-appsync-event-ws');
    const dial = wire.frames.find((f) => f.kind === 'dial' && f.socket === upgrade.socket);
    assert.equal(dial.url, `${TLS ? 'wss' : 'ws'}://${new URL(origin).host}/event/realtime`);
    const subscribe = wire.frames.slice(from).find((f) => f.kind === 'send' && f.msg?.type === 'subscribe');
    assert.equal(subscribe.msg.channel, CHANNEL);
    assert.equal(subscribe.msg.authorization['x-api-key'], 'placeholder', 'Amplify sends its placeholder key');

    // Publish over the peer's own WebSocket (channel.publish).
    const wsMark = `ws-${randomBytes(4).toString('hex')}`;
    await withDeadline(peerCall({ op: 'publish', channel: CHANNEL, event: { mark: wsMark, via: 'ws' } }), 15_000, 'peer publish');
    const got = await inbox.waitEvent((e) => e?.mark === wsMark, 10_000, 'the peer WebSocket publish');
    assert.deepEqual(got.event, { mark: wsMark, via: 'ws' });
    assert.equal(got.type, 'data');

    // Publish over HTTP (events.post through the fetch shim).
    const httpMark = `http-${randomBytes(4).toString('hex')}`;
    const failed = await withDeadline(events.post(CHANNEL, { mark: httpMark, via: 'http' }), 15_000, 'events.post');
    assert.equal(failed, undefined, `events.post reported failed events: ${JSON.stringify(failed)}`);
    const post = wire.frames.find((f) => f.kind === 'fetch' && f.url === `${origin}/event`);
    assert.equal(post?.status, 200);
    await inbox.waitEvent((e) => e?.mark === httpMark, 10_000, 'the HTTP post');

    // channel.publish on this client's own socket resolves too (publish_success).
    const selfMark = `self-${randomBytes(4).toString('hex')}`;
    await withDeadline(channel.publish({ mark: selfMark }), 10_000, 'channel.publish');
    await inbox.waitEvent((e) => e?.mark === selfMark, 10_000, 'own WebSocket publish');

    // Close: unsubscribe is acknowledged, then Amplify closes the idle socket with 1000.
    const closeFrom = wire.frames.length;
    await channel.close();
    const unsub = await wire.waitFor((f) => f.kind === 'send' && f.msg?.type === 'unsubscribe', 5_000, 'unsubscribe sent', closeFrom);
    const ack = await wire.waitFor((f) => f.kind === 'recv' && f.msg?.id === unsub.msg.id, 5_000, 'unsubscribe answer', closeFrom);
    assert.equal(ack.msg.type, 'unsubscribe_success', JSON.stringify(ack.msg));
    const closed = await wire.waitFor((f) => f.kind === 'close' && f.socket === upgrade.socket, 5_000, 'socket close', closeFrom);
    assert.equal(closed.code, 1000);
    assert.deepEqual(inbox.errors, []);
    const errorsOnWire = wire.frames.filter((f) => f.kind === 'error' || (f.kind === 'recv' && /error/.test(f.msg?.type ?? '')));
    assert.deepEqual(errorsOnWire, []);
  }),
);

/** One series of the emulator's operations meter. */
async function meter(series) {
  const text = await (await fetch(`${emulatorAdmin}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.split(' ')[1]) : 0;
}

test(`[${MODE}] a shared channel: two Amplify subscriptions get every event under their own ids, AppSync delivers once`, { timeout: 60_000 }, () =>
  explained(async () => {
    const from = wire.frames.length;
    const first = await withDeadline(events.connect(SHARED_CHANNEL), 15_000, 'events.connect (1)');
    const second = await withDeadline(events.connect(SHARED_CHANNEL), 15_000, 'events.connect (2)');
    const a = collector();
    const b = collector();
    const subA = first.subscribe(a.observer);
    const subB = second.subscribe(b.observer);
    await withDeadline(Promise.all([subA.ready, subB.ready]), 15_000, 'shared subscriptions ready');
    const ids = wire.frames
      .slice(from)
      .filter((f) => f.kind === 'send' && f.msg?.type === 'subscribe' && f.msg.channel === SHARED_CHANNEL)
      .map((f) => f.msg.id);
    assert.equal(ids.length, 2);
    assert.notEqual(ids[0], ids[1]);

    const deliveries = await meter('appsync_emulator_operations_total{kind="delivery"}');
    const mark = `shared-${randomBytes(4).toString('hex')}`;
    await withDeadline(peerCall({ op: 'publish', channel: SHARED_CHANNEL, event: { mark } }), 15_000, 'peer publish');
    await a.waitEvent((e) => e?.mark === mark, 10_000, 'the event on the first subscription');
    await b.waitEvent((e) => e?.mark === mark, 10_000, 'the event on the second subscription');
    // Each data frame Amplify received carried one of its own ids.
    const data = wire.frames.slice(from).filter((f) => f.kind === 'recv' && f.msg?.type === 'data');
    assert.deepEqual(data.map((f) => f.msg.id).sort(), [...ids].sort());
    // AppSync delivered the event once, to the relay's shared subscription.
    assert.equal(await meter('appsync_emulator_operations_total{kind="delivery"}') - deliveries, 1);
    assert.equal(await meter(`appsync_emulator_subscriptions_active{channel="${SHARED_CHANNEL}"}`), 1);
    assert.deepEqual([...a.errors, ...b.errors], []);
    // Unsubscribes are answered by the relay (nothing to undo upstream),
    // then Amplify closes the idle socket as usual.
    const closeFrom = wire.frames.length;
    const upgrade = wire.frames.slice(from).find((f) => f.kind === 'upgrade');
    await first.close();
    await second.close();
    for (const id of ids) {
      const ack = await wire.waitFor((f) => f.kind === 'recv' && f.msg?.id === id, 5_000, 'unsubscribe answer', closeFrom);
      assert.equal(ack.msg.type, 'unsubscribe_success', JSON.stringify(ack.msg));
    }
    if (upgrade) {
      await wire.waitFor((f) => f.kind === 'close' && f.socket === upgrade.socket, 5_000, 'socket close', closeFrom);
    }
  }),
);

test(`[${MODE}] Amplify reconnects and re-subscribes by itself after the relay restarts`, { timeout: 90_000 }, () =>
  explained(async () => {
    const from = wire.frames.length;
    const channel = await withDeadline(events.connect(CHANNEL), 15_000, 'events.connect');
    const inbox = collector();
    const sub = channel.subscribe(inbox.observer);
    await withDeadline(sub.ready, 15_000, 'subscription ready');
    const first = await wire.waitFor((f) => f.kind === 'upgrade', 1_000, 'upgrade', from);

    // Restart the relay on the same ports.
    const killedAt = wire.frames.length;
    const status = await relay.stop('SIGTERM', 10_000);
    assert.equal(status.code, 0, `relay exit status ${JSON.stringify(status)}`);
    const dropped = await wire.waitFor((f) => f.kind === 'close' && f.socket === first.socket, 5_000, 'socket dropped', killedAt);
    wire.note({ kind: 'note', text: `relay stopped; Amplify saw close ${dropped.code}` });
    // Let Amplify find the relay gone once (its first re-dial, ~5 s after the
    // drop, is refused) so its handshake retry path is exercised too. Amplify
    // gives a re-dial ~6 s of backoff before falling back to a 60 s interval,
    // so the relay must be back soon after.
    await wire.waitFor(
      (f) => f.kind === 'error' && f.socket > first.socket,
      15_000,
      'a refused re-dial while the relay is down',
      killedAt,
    );
    await startRelay();

    // Amplify re-dials and re-subscribes on its own: a subscribe_success on a
    // newer socket.
    const resub = await wire.waitFor(
      (f) => f.kind === 'recv' && f.socket > first.socket && f.msg?.type === 'subscribe_success',
      30_000,
      're-subscription after the restart',
      killedAt,
    );
    const resent = wire.frames.find((f) => f.kind === 'send' && f.socket === resub.socket && f.msg?.id === resub.msg.id);
    assert.equal(resent?.msg.channel, CHANNEL);

    // And events flow again, both ways in.
    const wsMark = `after-ws-${randomBytes(4).toString('hex')}`;
    await withDeadline(peerCall({ op: 'publish', channel: CHANNEL, event: { mark: wsMark } }), 15_000, 'peer publish after restart');
    await inbox.waitEvent((e) => e?.mark === wsMark, 10_000, 'the WebSocket publish after the restart');
    const httpMark = `after-http-${randomBytes(4).toString('hex')}`;
    assert.equal(await withDeadline(events.post(CHANNEL, { mark: httpMark }), 15_000, 'events.post'), undefined);
    await inbox.waitEvent((e) => e?.mark === httpMark, 10_000, 'the HTTP post after the restart');
    assert.deepEqual(inbox.errors, []);

    await channel.close();
  }),
);

test(`[${MODE}] events.post refusals reach the app as typed errors it can tell apart`, { timeout: 60_000 }, () =>
  explained(async () => {
    const cookie = amplifyCookieHeader(cognito.clientId, USERNAME, await cognito.signIn(USERNAME, PASSWORD));
    // Amplify reads the type from x-amzn-ErrorType / __type and the message
    // from `message` (core/src/clients/serde/json.ts): without them every
    // refusal was an "UnknownError".
    const refusal = async (what) => {
      try {
        await withDeadline(events.post(CHANNEL, { what }), 15_000, `events.post (${what})`);
      } catch (e) {
        return e;
      }
      throw new Error(`events.post (${what}) succeeded`);
    };
    try {
      // Signed out: no session cookie at all.
      wire.setCookie('');
      const signedOut = await refusal('signed out');
      assert.equal(signedOut.name, 'UnauthorizedException', String(signedOut));
      assert.equal(signedOut.message, 'no_session');
      // Too large for --max-message-bytes (2 523 136 by default): over
      // plain HTTP only, where the client reads the early 413 (this
      // harness's HTTPS shim fails its write instead, EPIPE).
      wire.setCookie(cookie);
      if (!TLS) {
        const big = await refusal('x'.repeat(2_700_000));
        assert.equal(big.name, 'PayloadTooLargeException', String(big));
        assert.equal(big.message, 'body_too_large');
      }
    } finally {
      wire.setCookie(cookie);
    }
    // And a good one still goes through.
    assert.equal(await withDeadline(events.post(CHANNEL, { ok: true }), 15_000, 'events.post'), undefined);
  }),
);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * After a refusal: no socket closed or dialled since wire frame `from`, and
 * `inbox` (a subscription on CHANNEL) still receives an HTTP publish, with
 * no error.
 */
async function stillOneSocketAndReceiving(from, inbox) {
  assert.deepEqual(wire.frames.slice(from).filter((f) => f.kind === 'close' || f.kind === 'dial'), []);
  const mark = `after-refusal-${randomBytes(4).toString('hex')}`;
  assert.equal(await withDeadline(events.post(CHANNEL, { mark }), 15_000, 'events.post'), undefined);
  await inbox.waitEvent((e) => e?.mark === mark, 10_000, 'the event on the other subscription');
  assert.deepEqual(inbox.errors, []);
}

/** Waits until `condition()` holds, or fails with `what`. */
async function until(condition, ms, what) {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(50);
  }
}

test(`[${MODE}] a handshake refused because the session is over errors the app out, once`, { timeout: 60_000 }, () =>
  explained(async () => {
    const cookie = amplifyCookieHeader(cognito.clientId, USERNAME, await cognito.signIn(USERNAME, PASSWORD));
    // A socket of its own (Amplify shares one among channels).
    await freshSocket();
    const from = wire.frames.length;
    wire.setCookie('');
    let err;
    try {
      await withDeadline(events.connect(`${CHANNEL}-signed-out`), 30_000, 'events.connect without a session');
    } catch (e) {
      err = e;
    } finally {
      wire.setCookie(cookie);
    }
    // Before: HTTP 401, which Amplify retries as a network error, and then
    // gives up with "Connection handshake error" — the app cannot tell a
    // signed-out user from a network fault.
    assert.ok(err, 'events.connect succeeded without a session');
    const said = `${err?.message ?? ''} ${JSON.stringify(err)}`;
    assert.match(said, /UnauthorizedException/, said);
    const dials = wire.frames.slice(from).filter((f) => f.kind === 'dial');
    assert.equal(dials.length, 1, `Amplify retried a refusal it should take as final: ${dials.length} dials`);
    const refused = wire.frames.slice(from).find((f) => f.kind === 'recv' && f.msg?.type === 'connection_error');
    assert.equal(refused?.msg.errors?.[0]?.message, 'no_session');
    await sleep(8_000);
    assert.equal(wire.frames.slice(from).filter((f) => f.kind === 'dial').length, 1, 'a re-dial followed');
  }),
);

test(`[${MODE}] a session ended while its socket is open reaches the subscription's error callback; no reconnect follows`, { timeout: 60_000 }, () =>
  explained(async () => {
    // A user of its own: an operator's end covers every sign-in of the user
    // made until now, and the other tests go on with theirs.
    const other = `ended+${randomBytes(4).toString('hex')}@example.com`;
    await cognito.createUser(other, PASSWORD);
    const otherCookie = amplifyCookieHeader(cognito.clientId, other, await cognito.signIn(other, PASSWORD));
    const mine = amplifyCookieHeader(cognito.clientId, USERNAME, await cognito.signIn(USERNAME, PASSWORD));
    wire.setCookie(otherCookie);
    await freshSocket();
    try {
      const channel = await withDeadline(events.connect(`${CHANNEL}-ended`), 15_000, 'events.connect');
      const inbox = collector();
      const sub = channel.subscribe(inbox.observer);
      await withDeadline(sub.ready, 15_000, 'subscription ready');
      const from = wire.frames.length;
      const ended = await fetch(`${adminUrl}/sessions/end`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ username: other }),
      });
      assert.equal(ended.status, 200);
      // Before: the socket closed with 4401, which Amplify does not read:
      // it reconnected ~5 s later, was refused, and retried forever, and
      // the app heard nothing.
      await until(() => inbox.errors.length > 0, 5_000, "the subscription's error callback");
      assert.match(JSON.stringify(inbox.errors), /UnauthorizedException/);
      const close = await wire.waitFor((f) => f.kind === 'close', 5_000, 'the socket closed', from);
      assert.equal(close.code, 4401);
      await sleep(10_000);
      const dials = wire.frames.slice(from).filter((f) => f.kind === 'dial');
      assert.deepEqual(dials, [], 'Amplify re-dialled after the session ended');
    } finally {
      wire.setCookie(mine);
    }
  }),
);

/** An event of `bytes` bytes whose JSON needs escaping inside a frame: an array of "a" strings. */
function quoteHeavyEvent(bytes, mark) {
  const head = `{"mark":"${mark}","d":[`;
  const n = Math.floor((bytes - head.length - 2) / 4);
  const body = Array(n).fill('"a"').join(',');
  return JSON.parse(`${head}${body}]}`);
}

test(`[${MODE}] five 240 KB events publish over the WebSocket and over HTTP; a publish over the limits is answered, not a closed socket`, { timeout: 90_000 }, () =>
  explained(async () => {
    // (The socket the previous test's ended session left, if any.)
    await freshSocket();
    const channel = await withDeadline(events.connect(CHANNEL), 15_000, 'events.connect');
    const inbox = collector();
    const sub = channel.subscribe(inbox.observer);
    await withDeadline(sub.ready, 15_000, 'subscription ready');
    const from = wire.frames.length;
    // AWS allows five events of 240 KB. Amplify sends them twice in one
    // frame, each escaped once more: ~3.6 MB here. Before: the relay closed
    // the socket with 1009 (and answered events.post with 413).
    const ws = Array.from({ length: 5 }, (_, i) => quoteHeavyEvent(240_000, `ws-${i}`));
    await withDeadline(channel.publish(ws), 30_000, 'channel.publish of five 240 KB events');
    for (let i = 0; i < 5; i++) {
      await inbox.waitEvent((e) => e?.mark === `ws-${i}`, 20_000, `WebSocket event ${i}`);
    }
    const http = Array.from({ length: 5 }, (_, i) => quoteHeavyEvent(240_000, `http-${i}`));
    const failed = await withDeadline(events.post(CHANNEL, http), 30_000, 'events.post of five 240 KB events');
    assert.equal(failed, undefined, `events.post reported failed events: ${JSON.stringify(failed)?.slice(0, 200)}`);
    for (let i = 0; i < 5; i++) {
      await inbox.waitEvent((e) => e?.mark === `http-${i}`, 20_000, `HTTP event ${i}`);
    }
    // One event over AppSync's 240 KB: publish_error, and the socket stays.
    let err;
    try {
      await withDeadline(channel.publish([quoteHeavyEvent(300_000, 'too-big')]), 20_000, 'channel.publish of 300 KB');
    } catch (e) {
      err = e;
    }
    assert.match(String(err?.message), /Publish errors: BadRequestException/);
    assert.deepEqual(wire.frames.slice(from).filter((f) => f.kind === 'close'), [], 'a socket closed');
    const after = `after-${randomBytes(4).toString('hex')}`;
    await withDeadline(channel.publish({ mark: after }), 10_000, 'channel.publish after');
    await inbox.waitEvent((e) => e?.mark === after, 10_000, 'the publish after');
    assert.deepEqual(inbox.errors, []);
    await channel.close();
  }),
);

test(`[${MODE}] what must stay retryable stays retryable: after a 4000 and after a 1013, Amplify reconnects, re-subscribes and receives`, { timeout: 120_000 }, () =>
  explained(async () => {
    const channel = await withDeadline(events.connect(CHANNEL), 15_000, 'events.connect');
    const inbox = collector();
    const sub = channel.subscribe(inbox.observer);
    await withDeadline(sub.ready, 15_000, 'subscription ready');
    // (Sockets are numbered in order: a later one is a reconnect.)
    const resubscribed = async (closed, code, what) => {
      const close = await wire.waitFor((f) => f.kind === 'close' && f.socket === closed, 20_000, `close ${code}`);
      assert.equal(close.code, code, `${what}: the close Amplify saw`);
      const resub = await wire.waitFor(
        (f) => f.kind === 'recv' && f.socket > closed && f.msg?.type === 'subscribe_success',
        30_000,
        `re-subscription after ${code}`,
      );
      const mark = `after-${code}-${randomBytes(4).toString('hex')}`;
      assert.equal(await withDeadline(events.post(CHANNEL, { mark }), 15_000, 'events.post'), undefined);
      await inbox.waitEvent((e) => e?.mark === mark, 10_000, `the event after ${code}`);
      return resub.socket;
    };
    const socketOf = (type) => wire.frames.findLast((f) => f.kind === 'recv' && f.msg?.type === type).socket;

    // 4000 "reauthenticate" (here AppSync's own, which the relay passes on;
    // the relay sends the same code with --mid-connection-refresh off).
    let current = socketOf('subscribe_success');
    const reauth = await fetch(`${emulatorAdmin}/close-all?code=4000`, { method: 'POST' });
    assert.equal(reauth.status, 204);
    current = await resubscribed(current, 4000, 'reauthenticate');

    // 1013: AppSync gone and the relay's re-dials used up. The emulator comes
    // back once the browser has its 1013; Amplify's reconnect ~5 s later
    // finds it.
    const stopped = await emulator.stop('SIGTERM', 10_000);
    assert.equal(stopped.code, 0, `emulator exit status ${JSON.stringify(stopped)}`);
    await wire.waitFor((f) => f.kind === 'close' && f.socket === current, 30_000, 'close 1013');
    await startEmulator();
    await resubscribed(current, 1013, 'upstream gone');
    assert.deepEqual(inbox.errors, []);
    await channel.close();
  }),
);

test(`[${MODE}] a shared channel whose relay key AppSync refuses errors that subscription as SubscriptionProcessingError, not an auth failure; the socket and its other subscriptions stay`, { timeout: 90_000 }, () =>
  explained(async () => {
    // The relay restarted with a --shared-api-key-file key the emulator
    // (Cognito only) refuses.
    const dir = mkdtempSync(join(tmpdir(), 'amplify-node-key-'));
    const keyFile = join(dir, 'key');
    writeFileSync(keyFile, 'da2-notakeythisapitakes\n');
    await relay.stop('SIGTERM', 10_000);
    await startRelay([...relayArgs, '--shared-api-key-file', keyFile]);
    try {
      const plain = await withDeadline(events.connect(CHANNEL), 15_000, 'events.connect');
      const inbox = collector();
      const sub = plain.subscribe(inbox.observer);
      await withDeadline(sub.ready, 15_000, 'subscription ready');
      const from = wire.frames.length;
      const shared = await withDeadline(events.connect(SHARED_CHANNEL), 15_000, 'events.connect (shared)');
      const refused = collector();
      shared.subscribe(refused.observer);
      await until(() => refused.errors.length > 0, 10_000, "the shared subscription's error callback");
      const said = JSON.stringify(refused.errors);
      // Before: UnauthorizedException — an app reading it sends a signed-in
      // user to sign in again, for the relay operator's bad key.
      assert.match(said, /SubscriptionProcessingError/, said);
      assert.doesNotMatch(said, /UnauthorizedException|da2-/, said);
      await stillOneSocketAndReceiving(from, inbox);
      await plain.close();
    } finally {
      await relay.stop('SIGTERM', 10_000);
      await startRelay();
      rmSync(dir, { recursive: true, force: true });
    }
  }),
);

test(`[${MODE}] a channel policy's refusals reach the app: the subscription's error callback, a rejected publish, a typed events.post error; the socket and its other subscriptions stay`, { timeout: 90_000 }, () =>
  explained(async () => {
    // The relay restarted with a --channel-policy that allows CHANNEL and
    // nothing under /default/denied.
    const dir = mkdtempSync(join(tmpdir(), 'amplify-node-policy-'));
    const policyFile = join(dir, 'policy.toml');
    writeFileSync(
      policyFile,
      `[[rule]]\nchannels = ["${CHANNEL}", "/default/shared/*"]\nallow = ["subscribe", "publish"]\n`,
    );
    await freshSocket();
    await relay.stop('SIGTERM', 10_000);
    await startRelay([...relayArgs, '--channel-policy', policyFile]);
    try {
      const plain = await withDeadline(events.connect(CHANNEL), 15_000, 'events.connect');
      const inbox = collector();
      const sub = plain.subscribe(inbox.observer);
      await withDeadline(sub.ready, 15_000, 'subscription ready');
      const from = wire.frames.length;

      const denied = await withDeadline(events.connect('/default/denied/room'), 15_000, 'events.connect (denied)');
      const refused = collector();
      denied.subscribe(refused.observer);
      await until(() => refused.errors.length > 0, 10_000, "the denied subscription's error callback");
      const said = JSON.stringify(refused.errors);
      assert.match(said, /UnauthorizedException/, said);

      // A publish on the denied channel over the socket: rejected, typed.
      let publishError;
      try {
        await withDeadline(denied.publish({ n: 1 }), 15_000, 'channel.publish (denied)');
      } catch (e) {
        publishError = e;
      }
      assert.ok(publishError, 'the denied publish resolved');
      assert.match(String(publishError?.message ?? publishError), /UnauthorizedException/, String(publishError));

      // The same over HTTP: 403, typed as AWS types it.
      let postError;
      try {
        await withDeadline(events.post('/default/denied/room', { n: 2 }), 15_000, 'events.post (denied)');
      } catch (e) {
        postError = e;
      }
      assert.ok(postError, 'the denied events.post resolved');
      assert.equal(postError.name, 'AccessDeniedException', String(postError));
      assert.equal(postError.message, 'channel_policy');

      // The allowed channel takes a WebSocket publish too.
      const viaWs = `policy-ws-${randomBytes(4).toString('hex')}`;
      await withDeadline(plain.publish({ mark: viaWs }), 15_000, 'channel.publish (allowed)');
      await inbox.waitEvent((e) => e?.mark === viaWs, 10_000, 'the WebSocket publish on the allowed channel');
      await stillOneSocketAndReceiving(from, inbox);
      await plain.close();
    } finally {
      await relay.stop('SIGTERM', 10_000);
      await startRelay();
      rmSync(dir, { recursive: true, force: true });
    }
  }),
);
