// The client's state machine, backoff and close-code table, against a fake socket and fake
// timers (node's test runner): no network, no real time.
import { test, mock } from "node:test";
import assert from "node:assert/strict";

import { Switchboard, SwitchboardError, backoff, closeAction } from "../dist/index.js";

/** A socket the test drives: it records what the client sent and plays the server. */
class FakeSocket {
  static made = [];
  constructor(url, protocol) {
    this.url = url;
    this.protocol = protocol;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    FakeSocket.made.push(this);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close(code, reason) {
    this.closedWith = { code, reason };
    this.readyState = 3;
  }
  // The server's side.
  open(welcome = {}) {
    this.readyState = 1;
    this.onopen?.({});
    this.frame({ type: "welcome", connection_id: "c_1", user: null, channels: [], expires_at: null, ...welcome });
  }
  frame(value) {
    this.onmessage?.({ data: JSON.stringify(value) });
  }
  drop(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  last(action) {
    return [...this.sent].reverse().find((frame) => frame.action === action);
  }
}

function client(options = {}) {
  FakeSocket.made = [];
  return new Switchboard("ws://example/ws", { WebSocket: FakeSocket, ...options });
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

test("the close-code table", () => {
  assert.equal(closeAction(1000), "stop");
  assert.equal(closeAction(4002), "stop");
  assert.equal(closeAction(4003), "stop");
  for (const code of [1001, 1006, 4010, 1011]) assert.equal(closeAction(code), "reconnect");
  assert.equal(closeAction(1012), "reconnect_soon");
  assert.equal(closeAction(4001), "reconnect_with_token");
  assert.equal(closeAction(4008), "back_off");
});

test("backoff is full jitter below a doubling ceiling", () => {
  assert.equal(backoff(0, 500, 20_000, () => 0.999), 499);
  assert.equal(backoff(3, 500, 20_000, () => 0.999), 3_996);
  assert.equal(backoff(10, 500, 20_000, () => 0.999), 19_980);
  assert.equal(backoff(1000, 500, 20_000, () => 0.5), 10_000);
  assert.equal(backoff(2, 500, 20_000, () => 0), 0);
});

test("channels are joined on connect and again from their position after a reconnect", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const sb = client({ pingInterval: 0 });
  const states = [];
  sb.on("state", (state) => states.push(state));
  const room = sb.channel("chat:1");
  const received = [];
  room.on("message", (data) => received.push(data));
  sb.connect();
  await flush();
  const first = FakeSocket.made[0];
  assert.equal(first.protocol, "switchboard.v1.json");
  first.open();
  const join = first.last("join");
  assert.deepEqual({ ...join, id: undefined }, { action: "join", channel: "chat:1", id: undefined });
  first.frame({ type: "reply", id: join.id, data: { offset: 4, epoch: "e" } });
  first.frame({ type: "message", channel: "chat:1", data: "five", offset: 5, epoch: "e" });
  first.drop(1006);
  assert.equal(sb.state, "disconnected");
  t.mock.timers.tick(500);
  await flush();
  const second = FakeSocket.made[1];
  assert.ok(second, "reconnected within the first backoff ceiling");
  second.open();
  const rejoin = second.last("join");
  assert.deepEqual(rejoin.since, { offset: 5, epoch: "e" });
  // The replay overlaps what was seen: once is enough.
  second.frame({ type: "message", channel: "chat:1", data: "five", offset: 5, epoch: "e" });
  second.frame({ type: "message", channel: "chat:1", data: "six", offset: 6, epoch: "e" });
  second.frame({ type: "reply", id: rejoin.id, data: { recovered: true, offset: 6, epoch: "e" } });
  assert.deepEqual(received, ["five", "six"]);
  assert.deepEqual(states, ["connecting", "connected", "disconnected", "connecting", "connected"]);
  sb.disconnect();
});

test("recovered: false and gap reset the channel", async () => {
  const sb = client({ pingInterval: 0 });
  const room = sb.channel("chat:1");
  const resets = [];
  room.on("reset", (position) => resets.push(position));
  room.position = { offset: 3, epoch: "old" };
  sb.connect();
  await flush();
  const socket = FakeSocket.made[0];
  socket.open();
  const join = socket.last("join");
  socket.frame({ type: "reply", id: join.id, data: { recovered: false, offset: 9, epoch: "new" } });
  socket.frame({ type: "gap", channel: "chat:1", offset: 20, epoch: "new" });
  assert.deepEqual(resets, [
    { offset: 9, epoch: "new" },
    { offset: 20, epoch: "new" },
  ]);
  sb.disconnect();
});

test("logged out and forbidden are terminal; 1012 reconnects soon; 4008 backs off long", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  for (const code of [4002, 4003, 1000]) {
    const sb = client({ pingInterval: 0 });
    const seen = [];
    sb.on("disconnected", (event) => seen.push(event));
    sb.connect();
    await flush();
    FakeSocket.made[0].open();
    FakeSocket.made[0].drop(code, "bye");
    t.mock.timers.tick(60_000);
    await flush();
    assert.equal(sb.state, "closed");
    assert.equal(FakeSocket.made.length, 1, `no reconnect after ${code}`);
    assert.deepEqual(seen, [{ code, reason: "bye", willReconnect: false }]);
  }
  const restarting = client({ pingInterval: 0, minReconnectDelay: 1000 });
  restarting.connect();
  await flush();
  FakeSocket.made[0].open();
  FakeSocket.made[0].drop(1012);
  t.mock.timers.tick(1000);
  await flush();
  assert.equal(FakeSocket.made.length, 2, "1012: within minReconnectDelay");
  restarting.disconnect();
  const limited = client({ pingInterval: 0, maxReconnectDelay: 30_000 });
  limited.connect();
  await flush();
  FakeSocket.made[0].open();
  FakeSocket.made[0].drop(4008);
  t.mock.timers.tick(29_999);
  await flush();
  assert.equal(FakeSocket.made.length, 1, "4008: not before maxReconnectDelay");
  t.mock.timers.tick(1);
  await flush();
  assert.equal(FakeSocket.made.length, 2);
  limited.disconnect();
});

test("a missing pong is a dead connection", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const sb = client({ pingInterval: 1000, pongTimeout: 500 });
  const seen = [];
  sb.on("disconnected", (event) => seen.push(event));
  sb.connect();
  await flush();
  const socket = FakeSocket.made[0];
  socket.open();
  t.mock.timers.tick(1000);
  const ping = socket.last("ping");
  assert.ok(ping, "pinged");
  socket.frame({ type: "pong" });
  t.mock.timers.tick(1000);
  t.mock.timers.tick(499);
  assert.equal(sb.state, "connected");
  t.mock.timers.tick(1);
  assert.equal(sb.state, "disconnected");
  assert.equal(socket.closedWith.code, 4000);
  assert.deepEqual(seen, [{ code: 1006, reason: "no pong", willReconnect: true }]);
  sb.disconnect();
});

