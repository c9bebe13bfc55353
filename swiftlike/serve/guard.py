"""Checks before any route runs: the API key (401) and the request body size (413), as pure ASGI.

The body is read here, up to the limit, and handed on to the app; a body over the limit is read to its end
(up to a hard cap) before the 413 goes out, so a client still sending it gets the answer instead of a reset
connection.
"""
from __future__ import annotations

import hmac

from .errors import error_bytes

DRAIN_CAP = 64 << 20  # past this much unwanted body the connection is simply closed


class Guard:
    def __init__(self, app, api_key: str | None, max_body: int, open_paths: tuple[str, ...] = ()):
        self.app, self.api_key, self.max_body, self.open_paths = app, api_key, max_body, open_paths
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.expected is not None and scope["path"] not in self.open_paths:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await _drain(receive, cap=self.max_body)  # a client without the key gets no more reading than that
                what = "no API key given" if not given else "incorrect API key"
                return await _reply(send, 401, f"{what}: send 'Authorization: Bearer <key>'", "invalid_api_key")
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await _drain(receive)
            return await _reply(send, 413, self._too_large(int(declared)), "request_too_large")
        body, more = [], True
        size = 0
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_body:
                if more:
                    await _drain(receive, size)
                return await _reply(send, 413, self._too_large(size), "request_too_large")
            body.append(chunk)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self, size: int) -> str:
        return f"the request body is larger than this server's limit of {self.max_body:,} bytes"


async def _drain(receive, seen: int = 0, cap: int = DRAIN_CAP) -> None:
    more = True
    while more and seen < cap:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        seen += len(message.get("body", b""))
        more = message.get("more_body", False)


async def _reply(send, status: int, message: str, code: str) -> None:
    data = error_bytes(status, message, code)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
