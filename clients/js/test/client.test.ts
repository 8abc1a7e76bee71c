/** The client's state machine against a scripted relay (test/fake-relay.ts), over real sockets. */
import assert from "node:assert/strict";
import { afterEach, describe, it } from "node:test";
import { WebSocket } from "ws";

import {
  Client,
  CloseCode,
  MAX_PENDING_PINGS,
  ClosedError,
  DisconnectedByServerError,
  QueueFullError,
  RelayError,
  TimeoutError,
  UnauthorizedError,
  type ClientOptions,
  type DisconnectedContext,
  type EventMessage,
  type JoinedContext,
  type LostContext,
  type PresenceChange,
  type WebSocketLike,
} from "../src/index.js";
import { backoffDelay } from "../src/backoff.js";
import { tokenExpiry } from "../src/token.js";
import { fakeToken, FakeRelay, nextEvent } from "./fake-relay.js";

const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const step of cleanup.splice(0).reverse()) await step();
});

async function relays(...nodes: string[]): Promise<{ relays: FakeRelay[]; urls: string[] }> {
  const started = nodes.map((node) => new FakeRelay(node));
  for (const relay of started) cleanup.push(() => relay.stop());
  return { relays: started, urls: await Promise.all(started.map((r) => r.url)) };
}

function client(urls: string[], options: ClientOptions = {}): Client {
  const c = new Client(urls, { WebSocket, minReconnectDelayMs: 10, maxReconnectDelayMs: 50, ...options });
  cleanup.push(() => { c.close(); });
  return c;
}

/**
 * What a browser's WebSocket shows of a refused handshake: an `error` event with no detail,
 * then `close` with 1006; never the HTTP status (Node's `ws`, wrapped here, would tell it).
 */
class BrowserLikeWebSocket implements WebSocketLike {
  onopen: ((event: never) => void) | null = null;
  onmessage: ((event: never) => void) | null = null;
  onclose: ((event: never) => void) | null = null;
  onerror: ((event: never) => void) | null = null;
  #ws: WebSocket;

  constructor(url: string) {
    this.#ws = new WebSocket(url);
    this.#ws.onopen = () => this.onopen?.({} as never);
    this.#ws.onmessage = (event) => this.onmessage?.({ data: event.data } as never); // text frames: strings
    this.#ws.onerror = () => this.onerror?.({} as never);
    this.#ws.onclose = (event) => this.onclose?.({ code: event.code, reason: event.reason } as never);
  }

  get readyState(): number {
    return this.#ws.readyState;
  }

  send(data: string): void {
    this.#ws.send(data);
  }

  close(code?: number, reason?: string): void {
    this.#ws.close(code, reason);
  }
}

const joined = (room: string, offset: number | null, epoch: string | null, extra: object = {}): object => ({
  op: "joined",
  room,
  offset,
  epoch,
  ...extra,
});
const event = (room: string, offset: number, data: unknown): object => ({ op: "event", room, offset, data, ts: 1 });

