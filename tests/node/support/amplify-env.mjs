// Makes the real aws-amplify v6 `events` client run under Node against the
// relay, the way it runs in a browser whose session lives in HTTP-only
// cookies:
//
// * `globalThis.WebSocket` becomes a subclass of `ws`'s WebSocket that adds
//   the `Cookie` and `Origin` headers a browser would send on a same-origin
//   upgrade. Amplify always dials `wss://`; when the relay is plain HTTP the
//   subclass rewrites `wss:` to `ws:`; when it is HTTPS it keeps `wss:` and
//   trusts `ca` (the relay's self-signed certificate), or skips certificate
//   verification when no `ca` is given.
// * `globalThis.fetch` adds the same `Cookie` and `Origin` for requests to
//   the relay's origin (Amplify's `events.post`); over HTTPS it goes through
//   `node:https` so that `ca` applies (Node's fetch takes no CA option).
//
// Every frame sent and received on the shimmed sockets is recorded in
// `frames` (token-free: Amplify holds only a placeholder key) so tests can
// wait on protocol milestones and print the wire on failure.

import { request as httpsRequest } from 'node:https';
import WS from 'ws';

/**
 * Cookie-name encoding Amplify's cookie storage uses (js-cookie's variant of
 * encodeURIComponent: `@` -> `%40`, while `# $ & + ^ \` |` stay literal).
 */
export function amplifyCookieEncode(name) {
  return encodeURIComponent(name).replace(/%(2[346B]|5E|60|7C)/g, decodeURIComponent);
}

/** The `Cookie` header value for an Amplify cookie session. */
export function amplifyCookieHeader(clientId, username, tokens) {
  const prefix = `CognitoIdentityServiceProvider.${clientId}`;
  const user = amplifyCookieEncode(username);
  return [
    `${prefix}.LastAuthUser=${user}`,
    `${prefix}.${user}.accessToken=${tokens.accessToken}`,
    `${prefix}.${user}.idToken=${tokens.idToken}`,
    `${prefix}.${user}.refreshToken=${tokens.refreshToken}`,
  ].join('; ');
}

/**
 * Installs the WebSocket and fetch shims. `origin` is the relay's public
 * origin (`http://127.0.0.1:PORT` or `https://...`), `ca` the PEM that
 * signs its certificate (HTTPS only; optional). Returns a recorder
 * `{ frames, sockets, waitFor(predicate, ms, what, from), note(entry), dump(),
 * setCookie(value) }` (`setCookie` changes what later requests carry, as a
 * browser whose cookies were cleared or replaced).
 */
export function installBrowserShims({ origin, cookie: initialCookie, ca }) {
  let cookie = initialCookie;
  const relay = new URL(origin);
  const secure = relay.protocol === 'https:';
  const tls = ca ? { ca } : { rejectUnauthorized: false };
  const frames = [];
  const sockets = [];
  const waiters = new Set();
  const t0 = Date.now();
  const record = (entry) => {
    frames.push({ t: Date.now() - t0, ...entry });
    for (const w of waiters) w.check();
  };

  class RelayWebSocket extends WS {
    constructor(url, protocols, options = {}) {
      const target = new URL(String(url));
      const sameOrigin = target.host === relay.host;
      if (sameOrigin && !secure && target.protocol === 'wss:') target.protocol = 'ws:';
      const headers = { ...(options.headers || {}) };
      if (sameOrigin) {
        if (cookie) headers.Cookie = cookie;
        headers.Origin = origin;
      }
      super(target.toString(), protocols, {
        ...options,
        headers,
        ...(secure && sameOrigin ? tls : {}),
      });
      const n = sockets.length;
      sockets.push(this);
      record({ socket: n, kind: 'dial', url: target.toString() });
      this.on('upgrade', (res) =>
        record({ socket: n, kind: 'upgrade', status: res.statusCode, protocol: res.headers['sec-websocket-protocol'] }),
      );
      this.on('message', (data, isBinary) => {
        const text = isBinary ? `<binary ${data.length} bytes>` : data.toString();
        record({ socket: n, kind: 'recv', text, msg: safeParse(text) });
      });
      this.on('close', (code, reason) => record({ socket: n, kind: 'close', code, reason: String(reason) }));
      this.on('error', (err) => record({ socket: n, kind: 'error', message: err.message }));
    }

    send(data, ...rest) {
      const text = String(data);
      record({ socket: sockets.indexOf(this), kind: 'send', text, msg: safeParse(text) });
      return super.send(data, ...rest);
    }
  }
  globalThis.WebSocket = RelayWebSocket;

  const realFetch = globalThis.fetch;
  globalThis.fetch = (input, init = {}) => {
    const url = new URL(typeof input === 'string' || input instanceof URL ? String(input) : input.url);
    if (url.host !== relay.host) return realFetch(input, init);
    const headers = new Headers(init.headers || (input instanceof Request ? input.headers : undefined));
    if (cookie) headers.set('Cookie', cookie);
    else headers.delete('Cookie');
    headers.set('Origin', origin);
    const sent = secure ? httpsFetch(url, { ...init, headers }, tls) : realFetch(input, { ...init, headers });
    return sent.then((resp) => {
      record({ kind: 'fetch', method: init.method || 'GET', url: url.toString(), status: resp.status });
      return resp;
    });
  };

  /** Resolves with the first frame matching `predicate` (from index `from`). */
  function waitFor(predicate, ms, what, from = 0) {
    return new Promise((resolve, reject) => {
      const w = {
        check() {
          for (let i = from; i < frames.length; i++) {
            if (predicate(frames[i])) {
              waiters.delete(w);
              clearTimeout(timer);
              resolve(frames[i]);
              return;
            }
          }
        },
      };
      const timer = setTimeout(() => {
        waiters.delete(w);
        reject(new Error(`timed out after ${ms} ms waiting for ${what}\n${dumpFrames(frames)}`));
      }, ms);
      waiters.add(w);
      w.check();
    });
  }

  return {
    frames,
    sockets,
    waitFor,
    note: record,
    dump: () => dumpFrames(frames),
    setCookie: (value) => {
      cookie = value;
    },
  };
}

/** Amplify configuration for the relay, as the README prescribes. */
export function relayEventsConfig(origin) {
  return {
    API: {
      Events: {
        endpoint: `${origin}/event`,
        region: 'us-east-1',
        defaultAuthMode: 'apiKey',
        apiKey: 'placeholder',
      },
    },
  };
}

/** Just enough of `fetch` over `node:https` for Amplify's `events.post`. */
function httpsFetch(url, init, tls) {
  return new Promise((resolve, reject) => {
    const headers = Object.fromEntries(init.headers.entries());
    const req = httpsRequest(url, { method: init.method || 'GET', headers, ...tls, signal: init.signal }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const out = new Headers();
        for (const [k, v] of Object.entries(res.headers)) {
          for (const one of [].concat(v)) out.append(k, one);
        }
        resolve(new Response(Buffer.concat(chunks), { status: res.statusCode, headers: out }));
      });
    });
    req.on('error', reject);
    req.end(init.body ?? undefined);
  });
}

function safeParse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

export function dumpFrames(frames) {
  return frames
    .map((f) => {
      const { t, socket, kind, msg: _msg, ...rest } = f;
      return `  +${t}ms${socket === undefined ? '' : ` #${socket}`} ${kind} ${JSON.stringify(rest)}`;
    })
    .join('\n');
}
