"use strict";
// The same SDK pointed at the older api-versions through its `apiVersion` client option.

const { describe, it } = require("node:test");
const assert = require("node:assert/strict");
const { CommunicationIdentityClient } = require("@azure/communication-identity");
const { AzureCommunicationTokenCredential } = require("@azure/communication-common");
const h = require("./helpers");

// The last four were released after this SDK; their identity operations keep the 2023-10-01 bodies.
for (const apiVersion of [
  "2021-03-07", "2022-06-01", "2022-10-01", "2023-10-01",
  "2025-04-01-preview", "2025-06-30", "2026-07-22", "2026-09-23",
]) {
  const client = new CommunicationIdentityClient(h.connectionString, { apiVersion });
  const honoursExpiry = apiVersion >= "2022-10-01";
  const hasJoinScopes = apiVersion >= "2023-10-01";

  describe(`api-version ${apiVersion}`, () => {
    const combos = hasJoinScopes ? h.ALL_SCOPE_COMBOS : h.CLASSIC_SCOPE_COMBOS;
    for (const scopes of combos) {
      it(`createUserAndToken + getToken ${scopes.join(",")}`, async () => {
        const result = await client.createUserAndToken(scopes);
        h.assertIdentityId(result.user.communicationUserId);
        h.assertExpiresIn(result.expiresOn, 1440);
        const t = await client.getToken(result.user, scopes);
        h.assertExpiresIn(t.expiresOn, 1440);
        const payload = h.jwtPayload(t.token);
        assert.deepEqual(payload.acsScope.split(",").sort(), [...scopes].sort());
        const got = await new AzureCommunicationTokenCredential(t.token).getToken();
        assert.equal(got.expiresOnTimestamp, payload.exp * 1000);
        await h.assertActive(t.token);
      });
    }

    if (!hasJoinScopes) {
      it("join scopes are refused with 400", async () => {
        const user = await client.createUser();
        for (const scope of h.JOIN_SCOPES) {
          await h.assertRestError(client.createUserAndToken([scope]), 400, "ValidationError");
          await h.assertRestError(client.getToken(user, ["chat", scope]), 400, "ValidationError");
        }
      });
    }

    it(`tokenExpiresInMinutes 60 is ${honoursExpiry ? "honoured" : "ignored"}`, async () => {
      const result = await client.createUserAndToken(["chat"], { tokenExpiresInMinutes: 60 });
      h.assertExpiresIn(result.expiresOn, honoursExpiry ? 60 : 1440);
      const t = await client.getToken(result.user, ["voip"], { tokenExpiresInMinutes: 60 });
      h.assertExpiresIn(t.expiresOn, honoursExpiry ? 60 : 1440);
    });

    it("revokeTokens and deleteUser", async () => {
      const result = await client.createUserAndToken(["chat"]);
      await client.revokeTokens(result.user);
      await h.assertInactive(result.token, "revoked");
      const t = await client.getToken(result.user, ["chat"]);
      await h.assertActive(t.token);
      await client.deleteUser(result.user);
      await h.assertInactive(t.token, "identityNotFound");
      await h.assertRestError(client.getToken(result.user, ["chat"]), 404, "IdentityNotFound");
    });

    it("getToken with [] is refused with 400", async () => {
      const user = await client.createUser();
      await h.assertRestError(client.getToken(user, []), 400, "ValidationError",
        "Invalid scopes - Scopes field is required.");
    });
  });
}

describe("api-version option reaches the wire", () => {
  it("an api-version the server does not serve is refused with 400 UnsupportedApiVersion", async () => {
    const client = new CommunicationIdentityClient(h.connectionString, { apiVersion: "2019-01-01" });
    await h.assertRestError(client.createUser(), 400, "UnsupportedApiVersion");
  });
});
