// Self-test of the provider harness: starts provider.mjs, mints RS256 and ES256 user tokens and
// verifies them with jose against the published JWKS, rotates keys, takes the provider down and
// up, and logs in through the authorization code flow with PKCE as a client without a browser
// does (fetch, redirects followed one by one, a small cookie jar).
// Run: cd compat/oidc && npm ci && node --test selftest.mjs
//
// Every process started here is stopped here (SIGTERM by pid, exit code 0 required); each
// provider also runs with --max-lifetime and --watch-stdin, so none outlives this file.

import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import * as assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import * as jose from 'jose';

const PROVIDER = fileURLToPath(new URL('./provider.mjs', import.meta.url));
const T = { timeout: 30_000 };

// Starts the harness and resolves with its ready line, the child and a stop function.
async function startProvider(extraArgs = []) {
  const child = spawn(process.execPath, [PROVIDER, '--max-lifetime', '120', '--watch-stdin', ...extraArgs], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => { stderr += chunk; });
  child.stdout.setEncoding('utf8');
  const ready = await new Promise((resolve, reject) => {
    child.once('error', reject);
    let buffered = '';
    const timer = setTimeout(() => reject(new Error(`provider not ready in 15 s; stderr:\n${stderr}`)), 15_000);
    child.stdout.on('data', (chunk) => {
      buffered += chunk;
      const newline = buffered.indexOf('\n');
      if (newline !== -1) {
        clearTimeout(timer);
        resolve(JSON.parse(buffered.slice(0, newline)));
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`provider exited with ${code} before it was ready; stderr:\n${stderr}`));
    });
  }).catch((err) => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    throw err;
  });
  assert.equal(ready.pid, child.pid);
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    const [code] = await exited;
    clearTimeout(timer);
    return code;
  };
  return { ready, child, stop, stderr: () => stderr };
}

async function control(ready, method, path, body) {
  const res = await fetch(`${ready.control}${path}`, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(10_000),
  });
  return { status: res.status, body: await res.json() };
}

async function mint(ready, request) {
  const { status, body } = await control(ready, 'POST', '/token', request);
  assert.equal(status, 200, JSON.stringify(body));
  return body;
}

async function getJson(url, timeout = 5_000) {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeout) });
  return { status: res.status, headers: res.headers, body: res.status === 200 ? await res.json() : await res.text() };
}

// What a relying party does: keys from the jwks_uri named by the discovery document.
async function verify(ready, token, { jwks, audience = 'api://callsign', algorithms = ['RS256', 'ES256'], ...options } = {}) {
  const keySet = jwks ?? jose.createRemoteJWKSet(new URL(ready.jwks_uri), { timeoutDuration: 5_000 });
  return jose.jwtVerify(token, keySet, {
    issuer: ready.issuer, audience, algorithms, ...options,
  });
}

// A small cookie jar for one host, as a browser or reqwest's cookie store keeps one: cookies by
// name and path, sent where the request path is within the cookie's path, dropped when a
// Set-Cookie expires them.
class CookieJar {
  #cookies = new Map(); // `${path} ${name}` -> { name, value, path }

  store(url, response) {
    const { pathname } = new URL(url);
    for (const line of response.headers.getSetCookie()) {
      const [pair, ...attributes] = line.split(';').map((s) => s.trim());
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      let path = pathname.slice(0, pathname.lastIndexOf('/')) || '/';
      let expired = false;
      for (const attribute of attributes) {
        const [key, val = ''] = attribute.split('=');
        switch (key.toLowerCase()) {
          case 'path': if (val.startsWith('/')) path = val; break;
          case 'expires': if (Date.parse(val) <= Date.now()) expired = true; break;
          case 'max-age': if (Number(val) <= 0) expired = true; break;
          default:
        }
      }
      const key = `${path} ${name}`;
      if (expired) this.#cookies.delete(key);
      else this.#cookies.set(key, { name, value, path });
    }
  }

