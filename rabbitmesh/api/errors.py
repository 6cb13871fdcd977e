"""API errors: one JSON shape for every failure, `{"error", "code", "reason", "details"}`."""

from __future__ import annotations

from typing import Any

from aiohttp import web

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    408: "Timeout",
    409: "Conflict",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    421: "MisdirectedRequest",
    422: "Invalid",
    429: "TooManyRequests",
    503: "ServiceUnavailable",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        details: list[dict[str, Any]] | None = None,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []
        self.reason = reason or REASONS.get(status, "Error")
        self.headers = headers

    def response(self) -> web.Response:
        body: dict[str, Any] = {"error": self.message, "code": self.status, "reason": self.reason}
        if self.details:
            body["details"] = self.details
        return web.json_response(body, status=self.status, headers=self.headers)
