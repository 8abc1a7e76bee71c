/**
 * The connection to a relay cluster: one WebSocket at a time to one of several URLs,
 * reconnected with exponential backoff and full jitter, its rooms rejoined with `since`
 * and its unacked publishes re-sent with their ids, so a client moved to another relay
 * pod sees every event once, in order (docs/protocol.md, "Recovery").
 *
 * Stops (no more reconnects) on: `close()`; close code 4003 (the server disconnected this
 * client); credentials refused at the handshake that a fresh token does not fix (in a
 * browser, which hides the handshake's status: a failed handshake with an expired token).
 */
import { backoffDelay } from "./backoff.js";
import {
  ClosedError,
  DisconnectedByServerError,
  GameClusterError,
  QueueFullError,
  RelayError,
  RETRYABLE_CODES,
  TimeoutError,
  UnauthorizedError,
} from "./errors.js";
import { Emitter } from "./emitter.js";
import {
  encode,
  MalformedMessage,
  MAX_ID_LENGTH,
  parseFrame,
  ROOM_NAME,
  type AckMessage,
  type ClientMessage,
  type ErrorMessage,
  type Json,
  type MembersMessage,
  type ServerMessage,
} from "./messages.js";
import { Room, type PublishOptions, type RoomHost, type RoomOptions } from "./room.js";
import { tokenExpiry } from "./token.js";

/** The part of the WHATWG WebSocket the client uses (browsers, Node >= 22, `ws`). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: never) => void) | null;
  onmessage: ((event: never) => void) | null;
  onclose: ((event: never) => void) | null;
  onerror: ((event: never) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export type TokenSource = () => string | Promise<string>;

export interface ClientOptions {
  /** A fixed JWT. Prefer `getToken` for tokens that expire while the game runs. */
  token?: string;
  /**
   * Called for every connection and shortly before the current token expires; a token
   * refused at the handshake (HTTP 401) is replaced once by a fresh one, and a fresh token
   * refused again stops the client with UnauthorizedError. Throw UnauthorizedError to stop.
   * Browsers hide the 401: there a failed handshake with a token past its `exp` counts as one.
   */
  getToken?: TokenSource;
  /** The WebSocket constructor; default `globalThis.WebSocket` (browsers, Node >= 22). */
  WebSocket?: WebSocketConstructor;
  /** Upper bound of the first reconnect delay (full jitter), ms. Default 100. */
  minReconnectDelayMs?: number;
  /** Upper bound of every reconnect delay, ms. Default 5000. */
  maxReconnectDelayMs?: number;
  /** Give up a connection attempt that got no `welcome` within this many ms. Default 10000. */
  openTimeoutMs?: number;
  /** Default `timeoutMs` of publish and presence calls. Default 30000. */
  requestTimeoutMs?: number;
  /**
   * Most publishes waiting for their ack (sent or not). Overflow policy: a publish beyond
   * the bound is rejected at once with QueueFullError; accepted ones are never dropped
   * (they end acked, refused, timed out, or with close()). Default 1000.
   */
  maxPendingPublishes?: number;
  /** Fetch the next token this many ms before the current one expires. Default 5000. */
  tokenRefreshMarginMs?: number;
  /** Random numbers in [0, 1) for the jitter (tests pass a fixed one). */
  random?: () => number;
}

export type ClientState = "disconnected" | "connecting" | "connected";

export interface ConnectingContext {
  url: string;
  attempt: number;
}

export interface ConnectedContext {
  url: string;
  node: string;
  session: string;
}

export interface DisconnectedContext {
  code: number;
  reason: string;
  willReconnect: boolean;
  /** Why the client stopped, when it stopped for a reason other than close(). */
  error?: GameClusterError;
}

export interface ClientEvents {
  connecting: ConnectingContext;
  connected: ConnectedContext;
  disconnected: DisconnectedContext;
  /** Something went wrong that the client handles itself (a refused message with no caller
   * waiting, a malformed server message, a failing getToken): for logs. */
  error: Error;
}

