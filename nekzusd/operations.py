"""Lifecycle operations: synchronous checks, then the engine call in the background with a deadline,
and its result announced to every WebSocket client as ``container.<action>.completed|failed``."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from .actions import Action
from .errors import ApiError, EngineError
from .hub import Hub
from .runtimes.base import Container, Ref, Runtime
from .secrets import scrub_text

log = logging.getLogger(__name__)

DEADLINE_MARGIN = 30.0  # seconds beyond the grace period before an operation counts as failed
RECENT = 20
MAX_IN_FLIGHT = 256  # background operations at once; beyond, a 503 rather than an unbounded pile-up


@dataclass
class Operation:
    id: str
    action: Action
    runtime: str
    container_id: str
    name: str
    timeout: int
    started: float = field(default_factory=time.time)
    finished: float | None = None
    ok: bool | None = None
    error: str | None = None

    @property
    def duration(self) -> float | None:
        return None if self.finished is None else self.finished - self.started


async def check(runtime: Runtime, container: Container, action: Action) -> None:
    """Every refusal that comes before the engine is called, the same for single, bulk and batch operations:
    the state check (docs/api.md, Lifecycle), then the runtime's own (a Kubernetes pod without an owner).
    Raises ApiError (or EngineError when the runtime could not tell)."""
    action.check_state(container)
    await runtime.check_operation(container, action.name)


async def call(runtime: Runtime, ref: Ref, action: Action, timeout: int) -> None:
    """Run one engine operation within its deadline."""
    async with asyncio.timeout(timeout + DEADLINE_MARGIN):
        await action.invoke(runtime, ref, timeout)


SECRET_LOOKUP_TIMEOUT = 10.0  # seconds for the inspect that learns a failed container's secrets


async def scrub_failure(runtime: Runtime, ref: Ref, message: str) -> str:
    """An engine error with secrets masked: those its shape reveals, and the container's own secret values,
    since the engine quotes the command (`exec: "<password>": executable file not found`) and the error is
    broadcast to every client. The container is looked up only on failure; if that fails, shape only."""
    try:
        async with asyncio.timeout(SECRET_LOOKUP_TIMEOUT):
            known = await runtime.secret_values(ref)
    except (ApiError, EngineError, TimeoutError):
        known = ()
    return scrub_text(message, known)


class KeyedLocks:
    """One lock per key, kept only while someone holds or waits for it (memory stays bounded)."""

    def __init__(self) -> None:
        self._locks: dict[Any, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, key: Any) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


class Operations:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.recent: deque[Operation] = deque(maxlen=RECENT)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._per_container = KeyedLocks()
        # Per container with operations queued or running: the state the last of them leaves it in, and how
        # many there are. A request that comes behind them is checked against that state, not the engine's
        # passing one (stop right after restart must not see the restart's brief "exited" and answer 409).
        self._pending: dict[tuple[str, str, str], tuple[str, int]] = {}
        # Told of every finished operation, after its notification: metrics, app health.
        self.listeners: list[Callable[[Operation], Any]] = []

    async def run(self, runtime: Runtime, container: Container, action: Action, timeout: int,
                  operation_id: str | None = None) -> Operation:
        """Run an operation now, announce and record its result. Never raises for engine failures.

        Operations on one container run one after another, in the order they were asked for (a double
        tap on "stop", or "stop" then "start", must not race in the engine). Bulk operations run here too,
        so the task is registered for the shutdown drain whoever started it."""
        operation = Operation(operation_id or uuid.uuid4().hex, action, runtime.name, container.id, container.name,
                              timeout)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        key = (runtime.name, container.namespace, container.id)
        self._pending[key] = (action.leaves, self._pending.get(key, ("", 0))[1] + 1)
        try:
            async with self._per_container.hold(key):
                operation.started = time.time()
                await call(runtime, Ref(container.id, container.namespace), action, timeout)
            operation.ok = True
        except (ApiError, EngineError) as exc:
            message = getattr(exc, "message", None) or str(exc)
            operation.ok, operation.error = False, scrub_text(message)  # by shape, until the lookup answers
            try:
                operation.error = await scrub_failure(runtime, Ref(container.id, container.namespace), message)
            except asyncio.CancelledError:
                self._finish(operation, container)
                raise
        except TimeoutError:
            operation.ok, operation.error = False, f"Operation did not finish within {timeout + DEADLINE_MARGIN:g} s"
        except asyncio.CancelledError:  # shutdown cut it short: clients still hear how it ended
            operation.ok, operation.error = False, "Cancelled: nekzusd is shutting down"
            self._finish(operation, container)
            raise
        except Exception as exc:  # a bug, not an engine failure: say so, and still tell the clients
            log.exception("%s of %s failed unexpectedly", action.name, container.id)
            operation.ok, operation.error = False, f"internal error: {type(exc).__name__}"
        finally:
            if task is not None:
                self._tasks.discard(task)
            state, count = self._pending[key]
            if count > 1:
                self._pending[key] = (state, count - 1)
            else:
                del self._pending[key]
        self._finish(operation, container)
        return operation

    def _finish(self, operation: Operation, container: Container) -> None:
        operation.finished = time.time()
        self._announce(operation, container)
        self.recent.append(operation)
        for listener in self.listeners:
            listener(operation)

    def _announce(self, operation: Operation, container: Container) -> None:
        data: dict[str, Any] = {"containerId": container.id, "operationId": operation.id}
        if container.namespace:
            data["namespace"] = container.namespace
        action = operation.action
        if operation.ok:
            data.update(status=action.done, message=f"Container {action.done} successfully")
            type_ = f"container.{action.name}.completed"
        else:
            data.update(error=action.error_code, message=f"Failed to {action.name} container: {operation.error}")
            type_ = f"container.{action.name}.failed"
        data["timestamp"] = int(operation.finished or time.time())
        self.hub.broadcast(type_, data)

    async def prepare(self, runtime: Runtime, ref: Ref, action: Action) -> Container:
        """The synchronous checks before a 202: the runtime can do the action, the container exists, and
        ``check`` lets it through."""
        action.check_runtime(runtime)
        container = await runtime.get(ref)
        pending = self._pending.get((runtime.name, container.namespace, container.id))
        await check(runtime, replace(container, state=pending[0]) if pending else container, action)
        return container

    def submit(self, runtime: Runtime, container: Container, action: Action, timeout: int) -> str:
        """Start the operation in the background; returns its operationId. A slow engine must not let
        local callers (who are not rate limited) queue unbounded work: past MAX_IN_FLIGHT it is a 503."""
        if len(self._tasks) >= MAX_IN_FLIGHT:
            raise ApiError(503, "TOO_MANY_OPERATIONS",
                           f"{MAX_IN_FLIGHT} operations are already running; try again shortly",
                           headers={"Retry-After": "5"})
        operation_id = uuid.uuid4().hex
        task = asyncio.create_task(self.run(runtime, container, action, timeout, operation_id),
                                   name=f"{action.name}-{container.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return operation_id

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float) -> None:
        """At shutdown: let running operations finish up to ``timeout``, then cancel the rest."""
        tasks = list(self._tasks)
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def accepted_body(action: Action, container: Container, operation_id: str, timeout: int) -> dict[str, Any]:
    """The 202 body (docs/api.md, Lifecycle), with the operationId its notification carries too."""
    body: dict[str, Any] = {"status": "accepted", "containerId": container.id,
                            "message": f"Container {action.name} initiated"}
    if action.echoes_timeout:
        body["timeout"] = timeout
    body["timestamp"] = int(time.time())
    body["operationId"] = operation_id
    return body

