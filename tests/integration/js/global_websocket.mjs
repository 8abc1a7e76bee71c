// The client with no WebSocket passed: it takes globalThis.WebSocket (Node >= 22 has one;
// Node 20 with --experimental-websocket, as run here). Joins, publishes, gets its event
// back, has its socket cut, resumes, and gets the next one.
// Usage: node --experimental-websocket global_websocket.mjs URL ROOM
import { client, deadline, report, until } from "./common.mjs";

const [url, room] = process.argv.slice(2);
deadline(15_000, () => "global WebSocket scenario");
const c = new client.Client(url, { minReconnectDelayMs: 20, maxReconnectDelayMs: 100 });
const received = [];
const match = c.room(room);
match.on("event", (event) => received.push(event.data));
c.connect();
await c.ready();
await match.join();
const ack = await match.publish("one");
await until(match, "event", () => received.length === 1);
c.dropConnection();
await match.publish("two"); // queued until the reconnect, then sent
await until(match, "event", () => received.length === 2);
report({ received, ackOffset: ack.offset, node: c.node, global: typeof globalThis.WebSocket });
c.close();