  header(url) {
    const { pathname } = new URL(url);
    const within = ({ path }) => pathname === path
      || (pathname.startsWith(path) && (path.endsWith('/') || pathname[path.length] === '/'));
    // Longer paths first, as RFC 6265 orders them.
    const sent = [...this.#cookies.values()].filter(within).sort((a, b) => b.path.length - a.path.length);
    return sent.map(({ name, value }) => `${name}=${value}`).join('; ');
  }

  names() {
    return [...this.#cookies.values()].map(({ name, path }) => `${name} ${path}`);
  }
}

function pkce() {
  const verifier = crypto.randomBytes(32).toString('base64url');
  return { verifier, challenge: crypto.createHash('sha256').update(verifier).digest('base64url') };
}

// GETs `url` and follows the redirects one by one (GET, the jar's cookies) until one leads to
// `redirectUri`; resolves with that redirect's URL and every step taken.
async function followToClient(url, redirectUri, jar, { beforeStep } = {}) {
  const steps = [];
  for (let hop = 0; hop < 10; hop += 1) {
    if (beforeStep) await beforeStep(url, hop);
    const cookie = jar.header(url);
    const res = await fetch(url, {
      redirect: 'manual',
      headers: cookie ? { cookie } : {},
      signal: AbortSignal.timeout(5_000),
    });
    jar.store(url, res);
    const location = res.headers.get('location');
    steps.push({ url, status: res.status, cookie, location });
    if (![302, 303].includes(res.status) || !location) {
      throw new Error(`step ${hop} (${url}) answered ${res.status}: ${await res.text()}`);
    }
    await res.arrayBuffer();
    const next = new URL(location, url);
    if (next.href.startsWith(`${redirectUri}?`)) return { callback: next, steps };
    url = next.href;
  }
  throw new Error('more than 10 redirects');
}

const REDIRECT_URI = 'https://127.0.0.1:1234/console/login/oidc/0/callback';

// The console's login: authorization request (PKCE S256, state, nonce) followed to the redirect
// back to the client.
async function authorize(ready, { jar = new CookieJar(), redirectUri = REDIRECT_URI, scope = 'openid', params = {}, beforeStep } = {}) {
  const { verifier, challenge } = pkce();
  const state = crypto.randomBytes(16).toString('base64url');
  const nonce = crypto.randomBytes(16).toString('base64url');
  const discovery = (await getJson(ready.discovery)).body;
  const url = new URL(discovery.authorization_endpoint);
  for (const [name, value] of Object.entries({
    response_type: 'code',
    client_id: ready.console_client_id,
    redirect_uri: redirectUri,
    scope,
    state,
    nonce,
    code_challenge: challenge,
    code_challenge_method: 'S256',
    ...params,
  })) url.searchParams.set(name, value);
  const { callback, steps } = await followToClient(url.href, redirectUri, jar, { beforeStep });
  assert.equal(callback.searchParams.get('state'), state);
  assert.equal(callback.searchParams.get('iss'), ready.issuer);
  return {
    callback, steps, verifier, state, nonce, jar, redirectUri,
    code: callback.searchParams.get('code'),
    error: callback.searchParams.get('error'),
  };
}

async function redeem(ready, { code, verifier, redirectUri = REDIRECT_URI, extra = {} }) {
  const discovery = (await getJson(ready.discovery)).body;
  const res = await fetch(discovery.token_endpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'authorization_code',
      code,
      redirect_uri: redirectUri,
      client_id: ready.console_client_id,
      code_verifier: verifier,
      ...extra,
    }),
    signal: AbortSignal.timeout(5_000),
  });
  return { status: res.status, body: await res.json() };
}

// Stops a provider a describe block started (if it started), requiring exit code 0.
async function stopChecked(p) {
  if (!p) return;
  const code = await p.stop();
  assert.equal(code, 0, `provider exit code; stderr:\n${p.stderr()}`);
}

