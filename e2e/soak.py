"""Helpers of e2e/test_soak.py: the AI gateway under a long mixed load while its backends fail.

Three mock vLLM processes behind Envoy (2 workers), every model falling back to the other two (SEQ):

* ``qwen2-1-5b`` — FLAKY: a persistent ``status`` fault (500/502/503), switched on and off by a background thread;
* ``gemma-2-2b`` — SLOW: now and then its next request (``fail_count: 1``) waits ``SLOW_DELAY_MS`` before answering,
  beyond the 1 s route timeout, so Envoy gives up and answers 504 itself;
* ``llama-3``    — KILLED: SIGKILLed twice during the run and restarted on the same port.

``python -m e2e.soak --kill-storm 80 [--no-drain]`` measures how often a kill lands inside a response the gateway
is already forwarding (the case no gateway can rescue): see ``Chaos`` and ``kill_storm``.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from openai import APIStatusError, OpenAI

from e2e.ai_stack import GEMMA, QWEN, AiStack, Labels, Mock, parse_metrics, plugin_config, running_ai_stack, send
from e2e.mock_vllm import DEFAULT_MAX_TOKENS

LLAMA = "llama-3"
ALIAS = "chat-pool"
FLAKY, SLOW, KILLED = QWEN, GEMMA, LLAMA
MODELS = (QWEN, GEMMA, LLAMA)
# SEQ fallback orders; why no request can run out of attempts: see Chaos.
FALLBACKS = {QWEN: [LLAMA, GEMMA], GEMMA: [QWEN, LLAMA], LLAMA: [QWEN, GEMMA]}
ALIAS_TARGETS = {QWEN: 40, GEMMA: 30, LLAMA: 30}
ROUTE_TIMEOUT = "1s"
SLOW_DELAY_MS = 1400  # > the route timeout
FALLBACK_BUDGET_MS = 10_000
Usage = tuple[int, int, int]  # prompt, completion, total

CLUSTERS_LINE = "  clusters:\n"
CLUSTER = """  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""


def gateway_config() -> dict[str, Any]:
    return {
        "fallback": {"on_status": ["5xx"], "mode": "SEQ", "max_attempts": 3, "timeout_ms": FALLBACK_BUDGET_MS},
        "models": [{"name": m, "cluster": m, "fallback": {"models": FALLBACKS[m]}} for m in MODELS],
        "aliases": [{"name": ALIAS, "targets": [{"model": m, "weight": w} for m, w in ALIAS_TARGETS.items()]}],
        "consumer_header": "x-mse-consumer",  # the soak's clients name themselves (no authentication in front)
    }


@dataclass
class SoakStack:
    stack: AiStack
    mocks: dict[str, Mock]  # all three, by model

    @property
    def url(self) -> str:
        return self.stack.url

    def envoy_stat(self, name: str) -> int:
        return self.stack.envoy.stats(name).get(name, 0)

    def metrics(self) -> dict[str, dict[Labels, float]]:
        return parse_metrics(self.stack.envoy.prometheus())


@contextmanager
def running_soak_stack() -> Iterator[SoakStack]:
    """The shipped Envoy config (2 workers) with a third cluster for llama-3 (its own mock process), the soak's
    plugin config and a 1 s route timeout."""
    llama = Mock(LLAMA)
    try:
        replace = {**plugin_config(gateway_config()),
                   CLUSTERS_LINE: CLUSTERS_LINE + CLUSTER.format(name=LLAMA, port=llama.port)}
        with running_ai_stack(replace=replace, route_timeout=ROUTE_TIMEOUT) as stack:
            yield SoakStack(stack, {**stack.mocks, LLAMA: llama})
    finally:
        llama.stop()


# ------------------------------------------------------------------------------------------------- traffic