/** Close codes (docs/protocol.md) and the ones this client uses locally. */
export const CloseCode = {
  normal: 1000,
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
  handshakeRefused: 4902,
} as const;

interface PendingPublish {
  message: Extract<ClientMessage, { op: "publish" }>;
  resolve: (ack: AckMessage) => void;
  reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

interface PendingRequest {
  message: ClientMessage;
  resolve: (reply: MembersMessage) => void;
  reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

const OPEN = 1;

/** Why a handshake failed: its HTTP status when the WebSocket says (Node's `ws` does). */
interface Refusal {
  status: number | undefined;
  why: string;
}

/**
 * Most ping() calls waiting for their pong. Overflow policy: a ping beyond the bound is
 * rejected at once with QueueFullError (a caller pinging faster than the relay answers
 * learns nothing more from more pings).
 */
export const MAX_PENDING_PINGS = 16;

interface PendingPing {
  sentAt: number;
  resolve: (rttMs: number) => void;
  reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

export class Client extends Emitter<ClientEvents> {
  readonly urls: readonly string[];
  #options: Required<Omit<ClientOptions, "token" | "getToken">> & {
    token: string | undefined;
    getToken: TokenSource | undefined;
  };
  #state: ClientState = "disconnected";
  #wanted = false;
  #ws: WebSocketLike | null = null;
  #connected: ConnectedContext | null = null;
  #urlIndex = -1;
  #attempt = 0;
  #rooms = new Map<string, Room>();
  /** Unacked publishes by id, in publish order (the order they are re-sent in). */
  #outbox = new Map<string, PendingPublish>();
  #requests = new Map<string, PendingRequest>();
  #pings = new Map<string, PendingPing>();
  #refs = new Map<string, Room>();
  #refSeq = 0;
  #readyWaiters: { resolve: (c: ConnectedContext) => void; reject: (e: Error) => void }[] = [];
  #reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  #openTimer: ReturnType<typeof setTimeout> | undefined;
  #heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  #refreshTimer: ReturnType<typeof setTimeout> | undefined;
  #lastSeen = 0;
  /** Set by `reconnect` / `disconnect` messages; read when the close follows. */
  #serverReason: { op: "reconnect" | "disconnect"; reason: string } | null = null;
  /** The previous handshake was refused with 401: one more try, with a fresh token. */
  #refusedOnce = false;
  #prefetched: Promise<string> | undefined;
  #tokenInUse: string | undefined;
  #stopError: GameClusterError | undefined;
  /** Bumped by every stop: an attempt started before a close()/connect() pair gives up. */
  #generation = 0;

  constructor(urls: string | readonly string[], options: ClientOptions = {}) {
    super();
    this.urls = typeof urls === "string" ? [urls] : [...urls];
    if (this.urls.length === 0) throw new TypeError("Client needs at least one URL");
    const WebSocketImpl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (WebSocketImpl === undefined) {
      throw new TypeError("no global WebSocket (Node < 22): pass one, e.g. new Client(urls, { WebSocket }) from 'ws'");
    }
    this.#options = {
      WebSocket: WebSocketImpl,
      minReconnectDelayMs: options.minReconnectDelayMs ?? 100,
      maxReconnectDelayMs: options.maxReconnectDelayMs ?? 5000,
      openTimeoutMs: options.openTimeoutMs ?? 10_000,
      requestTimeoutMs: options.requestTimeoutMs ?? 30_000,
      maxPendingPublishes: options.maxPendingPublishes ?? 1000,
      tokenRefreshMarginMs: options.tokenRefreshMarginMs ?? 5000,
      random: options.random ?? Math.random,
      token: options.token,
      getToken: options.getToken,
    };
  }

  get state(): ClientState {
    return this.#state;
  }

  /** The relay node of the current connection (from its `welcome`), or null. */
  get node(): string | null {
    return this.#connected?.node ?? null;
  }

  /** Publishes waiting for their ack. */
  get pendingPublishes(): number {
    return this.#outbox.size;
  }

