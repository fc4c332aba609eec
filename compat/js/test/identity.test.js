"use strict";
// @azure/communication-identity 1.3.1 (default api-version 2023-10-01) and
// @azure/communication-common's AzureCommunicationTokenCredential against a live callsign server.

const { describe, it } = require("node:test");
const assert = require("node:assert/strict");
const { CommunicationIdentityClient } = require("@azure/communication-identity");
const { AzureCommunicationTokenCredential } = require("@azure/communication-common");
const h = require("./helpers");

const client = new CommunicationIdentityClient(h.connectionString);
const label = (scopes) => scopes.join(",");

/** Token checks every consumer relies on; returns the payload. */
async function checkToken(userId, accessToken, scopes, { minutes = 1440, now = Date.now() } = {}) {
  h.assertExpiresIn(accessToken.expiresOn, minutes, now);
  const payload = h.jwtPayload(accessToken.token);
  assert.ok(Math.abs(payload.exp * 1000 - accessToken.expiresOn.getTime()) < 1000);
  assert.equal(payload.skypeid, userId.slice("8:".length));
  assert.equal(payload.resourceId, h.resourceId);
  assert.deepEqual(payload.acsScope.split(",").sort(), [...scopes].sort());
  const credential = new AzureCommunicationTokenCredential(accessToken.token);
  const got = await credential.getToken();
  assert.equal(got.token, accessToken.token);
  assert.equal(got.expiresOnTimestamp, payload.exp * 1000);
  credential.dispose();
  const info = await h.assertActive(accessToken.token);
  assert.equal(info.id, userId);
  assert.deepEqual([...info.scopes].sort(), [...scopes].sort());
  return payload;
}

describe("createUser", () => {
  it("creates distinct identities of this resource", async () => {
    const a = await client.createUser();
    const b = await client.createUser();
    h.assertIdentityId(a.communicationUserId);
    h.assertIdentityId(b.communicationUserId);
    assert.notEqual(a.communicationUserId, b.communicationUserId);
  });
});

describe("createUserAndToken and getToken, every scope combination", () => {
  for (const scopes of h.ALL_SCOPE_COMBOS) {
    it(label(scopes), async () => {
      let now = Date.now();
      const result = await client.createUserAndToken(scopes);
      h.assertIdentityId(result.user.communicationUserId);
      await checkToken(result.user.communicationUserId, result, scopes, { now });
      now = Date.now();
      const again = await client.getToken(result.user, scopes);
      await checkToken(result.user.communicationUserId, again, scopes, { now });
      assert.notEqual(again.token, result.token);
    });
  }
});

describe("custom expiry", () => {
  for (const minutes of [60, 1440]) {
    it(`${minutes} minutes`, async () => {
      let now = Date.now();
      const result = await client.createUserAndToken(["chat", "voip"], { tokenExpiresInMinutes: minutes });
      await checkToken(result.user.communicationUserId, result, ["chat", "voip"], { minutes, now });
      now = Date.now();
      const token = await client.getToken(result.user, ["voip.join"], { tokenExpiresInMinutes: minutes });
      await checkToken(result.user.communicationUserId, token, ["voip.join"], { minutes, now });
    });
  }
  for (const minutes of [59, 1441]) {
    it(`${minutes} minutes is refused with 400`, async () => {
      const message = `ExpiresInMinutes value ${minutes} is invalid. Value must be within the [60, 1440] interval.`;
      await h.assertRestError(
        client.createUserAndToken(["chat"], { tokenExpiresInMinutes: minutes }),
        400,
        "ValidationError",
        message,
      );
      const user = await client.createUser();
      await h.assertRestError(
        client.getToken(user, ["chat"], { tokenExpiresInMinutes: minutes }),
        400,
        "ValidationError",
        message,
      );
    });
  }
});

describe("scope validation", () => {
  it("getToken with [] is refused with 400", async () => {
    const user = await client.createUser();
    await h.assertRestError(
      client.getToken(user, []),
      400,
      "ValidationError",
      "Invalid scopes - Scopes field is required.",
    );
  });
  it("an unknown scope is refused with 400", async () => {
    const user = await client.createUser();
    await h.assertRestError(client.getToken(user, ["chat", "email"]), 400, "ValidationError");
  });
});

describe("revokeTokens", () => {
  it("takes every earlier token out of force at once, not later ones", async () => {
    const first = await client.createUserAndToken(["chat"]);
    const second = await client.getToken(first.user, ["voip"]);
    await h.assertActive(first.token);
    assert.equal(await client.revokeTokens(first.user), undefined);
    await h.assertInactive(first.token, "revoked");
    await h.assertInactive(second.token, "revoked");
    const fresh = await client.getToken(first.user, ["chat", "voip"]);
    await checkToken(first.user.communicationUserId, fresh, ["chat", "voip"]);
    await h.assertInactive(first.token, "revoked");
  });
});

