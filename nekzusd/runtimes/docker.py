"""Docker Engine (and Podman's Docker-compatible API) through aiodocker: the engine calls; the mapping of
its documents to the API's shapes is runtimes/docker_objects.py."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import re
import time
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import replace
from typing import Any
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from urllib.parse import quote

import aiodocker
import aiohttp
import orjson

from ..errors import ApiError, ContainerNotFound, ContainerNotRunning, EngineError, RuntimeUnavailable
from ..concurrency import gather_all
from ..secrets import mask_inspect, mask_labels, secret_values_of
from ..stats import Sample, Samplers
from .answers import read_bounded
from .base import CONNECTED, Container, Event, LogLine, Ref, Runtime, Subnet
from .docker_objects import container_from_inspect, container_from_list, podman_sample, sample_from_stats, short_id
from .logparse import READ_SIZE, LogCursor, LogParser, stamped_lines

# Docker's own syntax for container names and ids; anything else never reaches the engine.
_ID_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
# How the engines say that an id prefix names several containers: dockerd 20.10 as a 500, Podman as a 404.
# Either way the caller asked something that names no one container: a 400, not a server error.
_AMBIGUOUS_ID = re.compile(r"(?:Multiple IDs found with provided prefix|more than one result for container"
                           r"(?: ID)?):? *\"?([^\":]*)")
# Events after which a container's state may differ (state_changes lists then). Not "kill": a signal changes
# nothing by itself, and "die" follows when the process ends.
_STATE_EVENTS = {"start", "die", "stop", "pause", "unpause", "restart", "destroy", "remove",
                 "health_status", "create"}
CALL_TIMEOUT = 15.0  # seconds for any engine call that is not a long-running operation
# Seconds a stop/restart may take beyond its grace period; inside the operation's own deadline
# (operations.DEADLINE_MARGIN), so a hung engine is reported as such.
ENGINE_MARGIN = 20.0
# Seconds between Podman stats polls (its own stream comes every 5 s). Also the window of the first
# answer, which needs two polls: shorter windows proved noisy (0.25 s read 0.31 cores for a 0.2 quota).
STATS_POLL_INTERVAL = 1.0
# Inspects run at once to learn the secrets of containers the list shows for the first time.
SECRET_LOOKUP_CONCURRENCY = 8
# The most bytes the daemon reads of one engine answer it decodes whole. An inspect is a few KB; the
# container list of a host with thousands of containers a few MB. A bigger answer is not what was asked
# for (an engine path that went somewhere else): it is refused before it fills the daemon's memory.
MAX_ANSWER = 8 << 20
MAX_LIST_ANSWER = 64 << 20


def _log_window(since: float | None, until: float | None) -> dict[str, str]:
    """``since``/``until`` as the engine's query, widened by a microsecond so that a line stamped exactly
    at either end (to the nanosecond) stays inside: a float of today's Unix time holds about a quarter of a
    microsecond. dockerd reads the fraction as a count of nanoseconds (".5" is 5 ns): always nine digits."""
    window = {}
    for name, value, rounding, slack in (("since", since, math.floor, -1), ("until", until, math.ceil, 1)):
        if value is not None:
            nanos = max(0, rounding(value * 1e6) + slack) * 1000
            window[name] = f"{nanos // 10**9}.{nanos % 10**9:09d}"
    return window


def bridge_subnets(networks: Any) -> list[Subnet]:
    """The IPAM subnets (and gateways) of an engine's bridge networks (``GET /networks``); others
    (host, none, macvlan and ipvlan, whose containers sit on the LAN itself) are not the host's own."""
    found: list[Subnet] = []
    for network in networks if isinstance(networks, list) else []:
        if not isinstance(network, dict) or network.get("Driver") != "bridge":
            continue
        for item in (network.get("IPAM") or {}).get("Config") or []:
            try:
                subnet = ipaddress.ip_network(item.get("Subnet") or "", strict=False)
                gateway = ipaddress.ip_address(item["Gateway"]) if item.get("Gateway") else None
            except (ValueError, TypeError, AttributeError):
                continue
            found.append((subnet, gateway))
    return found


