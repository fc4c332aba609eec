#!/usr/bin/env node
// A real OpenID Connect provider (oidc-provider) on loopback for the OIDC tests: it issues user
// access tokens as provider-signed JWTs without a browser, and a control port lets a test mint
// tokens, rotate the signing keys and take the provider down and up. See README.md.
//
//   node provider.mjs [--port N] [--control-port N] [--issuer-path /realms/test]
//                     [--algs RS256,ES256] [--audience AUD] [--omit-jwk-alg]
//                     [--max-lifetime SECONDS] [--watch-stdin]
//
// stdout carries exactly one line, a JSON object, once both ports listen; everything else
// (including oidc-provider's own notices) goes to stderr.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

// oidc-provider prints its notices with console.info (stdout): keep stdout for the ready line.
console.info = console.error;
console.log = console.error;

const { default: Provider, errors: oidcErrors } = await import('oidc-provider');

const HOST = '127.0.0.1';
const CLIENT_ID = 'callsign-test';
const CLIENT_SECRET = 'callsign-test-secret';
const GRANT_TYPE = 'urn:callsign:params:oauth:grant-type:test-user';

// Signing algorithms this harness can make keys for, and the key each needs.
const KEY_SPECS = {
  RS256: { type: 'rsa', options: { modulusLength: 2048 } },
  PS256: { type: 'rsa', options: { modulusLength: 2048 } },
  ES256: { type: 'ec', options: { namedCurve: 'P-256' } },
  ES384: { type: 'ec', options: { namedCurve: 'P-384' } },
  EdDSA: { type: 'ed25519', options: {} },
};

// Claims the provider sets itself; extra claims may not name them (use `override`).
const REGISTERED = new Set(['iss', 'sub', 'aud', 'exp', 'iat', 'nbf', 'jti', 'client_id', 'scope', 'cnf', 'authorization_details']);
const HEADER_OVERRIDABLE = new Set(['kid', 'typ']);
const MAX_BODY = 64 * 1024;

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    'control-port': { type: 'string', default: '0' },
    'issuer-path': { type: 'string', default: '' },
    algs: { type: 'string', default: 'RS256,ES256' },
    audience: { type: 'string', default: 'api://callsign' },
    'omit-jwk-alg': { type: 'boolean', default: false },
    'max-lifetime': { type: 'string', default: '900' },
    'watch-stdin': { type: 'boolean', default: false },
  },
  strict: true,
});

function fail(message) {
  console.error(`oidc harness: ${message}`);
  process.exit(2);
}

const publicPortArg = Number.parseInt(args.port, 10);
const controlPortArg = Number.parseInt(args['control-port'], 10);
const maxLifetime = Number.parseInt(args['max-lifetime'], 10);
if (!(publicPortArg >= 0 && publicPortArg < 65536)) fail('--port must be 0..65535');
if (!(controlPortArg >= 0 && controlPortArg < 65536)) fail('--control-port must be 0..65535');
if (!(maxLifetime >= 0)) fail('--max-lifetime must be a number of seconds (0: no limit)');
let issuerPath = args['issuer-path'].replace(/\/+$/, '');
if (issuerPath && !/^(\/[A-Za-z0-9._~-]+)+$/.test(issuerPath)) fail('--issuer-path must look like /realms/test');
const initialAlgs = args.algs.split(',').map((s) => s.trim()).filter(Boolean);
for (const alg of initialAlgs) if (!KEY_SPECS[alg]) fail(`unsupported alg ${alg} (one of ${Object.keys(KEY_SPECS).join(', ')})`);
if (!initialAlgs.length) fail('--algs names no algorithm');
const defaultAudience = args.audience;
const omitJwkAlg = args['omit-jwk-alg'];

// ---------------------------------------------------------------------------------------------
// Keys. Each key is a private JWK with a kid (its RFC 7638 thumbprint) and, unless
// --omit-jwk-alg, its `alg`. The first key of an algorithm in the list is the one that signs.

