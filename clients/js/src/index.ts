// switchboard-client: a Switchboard client that survives real networks (docs/protocol.md).
//
// One socket, reconnected with exponential backoff and full jitter; what each close code means
// is `closeAction` (the table in README.md). Channels are joined again after every reconnect,
// from the last position seen on channels that keep history, so the app sees every publication
// once and in order; when the server cannot replay (`recovered: false`, or a `gap`), the channel
// emits `reset` and the app reloads its state. A `ping` frame every `pingInterval` notices a dead
// connection that the browser does not report. With `getToken`, the credential is refreshed
// ahead of its expiry without reconnecting. Publishes and requests made while disconnected wait
// in a bounded queue for a bounded time, then fail with `SwitchboardError`.

export type State = "disconnected" | "connecting" | "connected" | "closed";

/** The `{offset, epoch}` of a publication on a channel that keeps history. */
export interface Position {
  offset: number;
  epoch: string;
}

/** What the server's `welcome` frame says. */
export interface Welcome {
  connection_id: string;
  user: string | null;
  channels: string[];
  expires_at: number | null;
}

/** What a socket close means to the client: its code, reason, and whether it reconnects. */
export interface Disconnect {
  code: number;
  reason: string;
  willReconnect: boolean;
}

/** Encodes and decodes frames for the `msgpack` encoding (e.g. `@msgpack/msgpack`). */
export interface MessagePackCodec {
  encode(value: unknown): Uint8Array;
  decode(bytes: Uint8Array): unknown;
}

/** The WebSocket the client needs: the browser's, or a constructor such as `ws` in Node. */
export interface SocketLike {
  binaryType: string;
  readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string | Uint8Array): void;
  close(code?: number, reason?: string): void;
}
export type SocketConstructor = new (url: string, protocols?: string | string[]) => SocketLike;

export interface Options {
  /** A credential sent as `?token=` (browsers cannot set headers on a WebSocket). */
  token?: string;
  /** Asked for a credential before connecting, after a 4001, after failed handshakes, and ahead of expiry. */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  encoding?: "json" | "msgpack";
  /** Required with `encoding: "msgpack"`. */
  msgpack?: MessagePackCodec;
  /** The WebSocket constructor; default: the global `WebSocket`. */
  WebSocket?: SocketConstructor;
  minReconnectDelay?: number;
  maxReconnectDelay?: number;
  /** How often to send `ping`; 0 turns liveness checks off. */
  pingInterval?: number;
  /** How long a `pong` may take before the connection counts as dead. */
  pongTimeout?: number;
  /** How long a publish or request waits for its reply (also while queued offline). */
  requestTimeout?: number;
  /** Publishes and requests that may wait while disconnected; beyond it they fail at once. */
  maxQueued?: number;
  /** Refresh the credential this long before `expires_at`. */
  refreshAhead?: number;
}

/** A failed publish, request or join: `code` is the server's error code, or `disconnected`, `timeout`, `queue_full`, `closed`. */
export class SwitchboardError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "SwitchboardError";
  }
}

type Listener = (...args: any[]) => void;

class Emitter {
  private listeners = new Map<string, Set<Listener>>();
  on(event: string, listener: Listener): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => set.delete(listener);
  }
  protected emit(event: string, ...args: unknown[]): void {
    for (const listener of this.listeners.get(event) ?? []) listener(...args);
  }
}

/** What the client does after a close with `code`: the table in README.md. */
export type CloseAction = "stop" | "reconnect" | "reconnect_soon" | "reconnect_with_token" | "back_off";

export function closeAction(code: number): CloseAction {
  switch (code) {
    case 1000:
    case 4002: // logged out
    case 4003: // forbidden
      return "stop";
    case 1012: // the node restarts: another node takes the client at once
      return "reconnect_soon";
    case 4001: // the session or credential expired
      return "reconnect_with_token";
    case 4008: // rate limited
      return "back_off";
    default: // 1001, 1006, 4010 and anything unknown
      return "reconnect";
  }
}

