"""The smallest asyncio-streams echo program, for checking bench_tcp's baseline by hand.

Run: ``python benchmarks/plain_streams_echo.py [SIZE] [ROUND_TRIPS]``.  Prints round trips
per second.  Nothing but asyncio is imported, so the process's allocator state is that of
a minimal program: compare with ``streams/asyncio`` in ``bench_tcp.py`` (run under
``strace -c -e trace=mmap,mremap,munmap`` to see the three calls per read).
"""

import asyncio
import os
import sys
import time


async def main(size: int, count: int) -> float:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                writer.write(await reader.readexactly(size))
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    msg = os.urandom(size)
    for _ in range(200):  # warm-up
        writer.write(msg)
        await writer.drain()
        await reader.readexactly(size)
    start = time.perf_counter()
    for _ in range(count):
        writer.write(msg)
        await writer.drain()
        if await reader.readexactly(size) != msg:
            raise AssertionError("echo mismatch")
    elapsed = time.perf_counter() - start
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    return count / elapsed


if __name__ == "__main__":
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    print(f"{size} B: {asyncio.run(main(size, count)):,.0f} round trips/s")
