// The Node reference server for bench/compare.py: socket.io with @socket.io/redis-adapter,
// what a user would pick instead of the relay. One process per port; run two on one Redis.
// `join` (room, ack) joins the room; `publish` (room, data) emits `event` {room, data} to the
// room on every process through the adapter. WebSocket transport only, no compression.
//   node sio_server.js PORT REDIS_URL
"use strict";
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

async function main() {
  const [port, redisUrl] = [Number(process.argv[2]), process.argv[3]];
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const io = new Server({
    adapter: createAdapter(pub, sub),
    transports: ["websocket"],
    serveClient: false,
    perMessageDeflate: false,
  });
  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      socket.join(room);
      if (typeof ack === "function") ack("ok");
    });
    socket.on("publish", (room, data) => {
      io.to(room).emit("event", { room, data });
    });
  });
  io.listen(port);
  process.on("SIGTERM", () => process.exit(0));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
