"""nekzusd.hub's connection handling on real loopback sockets (no daemon needed)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from nekzusd.hub import drop

BIG = 8_000_000  # more than the kernel's socket buffers take: the rest waits in the transport


@contextlib.asynccontextmanager
async def connection() -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Transport]]:
    """A loopback connection: the client's reader, the served side's writer and its transport, which has
    ``BIG`` bytes written and is closed (a WebSocket client the daemon closed with frames still queued)."""
    accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()
    server = await asyncio.start_server(lambda _r, w: accepted.set_result(w), "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        served = await accepted
        transport = served.transport
        assert isinstance(transport, asyncio.Transport)
        transport.write(b"x" * BIG)
        transport.close()
        assert transport.is_closing() and transport.get_write_buffer_size() > 0
        yield reader, served, transport
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_drop_after_a_buffered_close_has_finished_does_not_raise() -> None:
    """A client closed while frames were still buffered, then read them all: CPython's transport finished
    its close by itself without marking the connection lost, and the daemon's abort of it afterwards (a
    writer that then failed, a shutdown) raised AttributeError out of the WebSocket handler, a traceback
    in the daemon's log (seen in the benchmarks' quick run)."""
    async with connection() as (reader, served, transport):
        assert len(await reader.readexactly(BIG)) == BIG
        await served.wait_closed()  # the buffer drained: the transport closed itself
        drop(transport)  # before drop(): AttributeError: 'NoneType' object has no attribute 'call_soon'


async def test_drop_aborts_a_closing_connection_whose_peer_does_not_read() -> None:
    """The case an abort is for: closing, data still buffered, the peer not reading. drop() frees it now."""
    async with connection() as (_reader, served, transport):
        drop(transport)
        async with asyncio.timeout(5):
            await served.wait_closed()  # lost at once, not after the peer reads 8 MB
        assert transport.get_write_buffer_size() == 0
