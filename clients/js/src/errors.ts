/**
 * The client's errors: one base class, one subclass per way a call can fail. A refusal by
 * the server keeps the protocol's code (`err.code === "forbidden"`).
 */
import type { ErrorCode, ErrorMessage } from "./messages.js";

export class GameClusterError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The server refused one message (an `error` reply); the connection stays open. */
export class RelayError extends GameClusterError {
  readonly code: ErrorCode | (string & {});
  readonly room: string | undefined;
  readonly reply: ErrorMessage;

  constructor(reply: ErrorMessage) {
    super(`${reply.code}: ${reply.message}`);
    this.code = reply.code;
    this.room = reply.room;
    this.reply = reply;
  }

  /** Codes that a later retry of the same message can fix. */
  get retryable(): boolean {
    return RETRYABLE_CODES.has(this.code);
  }
}

export const RETRYABLE_CODES: ReadonlySet<string> = new Set(["unavailable", "rate_limited", "internal"]);

/**
 * The server refused the credentials at the handshake (HTTP 401 or 403), and a fresh token
 * from `getToken()` did not help (or there is no `getToken`). The client has stopped.
 * `status` is undefined where the WebSocket hides it (browsers): the handshake failed with
 * a token already past its `exp`, which is what a 401 there almost always is.
 */
export class UnauthorizedError extends GameClusterError {
  constructor(
    message: string,
    readonly status: number | undefined,
  ) {
    super(message);
  }
}

/** The server ended the session with `disconnect` and close code 4003: do not reconnect. */
export class DisconnectedByServerError extends GameClusterError {
  constructor(readonly reason: string) {
    super(`disconnected by the server: ${reason}`);
  }
}

/** The call did not complete within its `timeoutMs`. */
export class TimeoutError extends GameClusterError {}

/** The publish queue is full (`maxPendingPublishes`): the new publish was not accepted. */
export class QueueFullError extends GameClusterError {}

/** `close()` was called, or the room was left, before the call completed. */
export class ClosedError extends GameClusterError {}