test("publishes wait while disconnected, bounded in number and time", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const sb = client({ pingInterval: 0, maxQueued: 2, requestTimeout: 5000 });
  const room = sb.channel("chat:1");
  const first = room.publish({ n: 1 });
  const second = room.publish({ n: 2 });
  await assert.rejects(room.publish({ n: 3 }), (error) => error instanceof SwitchboardError && error.code === "queue_full");
  sb.connect();
  await flush();
  const socket = FakeSocket.made[0];
  socket.open();
  const publishes = socket.sent.filter((frame) => frame.action === "publish");
  assert.deepEqual(publishes.map((frame) => frame.data), [{ n: 1 }, { n: 2 }]);
  socket.frame({ type: "reply", id: publishes[0].id, data: null });
  socket.frame({ type: "error", id: publishes[1].id, code: "forbidden", reason: "may not publish" });
  assert.equal(await first, null);
  await assert.rejects(second, (error) => error.code === "forbidden");
  // In flight when the connection drops: fails at once, not silently.
  const lost = room.publish({ n: 4 });
  socket.drop(1006);
  await assert.rejects(lost, (error) => error.code === "disconnected");
  // Queued and never sent: times out.
  const late = room.publish({ n: 5 });
  t.mock.timers.tick(5000);
  await assert.rejects(late, (error) => error.code === "timeout");
  sb.disconnect();
});

test("getToken is asked before connecting, after a 4001, and after failed handshakes", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  let issued = 0;
  const sb = client({ pingInterval: 0, getToken: async () => `t${++issued}` });
  sb.connect();
  await flush();
  assert.match(FakeSocket.made[0].url, /\?token=t1$/);
  FakeSocket.made[0].open();
  FakeSocket.made[0].drop(4001, "expired");
  t.mock.timers.tick(500);
  await flush();
  assert.match(FakeSocket.made[1].url, /\?token=t2$/);
  // Two handshakes refused (a browser sees 1006 before any welcome): a new token.
  FakeSocket.made[1].drop(1006);
  t.mock.timers.tick(1000);
  await flush();
  assert.match(FakeSocket.made[2].url, /\?token=t2$/);
  FakeSocket.made[2].drop(1006);
  t.mock.timers.tick(2000);
  await flush();
  assert.match(FakeSocket.made[3].url, /\?token=t3$/);
  sb.disconnect();
});

test("the credential is refreshed ahead of its expiry without reconnecting", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const random = mock.method(Math, "random", () => 0);
  const now = Date.now();
  const sb = client({ pingInterval: 0, refreshAhead: 10_000, getToken: () => "fresh" });
  sb.connect();
  await flush();
  const socket = FakeSocket.made[0];
  socket.open({ expires_at: Math.floor(now / 1000) + 60 });
  t.mock.timers.tick(50_000);
  await flush();
  const refresh = socket.last("refresh");
  assert.equal(refresh?.token, "fresh");
  socket.frame({ type: "reply", id: refresh.id, data: { expires_at: null } });
  await flush();
  assert.equal(FakeSocket.made.length, 1, "no reconnect");
  random.mock.restore();
  sb.disconnect();
});

test("messages to the user arrive on the client", async () => {
  const sb = client({ pingInterval: 0 });
  const received = [];
  sb.on("message", (data) => received.push(data));
  sb.connect();
  await flush();
  FakeSocket.made[0].open();
  FakeSocket.made[0].frame({ type: "message", data: { note: "for you" } });
  assert.deepEqual(received, [{ note: "for you" }]);
  sb.disconnect();
});

test("a browser's online event reconnects at once", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const handlers = {};
  globalThis.addEventListener = (type, handler) => (handlers[type] = handler);
  globalThis.removeEventListener = (type) => delete handlers[type];
  t.after(() => {
    delete globalThis.addEventListener;
    delete globalThis.removeEventListener;
  });
  const sb = client({ pingInterval: 0, minReconnectDelay: 60_000, maxReconnectDelay: 60_000 });
  sb.connect();
  await flush();
  FakeSocket.made[0].open();
  FakeSocket.made[0].drop(1006);
  assert.equal(FakeSocket.made.length, 1);
  handlers.online();
  await flush();
  assert.equal(FakeSocket.made.length, 2, "reconnected without waiting for the backoff");
  FakeSocket.made[1].open();
  t.mock.timers.tick(60_000);
  await flush();
  assert.equal(FakeSocket.made.length, 2, "the backoff's timer does not open a second socket");
  sb.disconnect();
  assert.equal(handlers.online, undefined, "disconnect() stops listening");
});
