// Child processes for the Node-side integration tests: cognito-local, the
// relay binary (`serve`, `emulate`, `demo`). Every child is tracked and
// killed by `killAll()` (call it from `after()`), and by a synchronous
// `exit` handler as a last resort. Every wait has a deadline.

import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdtempSync, mkdirSync, writeFileSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const nodeDir = join(here, '..');
const MAX_LINES = 400;

const children = new Set();
const tempDirs = new Set();
process.on('exit', () => {
  for (const c of children) {
    try {
      c.proc.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
});

/** A port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Rejects after `ms` with a message naming `what`. */
export function withDeadline(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * Spawns a tracked child. Output lines go to a ring buffer (`output()`),
 * and to the test's stderr when `APPSYNC_RELAY_TEST_ECHO` is set.
 */
export function startChild(name, cmd, args, options = {}) {
  const proc = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], ...options });
  const lines = [];
  const lineListeners = new Set();
  const echo = !!process.env.APPSYNC_RELAY_TEST_ECHO;
  const child = {
    name,
    proc,
    output: () => lines.join('\n'),
    exited: new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal }))),
    /** Resolves with the first output line matching `re` (its match). */
    waitForLine(re, ms) {
      return withDeadline(
        new Promise((resolve, reject) => {
          for (const l of lines) {
            const m = l.match(re);
            if (m) return resolve(m);
          }
          const listener = (l) => {
            const m = l.match(re);
            if (m) {
              lineListeners.delete(listener);
              resolve(m);
            }
          };
          lineListeners.add(listener);
          child.exited.then(({ code, signal }) =>
            reject(new Error(`${name} exited (${code ?? signal}) before printing ${re}\n${child.output()}`)),
          );
        }),
        ms,
        `${name} to print ${re}\n${child.output()}`,
      );
    },
    /** SIGTERM (or `signal`), then SIGKILL if it has not exited in `ms`. */
    async stop(signal = 'SIGTERM', ms = 10_000) {
      if (proc.exitCode !== null || proc.signalCode !== null) return child.exited;
      proc.kill(signal);
      const timer = setTimeout(() => proc.kill('SIGKILL'), ms);
      const status = await child.exited;
      clearTimeout(timer);
      return status;
    },
  };
  for (const [stream, src] of [
    ['out', proc.stdout],
    ['err', proc.stderr],
  ]) {
    let partial = '';
    src.setEncoding('utf8');
    src.on('data', (chunk) => {
      const parts = (partial + chunk).split('\n');
      partial = parts.pop();
      for (const raw of parts) {
        // eslint-disable-next-line no-control-regex
        const l = raw.replace(/\x1b\[[0-9;]*[A-Za-z]/g, '');
        if (echo) process.stderr.write(`[${name} ${stream}] ${l}\n`);
        lines.push(`[${stream}] ${l}`);
        if (lines.length > MAX_LINES) lines.shift();
        for (const f of lineListeners) f(l);
      }
    });
  }
  children.add(child);
  proc.on('exit', () => children.delete(child));
  return child;
}

/** Kills every child still running (SIGKILL after a short grace period). */
export async function killAll() {
  await Promise.all([...children].map((c) => c.stop('SIGTERM', 3_000)));
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
  tempDirs.clear();
}

/** Polls `url` until it answers 200, the child exits, or the deadline passes. */
export async function waitHttpOk(child, url, ms) {
  const deadline = Date.now() + ms;
  let last = 'no answer';
  while (Date.now() < deadline) {
    if (child.proc.exitCode !== null || child.proc.signalCode !== null) {
      throw new Error(`${child.name} exited while waiting for ${url}\n${child.output()}`);
    }
    try {
      const resp = await fetch(url, { signal: AbortSignal.timeout(1_000) });
      if (resp.status === 200) return;
      last = `HTTP ${resp.status}`;
    } catch (e) {
      last = e.cause?.code ?? e.message;
    }
    await sleep(50);
  }
  throw new Error(`${url} not ready within ${ms} ms (last: ${last})\n${child.output()}`);
}