/** Full jitter: a random delay between 0 and min(max, min · 2^attempt). */
export function backoff(attempt: number, min: number, max: number, random = Math.random): number {
  const ceiling = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

interface Pending {
  resolve(value: unknown): void;
  reject(error: SwitchboardError): void;
  timer: ReturnType<typeof setTimeout>;
}

/** A channel the app is in: messages, presence events, and `reset` when history cannot be replayed. */
export class Channel extends Emitter {
  /** The last position seen (channels that keep history). */
  position: Position | null = null;
  private left = false;

  constructor(
    private readonly client: Switchboard,
    readonly name: string,
  ) {
    super();
  }

  /** Publishes `data`; resolves with the reply once the server took it. */
  publish(data: unknown): Promise<unknown> {
    return this.client.send({ action: "publish", channel: this.name, data });
  }

  /** Leaves the channel; it is not joined again. */
  leave(): Promise<unknown> {
    this.left = true;
    return this.client.leaveChannel(this);
  }

  /** @internal */
  get active(): boolean {
    return !this.left;
  }

  /** @internal the join frame for (re)joining: from the last position, when one is known. */
  joinFrame(): Record<string, unknown> {
    const frame: Record<string, unknown> = { action: "join", channel: this.name };
    if (this.position) frame.since = this.position;
    return frame;
  }

  /** @internal the join's reply data: the channel's position, and whether it recovered. */
  joined(data: unknown): void {
    const reply = data as { offset?: number; epoch?: string; recovered?: boolean } | null;
    if (reply && typeof reply.offset === "number" && typeof reply.epoch === "string") {
      const recovering = this.position !== null;
      this.position = { offset: reply.offset, epoch: reply.epoch };
      if (recovering && reply.recovered === false) this.emit("reset", this.position);
    }
    this.emit("joined", this.position);
  }

  /** @internal a frame for this channel. */
  deliver(frame: Record<string, any>): void {
    if (frame.type === "presence") {
      this.emit("presence", frame.joined ? { joined: frame.joined } : { left: frame.left });
      return;
    }
    if (frame.type === "gap") {
      this.position = { offset: frame.offset, epoch: frame.epoch };
      this.emit("reset", this.position);
      return;
    }
    if (typeof frame.offset === "number" && typeof frame.epoch === "string") {
      const last = this.position;
      // Seen already (a replay overlapping what arrived live): once is enough.
      if (last && last.epoch === frame.epoch && frame.offset <= last.offset) return;
      this.position = { offset: frame.offset, epoch: frame.epoch };
    }
    this.emit("message", frame.data, { from: frame.from ?? null, offset: frame.offset, epoch: frame.epoch });
  }
}

export class Switchboard extends Emitter {
  state: State = "disconnected";
  welcome: Welcome | null = null;
  private socket: SocketLike | null = null;
  private token: string | null;
  private readonly options: Required<Omit<Options, "token" | "getToken" | "msgpack" | "WebSocket">>;
  private readonly channels = new Map<string, Channel>();
  private readonly pending = new Map<number, Pending>();
  /** Joins in flight, by frame id: their reply places the channel before any later frame. */
  private readonly joins = new Map<number, Channel>();
  private queued: { frame: Record<string, unknown>; id: number }[] = [];
  private nextId = 1;
  private attempt = 0;
  private failedHandshakes = 0;
  private timers = new Set<ReturnType<typeof setTimeout>>();
  private pingTimer: ReturnType<typeof setInterval> | null = null;
  private pongTimer: ReturnType<typeof setTimeout> | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  private onOnline = () => {
    if (this.state === "disconnected") this.open();
  };

  constructor(
    private readonly url: string,
    private readonly settings: Options = {},
  ) {
    super();
    this.token = settings.token ?? null;
    this.options = {
      encoding: settings.encoding ?? "json",
      minReconnectDelay: settings.minReconnectDelay ?? 500,
      maxReconnectDelay: settings.maxReconnectDelay ?? 20_000,
      pingInterval: settings.pingInterval ?? 25_000,
      pongTimeout: settings.pongTimeout ?? 10_000,
      requestTimeout: settings.requestTimeout ?? 10_000,
      maxQueued: settings.maxQueued ?? 100,
      refreshAhead: settings.refreshAhead ?? 60_000,
    };
    if (this.options.encoding === "msgpack" && !settings.msgpack) {
      throw new SwitchboardError("bad_request", "encoding \"msgpack\" needs options.msgpack (e.g. @msgpack/msgpack)");
    }
  }

  /** Connects, and keeps reconnecting until `disconnect()` or a terminal close. */
  connect(): void {
    if (this.state === "connecting" || this.state === "connected") return;
    globalThis.addEventListener?.("online", this.onOnline);
    this.attempt = 0;
    this.open();
  }

  /** Closes for good: pending publishes and requests fail with `closed`. */
  disconnect(): void {
    this.stop("closed", { code: 1000, reason: "disconnect()", willReconnect: false });
  }

  /** The channel `name`, joined now (or on connect) and after every reconnect. */
  channel(name: string): Channel {
    let channel = this.channels.get(name);
    if (!channel || !channel.active) {
      channel = new Channel(this, name);
      this.channels.set(name, channel);
      if (this.state === "connected") this.join(channel);
    }
    return channel;
  }

  /** A custom action (a `[routes]` view); resolves with its reply. */
  request(action: string, body: Record<string, unknown> = {}): Promise<unknown> {
    return this.send({ ...body, action });
  }

  /** @internal sends `frame` with a fresh id; resolves with the reply's data. */
  send(frame: Record<string, unknown>): Promise<unknown> {
    if (this.state === "closed") {
      return Promise.reject(new SwitchboardError("closed", "the client was closed"));
    }
    const id = this.nextId++;
    const answered = this.expect(id);
    if (this.state === "connected") {
      this.write({ ...frame, id });
    } else if (this.queued.length >= this.options.maxQueued) {
      this.settle(id, new SwitchboardError("queue_full", "disconnected, and maxQueued frames already wait"));
    } else {
      this.queued.push({ frame, id });
    }
    return answered;
  }

  /** @internal */
  leaveChannel(channel: Channel): Promise<unknown> {
    if (this.channels.get(channel.name) === channel) this.channels.delete(channel.name);
    if (this.state !== "connected") return Promise.resolve(null);
    return this.send({ action: "leave", channel: channel.name });
  }

  private expect(id: number): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => this.settle(id, new SwitchboardError("timeout", `no reply within ${this.options.requestTimeout} ms`)),
        this.options.requestTimeout,
      );
      this.pending.set(id, { resolve, reject, timer });
    });
  }

  private settle(id: number, outcome: unknown): void {
    const pending = this.pending.get(id);
    if (!pending) return;
    this.pending.delete(id);
    clearTimeout(pending.timer);
    this.queued = this.queued.filter((queued) => queued.id !== id);
    if (outcome instanceof SwitchboardError) pending.reject(outcome);
    else pending.resolve(outcome);
  }

  private setState(state: State): void {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
  }

  private later(ms: number, run: () => void): void {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      run();
    }, ms);
    this.timers.add(timer);
  }

  private async open(): Promise<void> {
    this.setState("connecting");
    const needsToken = this.settings.getToken && (this.token === null || this.failedHandshakes >= 2);
    if (needsToken) {
      try {
        this.token = (await this.settings.getToken!()) ?? null;
        this.failedHandshakes = 0;
      } catch (error) {
        this.emit("error", error);
        return this.retry(closeAction(1006), { code: 1006, reason: "getToken failed", willReconnect: true });
      }
      if (this.state !== "connecting") return;
    }
    const Socket = this.settings.WebSocket ?? (globalThis as { WebSocket?: SocketConstructor }).WebSocket;
    if (!Socket) throw new SwitchboardError("bad_request", "no WebSocket: pass options.WebSocket (e.g. from \"ws\")");
    const url = this.token ? `${this.url}${this.url.includes("?") ? "&" : "?"}token=${encodeURIComponent(this.token)}` : this.url;
    const protocol = this.options.encoding === "msgpack" ? "switchboard.v1.msgpack" : "switchboard.v1.json";
    const socket = new Socket(url, protocol);
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.onmessage = (event) => this.receive(event.data);
    socket.onerror = () => {};
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.closed(event.code, event.reason);
    };
  }

  private write(frame: Record<string, unknown>): void {
    const socket = this.socket;
    if (!socket || socket.readyState !== 1) return;
    socket.send(this.options.encoding === "msgpack" ? this.settings.msgpack!.encode(frame) : JSON.stringify(frame));
  }

  private decode(data: unknown): Record<string, any> | null {
    try {
      if (typeof data === "string") return JSON.parse(data);
      const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : (data as Uint8Array);
      if (this.settings.msgpack) return this.settings.msgpack.decode(bytes) as Record<string, any>;
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      return null;
    }
  }

  private receive(data: unknown): void {
    const frame = this.decode(data);
    if (!frame || typeof frame.type !== "string") return;
    switch (frame.type) {
      case "welcome":
        return this.welcomed(frame as unknown as Welcome);
      case "pong":
        if (this.pongTimer) clearTimeout(this.pongTimer);
        this.pongTimer = null;
        return;
      case "reply": {
        const joining = this.joins.get(frame.id);
        if (joining) {
          this.joins.delete(frame.id);
          return joining.joined(frame.data ?? null);
        }
        return this.settle(frame.id, frame.data ?? null);
      }
      case "error": {
        const error = new SwitchboardError(frame.code, frame.reason);
        const joining = this.joins.get(frame.id);
        if (joining) {
          this.joins.delete(frame.id);
          return joining["emit"]("error", error);
        }
        if (typeof frame.id === "number") this.settle(frame.id, error);
        else this.emit("error", error);
        return;
      }
      case "message":
        if (typeof frame.channel !== "string") return this.emit("message", frame.data);
      // falls through: a channel's message
      case "presence":
      case "gap":
        this.channels.get(frame.channel)?.deliver(frame);
        return;
    }
  }

  private welcomed(welcome: Welcome): void {
    this.welcome = welcome;
    this.attempt = 0;
    this.failedHandshakes = 0;
    this.setState("connected");
    for (const channel of this.channels.values()) this.join(channel);
    const queued = this.queued;
    this.queued = [];
    for (const { frame, id } of queued) this.write({ ...frame, id });
    this.startLiveness();
    this.scheduleRefresh(welcome.expires_at);
    this.emit("connected", welcome);
  }

  private join(channel: Channel): void {
    const id = this.nextId++;
    this.joins.set(id, channel);
    this.write({ ...channel.joinFrame(), id });
  }

  private startLiveness(): void {
    this.stopLiveness();
    if (this.options.pingInterval <= 0) return;
    this.pingTimer = setInterval(() => {
      if (this.pongTimer) return;
      this.write({ action: "ping" });
      this.pongTimer = setTimeout(() => {
        this.pongTimer = null;
        // No pong: the connection is dead even if the socket does not know yet.
        const socket = this.socket;
        this.socket = null;
        socket?.close(4000, "no pong");
        this.closed(1006, "no pong");
      }, this.options.pongTimeout);
    }, this.options.pingInterval);
  }

  private stopLiveness(): void {
    if (this.pingTimer) clearInterval(this.pingTimer);
    if (this.pongTimer) clearTimeout(this.pongTimer);
    this.pingTimer = this.pongTimer = null;
  }

  private scheduleRefresh(expiresAt: number | null): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    if (!expiresAt || !this.settings.getToken) return;
    const jitter = Math.random() * Math.min(5_000, this.options.refreshAhead / 4);
    const delay = Math.max(0, expiresAt * 1000 - Date.now() - this.options.refreshAhead + jitter);
    this.refreshTimer = setTimeout(() => this.refresh(), delay);
  }

  private async refresh(): Promise<void> {
    try {
      const token = (await this.settings.getToken!()) ?? null;
      if (!token || this.state !== "connected") return;
      this.token = token;
      const reply = (await this.send({ action: "refresh", token })) as { expires_at?: number } | null;
      this.scheduleRefresh(reply?.expires_at ?? null);
    } catch (error) {
      // A refresh that failed: reconnect with a new credential.
      this.emit("error", error);
      this.token = null;
      this.socket?.close(4000, "refresh failed");
    }
  }

  private closed(code: number, reason: string): void {
    this.stopLiveness();
    this.joins.clear();
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = null;
    if (this.state === "connecting") this.failedHandshakes += 1;
    // Replies to what was in flight will not come; queued frames keep waiting.
    const queuedIds = new Set(this.queued.map((queued) => queued.id));
    for (const id of [...this.pending.keys()]) {
      if (!queuedIds.has(id)) this.settle(id, new SwitchboardError("disconnected", "the connection closed before the reply"));
    }
    const action = closeAction(code);
    if (action === "stop") {
      return this.stop("closed", { code, reason, willReconnect: false });
    }
    this.retry(action, { code, reason, willReconnect: true });
  }

  private retry(action: CloseAction, disconnect: Disconnect): void {
    this.setState("disconnected");
    this.emit("disconnected", disconnect);
    const { minReconnectDelay: min, maxReconnectDelay: max } = this.options;
    let delay: number;
    if (action === "reconnect_soon") delay = Math.floor(Math.random() * min);
    else if (action === "back_off") delay = max;
    else delay = backoff(this.attempt++, min, max);
    if (action === "reconnect_with_token" && this.settings.getToken) this.token = null;
    this.later(delay, () => {
      if (this.state === "disconnected") this.open();
    });
  }

  private stop(state: State, disconnect: Disconnect): void {
    const wasOpen = this.state !== "closed";
    globalThis.removeEventListener?.("online", this.onOnline);
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.stopLiveness();
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    const socket = this.socket;
    this.socket = null;
    socket?.close(1000);
    this.setState(state);
    for (const id of [...this.pending.keys()]) this.settle(id, new SwitchboardError("closed", "the client stopped"));
    this.queued = [];
    if (wasOpen) this.emit("disconnected", disconnect);
  }
}