function thumbprint(jwk) {
  let members;
  switch (jwk.kty) {
    case 'RSA': members = { e: jwk.e, kty: jwk.kty, n: jwk.n }; break;
    case 'EC': members = { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y }; break;
    case 'OKP': members = { crv: jwk.crv, kty: jwk.kty, x: jwk.x }; break;
    default: throw new Error(`unexpected kty ${jwk.kty}`);
  }
  return crypto.createHash('sha256').update(JSON.stringify(members)).digest('base64url');
}

function newKey(alg) {
  const spec = KEY_SPECS[alg];
  const { privateKey } = crypto.generateKeyPairSync(spec.type, spec.options);
  const jwk = privateKey.export({ format: 'jwk' });
  jwk.kid = thumbprint(jwk);
  jwk.use = 'sig';
  jwk.alg = alg;
  return jwk;
}

// Each entry: { alg, jwk }. The alg is ours to track even when the JWK does not publish it.
let keys = initialAlgs.map((alg) => ({ alg, jwk: newKey(alg) }));

function publicKeys() {
  return keys.map(({ alg, jwk }) => ({ kid: jwk.kid, alg, kty: jwk.kty, crv: jwk.crv }));
}

function signingKid(alg) {
  return keys.find((k) => k.alg === alg)?.jwk.kid;
}

function signingKids() {
  const out = {};
  for (const { alg } of keys) out[alg] ??= signingKid(alg);
  return out;
}

// ---------------------------------------------------------------------------------------------
// The provider. It reads its keys at construction, so a key change builds a new instance in
// this process and swaps it in behind the same listeners.

let ISSUER; // http://127.0.0.1:<public port><issuer path>, once the public port is known
let provider;
let handle; // provider.callback() of the current instance

function useProvider(p) {
  provider = p;
  handle = p.callback();
}

// Per-token material for the token being minted, found by the provider's hooks.
const pending = new WeakMap();

// The provider's storage, shared by the instances a key change builds. JWT access tokens are not
// stored at all; this only keeps oidc-provider from using (and warning about) its own default.
const storage = new Map();
class MemoryAdapter {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  async upsert(id, payload, expiresIn) {
    storage.set(this.key(id), { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : Infinity });
  }

  async find(id) {
    const entry = storage.get(this.key(id));
    if (!entry) return undefined;
    if (entry.expiresAt < Date.now()) {
      storage.delete(this.key(id));
      return undefined;
    }
    return entry.payload;
  }

  async findByUid(uid) {
    for (const [key, entry] of storage) {
      if (key.startsWith(`${this.model}:`) && entry.payload.uid === uid) return this.find(key.slice(this.model.length + 1));
    }
    return undefined;
  }

  async findByUserCode(userCode) {
    for (const [key, entry] of storage) {
      if (key.startsWith(`${this.model}:`) && entry.payload.userCode === userCode) return this.find(key.slice(this.model.length + 1));
    }
    return undefined;
  }

  async consume(id) {
    const entry = storage.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) { storage.delete(this.key(id)); }

  async revokeByGrantId(grantId) {
    for (const [key, entry] of storage) if (entry.payload.grantId === grantId) storage.delete(key);
  }
}

