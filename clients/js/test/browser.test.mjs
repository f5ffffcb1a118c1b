// The chat demo (examples/chat/) in headless Chromium from Debian's package, driven by
// puppeteer-core, against two real nodes (the demo's own config, on a real Redis) behind the
// deploy/ nginx: two pages chat and see each other online; a node that is SIGTERMed (1012) or
// SIGKILLed (no close frame) loses its pages to the other node, and they recover every message
// published meanwhile, none twice. The first test's page is the README's screenshot.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import puppeteer from "puppeteer-core";

import { REPO, WAIT, api, metric, ready, serveDirectory, startNginx, startNode, startRedis, until } from "./support.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
/** Where the demo's screenshot goes; `UPDATE_SCREENSHOT=1` writes the README's. */
const SCREENSHOT = process.env.UPDATE_SCREENSHOT
  ? join(REPO, "docs/chat-demo.png")
  : join(REPO, "target/browser/chat-demo.png");
const RECOVERED = 'switchboard_recoveries_total{result="recovered",reason="none"}';

let browser;
let site;
const cleanups = [];

before(async () => {
  site = await serveDirectory(REPO);
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
});

after(async () => {
  await browser?.close();
  site?.close();
  for (const cleanup of cleanups.reverse()) cleanup();
});

/** Redis, two nodes running examples/chat/switchboard.toml on it, and nginx in front. */
async function cluster() {
  const redis = await startRedis();
  cleanups.push(redis.stop);
  const env = {
    SWITCHBOARD_BROKER__TYPE: "redis",
    SWITCHBOARD_BROKER__URL: redis.url,
    SWITCHBOARD_SERVER__SHUTDOWN_GRACE: "2s",
  };
  const file = join(REPO, "examples/chat/switchboard.toml");
  const nodes = await Promise.all([startNode({ file }, env), startNode({ file }, env)]);
  for (const node of nodes) cleanups.push(node.stop);
  // Before nginx sends a handshake: a node still connecting to Redis answers 503, and nginx
  // would set it aside for fail_timeout.
  await Promise.all(nodes.map(ready));
  const nginx = await startNginx(nodes);
  cleanups.push(nginx.stop);
  return { nodes, nginx };
}

/** The demo page as `name`, through `ws`; resolves once its badge says connected. */
async function open(name, ws) {
  const page = await browser.newPage();
  page.errors = [];
  page.on("pageerror", (error) => page.errors.push(error.message));
  await page.setViewport({ width: 880, height: 520 });
  await page.goto(`${site.base}/examples/chat/index.html?node=${encodeURIComponent(ws)}&name=${name}`);
  await page.waitForSelector('#state[data-state="connected"]', { timeout: WAIT });
  // Every state the page's client goes through from here on.
  await page.evaluate(() => {
    window.states = [];
    window.switchboard.on("state", (state) => window.states.push(state));
  });
  return page;
}

const messagesOf = (page) => page.$$eval("#messages li:not(.notice)", (items) => items.map((item) => item.textContent));
const noticesOf = (page) => page.$$eval("#messages li.notice", (items) => items.map((item) => item.textContent));
const onlineOf = (page) => page.$$eval("#online li", (items) => items.map((item) => item.textContent));

async function say(page, text) {
  await page.type("#text", text);
  await page.keyboard.press("Enter");
}

/** Waits until `page` shows exactly `expected` as its messages, and says what it showed if not. */
async function shows(page, expected, what) {
  await until(async () => (await messagesOf(page)).length >= expected.length, what).catch(async (error) => {
    throw new Error(`${error.message}: the page shows ${JSON.stringify(await messagesOf(page))}`);
  });
  assert.deepEqual(await messagesOf(page), expected, what);
}

/** The node (of `nodes`) that holds one connection, the other holding none; polls. */
async function nodesOfPages(nodes) {
  let counts = [];
  return until(async () => {
    counts = await Promise.all(nodes.map((node) => metric(node.base, "switchboard_connections")));
    return counts.every((count) => count === 1) && counts;
  }, "one page on each node").catch((error) => {
    throw new Error(`${error.message}: connections ${counts}`);
  });
}

