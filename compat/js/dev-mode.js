#!/usr/bin/env node
// `callsign serve --dev` with the released JS SDK, using only what the README documents: the
// well-known connection string (verbatim, port 8443) and the dev CA from `callsign ca-cert --dev`
// (NODE_EXTRA_CA_CERTS, which Node reads only at start: the SDK runs in a child node). Two runs
// accept the same key; nothing is written to the working directory. Exits non-zero on failure.
"use strict";

const { spawn, execFileSync } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const assert = require("node:assert/strict");

const DOCUMENTED =
  "endpoint=https://127.0.0.1:8443/;accesskey=Y2FsbHNpZ24tZGV2LXByaW1hcnkta2V5LXB1YmxpYyE=";
const repoRoot = path.resolve(__dirname, "..", "..");
let bin = process.env.CALLSIGN_BIN || path.join(repoRoot, "target", "debug", "callsign");
if (!path.isAbsolute(bin)) bin = path.join(repoRoot, bin);

const CLIENT = `
const { CommunicationIdentityClient } = require("@azure/communication-identity");
(async () => {
  const client = new CommunicationIdentityClient(process.env.CONNECTION_STRING);
  let last;
  for (let i = 0; i < 100; i++) {
    try {
      const { user, token } = await client.createUserAndToken(["chat"]);
      if (token.split(".").length !== 3) throw new Error("not a JWT");
      console.log(user.communicationUserId);
      return;
    } catch (e) {
      last = e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw last;
})().catch((e) => { console.error(e.message); process.exit(1); });
`;

function runClient(ca) {
  return execFileSync(process.execPath, ["-e", CLIENT], {
    cwd: __dirname,
    env: { ...process.env, NODE_EXTRA_CA_CERTS: ca, CONNECTION_STRING: DOCUMENTED },
    encoding: "utf8",
    timeout: 60_000,
  }).trim();
}

function stop(child) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("serve --dev did not stop")), 20_000);
    child.on("exit", (code) => {
      clearTimeout(timer);
      resolve(code);
    });
    child.kill("SIGTERM");
  });
}

(async () => {
  const cwd = fs.mkdtempSync(path.join(os.tmpdir(), "callsign-devmode-cwd-"));
  const elsewhere = fs.mkdtempSync(path.join(os.tmpdir(), "callsign-devmode-ca-"));
  const ca = path.join(elsewhere, "callsign-dev-ca.pem");
  fs.writeFileSync(ca, execFileSync(bin, ["ca-cert", "--dev"]));
  assert.equal(execFileSync(bin, ["connection-string", "--dev"], { encoding: "utf8" }).trim(), DOCUMENTED);
  const ids = [];
  try {
    for (let run = 0; run < 2; run++) {
      const child = spawn(bin, ["serve", "--dev"], { cwd, stdio: "ignore" });
      try {
        const id = runClient(ca);
        assert.match(id, /^8:acs:de7de7de-de7d-4e7d-8e7d-e7de7de7de7d_/);
        ids.push(id);
      } finally {
        assert.equal(await stop(child), 0, "serve --dev exits 0 on SIGTERM");
      }
      assert.deepEqual(fs.readdirSync(cwd), [], "nothing written to the working directory");
    }
    assert.notEqual(ids[0], ids[1]);
    console.log("dev-mode pass 1");
  } finally {
    fs.rmSync(cwd, { recursive: true, force: true });
    fs.rmSync(elsewhere, { recursive: true, force: true });
  }
})().catch((e) => {
  console.error(e);
  console.log("dev-mode fail 1");
  process.exit(1);
});
