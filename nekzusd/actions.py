"""The lifecycle actions (start, stop, restart, pause, unpause): one row each, read by every part that acts.

Routes (`/{id}/{action}`, `{action}-all`), the batch's ``action`` field, the state checks and their 409s,
the 202 body, the engine call, the WebSocket notification, the metric label and the OpenAPI paths all come
from this table, so an action is added here (and in the runtimes that can do it) and nowhere else. An
action name that is not a key of ``ACTIONS`` never gets past the router or the body check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .errors import ApiError
from .runtimes.base import Container, Ref, Runtime

# States in which a container's process exists (a paused one too): it cannot be started, it can be stopped.
ACTIVE = ("running", "restarting", "paused")


@dataclass(frozen=True)
class Refusal:
    """Why a container's state does not allow an action: a 409 alone, a failed result in bulk and batch."""

    code: str     # CONTAINER_ALREADY_STARTED
    message: str  # "Container is already running": the 409's message
    short: str    # "container already running": the bulk and batch result's error (the clients' wording)


@dataclass(frozen=True)
class Action:
    name: str  # the path segment, the batch's "action", `<name>-all`, the notification's type and metric label
    done: str  # "stopped": the notification's status
    invoke: Callable[[Runtime, Ref, int], Awaitable[None]]  # the Runtime method, given the grace period
    refusal: Callable[[Container], Refusal | None]  # None: the state allows it
    picks: Callable[[Container], bool]  # which linked containers `<name>-all` acts on
    leaves: str  # the state the container is in once it succeeded: what a request queued behind it is checked against
    grace: bool = False  # waits a grace period: ?timeout= is documented for it (every action validates it)
    echoes_timeout: bool = False  # its 202 carries "timeout" (stop only: the clients' existing format)

    @property
    def error_code(self) -> str:
        """The code of a failure after the 202 (or of an engine error before it)."""
        return f"CONTAINER_{self.name.upper()}_FAILED"

    @property
    def all_message(self) -> str:
        return f"{self.name.capitalize()} all operation completed"

    def check_state(self, container: Container) -> None:
        """The 409 of docs/api.md (Lifecycle) when the container's state does not allow the action."""
        refusal = self.refusal(container)
        if refusal is not None:
            raise ApiError(409, refusal.code, refusal.message, {"containerId": container.id, "state": container.state})

    def check_runtime(self, runtime: Runtime) -> None:
        """501 for a runtime that cannot do this action at all (Kubernetes has no pause)."""
        if self.name not in runtime.actions:
            raise not_supported(self.name, runtime.name)


def not_supported(action: str, runtime: str) -> ApiError:
    return ApiError(501, "ACTION_NOT_SUPPORTED", f"The {runtime} runtime cannot {action} containers",
                    {"action": action, "runtime": runtime})


_RUNNING = Refusal("CONTAINER_ALREADY_STARTED", "Container is already running", "container already running")
_PAUSED = Refusal("CONTAINER_ALREADY_STARTED", "Container is paused; unpause it instead", "container already running")
_STOPPED = Refusal("CONTAINER_ALREADY_STOPPED", "Container is already stopped", "container already stopped")
_NOT_RUNNING = Refusal("CONTAINER_NOT_RUNNING", "Container is not running", "container not running")
_ALREADY_PAUSED = Refusal("CONTAINER_ALREADY_PAUSED", "Container is already paused", "container already paused")
_NOT_PAUSED = Refusal("CONTAINER_NOT_PAUSED", "Container is not paused", "container not paused")


def _start_refusal(c: Container) -> Refusal | None:
    if c.state == "paused":
        return _PAUSED
    return _RUNNING if c.state in ACTIVE else None


def _stop_refusal(c: Container) -> Refusal | None:
    return None if c.state in ACTIVE else _STOPPED


def _any_state(c: Container) -> Refusal | None:
    return None  # restart starts a stopped container too


def _pause_refusal(c: Container) -> Refusal | None:
    if c.state == "paused":
        return _ALREADY_PAUSED
    return None if c.state == "running" else _NOT_RUNNING


def _unpause_refusal(c: Container) -> Refusal | None:
    return None if c.state == "paused" else _NOT_PAUSED


async def _start(runtime: Runtime, ref: Ref, timeout: int) -> None:
    await runtime.start(ref)


async def _stop(runtime: Runtime, ref: Ref, timeout: int) -> None:
    await runtime.stop(ref, timeout)


async def _restart(runtime: Runtime, ref: Ref, timeout: int) -> None:
    await runtime.restart(ref, timeout)


async def _pause(runtime: Runtime, ref: Ref, timeout: int) -> None:
    await runtime.pause(ref)


async def _unpause(runtime: Runtime, ref: Ref, timeout: int) -> None:
    await runtime.unpause(ref)


def _running(c: Container) -> bool:
    return c.running


ACTIONS: dict[str, Action] = {a.name: a for a in (
    Action("start", "started", _start, _start_refusal, picks=lambda c: c.state not in ACTIVE, leaves="running"),
    Action("stop", "stopped", _stop, _stop_refusal, picks=_running, leaves="exited", grace=True,
           echoes_timeout=True),
    Action("restart", "restarted", _restart, _any_state, picks=_running, leaves="running", grace=True),
    Action("pause", "paused", _pause, _pause_refusal, picks=_running, leaves="paused"),
    Action("unpause", "unpaused", _unpause, _unpause_refusal, picks=lambda c: c.state == "paused",
           leaves="running"),
)}