test("two pages on two nodes behind nginx chat, see who is online, and show their state", async () => {
  const { nodes, nginx } = await cluster();
  const alice = await open("alice", nginx.ws);
  const bob = await open("bob", nginx.ws);
  await nodesOfPages(nodes);
  await until(async () => (await onlineOf(alice)).join() === "alice,bob", "alice sees bob online");
  await until(async () => (await onlineOf(bob)).join() === "alice,bob", "bob sees alice online");
  await say(alice, "hi bob, this page reconnects without losing a line");
  await shows(bob, ["alicehi bob, this page reconnects without losing a line"], "bob hears alice");
  await say(bob, "and it resumes from history after a node restart");
  const both = ["alicehi bob, this page reconnects without losing a line", "boband it resumes from history after a node restart"];
  await shows(alice, both, "alice hears bob");
  await shows(bob, both, "bob sees his own message");
  assert.equal(await alice.$eval("#state", (badge) => badge.textContent), "connected");
  mkdirSync(join(SCREENSHOT, ".."), { recursive: true });
  await alice.screenshot({ path: SCREENSHOT });
  // A page that leaves is no longer online for the other.
  await bob.close();
  await until(async () => (await onlineOf(alice)).join() === "alice", "bob gone from alice's list");
  assert.deepEqual(alice.errors, []);
  await alice.close();
});

/**
 * Two pages, one per node; `stop` ends the first node. The page that was on it reconnects
 * through nginx to the other node, and both pages end up showing every message (the page's own,
 * the other's, and the back end's published while it was away) exactly once, in order.
 */
async function failover(stop, diagnostic) {
  const { nodes, nginx } = await cluster();
  const alice = await open("alice", nginx.ws);
  const bob = await open("bob", nginx.ws);
  await nodesOfPages(nodes);
  await say(alice, "before");
  await shows(bob, ["alicebefore"], "bob hears alice");
  const recoveredBefore = await metric(nodes[1].base, RECOVERED);
  stop(nodes[0].child);
  const moved = await until(async () => {
    for (const page of [alice, bob]) if ((await page.evaluate(() => window.states)).length > 0) return page;
    return undefined;
  }, "a page that lost its node");
  const stayed = moved === alice ? bob : alice;
  // The back end goes on publishing while the page is away (to the other node: nginx does not
  // retry a POST that the stopping node failed).
  const published = [];
  for (let n = 0; n < 20; n++) {
    published.push(`backendm${n}`);
    await api(nodes[1].base, "/api/publish", { channel: "chat:lobby", data: { name: "backend", text: `m${n}` } });
  }
  await moved.waitForSelector('#state[data-state="connected"]', { timeout: WAIT });
  const [movedName, stayedName] = moved === alice ? ["alice", "bob"] : ["bob", "alice"];
  await say(moved, "back");
  await shows(stayed, ["alicebefore", ...published, `${movedName}back`], "the page that stayed hears the one that moved");
  await say(stayed, "welcome back");
  const expected = ["alicebefore", ...published, `${movedName}back`, `${stayedName}welcome back`];
  await shows(moved, expected, "the page that moved has everything once, in order");
  await shows(stayed, expected, "the page that stayed has everything once, in order");
  assert.deepEqual(await noticesOf(moved), [], "no reset");
  assert.deepEqual(await stayed.evaluate(() => window.states), [], "the other page never noticed");
  // The moved page rejoined both channels with `since` on the surviving node and was recovered.
  assert.ok((await metric(nodes[1].base, RECOVERED)) >= recoveredBefore + 1, "recovered on the other node");
  assert.equal(await metric(nodes[1].base, "switchboard_connections"), 2);
  const states = await moved.evaluate(() => window.states);
  assert.equal(states.at(-1), "connected");
  // How many of the back end's publications came from history rather than live depends on how
  // fast the page reconnected; every one came once either way.
  diagnostic(`replayed from history: ${await metric(nodes[1].base, "switchboard_publications_replayed_total")}`);
  assert.deepEqual([...alice.errors, ...bob.errors], []);
  await alice.close();
  await bob.close();
  return states;
}

test("a node that is SIGTERMed (1012): its page reconnects through nginx to the other and recovers", async (t) => {
  const states = await failover((child) => child.kill("SIGTERM"), (text) => t.diagnostic(text));
  assert.ok(!states.includes("closed"), `${states}`);
});

test("a node that is SIGKILLed (no close frame): its page reconnects through nginx and recovers", async (t) => {
  const states = await failover((child) => child.kill("SIGKILL"), (text) => t.diagnostic(text));
  assert.ok(!states.includes("closed"), `${states}`);
});