@dataclass(frozen=True)
class Spec:
    """One planned client request."""

    i: int
    model: str  # as sent: a model or the alias
    chat: bool  # /v1/chat/completions, else /v1/completions
    stream: bool  # always with stream_options.include_usage: the client receives its usage
    text: str  # the user message (chat) or the prompt
    max_tokens: int | None
    consumer: str  # x-mse-consumer: one metrics label per client thread slot

    @property
    def test_id(self) -> str:
        return f"soak-{self.i}"


WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()


def plan(n: int, seed: int, model_weights: dict[str, int], stream_share: float = 0.5, chat_share: float = 0.75,
         consumers: int = 4) -> list[Spec]:
    rng = random.Random(seed)
    names, weights = list(model_weights), list(model_weights.values())
    out = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))) + f" n{i}"
        out.append(Spec(i, rng.choices(names, weights)[0], rng.random() < chat_share, rng.random() < stream_share,
                        text, rng.choice([None, None, 3, 5, 8, 12, 20]), f"soak-{i % consumers}"))
    return out


def expected(served: str, spec: Spec) -> tuple[str, Usage, str]:
    """(text, usage, finish_reason) by e2e/mock_vllm's documented rule, for ``served`` answering ``spec``."""
    words = f"[{served}] echo: {spec.text}".split()
    limit = spec.max_tokens or DEFAULT_MAX_TOKENS
    tokens = [w if i == 0 else " " + w for i, w in enumerate(words)][:limit]
    prompt = len(spec.text.split()) + (1 if spec.chat else 0)
    return "".join(tokens), (prompt, len(tokens), prompt + len(tokens)), "length" if len(words) > limit else "stop"


@dataclass
class Result:
    spec: Spec
    t0: float  # monotonic: request sent
    t1: float = 0.0  # answer complete (or failed)
    status: int = 0
    served: str | None = None  # x-ai-served-model (None: no response headers seen)
    fallback_from: str | None = None  # x-ai-fallback-from
    usage: Usage | None = None  # as received by the client
    error: str | None = None  # None: complete and exactly as expected

    @property
    def labels(self) -> Labels:
        """The metrics labels the gateway should have used: (ai_route, ai_cluster, ai_model, ai_consumer)."""
        assert self.served
        return ("by_model", self.served, self.served, self.spec.consumer)


def _usage(u: Any) -> Usage | None:
    return None if u is None else (u.prompt_tokens, u.completion_tokens, u.total_tokens)


def call(client: OpenAI, spec: Spec) -> Result:
    """Send one request with the official client and check every part of the answer; never raises."""
    res = Result(spec, time.monotonic())
    kw: dict[str, Any] = {"model": spec.model, "stream": spec.stream,
                          "extra_headers": {"x-mse-consumer": spec.consumer, "x-test-id": spec.test_id}}
    kw.update({"messages": [{"role": "user", "content": spec.text}]} if spec.chat else {"prompt": spec.text})
    if spec.max_tokens:
        kw["max_tokens"] = spec.max_tokens
    if spec.stream:
        kw["stream_options"] = {"include_usage": True}
    api: Any = client.chat.completions if spec.chat else client.completions
    try:
        raw = api.with_raw_response.create(**kw)
        res.status = raw.http_response.status_code
        res.served = raw.headers.get("x-ai-served-model")
        res.fallback_from = raw.headers.get("x-ai-fallback-from")
        res.error = _check_stream(res, raw) if spec.stream else _check_plain(res, raw)
    except APIStatusError as e:
        res.status = e.status_code
        res.served = e.response.headers.get("x-ai-served-model")
        res.error = f"HTTP {e.status_code} {dict(e.response.headers)}: {e.response.text[:300]!r}"
    except Exception as e:  # a broken connection or stream, an unparsable answer: all of them are failures
        cause = e.__cause__ or e.__context__
        res.error = f"{type(e).__name__}: {e}" + (f" (from {type(cause).__name__}: {cause})" if cause else "")
    res.t1 = time.monotonic()
    return res


