// What page JavaScript could see, for the Chromium tests: the DevTools
// protocol's record of every WebSocket frame and HTTP response body a page
// received, plus document.cookie and Web Storage — and the check that no
// token is in any of it. Shared by browser.test.mjs and nextjs.test.mjs.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/** Debian's headless Chromium through playwright-core. */
export async function launchBrowser(extraArgs = []) {
  assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM}: apt-get install chromium (or set CHROMIUM_PATH)`);
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', ...extraArgs],
  });
}

/**
 * Records what page JavaScript could have seen: WebSocket frames both ways
 * and every HTTP response body, through a CDP session on the page.
 */
export async function captureWire(page) {
  const cdp = await page.context().newCDPSession(page);
  const wire = { frames: [], bodies: [], pending: [] };
  await cdp.send('Network.enable');
  cdp.on('Network.webSocketFrameReceived', (e) => wire.frames.push({ dir: 'in', data: e.response.payloadData }));
  cdp.on('Network.webSocketFrameSent', (e) => wire.frames.push({ dir: 'out', data: e.response.payloadData }));
  cdp.on('Network.loadingFinished', (e) => {
    wire.pending.push(
      cdp
        .send('Network.getResponseBody', { requestId: e.requestId })
        .then((b) => wire.bodies.push(b.base64Encoded ? Buffer.from(b.body, 'base64').toString('latin1') : b.body))
        .catch(() => {}),
    );
  });
  return wire;
}

/** Everything page JavaScript can read directly. */
export async function jsVisible(page) {
  return page.evaluate(() => ({
    cookie: document.cookie,
    local: JSON.stringify({ ...localStorage }),
    session: JSON.stringify({ ...sessionStorage }),
  }));
}

export function assertNoTokens(where, haystacks, tokens) {
  for (const [name, token] of Object.entries(tokens)) {
    assert.ok(token && token.length > 20, `${name} token missing from the cookie jar`);
    // Any 24-character window of the token: catches a token cut, wrapped
    // or re-encoded only at its edges, not just an exact copy.
    const probes = [token.slice(0, 24), token.slice(token.length >> 1, (token.length >> 1) + 24), token.slice(-24)];
    haystacks.forEach((text, i) => {
      for (const p of probes) {
        assert.ok(!String(text).includes(p), `${name} token reachable by page JavaScript in ${where}[${i}]: ${String(text).slice(0, 200)}`);
      }
    });
  }
}
