// The client in Node 20 (with `ws`) against real Switchboard nodes started here on free loopback
// ports: delivery in JSON and MessagePack, recovery across a server-side disconnect and after a
// real slow-consumer close (4010), a logout that stops the client for good, a frozen node noticed
// by the liveness check, and a token refreshed before it expires. Every wait is bounded.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { decode, encode } from "@msgpack/msgpack";
import WebSocket from "ws";

import { Switchboard } from "../dist/index.js";
import { api as apiOf, metric, once, sleep, startNode, until } from "./support.mjs";

const CONFIG = `
[server]
heartbeat_interval = "1s"
idle_timeout = "3s"
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

before(async () => {
  ({ child: node, base } = await startNode(CONFIG));
});

after(() => {
  node?.kill("SIGKILL");
});

const api = (path, body) => apiOf(base, path, body);

function connect(options = {}) {
  const sb = new Switchboard(`${base.replace("http", "ws")}/ws`, {
    WebSocket,
    minReconnectDelay: 50,
    maxReconnectDelay: 200,
    ...options,
  });
  return sb;
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

test("MessagePack clients publish and receive through a real node", async () => {
  const options = { encoding: "msgpack", msgpack: { encode, decode } };
  const alice = connect(options);
  const bob = connect(options);
  const room = bob.channel("room:msgpack");
  const got = [];
  room.on("message", (data) => got.push(data));
  const joined = once(room, "joined");
  alice.connect();
  bob.connect();
  await Promise.all([once(alice, "connected"), joined]);
  const data = { text: "héllo", list: [1.5, null, true], n: 2 ** 40 };
  assert.equal(await alice.channel("room:msgpack").publish(data), null);
  await until(() => got.length === 1, "bob's message");
  assert.deepEqual(got, [data]);
  // Binary is no JSON value: refused, and the publish fails at once rather than timing out.
  await assert.rejects(alice.channel("room:msgpack").publish({ bytes: new Uint8Array([1, 2]) }), (error) => error.code === "bad_request");
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

/** A `ws` socket whose reading the test can pause, as a stalled browser tab would. */
class PausableSocket extends WebSocket {
  static last;
  constructor(...args) {
    super(...args);
    PausableSocket.last = this;
  }
  pause() {
    this._socket.pause();
  }
  resume() {
    this._socket.resume();
  }
}

test("a client that stopped reading is closed as a slow consumer (4010), reconnects and recovers", async (t) => {
  const small = await startNode(CONFIG, { SWITCHBOARD_SERVER__OUTBOUND_QUEUE: "16" });
  t.after(() => small.stop());
  const sb = new Switchboard(small.ws, { WebSocket: PausableSocket, pingInterval: 0, minReconnectDelay: 50, maxReconnectDelay: 200 });
  const room = sb.channel("chat:slow");
  const got = [];
  room.on("message", (data) => got.push(data.n));
  const resets = [];
  room.on("reset", (position) => resets.push(position));
  const closes = [];
  sb.on("disconnected", (event) => closes.push(event.code));
  sb.connect();
  await once(room, "joined");
  PausableSocket.last.pause();
  // Publish until the node gives up on the stalled socket (the kernel's buffers fill first).
  const closed = 'switchboard_closes_total{code="4010",reason="slow_consumer",initiator="server"}';
  const padding = "x".repeat(32_000);
  let published = 0;
  const publish = () => apiOf(small.base, "/api/publish", { channel: "chat:slow", data: { n: published++, padding } });
  await until(async () => {
    for (let n = 0; n < 20; n++) await publish();
    return (await metric(small.base, closed)) === 1;
  }, "a 4010 close", 60_000);
  t.diagnostic(`${published} publications of 32 kB before the node closed the stalled socket`);
  for (let n = 0; n < 5; n++) await publish();
  // What the socket had taken in arrives, then the close; the rejoin replays the rest, more
  // than the node's queue of 16 frames holds.
  PausableSocket.last.resume();
  await until(() => got.length >= published, `all ${published} publications`, 30_000).catch((error) => {
    throw new Error(`${error.message}: got ${got.length} (last ${got.at(-1)}), closes ${closes}, resets ${resets.length}`);
  });
  assert.deepEqual(got, Array.from({ length: published }, (_, n) => n), "each once, in order");
  assert.deepEqual(closes, [4010]);
  assert.deepEqual(resets, []);
  const replayed = await metric(small.base, "switchboard_publications_replayed_total");
  assert.ok(replayed > 16, `a replay longer than the queue (${replayed})`);
  for (let n = 0; n < 3; n++) await publish();
  await until(() => got.length === published, "live publications after the replay");
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
  await sleep(300);
  assert.equal(sb.state, "closed", "no reconnect");
});

test("a node that stops answering is noticed by the liveness check", async (t) => {
  const frozen = await startNode(CONFIG);
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
  const authed = await startNode(`${CONFIG}[auth]\nanonymous = false\n[auth.jwt]\nsecret = "test-secret"\nleeway = "0s"\n`);
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
  await sleep(4_500);
  assert.equal(sb.state, "connected");
  assert.deepEqual(disconnects, []);
  assert.equal(issued, 2, "asked once more, ahead of expiry");
  sb.disconnect();
});

test("a refused handshake (a bad token reads as 1006) makes the client ask for a new token", async (t) => {
  const authed = await startNode(`${CONFIG}[auth]\nanonymous = false\n[auth.jwt]\nsecret = "test-secret"\n`);
  t.after(() => authed.stop());
  let asked = 0;
  const sb = new Switchboard(authed.ws, {
    WebSocket,
    pingInterval: 0,
    minReconnectDelay: 20,
    maxReconnectDelay: 50,
    // A stale credential, until the client asks again after failed handshakes.
    getToken: () => (++asked === 1 ? "not-a-jwt" : token(600)),
  });
  const codes = [];
  sb.on("disconnected", (event) => codes.push(event.code));
  sb.connect();
  const welcome = await once(sb, "connected");
  assert.equal(welcome.user, "42");
  assert.equal(asked, 2, "asked once more after the refusals");
  assert.ok(codes.length >= 1 && codes.every((code) => code === 1006), `${codes}`);
  sb.disconnect();
});

test("a custom action reaches its route's view and messages to the connection arrive", async (t) => {
  // The back end: one route view that echoes what the client sent, with who sent it.
  const { createServer } = await import("node:http");
  const backend = createServer((request, response) => {
    let body = "";
    request.on("data", (chunk) => (body += chunk));
    request.on("end", () => {
      const call = JSON.parse(body);
      response.writeHead(200, { "content-type": "application/json" });
      response.end(JSON.stringify({ reply: { echo: call.body.text, connection: call.connection } }));
    });
  });
  await new Promise((resolve) => backend.listen(0, "127.0.0.1", resolve));
  t.after(() => backend.close());
  const routed = await startNode(`${CONFIG}[routes]\necho = "http://127.0.0.1:${backend.address().port}/echo"\n`);
  t.after(() => routed.stop());
  const sb = new Switchboard(routed.ws, { WebSocket, pingInterval: 0 });
  const messages = [];
  sb.on("message", (data) => messages.push(data));
  sb.connect();
  const welcome = await once(sb, "connected");
  assert.deepEqual(await sb.request("echo", { text: "hi" }), { echo: "hi", connection: welcome.connection_id });
  await apiOf(routed.base, "/api/send", { connection: welcome.connection_id, data: { note: "to you" } });
  await until(() => messages.length === 1, "the message to the connection");
  assert.deepEqual(messages, [{ note: "to you" }]);
  sb.disconnect();
});