/** Polls until something accepts HTTP on `url` (any status). */
export async function waitHttpListening(child, url, ms) {
  const deadline = Date.now() + ms;
  let last = 'no answer';
  while (Date.now() < deadline) {
    if (child.proc.exitCode !== null || child.proc.signalCode !== null) {
      throw new Error(`${child.name} exited while waiting for ${url}\n${child.output()}`);
    }
    try {
      await fetch(url, { signal: AbortSignal.timeout(1_000) });
      return;
    } catch (e) {
      last = e.cause?.code ?? e.message;
    }
    await sleep(50);
  }
  throw new Error(`${url} not listening within ${ms} ms (last: ${last})\n${child.output()}`);
}

/**
 * cognito-local (pinned in package.json) on a fresh port with a fresh data
 * directory, one pool and one app client (no secret, USER_PASSWORD_AUTH).
 * Mirrors tests/support/cognito_local.rs.
 */
export async function startCognitoLocal() {
  const bin = realpathSync(join(nodeDir, 'node_modules', '.bin', 'cognito-local'));
  let lastErr;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const base = `http://127.0.0.1:${port}`;
    const dataDir = mkdtempSync(join(tmpdir(), 'cognito-local-node-'));
    tempDirs.add(dataDir);
    mkdirSync(join(dataDir, '.cognito'));
    writeFileSync(
      join(dataDir, '.cognito', 'config.json'),
      JSON.stringify({
        UserPoolDefaults: { UsernameAttributes: [] },
        TokenConfig: { IssuerDomain: base },
        ServerConfig: { port, hostname: '127.0.0.1' },
      }),
    );
    // The wrapper exits when its stdin closes, so the emulator dies with us.
    const wrapper = "process.stdin.on('close', () => process.exit(0)).resume(); require(process.argv[1]);";
    const env = { ...process.env, PORT: String(port), HOST: '127.0.0.1', NODE_NO_WARNINGS: '1' };
    delete env.COGNITO_LOCAL_DEVMODE;
    const child = startChild('cognito-local', process.execPath, ['-e', wrapper, bin], { cwd: dataDir, env });
    try {
      await child.waitForLine(/Cognito Local running on (\S+)/, 30_000);
    } catch (e) {
      lastErr = e;
      await child.stop('SIGKILL');
      if (/EADDRINUSE/.test(child.output())) continue;
      throw e;
    }
    return makeCognitoApi(child, base);
  }
  throw lastErr;
}

function makeCognitoApi(child, base) {
  const api = {
    child,
    base,
    async call(action, body) {
      const resp = await fetch(`${base}/`, {
        method: 'POST',
        headers: {
          'X-Amz-Target': `AWSCognitoIdentityProviderService.${action}`,
          'Content-Type': 'application/x-amz-json-1.1',
        },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(10_000),
      });
      const text = await resp.text();
      if (resp.status !== 200) throw new Error(`cognito-local ${action}: HTTP ${resp.status}: ${text}`);
      return JSON.parse(text);
    },
    async provision() {
      const pool = await api.call('CreateUserPool', { PoolName: 'appsync-relay-node' });
      api.userPoolId = pool.UserPool.Id;
      const client = await api.call('CreateUserPoolClient', {
        UserPoolId: api.userPoolId,
        ClientName: 'appsync-relay-node',
        GenerateSecret: false,
        ExplicitAuthFlows: ['ALLOW_USER_PASSWORD_AUTH', 'ALLOW_REFRESH_TOKEN_AUTH'],
      });
      api.clientId = client.UserPoolClient.ClientId;
      api.issuer = `${base}/${api.userPoolId}`;
      api.jwksUrl = `${api.issuer}/.well-known/jwks.json`;
    },
    async createUser(username, password) {
      await api.call('AdminCreateUser', {
        UserPoolId: api.userPoolId,
        Username: username,
        MessageAction: 'SUPPRESS',
        TemporaryPassword: password,
      });
      await api.call('AdminSetUserPassword', {
        UserPoolId: api.userPoolId,
        Username: username,
        Password: password,
        Permanent: true,
      });
    },
    async signIn(username, password) {
      const resp = await api.call('InitiateAuth', {
        ClientId: api.clientId,
        AuthFlow: 'USER_PASSWORD_AUTH',
        AuthParameters: { USERNAME: username, PASSWORD: password },
      });
      const r = resp.AuthenticationResult;
      if (!r) throw new Error(`InitiateAuth returned no tokens: ${JSON.stringify(resp)}`);
      return { accessToken: r.AccessToken, idToken: r.IdToken, refreshToken: r.RefreshToken };
    },
  };
  return api;
}
