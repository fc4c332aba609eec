#!/usr/bin/env node
// A real OpenID Connect provider (oidc-provider) on loopback for the OIDC tests: it issues user
// access tokens as provider-signed JWTs without a browser, completes interactive logins
// (authorization code + PKCE) without a login page for a subject set beforehand, and a control
// port lets a test mint tokens, choose who logs in next, rotate the signing keys and take the
// provider down and up. See README.md.
//
//   node provider.mjs [--port N] [--control-port N] [--issuer-path /realms/test]
//                     [--algs RS256,ES256] [--audience AUD] [--omit-jwk-alg]
//                     [--console-redirect-uri URI]... [--max-lifetime SECONDS] [--watch-stdin]
//
// stdout carries exactly one line, a JSON object, once both ports listen; everything else
// (including oidc-provider's own notices) goes to stderr.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

// oidc-provider prints its notices with console.info (stdout): keep stdout for the ready line.
console.info = console.error;
console.log = console.error;

const { default: Provider, errors: oidcErrors, interactionPolicy } = await import('oidc-provider');

const HOST = '127.0.0.1';
const CLIENT_ID = 'callsign-test';
const CLIENT_SECRET = 'callsign-test-secret';
const GRANT_TYPE = 'urn:callsign:params:oauth:grant-type:test-user';
// The public client of the interactive login (authorization code + PKCE S256, no secret).
const CONSOLE_CLIENT_ID = 'callsign-console';
// oidc-provider's OpenID Connect scopes (its defaults). The interactive login grants these for
// the ID token, and every scope asked for (these included, as Keycloak does) for the access token.
const OIDC_SCOPES = new Set(['openid', 'offline_access', 'profile', 'email', 'address', 'phone']);
// Algorithms the provider can sign ID tokens with by default, in order of preference.
const ID_TOKEN_ALGS = ['RS256', 'PS256', 'ES256', 'EdDSA'];
const DEFAULT_TTL = 600;

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
    'console-redirect-uri': { type: 'string', multiple: true, default: [] },
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
// The resource indicator (RFC 8707) an authorization request without `resource` is for: the
// audience itself when it is an absolute URI without fragment, as oidc-provider requires of
// resource indicators; else (`account`, a GUID) this URN, which stands for it.
const DEFAULT_RESOURCE = URL.parse(defaultAudience) && !defaultAudience.includes('#')
  ? defaultAudience
  : 'urn:callsign:params:oauth:resource:default-audience';

// The redirect URIs of the console client: absolute http(s) URIs without a fragment.
function checkRedirectUris(value) {
  if (!Array.isArray(value) || value.some((uri) => typeof uri !== 'string')) {
    return 'redirect_uris must be an array of strings';
  }
  for (const uri of value) {
    const url = URL.parse(uri);
    if (!url || !['http:', 'https:'].includes(url.protocol)) return `redirect URI ${uri} is not an absolute http(s) URI`;
    if (url.hash || uri.includes('#')) return `redirect URI ${uri} has a fragment`;
  }
  return null;
}

let consoleRedirectUris = args['console-redirect-uri']
  .flatMap((arg) => arg.split(','))
  .map((s) => s.trim())
  .filter(Boolean);
{
  const problem = checkRedirectUris(consoleRedirectUris);
  if (problem) fail(`--console-redirect-uri: ${problem}`);
}

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
  // The key comes out of the generation as PKCS #8 and is exported as a JWK from a key object of
  // its own. Exporting the generated key object itself can deadlock the process (Node 20): a
  // garbage collection during the export, which holds the key's lock, may finalize the
  // generation job, which takes the same lock.
  const { privateKey: pkcs8 } = crypto.generateKeyPairSync(spec.type, {
    ...spec.options,
    publicKeyEncoding: { type: 'spki', format: 'der' },
    privateKeyEncoding: { type: 'pkcs8', format: 'der' },
  });
  const jwk = crypto.createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' }).export({ format: 'jwk' });
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

function hasAlg(alg) {
  return keys.some((k) => k.alg === alg);
}

