"""The showcase plugin in a real Envoy (concurrency 2), one behaviour per test, over real HTTP and the admin API."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import pytest

from e2e.client import Reply, request, wait_for
from e2e.conftest import Stack
from e2e.demo import busy_ports
from e2e.envoy import REPO, free_port

Launch = Callable[..., AbstractContextManager[Stack]]
HEADER = "hello from python"


def send(port: int, path: str, method: str = "GET", body: bytes | Iterable[bytes] | None = None,
         headers: dict[str, str] | None = None) -> Reply:
    return request(port, path, method, body, headers)


def stat(stack: Stack, name: str) -> int:
    # wasmcustom stats only exist once the plugin first touches them
    return stack.envoy.stats(re.escape(name)).get(name, 0)


def test_response_header_added(showcase: Stack) -> None:
    r = send(showcase.port, "/hello")
    assert r.status == 200
    assert r.headers.get("x-showcase") == HEADER
    assert r.headers.get("x-showcase-count", "").isdigit()
    assert r.echoed()["path"] == "/hello"  # it really went through to the upstream


def test_body_redacted(showcase: Stack) -> None:
    r = send(showcase.port, "/redact", "POST", b"my secret is secret, not public")
    assert r.status == 200
    assert r.echoed()["body"] == "my ****** is ******, not public"


def test_chunked_body_redacted_across_chunks(showcase: Stack) -> None:
    probe = f"/redact-chunked/{uuid.uuid4().hex}"

    def chunks() -> Iterator[bytes]:
        # Pauses make Envoy see separate body frames; "secret" straddles the first two and the last two.
        for part in (b"top sec", b"ret and more se", b"cret!"):
            yield part
            time.sleep(0.1)

    r = send(showcase.port, probe, "POST", chunks(), {"Transfer-Encoding": "chunked"})
    assert r.status == 200
    assert r.echoed()["body"] == "top ****** and more ******!"
    assert [s.body for s in showcase.upstream.requests() if s.path == probe] == [b"top ****** and more ******!"]


def test_forbidden_is_local_403(showcase: Stack) -> None:
    probe = uuid.uuid4().hex
    r = send(showcase.port, f"/forbidden?probe={probe}")
    control = send(showcase.port, f"/allowed?probe={probe}")
    assert r.status == 403
    assert r.headers.get("content-type") == "application/json"
    assert r.json() == {"error": "forbidden", "path": "/forbidden"}
    assert r.headers.get("x-showcase") == HEADER  # response headers run on local replies too
    assert control.status == 200
    seen = [p for p in showcase.upstream.paths() if probe in p]
    assert seen == [f"/allowed?probe={probe}"], "the denied request must never reach the upstream"


def test_callout_status_passed_upstream(showcase: Stack) -> None:
    auth_before = showcase.upstream.paths().count("/auth")
    r = send(showcase.port, "/callout/x")
    plain = send(showcase.port, "/no-callout")
    headers = r.echoed()["headers"]
    assert r.status == 200
    assert headers.get("x-callout-status") == "200"
    assert int(headers.get("x-callout-body-bytes", "0")) > 0  # the echo's JSON answer to /auth
    assert showcase.upstream.paths().count("/auth") == auth_before + 1
    assert "x-callout-status" not in plain.echoed()["headers"]


def _auth_cluster(port: int) -> dict[str, str]:
    """Config edits pointing the callout at its own cluster ``authsvc`` on 127.0.0.1:``port``."""
    cluster = f"""  clusters:
  - name: authsvc
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: authsvc
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""
    return {'{"cluster": "backend"': '{"cluster": "authsvc"', "  clusters:\n": cluster}


@dataclass(frozen=True)
class AuthDown:
    stack: Stack
    auth_port: int  # nothing listens here unless a test binds it


@pytest.fixture(scope="module")
def auth_down(launch: Launch) -> Iterator[AuthDown]:
    port = free_port()
    with launch(replace=_auth_cluster(port)) as stack:
        yield AuthDown(stack, port)


@contextmanager
def truncating_server(port: int, max_conns: int = 5) -> Iterator[None]:
    """Answers headers promising 100 bytes, sends 3 and closes: Envoy resets the callout after its headers."""
    srv = socket.create_server(("127.0.0.1", port))
    srv.settimeout(0.2)
    stop = threading.Event()

    def run() -> None:
        for _ in range(max_conns):
            while not stop.is_set():
                try:
                    conn, _addr = srv.accept()
                    break
                except TimeoutError:
                    continue
            else:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    part = conn.recv(65536)
                    if not part:
                        break
                    data += part
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(5)
        srv.close()


def test_callout_to_closed_port_passes_envoy_503(auth_down: AuthDown) -> None:
    # Envoy answers a callout it cannot connect with its own 503 reply, which the plugin sees as a normal
    # response (status != 0): it passes 503 on to the upstream rather than failing the request.
    r = send(auth_down.stack.port, "/callout/closed")
    assert r.status == 200
    headers = r.echoed()["headers"]
    assert headers.get("x-callout-status") == "503"
    assert int(headers.get("x-callout-body-bytes", "0")) > 0  # "upstream connect error ..."


