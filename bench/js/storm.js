// The client side of bench/resume_storm.py: thousands of durable-room clients that resume
// after their relay is killed, in one Node process (it must not be the bottleneck).
//
//   node storm.js '{"urls": [...], "victim": 0, "victims": 5000, "bystanders": 500,
//                   "rooms": 250, "publishers": 10, "minDelayMs": 100, "maxDelayMs": 5000,
//                   "openTimeoutMs": 10000, "lb": "random"|"round-robin"}'
//
// Clients speak docs/protocol.md over `ws`, as clients/js does it: on a lost connection
// they reconnect after an exponential, fully jittered delay (clients/js defaults: first
// bound 100 ms, cap 5 s), give up an attempt with no `welcome` within openTimeoutMs, and
// rejoin their room with `since: {offset, epoch}` of the last event they got. A join
// refused with a retryable code (`unavailable`, `rate_limited`, `internal`) is sent again
// after a jittered delay; a join with no `joined` within openTimeoutMs drops the
// connection and reconnects. Which relay a reconnect lands on is the load balancer's
// choice: `lb` random (kube-proxy's iptables mode) or round-robin, over the relays still
// alive (the dead one already out of the endpoints).
//
// `victims` clients connect to urls[victim], `bystanders` to each other relay; client c is
// in room `storm:${c % rooms}`. `publishers` sockets per surviving relay publish (with ids,
// so the acks give each room's top offset). Each client checks its feed: an event whose
// offset is not last + 1 is a duplicate (<= last) or a gap (> last + 1); an unsolicited or
// resume `joined` with `recovered: false` is a re-sync (counted; the feed continues from it).
//
// Commands, one JSON line each on stdin, one JSON answer each on stdout:
//   {"cmd": "publish", "rate": events/s}  start publishing (round-robin over rooms) until
//       "verify"; answers {"ok": true}.
//   {"cmd": "storm", "pid": P, "timeoutS": T}  SIGKILL P (from here, so the clock is one)
//       and answer when every victim has resumed (joined again and got every event up to
//       the `joined` offset), or after T s, with the figures (see report()).
//   {"cmd": "verify", "waitS": S}  stop publishing, wait (at most S s) for the last acks
//       and for every client to reach its room's top; answer the feed checks.
//   {"cmd": "quit"}
"use strict";
const readline = require("node:readline");
const { monitorEventLoopDelay, performance } = require("node:perf_hooks");
const WebSocket = require("ws");

const config = JSON.parse(process.argv[2]);
const {
  urls,
  victim,
  rooms,
  minDelayMs = 100,
  maxDelayMs = 5000,
  openTimeoutMs = 10000,
  lb = "random",
} = config;
const survivors = urls.map((_, i) => i).filter((i) => i !== victim);
const roomName = (r) => `storm:${r}`;

const counts = {
  closed1013: 0, // refused by the connection limit (close 1013)
  connectFailed: 0, // the TCP connect or the HTTP upgrade failed
  openTimeouts: 0, // no welcome within openTimeoutMs
  joinTimeouts: 0, // no joined within openTimeoutMs
  joinRefused: 0, // a join answered with a retryable error
  otherErrors: 0,
  internalErrors: 0, // joins answered `internal` (a relay bug; retried as clients/js does)
};
const RETRYABLE = new Set(["unavailable", "rate_limited", "internal"]); // clients/js errors.ts
let setupCounts = null; // the counts while the clients first joined
let stormStart = null; // performance.now() of the SIGKILL
let stormOver = false;
let rrNext = 0;
let liveLatencies = []; // bystanders' publish-to-receipt latency during the storm, ms

function backoff(attempt) {
  return Math.random() * Math.min(maxDelayMs, minDelayMs * 2 ** Math.min(attempt, 30));
}

function pickSurvivor() {
  if (lb === "round-robin") return survivors[rrNext++ % survivors.length];
  return survivors[Math.floor(Math.random() * survivors.length)];
}

