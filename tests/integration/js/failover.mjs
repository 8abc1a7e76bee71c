// A player on pod A; publisher "a" on pods [A, B], publisher "b" on pod B only. Pod A is
// SIGKILLed (its pid comes from the test) while events flow. The player stays away ~300 ms
// (a fixed reconnect delay) while "b" keeps publishing, so its rejoin on pod B must replay
// what it missed from Redis. It must see every event of each publisher exactly once, in
// order; every publish of "a" must be acked once (the unacked ones re-sent with their ids).
// Usage: node failover.mjs URL_A URL_B PID_A ROOM ROUNDS
import { client, deadline, report, until, WebSocket } from "./common.mjs";

const [urlA, urlB, pidA, room, roundsText] = process.argv.slice(2);
const rounds = Number(roundsText);
const KILL_AFTER = Math.floor(rounds / 2); // events received (of 2 per round) before the kill
const WINDOW = 10; // rounds in flight at once

const received = [];
const nodes = [];
const disconnects = [];
const lost = [];
const rejoins = [];
let killedAt = 0;
let resumedAt = 0;
let offsetAtDisconnect = null;
deadline(30_000, () => `player got ${received.length} of ${2 * rounds}; nodes ${nodes}`);

const fast = { WebSocket, minReconnectDelayMs: 50, maxReconnectDelayMs: 500 };
const player = new client.Client([urlA, urlB], {
  WebSocket,
  minReconnectDelayMs: 300,
  maxReconnectDelayMs: 300,
  random: () => 0.999, // away for ~300 ms: "b" publishes meanwhile
});
const publisherA = new client.Client([urlA, urlB], fast);
const publisherB = new client.Client([urlB], fast);
const match = player.room(room);
player.on("connected", ({ node }) => {
  nodes.push(node);
  if (killedAt && !resumedAt) resumedAt = performance.now();
});
player.on("disconnected", ({ code, willReconnect }) => {
  disconnects.push({ code, willReconnect });
  offsetAtDisconnect ??= match.position?.offset ?? null;
});
match.on("event", (event) => received.push(event.data));
match.on("lost", (ctx) => lost.push(ctx));
match.on("joined", ({ recovered, offset }) => rejoins.push({ recovered, offset }));

for (const c of [player, publisherA, publisherB]) c.connect();
await Promise.all([player.ready(), publisherA.ready(), publisherB.ready()]);
await match.join();

let killed = false;
const acksA = [];
for (let start = 0; start < rounds; start += WINDOW) {
  const batchA = [];
  const batchB = [];
  for (let n = start; n < Math.min(rounds, start + WINDOW); n += 1) {
    batchA.push(publisherA.room(room).publish(`a${n}`, { timeoutMs: 20_000 }));
    batchB.push(publisherB.room(room).publish(`b${n}`, { timeoutMs: 20_000 }));
  }
  if (!killed && start >= KILL_AFTER / 2) {
    await until(match, "event", () => received.length >= KILL_AFTER);
    killedAt = performance.now();
    process.kill(Number(pidA), "SIGKILL"); // the pod the player is on, mid-stream
    killed = true;
  }
  acksA.push(...(await Promise.all(batchA)));
  await Promise.all(batchB);
}
await until(match, "event", () => received.length >= 2 * rounds);
// One more round trip so a late duplicate would have arrived before we count.
await publisherB.room(room).publish("end");
await until(match, "event", () => received.at(-1) === "end");
received.pop();

report({
  fromA: received.filter((d) => d.startsWith("a")),
  fromB: received.filter((d) => d.startsWith("b")),
  total: received.length,
  nodes,
  disconnects,
  lost: lost.length,
  rejoins,
  offsetAtDisconnect,
  duplicatesDropped: match.duplicates,
  gaps: match.gaps,
  ackOffsetsA: acksA.map((ack) => ack.offset),
  reconnectMs: Math.round(resumedAt - killedAt),
});
for (const c of [player, publisherA, publisherB]) c.close();
