"""The OpenAPI document served at /api/v1/openapi.json: the packaged nekzusd/openapi.json plus the
lifecycle paths, which are written from the actions table (nekzusd.actions) so that they can never
disagree with the routes: `/{containerId}/<action>`, `/{namespace}/{pod}/<action>`, `/<action>-all`,
and the batch's ``action`` enum. The packaged file holds every other path and the shared components.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from typing import Any

from .actions import ACTIONS, Action

C = "/api/v1/containers"
_RATE_HEADERS = {name: {"$ref": f"#/components/headers/{name}"}
                 for name in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _errors(*statuses: tuple[str, str]) -> dict[str, Any]:
    return {status: _ref("responses", name) for status, name in statuses}


_COMMON_ERRORS = (("400", "BadRequest"), ("401", "Unauthorized"), ("403", "Forbidden"),
                  ("405", "MethodNotAllowed"), ("429", "RateLimited"))


def _single(action: Action, pod_form: bool) -> dict[str, Any]:
    verb = action.name.capitalize()
    if pod_form:
        parameters = [_ref("parameters", "k8sNamespace"), _ref("parameters", "pod"), _ref("parameters", "runtime")]
        accepted = "Accepted"
    else:
        parameters = [_ref("parameters", n) for n in ("containerId", "runtime", "namespace")]
        accepted = "Accepted; the result arrives over the WebSocket"
    if action.grace:
        parameters.append(_ref("parameters", "timeout"))
    operation: dict[str, Any] = {
        "operationId": f"{action.name}{'Pod' if pod_form else 'Container'}",
        "summary": f"{verb} a pod's workload (Kubernetes path form)" if pod_form
        else f"{verb} a container (asynchronous)",
        "tags": ["containers"],
        "x-required-scope": "write",
    }
    if pod_form:
        operation["description"] = "The runtime defaults to kubernetes."
    operation["parameters"] = parameters
    operation["responses"] = {
        "202": {"description": accepted, "content": {"application/json": {"schema": _ref("schemas", "Accepted")}},
                "headers": dict(_RATE_HEADERS)},
        **_errors(*_COMMON_ERRORS, ("404", "NotFound"), ("409", "Conflict"), ("500", "ServerError"),
                  ("501", "NotSupported"), ("503", "Unavailable")),
    }
    return {"post": operation}


def _all(action: Action) -> dict[str, Any]:
    return {"post": {
        "operationId": f"{action.name}AllContainers",
        "summary": f"{action.name.capitalize()} every linked container",
        "description": "Without runtime=, the linked containers of every enabled runtime that can do the action "
                       "(the others are listed in skippedRuntimes); 501 ACTION_NOT_SUPPORTED only when the runtime "
                       "named, or every enabled one, cannot.",
        "tags": ["containers"],
        "x-required-scope": "write",
        "parameters": [_ref("parameters", "runtimeFilter"), _ref("parameters", "namespaceFilter")],
        "responses": {
            "200": {"description": "Per-container results, in the container list's order",
                    "content": {"application/json": {"schema": _ref("schemas", "BulkResult")}},
                    "headers": {**_RATE_HEADERS,
                                "X-Unavailable-Runtimes": _ref("headers", "X-Unavailable-Runtimes")}},
            **_errors(*_COMMON_ERRORS, ("500", "ServerError"), ("501", "NotSupported"), ("503", "Unavailable")),
        },
    }}


def lifecycle_paths() -> dict[str, dict[str, Any]]:
    paths: dict[str, dict[str, Any]] = {}
    for action in ACTIONS.values():
        paths[f"{C}/{action.name}-all"] = _all(action)
    for action in ACTIONS.values():
        paths[f"{C}/{{containerId}}/{action.name}"] = _single(action, pod_form=False)
    for action in ACTIONS.values():
        paths[f"{C}/{{namespace}}/{{pod}}/{action.name}"] = _single(action, pod_form=True)
    return paths


def build(packaged: dict[str, Any]) -> dict[str, Any]:
    """The packaged document with the lifecycle paths added (each group after the path it follows in the
    file: the `-all`s after /containers/stats, the single forms after the inspect routes)."""
    doc = copy.deepcopy(packaged)
    generated = lifecycle_paths()
    after = {f"{C}/stats": "-all", f"{C}/{{containerId}}": "/{containerId}/",
             f"{C}/{{namespace}}/{{pod}}": "/{namespace}/{pod}/"}
    paths: dict[str, Any] = {}
    for path, item in doc["paths"].items():
        paths[path] = item
        if path in after:
            paths.update((p, v) for p, v in generated.items() if after[path] in p)
    doc["paths"] = paths
    doc["components"]["schemas"]["BatchRequest"]["properties"]["action"] = {"enum": list(ACTIONS)}
    return doc


DOCUMENT: dict[str, Any] = build(json.loads(resources.files("nekzusd").joinpath("openapi.json").read_text()))