describe("connection", () => {
  it("emits connecting then connected with the node, and ready() resolves", async () => {
    const { urls } = await relays("pod-a");
    const c = client(urls);
    const states: string[] = [];
    c.on("connecting", () => states.push("connecting"));
    c.on("connected", ({ node }) => states.push(`connected ${node}`));
    c.connect();
    const ready = await c.ready();
    assert.equal(ready.node, "pod-a");
    assert.deepEqual(states, ["connecting", "connected pod-a"]);
    assert.equal(c.state, "connected");
  });

  it("moves to the next URL when a pod dies, with willReconnect", async () => {
    const { relays: [a, b], urls } = await relays("pod-a", "pod-b");
    const c = client(urls);
    c.connect();
    await c.ready();
    const onA = await a!.nextConnection();
    const disconnected = nextEvent<DisconnectedContext>(c, "disconnected");
    onA.kill();
    assert.equal((await disconnected).willReconnect, true);
    await b!.nextConnection();
    assert.equal((await nextEvent<{ node: string }>(c, "connected")).node, "pod-b");
  });

  it("stops on close code 4003 after `disconnect`, and does not reconnect", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    const c = client(urls);
    c.connect();
    await c.ready();
    const conn = await a!.nextConnection();
    const disconnected = nextEvent<DisconnectedContext>(c, "disconnected");
    conn.send({ op: "disconnect", reason: "banned", reconnect: false });
    conn.close(4003, "disconnected by the server");
    const ctx = await disconnected;
    assert.equal(ctx.willReconnect, false);
    assert.equal(ctx.code, 4003);
    assert.ok(ctx.error instanceof DisconnectedByServerError);
    assert.equal((ctx.error).reason, "banned");
    await assert.rejects(c.ready(), DisconnectedByServerError);
    await assert.rejects(c.room("r").publish(1), DisconnectedByServerError);
    assert.equal(a!.handshakes, 1); // no second attempt (the fake answers a new one at once)
  });

  it("close() stops reconnecting and fails pending publishes with ClosedError", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    const c = client(urls);
    c.connect();
    await c.ready();
    await a!.nextConnection();
    const pending = c.room("r").publish("x");
    c.close();
    await assert.rejects(pending, ClosedError);
    assert.equal(c.state, "disconnected");
    assert.equal(a!.handshakes, 1);
  });

  it("pings every heartbeat and drops a connection silent for two, then reconnects", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    a!.heartbeat = 0.2;
    const c = client(urls);
    c.connect();
    await c.ready();
    const silent = await a!.nextConnection(); // answers nothing, as a half-open TCP would
    assert.equal((await silent.next()).op, "ping");
    const dropped = await nextEvent<DisconnectedContext>(c, "disconnected");
    assert.equal(dropped.code, CloseCode.noHeartbeat);
    assert.equal(dropped.willReconnect, true);
    await a!.nextConnection();
  });

  it("a close() and connect() while getToken is pending make one connection, not two", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    const pending: ((token: string) => void)[] = [];
    const c = client(urls, { getToken: () => new Promise<string>((resolve) => pending.push(resolve)) });
    c.connect();
    c.close();
    c.connect();
    assert.equal(pending.length, 2);
    for (const resolve of pending) resolve(fakeToken("t", 3600));
    await c.ready();
    await a!.nextConnection();
    await new Promise((resolve) => setTimeout(resolve, 100)); // a second socket would be open by now
    assert.equal(a!.handshakes, 1);
  });

  it("reads batched frames and reports a malformed line without dropping the rest", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    const c = client(urls);
    c.connect();
    await c.ready();
    const conn = await a!.nextConnection();
    const room = c.room("r");
    const join = room.join();
    const msg = await conn.next("join");
    const errors: Error[] = [];
    c.on("error", (e) => errors.push(e));
    const got: unknown[] = [];
    room.on("event", (e) => got.push(e.data));
    conn.ws.send(
      [JSON.stringify(joined("r", 0, "e1", { ref: msg.ref })), "{not json", JSON.stringify(event("r", 1, "a"))].join("\n"),
    );
    await join;
    conn.send(event("r", 2, "b"));
    await nextEvent(room, "event");
    assert.deepEqual(got, ["a", "b"]);
    assert.equal(errors.length, 1);
    assert.match(errors[0]!.message, /not JSON/);
  });
});