class Client {
  constructor(id, urlIndex, victimClient) {
    this.id = id;
    this.room = roomName(id % rooms);
    this.urlIndex = urlIndex;
    this.victim = victimClient;
    this.ws = null;
    this.last = null; // offset of the last event (or joined position)
    this.epoch = null;
    this.target = null; // the offset a resume must reach (joined.offset)
    this.node = null;
    this.state = "idle"; // connecting | joining | catching-up | live | waiting
    this.attempt = 0;
    this.attempts = 0; // connection attempts since the kill
    this.gaps = 0; // events missing (sum of the holes)
    this.dups = 0;
    this.resyncs = 0; // joined with recovered: false
    this.recovered = 0; // joined with recovered: true
    this.resumedAt = null; // ms after the kill
    this.lostAt = null;
    this.timer = null;
    this.onReady = null; // resolves the first join
  }

  connect() {
    this.state = "connecting";
    if (stormStart !== null) this.attempts += 1;
    const ws = new WebSocket(urls[this.urlIndex], { perMessageDeflate: false });
    this.ws = ws;
    this.arm(() => {
      counts.openTimeouts += 1;
      this.drop();
    });
    ws.on("error", () => {}); // a close always follows
    ws.on("unexpected-response", () => {
      counts.connectFailed += 1;
      this.drop();
    });
    ws.on("close", (code) => {
      if (this.ws !== ws) return;
      if (code === 1013) counts.closed1013 += 1;
      else if (this.state === "connecting") counts.connectFailed += 1;
      this.lost();
    });
    ws.on("message", (raw) => {
      if (this.ws !== ws) return;
      for (const line of raw.toString().split("\n")) this.handle(JSON.parse(line));
    });
  }

  arm(fn) {
    clearTimeout(this.timer);
    this.timer = setTimeout(fn, openTimeoutMs);
  }

  drop() {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.terminate();
    this.lost();
  }

  lost() {
    clearTimeout(this.timer);
    this.ws = null;
    if (this.state === "waiting") return;
    if (this.lostAt === null && stormStart !== null) this.lostAt = performance.now() - stormStart;
    this.state = "waiting";
    if (stormStart === null) {
      console.error(`storm: client ${this.id} lost its connection before the storm`);
      return;
    }
    this.urlIndex = pickSurvivor();
    const delay = backoff(this.attempt);
    this.attempt += 1;
    this.timer = setTimeout(() => this.connect(), delay);
  }

  join() {
    this.state = "joining";
    const msg = { op: "join", room: this.room, ref: "j" };
    if (this.epoch !== null) msg.since = { offset: this.last, epoch: this.epoch };
    this.ws.send(JSON.stringify(msg));
    this.arm(() => {
      counts.joinTimeouts += 1;
      this.drop();
    });
  }

  handle(msg) {
    switch (msg.op) {
      case "welcome":
        this.node = msg.node;
        this.join();
        break;
      case "joined":
        if (msg.ref !== "j") {
          // Unsolicited: the server could not keep this feed gap-free; it continues here.
          this.resyncs += 1;
          this.last = msg.offset;
          this.epoch = msg.epoch;
          break;
        }
        clearTimeout(this.timer);
        if (msg.recovered === true) this.recovered += 1;
        else if (msg.recovered === false) this.resyncs += 1;
        if (this.epoch === null || msg.recovered === false) this.last = msg.offset;
        this.epoch = msg.epoch;
        this.target = msg.offset;
        this.state = "catching-up";
        this.caughtUp();
        break;
      case "event":
        this.onEvent(msg);
        break;
      case "error":
        if (msg.ref === "j" && RETRYABLE.has(msg.code)) {
          counts.joinRefused += 1;
          if (msg.code === "internal") counts.internalErrors += 1;
          clearTimeout(this.timer);
          this.timer = setTimeout(() => this.ws && this.join(), backoff(2));
        } else {
          counts.otherErrors += 1;
          console.error("storm: relay error", JSON.stringify(msg));
        }
        break;
      default:
        break;
    }
  }

