"""Local demo: echo upstream on 127.0.0.1:18101, Envoy running the showcase on :18000 (admin :19000), 2 workers.

    python -m e2e.demo          print curl lines to try, then run until Ctrl-C / SIGTERM
    python -m e2e.demo --check  send each of those requests once, print the results, exit 0 (all good) or 1
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import socket
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from typing import Any

from e2e import echo
from e2e.envoy import REPO, Envoy

CONFIG = REPO / "plugin/examples/showcase/envoy.yaml"
WASM = REPO / "dist/showcase.wasm"
LISTENER, ADMIN, UPSTREAM = 18000, 19000, 18101  # the ports written in CONFIG
BASE, ADMIN_BASE = f"http://127.0.0.1:{LISTENER}", f"http://127.0.0.1:{ADMIN}"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


# A check returns a one-line summary on success and raises AssertionError (or a JSON/key error) otherwise.
Check = Callable[[Reply], str]


@dataclass(frozen=True)
class Step:
    title: str
    curl: str
    url: str
    check: Check
    body: bytes | None = None


def _header(r: Reply) -> str:
    assert r.status == 200, f"status {r.status}"
    assert r.headers["x-showcase"] == "hello from python", f"x-showcase: {r.headers['x-showcase']!r}"
    return f"200, x-showcase: {r.headers['x-showcase']}, x-showcase-count: {r.headers['x-showcase-count']}"


def _forbidden(r: Reply) -> str:
    assert r.status == 403, f"status {r.status}"
    assert r.json()["error"] == "forbidden", r.body
    return f"403 {r.body.decode()}"


def _redacted(r: Reply) -> str:
    body = r.json()["body"]
    assert r.status == 200 and body == "my ****** password", f"status {r.status}, upstream saw {body!r}"
    return f"upstream saw body {body!r}"


def _callout(r: Reply) -> str:
    status = r.json()["headers"].get("x-callout-status")
    assert r.status == 200 and status == "200", f"status {r.status}, x-callout-status {status!r}"
    return f"upstream saw x-callout-status: {status}"


def _plugin_stats(r: Reply) -> str:
    doc = r.json()
    assert r.status == 200 and doc["requests"] >= 5, f"status {r.status}, {doc}"
    return r.body.decode()


def _admin_stats(r: Reply) -> str:
    text = r.body.decode()
    m = re.search(r"^wasmcustom\.showcase_requests_total: (\d+)$", text, re.M)
    assert r.status == 200 and m and int(m.group(1)) >= 5, f"status {r.status}, stats:\n{text}"
    return "; ".join(line for line in text.splitlines() if line.startswith("wasmcustom."))


# In order: the stats checks count the requests of the steps before them.
STEPS = [
    Step("response header", f"curl -i {BASE}/", f"{BASE}/", _header),
    Step("local 403", f"curl -i {BASE}/forbidden", f"{BASE}/forbidden", _forbidden),
    Step("body redaction", f"curl -s -d 'my secret password' {BASE}/echo", f"{BASE}/echo", _redacted,
         b"my secret password"),
    Step("http callout", f"curl -s {BASE}/callout/x", f"{BASE}/callout/x", _callout),
    Step("plugin stats", f"curl -s {BASE}/showcase/stats", f"{BASE}/showcase/stats", _plugin_stats),
    Step("admin stats", f"curl -s '{ADMIN_BASE}/stats?filter=showcase'", f"{ADMIN_BASE}/stats?filter=showcase",
         _admin_stats),
]


def fetch(url: str, body: bytes | None = None) -> Reply:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=10) as r:
            return Reply(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:  # 4xx/5xx are answers too
        return Reply(e.code, e.headers, e.read())


def check() -> bool:
    ok = True
    for step in STEPS:
        try:
            print(f"ok    {step.title}: {step.check(fetch(step.url, step.body))}")
        except (AssertionError, OSError, ValueError, KeyError) as e:
            ok = False
            print(f"FAIL  {step.title}: {type(e).__name__}: {e}")
    return ok


def busy_ports() -> list[int]:
    """Demo ports something listens on (SO_REUSEADDR as Envoy and the echo server use: TIME_WAIT is no conflict)."""
    busy = []
    for port in (LISTENER, ADMIN, UPSTREAM):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


def wait_for_signal(envoy: Envoy) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1):
        if envoy.proc is not None and envoy.proc.poll() is not None:  # died on its own: say so, don't hang
            print(f"envoy exited with {envoy.proc.returncode}:\n{envoy.log_tail()}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="send each demo request once and exit 0/1")
    args = p.parse_args(argv)
    if not WASM.exists():
        print(f"{WASM.relative_to(REPO)} missing: run ./dev build (python build/pwbuild examples.showcase)",
              file=sys.stderr)
        return 2
    if busy := busy_ports():
        print(f"127.0.0.1 port(s) {busy} already in use (another demo or Envoy?)", file=sys.stderr)
        return 2
    upstream = echo.serve(UPSTREAM)
    envoy = Envoy(CONFIG.read_text(), ADMIN, concurrency=2)
    try:
        envoy.start()
        if args.check:
            return 0 if check() else 1
        print(f"Envoy {BASE} (admin {ADMIN_BASE}, 2 workers) -> echo upstream 127.0.0.1:{UPSTREAM}")
        print(f"Envoy log: {envoy.log_path}\nTry:")
        for step in STEPS:
            print(f"  {step.curl:<72} # {step.title}")
        print("Ctrl-C stops.")
        return wait_for_signal(envoy)
    except RuntimeError as e:  # Envoy did not start; the message holds its log tail
        print(e, file=sys.stderr)
        return 1
    finally:
        envoy.stop()
        shutil.rmtree(envoy.dir, ignore_errors=True)
        upstream.shutdown()
        upstream.server_close()
        print("stopped.")


if __name__ == "__main__":
    sys.exit(main())
