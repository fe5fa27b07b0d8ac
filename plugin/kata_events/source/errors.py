"""The few failures the API client reports upward; the loop above never sees requests, urllib3 or `ssl`.

Each class says what the runner should do: wait for approval, start a new subscription, stop with
a configuration error, or retry with backoff. Messages are for people and never carry a full token
or key material.
"""

from __future__ import annotations

from typing import Any, Optional


class ApiError(Exception):
    """Base of every failure of one Events API request; keyword arguments set its attributes.
    ``reason`` is what the retries metric counts it as when it is retried."""

    reason = "connection"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.__dict__.update(fields)


class Unauthorized(ApiError):
    """HTTP 401: the external system (id + client certificate) is not approved on the Central Node."""


class SubscriptionLost(ApiError):
    """HTTP 404 `Subscription not found`: the server no longer knows the continuation token."""


class TokenRefused(ApiError):
    """The server refused a request carrying our continuation token: HTTP 414 (too long), 400, or 404
    without "Subscription not found", as ``status`` says."""

    status = 0


class BadRequest(ApiError):
    """HTTP 400: the server rejected a parameter (most often the filter), in its words. Not transient."""


class Unavailable(ApiError):
    """The server could not be reached or answered 429/5xx; ``retry_after`` is its hint, if any.

    ``reason``: ``connection`` (cannot connect, or the connection broke), ``timeout`` (no answer in
    time), ``http_error`` (HTTP 429/5xx).
    ``answered``: something at the address did answer (a TLS handshake, part of a page), so the
    address itself is likely right.
    """

    retry_after: Optional[float] = None
    answered = False


class BadResponse(ApiError):
    """A 200 whose body is not a complete, well-formed events page (or an unexpected status);
    ``excerpt`` quotes it."""

    excerpt = ""
    reason = "bad_response"


class TlsVerifyFailed(ApiError):
    """The server's certificate was not trusted (unknown CA, wrong pin, wrong name); the
    ``server_fingerprint`` it has, when known."""

    server_fingerprint: Optional[str] = None
    reason = "tls"


class ClientTlsError(ApiError):
    """Our own certificate or key cannot be used (mismatched pair, encrypted key). Not transient."""


class Interrupted(ApiError):
    """A stop was asked for while the request's answer or the next part of its body was awaited."""
