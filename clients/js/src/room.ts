/**
 * A room as the application sees it: join/leave, publish, presence, and the room's events.
 * The room keeps its position (epoch, offset) so that every rejoin after a reconnect asks
 * the server for exactly what was missed (`since`), and drops anything at or below it.
 */
import { ClosedError, RelayError } from "./errors.js";
import { Emitter } from "./emitter.js";
import type {
  AckMessage,
  ClientMessage,
  EventMessage,
  Json,
  JoinedMessage,
  LeftMessage,
  Member,
  MembersMessage,
  Position,
  PresenceMessage,
} from "./messages.js";

export interface JoinedContext {
  room: string;
  /** True when the server replayed every missed event (`since` was honoured). */
  recovered: boolean;
  /** The room's last offset at join time (null in volatile rooms). */
  offset: number | null;
  epoch: string | null;
}

/** History could not be recovered: the application's state of this room is stale. */
export interface LostContext {
  room: string;
  /** Where the client was. */
  previous: Position | null;
  /** Where the feed continues from (re-sync, e.g. from a snapshot, as of this position). */
  offset: number | null;
  epoch: string | null;
}

export interface LeftContext {
  room: string;
  /** `"removed"` when the server removed this connection from the room. */
  reason: string | undefined;
}

export interface PresenceChange {
  room: string;
  joins: Member[];
  leaves: Member[];
}

export interface PresenceResult {
  room: string;
  count: number;
  /** Absent when the room has more members than the server lists (counts only). */
  members?: Member[];
}

export interface RoomEvents {
  event: EventMessage;
  joined: JoinedContext;
  lost: LostContext;
  left: LeftContext;
  presence: PresenceChange;
  /** A join refused by the server after a reconnect (the room is no longer joined). */
  error: RelayError;
}

export interface PublishOptions {
  /** The publish's id (at most 64 characters); a random UUID when absent. */
  id?: string;
  /** Reject with TimeoutError when no ack came within this many ms (default: the client's). */
  timeoutMs?: number;
}

export interface RoomOptions {
  /** Resume from this position on the first join (e.g. one saved with a game snapshot). */
  since?: Position;
}

/** What a Room needs from its client (kept narrow so rooms never reach into the socket). */
export interface RoomHost {
  send(message: ClientMessage): boolean;
  nextRef(kind: "join" | "leave" | "presence", room: Room): string;
  publish(room: string, data: Json, options: PublishOptions): Promise<AckMessage>;
  presence(room: string, timeoutMs: number | undefined): Promise<MembersMessage>;
}

type Waiter<T> = { resolve: (value: T) => void; reject: (error: Error) => void };

export type RoomState = "unjoined" | "joining" | "joined";

export class Room extends Emitter<RoomEvents> {
  readonly name: string;
  #host: RoomHost;
  #position: Position | null;
  #wanted = false;
  #state: RoomState = "unjoined";
  #joined: JoinedContext | null = null;
  #joinWaiters: Waiter<JoinedContext>[] = [];
  #leaveWaiters: Waiter<void>[] = [];
  /** Events at or below the last offset seen, dropped: the protocol says none arrive. */
  duplicates = 0;
  /** Offsets skipped without a `lost` notice: the protocol says this never happens. */
  gaps = 0;

  /** Rooms come from `client.room(name)`. */
  constructor(name: string, host: RoomHost, options: RoomOptions = {}) {
    super();
    this.name = name;
    this.#host = host;
    this.#position = options.since ? { ...options.since } : null;
  }

  get state(): RoomState {
    return this.#state;
  }

  /** The last position seen (epoch, offset of the last event), or null. */
  get position(): Position | null {
    return this.#position ? { ...this.#position } : null;
  }

