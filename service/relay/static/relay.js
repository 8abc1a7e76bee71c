// A browser client for the GameCluster relay protocol (docs/protocol.md), plain JavaScript.
// Reconnects with exponential backoff and full jitter, rejoins its rooms with `since`
// (exactly the missed events are replayed in durable rooms), re-sends unacknowledged
// publishes with their ids until acked, and reports `recovered: false` as a re-sync.
"use strict";

class RelayClient {
  constructor(url, { token = null, onEvent = () => {}, onState = () => {}, onResync = () => {}, onError = () => {} } = {}) {
    this.url = token ? `${url}?token=${encodeURIComponent(token)}` : url;
    this.handlers = { onEvent, onState, onResync, onError };
    this.rooms = new Map();      // room -> {epoch, offset}
    this.unacked = new Map();    // id -> {message, resolve, reject}
    this.attempt = 0;
    this.ws = null;
  }

  connect() {
    this.handlers.onState("connecting");
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      for (const room of this.rooms.keys()) this.sendJoin(room);
      for (const { message } of this.unacked.values()) ws.send(JSON.stringify(message));
    };
    ws.onmessage = (frame) => {
      for (const line of frame.data.split("\n")) if (line) this.handle(JSON.parse(line));
    };
    ws.onclose = (close) => {
      this.handlers.onState("disconnected", `(close ${close.code}); reconnecting`);
      const delay = Math.random() * Math.min(5000, 100 * 2 ** this.attempt++);
      setTimeout(() => this.connect(), delay);
    };
  }

  join(room) {
    if (!this.rooms.has(room)) this.rooms.set(room, { epoch: null, offset: null });
    this.sendJoin(room);
  }

  publish(room, data) {
    const id = crypto.randomUUID();
    const message = { op: "publish", room, data, id };
    return new Promise((resolve, reject) => {
      this.unacked.set(id, { message, resolve, reject });
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
    });
  }

  sendJoin(room) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const { epoch, offset } = this.rooms.get(room);
    const message = { op: "join", room, ref: `join:${room}` };
    if (epoch !== null && offset !== null) message.since = { epoch, offset };
    this.ws.send(JSON.stringify(message));
  }

  handle(message) {
    switch (message.op) {
      case "welcome":
        this.handlers.onState("connected", `to ${message.node}`);
        break;
      case "joined": {
        const position = this.rooms.get(message.room);
        if (!position) break;
        if (message.recovered !== true) Object.assign(position, { epoch: message.epoch, offset: message.offset });
        if (message.recovered === false) this.handlers.onResync(message);
        break;
      }
      case "event": {
        const position = this.rooms.get(message.room);
        if (position && message.offset != null) {
          if (position.offset != null && message.offset <= position.offset) break; // already seen
          position.offset = message.offset;
        }
        this.handlers.onEvent(message);
        break;
      }
      case "ack": {
        const pending = this.unacked.get(message.id);
        if (pending) { this.unacked.delete(message.id); pending.resolve(message); }
        break;
      }
      case "error": {
        const pending = message.id && this.unacked.get(message.id);
        const retryable = ["unavailable", "rate_limited"].includes(message.code);
        if (pending && !retryable) { this.unacked.delete(message.id); pending.reject(new Error(`${message.code}: ${message.message}`)); }
        else if (pending) setTimeout(() => this.ws.send(JSON.stringify(pending.message)), 500 + Math.random() * 1000);
        this.handlers.onError(message);
        break;
      }
      case "reconnect":
        this.handlers.onState("moving", `(${message.reason})`);
        break;
    }
  }
}

if (typeof module !== "undefined") module.exports = { RelayClient };
