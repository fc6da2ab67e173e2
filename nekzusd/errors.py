"""One exception type for every API error, and the middleware that renders it as JSON.

Every failure under /api/ leaves as ``{"error": CODE, "message": text[, "details": {...}]}``:
clients (the phone app, scripts) branch on the code, people read the message.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with its HTTP status and stable code, safe to show to the caller."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers)


def bad_request(code: str, message: str, **details: Any) -> ApiError:
    return ApiError(400, code, message, details or None)


def invalid_body(message: str, **details: Any) -> ApiError:
    return ApiError(400, "INVALID_REQUEST_BODY", message, details or None)


def container_not_found(container_id: str) -> ApiError:
    return ApiError(404, "CONTAINER_NOT_FOUND", f"Container not found: {container_id}",
                    {"containerId": container_id})


class RuntimeUnavailable(ApiError):
    """The engine cannot be reached right now; the daemon keeps running and retries per request."""

    def __init__(self, runtime: str, reason: str) -> None:
        super().__init__(503, "RUNTIME_UNAVAILABLE", f"Container runtime not available: {runtime}: {reason}",
                         {"runtime": runtime}, {"Retry-After": "5"})


class EngineError(Exception):
    """The engine refused or failed an operation; callers turn it into an operation-specific code."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "REQUEST_TOO_LARGE",
}


def _from_http_exception(exc: web.HTTPException) -> ApiError:
    code = _HTTP_CODES.get(exc.status, "HTTP_ERROR")
    headers: dict[str, str] = {}
    message = exc.reason
    if isinstance(exc, web.HTTPMethodNotAllowed):
        headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        message = f"Method {exc.method} not allowed; allowed: {headers['Allow']}"
    elif isinstance(exc, web.HTTPNotFound):
        message = "No such route"
    elif isinstance(exc, web.HTTPRequestEntityTooLarge):
        message = "Request body too large"
    return ApiError(exc.status, code, message, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render ApiError, aiohttp's own HTTP errors and unexpected failures as JSON under /api/."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith("/api/"):
            raise
        return _from_http_exception(exc).response()
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return ApiError(500, "INTERNAL_ERROR", "Internal server error").response()
