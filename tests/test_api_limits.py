"""Bounds on one request (api.limits, api.models): the body size, the feature list, the echo of
unknown names. Plain ASGI calls with a stand-in app: no I/O."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from pydantic import ValidationError

from api.features import UnknownFeatures
from api.limits import MAX_FEATURE_NAME, MAX_FEATURES, BodyLimit
from api.models import FeaturesRequest


class Recorder:
    """The app behind the limit: what body it read, and that it was called at all."""

    def __init__(self) -> None:
        self.called = False
        self.body = b""

    async def __call__(self, scope, receive, send):
        self.called = True
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(layer, method: str, chunks: list[bytes], length: int | str | None) -> tuple[int, bytes]:
    headers = [] if length is None else [(b"content-length", str(length).encode())]
    scope = {"type": "http", "method": method, "path": "/features", "headers": headers}
    incoming = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    sent: list[dict] = []

    async def receive():
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(layer(scope, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def test_a_body_over_the_limit_is_refused_before_the_app_reads_it():
    app = Recorder()
    status, body = call(BodyLimit(app, max_bytes=10), "POST", [b"x" * 11], 11)
    assert status == 413 and not app.called
    assert orjson.loads(body) == {"error": "too_large", "detail": "request body over 10 bytes"}


def test_a_chunked_body_is_counted_as_it_arrives():
    app = Recorder()
    status, _ = call(BodyLimit(app, max_bytes=10), "POST", [b"x" * 6, b"y" * 6], None)
    assert status == 413 and not app.called


@pytest.mark.parametrize("length", ["-1", "12abc"])
def test_a_content_length_that_is_no_count_is_refused(length):
    app = Recorder()
    assert call(BodyLimit(app, max_bytes=10), "POST", [b"x"], length)[0] == 413 and not app.called


def test_a_body_within_the_limit_reaches_the_app_whole_and_unchanged():
    app = Recorder()
    status, body = call(BodyLimit(app, max_bytes=10), "POST", [b"abc", b"defg", b"hij"], None)
    assert (status, body, app.body) == (200, b"ok", b"abcdefghij")


def test_a_get_passes_without_being_read():
    app = Recorder()
    assert call(BodyLimit(app, max_bytes=0), "GET", [b""], None) == (200, b"ok")


def test_the_feature_list_and_each_name_are_bounded():
    FeaturesRequest(user_ids=["7590-VHVEG"], features=["v:f"] * MAX_FEATURES)
    with pytest.raises(ValidationError, match="at most 256 items"):
        FeaturesRequest(user_ids=["7590-VHVEG"], features=["v:f"] * (MAX_FEATURES + 1))
    with pytest.raises(ValidationError, match="at most 200 characters"):
        FeaturesRequest(user_ids=["7590-VHVEG"], features=["v:" + "f" * (MAX_FEATURE_NAME - 1)])


def test_unknown_names_are_echoed_five_at_most_each_cut_short():
    names = [f"view:{i}" + "x" * 10_000 for i in range(1000)]
    message = str(UnknownFeatures(names))
    assert message.startswith("unknown features: 'view:0xxx")
    assert message.endswith(" and 995 more")
    assert len(message) < 600
    assert str(UnknownFeatures(["a:b"])) == "unknown feature: 'a:b'"
