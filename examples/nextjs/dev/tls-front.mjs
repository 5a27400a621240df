// HTTPS in front of MiniStack's plain-HTTP gateway, for what must be reached
// over TLS: Amplify builds every managed-login URL as https://<oauth.domain>/…
// (adapter src/auth/utils/cognitoHostedUIEndpoints.ts) and the adapter's
// token validator fetches https://cognito-idp.<region>.amazonaws.com/<pool>/
// .well-known/jwks.json. Requests are passed through unchanged (Host kept,
// X-Forwarded-Proto: https added), with one addition:
//
// POST /oauth2/revoke — real Cognito's token revocation endpoint, which the
// adapter's sign-out callback calls (src/auth/utils/authNTokens.ts,
// revokeAuthNTokens). MiniStack 1.5.33 has no such route: it answers 400
// {"__type":"SerializationException"}, which the adapter takes for success
// (it only looks for an `error` field), so the refresh token would silently
// stay alive. The front serves it with MiniStack's own RevokeToken action
// (the same operation, as the Cognito API) and answers like Cognito: 200 with
// an empty body, or 400 {"error": …}.
//
// Every request is recorded in `log` ({ method, path, target, host,
// sessionCookie }), so a test can show who called Cognito for what.

import { createServer } from 'node:https';
import { request as httpRequest } from 'node:http';
import { readFileSync } from 'node:fs';

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

async function revoke(target, req, res) {
  const form = new URLSearchParams((await readBody(req)).toString('utf8'));
  const token = form.get('token');
  let clientId = form.get('client_id');
  const basic = /^Basic\s+(\S+)/i.exec(req.headers.authorization ?? '');
  if (!clientId && basic) clientId = Buffer.from(basic[1], 'base64').toString('utf8').split(':')[0];
  const answer = (status, body) => {
    const text = body ? JSON.stringify(body) : '';
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
    res.end(text);
  };
  if (!token || !clientId) return answer(400, { error: 'invalid_request' });
  const resp = await fetch(`${target}/`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': 'AWSCognitoIdentityProviderService.RevokeToken' },
    body: JSON.stringify({ Token: token, ClientId: clientId }),
    signal: AbortSignal.timeout(10_000),
  });
  await resp.arrayBuffer();
  if (resp.status === 200) return answer(200);
  return answer(400, { error: resp.status === 400 ? 'unsupported_token_type' : 'invalid_request' });
}

/**
 * Starts the front on `host:port` (port 0 = any) for MiniStack at `target`
 * (http://127.0.0.1:PORT). Resolves with { port, log, close() }.
 */
export function startTlsFront({ target, cert, key, host = '127.0.0.1', port = 0 }) {
  const log = [];
  const upstream = new URL(target);
  const server = createServer({ cert: readFileSync(cert), key: readFileSync(key) }, (req, res) => {
    const path = req.url ?? '/';
    log.push({ at: Date.now(), method: req.method, path: path.split('?')[0], target: req.headers['x-amz-target'] ?? '', host: req.headers.host ?? '', sessionCookie: /CognitoIdentityServiceProvider\./.test(req.headers.cookie ?? '') });
    if (req.method === 'POST' && path.split('?')[0] === '/oauth2/revoke') {
      revoke(target, req, res).catch((e) => {
        res.writeHead(502, { 'content-type': 'text/plain' });
        res.end(`revoke failed: ${e.message}`);
      });
      return;
    }
    const headers = { ...req.headers, 'x-forwarded-proto': 'https' };
    const out = httpRequest(
      { host: upstream.hostname, port: upstream.port, method: req.method, path, headers },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
      },
    );
    out.on('error', (e) => {
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`MiniStack unreachable: ${e.message}`);
    });
    req.pipe(out);
  });
  return new Promise((resolve, reject) => {
    server.on('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve({
        port: server.address().port,
        log,
        close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(() => r()); }),
      });
    });
  });
}
