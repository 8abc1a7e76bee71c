// Against a relay with JWT auth (secret in RELAY_TEST_SECRET, never on the command line):
// 1. a forbidden join rejects with code `forbidden` and the connection stays usable;
// 2. a session whose token expires reconnects with a fresh token from getToken() and
//    resumes without a gap or a duplicate;
// 3. getToken() returning tokens the relay refuses stops the client with UnauthorizedError
//    after exactly one fresh try.
// Usage: node auth.mjs URL
import { client, deadline, mintToken, report, until, WebSocket } from "./common.mjs";

const [url] = process.argv.slice(2);
const secret = process.env.RELAY_TEST_SECRET;
const result = {};
deadline(40_000, () => JSON.stringify(result));
const options = { WebSocket, minReconnectDelayMs: 50, maxReconnectDelayMs: 500 };

// 1. Forbidden join.
const issued = [];
const player = new client.Client(url, {
  ...options,
  tokenRefreshMarginMs: 500,
  getToken: () => {
    issued.push(Date.now());
    return mintToken(secret, { sub: "player", lifetimeSeconds: issued.length === 1 ? 3 : 3600 });
  },
});
const disconnects = [];
player.on("disconnected", ({ code, reason, willReconnect }) => disconnects.push({ code, reason, willReconnect }));
player.connect();
await player.ready();
try {
  await player.room("secret:1").join();
  result.forbidden = "joined";
} catch (err) {
  result.forbidden = { name: err.name, code: err.code, isRelayError: err instanceof client.RelayError };
}

// 2. Token expiry: the first token lives 3 s; events flow across the reconnect.
const publisher = new client.Client(url, {
  ...options,
  getToken: () => mintToken(secret, { sub: "publisher", lifetimeSeconds: 3600 }),
});
publisher.connect();
await publisher.ready();
const match = player.room("match:1");
const received = [];
match.on("event", (event) => received.push(event.data));
await match.join();
let sent = 0;
const giveUp = Date.now() + 15_000; // the token lives 3 s
while (!disconnects.some((d) => d.code === 4001) && Date.now() < giveUp) {
  await publisher.room("match:1").publish(sent);
  sent += 1;
  await until(match, "event", () => received.length >= sent);
}
for (let n = 0; n < 5; n += 1) await publisher.room("match:1").publish(sent++);
await player.ready();
await until(match, "event", () => received.length >= sent);
result.expiry = {
  sent,
  received,
  tokensIssued: issued.length,
  disconnects,
  duplicatesDropped: match.duplicates,
  gaps: match.gaps,
};
player.close();
publisher.close();

// 3. Refused fresh tokens.
let calls = 0;
const refused = new client.Client(url, {
  ...options,
  getToken: () => {
    calls += 1;
    return mintToken("not-the-relay-secret-but-32-bytes-long", { sub: "x", lifetimeSeconds: 60 });
  },
});
const stops = [];
refused.on("disconnected", (d) => stops.push({ willReconnect: d.willReconnect, error: d.error?.name }));
refused.connect();
try {
  await refused.ready(10_000);
  result.refused = "connected";
} catch (err) {
  result.refused = { name: err.name, status: err.status, getTokenCalls: calls, stops };
}
report(result);
