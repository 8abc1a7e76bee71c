"""The client's errors: one base class, one class per protocol error code.

Server refusals (`error` messages) become a `ServerError` subclass chosen by the message's
`code`, so callers catch what they can handle (`except ForbiddenError`) instead of
comparing strings. Library errors are chained as the cause (`raise ... from exc`).
"""

from __future__ import annotations

from typing import Any


class GameClusterError(Exception):
    """Base class of every error this package raises."""


class ProtocolError(GameClusterError):
    """The server sent something the protocol does not allow (a bug on one side)."""


class HandshakeError(GameClusterError):
    """The relay refused the WebSocket handshake with an HTTP status (403, 503, ...)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"handshake refused with HTTP {status}: {reason}".rstrip(": "))
        self.status = status
        self.reason = reason
        """The one-line reason from the response body (never contains the token)."""


class UnauthorizedError(HandshakeError):
    """HTTP 401: the token is missing, invalid or expired. Retrying with it is a loop:
    the client asks its token source for a fresh one once, and stops with this error
    when the fresh one is refused too (or when the token is a fixed string)."""


class DisconnectedError(GameClusterError):
    """The server ended the session for good (`disconnect`, close code 4003): do not
    reconnect with the same credentials. The client stopped."""

    def __init__(self, reason: str, code: int | None = 4003) -> None:
        super().__init__(f"disconnected by the server: {reason}")
        self.reason = reason
        self.code = code


class ConnectionLostError(GameClusterError, ConnectionError):
    """The connection closed while a reply was awaited (raw `Connection` only; `Client`
    re-sends on the next connection instead)."""


class ClientClosedError(GameClusterError):
    """The application closed the client while this call was waiting."""


class PublishTimeoutError(GameClusterError, TimeoutError):
    """No ack within the publish timeout (the wait for an in-flight slot included).

    The publish is withdrawn from the re-send queue; it may or may not have been stored.
    Publishing again with the same `id` is safe: the server acks a stored id again
    without storing it twice (within its dedupe window)."""


class ServerError(GameClusterError):
    """The server answered a message with `error`; the connection stays open."""

    code = ""
    retryable = False
    """True for codes a later retry can fix (`unavailable`, `rate_limited`, `internal`)."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.message = str(reply.get("message", ""))
        self.reply = reply
        """The whole `error` message, with the `ref`/`id`/`room` it answers."""
        if not type(self).code:  # an unknown code keeps what the server said
            self.code = str(reply.get("code", ""))
        self.room: str | None = reply.get("room")
        super().__init__(f"{self.code}: {self.message}")


class BadRequestError(ServerError):
    code = "bad_request"


class UnknownOpError(ServerError):
    code = "unknown_op"


class TooLargeError(ServerError):
    code = "too_large"


class RateLimitedError(ServerError):
    code = "rate_limited"
    retryable = True


class ForbiddenError(ServerError):
    code = "forbidden"


class NotJoinedError(ServerError):
    code = "not_joined"


class TooManyRoomsError(ServerError):
    code = "too_many_rooms"


class UnavailableError(ServerError):
    code = "unavailable"
    retryable = True


class InternalError(ServerError):
    code = "internal"
    retryable = True


_BY_CODE: dict[str, type[ServerError]] = {
    cls.code: cls
    for cls in (
        BadRequestError,
        UnknownOpError,
        TooLargeError,
        RateLimitedError,
        ForbiddenError,
        NotJoinedError,
        TooManyRoomsError,
        UnavailableError,
        InternalError,
    )
}


def server_error(reply: dict[str, Any]) -> ServerError:
    """The exception for an `error` message: the class of its code, `ServerError` for a
    code this client does not know (a newer server)."""
    return _BY_CODE.get(str(reply.get("code")), ServerError)(reply)