function buildProvider() {
  const jwks = {
    keys: keys.map(({ jwk }) => {
      const copy = { ...jwk };
      if (omitJwkAlg) delete copy.alg;
      return copy;
    }),
  };
  const p = new Provider(ISSUER, {
    adapter: MemoryAdapter,
    clients: [{
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      grant_types: [GRANT_TYPE],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    jwks,
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    features: {
      devInteractions: { enabled: false },
    },
    // The extra claims of a minted token (tid, oid, groups, roles, ...).
    extraTokenClaims(ctx, token) {
      return pending.get(token)?.claims;
    },
    formats: {
      customizers: {
        // Test-only changes to a token the provider is about to sign: backdating, nbf,
        // overridden registered claims, kid/typ header fields.
        jwt(ctx, token, jwt) {
          const t = pending.get(token);
          if (!t) return;
          if (t.backdate) {
            jwt.payload.iat -= t.backdate;
            jwt.payload.exp -= t.backdate;
          }
          if (t.nbf !== undefined) jwt.payload.nbf = jwt.payload.iat + t.nbf;
          for (const [name, value] of Object.entries(t.override)) {
            if (value === null) delete jwt.payload[name];
            else jwt.payload[name] = value;
          }
          if (Object.keys(t.header).length) jwt.header = { ...jwt.header, ...t.header };
        },
      },
    },
    ttl: {
      AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL ?? 600,
    },
  });
  p.registerGrantType(
    GRANT_TYPE,
    userTokenGrant,
    ['subject', 'audience', 'claims', 'alg', 'kid', 'ttl', 'scope', 'backdate', 'nbf', 'override', 'header'],
  );
  p.on('server_error', (ctx, err) => console.error('oidc-provider server_error:', err));
  return p;
}

function parseJsonObject(text, name) {
  if (text === undefined) return {};
  let value;
  try {
    value = JSON.parse(text);
  } catch {
    throw new oidcErrors.InvalidRequest(`${name} must be a JSON object`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new oidcErrors.InvalidRequest(`${name} must be a JSON object`);
  }
  return value;
}

function parseInteger(text, name, { min, max, fallback }) {
  if (text === undefined) return fallback;
  if (!/^-?\d+$/.test(text)) throw new oidcErrors.InvalidRequest(`${name} must be an integer`);
  const n = Number.parseInt(text, 10);
  if (n < min || n > max) throw new oidcErrors.InvalidRequest(`${name} must be within ${min}..${max}`);
  return n;
}

// The test grant: an access token for `subject` at `audience`, signed as a JWT (RFC 9068) by the
// provider with its key for `alg`, carrying `claims`. It goes through the provider's own token
// endpoint, client authentication, AccessToken model and JWT format.
async function userTokenGrant(ctx) {
  const { params, client } = ctx.oidc;
  const sub = params.subject;
  if (!sub) throw new oidcErrors.InvalidRequest('missing required parameter subject');
  const audience = params.audience ?? defaultAudience;
  const alg = params.alg ?? 'RS256';
  if (!keys.some((k) => k.alg === alg)) {
    throw new oidcErrors.InvalidRequest(`no signing key for alg ${alg}; keys: ${[...new Set(keys.map((k) => k.alg))].join(', ')}`);
  }
  const kid = params.kid;
  if (kid !== undefined && !keys.some((k) => k.alg === alg && k.jwk.kid === kid)) {
    throw new oidcErrors.InvalidRequest(`no ${alg} key with kid ${kid}`);
  }
  const ttl = parseInteger(params.ttl, 'ttl', { min: 1, max: 7 * 24 * 3600, fallback: 600 });
  const backdate = parseInteger(params.backdate, 'backdate', { min: 0, max: 10 * 365 * 24 * 3600, fallback: 0 });
  const nbf = parseInteger(params.nbf, 'nbf', { min: -365 * 24 * 3600, max: 365 * 24 * 3600, fallback: undefined });
  const claims = parseJsonObject(params.claims, 'claims');
  for (const name of Object.keys(claims)) {
    if (REGISTERED.has(name)) throw new oidcErrors.InvalidRequest(`claims may not set ${name}; use override`);
  }
  const override = parseJsonObject(params.override, 'override');
  if ('aud' in override && !override.aud) {
    throw new oidcErrors.InvalidRequest('override may not remove aud: the provider makes JWT access tokens only with an audience');
  }
  const header = parseJsonObject(params.header, 'header');
  for (const name of Object.keys(header)) {
    if (!HEADER_OVERRIDABLE.has(name)) throw new oidcErrors.InvalidRequest(`header may set only ${[...HEADER_OVERRIDABLE].join(', ')}`);
  }

  const { AccessToken, ResourceServer } = ctx.oidc.provider;
  const token = new AccessToken({
    accountId: sub,
    client,
    expiresIn: ttl,
    gty: GRANT_TYPE,
    scope: params.scope || undefined,
  });
  token.resourceServer = new ResourceServer(audience, {
    audience,
    scope: params.scope ?? '',
    accessTokenFormat: 'jwt',
    accessTokenTTL: ttl,
    // Named explicitly: with --omit-jwk-alg the provider alone could pick any RSA key.
    jwt: { sign: { alg, kid: kid ?? signingKid(alg) } },
  });
  pending.set(token, {
    claims: Object.keys(claims).length ? claims : undefined, backdate, nbf, override, header,
  });
  ctx.oidc.entity('AccessToken', token);
  const value = await token.save();

  ctx.body = {
    access_token: value,
    token_type: token.tokenType,
    expires_in: token.expiration,
    issued_token_type: 'urn:ietf:params:oauth:token-type:jwt',
    ...(token.scope ? { scope: token.scope } : undefined),
  };
}

// ---------------------------------------------------------------------------------------------
// Listeners: the public one (the issuer's origin; can be taken down), an internal one that the
// control port mints through (never down, never advertised) and the control one.

function dispatch(req, res) {
  // The issuer may have a path (/realms/test): the provider is mounted there.
  if (issuerPath) {
    const url = req.url ?? '/';
    if (url !== issuerPath && !url.startsWith(`${issuerPath}/`) && !url.startsWith(`${issuerPath}?`)) {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: 'not_found' }));
      return;
    }
    req.originalUrl = url;
    req.url = url.slice(issuerPath.length) || '/';
  }
  handle(req, res);
}