describe("rooms", () => {
  it("join resolves on joined; a forbidden join rejects with the server's code", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    const c = client(urls);
    c.connect();
    await c.ready();
    const conn = await a!.nextConnection();
    const ok = c.room("lobby").join();
    const first = await conn.next("join");
    assert.equal(first.since, undefined);
    conn.send(joined("lobby", 7, "e1", { ref: first.ref }));
    assert.deepEqual(await ok, { room: "lobby", recovered: false, offset: 7, epoch: "e1" });

    const no = c.room("secret").join();
    const second = await conn.next("join");
    conn.send({ op: "error", code: "forbidden", message: "not allowed", ref: second.ref, room: "secret" });
    const error = await no.then(
      () => assert.fail("join resolved"),
      (e: unknown) => e,
    );
    assert.ok(error instanceof RelayError);
    assert.equal(error.code, "forbidden");
    assert.equal(c.room("secret").state, "unjoined");
  });

  it("a join refused for now (unavailable) is sent again and then resolves", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    const c = client(urls, { random: () => 0.01 });
    c.connect();
    await c.ready();
    const conn = await a!.nextConnection();
    const join = c.room("r").join();
    const first = await conn.next("join");
    conn.send({ op: "error", code: "unavailable", message: "redis down", ref: first.ref, room: "r" });
    const second = await conn.next("join");
    assert.notEqual(second.ref, first.ref);
    conn.send(joined("r", 0, "e", { ref: second.ref }));
    assert.equal((await join).epoch, "e");
  });

  it("resumes with since after a reconnect, drops the replayed duplicate, keeps order", async () => {
    const { relays: [a, b], urls } = await relays("pod-a", "pod-b");
    const c = client(urls);
    c.connect();
    await c.ready();
    const onA = await a!.nextConnection();
    const room = c.room("match:1");
    const got: number[] = [];
    room.on("event", (e: EventMessage) => got.push(e.data as number));
    const join = room.join();
    onA.send(joined("match:1", 0, "e1", { ref: (await onA.next("join")).ref }));
    await join;
    onA.send(event("match:1", 1, 1), event("match:1", 2, 2));
    while (got.length < 2) await nextEvent(room, "event");
    onA.kill();

    const onB = await b!.nextConnection();
    const rejoin = await onB.next("join");
    assert.deepEqual(rejoin.since, { epoch: "e1", offset: 2 });
    const rejoined = nextEvent<JoinedContext>(room, "joined");
    // A replay that overlaps what was seen: 2 again, then 3, 4; then live 5.
    onB.send(joined("match:1", 4, "e1", { recovered: true, ref: rejoin.ref }), event("match:1", 2, 2));
    onB.send(event("match:1", 3, 3), event("match:1", 4, 4), event("match:1", 5, 5));
    assert.equal((await rejoined).recovered, true);
    while (got.length < 5) await nextEvent(room, "event");
    assert.deepEqual(got, [1, 2, 3, 4, 5]);
    assert.equal(room.duplicates, 1);
    assert.equal(room.gaps, 0);
    assert.deepEqual(room.position, { epoch: "e1", offset: 5 });
  });

  it("emits lost when history could not be recovered, and continues from the new position", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    const c = client(urls);
    c.connect();
    await c.ready();
    const conn = await a!.nextConnection();
    const room = c.room("match:2", { since: { epoch: "old", offset: 40 } });
    const join = room.join();
    const msg = await conn.next("join");
    assert.deepEqual(msg.since, { epoch: "old", offset: 40 });
    const lost = nextEvent<LostContext>(room, "lost");
    conn.send(joined("match:2", 3, "new", { recovered: false, ref: msg.ref }));
    assert.equal((await join).recovered, false);
    assert.deepEqual(await lost, {
      room: "match:2",
      previous: { epoch: "old", offset: 40 },
      offset: 3,
      epoch: "new",
    });
    // An unsolicited joined{recovered:false} mid-session says the same.
    const again = nextEvent<LostContext>(room, "lost");
    conn.send(joined("match:2", 9, "newer", { recovered: false }));
    assert.equal((await again).epoch, "newer");
    assert.deepEqual(room.position, { epoch: "newer", offset: 9 });
  });

  it("a room removed by the server emits left and is not rejoined", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    const c = client(urls);
    c.connect();
    await c.ready();
    const conn = await a!.nextConnection();
    const room = c.room("r");
    const join = room.join();
    conn.send(joined("r", 0, "e", { ref: (await conn.next("join")).ref }));
    await join;
    const left = nextEvent<{ reason?: string }>(room, "left");
    conn.send({ op: "left", room: "r", reason: "removed" });
    assert.equal((await left).reason, "removed");
    assert.equal(room.state, "unjoined");
    conn.kill();
    const next = await a!.nextConnection();
    next.send({ op: "pong" });
    const publish = c.room("other").publish(1, { id: "p1" });
    assert.equal((await next.next()).op, "publish"); // no join for "r" came before it
    next.send({ op: "ack", id: "p1", room: "other", offset: 1 });
    await publish;
  });

  it("leave resolves on left and the room is not rejoined", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    const c = client(urls);
    c.connect();
    await c.ready();
    const conn = await a!.nextConnection();
    const room = c.room("r");
    const join = room.join();
    conn.send(joined("r", 0, "e", { ref: (await conn.next("join")).ref }));
    await join;
    const leaving = room.leave();
    const leave = await conn.next("leave");
    conn.send({ op: "left", room: "r", ref: leave.ref });
    await leaving;
    assert.equal(room.state, "unjoined");
  });
});