def _check_route(res: Result) -> str | None:
    spec = res.spec
    if res.status != 200:
        return f"status {res.status}"
    if res.served not in MODELS:
        return f"x-ai-served-model {res.served!r}"
    if spec.model in MODELS:  # served by the model itself, or by one of its fallbacks (and then the header says so)
        if res.served == spec.model and res.fallback_from is None:
            return None
        if res.fallback_from == spec.model and res.served in FALLBACKS[spec.model]:
            return None
    elif res.fallback_from is None or res.served in FALLBACKS.get(res.fallback_from, ()):  # the alias: any target
        return None
    return f"{spec.model} served by {res.served} with x-ai-fallback-from {res.fallback_from!r}"


def _check_plain(res: Result, raw: Any) -> str | None:
    r = raw.parse()
    res.usage = _usage(r.usage)
    if err := _check_route(res):
        return err
    assert res.served
    text, usage, finish = expected(res.served, res.spec)
    choice = r.choices[0]
    got = (r.model, choice.message.content if res.spec.chat else choice.text, choice.finish_reason, res.usage)
    want = (res.served, text, finish, usage)
    return None if got == want else f"answer {got} != {want}"


def _check_stream(res: Result, raw: Any) -> str | None:
    if not raw.headers.get("content-type", "").startswith("text/event-stream"):
        return f"content-type {raw.headers.get('content-type')!r}"
    chunks = list(raw.parse())  # raises if the stream breaks
    usage_chunks = [c for c in chunks if not c.choices and c.usage is not None]
    res.usage = _usage(usage_chunks[-1].usage) if usage_chunks else None
    if err := _check_route(res):
        return err
    assert res.served
    text, usage, finish = expected(res.served, res.spec)
    deltas = [c for c in chunks if c.choices]
    content = "".join((c.choices[0].delta.content or "") if res.spec.chat else c.choices[0].text for c in deltas)
    usage_last = bool(usage_chunks) and chunks[-1] is usage_chunks[-1]
    got = (content, deltas[-1].choices[0].finish_reason if deltas else None, {c.model for c in chunks},
           len(usage_chunks), usage_last, res.usage)
    want = (text, finish, {res.served}, 1, True, usage)
    return None if got == want else f"stream (text, finish, models, usage chunks, usage last, usage) {got} != {want}"


