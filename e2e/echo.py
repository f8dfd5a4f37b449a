"""A tiny HTTP upstream that answers every request with what it received, as JSON,
and remembers the requests so tests can prove what reached it (or did not)."""

from __future__ import annotations

import argparse
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_CHUNKS = 10_000  # bounded: no test sends more


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    body: bytes


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body, whether framed by content-length or chunked (Envoy forwards chunked as chunked)."""
    if "chunked" in (handler.headers.get("transfer-encoding") or "").lower():
        out = b""
        for _ in range(MAX_CHUNKS):
            size = int(handler.rfile.readline().split(b";")[0], 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return out
            out += handler.rfile.read(size)
            handler.rfile.readline()
        raise ValueError("too many chunks")
    length = int(handler.headers.get("content-length") or 0)
    return handler.rfile.read(length) if length else b""


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        super().__init__((host, port), EchoHandler)
        self.seen: list[Seen] = []
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def requests(self) -> list[Seen]:
        with self.lock:
            return list(self.seen)

    def paths(self) -> list[str]:
        return [s.path for s in self.requests()]


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EchoServer

    def _answer(self) -> None:
        body = read_body(self)
        with self.server.lock:
            self.server.seen.append(Seen(self.command, self.path, body))
        doc = {"method": self.command, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
               "body": body.decode("utf-8", "replace")}
        out = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


def serve(port: int, host: str = "127.0.0.1") -> EchoServer:
    """Start an echo server in a background thread; call ``shutdown()`` to stop it."""
    server = EchoServer(port, host)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=18101)
    a = p.parse_args()
    EchoServer(a.port).serve_forever()
