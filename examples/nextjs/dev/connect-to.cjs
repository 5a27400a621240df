// Preload for the Next.js server in a local run (NODE_OPTIONS=--require
// <this file>): like curl's --connect-to, makes TLS connections to chosen
// host:port pairs go to another address, while the TLS server name and the
// certificate check stay those of the original host.
//
//   NODE_CONNECT_TO="cognito-idp.us-east-1.amazonaws.com:443=127.0.0.1:8444"
//
// Why it exists: @aws-amplify/adapter-nextjs validates the tokens it reads
// from the cookies with aws-jwt-verify's CognitoJwtVerifier, created from the
// pool id alone (src/utils/createTokenValidator.ts), which fetches the keys
// from https://cognito-idp.<region>.amazonaws.com/<poolId>/.well-known/jwks.json
// (aws-jwt-verify dist/esm/cognito-verifier.js, issuer → jwksUri) with
// node:https (dist/esm/https-node.js). Neither takes another URL. Against an
// emulator that host must therefore be reached somewhere else; this does it
// for node:https and fetch (both end in tls.connect), nothing is patched in
// Amplify, and the certificate is still checked (NODE_EXTRA_CA_CERTS).
'use strict';

const tls = require('node:tls');

const rules = new Map();
for (const entry of (process.env.NODE_CONNECT_TO || '').split(',').map((s) => s.trim()).filter(Boolean)) {
  const m = entry.match(/^([^\s:=]+):(\d+)=([^\s=]+):(\d+)$/);
  if (!m) throw new Error(`NODE_CONNECT_TO: cannot parse ${JSON.stringify(entry)} (want host:port=host:port)`);
  rules.set(`${m[1].toLowerCase()}:${m[2]}`, { host: m[3], port: Number(m[4]) });
}

if (rules.size > 0) {
  const connect = tls.connect;
  tls.connect = function connectTo(...args) {
    const options = args[0];
    if (options && typeof options === 'object' && !options.socket && typeof options.host === 'string') {
      const to = rules.get(`${options.host.toLowerCase()}:${options.port ?? 443}`);
      if (to) {
        args[0] = { ...options, host: to.host, port: to.port, servername: options.servername || options.host };
      }
    }
    return connect.apply(this, args);
  };
}
