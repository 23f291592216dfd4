"""Bounds on what one request may ask of the API.

* :class:`BodyLimit`: a request body of more than ``max_bytes`` is answered 413 before anything
  parses it (by its ``Content-Length`` when it gives one, else as its chunks arrive); a body
  within the bound is read whole and handed on unchanged.
* ``MAX_FEATURES`` bounds the ``features`` list of ``POST /features`` (api.models), and
  :func:`shown` the echo of a client's unknown names in an error.

The lookup queue has its own bound (api.batcher, ``Overloaded``: 503 with ``Retry-After``).
"""

from __future__ import annotations

import orjson

MAX_BODY_BYTES = 256 * 1024
"""The largest request body: a POST of 1,000 user ids with a full feature list is under 60 KiB."""

MAX_FEATURES = 256
"""The most ``view:feature`` names one request may select (the feature service has about 30)."""

MAX_FEATURE_NAME = 200
"""The longest ``view:feature`` name one request may give."""

MAX_SHOWN = 5
"""Unknown names echoed in an error, at most (then "and N more")."""


def shown(names: list[str], width: int = 80) -> str:
    """Names for an error message: the first ``MAX_SHOWN``, each cut to ``width`` characters."""
    cut = [repr(n if len(n) <= width else n[: width - 1] + "…") for n in names[:MAX_SHOWN]]
    more = len(names) - MAX_SHOWN
    return ", ".join(cut) + (f" and {more} more" if more > 0 else "")


class BodyLimit:
    """ASGI layer: 413 for a request body over ``max_bytes`` (see the module)."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._too_large(send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message]), send)
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], then=receive), send)

    async def _too_large(self, send) -> None:
        payload = orjson.dumps(
            {"error": "too_large", "detail": f"request body over {self.max_bytes:,} bytes"}
        )
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _replay(messages: list[dict], then=None):
    """A ``receive`` that gives ``messages`` first, then what ``then`` gives (a disconnect)."""
    pending = list(messages)

    async def receive():
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive
