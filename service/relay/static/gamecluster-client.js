// @gamecluster/client: browser bundle (built from clients/js by `make js-vendor`; do not edit)

// src/backoff.ts
function backoffDelay(attempt, options, random) {
  const cap = Math.min(options.maxDelayMs, options.minDelayMs * 2 ** Math.min(attempt, 30));
  return random() * cap;
}

// src/errors.ts
var GameClusterError = class extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
};
var RelayError = class extends GameClusterError {
  code;
  room;
  reply;
  constructor(reply) {
    super(`${reply.code}: ${reply.message}`);
    this.code = reply.code;
    this.room = reply.room;
    this.reply = reply;
  }
  /** Codes that a later retry of the same message can fix. */
  get retryable() {
    return RETRYABLE_CODES.has(this.code);
  }
};
var RETRYABLE_CODES = /* @__PURE__ */ new Set(["unavailable", "rate_limited", "internal"]);
var UnauthorizedError = class extends GameClusterError {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
  status;
};
var DisconnectedByServerError = class extends GameClusterError {
  constructor(reason) {
    super(`disconnected by the server: ${reason}`);
    this.reason = reason;
  }
  reason;
};
var TimeoutError = class extends GameClusterError {
};
var QueueFullError = class extends GameClusterError {
};
var ClosedError = class extends GameClusterError {
};

// src/emitter.ts
var Emitter = class {
  #listeners = /* @__PURE__ */ new Map();
  on(event, listener) {
    let set = this.#listeners.get(event);
    if (set === void 0) {
      set = /* @__PURE__ */ new Set();
      this.#listeners.set(event, set);
    }
    set.add(listener);
    return () => {
      this.off(event, listener);
    };
  }
  once(event, listener) {
    const off = this.on(event, (payload) => {
      off();
      listener(payload);
    });
    return off;
  }
  off(event, listener) {
    this.#listeners.get(event)?.delete(listener);
  }
  /**
   * Call every listener of `event`. A listener that throws does not stop the others nor
   * the client's state machine: its error is rethrown on its own task, where the runtime
   * reports it as uncaught (as a throwing DOM event listener is).
   */
  emit(event, payload) {
    const set = this.#listeners.get(event);
    if (set === void 0) return;
    for (const listener of [...set]) {
      try {
        listener(payload);
      } catch (err) {
        setTimeout(() => {
          throw err;
        }, 0);
      }
    }
  }
};

// src/messages.ts
var SERVER_OPS = /* @__PURE__ */ new Set([
  "welcome",
  "joined",
  "left",
  "event",
  "ack",
  "error",
  "reconnect",
  "disconnect",
  "members",
  "presence",
  "pong"
]);
var MAX_ID_LENGTH = 64;
var ROOM_NAME = /^[A-Za-z0-9_\-.:/]{1,128}$/;
function encode(message) {
  return JSON.stringify(message);
}
var MalformedMessage = class extends Error {
  constructor(line, why) {
    super(`malformed server message (${why}): ${line.slice(0, 200)}`);
    this.line = line;
    this.name = "MalformedMessage";
  }
  line;
};
function parseFrame(frame) {
  const out = [];
  for (const line of frame.split("\n")) {
    if (line === "") continue;
    let value;
    try {
      value = JSON.parse(line);
    } catch {
      out.push(new MalformedMessage(line, "not JSON"));
      continue;
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      out.push(new MalformedMessage(line, "not an object"));
      continue;
    }
    const op = value.op;
    if (typeof op !== "string") {
      out.push(new MalformedMessage(line, "no op"));
      continue;
    }
    if (SERVER_OPS.has(op)) out.push(value);
  }
  return out;
}