// The alg of the interactive login's access tokens unless the login names one: RS256 when there
// is such a key, else the alg of the first key.
function defaultAccessTokenAlg() {
  return hasAlg('RS256') ? 'RS256' : keys[0].alg;
}

// The console client's ID token alg (oidc-provider signs ID tokens with RS256, PS256, ES256 or
// EdDSA by default).
function idTokenAlg() {
  return ID_TOKEN_ALGS.find(hasAlg) ?? 'RS256';
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

// Interactive logins. `loginAs` is who the next one will be (set on the control port, consumed
// when the browser reaches the interaction URL); `loginsByGrant` keeps, per grant made for a
// completed login, the extra claims and token settings its access token gets.
let loginAs = null;
const loginsByGrant = new Map();
const loginCounts = { completed: 0, login_required: 0, access_denied: 0 };

// Cookie keys (the provider signs its cookies) are kept across the instances a key or client
// change builds, so an interactive login under way survives such a change.
const cookieKeys = [crypto.randomBytes(32).toString('base64url')];

// Every authorization request is an interactive login, whatever provider session the browser
// already has: this check of the login prompt asks for one unless the request is resuming with
// a login result. (With prompt=none the request thus ends with login_required.)
function interactionPolicyOf() {
  const policy = interactionPolicy.base();
  policy.get('login').checks.add(new interactionPolicy.Check(
    'harness_login',
    'every login is interactive at this test provider',
    'login_required',
    (ctx) => !ctx.oidc.result?.login,
  ), 0);
  return policy;
}

// The resource (audience) of the interactive login's access token. Its scopes: at the
// authorization endpoint, every scope asked for; at the token endpoint, those the login granted.
// Its token settings: at the token endpoint, those of the login that made the grant (alg, ttl,
// aud), else the defaults.
function resourceServerInfo(ctx, resource) {
  const grant = ctx.oidc.entities.Grant;
  const login = grant ? loginsByGrant.get(grant.jti) : undefined;
  const scopes = grant ? grant.getResourceScope(resource) : (ctx.oidc.params.scope ?? '');
  const alg = login?.alg ?? defaultAccessTokenAlg();
  if (!hasAlg(alg)) throw new oidcErrors.InvalidRequest(`no signing key for alg ${alg}`);
  return {
    scope: scopes,
    audience: login?.aud ?? (resource === DEFAULT_RESOURCE ? defaultAudience : resource),
    accessTokenFormat: 'jwt',
    accessTokenTTL: login?.ttl ?? DEFAULT_TTL,
    // Named explicitly: with --omit-jwk-alg the provider alone could pick any RSA key.
    jwt: { sign: { alg, kid: signingKid(alg) } },
  };
}

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
    }, {
      // Public: no secret, PKCE (S256) required, as oidc-provider requires it of public clients.
      client_id: CONSOLE_CLIENT_ID,
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: consoleRedirectUris,
      id_token_signed_response_alg: idTokenAlg(),
    }],
    jwks,
    cookies: { keys: cookieKeys },
    features: {
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        // Without a `resource` parameter the authorization request is for --audience.
        defaultResource: (ctx, client, oneOf) => oneOf ?? DEFAULT_RESOURCE,
        // The token request needs no `resource` either: the code's resource is used.
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource) => resourceServerInfo(ctx, resource),
      },
    },
    interactions: {
      policy: interactionPolicyOf(),
      // Absolute, under the issuer (and so under --issuer-path): answered by this harness.
      url: (ctx, interaction) => `${ISSUER}/interaction/${interaction.uid}`,
    },
    findAccount: (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
    // An error the authorization endpoint cannot redirect to the client with (unknown client,
    // unregistered redirect_uri, interaction cookies missing at /auth/<uid>): JSON rather than
    // oidc-provider's HTML page, so that a test without a browser can read it.
    renderError(ctx, out) {
      ctx.type = 'json';
      ctx.body = out;
    },
    // The extra claims of a minted token (tid, oid, groups, roles, ...) or of the access token
    // of an interactive login.
    extraTokenClaims(ctx, token) {
      return pending.get(token)?.claims ?? (token.grantId ? loginsByGrant.get(token.grantId)?.claims : undefined);
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
      AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL ?? DEFAULT_TTL,
      // The interactive login's other artifacts (set to keep oidc-provider from noting that
      // its defaults are used).
      AuthorizationCode: 60,
      IdToken: 3600,
      Interaction: 600,
      Grant: 3600,
      Session: 3600,
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
// The interaction URL (GET <issuer>/interaction/<uid>), where a provider with a login page would
// show it. Here the login ends at once: as the pending login-as says (login and consent
// together), or with login_required when none is pending, or access_denied when it says deny.
// Either way the answer is oidc-provider's redirect (303) back to its authorization endpoint
// (<issuer>/auth/<uid>), which redirects to the client.

function answerError(res, status, error, description) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify({ error, error_description: description }));
}

