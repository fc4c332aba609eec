"use strict";
// README "From Node (jose)": the fenced block after the marker
// `<!-- tested by compat/js/test/verify-jose.test.js -->` is written, unchanged, into a module and
// imported, so the README cannot drift from what runs here. Tokens come from
// @azure/communication-identity against the live server; the JWKS is fetched over HTTPS trusting
// the server's local CA through NODE_EXTRA_CA_CERTS, as the README says. Every refusal is checked
// for its exact jose error class and code and, for claims, the claim.

const { after, before, describe, it } = require("node:test");
const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");
const { pathToFileURL } = require("node:url");
const { CommunicationIdentityClient } = require("@azure/communication-identity");
const h = require("./helpers");

const README = path.resolve(__dirname, "..", "..", "..", "README.md");
const MARKER = "<!-- tested by compat/js/test/verify-jose.test.js -->";

/** The fenced block that follows the marker, exactly as the README has it. */
function readmeSnippet() {
  const text = fs.readFileSync(README, "utf8");
  const pieces = text.split(MARKER);
  assert.equal(pieces.length, 2, `README.md must hold the marker exactly once: ${MARKER}`);
  const m = /^\s*```js\n([\s\S]*?)^```$/m.exec(pieces[1]);
  assert.ok(m && m.index === 0, "no ```js block right after the marker");
  return m[1];
}

const b64url = (buf) => Buffer.from(buf).toString("base64url");
const parts = (token) => token.split(".");
const json = (part) => JSON.parse(Buffer.from(part, "base64url").toString("utf8"));

/** Awaits a promise that must reject with exactly this jose error class (and its code). */
async function assertJoseError(promise, errorClass, check = () => {}) {
  await assert.rejects(promise, (err) => {
    assert.equal(err.constructor, errorClass, `${err.name}: ${err.message}`);
    assert.equal(err.code, errorClass.code, `${err.code}: ${err.message}`);
    check(err);
    return true;
  });
}

const claimFailed = (claim) => (err) => {
  assert.equal(err.claim, claim, err.message);
  assert.equal(err.reason, "check_failed", err.message);
};

