"""A TCP echo service: each line comes back with the version's prefix. `server` serves it;
`client` connects through the mesh (echo:7000, the sidecar's listener) every 2 s."""

import asyncio
import os
import sys

VERSION = os.environ.get("DEVMESH_VERSION", "dev")
PREFIX = os.environ.get("PREFIX", f"{VERSION}: ")


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(PREFIX.encode() + line)
        await writer.drain()
    writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(echo, "0.0.0.0", port)
    print(f"echo {VERSION} serving on :{port}")
    await server.serve_forever()


async def call_forever(port: int) -> None:
    # The client's own port answers TCP health checks.
    await asyncio.start_server(lambda r, w: w.close(), "0.0.0.0", port)
    while True:
        try:
            reader, writer = await asyncio.open_connection("echo", 7000)
            writer.write(b"hello\n")
            print((await asyncio.wait_for(reader.readline(), 3)).decode().rstrip())
            writer.close()
        except (OSError, asyncio.TimeoutError) as exc:
            print(f"call failed: {exc!r}")
        await asyncio.sleep(2)


if __name__ == "__main__":
    port = int(os.environ.get("DEVMESH_PORT", "7000"))
    asyncio.run((call_forever if sys.argv[1:] == ["client"] else serve)(port))
