// Throwaway TLS material for a local run, made with the `openssl` CLI: a CA
// (trusted by Node through NODE_EXTRA_CA_CERTS) and one leaf certificate it
// signs for every name the run serves over TLS — the app origin (localhost),
// the managed-login domain (127.0.0.1) and the Cognito issuer host the
// adapter fetches the JWKS from. Chromium is told to trust the leaf's key
// alone (--ignore-certificate-errors-spki-list=<spki>), nothing wider.

import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const run = (args, input) => execFileSync('openssl', args, { input, stdio: [input ? 'pipe' : 'ignore', 'pipe', 'pipe'] });

/**
 * Writes ca.pem, cert.pem (leaf), key.pem into `dir` for `dnsNames` and
 * `ipAddresses`. Returns the paths and `spki`, the base64 SHA-256 of the
 * leaf's SubjectPublicKeyInfo (what Chromium's SPKI list takes).
 */
export function makeCerts(dir, { dnsNames = ['localhost'], ipAddresses = ['127.0.0.1'] } = {}) {
  const p = (f) => join(dir, f);
  run(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-subj', '/CN=appsync-relay example local CA', '-keyout', p('ca-key.pem'), '-out', p('ca.pem'),
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  run(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-subj', '/CN=localhost', '-keyout', p('key.pem'), '-out', p('leaf.csr')]);
  const san = [...dnsNames.map((n) => `DNS:${n}`), ...ipAddresses.map((a) => `IP:${a}`)].join(',');
  writeFileSync(p('leaf.ext'), [
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature',
    'extendedKeyUsage=serverAuth',
    `subjectAltName=${san}`,
    '',
  ].join('\n'));
  run(['x509', '-req', '-in', p('leaf.csr'), '-CA', p('ca.pem'), '-CAkey', p('ca-key.pem'), '-CAcreateserial',
    '-days', '2', '-extfile', p('leaf.ext'), '-out', p('cert.pem')]);
  const spkiDer = run(['pkey', '-in', p('key.pem'), '-pubout', '-outform', 'DER']);
  const spki = run(['dgst', '-sha256', '-binary'], spkiDer).toString('base64');
  return { dir, ca: p('ca.pem'), cert: p('cert.pem'), key: p('key.pem'), spki, caPem: readFileSync(p('ca.pem'), 'utf8') };
}
