// The client in Node 20 (with `ws`) against a real Switchboard node started here on a free
// loopback port: delivery, recovery across a server-side disconnect, a logout that stops the
// client for good, and a frozen node noticed by the liveness check. Every wait is bounded.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

import { Switchboard } from "../dist/index.js";

const here = fileURLToPath(new URL(".", import.meta.url));
const BINARY = process.env.SWITCHBOARD_BIN ?? join(here, "../../../target/debug/switchboard");
const WAIT = 10_000;
const CONFIG = `
[server]
bind = "127.0.0.1:0"
heartbeat_interval = "1s"
idle_timeout = "3s"
[api]
key = "k"
[[channels]]
pattern = "chat:*"
join = "anyone"
publish = "anyone"
history_size = 1000
history_ttl = "10m"
[[channels]]
pattern = "*"
join = "anyone"
publish = "anyone"
`;

let node;
let base;
/** More config for the next `startNode` (an `[auth]` section, say). */
const CONFIG_EXTRA = { value: "" };

/** Starts a node; resolves with its process and base URL once it listens. */
function startNode() {
  const directory = mkdtempSync(join(tmpdir(), "switchboard-js-"));
  const config = join(directory, "node.toml");
  writeFileSync(config, CONFIG + CONFIG_EXTRA.value);
  const child = spawn(BINARY, ["serve", "--config", config], { stdio: ["ignore", "pipe", "inherit"] });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the node did not start")), WAIT);
    child.on("error", reject);
    let output = "";
    child.stdout.on("data", (chunk) => {
      output += chunk;
      const match = output.match(/listening on (http:\/\/[0-9.:]+)/);
      if (match) {
        clearTimeout(timer);
        resolve({ child, base: match[1] });
      }
    });
  });
}

before(async () => {
  ({ child: node, base } = await startNode());
});

after(() => {
  node?.kill("SIGKILL");
});

/** Resolves with the first value `check` returns that is not undefined, polling; rejects after WAIT. */
async function until(check, what) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const value = check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

function once(emitter, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} event`)), WAIT);
    const off = emitter.on(event, (value) => {
      clearTimeout(timer);
      off();
      resolve(value);
    });
  });
}

function connect(options = {}) {
  const sb = new Switchboard(`${base.replace("http", "ws")}/ws`, {
    WebSocket,
    minReconnectDelay: 50,
    maxReconnectDelay: 200,
    ...options,
  });
  return sb;
}

async function api(path, body) {
  const response = await fetch(`${base}${path}`, {
    method: "POST",
    headers: { authorization: "Bearer k", "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(response.status, 200, await response.text());
}

test("a publication reaches another client; a custom action without a route is refused", async () => {
  const alice = connect();
  const bob = connect();
  const bobs = bob.channel("room:1");
  const got = [];
  bobs.on("message", (data) => got.push(data));
  const joined = once(bobs, "joined");
  alice.connect();
  bob.connect();
  await Promise.all([once(alice, "connected"), joined]);
  const reply = await alice.channel("room:1").publish({ text: "hi" });
  assert.equal(reply, null);
  await until(() => got.length === 1, "bob's message");
  assert.deepEqual(got, [{ text: "hi" }]);
  await assert.rejects(alice.request("sendMessage", { text: "x" }), (error) => error.code === "unknown_action");
  alice.disconnect();
  bob.disconnect();
});

test("after a server-side disconnect the client rejoins from its position and misses nothing", async () => {
  const sb = connect({ pingInterval: 0 });
  const room = sb.channel("chat:recover");
  const got = [];
  room.on("message", (data, meta) => got.push([data, meta.offset]));
  sb.connect();
  const welcome = await once(sb, "connected");
  await until(() => room.position, "the channel's position");
  for (let n = 0; n < 5; n++) await api("/api/publish", { channel: "chat:recover", data: n });
  await until(() => got.length === 5, "the first five");
  // The node closes the socket (as for a slow consumer); publications go on meanwhile.
  const dropped = once(sb, "disconnected");
  await api("/api/disconnect", { connection: welcome.connection_id, code: 4010, reason: "slow" });
  const event = await dropped;
  assert.deepEqual(event, { code: 4010, reason: "slow", willReconnect: true });
  for (let n = 5; n < 25; n++) await api("/api/publish", { channel: "chat:recover", data: n });
  await until(() => got.length === 25, "all twenty-five");
  assert.deepEqual(
    got,
    Array.from({ length: 25 }, (_, n) => [n, n + 1]),
  );
  sb.disconnect();
});

test("a logout closes the client for good", async () => {
  const sb = connect({ pingInterval: 0 });
  sb.connect();
  const welcome = await once(sb, "connected");
  const closed = once(sb, "disconnected");
  await api("/api/disconnect", { connection: welcome.connection_id });
  assert.deepEqual(await closed, { code: 4002, reason: "logged out", willReconnect: false });
  assert.equal(sb.state, "closed");
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(sb.state, "closed", "no reconnect");
});

test("a node that stops answering is noticed by the liveness check", async (t) => {
  const frozen = await startNode();
  t.after(() => frozen.child.kill("SIGKILL"));
  const sb = new Switchboard(`${frozen.base.replace("http", "ws")}/ws`, {
    WebSocket,
    pingInterval: 200,
    pongTimeout: 300,
    minReconnectDelay: 50,
    maxReconnectDelay: 100,
  });
  sb.connect();
  await once(sb, "connected");
  const started = Date.now();
  const dropped = once(sb, "disconnected");
  frozen.child.kill("SIGSTOP");
  const event = await dropped;
  assert.deepEqual(event, { code: 1006, reason: "no pong", willReconnect: true });
  assert.ok(Date.now() - started < 2_000, "within ping interval + pong timeout");
  frozen.child.kill("SIGCONT");
  await once(sb, "connected");
  sb.disconnect();
});

/** An HS256 token for user 42 that expires in `seconds`. */
async function token(seconds) {
  const { createHmac } = await import("node:crypto");
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${encode({ alg: "HS256", typ: "JWT" })}.${encode({ sub: "42", exp: Math.floor(Date.now() / 1000) + seconds })}`;
  return `${body}.${createHmac("sha256", "test-secret").update(body).digest("base64url")}`;
}

test("a token about to expire is refreshed without a reconnect", async (t) => {
  CONFIG_EXTRA.value = '[auth]\nanonymous = false\n[auth.jwt]\nsecret = "test-secret"\nleeway = "0s"\n';
  const authed = await startNode();
  CONFIG_EXTRA.value = "";
  t.after(() => authed.child.kill("SIGKILL"));
  let issued = 0;
  const sb = new Switchboard(`${authed.base.replace("http", "ws")}/ws`, {
    WebSocket,
    pingInterval: 0,
    refreshAhead: 2_000,
    getToken: () => token(++issued === 1 ? 3 : 600),
  });
  const disconnects = [];
  sb.on("disconnected", (event) => disconnects.push(event));
  sb.connect();
  const welcome = await once(sb, "connected");
  assert.equal(welcome.user, "42");
  // Past the first token's expiry: still the same connection.
  await new Promise((resolve) => setTimeout(resolve, 4_500));
  assert.equal(sb.state, "connected");
  assert.deepEqual(disconnects, []);
  assert.equal(issued, 2, "asked once more, ahead of expiry");
  sb.disconnect();
});