let state = { up: true, mode: null };
let cacheControl = null; // Cache-Control sent with the discovery document and the JWKS
const held = new Set(); // requests held by mode "hang"
const HANG_LIMIT_MS = 120_000;
const counts = { discovery: 0, jwks: 0, token: 0, other: 0, served: 0, refused: 0 };

function classify(url) {
  const path = (url ?? '/').split('?')[0].slice(issuerPath.length);
  if (path === '/.well-known/openid-configuration') return 'discovery';
  if (path === '/jwks') return 'jwks';
  if (path === '/token') return 'token';
  return 'other';
}

const publicServer = http.createServer((req, res) => {
  counts[classify(req.url)] += 1;
  if (!state.up && state.mode === '503') {
    counts.refused += 1;
    res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '1', connection: 'close' });
    res.end(JSON.stringify({ error: 'temporarily_unavailable', error_description: 'provider is down (test control)' }));
    return;
  }
  if (!state.up && state.mode === 'hang') {
    counts.refused += 1;
    const entry = { req, res };
    held.add(entry);
    entry.timer = setTimeout(() => { held.delete(entry); req.socket.destroy(); }, HANG_LIMIT_MS);
    res.on('close', () => { clearTimeout(entry.timer); held.delete(entry); });
    return;
  }
  counts.served += 1;
  if (cacheControl !== null && ['discovery', 'jwks'].includes(classify(req.url))) {
    res.setHeader('cache-control', cacheControl);
  }
  dispatch(req, res);
});
publicServer.keepAliveTimeout = 5_000;

const internalServer = http.createServer(dispatch);

function listen(server, port) {
  return new Promise((resolve, reject) => {
    const onError = (err) => { server.off('listening', onListening); reject(err); };
    const onListening = () => { server.off('error', onError); resolve(server.address().port); };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen({ host: HOST, port, exclusive: true });
  });
}

function releaseHeld() {
  for (const entry of held) {
    clearTimeout(entry.timer);
    entry.req.socket.destroy();
  }
  held.clear();
}

let publicPort;

async function goDown(mode) {
  if (!state.up) throw new ControlError(409, `provider is already down (${state.mode})`);
  if (mode === 'refuse') {
    await new Promise((resolve) => {
      publicServer.close(() => resolve());
      publicServer.closeAllConnections();
    });
  } else {
    // Established keep-alive connections would otherwise keep being answered normally.
    publicServer.closeIdleConnections();
  }
  state = { up: false, mode };
}