async function interaction(req, res, uid) {
  if (req.method !== 'GET') {
    res.setHeader('allow', 'GET');
    answerError(res, 405, 'invalid_request', 'the interaction URL takes GET');
    return;
  }
  const p = provider;
  let details;
  try {
    details = await p.interactionDetails(req, res);
  } catch (err) {
    // No (valid) _interaction cookie, or the interaction expired or was already finished.
    answerError(res, 400, 'invalid_request', `${err.error_description ?? err.message} (the _interaction cookie set by the authorization endpoint must come with this request)`);
    return;
  }
  if (details.uid !== uid) {
    answerError(res, 400, 'invalid_request', 'the _interaction cookie names another interaction');
    return;
  }

  const login = loginAs;
  loginAs = null;
  let result;
  if (!login) {
    loginCounts.login_required += 1;
    result = { error: 'login_required', error_description: 'no login is pending at the test provider (POST /login-as on its control port)' };
  } else if (login.deny) {
    loginCounts.access_denied += 1;
    result = { error: 'access_denied', error_description: 'the login was denied (test control)' };
  } else {
    // A fresh provider session for each login: a session the browser already has (perhaps of
    // another subject) is ended, so no logout confirmation page is involved.
    if (details.session?.uid) {
      const session = await p.Session.findByUid(details.session.uid);
      if (session) await session.destroy();
      details.session = undefined;
      await details.persist();
    }
    const { params } = details;
    const requested = (params.scope ?? '').split(' ').filter(Boolean);
    const grant = new p.Grant({ accountId: login.sub, clientId: params.client_id });
    const oidcScopes = requested.filter((s) => OIDC_SCOPES.has(s));
    if (oidcScopes.length) grant.addOIDCScope(oidcScopes.join(' '));
    const resources = params.resource === undefined ? [] : [params.resource].flat();
    for (const resource of resources) grant.addResourceScope(resource, requested.join(' '));
    const grantId = await grant.save();
    loginsByGrant.set(grantId, login);
    loginCounts.completed += 1;
    result = { login: { accountId: login.sub }, consent: { grantId } };
  }
  await p.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
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
  const match = /^\/interaction\/([A-Za-z0-9_-]+)(?:\?.*)?$/.exec(req.url ?? '/');
  if (match) {
    interaction(req, res, match[1]).catch((err) => {
      console.error('oidc harness interaction error:', err);
      if (!res.headersSent) answerError(res, 500, 'server_error', err.message);
      else res.destroy();
    });
    return;
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

// Sets the console client's redirect URIs. Static client metadata is read when a provider is
// constructed, so this builds a new instance as a key change does (keys, storage, cookie keys
// and listeners stay; a login under way goes on).
async function setConsoleClient(body) {
  const uris = body.redirect_uris;
  const problem = checkRedirectUris(uris);
  if (problem) throw new ControlError(400, problem);
  const previous = consoleRedirectUris;
  consoleRedirectUris = [...uris];
  const next = buildProvider();
  try {
    // oidc-provider validates a static client's metadata when it first looks it up.
    await next.Client.find(CONSOLE_CLIENT_ID);
  } catch (err) {
    consoleRedirectUris = previous;
    throw new ControlError(400, `client metadata refused: ${err.error_description ?? err.message}`);
  }
  useProvider(next);
  return consoleClient();
}

function consoleClient() {
  return { client_id: CONSOLE_CLIENT_ID, redirect_uris: [...consoleRedirectUris] };
}

function describeLogin(login) {
  if (!login) return null;
  if (login.deny) return { deny: true };
  return {
    sub: login.sub,
    ...(login.claims ? { claims: login.claims } : undefined),
    ...(login.aud !== undefined ? { aud: login.aud } : undefined),
    ...(login.alg !== undefined ? { alg: login.alg } : undefined),
    ...(login.ttl !== undefined ? { ttl: login.ttl } : undefined),
  };
}

// Who the next interactive login will be: {sub, claims?, aud?, alg?, ttl?}, or {deny: true},
// or {clear: true} for none (the next login then ends with login_required).
function setLoginAs(body) {
  if (body.clear === true) {
    loginAs = null;
    return { pending: null };
  }
  if (body.deny !== undefined) {
    if (body.deny !== true) throw new ControlError(400, 'deny must be true when given');
    if (Object.keys(body).length !== 1) throw new ControlError(400, 'deny takes no other field');
    loginAs = { deny: true };
    return { pending: describeLogin(loginAs) };
  }
  const known = new Set(['sub', 'claims', 'aud', 'alg', 'ttl']);
  for (const name of Object.keys(body)) {
    if (!known.has(name)) throw new ControlError(400, `unknown field ${name} (one of ${[...known].join(', ')}, or deny, or clear)`);
  }
  if (typeof body.sub !== 'string' || !body.sub) throw new ControlError(400, 'sub must be a non-empty string');
  const login = { sub: body.sub };
  if (body.claims !== undefined) {
    if (body.claims === null || typeof body.claims !== 'object' || Array.isArray(body.claims)) {
      throw new ControlError(400, 'claims must be an object');
    }
    for (const name of Object.keys(body.claims)) {
      if (REGISTERED.has(name)) throw new ControlError(400, `claims may not set ${name}`);
    }
    if (Object.keys(body.claims).length) login.claims = body.claims;
  }
  if (body.aud !== undefined) {
    if (typeof body.aud !== 'string' || !body.aud) throw new ControlError(400, 'aud must be a non-empty string');
    login.aud = body.aud;
  }
  if (body.alg !== undefined) {
    if (typeof body.alg !== 'string' || !hasAlg(body.alg)) {
      throw new ControlError(400, `no signing key for alg ${body.alg}; keys: ${[...new Set(keys.map((k) => k.alg))].join(', ')}`);
    }
    login.alg = body.alg;
  }
  if (body.ttl !== undefined) {
    if (!Number.isInteger(body.ttl) || body.ttl < 1 || body.ttl > 7 * 24 * 3600) {
      throw new ControlError(400, 'ttl must be an integer within 1..604800');
    }
    login.ttl = body.ttl;
  }
  loginAs = login;
  return { pending: describeLogin(loginAs) };
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
    console_client: consoleClient(),
    login_as: describeLogin(loginAs),
    logins: { ...loginCounts },
  };
}

const routes = {
  'GET /status': async () => status(),
  'POST /token': async (req) => mint(await readJson(req)),
  'POST /rotate': async (req) => rotate(await readJson(req)),
  'POST /keys/drop': async (req) => drop(await readJson(req)),
  'POST /console-client': async (req) => setConsoleClient(await readJson(req)),
  'GET /console-client': async () => consoleClient(),
  'POST /login-as': async (req) => setLoginAs(await readJson(req)),
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
  if (consoleRedirectUris.length) {
    try {
      await provider.Client.find(CONSOLE_CLIENT_ID);
    } catch (err) {
      fail(`--console-redirect-uri: client metadata refused: ${err.error_description ?? err.message}`);
    }
  }
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
    authorization_endpoint: `${ISSUER}/auth`,
    control: `http://${HOST}:${controlPort}`,
    control_port: controlPort,
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    grant_type: GRANT_TYPE,
    console_client_id: CONSOLE_CLIENT_ID,
    console_redirect_uris: consoleRedirectUris,
    audience: defaultAudience,
    keys: publicKeys(),
    pid: process.pid,
  })}\n`);
} catch (err) {
  fail(`could not start: ${err.code ?? ''} ${err.message}`);
}
