/**
 * The relay wire protocol, version 1 (docs/protocol.md): one type per message and the one
 * place where frames are split, parsed and encoded.
 */

/** Any JSON value: what `publish` accepts as `data` and what `event.data` carries. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A position in a durable room's history: an offset only means something with its epoch. */
export interface Position {
  epoch: string;
  offset: number;
}

/** One connection in a presence room (`info` comes from the token's `info` claim). */
export interface Member {
  sub: string;
  conn: string;
  node: string;
  info?: unknown;
}

/** The protocol's error codes (docs/protocol.md, "Error codes"). */
export type ErrorCode =
  | "bad_request"
  | "unknown_op"
  | "too_large"
  | "rate_limited"
  | "forbidden"
  | "not_joined"
  | "too_many_rooms"
  | "unavailable"
  | "internal";

// -- server to client -------------------------------------------------------------------

export interface WelcomeMessage {
  op: "welcome";
  session: string;
  node: string;
  heartbeat: number;
}

export interface JoinedMessage {
  op: "joined";
  room: string;
  offset: number | null;
  epoch: string | null;
  recovered?: boolean;
  ref?: string;
}

export interface LeftMessage {
  op: "left";
  room: string;
  reason?: string;
  ref?: string;
}

export interface EventMessage {
  op: "event";
  room: string;
  offset: number | null;
  data: Json;
  ts: number;
  from?: string;
}

export interface AckMessage {
  op: "ack";
  id: string;
  room: string;
  offset: number | null;
}

export interface ErrorMessage {
  op: "error";
  code: ErrorCode | (string & {});
  message: string;
  ref?: string;
  id?: string;
  room?: string;
}

export interface ReconnectMessage {
  op: "reconnect";
  reason: "draining" | "slow_consumer" | "token_expired" | (string & {});
}

export interface DisconnectMessage {
  op: "disconnect";
  reason: string;
  reconnect: false;
}

export interface MembersMessage {
  op: "members";
  room: string;
  count: number;
  members?: Member[];
  ref?: string;
}

export interface PresenceMessage {
  op: "presence";
  room: string;
  joins: Member[];
  leaves: Member[];
}

export interface PongMessage {
  op: "pong";
  ref?: string;
}

export type ServerMessage =
  | WelcomeMessage
  | JoinedMessage
  | LeftMessage
  | EventMessage
  | AckMessage
  | ErrorMessage
  | ReconnectMessage
  | DisconnectMessage
  | MembersMessage
  | PresenceMessage
  | PongMessage;

const SERVER_OPS: ReadonlySet<string> = new Set([
  "welcome",
  "joined",
  "left",
  "event",
  "ack",
  "error",
  "reconnect",
  "disconnect",
  "members",
  "presence",
  "pong",
]);

// -- client to server -------------------------------------------------------------------

export type ClientMessage =
  | { op: "join"; room: string; ref: string; since?: Position }
  | { op: "leave"; room: string; ref: string }
  | { op: "publish"; room: string; data: Json; id: string }
  | { op: "presence"; room: string; ref: string }
  | { op: "ping"; ref?: string };

/** Limits the protocol sets on what a client sends. */
export const MAX_ID_LENGTH = 64;
export const ROOM_NAME = /^[A-Za-z0-9_\-.:/]{1,128}$/;

export function encode(message: ClientMessage): string {
  return JSON.stringify(message);
}

/** A frame the client could not read: the connection goes on, the caller is told. */
export class MalformedMessage extends Error {
  constructor(
    readonly line: string,
    why: string,
  ) {
    super(`malformed server message (${why}): ${line.slice(0, 200)}`);
    this.name = "MalformedMessage";
  }
}

/**
 * Split a text frame on `\n` and parse each line. Lines that are not JSON objects with a
 * string `op` come back as MalformedMessage; unknown ops are skipped (a newer server may
 * send messages this client does not know, and the protocol says to ignore what is unknown).
 */
export function parseFrame(frame: string): (ServerMessage | MalformedMessage)[] {
  const out: (ServerMessage | MalformedMessage)[] = [];
  for (const line of frame.split("\n")) {
    if (line === "") continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      out.push(new MalformedMessage(line, "not JSON"));
      continue;
    }
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      out.push(new MalformedMessage(line, "not an object"));
      continue;
    }
    const op = (value as { op?: unknown }).op;
    if (typeof op !== "string") {
      out.push(new MalformedMessage(line, "no op"));
      continue;
    }
    if (SERVER_OPS.has(op)) out.push(value as ServerMessage);
  }
  return out;
}