def test_callout_failure_is_local_503(auth_down: AuthDown) -> None:
    # A callout reset after its headers reaches the plugin as a failure (status 0) -> local 503.
    probe = f"/callout/reset/{uuid.uuid4().hex}"
    with truncating_server(auth_down.auth_port):
        r = send(auth_down.stack.port, probe)
    assert r.status == 503
    assert r.json() == {"error": "callout failed"}
    assert probe not in auth_down.stack.upstream.paths()


def test_shared_counter_across_workers(showcase: Stack) -> None:
    n = 40
    workers = re.escape(f"listener.127.0.0.1_{showcase.port}.worker_") + r"\d+\.downstream_cx_total"
    cx_before = showcase.envoy.stats(workers)
    start = send(showcase.port, "/showcase/stats").json()["requests"]

    def one(i: int) -> int:
        r = send(showcase.port, f"/count/{i}")
        assert r.status == 200, r
        return int(r.headers["x-showcase-count"])

    with ThreadPoolExecutor(max_workers=8) as pool:  # concurrent, so the CAS loop really races
        counts = list(pool.map(one, range(n)))
    after = send(showcase.port, "/showcase/stats").json()["requests"]
    assert sorted(counts) == list(range(start + 1, start + n + 1)), "duplicate or missing counter values"
    assert after == start + n + 1
    cx_after = showcase.envoy.stats(workers)
    served = {k: cx_after[k] - cx_before.get(k, 0) for k in cx_after}
    print(f"connections per worker: {served}")
    assert len(served) == 2 and all(v > 0 for v in served.values()), f"both workers must serve requests: {served}"


def test_metrics_counters(showcase: Stack) -> None:
    names = ["wasmcustom.showcase_requests_total", "wasmcustom.showcase_denied_total"]
    before = [stat(showcase, name) for name in names]
    hist_before = _histogram(showcase)
    sizes = [10, 20, 30]
    for i in range(7):
        assert send(showcase.port, f"/metrics/{i}").status == 200
    for _ in range(3):
        assert send(showcase.port, "/forbidden").status == 403
    for size in sizes:
        assert send(showcase.port, "/metrics/body", "POST", b"x" * size).status == 200
    after = [stat(showcase, name) for name in names]
    assert [a - b for a, b in zip(after, before, strict=True)] == [7 + 3 + len(sizes), 3]
    # The histogram reaches the admin API at the next stats flush (0.25 s in the rendered config).
    assert wait_for(lambda: _histogram(showcase)[0] >= hist_before[0] + len(sizes))
    count, total = _histogram(showcase)
    assert count - hist_before[0] == len(sizes)
    assert abs((total - hist_before[1]) - sum(sizes)) <= 0.1 * sum(sizes)  # Envoy's sum is approximate


def _histogram(stack: Stack) -> tuple[int, float]:
    """(count, sum) of the body-size histogram from the Prometheus endpoint (prefix ``wasmcustom.`` dropped)."""
    text = stack.envoy.prometheus()
    count = re.search(r"^showcase_request_body_bytes_count\{\} (\S+)$", text, re.M)
    total = re.search(r"^showcase_request_body_bytes_sum\{\} (\S+)$", text, re.M)
    return (int(count.group(1)) if count else 0), (float(total.group(1)) if total else 0.0)


def test_ticks_gauge_grows(showcase: Stack) -> None:
    first = stat(showcase, "wasmcustom.showcase_ticks")
    assert wait_for(lambda: stat(showcase, "wasmcustom.showcase_ticks") > first, timeout=3)  # ticks every 500 ms
    doc = send(showcase.port, "/showcase/stats").json()
    assert doc["ticks"] > 0
    assert abs(doc["last_tick_ns"] - time.time_ns()) < 5e9  # a recent wall-clock time from on_tick


def test_bad_plugin_config_fails_startup(launch: Launch) -> None:
    bad = {'"prefix": "/callout"}': '"prefix": "/callout", "timeout_ms": 0}'}
    with pytest.raises(RuntimeError) as err, launch(replace=bad):
        pass
    assert "invalid plugin configuration: callout.timeout_ms: must be between 1 and 60000, got 0" in str(err.value)


def test_startup_log_per_vm(showcase: Stack) -> None:
    pattern = re.compile(r"^\[[^]]*\]\[(\d+)\].*python: ready in ([\d.]+) ms, linear memory (\d+) KiB", re.M)
    # main thread + one VM per worker; the log file is flushed every 100 ms
    assert wait_for(lambda: len({m[0] for m in pattern.findall(showcase.envoy.log_text())}) >= 3)
    found = pattern.findall(showcase.envoy.log_text())
    print("python: ready in (ms) per VM, by Envoy thread:", [(int(t), float(ms), f"{kib} KiB") for t, ms, kib in found])
    assert all(float(ms) < 10_000 for _, ms, _ in found)


def test_demo_check(showcase_wasm: object) -> None:
    if busy := busy_ports():
        pytest.fail(f"cannot run `python -m e2e.demo --showcase --check`: 127.0.0.1 port(s) {busy} in use "
                    "(a running demo or Envoy?); stop it and rerun", pytrace=False)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(REPO / p) for p in ("plugin", "build", ".")))
    r = subprocess.run([sys.executable, "-m", "e2e.demo", "--showcase", "--check"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    print(r.stdout)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
