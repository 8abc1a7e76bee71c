// Drives the browser client (service/relay/static/relay.js) against a real relay, in Node
// (its WebSocket is the WHATWG one browsers have): A joins, B publishes, A's socket is cut,
// B publishes twice more, A reconnects and must get exactly the missed events, in order.
// Prints A's events as JSON lines; exits 0 on success, 1 on timeout or a wrong sequence.
"use strict";
const { RelayClient } = require(process.argv[2]);
const url = process.argv[3];
const room = `js:${Date.now()}`;
const got = [];
let done = false;

const finish = (code) => { if (!done) { done = true; console.log(JSON.stringify(got)); process.exit(code); } };
setTimeout(() => finish(1), 15000);

const a = new RelayClient(url, {
  onEvent: (event) => {
    got.push(event.data);
    if (got.length === 1) a.ws.close();  // cut A; B publishes the next two once it is down
    if (got.length === 3) finish(JSON.stringify(got) === '["one","two","three"]' ? 0 : 1);
  },
  onResync: () => finish(1),
  onState: (state) => {
    if (state === "disconnected" && got.length === 1) {
      b.publish(room, "two");
      b.publish(room, "three");
    }
  },
});
const b = new RelayClient(url, {});
a.connect();
b.connect();
const joined = setInterval(() => {
  if (a.ws.readyState === WebSocket.OPEN && b.ws.readyState === WebSocket.OPEN) {
    clearInterval(joined);
    a.join(room);
    setTimeout(() => b.publish(room, "one"), 200);
  }
}, 20);