describe("publish", () => {
  it("resolves with the ack; unacked publishes are re-sent after reconnect, in order, after the joins", async () => {
    const { relays: [a, b], urls } = await relays("pod-a", "pod-b");
    const c = client(urls);
    c.connect();
    await c.ready();
    const onA = await a!.nextConnection();
    const room = c.room("r");
    const join = room.join();
    onA.send(joined("r", 0, "e", { ref: (await onA.next("join")).ref }));
    await join;
    const first = room.publish({ n: 1 }, { id: "id-1" });
    assert.deepEqual(await onA.next("publish"), { op: "publish", room: "r", data: { n: 1 }, id: "id-1" });
    onA.send({ op: "ack", id: "id-1", room: "r", offset: 1 });
    assert.equal((await first).offset, 1);

    const second = room.publish({ n: 2 }, { id: "id-2" });
    const third = room.publish({ n: 3 }, { id: "id-3" });
    await onA.next("publish");
    await onA.next("publish");
    onA.kill(); // no acks: both must be re-sent with the same ids
    const onB = await b!.nextConnection();
    const sequence = [await onB.next(), await onB.next(), await onB.next()];
    assert.deepEqual(
      sequence.map((m) => [m.op, m.id ?? m.room]),
      [
        ["join", "r"],
        ["publish", "id-2"],
        ["publish", "id-3"],
      ],
    );
    onB.send({ op: "ack", id: "id-2", room: "r", offset: 2 }, { op: "ack", id: "id-3", room: "r", offset: 3 });
    assert.deepEqual([(await second).offset, (await third).offset], [2, 3]);
    assert.equal(c.pendingPublishes, 0);
  });

  it("rejects a publish beyond maxPendingPublishes with QueueFullError and keeps the others", async () => {
    const c = client(["ws://127.0.0.1:9/ws"], { maxPendingPublishes: 2 });
    const kept = [c.room("r").publish(1), c.room("r").publish(2)];
    await assert.rejects(c.room("r").publish(3), QueueFullError);
    assert.equal(c.pendingPublishes, 2);
    c.close();
    for (const p of kept) await assert.rejects(p, ClosedError);
  });

  it("rejects with TimeoutError when no ack comes in time, and with the server's error", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    const c = client(urls);
    c.connect();
    await c.ready();
    const conn = await a!.nextConnection();
    await assert.rejects(c.room("r").publish(1, { timeoutMs: 50 }), TimeoutError);
    await conn.next("publish");
    const refused = c.room("r").publish(2, { id: "big" });
    await conn.next("publish");
    conn.send({ op: "error", code: "too_large", message: "data over 64 KiB", id: "big", room: "r" });
    await assert.rejects(refused, (e: unknown) => e instanceof RelayError && e.code === "too_large");
  });
});