  onEvent(msg) {
    const offset = msg.offset;
    if (offset <= this.last) this.dups += 1;
    else {
      if (offset > this.last + 1) this.gaps += offset - this.last - 1;
      this.last = offset;
    }
    if (this.state === "catching-up") this.caughtUp();
    else if (!this.victim && stormStart !== null && !stormOver) {
      liveLatencies.push(performance.now() - msg.data.t);
    }
  }

  caughtUp() {
    if (this.last < this.target) return;
    this.state = "live";
    this.attempt = 0;
    if (stormStart !== null && this.victim && this.resumedAt === null) {
      this.resumedAt = performance.now() - stormStart;
    }
    if (this.onReady) {
      this.onReady();
      this.onReady = null;
    }
  }
}

const clients = [];
const publishers = [];
const tops = new Map(); // room -> highest acked offset
let publishing = false;
let published = 0;
let acked = 0;
let publishErrors = 0;
const sentTimes = new Map(); // publish id -> send time, until its ack
let ackLatencies = []; // publish-to-ack during the storm, ms

function startClient(client) {
  return new Promise((resolve, reject) => {
    client.onReady = resolve;
    client.connect();
    setTimeout(() => reject(new Error(`client ${client.id} did not join in 30 s`)), 30000).unref();
  });
}

function openPublisher(urlIndex) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(urls[urlIndex], { perMessageDeflate: false });
    ws.on("error", reject);
    ws.on("message", (raw) => {
      for (const line of raw.toString().split("\n")) {
        const msg = JSON.parse(line);
        if (msg.op === "welcome") resolve(ws);
        else if (msg.op === "ack") {
          acked += 1;
          const sentAt = sentTimes.get(msg.id);
          sentTimes.delete(msg.id);
          if (stormStart !== null && !stormOver && sentAt !== undefined) {
            ackLatencies.push(performance.now() - sentAt);
          }
          if ((tops.get(msg.room) ?? 0) < msg.offset) tops.set(msg.room, msg.offset);
        } else if (msg.op === "error") {
          publishErrors += 1;
          console.error("storm: publish refused", line);
        }
      }
    });
  });
}

async function inBatches(thunks, size) {
  for (let i = 0; i < thunks.length; i += size) {
    await Promise.all(thunks.slice(i, i + size).map((f) => f()));
  }
}

