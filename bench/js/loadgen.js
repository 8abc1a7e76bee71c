// The load generator of bench/compare.py, in Node so that it is not the bottleneck: one
// event loop drives every subscriber and publisher socket, and reports its own CPU.
//
//   node loadgen.js '{"proto": "relay"|"sio", "urls": [...], "rooms": 10, "subs": 20,
//                     "publishers": 2, "localAddress": "127.0.0.2" (optional, relay only)}'
//
// It opens rooms x subs subscriber sockets (subscriber s of a room on urls[s % n]) and
// rooms x publishers publisher sockets (publisher p of room r on urls[(r + p) % n], so that
// with two servers half of every room's traffic crosses servers), prints {"ready": ...}
// and then reads one JSON command per stdin line, answering each with one JSON line:
//   {"cmd": "run", "rate": deliveries/s, "seconds": S}  publish rate / subs events/s spread
//       round-robin over every publisher for S seconds, wait (at most 3 s) for the last
//       deliveries, then answer {sent, expected, delivered, p50, p99 (ms), gen_cpu (share of
//       one core used by this process), seconds}. Latency is publish (t in data, this
//       process's clock) to receipt; an event counts only in the step that sent it.
//   {"cmd": "idle", "conns": N, "rooms": K}  open N more sockets, each joined to one of K
//       rooms, and answer {"open": N} when every join is confirmed. They stay open.
//   {"cmd": "probe", "rooms": K}  publish one probe event to each of the K idle rooms (from
//       the first idle socket); answer {"sent": K}.
//   {"cmd": "status"}  answer {"open": sockets still open, "closed": sockets closed since
//       they opened, "probes": probe events received}.
//   {"cmd": "quit"}  close everything and exit.
// "relay" speaks docs/protocol.md (the relay and bench/floor.py); "sio" is socket.io
// (Node socket.io and python-socketio). Loopback only.
"use strict";
const readline = require("node:readline");
const { performance } = require("node:perf_hooks");
const WebSocket = require("ws");
const { io } = require("socket.io-client");

const config = JSON.parse(process.argv[2]);
let step = 0;
let stepDelivered = 0;
let latencies = [];

let probes = 0;
let closedSockets = 0;

function onEvent(data) {
  if (data.probe === true) {
    probes += 1;
    return;
  }
  if (data.k !== step) return;
  stepDelivered += 1;
  latencies.push(performance.now() - data.t);
}

// -- the relay's protocol: JSON text frames, several messages per frame joined by "\n" --
function relayConnect(url, room) {
  return new Promise((resolve, reject) => {
    // A local address of its own per generator process: loopback has ~28,000 ephemeral
    // ports per source address, fewer than a 50,000-connection run needs.
    const ws = new WebSocket(url, { perMessageDeflate: false, localAddress: config.localAddress });
    let joined = room === null;
    let tries = 0;
    ws.on("error", reject);
    ws.on("close", () => {
      if (joined) closedSockets += 1;
    });
    ws.on("message", (raw) => {
      const text = raw.toString();
      for (const line of text.split("\n")) {
        const msg = JSON.parse(line);
        if (msg.op === "event") onEvent(msg.data);
        else if (msg.op === "welcome") {
          if (room === null) resolve(ws);
          else ws.send(JSON.stringify({ op: "join", room, ref: "j" }));
        } else if (msg.op === "joined" && !joined) {
          joined = true;
          resolve(ws);
        } else if (msg.op === "error" && msg.ref === "j" && !joined && tries < 5) {
          // A join refused as `unavailable` (a Redis subscribe timed out under load): retry.
          tries += 1;
          setTimeout(() => ws.send(JSON.stringify({ op: "join", room, ref: "j" })), 200 * tries);
        } else if (msg.op === "error") {
          console.error("loadgen: relay error", line);
          if (!joined) reject(new Error(line));
        }
      }
    });
  });
}

function relayPublisher(ws) {
  return (room, data) => ws.send(JSON.stringify({ op: "publish", room, data }));
}

