"""Local demos, run from the repo root; Envoy with 2 workers, listener 127.0.0.1:18000, admin 127.0.0.1:19000.

    python -m e2e.demo                    the AI gateway (dist/ai-gateway.wasm, wasm-config/envoy/ai-gateway.yaml)
                                          in front of mock vLLM processes qwen2-1-5b on :18101 and gemma-2-2b on :18102;
                                          prints curl lines to try, then runs until Ctrl-C / SIGTERM
    python -m e2e.demo --check            send each demo request once (and the fallback sequence), print the
                                          results, exit 0 (all good) or 1
    python -m e2e.demo --showcase [--check]   the example plugin (dist/showcase.wasm) in front of an echo upstream
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
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from email.message import Message
from typing import Any

from e2e import echo, mock_vllm
from e2e.envoy import REPO, Envoy

LISTENER, ADMIN, QWEN_PORT, GEMMA_PORT = 18000, 19000, 18101, 18102  # the ports written in both configs
PORTS = (LISTENER, ADMIN, QWEN_PORT, GEMMA_PORT)
BASE, ADMIN_BASE = f"http://127.0.0.1:{LISTENER}", f"http://127.0.0.1:{ADMIN}"
QWEN, GEMMA, CANARY = "qwen2-1-5b", "gemma-2-2b", "chat-canary"
CHAT = f"{BASE}/v1/chat/completions"
CANARY_RUNS = 6


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
    url: str
    check: Check
    body: bytes | None = None
    method: str = ""  # default: POST with a body, else GET
    json: bool = False  # send content-type: application/json
    flags: str = "-s"  # curl flags shown
    grep: str = ""  # shown as `| grep ...` after the curl line
    runs: int = 1  # --check sends it this often (the check sees each reply)

    @property
    def curl(self) -> str:
        parts = ["curl", self.flags]
        if self.method and self.method != ("POST" if self.body is not None else "GET"):
            parts += ["-X", self.method]
        parts.append(self.url.removeprefix("http://"))
        if self.json:
            parts += ["-H", "'content-type: application/json'"]
        if self.body is not None:
            parts += ["-d", f"'{self.body.decode()}'"]
        return " ".join(parts) + (f" | grep {self.grep}" if self.grep else "")


def chat_body(model: str, text: str = "hello", stream: bool = False) -> bytes:
    doc: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        doc["stream"] = True
    return json.dumps(doc, separators=(",", ":")).encode()


# ----------------------------------------------------------------------------------------- AI gateway checks


def _served(model: str, fallback_from: str | None = None) -> Check:
    def check(r: Reply) -> str:
        assert r.status == 200, f"status {r.status}: {r.body[:200]!r}"
        served, fb = r.headers["x-ai-served-model"], r.headers["x-ai-fallback-from"]
        assert (served, fb) == (model, fallback_from), f"x-ai-served-model {served!r}, x-ai-fallback-from {fb!r}"
        doc = r.json()
        assert doc["model"] == model, doc
        extra = f", x-ai-fallback-from: {fb}" if fb else ""
        return f"200, x-ai-served-model: {served}{extra}: {doc['choices'][0]['message']['content']!r}"
    return check


def _stream(r: Reply) -> str:
    events = r.body.decode().split("\n\n")
    assert r.status == 200 and events[-2:] == ["data: [DONE]", ""], f"status {r.status}: {r.body[:200]!r}"
    docs = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    text = "".join(d["choices"][0]["delta"].get("content", "") for d in docs)
    return f"200, {len(docs)} events + [DONE]: {text!r}"


def _canary(r: Reply) -> str:
    served = r.headers["x-ai-served-model"]
    assert r.status == 200 and served in (QWEN, GEMMA) and r.json()["model"] == served, f"{r.status} {served!r}"
    return f"200, x-ai-served-model: {served}"


def _mock(r: Reply) -> str:
    assert r.status == 200, f"status {r.status}: {r.body!r}"
    return f"mock fault now {r.json()['fault']}"


def _models(r: Reply) -> str:
    ids = [m["id"] for m in r.json()["data"]]
    assert r.status == 200 and ids == [QWEN, GEMMA, CANARY], f"status {r.status}, {ids}"
    return f"200, {ids}"


def _unknown(r: Reply) -> str:
    err = r.json()["error"]
    assert r.status == 404 and err["code"] == "model_not_found", f"status {r.status}, {err}"
    return f"404 {r.body.decode()}"


def _metrics(r: Reply) -> str:
    lines = re.findall(r"^route_upstream_model_consumer_metric_(request_total|fallback_total)\{(.*)\} (\d+)$",
                       r.body.decode(), re.M)
    requests = sum(int(n) for name, _, n in lines if name == "request_total")
    fallbacks = sum(int(n) for name, _, n in lines if name == "fallback_total")
    # the requests of the steps before (a fresh demo): chat, stream, the canary runs, fallback, again
    assert r.status == 200 and (requests, fallbacks) == (4 + CANARY_RUNS, 1), f"{r.status}, {lines}"
    return f"request_total {requests}, fallback_total {fallbacks} (summed over labels)"


STEPS = [  # in order: the fallback sequence and the metrics need the steps before them
    Step(f"chat to {QWEN}", CHAT, _served(QWEN), chat_body(QWEN), json=True, flags="-si"),
    Step("streaming chat", CHAT, _stream, chat_body(QWEN, "tell me a story", stream=True), json=True, flags="-sN"),
    Step(f"alias {CANARY} 50/50 (run it a few times)", CHAT, _canary, chat_body(CANARY), json=True, flags="-si",
         grep="-i x-ai-served-model", runs=CANARY_RUNS),
    Step(f"break {QWEN}: its mock answers 503", f"http://127.0.0.1:{QWEN_PORT}/mock/fault", _mock,
         b'{"status":503}', method="POST"),
    Step(f"fallback: {QWEN} request answered by {GEMMA}", CHAT, _served(GEMMA, QWEN), chat_body(QWEN), json=True,
         flags="-si"),
    Step(f"heal {QWEN}", f"http://127.0.0.1:{QWEN_PORT}/mock/fault", _mock, method="DELETE"),
    Step(f"{QWEN} again", CHAT, _served(QWEN), chat_body(QWEN), json=True, flags="-si"),
    Step("models from the gateway config", f"{BASE}/v1/models", _models),
    Step("error: unknown model", CHAT, _unknown, chat_body("gpt-5"), json=True, flags="-si"),
    Step("metrics", f"{ADMIN_BASE}/stats/prometheus", _metrics, grep="route_upstream_model_consumer_metric"),
]


# ------------------------------------------------------------------------------------------ showcase checks


def _header(r: Reply) -> str:
    assert r.status == 200, f"status {r.status}"
    assert r.headers["x-showcase"] == "hello from python", f"x-showcase: {r.headers['x-showcase']!r}"
    return f"200, x-showcase: {r.headers['x-showcase']}, x-showcase-count: {r.headers['x-showcase-count']}"


def _forbidden(r: Reply) -> str:
    assert r.status == 403 and r.json()["error"] == "forbidden", f"status {r.status}, {r.body!r}"
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


SHOWCASE_STEPS = [  # in order: the stats checks count the requests of the steps before them
    Step("response header", f"{BASE}/", _header, flags="-i"),
    Step("local 403", f"{BASE}/forbidden", _forbidden, flags="-i"),
    Step("body redaction", f"{BASE}/echo", _redacted, b"my secret password"),
    Step("http callout", f"{BASE}/callout/x", _callout),
    Step("plugin stats", f"{BASE}/showcase/stats", _plugin_stats),
    Step("admin stats", f"{ADMIN_BASE}/stats?filter=showcase", _admin_stats),
]


# ------------------------------------------------------------------------------------------------ running


def fetch(step: Step) -> Reply:
    headers = {"content-type": "application/json"} if step.json else {}
    req = urllib.request.Request(step.url, data=step.body, headers=headers, method=step.method or None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return Reply(r.status, r.headers, r.read())
    except urllib.error.HTTPError as e:  # 4xx/5xx are answers too
        return Reply(e.code, e.headers, e.read())


def check(steps: list[Step]) -> bool:
    ok = True
    for step in steps:
        try:
            results = Counter(step.check(fetch(step)) for _ in range(step.runs))
            summary = "; ".join(f"{r} (x{n})" if step.runs > 1 else r for r, n in sorted(results.items()))
            print(f"ok    {step.title}: {summary}")
        except (AssertionError, OSError, ValueError, KeyError) as e:
            ok = False
            print(f"FAIL  {step.title}: {type(e).__name__}: {e}")
    return ok


def busy_ports(ports: tuple[int, ...] = PORTS) -> list[int]:
    """Demo ports something listens on (SO_REUSEADDR as Envoy and the mocks use: TIME_WAIT is no conflict)."""
    busy = []
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


@contextmanager
def upstreams(showcase: bool) -> Iterator[str]:
    """Start the demo's upstream servers; yields a one-line description."""
    with ExitStack() as stack:
        if showcase:
            server = echo.serve(QWEN_PORT)
            stack.callback(server.server_close)
            stack.callback(server.shutdown)
            yield f"echo upstream 127.0.0.1:{QWEN_PORT}"
            return
        for model, port in ((QWEN, QWEN_PORT), (GEMMA, GEMMA_PORT)):
            stack.callback(mock_vllm.spawn(model, port).stop)
        yield f"mock vLLM {QWEN} 127.0.0.1:{QWEN_PORT}, {GEMMA} 127.0.0.1:{GEMMA_PORT}"


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
    p.add_argument("--showcase", action="store_true", help="the example plugin instead of the AI gateway")
    args = p.parse_args(argv)
    if args.showcase:
        config, wasm, entry, steps = (REPO / "plugin/examples/showcase/envoy.yaml", REPO / "dist/showcase.wasm",
                                      "examples.showcase", SHOWCASE_STEPS)
    else:
        config, wasm, entry, steps = (REPO / "wasm-config/envoy/ai-gateway.yaml", REPO / "dist/ai-gateway.wasm",
                                      "ai_gateway", STEPS)
    if not wasm.exists():
        print(f"{wasm.relative_to(REPO)} missing: run python build/pwbuild {entry}", file=sys.stderr)
        return 2
    if busy := busy_ports():
        print(f"127.0.0.1 port(s) {busy} already in use (another demo or Envoy?)", file=sys.stderr)
        return 2
    envoy = Envoy(config.read_text(), ADMIN, concurrency=2)
    try:
        with upstreams(args.showcase) as described:
            envoy.start()
            if args.check:
                return 0 if check(steps) else 1
            print(f"Envoy {BASE} (admin {ADMIN_BASE}, 2 workers, {config.relative_to(REPO)}) -> {described}")
            print(f"Envoy log: {envoy.log_path}\nTry:")
            for step in steps:
                print(f"  # {step.title}\n  {step.curl}")
            print("Ctrl-C stops.")
            return wait_for_signal(envoy)
    except RuntimeError as e:  # Envoy or a mock did not start; the message says why
        print(e, file=sys.stderr)
        return 1
    finally:
        envoy.stop()
        shutil.rmtree(envoy.dir, ignore_errors=True)
        print("stopped.")


if __name__ == "__main__":
    sys.exit(main())
