#!/usr/bin/env node
// Starts one callsign server (fresh temp data dir, 127.0.0.1, port 0), then runs `node --test` on
// test/*.test.js in a child node whose environment carries NODE_EXTRA_CA_CERTS (Node reads it only
// at start-up) and the server's connection string. Afterwards sends SIGTERM to that server process
// alone and requires it to exit 0. Exits non-zero if the tests or the server shutdown failed.
//
//   CALLSIGN_BIN     server binary (default: <repo>/target/debug/callsign; relative = to the repo)
//   CALLSIGN_KEEP_DATA  keep the temp dir (data + server.log) even after a clean run
"use strict";

const { spawn } = require("node:child_process");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");
const readline = require("node:readline");

const repoRoot = path.resolve(__dirname, "..", "..");
const STARTUP_TIMEOUT_MS = 30_000;
const TEST_TIMEOUT_MS = 150_000;
const SHUTDOWN_TIMEOUT_MS = 20_000;

function serverBin() {
  let bin = process.env.CALLSIGN_BIN || path.join(repoRoot, "target", "debug", "callsign");
  if (!path.isAbsolute(bin)) bin = path.join(repoRoot, bin);
  try {
    fs.accessSync(bin, fs.constants.X_OK);
  } catch {
    console.error(`callsign binary not found or not executable: ${bin}`);
    process.exit(3);
  }
  return bin;
}

function startServer(bin, tmp) {
  const logPath = path.join(tmp, "server.log");
  const logFd = fs.openSync(logPath, "w");
  const child = spawn(
    bin,
    ["serve", "--data-dir", path.join(tmp, "data"), "--listen", "127.0.0.1:0"],
    { stdio: ["ignore", "pipe", logFd] },
  );
  fs.closeSync(logFd);
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  const info = new Promise((resolve, reject) => {
    const found = {};
    const seen = [];
    const timer = setTimeout(() => fail("timed out"), STARTUP_TIMEOUT_MS);
    function fail(why) {
      clearTimeout(timer);
      const log = fs.existsSync(logPath) ? fs.readFileSync(logPath, "utf8").slice(-4000) : "";
      reject(new Error(`callsign did not report its endpoint (${why}).\nstdout:\n${seen.join("\n")}\nstderr:\n${log}`));
    }
    const rl = readline.createInterface({ input: child.stdout });
    rl.on("line", (line) => {
      seen.push(line);
      let m = /listening on (https:\/\/\S+?) \(resource ([0-9a-f-]{36})\)/.exec(line);
      if (m) [found.endpoint, found.resourceId] = [m[1], m[2]];
      m = /(endpoint=\S+;accesskey=\S+)/.exec(line);
      if (m) found.connectionString = m[1];
      m = /NODE_EXTRA_CA_CERTS=(\S+)/.exec(line);
      if (m) found.caPath = m[1];
      if (found.endpoint && found.connectionString && found.caPath && !found.done) {
        found.done = true;
        clearTimeout(timer);
        resolve(found);
      }
    });
    child.on("error", (err) => fail(err.message));
    child.on("exit", (code) => {
      if (!found.done) fail(`exited with ${code}`);
    });
  });
  return { child, exited, info, logPath };
}

async function stopServer(server) {
  if (server.child.exitCode !== null || server.child.signalCode !== null) {
    const r = await server.exited;
    return `already exited (${r.code ?? r.signal})`;
  }
  server.child.kill("SIGTERM");
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve(null), SHUTDOWN_TIMEOUT_MS);
  });
  const r = await Promise.race([server.exited, timeout]);
  clearTimeout(timer);
  if (r === null) {
    server.child.kill("SIGKILL");
    await server.exited;
    return "no exit within the shutdown timeout";
  }
  return r.code === 0 ? 0 : `exit code ${r.code}, signal ${r.signal}`;
}

function runTests(env) {
  const dir = path.join(__dirname, "test");
  const files = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith(".test.js"))
    .sort()
    .map((f) => path.join(dir, f));
  if (files.length === 0) {
    console.error("no test files under", dir);
    return Promise.resolve(1);
  }
  const child = spawn(process.execPath, ["--test", "--test-reporter=spec", ...files], { stdio: "inherit", env });
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      console.error(`node --test did not finish within ${TEST_TIMEOUT_MS} ms; stopping it`);
      child.kill("SIGTERM");
    }, TEST_TIMEOUT_MS);
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      resolve(code === null ? `signal ${signal}` : code);
    });
  });
}

async function main() {
  const bin = serverBin();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "callsign-compat-js-"));
  const server = startServer(bin, tmp);
  const onSignal = () => {
    server.child.kill("SIGTERM");
    process.exit(130);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  let testResult = "not run";
  let failed = true;
  try {
    const info = await server.info;
    if (info.caPath !== path.join(tmp, "data", "tls", "ca.pem")) {
      throw new Error(`unexpected CA path ${info.caPath}`);
    }
    const env = {
      ...process.env,
      NODE_EXTRA_CA_CERTS: info.caPath,
      CALLSIGN_CONNECTION_STRING: info.connectionString,
      CALLSIGN_ENDPOINT: info.endpoint,
      CALLSIGN_RESOURCE_ID: info.resourceId,
      // For store-side commands (`callsign resource create`) on the running server's data dir.
      CALLSIGN_SERVER_BIN: bin,
      CALLSIGN_STORE_DIR: path.join(tmp, "data"),
    };
    testResult = await runTests(env);
    failed = testResult !== 0;
  } catch (err) {
    console.error(err.message);
  } finally {
    const stopped = await stopServer(server);
    if (stopped !== 0) {
      console.error(`callsign did not exit 0 after SIGTERM: ${stopped}`);
      failed = true;
    }
    if (failed || process.env.CALLSIGN_KEEP_DATA) {
      console.error(`callsign server log kept at ${server.logPath}`);
    } else {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  }
  if (testResult !== 0) console.error(`node --test result: ${testResult}`);
  process.exit(failed ? 1 : 0);
}

main();
