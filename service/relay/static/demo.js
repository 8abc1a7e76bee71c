// The demo at `/`: a small multiplayer arena on @gamecluster/client, and the reference for
// using it from a browser with no bundler (plain ES module, the bundle served next to it).
//
// - Positions: a VOLATILE room (`arena:*`), each player publishes ~20 moves/s; the others
//   are drawn INTERPOLATION_MS in the past, between the two moves around that time.
// - Presence: the same room with `presence: true` (RELAY_ROOMS); without it the list falls
//   back to "who moved lately".
// - Chat: a DURABLE room (`chat:*`, the default policy): the client rejoins with `since`
//   after a reconnect, so the missed messages arrive once, in order ("history restored"),
//   or the room says it could not ("history lost").
//
// Query parameters: `token` (a JWT when the relay has auth on; its `sub` is the player's
// name), `relays` (comma-separated ws:// URLs, tried in turn; default: this page's relay),
// `name` (auth off only), `arena` / `chat` (room names).
import { Client } from "./gamecluster-client.js";

const WORLD = { width: 800, height: 500 };
const SPEED = 220; // world units per second
const TICK_MS = 50; // simulation and publish period: 20 moves/s at most
const KEEPALIVE_MS = 1000; // a player standing still still says where it is (no history in volatile rooms)
const STALE_MS = 5000; // a player not heard from this long is taken off the arena
const INTERPOLATION_MS = 100; // others are drawn this far in the past (two moves of slack)
const MAX_SAMPLES = 20; // bound of each player's move buffer; overflow: the oldest are dropped
const MAX_CHAT_LINES = 200; // bound of the chat panel; overflow: the oldest lines are dropped
const MAX_PRESENCE_LOG = 30; // bound of the joins/leaves list; overflow: the oldest are dropped
const MAX_PENDING_MOVES = 5; // moves waiting for their ack; beyond it a move is skipped (the next one supersedes it)
const PING_EVERY_MS = 2000;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get("token") ?? undefined;
const claims = token ? readClaims(token) : {};
const me = {
  id: crypto.randomUUID().slice(0, 8), // this tab, across reconnects (the session id changes)
  name: String(claims.sub ?? params.get("name") ?? randomName()).slice(0, 24),
  x: 100 + Math.random() * (WORLD.width - 200),
  y: 100 + Math.random() * (WORLD.height - 200),
};
me.color = colorOf(me.name + me.id);
const relays = (params.get("relays") ?? location.origin.replace(/^http/, "ws") + "/ws").split(",").filter(Boolean);

// -- the client: one per tab, two rooms ----------------------------------------------------

const client = new Client(relays, token ? { token } : {});
const arena = client.room(params.get("arena") ?? "arena:lobby");
const chat = client.room(params.get("chat") ?? "chat:lobby");

/** Everything the page shows, readable by tests as `window.demo.snapshot()`. */
const status = {
  state: "connecting", // connecting | connected | reconnecting | resumed | stopped
  node: null,
  session: null,
  connections: 0,
  rttMs: null,
  latencyMs: null,
  eventsPerSecond: 0,
  presence: "unknown", // on | off | unknown
};
const players = new Map(); // id -> { name, color, conn, node, samples: [{at, x, y}], heard }
const members = new Map(); // conn -> Member (the arena's presence)
const chatLines = []; // { kind: "message" | "notice", offset, from, text, id }
const presenceLog = [];
const connNames = new Map(); // conn -> name, from moves: names the members of presence (auth off)
const MAX_CONN_NAMES = 1000; // bound of connNames, mySessions and departed; overflow: the oldest entry is dropped
// This tab's connections: a previous one stays a member until its relay says it left (a
// killed pod's members are removed by a survivor after ~15 s); it is not another player.
const mySessions = new Set();
// Connections seen leaving. A `presence()` reply is not ordered with the `presence` messages
// (docs/protocol.md, Presence): one read before a leave was stored can arrive after that
// leave, and must not bring the member back; a connection id is never reused, so a left
// one stays gone. Bounded by MAX_CONN_NAMES, the oldest dropped (a reply is at most one
// request old: far fewer leaves than that can cross it).
const departed = new Set();
let eventTimes = [];

