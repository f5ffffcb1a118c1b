// What the tests against real processes share: a `redis-server`, Switchboard nodes and nginx
// (deploy/nginx/nginx.conf, rewritten to the nodes' ports), each on a free loopback port and
// killed by the caller; a static file server for the demo page; bounded waits.
import { spawn } from "node:child_process";
import { createReadStream, mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as createTcpServer, connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { extname, join, normalize, sep } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository's root. */
export const REPO = fileURLToPath(new URL("../../../", import.meta.url));
/** The server binary `cargo test` builds (or `SWITCHBOARD_BIN`). */
export const BINARY = process.env.SWITCHBOARD_BIN ?? join(REPO, "target/debug/switchboard");
/** The bound on every wait. */
export const WAIT = 10_000;
/** The server API key of every node started here. */
export const API_KEY = "k";

function scratch(what) {
  return mkdtempSync(join(tmpdir(), `switchboard-js-${what}-`));
}

/** A TCP port nothing listens on (the kernel's choice, released at once). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createTcpServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Resolves once something accepts TCP connections on `port`. */
async function listening(port, what) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    const open = await new Promise((resolve) => {
      const socket = tcpConnect(port, "127.0.0.1", () => {
        socket.destroy();
        resolve(true);
      });
      socket.on("error", () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`${what} did not start on port ${port}`);
    await sleep(50);
  }
}

/** A `redis-server` without persistence on a free port. */
export async function startRedis() {
  const port = await freePort();
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
    cwd: scratch("redis"),
  });
  await listening(port, "redis-server (make test-deps installs it)");
  return { child, url: `redis://127.0.0.1:${port}`, stop: () => child.kill("SIGKILL") };
}

/**
 * Starts a node from a config text (or `{ file }`, a config file of the repository) and `env`
 * overrides; resolves once it listens, with its process, base URL and WebSocket URL.
 */
export function startNode(config, env = {}) {
  let file = config?.file;
  if (file === undefined) {
    file = join(scratch("node"), "node.toml");
    writeFileSync(file, config);
  }
  const child = spawn(BINARY, ["serve", "--config", file], {
    stdio: ["ignore", "pipe", "inherit"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn", SWITCHBOARD_SERVER__BIND: "127.0.0.1:0", SWITCHBOARD_API__KEY: API_KEY, ...env },
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the node did not start")), WAIT);
    child.on("error", reject);
    let output = "";
    child.stdout.on("data", (chunk) => {
      output += chunk;
      const match = output.match(/listening on (http:\/\/[0-9.:]+)/);
      if (match) {
        clearTimeout(timer);
        const base = match[1];
        resolve({ child, base, ws: `${base.replace("http", "ws")}/ws`, stop: () => child.kill("SIGKILL") });
      }
    });
    child.on("exit", (code) => reject(new Error(`the node exited with ${code}`)));
  });
}

/** Resolves once a node's `/readyz` answers 200 (its broker is connected). */
export async function ready(node) {
  await until(async () => {
    try {
      return (await fetch(`${node.base}/readyz`)).status === 200;
    } catch {
      return false;
    }
  }, `${node.base} to be ready`);
}

/** nginx from Debian's package running deploy/nginx/nginx.conf in front of two nodes. */
export async function startNginx(nodes) {
  const port = await freePort();
  const directory = scratch("nginx");
  let config = readFileSync(join(REPO, "deploy/nginx/nginx.conf"), "utf8");
  const upstreams = ["switchboard-1:8080", "switchboard-2:8080"];
  nodes.forEach((node, index) => {
    const rewritten = config.replace(`server ${upstreams[index]} `, `server ${new URL(node.base).host} `);
    if (rewritten === config) throw new Error(`nginx.conf has no upstream ${upstreams[index]}`);
    config = rewritten;
  });
  config = config.replace("listen 80;", `listen 127.0.0.1:${port};`);
  const file = join(directory, "nginx.conf");
  writeFileSync(file, config);
  const errors = join(directory, "error.log");
  const child = spawn(
    "nginx",
    ["-p", directory, "-c", file, "-e", errors, "-g", `daemon off; pid ${join(directory, "nginx.pid")}; error_log ${errors} warn;`],
    { stdio: "ignore" },
  );
  await listening(port, "nginx (make test-deps installs it)");
  // SIGTERM lets the master stop its workers (SIGKILL would orphan them).
  return { child, base: `http://127.0.0.1:${port}`, ws: `ws://127.0.0.1:${port}/ws`, stop: () => child.kill("SIGTERM") };
}

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css" };

/** A static file server for `root` on a free loopback port (GET only, nothing outside `root`). */
export function serveDirectory(root) {
  const server = createServer((request, response) => {
    const path = normalize(join(root, decodeURIComponent(new URL(request.url, "http://x").pathname)));
    let found = false;
    try {
      found = path.startsWith(root.endsWith(sep) ? root : root + sep) && statSync(path).isFile();
    } catch {
      found = false;
    }
    if (request.method !== "GET" || !found) {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { "content-type": TYPES[extname(path)] ?? "application/octet-stream" });
    createReadStream(path).pipe(response);
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      resolve({ base: `http://127.0.0.1:${server.address().port}`, close: () => server.close() });
    });
  });
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves with the first value `check` returns that is not undefined or false, polling; rejects after WAIT. */
export async function until(check, what, wait = WAIT) {
  const deadline = Date.now() + wait;
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** The next `event` of a client or channel; rejects after WAIT. */
export function once(emitter, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} event`)), WAIT);
    const off = emitter.on(event, (value) => {
      clearTimeout(timer);
      off();
      resolve(value);
    });
  });
}

/** POSTs `body` to a node's server API; rejects unless it answers 200. */
export async function api(base, path, body) {
  const response = await fetch(`${base}${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  if (response.status !== 200) throw new Error(`${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** A gauge or counter from a node's `/metrics` (0 when absent). */
export async function metric(base, name) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split("\n").find((candidate) => candidate.startsWith(`${name} `));
  return line ? Number(line.slice(name.length + 1)) : 0;
}
