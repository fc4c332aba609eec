// Self-test of the provider harness: starts provider.mjs, mints RS256 and ES256 user tokens and
// verifies them with jose against the published JWKS, rotates keys, takes the provider down and
// up. Run: cd compat/oidc && npm ci && node --test selftest.mjs
//
// Every process started here is stopped here (SIGTERM by pid, exit code 0 required); each
// provider also runs with --max-lifetime and --watch-stdin, so none outlives this file.

import { spawn } from 'node:child_process';
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

describe('oidc harness', () => {
  let p;
  before(async () => { p = await startProvider(); });
  after(async () => {
    if (!p) return;
    const code = await p.stop();
    assert.equal(code, 0, `provider exit code; stderr:\n${p.stderr()}`);
  });

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

describe('Keycloak-style issuer path, more algorithms, JWKS without alg', () => {
  let p;
  before(async () => {
    p = await startProvider(['--issuer-path', '/realms/test', '--algs', 'RS256,ES256,PS256,ES384,EdDSA', '--audience', 'account', '--omit-jwk-alg']);
  });
  after(async () => {
    if (!p) return;
    const code = await p.stop();
    assert.equal(code, 0, `provider exit code; stderr:\n${p.stderr()}`);
  });

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