// src/room.ts
var Room = class extends Emitter {
  name;
  #host;
  #position;
  #wanted = false;
  #state = "unjoined";
  #joined = null;
  #joinWaiters = [];
  #leaveWaiters = [];
  /** Events at or below the last offset seen, dropped: the protocol says none arrive. */
  duplicates = 0;
  /** Offsets skipped without a `lost` notice: the protocol says this never happens. */
  gaps = 0;
  /** Rooms come from `client.room(name)`. */
  constructor(name, host, options = {}) {
    super();
    this.name = name;
    this.#host = host;
    this.#position = options.since ? { ...options.since } : null;
  }
  get state() {
    return this.#state;
  }
  /** The last position seen (epoch, offset of the last event), or null. */
  get position() {
    return this.#position ? { ...this.#position } : null;
  }
  /**
   * Join the room (now if connected, else on connect), and again after every reconnect,
   * resuming from the last event seen. Resolves on the server's `joined`; rejects with
   * RelayError (e.g. code `forbidden`) when the server refuses it, or ClosedError.
   */
  join() {
    this.#wanted = true;
    if (this.#state === "joined" && this.#joined !== null) return Promise.resolve(this.#joined);
    const promise = new Promise((resolve, reject) => this.#joinWaiters.push({ resolve, reject }));
    if (this.#state === "unjoined") this._sendJoin();
    return promise;
  }
  /** Leave the room; resolves on the server's `left` (at once when not connected). */
  leave() {
    this.#wanted = false;
    this.#rejectJoins(new ClosedError(`left room ${this.name} before it was joined`));
    if (this.#state === "unjoined") return Promise.resolve();
    this.#state = "unjoined";
    this.#joined = null;
    const ref = this.#host.nextRef("leave", this);
    if (!this.#host.send({ op: "leave", room: this.name, ref })) return Promise.resolve();
    return new Promise((resolve, reject) => this.#leaveWaiters.push({ resolve, reject }));
  }
  /**
   * Publish `data`; resolves with the ack once the event is stored. Unacked publishes are
   * re-sent with the same id after a reconnect (the server stores each id once).
   */
  publish(data, options = {}) {
    return this.#host.publish(this.name, data, options);
  }
  /** Who is in the room now (rooms with presence on; the token must allow joining). */
  async presence(options = {}) {
    const reply = await this.#host.presence(this.name, options.timeoutMs);
    const result = { room: reply.room, count: reply.count };
    if (reply.members !== void 0) result.members = reply.members;
    return result;
  }
  // -- called by the client -------------------------------------------------------------
  /** @internal Send `join` (with `since` when a position is known) if the room is wanted. */
  _sendJoin() {
    if (!this.#wanted) return;
    const ref = this.#host.nextRef("join", this);
    const message = { op: "join", room: this.name, ref };
    if (this.#position !== null) message.since = { ...this.#position };
    this.#state = "joining";
    if (!this.#host.send(message)) this.#state = "unjoined";
  }
  /** @internal The connection ended: the room is rejoined on the next connection. */
  _onDisconnect() {
    if (this.#state !== "unjoined") this.#state = "unjoined";
    this.#joined = null;
    for (const waiter of this.#leaveWaiters.splice(0)) waiter.resolve();
  }
  /** @internal The client stopped or was closed: every pending call fails with `error`. */
  _fail(error) {
    this.#rejectJoins(error);
    for (const waiter of this.#leaveWaiters.splice(0)) waiter.resolve();
  }
  /** @internal */
  _onJoined(message) {
    if (!this.#wanted) return;
    const previous = this.#position;
    if (message.recovered !== true) {
      this.#position = message.epoch !== null && message.offset !== null ? { epoch: message.epoch, offset: message.offset } : null;
    }
    const context = {
      room: this.name,
      recovered: message.recovered === true,
      offset: message.offset,
      epoch: message.epoch
    };
    this.#state = "joined";
    this.#joined = context;
    this.emit("joined", context);
    if (message.recovered === false) {
      this.emit("lost", { room: this.name, previous, offset: message.offset, epoch: message.epoch });
    }
    for (const waiter of this.#joinWaiters.splice(0)) waiter.resolve(context);
  }
  /** @internal A join refused (not retryable): the room is no longer wanted. */
  _onJoinError(error) {
    this.#wanted = false;
    this.#state = "unjoined";
    if (this.#joinWaiters.length === 0) this.emit("error", error);
    this.#rejectJoins(error);
  }
  /** @internal */
  _onLeft(message) {
    for (const waiter of this.#leaveWaiters.splice(0)) waiter.resolve();
    if (message.ref === void 0) {
      this.#wanted = false;
      this.#state = "unjoined";
      this.#joined = null;
      this.#rejectJoins(new ClosedError(`removed from room ${this.name}: ${message.reason ?? "no reason"}`));
      this.emit("left", { room: this.name, reason: message.reason });
    }
  }
  /** @internal Deliver an event once, in offset order (drops replays already seen). */
  _onEvent(message) {
    if (!this.#wanted) return;
    const offset = message.offset;
    if (typeof offset === "number" && this.#position !== null) {
      if (offset <= this.#position.offset) {
        this.duplicates += 1;
        return;
      }
      if (offset > this.#position.offset + 1) this.gaps += 1;
      this.#position.offset = offset;
    }
    this.emit("event", message);
  }
  /** @internal */
  _onPresence(message) {
    if (!this.#wanted) return;
    this.emit("presence", { room: this.name, joins: message.joins, leaves: message.leaves });
  }
  get wanted() {
    return this.#wanted;
  }
  #rejectJoins(error) {
    for (const waiter of this.#joinWaiters.splice(0)) waiter.reject(error);
  }
};

// src/token.ts
function tokenExpiry(token) {
  const payload = token.split(".")[1];
  if (payload === void 0) return void 0;
  try {
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(base64.padEnd(base64.length + (4 - base64.length % 4) % 4, "=")));
    if (typeof claims === "object" && claims !== null) {
      const exp = claims.exp;
      if (typeof exp === "number" && Number.isFinite(exp)) return exp * 1e3;
    }
  } catch {
    return void 0;
  }
  return void 0;
}

// src/client.ts
var CloseCode = {
  normal: 1e3,
  abnormal: 1006,
  draining: 1012,
  overloaded: 1013,
  tokenExpired: 4001,
  disconnectedByServer: 4003,
  slowConsumer: 4008,
  /** Local: no message from the server for two heartbeats. */
  noHeartbeat: 4900,
  /** Local: no `welcome` within openTimeoutMs. */
  openTimeout: 4901,
  /** Local: the handshake was refused with an HTTP status (in `reason`). */
  handshakeRefused: 4902
};
var OPEN = 1;
var MAX_PENDING_PINGS = 16;
var Client = class extends Emitter {
  urls;
  #options;
  #state = "disconnected";
  #wanted = false;
  #ws = null;
  #connected = null;
  #urlIndex = -1;
  #attempt = 0;
  #rooms = /* @__PURE__ */ new Map();
  /** Unacked publishes by id, in publish order (the order they are re-sent in). */
  #outbox = /* @__PURE__ */ new Map();
  #requests = /* @__PURE__ */ new Map();
  #pings = /* @__PURE__ */ new Map();
  #refs = /* @__PURE__ */ new Map();
  #refSeq = 0;
  #readyWaiters = [];
  #reconnectTimer;
  #openTimer;
  #heartbeatTimer;
  #refreshTimer;
  #lastSeen = 0;
  /** Set by `reconnect` / `disconnect` messages; read when the close follows. */
  #serverReason = null;
  /** The previous handshake was refused with 401: one more try, with a fresh token. */
  #refusedOnce = false;
  #prefetched;
  #tokenInUse;
  #stopError;
  /** Bumped by every stop: an attempt started before a close()/connect() pair gives up. */
  #generation = 0;
  constructor(urls, options = {}) {
    super();
    this.urls = typeof urls === "string" ? [urls] : [...urls];
    if (this.urls.length === 0) throw new TypeError("Client needs at least one URL");
    const WebSocketImpl = options.WebSocket ?? globalThis.WebSocket;
    if (WebSocketImpl === void 0) {
      throw new TypeError("no global WebSocket (Node < 22): pass one, e.g. new Client(urls, { WebSocket }) from 'ws'");
    }
    this.#options = {
      WebSocket: WebSocketImpl,
      minReconnectDelayMs: options.minReconnectDelayMs ?? 100,
      maxReconnectDelayMs: options.maxReconnectDelayMs ?? 5e3,
      openTimeoutMs: options.openTimeoutMs ?? 1e4,
      requestTimeoutMs: options.requestTimeoutMs ?? 3e4,
      maxPendingPublishes: options.maxPendingPublishes ?? 1e3,
      tokenRefreshMarginMs: options.tokenRefreshMarginMs ?? 5e3,
      random: options.random ?? Math.random,
      token: options.token,
      getToken: options.getToken
    };
  }
  get state() {
    return this.#state;
  }
  /** The relay node of the current connection (from its `welcome`), or null. */
  get node() {
    return this.#connected?.node ?? null;
  }
  /** Publishes waiting for their ack. */
  get pendingPublishes() {
    return this.#outbox.size;
  }
  /** Start connecting (and reconnecting until close() or a stop). Await `ready()` to wait. */
  connect() {
    if (this.#wanted) return;
    this.#wanted = true;
    this.#stopError = void 0;
    this.#attempt = 0;
    this.#refusedOnce = false;
    void this.#open();
  }
  /**
   * Resolves when connected (at once if connected now); rejects with the error that
   * stopped the client (UnauthorizedError, DisconnectedByServerError, ClosedError) or with
   * TimeoutError.
   */
  ready(timeoutMs = this.#options.requestTimeoutMs) {
    if (this.#connected !== null) return Promise.resolve(this.#connected);
    if (this.#stopError !== void 0) return Promise.reject(this.#stopError);
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: (c) => {
          clearTimeout(timer);
          resolve(c);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        }
      };
      const timer = setTimeout(() => {
        this.#readyWaiters = this.#readyWaiters.filter((w) => w !== waiter);
        reject(new TimeoutError(`not connected within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#readyWaiters.push(waiter);
    });
  }
  /**
   * Disconnect and stop reconnecting. Pending calls reject with ClosedError; rooms keep
   * their membership and position, so a later connect() rejoins and resumes them.
   */
  close() {
    const wasActive = this.#wanted || this.#ws !== null;
    this.#stop(new ClosedError("the client was closed"), CloseCode.normal, "closed by the client", wasActive);
  }
  /** The room `name` (one object per name); join it with `room.join()`. */
  room(name, options = {}) {
    if (!ROOM_NAME.test(name)) {
      throw new TypeError(`room name ${JSON.stringify(name)} is not 1 to 128 of A-Z a-z 0-9 _ - . : /`);
    }
    let room = this.#rooms.get(name);
    if (room === void 0) {
      room = new Room(name, this.#host, options);
      this.#rooms.set(name, room);
    }
    return room;
  }
  /**
   * The round-trip time to the relay of the current connection, in ms: sends `ping` and
   * resolves on its `pong`. Rejects with ClosedError when not connected or when the
   * connection ends first (a pong never crosses connections), TimeoutError when no pong
   * came in time, QueueFullError beyond MAX_PENDING_PINGS pending pings.
   */
  ping(timeoutMs = this.#options.requestTimeoutMs) {
    if (this.#pings.size >= MAX_PENDING_PINGS) {
      return Promise.reject(new QueueFullError(`${this.#pings.size} pings are waiting for their pong`));
    }
    this.#refSeq += 1;
    const ref = `ping${this.#refSeq}`;
    const sentAt = performanceNow();
    if (!this.#send({ op: "ping", ref })) return Promise.reject(new ClosedError("not connected"));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pings.delete(ref);
        reject(new TimeoutError(`no pong within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pings.set(ref, { sentAt, resolve, reject, timer });
    });
  }
  /** Cut the current connection as a network failure would (tests, "reconnect now"). */
  dropConnection() {
    if (this.#ws !== null) this.#closed(this.#ws, CloseCode.abnormal, "connection dropped by the client", void 0);
  }
  // -- the room host: what rooms may ask of the client -----------------------------------
  #host = {
    send: (message) => this.#send(message),
    nextRef: (kind, room) => {
      this.#refSeq += 1;
      const ref = `${kind[0]}${this.#refSeq}`;
      if (kind !== "presence") this.#refs.set(ref, room);
      return ref;
    },
    publish: (room, data, options) => this.#publish(room, data, options),
    presence: (room, timeoutMs) => this.#presence(room, timeoutMs)
  };
  #send(message) {
    if (this.#ws === null || this.#connected === null || this.#ws.readyState !== OPEN) return false;
    this.#ws.send(encode(message));
    return true;
  }
  #publish(room, data, options) {
    const id = options.id ?? crypto.randomUUID();
    if (id.length === 0 || id.length > MAX_ID_LENGTH) {
      return Promise.reject(new TypeError(`publish id must be 1 to ${MAX_ID_LENGTH} characters`));
    }
    if (this.#stopError !== void 0 && !(this.#stopError instanceof ClosedError)) {
      return Promise.reject(this.#stopError);
    }
    if (this.#outbox.has(id)) {
      return Promise.reject(new TypeError(`a publish with id ${JSON.stringify(id)} is already pending`));
    }
    if (this.#outbox.size >= this.#options.maxPendingPublishes) {
      return Promise.reject(
        new QueueFullError(`${this.#outbox.size} publishes are waiting for their ack (maxPendingPublishes)`)
      );
    }
    const timeoutMs = options.timeoutMs ?? this.#options.requestTimeoutMs;
    return new Promise((resolve, reject) => {
      const message = { op: "publish", room, data, id };
      const timer = setTimeout(() => {
        this.#outbox.delete(id);
        reject(new TimeoutError(`publish ${id} to ${room} not acked within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#outbox.set(id, { message, resolve, reject, timer });
      this.#send(message);
    });
  }
  #presence(room, timeoutMs) {
    if (this.#stopError !== void 0) return Promise.reject(this.#stopError);
    const ref = this.#host.nextRef("presence", this.room(room));
    const bound = timeoutMs ?? this.#options.requestTimeoutMs;
    return new Promise((resolve, reject) => {
      const message = { op: "presence", room, ref };
      const timer = setTimeout(() => {
        this.#requests.delete(ref);
        reject(new TimeoutError(`presence of ${room} not answered within ${bound} ms`));
      }, bound);
      this.#requests.set(ref, { message, resolve, reject, timer });
      this.#send(message);
    });
  }
  // -- the connection lifecycle ----------------------------------------------------------
  async #open() {
    this.#urlIndex = (this.#urlIndex + 1) % this.urls.length;
    const url = this.urls[this.#urlIndex];
    this.#state = "connecting";
    this.emit("connecting", { url, attempt: this.#attempt });
    const generation = this.#generation;
    let token;
    try {
      token = await this.#nextToken();
    } catch (err) {
      if (!this.#wanted || generation !== this.#generation) return;
      if (err instanceof UnauthorizedError) {
        this.#stop(err, CloseCode.handshakeRefused, err.message, true);
        return;
      }
      this.emit("error", new GameClusterError("getToken failed; retrying", { cause: err }));
      this.#retry(CloseCode.abnormal, "getToken failed", this.#nextDelay());
      return;
    }
    if (!this.#wanted || generation !== this.#generation) return;
    this.#tokenInUse = token;
    const target = token === void 0 ? url : `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
    let ws;
    try {
      ws = new this.#options.WebSocket(target);
    } catch (err) {
      this.#stop(new GameClusterError(`cannot open ${url}`, { cause: err }), CloseCode.abnormal, String(err), true);
      return;
    }
    this.#ws = ws;
    this.#serverReason = null;
    let handshakeStatus;
    this.#openTimer = setTimeout(() => {
      this.#closed(ws, CloseCode.openTimeout, "no welcome in time", void 0);
    }, this.#options.openTimeoutMs);
    ws.onerror = (event) => {
      const status = refusedStatus(event);
      if (status !== void 0) handshakeStatus ??= { status, why: `HTTP ${status}` };
    };
    ws.onclose = (event) => {
      this.#closed(ws, event.code, event.reason, handshakeStatus ?? this.#expiredAtHandshake(ws));
    };
    ws.onmessage = (event) => {
      if (this.#ws !== ws) return;
      this.#lastSeen = Date.now();
      const text = typeof event.data === "string" ? event.data : String(event.data);
      for (const message of parseFrame(text)) {
        if (message instanceof MalformedMessage) this.emit("error", message);
        else this.#handle(ws, url, message);
      }
    };
  }
  /**
   * A browser never learns why a WebSocket handshake failed: a 401 closes the socket like
   * a network error (1006, no status). When the handshake of `ws` failed and the token it
   * carried is past its own `exp` (this machine's clock), that is taken as the 401 it
   * almost surely was: a fresh token from getToken(), or a stop with UnauthorizedError,
   * instead of reconnecting forever with a token that cannot work.
   */
  #expiredAtHandshake(ws) {
    if (this.#ws !== ws || this.#connected !== null || this.#tokenInUse === void 0) return void 0;
    const expiry = tokenExpiry(this.#tokenInUse);
    if (expiry === void 0 || expiry > Date.now()) return void 0;
    return { status: void 0, why: `expired at ${new Date(expiry).toISOString()}` };
  }
  async #nextToken() {
    const { getToken, token } = this.#options;
    if (getToken === void 0) return token;
    const prefetched = this.#prefetched;
    this.#prefetched = void 0;
    if (prefetched !== void 0 && !this.#refusedOnce) {
      try {
        return await prefetched;
      } catch {
      }
    }
    return await getToken();
  }
  #handle(ws, url, message) {
    switch (message.op) {
      case "welcome":
        this.#welcome(ws, url, message.node, message.session, message.heartbeat);
        break;
      case "joined":
        this.#refs.delete(message.ref ?? "");
        this.#rooms.get(message.room)?._onJoined(message);
        break;
      case "left":
        this.#refs.delete(message.ref ?? "");
        this.#rooms.get(message.room)?._onLeft(message);
        break;
      case "event":
        this.#rooms.get(message.room)?._onEvent(message);
        break;
      case "presence":
        this.#rooms.get(message.room)?._onPresence(message);
        break;
      case "ack":
        this.#settle(message.id, message);
        break;
      case "members": {
        const pending = this.#requests.get(message.ref ?? "");
        if (pending !== void 0) {
          this.#requests.delete(message.ref ?? "");
          clearTimeout(pending.timer);
          pending.resolve(message);
        }
        break;
      }
      case "error":
        this.#onError(ws, message);
        break;
      case "reconnect":
      case "disconnect":
        this.#serverReason = { op: message.op, reason: message.reason };
        break;
      case "pong": {
        const ping = this.#pings.get(message.ref ?? "");
        if (ping !== void 0) {
          this.#pings.delete(message.ref ?? "");
          clearTimeout(ping.timer);
          ping.resolve(performanceNow() - ping.sentAt);
        }
        break;
      }
    }
  }
  #welcome(ws, url, node, session, heartbeat) {
    clearTimeout(this.#openTimer);
    this.#attempt = 0;
    this.#refusedOnce = false;
    this.#connected = { url, node, session };
    this.#state = "connected";
    for (const room of this.#rooms.values()) room._sendJoin();
    for (const pending of this.#outbox.values()) ws.send(encode(pending.message));
    for (const pending of this.#requests.values()) ws.send(encode(pending.message));
    this.#lastSeen = Date.now();
    const periodMs = Math.max(0.1, heartbeat) * 1e3;
    this.#heartbeatTimer = setInterval(() => {
      if (Date.now() - this.#lastSeen > 2 * periodMs) {
        this.#closed(ws, CloseCode.noHeartbeat, "no message from the server for two heartbeats", void 0);
      } else {
        this.#send({ op: "ping" });
      }
    }, periodMs);
    this.#scheduleRefresh();
    this.emit("connected", this.#connected);
    for (const waiter of this.#readyWaiters.splice(0)) waiter.resolve(this.#connected);
  }
  #scheduleRefresh() {
    const { getToken, tokenRefreshMarginMs } = this.#options;
    const expiry = this.#tokenInUse === void 0 ? void 0 : tokenExpiry(this.#tokenInUse);
    if (getToken === void 0 || expiry === void 0) return;
    const left = expiry - Date.now();
    const delay = Math.max(0, left - Math.min(tokenRefreshMarginMs, left / 2));
    this.#refreshTimer = setTimeout(() => {
      const next = Promise.resolve().then(getToken);
      next.catch((err) => {
        this.emit("error", new GameClusterError("getToken failed", { cause: err }));
      });
      this.#prefetched = next;
    }, delay);
  }
  #onError(ws, message) {
    const error = new RelayError(message);
    const retryable = RETRYABLE_CODES.has(message.code);
    if (message.id !== void 0 && this.#outbox.has(message.id)) {
      if (retryable) {
        setTimeout(() => {
          const pending = this.#outbox.get(message.id ?? "");
          if (pending !== void 0 && this.#ws === ws) this.#send(pending.message);
        }, this.#options.random() * this.#options.maxReconnectDelayMs);
      } else {
        this.#settle(message.id, error);
      }
      return;
    }
    const ref = message.ref ?? "";
    const request = this.#requests.get(ref);
    if (request !== void 0) {
      this.#requests.delete(ref);
      clearTimeout(request.timer);
      request.reject(error);
      return;
    }
    const room = this.#refs.get(ref);
    if (room !== void 0) {
      this.#refs.delete(ref);
      if (!ref.startsWith("j")) return;
      if (retryable) {
        setTimeout(() => {
          if (this.#ws === ws) room._sendJoin();
        }, this.#options.random() * this.#options.maxReconnectDelayMs);
      } else {
        room._onJoinError(error);
      }
      return;
    }
    this.emit("error", error);
  }
  #settle(id, outcome) {
    const pending = this.#outbox.get(id);
    if (pending === void 0) return;
    this.#outbox.delete(id);
    clearTimeout(pending.timer);
    if (outcome instanceof RelayError) pending.reject(outcome);
    else pending.resolve(outcome);
  }
  /**
   * The socket `ws` closed (or is given up): decide whether and when to reconnect.
   * `refusal`: the handshake was refused (its HTTP status when the WebSocket tells it).
   */
  #closed(ws, code, reason, refusal) {
    if (this.#ws !== ws) return;
    this.#detach();
    const server = this.#serverReason;
    if (code === CloseCode.disconnectedByServer || server?.op === "disconnect") {
      const why = server?.reason ?? (reason || "no reason given");
      this.#stop(new DisconnectedByServerError(why), code, why, true);
      return;
    }
    if (refusal?.status === 403) {
      this.#stop(new UnauthorizedError("the relay refused this origin (HTTP 403)", 403), code, "HTTP 403", true);
      return;
    }
    if (refusal !== void 0 && (refusal.status === 401 || refusal.status === void 0)) {
      if (this.#options.getToken === void 0 || this.#refusedOnce) {
        const what = this.#options.getToken === void 0 ? "the token" : "a fresh token from getToken()";
        const message = refusal.status === 401 ? `the relay refused ${what} (HTTP 401)` : `the handshake failed and ${what} ${refusal.why}`;
        this.#stop(new UnauthorizedError(message, refusal.status), code, refusal.why, true);
        return;
      }
      this.#refusedOnce = true;
      this.#retry(code, `${refusal.why}: fetching a fresh token`, 0);
      return;
    }
    if (code === CloseCode.tokenExpired || server?.reason === "token_expired") {
      this.#retry(code, reason || "token_expired", 0);
      return;
    }
    this.#retry(code, reason || server?.reason || "connection closed", this.#nextDelay());
  }
  #nextDelay() {
    const delay = backoffDelay(
      this.#attempt,
      { minDelayMs: this.#options.minReconnectDelayMs, maxDelayMs: this.#options.maxReconnectDelayMs },
      this.#options.random
    );
    this.#attempt += 1;
    return delay;
  }
  #retry(code, reason, delayMs) {
    this.#state = "disconnected";
    this.emit("disconnected", { code, reason, willReconnect: this.#wanted });
    if (!this.#wanted) return;
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = void 0;
      if (this.#wanted) void this.#open();
    }, delayMs);
  }
  /** Stop for good: fail every pending call with `error`, emit the final `disconnected`. */
  #stop(error, code, reason, announce) {
    this.#wanted = false;
    this.#generation += 1;
    this.#stopError = error;
    this.#detach();
    clearTimeout(this.#reconnectTimer);
    clearTimeout(this.#refreshTimer);
    this.#prefetched = void 0;
    this.#state = "disconnected";
    for (const pending of this.#outbox.values()) {
      clearTimeout(pending.timer);
      pending.reject(error);
    }
    this.#outbox.clear();
    for (const pending of this.#requests.values()) {
      clearTimeout(pending.timer);
      pending.reject(error);
    }
    this.#requests.clear();
    for (const room of this.#rooms.values()) room._fail(error);
    for (const waiter of this.#readyWaiters.splice(0)) waiter.reject(error);
    if (announce) {
      const context = { code, reason, willReconnect: false };
      if (!(error instanceof ClosedError)) context.error = error;
      this.emit("disconnected", context);
    }
  }
  /** Close and forget the current socket (if any), and everything tied to it. */
  #detach() {
    clearTimeout(this.#openTimer);
    clearInterval(this.#heartbeatTimer);
    const ws = this.#ws;
    this.#ws = null;
    this.#connected = null;
    this.#refs.clear();
    for (const ping of this.#pings.values()) {
      clearTimeout(ping.timer);
      ping.reject(new ClosedError("the connection ended before the pong"));
    }
    this.#pings.clear();
    for (const room of this.#rooms.values()) room._onDisconnect();
    if (ws === null) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    ws.onerror = () => void 0;
    try {
      if (ws.readyState <= OPEN) ws.close(CloseCode.normal);
    } catch {
    }
  }
};
function performanceNow() {
  return typeof performance === "undefined" ? Date.now() : performance.now();
}
function refusedStatus(event) {
  const texts = [event.message, event.error instanceof Error ? event.error.message : void 0];
  for (const text of texts) {
    const match = typeof text === "string" ? /Unexpected server response: (\d{3})/.exec(text) : null;
    if (match?.[1] !== void 0) return Number(match[1]);
  }
  return void 0;
}
export {
  Client,
  CloseCode,
  ClosedError,
  DisconnectedByServerError,
  GameClusterError,
  MAX_PENDING_PINGS,
  MalformedMessage,
  QueueFullError,
  RelayError,
  Room,
  TimeoutError,
  UnauthorizedError
};