def run_clients(url: str, specs: list[Spec], threads: int, on_result: Callable[[Result], None] | None = None,
                timeout: float = 30, max_rate: float = 0) -> list[Result]:
    """Send ``specs`` from ``threads`` threads (one OpenAI client each, no retries); results in spec order.

    With ``max_rate`` the n-th request starts no earlier than n / max_rate seconds after the first: a run then
    lasts at least len(specs) / max_rate seconds however fast the gateway is, so faults scheduled by progress
    still land while clients are running."""
    results: list[Result | None] = [None] * len(specs)
    order = iter(enumerate(specs))
    lock = threading.Lock()
    start = time.monotonic()

    def worker() -> None:
        client = OpenAI(base_url=f"{url}/v1", api_key="sk-soak", max_retries=0, timeout=timeout)
        while True:
            with lock:
                n, spec = next(order, (0, None))
            if spec is None:
                return
            if max_rate:
                time.sleep(max(0.0, start + n / max_rate - time.monotonic()))
            res = call(client, spec)
            results[spec.i] = res
            if on_result:
                on_result(res)

    pool = [threading.Thread(target=worker, name=f"soak-client-{k}", daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------- chaos


def clear_fault(m: Mock) -> None:
    assert send(f"{m.url}/mock/fault", "DELETE").status == 200


def busy(m: Mock) -> int:
    """Completion requests the mock holds right now (generating/delaying, or queued for a slot)."""
    text = send(f"{m.url}/metrics").body.decode()
    return int(sum(float(v) for v in re.findall(r"^vllm:num_requests_(?:running|waiting)\{[^}]*\} (\S+)$", text, re.M)))


def drain_then_kill(m: Mock, drain: bool = True, quiet_polls: int = 3) -> int:
    """SIGKILL the mock's process (returns its pid); with ``drain``, first make it close every new completion
    request without an answer (the ``drop`` fault) and wait until it holds none (``quiet_polls`` readings in a row,
    10 ms apart), so that the kill cannot land inside an answer already on its way to a client."""
    if drain:
        m.fault(drop=True)
        quiet, deadline = 0, time.monotonic() + 5
        while quiet < quiet_polls and time.monotonic() < deadline:
            quiet = quiet + 1 if busy(m) == 0 else 0
            time.sleep(0.01)
    pid = m.proc.pid
    m.proc.kill()  # SIGKILL: no goodbye; the kernel closes its sockets (idle keep-alive ones in Envoy's pool too)
    m.proc.stop()  # reap
    return pid


@dataclass
class Chaos:
    """Fault injection while the clients run: ``start()``, then ``stop()``.

    * FLAKY (qwen) answers 5xx in random windows (a persistent ``status`` fault, on ~30% of the time), all run long.
    * SLOW (gemma): every 0.5-1.1 s its next completion request waits SLOW_DELAY_MS (> the 1 s route timeout).
    * KILLED (llama) is SIGKILLed when the clients have finished each share in ``kill_at`` of their requests, stays
      down ``down_s`` and is restarted on the same port.

    Why zero failed requests is possible at all: a request fails only if all its attempts fail, so no model may
    have all its attempts fail at once. FLAKY can fail at any time and KILLED is down for seconds; gemma's attempts
    are gemma -> qwen -> llama, so a slow gemma request must never meet a dead llama. SLOW is therefore paused before
    each kill, the kill waits until every slow request has timed out and been answered by a fallback (delay + 0.5 s),
    and SLOW resumes once llama is up again. Then qwen -> llama -> gemma ends at a gemma that is not slow while llama
    is down, gemma -> qwen -> llama ends at a live llama, and llama -> qwen -> gemma like qwen's.

    Why the kill drains first (``drain``; see ``drain_then_kill``): a kill that lands after a response's first
    bytes went to the client breaks that response, and no gateway can retry it (README: a stream broken after its
    first bytes cannot be retried transparently). That is not only streams: the mock writes a plain answer's headers
    and body in two writes, with the GIL in between under load, and Envoy forwards the headers at once. Measured on
    the 2-core box (``python -m e2e.soak --kill-storm 100 --no-drain``, 60% of the requests for llama): 9 broken
    answers in 480 kills (5 plain, 4 streams; each sent a few ms before the kill that cut it, headers already
    forwarded), i.e. ~2% of kills, which would make a run with 2 kills fail now and then; with the drain, 0 in 260. Streams confined to other backends would not remove the window, so the kill is made
    unable to land inside an answer instead: for the last moments before the SIGKILL the backend closes every new
    connection's request unanswered (a failure before the first byte, which the gateway must rescue and does),
    then dies with no answer under way; Envoy then meets refused connections until the restart.
    """

    soak: SoakStack
    progress: Callable[[], float]  # share of the planned requests finished, 0..1
    kill_at: tuple[float, ...] = (0.3, 0.65)
    down_s: float = 1.5
    drain: bool = True
    seed: int = 7
    kills: list[dict[str, float]] = field(default_factory=list)  # pid, new_pid, down_at/up_at (monotonic), refused
    flaky_windows: int = 0
    slow_faults: int = 0
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for target in (self._flap, self._slow_and_kill):
            t = threading.Thread(target=self._guard(target), name=f"chaos{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
            if t.is_alive():
                self.errors.append(f"{t.name} did not stop")
        for m in self.soak.mocks.values():
            if m.proc.poll() is None:
                clear_fault(m)

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except Exception as e:  # the test reports it: a dead chaos thread injected less than planned
                self.errors.append(f"{fn.__name__}: {type(e).__name__}: {e}")
        return run

    def _flap(self) -> None:
        rng, flaky = random.Random(self.seed), self.soak.mocks[FLAKY]
        while not self._stop.wait(rng.uniform(0.3, 0.8)):
            flaky.fault(status=rng.choice([500, 502, 503]))
            self.flaky_windows += 1
            self._stop.wait(rng.uniform(0.1, 0.3))
            clear_fault(flaky)

    def _slow_and_kill(self) -> None:
        rng, slow = random.Random(self.seed + 1), self.soak.mocks[SLOW]
        pending = list(self.kill_at)
        while not self._stop.is_set():
            if pending and self.progress() >= pending[0]:
                pending.pop(0)
                self._kill()
                continue
            slow.fault(delay_ms=SLOW_DELAY_MS, fail_count=1)
            self.slow_faults += 1
            self._stop.wait(rng.uniform(0.5, 1.1))
        clear_fault(slow)

    def _kill(self) -> None:
        clear_fault(self.soak.mocks[SLOW])  # pause SLOW (see the class docstring)
        time.sleep(SLOW_DELAY_MS / 1000 + 0.5)
        killed = self.soak.mocks[KILLED]
        refused = f"cluster.{KILLED}.upstream_cx_connect_fail"
        pid = drain_then_kill(killed, self.drain)
        down_at, refused_before = time.monotonic(), self.soak.envoy_stat(refused)
        time.sleep(self.down_s)
        killed.restart()
        self.kills.append({"pid": pid, "new_pid": killed.proc.pid, "down_at": down_at, "up_at": time.monotonic(),
                           "refused": self.soak.envoy_stat(refused) - refused_before})


# ------------------------------------------------------------------------------------- kill-storm analysis


def kill_storm(kills: int, drain: bool, threads: int = 6, interval: float = 0.4) -> list[Result]:
    """Kill llama ``kills`` times under load (60% of the requests for llama, half of them streams; no other faults),
    restarting it after 0.1 s; return the failed results with the kill closest to each."""
    stop = threading.Event()
    results: list[Result] = []
    kill_times: list[float] = []
    specs = iter(plan(10**6, 3, {LLAMA: 60, QWEN: 20, GEMMA: 20}))
    lock = threading.Lock()
    with running_soak_stack() as soak:
        llama = soak.mocks[LLAMA]

        def worker() -> None:
            client = OpenAI(base_url=f"{soak.url}/v1", api_key="sk-soak", max_retries=0, timeout=30)
            while not stop.is_set():
                with lock:
                    spec = next(specs)
                results.append(call(client, spec))

        pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
        for t in pool:
            t.start()
        try:
            for _ in range(kills):
                time.sleep(interval)
                drain_then_kill(llama, drain)
                kill_times.append(time.monotonic())
                time.sleep(0.1)
                llama.restart()
        finally:
            stop.set()
            for t in pool:
                t.join()
    bad = [r for r in results if r.error]
    print(f"{kills} kills ({'drained' if drain else 'no drain'}), {len(results)} requests, "
          f"{sum(r.served == LLAMA and not r.fallback_from for r in results)} answered by llama, {len(bad)} failed")
    for r in bad:
        k = min(kill_times, key=lambda k: abs(k - r.t0))
        print(f"  {r.spec.model} stream={r.spec.stream} sent {1000 * (r.t0 - k):+.0f} ms from a kill, failed "
              f"{1000 * (r.t1 - k):+.0f} ms after it: {r.error}")
    return bad


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--kill-storm", type=int, metavar="N", required=True, help="kill llama N times under load")
    p.add_argument("--no-drain", action="store_true", help="SIGKILL at once, whatever the backend is doing")
    a = p.parse_args(argv)
    from e2e.ai_stack import build_wasm

    build_wasm()
    return 1 if kill_storm(a.kill_storm, not a.no_drain) else 0


if __name__ == "__main__":
    sys.exit(main())