client.on("connecting", () => {
  if (status.state !== "reconnecting") setState(status.connections === 0 ? "connecting" : "reconnecting");
});
client.on("connected", ({ node, session }) => {
  status.connections += 1;
  failedAttempts = 0;
  $("banner").style.display = "none";
  status.node = node;
  status.session = session;
  mySessions.add(session);
  if (mySessions.size > MAX_CONN_NAMES) mySessions.delete(mySessions.values().next().value);
  members.clear(); // the arena is joined again: its presence reply and joins refill this
  // The first connection is "connected"; after a reconnect, the chat's `joined` decides
  // between "resumed" (history restored) and "connected" (history lost).
  if (status.connections === 1) setState("connected");
  render();
});
let failedAttempts = 0; // connection attempts since the last welcome
client.on("disconnected", ({ willReconnect, error }) => {
  status.node = null;
  status.rttMs = null;
  setState(willReconnect ? "reconnecting" : "stopped");
  if (error) showBanner(error);
  // A browser is never told why a WebSocket handshake failed (a 401 looks like a network
  // error), so a page that never got in says what the likely cause is.
  failedAttempts += 1;
  if (status.connections === 0 && failedAttempts === 3) showBanner({ name: "NoConnection" });
});
client.on("error", (error) => console.warn("gamecluster:", error));

arena.on("event", (event) => {
  countEvent();
  const move = event.data;
  if (!isMove(move)) return;
  // With auth on, `from` is the publisher's token subject, checked by the relay: it wins
  // over the name a page puts in its moves (any page can write any name there).
  const name = String(event.from ?? move.n).slice(0, 24);
  if (typeof move.s === "string" && !connNames.has(move.s)) {
    connNames.set(move.s, name);
    if (connNames.size > MAX_CONN_NAMES) connNames.delete(connNames.keys().next().value);
  }
  if (move.p === me.id) {
    // Our own move came back through the relay (and Redis): publish-to-delivery time,
    // on this tab's clock at both ends.
    status.latencyMs = Date.now() - move.t;
    return;
  }
  let player = players.get(move.p);
  if (player === undefined) {
    player = { samples: [] };
    players.set(move.p, player);
  }
  Object.assign(player, { name, color: String(move.c), conn: move.s, heard: performance.now() });
  player.samples.push({ at: performance.now(), x: clamp(move.x, 0, WORLD.width), y: clamp(move.y, 0, WORLD.height) });
  if (player.samples.length > MAX_SAMPLES) player.samples.splice(0, player.samples.length - MAX_SAMPLES);
});
arena.on("joined", () => {
  lastMove = null; // say where we are at once
  refreshPresence();
});
arena.on("presence", ({ joins, leaves }) => {
  for (const member of leaves) {
    members.delete(member.conn);
    departed.add(member.conn);
    if (departed.size > MAX_CONN_NAMES) departed.delete(departed.values().next().value);
    if (!mySessions.has(member.conn)) logPresence("left", member);
    for (const [id, player] of players) if (player.conn === member.conn) players.delete(id);
  }
  for (const member of joins) {
    members.set(member.conn, member);
    if (!mySessions.has(member.conn)) lastMove = null; // show the newcomer where we are now
    if (!mySessions.has(member.conn)) logPresence("joined", member);
  }
  renderPlayers();
});

chat.on("event", (event) => {
  countEvent();
  const message = event.data;
  if (typeof message !== "object" || message === null || typeof message.text !== "string") return;
  pushChat({ kind: "message", offset: event.offset, from: String(event.from ?? message.n ?? "?").slice(0, 24), color: String(message.c ?? "#ccc"), text: message.text, id: message.id });
});
chat.on("joined", ({ recovered }) => {
  if (status.connections <= 1 && !recovered) return; // the first join: nothing to restore
  if (recovered) {
    pushChat({ kind: "notice", cls: "restored", text: `back on ${status.node}, history restored: what was said while you were away follows, once` });
    setState("resumed");
  } else {
    setState("connected");
  }
});
chat.on("lost", () => {
  pushChat({ kind: "notice", cls: "lost", text: "history lost: messages sent while you were away may be missing" });
});
chat.on("error", (error) => pushChat({ kind: "notice", cls: "lost", text: `chat: ${error.code}: ${error.message}` }));
arena.on("error", (error) => showBanner(error));

arena.join().catch(showBanner);
chat.join().catch(showBanner);
client.connect();

// -- presence ----------------------------------------------------------------------------

async function refreshPresence() {
  try {
    const result = await arena.presence({ timeoutMs: 5000 });
    status.presence = "on";
    // Merged, not replaced: a join announced before this reply may be missing from it;
    // and a member whose leave was announced before it may still be in it.
    for (const member of result.members ?? []) {
      if (!departed.has(member.conn)) members.set(member.conn, member);
    }
  } catch (error) {
    // `bad_request`: the room's policy has no presence; the list shows who moved lately.
    if (error?.code === "bad_request") status.presence = "off";
  }
  renderPlayers();
}