describe("README: verifying callsign tokens with jose", () => {
  const client = new CommunicationIdentityClient(h.connectionString);
  let tmpDir;
  let E; // jose's error classes
  let callsignVerifier;
  let verify;
  let issued; // { user, token, expiresOn } for ["chat", "voip"]
  let jwk; // the JWKS entry of issued.token's kid

  before(async () => {
    // Inside node_modules (git-ignored), so that the snippet's `import ... from "jose"` resolves to
    // the pinned package exactly as it would in an application.
    tmpDir = fs.mkdtempSync(path.join(__dirname, "..", "node_modules", ".readme-verify-jose-"));
    const file = path.join(tmpDir, "verify-callsign.mjs");
    fs.writeFileSync(file, readmeSnippet());
    ({ callsignVerifier } = await import(pathToFileURL(file).href));
    E = (await import("jose")).errors;
    verify = callsignVerifier({ endpoint: h.endpoint.href, resourceId: h.resourceId });
    issued = await client.createUserAndToken(["chat", "voip"]);
    const res = await fetch(new URL(".well-known/jwks.json", h.endpoint));
    assert.equal(res.status, 200);
    const { kid } = json(parts(issued.token)[0]);
    jwk = (await res.json()).keys.find((k) => k.kid === kid);
    assert.ok(jwk, `kid ${kid} is not in the JWKS`);
  });

  after(() => {
    if (tmpDir) fs.rmSync(tmpDir, { recursive: true, force: true });
  });

  it("a valid token verifies; its claims carry the identity, resource and scopes", async () => {
    const claims = await verify(issued.token, ["chat"]);
    assert.equal(claims.sub, issued.user.communicationUserId);
    assert.equal(claims.resourceId, h.resourceId);
    assert.equal(claims.iss, `urn:callsign:${h.resourceId}`);
    assert.deepEqual(claims.acsScope.split(",").sort(), ["chat", "voip"]);
    assert.equal(claims.exp * 1000, issued.expiresOn.getTime());
    assert.deepEqual(await verify(issued.token, ["voip", "chat"]), claims);
    assert.deepEqual(await verify(issued.token), claims);
    assert.equal(json(parts(issued.token)[0]).alg, "ES256"); // the server's default
  });

  it("a changed payload (one claim, signature kept) is refused", async () => {
    const [header, payload, signature] = parts(issued.token);
    const claims = json(payload);
    claims.acsScope = "chat,voip,chat.join";
    const forged = [header, b64url(JSON.stringify(claims)), signature].join(".");
    await assertJoseError(verify(forged, ["chat"]), E.JWSSignatureVerificationFailed);
  });

  it("a changed signature is refused", async () => {
    const [header, payload, signature] = parts(issued.token);
    const sig = Buffer.from(signature, "base64url");
    sig[10] ^= 0x01;
    const forged = [header, payload, b64url(sig)].join(".");
    assert.notEqual(forged, issued.token);
    await assertJoseError(verify(forged), E.JWSSignatureVerificationFailed);
  });

  it("a token signed by another key under callsign's kid is refused", async () => {
    const [header, payload] = parts(issued.token);
    const { privateKey } = crypto.generateKeyPairSync("ec", { namedCurve: "P-256" });
    const input = `${header}.${payload}`;
    const key = { key: privateKey, dsaEncoding: "ieee-p1363" }; // JWS's r || s
    const sig = crypto.sign("sha256", Buffer.from(input), key);
    await assertJoseError(verify(`${input}.${b64url(sig)}`), E.JWSSignatureVerificationFailed);
  });

  it("a token whose kid is not in the JWKS is refused", async () => {
    const [header, payload, signature] = parts(issued.token);
    const otherKid = b64url(JSON.stringify({ ...json(header), kid: "not-a-callsign-key" }));
    const forged = [otherKid, payload, signature].join(".");
    await assertJoseError(verify(forged), E.JWKSNoMatchingKey);
  });

  it("an expired token is refused (as of just after exp + the 60 s tolerance)", async () => {
    // Tokens live at least an hour; jose's own `currentDate` option (passed through by the
    // snippet) moves the verification time instead of waiting for it.
    const exp = json(parts(issued.token)[1]).exp;
    await assertJoseError(
      verify(issued.token, ["chat"], { currentDate: new Date((exp + 61) * 1000) }),
      E.JWTExpired,
      claimFailed("exp"),
    );
    // Within the tolerance it still verifies, so the refusal above is the expiry and nothing else.
    const within = new Date((exp + 59) * 1000);
    const claims = await verify(issued.token, ["chat"], { currentDate: within });
    assert.equal(claims.sub, issued.user.communicationUserId);
  });

  it("a token verified against another issuer is refused", async () => {
    const other = callsignVerifier({
      endpoint: h.endpoint.href,
      resourceId: h.resourceId,
      issuer: "urn:callsign:someone-else",
    });
    await assertJoseError(other(issued.token), E.JWTClaimValidationFailed, claimFailed("iss"));
  });

  it("a token of another resource is refused", async () => {
    const other = callsignVerifier({
      endpoint: h.endpoint.href,
      resourceId: "00000000-0000-0000-0000-000000000000",
      issuer: `urn:callsign:${h.resourceId}`, // the issuer passes: the resource check must refuse
    });
    await assertJoseError(
      other(issued.token),
      E.JWTClaimValidationFailed,
      claimFailed("resourceId"),
    );
  });

  it("a token without a required scope is refused", async () => {
    const chatOnly = await client.getToken(issued.user, ["chat"]);
    await verify(chatOnly.token, ["chat"]);
    const missing = (message) => (err) => {
      claimFailed("acsScope")(err);
      assert.equal(err.message, message);
    };
    await assertJoseError(
      verify(chatOnly.token, ["voip"]),
      E.JWTClaimValidationFailed,
      missing("missing scope voip"),
    );
    await assertJoseError(
      verify(chatOnly.token, ["chat", "voip.join"]),
      E.JWTClaimValidationFailed,
      missing("missing scope voip.join"),
    );
  });

  it("an unsigned token (alg none) is refused", async () => {
    const [header, payload] = parts(issued.token);
    const none = b64url(JSON.stringify({ ...json(header), alg: "none" }));
    const unsigned = [none, payload, ""].join(".");
    await assertJoseError(verify(unsigned), E.JOSEAlgNotAllowed);
  });

  it("an HS256 token keyed with the public key (PEM or JWK bytes) is refused", async () => {
    const [header, payload] = parts(issued.token);
    const publicKey = crypto.createPublicKey({ key: jwk, format: "jwk" });
    const pem = publicKey.export({ type: "spki", format: "pem" });
    for (const secret of [pem, JSON.stringify(jwk)]) {
      const input = `${b64url(JSON.stringify({ ...json(header), alg: "HS256" }))}.${payload}`;
      const mac = crypto.createHmac("sha256", secret).update(input).digest();
      await assertJoseError(verify(`${input}.${b64url(mac)}`), E.JOSEAlgNotAllowed);
    }
  });

  it("revocation is not in the token: a revoked one verifies, introspection refuses", async () => {
    const other = await client.createUserAndToken(["chat"]);
    await client.revokeTokens(other.user);
    await h.assertInactive(other.token, "revoked");
    const claims = await verify(other.token, ["chat"]);
    assert.equal(claims.sub, other.user.communicationUserId);
  });
});