async function goUp() {
  if (state.up) return;
  if (state.mode === 'refuse') {
    try {
      await listen(publicServer, publicPort);
    } catch (err) {
      throw new ControlError(500, `could not listen on ${HOST}:${publicPort} again: ${err.code ?? err.message}`);
    }
  }
  releaseHeld();
  state = { up: true, mode: null };
}

// ---------------------------------------------------------------------------------------------
// Control interface (JSON over HTTP on its own loopback port).

class ControlError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function readJson(req) {
  return new Promise((resolve, reject) => {
    let size = 0;
    const chunks = [];
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new ControlError(413, 'body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      if (!text.trim()) { resolve({}); return; }
      try {
        const value = JSON.parse(text);
        if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error();
        resolve(value);
      } catch {
        reject(new ControlError(400, 'body must be a JSON object'));
      }
    });
    req.on('error', reject);
  });
}

function decodePart(part) {
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}

let internalPort;

async function mint(body) {
  if (typeof body.sub !== 'string' || !body.sub) throw new ControlError(400, 'sub must be a non-empty string');
  const form = new URLSearchParams({ grant_type: GRANT_TYPE, subject: body.sub });
  const str = (name, param = name) => {
    if (body[name] === undefined) return;
    if (typeof body[name] !== 'string') throw new ControlError(400, `${name} must be a string`);
    form.set(param, body[name]);
  };
  const int = (name) => {
    if (body[name] === undefined) return;
    if (!Number.isInteger(body[name])) throw new ControlError(400, `${name} must be an integer`);
    form.set(name, String(body[name]));
  };
  const obj = (name) => {
    if (body[name] === undefined) return;
    if (body[name] === null || typeof body[name] !== 'object' || Array.isArray(body[name])) {
      throw new ControlError(400, `${name} must be an object`);
    }
    form.set(name, JSON.stringify(body[name]));
  };
  str('aud', 'audience');
  str('alg');
  str('kid');
  str('scope');
  int('ttl');
  int('backdate');
  int('nbf');
  obj('claims');
  obj('override');
  obj('header');

  const res = await fetch(`http://${HOST}:${internalPort}${issuerPath}/token`, {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${encodeURIComponent(CLIENT_ID)}:${encodeURIComponent(CLIENT_SECRET)}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: form,
    signal: AbortSignal.timeout(10_000),
  });
  const answer = await res.json();
  if (!res.ok) {
    throw new ControlError(res.status === 500 ? 500 : 400, `token endpoint: ${answer.error}: ${answer.error_description ?? ''}`.trim());
  }
  const [h, p] = answer.access_token.split('.');
  const header = decodePart(h);
  return { ...answer, kid: header.kid, alg: header.alg, header, claims: decodePart(p) };
}

async function rotate(body) {
  const alg = body.alg ?? 'RS256';
  if (!KEY_SPECS[alg]) throw new ControlError(400, `unsupported alg ${alg} (one of ${Object.keys(KEY_SPECS).join(', ')})`);
  const keepOld = body.keep_old ?? true;
  if (typeof keepOld !== 'boolean') throw new ControlError(400, 'keep_old must be a boolean');
  const previous = signingKid(alg) ?? null;
  const key = { alg, jwk: newKey(alg) };
  // The new key goes first: the provider signs with the first key it finds for the alg.
  const rest = keepOld ? keys : keys.filter((k) => k.alg !== alg);
  keys = [key, ...rest];
  useProvider(buildProvider());
  return {
    alg, kid: key.jwk.kid, previous_kid: previous, kept_old: keepOld, keys: publicKeys(),
  };
}

function drop(body) {
  if (typeof body.kid !== 'string') throw new ControlError(400, 'kid must be a string');
  const victim = keys.find((k) => k.jwk.kid === body.kid);
  if (!victim) throw new ControlError(404, `no key with kid ${body.kid}`);
  if (keys.length === 1) throw new ControlError(409, 'cannot drop the last key');
  keys = keys.filter((k) => k !== victim);
  useProvider(buildProvider());
  return { dropped: body.kid, keys: publicKeys() };
}