function memberName(member) {
  if (member.conn === status.session) return me.name;
  if (member.sub) return member.sub;
  const name = connNames.get(member.conn);
  if (name !== undefined) return name;
  return `player ${member.conn.slice(0, 6)}`;
}

/** A join or leave, named when shown: a member's name may come with its first move, later. */
function logPresence(verb, member) {
  presenceLog.push({ verb, member });
  if (presenceLog.length > MAX_PRESENCE_LOG) presenceLog.shift();
  renderPresenceLog();
}

function presenceLines() {
  return presenceLog.map(({ verb, member }) => `${memberName(member)} ${verb}` + (verb === "joined" ? ` (${member.node})` : ""));
}

function renderPresenceLog() {
  const list = $("presence-log");
  const lines = presenceLines();
  if (list.children.length === lines.length && list.lastElementChild?.textContent === lines[lines.length - 1]) return;
  list.replaceChildren(...lines.map((line) => Object.assign(document.createElement("li"), { textContent: line })));
  list.scrollTop = list.scrollHeight;
}

// -- input and the simulation --------------------------------------------------------------

const keys = new Set();
const KEY_DIRECTIONS = {
  ArrowLeft: [-1, 0], KeyA: [-1, 0], ArrowRight: [1, 0], KeyD: [1, 0],
  ArrowUp: [0, -1], KeyW: [0, -1], ArrowDown: [0, 1], KeyS: [0, 1],
};
let target = null; // where the pointer says to go
const canvas = /** @type {HTMLCanvasElement} */ ($("arena"));
canvas.addEventListener("keydown", (e) => {
  if (e.code in KEY_DIRECTIONS) {
    keys.add(e.code);
    target = null;
    e.preventDefault();
  }
});
canvas.addEventListener("keyup", (e) => keys.delete(e.code));
canvas.addEventListener("blur", () => keys.clear());
const pointerAt = (e) => {
  const box = canvas.getBoundingClientRect();
  return { x: ((e.clientX - box.left) / box.width) * WORLD.width, y: ((e.clientY - box.top) / box.height) * WORLD.height };
};
canvas.addEventListener("pointerdown", (e) => {
  canvas.focus();
  canvas.setPointerCapture(e.pointerId);
  target = pointerAt(e);
});
canvas.addEventListener("pointermove", (e) => { if (e.buttons) target = pointerAt(e); });

let lastTick = performance.now();
let lastMove = null; // { x, y, at } of the last published move
setInterval(tick, TICK_MS); // not requestAnimationFrame: a hidden tab still says where it is

function tick() {
  const now = performance.now();
  const step = (SPEED * Math.min(now - lastTick, 250)) / 1000;
  lastTick = now;
  let dx = 0;
  let dy = 0;
  for (const code of keys) {
    dx += KEY_DIRECTIONS[code][0];
    dy += KEY_DIRECTIONS[code][1];
  }
  if (dx === 0 && dy === 0 && target !== null) {
    dx = target.x - me.x;
    dy = target.y - me.y;
    if (Math.hypot(dx, dy) <= step) {
      me.x = target.x;
      me.y = target.y;
      target = null;
      dx = dy = 0;
    }
  }
  const length = Math.hypot(dx, dy);
  if (length > 0) {
    me.x = clamp(me.x + (dx / length) * step, 0, WORLD.width);
    me.y = clamp(me.y + (dy / length) * step, 0, WORLD.height);
  }
  publishMove(now);
  for (const [id, player] of players) if (now - player.heard > STALE_MS) players.delete(id);
}

function publishMove(now) {
  const moved = lastMove === null || lastMove.x !== me.x || lastMove.y !== me.y;
  if (!moved && now - lastMove.at < KEEPALIVE_MS) return;
  // Only on a live connection: moves queued while away would replay stale positions.
  if (client.state !== "connected" || arena.state !== "joined") return;
  if (client.pendingPublishes > MAX_PENDING_MOVES) return;
  lastMove = { x: me.x, y: me.y, at: now };
  const move = { p: me.id, n: me.name, c: me.color, s: status.session, x: round(me.x), y: round(me.y), t: Date.now() };
  arena.publish(move, { timeoutMs: 5000 }).catch(() => undefined); // a lost move is superseded by the next
}

// -- chat -----------------------------------------------------------------------------------

$("chat-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = /** @type {HTMLInputElement} */ ($("chat-input"));
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  sendChat(text);
});

/** Publish a chat line; resolves with the ack (the event is stored in the room's history). */
function sendChat(text) {
  const id = crypto.randomUUID();
  // The publish id makes a retry after a reconnect store the message once.
  return chat.publish({ id, n: me.name, c: me.color, text: text.slice(0, 200) }, { id }).catch((error) => {
    pushChat({ kind: "notice", cls: "lost", text: `not sent (${error.code ?? error.name}): ${text}` });
    throw error;
  });
}