def engine_path(*segments: str) -> str:
    """An engine API path from its segments, each percent-quoted whole.

    Names come from clients and from the engine itself, and Docker accepts almost anything as a network
    name (``..``, ``a/b``, ``x?y``, ``x#``): interpolated raw, such a name walks to another endpoint
    (``networks/../containers/web/json#`` is container web's inspect). Quoted, ``?`` and ``#`` stay inside
    the segment. Quoting is not enough for ``/``: dockerd decodes ``%2F`` before it routes, then cleans the
    path and redirects (``networks/..%2Fcontainers%2Fweb`` goes to ``containers/web``). So a segment that,
    split at ``/``, has an empty, ``.`` or ``..`` part is refused (EngineError 400): no engine object can be
    addressed safely by such a name (the export looks networks up by id instead)."""
    for segment in segments:
        if any(part in ("", ".", "..") for part in segment.split("/")):
            raise EngineError(f"not an addressable engine object name: {segment[:200]!r}", 400)
    return "/".join(quote(segment, safe="") for segment in segments)


class DockerRuntime(Runtime):
    name = "docker"
    actions = frozenset({"start", "stop", "restart", "pause", "unpause"})

    def __init__(self, url: str, pool_limit: int = 100) -> None:
        self.url = url
        self.pool_limit = pool_limit  # pooled connections of short calls, sized by descriptors.Budget
        self._docker: aiodocker.Docker | None = None
        self._self_id = _own_container_id()
        self.samplers = Samplers(self.name)
        self._streams_docker: aiodocker.Docker | None = None  # own pool: long-lived streams stay open
        self._podman: bool | None = None
        # Full id -> its labels as rows show them (secrets masked). A container's labels and environment
        # never change, so each is inspected once; entries of containers gone from the list are dropped.
        self._row_labels: dict[str, dict[str, str]] = {}

    async def open(self) -> None:
        # The client connects lazily, so this succeeds while the engine is down. On a socket its pool is
        # sized by the descriptors budget; over TCP aiodocker builds the pool itself (aiohttp's 100), since
        # it also sets up TLS from DOCKER_TLS_VERIFY or a Docker context there.
        if self.url.startswith("unix://"):
            connector, url = self._connector(self.pool_limit)
            self._docker = aiodocker.Docker(url=url, connector=connector)
        else:
            self._docker = aiodocker.Docker(url=self.url)

    async def close(self) -> None:
        await self.samplers.close()
        if self._streams_docker is not None:
            await self._streams_docker.close()
            await self._streams_docker.connector.close()  # given to aiodocker, so not closed by it
            self._streams_docker = None
        if self._docker is not None:
            await self._docker.close()
            await self._docker.connector.close()  # ours on a socket (aiodocker does not close it); else a no-op
            self._docker = None

    @property
    def client(self) -> aiodocker.Docker:
        if self._docker is None:
            raise RuntimeUnavailable(self.name, "client not open")
        return self._docker

    @asynccontextmanager
    async def _call(self, what: str, timeout: float | None = CALL_TIMEOUT) -> AsyncIterator[None]:
        """Map connection failures, timeouts and engine errors to the daemon's error types."""
        try:
            async with asyncio.timeout(timeout):
                yield
        except TimeoutError:
            raise RuntimeUnavailable(self.name, f"{what}: engine did not answer in time") from None
        except (aiohttp.ClientConnectionError, ConnectionError, FileNotFoundError) as exc:
            raise RuntimeUnavailable(self.name, f"{what}: {exc}") from None
        except aiohttp.ClientPayloadError as exc:  # the engine went away in the middle of its answer
            raise RuntimeUnavailable(self.name, f"{what}: answer cut off: {exc}") from None
        except aiodocker.DockerError as exc:
            if exc.status == 900:  # aiodocker's word for "could not connect"
                raise RuntimeUnavailable(self.name, "cannot connect to the engine") from None
            if ambiguous := _AMBIGUOUS_ID.match(exc.message):
                prefix = ambiguous.group(1)
                raise ApiError(400, "INVALID_CONTAINER_ID",
                               f"Container ID {prefix} names more than one container: give more of it",
                               {"containerId": prefix}) from None
            raise EngineError(exc.message, exc.status) from None
        except aiohttp.ClientError as exc:  # e.g. a redirect: the engine never answers so to what is asked
            raise EngineError(f"{what}: unexpected engine answer: {exc}", 502) from None

    async def _json(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                    what: str, timeout: float | None = CALL_TIMEOUT, limit: int = MAX_ANSWER) -> Any:
        """The engine's JSON answer, read up to ``limit`` bytes: a longer or undecodable answer is an
        EngineError (502), never a traceback nor a body held whole in memory."""
        async with self._call(what, timeout):
            async with self.client._query(path, method, params=params) as response:
                body = await read_bounded(response, limit, what)
        try:
            # orjson: the container list is the hot path of every dashboard, and decoding is most of its cost
            return orjson.loads(body) if body else None
        except orjson.JSONDecodeError as exc:
            raise EngineError(f"{what}: the engine's answer is not JSON: {exc}", 502) from None

    async def _container_json(self, ref: Ref, method: str, *tail: str, what: str,
                              params: dict[str, Any] | None = None, timeout: float | None = CALL_TIMEOUT) -> Any:
        """A call on one container, with the engine's 404 turned into CONTAINER_NOT_FOUND."""
        try:
            return await self._json(method, engine_path("containers", ref.id, *tail), params=params, what=what,
                                    timeout=timeout)
        except EngineError as exc:
            if exc.status == 404:
                raise ContainerNotFound(ref.id) from None
            raise

    async def ping(self) -> dict[str, Any]:
        version = await self._json("GET", "version", what="version", timeout=5)
        return {"version": version.get("Version", ""), "apiVersion": version.get("ApiVersion", "")}

    def validate_ref(self, ref: Ref) -> Ref:
        if not _ID_RE.fullmatch(ref.id):
            raise ApiError(400, "INVALID_CONTAINER_ID",
                           "Container ID must be a Docker container id or name ([a-zA-Z0-9][a-zA-Z0-9_.-]*, "
                           "at most 128 characters)", {"containerId": ref.id[:200]})
        return Ref(ref.id)

    async def bridge_networks(self) -> list[Subnet]:
        return bridge_subnets(await self._json("GET", "networks", what="list networks"))

    async def list_containers(self, namespace: str | None = None) -> list[Container]:
        rows = await self._json("GET", "containers/json", params={"all": "1"}, what="list containers",
                               limit=MAX_LIST_ANSWER)
        await self._learn_labels(rows)
        return [container_from_list(row, self._row_labels.get(row.get("Id", ""))) for row in rows]

    async def _learn_labels(self, rows: list[dict[str, Any]]) -> None:
        """Masked labels of the listed containers not seen before: the list carries no environment, yet a
        label may repeat a secret of it, so each new container with labels is inspected once."""
        async def learn(full_id: str, labels: dict[str, str]) -> None:
            try:
                doc = await self._json("GET", engine_path("containers", full_id, "json"), what="inspect")
            except EngineError:  # gone meanwhile: its row is masked by name and shape only
                return
            self._row_labels[full_id] = mask_labels(labels, secret_values_of(doc or {}))

        await gather_all((learn(row["Id"], row["Labels"]) for row in rows
                          if row.get("Labels") and row.get("Id") and row["Id"] not in self._row_labels),
                         limit=SECRET_LOOKUP_CONCURRENCY)
        if len(self._row_labels) > len(rows):
            listed = {row.get("Id") for row in rows}
            for full_id in [i for i in self._row_labels if i not in listed]:
                del self._row_labels[full_id]

    async def get(self, ref: Ref) -> Container:
        return container_from_inspect(await self._container_json(ref, "GET", "json", what="inspect"))

    async def inspect(self, ref: Ref) -> dict[str, Any]:
        return mask_inspect(await self._container_json(ref, "GET", "json", what="inspect"))

    async def secret_values(self, ref: Ref) -> tuple[str, ...]:
        return secret_values_of(await self._container_json(ref, "GET", "json", what="inspect") or {})

    async def start(self, ref: Ref) -> None:
        await self._container_json(ref, "POST", "start", what="start", timeout=60)

    async def stop(self, ref: Ref, timeout: int) -> None:
        await self._container_json(ref, "POST", "stop", params={"t": timeout}, what="stop",
                                   timeout=timeout + ENGINE_MARGIN)

    async def restart(self, ref: Ref, timeout: int) -> None:
        await self._container_json(ref, "POST", "restart", params={"t": timeout}, what="restart",
                                   timeout=timeout + ENGINE_MARGIN)

    async def pause(self, ref: Ref) -> None:
        await self._container_json(ref, "POST", "pause", what="pause")

    async def unpause(self, ref: Ref) -> None:
        await self._container_json(ref, "POST", "unpause", what="unpause")

    async def events(self) -> AsyncGenerator[Event, None]:
        params = {"filters": json.dumps({"type": ["container"]})}
        async with self._call("events", timeout=None):
            async with self._stream_client()._query("events", params=params, timeout=None) as response:
                yield Event("", CONNECTED)  # subscribed (headers came): a listing from now on misses nothing
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    action = event.get("Action") or event.get("status") or ""
                    action = action.split(":", 1)[0]  # "health_status: healthy"
                    if action in _STATE_EVENTS:
                        cid = (event.get("Actor") or {}).get("ID") or event.get("id", "")
                        yield Event(short_id(cid), action)
        raise RuntimeUnavailable(self.name, "event stream ended")

    async def logs(self, ref: Ref, *, tail: int, follow: bool, timestamps: bool, since: float | None = None,
                   until: float | None = None, container: str = "",
                   opened: Callable[[], None] | None = None) -> AsyncGenerator[LogLine, None]:
        """The container's log lines; a follow stream ends when the container stops (or is removed), or at
        ``until`` (Unix seconds: dockerd itself would wait for a later line), and raises RuntimeUnavailable
        when the engine goes away instead. ``since``/``until`` are the engine's own filters (inclusive).
        ``container`` (a container of a Kubernetes pod) has no meaning here and is refused.

        The engine is always asked for timestamps (cut off again unless wanted): dockerd stores a last line
        without newline only at exit and can end the follow stream before it, so after the stream a
        catch-up read from the stamps of the last lines handed out (one place per output stream, whose
        stamps alone follow the log's order) hands out what the stream missed, and nothing twice."""

        if container:
            raise ApiError(400, "CONTAINER_NOT_A_POD", f"{ref.id[:200]} is a {self.name} container, not a Kubernetes "
                           "pod: it holds no containers to choose with \"container\"", {"containerId": ref.id[:200]})
        doc = await self._container_json(ref, "GET", "json", what="inspect")
        container_id, multiplexed = doc["Id"], not (doc.get("Config") or {}).get("Tty")
        window = _log_window(since, until)
        if not follow:
            async with aclosing(self._log_reads(container_id, multiplexed, {"tail": str(tail), **window},
                                                opened=opened)) as reads:
                async for lines in reads:
                    for line in stamped_lines(lines, timestamps):
                        yield line
            return
        cursor = LogCursor()
        if tail == 0:  # the stream starts at the log's end: where that is, for the catch-up
            last = [pair async for lines in self._log_reads(container_id, multiplexed, {"tail": "1"})
                    for pair in lines]
            cursor = LogCursor(from_start=not last)
            cursor.passed(last)
        params = {"tail": str(tail), "follow": "1", **window}
        async with aclosing(self._log_reads(container_id, multiplexed, params, until, opened)) as reads:
            async for lines in reads:
                for line in stamped_lines(lines, timestamps):
                    yield line
                cursor.passed(lines)
        if not await self._still_there(ref):
            return
        fresh = cursor.fresh_filter()
        params = {"tail": "all", **window}
        if cursor.since is not None and (since is None or float(cursor.since) > since):
            params = {**window, "since": cursor.since}
        try:
            async with aclosing(self._log_reads(container_id, multiplexed, params)) as reads:
                async for lines in reads:
                    for line in stamped_lines([pair for pair in lines if fresh(pair)], timestamps):
                        yield line
        except EngineError as exc:
            if exc.status != 404:  # removed meanwhile: its log is gone
                raise

    async def _log_reads(self, container_id: str, multiplexed: bool, params: dict[str, str],
                         until: float | None = None, opened: Callable[[], None] | None = None,
                         ) -> AsyncGenerator[list[tuple[str, str]], None]:
        """The stamped lines of one logs request, per read. A follow stream may idle (until ``until``, Unix
        seconds, when given), and a line it ends in is left to the catch-up read, which has it whole; other
        reads may not idle and end with the unfinished lines. ``opened`` is called once the engine answered
        (dockerd sends a follow's headers at once, whether or not a line is there)."""

        parser = LogParser(multiplexed, stamped=True)
        query = {"stdout": "1", "stderr": "1", "timestamps": "1", "follow": "0", **params}
        follow = query["follow"] == "1"
        loop = asyncio.get_running_loop()
        deadline = None if until is None else loop.time() + until - time.time()
        async with self._call("logs", timeout=None), AsyncExitStack() as stack:
            async with asyncio.timeout(CALL_TIMEOUT):  # to the response headers
                response = await stack.enter_async_context(
                    self._stream_client()._query(engine_path("containers", container_id, "logs"), params=query,
                                                 timeout=None))
            stack.callback(response.close)  # an unfinished stream must not go back to the pool
            if opened is not None:
                opened()
            read = response.content.read
            while True:
                try:
                    async with asyncio.timeout_at(deadline if follow else loop.time() + CALL_TIMEOUT):
                        chunk = await read(READ_SIZE)
                except TimeoutError:
                    if not follow:
                        raise
                    break  # until has come: what is stored up to then, the catch-up read gives
                except aiohttp.ClientPayloadError as exc:
                    raise RuntimeUnavailable(self.name, f"log stream broke: {exc}") from None
                if not chunk:
                    break
                yield parser.feed(chunk)
        if not follow:
            yield parser.flush()

    async def _still_there(self, ref: Ref) -> bool:
        """After a follow stream's end: whether the container still exists (stopped, or already running
        again); an engine that does not answer raises RuntimeUnavailable."""
        try:
            await self._container_json(ref, "GET", "json", what="inspect")
        except ApiError as exc:
            if exc.status != 404:
                raise
            return False
        return True

    async def export_source(self, ref: Ref) -> Any:
        from ..compose import ServiceSource  # loaded only when someone exports

        container = await self._container_json(ref, "GET", "json", what="inspect")
        image = await self._optional_json("images", str(container.get("Image") or ""), "json")
        volumes = {}
        for mount in container.get("Mounts") or []:
            if mount.get("Type") == "volume" and mount.get("Name"):
                found = await self._optional_json("volumes", str(mount["Name"]))
                if found is not None:
                    volumes[mount["Name"]] = found
        networks = {}
        for name, endpoint in ((container.get("NetworkSettings") or {}).get("Networks") or {}).items():
            if name not in ("bridge", "host", "none"):
                # By the network's id when the engine gives it: a name may be one no URL can address (..)
                found = await self._optional_json("networks", str((endpoint or {}).get("NetworkID") or name))
                if found is not None:
                    networks[name] = found
        await self._name_shared_namespaces(container)
        return ServiceSource(container=container, image=image, volumes=volumes, networks=networks)

    async def _name_shared_namespaces(self, container: dict[str, Any]) -> None:
        """Rewrite `container:<full id>` (how the engine records a shared network, PID or IPC namespace)
        as `container:<name>`: an id means nothing on another host, a name can be recreated."""
        host = container.get("HostConfig") or {}
        for key in ("NetworkMode", "PidMode", "IpcMode"):
            kind, _, ref = (host.get(key) or "").partition(":")
            if kind == "container" and re.fullmatch(r"[0-9a-f]{64}", ref):
                other = await self._optional_json("containers", ref, "json")
                if other and other.get("Name"):
                    host[key] = f"container:{other['Name'].lstrip('/')}"

    async def _optional_json(self, *segments: str) -> Any:
        """An engine object's inspect, or None when the engine has none by that name (or refuses it)."""
        path = "/".join(segments)
        try:
            return await self._json("GET", engine_path(*segments), what=path)
        except EngineError:
            return None

    async def stats(self, ref: Ref) -> dict[str, Any]:
        """From the container's live sampler (started on first use, shared by every caller)."""
        hit = self.samplers.cached(ref.id)
        if hit is not None:
            return hit
        container = await self.get(ref)
        if container.state not in ("running", "paused"):
            raise ContainerNotRunning(container.id)
        return await self.samplers.get(container.id, lambda: self._stat_samples(container), alias=ref.id)

    async def _stat_samples(self, container: Container) -> AsyncGenerator[Sample, None]:
        """Samples about once a second until the container stops (ContainerNotRunning).

        dockerd streams one a second with its previous reading filled in; Podman streams only every 5 s
        and without a previous reading, so it is polled and the sampler pairs consecutive polls."""
        path = engine_path("containers", container.id, "stats")
        if await self._is_podman():
            while True:
                try:
                    async with self._call("stats"):
                        async with self.client._query(path, params={"stream": "0"}) as response:
                            body = await read_bounded(response, MAX_ANSWER, "stats")
                except EngineError as exc:
                    if exc.status == 404:
                        raise ContainerNotFound(container.id) from None
                    raise
                yield self._sample_or_stop(json.loads(body) if body.strip() else {}, container.id, podman_sample)
                await asyncio.sleep(STATS_POLL_INTERVAL)
        async with self._call("stats", timeout=None):
            async with self._stream_client()._query(path, params={"stream": "1"}, timeout=None) as response:
                try:
                    async for line in response.content:
                        if line.strip():
                            yield self._sample_or_stop(json.loads(line), container.id)
                finally:
                    response.close()  # drop the connection: dockerd then stops collecting for it
        raise ContainerNotRunning(container.id)

    def _stream_client(self) -> aiodocker.Docker:
        """The client of long-lived streams (stats samplers, log subscriptions, the event stream), with its
        own pool and no limit on its connections. On the main client's pool (aiohttp's default of 100)
        open streams would leave list, inspect and lifecycle calls waiting for a slot until they time out.
        Streams are bounded elsewhere: samplers by the running containers and their idle expiry, log
        subscriptions by logs.MAX_SUBSCRIPTIONS."""
        if self._streams_docker is None:
            connector, url = self._connector(0)
            self._streams_docker = aiodocker.Docker(url=url, connector=connector)
        return self._streams_docker

    def _connector(self, limit: int) -> tuple[aiohttp.BaseConnector, str]:
        """A connection pool to the engine of at most ``limit`` connections (0: no limit), and the URL
        aiodocker is to use with it."""
        if self.url.startswith("unix://"):
            # "unix://localhost": the host name aiodocker itself gives a socket
            return aiohttp.UnixConnector(self.url.removeprefix("unix://"), limit=limit), "unix://localhost"
        return aiohttp.TCPConnector(limit=limit), "http://" + self.url.removeprefix("tcp://")

    @staticmethod
    def _sample_or_stop(doc: dict[str, Any], container_id: str,
                        reader: Callable[[dict[str, Any]], Sample | None] = sample_from_stats) -> Sample:
        sample = reader(doc)
        if sample is None:
            raise ContainerNotRunning(container_id)
        return sample if sample.container_id else replace(sample, container_id=container_id)

    async def _is_podman(self) -> bool:
        """Podman's Docker-compatible API names itself in /version; asked once."""
        if self._podman is None:
            version = await self._json("GET", "version", what="version", timeout=5)
            self._podman = any("podman" in (c.get("Name") or "").lower()
                               for c in version.get("Components") or [])
        return self._podman

    def is_self(self, container: Container) -> bool:
        return self._self_id is not None and container.id == short_id(self._self_id)


def _own_container_id() -> str | None:
    """The id of the container this process runs in, if any (from the cgroup or mountinfo paths)."""
    for path in ("/proc/self/cgroup", "/proc/self/mountinfo"):
        try:
            with open(path) as fh:
                text = fh.read()
        except OSError:
            continue
        match = re.search(r"(?:docker[-/]|/containers/)([0-9a-f]{64})", text)
        if match:
            return match.group(1)
    return None
