"""The host's own container networks, which local trust must not cover.

Docker and Podman put containers on bridge networks whose subnets come from private ranges (Docker's
172.17.0.0/16, then 172.18-31 and 192.168.x; Podman's 10.88.0.0/16), all inside the default
``auth.local_networks``. A container reaches the daemon through its bridge's gateway (the host) from such an
address: without this, any container of the host (a compromised web app) was a trusted local client, able
to stop every container, read every log and export every secret. So an address inside a bridge network of
an enabled runtime is remote (it needs a token), whatever ``local_networks`` says; the gateway itself is
the host and stays local. ``auth.trust_container_networks: true`` restores the old trust.

The subnets are learnt from each runtime (``Runtime.bridge_networks``) before the daemon serves, every
``REFRESH`` seconds, and soon after containers change state (``poke``, from ``state_changes``: a container
on a network created since is learnt within about a second of its start, at most one look a second); a
runtime that does not answer keeps what was learnt of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .errors import ApiError, EngineError, NotSupported
from .realip import IPAddress
from .runtimes import Runtime
from .runtimes.base import Subnet

log = logging.getLogger(__name__)

REFRESH = 10.0  # seconds between looks for networks created since
SPACING = 1.0  # seconds at least between two looks, however often containers change
TIMEOUT = 5.0  # one runtime's answer, at most



class ContainerNetworks:
    """The bridge subnets of every enabled runtime (``enabled`` false: none, every address as configured)."""

    def __init__(self, runtimes: list[Runtime], enabled: bool = True) -> None:
        self.runtimes = runtimes
        self.enabled = enabled
        self.subnets: tuple[Subnet, ...] = ()
        self._by_runtime: dict[str, list[Subnet]] = {}
        self._task: asyncio.Task[None] | None = None
        self._poked = asyncio.Event()

    def contains(self, addr: IPAddress | None) -> bool:
        """Whether ``addr`` is a container of this host (inside a bridge network, not its gateway)."""
        return addr is not None and any(addr.version == net.version and addr in net and addr != gateway
                                        for net, gateway in self.subnets)

    async def refresh(self) -> None:
        """Ask every runtime at once (a hung one costs ``TIMEOUT``, once)."""
        async def one(runtime: Runtime) -> None:
            try:
                async with asyncio.timeout(TIMEOUT):
                    self._by_runtime[runtime.name] = await runtime.bridge_networks()
            except (ApiError, EngineError, NotSupported, TimeoutError) as exc:
                log.debug("networks of %s not learnt: %s", runtime.name, exc)

        await asyncio.gather(*(one(r) for r in self.runtimes))
        self.subnets = tuple(s for subnets in self._by_runtime.values() for s in subnets)

    async def start(self) -> None:
        if not self.enabled:
            return
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="container-networks")

    def poke(self) -> None:
        """Containers changed state (one may be on a network created since): look again soon."""
        self._poked.set()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(SPACING)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH - SPACING):
                    await self._poked.wait()
            self._poked.clear()
            try:
                await self.refresh()
            except Exception:  # a bug must not end the refresh for good
                log.exception("learning the container networks failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
