"""Container entry for the kind e2e: ``python -m e2e.kind.mock_pod --model M [--port 8080]``.

The mock vLLM server listens on loopback only, so it runs on ``port + 1`` and a TCP relay on
``0.0.0.0:port`` (``--listen-host``) makes it reachable through the pod's Service.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # half-close: the other direction may still be sending
    except OSError:
        pass


async def relay(host: str, port: int, target: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        up_writer.close()
        writer.close()

    server = await asyncio.start_server(handle, host, port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.kind.mock_pod", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--listen-host", default="0.0.0.0", help="relay address (the pod's; tests use 127.0.0.1)")
    args = p.parse_args(argv)
    mock = subprocess.Popen([sys.executable, "-m", "e2e.mock_vllm", "--model", args.model, "--port", str(args.port + 1)])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        asyncio.run(relay(args.listen_host, args.port, args.port + 1))
    finally:
        mock.terminate()
        mock.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