// -- socket.io: `join` with an ack, `publish` (room, data), `event` {room, data} --
function sioConnect(url, room) {
  return new Promise((resolve, reject) => {
    const socket = io(url, { transports: ["websocket"], forceNew: true, reconnection: false });
    socket.on("connect_error", reject);
    socket.on("event", (msg) => onEvent(msg.data));
    socket.on("connect", () => {
      if (room === null) resolve(socket);
      else socket.emit("join", room, () => resolve(socket));
    });
  });
}

function sioPublisher(socket) {
  return (room, data) => socket.emit("publish", room, data);
}

const connect = config.proto === "relay" ? relayConnect : sioConnect;
const publisherOf = config.proto === "relay" ? relayPublisher : sioPublisher;
const sockets = [];
const publishers = [];

async function inBatches(thunks, size) {
  const out = [];
  for (let i = 0; i < thunks.length; i += size) {
    out.push(...(await Promise.all(thunks.slice(i, i + size).map((f) => f()))));
  }
  return out;
}

async function setup() {
  const n = config.urls.length;
  const subs = [];
  for (let r = 0; r < config.rooms; r++) {
    for (let s = 0; s < config.subs; s++) {
      subs.push(() => connect(config.urls[s % n], `bench:${r}`));
    }
  }
  sockets.push(...(await inBatches(subs, 100)));
  for (let r = 0; r < config.rooms; r++) {
    for (let p = 0; p < config.publishers; p++) {
      const sock = await connect(config.urls[(r + p) % n], null);
      sockets.push(sock);
      publishers.push({ room: `bench:${r}`, send: publisherOf(sock) });
    }
  }
}

function quantile(sorted, q) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function run(rate, seconds) {
  step += 1;
  stepDelivered = 0;
  latencies = [];
  const eventsPerSecond = rate / config.subs;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let sent = 0;
  let next = 0;
  for (;;) {
    const elapsed = (performance.now() - t0) / 1000;
    if (elapsed >= seconds) break;
    const due = Math.floor(elapsed * eventsPerSecond) + 1;
    while (sent < due) {
      const pub = publishers[next];
      next = (next + 1) % publishers.length;
      pub.send(pub.room, { t: performance.now(), k: step, n: sent });
      sent += 1;
    }
    await sleep(1);
  }
  const expected = sent * config.subs;
  const sendEnd = performance.now();
  while (stepDelivered < expected && performance.now() - sendEnd < 3000) await sleep(20);
  const wall = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  latencies.sort((a, b) => a - b);
  return {
    sent,
    expected,
    delivered: stepDelivered,
    p50: quantile(latencies, 0.5),
    p99: quantile(latencies, 0.99),
    gen_cpu: (cpu.user + cpu.system) / 1e6 / wall,
    seconds: wall,
  };
}

const idleSockets = [];

async function idle(conns, rooms) {
  const n = config.urls.length;
  const thunks = [];
  for (let i = 0; i < conns; i++) thunks.push(() => connect(config.urls[i % n], `idle:${i % rooms}`));
  const opened = await inBatches(thunks, 100);
  sockets.push(...opened);
  idleSockets.push(...opened);
  return { open: conns };
}

function probe(rooms) {
  const send = publisherOf(idleSockets[0]);
  for (let r = 0; r < rooms; r++) send(`idle:${r}`, { probe: true });
  return { sent: rooms };
}

function status() {
  const open = sockets.filter((s) => (s.readyState === undefined ? s.connected : s.readyState === WebSocket.OPEN)).length;
  return { open, closed: closedSockets, probes };
}

async function main() {
  await setup();
  process.stdout.write(`${JSON.stringify({ ready: sockets.length })}\n`);
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const cmd = JSON.parse(line);
    let answer;
    if (cmd.cmd === "run") answer = await run(cmd.rate, cmd.seconds);
    else if (cmd.cmd === "idle") answer = await idle(cmd.conns, cmd.rooms);
    else if (cmd.cmd === "probe") answer = probe(cmd.rooms);
    else if (cmd.cmd === "status") answer = status();
    else break;
    process.stdout.write(`${JSON.stringify(answer)}\n`);
  }
  for (const sock of sockets) (sock.terminate ? sock.terminate() : sock.disconnect());
  process.exit(0);
}

main().catch((err) => {
  console.error("loadgen:", err);
  process.exit(1);
});
