#!/usr/bin/env node
// node-oidc-provider as a comparison target for scripts/bench.sh: the same token-issue load
// (client_credentials, ES256-signed JWT access tokens) against a well-known OAuth server, to
// compare server CPU per issued token. Loopback (127.0.0.1) only; not for anything else.
//
//   cd bench/oidc-provider && npm ci && PORT=8123 node server.mjs
//
// The primary generates one ES256 (P-256) key and forks WORKERS (default 2) cluster workers
// that share PORT and all sign with that key. stdout carries exactly one line,
// `listening on http://127.0.0.1:<port>`, once every worker listens; oidc-provider's own notices
// and warnings go to stderr. SIGTERM (or SIGINT) stops the workers and exits 0; a worker that
// dies otherwise makes the primary stop the others and exit 1 (no respawn). The primary accepts
// the connections and hands them to the workers in turn (Node's cluster default on Linux), so
// the server's CPU is that of the primary and its workers together.
//
// The request that issues a token:
//   POST /token
//   Authorization: Basic base64("bench:bench-secret")
//   Content-Type: application/x-www-form-urlencoded
//   grant_type=client_credentials&scope=chat
//
// NODE_ENV: oidc-provider 9 does not read it (Koa only copies it to app.env, which nothing here
// uses); it defaults to "production" below for the workers anyway. The default in-memory adapter
// is used (each worker warns about it at start): JWT access tokens are not stored in it, so
// issuing them keeps no state.
// On Node 20, oidc-provider 9 prints an "Unsupported runtime" warning (it asks for Node 22+);
// the client_credentials path used here works.

import cluster from 'node:cluster';
import * as crypto from 'node:crypto';
import * as http from 'node:http';

const HOST = '127.0.0.1';
const KEY_ENV = 'BENCH_OIDC_SIGNING_JWK';
const RESOURCE = 'urn:callsign:bench';

function fail(message) {
  console.error(`oidc-provider bench: ${message}`);
  process.exit(2);
}

const port = Number(process.env.PORT);
if (!process.env.PORT || !Number.isInteger(port) || port < 1 || port > 65535) {
  fail('PORT must be set to a TCP port (1..65535)');
}

if (cluster.isPrimary) {
  const workers = Number(process.env.WORKERS ?? '2');
  if (!Number.isInteger(workers) || workers < 1 || workers > 64) fail('WORKERS must be 1..64');
  process.env.NODE_ENV ??= 'production';

  // The key comes out of the generation as PKCS #8 and is exported as a JWK from a key object of
  // its own (exporting the generated key object itself can deadlock Node 20 under GC).
  const { privateKey: pkcs8 } = crypto.generateKeyPairSync('ec', {
    namedCurve: 'P-256',
    publicKeyEncoding: { type: 'spki', format: 'der' },
    privateKeyEncoding: { type: 'pkcs8', format: 'der' },
  });
  const jwk = crypto.createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' }).export({ format: 'jwk' });
  jwk.kid = crypto.createHash('sha256')
    .update(JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y }))
    .digest('base64url');
  jwk.use = 'sig';
  jwk.alg = 'ES256';

  const live = new Set();
  let listening = 0;
  let stopping = false;
  let exitCode = 0;

  const stop = (code) => {
    if (stopping) return;
    stopping = true;
    exitCode = code;
    if (live.size === 0) process.exit(code);
    for (const worker of live) worker.process.kill('SIGTERM');
    // Workers that have not gone within 5 s are killed, and the primary exits non-zero.
    setTimeout(() => {
      for (const worker of live) worker.process.kill('SIGKILL');
      process.exit(code || 1);
    }, 5000).unref();
  };

  cluster.on('listening', () => {
    listening += 1;
    if (listening === workers) process.stdout.write(`listening on http://${HOST}:${port}\n`);
  });
  cluster.on('exit', (worker, code, signal) => {
    live.delete(worker);
    if (!stopping) {
      console.error(`oidc-provider bench: worker ${worker.process.pid} died (${signal ?? `exit ${code}`}), stopping`);
      stop(1);
    }
    if (live.size === 0) process.exit(exitCode);
  });
  process.on('SIGTERM', () => stop(0));
  process.on('SIGINT', () => stop(0));

  for (let i = 0; i < workers; i += 1) live.add(cluster.fork({ [KEY_ENV]: JSON.stringify(jwk) }));
} else {
  // oidc-provider prints its notices with console.info: keep stdout for the primary's line.
  console.info = console.error;
  console.log = console.error;

  const { default: Provider, errors } = await import('oidc-provider');
  const jwk = JSON.parse(process.env[KEY_ENV]);
  delete process.env[KEY_ENV];

  const provider = new Provider(`http://${HOST}:${port}`, {
    clients: [{
      client_id: 'bench',
      client_secret: 'bench-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    // The only key is ES256: without this the client's ID token alg (RS256 by default) would
    // have no key, and the provider would refuse the client's metadata.
    clientDefaults: { id_token_signed_response_alg: 'ES256' },
    jwks: { keys: [jwk] },
    scopes: ['openid', 'offline_access', 'chat', 'voip'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource) => {
          if (resource !== RESOURCE) throw new errors.InvalidTarget();
          return {
            scope: 'chat voip',
            audience: RESOURCE,
            accessTokenTTL: 86400,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'ES256' } },
          };
        },
      },
    },
    // The default would do the same, with a notice on the first token.
    ttl: { ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL ?? 600 },
  });

  const server = http.createServer(provider.callback());
  server.on('error', (err) => {
    console.error(`oidc-provider bench: worker ${process.pid} cannot listen on ${HOST}:${port}: ${err.code ?? err.message}`);
    process.exit(1);
  });
  server.listen({ host: HOST, port });
}
