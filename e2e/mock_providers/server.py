"""The HTTP side of the provider mocks: a threading HTTP/1.1 server (TCP_NODELAY, chunked SSE), recorded requests,
faults, and the words every mock generates."""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import socketserver
import threading
import time
from collections import deque
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from e2e.mock_vllm.handler import read_body


class Request:
    """One request as a provider module sees it."""

    def __init__(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], raw: bytes) -> None:
        self.method, self.path, self.query, self.headers, self.raw = method, path, query, headers, raw
        try:
            self.body: Any = json.loads(raw) if raw else None
        except ValueError:
            self.body = None

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "query": self.query, "headers": self.headers,
                "body": self.body}


class Reply:
    """A JSON answer (``doc``) or a stream of SSE events (``events``, bytes each)."""

    def __init__(self, status: int, doc: Any = None, events: list[bytes] | None = None,
                 headers: dict[str, str] | None = None, content_type: str = "") -> None:
        self.status, self.doc, self.events, self.headers = status, doc, events, headers or {}
        self.content_type = content_type or ("text/event-stream" if events is not None else "application/json")


class Fault:
    def __init__(self, status: int = 0, count: int | None = None, cut_after: int | None = None,
                 stream_error: bool = False, token_delay_ms: int = 0, retry_after: str = "", tokens: int = 0) -> None:
        self.status, self.count, self.cut_after, self.stream_error = status, count, cut_after, stream_error
        self.token_delay_ms, self.retry_after, self.tokens = token_delay_ms, retry_after, tokens


def answer_tokens(fault: Fault | None, limit: int) -> int:
    """How many word tokens an answer has: 12, or the fault's ``tokens``; at most ``limit``."""
    return min(fault.tokens if fault is not None and fault.tokens else 12, limit)


def words(req_text: str, n: int = 12) -> list[str]:
    """The answer every mock gives: a fixed sentence naming what was asked (repeated), as ``n`` word tokens."""
    said = " ".join(req_text.split()[:4])
    base = f"Hello! You said: {said}. This answer comes from a mock of a hosted model API.".split(" ")
    return [base[i % len(base)] if i == 0 else " " + base[i % len(base)] for i in range(n)]


def input_tokens(raw: bytes) -> int:
    return max(1, len(raw) // 4)


class ProviderMock:
    """One provider API on a loopback port, answering from a background thread."""

    def __init__(self, kind: str, port: int = 0, keys: Iterable[str] = (), models: Iterable[str] = ()) -> None:
        from . import anthropic, azure, gemini

        self.kind = kind
        self.api = {"anthropic": anthropic, "gemini": gemini, "azure": azure}[kind]
        self.keys = tuple(keys)
        self.models = tuple(models)  # the models (Gemini, Anthropic) or deployments (Azure) served; empty: any
        self.requests: deque[Request] = deque(maxlen=200)
        self.fault_: Fault | None = None
        self.lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", port), self)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
                                       name=f"mock-{kind}")
        self.thread.start()

    def fault(self, **kw: Any) -> None:
        with self.lock:
            self.fault_ = Fault(**kw) if kw else None

    def reset(self) -> None:
        with self.lock:
            self.fault_ = None
            self.requests.clear()

    def take_fault(self) -> Fault | None:
        with self.lock:
            f = self.fault_
            if f is not None and f.count is not None:
                f.count -= 1
                if f.count <= 0:
                    self.fault_ = None
            return f

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> ProviderMock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def serve(kind: str, port: int = 0, keys: Iterable[str] = (), models: Iterable[str] = ()) -> ProviderMock:
    return ProviderMock(kind, port, keys, models)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], mock: ProviderMock) -> None:
        self.mock = mock
        super().__init__(address, _Handler)

    def server_bind(self) -> None:  # no reverse-DNS lookup of the host (HTTPServer.server_bind would)
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client going away mid-answer is normal here


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # headers, then each event, in separate writes: without NODELAY, Nagle + delayed ACK hold them ~40 ms
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _dispatch(self) -> None:
        mock = self.server.mock
        try:
            raw = read_body(self.rfile, self.headers)
        except ValueError:
            self.close_connection = True
            return self._reply(Reply(413, {"detail": "request body too large"}), None)
        path, _, q = self.path.partition("?")
        query = dict(p.partition("=")[::2] for p in q.split("&") if p)
        headers = {k.lower(): v for k, v in self.headers.items()}
        req = Request(self.command, path, query, headers, raw)
        try:
            if path.startswith("/mock/"):
                return self._control(mock, req)
            mock.requests.append(req)
            fault = mock.take_fault()
            if fault is not None and fault.status:
                reply = mock.api.error(fault.status, fault.retry_after)
            else:
                reply = mock.api.handle(mock, req, fault)
            self._reply(reply, fault)
        except OSError:
            self.close_connection = True

    do_GET = do_POST = do_DELETE = _dispatch

    def _control(self, mock: ProviderMock, req: Request) -> None:
        if req.path == "/mock/fault" and req.method == "POST":
            mock.fault(**(req.body or {}))
            return self._reply(Reply(200, {}), None)
        if req.path == "/mock/requests":
            if req.method == "DELETE":
                mock.reset()
            return self._reply(Reply(200, {"requests": [r.to_json() for r in mock.requests]}), None)
        return self._reply(Reply(404, {"detail": "Not Found"}), None)

    def _reply(self, reply: Reply, fault: Fault | None) -> None:
        self.send_response(reply.status)
        self.send_header("content-type", reply.content_type)
        for k, v in reply.headers.items():
            self.send_header(k, v)
        if reply.events is None:
            body = json.dumps(reply.doc).encode()
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            return
        self.send_header("transfer-encoding", "chunked")
        self.send_header("cache-control", "no-cache")
        self.end_headers()
        self.wfile.flush()
        delay = fault.token_delay_ms / 1000 if fault else 0
        for i, ev in enumerate(reply.events):
            if fault is not None and fault.cut_after is not None and i >= fault.cut_after:
                self.close_connection = True  # cut off: the connection closes without the body's last chunk
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if delay and i:
                time.sleep(delay)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(ev), ev))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m e2e.mock_providers")
    ap.add_argument("kind", choices=("anthropic", "gemini", "azure"))
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--key", action="append", default=[])
    args = ap.parse_args()
    mock = serve(args.kind, args.port, args.key)
    print(f"mock {args.kind} on {mock.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        mock.thread.join()
