export { Client, CloseCode, MAX_PENDING_PINGS } from "./client.js";
export type {
  ClientEvents,
  ClientOptions,
  ClientState,
  ConnectedContext,
  ConnectingContext,
  DisconnectedContext,
  TokenSource,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { Room } from "./room.js";
export type {
  JoinedContext,
  LeftContext,
  LostContext,
  PresenceChange,
  PresenceResult,
  PublishOptions,
  RoomEvents,
  RoomOptions,
  RoomState,
} from "./room.js";
export {
  ClosedError,
  DisconnectedByServerError,
  GameClusterError,
  QueueFullError,
  RelayError,
  TimeoutError,
  UnauthorizedError,
} from "./errors.js";
export { MalformedMessage } from "./messages.js";
export type * from "./messages.js";