  /** Start connecting (and reconnecting until close() or a stop). Await `ready()` to wait. */
  connect(): void {
    if (this.#wanted) return;
    this.#wanted = true;
    this.#stopError = undefined;
    this.#attempt = 0;
    this.#refusedOnce = false;
    void this.#open();
  }

  /**
   * Resolves when connected (at once if connected now); rejects with the error that
   * stopped the client (UnauthorizedError, DisconnectedByServerError, ClosedError) or with
   * TimeoutError.
   */
  ready(timeoutMs = this.#options.requestTimeoutMs): Promise<ConnectedContext> {
    if (this.#connected !== null) return Promise.resolve(this.#connected);
    if (this.#stopError !== undefined) return Promise.reject(this.#stopError);
    return new Promise<ConnectedContext>((resolve, reject) => {
      const waiter = {
        resolve: (c: ConnectedContext) => {
          clearTimeout(timer);
          resolve(c);
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
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
  close(): void {
    const wasActive = this.#wanted || this.#ws !== null;
    this.#stop(new ClosedError("the client was closed"), CloseCode.normal, "closed by the client", wasActive);
  }

  /** The room `name` (one object per name); join it with `room.join()`. */
  room(name: string, options: RoomOptions = {}): Room {
    if (!ROOM_NAME.test(name)) {
      throw new TypeError(`room name ${JSON.stringify(name)} is not 1 to 128 of A-Z a-z 0-9 _ - . : /`);
    }
    let room = this.#rooms.get(name);
    if (room === undefined) {
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
  ping(timeoutMs = this.#options.requestTimeoutMs): Promise<number> {
    if (this.#pings.size >= MAX_PENDING_PINGS) {
      return Promise.reject(new QueueFullError(`${this.#pings.size} pings are waiting for their pong`));
    }
    this.#refSeq += 1;
    const ref = `ping${this.#refSeq}`;
    const sentAt = performanceNow();
    if (!this.#send({ op: "ping", ref })) return Promise.reject(new ClosedError("not connected"));
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pings.delete(ref);
        reject(new TimeoutError(`no pong within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#pings.set(ref, { sentAt, resolve, reject, timer });
    });
  }

  /** Cut the current connection as a network failure would (tests, "reconnect now"). */
  dropConnection(): void {
    if (this.#ws !== null) this.#closed(this.#ws, CloseCode.abnormal, "connection dropped by the client", undefined);
  }

  // -- the room host: what rooms may ask of the client -----------------------------------

  #host: RoomHost = {
    send: (message) => this.#send(message),
    nextRef: (kind, room) => {
      this.#refSeq += 1;
      const ref = `${kind[0]}${this.#refSeq}`;
      if (kind !== "presence") this.#refs.set(ref, room);
      return ref;
    },
    publish: (room, data, options) => this.#publish(room, data, options),
    presence: (room, timeoutMs) => this.#presence(room, timeoutMs),
  };

  #send(message: ClientMessage): boolean {
    if (this.#ws === null || this.#connected === null || this.#ws.readyState !== OPEN) return false;
    this.#ws.send(encode(message));
    return true;
  }

  #publish(room: string, data: Json, options: PublishOptions): Promise<AckMessage> {
    const id = options.id ?? crypto.randomUUID();
    if (id.length === 0 || id.length > MAX_ID_LENGTH) {
      return Promise.reject(new TypeError(`publish id must be 1 to ${MAX_ID_LENGTH} characters`));
    }
    if (this.#stopError !== undefined && !(this.#stopError instanceof ClosedError)) {
      return Promise.reject(this.#stopError);
    }
    if (this.#outbox.has(id)) {
      return Promise.reject(new TypeError(`a publish with id ${JSON.stringify(id)} is already pending`));
    }
    // The bound and its overflow policy: reject the new publish, keep every accepted one.
    if (this.#outbox.size >= this.#options.maxPendingPublishes) {
      return Promise.reject(
        new QueueFullError(`${this.#outbox.size} publishes are waiting for their ack (maxPendingPublishes)`),
      );
    }
    const timeoutMs = options.timeoutMs ?? this.#options.requestTimeoutMs;
    return new Promise<AckMessage>((resolve, reject) => {
      const message = { op: "publish" as const, room, data, id };
      const timer = setTimeout(() => {
        // Taken out of the queue: it may still have been stored; publish again with the
        // same id within the server's dedup window to learn the outcome.
        this.#outbox.delete(id);
        reject(new TimeoutError(`publish ${id} to ${room} not acked within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#outbox.set(id, { message, resolve, reject, timer });
      this.#send(message);
    });
  }

  #presence(room: string, timeoutMs: number | undefined): Promise<MembersMessage> {
    if (this.#stopError !== undefined) return Promise.reject(this.#stopError);
    const ref = this.#host.nextRef("presence", this.room(room));
    const bound = timeoutMs ?? this.#options.requestTimeoutMs;
    return new Promise<MembersMessage>((resolve, reject) => {
      const message: ClientMessage = { op: "presence", room, ref };
      const timer = setTimeout(() => {
        this.#requests.delete(ref);
        reject(new TimeoutError(`presence of ${room} not answered within ${bound} ms`));
      }, bound);
      this.#requests.set(ref, { message, resolve, reject, timer });
      this.#send(message); // else sent on connect
    });
  }

  // -- the connection lifecycle ----------------------------------------------------------

  async #open(): Promise<void> {
    // 1. Pick the next URL (every attempt moves on, so a dead pod is left behind).
    this.#urlIndex = (this.#urlIndex + 1) % this.urls.length;
    const url = this.urls[this.#urlIndex] as string;
    this.#state = "connecting";
    this.emit("connecting", { url, attempt: this.#attempt });
    // 2. A token for this connection: the one fetched before expiry, or a fresh one.
    const generation = this.#generation;
    let token: string | undefined;
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
    // 3. Open the socket; a handshake that gets no `welcome` in time is given up.
    const target = token === undefined ? url : `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
    let ws: WebSocketLike;
    try {
      ws = new this.#options.WebSocket(target);
    } catch (err) {
      this.#stop(new GameClusterError(`cannot open ${url}`, { cause: err }), CloseCode.abnormal, String(err), true);
      return;
    }
    this.#ws = ws;
    this.#serverReason = null;
    let handshakeStatus: Refusal | undefined;
    this.#openTimer = setTimeout(() => {
      this.#closed(ws, CloseCode.openTimeout, "no welcome in time", undefined);
    }, this.#options.openTimeoutMs);
    ws.onerror = (event: { message?: unknown; error?: unknown }) => {
      const status = refusedStatus(event);
      if (status !== undefined) handshakeStatus ??= { status, why: `HTTP ${status}` };
    };
    ws.onclose = (event: { code: number; reason: string }) => {
      this.#closed(ws, event.code, event.reason, handshakeStatus ?? this.#expiredAtHandshake(ws));
    };
    ws.onmessage = (event: { data: unknown }) => {
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
  #expiredAtHandshake(ws: WebSocketLike): Refusal | undefined {
    if (this.#ws !== ws || this.#connected !== null || this.#tokenInUse === undefined) return undefined;
    const expiry = tokenExpiry(this.#tokenInUse);
    if (expiry === undefined || expiry > Date.now()) return undefined;
    return { status: undefined, why: `expired at ${new Date(expiry).toISOString()}` };
  }

  async #nextToken(): Promise<string | undefined> {
    const { getToken, token } = this.#options;
    if (getToken === undefined) return token;
    const prefetched = this.#prefetched;
    this.#prefetched = undefined;
    if (prefetched !== undefined && !this.#refusedOnce) {
      try {
        return await prefetched;
      } catch {
        // fall through: fetch one now
      }
    }
    return await getToken();
  }

  #handle(ws: WebSocketLike, url: string, message: ServerMessage): void {
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
        if (pending !== undefined) {
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
        // The server closes next (1012/4001/4008, or 4003 for disconnect).
        this.#serverReason = { op: message.op, reason: message.reason };
        break;
      case "pong": {
        const ping = this.#pings.get(message.ref ?? "");
        if (ping !== undefined) {
          this.#pings.delete(message.ref ?? "");
          clearTimeout(ping.timer);
          ping.resolve(performanceNow() - ping.sentAt);
        }
        break; // a heartbeat's pong (no ref) only proves liveness, counted in onmessage
      }
    }
  }

  #welcome(ws: WebSocketLike, url: string, node: string, session: string, heartbeat: number): void {
    clearTimeout(this.#openTimer);
    this.#attempt = 0;
    this.#refusedOnce = false;
    this.#connected = { url, node, session };
    this.#state = "connected";
    // 1. Rejoin every wanted room from its last position: the server answers joins in
    //    order, so each room's replay precedes anything published after.
    for (const room of this.#rooms.values()) room._sendJoin();
    // 2. Re-send every unacked publish, in publish order, with its id.
    for (const pending of this.#outbox.values()) ws.send(encode(pending.message));
    // 3. Re-send unanswered requests.
    for (const pending of this.#requests.values()) ws.send(encode(pending.message));
    // 4. Liveness: ping every heartbeat; no message for two heartbeats drops the socket.
    this.#lastSeen = Date.now();
    const periodMs = Math.max(0.1, heartbeat) * 1000; // a floor against a bogus value
    this.#heartbeatTimer = setInterval(() => {
      if (Date.now() - this.#lastSeen > 2 * periodMs) {
        this.#closed(ws, CloseCode.noHeartbeat, "no message from the server for two heartbeats", undefined);
      } else {
        this.#send({ op: "ping" });
      }
    }, periodMs);
    // 5. Fetch the next token before this one expires.
    this.#scheduleRefresh();
    this.emit("connected", this.#connected);
    for (const waiter of this.#readyWaiters.splice(0)) waiter.resolve(this.#connected);
  }

  #scheduleRefresh(): void {
    const { getToken, tokenRefreshMarginMs } = this.#options;
    const expiry = this.#tokenInUse === undefined ? undefined : tokenExpiry(this.#tokenInUse);
    if (getToken === undefined || expiry === undefined) return;
    const left = expiry - Date.now();
    const delay = Math.max(0, left - Math.min(tokenRefreshMarginMs, left / 2));
    this.#refreshTimer = setTimeout(() => {
      const next = Promise.resolve().then(getToken);
      next.catch((err: unknown) => { this.emit("error", new GameClusterError("getToken failed", { cause: err })); });
      this.#prefetched = next;
    }, delay);
  }

  #onError(ws: WebSocketLike, message: ErrorMessage): void {
    const error = new RelayError(message);
    const retryable = RETRYABLE_CODES.has(message.code);
    if (message.id !== undefined && this.#outbox.has(message.id)) {
      if (retryable) {
        // Refused for now: send again after a jittered pause, on this connection only
        // (a reconnect re-sends every unacked publish anyway).
        setTimeout(() => {
          const pending = this.#outbox.get(message.id ?? "");
          if (pending !== undefined && this.#ws === ws) this.#send(pending.message);
        }, this.#options.random() * this.#options.maxReconnectDelayMs);
      } else {
        this.#settle(message.id, error);
      }
      return;
    }
    const ref = message.ref ?? "";
    const request = this.#requests.get(ref);
    if (request !== undefined) {
      this.#requests.delete(ref);
      clearTimeout(request.timer);
      request.reject(error);
      return;
    }
    const room = this.#refs.get(ref);
    if (room !== undefined) {
      this.#refs.delete(ref);
      if (!ref.startsWith("j")) return; // a refused leave: the room is left for this client
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

  #settle(id: string, outcome: AckMessage | RelayError): void {
    const pending = this.#outbox.get(id);
    if (pending === undefined) return; // an ack for a publish already settled or timed out
    this.#outbox.delete(id);
    clearTimeout(pending.timer);
    if (outcome instanceof RelayError) pending.reject(outcome);
    else pending.resolve(outcome);
  }

  /**
   * The socket `ws` closed (or is given up): decide whether and when to reconnect.
   * `refusal`: the handshake was refused (its HTTP status when the WebSocket tells it).
   */
  #closed(ws: WebSocketLike, code: number, reason: string, refusal: Refusal | undefined): void {
    if (this.#ws !== ws) return;
    // 1. Forget the socket: detach it so nothing it says later reaches the client.
    this.#detach();
    const server = this.#serverReason;
    // 2. Decide.
    if (code === CloseCode.disconnectedByServer || server?.op === "disconnect") {
      const why = server?.reason ?? (reason || "no reason given");
      this.#stop(new DisconnectedByServerError(why), code, why, true);
      return;
    }
    if (refusal?.status === 403) {
      this.#stop(new UnauthorizedError("the relay refused this origin (HTTP 403)", 403), code, "HTTP 403", true);
      return;
    }
    if (refusal !== undefined && (refusal.status === 401 || refusal.status === undefined)) {
      if (this.#options.getToken === undefined || this.#refusedOnce) {
        const what = this.#options.getToken === undefined ? "the token" : "a fresh token from getToken()";
        const message =
          refusal.status === 401
            ? `the relay refused ${what} (HTTP 401)`
            : `the handshake failed and ${what} ${refusal.why}`;
        this.#stop(new UnauthorizedError(message, refusal.status), code, refusal.why, true);
        return;
      }
      this.#refusedOnce = true; // the next attempt gets a fresh token; refused again: stop
      this.#retry(code, `${refusal.why}: fetching a fresh token`, 0);
      return;
    }
    if (code === CloseCode.tokenExpired || server?.reason === "token_expired") {
      this.#retry(code, reason || "token_expired", 0); // a fresh token makes this work at once
      return;
    }
    this.#retry(code, reason || server?.reason || "connection closed", this.#nextDelay());
  }

  #nextDelay(): number {
    const delay = backoffDelay(
      this.#attempt,
      { minDelayMs: this.#options.minReconnectDelayMs, maxDelayMs: this.#options.maxReconnectDelayMs },
      this.#options.random,
    );
    this.#attempt += 1;
    return delay;
  }

  #retry(code: number, reason: string, delayMs: number): void {
    this.#state = "disconnected";
    this.emit("disconnected", { code, reason, willReconnect: this.#wanted });
    if (!this.#wanted) return;
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = undefined;
      if (this.#wanted) void this.#open();
    }, delayMs);
  }

  /** Stop for good: fail every pending call with `error`, emit the final `disconnected`. */
  #stop(error: GameClusterError, code: number, reason: string, announce: boolean): void {
    this.#wanted = false;
    this.#generation += 1;
    this.#stopError = error;
    this.#detach();
    clearTimeout(this.#reconnectTimer);
    clearTimeout(this.#refreshTimer);
    this.#prefetched = undefined;
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
      const context: DisconnectedContext = { code, reason, willReconnect: false };
      if (!(error instanceof ClosedError)) context.error = error;
      this.emit("disconnected", context);
    }
  }

  /** Close and forget the current socket (if any), and everything tied to it. */
  #detach(): void {
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
    ws.onerror = () => undefined; // `ws` throws on an 'error' with no listener
    try {
      if (ws.readyState <= OPEN) ws.close(CloseCode.normal);
    } catch {
      // closing a socket that is still connecting throws in some implementations
    }
  }
}

/** A monotonic clock in ms where there is one (browsers, Node), else the wall clock. */
function performanceNow(): number {
  return typeof performance === "undefined" ? Date.now() : performance.now();
}

/** The HTTP status of a refused handshake, when the WebSocket error tells it (`ws` does). */
function refusedStatus(event: { message?: unknown; error?: unknown }): number | undefined {
  const texts = [event.message, event.error instanceof Error ? event.error.message : undefined];
  for (const text of texts) {
    const match = typeof text === "string" ? /Unexpected server response: (\d{3})/.exec(text) : null;
    if (match?.[1] !== undefined) return Number(match[1]);
  }
  return undefined;
}
