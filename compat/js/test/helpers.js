"use strict";
// Shared by the *.test.js files. Talks only to the server run-tests.js started on 127.0.0.1.

const crypto = require("node:crypto");
const https = require("node:https");
const assert = require("node:assert/strict");

function env(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run these tests through compat/js/run-tests.js`);
  }
  return value;
}

const connectionString = env("CALLSIGN_CONNECTION_STRING");
const endpoint = new URL(env("CALLSIGN_ENDPOINT"));
const resourceId = env("CALLSIGN_RESOURCE_ID");
const accessKey = /accesskey=(.*)$/i.exec(connectionString)[1];
assert.equal(endpoint.hostname, "127.0.0.1");

const GUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";
const ID_RE = new RegExp(`^8:acs:(${GUID})_(${GUID})$`);
const FOREIGN_ID = "8:acs:00000000-0000-0000-0000-000000000000_00000000-0000-0000-0000-000000000000";

// Every scope combination the SDKs' live tests issue.
const ALL_SCOPE_COMBOS = [
  ["chat"],
  ["voip"],
  ["chat.join"],
  ["chat.join.limited"],
  ["voip.join"],
  ["voip", "chat"],
  ["chat", "chat.join", "chat.join.limited"],
  ["voip", "voip.join"],
  ["chat.join", "voip.join"],
];
const JOIN_SCOPES = ["chat.join", "chat.join.limited", "voip.join"];
const CLASSIC_SCOPE_COMBOS = ALL_SCOPE_COMBOS.filter((c) => !c.some((s) => JOIN_SCOPES.includes(s)));

function wrongKeyConnectionString() {
  const bogus = Buffer.alloc(64, 7).toString("base64");
  assert.notEqual(bogus, accessKey);
  return `endpoint=${endpoint.href};accesskey=${bogus}`;
}

function assertIdentityId(id) {
  const m = ID_RE.exec(id);
  assert.ok(m, `not an 8:acs:<resource>_<guid> id: ${id}`);
  assert.equal(m[1], resourceId);
}

/** The JWT payload, base64url-decoded; exp must be an integer. */
function jwtPayload(token) {
  assert.equal(typeof token, "string");
  const parts = token.split(".");
  assert.equal(parts.length, 3, "a JWT has three parts");
  const payload = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
  assert.ok(Number.isInteger(payload.exp), `exp must be an integer: ${payload.exp}`);
  return payload;
}

/** `when` (a Date) lies within a minute of `now` + minutes. */
function assertExpiresIn(when, minutes, now = Date.now()) {
  assert.ok(when instanceof Date && !Number.isNaN(when.getTime()), `not a Date: ${when}`);
  const target = now + minutes * 60_000;
  assert.ok(
    Math.abs(when.getTime() - target) <= 60_000,
    `expires ${when.toISOString()}, expected about ${new Date(target).toISOString()}`,
  );
}

/** An HMAC-SHA256 request signed the way the SDKs sign (x-ms-date;host;x-ms-content-sha256). */
function signedRequest(method, pathAndQuery, bodyObject, key = accessKey) {
  const body = bodyObject === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(bodyObject));
  const date = new Date().toUTCString();
  const contentHash = crypto.createHash("sha256").update(body).digest("base64");
  const toSign = `${method}\n${pathAndQuery}\n${date};${endpoint.host};${contentHash}`;
  const signature = crypto
    .createHmac("sha256", Buffer.from(key, "base64"))
    .update(toSign, "utf8")
    .digest("base64");
  const headers = {
    "x-ms-date": date,
    "x-ms-content-sha256": contentHash,
    authorization: `HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=${signature}`,
    accept: "application/json",
    "content-length": String(body.length),
  };
  if (body.length) headers["content-type"] = "application/json";
  return new Promise((resolve, reject) => {
    const req = https.request(
      { host: endpoint.hostname, port: endpoint.port, path: pathAndQuery, method, headers, timeout: 10_000 },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          resolve({ status: res.statusCode, body: text ? JSON.parse(text) : null });
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error("request timed out")));
    req.on("error", reject);
    req.end(body);
  });
}

async function introspect(token) {
  const { status, body } = await signedRequest("POST", "/tokens/:introspect?api-version=2023-10-01", { token });
  assert.equal(status, 200, JSON.stringify(body));
  assert.equal(typeof body.active, "boolean");
  return body;
}

async function assertActive(token) {
  const info = await introspect(token);
  assert.equal(info.active, true, JSON.stringify(info));
  return info;
}

async function assertInactive(token, reason) {
  const info = await introspect(token);
  assert.equal(info.active, false, JSON.stringify(info));
  assert.equal(info.reason, reason, JSON.stringify(info));
  return info;
}

/** Awaits a promise that must reject with a RestError of this status / code (/ message). */
async function assertRestError(promise, statusCode, code, message) {
  await assert.rejects(promise, (err) => {
    assert.equal(err.name, "RestError", `${err}`);
    assert.equal(err.statusCode, statusCode, `${err.statusCode} ${err.code} ${err.message}`);
    assert.equal(err.code, code, `${err.statusCode} ${err.code} ${err.message}`);
    if (message !== undefined) assert.equal(err.message, message);
    return true;
  });
}

module.exports = {
  ALL_SCOPE_COMBOS,
  CLASSIC_SCOPE_COMBOS,
  FOREIGN_ID,
  JOIN_SCOPES,
  accessKey,
  assertActive,
  assertExpiresIn,
  assertIdentityId,
  assertInactive,
  assertRestError,
  connectionString,
  endpoint,
  introspect,
  jwtPayload,
  resourceId,
  signedRequest,
  wrongKeyConnectionString,
};
