"""Optional bearer-token authentication of the API (RFC 6750), as plain ASGI middleware.

    STREAMFLOW_API_TOKEN=tok1[,tok2]      every route but /health and the dashboard page needs
                                          ``Authorization: Bearer tok1`` (or tok2: rotation)
    STREAMFLOW_METRICS_TOKEN=tok3         GET /metrics needs this one instead (a scraper's own)

Unset, nothing is required (a local development default). Open routes: ``/health`` (liveness
probes carry no credentials) and ``/dashboard``, a static page with no data in it; the page
reads the token from its URL fragment (``/dashboard#token=...``, which browsers never send to
the server) and sends it with each of its data requests.

A missing or wrong token gets 401 with a JSON error and ``WWW-Authenticate: Bearer``. The
given token is compared with every accepted one in constant time (``hmac.compare_digest``,
all of them, whichever matches), and it is never logged: only the outcome is counted in the
request metrics (status 401).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

import orjson

OPEN_PATHS = frozenset({"/health", "/dashboard"})
METRICS_PATH = "/metrics"
REALM = b'Bearer realm="streamflow"'


def _bearer(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header (None when there is none)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


def accepted(given: bytes, tokens: tuple[bytes, ...]) -> bool:
    """Whether ``given`` is one of ``tokens``; every token is compared, in constant time each."""
    ok = False
    for token in tokens:
        ok |= hmac.compare_digest(given, token)
    return ok


class BearerAuth:
    """ASGI middleware requiring a bearer token where one is configured (see the module)."""

    def __init__(self, app, tokens: Iterable[str] = (), metrics_tokens: Iterable[str] = ()) -> None:
        self.app = app
        self.tokens = tuple(t.encode() for t in tokens)
        self.metrics_tokens = tuple(t.encode() for t in metrics_tokens)

    @property
    def enabled(self) -> bool:
        return bool(self.tokens or self.metrics_tokens)

    def _required(self, path: str) -> tuple[bytes, ...]:
        if path in OPEN_PATHS:
            return ()
        if path == METRICS_PATH and self.metrics_tokens:
            return self.metrics_tokens
        return self.tokens

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            required = self._required(scope["path"])
            if required:
                given = _bearer(scope["headers"])
                if given is None:
                    await _refuse(send, "missing_token", "this route needs Authorization: Bearer <token>")
                    return
                if not accepted(given, required):
                    await _refuse(send, "invalid_token", "the bearer token is not valid for this route")
                    return
        await self.app(scope, receive, send)


async def _refuse(send, code: str, detail: str) -> None:
    body = orjson.dumps({"error": code, "detail": detail})
    challenge = REALM + (b', error="invalid_token"' if code == "invalid_token" else b"")
    headers = [
        (b"www-authenticate", challenge),
        (b"content-length", str(len(body)).encode()),
        (b"content-type", b"application/json"),
    ]
    await send({"type": "http.response.start", "status": 401, "headers": headers})
    await send({"type": "http.response.body", "body": body})
