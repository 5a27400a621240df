// A second, independent aws-amplify client for amplify-node.test.mjs. It
// runs in a worker thread, so it has its own module instances and therefore
// its own Amplify singleton and its own WebSocket to the relay (a second
// browser tab, in effect).
//
// Protocol with the parent: it posts `{ op: 'ready' }` once configured, then
// answers each `{ seq, op, ... }` with `{ seq, ok, result | error }`.
//   { op: 'publish', channel, event }  events.connect(channel) + channel.publish(event)
//   { op: 'post', channel, event }     events.post(channel, event)
//   { op: 'frames' }                   the wire log of this worker's sockets

import { parentPort, workerData } from 'node:worker_threads';
import { Amplify } from 'aws-amplify';
import { events } from 'aws-amplify/data';
import { installBrowserShims, relayEventsConfig } from './amplify-env.mjs';

const { origin, cookie, ca } = workerData;
const wire = installBrowserShims({ origin, cookie, ca });
Amplify.configure(relayEventsConfig(origin));

const ops = {
  async publish({ channel, event }) {
    // A fresh `connect` each time: after the relay restarts, the old socket
    // is gone and only `connect` dials again (Amplify re-dials by itself only
    // for sockets that carry subscriptions).
    const ch = await events.connect(channel);
    return ch.publish(event);
  },
  async post({ channel, event }) {
    return events.post(channel, event);
  },
  async frames() {
    return wire.dump();
  },
};

parentPort.on('message', async (msg) => {
  try {
    const result = await ops[msg.op](msg);
    parentPort.postMessage({ seq: msg.seq, ok: true, result: result ?? null });
  } catch (err) {
    parentPort.postMessage({
      seq: msg.seq,
      ok: false,
      error: `${err?.message ?? JSON.stringify(err)}\n--- peer wire ---\n${wire.dump()}`,
    });
  }
});
parentPort.postMessage({ op: 'ready' });