describe('oidc harness', () => {
  let p;
  before(async () => { p = await startProvider(); });
  after(() => stopChecked(p));

  test('ready line and discovery document', T, async () => {
    const { ready } = p;
    assert.equal(ready.issuer, `http://127.0.0.1:${ready.port}`);
    assert.equal(ready.jwks_uri, `${ready.issuer}/jwks`);
    assert.match(ready.control, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.deepEqual(ready.keys.map((k) => k.alg), ['RS256', 'ES256']);

    const { status, body } = await getJson(ready.discovery);
    assert.equal(status, 200);
    assert.equal(body.issuer, ready.issuer);
    assert.equal(body.jwks_uri, ready.jwks_uri);
    assert.equal(body.token_endpoint, ready.token_endpoint);
    assert.ok(body.grant_types_supported.includes(ready.grant_type));

    const jwks = await getJson(ready.jwks_uri);
    assert.equal(jwks.status, 200);
    assert.match(jwks.headers.get('content-type'), /^application\/jwk-set\+json/);
    assert.deepEqual(jwks.body.keys.map((k) => [k.kid, k.alg]), ready.keys.map((k) => [k.kid, k.alg]));
    for (const key of jwks.body.keys) {
      assert.equal(key.use, 'sig');
      assert.equal(key.d, undefined, 'no private parts published');
    }
  });

  for (const alg of ['RS256', 'ES256']) {
    test(`${alg} user token verifies against the JWKS`, T, async () => {
      const { ready } = p;
      const claims = {
        tid: 'tenant-1', oid: 'object-1', groups: ['g-1', 'g-2'], roles: ['callsign.admin'],
      };
      const minted = await mint(ready, {
        sub: 'alice', alg, ttl: 300, claims, scope: 'openid profile',
      });
      assert.equal(minted.token_type, 'Bearer');
      assert.equal(minted.expires_in, 300);
      const { payload, protectedHeader } = await verify(ready, minted.access_token, { typ: 'at+jwt' });
      assert.deepEqual(protectedHeader, { alg, typ: 'at+jwt', kid: ready.keys.find((k) => k.alg === alg).kid });
      assert.equal(payload.sub, 'alice');
      assert.equal(payload.iss, ready.issuer);
      assert.equal(payload.aud, 'api://callsign');
      assert.equal(payload.exp - payload.iat, 300);
      assert.ok(Math.abs(payload.iat - Date.now() / 1000) < 30);
      assert.equal(payload.client_id, ready.client_id);
      assert.equal(payload.scope, 'openid profile');
      assert.match(payload.jti, /^[\w-]{20,}$/);
      for (const [name, value] of Object.entries(claims)) assert.deepEqual(payload[name], value);
      assert.deepEqual(minted.claims, payload);
      assert.deepEqual(minted.header, protectedHeader);

      // A token signed with one algorithm is refused where only the other is allowed.
      const other = alg === 'RS256' ? 'ES256' : 'RS256';
      await assert.rejects(verify(ready, minted.access_token, { algorithms: [other] }), jose.errors.JOSEAlgNotAllowed);
    });
  }

  test('the token endpoint itself issues the same tokens (client_secret_basic)', T, async () => {
    const { ready } = p;
    const res = await fetch(ready.token_endpoint, {
      method: 'POST',
      headers: {
        authorization: `Basic ${Buffer.from(`${ready.client_id}:${ready.client_secret}`).toString('base64')}`,
        'content-type': 'application/x-www-form-urlencoded',
      },
      body: new URLSearchParams({
        grant_type: ready.grant_type, subject: 'bob', audience: 'urn:other', alg: 'ES256', ttl: '60', claims: JSON.stringify({ tid: 't' }),
      }),
      signal: AbortSignal.timeout(5_000),
    });
    assert.equal(res.status, 200);
    const body = await res.json();
    const { payload } = await verify(ready, body.access_token, { audience: 'urn:other' });
    assert.equal(payload.sub, 'bob');
    assert.equal(payload.tid, 't');

    const bad = await fetch(ready.token_endpoint, {
      method: 'POST',
      headers: {
        authorization: `Basic ${Buffer.from(`${ready.client_id}:wrong`).toString('base64')}`,
        'content-type': 'application/x-www-form-urlencoded',
      },
      body: new URLSearchParams({ grant_type: ready.grant_type, subject: 'bob' }),
      signal: AbortSignal.timeout(5_000),
    });
    assert.equal(bad.status, 401);
    assert.equal((await bad.json()).error, 'invalid_client');
  });

  test('audience, wrong issuer and wrong audience', T, async () => {
    const { ready } = p;
    const minted = await mint(ready, { sub: 'carol', aud: 'https://callsign.example/api' });
    await verify(ready, minted.access_token, { audience: 'https://callsign.example/api' });
    await assert.rejects(verify(ready, minted.access_token), { code: 'ERR_JWT_CLAIM_VALIDATION_FAILED', claim: 'aud' });
    await assert.rejects(
      verify({ ...ready, issuer: `${ready.issuer}/other` }, minted.access_token, { audience: 'https://callsign.example/api' }),
      { code: 'ERR_JWT_CLAIM_VALIDATION_FAILED', claim: 'iss' },
    );
  });

  test('expired, not yet valid, overridden and tampered tokens', T, async () => {
    const { ready } = p;
    const expired = await mint(ready, { sub: 'dave', ttl: 600, backdate: 3600 });
    assert.equal(expired.claims.exp - expired.claims.iat, 600);
    assert.ok(expired.claims.exp < Date.now() / 1000 - 2000);
    await assert.rejects(verify(ready, expired.access_token), jose.errors.JWTExpired);

    const early = await mint(ready, { sub: 'dave', nbf: 3600 });
    assert.equal(early.claims.nbf, early.claims.iat + 3600);
    await assert.rejects(verify(ready, early.access_token), { code: 'ERR_JWT_CLAIM_VALIDATION_FAILED', claim: 'nbf' });

    const foreign = await mint(ready, { sub: 'dave', override: { iss: 'https://elsewhere.example' } });
    await assert.rejects(verify(ready, foreign.access_token), { code: 'ERR_JWT_CLAIM_VALIDATION_FAILED', claim: 'iss' });

    const noExp = await mint(ready, { sub: 'dave', override: { exp: null } });
    assert.equal(noExp.claims.exp, undefined);
    await assert.rejects(verify(ready, noExp.access_token, { requiredClaims: ['exp'] }), { code: 'ERR_JWT_CLAIM_VALIDATION_FAILED', claim: 'exp' });

    const multi = await mint(ready, { sub: 'dave', override: { aud: ['api://callsign', 'api://other'] }, header: { typ: 'JWT' } });
    const { payload, protectedHeader } = await verify(ready, multi.access_token);
    assert.deepEqual(payload.aud, ['api://callsign', 'api://other']);
    assert.equal(protectedHeader.typ, 'JWT');

    const unknownKid = await mint(ready, { sub: 'dave', header: { kid: 'not-published' } });
    await assert.rejects(verify(ready, unknownKid.access_token), jose.errors.JWKSNoMatchingKey);

    const good = await mint(ready, { sub: 'dave', claims: { roles: ['reader'] } });
    const [h, , s] = good.access_token.split('.');
    const forged = jose.base64url.encode(JSON.stringify({ ...good.claims, roles: ['callsign.admin'] }));
    await assert.rejects(verify(ready, `${h}.${forged}.${s}`), jose.errors.JWSSignatureVerificationFailed);
  });

  test('bad mint requests are refused with a reason', T, async () => {
    const { ready } = p;
    const cases = [
      [{}, /sub must be a non-empty string/],
      [{ sub: 'x', alg: 'ES384' }, /no signing key for alg ES384/],
      [{ sub: 'x', claims: { exp: 1 } }, /claims may not set exp; use override/],
      [{ sub: 'x', header: { alg: 'none' } }, /header may set only kid, typ/],
      [{ sub: 'x', ttl: 0 }, /ttl must be within/],
      [{ sub: 'x', kid: 'nope' }, /no RS256 key with kid nope/],
      [{ sub: 'x', claims: ['a'] }, /claims must be an object/],
      [{ sub: 'x', override: { aud: null } }, /override may not remove aud/],
    ];
    for (const [request, reason] of cases) {
      const { status, body } = await control(ready, 'POST', '/token', request);
      assert.equal(status, 400, JSON.stringify(request));
      assert.match(body.error, reason);
    }
  });

  test('key rotation: the new kid is published and signs; old kept, then dropped', T, async () => {
    const { ready } = p;
    // One remote key set across the rotation, as a relying party would hold it.
    const jwks = jose.createRemoteJWKSet(new URL(ready.jwks_uri), { cooldownDuration: 0, timeoutDuration: 5_000 });
    for (const alg of ['RS256', 'ES256']) {
      const before = await mint(ready, { sub: 'erin', alg });
      await verify(ready, before.access_token, { jwks });

      const rotated = await control(ready, 'POST', '/rotate', { alg });
      assert.equal(rotated.status, 200);
      assert.equal(rotated.body.previous_kid, before.kid);
      assert.notEqual(rotated.body.kid, before.kid);
      const published = (await getJson(ready.jwks_uri)).body.keys.map((k) => k.kid);
      assert.ok(published.includes(rotated.body.kid), 'new kid published');
      assert.ok(published.includes(before.kid), 'old kid kept');

      const afterRotation = await mint(ready, { sub: 'erin', alg });
      assert.equal(afterRotation.kid, rotated.body.kid);
      // The cached set does not know the new kid: jose refetches the JWKS and finds it.
      await verify(ready, afterRotation.access_token, { jwks });
      await verify(ready, before.access_token, { jwks });

      // Signing with a named, still published key.
      const pinned = await mint(ready, { sub: 'erin', alg, kid: before.kid });
      assert.equal(pinned.kid, before.kid);

      // Rotate again dropping every older key of the alg: tokens of the old kids stop verifying.
      const hard = await control(ready, 'POST', '/rotate', { alg, keep_old: false });
      assert.equal(hard.status, 200);
      const now = (await getJson(ready.jwks_uri)).body.keys.filter((k) => k.alg === alg).map((k) => k.kid);
      assert.deepEqual(now, [hard.body.kid]);
      await assert.rejects(verify(ready, before.access_token), jose.errors.JWKSNoMatchingKey);
      await assert.rejects(verify(ready, afterRotation.access_token), jose.errors.JWKSNoMatchingKey);
      await verify(ready, (await mint(ready, { sub: 'erin', alg })).access_token);
    }
    const { body: status } = await control(ready, 'GET', '/status');
    assert.equal(status.keys.length, 2);
    assert.equal(status.issuer, ready.issuer);
  });

  test('provider down (refused, 503, hanging) and up again on the same port', T, async () => {
    const { ready } = p;
    const cached = jose.createRemoteJWKSet(new URL(ready.jwks_uri), { cooldownDuration: 0, timeoutDuration: 1_000 });
    const token = await mint(ready, { sub: 'frank', alg: 'ES256' });
    await verify(ready, token.access_token, { jwks: cached });

    const down = await control(ready, 'POST', '/down', { mode: 'refuse' });
    assert.equal(down.status, 200);
    assert.equal(down.body.up, false);
    await assert.rejects(getJson(ready.discovery), (err) => err.cause?.code === 'ECONNREFUSED');
    await assert.rejects(getJson(ready.jwks_uri), (err) => err.cause?.code === 'ECONNREFUSED');
    assert.equal((await control(ready, 'POST', '/down', { mode: '503' })).status, 409);

    // Cached keys still verify; a token under a kid the cache lacks cannot be verified.
    await verify(ready, token.access_token, { jwks: cached });
    const rotated = await control(ready, 'POST', '/rotate', { alg: 'ES256' });
    const fresh = await mint(ready, { sub: 'frank', alg: 'ES256' });
    assert.equal(fresh.kid, rotated.body.kid);
    await assert.rejects(verify(ready, fresh.access_token, { jwks: cached }), (err) => err instanceof TypeError && err.message === 'fetch failed');

    const up = await control(ready, 'POST', '/up');
    assert.equal(up.body.up, true);
    assert.equal((await getJson(ready.discovery)).status, 200);
    await verify(ready, fresh.access_token, { jwks: cached });

    await control(ready, 'POST', '/down', { mode: '503' });
    const unavailable = await getJson(ready.jwks_uri);
    assert.equal(unavailable.status, 503);
    assert.equal(JSON.parse(unavailable.body).error, 'temporarily_unavailable');
    await control(ready, 'POST', '/up');

    await control(ready, 'POST', '/down', { mode: 'hang' });
    await assert.rejects(getJson(ready.jwks_uri, 500), { name: 'TimeoutError' });
    await control(ready, 'POST', '/up');
    assert.equal((await getJson(ready.jwks_uri)).status, 200);
  });

  test('Cache-Control on discovery and JWKS, request counts', T, async () => {
    const { ready } = p;
    await control(ready, 'POST', '/requests/reset');
    await control(ready, 'POST', '/cache', { cache_control: 'public, max-age=60' });
    assert.equal((await getJson(ready.jwks_uri)).headers.get('cache-control'), 'public, max-age=60');
    assert.equal((await getJson(ready.discovery)).headers.get('cache-control'), 'public, max-age=60');
    await control(ready, 'POST', '/cache', { cache_control: null });
    assert.equal((await getJson(ready.jwks_uri)).headers.get('cache-control'), null);
    const { body } = await control(ready, 'GET', '/status');
    assert.deepEqual(body.requests, {
      discovery: 1, jwks: 2, token: 0, other: 0, served: 3, refused: 0,
    });
  });
});

describe('interactive login: authorization code with PKCE, no login page', () => {
  let p;
  before(async () => { p = await startProvider(); });
  after(() => stopChecked(p));

  test('ready line, discovery and the console client\'s redirect URIs', T, async () => {
    const { ready } = p;
    assert.equal(ready.authorization_endpoint, `${ready.issuer}/auth`);
    assert.equal(ready.console_client_id, 'callsign-console');
    assert.deepEqual(ready.console_redirect_uris, []);
    const { body } = await getJson(ready.discovery);
    assert.equal(body.authorization_endpoint, ready.authorization_endpoint);
    assert.ok(body.code_challenge_methods_supported.includes('S256'));
    assert.ok(body.response_types_supported.includes('code'));
    assert.ok(body.grant_types_supported.includes('authorization_code'));

    // No redirect URI yet: the authorization endpoint refuses (JSON, no redirect).
    const noUri = await fetch(`${ready.authorization_endpoint}?${new URLSearchParams({
      response_type: 'code', client_id: 'callsign-console', redirect_uri: REDIRECT_URI, scope: 'openid', code_challenge: pkce().challenge, code_challenge_method: 'S256',
    })}`, { redirect: 'manual' });
    assert.equal(noUri.status, 400);
    assert.equal((await noUri.json()).error, 'invalid_redirect_uri');

    for (const [uris, reason] of [
      [['ftp://127.0.0.1/cb'], /not an absolute http\(s\) URI/],
      [['https://127.0.0.1:1234/cb#x'], /has a fragment/],
      ['https://127.0.0.1:1234/cb', /must be an array of strings/],
      [[], /client metadata refused: redirect_uris must contain members/],
    ]) {
      const { status, body: refused } = await control(ready, 'POST', '/console-client', { redirect_uris: uris });
      assert.equal(status, 400, JSON.stringify(uris));
      assert.match(refused.error, reason);
    }
    const set = await control(ready, 'POST', '/console-client', { redirect_uris: [REDIRECT_URI, 'http://127.0.0.1:1/other'] });
    assert.equal(set.status, 200);
    assert.deepEqual(set.body, { client_id: 'callsign-console', redirect_uris: [REDIRECT_URI, 'http://127.0.0.1:1/other'] });
    assert.deepEqual((await control(ready, 'GET', '/console-client')).body, set.body);
    assert.deepEqual((await control(ready, 'GET', '/status')).body.console_client, set.body);
  });

  test('login as alice: code, token, JWT access token with her claims, ID token with the nonce', T, async () => {
    const { ready } = p;
    await control(ready, 'POST', '/console-client', { redirect_uris: [REDIRECT_URI] });
    const claims = { roles: ['callsign.admin'], groups: ['g-1', 'g-2'], preferred_username: 'alice' };
    const pending = await control(ready, 'POST', '/login-as', { sub: 'alice', claims });
    assert.equal(pending.status, 200);
    assert.deepEqual(pending.body, { pending: { sub: 'alice', claims } });
    assert.deepEqual((await control(ready, 'GET', '/status')).body.login_as, { sub: 'alice', claims });

    const login = await authorize(ready);
    assert.equal(login.error, null);
    assert.match(login.code, /^[\w-]{20,}$/);

    // The redirects and cookies a client without a browser sees: /auth sets the interaction
    // cookies, /interaction/<uid> needs _interaction, /auth/<uid> needs _interaction_resume and
    // sets _session; all 303.
    const [auth, interaction, resume] = login.steps;
    assert.equal(login.steps.length, 3);
    assert.deepEqual(login.steps.map((s) => s.status), [303, 303, 303]);
    assert.ok(auth.url.startsWith(`${ready.authorization_endpoint}?`));
    const uid = new URL(interaction.url).pathname.split('/').pop();
    assert.equal(interaction.url, `${ready.issuer}/interaction/${uid}`);
    assert.equal(resume.url, `${ready.issuer}/auth/${uid}`);
    assert.equal(auth.cookie, '');
    assert.match(interaction.cookie, new RegExp(`(^|; )_interaction=${uid}(;|$)`));
    assert.match(interaction.cookie, /_interaction\.sig=/);
    assert.match(resume.cookie, new RegExp(`(^|; )_interaction_resume=${uid}(;|$)`));
    assert.match(resume.cookie, /_interaction_resume\.sig=/);
    assert.deepEqual(login.jar.names().filter((n) => n.startsWith('_session')).sort(), ['_session /', '_session.sig /']);

    const { status, body } = await redeem(ready, login);
    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.token_type, 'Bearer');
    assert.equal(body.expires_in, 600);
    assert.equal(body.scope, 'openid');
    assert.equal(body.refresh_token, undefined);

    const jwks = jose.createRemoteJWKSet(new URL(ready.jwks_uri), { timeoutDuration: 5_000 });
    const { payload, protectedHeader } = await jose.jwtVerify(body.access_token, jwks, {
      issuer: ready.issuer, audience: 'api://callsign', typ: 'at+jwt', algorithms: ['RS256'],
    });
    assert.deepEqual(protectedHeader, { alg: 'RS256', typ: 'at+jwt', kid: ready.keys.find((k) => k.alg === 'RS256').kid });
    assert.equal(payload.sub, 'alice');
    assert.equal(payload.aud, 'api://callsign');
    assert.equal(payload.client_id, 'callsign-console');
    assert.equal(payload.scope, 'openid');
    assert.equal(payload.exp - payload.iat, 600);
    for (const [name, value] of Object.entries(claims)) assert.deepEqual(payload[name], value);

    const id = await jose.jwtVerify(body.id_token, jwks, { issuer: ready.issuer, audience: 'callsign-console' });
    assert.equal(id.payload.sub, 'alice');
    assert.equal(id.payload.nonce, login.nonce);
    assert.equal(id.protectedHeader.alg, 'RS256');

    // The login-as was used up; a code is good once.
    assert.equal((await control(ready, 'GET', '/status')).body.login_as, null);
    const again = await redeem(ready, login);
    assert.equal(again.status, 400);
    assert.equal(again.body.error, 'invalid_grant');
  });

  test('a wrong, missing or plain code_verifier, or another redirect_uri, is refused', T, async () => {
    const { ready } = p;
    await control(ready, 'POST', '/console-client', { redirect_uris: [REDIRECT_URI, 'http://127.0.0.1:1/other'] });
    await control(ready, 'POST', '/login-as', { sub: 'mallory' });
    const login = await authorize(ready);
    const form = (fields) => Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined));
    for (const [fields, error] of [
      [{ code_verifier: pkce().verifier }, 'invalid_grant'],
      [{ code_verifier: undefined }, 'invalid_grant'],
      [{ code_verifier: login.verifier.slice(1) }, 'invalid_request'], // 42 characters: malformed
      [{ redirect_uri: 'http://127.0.0.1:1/other' }, 'invalid_grant'],
    ]) {
      const body = form({
        grant_type: 'authorization_code', code: login.code, redirect_uri: REDIRECT_URI, client_id: 'callsign-console', code_verifier: login.verifier, ...fields,
      });
      const res = await fetch(ready.token_endpoint, { method: 'POST', body: new URLSearchParams(body) });
      const answer = await res.json();
      assert.equal(res.status, 400, JSON.stringify(fields));
      assert.equal(answer.error, error, JSON.stringify(answer));
      assert.equal(answer.access_token, undefined);
    }
    // oidc-provider checks PKCE and redirect_uri before it uses the code up: the right verifier
    // still redeems it.
    assert.equal((await redeem(ready, login)).status, 200);

    // PKCE is required (S256 only) of this public client.
    const plain = pkce();
    await control(ready, 'POST', '/login-as', { sub: 'mallory' });
    const refused = await authorize(ready, { params: { code_challenge: plain.verifier, code_challenge_method: 'plain' } });
    assert.equal(refused.error, 'invalid_request');
    const res = await fetch(`${ready.authorization_endpoint}?${new URLSearchParams({
      response_type: 'code', client_id: 'callsign-console', redirect_uri: REDIRECT_URI, scope: 'openid', state: 's',
    })}`, { redirect: 'manual' });
    assert.equal(res.status, 303);
    const location = new URL(res.headers.get('location'));
    assert.equal(location.searchParams.get('error'), 'invalid_request');
    assert.match(location.searchParams.get('error_description'), /PKCE/);
    await control(ready, 'POST', '/login-as', { clear: true });
  });

  test('no login pending: login_required; deny: access_denied; prompt=none: login_required', T, async () => {
    const { ready } = p;
    await control(ready, 'POST', '/console-client', { redirect_uris: [REDIRECT_URI] });
    const before = (await control(ready, 'GET', '/status')).body.logins;

    const none = await authorize(ready);
    assert.equal(none.code, null);
    assert.equal(none.error, 'login_required');
    assert.equal(none.steps.length, 3, 'through the interaction and back');

    const deny = await control(ready, 'POST', '/login-as', { deny: true });
    assert.deepEqual(deny.body, { pending: { deny: true } });
    const denied = await authorize(ready);
    assert.equal(denied.code, null);
    assert.equal(denied.error, 'access_denied');

    await control(ready, 'POST', '/login-as', { sub: 'alice' });
    const silent = await authorize(ready, { params: { prompt: 'none' } });
    assert.equal(silent.error, 'login_required');
    assert.equal(silent.steps.length, 1, 'no interaction');
    // prompt=none did not use the pending login.
    assert.deepEqual((await control(ready, 'GET', '/status')).body.login_as, { sub: 'alice' });
    await control(ready, 'POST', '/login-as', { clear: true });

    const after = (await control(ready, 'GET', '/status')).body.logins;
    assert.equal(after.login_required - before.login_required, 1);
    assert.equal(after.access_denied - before.access_denied, 1);

    // The interaction URL without its cookie.
    const bare = await fetch(`${ready.issuer}/interaction/abc`, { redirect: 'manual' });
    assert.equal(bare.status, 400);
    assert.match((await bare.json()).error_description, /_interaction cookie/);
  });

  test('a second login in the same cookie jar is a fresh one (another subject, resource, alg, ttl, aud)', T, async () => {
    const { ready } = p;
    await control(ready, 'POST', '/console-client', { redirect_uris: [REDIRECT_URI] });
    const jar = new CookieJar();
    await control(ready, 'POST', '/login-as', { sub: 'alice', claims: { roles: ['callsign.admin'] } });
    const first = await authorize(ready, { jar });
    const firstToken = await redeem(ready, first);
    assert.equal(jose.decodeJwt(firstToken.body.access_token).sub, 'alice');

    // The jar holds alice's provider session: bob's login still goes through the interaction.
    await control(ready, 'POST', '/login-as', {
      sub: 'bob', claims: { roles: ['callsign.reader'] }, alg: 'ES256', ttl: 120,
    });
    const second = await authorize(ready, { jar, scope: 'openid profile callsign.manage', params: { resource: 'api://callsign' } });
    assert.equal(second.steps.length, 3);
    assert.match(second.steps[1].cookie, /_session=/);
    const { status, body } = await redeem(ready, { ...second, extra: { resource: 'api://callsign' } });
    assert.equal(status, 200, JSON.stringify(body));
    assert.equal(body.expires_in, 120);
    assert.equal(body.scope, 'openid profile callsign.manage');
    const { payload, protectedHeader } = await verify(ready, body.access_token, { typ: 'at+jwt', algorithms: ['ES256'] });
    assert.equal(protectedHeader.kid, ready.keys.find((k) => k.alg === 'ES256').kid);
    assert.equal(payload.sub, 'bob');
    assert.deepEqual(payload.roles, ['callsign.reader']);
    assert.equal(payload.scope, 'openid profile callsign.manage');
    assert.equal(payload.exp - payload.iat, 120);
    assert.equal(jose.decodeJwt(body.id_token).sub, 'bob');

    // Another resource (RFC 8707) is the access token's audience; or login-as sets it.
    await control(ready, 'POST', '/login-as', { sub: 'carol' });
    const other = await authorize(ready, { jar, params: { resource: 'https://other.example/api' } });
    const otherToken = await redeem(ready, other);
    assert.equal(jose.decodeJwt(otherToken.body.access_token).aud, 'https://other.example/api');
    await control(ready, 'POST', '/login-as', { sub: 'carol', aud: 'api://elsewhere' });
    const elsewhere = await authorize(ready, { jar });
    assert.equal(jose.decodeJwt((await redeem(ready, elsewhere)).body.access_token).aud, 'api://elsewhere');

    // A resource at the token endpoint other than the one authorized is refused.
    await control(ready, 'POST', '/login-as', { sub: 'carol' });
    const mismatch = await authorize(ready, { jar });
    const refused = await redeem(ready, { ...mismatch, extra: { resource: 'api://other' } });
    assert.equal(refused.status, 400);
    assert.equal(refused.body.error, 'invalid_target');
  });

  test('bad login-as requests are refused with a reason', T, async () => {
    const { ready } = p;
    const cases = [
      [{}, /sub must be a non-empty string/],
      [{ sub: 'x', claims: { aud: 'y' } }, /claims may not set aud/],
      [{ sub: 'x', claims: ['a'] }, /claims must be an object/],
      [{ sub: 'x', alg: 'ES384' }, /no signing key for alg ES384/],
      [{ sub: 'x', ttl: 0 }, /ttl must be an integer/],
      [{ sub: 'x', scope: 'a' }, /unknown field scope/],
      [{ deny: true, sub: 'x' }, /deny takes no other field/],
      [{ deny: false }, /deny must be true/],
    ];
    for (const [request, reason] of cases) {
      const { status, body } = await control(ready, 'POST', '/login-as', request);
      assert.equal(status, 400, JSON.stringify(request));
      assert.match(body.error, reason);
    }
  });

  test('a key rotation or a redirect URI change in the middle of a login does not break it', T, async () => {
    const { ready } = p;
    await control(ready, 'POST', '/console-client', { redirect_uris: [REDIRECT_URI] });
    await control(ready, 'POST', '/login-as', { sub: 'dave', claims: { roles: ['callsign.admin'] } });
    let rotated;
    const login = await authorize(ready, {
      async beforeStep(url, hop) {
        if (hop === 1) rotated = (await control(ready, 'POST', '/rotate', { alg: 'RS256' })).body;
        if (hop === 2) await control(ready, 'POST', '/console-client', { redirect_uris: [REDIRECT_URI, 'http://127.0.0.1:2/cb'] });
      },
    });
    const { status, body } = await redeem(ready, login);
    assert.equal(status, 200, JSON.stringify(body));
    const { payload, protectedHeader } = await verify(ready, body.access_token, { typ: 'at+jwt' });
    assert.equal(protectedHeader.kid, rotated.kid);
    assert.equal(payload.sub, 'dave');
    assert.deepEqual(payload.roles, ['callsign.admin']);
  });
});

