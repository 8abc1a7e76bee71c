/**
 * A scripted relay for unit tests: a real `ws` WebSocketServer on 127.0.0.1 whose every
 * reply the test writes by hand, so each step of the client's state machine can be checked.
 */
import type { AddressInfo } from "node:net";
import { WebSocketServer, type WebSocket } from "ws";

export type Message = Record<string, unknown> & { op: string };

const WAIT_MS = 5000;

/** A FIFO of values with an awaitable, bounded-time `next()`. */
class Inbox<T> {
  #items: T[] = [];
  #waiters: ((item: T) => void)[] = [];

  push(item: T): void {
    const waiter = this.#waiters.shift();
    if (waiter) waiter(item);
    else this.#items.push(item);
  }

  next(what: string): Promise<T> {
    const item = this.#items.shift();
    if (item !== undefined) return Promise.resolve(item);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => { reject(new Error(`timed out waiting for ${what}`)); }, WAIT_MS);
      this.#waiters.push((value) => {
        clearTimeout(timer);
        resolve(value);
      });
    });
  }

  get size(): number {
    return this.#items.length;
  }
}

export class FakeConnection {
  readonly messages = new Inbox<Message>();
  readonly closed: Promise<number>;

  constructor(
    readonly ws: WebSocket,
    readonly token: string | null,
  ) {
    ws.on("message", (data) => {
      for (const line of (data as Buffer).toString().split("\n")) if (line) this.messages.push(JSON.parse(line) as Message);
    });
    this.closed = new Promise((resolve) => ws.on("close", (code) => { resolve(code); }));
  }

  /** The next message from the client; with `op`, the next one of that op (others are kept out). */
  async next(op?: string): Promise<Message> {
    for (;;) {
      const message = await this.messages.next(op ?? "a message");
      if (op === undefined || message.op === op) return message;
      if (message.op !== "ping") throw new Error(`expected ${op}, got ${JSON.stringify(message)}`);
    }
  }

  /** Send messages as one frame (newline-separated, as a batching server does). */
  send(...messages: object[]): void {
    this.ws.send(messages.map((m) => JSON.stringify(m)).join("\n"));
  }

  close(code: number, reason = ""): void {
    this.ws.close(code, reason);
  }

  /** Cut the TCP connection with no close frame (a killed pod). */
  kill(): void {
    this.ws.terminate();
  }
}

export class FakeRelay {
  readonly connections = new Inbox<FakeConnection>();
  readonly tokens: (string | null)[] = [];
  /** Refuse the next handshakes with these HTTP statuses (in order), then accept. */
  refusals: number[] = [];
  /** Send `welcome` on connect. */
  welcome = true;
  /** The `heartbeat` (seconds) announced in `welcome`. */
  heartbeat = 25;
  #server: WebSocketServer;
  readonly url: Promise<string>;

  constructor(readonly node: string) {
    this.#server = new WebSocketServer({
      host: "127.0.0.1",
      port: 0,
      verifyClient: (info, done) => {
        const token = new URL(info.req.url ?? "/", "http://x").searchParams.get("token");
        this.tokens.push(token);
        const status = this.refusals.shift();
        if (status === undefined) done(true);
        else done(false, status, status === 401 ? "invalid token" : "refused");
      },
    });
    this.#server.on("connection", (ws, req) => {
      const token = new URL(req.url ?? "/", "http://x").searchParams.get("token");
      const connection = new FakeConnection(ws, token);
      if (this.welcome) connection.send({ op: "welcome", session: `s-${this.tokens.length}`, node: this.node, heartbeat: this.heartbeat });
      this.connections.push(connection);
    });
    this.url = new Promise((resolve) =>
      this.#server.on("listening", () => { resolve(`ws://127.0.0.1:${(this.#server.address() as AddressInfo).port}/ws`); }),
    );
  }

  nextConnection(): Promise<FakeConnection> {
    return this.connections.next(`a connection to ${this.node}`);
  }

  get handshakes(): number {
    return this.tokens.length;
  }

  async stop(): Promise<void> {
    for (const client of this.#server.clients) client.terminate();
    await new Promise<void>((resolve) => { this.#server.close(() => { resolve(); }); });
  }
}

/** Resolve with the next `event` emitted by `emitter` (bounded wait). */
export function nextEvent<T>(
  emitter: { once(event: never, listener: (payload: T) => void): () => void },
  event: string,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`timed out waiting for the ${event} event`)); }, WAIT_MS);
    emitter.once(event as never, (payload: T) => {
      clearTimeout(timer);
      resolve(payload);
    });
  });
}

/** A JWT-shaped token (unsigned: the fake relay does not verify) expiring in `seconds`. */
export function fakeToken(name: string, seconds: number): string {
  const part = (value: object): string => Buffer.from(JSON.stringify(value)).toString("base64url");
  return `${part({ alg: "none" })}.${part({ sub: name, exp: Math.floor(Date.now() / 1000) + seconds })}.sig`;
}
