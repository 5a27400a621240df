// The example's whole local stack, on loopback:
//
//   MiniStack (Cognito + AppSync Events, plain HTTP)
//   └─ TLS front (dev/tls-front.mjs): https://127.0.0.1:<front> — managed
//      login (the Cognito "domain") and the issuer host's JWKS
//   appsync-relay serve (TLS): https://localhost:<app> — /event* relayed to
//   AppSync Events with the user's token, everything else proxied to
//   └─ next start (the prebuilt app, plain HTTP on 127.0.0.1)
//
// `node dev/stack.mjs` runs it for a person (run-local.sh); the Chromium test
// (tests/node/nextjs.test.mjs) imports `startStack` and drives it.

import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { makeCerts } from './certs.mjs';
import { startTlsFront } from './tls-front.mjs';

const here = dirname(fileURLToPath(import.meta.url));
export const APP_DIR = resolve(here, '..');
export const REPO = resolve(APP_DIR, '..', '..');
export const REGION = 'us-east-1';
export const MINISTACK_VERSION = '1.5.33';
export const PASSWORD = 'Passw0rd!board';
/** The Cognito group every demo user is in: their board is its channel. */
export const TEAM = 'red';
/** The relay's channel policy for the board (see the file). */
export const CHANNEL_POLICY = resolve(here, '..', 'channel-policy.toml');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function freePort() {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolvePort(port));
    });
  });
}

/** Polls `url` until it answers (`okOnly`: with 200), the child exits, or `ms` pass. */
async function waitHttp(child, url, ms, { okOnly = true, insecure = false } = {}) {
  const deadline = Date.now() + ms;
  let last = 'no answer';
  while (Date.now() < deadline) {
    if (child && (child.proc.exitCode !== null || child.proc.signalCode !== null)) {
      throw new Error(`${child.name} exited while waiting for ${url}\n${child.output()}`);
    }
    try {
      const resp = await fetch(url, { signal: AbortSignal.timeout(2_000), redirect: 'manual' });
      await resp.arrayBuffer();
      if (!okOnly || resp.status === 200) return;
      last = `HTTP ${resp.status}`;
    } catch (e) {
      last = e.cause?.code ?? e.message;
    }
    await sleep(100);
  }
  throw new Error(`${url} not ready within ${ms} ms (last: ${last})${child ? `\n${child.output()}` : ''}`);
}

// --- MiniStack -----------------------------------------------------------

export function ministackBin() {
  const bin = process.env.MINISTACK_BIN || join(REPO, 'target', 'ministack-venv', 'bin', 'ministack');
  if (!existsSync(bin)) {
    throw new Error(
      `MiniStack is not installed at ${bin}: run \`python3 -m venv target/ministack-venv && ` +
        `target/ministack-venv/bin/pip install ministack==${MINISTACK_VERSION} cryptography\` in the repository ` +
        '(what `bash tests/run.sh --install-only` does), or set MINISTACK_BIN',
    );
  }
  return bin;
}

async function startMiniStack(startChild, dir, port) {
  port ||= await freePort();
  const child = startChild('ministack', ministackBin(), [], {
    env: {
      ...process.env,
      GATEWAY_PORT: String(port),
      BIND_HOST: '127.0.0.1',
      STATE_DIR: dir,
      TMPDIR: dir,
      IOT_MTLS_ENABLED: '0',
      MINISTACK_REGION: REGION,
      APPSYNC_EVENTS_KA_INTERVAL_SECS: '5',
    },
  });
  const base = `http://127.0.0.1:${port}`;
  await waitHttp(child, `${base}/_ministack/health`, 30_000);
  return { child, port, base };
}

