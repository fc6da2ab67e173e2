"""The one translation of runtime failures into API errors, and the bound of gather_all: pure, no engine."""

from __future__ import annotations

import asyncio

import pytest

from nekzusd.concurrency import gather_all
from nekzusd.errors import (ApiError, ContainerNotFound, EngineError, NotSupported, RuntimeUnavailable, as_api_error,
                            engine_errors)


def test_an_engine_error_becomes_the_operations_code_with_its_reason_and_details() -> None:
    with pytest.raises(ApiError) as caught, engine_errors("CONTAINER_INSPECT_FAILED", "Failed to inspect container",
                                                          containerId="web"):
        raise EngineError("the engine said no", details={"state": "dead"})
    error = caught.value
    assert (error.status, error.code) == (500, "CONTAINER_INSPECT_FAILED")
    assert error.message == "Failed to inspect container: the engine said no"
    assert error.details == {"containerId": "web", "state": "dead"}


@pytest.mark.parametrize(("code", "expected"), [(None, "ACTION_NOT_SUPPORTED"),
                                                ("EXPORT_NOT_SUPPORTED", "EXPORT_NOT_SUPPORTED")])
def test_not_supported_is_501_with_the_code_of_what_was_asked(code: str | None, expected: str) -> None:
    extra = {} if code is None else {"not_supported": code}
    with pytest.raises(ApiError) as caught, engine_errors("EXPORT_FAILED", "Failed to export", **extra):
        raise NotSupported("kubernetes", "Compose export")
    error = caught.value
    assert (error.status, error.code) == (501, expected)
    assert error.message == "Compose export is not supported for the kubernetes runtime"
    assert error.details == {"runtime": "kubernetes"}


@pytest.mark.parametrize("raised", [ContainerNotFound("web"), RuntimeUnavailable("docker", "down")])
def test_errors_that_already_are_api_errors_pass_through_unchanged(raised: ApiError) -> None:
    with pytest.raises(ApiError) as caught, engine_errors("CONTAINER_STATS_FAILED", "Failed to get container stats"):
        raise raised
    assert caught.value is raised
    assert as_api_error(raised, "CONTAINER_LOGS_FAILED", "Failed to read container logs") is raised


def test_the_websocket_side_maps_the_same_way() -> None:
    error = as_api_error(EngineError("stream broke"), "CONTAINER_LOGS_FAILED", "Failed to read container logs")
    assert (error.code, error.message) == ("CONTAINER_LOGS_FAILED", "Failed to read container logs: stream broke")


async def test_gather_all_runs_at_most_limit_at_once_and_keeps_order() -> None:
    running = peak = 0
    release = asyncio.Event()
    started = asyncio.Queue[int]()

    async def one(i: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await started.put(i)
        await release.wait()
        running -= 1
        return i

    task = asyncio.create_task(gather_all((one(i) for i in range(7)), limit=3))
    for _ in range(3):
        await started.get()
    await asyncio.sleep(0)  # a fourth would have started by now if the bound let it
    assert running == 3 and started.empty()
    release.set()
    assert await task == list(range(7))
    assert peak == 3