function pushChat(line) {
  chatLines.push(line);
  if (chatLines.length > MAX_CHAT_LINES) chatLines.shift();
  const list = $("chat-log");
  const li = document.createElement("li");
  if (line.kind === "notice") {
    li.className = `notice ${line.cls ?? ""}`;
    li.textContent = line.text;
  } else {
    const who = document.createElement("b");
    who.style.color = line.color;
    who.textContent = line.from + ": ";
    li.append(who, line.text);
    li.title = `offset ${line.offset}`;
  }
  list.append(li);
  while (list.children.length > MAX_CHAT_LINES) list.firstElementChild.remove();
  list.scrollTop = list.scrollHeight;
}

// -- status bar -------------------------------------------------------------------------------

$("drop").addEventListener("click", () => client.dropConnection());

setInterval(async () => {
  if (client.state !== "connected") return;
  try {
    status.rttMs = await client.ping(5000);
  } catch {
    status.rttMs = null;
  }
}, PING_EVERY_MS);

function countEvent() {
  eventTimes.push(performance.now());
}

setInterval(() => {
  const since = performance.now() - 1000;
  eventTimes = eventTimes.filter((at) => at > since);
  status.eventsPerSecond = eventTimes.length;
  render();
}, 250);

function setState(state) {
  status.state = state;
  render();
}

function render() {
  $("me").textContent = me.name;
  $("me").style.color = me.color;
  $("state").textContent = status.state;
  $("state").dataset.state = status.state;
  $("node").textContent = status.node ?? "-";
  $("rtt").textContent = status.rttMs === null ? "-" : `${status.rttMs.toFixed(1)} ms`;
  $("latency").textContent = status.latencyMs === null ? "-" : `${status.latencyMs} ms`;
  $("eps").textContent = String(status.eventsPerSecond);
  renderPlayers();
  renderPresenceLog();
}

function renderPlayers() {
  const list = $("players");
  const rows = [];
  if (status.presence === "on") {
    if (status.session !== null && !members.has(status.session)) {
      rows.push({ name: me.name, color: me.color, node: status.node ?? "", self: true });
    }
    for (const member of members.values()) {
      if (mySessions.has(member.conn) && member.conn !== status.session) continue;
      const player = [...players.values()].find((p) => p.conn === member.conn);
      const self = member.conn === status.session;
      rows.push({ name: memberName(member), color: self ? me.color : player?.color ?? "#888", node: member.node, self });
    }
  } else {
    rows.push({ name: me.name, color: me.color, node: status.node ?? "", self: true });
    for (const player of players.values()) rows.push({ name: player.name, color: player.color, node: "" });
  }
  rows.sort((a, b) => Number(b.self ?? false) - Number(a.self ?? false) || a.name.localeCompare(b.name));
  list.replaceChildren(
    ...rows.map((row) => {
      const li = document.createElement("li");
      const dot = document.createElement("span");
      dot.className = "dot";
      dot.style.background = row.color;
      const node = document.createElement("span");
      node.className = "node";
      node.textContent = row.node;
      li.append(dot, row.self ? `${row.name} (you)` : row.name, node);
      return li;
    }),
  );
  $("player-count").textContent = String(rows.length);
  if (status.presence === "off") list.title = "presence is off for this room (RELAY_ROOMS): players seen moving";
}

function showBanner(error) {
  const banner = $("banner");
  banner.style.display = "block";
  if (error?.name === "UnauthorizedError" || error?.name === "NoConnection" || error?.code === "forbidden") {
    const code = (text) => Object.assign(document.createElement("code"), { textContent: text });
    banner.replaceChildren(
      // The client's own words first (e.g. "... the token expired at ..."): text, not HTML.
      error.name === "UnauthorizedError" ? `${error.message}. ` : "",
      error.name === "NoConnection" ? "Cannot connect to the relay (still trying). If it has auth on, as the chart's demo does, it " : "This relay ",
      "needs a token that may join and publish to the arena and chat rooms: open ",
      code("/?token=<JWT>"),
      ", with a token from ",
      code("relay token --sub YOUR_NAME --join 'arena:*' 'chat:*' --publish 'arena:*' 'chat:*'"),
      " (see README).",
    );
  } else {
    banner.textContent = `${error?.name ?? "Error"}: ${error?.message ?? error}`;
  }
}

// -- drawing -----------------------------------------------------------------------------------

const ctx = canvas.getContext("2d");