async function setup() {
  let id = 0;
  for (let i = 0; i < config.victims; i++) clients.push(new Client(id++, victim, true));
  for (const s of survivors) {
    for (let i = 0; i < config.bystanders; i++) clients.push(new Client(id++, s, false));
  }
  await inBatches(
    clients.map((c) => () => startClient(c)),
    200,
  );
  for (const s of survivors) {
    for (let p = 0; p < config.publishers; p++) publishers.push(await openPublisher(s));
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function publishLoop(rate) {
  publishing = true;
  const t0 = performance.now();
  let next = 0;
  while (publishing) {
    const due = Math.floor(((performance.now() - t0) / 1000) * rate);
    while (published < due) {
      const ws = publishers[published % publishers.length];
      const room = roomName(next);
      next = (next + 1) % rooms;
      const t = performance.now();
      sentTimes.set(`p${published}`, t);
      ws.send(JSON.stringify({ op: "publish", room, id: `p${published}`, data: { t } }));
      published += 1;
    }
    await sleep(5);
  }
}

function quantile(sorted, q) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

async function storm(pid, timeoutS) {
  const cpu0 = process.cpuUsage();
  liveLatencies = [];
  ackLatencies = [];
  // This process's own event-loop lag: the part of the bystanders' latency that is ours.
  const lag = monitorEventLoopDelay({ resolution: 10 });
  lag.enable();
  setupCounts = { ...counts };
  for (const key of Object.keys(counts)) counts[key] = 0; // from here: the storm's only
  stormStart = performance.now();
  process.kill(pid, "SIGKILL");
  const victims = clients.filter((c) => c.victim);
  while (performance.now() - stormStart < timeoutS * 1000) {
    if (victims.every((c) => c.resumedAt !== null)) break;
    await sleep(20);
  }
  const wall = (performance.now() - stormStart) / 1000;
  stormOver = true;
  const cpu = process.cpuUsage(cpu0);
  lag.disable();
  const times = victims.filter((c) => c.resumedAt !== null).map((c) => c.resumedAt);
  times.sort((a, b) => a - b);
  const lost = victims.filter((c) => c.lostAt !== null).map((c) => c.lostAt);
  lost.sort((a, b) => a - b);
  const attempts = victims.map((c) => c.attempts).sort((a, b) => a - b);
  const split = {};
  for (const c of victims) if (c.resumedAt !== null) split[c.node] = (split[c.node] ?? 0) + 1;
  const live = liveLatencies.sort((a, b) => a - b);
  return {
    victims: victims.length,
    resumed: times.length,
    allResumedMs: times.length === victims.length ? times[times.length - 1] : null,
    resumeP50Ms: quantile(times, 0.5),
    resumeP99Ms: quantile(times, 0.99),
    resumeMaxMs: times.length ? times[times.length - 1] : null,
    lastLossSeenMs: lost.length ? lost[lost.length - 1] : null,
    attemptsP50: quantile(attempts, 0.5),
    attemptsMax: attempts[attempts.length - 1],
    recovered: victims.reduce((n, c) => n + c.recovered, 0),
    split,
    counts,
    setupCounts,
    bystanderEvents: live.length,
    bystanderP50Ms: quantile(live, 0.5),
    bystanderP99Ms: quantile(live, 0.99),
    bystanderMaxMs: live.length ? live[live.length - 1] : null,
    ackP50Ms: quantile(ackLatencies.sort((a, b) => a - b), 0.5),
    ackP99Ms: quantile(ackLatencies, 0.99),
    genLagP99Ms: lag.percentile(99) / 1e6,
    genLagMaxMs: lag.max / 1e6,
    genCpu: (cpu.user + cpu.system) / 1e6 / wall,
    seconds: wall,
  };
}

async function verify(waitS) {
  publishing = false;
  const t0 = performance.now();
  const behind = () =>
    clients.filter((c) => c.state !== "live" || c.last < (tops.get(c.room) ?? 0)).length;
  while (performance.now() - t0 < waitS * 1000) {
    if (acked + publishErrors >= published && behind() === 0) break;
    await sleep(50);
  }
  const sum = (f) => clients.reduce((n, c) => n + f(c), 0);
  const group = (victimFlag) => {
    const cs = clients.filter((c) => c.victim === victimFlag);
    return {
      clients: cs.length,
      gaps: cs.reduce((n, c) => n + c.gaps, 0),
      duplicates: cs.reduce((n, c) => n + c.dups, 0),
      resyncs: cs.reduce((n, c) => n + c.resyncs, 0),
      clientsWithGap: cs.filter((c) => c.gaps > 0).length,
      clientsWithDuplicate: cs.filter((c) => c.dups > 0).length,
    };
  };
  return {
    published,
    acked,
    publishErrors,
    behind: behind(),
    notLive: sum((c) => (c.state === "live" ? 0 : 1)),
    victims: group(true),
    bystanders: group(false),
  };
}

async function main() {
  await setup();
  process.stdout.write(`${JSON.stringify({ ready: clients.length, publishers: publishers.length })}\n`);
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const cmd = JSON.parse(line);
    let answer;
    if (cmd.cmd === "publish") {
      void publishLoop(cmd.rate);
      answer = { ok: true };
    } else if (cmd.cmd === "storm") answer = await storm(cmd.pid, cmd.timeoutS);
    else if (cmd.cmd === "verify") answer = await verify(cmd.waitS);
    else break;
    process.stdout.write(`${JSON.stringify(answer)}\n`);
  }
  for (const c of clients) if (c.ws) c.ws.terminate();
  for (const p of publishers) p.terminate();
  process.exit(0);
}

main().catch((err) => {
  console.error("storm:", err);
  process.exit(1);
});