describe("deleteUser", () => {
  it("deletes the identity: its tokens and later calls fail with 404", async () => {
    const result = await client.createUserAndToken(["voip"]);
    assert.equal(await client.deleteUser(result.user), undefined);
    await h.assertInactive(result.token, "identityNotFound");
    await h.assertRestError(client.getToken(result.user, ["voip"]), 404, "IdentityNotFound");
    await h.assertRestError(client.revokeTokens(result.user), 404, "IdentityNotFound");
    await h.assertRestError(client.deleteUser(result.user), 404, "IdentityNotFound");
  });
  it("an unknown identity of this resource is not found", async () => {
    const ghost = { communicationUserId: `8:acs:${h.resourceId}_${require("node:crypto").randomUUID()}` };
    await h.assertRestError(client.getToken(ghost, ["chat"]), 404, "IdentityNotFound");
  });
});

describe("foreign and unauthenticated calls", () => {
  const foreign = { communicationUserId: h.FOREIGN_ID };
  const message = "Provided identity doesn't belong to the resource.";
  it("an identity of another resource is refused with 401 IdentityNotOwned", async () => {
    await h.assertRestError(client.getToken(foreign, ["chat"]), 401, "IdentityNotOwned", message);
    await h.assertRestError(client.revokeTokens(foreign), 401, "IdentityNotOwned", message);
    await h.assertRestError(client.deleteUser(foreign), 401, "IdentityNotOwned", message);
  });
  it("a wrong access key is refused with 401 Denied", async () => {
    const user = await client.createUser();
    const bad = new CommunicationIdentityClient(h.wrongKeyConnectionString());
    await h.assertRestError(bad.createUser(), 401, "Denied");
    await h.assertRestError(bad.getToken(user, ["chat"]), 401, "Denied");
    await h.assertRestError(bad.revokeTokens(user), 401, "Denied");
    await h.assertRestError(bad.deleteUser(user), 401, "Denied");
    await client.getToken(user, ["chat"]);
  });
});

describe("another resource", () => {
  const { execFileSync } = require("node:child_process");
  for (const host of [null, "localhost"]) {
    it(`works through the connection string printed for it (${host ?? "server's address"})`, async () => {
      const name = `js-${host ?? "shared"}`;
      const args = ["resource", "create", "--name", name, "--json"];
      if (host) args.push("--host", host);
      args.push("--data-dir", process.env.CALLSIGN_STORE_DIR);
      // CALLSIGN_ENDPOINT (set for these tests) would be taken as the endpoint to print.
      const { CALLSIGN_ENDPOINT, ...env } = process.env;
      const created = JSON.parse(execFileSync(process.env.CALLSIGN_SERVER_BIN, args, { encoding: "utf8", env }));
      if (host) assert.ok(created.connectionString.startsWith(`endpoint=https://${host}:`), created.connectionString);
      const other = new CommunicationIdentityClient(created.connectionString);
      let user;
      const deadline = Date.now() + 5000;
      for (;;) {
        // The server reloads its resources within a second.
        try {
          user = await other.createUser();
          break;
        } catch (e) {
          assert.equal(e.statusCode, 401, String(e));
          assert.ok(Date.now() < deadline, "the new resource's key is still refused");
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      assert.ok(user.communicationUserId.startsWith(`8:acs:${created.id}_`), user.communicationUserId);
      const token = await other.getToken(user, ["chat"]);
      assert.equal(h.jwtPayload(token.token).resourceId, created.id);
      await h.assertRestError(client.getToken(user, ["chat"]), 401, "IdentityNotOwned");
      await other.deleteUser(user);
    });
  }
});

describe("AzureCommunicationTokenCredential", () => {
  it("reads exp from many tokens", async () => {
    const user = await client.createUser();
    for (let i = 0; i < 100; i++) {
      const scopes = h.ALL_SCOPE_COMBOS[i % h.ALL_SCOPE_COMBOS.length];
      const t = await client.getToken(user, scopes);
      const credential = new AzureCommunicationTokenCredential(t.token);
      const got = await credential.getToken();
      assert.equal(got.expiresOnTimestamp, h.jwtPayload(t.token).exp * 1000);
      assert.ok(Math.abs(got.expiresOnTimestamp - t.expiresOn.getTime()) < 1000);
      credential.dispose();
    }
  });
  it("refreshes through a tokenRefresher that calls the server", async () => {
    const user = await client.createUser();
    let calls = 0;
    const credential = new AzureCommunicationTokenCredential({
      tokenRefresher: async () => {
        calls++;
        return (await client.getToken(user, ["chat"], { tokenExpiresInMinutes: 60 })).token;
      },
      refreshProactively: true,
    });
    try {
      const got = await credential.getToken();
      assert.ok(calls >= 1);
      const payload = h.jwtPayload(got.token);
      assert.equal(got.expiresOnTimestamp, payload.exp * 1000);
      h.assertExpiresIn(new Date(got.expiresOnTimestamp), 60);
      await h.assertActive(got.token);
      // Fresh enough: a second call returns the cached token.
      assert.equal((await credential.getToken()).token, got.token);
    } finally {
      credential.dispose();
    }
  });
});
