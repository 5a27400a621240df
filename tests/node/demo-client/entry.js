// The demo page's client: the real aws-amplify v6 `events` API, configured
// for the relay as the README's "Browser configuration" says, behind a tiny
// API on `window.relayDemo` that src/demo/index.html drives.
//
// Built into src/demo/amplify-events.js (committed, served by the demo at
// /demo/amplify-events.js) with `npm run build:demo` in tests/node.
//
// The page holds no token: the relay reads the HTTP-only session cookies on
// the same-origin WebSocket upgrade and POST, strips Amplify's placeholder
// API key and injects the user's Cognito token server-side.

import { Amplify } from 'aws-amplify';
import { events } from 'aws-amplify/data';
import { Hub } from 'aws-amplify/utils';

// Amplify always dials wss://. When the demo is served over plain HTTP
// (loopback, before TLS), point its same-origin socket at ws:// instead.
if (typeof location !== 'undefined' && location.protocol === 'http:') {
  const NativeWebSocket = window.WebSocket;
  class SameOriginPlainWebSocket extends NativeWebSocket {
    constructor(url, protocols) {
      const target = new URL(String(url), location.href);
      if (target.protocol === 'wss:' && target.host === location.host) target.protocol = 'ws:';
      super(target.toString(), protocols);
    }
  }
  window.WebSocket = SameOriginPlainWebSocket;
}

let current = null; // { name, channel, subscription }
const stateListeners = new Set();
Hub.listen('api', ({ payload }) => {
  if (payload.event === 'ConnectionStateChange') {
    for (const f of stateListeners) f(payload.data.connectionState);
  }
});

async function close() {
  const c = current;
  current = null;
  if (c) await c.channel.close();
}

window.relayDemo = {
  /** Points Amplify's Events API at `origin` (default: this page's origin). */
  configure(origin = location.origin) {
    Amplify.configure({
      API: {
        Events: {
          endpoint: `${origin}/event`,
          region: 'us-east-1',
          defaultAuthMode: 'apiKey',
          apiKey: 'placeholder', // never a real key: the relay removes it
        },
      },
    });
  },

  /**
   * `events.connect(name)` + `channel.subscribe(...)`; resolves once the
   * subscription is acknowledged. `onEvent(event)` gets each event (parsed
   * JSON), `onError(error)` a subscription failure.
   */
  async connect(name, onEvent, onError = () => {}) {
    await close();
    const channel = await events.connect(name);
    const subscription = channel.subscribe({
      next: (msg) => onEvent(msg.event),
      error: (err) => onError(err),
    });
    current = { name, channel, subscription };
    await subscription.ready;
  },

  /** Publishes over the WebSocket (`channel.publish`). */
  async publishWs(name, obj) {
    if (current && current.name === name) return current.channel.publish(obj);
    const channel = await events.connect(name);
    try {
      return await channel.publish(obj);
    } finally {
      channel.close();
    }
  },

  /** Publishes over HTTP (`events.post`); resolves with the failed events, if any. */
  publishHttp(name, obj) {
    return events.post(name, obj);
  },

  /** `channel.close()` for the open subscription. */
  close,

  /** Calls `f(state)` on Amplify's connection state changes (e.g. `Connected`, `ConnectionDisrupted`). */
  onConnectionState(f) {
    stateListeners.add(f);
    return () => stateListeners.delete(f);
  },
};
