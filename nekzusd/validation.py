"""Request input checks shared by every handler: JSON bodies against a small field table, query values.

Hostile input ends here as a 400 (or 413) with ``details`` naming the field: never a traceback, never an
engine call. Bodies are capped at ``MAX_BODY`` before they are read; JSON that is deeply nested, has
duplicate keys or NaN/Infinity is refused rather than interpreted.
"""

from __future__ import annotations

import builtins
import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from .errors import ApiError, bad_request, invalid_body

MAX_IDS = 100
MAX_BODY = 64 * 1024


def too_large() -> ApiError:
    return ApiError(413, "REQUEST_TOO_LARGE", f"Request body is larger than {MAX_BODY} bytes",
                    {"limit": MAX_BODY})


@dataclass(frozen=True)
class Field:
    type: type | tuple[type, ...]
    required: bool = False
    default: Any = None
    item_type: builtins.type | None = None  # for lists (the field `type` hides the builtin here)
    max_items: int | None = None
    max_length: int | None = None  # for strings, and string items of lists

    def describe(self) -> str:
        return _describe(self.type)


def _describe(expected: type | tuple[type, ...]) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "a list",
             dict: "an object"}
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(names.get(t, t.__name__) for t in types)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for duplicate, _ in pairs:
            if duplicate in seen:
                break
            seen.add(duplicate)
        raise invalid_body(f"Duplicate field: {duplicate[:64]}", field=duplicate[:64])
    return out


def _no_constant(name: str) -> Any:
    raise invalid_body(f"{name} is not a JSON number")


def parse_json(raw: bytes) -> Any:
    """Strict JSON: no duplicate keys, no NaN/Infinity, no nesting deep enough to exhaust the stack."""
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise invalid_body("Request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_body(f"Request body is not valid JSON: {exc}") from None


def _type_ok(value: Any, expected: type | tuple[type, ...]) -> bool:
    expected = expected if isinstance(expected, tuple) else (expected,)
    if object in expected:
        return True  # any JSON value: the handler checks it and answers with its own error code
    if isinstance(value, bool) and bool not in expected:
        return False  # JSON true is not a number
    if int in expected and isinstance(value, float) and value.is_integer():
        return False  # keep 1.0 out of integer fields: JSON clients send what they mean
    return isinstance(value, expected)


async def read_json(request: web.Request, fields: dict[str, Field], *, optional_body: bool = False) -> dict[str, Any]:
    """Parse and check a JSON object body; unknown fields, wrong types and missing fields are 400s."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise too_large()
    try:
        raw = await request.read()  # chunked bodies are cut off at the app's client_max_size
    except web.HTTPRequestEntityTooLarge:
        raise too_large() from None
    if not raw.strip():
        if optional_body:
            data: Any = {}
        else:
            raise invalid_body("Request body must be a JSON object")
    else:
        data = parse_json(raw)
    if not isinstance(data, dict):
        raise invalid_body("Request body must be a JSON object")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise invalid_body(f"Unknown field: {unknown[0][:64]}", field=unknown[0][:64], allowed=sorted(fields))
    out: dict[str, Any] = {}
    for name, spec in fields.items():
        if name not in data or data[name] is None and not spec.required:
            if spec.required:
                raise invalid_body(f"Missing required field: {name}", field=name)
            out[name] = spec.default
            continue
        value = data[name]
        if not _type_ok(value, spec.type):
            raise invalid_body(f"Field {name} must be {spec.describe()}", field=name)
        _check_length(name, value, spec.max_length)
        if isinstance(value, list):
            if spec.max_items is not None and len(value) > spec.max_items:
                raise invalid_body(f"Field {name} may hold at most {spec.max_items} items", field=name,
                                   maxItems=spec.max_items)
            for i, item in enumerate(value):
                if spec.item_type is not None and not _type_ok(item, spec.item_type):
                    raise invalid_body(f"Field {name}[{i}] must be {_describe(spec.item_type)}",
                                       field=f"{name}[{i}]")
                _check_length(f"{name}[{i}]", item, spec.max_length)
        out[name] = value
    return out


def _check_length(name: str, value: Any, max_length: int | None) -> None:
    if max_length is not None and isinstance(value, str) and len(value) > max_length:
        raise invalid_body(f"Field {name} may be at most {max_length} characters", field=name,
                           maxLength=max_length)


def _invalid_timeout() -> ApiError:
    return bad_request("INVALID_TIMEOUT", "Timeout must be between 1 and 300 seconds", parameter="timeout")


def timeout_param(value: str | None, default: int = 10) -> int:
    """The grace period from the query string: plain ASCII digits (int() would also take "+1_0" and
    non-ASCII digits), in 1..300."""
    if value is None:
        return default
    if not (value.isascii() and value.isdigit() and len(value) <= 3):
        raise _invalid_timeout()
    return timeout_value(int(value))


def timeout_value(value: Any, default: int = 10) -> int:
    """The grace period from a JSON body, where the API types it "number": a whole number of
    seconds in 1..300 (15.0 is 15). Any other value, of any JSON type, is INVALID_TIMEOUT (docs/api.md)."""
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 300:
        raise _invalid_timeout()
    return value


def bool_param(request: web.Request, name: str) -> bool:
    value = request.query.get(name)
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise ApiError(400, "INVALID_PARAMETER", f"Query parameter {name} must be true or false", {"parameter": name})


def setup(app: web.Application) -> None:
    """Install the input-limits middleware: a declared body over MAX_BODY is refused before any handler
    runs (handlers that never read their body would otherwise accept it silently), and so is a query
    parameter given twice under /api/ (which value counts would depend on who reads it)."""

    @web.middleware
    async def input_limits_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise too_large()
        if request.path.startswith("/api/") and len(request.query) != len(set(request.query)):
            name = next(key for key in request.query if len(request.query.getall(key)) > 1)
            raise ApiError(400, "INVALID_PARAMETER", f"Query parameter {name[:64]} is given more than once",
                           {"parameter": name[:64]})
        return await handler(request)

    app.middlewares.append(input_limits_middleware)
