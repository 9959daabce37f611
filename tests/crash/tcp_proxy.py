"""Child process: a TCP proxy from a loopback port to ``HOST:PORT``, to cut a worker off its
database without touching the database: freeze this process (SIGSTOP) and every byte the
worker sends waits in a socket buffer, unanswered, as behind a network partition.

Usage: ``tcp_proxy.py HOST PORT``; prints ``READY <port>`` once it listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from child_common import ready


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def main(host: str, port: int) -> None:
    async def connect(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(host, port)
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    server = await asyncio.start_server(connect, "127.0.0.1", 0)
    ready(str(server.sockets[0].getsockname()[1]))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