describe('Keycloak-style issuer path, more algorithms, JWKS without alg', () => {
  let p;
  before(async () => {
    p = await startProvider([
      '--issuer-path', '/realms/test', '--algs', 'RS256,ES256,PS256,ES384,EdDSA', '--audience', 'account', '--omit-jwk-alg',
      '--console-redirect-uri', `${REDIRECT_URI},http://127.0.0.1:1/a`, '--console-redirect-uri', 'http://127.0.0.1:1/b',
    ]);
  });
  after(() => stopChecked(p));

  test('issuer, discovery and tokens under /realms/test', T, async () => {
    const { ready } = p;
    assert.equal(ready.issuer, `http://127.0.0.1:${ready.port}/realms/test`);
    const discovery = await getJson(`${ready.issuer}/.well-known/openid-configuration`);
    assert.equal(discovery.status, 200);
    assert.equal(discovery.body.issuer, ready.issuer);
    assert.equal(discovery.body.jwks_uri, `${ready.issuer}/jwks`);
    assert.equal((await getJson(`http://127.0.0.1:${ready.port}/.well-known/openid-configuration`)).status, 404);

    const jwks = (await getJson(ready.jwks_uri)).body.keys;
    // RSA and Ed25519 keys are published without alg (as Entra ID does for RSA); oidc-provider
    // always publishes an EC key's alg, the only one its curve allows.
    for (const key of jwks) {
      if (key.kty === 'EC') assert.equal(key.alg, { 'P-256': 'ES256', 'P-384': 'ES384' }[key.crv]);
      else assert.equal(key.alg, undefined);
    }

    for (const alg of ['RS256', 'ES256', 'PS256', 'ES384', 'EdDSA']) {
      const minted = await mint(ready, { sub: 'grace', alg, claims: { preferred_username: 'grace' } });
      assert.equal(minted.alg, alg);
      const { payload } = await verify(ready, minted.access_token, { audience: 'account', algorithms: [alg] });
      assert.equal(payload.iss, ready.issuer);
      assert.equal(payload.preferred_username, 'grace');
    }
  });

  test('interactive login under /realms/test, redirect URIs from the command line', T, async () => {
    const { ready } = p;
    assert.deepEqual(ready.console_redirect_uris, [REDIRECT_URI, 'http://127.0.0.1:1/a', 'http://127.0.0.1:1/b']);
    assert.equal(ready.authorization_endpoint, `${ready.issuer}/auth`);
    await control(ready, 'POST', '/login-as', { sub: 'heidi', claims: { roles: ['callsign.admin'] } });
    const login = await authorize(ready);
    assert.equal(login.error, null, login.callback.href);
    const uid = new URL(login.steps[1].url).pathname.split('/').pop();
    assert.deepEqual(login.steps.map((s) => s.url.split('?')[0]), [
      `${ready.issuer}/auth`, `${ready.issuer}/interaction/${uid}`, `${ready.issuer}/auth/${uid}`,
    ]);
    // Cookie paths: the interaction's under the issuer path, the session's at the root.
    assert.deepEqual(login.jar.names().sort(), [
      `_interaction /realms/test/interaction/${uid}`, `_interaction.sig /realms/test/interaction/${uid}`,
      '_session /', '_session.sig /',
    ]);
    const { status, body } = await redeem(ready, login);
    assert.equal(status, 200, JSON.stringify(body));
    // RS256 by default, under the default audience (--audience), kid named although the JWKS
    // publishes no alg for RSA keys.
    const { payload, protectedHeader } = await verify(ready, body.access_token, { audience: 'account', typ: 'at+jwt', algorithms: ['RS256'] });
    assert.equal(protectedHeader.kid, ready.keys.find((k) => k.alg === 'RS256').kid);
    assert.equal(payload.sub, 'heidi');
    assert.equal(payload.iss, ready.issuer);
    assert.deepEqual(payload.roles, ['callsign.admin']);
  });
});

test('the harness exits when its stdin closes (--watch-stdin)', T, async () => {
  const p = await startProvider();
  const exited = once(p.child, 'exit');
  p.child.stdin.end();
  const timer = setTimeout(() => p.child.kill('SIGKILL'), 5_000);
  const [code, signal] = await exited;
  clearTimeout(timer);
  assert.equal(code, 0, `exit ${code} ${signal}; stderr:\n${p.stderr()}`);
});