  /**
   * Join the room (now if connected, else on connect), and again after every reconnect,
   * resuming from the last event seen. Resolves on the server's `joined`; rejects with
   * RelayError (e.g. code `forbidden`) when the server refuses it, or ClosedError.
   */
  join(): Promise<JoinedContext> {
    this.#wanted = true;
    if (this.#state === "joined" && this.#joined !== null) return Promise.resolve(this.#joined);
    const promise = new Promise<JoinedContext>((resolve, reject) => this.#joinWaiters.push({ resolve, reject }));
    if (this.#state === "unjoined") this._sendJoin();
    return promise;
  }

  /** Leave the room; resolves on the server's `left` (at once when not connected). */
  leave(): Promise<void> {
    this.#wanted = false;
    this.#rejectJoins(new ClosedError(`left room ${this.name} before it was joined`));
    if (this.#state === "unjoined") return Promise.resolve();
    this.#state = "unjoined";
    this.#joined = null;
    const ref = this.#host.nextRef("leave", this);
    if (!this.#host.send({ op: "leave", room: this.name, ref })) return Promise.resolve();
    return new Promise<void>((resolve, reject) => this.#leaveWaiters.push({ resolve, reject }));
  }

  /**
   * Publish `data`; resolves with the ack once the event is stored. Unacked publishes are
   * re-sent with the same id after a reconnect (the server stores each id once).
   */
  publish(data: Json, options: PublishOptions = {}): Promise<AckMessage> {
    return this.#host.publish(this.name, data, options);
  }

  /** Who is in the room now (rooms with presence on; the token must allow joining). */
  async presence(options: { timeoutMs?: number } = {}): Promise<PresenceResult> {
    const reply = await this.#host.presence(this.name, options.timeoutMs);
    const result: PresenceResult = { room: reply.room, count: reply.count };
    if (reply.members !== undefined) result.members = reply.members;
    return result;
  }

  // -- called by the client -------------------------------------------------------------

  /** @internal Send `join` (with `since` when a position is known) if the room is wanted. */
  _sendJoin(): void {
    if (!this.#wanted) return;
    const ref = this.#host.nextRef("join", this);
    const message: Extract<ClientMessage, { op: "join" }> = { op: "join", room: this.name, ref };
    if (this.#position !== null) message.since = { ...this.#position };
    this.#state = "joining";
    if (!this.#host.send(message)) this.#state = "unjoined";
  }

  /** @internal The connection ended: the room is rejoined on the next connection. */
  _onDisconnect(): void {
    if (this.#state !== "unjoined") this.#state = "unjoined";
    this.#joined = null;
    // The server forgets memberships with the connection: a pending leave is done.
    for (const waiter of this.#leaveWaiters.splice(0)) waiter.resolve();
  }

  /** @internal The client stopped or was closed: every pending call fails with `error`. */
  _fail(error: Error): void {
    this.#rejectJoins(error);
    for (const waiter of this.#leaveWaiters.splice(0)) waiter.resolve();
  }

  /** @internal */
  _onJoined(message: JoinedMessage): void {
    if (!this.#wanted) return; // joined after a leave was sent: the `left` follows
    const previous = this.#position;
    if (message.recovered !== true) {
      // A fresh start (first join, or history lost): continue from the server's position.
      // When recovered, the replay that follows advances it instead.
      this.#position =
        message.epoch !== null && message.offset !== null ? { epoch: message.epoch, offset: message.offset } : null;
    }
    const context: JoinedContext = {
      room: this.name,
      recovered: message.recovered === true,
      offset: message.offset,
      epoch: message.epoch,
    };
    this.#state = "joined";
    this.#joined = context;
    this.emit("joined", context);
    if (message.recovered === false) {
      this.emit("lost", { room: this.name, previous, offset: message.offset, epoch: message.epoch });
    }
    for (const waiter of this.#joinWaiters.splice(0)) waiter.resolve(context);
  }

  /** @internal A join refused (not retryable): the room is no longer wanted. */
  _onJoinError(error: RelayError): void {
    this.#wanted = false;
    this.#state = "unjoined";
    if (this.#joinWaiters.length === 0) this.emit("error", error);
    this.#rejectJoins(error);
  }

  /** @internal */
  _onLeft(message: LeftMessage): void {
    for (const waiter of this.#leaveWaiters.splice(0)) waiter.resolve();
    if (message.ref === undefined) {
      // Unsolicited: the server removed this connection from the room.
      this.#wanted = false;
      this.#state = "unjoined";
      this.#joined = null;
      this.#rejectJoins(new ClosedError(`removed from room ${this.name}: ${message.reason ?? "no reason"}`));
      this.emit("left", { room: this.name, reason: message.reason });
    }
  }

  /** @internal Deliver an event once, in offset order (drops replays already seen). */
  _onEvent(message: EventMessage): void {
    if (!this.#wanted) return;
    const offset = message.offset;
    if (typeof offset === "number" && this.#position !== null) {
      if (offset <= this.#position.offset) {
        this.duplicates += 1;
        return;
      }
      if (offset > this.#position.offset + 1) this.gaps += 1;
      this.#position.offset = offset;
    }
    this.emit("event", message);
  }

  /** @internal */
  _onPresence(message: PresenceMessage): void {
    if (!this.#wanted) return;
    this.emit("presence", { room: this.name, joins: message.joins, leaves: message.leaves });
  }

  get wanted(): boolean {
    return this.#wanted;
  }

  #rejectJoins(error: Error): void {
    for (const waiter of this.#joinWaiters.splice(0)) waiter.reject(error);
  }
}
