"""Request input checks shared by every handler: JSON bodies against a small field table, query values."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .errors import ApiError, bad_request, invalid_body

MAX_IDS = 100


@dataclass(frozen=True)
class Field:
    type: type | tuple[type, ...]
    required: bool = False
    default: Any = None
    item_type: type | None = None  # for lists
    max_items: int | None = None

    def describe(self) -> str:
        names = {str: "a string", bool: "a boolean", int: "an integer", list: "a list", dict: "an object"}
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        return " or ".join(names.get(t, t.__name__) for t in types)


def _type_ok(value: Any, expected: type | tuple[type, ...]) -> bool:
    expected = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in expected:
        return False  # JSON true is not a number
    if int in expected and isinstance(value, float) and value.is_integer():
        return False  # keep 1.0 out of integer fields: JSON clients send what they mean
    return isinstance(value, expected)


async def read_json(request: web.Request, fields: dict[str, Field], *, optional_body: bool = False) -> dict[str, Any]:
    """Parse and check a JSON object body; unknown fields, wrong types and missing fields are 400s."""
    raw = await request.read()  # raises 413 past client_max_size
    if not raw.strip():
        if optional_body:
            data: Any = {}
        else:
            raise invalid_body("Request body must be a JSON object")
    else:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise invalid_body(f"Request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise invalid_body("Request body must be a JSON object")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise invalid_body(f"Unknown field: {unknown[0]}", field=unknown[0], allowed=sorted(fields))
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
        if isinstance(value, list):
            if spec.max_items is not None and len(value) > spec.max_items:
                raise invalid_body(f"Field {name} may hold at most {spec.max_items} items", field=name,
                                   maxItems=spec.max_items)
            if spec.item_type is not None:
                for i, item in enumerate(value):
                    if not _type_ok(item, spec.item_type):
                        raise invalid_body(f"Field {name}[{i}] must be a string", field=f"{name}[{i}]")
        out[name] = value
    return out


def timeout_param(value: Any, default: int = 10) -> int:
    """The grace period: an integer of seconds in 1..300 (query string or JSON number)."""
    if value is None:
        return default
    if isinstance(value, str):
        try:
            value = int(value.strip(), 10)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 300:
        raise bad_request("INVALID_TIMEOUT", "Timeout must be between 1 and 300 seconds", parameter="timeout")
    return value


def bool_param(request: web.Request, name: str) -> bool:
    value = request.query.get(name)
    if value is None:
        return False
    lowered = value.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no", ""):
        return False
    raise ApiError(400, "INVALID_PARAMETER", f"Query parameter {name} must be true or false", {"parameter": name})
