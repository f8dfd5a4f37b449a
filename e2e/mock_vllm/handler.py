"""The HTTP side: a threading HTTP/1.1 server that can drop or reset connections, and the request router."""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import struct
import sys
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from .completions import Completions, _Dropped, _dumps
from .generation import ApiError
from .recording import MOCK_REQUESTS_SHOWN, Recorded

if TYPE_CHECKING:
    from .server import MockServer

MAX_BODY_BYTES = 16 * 1024 * 1024
COMPLETION_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "text"}


def read_body(rfile: Any, headers: Any) -> bytes:
    """A request body, chunked or with a content-length (ValueError: too large or a bad length)."""
    if "chunked" in (headers.get("transfer-encoding") or "").lower():
        out = bytearray()
        while True:
            size = int(rfile.readline(64).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            if len(out) + size > MAX_BODY_BYTES:
                raise ValueError("request body too large")
            out += rfile.read(size)
            rfile.readline(8)
    length = int(headers.get("content-length") or 0)
    if length < 0 or length > MAX_BODY_BYTES:
        raise ValueError("bad content-length")
    return rfile.read(length) if length else b""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], mock: MockServer) -> None:
        self.mock = mock
        self.open_sockets: set[socket.socket] = set()
        self.reset_sockets: set[socket.socket] = set()  # to close with an RST: no FIN (shutdown) first
        self.sockets_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve socket.getfqdn(host): a reverse-DNS lookup that can stall startup.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
            reset = request in self.reset_sockets
            self.reset_sockets.discard(request)
        if reset:
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def close_all(self) -> None:
        with self.sockets_lock:
            socks = list(self.open_sockets)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client going away is normal; anything else is a bug worth one line on stderr (never headers/keys).
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            print(f"mock-vllm {self.mock.model}: handler error {type(exc).__name__}: {exc}", file=sys.stderr,
                  flush=True)


class _Handler(Completions, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        self.timeout = self.server.mock.keepalive_timeout
        super().setup()
        # Headers and body go out in separate writes: without NODELAY, Nagle + delayed ACK
        # hold the body back ~40 ms, which would pollute every latency the gateway measures.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def version_string(self) -> str:
        return "uvicorn"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # ---- plumbing

    def _read_body(self) -> bytes:
        return read_body(self.rfile, self.headers)

    def _send(self, status: int, body: bytes, content_type: str, extra: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _json(self, status: int, doc: Any, extra: Mapping[str, str] | None = None) -> None:
        self._send(status, _dumps(doc), "application/json", extra)

    def _close_abruptly(self, reset: bool) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            if reset:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with self.server.sockets_lock:
                    self.server.reset_sockets.add(self.connection)
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        raise _Dropped

    # ---- dispatch

    def _dispatch(self) -> None:
        mock = self.server.mock
        try:
            raw = self._read_body()
        except ValueError as e:
            self.close_connection = True
            self._json(413 if "large" in str(e) else 400, ApiError(400, str(e)).body())
            return
        path, _, query = self.path.partition("?")
        headers: dict[str, str] = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        body: Any = raw
        if raw:
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
        rec = Recorded(self.command, path, query, headers, body)
        if not path.startswith("/mock/"):
            mock._record(rec)
        try:
            self._route(mock, rec, raw)
        except _Dropped:
            self.close_connection = True
        except OSError:  # the client went away mid-answer: forget the connection, keep serving others
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

    def _route(self, mock: MockServer, rec: Recorded, raw: bytes) -> None:
        path, method = rec.path, self.command
        if path.startswith("/mock/"):
            return self._control(mock, rec, raw)
        if path in ("/metrics", "/health"):
            if method not in ("GET", "HEAD"):
                return self._json(405, {"detail": "Method Not Allowed"}, {"allow": "GET"})
            if path == "/health":
                return self._send(200, b"", "application/json")
            return self._send(200, mock.metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")
        if path.startswith("/v1") and mock.api_keys:
            scheme, _, token = (rec.headers.get("authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or token not in mock.api_keys:
                return self._json(401, {"error": "Unauthorized"})
            rec.api_key = token
        if path == "/v1/models":
            if method != "GET":
                return self._json(405, {"detail": "Method Not Allowed"}, {"allow": "GET"})
            return self._json(200, mock.models_doc())
        kind = COMPLETION_PATHS.get(path)
        if kind is None:
            return self._json(404, {"detail": "Not Found"})
        if method != "POST":
            return self._json(405, {"detail": "Method Not Allowed"}, {"allow": "POST"})
        return self._complete(mock, kind, rec, raw)

    def _control(self, mock: MockServer, rec: Recorded, raw: bytes) -> None:
        method = self.command
        if rec.path == "/mock/fault":
            if method == "GET":
                return self._json(200, mock.fault_doc())
            if method == "DELETE":
                mock.clear_fault()
                return self._json(200, mock.fault_doc())
            if method in ("POST", "PUT"):
                try:
                    doc = json.loads(raw or b"{}")
                    if not isinstance(doc, dict):
                        raise ValueError("fault must be a JSON object")
                    mock.set_fault(**doc)
                except ValueError as e:
                    return self._json(400, ApiError(400, str(e)).body())
                return self._json(200, mock.fault_doc())
        if rec.path == "/mock/engine" and method == "GET":
            return self._json(200, mock.engine_doc())
        if rec.path == "/mock/requests":
            if method == "GET":
                wanted = dict(p.partition("=")[::2] for p in rec.query.split("&") if p).get("path")
                reqs = [r for r in mock.requests if wanted is None or r.path == wanted]
                count = mock.request_count if wanted is None else len(reqs)
                return self._json(200, {"count": count,
                                        "requests": [r.to_json() for r in reqs[-MOCK_REQUESTS_SHOWN:]]})
            if method == "DELETE":
                mock.clear_requests()
                return self._json(200, {"count": 0, "requests": []})
        return self._json(404, {"detail": "Not Found"})