function ministackApi(base) {
  async function call(method, path, headers, body) {
    const resp = await fetch(`${base}${path}`, { method, headers, body, signal: AbortSignal.timeout(10_000) });
    const text = await resp.text();
    if (resp.status !== 200) throw new Error(`MiniStack ${method} ${path} ${headers['x-amz-target'] ?? ''}: HTTP ${resp.status}: ${text}`);
    return text ? JSON.parse(text) : {};
  }
  const sigv4 = `AWS4-HMAC-SHA256 Credential=test/20260101/${REGION}/appsync/aws4_request, SignedHeaders=host, Signature=0`;
  return {
    cognito: (action, body) =>
      call('POST', '/', { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': `AWSCognitoIdentityProviderService.${action}` }, JSON.stringify(body)),
    // AppSync's control plane is routed by a SigV4-shaped Authorization
    // (not checked by MiniStack without AUTH=true).
    appsync: (method, path, body) =>
      call(method, path, { 'content-type': 'application/json', authorization: sigv4 }, JSON.stringify(body)),
  };
}

/**
 * A user pool with a managed-login domain, an app client for the adapter's
 * code flow (PKCE, no secret), `users`, and an AppSync Events API with the
 * `default` namespace authorized by the pool.
 */
async function provision(api, { appOrigin, tokenSeconds, users }) {
  const pool = (await api.cognito('CreateUserPool', { PoolName: 'team-board' })).UserPool.Id;
  const domain = `team-board-${randomBytes(4).toString('hex')}`;
  await api.cognito('CreateUserPoolDomain', { UserPoolId: pool, Domain: domain });
  const client = (
    await api.cognito('CreateUserPoolClient', {
      UserPoolId: pool,
      ClientName: 'team-board-web',
      GenerateSecret: false,
      AllowedOAuthFlowsUserPoolClient: true,
      AllowedOAuthFlows: ['code'],
      AllowedOAuthScopes: ['openid', 'email', 'profile', 'aws.cognito.signin.user.admin'],
      CallbackURLs: [`${appOrigin}/api/auth/sign-in-callback`],
      LogoutURLs: [`${appOrigin}/api/auth/sign-out-callback`],
      SupportedIdentityProviders: ['COGNITO'],
      ExplicitAuthFlows: ['ALLOW_USER_SRP_AUTH', 'ALLOW_REFRESH_TOKEN_AUTH'],
      AccessTokenValidity: tokenSeconds,
      IdTokenValidity: tokenSeconds,
      TokenValidityUnits: { AccessToken: 'seconds', IdToken: 'seconds' },
      EnableTokenRevocation: true,
    })
  ).UserPoolClient.ClientId;
  for (const username of users) {
    await api.cognito('AdminCreateUser', {
      UserPoolId: pool,
      Username: username,
      MessageAction: 'SUPPRESS',
      UserAttributes: [
        { Name: 'email', Value: `${username}@example.com` },
        { Name: 'email_verified', Value: 'true' },
      ],
    });
    await api.cognito('AdminSetUserPassword', { UserPoolId: pool, Username: username, Password: PASSWORD, Permanent: true });
  }
  // Every demo user is on team "red": the board they share is
  // /default/teams/red/board, which the relay's channel policy
  // (channel-policy.toml) opens to that group's members only.
  await api.cognito('CreateGroup', { UserPoolId: pool, GroupName: TEAM });
  for (const username of users) {
    await api.cognito('AdminAddUserToGroup', { UserPoolId: pool, Username: username, GroupName: TEAM });
  }
  const cognitoMode = { authType: 'AMAZON_COGNITO_USER_POOLS' };
  const created = await api.appsync('POST', '/v2/apis', {
    name: 'team-board',
    eventConfig: {
      authProviders: [{ authType: 'AMAZON_COGNITO_USER_POOLS', cognitoConfig: { userPoolId: pool, awsRegion: REGION } }],
      connectionAuthModes: [cognitoMode],
      defaultPublishAuthModes: [cognitoMode],
      defaultSubscribeAuthModes: [cognitoMode],
    },
  });
  const apiId = created.api.apiId;
  await api.appsync('POST', `/v2/apis/${apiId}/channelNamespaces`, { name: 'default' });
  return { pool, clientId: client, domain, apiId, httpHost: created.api.dns.HTTP, realtimeHost: created.api.dns.REALTIME };
}

// --- the relay and the app ------------------------------------------------

export function relayBin() {
  const bin = process.env.APPSYNC_RELAY_BIN || join(REPO, 'target', 'debug', 'appsync-relay');
  if (!existsSync(bin)) throw new Error(`appsync-relay not built at ${bin}: run \`cargo build\` (or set APPSYNC_RELAY_BIN)`);
  return bin;
}

export function assertAppBuilt() {
  if (!existsSync(join(APP_DIR, 'node_modules', 'next', 'package.json'))) {
    throw new Error(`examples/nextjs has no node_modules: run \`npm ci\` in ${APP_DIR} (\`bash tests/run.sh --install-only\` does it)`);
  }
  if (!existsSync(join(APP_DIR, '.next', 'BUILD_ID'))) {
    throw new Error(`examples/nextjs is not built: run \`npx next build\` in ${APP_DIR} (\`bash tests/run.sh --install-only\` does it)`);
  }
}

/**
 * Starts everything. Options: `startChild` (processes.mjs-compatible),
 * `tokenSeconds` (access/ID token lifetime; MiniStack accepts seconds),
 * `users`, `appPort`/`frontPort`/`ministackPort` (0 = any free port),
 * `relayArgs` (extra flags). Resolves with what a caller needs to drive it.
 */
export async function startStack({
  startChild,
  tokenSeconds = 3600,
  users = ['alice', 'bob'],
  appPort = 0,
  frontPort = 0,
  ministackPort = 0,
  relayArgs = [],
  log = () => {},
} = {}) {
  if (!startChild) ({ startChild } = await import('./children.mjs'));
  assertAppBuilt();
  const relay = relayBin();
  const dir = mkdtempSync(join(tmpdir(), 'nextjs-example-'));
  const started = [];
  const stop = async () => {
    for (const s of started.reverse()) {
      try {
        await s();
      } catch {
        /* best effort */
      }
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const t0 = Date.now();
    const certs = makeCerts(dir, {
      dnsNames: ['localhost', `cognito-idp.${REGION}.amazonaws.com`],
      ipAddresses: ['127.0.0.1'],
    });
    appPort ||= await freePort();
    const appOrigin = `https://localhost:${appPort}`;

    const ms = await startMiniStack(startChild, join(dir, 'ministack'), ministackPort);
    started.push(() => ms.child.stop());
    log(`MiniStack up on ${ms.base} (${Date.now() - t0} ms)`);
    const front = await startTlsFront({ target: ms.base, cert: certs.cert, key: certs.key, port: frontPort });
    started.push(() => front.close());
    const cognitoDomain = `127.0.0.1:${front.port}`;

    const api = ministackApi(ms.base);
    const p = await provision(api, { appOrigin, tokenSeconds, users });
    const issuer = `https://cognito-idp.${REGION}.amazonaws.com/${p.pool}`;

    // The Next.js server: plain HTTP on loopback, only the relay talks to it.
    const nextPort = await freePort();
    const nodeOptions = [process.env.NODE_OPTIONS, `--require ${join(here, 'connect-to.cjs')}`].filter(Boolean).join(' ');
    const next = startChild('next', process.execPath, [join(APP_DIR, 'node_modules', 'next', 'dist', 'bin', 'next'), 'start', '-H', '127.0.0.1', '-p', String(nextPort)], {
      cwd: APP_DIR,
      env: {
        ...process.env,
        NODE_ENV: 'production',
        NEXT_TELEMETRY_DISABLED: '1',
        AMPLIFY_APP_ORIGIN: appOrigin,
        AWS_REGION: REGION,
        COGNITO_USER_POOL_ID: p.pool,
        COGNITO_USER_POOL_CLIENT_ID: p.clientId,
        COGNITO_DOMAIN: cognitoDomain,
        // Trust the run's CA (managed login's token endpoint, the JWKS, the
        // relay's HTTP publish) and reach the issuer host at the front.
        NODE_EXTRA_CA_CERTS: certs.ca,
        NODE_OPTIONS: nodeOptions,
        NODE_CONNECT_TO: `cognito-idp.${REGION}.amazonaws.com:443=127.0.0.1:${front.port}`,
      },
    });
    started.push(() => next.stop());

    // The relay: TLS on the app's public origin, MiniStack upstream.
    const admin = await freePort();
    const msHost = (h) => `${h.replace(/:\d+$/, '')}:${ms.port}`;
    const relayChild = startChild('relay', relay, [
      'serve',
      '--listen', `127.0.0.1:${appPort}`,
      '--admin-listen', `127.0.0.1:${admin}`,
      '--tls-cert', certs.cert,
      '--tls-key', certs.key,
      '--appsync-http-endpoint', `http://${msHost(p.httpHost)}/event`,
      '--appsync-realtime-endpoint', `ws://${msHost(p.realtimeHost)}/event/realtime`,
      '--appsync-address', '127.0.0.1',
      '--cognito-user-pool-id', p.pool,
      '--cognito-client-id', p.clientId,
      '--cognito-issuer', issuer,
      '--cognito-jwks-url', `${ms.base}/${p.pool}/.well-known/jwks.json`,
      '--cognito-endpoint', `${ms.base}/`,
      '--allowed-origin', appOrigin,
      '--app-upstream', `http://127.0.0.1:${nextPort}`,
      '--channel-policy', CHANNEL_POLICY,
      ...relayArgs,
    ], { env: { ...process.env, APPSYNC_RELAY_LOG: process.env.APPSYNC_RELAY_LOG || 'info' } });
    started.push(() => relayChild.stop());

    await Promise.all([
      waitHttp(next, `http://127.0.0.1:${nextPort}/`, 60_000, { okOnly: false }),
      waitHttp(relayChild, `http://127.0.0.1:${admin}/readyz`, 30_000),
    ]);
    log(`stack up: relay ${appOrigin}, next 127.0.0.1:${nextPort}, managed login https://${cognitoDomain} (${Date.now() - t0} ms)`);

    return {
      appOrigin,
      adminUrl: `http://127.0.0.1:${admin}`,
      cognitoDomain,
      ministack: ms.base,
      cognito: api.cognito,
      pool: p.pool,
      clientId: p.clientId,
      domain: p.domain,
      apiId: p.apiId,
      issuer,
      users: users.map((username) => ({ username, password: PASSWORD })),
      certs,
      front,
      children: { ministack: ms.child, next, relay: relayChild },
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}

// --- `node dev/stack.mjs` -------------------------------------------------

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const arg = (name, fallback) => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : fallback;
  };
  const stack = await startStack({
    appPort: Number(arg('port', 8443)),
    frontPort: Number(arg('login-port', 8444)),
    tokenSeconds: Number(arg('token-seconds', 300)),
    log: (m) => console.error(m),
  });
  console.log(`
Team board: ${stack.appOrigin}/

  Sign in as ${stack.users.map((u) => `${u.username} / ${u.password}`).join('   or   ')}
  (two browser profiles or a private window for the second user).

  Certificates come from a throwaway CA (${stack.certs.ca}); the browser
  warns once for ${stack.appOrigin} and once for https://${stack.cognitoDomain}
  (managed login). Access tokens live ${arg('token-seconds', 300)} s; the relay renews them.
  Ctrl-C stops everything.`);
  const shutdown = async () => {
    await stack.stop();
    process.exit(0);
  };
  process.on('SIGINT', shutdown);
  process.on('SIGTERM', shutdown);
}
