"""Reading an engine's whole answer within a size bound, for every runtime alike.

An engine (dockerd, Podman, the API server, a kubelet behind its proxy) is trusted to answer, not to answer
small: a path that names more than meant, or a node summary of thousands of pods, must not be read into
memory whole. Past the bound the connection is dropped, not drained.
"""

from __future__ import annotations

import aiohttp

from ..errors import EngineError
from .logparse import READ_SIZE


async def read_bounded(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The whole body of ``response``, or EngineError (502) once it passes ``limit`` bytes."""
    if response.content_length is not None and response.content_length > limit:
        response.close()
        raise EngineError(f"{what}: the engine's answer is too large ({response.content_length} bytes, "
                          f"at most {limit})", 502)
    chunks, size = [], 0
    while chunk := await response.content.read(READ_SIZE):
        size += len(chunk)
        if size > limit:
            response.close()
            raise EngineError(f"{what}: the engine's answer is too large (over {limit} bytes)", 502)
        chunks.append(chunk)
    return b"".join(chunks)