function status() {
  return {
    issuer: ISSUER,
    up: state.up,
    mode: state.mode,
    cache_control: cacheControl,
    keys: publicKeys(),
    signing: signingKids(),
    requests: { ...counts },
  };
}

const routes = {
  'GET /status': async () => status(),
  'POST /token': async (req) => mint(await readJson(req)),
  'POST /rotate': async (req) => rotate(await readJson(req)),
  'POST /keys/drop': async (req) => drop(await readJson(req)),
  'POST /down': async (req) => {
    const body = await readJson(req);
    const mode = body.mode ?? 'refuse';
    if (!['refuse', '503', 'hang'].includes(mode)) throw new ControlError(400, 'mode must be refuse, 503 or hang');
    await goDown(mode);
    return status();
  },
  'POST /up': async () => { await goUp(); return status(); },
  'POST /cache': async (req) => {
    const body = await readJson(req);
    const value = body.cache_control ?? null;
    if (value !== null && (typeof value !== 'string' || !/^[\x20-\x7e]*$/.test(value))) {
      throw new ControlError(400, 'cache_control must be a header value string or null');
    }
    cacheControl = value;
    return status();
  },
  'POST /requests/reset': async () => {
    for (const name of Object.keys(counts)) counts[name] = 0;
    return status();
  },
  'POST /shutdown': async () => { setImmediate(() => shutdown(0)); return { stopping: true }; },
};

const controlServer = http.createServer(async (req, res) => {
  const route = routes[`${req.method} ${(req.url ?? '/').split('?')[0]}`];
  let status = 200;
  let body;
  try {
    if (!route) throw new ControlError(404, `no control route ${req.method} ${req.url}`);
    body = await route(req);
  } catch (err) {
    status = err instanceof ControlError ? err.status : 500;
    body = { error: err.message };
    if (!(err instanceof ControlError)) console.error('oidc harness control error:', err);
  }
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
});

// ---------------------------------------------------------------------------------------------
// Start, report, stop.

let stopping = false;
function shutdown(code) {
  if (stopping) return;
  stopping = true;
  // The process may end on its own once the listeners close, before the timer below fires.
  process.exitCode = code;
  releaseHeld();
  for (const server of [publicServer, internalServer, controlServer]) {
    server.close();
    server.closeAllConnections();
  }
  setTimeout(() => process.exit(code), 200).unref();
}

process.on('SIGTERM', () => shutdown(0));
process.on('SIGINT', () => shutdown(0));

try {
  publicPort = await listen(publicServer, publicPortArg);
  ISSUER = `http://${HOST}:${publicPort}${issuerPath}`;
  useProvider(buildProvider());
  internalPort = await listen(internalServer, 0);
  const controlPort = await listen(controlServer, controlPortArg);

  if (maxLifetime > 0) {
    setTimeout(() => {
      console.error(`oidc harness: --max-lifetime ${maxLifetime}s reached, exiting`);
      shutdown(3);
    }, maxLifetime * 1000).unref();
  }
  if (args['watch-stdin']) {
    process.stdin.on('end', () => shutdown(0));
    process.stdin.on('close', () => shutdown(0));
    process.stdin.resume();
  }

  process.stdout.write(`${JSON.stringify({
    issuer: ISSUER,
    port: publicPort,
    discovery: `${ISSUER}/.well-known/openid-configuration`,
    jwks_uri: `${ISSUER}/jwks`,
    token_endpoint: `${ISSUER}/token`,
    control: `http://${HOST}:${controlPort}`,
    control_port: controlPort,
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    grant_type: GRANT_TYPE,
    audience: defaultAudience,
    keys: publicKeys(),
    pid: process.pid,
  })}\n`);
} catch (err) {
  fail(`could not start: ${err.code ?? ''} ${err.message}`);
}
