"""Check a running AI gateway end to end with the openai client: routing, models list, alias split, streaming,
fallback and metrics. Used by run.sh against Higress on kind, and by test_kind.py against the local Envoy.

    python -m e2e.kind.check --url http://127.0.0.1:18080 --admin http://127.0.0.1:19080 \
        --qwen-control http://127.0.0.1:18181 [--wait 180]

Expects the demo's models: qwen2-1-5b (falls back to gemma-2-2b), gemma-2-2b and the 50/50 alias chat-canary,
served by mock vLLM servers (``--qwen-control`` reaches qwen's for fault injection). ``--admin`` is the gateway
Envoy's admin (``/stats``). Prints one line per check; exits 1 if any fails.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

from openai import OpenAI

QWEN, GEMMA, CANARY = "qwen2-1-5b", "gemma-2-2b", "chat-canary"
HELLO = [{"role": "user", "content": "hello there"}]
STAT = re.compile(r"^wasmcustom\.route\..*?\.upstream\..*?\.model\.(.+?)\.consumer\..*?\.metric\.(\w+)$")


def http(method: str, url: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data, {"content-type": "application/json"} if data else {}, method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    return json.loads(text) if text.startswith(("{", "[")) else text


class Gateway:
    def __init__(self, url: str, admin: str, qwen_control: str) -> None:
        self.client = OpenAI(base_url=f"{url}/v1", api_key="sk-e2e", max_retries=0, timeout=30)
        self.admin, self.qwen_control = admin, qwen_control

    def chat(self, model: str, messages: list[dict[str, str]] = HELLO, **kw: Any) -> tuple[Any, Any]:
        raw = self.client.chat.completions.with_raw_response.create(model=model, messages=messages, **kw)
        return raw, raw.parse()

    def counters(self) -> Counter[tuple[str, str]]:
        """(model, metric) -> the plugin's counter values summed over routes, clusters and consumers."""
        stats = http("GET", f"{self.admin}/stats?format=json&filter=wasmcustom")["stats"]
        out: Counter[tuple[str, str]] = Counter()
        for s in stats:
            if "value" in s and (m := STAT.match(s["name"])):
                out[(m[1], m[2])] += int(s["value"])
        return out


def wait_ready(gw: Gateway, timeout: float) -> None:
    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        try:
            raw, _ = gw.chat(QWEN)
            if raw.headers.get("x-ai-served-model") == QWEN:
                return
            last = f"answered without x-ai-served-model (plugin not loaded yet?): {dict(raw.headers)}"
        except Exception as e:
            last = repr(e)
        time.sleep(2)
    raise AssertionError(f"gateway not routing by model after {timeout:.0f}s: {last}")


def check_routing(gw: Gateway) -> None:
    for model in (QWEN, GEMMA):
        raw, r = gw.chat(model)
        assert raw.headers.get("x-ai-served-model") == model, dict(raw.headers)
        assert r.model == model and r.choices[0].message.content == f"[{model}] echo: hello there", r


def check_models_list(gw: Gateway) -> None:
    ids = {m.id for m in gw.client.models.list()}
    assert ids == {QWEN, GEMMA, CANARY}, ids


def check_alias_split(gw: Gateway) -> None:
    served: Counter[str] = Counter()
    for i in range(40):
        raw, r = gw.chat(CANARY, [{"role": "user", "content": f"canary {i}"}])
        target = raw.headers.get("x-ai-served-model")
        assert r.model == target and r.choices[0].message.content == f"[{target}] echo: canary {i}", r
        served[target] += 1
    assert set(served) == {QWEN, GEMMA} and min(served.values()) >= 8, served


def check_streaming(gw: Gateway) -> None:
    raw = gw.client.chat.completions.with_raw_response.create(model=GEMMA, messages=HELLO, stream=True)
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert raw.headers.get("x-ai-served-model") == GEMMA and text == "[gemma-2-2b] echo: hello there", text
    assert {c.model for c in chunks} == {GEMMA}


def check_fallback(gw: Gateway) -> None:
    http("POST", f"{gw.qwen_control}/mock/fault", {"status": 503, "fail_count": 1})
    try:
        raw, r = gw.chat(QWEN)
    finally:
        http("DELETE", f"{gw.qwen_control}/mock/fault")
    assert raw.headers.get("x-ai-fallback-from") == QWEN, dict(raw.headers)
    assert raw.headers.get("x-ai-served-model") == GEMMA and r.choices[0].message.content == f"[{GEMMA}] echo: hello there"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.kind.check", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="gateway base URL")
    p.add_argument("--admin", required=True, help="the gateway Envoy's admin URL")
    p.add_argument("--qwen-control", required=True, help="qwen2-1-5b mock's base URL (fault injection)")
    p.add_argument("--wait", type=float, default=0, help="seconds to wait for the plugin to route")
    args = p.parse_args(argv)
    gw = Gateway(args.url, args.admin, args.qwen_control)
    checks: list[tuple[str, Callable[[Gateway], None]]] = [
        ("routing by model", check_routing), ("GET /v1/models", check_models_list),
        ("chat-canary splits 50/50", check_alias_split), ("streaming", check_streaming),
        ("fallback qwen2-1-5b -> gemma-2-2b on 503", check_fallback)]
    failed = 0
    try:
        wait_ready(gw, args.wait)
        before = gw.counters()
    except Exception as e:
        print(f"FAIL gateway ready: {e}")
        return 1
    for name, check in checks:
        try:
            check(gw)
            print(f"PASS {name}", flush=True)
        except Exception as e:
            failed += 1
            print(f"FAIL {name}: {e!r}", flush=True)
    delta = gw.counters() - before
    want = {(QWEN, "request_total"): 2, (GEMMA, "request_total"): 3, (GEMMA, "input_token"): 1,
            (GEMMA, "output_token"): 1, (GEMMA, "fallback_total"): 1}
    short = {k: f"{delta[k]} < {n}" for k, n in want.items() if delta[k] < n}
    failed += bool(short)
    print(f"{'FAIL' if short else 'PASS'} metrics{': ' + str(short) if short else ''}")
    print(f"{len(checks) + 1 - failed}/{len(checks) + 1} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
