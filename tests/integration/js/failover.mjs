// A player on pod A, a publisher on pods [A, B]; pod A is SIGKILLed (its pid comes from the
// test) while events flow. The player must resume on pod B and see every event exactly
// once, in order; every publish must be acked (unacked ones re-sent with their ids).
// Usage: node failover.mjs URL_A URL_B PID_A ROOM COUNT
import { client, deadline, report, until, WebSocket } from "./common.mjs";

const [urlA, urlB, pidA, room, countText] = process.argv.slice(2);
const count = Number(countText);
const KILL_AFTER = Math.floor(count / 4);
const WINDOW = 10; // publishes in flight at once

const received = [];
const nodes = [];
const disconnects = [];
deadline(30_000, () => `player got ${received.length} of ${count}; nodes ${nodes}`);

const options = { WebSocket, minReconnectDelayMs: 50, maxReconnectDelayMs: 500 };
const player = new client.Client([urlA, urlB], options);
const publisher = new client.Client([urlA, urlB], options);
player.on("connected", ({ node }) => nodes.push(node));
player.on("disconnected", ({ code, willReconnect }) => disconnects.push({ code, willReconnect }));
const lost = [];
const match = player.room(room);
match.on("event", (event) => received.push(event.data));
match.on("lost", (ctx) => lost.push(ctx));

player.connect();
publisher.connect();
await Promise.all([player.ready(), publisher.ready()]);
const joined = await match.join();

let killed = false;
const acks = [];
for (let start = 0; start < count; start += WINDOW) {
  const batch = [];
  for (let n = start; n < Math.min(count, start + WINDOW); n += 1) {
    batch.push(publisher.room(room).publish(n, { timeoutMs: 20_000 }));
  }
  if (!killed && start >= KILL_AFTER) {
    await until(match, "event", () => received.length >= KILL_AFTER);
    process.kill(Number(pidA), "SIGKILL"); // the pod both clients are on, mid-stream
    killed = true;
  }
  acks.push(...(await Promise.all(batch)));
}
await until(match, "event", () => received.length >= count);
// One more round trip so a late duplicate would have arrived before we count.
await publisher.room(room).publish("end");
await until(match, "event", () => received.at(-1) === "end");
received.pop();

report({
  received,
  nodes,
  disconnects,
  lost: lost.length,
  recoveredFirst: joined.recovered,
  duplicatesDropped: match.duplicates,
  gaps: match.gaps,
  ackOffsets: acks.map((ack) => ack.offset),
});
player.close();
publisher.close();