/** A player's position INTERPOLATION_MS ago, between the two moves around that time. */
function interpolated(player, now) {
  const at = now - INTERPOLATION_MS;
  const samples = player.samples;
  const last = samples[samples.length - 1];
  if (last === undefined) return null;
  if (at >= last.at) return last; // no newer move yet: hold the last one (no extrapolation)
  for (let i = samples.length - 1; i > 0; i--) {
    const a = samples[i - 1];
    const b = samples[i];
    if (a.at <= at) {
      const f = (at - a.at) / (b.at - a.at || 1);
      return { x: a.x + (b.x - a.x) * f, y: a.y + (b.y - a.y) * f };
    }
  }
  return samples[0];
}

function draw() {
  const now = performance.now();
  ctx.fillStyle = "#0b0d12";
  ctx.fillRect(0, 0, WORLD.width, WORLD.height);
  ctx.strokeStyle = "#1a1e29";
  ctx.lineWidth = 1;
  for (let x = 50; x < WORLD.width; x += 50) line(x, 0, x, WORLD.height);
  for (let y = 50; y < WORLD.height; y += 50) line(0, y, WORLD.width, y);
  if (target !== null) {
    ctx.strokeStyle = me.color;
    ctx.beginPath();
    ctx.arc(target.x, target.y, 6, 0, Math.PI * 2);
    ctx.stroke();
  }
  for (const player of players.values()) {
    const at = interpolated(player, now);
    if (at !== null) dot(at.x, at.y, player.color, player.name, false);
  }
  dot(me.x, me.y, me.color, me.name, true);
  requestAnimationFrame(draw);
}

function line(x1, y1, x2, y2) {
  ctx.beginPath();
  ctx.moveTo(x1, y1);
  ctx.lineTo(x2, y2);
  ctx.stroke();
}

function dot(x, y, color, name, self) {
  ctx.beginPath();
  ctx.arc(x, y, 12, 0, Math.PI * 2);
  ctx.fillStyle = color;
  ctx.fill();
  if (self) {
    ctx.lineWidth = 3;
    ctx.strokeStyle = "#fff";
    ctx.stroke();
    ctx.lineWidth = 1;
  }
  ctx.fillStyle = "#e6e9ef";
  ctx.font = "13px system-ui, sans-serif";
  ctx.textAlign = "center";
  ctx.fillText(name, x, y - 18);
}

requestAnimationFrame(draw);
render();

// -- helpers -------------------------------------------------------------------------------

function isMove(data) {
  return typeof data === "object" && data !== null && typeof data.p === "string" &&
    Number.isFinite(data.x) && Number.isFinite(data.y) && Number.isFinite(data.t);
}

function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value));
}

function round(value) {
  return Math.round(value * 10) / 10;
}

function colorOf(text) {
  let hash = 0;
  for (const char of text) hash = (hash * 31 + char.codePointAt(0)) >>> 0;
  return `hsl(${hash % 360} 75% 60%)`;
}

function randomName() {
  const first = ["swift", "brave", "lucky", "quiet", "fuzzy", "mighty", "sly", "jolly"];
  const second = ["otter", "falcon", "badger", "lynx", "panda", "gecko", "moose", "heron"];
  const pick = (list) => list[Math.floor(Math.random() * list.length)];
  return `${pick(first)}-${pick(second)}`;
}

/** The token's claims, read without verifying them (the relay verifies): for the name only. */
function readClaims(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
  } catch {
    return {};
  }
}

// -- for tests and the curious: the page's state, as data ---------------------------------

/** @type {any} */ (window).demo = {
  client,
  arena,
  chat,
  sendChat,
  /** Where the pointer would send this player (world units), as a click on the arena does. */
  moveTo(x, y) {
    target = { x: clamp(x, 0, WORLD.width), y: clamp(y, 0, WORLD.height) };
  },
  snapshot() {
    const now = performance.now();
    return {
      me: { id: me.id, name: me.name, x: me.x, y: me.y },
      status: { ...status, clientState: client.state },
      players: Object.fromEntries(
        [...players].map(([id, p]) => {
          const last = p.samples[p.samples.length - 1];
          const drawn = interpolated(p, now);
          return [id, { name: p.name, x: last?.x, y: last?.y, drawnX: drawn?.x, drawnY: drawn?.y }];
        }),
      ),
      members: [...members.values()]
        .filter((m) => !mySessions.has(m.conn) || m.conn === status.session)
        .map((m) => ({ ...m, name: memberName(m) })),
      presenceLog: presenceLines(),
      chat: chatLines.map((line) => ({ ...line })),
      chatStats: { duplicates: chat.duplicates, gaps: chat.gaps },
    };
  },
};
