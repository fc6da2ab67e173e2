"""Reading several runtimes for one request: the one place where rows of different runtimes are merged.

The container list, batch stats, `<action>-all` and discovery treat ``?runtime=`` as a filter: without it
they cover every enabled runtime (``Runtimes.select``). Handlers ask through ``each`` and never look at a
runtime's name, so a runtime added later is merged like the others.

Each runtime is asked concurrently under its own deadline (``runtimes.read_timeout``), so a slow or dead
engine costs the others nothing but that deadline. When several runtimes are asked, one that fails
(unreachable, no answer in time, or an engine error: anything the client cannot fix) is left out and named
in the ``X-Unavailable-Runtimes`` response header, so that a dashboard still shows the Docker rows while the
cluster is down; only when none answers is the request a 503 ``RUNTIME_UNAVAILABLE`` naming each one's
reason. A request that addresses one runtime (``?runtime=``, or the only enabled one) gets that runtime's
own error, exactly as before the merge existed. A client error (a namespace nekzusd may not see) fails the
request whatever the scope: leaving that runtime out would hide the mistake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .concurrency import gather_all
from .errors import ApiError, EngineError, RuntimeUnavailable
from .runtimes.base import Container, Runtime

T = TypeVar("T")
R = TypeVar("R")

HEADER = "X-Unavailable-Runtimes"  # comma-separated names of the runtimes left out of a 200
# Batch stats of one runtime: a first sample waits for the engine's collector (Docker about 2 s, Podman up
# to two 5 s readings); each sample is bounded by stats.SAMPLE_TIMEOUT (15 s) on its own already.
STATS_TIMEOUT = 20.0


def order(container: Container) -> tuple[str, str, str, str]:
    """The one order of listed rows: namespace (Docker's is empty, so Docker rows come first), name, then
    runtime and id. Total, so that the answer never depends on which engine answered first."""
    return container.namespace, container.name, container.runtime, container.id


@dataclass(frozen=True)
class Scope:
    """The runtimes a request covers and its ``?namespace=``, which is given to each: Docker ignores it,
    so without ``?runtime=`` it narrows the Kubernetes rows only."""

    runtimes: tuple[Runtime, ...]
    namespace: str | None = None


@dataclass
class Answers(Generic[T]):
    """What each runtime that answered returned (in the scope's order), and why the others did not."""

    answered: list[tuple[Runtime, T]]
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return headers(self.unavailable)


def headers(unavailable: dict[str, str]) -> dict[str, str]:
    """The response header naming the runtimes left out of an answer; none when every one answered."""
    return {HEADER: ", ".join(unavailable)} if unavailable else {}


class _Failed:
    def __init__(self, reason: str) -> None:
        self.reason = reason


def _reason(exc: BaseException) -> str | None:
    """Why a runtime is left out of a merged answer, or None for an error the request itself caused."""
    if isinstance(exc, EngineError):
        return str(exc)
    if isinstance(exc, ApiError) and exc.status >= 500:
        return exc.message
    return None


async def each(scope: Scope, call: Callable[[Runtime], Awaitable[T]], timeout: float) -> Answers[T]:
    """``call`` on every runtime of the scope, concurrently, each bounded by ``timeout`` (then it counts as
    unreachable). One runtime: its errors raised as they are. Several: see the module's docstring."""
    async def bounded(runtime: Runtime) -> T:
        try:
            async with asyncio.timeout(timeout):
                return await call(runtime)
        except TimeoutError:
            raise RuntimeUnavailable(runtime.name, f"no answer within {timeout:g} s") from None

    if len(scope.runtimes) == 1:
        runtime = scope.runtimes[0]
        return Answers([(runtime, await bounded(runtime))])

    async def tolerant(runtime: Runtime) -> T | _Failed:
        try:
            return await bounded(runtime)
        except (ApiError, EngineError) as exc:
            reason = _reason(exc)
            if reason is None:
                raise
            return _Failed(reason)

    results = await gather_all(tolerant(r) for r in scope.runtimes)
    answers: Answers[T] = Answers([])
    for runtime, result in zip(scope.runtimes, results, strict=True):
        if isinstance(result, _Failed):
            answers.unavailable[runtime.name] = result.reason
        else:
            answers.answered.append((runtime, result))
    if not answers.answered:
        raise ApiError(503, "RUNTIME_UNAVAILABLE",
                       f"No container runtime answered ({', '.join(answers.unavailable)})",
                       {"runtimes": answers.unavailable}, {"Retry-After": "5"})
    return answers


async def list_containers(scope: Scope, timeout: float) -> Answers[list[Container]]:
    """Every runtime's containers (of the scope's namespace where that applies)."""
    async def one(runtime: Runtime) -> list[Container]:
        return await runtime.list_containers(scope.namespace)

    return await each(scope, one, timeout)


def merged(groups: Iterable[tuple[Runtime, Iterable[Container]]]) -> list[tuple[Runtime, Container]]:
    """The containers of several runtimes as one list in ``order``, each with its runtime."""
    return sorted(((runtime, c) for runtime, rows in groups for c in rows), key=lambda pair: order(pair[1]))


async def per_runtime(runtimes: Iterable[Runtime], targets: list[tuple[Runtime, Container]],
                      call: Callable[[Runtime, list[Container]], Awaitable[list[R]]], ident: Callable[[R], str],
                      timeout: float) -> tuple[list[R], dict[str, str]]:
    """``call`` once per runtime with its own containers of ``targets`` (in ``each``'s way: concurrently,
    each under ``timeout``, a failing one left out when there are several); the results as one list in
    ``targets``' order, found again by ``ident`` (the container id a result names; a call may leave some
    containers out). A stable sort: a pod name repeated in two namespaces keeps its runtime's order."""
    async def one(runtime: Runtime) -> list[R]:
        return await call(runtime, [c for r, c in targets if r is runtime])

    answers = await each(Scope(tuple(runtimes)), one, timeout)
    position: dict[tuple[str, str], int] = {}
    for i, (runtime, container) in enumerate(targets):
        position.setdefault((runtime.name, container.id), i)
    found = sorted(((r, result) for r, results in answers.answered for result in results),
                   key=lambda pair: position.get((pair[0].name, ident(pair[1])), len(targets)))
    return [result for _runtime, result in found], answers.unavailable