describe("tokens", () => {
  it("calls getToken per connect and reconnects at once with a fresh one after token_expired", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    let issued = 0;
    const c = client(urls, { getToken: () => fakeToken(`t${++issued}`, 3600), minReconnectDelayMs: 60_000, maxReconnectDelayMs: 60_000 });
    c.connect();
    await c.ready();
    const first = await a!.nextConnection();
    first.send({ op: "reconnect", reason: "token_expired" });
    first.close(4001, "token expired");
    await a!.nextConnection(); // a backoff of up to 60 s would time this out: no delay
    assert.equal(issued, 2);
    assert.notEqual(a!.tokens[0], a!.tokens[1]);
  });

  it("fetches the next token before the current one expires", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    const calls: number[] = [];
    const c = client(urls, {
      getToken: () => {
        calls.push(Date.now());
        return fakeToken(`t${calls.length}`, calls.length === 1 ? 1 : 3600);
      },
      tokenRefreshMarginMs: 500,
    });
    c.connect();
    await c.ready();
    const first = await a!.nextConnection();
    await new Promise((resolve) => setTimeout(resolve, 1000)); // past exp - margin, before any close
    assert.equal(calls.length, 2); // prefetched while still connected
    first.close(4001, "token expired");
    const second = await a!.nextConnection();
    assert.equal(calls.length, 2); // the prefetched token was used
    assert.equal(tokenExpiry(second.token!)! > Date.now() + 3000_000, true);
  });

  it("after a 401 fetches one fresh token; a fresh token refused again stops with UnauthorizedError", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    a!.refusals = [401, 401, 401, 401];
    let issued = 0;
    const c = client(urls, { getToken: () => fakeToken(`t${++issued}`, 3600) });
    const disconnected: DisconnectedContext[] = [];
    c.on("disconnected", (d) => disconnected.push(d));
    c.connect();
    const error = await c.ready().then(
      () => assert.fail("connected"),
      (e: unknown) => e,
    );
    assert.ok(error instanceof UnauthorizedError);
    assert.equal(error.status, 401);
    assert.equal(issued, 2);
    assert.equal(a!.handshakes, 2);
    assert.deepEqual(
      disconnected.map((d) => d.willReconnect),
      [true, false],
    );
  });

  it("a 401 on the first try then a fresh accepted token connects", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    a!.refusals = [401];
    let issued = 0;
    const c = client(urls, { getToken: () => fakeToken(`t${++issued}`, 3600) });
    c.connect();
    await c.ready();
    assert.equal(issued, 2);
  });

  it("an origin refused with 403 stops at once, even with getToken", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    a!.refusals = [403, 403];
    const c = client(urls, { getToken: () => fakeToken("t", 3600) });
    c.connect();
    await assert.rejects(c.ready(), (e: unknown) => e instanceof UnauthorizedError && e.status === 403);
    assert.equal(a!.handshakes, 1);
  });

  it("a fixed token refused with 401 stops at once", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    a!.refusals = [401, 401];
    const c = client(urls, { token: "fixed" });
    c.connect();
    await assert.rejects(c.ready(), UnauthorizedError);
    assert.equal(a!.handshakes, 1);
    assert.equal(a!.tokens[0], "fixed");
  });

  it("in a browser (no HTTP status), a fixed token past its exp stops with UnauthorizedError", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    a!.refusals = [401, 401, 401, 401, 401, 401];
    const c = client(urls, { token: fakeToken("old", -60), WebSocket: BrowserLikeWebSocket });
    const disconnected: DisconnectedContext[] = [];
    c.on("disconnected", (d) => disconnected.push(d));
    c.connect();
    const error = await c.ready(3000).then(
      () => assert.fail("connected"),
      (e: unknown) => e,
    );
    assert.ok(error instanceof UnauthorizedError, String(error));
    assert.equal(error.status, undefined); // the browser did not say; the token's exp did
    assert.match(error.message, /the token expired at/);
    assert.equal(a!.handshakes, 1);
    assert.deepEqual(disconnected.map((d) => d.willReconnect), [false]);
  });

  it("in a browser, an expired token from getToken whose handshake failed is replaced once", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    a!.refusals = [401];
    const issued: string[] = [];
    const c = client(urls, {
      getToken: () => {
        issued.push(issued.length === 0 ? fakeToken("stale", -60) : fakeToken("fresh", 3600));
        return issued[issued.length - 1]!;
      },
      WebSocket: BrowserLikeWebSocket,
      minReconnectDelayMs: 60_000, // a backoff would time the test out: the retry is at once
      maxReconnectDelayMs: 60_000,
    });
    c.connect();
    await c.ready(3000);
    assert.equal(issued.length, 2);
    assert.deepEqual(a!.tokens, issued);
  });

  it("in a browser, a failed handshake with a token still valid is a network error: retried", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    a!.refusals = [503, 503];
    const c = client(urls, { token: fakeToken("valid", 3600), WebSocket: BrowserLikeWebSocket });
    c.connect();
    await c.ready(3000);
    assert.equal(a!.handshakes, 3);
  });

  it("reads exp from a JWT and nothing from a non-JWT", () => {
    const token = fakeToken("x", 60);
    const exp = tokenExpiry(token)!;
    assert.ok(Math.abs(exp - (Date.now() + 60_000)) < 2000);
    assert.equal(tokenExpiry("opaque"), undefined);
  });
});

