"""One exception type for every API error, and the middleware that renders it as JSON.

Every failure under /api/ leaves as ``{"error": CODE, "message": text[, "details": {...}]}``:
clients (the phone app, scripts) branch on the code, people read the message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
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


class ContainerNotFound(ApiError):
    """No container of that id or name (404), whichever runtime was asked."""

    def __init__(self, container_id: str) -> None:
        super().__init__(404, "CONTAINER_NOT_FOUND", f"Container not found: {container_id}",
                         {"containerId": container_id})


class ContainerNotRunning(ApiError):
    """The container exists but is not running, and what was asked needs it running (409)."""

    def __init__(self, container_id: str, message: str | None = None, state: str | None = None) -> None:
        details = {"containerId": container_id} | ({"state": state} if state is not None else {})
        super().__init__(409, "CONTAINER_NOT_RUNNING", message or f"Container is not running: {container_id}",
                         details)


class RuntimeUnavailable(ApiError):
    """The engine cannot be reached right now; the daemon keeps running and retries per request."""

    def __init__(self, runtime: str, reason: str) -> None:
        super().__init__(503, "RUNTIME_UNAVAILABLE", f"Container runtime not available: {runtime}: {reason}",
                         {"runtime": runtime}, {"Retry-After": "5"})


class MetricsUnavailable(ApiError):
    """No source of a pod's statistics answers (503): an optional cluster component is missing, not
    reachable or not granted, which is not a server error. ``tried`` names each source asked, why it did
    not answer and what would make it answer (install metrics-server, grant nodes/proxy, ...)."""

    def __init__(self, container_id: str, namespace: str, tried: list[dict[str, str]]) -> None:
        reasons = "; ".join(f"{t['source']}: {t['reason']} ({t['fix']})" for t in tried)
        super().__init__(503, "METRICS_UNAVAILABLE",
                         f"No statistics for pod {namespace}/{container_id}: no source answers. {reasons}",
                         {"containerId": container_id, "namespace": namespace, "runtime": "kubernetes",
                          "tried": tried},
                         {"Retry-After": "30"})


class EngineError(Exception):
    """The engine refused or failed an operation. Runtimes raise it without choosing an API code: the
    caller knows what was being done and maps it with ``engine_errors``. ``details`` go to the answer."""

    def __init__(self, message: str, status: int = 500, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.details = details


class NotSupported(Exception):
    """The runtime cannot do this at all (e.g. Compose export of a Kubernetes pod): 501 with the code
    of what was asked (``engine_errors`` picks it)."""

    def __init__(self, runtime: str, what: str) -> None:
        super().__init__(f"{what} is not supported for the {runtime} runtime")
        self.runtime = runtime
        self.what = what


def from_engine(exc: EngineError | NotSupported, code: str, message: str,
                not_supported: str = "ACTION_NOT_SUPPORTED", **details: Any) -> ApiError:
    """The one translation of a runtime's domain error into an API error: an engine failure is ``code``
    (500) with ``message: reason``; a runtime that cannot do it at all is 501 ``not_supported``."""
    if isinstance(exc, NotSupported):
        return ApiError(501, not_supported, str(exc), {"runtime": exc.runtime})
    return ApiError(500, code, f"{message}: {exc}", {**details, **(exc.details or {})} or None)


DomainError = ApiError | EngineError | NotSupported


def as_api_error(exc: DomainError, code: str, message: str, not_supported: str = "ACTION_NOT_SUPPORTED",
                 **details: Any) -> ApiError:
    """Any failure a runtime call may raise, as the API error to answer (over HTTP or a WebSocket)."""
    if isinstance(exc, ApiError):
        return exc
    return from_engine(exc, code, message, not_supported, **details)


@contextmanager
def engine_errors(code: str, message: str, not_supported: str = "ACTION_NOT_SUPPORTED",
                  **details: Any) -> Iterator[None]:
    """Run a runtime call, mapping its EngineError / NotSupported with ``from_engine``; ApiErrors the
    runtime raised itself (404, 503, …) pass through unchanged."""
    try:
        yield
    except (EngineError, NotSupported) as exc:
        raise from_engine(exc, code, message, not_supported, **details) from None


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
