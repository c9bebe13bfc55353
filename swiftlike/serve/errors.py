"""Errors the server answers with, in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""
from __future__ import annotations

import json

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 503: "service_unavailable"}


class ApiError(Exception):
    """A request the server refuses; `status` is the HTTP status, the rest goes into the error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error")

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_bytes(status: int, message: str, code: str | None = None) -> bytes:
    return json.dumps(error_body(message, _TYPES.get(status, "server_error"), None, code)).encode()