describe("presence", () => {
  it("presence() resolves with members; a refused one rejects; changes reach the room", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    const c = client(urls);
    c.connect();
    await c.ready();
    const conn = await a!.nextConnection();
    const room = c.room("lobby");
    const result = room.presence();
    const request = await conn.next("presence");
    assert.equal(request.room, "lobby");
    assert.equal(typeof request.ref, "string");
    const alice = { sub: "alice", conn: "c1", node: "pod-a", info: { name: "Alice" } };
    conn.send({ op: "members", room: "lobby", count: 1, members: [alice], ref: request.ref });
    assert.deepEqual(await result, { room: "lobby", count: 1, members: [alice] });

    const many = room.presence();
    conn.send({ op: "members", room: "lobby", count: 5000, ref: (await conn.next("presence")).ref });
    assert.deepEqual(await many, { room: "lobby", count: 5000 }); // counts only

    const refused = c.room("vip").presence();
    const ask = await conn.next("presence");
    conn.send({ op: "error", code: "forbidden", message: "no", ref: ask.ref, room: "vip" });
    await assert.rejects(refused, (e: unknown) => e instanceof RelayError && e.code === "forbidden");

    const join = room.join();
    conn.send(joined("lobby", null, null, { ref: (await conn.next("join")).ref }));
    await join;
    const change = nextEvent<PresenceChange>(room, "presence");
    const bob = { sub: "bob", conn: "c2", node: "pod-b" };
    conn.send({ op: "presence", room: "lobby", joins: [bob], leaves: [alice] });
    assert.deepEqual(await change, { room: "lobby", joins: [bob], leaves: [alice] });
  });
});

describe("ping", () => {
  it("resolves with the round-trip time on its pong; rejects when the connection ends first", async () => {
    const { relays: [a], urls } = await relays("pod-a");
    const c = client(urls);
    await assert.rejects(c.ping(), ClosedError); // not connected
    c.connect();
    await c.ready();
    const conn = await a!.nextConnection();
    const rtt = c.ping();
    const ping = await conn.messages.next("ping");
    assert.equal(ping.op, "ping");
    assert.equal(typeof ping.ref, "string");
    conn.send({ op: "pong" }, { op: "pong", ref: "unknown" }); // neither settles it
    await new Promise((resolve) => setTimeout(resolve, 20));
    conn.send({ op: "pong", ref: ping.ref });
    const ms = await rtt;
    assert.ok(ms >= 20 && ms < 5000, `rtt ${ms}`);

    const lost = c.ping();
    await conn.messages.next("ping");
    c.dropConnection();
    await assert.rejects(lost, ClosedError);
  });

  it("rejects a ping beyond MAX_PENDING_PINGS with QueueFullError, and times out", async () => {
    const { urls } = await relays("pod-a");
    const c = client(urls);
    c.connect();
    await c.ready();
    const pending = Array.from({ length: MAX_PENDING_PINGS }, () => c.ping(50));
    await assert.rejects(c.ping(), QueueFullError);
    for (const p of pending) await assert.rejects(p, TimeoutError);
  });
});

describe("backoff", () => {
  it("is full jitter: uniform in [0, min(max, min * 2^attempt))", () => {
    const options = { minDelayMs: 100, maxDelayMs: 5000 };
    assert.equal(backoffDelay(0, options, () => 0.5), 50);
    assert.equal(backoffDelay(3, options, () => 0.999), 799.2);
    assert.equal(backoffDelay(20, options, () => 0.5), 2500);
    assert.equal(backoffDelay(5, options, () => 0), 0);
  });
});
